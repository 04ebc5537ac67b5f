/* criticaladakv — criticalkv's two stages inside AdaKV's head-adaptive budgets: the kv heads
 * of a layer share Hkv * B entries.
 *
 * Rule (prefill protocol, one layer):
 *   1. s[g][j]: the base score — SnapKV's observation-window score, window padded with the
 *      layer's maximum (kvp_score.h; kvpress SnapKVPress.score).
 *   2. Budgets (adakv's allocation, adakv.h): each head reserves its n_safe = floor(alpha * B)
 *      best entries; the layer's Hkv * B best scores (reserved ones first) give head g its
 *      budget B_g = the number of them in head g.
 *   3. Stage 1: head g pins its max(n_safe, floor(first_stage_ratio * B_g)) best entries by s
 *      (the reserved ones and the stage-1 choice of the reference, ties: lower position).
 *   4. Stage 2: u[g][j] = mean over g's query heads h of ||v_j W_O[h]||_1 (criticalkv.h);
 *      head g keeps its pinned entries and fills B_g with the best (s + epsilon) * u.
 *   B >= P keeps everything. Heads keep different numbers of entries; the layer keeps Hkv * B.
 * Needs a trace with a read-out (/readout/w_o); window < P.
 * Defaults: alpha=0.2, epsilon=1e-4, first_stage_ratio=0.5 (kvpress CriticalAdaKVPress:
 * alpha_safeguard 0.20); base press SnapKV with kvpress's defaults (preset=kvpress).
 * Reference: Feng et al. 2025, "Identify Critical KV Cache in LLM Inference from an Output
 * Perturbation Perspective" (arXiv 2502.03805; github.com/FFY0/AdaKV); NVIDIA/kvpress
 * CriticalAdaKVPress (presses/criticalkv_press.py).
 * Differences: the reference marks pinned entries with the dtype's maximum and multiplies
 * them by u in stage 2 (a value that can overflow to inf); here they are pinned by a flag, the
 * same selection whenever u > 0. Budgets from B = round(keep * P) (kvpress int(P * keep)).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adakv.h"
#include "criticalkv.h"
#include "evict_util.h"
#include "kvp_score.h"
#include "strategy.h"

extern const rp_strategy rp_strategy_criticaladakv;

enum { CA_ALPHA, CA_RATIO, CA_EPS };   /* kvp_cfg.own[] */

static const rp_param_def criticaladakv_params[] = {
    { "alpha", RP_FLOAT, "0.2", 0, 1, NULL, "safeguard: each head keeps at least floor(alpha * B) entries" },
    { "first_stage_ratio", RP_FLOAT, "0.5", 0, 1, NULL, "fraction of a head's budget chosen by the base score alone" },
    { "epsilon", RP_FLOAT, "1e-4", 0, 1e9, NULL, "added to the base score before weighting by ||v W_O||_1" },
    KVP_SCORER_PARAMS,
};

static int criticaladakv_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    return kvp_configure(v, 3, "criticaladakv", cfg, err, errlen);
}

/* Steps 3-4 for head g with budget Bg: kept positions (ascending) into kept, count returned. */
static size_t head_select(const kvp_cfg *c, const double *s, const double *u, size_t P, size_t B, size_t Bg,
                          double *s2, int32_t *kept)
{
    size_t nsafe = (size_t)floor(c->own[CA_ALPHA] * (double)B), n1 = (size_t)floor(c->own[CA_RATIO] * (double)Bg);
    size_t npin = rp_topk(s, P, nsafe > n1 ? nsafe : n1, kept);
    for (size_t j = 0; j < P; j++) s2[j] = (s[j] + c->own[CA_EPS]) * u[j];
    for (size_t i = 0; i < npin; i++) s2[kept[i]] = INFINITY;
    return rp_topk(s2, P, Bg, kept);
}

/* The plan (strategy.h plan_size), rows of P + 1 doubles: plan_score (kvp_plan_score) leaves kv
 * head g's SnapKV prefix scores at [0, P); plan_layer pads every window with the layer's maximum
 * (step 1, kvp_pad_window), allocates (step 2) and leaves at [P] head g's budget B_g. No plan
 * when B >= P (everything kept). */
static size_t criticaladakv_plan_size(const void *cfg, size_t P, size_t G, size_t B)
{
    (void)cfg; (void)G;
    return B < P ? P + 1 : 0;
}

static int criticaladakv_plan_layer(const void *cfg, size_t Hkv, size_t G, size_t P, size_t B, double *plan,
                                    char *err, size_t errlen)
{
    const kvp_cfg *c = cfg;
    size_t S = P + 1;
    (void)G;
    double *score = calloc(Hkv * P, sizeof *score);   /* calloc: gcc cannot see that the loop fills it */
    uint8_t *keep = malloc(Hkv * P);
    if (!score || !keep) { free(score); free(keep); return rp_failf(err, errlen, "criticaladakv: out of memory"); }
    for (size_t g = 0; g < Hkv; g++) memcpy(score + g * P, plan + g * S, P * sizeof *score);
    kvp_pad_window(&c->o, score, Hkv, P);
    int rc = 0;
    if (adakv_allocate(score, Hkv, P, B, c->own[CA_ALPHA], keep) == (size_t)-1) {
        rc = rp_failf(err, errlen, "criticaladakv: out of memory");
    } else {
        for (size_t g = 0; g < Hkv; g++) {
            size_t Bg = 0;
            for (size_t j = 0; j < P; j++) Bg += keep[g * P + j];
            memcpy(plan + g * S, score + g * P, P * sizeof *score);
            plan[g * S + P] = (double)Bg;
        }
    }
    free(score); free(keep);
    return rc;
}

static int criticaladakv_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                                 char *err, size_t errlen)
{
    const kvp_cfg *c = cfg;
    size_t P = ctx->P, Hkv = ctx->Hkv;
    double *u = malloc(P * sizeof *u), *s2 = malloc(P * sizeof *s2), *own = NULL;
    const double *plan;
    int32_t *kept = malloc(P * sizeof *kept);
    int rc = -1;
    if (!u || !s2 || !kept) { rp_failf(err, errlen, "out of memory"); goto done; }
    if (B >= P) {
        rc = kvp_keep_all(ctx, kept, out);
        goto done;
    }
    const float *wo = NULL;
    size_t C = 0;
    if (criticalkv_w_o(ctx, "criticaladakv", &wo, &C, err, errlen)) goto done;
    if (rp_plan_get(&rp_strategy_criticaladakv, cfg, ctx, B, &plan, &own, err, errlen)) goto done;
    for (size_t g = 0; g < Hkv; g++) {
        const double *row = plan + g * (P + 1);
        size_t Bg = (size_t)row[P];
        const double *un;
        if (criticalkv_value_norms(ctx, g, wo, C, u, &un)) {
            rp_failf(err, errlen, "criticaladakv: out of memory");
            goto done;
        }
        size_t m = head_select(c, row, un, P, B, Bg, s2, kept);
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
    }
    rc = 0;
done:
    free(own); free(u); free(s2); free(kept);
    return rc;
}

const rp_strategy rp_strategy_criticaladakv = {
    .name = "criticaladakv",
    .summary = "criticalkv's two stages within AdaKV's head-adaptive budgets (layer shares Hkv * B entries)",
    .reference = "Feng et al. 2025 (arXiv 2502.03805), github.com/FFY0/AdaKV; kvpress CriticalAdaKVPress over "
                 "SnapKVPress (alpha=0.2, first_stage_ratio=0.5, epsilon=1e-4; Hkv * B per layer)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = criticaladakv_params,
    .n_params = sizeof criticaladakv_params / sizeof criticaladakv_params[0],
    .configure = criticaladakv_configure,
    .free_cfg = kvp_free,
    .check_budget = kvp_check_budget,
    .prefill = criticaladakv_prefill,
    .head_separable = 1,     /* given its plan: the budgets are plan_layer's */
    .plan_size = criticaladakv_plan_size,
    .plan_score = kvp_plan_score,
    .plan_layer = criticaladakv_plan_layer,
};
