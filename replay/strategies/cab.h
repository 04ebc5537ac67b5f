/* cab core (pure; replay/strategies/cab.c is the strategy). */
#ifndef KV_STRAT_CAB_H
#define KV_STRAT_CAB_H

#include <stddef.h>
#include <stdint.h>

/* Split of a budget B: s = min(sinks, B) sinks, R = B - s; local = floor(local_frac R + 1/2),
 * bridges = min(floor(bridge_frac R + 1/2), R - local), importance = the rest. */
void cab_split(size_t B, size_t sinks, double local_frac, double bridge_frac,
               size_t *s, size_t *nl, size_t *ni, size_t *nb);

/* Mark (role[j] = mark) the k highest score[j] among positions with role[j] == 0 (ties:
 * lower position). Returns the number marked, -1 cast to size_t on ENOMEM. */
size_t cab_pick(const double *score, size_t P, size_t k, uint8_t mark, uint8_t *role);

enum { CAB_SINK = 1, CAB_LOCAL = 2, CAB_IMPORTANT = 3, CAB_BRIDGE = 4 };

#endif /* KV_STRAT_CAB_H */
