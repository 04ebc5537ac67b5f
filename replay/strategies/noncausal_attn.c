/* noncausal_attn — keep the prompt keys that receive the most non-causal, chunk-local attention.
 *
 * Rule (prefill protocol, all kv heads of the layer together, on the stored post-RoPE queries
 * and keys of the prompt): the prompt is cut into chunks [0, c), [c, 2c), ... (the last one
 * may be short); inside a chunk every query attends to every key of the chunk, without the
 * causal mask and with unscaled logits q.k (kvpress's sm_scale = 1); a(j) = mean over the G
 * query heads of the kv head of the attention key j receives from the queries of its chunk;
 * s(j) = a(j) * ||v_j||, smoothed by a 3-wide moving average (zero padding, always / 3);
 * the scores of every kv head and position are z-normalised together ((s - mean) /
 * max(std, 1e-6), std with n - 1), and each kv head keeps its B highest (ties: lower
 * position). B >= P keeps everything.
 * Defaults: preset=kvpress, chunk=256 (kvpress NonCausalAttnPress chunk_size).
 * Budget: preset=kvpress keeps kvpress's int(P * (1 - compression_ratio)) with
 * compression_ratio = 1 - keep (kvpress_budget.h); preset=kvtrace the engine's round(keep * P).
 * Reference: Chari & Van Durme 2025, "Compactor: Calibrated Query-Agnostic KV Cache
 * Compression with Approximate Leverage Scores" (arXiv 2507.08143); kvpress NonCausalAttnPress
 * (github.com/NVIDIA/kvpress, presses/non_causal_attention_press.py).
 * Differences: kvpress takes the logits in the model's dtype and the softmax in fp32; here
 * both in double. The layer's softcap and window are not applied (kvpress ignores them too).
 * The z-normalisation changes no kv head's ranking; it matters in compactor's blend.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compactor.h"
#include "evict_util.h"
#include "kvpress_budget.h"
#include "strategy.h"

typedef struct nca_cfg { int preset; size_t chunk; } nca_cfg;

static const rp_param_def nca_params[] = {
    KVPRESS_PRESET_PARAM,
    { "chunk", RP_INT, "256", 1, 1e9, NULL, "chunk of the non-causal attention (chunk_size)" },
};

static int nca_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    nca_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->preset = (int)v[0];
    c->chunk = (size_t)v[1];
    *cfg = c;
    return 0;
}

static void nca_free(void *cfg) { free(cfg); }

void cp_znorm(double *x, size_t n)
{
    if (n == 0) return;
    double m = 0, ss = 0;
    for (size_t i = 0; i < n; i++) m += x[i];
    m /= (double)n;
    for (size_t i = 0; i < n; i++) ss += (x[i] - m) * (x[i] - m);
    double sd = n > 1 ? sqrt(ss / (double)(n - 1)) : 0.0;
    if (sd < 1e-6) sd = 1e-6;
    for (size_t i = 0; i < n; i++) x[i] = (x[i] - m) / sd;
}

/* acc[j - a] += softmax over the chunk [a, b) of query row qi's unscaled logits; z scratch. */
static void chunk_row(const float *qi, const float *k, size_t D, size_t a, size_t b, double *z, double *acc)
{
    double mx = -INFINITY, sum = 0;
    size_t j = a;
    for (; j + 4 <= b; j += 4) {        /* four keys per pass: independent chains, each in d order */
        const float *k0 = k + j * D, *k1 = k0 + D, *k2 = k1 + D, *k3 = k2 + D;
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (size_t d = 0; d < D; d++) {
            double x = qi[d];
            s0 += x * k0[d]; s1 += x * k1[d]; s2 += x * k2[d]; s3 += x * k3[d];
        }
        z[j - a] = s0; z[j + 1 - a] = s1; z[j + 2 - a] = s2; z[j + 3 - a] = s3;
    }
    for (; j < b; j++) {
        const float *kj = k + j * D;
        double s = 0;
        for (size_t d = 0; d < D; d++) s += (double)qi[d] * kj[d];
        z[j - a] = s;
    }
    for (j = a; j < b; j++)
        if (z[j - a] > mx) mx = z[j - a];
    for (j = a; j < b; j++) { z[j - a] = exp(z[j - a] - mx); sum += z[j - a]; }
    for (j = a; j < b; j++) acc[j - a] += z[j - a] / sum;
}

int cp_noncausal(const rp_layer_ctx *ctx, size_t g, size_t s0, size_t s1, size_t chunk, double *out)
{
    size_t D = ctx->D, n = ctx->n, S = s1 - s0, G = ctx->G;
    if (S == 0) return 0;
    size_t cs = chunk < S ? chunk : S;
    double *z = malloc(cs * sizeof *z), *a = calloc(S, sizeof *a);
    if (!z || !a) { free(z); free(a); return -1; }
    const float *k = ctx->k + g * n * D, *v = ctx->v + g * n * D;
    for (size_t i = 0; i < G; i++) {
        const float *q = ctx->q + (g * G + i) * n * D;
        for (size_t c0 = s0; c0 < s1; c0 += cs) {
            size_t c1 = c0 + cs < s1 ? c0 + cs : s1;
            for (size_t t = c0; t < c1; t++) chunk_row(q + t * D, k, D, c0, c1, z, a + (c0 - s0));
        }
    }
    for (size_t j = 0; j < S; j++) {
        const float *vj = v + (s0 + j) * D;
        double vn = 0;
        for (size_t d = 0; d < D; d++) vn += (double)vj[d] * vj[d];
        a[j] = a[j] / (double)G * sqrt(vn);
    }
    for (size_t j = 0; j < S; j++) {        /* avg_pool1d(kernel 3, padding 1): zeros outside */
        double s = a[j];
        if (j > 0) s += a[j - 1];
        if (j + 1 < S) s += a[j + 1];
        out[j] = s / 3.0;
    }
    free(z); free(a);
    return 0;
}

static int nca_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                       char *err, size_t errlen)
{
    const nca_cfg *c = cfg;
    size_t P = ctx->P, Hkv = ctx->Hkv;
    B = kvpress_n_kept(c->preset, ctx, P, B);
    double *score = malloc((Hkv * P + 1) * sizeof *score);
    int32_t *kept = malloc((P + 1) * sizeof *kept);
    int rc = -1;
    if (!score || !kept) goto done;
    if (B < P) {
        for (size_t g = 0; g < Hkv; g++)
            if (cp_noncausal(ctx, g, 0, P, c->chunk, score + g * P)) goto done;
        cp_znorm(score, Hkv * P);
    }
    for (size_t g = 0; g < Hkv; g++) {
        size_t m = P;
        if (B >= P) for (size_t j = 0; j < P; j++) kept[j] = (int32_t)j;
        else m = rp_topk(score + g * P, P, B, kept);
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
    }
    rc = 0;
done:
    free(score); free(kept);
    return rc;
}

const rp_strategy rp_strategy_noncausal_attn = {
    .name = "noncausal_attn",
    .summary = "non-causal attention within chunks of 256 (unscaled), summed over queries, times ||v||, "
               "smoothed, z-normalised (kvpress NonCausalAttnPress)",
    .reference = "Chari & Van Durme 2025, Compactor (arXiv 2507.08143); kvpress NonCausalAttnPress "
                 "(github.com/NVIDIA/kvpress)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = nca_params,
    .n_params = sizeof nca_params / sizeof nca_params[0],
    .configure = nca_configure,
    .free_cfg = nca_free,
    .prefill = nca_prefill,
};
