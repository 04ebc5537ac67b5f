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

static int chunk_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                         char *err, size_t errlen)
{
    const kvp_cfg *c = cfg;
    size_t P = ctx->P, Hkv = ctx->Hkv, G = ctx->G, w = c->o.window, L = (size_t)c->own[CH_CHUNK];
    size_t cap = L < P ? L : P;
    double *score = malloc(Hkv * cap * sizeof *score), *lg = malloc(cap * sizeof *lg);
    float *attn = malloc(G * (w < cap ? w : cap) * cap * sizeof *attn);
    int32_t *kept = malloc(Hkv * P * sizeof *kept), *top = malloc(cap * sizeof *top);
    size_t *m = calloc(Hkv, sizeof *m);
    int rc = -1;
    if (!score || !lg || !attn || !kept || !top || !m) { rp_failf(err, errlen, "out of memory"); goto done; }
    int gqa = c->o.gqa == SNAPKV_GQA_RUN ? ctx->gqa_reduce : c->o.gqa;
    for (size_t a = 0; a < P; a += L) {
        size_t Lc = P - a < L ? P - a : L, nk = B >= P ? Lc : Lc * B / P;
        if (nk < 1) nk = 1;
        for (size_t g = 0; g < Hkv; g++) {
            size_t nt;
            if (nk >= Lc) {
                for (size_t j = 0; j < Lc; j++) top[j] = (int32_t)j;
                nt = Lc;
            } else if (Lc <= w) {
                for (size_t j = 0; j < nk; j++) top[j] = (int32_t)(Lc - nk + j);
                nt = nk;
            } else {
                nt = 0;     /* scored below, after every head's scores give the padding */
            }
            for (size_t i = 0; i < nt; i++) kept[g * P + m[g]++] = (int32_t)(a + (size_t)top[i]);
        }
        if (nk >= Lc || Lc <= w) continue;
        double mx = -INFINITY;
        for (size_t g = 0; g < Hkv; g++) {
            chunk_window_attn(ctx, g, a, Lc, w, attn, lg);
            if (snapkv_score(&c->o, gqa, attn, G, Lc, score + g * cap)) { rp_failf(err, errlen, "out of memory"); goto done; }
            for (size_t j = 0; j < Lc - w; j++) mx = score[g * cap + j] > mx ? score[g * cap + j] : mx;
        }
        for (size_t g = 0; g < Hkv; g++) {
            for (size_t j = Lc - w; j < Lc; j++) score[g * cap + j] = mx;
            size_t nt = rp_topk(score + g * cap, Lc, nk, top);
            for (size_t i = 0; i < nt; i++) kept[g * P + m[g]++] = (int32_t)(a + (size_t)top[i]);
        }
    }
    for (size_t g = 0; g < Hkv; g++)
        if (ev_push_kept(ctx, g, kept + g * P, m[g], &out[g])) { rp_failf(err, errlen, "out of memory"); goto done; }
    rc = 0;
done:
    free(score); free(lg); free(attn); free(kept); free(top); free(m);
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
};
