/* Statistics for kvreport; conventions and references in stats.h.
 *
 * The Wilcoxon exact null distribution is the subset-sum count of {1..n}: c_n(s) = number
 * of subsets with sum s, built by the recurrence c_k(s) = c_{k-1}(s) + c_{k-1}(s - k)
 * (each rank is either positive or negative with probability 1/2 under H0).
 */
#include "stats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_cdf.h>
#include <gsl/gsl_errno.h>
#include <gsl/gsl_rng.h>
#include <gsl/gsl_sort.h>
#include <gsl/gsl_statistics_double.h>

#define WILCOXON_EXACT_MAX 25

void stats_init(void)
{
    gsl_set_error_handler_off();
}

const char *stats_status_name(st_status s)
{
    switch (s) {
    case ST_OK: return "ok";
    case ST_ERR_INVALID: return "invalid input";
    case ST_ERR_NOMEM: return "out of memory";
    case ST_ERR_GSL: return "GSL error";
    }
    return "unknown";
}

static int all_finite(const double *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

st_status stats_t_quantile(double level, double df, double *q)
{
    if (!(level > 0 && level < 1) || !(df > 0) || !q) return ST_ERR_INVALID;
    double v = gsl_cdf_tdist_Pinv(0.5 + level / 2, df);
    if (!isfinite(v)) return ST_ERR_GSL;
    *q = v;
    return ST_OK;
}

st_status stats_describe(const double *x, size_t n, double level, st_desc *out)
{
    if (!x || !out || n == 0 || !all_finite(x, n)) return ST_ERR_INVALID;
    memset(out, 0, sizeof *out);
    out->n = n;
    /* two-pass mean and variance in double (gsl_stats_* do the same) */
    out->mean = gsl_stats_mean(x, 1, n);
    out->min = out->max = x[0];
    for (size_t i = 1; i < n; i++) {
        if (x[i] < out->min) out->min = x[i];
        if (x[i] > out->max) out->max = x[i];
    }
    if (n >= 2) {
        out->sd = gsl_stats_sd_m(x, 1, n, out->mean);
        double q;
        st_status s = stats_t_quantile(level, (double)(n - 1), &q);
        if (s != ST_OK) return s;
        double h = q * out->sd / sqrt((double)n);
        out->t_lo = out->mean - h;
        out->t_hi = out->mean + h;
        out->has_ci = 1;
    }
    if (!isfinite(out->mean) || !isfinite(out->sd)) return ST_ERR_INVALID;
    return ST_OK;
}

st_status stats_bootstrap_mean(const double *x, size_t n, size_t B, uint64_t seed,
                               double level, double *lo, double *hi)
{
    if (!x || !lo || !hi || n == 0 || B == 0 || !(level > 0 && level < 1) || !all_finite(x, n))
        return ST_ERR_INVALID;
    double *means = malloc(B * sizeof *means);
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    if (!means || !r) { free(means); gsl_rng_free(r); return ST_ERR_NOMEM; }
    gsl_rng_set(r, (unsigned long)seed);
    for (size_t b = 0; b < B; b++) {
        double s = 0;
        for (size_t i = 0; i < n; i++) s += x[gsl_rng_uniform_int(r, (unsigned long)n)];
        means[b] = s / (double)n;
    }
    gsl_sort(means, 1, B);
    double a = (1 - level) / 2;
    *lo = gsl_stats_quantile_from_sorted_data(means, 1, B, a);
    *hi = gsl_stats_quantile_from_sorted_data(means, 1, B, 1 - a);
    gsl_rng_free(r);
    free(means);
    return (isfinite(*lo) && isfinite(*hi)) ? ST_OK : ST_ERR_GSL;
}

st_status stats_wilcoxon_exact_p(size_t n, double w, double *p)
{
    if (!p || n == 0 || n > 60) return ST_ERR_INVALID;
    size_t smax = n * (n + 1) / 2;
    if (!(w >= 0 && w <= (double)smax)) return ST_ERR_INVALID;
    double *c = calloc(smax + 1, sizeof *c);            /* c[s]: subsets with sum s */
    if (!c) return ST_ERR_NOMEM;
    c[0] = 1;
    for (size_t k = 1; k <= n; k++) {
        size_t top = k * (k + 1) / 2;
        for (size_t s = top; s >= k; s--) c[s] += c[s - k];
    }
    double total = ldexp(1.0, (int)n), le = 0, ge = 0;
    for (size_t s = 0; s <= smax; s++) {
        if ((double)s <= w + 1e-9) le += c[s];
        if ((double)s >= w - 1e-9) ge += c[s];
    }
    free(c);
    double v = 2 * fmin(le, ge) / total;
    *p = v > 1 ? 1 : v;
    return ST_OK;
}

typedef struct absidx { double a; size_t i; } absidx;
static int absidx_cmp(const void *pa, const void *pb)
{
    const absidx *a = pa, *b = pb;
    if (a->a < b->a) return -1;
    if (a->a > b->a) return 1;
    return (a->i > b->i) - (a->i < b->i);
}

st_status stats_wilcoxon(const double *d, size_t n, double *w_plus, double *w_minus,
                         size_t *n_nonzero, int *exact, int *ties, double *z, double *p)
{
    if (!d || n == 0 || !all_finite(d, n)) return ST_ERR_INVALID;
    absidx *v = malloc(n * sizeof *v);
    if (!v) return ST_ERR_NOMEM;
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (d[i] != 0) { v[m].a = fabs(d[i]); v[m].i = i; m++; }
    *n_nonzero = m; *exact = 0; *ties = 0; *z = 0;
    *w_plus = *w_minus = 0;
    if (m == 0) { free(v); *p = 1; return ST_OK; }
    qsort(v, m, sizeof *v, absidx_cmp);
    double tie_term = 0;                                 /* sum over tie groups t^3 - t */
    for (size_t a = 0; a < m;) {
        size_t b = a;
        while (b + 1 < m && v[b + 1].a == v[a].a) b++;
        double rank = (double)(a + b + 2) / 2;           /* ranks a+1 .. b+1, averaged */
        double t = (double)(b - a + 1);
        if (t > 1) { *ties = 1; tie_term += t * t * t - t; }
        for (size_t k = a; k <= b; k++) {
            if (d[v[k].i] > 0) *w_plus += rank; else *w_minus += rank;
        }
        a = b + 1;
    }
    free(v);
    double dm = (double)m;
    if (m <= WILCOXON_EXACT_MAX && !*ties) {
        *exact = 1;
        return stats_wilcoxon_exact_p(m, *w_plus, p);
    }
    double mean = dm * (dm + 1) / 4;
    double var = dm * (dm + 1) * (2 * dm + 1) / 24 - tie_term / 48;
    if (!(var > 0)) { *p = 1; return ST_OK; }
    *z = (*w_plus - mean) / sqrt(var);
    double q = gsl_cdf_ugaussian_Q(fabs(*z));
    *p = fmin(1.0, 2 * q);
    return isfinite(*p) ? ST_OK : ST_ERR_GSL;
}

st_status stats_paired(const double *x, const double *y, size_t n, st_paired *out)
{
    if (!x || !y || !out || n < 2 || !all_finite(x, n) || !all_finite(y, n)) return ST_ERR_INVALID;
    memset(out, 0, sizeof *out);
    double *d = malloc(n * sizeof *d);
    if (!d) return ST_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) d[i] = x[i] - y[i];
    out->n = n;
    out->df = (double)(n - 1);
    out->mean_diff = gsl_stats_mean(d, 1, n);
    out->sd_diff = gsl_stats_sd_m(d, 1, n, out->mean_diff);
    if (out->sd_diff > 0) {
        out->t = out->mean_diff / (out->sd_diff / sqrt((double)n));
        out->t_defined = 1;
        out->p_t = fmin(1.0, 2 * gsl_cdf_tdist_Q(fabs(out->t), out->df));
        out->d_z = out->mean_diff / out->sd_diff;
        out->dz_defined = 1;
        if (!isfinite(out->p_t) || !isfinite(out->t)) { free(d); return ST_ERR_GSL; }
    } else {
        out->p_t = out->mean_diff == 0 ? 1 : 0;          /* constant differences */
    }
    st_status s = stats_wilcoxon(d, n, &out->w_plus, &out->w_minus, &out->n_nonzero,
                                 &out->exact, &out->ties, &out->z, &out->p_w);
    free(d);
    if (s != ST_OK) return s;
    double tot = out->w_plus + out->w_minus;
    out->r_rb = tot > 0 ? (out->w_plus - out->w_minus) / tot : 0;
    return ST_OK;
}

typedef struct pidx { double p; size_t i; } pidx;
static int pidx_cmp(const void *pa, const void *pb)
{
    const pidx *a = pa, *b = pb;
    if (a->p < b->p) return -1;
    if (a->p > b->p) return 1;
    return (a->i > b->i) - (a->i < b->i);
}

st_status stats_holm(const double *p, size_t m, double *adj)
{
    if (!p || !adj) return ST_ERR_INVALID;
    if (m == 0) return ST_OK;
    pidx *v = malloc(m * sizeof *v);
    if (!v) return ST_ERR_NOMEM;
    for (size_t i = 0; i < m; i++) {
        if (!(p[i] >= 0 && p[i] <= 1)) { free(v); return ST_ERR_INVALID; }
        v[i].p = p[i]; v[i].i = i;
    }
    qsort(v, m, sizeof *v, pidx_cmp);
    double run = 0;
    for (size_t j = 0; j < m; j++) {
        double a = fmin(1.0, (double)(m - j) * v[j].p);
        if (a > run) run = a;
        adj[v[j].i] = run;
    }
    free(v);
    return ST_OK;
}
