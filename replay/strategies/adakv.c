/* adakv — head-adaptive budget allocation: the kv heads of a layer share one budget of
 * Hkv * B entries, chosen jointly by score, with a per-head safeguard.
 *
 * Rule (prefill protocol): every kv head's prompt entries are scored with SnapKV (snapkv.c,
 * kvpress preset by default: window 64, kernel 5, avgpool, rows averaged, group mean); the
 * window entries get the layer's maximum score, as kvpress pads them. Each head keeps its
 * n_safe = floor(alpha * B) best entries unconditionally; the rest of the layer's
 * Hkv * B entries go to the highest scores across all heads (ties: lower head, then lower
 * position). Heads therefore keep different numbers of entries; the layer's total is Hkv * B.
 * B >= P keeps everything; window >= B is an error.
 * Defaults: alpha=0.2 (kvpress AdaKVPress alpha_safeguard = 0.20; the AdaKV repository's
 * floor_alpha = 0.2), preset=kvpress (AdaKVPress wraps a ScorerPress; SnapKV is the paper's
 * main pairing, "Ada-SnapKV").
 * Reference: Feng et al. 2024, "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget
 * Allocation for Efficient LLM Inference" (arXiv 2407.11550; github.com/FFY0/AdaKV); kvpress
 * AdaKVPress (n_safe = int(n_kept * alpha), scatter max to the per-head top n_safe, then a
 * joint top-k over the flattened heads).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adakv.h"
#include "evict_util.h"
#include "snapkv.h"
#include "strategy.h"

extern const rp_strategy rp_strategy_adakv;

typedef struct adakv_cfg { double alpha; snapkv_opts o; } adakv_cfg;

static const rp_param_def adakv_params[] = {
    { "alpha", RP_FLOAT, "0.2", 0, 1, NULL, "safeguard: each head keeps at least floor(alpha * B) entries" },
    { "preset", RP_ENUM, "kvpress", 0, 0, "snapkv|kvpress|factory", "SnapKV scorer defaults" },
    { "window", RP_INT, "-1", -1, 1e9, NULL, "observation window w (-1: the preset's)" },
    { "kernel", RP_INT, "-1", -1, 1e9, NULL, "pooling kernel, odd (-1: the preset's)" },
    { "pool", RP_ENUM, "preset", 0, 0, "preset|avg|max", "pooling" },
    { "reduce", RP_ENUM, "preset", 0, 0, "preset|sum|mean", "reduction over the window's queries" },
    { "gqa", RP_ENUM, "preset", 0, 0, "preset|run|mean|max|sum", "reduction over a kv head's query heads" },
    { "gqa_at", RP_ENUM, "after", 0, 0, "after|before", "GQA reduction after or before pooling" },
};

size_t adakv_allocate(const double *score, size_t Hkv, size_t n, size_t B, double alpha, uint8_t *keep)
{
    size_t N = Hkv * n, nsafe = (size_t)floor(alpha * (double)B), total = Hkv * (B < n ? B : n);
    double *s = malloc(N * sizeof *s);
    int32_t *idx = malloc((N ? N : 1) * sizeof *idx);
    if (!s || !idx) { free(s); free(idx); return (size_t)-1; }
    memcpy(s, score, N * sizeof *s);
    for (size_t h = 0; h < Hkv && nsafe; h++) {
        size_t m = rp_topk(score + h * n, n, nsafe, idx);
        for (size_t i = 0; i < m; i++) s[h * n + (size_t)idx[i]] = INFINITY;
    }
    memset(keep, 0, N);
    size_t m = rp_topk(s, N, total, idx);
    for (size_t i = 0; i < m; i++) keep[idx[i]] = 1;
    free(s);
    free(idx);
    return m;
}

static int adakv_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    adakv_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->alpha = v[0];
    int gqa = v[6] == 0 ? -2 : v[6] == 1 ? SNAPKV_GQA_RUN : (int)v[6] - 2;
    if (snapkv_resolve((int)v[1], (long)v[2], (long)v[3], (int)v[4] - 1, (int)v[5] - 1, gqa, (int)v[7], &c->o,
                       "adakv", err, errlen)) {
        free(c);
        return -1;
    }
    *cfg = c;
    return 0;
}

static void adakv_free(void *cfg) { free(cfg); }

static int adakv_check_budget(const void *cfg, size_t P, size_t B, size_t n_layers, char *err, size_t errlen)
{
    const adakv_cfg *c = cfg;
    return B < P ? snapkv_check_window("adakv", c->o.window, B, NULL, err, errlen) : 0;
}

/* The plan (strategy.h plan_size): kv head g's SnapKV scores [P] (plan_score); plan_layer
 * pads every window with the layer's maximum, allocates jointly and leaves keep flags (1/0) in
 * their place. No plan when B >= P (everything kept). */
static size_t adakv_plan_size(const void *cfg, size_t P, size_t G, size_t B)
{
    (void)cfg; (void)G;
    return B < P ? P : 0;
}

static int adakv_plan_score(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B, double *out, char *err,
                            size_t errlen)
{
    const adakv_cfg *c = cfg;
    if (snapkv_check_window("adakv", c->o.window, B, ctx, err, errlen)) return -1;
    if (snapkv_head_score(&c->o, ctx, g, out)) return rp_failf(err, errlen, "adakv: out of memory");
    return 0;
}

static int adakv_plan_layer(const void *cfg, size_t Hkv, size_t G, size_t P, size_t B, double *plan, char *err,
                            size_t errlen)
{
    const adakv_cfg *c = cfg;
    size_t w = c->o.window;
    (void)G;
    uint8_t *keep = malloc(Hkv * P);
    if (!keep) return rp_failf(err, errlen, "adakv: out of memory");
    double mx = -INFINITY;
    for (size_t g = 0; g < Hkv; g++)
        for (size_t j = 0; j < P - w; j++) mx = plan[g * P + j] > mx ? plan[g * P + j] : mx;
    for (size_t g = 0; g < Hkv; g++)
        for (size_t j = P - w; j < P; j++) plan[g * P + j] = mx;
    if (adakv_allocate(plan, Hkv, P, B, c->alpha, keep) == (size_t)-1) {
        free(keep);
        return rp_failf(err, errlen, "adakv: out of memory");
    }
    for (size_t i = 0; i < Hkv * P; i++) plan[i] = keep[i];
    free(keep);
    return 0;
}

static int adakv_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                         char *err, size_t errlen)
{
    size_t P = ctx->P;
    const double *plan = NULL;
    double *own = NULL;
    int32_t *kept = malloc((P ? P : 1) * sizeof *kept);
    int rc = -1;
    if (!kept) goto done;
    if (B < P && rp_plan_get(&rp_strategy_adakv, cfg, ctx, B, &plan, &own, err, errlen)) goto done;
    for (size_t g = 0; g < ctx->Hkv; g++) {
        size_t m = 0;
        for (size_t j = 0; j < P; j++) if (!plan || plan[g * P + j] != 0) kept[m++] = (int32_t)j;
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
    }
    rc = 0;
done:
    free(own); free(kept);
    return rc;
}

const rp_strategy rp_strategy_adakv = {
    .name = "adakv",
    .summary = "head-adaptive budgets: joint top-k of SnapKV scores across a layer's kv heads, safeguard alpha",
    .reference = "Feng et al. 2024 (arXiv 2407.11550), github.com/FFY0/AdaKV; kvpress AdaKVPress",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = adakv_params,
    .n_params = sizeof adakv_params / sizeof adakv_params[0],
    .configure = adakv_configure,
    .free_cfg = adakv_free,
    .check_budget = adakv_check_budget,
    .prefill = adakv_prefill,
    .head_separable = 1,     /* given its plan: the joint top-k is plan_layer's */
    .plan_size = adakv_plan_size,
    .plan_score = adakv_plan_score,
    .plan_layer = adakv_plan_layer,
};
