/* h2o core (pure; replay/strategies/h2o.c is the strategy). */
#ifndef KV_STRAT_H2O_H
#define KV_STRAT_H2O_H

#include <stddef.h>
#include <stdint.h>

/* Recent-window size for budget B and fraction `recent`: floor(recent * B + 0.5), <= B. */
size_t h2o_recent(double recent, size_t B);

/* Heavy hitters + recent window over n entries (score [n], accumulated attention):
 * keep the last r = min(r, B) entries and the B - r highest scores among [0, n - r)
 * (ties: lower index; rp_topk). kept[] ascending; returns min(B, n). Cannot fail. */
size_t h2o_keep(const double *score, size_t n, size_t B, size_t r, int32_t *kept);

#endif /* KV_STRAT_H2O_H */
