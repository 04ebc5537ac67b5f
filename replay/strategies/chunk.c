/* chunk — compress each chunk of the prompt on its own: every chunk of `chunk` positions
 * keeps the same fraction of its entries, scored by SnapKV within the chunk.
 *
 * Rule (prefill protocol, per kv head g; chunks [a, b) of `chunk` positions from 0, the last
 * one partial):
 *   1. Within the chunk (length Lc = b - a > w): the last w positions are its window; window
 *      query r attends causally to the chunk's keys [a, r] only (softmax over those, the
 *      layer's scale and softcap). SnapKV's score of each key j < b - w from those rows
 *      (reduce over rows, pool, group reduction: the preset's), the window positions padded
 *      with the chunk's maximum over every kv head (kvpress SnapKVPress.score on the chunk).
 *   2. The chunk keeps its max(1, floor(Lc * B / P)) best entries (ties: lower position).
 *   A chunk not longer than the window keeps its last max(1, floor(Lc * B / P)) positions.
 *   B >= P keeps everything.
 * Per kv head through a plan (strategy.h plan_score / plan_layer): kv head g's row holds its
 * chunk-local scores of every scored chunk, plan_layer pads each chunk's window with the
 * maximum over the layer's kv heads, so the layer's kv heads run as separate work items.
 * Defaults: chunk=1024 (kvpress ChunkPress chunk_length), base press SnapKV with kvpress's
 * defaults (preset=kvpress: window 64, kernel 5, avg pooling, rows averaged, group mean).
 * Reference: Corallo & Papotti 2024, "FINCH: Prompt-guided Key-Value Cache Compression for
 * Large Language Models" (TACL); NVIDIA/kvpress ChunkPress (presses/chunk_press.py).
 * Differences: kvpress keeps int(Lc * (1 - compression_ratio)) per chunk; here the fraction
 * is the resolved B / P. kvpress re-derives the window queries of every chunk from hidden
 * states rotated with the positions of the last window of the whole input; the trace's
 * queries carry their own positions, which are used. kvpress's SnapKV asserts a chunk
 * longer than the window; the short-chunk rule above is this project's. Sliding-window
 * layers: the chunk-local rows ignore the layer's window (chunks are shorter in practice).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "evict_util.h"
#include "kvp_score.h"
#include "strategy.h"

extern const rp_strategy rp_strategy_chunk;

enum { CH_CHUNK };   /* kvp_cfg.own[]: the chunk length, an integer */

static const rp_param_def chunk_params[] = {
    { "chunk", RP_INT, "1024", 1, 1e9, NULL, "chunk length (positions); each chunk keeps the same fraction" },
    KVP_SCORER_PARAMS,
};

static int chunk_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    return kvp_configure(v, 1, "chunk", cfg, err, errlen);
}

/* attn [G][w][Lc]: chunk-local causal attention of kv head g's query heads, window rows. */
static void chunk_window_attn(const rp_layer_ctx *ctx, size_t g, size_t a, size_t Lc, size_t w, float *attn,
                              double *lg)
{
    size_t D = ctx->D, G = ctx->G, n = ctx->n;
    const float *K = ctx->k + (g * n + a) * D;
    for (size_t i = 0; i < G; i++) {
        const float *Q = ctx->q + ((g * G + i) * n + a) * D;
        for (size_t r = 0; r < w; r++) {
            size_t t = Lc - w + r;      /* chunk-local query position */
            double mx = -INFINITY, z = 0;
            for (size_t j = 0; j <= t; j++) {
                lg[j] = attn_logit(Q + t * D, K + j * D, D, &ctx->ap);
                mx = lg[j] > mx ? lg[j] : mx;
            }
            for (size_t j = 0; j <= t; j++) z += exp(lg[j] - mx);
            float *row = attn + (i * w + r) * Lc;
            for (size_t j = 0; j < Lc; j++) row[j] = j <= t ? (float)(exp(lg[j] - mx) / z) : 0.0f;
        }
    }
}

/* The chunk's kept count and whether its top-k needs scores (Lc > w and fewer than Lc kept). */
static size_t chunk_nk(size_t Lc, size_t P, size_t B)
{
    size_t nk = B >= P ? Lc : Lc * B / P;
    return nk < 1 ? 1 : nk;
}

static int chunk_scored(size_t Lc, size_t nk, size_t w) { return nk < Lc && Lc > w; }

/* The plan (strategy.h plan_size): kv head g's row holds, for every chunk [a, a + Lc) that is
 * scored, its chunk-local SnapKV scores at [a, a + Lc - w) (the window's entries: 0 until
 * plan_layer); 0 elsewhere. plan_layer pads each scored chunk's window with the maximum over
 * every kv head of that chunk's scores. No plan when no chunk is scored (B >= P among others). */
static size_t chunk_plan_size(const void *cfg, size_t P, size_t G, size_t B)
{
    const kvp_cfg *c = cfg;
    size_t w = c->o.window, L = (size_t)c->own[CH_CHUNK];
    (void)G;
    for (size_t a = 0; a < P; a += L) {
        size_t Lc = P - a < L ? P - a : L;
        if (chunk_scored(Lc, chunk_nk(Lc, P, B), w)) return P;
    }
    return 0;
}

static int chunk_plan_score(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B, double *out, char *err,
                            size_t errlen)
{
    const kvp_cfg *c = cfg;
    size_t P = ctx->P, G = ctx->G, w = c->o.window, L = (size_t)c->own[CH_CHUNK];
    size_t cap = L < P ? L : P;
    double *lg = malloc(cap * sizeof *lg);
    float *attn = malloc(G * (w < cap ? w : cap) * cap * sizeof *attn);
    int rc = -1;
    if (!lg || !attn) { rp_failf(err, errlen, "chunk: out of memory"); goto done; }
    int gqa = c->o.gqa == SNAPKV_GQA_RUN ? ctx->gqa_reduce : c->o.gqa;
    for (size_t j = 0; j < P; j++) out[j] = 0;
    for (size_t a = 0; a < P; a += L) {
        size_t Lc = P - a < L ? P - a : L;
        if (!chunk_scored(Lc, chunk_nk(Lc, P, B), w)) continue;
        chunk_window_attn(ctx, g, a, Lc, w, attn, lg);
        if (snapkv_score(&c->o, gqa, attn, G, Lc, out + a)) { rp_failf(err, errlen, "chunk: out of memory"); goto done; }
    }
    rc = 0;
done:
    free(lg); free(attn);
    return rc;
}

static int chunk_plan_layer(const void *cfg, size_t Hkv, size_t G, size_t P, size_t B, double *plan, char *err,
                            size_t errlen)
{
    const kvp_cfg *c = cfg;
    size_t w = c->o.window, L = (size_t)c->own[CH_CHUNK];
    (void)G; (void)err; (void)errlen;
    for (size_t a = 0; a < P; a += L) {
        size_t Lc = P - a < L ? P - a : L;
        if (!chunk_scored(Lc, chunk_nk(Lc, P, B), w)) continue;
        double mx = -INFINITY;
        for (size_t g = 0; g < Hkv; g++)
            for (size_t j = a; j < a + Lc - w; j++) mx = plan[g * P + j] > mx ? plan[g * P + j] : mx;
        for (size_t g = 0; g < Hkv; g++)
            for (size_t j = a + Lc - w; j < a + Lc; j++) plan[g * P + j] = mx;
    }
    return 0;
}

static int chunk_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                         char *err, size_t errlen)
{
    const kvp_cfg *c = cfg;
    size_t P = ctx->P, w = c->o.window, L = (size_t)c->own[CH_CHUNK];
    size_t cap = L < P ? L : P;
    const double *plan = NULL;
    double *own = NULL;
    int32_t *kept = malloc(P * sizeof *kept), *top = malloc(cap * sizeof *top);
    int rc = -1;
    if (!kept || !top) { rp_failf(err, errlen, "out of memory"); goto done; }
    if (chunk_plan_size(cfg, P, ctx->G, B) && rp_plan_get(&rp_strategy_chunk, cfg, ctx, B, &plan, &own, err, errlen))
        goto done;
    for (size_t g = 0; g < ctx->Hkv; g++) {
        size_t m = 0;
        for (size_t a = 0; a < P; a += L) {
            size_t Lc = P - a < L ? P - a : L, nk = chunk_nk(Lc, P, B), nt;
            if (nk >= Lc) {
                for (size_t j = 0; j < Lc; j++) top[j] = (int32_t)j;
                nt = Lc;
            } else if (Lc <= w) {
                for (size_t j = 0; j < nk; j++) top[j] = (int32_t)(Lc - nk + j);
                nt = nk;
            } else {
                nt = rp_topk(plan + g * P + a, Lc, nk, top);
            }
            for (size_t i = 0; i < nt; i++) kept[m++] = (int32_t)(a + (size_t)top[i]);
        }
        if (ev_push_kept(ctx, g, kept, m, &out[g])) { rp_failf(err, errlen, "out of memory"); goto done; }
    }
    rc = 0;
done:
    free(own); free(kept); free(top);
    return rc;
}

const rp_strategy rp_strategy_chunk = {
    .name = "chunk",
    .summary = "compress each chunk of 1024 prompt positions on its own (SnapKV within the chunk, same fraction kept)",
    .reference = "Corallo & Papotti 2024 (FINCH, TACL); kvpress ChunkPress over SnapKVPress (chunk_length=1024; "
                 "each chunk keeps max(1, floor(Lc * B / P)))",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = chunk_params,
    .n_params = sizeof chunk_params / sizeof chunk_params[0],
    .configure = chunk_configure,
    .free_cfg = kvp_free,
    .prefill = chunk_prefill,
    .head_separable = 1,     /* given its plan: each chunk's window padded with the maximum over the kv heads */
    .plan_size = chunk_plan_size,
    .plan_score = chunk_plan_score,
    .plan_layer = chunk_plan_layer,
};
