/* compactor — kvpress CompactorPress: blend of leverage (key geometry) and noncausal_attn.
 *
 * Rule (prefill protocol, all kv heads of the layer together): the first s = min(sink_start, P)
 * and the last e = min(sink_end, P - s) prompt positions are protected; on the slice
 * [s, P - e) between them, l = the leverage scores of the centred pre-RoPE keys (leverage's
 * rule, centred over the slice) and a = the non-causal chunked attention scores
 * (noncausal_attn's rule, chunks from s), each z-normalised over every kv head and slice
 * position together; score = blending * l + a; the protected positions get (the maximum
 * score of the layer) + 1; each kv head keeps its B highest (ties: lower position). B >= P
 * keeps everything.
 *   blending < 0 (default): kvpress's compression_ratio, i.e. 1 - keep (with budget=N:
 *   1 - B / P).
 * Defaults (kvpress CompactorPress): preset=kvpress, sink_start=8, sink_end=4, chunk=256,
 * blending=-1 (= compression_ratio).
 * Budget: preset=kvpress keeps kvpress's int(P * (1 - compression_ratio)) with
 * compression_ratio = 1 - keep (kvpress_budget.h); preset=kvtrace the engine's round(keep * P).
 * Reference: Chari & Van Durme 2025, "Compactor: Calibrated Query-Agnostic KV Cache
 * Compression with Approximate Leverage Scores" (arXiv 2507.08143); kvpress CompactorPress
 * (github.com/NVIDIA/kvpress, presses/compactor_press.py).
 * Differences: leverage's (exact scores instead of kvpress's random Gaussian sketch of 48
 * dimensions; keys un-rotated with /rope) and noncausal_attn's (double precision).
 */
#include <stdlib.h>

#include "compactor.h"
#include "evict_util.h"
#include "kvpress_budget.h"
#include "strategy.h"

typedef struct cp_cfg { int preset; size_t sink_start, sink_end, chunk; double blending; } cp_cfg;

static const rp_param_def cp_params[] = {
    KVPRESS_PRESET_PARAM,
    { "sink_start", RP_INT, "8", 0, 1e9, NULL, "first positions always kept (sink_size_start)" },
    { "sink_end", RP_INT, "4", 0, 1e9, NULL, "last prompt positions always kept (sink_size_end)" },
    { "chunk", RP_INT, "256", 1, 1e9, NULL, "chunk of the non-causal attention (chunk_size)" },
    { "blending", RP_FLOAT, "-1", -1, 1e9, NULL, "weight of the leverage scores; < 0: compression_ratio = 1 - keep" },
};

static int cp_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    cp_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->preset = (int)v[0];
    c->sink_start = (size_t)v[1];
    c->sink_end = (size_t)v[2];
    c->chunk = (size_t)v[3];
    c->blending = v[4];
    *cfg = c;
    return 0;
}

static void cp_free(void *cfg) { free(cfg); }

/* score [Hkv][P] of the layer (B0: the engine's budget, for the blending under budget=N). */
static int cp_score(const cp_cfg *c, const rp_layer_ctx *ctx, size_t B0, double *score, double *lev, double *att,
                    char *err, size_t errlen)
{
    size_t P = ctx->P, Hkv = ctx->Hkv;
    size_t s = c->sink_start < P ? c->sink_start : P;
    size_t e = c->sink_end < P - s ? c->sink_end : P - s, S = P - s - e;
    double b = c->blending;
    if (b < 0) b = ctx->keep > 0 ? 1.0 - ctx->keep : 1.0 - (double)B0 / (double)P;
    for (size_t g = 0; g < Hkv; g++) {
        char e2[200];
        if (cp_leverage(ctx, g, s, s + S, lev + g * S, e2, sizeof e2))
            return rp_failf(err, errlen, "compactor: %s", e2);
        if (cp_noncausal(ctx, g, s, s + S, c->chunk, att + g * S))
            return rp_failf(err, errlen, "compactor: out of memory");
    }
    cp_znorm(lev, Hkv * S);
    cp_znorm(att, Hkv * S);
    double mx = 0;
    for (size_t i = 0; i < Hkv * S; i++) {
        double x = b * lev[i] + att[i];
        if (i == 0 || x > mx) mx = x;
        score[(i / S) * P + s + i % S] = x;
    }
    for (size_t g = 0; g < Hkv; g++) {
        for (size_t j = 0; j < s; j++) score[g * P + j] = mx + 1;
        for (size_t j = P - e; j < P; j++) score[g * P + j] = mx + 1;
    }
    return 0;
}

static int cp_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                      char *err, size_t errlen)
{
    const cp_cfg *c = cfg;
    size_t P = ctx->P, Hkv = ctx->Hkv, B0 = B;
    B = kvpress_n_kept(c->preset, ctx, P, B);
    double *score = malloc((Hkv * P + 1) * sizeof *score), *lev = malloc((Hkv * P + 1) * sizeof *lev),
           *att = malloc((Hkv * P + 1) * sizeof *att);
    int32_t *kept = malloc((P + 1) * sizeof *kept);
    int rc = -1;
    if (!score || !lev || !att || !kept) { rc = rp_failf(err, errlen, "compactor: out of memory"); goto done; }
    if (B < P && cp_score(c, ctx, B0, score, lev, att, err, errlen)) goto done;
    for (size_t g = 0; g < Hkv; g++) {
        size_t m = P;
        if (B >= P) for (size_t j = 0; j < P; j++) kept[j] = (int32_t)j;
        else m = rp_topk(score + g * P, P, B, kept);
        if (ev_push_kept(ctx, g, kept, m, &out[g])) { rc = rp_failf(err, errlen, "compactor: out of memory"); goto done; }
    }
    rc = 0;
done:
    free(score); free(lev); free(att); free(kept);
    return rc;
}

const rp_strategy rp_strategy_compactor = {
    .name = "compactor",
    .summary = "blending * leverage + noncausal_attn (both z-normalised; blending = 1 - keep), 8 first and 4 last "
               "positions kept (kvpress CompactorPress)",
    .reference = "Chari & Van Durme 2025, Compactor (arXiv 2507.08143); kvpress CompactorPress "
                 "(github.com/NVIDIA/kvpress)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = cp_params,
    .n_params = sizeof cp_params / sizeof cp_params[0],
    .configure = cp_configure,
    .free_cfg = cp_free,
    .prefill = cp_prefill,
};
