/* snapkv — score the prompt's keys by the attention they receive from an observation window
 * of the last w prompt queries, smooth by pooling, keep the window and the best-scored keys.
 *
 * Rule (prefill protocol, per kv head; B = entries kept, the window included; B >= P keeps
 * everything, as the references skip compression when the prompt fits):
 *   1. a_h[r][j]: causal attention of window query P - w + r (query head h) over key j,
 *      normalised over all its visible keys (window keys included); j < P - w.
 *   2. s_h[j] = reduce over the w window rows (sum | mean).
 *   3. pool s along j with kernel k, stride 1, padding k/2 (avg counts the zero padding,
 *      as torch avg_pool1d; max ignores it, as max_pool1d).
 *   4. GQA: reduce the G query heads (mean | max | sum), after pooling (default) or before.
 *   5. keep [P - w, P) and the B - w highest prefix scores (ties: lower position).
 * Requires w < B (the references assert max_capacity_prompt > window_size); w >= B is an error.
 * Presets (preset=..., each knob overrides it when given):
 *   snapkv  (default) FasterDecoding/SnapKV snapkv/monkeypatch/snapkv_utils.py, init_snapkv:
 *           window 32, kernel 5, avgpool, window rows summed, max_capacity_prompt counts the
 *           window, window always kept. GQA: the reference repeats K/V per query head
 *           (one cache per query head); here memory is per kv head, so the group is reduced
 *           with the run's --gqa-reduce (mean by default), after pooling.
 *   kvpress NVIDIA/kvpress SnapKVPress: window 64, kernel 5, avg_pool1d, window rows
 *           averaged (attn_weights.mean(-2)), group mean after pooling (SnapKV issue #22),
 *           window padded with the maximum score so it is always kept, n_kept counts it.
 *   factory Zefan-Cai/KVCache-Factory (pyramidkv_utils.py SnapKVCluster with the values its
 *           run_longbench.py passes): window_sizes 8, kernel_sizes 7, pooling maxpool,
 *           window rows summed, max_capacity_prompt counts the window, window kept; GQA as
 *           for snapkv (the reference repeats K/V).
 * Reference: Li et al. 2024, "SnapKV: LLM Knows What You are Looking for Before Generation"
 * (NeurIPS; github.com/FasterDecoding/SnapKV); kvpress SnapKVPress; KVCache-Factory.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "evict_util.h"
#include "snapkv.h"
#include "strategy.h"

static const rp_param_def snapkv_params[] = {
    { "preset", RP_ENUM, "snapkv", 0, 0, "snapkv|kvpress|factory", "reference defaults (see the file header)" },
    { "window", RP_INT, "-1", -1, 1e9, NULL, "observation window w (-1: the preset's)" },
    { "kernel", RP_INT, "-1", -1, 1e9, NULL, "pooling kernel, odd (-1: the preset's)" },
    { "pool", RP_ENUM, "preset", 0, 0, "preset|avg|max", "pooling" },
    { "reduce", RP_ENUM, "preset", 0, 0, "preset|sum|mean", "reduction over the window's queries" },
    { "gqa", RP_ENUM, "preset", 0, 0, "preset|run|mean|max|sum", "reduction over a kv head's query heads (run: --gqa-reduce)" },
    { "gqa_at", RP_ENUM, "after", 0, 0, "after|before", "GQA reduction after or before pooling" },
};

void snapkv_preset(int preset, snapkv_opts *o)
{
    o->gqa_before = 0;
    if (preset == SNAPKV_PRESET_KVPRESS) {
        o->window = 64; o->kernel = 5; o->pool = SNAPKV_POOL_AVG; o->reduce = SNAPKV_REDUCE_MEAN; o->gqa = RP_GQA_MEAN;
    } else if (preset == SNAPKV_PRESET_FACTORY) {
        o->window = 8; o->kernel = 7; o->pool = SNAPKV_POOL_MAX; o->reduce = SNAPKV_REDUCE_SUM; o->gqa = SNAPKV_GQA_RUN;
    } else {
        o->window = 32; o->kernel = 5; o->pool = SNAPKV_POOL_AVG; o->reduce = SNAPKV_REDUCE_SUM; o->gqa = SNAPKV_GQA_RUN;
    }
}

int snapkv_resolve(int preset, long window, long kernel, int pool, int reduce, int gqa, int gqa_before,
                   snapkv_opts *o, const char *who, char *err, size_t errlen)
{
    snapkv_preset(preset, o);
    if (window >= 0) o->window = (size_t)window;
    if (kernel >= 0) o->kernel = (size_t)kernel;
    if (pool >= 0) o->pool = pool;
    if (reduce >= 0) o->reduce = reduce;
    if (gqa >= SNAPKV_GQA_RUN) o->gqa = gqa;
    o->gqa_before = gqa_before;
    if (o->window < 1) { snprintf(err, errlen, "%s: window=%zu must be at least 1", who, o->window); return -1; }
    if (o->kernel < 1 || o->kernel % 2 == 0) {
        snprintf(err, errlen, "%s: kernel=%zu must be odd and at least 1 (pooling keeps the length with padding kernel/2)", who, o->kernel);
        return -1;
    }
    return 0;
}

void snapkv_pool(const double *x, size_t n, size_t k, int pool, double *out)
{
    size_t h = k / 2;
    for (size_t j = 0; j < n; j++) {
        size_t a = j >= h ? j - h : 0, b = j + h < n ? j + h : n - 1;
        double r = x[a];
        for (size_t i = a + 1; i <= b; i++) {
            if (pool == SNAPKV_POOL_MAX) r = x[i] > r ? x[i] : r;
            else r += x[i];
        }
        out[j] = pool == SNAPKV_POOL_MAX ? r : r / (double)k;
    }
}

/* Steps 2-4 from the window's column sums sums [G][stride] (j < P - w used). */
static int score_from_sums(const snapkv_opts *o, int gqa, const double *sums, size_t stride, size_t G, size_t P,
                           double *score)
{
    size_t w = o->window, m = P - w;
    double *s = malloc(G * m * sizeof *s), *t = malloc(G * m * sizeof *t);
    if (!s || !t) { free(s); free(t); return -1; }
    for (size_t i = 0; i < G; i++)
        for (size_t j = 0; j < m; j++) {
            double a = sums[i * stride + j];
            s[i * m + j] = o->reduce == SNAPKV_REDUCE_MEAN ? a / (double)w : a;
        }
    if (o->gqa_before) {
        ev_reduce(s, G, m, gqa, t);
        snapkv_pool(t, m, o->kernel, o->pool, score);
    } else {
        for (size_t i = 0; i < G; i++) snapkv_pool(s + i * m, m, o->kernel, o->pool, t + i * m);
        ev_reduce(t, G, m, gqa, score);
    }
    free(s);
    free(t);
    return 0;
}

int snapkv_score(const snapkv_opts *o, int gqa, const float *attn, size_t G, size_t P, double *score)
{
    size_t w = o->window, m = P - w;
    double *sums = malloc((G * m > 0 ? G * m : 1) * sizeof *sums);
    if (!sums) return -1;
    for (size_t i = 0; i < G; i++)
        for (size_t j = 0; j < m; j++) {
            double a = 0;
            for (size_t r = 0; r < w; r++) a += attn[(i * w + r) * P + j];
            sums[i * m + j] = a;
        }
    int rc = score_from_sums(o, gqa, sums, m, G, P, score);
    free(sums);
    return rc;
}

size_t snapkv_keep(const double *score, size_t P, size_t w, size_t B, int32_t *kept)
{
    size_t m = rp_topk(score, P - w, B - w, kept);
    for (size_t i = 0; i < w; i++) kept[m + i] = (int32_t)(P - w + i);
    return m + w;
}

int snapkv_head_score(const snapkv_opts *o, const rp_layer_ctx *ctx, size_t g, double *score)
{
    size_t P = ctx->P, G = ctx->G, w = o->window;
    int gqa = o->gqa == SNAPKV_GQA_RUN ? ctx->gqa_reduce : o->gqa;
    if (ctx->prompt_colsum) {   /* the engine's shared window sums: the same values, computed once */
        double *sums = malloc(G * P * sizeof *sums);
        int rc = sums ? 0 : -1;
        for (size_t i = 0; i < G && !rc; i++) rc = ctx->prompt_colsum(ctx, g * G + i, P - w, P, NULL, sums + i * P);
        if (!rc) rc = score_from_sums(o, gqa, sums, P, G, P, score);
        free(sums);
        return rc;
    }
    float *attn = malloc(G * w * P * sizeof *attn);
    if (!attn) return -1;
    for (size_t i = 0; i < G; i++)
        if (ctx->prompt_attn(ctx, g * G + i, P - w, P, attn + i * w * P)) { free(attn); return -1; }
    int rc = snapkv_score(o, gqa, attn, G, P, score);
    free(attn);
    return rc;
}

int snapkv_check_window(const char *who, size_t w, size_t B, const rp_layer_ctx *ctx, char *err, size_t errlen)
{
    if (w < B) return 0;
    snprintf(err, errlen, "%s: window=%zu is not smaller than the budget %zu (the window counts in the budget; "
             "lower window= or raise keep=/budget=)", who, w, B);
    return -1;
}

/* ---- the strategy ------------------------------------------------------------------------ */

static int snapkv_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    snapkv_opts *o = malloc(sizeof *o);
    if (!o) return -1;
    /* gqa choice index: 0 preset, 1 run, 2 mean, 3 max, 4 sum */
    int gqa = v[5] == 0 ? -2 : v[5] == 1 ? SNAPKV_GQA_RUN : (int)v[5] - 2;
    if (snapkv_resolve((int)v[0], (long)v[1], (long)v[2], (int)v[3] - 1, (int)v[4] - 1, gqa, (int)v[6], o,
                       "snapkv", err, errlen)) {
        free(o);
        return -1;
    }
    *cfg = o;
    return 0;
}

static void snapkv_free(void *cfg) { free(cfg); }

static int snapkv_check_budget(const void *cfg, size_t P, size_t B, size_t n_layers, char *err, size_t errlen)
{
    const snapkv_opts *o = cfg;
    return B < P ? snapkv_check_window("snapkv", o->window, B, NULL, err, errlen) : 0;
}

static int snapkv_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                          char *err, size_t errlen)
{
    const snapkv_opts *o = cfg;
    size_t P = ctx->P;
    double *score = malloc(P * sizeof *score);
    int32_t *kept = malloc(P * sizeof *kept);
    int rc = -1;
    if (!score || !kept) goto done;
    if (B < P && snapkv_check_window("snapkv", o->window, B, ctx, err, errlen)) goto done;
    for (size_t g = 0; g < ctx->Hkv; g++) {
        size_t m = P;
        if (B >= P) {
            for (size_t j = 0; j < P; j++) kept[j] = (int32_t)j;
        } else {
            if (snapkv_head_score(o, ctx, g, score)) goto done;
            m = snapkv_keep(score, P, o->window, B, kept);
        }
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
    }
    rc = 0;
done:
    free(score); free(kept);
    return rc;
}

/* q_rows: the observation window's rows [P - w, P) (prompt_colsum or prompt_attn over them,
 * snapkv_head_score); none when B >= P (everything kept, nothing scored) */
static size_t snapkv_q_rows(const void *cfg, size_t P, size_t B, int *whole)
{
    return B >= P ? 0 : ((const snapkv_opts *)cfg)->window;
}

const rp_strategy rp_strategy_snapkv = {
    .name = "snapkv",
    .summary = "observation-window attention, pooled; keep window + top prefix keys (presets snapkv|kvpress|factory)",
    .reference = "Li et al. 2024 (NeurIPS), github.com/FasterDecoding/SnapKV; kvpress SnapKVPress; KVCache-Factory",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = snapkv_params,
    .n_params = sizeof snapkv_params / sizeof snapkv_params[0],
    .configure = snapkv_configure,
    .free_cfg = snapkv_free,
    .prefill = snapkv_prefill,
    .check_budget = snapkv_check_budget,
    .head_separable = 1,     /* each kv head's cache from its own rows and scores */
    .q_rows = snapkv_q_rows,
};
