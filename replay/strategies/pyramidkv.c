/* pyramidkv — SnapKV selection with per-layer budgets shaped as a pyramid: more entries in
 * the lower layers, fewer in the upper ones, the same total on average.
 *
 * Rule (prefill protocol): the layer's budget B_l from one of two reference formulas, then
 * SnapKV's selection (snapkv.c: window always kept, B_l - w best pooled prefix scores).
 *   form=factory (default; KVCache-Factory pyramidkv_utils.py PyramidKVCluster.update_kv,
 *     integer arithmetic; C = the run's budget B, w = window, N layers):
 *       P < C: keep all.  P < 2 (C - w): every layer keeps C (plain SnapKV).
 *       otherwise min = (C - w) // beta, max = 2 (C - w) - min; if max >= P - w then
 *       max = P - w, min = 2 (C - w) - max; steps = (max - min) // (N - 1);
 *       B_l = max - l * steps + w.   (worked example: w=8, C=128, N=32, beta=20, long P:
 *       min 6, max 234, steps 7 -> B_0 = 242, B_31 = 25.)
 *   form=kvpress (NVIDIA/kvpress PyramidKVPress.get_layer_budget, float arithmetic; B the
 *     run's budget = q_len (1 - compression_ratio)):
 *       min = B / beta, max = 2 B - min; if max >= P - w then max = P - w, min = 2 B - max;
 *       unless P >= max >= min >= w, fall back to round(B); steps = (max - min) / (N - 1);
 *       B_l = round(max - l * steps) (Python's round: half to even).
 *   N = 1: steps = 0 (the references divide by zero).
 * Defaults: form=factory, beta=20 (both references), scoring knobs from the form's SnapKV
 * preset (factory: window 8, kernel 7, maxpool, rows summed; kvpress: window 64, kernel 5,
 * avgpool, rows averaged, group mean); each knob can be overridden as in snapkv.
 * Note: the kvpress form uses the run's integer budget B (round(keep * P)) where kvpress
 * uses the unrounded q_len * (1 - compression_ratio).
 * Reference: Cai et al. 2024, "PyramidKV: Dynamic KV Cache Compression based on Pyramidal
 * Information Funneling" (arXiv 2406.02069; github.com/Zefan-Cai/KVCache-Factory); kvpress
 * PyramidKVPress.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "evict_util.h"
#include "pyramidkv.h"
#include "snapkv.h"
#include "strategy.h"

typedef struct pyramidkv_cfg { int form; size_t beta; snapkv_opts o; } pyramidkv_cfg;

static const rp_param_def pyramidkv_params[] = {
    { "form", RP_ENUM, "factory", 0, 0, "factory|kvpress", "budget formula: Factory integer or kvpress float" },
    { "beta", RP_INT, "20", 1, 1e9, NULL, "pyramid steepness (min budget = (C - w) / beta)" },
    { "window", RP_INT, "-1", -1, 1e9, NULL, "observation window w (-1: the form's preset)" },
    { "kernel", RP_INT, "-1", -1, 1e9, NULL, "pooling kernel, odd (-1: the form's preset)" },
    { "pool", RP_ENUM, "preset", 0, 0, "preset|avg|max", "pooling" },
    { "reduce", RP_ENUM, "preset", 0, 0, "preset|sum|mean", "reduction over the window's queries" },
    { "gqa", RP_ENUM, "preset", 0, 0, "preset|run|mean|max|sum", "reduction over a kv head's query heads" },
    { "gqa_at", RP_ENUM, "after", 0, 0, "after|before", "GQA reduction after or before pooling" },
};

size_t pyramidkv_budget_factory(size_t C, size_t w, size_t beta, size_t N, size_t l, size_t P)
{
    if (P < C) return P;
    if (C <= w) return C;                       /* refused by the caller (window >= budget) */
    long cw = (long)(C - w), p = (long)P, W = (long)w;
    if (p < 2 * cw) return C;
    long mn = cw / (long)beta, mx = 2 * cw - mn;
    if (mx >= p - W) { mx = p - W; mn = 2 * cw - mx; }
    long steps = N > 1 ? (mx - mn) / (long)(N - 1) : 0;
    long b = mx - (long)l * steps + W;
    return b < 0 ? 0 : (size_t)b;
}

size_t pyramidkv_budget_kvpress(double B, size_t w, size_t beta, size_t N, size_t l, size_t P)
{
    double W = (double)w, p = (double)P;
    double mn = B / (double)beta, mx = 2 * B - mn;
    if (mx >= p - W) { mx = p - W; mn = 2 * B - mx; }
    if (!(p >= mx && mx >= mn && mn >= W)) return (size_t)ev_round_half_even(B);
    double steps = N > 1 ? (mx - mn) / (double)(N - 1) : 0;
    double b = ev_round_half_even(mx - (double)l * steps);
    return b < 0 ? 0 : (size_t)b;
}

static int pyramidkv_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    pyramidkv_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->form = (int)v[0];
    c->beta = (size_t)v[1];
    int preset = c->form == 1 ? SNAPKV_PRESET_KVPRESS : SNAPKV_PRESET_FACTORY;
    int gqa = v[6] == 0 ? -2 : v[6] == 1 ? SNAPKV_GQA_RUN : (int)v[6] - 2;
    if (snapkv_resolve(preset, (long)v[2], (long)v[3], (int)v[4] - 1, (int)v[5] - 1, gqa, (int)v[7], &c->o,
                       "pyramidkv", err, errlen)) {
        free(c);
        return -1;
    }
    *cfg = c;
    return 0;
}

static void pyramidkv_free(void *cfg) { free(cfg); }

/* pyramidkv_prefill's refusals, for every layer, before any work. */
static int pyramidkv_check_budget(const void *cfg, size_t P, size_t B, size_t n_layers, char *err, size_t errlen)
{
    const pyramidkv_cfg *c = cfg;
    size_t w = c->o.window;
    if (B >= P) return 0;
    if (snapkv_check_window("pyramidkv", w, B, NULL, err, errlen)) return -1;
    for (size_t l = 0; l < n_layers; l++) {
        size_t Bl = c->form == 1 ? pyramidkv_budget_kvpress((double)B, w, c->beta, n_layers, l, P)
                                 : pyramidkv_budget_factory(B, w, c->beta, n_layers, l, P);
        if (Bl > P) Bl = P;
        if (Bl < w) {
            snprintf(err, errlen, "pyramidkv: layer %zu budget %zu is smaller than the window %zu", l, Bl, w);
            return -1;
        }
    }
    return 0;
}

static int pyramidkv_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                             char *err, size_t errlen)
{
    const pyramidkv_cfg *c = cfg;
    size_t P = ctx->P, w = c->o.window;
    if (B >= P) {                               /* nothing to compress */
        int32_t *all = malloc(P * sizeof *all);
        if (!all) return -1;
        for (size_t j = 0; j < P; j++) all[j] = (int32_t)j;
        for (size_t g = 0; g < ctx->Hkv; g++)
            if (ev_push_kept(ctx, g, all, P, &out[g])) { free(all); return -1; }
        free(all);
        return 0;
    }
    if (snapkv_check_window("pyramidkv", w, B, ctx, err, errlen)) return -1;
    size_t Bl = c->form == 1 ? pyramidkv_budget_kvpress((double)B, w, c->beta, ctx->n_layers, ctx->layer, P)
                             : pyramidkv_budget_factory(B, w, c->beta, ctx->n_layers, ctx->layer, P);
    if (Bl > P) Bl = P;
    if (Bl < w) {       /* only reachable through the kvpress fallback with tiny budgets */
        snprintf(err, errlen, "pyramidkv: layer %zu budget %zu is smaller than the window %zu", ctx->layer, Bl, w);
        return -1;
    }
    double *score = malloc(P * sizeof *score);
    int32_t *kept = malloc(P * sizeof *kept);
    int rc = -1;
    if (!score || !kept) goto done;
    for (size_t g = 0; g < ctx->Hkv; g++) {
        size_t m = P;
        if (Bl >= P) {
            for (size_t j = 0; j < P; j++) kept[j] = (int32_t)j;
        } else {
            if (snapkv_head_score(&c->o, ctx, g, score)) goto done;
            m = snapkv_keep(score, P, w, Bl, kept);
        }
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
    }
    rc = 0;
done:
    free(score); free(kept);
    return rc;
}

/* q_rows: SnapKV's observation window [P - w, P) (snapkv_head_score); none when B >= P */
static size_t pyramidkv_q_rows(const void *cfg, size_t P, size_t B, int *whole)
{
    return B >= P ? 0 : ((const pyramidkv_cfg *)cfg)->o.window;
}

const rp_strategy rp_strategy_pyramidkv = {
    .name = "pyramidkv",
    .summary = "SnapKV selection with pyramid per-layer budgets (form=factory|kvpress)",
    .reference = "Cai et al. 2024 (arXiv 2406.02069), github.com/Zefan-Cai/KVCache-Factory; kvpress PyramidKVPress",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = pyramidkv_params,
    .n_params = sizeof pyramidkv_params / sizeof pyramidkv_params[0],
    .configure = pyramidkv_configure,
    .free_cfg = pyramidkv_free,
    .prefill = pyramidkv_prefill,
    .check_budget = pyramidkv_check_budget,
    .head_separable = 1,     /* each kv head's cache from its own rows and scores */
    .q_rows = pyramidkv_q_rows,
};
