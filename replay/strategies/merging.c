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

#include "attn.h"
#include "evict_util.h"
#include "kvp_score.h"
#include "strategy.h"

#define MERGE_EPS 1e-6      /* the reference's clamp and denominator guard */

extern const rp_strategy rp_strategy_merging;

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

/* The cosine similarities are dot products of an evicted key with every kept key: the kept
 * keys are packed once per kv head into panels of MG_PC entries, kp[b][d][MG_PC] doubles
 * (contiguous for the pass over d), and MG_ER evicted keys share each pass. Each dot product
 * is summed over d in order from 0, as a loop per pair would: the same bits (the products of
 * two floats are exact in double). */
enum { MG_PC = ATTN_PANEL_COLS };   /* kept entries per panel */
enum { MG_ER = 4 * ATTN_PANEL_ROWS };   /* evicted keys per pass (attn_panel_dot_rows) */

/* Scratch of fold_evicted, sized for P entries. */
typedef struct mg_work {
    double *acc, *wsum, *nk;    /* [P][D], [P], [P] */
    double *kp;                 /* [ceil(P / MG_PC)][D][MG_PC] kept keys, panels */
    double *x;                  /* [MG_ER][D] evicted keys */
    int32_t *ev;                /* [P] evicted positions */
} mg_work;

/* kp: the kept keys of c in panels (entries past m repeat the last one; never read). */
static void pack_kept(const float *K, size_t D, const rp_cache *c, double *kp)
{
    size_t m = c->n, nb = (m + MG_PC - 1) / MG_PC;
    for (size_t b = 0; b < nb; b++)
        for (size_t i = 0; i < MG_PC; i++) {
            size_t t = b * MG_PC + i < m ? b * MG_PC + i : m - 1;
            const float *kt = K + (size_t)c->pos[t] * D;
            for (size_t d = 0; d < D; d++) kp[(b * D + d) * MG_PC + i] = kt[d];
        }
}

/* Steps 2-3 on the cache c of kv head g (its m >= 1 entries hold the kept rows, positions
 * ascending; positions-only until a value changes: rp_cache_rows then): original keys/values
 * K, V [n][D]. 0 ok, -1 out of memory. The kept keys' clamped norms are computed
 * once instead of once per evicted entry; similarities are ranked in ascending t (ties keep
 * the lower one) and the folds added in ascending e, as one evicted entry at a time. */
static int fold_evicted(const kvp_cfg *cf, const float *K, const float *V, size_t P, size_t D, rp_cache *c,
                         const uint8_t *kept_mask, mg_work *w)
{
    size_t m = c->n, nb = (m + MG_PC - 1) / MG_PC, ne_all = 0;
    double *acc = w->acc, *wsum = w->wsum, *nk = w->nk;
    memset(acc, 0, m * D * sizeof *acc);
    memset(wsum, 0, m * sizeof *wsum);
    for (size_t t = 0; t < m; t++) nk[t] = fmax(norm_of(K + (size_t)c->pos[t] * D, D), MERGE_EPS);
    pack_kept(K, D, c, w->kp);
    for (size_t e = 0; e < P; e++)
        if (!kept_mask[e]) w->ev[ne_all++] = (int32_t)e;
    for (size_t i0 = 0; i0 < ne_all; i0 += MG_ER) {
        size_t nr = ne_all - i0 < MG_ER ? ne_all - i0 : MG_ER;
        double ne[MG_ER], best[MG_ER], dot[MG_ER * MG_PC], sim[MG_PC];
        size_t bt[MG_ER] = {0};
        for (size_t r = 0; r < MG_ER; r++) {    /* rows past nr repeat the last evicted key */
            const float *ke = K + (size_t)w->ev[i0 + (r < nr ? r : nr - 1)] * D;
            for (size_t d = 0; d < D; d++) w->x[r * D + d] = ke[d];
            ne[r] = fmax(norm_of(ke, D), MERGE_EPS);
            best[r] = -INFINITY;
        }
        for (size_t b = 0; b < nb; b++) {
            /* whole kernel rows: rows past nr repeat the last evicted key, never read */
            attn_panel_dot_rows(w->x, (nr + ATTN_PANEL_ROWS - 1) / ATTN_PANEL_ROWS * ATTN_PANEL_ROWS, D,
                                w->kp + b * D * MG_PC, dot);
            size_t nt = m - b * MG_PC < MG_PC ? m - b * MG_PC : MG_PC;
            for (size_t r = 0; r < nr; r++) {
                for (size_t i = 0; i < nt; i++) sim[i] = dot[r * MG_PC + i] / (ne[r] * nk[b * MG_PC + i]);
                for (size_t i = 0; i < nt; i++)     /* ascending t: ties keep the lower one */
                    if (sim[i] > best[r]) { best[r] = sim[i]; bt[r] = b * MG_PC + i; }
            }
        }
        for (size_t r = 0; r < nr; r++) {
            size_t e = (size_t)w->ev[i0 + r], t = bt[r];
            if (!(best[r] >= cf->own[MG_THR])) continue;
            double nve = norm_of(V + e * D, D), nvt = norm_of(V + (size_t)c->pos[t] * D, D);
            double wt = fmax(best[r], 0) * nve / (nve + nvt + MERGE_EPS);
            for (size_t d = 0; d < D; d++) acc[t * D + d] += wt * V[e * D + d];
            wsum[t] += wt;
        }
    }
    for (size_t t = 0; t < m; t++) {
        if (!(wsum[t] > 0)) continue;
        if (rp_cache_rows(c)) return -1;    /* the kept rows, before one of them changes */
        const float *vt = V + (size_t)c->pos[t] * D;
        for (size_t d = 0; d < D; d++) c->v[t * D + d] = (float)(((double)vt[d] + acc[t * D + d]) / (1.0 + wsum[t]));
        c->modified = 1;
    }
    return 0;
}

static int merging_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                           char *err, size_t errlen)
{
    const kvp_cfg *c = cfg;
    size_t P = ctx->P, Hkv = ctx->Hkv, D = ctx->D;
    double *own = NULL;
    const double *plan;
    mg_work w = {
        .acc = malloc(P * D * sizeof *w.acc), .wsum = malloc(P * sizeof *w.wsum), .nk = malloc(P * sizeof *w.nk),
        .kp = malloc(((P + MG_PC - 1) / MG_PC * MG_PC * D + 1) * sizeof *w.kp),
        .x = malloc((MG_ER * D + 1) * sizeof *w.x),
        .ev = malloc(P * sizeof *w.ev),
    };
    int32_t *kept = malloc(P * sizeof *kept);
    uint8_t *mask = malloc(P);
    int rc = -1;
    if (!w.acc || !w.wsum || !w.nk || !w.kp || !w.x || !w.ev || !kept || !mask) goto done;
    if (B >= P) {
        rc = kvp_keep_all(ctx, kept, out);
        goto done;
    }
    if (rp_plan_get(&rp_strategy_merging, cfg, ctx, B, &plan, &own, err, errlen)) goto done;
    for (size_t g = 0; g < Hkv; g++) {
        size_t m = rp_topk(plan + g * P, P, B, kept);
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
        memset(mask, 0, P);
        for (size_t i = 0; i < m; i++) mask[kept[i]] = 1;
        if (m && fold_evicted(c, ctx->k + g * ctx->n * D, ctx->v + g * ctx->n * D, P, D, &out[g], mask, &w)) goto done;
    }
    rc = 0;
done:
    free(own); free(w.acc); free(w.wsum); free(w.nk); free(w.kp); free(w.x); free(w.ev); free(kept); free(mask);
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
    .head_separable = 1,     /* given its plan: the window padded with the layer's maximum */
    .plan_size = kvp_plan_size,
    .plan_score = kvp_plan_score,
    .plan_layer = kvp_plan_layer,
};
