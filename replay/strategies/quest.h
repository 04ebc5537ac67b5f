/* quest core (pure; replay/strategies/quest.c is the strategy). */
#ifndef KV_STRAT_QUEST_H
#define KV_STRAT_QUEST_H

#include <stddef.h>
#include <stdint.h>

/* Upper bound of q . k over the keys of one page: kmin/kmax [D] the page's elementwise
 * minimum and maximum key; returns sum_d max(q_d kmin_d, q_d kmax_d) (double). */
double quest_bound(const float *q, const float *kmin, const float *kmax, size_t D);

/* Page selection for one query q [D] over n keys k [n][D] in pages of `page` consecutive
 * keys (the last page may be partial): the `npages` pages with the largest bound (ties:
 * lower page) become visible. visible [n] out (1/0); bound [ceil(n / page)] scratch, kmin
 * and kmax [D] scratch. Returns the number of visible keys, -1 cast to size_t on ENOMEM. */
size_t quest_select_pages(const float *q, const float *k, size_t n, size_t D, size_t page, size_t npages,
                          double *bound, float *kmin, float *kmax, uint8_t *visible);

#endif /* KV_STRAT_QUEST_H */
