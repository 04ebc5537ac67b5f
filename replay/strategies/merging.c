/* merging — evict by score, but fold each evicted value into the most similar kept entry's
 * value first (keys stay the originals, so RoPE positions stay exact).
 *
 * Rule (prefill protocol, per kv head):
 *   1. s[j]: the base score — SnapKV's observation-window score, window padded with the
 *      layer's maximum (kvp_score.h; kvpress SnapKVPress.score); keep the B best (ties:
 *      lower position). B >= P keeps everything unchanged.
 *   2. For each evicted entry e: sim(e, t) = cos(k_e, k_t) over the kept t (norms clamped
 *      below at 1e-6); target t* = the most similar kept entry (ties: lower position);
 *      merged only when sim >= similarity_threshold, with weight
 *      w_e = max(sim, 0) * ||v_e|| / (||v_e|| + ||v_t*|| + 1e-6).
 *   3. Each kept t with W_t = sum of the weights folded into it > 0:
 *      v_t <- (v_t + sum_e w_e v_e) / (1 + W_t). Keys untouched.
 * Memory as an eviction of B entries (values stored like any other: fp16 payload + indices);
 * kv_mse_v reports how far the kept values moved.
 * Defaults: similarity_threshold=0 and merge_fraction=1 (kvpress MergingPress); base press
 * SnapKV with kvpress's defaults (preset=kvpress: window 64, kernel 5, avg pooling, rows
 * averaged, group mean).
 * Reference: NVIDIA/kvpress MergingPress (presses/merging_press.py), after Token Merging
 * (Bolya et al., ICLR 2023, arXiv 2210.09461) and D2O (Wan et al. 2024, arXiv 2406.13035).
 * Differences: merge_fraction < 1 (kvpress: only the best-similarity fraction of the evicted
 * entries merge, by a quantile) is not offered: its default 1 is the rule above. The merged
 * values are kept in fp32 (the reference casts back to the model dtype); similarities and
 * sums in double. Argmax ties go to the lower position (torch: implementation-defined).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "evict_util.h"
#include "kvp_score.h"
#include "strategy.h"

#define MERGE_EPS 1e-6      /* the reference's clamp and denominator guard */

enum { MG_THR };   /* kvp_cfg.own[] */

static const rp_param_def merging_params[] = {
    { "similarity_threshold", RP_FLOAT, "0", 0, 1, NULL, "minimum cosine similarity of the keys for a merge" },
    KVP_SCORER_PARAMS,
};

static int merging_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    return kvp_configure(v, 1, "merging", cfg, err, errlen);
}

static double norm_of(const float *x, size_t D)
{
    double s = 0;
    for (size_t d = 0; d < D; d++) s += (double)x[d] * x[d];
    return sqrt(s);
}

/* Steps 2-3 on the cache c of kv head g (its m entries hold the kept rows, positions
 * ascending): original keys/values K, V [n][D]. acc [m][D], wsum [m] scratch. */
static void fold_evicted(const kvp_cfg *cf, const float *K, const float *V, size_t P, size_t D, rp_cache *c,
                         const uint8_t *kept_mask, double *acc, double *wsum)
{
    size_t m = c->n;
    memset(acc, 0, m * D * sizeof *acc);
    memset(wsum, 0, m * sizeof *wsum);
    for (size_t e = 0; e < P; e++) {
        if (kept_mask[e]) continue;
        const float *ke = K + e * D;
        double ne = fmax(norm_of(ke, D), MERGE_EPS), best = -INFINITY;
        size_t bt = 0;
        for (size_t t = 0; t < m; t++) {
            const float *kt = K + (size_t)c->pos[t] * D;
            double dot = 0;
            for (size_t d = 0; d < D; d++) dot += (double)ke[d] * kt[d];
            double sim = dot / (ne * fmax(norm_of(kt, D), MERGE_EPS));
            if (sim > best) { best = sim; bt = t; }
        }
        if (!(best >= cf->own[MG_THR])) continue;
        double nve = norm_of(V + e * D, D), nvt = norm_of(V + (size_t)c->pos[bt] * D, D);
        double w = fmax(best, 0) * nve / (nve + nvt + MERGE_EPS);
        for (size_t d = 0; d < D; d++) acc[bt * D + d] += w * V[e * D + d];
        wsum[bt] += w;
    }
    for (size_t t = 0; t < m; t++) {
        if (!(wsum[t] > 0)) continue;
        const float *vt = V + (size_t)c->pos[t] * D;
        for (size_t d = 0; d < D; d++) c->v[t * D + d] = (float)(((double)vt[d] + acc[t * D + d]) / (1.0 + wsum[t]));
        c->modified = 1;
    }
}

static int merging_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                           char *err, size_t errlen)
{
    const kvp_cfg *c = cfg;
    size_t P = ctx->P, Hkv = ctx->Hkv, D = ctx->D;
    double *score = malloc(Hkv * P * sizeof *score), *acc = malloc(P * D * sizeof *acc), *wsum = malloc(P * sizeof *wsum);
    int32_t *kept = malloc(P * sizeof *kept);
    uint8_t *mask = malloc(P);
    int rc = -1;
    if (!score || !acc || !wsum || !kept || !mask) goto done;
    if (B >= P) {
        rc = kvp_keep_all(ctx, kept, out);
        goto done;
    }
    if (kvp_check_window(&c->o, "merging", P, err, errlen) || kvp_window_scores(&c->o, ctx, score)) goto done;
    for (size_t g = 0; g < Hkv; g++) {
        size_t m = rp_topk(score + g * P, P, B, kept);
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
        memset(mask, 0, P);
        for (size_t i = 0; i < m; i++) mask[kept[i]] = 1;
        fold_evicted(c, ctx->k + g * ctx->n * D, ctx->v + g * ctx->n * D, P, D, &out[g], mask, acc, wsum);
    }
    rc = 0;
done:
    free(score); free(acc); free(wsum); free(kept); free(mask);
    return rc;
}

const rp_strategy rp_strategy_merging = {
    .name = "merging",
    .summary = "SnapKV eviction that folds each evicted value into the most key-similar kept entry's value",
    .reference = "kvpress MergingPress over SnapKVPress (similarity_threshold=0, merge_fraction=1; weight "
                 "max(sim,0)*|v_e|/(|v_e|+|v_t|)); after ToMe (arXiv 2210.09461) and D2O (arXiv 2406.13035)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = merging_params,
    .n_params = sizeof merging_params / sizeof merging_params[0],
    .configure = merging_configure,
    .free_cfg = kvp_free,
    .check_budget = kvp_check_budget,
    .prefill = merging_prefill,
};
