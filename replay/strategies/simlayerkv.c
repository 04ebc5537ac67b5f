/* simlayerkv — layer-wise: a "lazy" layer keeps only the initial and the recent entries
 * (StreamingLLM-style), every other layer keeps the whole prompt.
 *
 * Rule (prefill protocol, one decision per (sequence, layer), all kv heads alike):
 *   1. a[j] = attention of the last n_last prompt queries over the prompt keys j, averaged
 *      over those rows and over all H query heads (causal rows, normalised over their
 *      visible keys: the shared window column sums, replay/shared.h).
 *   2. score = sum_{j < n_initial} a[j] + sum_{j >= P - n_recent} a[j].
 *   3. score > threshold: the layer is lazy and every kv head keeps [0, n_initial) and the
 *      last n_recent - n_last prompt positions; otherwise it keeps all P entries.
 *   A prompt shorter than n_initial + n_recent is not compressed (as the reference).
 * No keep=/budget=: the memory kept is an outcome (the fraction of lazy layers), reported in
 * keep_frac / kv_bytes like any other configuration's.
 * Defaults: n_last=1, n_recent=1024, n_initial=4 (kvpress SimLayerKVPress; n_last=1 matches
 * the paper's decode-time variant), threshold=0.9. kvpress has no default threshold (it is a
 * required argument); the paper tunes it per model; 0.9 is our choice, give threshold= to
 * match a model's value.
 * Reference: Zhang et al. 2024, "SimLayerKV: A Simple Framework for Layer-Level KV Cache
 * Reduction" (arXiv 2410.13846; github.com/sail-sg/SimLayerKV); NVIDIA/kvpress
 * SimLayerKVPress (presses/simlayerkv_press.py).
 * Differences: none in the rule. The lazy layer's recent part is n_recent - n_last entries
 * long, exactly as kvpress slices it (keys[-n_recent + n_last:]); the score is summed in
 * double (the reference: fp32/bf16), which can only matter for a score within rounding of
 * the threshold.
 */
#include <stdlib.h>

#include "evict_util.h"
#include "strategy.h"

extern const rp_strategy rp_strategy_simlayerkv;

typedef struct simlayerkv_cfg { double threshold; size_t n_last, n_recent, n_initial; } simlayerkv_cfg;

static const rp_param_def simlayerkv_params[] = {
    { "threshold", RP_FLOAT, "0.9", 0, 1, NULL, "lazy when the last queries' attention on initial + recent entries exceeds it" },
    { "n_last", RP_INT, "1", 1, 1e9, NULL, "last prompt queries whose attention decides" },
    { "n_recent", RP_INT, "1024", 1, 1e9, NULL, "recent window (a lazy layer keeps its last n_recent - n_last entries)" },
    { "n_initial", RP_INT, "4", 0, 1e9, NULL, "initial entries (sinks) a lazy layer keeps" },
};

static int simlayerkv_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    simlayerkv_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->threshold = v[0];
    c->n_last = (size_t)v[1];
    c->n_recent = (size_t)v[2];
    c->n_initial = (size_t)v[3];
    if (c->n_last > c->n_recent) {
        free(c);
        return rp_failf(err, errlen, "simlayerkv: n_last=%zu must not exceed n_recent=%zu", (size_t)v[1], (size_t)v[2]);
    }
    *cfg = c;
    return 0;
}

static void simlayerkv_free(void *cfg) { free(cfg); }

/* Whether this configuration scores a prompt of P tokens (else it keeps everything). */
static int scores(const simlayerkv_cfg *c, size_t P)
{
    return P >= c->n_initial + c->n_recent && P > c->n_last;
}

/* The plan (strategy.h plan_size): plan_score leaves, for each of kv head g's G query heads in
 * order, the n_initial + n_recent columns of step 1's window sums that step 2 adds; plan_layer
 * adds every head's in the layer's head order (exactly the sum one pass over the layer's H query
 * heads makes), divides, and writes the lazy flag (1/0) at the start of every kv head's row. No
 * plan for a prompt that is not compressed. */
static size_t simlayerkv_plan_size(const void *cfg, size_t P, size_t G, size_t B)
{
    const simlayerkv_cfg *c = cfg;
    (void)B;
    return scores(c, P) ? G * (c->n_initial + c->n_recent) : 0;
}

static int simlayerkv_plan_score(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B, double *out,
                                 char *err, size_t errlen)
{
    const simlayerkv_cfg *c = cfg;
    size_t P = ctx->P, ni = c->n_initial, nr = c->n_recent;
    (void)B;
    double *col = malloc(P * sizeof *col);
    if (!col) return rp_failf(err, errlen, "simlayerkv: out of memory");
    for (size_t i = 0; i < ctx->G; i++) {
        for (size_t j = 0; j < P; j++) col[j] = 0;
        if (ev_accum_rows(ctx, g * ctx->G + i, P - c->n_last, P, NULL, P, col)) {
            free(col);
            return rp_failf(err, errlen, "simlayerkv: out of memory");
        }
        double *o = out + i * (ni + nr);
        for (size_t j = 0; j < ni; j++) o[j] = col[j];
        for (size_t j = 0; j < nr; j++) o[ni + j] = col[P - nr + j];
    }
    free(col);
    return 0;
}

static int simlayerkv_plan_layer(const void *cfg, size_t Hkv, size_t G, size_t P, size_t B, double *plan,
                                 char *err, size_t errlen)
{
    const simlayerkv_cfg *c = cfg;
    size_t S = simlayerkv_plan_size(cfg, P, G, B);
    (void)err; (void)errlen;
    double tot = 0;
    for (size_t i = 0; i < Hkv * S; i++) tot += plan[i];
    double score = tot / (double)(Hkv * G * c->n_last);
    for (size_t g = 0; g < Hkv; g++) plan[g * S] = score > c->threshold;
    return 0;
}

static int simlayerkv_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                              char *err, size_t errlen)
{
    const simlayerkv_cfg *c = cfg;
    size_t P = ctx->P, S = simlayerkv_plan_size(cfg, P, ctx->G, B);
    const double *plan = NULL;
    double *own = NULL;
    int32_t *kept = malloc((P ? P : 1) * sizeof *kept);
    if (!kept) return -1;
    int rc = S ? rp_plan_get(&rp_strategy_simlayerkv, cfg, ctx, B, &plan, &own, err, errlen) : 0;
    for (size_t g = 0; g < ctx->Hkv && !rc; g++) {
        size_t m = 0;
        if (plan && plan[g * S] != 0) {      /* lazy */
            for (size_t j = 0; j < c->n_initial; j++) kept[m++] = (int32_t)j;
            for (size_t j = P - (c->n_recent - c->n_last); j < P; j++) kept[m++] = (int32_t)j;
        } else {
            for (size_t j = 0; j < P; j++) kept[m++] = (int32_t)j;
        }
        rc = ev_push_kept(ctx, g, kept, m, &out[g]);
    }
    free(own);
    free(kept);
    return rc;
}

const rp_strategy rp_strategy_simlayerkv = {
    .name = "simlayerkv",
    .summary = "lazy layers (last query's attention on initial + recent entries > threshold) keep only those; others keep all",
    .reference = "Zhang et al. 2024 (arXiv 2410.13846), github.com/sail-sg/SimLayerKV; kvpress SimLayerKVPress "
                 "(defaults n_last=1 n_recent=1024 n_initial=4; no budget: lazy layers decide the memory)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .params = simlayerkv_params,
    .n_params = sizeof simlayerkv_params / sizeof simlayerkv_params[0],
    .configure = simlayerkv_configure,
    .free_cfg = simlayerkv_free,
    .prefill = simlayerkv_prefill,
    .head_separable = 1,     /* given its plan: the layer's decision is plan_layer's */
    .plan_size = simlayerkv_plan_size,
    .plan_score = simlayerkv_plan_score,
    .plan_layer = simlayerkv_plan_layer,
};
