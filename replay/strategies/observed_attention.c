/* observed_attention — keep the prompt keys with the highest MEAN attention received.
 *
 * Rule (prefill protocol, per kv head): for query head h of the group,
 *     s_h(j) = (sum over prompt queries t in [j, P) of p_h(t, j)) / (P - j),
 * the accumulated causal attention of key j divided by the number of prompt queries that
 * can see it; score(j) = mean of s_h(j) over the G query heads of the kv head; keep the B
 * highest scores (ties: lower position). B >= P keeps everything.
 * Cost: the column sums are the engine's shared prompt_colsum over [0, P) (the same ones
 * h2o and cab read), so this strategy costs one division per key.
 * Defaults: preset=kvpress (kvpress has no parameter besides compression_ratio).
 * Reference: kvpress ObservedAttentionPress (github.com/NVIDIA/kvpress,
 * presses/observed_attention_press.py: attentions.sum over queries / arange(n, 0, -1), mean
 * over the group); related to H2O (Zhang et al. 2023, arXiv 2306.14048).
 * Budget: preset=kvpress keeps kvpress's int(P * (1 - compression_ratio)) with
 * compression_ratio = 1 - keep (kvpress_budget.h); preset=kvtrace the engine's round(keep * P).
 * Differences: kvpress takes the attention of an eager forward pass in the model's dtype;
 * here the fp32 probabilities are summed in double.
 */
#include <stdlib.h>
#include <string.h>

#include "evict_util.h"
#include "kvpress_budget.h"
#include "strategy.h"

typedef struct oa_cfg { int preset; } oa_cfg;

static const rp_param_def oa_params[] = { KVPRESS_PRESET_PARAM };

static int oa_configure(const double *values, void **cfg, char *err, size_t errlen)
{
    oa_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->preset = (int)values[0];
    *cfg = c;
    return 0;
}

static void oa_free(void *cfg) { free(cfg); }

/* score [P] of kv head g; acc [G][P] scratch. 0 ok, -1 ENOMEM. */
static int oa_score(const rp_layer_ctx *ctx, size_t g, double *acc, double *score)
{
    size_t P = ctx->P, G = ctx->G;
    memset(acc, 0, G * P * sizeof *acc);
    for (size_t i = 0; i < G; i++) {
        if (ev_accum_rows(ctx, g * G + i, 0, P, NULL, P, acc + i * P)) return -1;
        for (size_t j = 0; j < P; j++) acc[i * P + j] /= (double)(P - j);
    }
    ev_reduce(acc, G, P, RP_GQA_MEAN, score);
    return 0;
}

static int oa_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                      char *err, size_t errlen)
{
    const oa_cfg *c = cfg;
    size_t P = ctx->P;
    B = kvpress_n_kept(c->preset, ctx, P, B);
    double *acc = malloc((ctx->G * P + 1) * sizeof *acc), *score = malloc((P + 1) * sizeof *score);
    int32_t *kept = malloc((P + 1) * sizeof *kept);
    int rc = -1;
    if (!acc || !score || !kept) goto done;
    for (size_t g = 0; g < ctx->Hkv; g++) {
        size_t m = P;
        if (B >= P) {
            for (size_t j = 0; j < P; j++) kept[j] = (int32_t)j;
        } else {
            if (oa_score(ctx, g, acc, score)) goto done;
            m = rp_topk(score, P, B, kept);
        }
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
    }
    rc = 0;
done:
    free(acc); free(score); free(kept);
    return rc;
}

const rp_strategy rp_strategy_observed_attention = {
    .name = "observed_attention",
    .summary = "mean attention received from the prompt's queries (shared colsum / visible queries), group mean "
               "(kvpress ObservedAttentionPress)",
    .reference = "kvpress ObservedAttentionPress (github.com/NVIDIA/kvpress); related to H2O (Zhang et al. 2023)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = oa_params,
    .n_params = sizeof oa_params / sizeof oa_params[0],
    .configure = oa_configure,
    .free_cfg = oa_free,
    .prefill = oa_prefill,
    .head_separable = 1,     /* each kv head's cache from its own rows and scores */
};
