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

/* quest_bounds_t's scalar pass: pages [p, p + 4), four independent sums in d order. */
static void quest_bound4_t(const float *q, const float *tmin, const float *tmax, size_t ld, size_t D, size_t p,
                           double *bound)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t d = 0; d < D; d++) {
        const float *n = tmin + d * ld + p, *x = tmax + d * ld + p;
        double qd = q[d], a, b;
        a = qd * n[0]; b = qd * x[0]; s0 += a > b ? a : b;
        a = qd * n[1]; b = qd * x[1]; s1 += a > b ? a : b;
        a = qd * n[2]; b = qd * x[2]; s2 += a > b ? a : b;
        a = qd * n[3]; b = qd * x[3]; s3 += a > b ? a : b;
    }
    bound[p] = s0; bound[p + 1] = s1; bound[p + 2] = s2; bound[p + 3] = s3;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(ATTN_NO_AVX2)   /* as replay/attn.c */
#include <immintrin.h>
/* Pages [p, p + 8 nv), nv <= 4 vectors of 8 pages: per lane qd * min and qd * max (float ->
 * double, exact products), max_pd (a > b ? a : b: its second operand on ties and NaN, the
 * scalar rule), added in d order: quest_bound's bits per page. */
__attribute__((target("avx512f")))
static void quest_bounds_avx512(const float *q, const float *tmin, const float *tmax, size_t ld, size_t D, size_t p,
                                size_t nv, double *bound)
{
    __m512d s[4] = { _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd() };
    for (size_t d = 0; d < D; d++) {
        const __m512d qd = _mm512_set1_pd((double)q[d]);
        const float *n = tmin + d * ld + p, *x = tmax + d * ld + p;
        for (size_t v = 0; v < nv; v++) {
            __m512d a = _mm512_mul_pd(qd, _mm512_cvtps_pd(_mm256_loadu_ps(n + 8 * v)));
            __m512d b = _mm512_mul_pd(qd, _mm512_cvtps_pd(_mm256_loadu_ps(x + 8 * v)));
            s[v] = _mm512_add_pd(s[v], _mm512_max_pd(a, b));
        }
    }
    for (size_t v = 0; v < nv; v++) _mm512_storeu_pd(bound + p + 8 * v, s[v]);
}
#define QUEST_HAVE_AVX512 1
#else
#define QUEST_HAVE_AVX512 0
#endif

void quest_bounds_t(const float *q, const float *tmin, const float *tmax, size_t ld, size_t D, size_t np,
                    double *bound)
{
    size_t p = 0;
#if QUEST_HAVE_AVX512
    if (attn_isa() >= ATTN_ISA_AVX512) {
        for (; p + 32 <= np; p += 32) quest_bounds_avx512(q, tmin, tmax, ld, D, p, 4, bound);
        for (; p + 8 <= np; p += 8) quest_bounds_avx512(q, tmin, tmax, ld, D, p, 1, bound);
    }
#endif
    for (; p + 4 <= np; p += 4) quest_bound4_t(q, tmin, tmax, ld, D, p, bound);
    for (; p < np; p++) {
        double s = 0;
        for (size_t d = 0; d < D; d++) {
            double a = (double)q[d] * tmin[d * ld + p], b = (double)q[d] * tmax[d * ld + p];
            s += a > b ? a : b;
        }
        bound[p] = s;
    }
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
    size_t nf = n / cf->page, ld = 0;
    const float *smin, *smax;
    int shared = bound && kmin && kmax && ctx->key_pages && n && !c->modified && !c->mem_off &&
                 c->pos[n - 1] == (int32_t)(n - 1) && nf &&
                 !ctx->key_pages(ctx, h / ctx->G, cf->page, nf, &smin, &smax, &ld);
    if (shared) {
        quest_bounds_t(q, smin, smax, ld, D, nf, bound);
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
