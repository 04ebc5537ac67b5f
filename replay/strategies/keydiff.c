/* keydiff — keep the keys LEAST similar to the mean key direction (the most distinctive).
 *
 * Rule (prefill protocol, per kv head, on the stored post-RoPE keys): over a candidate set C
 * of prompt positions, the anchor a = mean over j in C of k_j / ||k_j||; score(j) =
 * -cos(k_j, a) = -(k_j . a) / (||k_j|| ||a||); keep the B highest scores (ties: lower
 * position). B >= P keeps everything.
 *   block=0 (default; kvpress KeyDiffPress): C = the whole prompt, one top-B.
 *   block=N (kvpress BlockPress(KeyDiffPress, block_size=N), the paper's iterative form;
 *           N = 128 in kvpress): the prompt is read in blocks [i, i + N) (N capped at P);
 *           C = the entries kept so far plus the new block; while |C| <= B nothing is
 *           evicted, otherwise the anchor is recomputed over C and the B best of C are kept.
 * Defaults: preset=kvpress, block=0 (KeyDiffPress alone); block=128 reproduces BlockPress's default.
 * Budget: preset=kvpress keeps kvpress's int(P * (1 - compression_ratio)) with
 * compression_ratio = 1 - keep (kvpress_budget.h); preset=kvtrace the engine's round(keep * P).
 * Reference: Park et al. 2025, "KeyDiff: Key Similarity-Based KV Cache Eviction for Long-Context
 * LLM Inference in Resource-Constrained Environments" (arXiv 2504.15364); kvpress KeyDiffPress
 * and BlockPress (github.com/NVIDIA/kvpress, presses/key_diff_press.py, block_press.py).
 * Differences: a zero key (or a zero anchor)
 * scores 0 instead of going through torch's epsilon clamps (F.normalize eps 1e-12,
 * cosine_similarity eps 1e-8), which only matter for exactly zero vectors. Scores in double.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "evict_util.h"
#include "kvpress_budget.h"
#include "strategy.h"

typedef struct keydiff_cfg { int preset; size_t block; } keydiff_cfg;

static const rp_param_def keydiff_params[] = {
    KVPRESS_PRESET_PARAM,
    { "block", RP_INT, "0", 0, 1e9, NULL, "0: score the whole prompt at once; N: BlockPress's iterative blocks of N (kvpress: 128)" },
};

static int keydiff_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    keydiff_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->preset = (int)v[0];
    c->block = (size_t)v[1];
    *cfg = c;
    return 0;
}

static void keydiff_free(void *cfg) { free(cfg); }

static double norm_of(const float *x, size_t D)
{
    double s = 0;
    for (size_t d = 0; d < D; d++) s += (double)x[d] * x[d];
    return sqrt(s);
}

/* score[i] = -cos(k[cand[i]], anchor over cand), i < m; anchor [D] scratch. */
static void keydiff_score(const float *k, size_t D, const int32_t *cand, size_t m, double *anchor, double *score)
{
    memset(anchor, 0, D * sizeof *anchor);
    for (size_t i = 0; i < m; i++) {
        const float *x = k + (size_t)cand[i] * D;
        double nx = norm_of(x, D);
        if (nx == 0) continue;
        for (size_t d = 0; d < D; d++) anchor[d] += (double)x[d] / nx;
    }
    double na = 0;
    for (size_t d = 0; d < D; d++) { anchor[d] /= (double)m; na += anchor[d] * anchor[d]; }
    na = sqrt(na);
    for (size_t i = 0; i < m; i++) {
        const float *x = k + (size_t)cand[i] * D;
        double nx = norm_of(x, D), dot = 0;
        for (size_t d = 0; d < D; d++) dot += (double)x[d] * anchor[d];
        score[i] = nx == 0 || na == 0 ? 0.0 : -dot / (nx * na);
    }
}

/* The kept positions (ascending) of one kv head: kept [P]; returns their count. */
static size_t keydiff_head(const keydiff_cfg *c, const float *k, size_t P, size_t D, size_t B, int32_t *kept,
                           int32_t *cand, int32_t *pick, double *anchor, double *score)
{
    size_t blk = c->block == 0 || c->block > P ? P : c->block, nk = 0;
    for (size_t i = 0; i < P; i += blk) {
        size_t e = i + blk < P ? i + blk : P, m = nk;
        memcpy(cand, kept, nk * sizeof *cand);
        for (size_t j = i; j < e; j++) cand[m++] = (int32_t)j;
        if (m <= B) {                       /* the budget is not reached yet: keep the block */
            memcpy(kept, cand, m * sizeof *kept);
            nk = m;
            continue;
        }
        keydiff_score(k, D, cand, m, anchor, score);
        nk = rp_topk(score, m, B, pick);    /* indices into cand, ascending = positions ascending */
        for (size_t t = 0; t < nk; t++) kept[t] = cand[pick[t]];
    }
    return nk;
}

static int keydiff_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                           char *err, size_t errlen)
{
    const keydiff_cfg *c = cfg;
    size_t P = ctx->P, D = ctx->D;
    B = kvpress_n_kept(c->preset, ctx, P, B);
    int32_t *kept = malloc((P + 1) * sizeof *kept), *cand = malloc((P + 1) * sizeof *cand),
            *pick = malloc((P + 1) * sizeof *pick);
    double *anchor = malloc(D * sizeof *anchor), *score = malloc((P + 1) * sizeof *score);
    int rc = -1;
    if (!kept || !cand || !pick || !anchor || !score) goto done;
    for (size_t g = 0; g < ctx->Hkv; g++) {
        size_t m = P;
        if (B >= P) for (size_t j = 0; j < P; j++) kept[j] = (int32_t)j;
        else m = keydiff_head(c, ctx->k + g * ctx->n * D, P, D, B, kept, cand, pick, anchor, score);
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
    }
    rc = 0;
done:
    free(kept); free(cand); free(pick); free(anchor); free(score);
    return rc;
}

const rp_strategy rp_strategy_keydiff = {
    .name = "keydiff",
    .summary = "keep the keys least similar to the mean normalised key (score -cos(k, anchor)); "
               "block=N: kvpress BlockPress's iterative form",
    .reference = "Park et al. 2025 (arXiv 2504.15364); kvpress KeyDiffPress, BlockPress (block_size 128)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = keydiff_params,
    .n_params = sizeof keydiff_params / sizeof keydiff_params[0],
    .configure = keydiff_configure,
    .free_cfg = keydiff_free,
    .prefill = keydiff_prefill,
    .head_separable = 1,     /* each kv head's cache from its own rows and scores */
};
