/* think — prune key channels: the prompt's keys keep only the channels that matter most to
 * the last queries; the others are zeroed, and not stored.
 *
 * Rule (encoder, prefill protocol; per kv head g with query heads h = gG .. gG + G - 1):
 *   1. qn[d] = mean over the G query heads and the last `window` prompt queries of q[d]^2
 *      (post-RoPE queries, as the reference recomputes them with RoPE applied).
 *   2. kn[d] = mean over the cache's prompt entries (the eviction's output when composed,
 *      "EVICT + think") of k[d]^2.
 *   3. The n = floor(key_ratio * D) channels with the lowest qn[d] * kn[d] (ties: lower
 *      channel) are set to 0 in every prompt entry's key. Decode entries [P, n) stay exact
 *      (the reference compresses at prefill only). Values untouched.
 * Bytes: a pruned prompt entry stores D - n key channels and D value channels in fp16; each
 * cache also stores its channel mask (D bits, counted as indices). Decode entries: 4 D bytes.
 * Defaults: key_ratio=0 (kvpress ThinKPress key_channel_compression_ratio = 0.0: no pruning
 * until given), window=32 (window_size). kvpress reports compression_ratio = key_ratio / 2
 * (keys are half of the cache), the payload counted here.
 * Reference: Xu et al. 2024, "ThinK: Thinner Key Cache by Query-Driven Pruning" (arXiv
 * 2407.21018; github.com/SalesforceAIResearch/ThinK); NVIDIA/kvpress ThinKPress
 * (presses/think_press.py).
 * Differences: kvpress zeroes the channels but stores the full key tensor (its memory does not
 * shrink); the bytes here are those a channel-pruned store needs (stated above). Scores in
 * double from the fp16-rounded trace values.
 */
#include <math.h>
#include <stdlib.h>

#include "strategy.h"

typedef struct think_cfg { double ratio; size_t window; } think_cfg;

static const rp_param_def think_params[] = {
    { "key_ratio", RP_FLOAT, "0", 0, 1, NULL, "fraction of key channels pruned (kvpress key_channel_compression_ratio)" },
    { "window", RP_INT, "32", 1, 1e9, NULL, "last prompt queries that score the channels" },
};

static int think_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    think_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->ratio = v[0];
    c->window = (size_t)v[1];
    *cfg = c;
    return 0;
}

static void think_free(void *cfg) { free(cfg); }

/* score [D] = qn * kn of kv head g over the cache's prompt entries (steps 1-2). */
static void channel_scores(const think_cfg *cf, const rp_layer_ctx *ctx, size_t g, const rp_cache *c, double *score)
{
    size_t D = ctx->D, G = ctx->G, P = ctx->P, w = cf->window, np = 0;
    for (size_t d = 0; d < D; d++) {
        double qs = 0, ks = 0;
        for (size_t i = 0; i < G; i++) {
            const float *q = ctx->q + ((g * G + i) * ctx->n + (P - w)) * D;
            for (size_t r = 0; r < w; r++) qs += (double)q[r * D + d] * q[r * D + d];
        }
        np = 0;
        for (size_t e = 0; e < c->n; e++) {
            if ((size_t)c->pos[e] >= P) continue;
            ks += (double)c->k[e * D + d] * c->k[e * D + d];
            np++;
        }
        score[d] = (qs / (double)(G * w)) * (np ? ks / (double)np : 0);
    }
}

static int think_encode(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *c,
                        char *err, size_t errlen)
{
    const think_cfg *cf = cfg;
    size_t D = ctx->D, P = ctx->P, npr = (size_t)floor(cf->ratio * (double)D), nprompt = 0;
    for (size_t e = 0; e < c->n; e++) nprompt += (size_t)c->pos[e] < P;
    c->bytes.payload = rp_fp16_bytes(c->n, D);
    if (npr == 0 || nprompt == 0) return 0;
    if (cf->window > P)
        return rp_failf(err, errlen, "think: window=%zu is longer than the prompt (%zu tokens); lower window=", cf->window, P);
    double *score = malloc(D * sizeof *score);
    int32_t *low = malloc(D * sizeof *low);
    if (!score || !low) { free(score); free(low); return rp_failf(err, errlen, "out of memory"); }
    channel_scores(cf, ctx, g, c, score);
    for (size_t d = 0; d < D; d++) score[d] = -score[d];     /* lowest first, ties: lower channel */
    size_t m = rp_topk(score, D, npr, low);
    for (size_t e = 0; e < c->n; e++) {
        if ((size_t)c->pos[e] >= P) continue;
        for (size_t i = 0; i < m; i++) c->k[e * D + (size_t)low[i]] = 0.0f;
    }
    c->modified = 1;
    c->bytes.payload -= (double)nprompt * 2.0 * (double)m;
    c->bytes.indices += ceil((double)D / 8.0);
    free(score);
    free(low);
    return 0;
}

const rp_strategy rp_strategy_think = {
    .name = "think",
    .summary = "prune the lowest-scored key channels of the prompt (mean q^2 over the last queries x mean k^2)",
    .reference = "Xu et al. 2024 (arXiv 2407.21018), github.com/SalesforceAIResearch/ThinK; kvpress ThinKPress "
                 "(key_ratio=0 until given, window=32; bytes: only the kept channels are stored)",
    .kind = RP_ENCODE,
    .protocols = RP_PREFILL,
    .params = think_params,
    .n_params = sizeof think_params / sizeof think_params[0],
    .configure = think_configure,
    .free_cfg = think_free,
    .encode = think_encode,
    .head_separable = 1,     /* one kv head's cache and its G query heads' rows */
};
