/* Statistics for kvreport (docs/METHODS.md §11): descriptive statistics across sequences, interval
 * estimates, paired tests against a baseline, multiple-comparison correction, effect sizes.
 *
 * n samples x[0..n-1]; paired data x, y of equal length n, differences d_i = x_i - y_i.
 * All functions are pure (no printing, no exit); they return ST_OK or a status and never
 * produce NaN/Inf in an output they report as valid: a quantity that is undefined for the
 * input (sd of one sample, a t-test on constant differences) is flagged instead.
 * GSL's aborting error handler must be off (stats_init() does it); every GSL call that can
 * fail is checked.
 *
 * Conventions (stated once, used everywhere):
 *   sd          sample standard deviation (n - 1 denominator)
 *   t-interval  mean ± t_{0.975, n-1} sd / sqrt(n)
 *   bootstrap   percentile interval of the mean: B resamples with replacement drawn by
 *               gsl_rng_mt19937 seeded with `seed`; quantiles by gsl_stats_quantile_from_sorted_data
 *               (linear interpolation, type 7)
 *   paired t    t = mean(d) / (sd(d)/sqrt(n)), df = n - 1, two-sided p = 2 Q_t(|t|)
 *   Wilcoxon    signed-rank on d with the Wilcoxon zero convention: zero differences are
 *               dropped before ranking (scipy's zero_method="wilcox"); ties get average
 *               ranks. Exact null distribution of W+ when the remaining n_r <= 25 and there
 *               are no ties; otherwise the normal approximation with the tie correction
 *               sd^2 = n_r(n_r+1)(2n_r+1)/24 - sum(t^3 - t)/48, no continuity correction
 *               (scipy's default). Two-sided p = 2 min(P(W+ <= w), P(W+ >= w)), capped at 1.
 *   Holm        step-down: sort p ascending, adj_(i) = max_{j<=i} min(1, (m - j + 1) p_(j))
 *   d_z         Cohen's d for paired data: mean(d) / sd(d)
 *   r_rb        matched-pairs rank-biserial correlation (R+ - R-) / (R+ + R-) over the
 *               non-zero differences (Kerby 2014); 0 when every difference is zero
 */
#ifndef KV_STATS_H
#define KV_STATS_H

#include <stddef.h>
#include <stdint.h>

typedef enum st_status {
    ST_OK = 0,
    ST_ERR_INVALID,   /* n too small, NULL, non-finite input */
    ST_ERR_NOMEM,
    ST_ERR_GSL,       /* a GSL routine reported an error */
} st_status;

/* Turns GSL's aborting error handler off (idempotent). */
void stats_init(void);

typedef struct st_desc {
    size_t n;
    double mean, sd, min, max;       /* sd = 0 when n == 1 */
    int has_ci;                      /* 1 when n >= 2 */
    double t_lo, t_hi;               /* 95% t-interval of the mean */
} st_desc;

/* n >= 1 finite values. */
st_status stats_describe(const double *x, size_t n, double level, st_desc *out);

/* Percentile bootstrap interval of the mean (level e.g. 0.95); n >= 1, B >= 1. */
st_status stats_bootstrap_mean(const double *x, size_t n, size_t B, uint64_t seed,
                               double level, double *lo, double *hi);

typedef struct st_paired {
    size_t n;                        /* pairs */
    double mean_diff, sd_diff;
    /* paired t-test */
    int t_defined;                   /* 0 when sd_diff == 0 (t is ±inf or 0/0) */
    double t, df, p_t;               /* p_t: 1 when all d == 0, 0 when d constant != 0 */
    /* Wilcoxon signed-rank */
    size_t n_nonzero;                /* pairs left after dropping zero differences */
    int exact;                       /* 1 exact distribution, 0 normal approximation */
    int ties;                        /* 1 when tied |d| among the non-zero differences */
    double w_plus, w_minus, z, p_w;  /* z = 0 when exact; p_w = 1 when n_nonzero == 0 */
    /* effect sizes */
    int dz_defined;                  /* 0 when sd_diff == 0 */
    double d_z, r_rb;
} st_paired;

/* x, y [n], n >= 2 finite values; compares x against y (d = x - y). */
st_status stats_paired(const double *x, const double *y, size_t n, st_paired *out);

/* Wilcoxon signed-rank alone on differences d [n] (used by stats_paired). */
st_status stats_wilcoxon(const double *d, size_t n, double *w_plus, double *w_minus,
                         size_t *n_nonzero, int *exact, int *ties, double *z, double *p);

/* Exact two-sided p of W+ = w for n untied non-zero differences (n <= 60). */
st_status stats_wilcoxon_exact_p(size_t n, double w, double *p);

/* Holm step-down adjustment of m p-values (p in [0, 1]); adj may alias p. */
st_status stats_holm(const double *p, size_t m, double *adj);

/* Two-sided t quantile t_{(1+level)/2, df}. */
st_status stats_t_quantile(double level, double df, double *q);

const char *stats_status_name(st_status s);

#endif /* KV_STATS_H */
