/* chunkkv — keep whole chunks of consecutive prompt entries, ranked by their mean score.
 *
 * Rule (prefill protocol; one selection for the layer, shared by its kv heads):
 *   1. s[g][j]: the base score of prompt entry j for kv head g — SnapKV's observation-window
 *      score with the window padded with the layer's maximum (kvp_score.h; kvpress
 *      SnapKVPress.score).
 *   2. The prompt splits into nc = P / L whole chunks of L = chunk entries and, when P % L > 0,
 *      one last partial chunk. Chunk score = mean over its entries of sum_g s[g][j].
 *   3. Keep the max(1, floor(nk * B / P)) best chunks (nk = chunks incl. the partial one;
 *      ties: lower chunk), every entry of each, for every kv head.
 *   With no whole chunk (P < L) the base press decides alone: each kv head keeps its B best
 *   entries. B >= P keeps everything.
 * The entries kept follow from whole chunks: up to L - 1 fewer than B (or more when the
 * partial chunk is picked instead of a whole one), reported in keep_frac / kv_bytes.
 * Defaults: chunk=20 (kvpress ChunkKVPress chunk_length); base press SnapKV with kvpress's
 * defaults (preset=kvpress: window 64, kernel 5, avg pooling, window rows averaged, group
 * mean). kvpress's ChunkKVPress takes any ScorerPress; SnapKV is the base used here (the
 * ChunkKV paper's main pairing, and the one every attention-scored strategy here shares).
 * Reference: Liu et al. 2025, "ChunkKV: Semantic-Preserving KV Cache Compression for
 * Efficient Long-Context LLM Inference" (arXiv 2502.00299); NVIDIA/kvpress ChunkKVPress
 * (presses/chunkkv_press.py).
 * Differences: kvpress keeps int(nk * (1 - compression_ratio)) chunks; the fraction here is
 * the resolved budget B / P (B = round(keep * P)), the same as keep= up to that rounding,
 * and the one that budget= also gives. Scores in double (the reference: model dtype).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "evict_util.h"
#include "kvp_score.h"
#include "strategy.h"

extern const rp_strategy rp_strategy_chunkkv;

enum { CK_CHUNK };   /* kvp_cfg.own[]: the chunk length, an integer */

static const rp_param_def chunkkv_params[] = {
    { "chunk", RP_INT, "20", 1, 1e9, NULL, "chunk length L (entries)" },
    KVP_SCORER_PARAMS,
};

static int chunkkv_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    return kvp_configure(v, 1, "chunkkv", cfg, err, errlen);
}

/* The kept positions (ascending) of the chunk selection over the layer's scores. */
static int chunk_select(const kvp_cfg *c, const double *score, size_t Hkv, size_t P, size_t B,
                        int32_t *kept, size_t *m)
{
    size_t L = (size_t)c->own[CK_CHUNK], nc = P / L, rem = P % L, nk = nc + (rem > 0);
    double *cs = malloc(nk * sizeof *cs);
    int32_t *top = malloc(nk * sizeof *top);
    if (!cs || !top) { free(cs); free(top); return -1; }
    for (size_t k = 0; k < nk; k++) {
        size_t a = k * L, b = k < nc ? a + L : P;
        double t = 0;
        for (size_t j = a; j < b; j++) {
            double hs = 0;
            for (size_t g = 0; g < Hkv; g++) hs += score[g * P + j];
            t += hs;
        }
        cs[k] = t / (double)(b - a);
    }
    size_t want = nk * B / P;
    size_t nt = rp_topk(cs, nk, want > 0 ? want : 1, top);
    *m = 0;
    for (size_t i = 0; i < nt; i++) {
        size_t a = (size_t)top[i] * L, b = (size_t)top[i] < nc ? a + L : P;
        for (size_t j = a; j < b; j++) kept[(*m)++] = (int32_t)j;
    }
    free(cs);
    free(top);
    return 0;
}

/* The plan (strategy.h plan_size): kv head g's SnapKV prefix scores (kvp_plan_score); plan_layer
 * pads the windows with the layer's maximum (kvp_pad_window) and leaves keep flags (1/0): the
 * chunks chosen from every kv head's scores, the same for all of them, or, with no whole chunk,
 * each kv head's own top B. No plan when B >= P (everything kept). */
static int chunkkv_plan_layer(const void *cfg, size_t Hkv, size_t G, size_t P, size_t B, double *plan, char *err,
                              size_t errlen)
{
    const kvp_cfg *c = cfg;
    (void)G;
    int32_t *kept = malloc(P * sizeof *kept);
    uint8_t *keep = calloc(Hkv * P, 1);
    if (!kept || !keep) { free(kept); free(keep); return rp_failf(err, errlen, "chunkkv: out of memory"); }
    kvp_pad_window(&c->o, plan, Hkv, P);
    int rc = 0;
    if (P < (size_t)c->own[CK_CHUNK]) {         /* no whole chunk: the base press alone, per kv head */
        for (size_t g = 0; g < Hkv; g++) {
            size_t mg = rp_topk(plan + g * P, P, B, kept);
            for (size_t i = 0; i < mg; i++) keep[g * P + (size_t)kept[i]] = 1;
        }
    } else {
        size_t m = 0;
        if (chunk_select(c, plan, Hkv, P, B, kept, &m)) rc = rp_failf(err, errlen, "chunkkv: out of memory");
        for (size_t g = 0; g < Hkv && !rc; g++)
            for (size_t i = 0; i < m; i++) keep[g * P + (size_t)kept[i]] = 1;
    }
    for (size_t i = 0; i < Hkv * P && !rc; i++) plan[i] = keep[i];
    free(kept); free(keep);
    return rc;
}

static int chunkkv_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                           char *err, size_t errlen)
{
    size_t P = ctx->P;
    const double *plan = NULL;
    double *own = NULL;
    int32_t *kept = malloc(P * sizeof *kept);
    int rc = -1;
    if (!kept) goto done;
    if (B < P && rp_plan_get(&rp_strategy_chunkkv, cfg, ctx, B, &plan, &own, err, errlen)) goto done;
    for (size_t g = 0; g < ctx->Hkv; g++) {
        size_t m = 0;
        for (size_t j = 0; j < P; j++) if (!plan || plan[g * P + j] != 0) kept[m++] = (int32_t)j;
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
    }
    rc = 0;
done:
    free(own); free(kept);
    return rc;
}

const rp_strategy rp_strategy_chunkkv = {
    .name = "chunkkv",
    .summary = "keep whole chunks of 20 entries by mean SnapKV score summed over kv heads",
    .reference = "Liu et al. 2025 (arXiv 2502.00299); kvpress ChunkKVPress over SnapKVPress (chunk_length=20; "
                 "chunks kept: max(1, floor(chunks * B / P)))",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = chunkkv_params,
    .n_params = sizeof chunkkv_params / sizeof chunkkv_params[0],
    .configure = chunkkv_configure,
    .free_cfg = kvp_free,
    .check_budget = kvp_check_budget,
    .prefill = chunkkv_prefill,
    .head_separable = 1,     /* given its plan: the chunks chosen over every kv head's scores */
    .plan_size = kvp_plan_size,
    .plan_score = kvp_plan_score,
    .plan_layer = chunkkv_plan_layer,
};
