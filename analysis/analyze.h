/* kvreport's statistics over a merged results set (conventions: stats.h).
 *
 * For every configuration c and metric m (results.h): descriptive statistics across
 * sequences with a 95% t-interval and a percentile bootstrap interval of the mean.
 * Against a baseline configuration b (when there is one): a paired comparison over the
 * sequences both hold (d = c - b), Holm-adjusted across the configurations compared, one
 * family per metric and per test.
 * The NLL guard: within each configuration, nll_comp against nll_full of the same
 * sequences (paired t, Holm across the configurations with read-out); a significant
 * *decrease* is a result that must be explained (layer-local replay cannot make the model
 * better, except by chance or by a bug).
 *
 * Ownership: an_compute allocates *out, an_free releases it (NULL-safe). The res_set must
 * outlive the result.
 */
#ifndef KV_ANALYZE_H
#define KV_ANALYZE_H

#include <stdint.h>
#include "results.h"
#include "stats.h"

typedef struct an_stat {
    int valid;                     /* 1 when n >= 1 */
    st_desc d;
    int has_boot;                  /* 1 when n >= 2 */
    double b_lo, b_hi;
} an_stat;

typedef struct an_cmp {
    int valid;                     /* 1 when >= 2 pairs */
    st_paired p;
    double p_t_holm, p_w_holm;
} an_cmp;

typedef struct an_result {
    const res_set *rs;
    size_t nc;
    long baseline;                 /* configuration index, -1 = none */
    an_stat *stat;                 /* [nc][RM_COUNT] */
    an_cmp *cmp;                   /* [nc][RM_COUNT], vs baseline (invalid for the baseline) */
    an_cmp *nll;                   /* [nc] nll_comp vs nll_full within the configuration */
    size_t n_boot;
    uint64_t seed;
} an_result;

kv_status an_compute(const res_set *rs, long baseline, size_t n_boot, uint64_t seed,
                     an_result **out, kv_error *err);
void an_free(an_result *r);

static inline const an_stat *an_get(const an_result *r, size_t c, int m) { return &r->stat[c * RM_COUNT + m]; }
static inline const an_cmp *an_cmp_get(const an_result *r, size_t c, int m) { return &r->cmp[c * RM_COUNT + m]; }

/* Metrics compared against the baseline (quality metrics; not sizes). */
int an_metric_compared(int m);
/* 1 when lower values are better (errors, divergences, NLL), 0 when higher is better. */
int an_lower_better(int m);
/* The plausible range of a metric: values outside are impossible (cos > 1, KL < 0, ...).
 * Returns 0 when the metric has no bound on that side. */
int an_metric_bounds(int m, double *lo, double *hi);
/* Pairs of metric m between configurations a and b (of one results set) over the sequences
 * both hold with a value, in sequence order: x from a, y from b (capacity: the smaller
 * n_seqs). Returns the pair count. */
size_t an_pairs(const res_config *a, const res_config *b, int m, double *x, double *y);
/* Index of the full-cache configuration (config "full" or family "full"), -1 when absent. */
long an_find_full(const res_set *rs);

#endif /* KV_ANALYZE_H */
