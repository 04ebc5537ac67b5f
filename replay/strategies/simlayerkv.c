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

/* The layer's laziness score (step 1-2); -1 out of memory. */
static int layer_score(const simlayerkv_cfg *c, const rp_layer_ctx *ctx, double *score)
{
    size_t P = ctx->P;
    double *col = malloc(P * sizeof *col), tot = 0;
    if (!col) return -1;
    for (size_t h = 0; h < ctx->H; h++) {
        for (size_t j = 0; j < P; j++) col[j] = 0;
        if (ev_accum_rows(ctx, h, P - c->n_last, P, NULL, P, col)) { free(col); return -1; }
        for (size_t j = 0; j < c->n_initial; j++) tot += col[j];
        for (size_t j = P - c->n_recent; j < P; j++) tot += col[j];
    }
    free(col);
    *score = tot / (double)(ctx->H * c->n_last);
    return 0;
}

static int simlayerkv_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                              char *err, size_t errlen)
{
    const simlayerkv_cfg *c = cfg;
    size_t P = ctx->P, m = 0;
    int32_t *kept = malloc((P ? P : 1) * sizeof *kept);
    if (!kept) return -1;
    int lazy = 0;
    if (P >= c->n_initial + c->n_recent && P > c->n_last) {
        double s;
        if (layer_score(c, ctx, &s)) { free(kept); return -1; }
        lazy = s > c->threshold;
    }
    if (lazy) {
        for (size_t j = 0; j < c->n_initial; j++) kept[m++] = (int32_t)j;
        for (size_t j = P - (c->n_recent - c->n_last); j < P; j++) kept[m++] = (int32_t)j;
    } else {
        for (size_t j = 0; j < P; j++) kept[m++] = (int32_t)j;
    }
    int rc = 0;
    for (size_t g = 0; g < ctx->Hkv && !rc; g++) rc = ev_push_kept(ctx, g, kept, m, &out[g]);
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
};
