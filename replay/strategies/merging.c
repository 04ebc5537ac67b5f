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

/* Dot products in double of ke with the four key rows k0..k3 (each summed in d order, as
 * one loop per row would: four independent chains instead of one, same bits). */
static void dot4(const float *ke, const float *k0, const float *k1, const float *k2, const float *k3, size_t D,
                 double *out)
{
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (size_t d = 0; d < D; d++) {
        double x = ke[d];
        a0 += x * k0[d]; a1 += x * k1[d]; a2 += x * k2[d]; a3 += x * k3[d];
    }
    out[0] = a0; out[1] = a1; out[2] = a2; out[3] = a3;
}

/* Steps 2-3 on the cache c of kv head g (its m entries hold the kept rows, positions
 * ascending): original keys/values K, V [n][D]. acc [m][D], wsum [m], nk [m] scratch (the
 * kept keys' clamped norms, computed once instead of once per evicted entry). */
static void fold_evicted(const kvp_cfg *cf, const float *K, const float *V, size_t P, size_t D, rp_cache *c,
                         const uint8_t *kept_mask, double *acc, double *wsum, double *nk)
{
    size_t m = c->n;
    memset(acc, 0, m * D * sizeof *acc);
    memset(wsum, 0, m * sizeof *wsum);
    for (size_t t = 0; t < m; t++) nk[t] = fmax(norm_of(K + (size_t)c->pos[t] * D, D), MERGE_EPS);
    for (size_t e = 0; e < P; e++) {
        if (kept_mask[e]) continue;
        const float *ke = K + e * D;
        double ne = fmax(norm_of(ke, D), MERGE_EPS), best = -INFINITY, dot[4];
        size_t bt = 0;
        for (size_t t0 = 0; t0 < m; t0 += 4) {
            size_t nt = m - t0 < 4 ? m - t0 : 4;
            const float *kr[4];
            for (size_t i = 0; i < 4; i++) kr[i] = K + (size_t)c->pos[t0 + (i < nt ? i : 0)] * D;
            dot4(ke, kr[0], kr[1], kr[2], kr[3], D, dot);
            for (size_t i = 0; i < nt; i++) {       /* ascending t: ties keep the lower one */
                double sim = dot[i] / (ne * nk[t0 + i]);
                if (sim > best) { best = sim; bt = t0 + i; }
            }
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
    double *nk = malloc(P * sizeof *nk);
    int32_t *kept = malloc(P * sizeof *kept);
    uint8_t *mask = malloc(P);
    int rc = -1;
    if (!score || !acc || !wsum || !nk || !kept || !mask) goto done;
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
        fold_evicted(c, ctx->k + g * ctx->n * D, ctx->v + g * ctx->n * D, P, D, &out[g], mask, acc, wsum, nk);
    }
    rc = 0;
done:
    free(score); free(acc); free(wsum); free(nk); free(kept); free(mask);
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
