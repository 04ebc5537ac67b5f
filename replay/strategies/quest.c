/* quest — query-aware sparsity: at each decode step, every query head attends only to the
 * pages of the cache whose keys could score highest for it. Nothing is evicted (memory is
 * not reduced; the budget limits the entries each query reads).
 *
 * Rule (prefill protocol; decode time, through the select hook): the cache (the whole
 * prompt plus the exact decode tokens [P, t]) is cut into pages of `page` consecutive
 * positions starting at 0 (the last page may be partial). Each page keeps the elementwise
 * minimum and maximum of its keys; its score for query q is the upper bound
 * sum_d max(q_d min_d, q_d max_d) >= max over the page's keys of q . k. The K highest-bound
 * pages (ties: lower page) are visible to that query head at that step, K = max(min_pages,
 * floor(B / page)) capped at the number of pages, B = the run's budget in tokens. Per query
 * head, not per kv head (each query selects its own pages).
 * Defaults: page=16 (Quest's chunk/page size), min_pages=1.
 * Deviations: the reference's evaluation code keeps at least 3 pages (min_pages=3
 * reproduces it) and runs its first two layers dense (not modelled: every layer selects).
 * Reference: Tang et al. 2024, "Quest: Query-Aware Sparsity for Efficient Long-Context LLM
 * Inference" (ICML; github.com/mit-han-lab/Quest).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "evict_util.h"
#include "quest.h"
#include "strategy.h"

typedef struct quest_cfg { size_t page, min_pages; } quest_cfg;

static const rp_param_def quest_params[] = {
    { "page", RP_INT, "16", 1, 1e9, NULL, "page size in tokens" },
    { "min_pages", RP_INT, "1", 1, 1e9, NULL, "pages visible at least (the reference's evaluation uses 3)" },
};

double quest_bound(const float *q, const float *kmin, const float *kmax, size_t D)
{
    double s = 0;
    for (size_t d = 0; d < D; d++) {
        double a = (double)q[d] * kmin[d], b = (double)q[d] * kmax[d];
        s += a > b ? a : b;
    }
    return s;
}

/* quest_bound of the 4 consecutive pages kmin/kmax [4][D], bound [4]: four independent
 * sums, each in d order (the same bits as quest_bound; four chains instead of one latency-
 * bound chain). */
static void quest_bound4(const float *q, const float *kmin, const float *kmax, size_t D, double *bound)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    const float *n0 = kmin, *n1 = kmin + D, *n2 = kmin + 2 * D, *n3 = kmin + 3 * D;
    const float *x0 = kmax, *x1 = kmax + D, *x2 = kmax + 2 * D, *x3 = kmax + 3 * D;
    for (size_t d = 0; d < D; d++) {
        double qd = q[d], a, b;
        a = qd * n0[d]; b = qd * x0[d]; s0 += a > b ? a : b;
        a = qd * n1[d]; b = qd * x1[d]; s1 += a > b ? a : b;
        a = qd * n2[d]; b = qd * x2[d]; s2 += a > b ? a : b;
        a = qd * n3[d]; b = qd * x3[d]; s3 += a > b ? a : b;
    }
    bound[0] = s0; bound[1] = s1; bound[2] = s2; bound[3] = s3;
}

/* bound[p] of pages [p0, np) (the last one may be partial) from the keys themselves. */
static void bounds_from_keys(const float *q, const float *k, size_t n, size_t D, size_t page, size_t p0, size_t np,
                             double *bound, float *kmin, float *kmax)
{
    for (size_t p = p0; p < np; p++) {
        size_t a = p * page, b = a + page < n ? a + page : n;
        memcpy(kmin, k + a * D, D * sizeof *kmin);
        memcpy(kmax, k + a * D, D * sizeof *kmax);
        for (size_t e = a + 1; e < b; e++)
            for (size_t d = 0; d < D; d++) {
                float x = k[e * D + d];
                if (x < kmin[d]) kmin[d] = x;
                if (x > kmax[d]) kmax[d] = x;
            }
        bound[p] = quest_bound(q, kmin, kmax, D);
    }
}

/* visible[e] = 1 for the entries of the npages highest-bound pages; their count. */
static size_t mark_pages(const double *bound, size_t np, size_t n, size_t page, size_t npages, uint8_t *visible)
{
    size_t cnt = 0;
    int32_t *top = malloc((np ? np : 1) * sizeof *top);
    if (!top) return (size_t)-1;
    size_t m = rp_topk(bound, np, npages, top);
    memset(visible, 0, n);
    for (size_t i = 0; i < m; i++) {
        size_t a = (size_t)top[i] * page, b = a + page < n ? a + page : n;
        for (size_t e = a; e < b; e++) visible[e] = 1;
        cnt += b - a;
    }
    free(top);
    return cnt;
}

size_t quest_select_pages(const float *q, const float *k, size_t n, size_t D, size_t page, size_t npages,
                          double *bound, float *kmin, float *kmax, uint8_t *visible)
{
    size_t np = (n + page - 1) / page;
    bounds_from_keys(q, k, n, D, page, 0, np, bound, kmin, kmax);
    return mark_pages(bound, np, n, page, npages, visible);
}

static int quest_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    quest_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->page = (size_t)v[0];
    c->min_pages = (size_t)v[1];
    *cfg = c;
    return 0;
}

static void quest_free(void *cfg) { free(cfg); }

/* No eviction: the whole prompt stays in the cache. */
static int quest_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                         char *err, size_t errlen)
{
    size_t P = ctx->P, D = ctx->D;
    for (size_t g = 0; g < ctx->Hkv; g++) {
        const float *k = ctx->k + g * ctx->n * D, *v = ctx->v + g * ctx->n * D;
        if (rp_cache_reserve(&out[g], P, 0)) return -1;
        for (size_t t = 0; t < P; t++)
            if (rp_cache_push(&out[g], (int32_t)t, k + t * D, v + t * D)) return -1;
    }
    return 0;
}

/* On allocation failure everything stays visible (the metrics then show no compression,
 * and the "compression not applied" guard flags it). */
static void quest_select(const void *cfg, const rp_layer_ctx *ctx, size_t h, size_t t,
                         const float *q, const rp_cache *c, size_t B, uint8_t *visible)
{
    const quest_cfg *cf = cfg;
    size_t n = c->n, D = c->D, np = (n + cf->page - 1) / cf->page;
    size_t K = B / cf->page;
    if (K < cf->min_pages) K = cf->min_pages;
    double *bound = malloc((np ? np : 1) * sizeof *bound);
    float *kmin = malloc(D * sizeof *kmin), *kmax = malloc(D * sizeof *kmax);
    /* the cache is the sequence itself (entry e = position e, original rows: no encoder):
     * the whole pages' min/max come from the engine, computed once per kv head and page size
     * for every query head, position and configuration; only the partial last page is ours */
    size_t nf = n / cf->page;
    const float *smin, *smax;
    int shared = bound && kmin && kmax && ctx->key_pages && n && !c->modified && !c->mem_off &&
                 c->pos[n - 1] == (int32_t)(n - 1) && nf && !ctx->key_pages(ctx, h / ctx->G, cf->page, nf, &smin, &smax);
    if (shared) {
        size_t p = 0;
        for (; p + 4 <= nf; p += 4) quest_bound4(q, smin + p * D, smax + p * D, D, bound + p);
        for (; p < nf; p++) bound[p] = quest_bound(q, smin + p * D, smax + p * D, D);
        bounds_from_keys(q, c->k, n, D, cf->page, nf, np, bound, kmin, kmax);
    }
    if (!bound || !kmin || !kmax ||
        (shared ? mark_pages(bound, np, n, cf->page, K, visible)
                : quest_select_pages(q, c->k, n, D, cf->page, K, bound, kmin, kmax, visible)) == (size_t)-1)
        memset(visible, 1, n);
    free(bound); free(kmin); free(kmax);
}

const rp_strategy rp_strategy_quest = {
    .name = "quest",
    .summary = "decode-time query-aware page selection (min/max key bound), no eviction",
    .reference = "Tang et al. 2024 (ICML), github.com/mit-han-lab/Quest",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = quest_params,
    .n_params = 2,
    .configure = quest_configure,
    .free_cfg = quest_free,
    .prefill = quest_prefill,
    .select = quest_select,
    .head_separable = 1,     /* the whole prompt per kv head; pages of its own keys (key_pages) */
};
