/* random — a seeded uniformly random subset (sanity baseline: any real strategy must beat it).
 *
 * Rule: prefill keeps B prompt positions drawn uniformly without replacement (partial
 * Fisher-Yates over [0, P)); online evicts, after each insertion that exceeds the budget,
 * one cached entry drawn uniformly (the new token included).
 * Defaults: no parameter besides the budget. Seed: the engine's (config, sequence, layer)
 * seed mixed with the kv head's number in the layer, so runs are reproducible and independent
 * of the thread count and of the work unit (head-separable: one kv head's prefill draws from
 * its own stream only).
 * Reference: the "random" baseline of kvpress (RandomPress) and of most eviction papers.
 */
#include <stdlib.h>

#include "strategy.h"

/* The stream of the context's kv head g, numbered as in the layer (ctx->g0 + g), so a kv head
 * draws the same positions whether its context holds the whole layer or that head alone. */
static uint64_t head_seed(const rp_layer_ctx *ctx, size_t g)
{
    rp_rng r = { ctx->seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(ctx->g0 + g + 1)) };
    return rp_rng_next(&r);
}

static size_t draw(rp_rng *r, size_t n)          /* uniform in [0, n) */
{
    return (size_t)(rp_rng_uniform(r) * (double)n);
}

static int random_configure(const double *values, void **cfg, char *err, size_t errlen)
{
    *cfg = NULL;
    return 0;
}

static int random_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                          char *err, size_t errlen)
{
    size_t P = ctx->P, D = ctx->D;
    if (B > P) B = P;
    int32_t *perm = malloc(P * sizeof *perm);
    uint8_t *keep = malloc(P);
    if (!perm || !keep) { free(perm); free(keep); return -1; }
    for (size_t g = 0; g < ctx->Hkv; g++) {
        rp_rng r = { head_seed(ctx, g) };
        for (size_t i = 0; i < P; i++) { perm[i] = (int32_t)i; keep[i] = 0; }
        for (size_t i = 0; i < B; i++) {
            size_t j = i + draw(&r, P - i);
            int32_t x = perm[i]; perm[i] = perm[j]; perm[j] = x;
            keep[perm[i]] = 1;
        }
        const float *k = ctx->k + g * ctx->n * D, *v = ctx->v + g * ctx->n * D;
        if (rp_cache_reserve(&out[g], B, 0)) { free(perm); free(keep); return -1; }
        for (size_t t = 0; t < P; t++)
            if (keep[t] && rp_cache_push(&out[g], (int32_t)t, k + t * D, v + t * D)) { free(perm); free(keep); return -1; }
    }
    free(perm);
    free(keep);
    return 0;
}

static void *random_online_new(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B)
{
    rp_rng *r = malloc(sizeof *r);
    if (r) r->s = head_seed(ctx, g);
    return r;
}

static kv_status random_online_step(void *state, const rp_layer_ctx *ctx, size_t g, size_t t,
                                    const rp_cache *c, const float *probs, size_t B, size_t *evict,
                                    size_t *n_evict, kv_error *err)
{
    rp_rng *r = state;
    size_t m = 0;
    /* evict c->n - B distinct entries, each uniform among those not yet chosen */
    while (c->n - m > B) {
        size_t pick = draw(r, c->n - m), e = 0, seen = 0;
        for (e = 0; e < c->n; e++) {
            int taken = 0;
            for (size_t i = 0; i < m; i++) taken |= evict[i] == e;
            if (taken) continue;
            if (seen++ == pick) break;
        }
        evict[m++] = e;
    }
    *n_evict = m;
    return KV_OK;
}

static void random_online_free(void *state) { free(state); }

/* q_rows: positions from the seeded stream; no hook reads a query */
static size_t random_q_rows(const void *cfg, size_t P, size_t B, int *whole) { return 0; }

const rp_strategy rp_strategy_random = {
    .name = "random",
    .summary = "a seeded uniformly random subset (sanity baseline)",
    .reference = "baseline; kvpress RandomPress (github.com/NVIDIA/kvpress)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL | RP_ONLINE,
    .needs_budget = 1,
    .configure = random_configure,
    .prefill = random_prefill,
    .online_new = random_online_new,
    .online_step = random_online_step,
    .online_free = random_online_free,
    .head_separable = 1,     /* each kv head's cache from its own stream (keyed by its number) */
    .q_rows = random_q_rows,   /* no prompt query read */
};
