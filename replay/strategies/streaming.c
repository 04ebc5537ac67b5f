/* streaming — StreamingLLM: attention sinks + a window of the most recent tokens.
 *
 * Rule: with budget B, keep the first s = min(sinks, B) positions and the B - s most recent
 * ones. Prefill: of the prompt [0, P) (the decode tokens are then exact, as the protocol
 * says). Online: after each insertion beyond B, evict the oldest non-sink entries.
 * reindex=1 (StreamingLLM's "positions within the cache"): keys are re-rotated so that the
 * distance between the query and each entry is its distance in the cache, not in the text:
 * entry e of a cache of m entries seen by query t gets position t - (m - 1 - e) (sinks move
 * next to the window). Done by de-rotating with the trace's /rope tables at the original
 * position and rotating at the new one (rotate_half or interleaved, first rotary_dim dims);
 * refused when the trace has no /rope. Not a reconstruction: kv_mse stays empty.
 * Defaults: sinks=4 (the paper's 4 attention-sink tokens), reindex=0.
 * Reference: Xiao et al. 2024, "Efficient Streaming Language Models with Attention Sinks"
 * (ICLR; github.com/mit-han-lab/streaming-llm, StartRecentKVCache); kvpress StreamingLLMPress.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "evict_util.h"
#include "strategy.h"

typedef struct streaming_cfg { size_t sinks; int reindex; } streaming_cfg;

static const rp_param_def streaming_params[] = {
    { "sinks", RP_INT, "4", 0, 1e9, NULL, "attention-sink tokens kept at the start" },
    { "reindex", RP_BOOL, "0", 0, 1, NULL, "1: positions within the cache (re-rotate keys with /rope)" },
};

static int streaming_configure(const double *values, void **cfg, char *err, size_t errlen)
{
    streaming_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->sinks = (size_t)values[0];
    c->reindex = values[1] != 0;
    *cfg = c;
    return 0;
}

static void streaming_free(void *cfg) { free(cfg); }

static int streaming_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                             char *err, size_t errlen)
{
    const streaming_cfg *c = cfg;
    size_t P = ctx->P, D = ctx->D, s = c->sinks < B ? c->sinks : B, recent = B - s;
    for (size_t g = 0; g < ctx->Hkv; g++) {
        const float *k = ctx->k + g * ctx->n * D, *v = ctx->v + g * ctx->n * D;
        if (rp_cache_reserve(&out[g], B, 0)) return -1;
        for (size_t t = 0; t < P; t++)
            if ((t < s || t + recent >= P) && rp_cache_push(&out[g], (int32_t)t, k + t * D, v + t * D)) return -1;
    }
    return 0;
}

/* The online state is the cfg itself (read-only). */
static void *streaming_online_new(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B)
{
    return (void *)cfg;
}

static kv_status streaming_online_step(void *state, const rp_layer_ctx *ctx, size_t g, size_t t,
                                       const rp_cache *c, const float *probs, size_t B, size_t *evict,
                                       size_t *n_evict, kv_error *err)
{
    const streaming_cfg *cf = state;
    size_t s = cf->sinks < B ? cf->sinks : B, m = 0;
    /* keep entries [0, s) and the last B - s; evict the middle */
    if (c->n > B)
        for (size_t e = s; e < c->n - (B - s); e++) evict[m++] = e;
    *n_evict = m;
    return KV_OK;
}

static void streaming_online_free(void *state) {}

static int streaming_view_active(const void *cfg) { return ((const streaming_cfg *)cfg)->reindex; }

/* online_view: the engine calls it on a working copy of the cache each query sees (both
 * protocols); the kept cache keeps the original rows. */
static int streaming_view(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *c,
                          char *err, size_t errlen)
{
    const streaming_cfg *cf = cfg;
    if (!cf->reindex) return 0;
    return ev_reindex_view(ctx, t, c, "streaming reindex=1", err, errlen);
}

/* q_rows: prefill picks positions and copies K/V; the view re-rotates keys (RoPE tables) */
static size_t streaming_q_rows(const void *cfg, size_t P, size_t B, int *whole) { return 0; }

const rp_strategy rp_strategy_streaming = {
    .name = "streaming",
    .summary = "attention sinks + recent window (StreamingLLM), optional in-cache positions",
    .reference = "Xiao et al. 2024 (ICLR), github.com/mit-han-lab/streaming-llm; kvpress StreamingLLMPress",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL | RP_ONLINE,
    .needs_budget = 1,
    .params = streaming_params,
    .n_params = 2,
    .configure = streaming_configure,
    .free_cfg = streaming_free,
    .prefill = streaming_prefill,
    .online_new = streaming_online_new,
    .online_step = streaming_online_step,
    .online_free = streaming_online_free,
    .online_view = streaming_view,
    .view_active = streaming_view_active,
    .cfg_uses_rope = streaming_view_active,   /* reindex=1 re-rotates keys with /rope */
    .head_separable = 1,     /* each kv head's cache from its own rows and scores */
    .q_rows = streaming_q_rows,   /* no prompt query read */
};
