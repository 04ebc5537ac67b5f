/* lagkv — score each prompt token against the NEXT chunk ("lag-relative" information).
 *
 * Rule (prefill protocol, per kv head, on the stored post-RoPE keys and the values):
 *   With s = sinks and l = lag: if P < s + 2 l the prompt is too short to score; the first s
 *   positions get 1 and position j >= s gets (j - s) / (P - s) (so a top-B keeps the sinks
 *   and then the most recent positions). Otherwise:
 *   1. end = s + floor((P - s) / l) l cuts [s, end) into chunks of l; chunk c (all but the
 *      last) is scored against chunk c + 1: per channel d, lo_d / hi_d = the min / max of
 *      chunk c + 1's rows;
 *   2. token j of chunk c: x_d = (k_jd - lo_d) / (hi_d - lo_d), sk(j) = the standard
 *      deviation of x over the D channels (unbiased, D - 1), softmaxed over the l tokens of
 *      the chunk; sv(j) the same from the values; score = (sk + sv) / 2;
 *   3. cross=0 (default): within each chunk the score is replaced by its rank / l (0 for the
 *      lowest; equal scores rank by position), so every chunk keeps about the same share;
 *      cross=1 keeps the softmaxed scores (comparable across chunks);
 *   4. the sinks [0, s) and the tail [end - l, P) (the last chunk, which has no reference,
 *      and the remainder) get 1; keep the B highest (ties: lower position). B >= P keeps all.
 * Defaults (kvpress LagKVPress): preset=kvpress (its budget rule, kvpress_budget.h), sinks=4 (n_sink), lag=128 (lag_size), cross=0 (cross_scoring).
 * Reference: Liang et al. 2025, "LagKV: Lag-Relative Information of the KV Cache Tells Which
 * Tokens Are Important" (arXiv 2504.04704); kvpress LagKVPress (github.com/NVIDIA/kvpress,
 * presses/lagkv_press.py).
 * Differences: ties (equal ranks across chunks, or sinks and tail beyond the budget) go to the
 * lower position where torch.topk / argsort leave the order unspecified. A channel whose
 * reference range is 0 gives x_d = 0 (torch divides by zero). Scores in double.
 * On the shipped sample traces (prompts of about 200 tokens) lag=128 is the short-prompt
 * case; the default sweep also runs lag=32.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "evict_util.h"
#include "kvpress_budget.h"
#include "strategy.h"

typedef struct lagkv_cfg { int preset; size_t sinks, lag; int cross; } lagkv_cfg;

static const rp_param_def lagkv_params[] = {
    KVPRESS_PRESET_PARAM,
    { "sinks", RP_INT, "4", 0, 1e9, NULL, "first positions always kept (n_sink)" },
    { "lag", RP_INT, "128", 1, 1e9, NULL, "chunk size; each chunk is scored against the next (lag_size)" },
    { "cross", RP_BOOL, "0", 0, 1, NULL, "1: keep softmaxed scores (cross_scoring) instead of ranks within chunks" },
};

static int lagkv_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    lagkv_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->preset = (int)v[0];
    c->sinks = (size_t)v[1];
    c->lag = (size_t)v[2];
    c->cross = (int)v[3];
    *cfg = c;
    return 0;
}

static void lagkv_free(void *cfg) { free(cfg); }

/* Adds 0.5 * softmax over the chunk of the normalised-row std to out[0..l) for the chunk
 * rows x [l][D] against the reference rows ref [l][D]; lo, hi [D] scratch. */
static void chunk_score(const float *x, const float *ref, size_t l, size_t D, double *lo, double *hi, double *sd,
                        double *out)
{
    for (size_t d = 0; d < D; d++) { lo[d] = ref[d]; hi[d] = ref[d]; }
    for (size_t i = 1; i < l; i++)
        for (size_t d = 0; d < D; d++) {
            double a = ref[i * D + d];
            if (a < lo[d]) lo[d] = a;
            if (a > hi[d]) hi[d] = a;
        }
    double mx = -INFINITY;
    for (size_t i = 0; i < l; i++) {
        double m = 0, ss = 0;
        for (size_t d = 0; d < D; d++) {
            double r = hi[d] - lo[d], y = r > 0 ? ((double)x[i * D + d] - lo[d]) / r : 0.0;
            m += y;
        }
        m /= (double)D;
        for (size_t d = 0; d < D; d++) {
            double r = hi[d] - lo[d], y = r > 0 ? ((double)x[i * D + d] - lo[d]) / r : 0.0;
            ss += (y - m) * (y - m);
        }
        sd[i] = D > 1 ? sqrt(ss / (double)(D - 1)) : 0.0;
        if (sd[i] > mx) mx = sd[i];
    }
    double z = 0;
    for (size_t i = 0; i < l; i++) { sd[i] = exp(sd[i] - mx); z += sd[i]; }
    for (size_t i = 0; i < l; i++) out[i] += 0.5 * sd[i] / z;
}

/* out[i] = (rank of x[i] among x[0..l), 0 = lowest, equal values by index) / l. */
static void rank_chunk(const double *x, size_t l, double *out)
{
    for (size_t i = 0; i < l; i++) {
        size_t r = 0;
        for (size_t j = 0; j < l; j++) r += x[j] < x[i] || (x[j] == x[i] && j < i);
        out[i] = (double)r / (double)l;
    }
}

/* score [P] of one kv head; work [4 lag + 2 D]. */
static void lagkv_score(const lagkv_cfg *c, const float *k, const float *v, size_t P, size_t D, double *work,
                        double *score)
{
    size_t s = c->sinks < P ? c->sinks : P, l = c->lag;
    if (P < s + 2 * l) {
        for (size_t j = 0; j < P; j++) score[j] = j < s ? 1.0 : (double)(j - s) / (double)(P - s);
        return;
    }
    size_t end = s + (P - s) / l * l, nch = (end - s) / l;
    double *acc = work, *sd = work + l, *rk = work + 2 * l, *lo = work + 3 * l, *hi = lo + D;
    for (size_t ch = 0; ch + 1 < nch; ch++) {
        size_t a = s + ch * l;
        memset(acc, 0, l * sizeof *acc);
        chunk_score(k + a * D, k + (a + l) * D, l, D, lo, hi, sd, acc);
        chunk_score(v + a * D, v + (a + l) * D, l, D, lo, hi, sd, acc);
        if (c->cross) memcpy(score + a, acc, l * sizeof *acc);
        else { rank_chunk(acc, l, rk); memcpy(score + a, rk, l * sizeof *rk); }
    }
    for (size_t j = 0; j < s; j++) score[j] = 1.0;
    for (size_t j = end - l; j < P; j++) score[j] = 1.0;
}

static int lagkv_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                         char *err, size_t errlen)
{
    const lagkv_cfg *c = cfg;
    size_t P = ctx->P, D = ctx->D;
    B = kvpress_n_kept(c->preset, ctx, P, B);
    double *work = malloc((4 * c->lag + 2 * D) * sizeof *work), *score = malloc((P + 1) * sizeof *score);
    int32_t *kept = malloc((P + 1) * sizeof *kept);
    int rc = -1;
    if (!work || !score || !kept) goto done;
    for (size_t g = 0; g < ctx->Hkv; g++) {
        size_t m = P;
        if (B >= P) {
            for (size_t j = 0; j < P; j++) kept[j] = (int32_t)j;
        } else {
            lagkv_score(c, ctx->k + g * ctx->n * D, ctx->v + g * ctx->n * D, P, D, work, score);
            m = rp_topk(score, P, B, kept);
        }
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
    }
    rc = 0;
done:
    free(work); free(score); free(kept);
    return rc;
}

const rp_strategy rp_strategy_lagkv = {
    .name = "lagkv",
    .summary = "lag-relative score: K/V std after min-max scaling by the next chunk, ranked per chunk; "
               "sinks and tail kept (kvpress LagKVPress)",
    .reference = "Liang et al. 2025 (arXiv 2504.04704); kvpress LagKVPress (github.com/NVIDIA/kvpress)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = lagkv_params,
    .n_params = sizeof lagkv_params / sizeof lagkv_params[0],
    .configure = lagkv_configure,
    .free_cfg = lagkv_free,
    .prefill = lagkv_prefill,
    .head_separable = 1,     /* each kv head's cache from its own rows and scores */
};
