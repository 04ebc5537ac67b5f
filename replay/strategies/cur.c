/* cur — approximate leverage scores of keys and values (CurDKV), locally normalised.
 *
 * Rule (prefill protocol, per kv head, on the stored keys and values of the prompt):
 *   k2(j) = ||k_j||^2, v2(j) = ||v_j||^2;
 *   window=w > 0 (local approximation): the prompt is cut into windows [0, w), [w, 2w), ...
 *     and k2, v2 are divided by their sums over the window (the last window may be short);
 *   leverage: kv_product k2 * v2 (default) | key k2 | value v2 | kv_avg (k2 + v2) / 2;
 *   the scores are divided by their sum over the prompt, then the first `sinks` positions
 *   get 1.0 (above every other score) and the B highest are kept (ties: lower position).
 *   B >= P keeps everything.
 * Defaults (kvpress CURPress): preset=kvpress (its budget rule, kvpress_budget.h), sinks=4, leverage=kv_product, window=16
 * (use_local_approximation with local_window_size 16; window=0 turns it off).
 * Reference: CurDKV, "Value-Guided KV Compression for LLMs via Approximated CUR
 * Decomposition" (arXiv 2509.15038); kvpress CURPress (github.com/NVIDIA/kvpress,
 * presses/cur_press.py).
 * Differences: kvpress's use_random_leverage (a torch.randn projection to 20 dims, off by
 * default) is not offered: its draws cannot be reproduced from a trace. A window (or prompt) whose sum is 0 gives scores 0 where torch divides
 * 0 by 0. Scores in double.
 */
#include <stdlib.h>

#include "evict_util.h"
#include "kvpress_budget.h"
#include "strategy.h"

enum { CUR_KV_PRODUCT = 0, CUR_KEY = 1, CUR_VALUE = 2, CUR_KV_AVG = 3 };

typedef struct cur_cfg { int preset; size_t sinks, window; int leverage; } cur_cfg;

static const rp_param_def cur_params[] = {
    KVPRESS_PRESET_PARAM,
    { "sinks", RP_INT, "4", 0, 1e9, NULL, "first positions always kept (num_sinks)" },
    { "leverage", RP_ENUM, "kv_product", 0, 0, "kv_product|key|value|kv_avg", "how key and value leverages combine" },
    { "window", RP_INT, "16", 0, 1e9, NULL, "local normalisation window (local_window_size; 0: none)" },
};

static int cur_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    cur_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->preset = (int)v[0];
    c->sinks = (size_t)v[1];
    c->leverage = (int)v[2];
    c->window = (size_t)v[3];
    *cfg = c;
    return 0;
}

static void cur_free(void *cfg) { free(cfg); }

static double sq_norm(const float *x, size_t D)
{
    double s = 0;
    for (size_t d = 0; d < D; d++) s += (double)x[d] * x[d];
    return s;
}

/* x[j] /= sum of x over its window of w (w = 0: unchanged); a zero sum gives 0. */
static void local_normalise(double *x, size_t P, size_t w)
{
    if (w == 0) return;
    for (size_t a = 0; a < P; a += w) {
        size_t b = a + w < P ? a + w : P;
        double s = 0;
        for (size_t j = a; j < b; j++) s += x[j];
        for (size_t j = a; j < b; j++) x[j] = s > 0 ? x[j] / s : 0.0;
    }
}

/* score [P] of the prompt rows k, v [P][D]; k2, v2 [P] scratch. */
static void cur_score(const cur_cfg *c, const float *k, const float *v, size_t P, size_t D, double *k2, double *v2,
                      double *score)
{
    for (size_t j = 0; j < P; j++) { k2[j] = sq_norm(k + j * D, D); v2[j] = sq_norm(v + j * D, D); }
    local_normalise(k2, P, c->window);
    local_normalise(v2, P, c->window);
    double tot = 0;
    for (size_t j = 0; j < P; j++) {
        double s = c->leverage == CUR_KEY ? k2[j] : c->leverage == CUR_VALUE ? v2[j]
                 : c->leverage == CUR_KV_AVG ? (k2[j] + v2[j]) / 2 : k2[j] * v2[j];
        score[j] = s;
        tot += s;
    }
    for (size_t j = 0; j < P; j++) score[j] = tot > 0 ? score[j] / tot : 0.0;
    for (size_t j = 0; j < c->sinks && j < P; j++) score[j] = 1.0;
}

static int cur_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                       char *err, size_t errlen)
{
    const cur_cfg *c = cfg;
    size_t P = ctx->P, D = ctx->D;
    B = kvpress_n_kept(c->preset, ctx, P, B);
    double *k2 = malloc((P + 1) * sizeof *k2), *v2 = malloc((P + 1) * sizeof *v2),
           *score = malloc((P + 1) * sizeof *score);
    int32_t *kept = malloc((P + 1) * sizeof *kept);
    int rc = -1;
    if (!k2 || !v2 || !score || !kept) goto done;
    for (size_t g = 0; g < ctx->Hkv; g++) {
        size_t m = P;
        if (B >= P) {
            for (size_t j = 0; j < P; j++) kept[j] = (int32_t)j;
        } else {
            cur_score(c, ctx->k + g * ctx->n * D, ctx->v + g * ctx->n * D, P, D, k2, v2, score);
            m = rp_topk(score, P, B, kept);
        }
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
    }
    rc = 0;
done:
    free(k2); free(v2); free(score); free(kept);
    return rc;
}

const rp_strategy rp_strategy_cur = {
    .name = "cur",
    .summary = "CUR leverage: ||k||^2 * ||v||^2 normalised in windows of 16, 4 sinks kept (kvpress CURPress)",
    .reference = "CurDKV (arXiv 2509.15038); kvpress CURPress (github.com/NVIDIA/kvpress)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = cur_params,
    .n_params = sizeof cur_params / sizeof cur_params[0],
    .configure = cur_configure,
    .free_cfg = cur_free,
    .prefill = cur_prefill,
    .head_separable = 1,     /* each kv head's cache from its own rows and scores */
};
