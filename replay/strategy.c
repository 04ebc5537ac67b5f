/* Helpers of the strategy interface (strategy.h): caches, top-k, rng. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strategy.h"

static int grow(void **p, size_t elem, size_t n)
{
    void *q = realloc(*p, (n ? n : 1) * elem);
    if (!q) return -1;
    *p = q;
    return 0;
}

/* A cache in positions-only mode (strategy.h: src_k set, k = v = NULL) holds no rows: its
 * capacity covers pos, mult and mem_off; rp_cache_rows allocates the rows at that capacity. */
static int rows_only_positions(const rp_cache *c) { return c->src_k != NULL; }

int rp_cache_reserve(rp_cache *c, size_t cap, size_t members_cap)
{
    if (cap > c->cap) {
        if (grow((void **)&c->pos, sizeof *c->pos, cap) || grow((void **)&c->mult, sizeof *c->mult, cap))
            return -1;
        if (!rows_only_positions(c) &&
            (grow((void **)&c->k, sizeof *c->k * c->D, cap) || grow((void **)&c->v, sizeof *c->v * c->D, cap)))
            return -1;
        if (c->mem_off && grow((void **)&c->mem_off, sizeof *c->mem_off, cap + 1)) return -1;
        c->cap = cap;
    }
    if (members_cap > c->members_cap) {
        if (grow((void **)&c->members, sizeof *c->members, members_cap)) return -1;
        c->members_cap = members_cap;
    }
    return 0;
}

int rp_cache_rows(rp_cache *c)
{
    if (!rows_only_positions(c)) return 0;
    size_t D = c->D, nk = c->cap ? c->cap : 1;
    float *k = malloc(nk * D * sizeof *k), *v = malloc(nk * D * sizeof *v);
    if (!k || !v) { free(k); free(v); return -1; }
    for (size_t e = 0; e < c->n; e++) {    /* every entry is plain: its row is its position's */
        memcpy(k + e * D, c->src_k + (size_t)c->pos[e] * D, D * sizeof *k);
        memcpy(v + e * D, c->src_v + (size_t)c->pos[e] * D, D * sizeof *v);
    }
    free(c->k); free(c->v);
    c->k = k;
    c->v = v;
    c->src_k = c->src_v = NULL;
    c->src_n = 0;
    return 0;
}

void rp_cache_clear(rp_cache *c)
{
    c->n = 0;
    c->n_members = 0;
    c->modified = 0;
    memset(&c->bytes, 0, sizeof c->bytes);
    if (c->mem_off) c->mem_off[0] = 0;
}

static int ensure_one_more(rp_cache *c)
{
    return c->n < c->cap ? 0 : rp_cache_reserve(c, c->cap ? 2 * c->cap : 16, 0);
}

/* Switch to explicit member lists: every existing entry becomes its own member. */
static int ensure_members(rp_cache *c, size_t extra)
{
    if (!c->mem_off) {
        if (grow((void **)&c->mem_off, sizeof *c->mem_off, c->cap + 1)) return -1;
        if (rp_cache_reserve(c, c->cap, c->n + extra + 16)) return -1;
        for (size_t e = 0; e < c->n; e++) { c->mem_off[e] = (int32_t)e; c->members[e] = c->pos[e]; }
        c->mem_off[c->n] = (int32_t)c->n;
        c->n_members = c->n;
    }
    if (c->n_members + extra > c->members_cap &&
        rp_cache_reserve(c, c->cap, 2 * (c->n_members + extra)))
        return -1;
    return 0;
}

int rp_cache_push(rp_cache *c, int32_t t, const float *k, const float *v)
{
    size_t D = c->D;
    /* positions-only: the source row of t is recorded by its position; any other row
     * gives the cache its rows first */
    int own = rows_only_positions(c) && t >= 0 && (size_t)t < c->src_n && k == c->src_k + (size_t)t * D &&
              v == c->src_v + (size_t)t * D;
    if (!own && rp_cache_rows(c)) return -1;
    if (ensure_one_more(c)) return -1;
    size_t e = c->n;
    c->pos[e] = t;
    c->mult[e] = 1;
    if (!own) {
        memcpy(c->k + e * D, k, D * sizeof *k);
        memcpy(c->v + e * D, v, D * sizeof *v);
    }
    if (c->mem_off) {
        if (ensure_members(c, 1)) return -1;
        c->members[c->n_members++] = t;
        c->mem_off[e + 1] = (int32_t)c->n_members;
    }
    c->n++;
    return 0;
}

int rp_cache_push_merged(rp_cache *c, const int32_t *mem, size_t m, const float *k, const float *v)
{
    if (m == 1) return rp_cache_push(c, mem[0], k, v);
    if (rp_cache_rows(c) || ensure_one_more(c) || ensure_members(c, m)) return -1;
    size_t e = c->n, D = c->D;
    c->pos[e] = mem[0];
    c->mult[e] = (int32_t)m;
    memcpy(c->k + e * D, k, D * sizeof *k);
    memcpy(c->v + e * D, v, D * sizeof *v);
    memcpy(c->members + c->n_members, mem, m * sizeof *mem);
    c->n_members += m;
    c->mem_off[e + 1] = (int32_t)c->n_members;
    c->modified = 1;
    c->n++;
    return 0;
}

void rp_cache_compact(rp_cache *c, const uint8_t *keep)
{
    size_t w = 0, wm = 0, D = c->D;
    for (size_t e = 0; e < c->n; e++) {
        if (!keep[e]) continue;
        if (w != e) {
            c->pos[w] = c->pos[e];
            c->mult[w] = c->mult[e];
            if (c->k) {     /* positions-only caches have no rows to move */
                memmove(c->k + w * D, c->k + e * D, D * sizeof *c->k);
                memmove(c->v + w * D, c->v + e * D, D * sizeof *c->v);
            }
        }
        if (c->mem_off) {
            size_t a = (size_t)c->mem_off[e], b = (size_t)c->mem_off[e + 1];
            memmove(c->members + wm, c->members + a, (b - a) * sizeof *c->members);
            c->mem_off[w] = (int32_t)wm;
            wm += b - a;
            c->mem_off[w + 1] = (int32_t)wm;
        }
        w++;
    }
    c->n = w;
    if (c->mem_off) c->n_members = wm;
}

void rp_cache_free(rp_cache *c)
{
    if (!c) return;
    free(c->pos); free(c->mult); free(c->mem_off); free(c->members); free(c->k); free(c->v);
    memset(c, 0, sizeof *c);
}

int rp_failf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- top-k ----------------------------------------------------------------------------- */

/* The ranking: a strict total order, so the top-k set is unique and any algorithm that
 * respects it returns the same indices. 1 when (sa, ia) ranks above (sb, ib): higher score
 * first, NaN below every number, then lower index first. */
static int topk_above(double sa, int32_t ia, double sb, int32_t ib)
{
    int an = isnan(sa), bn = isnan(sb);
    if (an != bn) return bn;
    if (!an && sa != sb) return sa > sb;
    return ia < ib;
}

/* heap[0] is the lowest-ranked of the kept candidates (a min-heap under topk_above). */
static void topk_sift_down(const double *score, int32_t *heap, size_t k, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, lo = i;
        if (l < k && topk_above(score[heap[lo]], heap[lo], score[heap[l]], heap[l])) lo = l;
        if (r < k && topk_above(score[heap[lo]], heap[lo], score[heap[r]], heap[r])) lo = r;
        if (lo == i) return;
        int32_t x = heap[i]; heap[i] = heap[lo]; heap[lo] = x;
        i = lo;
    }
}

size_t rp_topk(const double *score, size_t n, size_t k, int32_t *out)
{
    if (k > n) k = n;
    if (k == 0) return 0;
    if (k == n) {
        for (size_t i = 0; i < n; i++) out[i] = (int32_t)i;
        return n;
    }
    /* a bounded min-heap in out: O(n log k), no allocation, cannot fail */
    for (size_t i = 0; i < k; i++) out[i] = (int32_t)i;
    for (size_t i = k / 2; i-- > 0;) topk_sift_down(score, out, k, i);
    for (size_t i = k; i < n; i++)
        if (topk_above(score[i], (int32_t)i, score[out[0]], out[0])) {
            out[0] = (int32_t)i;
            topk_sift_down(score, out, k, 0);
        }
    /* the k-th ranked (the heap's root) bounds the set: the indices ranked at or above it,
     * in one ascending scan (the order is total: exactly k of them), instead of sorting
     * the heap by index */
    double ts = score[out[0]];
    int32_t ti = out[0];
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if ((int32_t)i == ti || topk_above(score[i], (int32_t)i, ts, ti)) out[m++] = (int32_t)i;
    return m;
}

/* ---- rng ------------------------------------------------------------------------------- */

uint64_t rp_rng_next(rp_rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double rp_rng_uniform(rp_rng *r)
{
    return (double)(rp_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

int rp_plan_get(const rp_strategy *s, const void *cfg, const rp_layer_ctx *ctx, size_t B, const double **plan,
                double **own, char *err, size_t errlen)
{
    size_t S = s->plan_size(cfg, ctx->P, ctx->G, B);
    *own = NULL;
    *plan = ctx->plan;
    if (ctx->plan) return 0;
    if (rp_ctx_layer_hkv(ctx) != ctx->Hkv)      /* a plan over one kv head would be another rule */
        return rp_failf(err, errlen, "%s: internal: no plan in a context of %zu of the layer's %zu kv heads", s->name,
                        ctx->Hkv, rp_ctx_layer_hkv(ctx));
    double *p = malloc((ctx->Hkv * S > 0 ? ctx->Hkv * S : 1) * sizeof *p);
    if (!p) return rp_failf(err, errlen, "%s: out of memory (plan)", s->name);
    for (size_t g = 0; g < ctx->Hkv; g++)
        if (s->plan_score(cfg, ctx, g, B, p + g * S, err, errlen)) { free(p); return -1; }
    if (s->plan_layer(cfg, ctx->Hkv, ctx->G, ctx->P, B, p, err, errlen)) { free(p); return -1; }
    *plan = *own = p;
    return 0;
}

int rp_calib_heads(size_t n, int (*fn)(void *arg, size_t g), void *arg, size_t *gfail)
{
    int *rc = calloc(n ? n : 1, sizeof *rc);
    if (!rc) {          /* no room for the codes: one kv head at a time */
        for (size_t g = 0; g < n; g++) {
            int r = fn(arg, g);
            if (r) { if (gfail) *gfail = g; return r; }
        }
        return 0;
    }
    #pragma omp parallel for schedule(dynamic, 1)
    for (long long g = 0; g < (long long)n; g++) rc[g] = fn(arg, (size_t)g);
    int r = 0;
    for (size_t g = 0; g < n && !r; g++)
        if (rc[g]) { r = rc[g]; if (gfail) *gfail = g; }
    free(rc);
    return r;
}
