/* kvreport statistics over configurations x metrics (see analyze.h). */
#include "analyze.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int an_metric_compared(int m)
{
    switch (m) {
    case RM_KEEP_FRAC: case RM_KV_BYTES: case RM_FULL_BYTES: case RM_RATIO: case RM_NLL_FULL:
    case RM_ECE_FULL:
        return 0;
    default:
        return 1;
    }
}

int an_lower_better(int m)
{
    switch (m) {
    case RM_ATTN_COS: case RM_OUT_COS: case RM_MASS_RECALL: case RM_TOP1_AGREE: case RM_RATIO:
        return 0;
    default:
        return 1;
    }
}

int an_metric_bounds(int m, double *lo, double *hi)
{
    *lo = -INFINITY; *hi = INFINITY;
    switch (m) {
    case RM_ATTN_COS: case RM_OUT_COS: *lo = -1; *hi = 1; return 1;
    case RM_MASS_RECALL: case RM_TOP1_AGREE: case RM_KEEP_FRAC: *lo = 0; *hi = 1; return 1;
    case RM_ECE_FULL: case RM_ECE_COMP: *lo = 0; *hi = 1; return 1;
    case RM_KV_MSE_K: case RM_KV_MSE_V: case RM_KV_REL_MSE_K: case RM_KV_REL_MSE_V:
    case RM_OUT_REL_ERR: case RM_ATTN_KL: case RM_LOGIT_KL: case RM_NLL_FULL: case RM_NLL_COMP:
    case RM_KV_BYTES: case RM_FULL_BYTES:
        *lo = 0; return 1;
    case RM_RATIO: *lo = 0; return 1;
    default: return 0;
    }
}

long an_find_full(const res_set *rs)
{
    long i = res_find_config(rs, "full");
    if (i >= 0) return i;
    for (size_t c = 0; c < rs->n_configs; c++)
        if (!strcmp(rs->configs[c].family, "full")) return (long)c;
    return -1;
}

/* Pairs of metric m between configurations a and b over the sequences both hold. */
static size_t pairs(const res_config *a, const res_config *b, int ma, int mb, double *x, double *y)
{
    size_t n = 0, i = 0, j = 0;
    while (i < a->n_seqs && j < b->n_seqs) {
        long long sa = a->seqs[i].seq, sb = b->seqs[j].seq;
        if (sa < sb) { i++; continue; }
        if (sb < sa) { j++; continue; }
        double va = a->seqs[i].v[ma], vb = b->seqs[j].v[mb];
        if (!isnan(va) && !isnan(vb)) { x[n] = va; y[n] = vb; n++; }
        i++; j++;
    }
    return n;
}

static kv_status holm_column(an_cmp *base, size_t nc, size_t stride, kv_error *err)
{
    double *pt = malloc((nc + 1) * sizeof *pt), *pw = malloc((nc + 1) * sizeof *pw);
    size_t *idx = malloc((nc + 1) * sizeof *idx);
    if (!pt || !pw || !idx) { free(pt); free(pw); free(idx); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    size_t m = 0;
    for (size_t c = 0; c < nc; c++) {
        an_cmp *x = &base[c * stride];
        if (!x->valid) continue;
        pt[m] = x->p.p_t; pw[m] = x->p.p_w; idx[m] = c; m++;
    }
    kv_status st = KV_OK;
    if (m && (stats_holm(pt, m, pt) != ST_OK || stats_holm(pw, m, pw) != ST_OK))
        st = kv_error_set(err, KV_ERR_VALUE, "Holm adjustment failed (p-value outside [0, 1])");
    for (size_t k = 0; st == KV_OK && k < m; k++) {
        base[idx[k] * stride].p_t_holm = pt[k];
        base[idx[k] * stride].p_w_holm = pw[k];
    }
    free(pt); free(pw); free(idx);
    return st;
}

kv_status an_compute(const res_set *rs, long baseline, size_t n_boot, uint64_t seed,
                     an_result **out, kv_error *err)
{
    *out = NULL;
    stats_init();
    an_result *r = calloc(1, sizeof *r);
    if (!r) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    r->rs = rs;
    r->nc = rs->n_configs;
    r->baseline = baseline;
    r->n_boot = n_boot;
    r->seed = seed;
    size_t maxn = 1;
    for (size_t c = 0; c < rs->n_configs; c++)
        if (rs->configs[c].n_seqs > maxn) maxn = rs->configs[c].n_seqs;
    r->stat = calloc(r->nc * RM_COUNT + 1, sizeof *r->stat);
    r->cmp = calloc(r->nc * RM_COUNT + 1, sizeof *r->cmp);
    r->nll = calloc(r->nc + 1, sizeof *r->nll);
    double *x = malloc(maxn * sizeof *x), *y = malloc(maxn * sizeof *y);
    kv_status st = KV_OK;
    if (!r->stat || !r->cmp || !r->nll || !x || !y) { st = kv_error_set(err, KV_ERR_NOMEM, "out of memory"); goto done; }

    for (size_t c = 0; c < r->nc; c++) {
        const res_config *cf = &rs->configs[c];
        for (int m = 0; m < RM_COUNT; m++) {
            an_stat *s = &r->stat[c * RM_COUNT + m];
            size_t n = res_values(cf, m, x, NULL);
            if (n == 0) continue;
            st_status ss = stats_describe(x, n, 0.95, &s->d);
            if (ss != ST_OK) { st = kv_error_set(err, KV_ERR_VALUE, "config '%s' metric %s: statistics failed: %s", cf->config, res_metric_names[m], stats_status_name(ss)); goto done; }
            s->valid = 1;
            if (n >= 2 && n_boot > 0) {
                /* one stream per (config, metric): results do not depend on which others exist */
                uint64_t sd = seed + 1000003ULL * (uint64_t)cf->first_id + 7919ULL * (uint64_t)m;
                ss = stats_bootstrap_mean(x, n, n_boot, sd, 0.95, &s->b_lo, &s->b_hi);
                if (ss != ST_OK) { st = kv_error_set(err, KV_ERR_VALUE, "config '%s' metric %s: bootstrap failed: %s", cf->config, res_metric_names[m], stats_status_name(ss)); goto done; }
                s->has_boot = 1;
            }
            if (baseline >= 0 && (long)c != baseline && an_metric_compared(m)) {
                size_t np = pairs(cf, &rs->configs[baseline], m, m, x, y);
                if (np >= 2) {
                    an_cmp *cm = &r->cmp[c * RM_COUNT + m];
                    ss = stats_paired(x, y, np, &cm->p);
                    if (ss != ST_OK) { st = kv_error_set(err, KV_ERR_VALUE, "config '%s' metric %s: paired test failed: %s", cf->config, res_metric_names[m], stats_status_name(ss)); goto done; }
                    cm->valid = 1;
                }
            }
        }
        /* NLL guard: compressed vs full read-out of the same sequences */
        size_t np = pairs(cf, cf, RM_NLL_COMP, RM_NLL_FULL, x, y);
        if (np >= 2 && strcmp(cf->family, "full")) {
            st_status ss = stats_paired(x, y, np, &r->nll[c].p);
            if (ss != ST_OK) { st = kv_error_set(err, KV_ERR_VALUE, "config '%s': NLL paired test failed: %s", cf->config, stats_status_name(ss)); goto done; }
            r->nll[c].valid = 1;
        }
    }
    for (int m = 0; m < RM_COUNT; m++)
        if ((st = holm_column(r->cmp + m, r->nc, RM_COUNT, err)) != KV_OK) goto done;
    st = holm_column(r->nll, r->nc, 1, err);
done:
    free(x); free(y);
    if (st != KV_OK) { an_free(r); return st; }
    *out = r;
    return KV_OK;
}

void an_free(an_result *r)
{
    if (!r) return;
    free(r->stat); free(r->cmp); free(r->nll);
    free(r);
}

size_t an_pairs(const res_config *a, const res_config *b, int m, double *x, double *y)
{
    return pairs(a, b, m, m, x, y);
}
