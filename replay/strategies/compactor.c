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

extern const rp_strategy rp_strategy_compactor;

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

/* The protected head s and tail e of a prompt of P positions, and the slice S between them. */
static void cp_slice(const cp_cfg *c, size_t P, size_t *s, size_t *e, size_t *S)
{
    *s = c->sink_start < P ? c->sink_start : P;
    *e = c->sink_end < P - *s ? c->sink_end : P - *s;
    *S = P - *s - *e;
}

/* The plan (strategy.h plan_size), rows of max(P, 2 S + 1) doubles. plan_score leaves kv head
 * g's leverage scores of the slice at [0, S), its non-causal attention scores at [S, 2 S) and the
 * blending at [2 S] (B0: the engine's budget, for the blending under budget=N); plan_layer
 * z-normalises each of the two over every kv head and slice position together, blends, and
 * leaves each kv head's score [P] at the start of its row (the protected positions: the
 * layer's maximum + 1). Made whatever the budget (the kvpress budget needs ctx->keep). */
static size_t cp_plan_size_(const void *cfg, size_t P, size_t G, size_t B)
{
    size_t s, e, S;
    (void)G; (void)B;
    cp_slice(cfg, P, &s, &e, &S);
    return 2 * S + 1 > P ? 2 * S + 1 : P;
}

static int cp_plan_score(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B0, double *out, char *err,
                         size_t errlen)
{
    const cp_cfg *c = cfg;
    size_t P = ctx->P, s, e, S;
    cp_slice(c, P, &s, &e, &S);
    double b = c->blending;
    if (b < 0) b = ctx->keep > 0 ? 1.0 - ctx->keep : 1.0 - (double)B0 / (double)P;
    char e2[200];
    if (cp_leverage(ctx, g, s, s + S, out, e2, sizeof e2)) return rp_failf(err, errlen, "compactor: %s", e2);
    if (cp_noncausal(ctx, g, s, s + S, c->chunk, out + S)) return rp_failf(err, errlen, "compactor: out of memory");
    out[2 * S] = b;
    return 0;
}

static int cp_plan_layer_(const void *cfg, size_t Hkv, size_t G, size_t P, size_t B, double *plan, char *err,
                          size_t errlen)
{
    size_t s, e, S, R = cp_plan_size_(cfg, P, G, B);
    cp_slice(cfg, P, &s, &e, &S);
    double *lev = malloc((Hkv * S + 1) * sizeof *lev), *att = malloc((Hkv * S + 1) * sizeof *att);
    double *score = malloc((Hkv * P + 1) * sizeof *score);
    if (!lev || !att || !score) {
        free(lev); free(att); free(score);
        return rp_failf(err, errlen, "compactor: out of memory");
    }
    double b = plan[2 * S];                 /* every kv head's: the configuration's */
    for (size_t g = 0; g < Hkv; g++)
        for (size_t i = 0; i < S; i++) { lev[g * S + i] = plan[g * R + i]; att[g * S + i] = plan[g * R + S + i]; }
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
    for (size_t g = 0; g < Hkv; g++)
        for (size_t j = 0; j < P; j++) plan[g * R + j] = score[g * P + j];
    free(lev); free(att); free(score);
    return 0;
}

static int cp_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                      char *err, size_t errlen)
{
    const cp_cfg *c = cfg;
    size_t P = ctx->P, Hkv = ctx->Hkv, R = cp_plan_size_(cfg, P, ctx->G, B), B0 = B;
    B = kvpress_n_kept(c->preset, ctx, P, B);
    const double *plan = NULL;
    double *own = NULL;
    int32_t *kept = malloc((P + 1) * sizeof *kept);
    int rc = -1;
    if (!kept) { rc = rp_failf(err, errlen, "compactor: out of memory"); goto done; }
    if (B < P && rp_plan_get(&rp_strategy_compactor, cfg, ctx, B0, &plan, &own, err, errlen)) goto done;
    for (size_t g = 0; g < Hkv; g++) {
        size_t m = P;
        if (B >= P) for (size_t j = 0; j < P; j++) kept[j] = (int32_t)j;
        else m = rp_topk(plan + g * R, P, B, kept);
        if (ev_push_kept(ctx, g, kept, m, &out[g])) { rc = rp_failf(err, errlen, "compactor: out of memory"); goto done; }
    }
    rc = 0;
done:
    free(own); free(kept);
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
    .head_separable = 1,     /* given its plan: the z-normalisations and the maximum over the layer's kv heads */
    .uses_rope = 1,          /* its leverage part (cp_leverage: ea_unrotate) */
    .plan_size = cp_plan_size_,
    .plan_score = cp_plan_score,
    .plan_layer = cp_plan_layer_,
};
