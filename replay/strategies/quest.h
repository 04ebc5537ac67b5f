/* quest core (pure; replay/strategies/quest.c is the strategy). */
#ifndef KV_STRAT_QUEST_H
#define KV_STRAT_QUEST_H

#include <stddef.h>
#include <stdint.h>

/* Upper bound of q . k over the keys of one page: kmin/kmax [D] the page's elementwise
 * minimum and maximum key; returns sum_d max(q_d kmin_d, q_d kmax_d) (double). */
double quest_bound(const float *q, const float *kmin, const float *kmax, size_t D);

/* quest_bound of pages [0, np) from d-major tables: page p's dimension d at tmin[d * ld + p]
 * (rp_shared_pages_t). bound [np] out, the same bits as quest_bound per page (each page's
 * sum over d in order; products of two floats are exact in double). Lanes are pages: an
 * AVX-512F path (8 pages a vector, 4 vectors a pass) where attn_isa() allows it, else 4 pages
 * a pass in scalar code. */
void quest_bounds_t(const float *q, const float *tmin, const float *tmax, size_t ld, size_t D, size_t np,
                    double *bound);

/* Page selection for one query q [D] over n keys k [n][D] in pages of `page` consecutive
 * keys (the last page may be partial): the `npages` pages with the largest bound (ties:
 * lower page) become visible. visible [n] out (1/0); bound [ceil(n / page)] scratch, kmin
 * and kmax [D] scratch. Returns the number of visible keys, -1 cast to size_t on ENOMEM. */
size_t quest_select_pages(const float *q, const float *k, size_t n, size_t D, size_t page, size_t npages,
                          double *bound, float *kmin, float *kmax, uint8_t *visible);

#endif /* KV_STRAT_QUEST_H */
