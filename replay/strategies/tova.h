/* tova core (pure; replay/strategies/tova.c is the strategy). */
#ifndef KV_STRAT_TOVA_H
#define KV_STRAT_TOVA_H

#include <stddef.h>
#include <stdint.h>

/* One TOVA step over n cache entries: probs [G][n] of the current query's G heads; score =
 * their reduction (how: RP_GQA_*). Writes the entries to evict (all but the B best, ties:
 * lower index kept) and returns how many. score [n] is scratch. */
size_t tova_evict(const float *probs, size_t G, size_t n, size_t B, int how, double *score, size_t *evict);

#endif /* KV_STRAT_TOVA_H */
