/* criticalkv — two-stage selection: half of the budget by the base score, the rest by the
 * base score weighted with how much each value moves the layer's output, ||v W_O_h||_1.
 *
 * Rule (prefill protocol, per kv head g with query heads h = gG .. gG + G - 1):
 *   1. s[j]: the base score — SnapKV's observation-window score, window padded with the
 *      layer's maximum (kvp_score.h; kvpress SnapKVPress.score).
 *   2. Stage 1: the n1 = floor(first_stage_ratio * B) best entries by s are kept.
 *   3. Stage 2: u[j] = mean over the G query heads h of ||v_j W_O[h]||_1, where W_O[h] is the
 *      [D][C] block of the trace's read-out W_O (rows hD .. hD + D - 1) of this layer;
 *      s2[j] = (s[j] + epsilon) * u[j], and the stage-1 entries rank first.
 *   4. Keep the B best by s2 (ties: lower position). B >= P keeps everything.
 * Needs a trace with a read-out (/readout/w_o); window < P.
 * Defaults: first_stage_ratio=0.5, epsilon=1e-4 (kvpress CriticalKVPress); base press SnapKV
 * with kvpress's defaults (preset=kvpress: window 64, kernel 5, avg pooling, window rows
 * averaged, group mean). kvpress's examples pair CriticalKV with SnapKV or
 * ExpectedAttention; SnapKV is the base here (shared window sums, replay/shared.h).
 * Reference: Feng et al. 2025, "Identify Critical KV Cache in LLM Inference from an Output
 * Perturbation Perspective" (arXiv 2502.03805; github.com/FFY0/AdaKV, CriticalKV); NVIDIA/kvpress
 * CriticalKVPress (presses/criticalkv_press.py).
 * Differences: stage 1 keeps floor(first_stage_ratio * B) with B = round(keep * P), kvpress
 * int((1 - compression_ratio) * P * first_stage_ratio): equal up to the rounding of the
 * budget. The norms are computed in double from the fp16-rounded trace values (the
 * reference: model dtype), once per (sequence, layer, kv head) for every configuration
 * (replay/shared.h). Stage-1 entries get +inf instead of the dtype's maximum (the
 * same ranking).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "criticalkv.h"
#include "evict_util.h"
#include "kvp_score.h"
#include "shared.h"
#include "strategy.h"

enum { CK_RATIO, CK_EPS };   /* kvp_cfg.own[] */

static const rp_param_def criticalkv_params[] = {
    { "first_stage_ratio", RP_FLOAT, "0.5", 0, 1, NULL, "fraction of the budget chosen by the base score alone" },
    { "epsilon", RP_FLOAT, "1e-4", 0, 1e9, NULL, "added to the base score before weighting by ||v W_O||_1" },
    KVP_SCORER_PARAMS,
};

static int criticalkv_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    return kvp_configure(v, 2, "criticalkv", cfg, err, errlen);
}

/* Step 3's u of kv head g (criticalkv.h): the engine's shared norms (computed once per work
 * item for every configuration and budget), or computed here into buf [P] without the engine. */
int criticalkv_value_norms(const rp_layer_ctx *ctx, size_t g, const float *wo, size_t C, double *buf,
                           const double **u)
{
    if (ctx->value_norms) return ctx->value_norms(ctx, g, u) ? -1 : 0;
    *u = buf;
    size_t gl = ctx->g0 + g;    /* W_O holds every query head of the layer */
    return rp_value_norms(ctx->v + g * ctx->n * ctx->D, ctx->P, ctx->D, wo + gl * ctx->G * ctx->D * C, C, ctx->G, buf);
}

int criticalkv_w_o(const rp_layer_ctx *ctx, const char *who, const float **wo, size_t *C, char *err, size_t errlen)
{
    int wr = ctx->w_o ? ctx->w_o(ctx, wo, C) : -1;
    if (wr == -1)
        return rp_failf(err, errlen, "%s: needs the trace's read-out W_O (/readout/w_o), which this trace lacks", who);
    if (wr) return rp_failf(err, errlen, "%s: cannot read the layer's W_O (out of memory or a read error)", who);
    return 0;
}

static int criticalkv_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                              char *err, size_t errlen)
{
    const kvp_cfg *c = cfg;
    size_t P = ctx->P, Hkv = ctx->Hkv;
    double *score = malloc(Hkv * P * sizeof *score), *u = malloc(P * sizeof *u);
    int32_t *kept = malloc(P * sizeof *kept);
    int rc = -1;
    if (!score || !u || !kept) { rp_failf(err, errlen, "out of memory"); goto done; }
    if (B >= P) {
        rc = kvp_keep_all(ctx, kept, out);
        goto done;
    }
    const float *wo = NULL;
    size_t C = 0;
    if (criticalkv_w_o(ctx, "criticalkv", &wo, &C, err, errlen)) goto done;
    if (kvp_check_window(&c->o, "criticalkv", P, err, errlen)) goto done;
    if (kvp_window_scores(&c->o, ctx, score)) goto done;
    size_t n1 = (size_t)floor(c->own[CK_RATIO] * (double)B);
    for (size_t g = 0; g < Hkv; g++) {
        double *s = score + g * P;
        size_t m1 = rp_topk(s, P, n1, kept);
        const double *un;
        if (criticalkv_value_norms(ctx, g, wo, C, u, &un)) {
            rp_failf(err, errlen, "criticalkv: out of memory");
            goto done;
        }
        for (size_t j = 0; j < P; j++) s[j] = (s[j] + c->own[CK_EPS]) * un[j];
        for (size_t i = 0; i < m1; i++) s[kept[i]] = INFINITY;
        size_t m = rp_topk(s, P, B, kept);
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
    }
    rc = 0;
done:
    free(score); free(u); free(kept);
    return rc;
}

const rp_strategy rp_strategy_criticalkv = {
    .name = "criticalkv",
    .summary = "two stages: first_stage_ratio of the budget by SnapKV score, the rest by (score + eps) * ||v W_O||_1",
    .reference = "Feng et al. 2025 (arXiv 2502.03805); kvpress CriticalKVPress over SnapKVPress (first_stage_ratio=0.5, "
                 "epsilon=1e-4; stage 1 keeps floor(ratio * B), B per kv head)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = criticalkv_params,
    .n_params = sizeof criticalkv_params / sizeof criticalkv_params[0],
    .configure = criticalkv_configure,
    .free_cfg = kvp_free,
    .check_budget = kvp_check_budget,
    .prefill = criticalkv_prefill,
};
