/* knorm — keep the keys with the LOWEST L2 norm.
 *
 * Rule: score_j = -||k_j||_2 per kv head; keep the B highest scores (ties: lower position).
 * Prefill: over the prompt [0, P). Online (an extension; the reference is prefill-only):
 * after each insertion beyond the budget, evict the cached entry with the largest key norm
 * (ties: the later position goes first, mirroring "lower index kept").
 * Defaults: no parameter besides the budget; the norm is of the post-RoPE key as stored
 * (RoPE is a rotation per pair, so it leaves the norm unchanged up to f16 rounding).
 * Reference: Devoto et al. 2024, "A Simple and Effective L2 Norm-Based Strategy for KV Cache
 * Compression" (arXiv 2406.11430); kvpress KnormPress (github.com/NVIDIA/kvpress), whose
 * score is -keys.norm(dim=-1) and whose ScorerPress keeps the top scores, i.e. low norms.
 */
#include <math.h>
#include <stdlib.h>

#include "strategy.h"

static float key_norm(const float *k, size_t D)
{
    double s = 0;
    for (size_t d = 0; d < D; d++) s += (double)k[d] * k[d];
    return (float)sqrt(s);
}

static int knorm_configure(const double *values, void **cfg, char *err, size_t errlen)
{
    *cfg = NULL;
    return 0;
}

static int knorm_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                         char *err, size_t errlen)
{
    size_t P = ctx->P, D = ctx->D;
    double *score = malloc(P * sizeof *score);
    int32_t *kept = malloc(P * sizeof *kept);
    if (!score || !kept) { free(score); free(kept); return -1; }
    for (size_t g = 0; g < ctx->Hkv; g++) {
        const float *k = ctx->k + g * ctx->n * D, *v = ctx->v + g * ctx->n * D;
        for (size_t t = 0; t < P; t++) score[t] = -key_norm(k + t * D, D);
        size_t m = rp_topk(score, P, B, kept);
        if (rp_cache_reserve(&out[g], m, 0)) { free(score); free(kept); return -1; }
        for (size_t i = 0; i < m; i++)
            if (rp_cache_push(&out[g], kept[i], k + (size_t)kept[i] * D, v + (size_t)kept[i] * D)) {
                free(score); free(kept); return -1;
            }
    }
    free(score);
    free(kept);
    return 0;
}

static void *knorm_online_new(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B)
{
    static char token;
    return &token;
}

static kv_status knorm_online_step(void *state, const rp_layer_ctx *ctx, size_t g, size_t t,
                                   const rp_cache *c, const float *probs, size_t B, size_t *evict,
                                   size_t *n_evict, kv_error *err)
{
    size_t n = c->n, m = 0;
    *n_evict = 0;
    if (n <= B) return KV_OK;
    double *score = malloc(n * sizeof *score);
    int32_t *kept = malloc(n * sizeof *kept);
    if (!score || !kept) {
        free(score); free(kept);
        return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    }
    for (size_t e = 0; e < n; e++) score[e] = -key_norm(c->k + e * c->D, c->D);
    size_t nk = rp_topk(score, n, B, kept);
    for (size_t e = 0, i = 0; e < n; e++) {
        if (i < nk && (size_t)kept[i] == e) { i++; continue; }
        evict[m++] = e;
    }
    free(score);
    free(kept);
    *n_evict = m;
    return KV_OK;
}

static void knorm_online_free(void *state) {}

/* q_rows: scores are key norms; no hook reads a query */
static size_t knorm_q_rows(const void *cfg, size_t P, size_t B, int *whole) { return 0; }

const rp_strategy rp_strategy_knorm = {
    .name = "knorm",
    .summary = "keep the keys with the lowest L2 norm",
    .reference = "Devoto et al. 2024 (arXiv 2406.11430); kvpress KnormPress",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL | RP_ONLINE,
    .needs_budget = 1,
    .configure = knorm_configure,
    .prefill = knorm_prefill,
    .online_new = knorm_online_new,
    .online_step = knorm_online_step,
    .online_free = knorm_online_free,
    .head_separable = 1,     /* each kv head's cache from its own rows and scores */
    .q_rows = knorm_q_rows,   /* no prompt query read */
};
