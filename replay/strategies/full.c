/* full — the uncompressed cache: every token kept exactly.
 *
 * Rule: keep all entries (prefill: the whole prompt; online: never evict).
 * Defaults: none. Reference: the baseline of every KV-compression paper; kvtrace's
 * "compression not applied" guard compares every other configuration against it.
 */
#include "strategy.h"

static int full_configure(const double *values, void **cfg, char *err, size_t errlen)
{
    *cfg = NULL;
    return 0;
}

static int full_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                        char *err, size_t errlen)
{
    for (size_t g = 0; g < ctx->Hkv; g++) {
        const float *k = ctx->k + g * ctx->n * ctx->D, *v = ctx->v + g * ctx->n * ctx->D;
        if (rp_cache_reserve(&out[g], ctx->P, 0)) return -1;
        for (size_t t = 0; t < ctx->P; t++)
            if (rp_cache_push(&out[g], (int32_t)t, k + t * ctx->D, v + t * ctx->D)) return -1;
    }
    return 0;
}

static void *full_online_new(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B)
{
    static char token;      /* a non-NULL state; nothing to keep */
    return &token;
}

static kv_status full_online_step(void *state, const rp_layer_ctx *ctx, size_t g, size_t t,
                                  const rp_cache *c, const float *probs, size_t B, size_t *evict,
                                  size_t *n_evict, kv_error *err)
{
    *n_evict = 0;
    return KV_OK;
}

static void full_online_free(void *state) {}

/* q_rows: prefill copies K/V rows; no hook reads a query */
static size_t full_q_rows(const void *cfg, size_t P, size_t B, int *whole) { return 0; }

const rp_strategy rp_strategy_full = {
    .name = "full",
    .summary = "the uncompressed cache (baseline)",
    .reference = "baseline",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL | RP_ONLINE,
    .configure = full_configure,
    .prefill = full_prefill,
    .online_new = full_online_new,
    .online_step = full_online_step,
    .online_free = full_online_free,
    .head_separable = 1,     /* each kv head's cache from its own rows and scores */
    .q_rows = full_q_rows,   /* no prompt query read */
};
