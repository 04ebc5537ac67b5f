/* h2o — Heavy-Hitter Oracle: keep the entries with the largest accumulated attention
 * ("heavy hitters") plus a window of the most recent ones.
 *
 * Rule: score_j = sum over every query q that has seen entry j of p_q(j), the softmax
 * attention probability (un-normalised accumulation: a sum, not a mean over queries). Per
 * kv head, the G query heads keep separate accumulators; they are reduced at selection time
 * with the run's --gqa-reduce (mean by default, docs/METHODS.md §4; the reference is per head).
 * With budget B and r = floor(recent * B + 0.5): keep the r most recent entries and the
 * B - r highest scores among the others (ties: lower position kept).
 *   online  (the official real-drop form): token t is appended, query t attends to the
 *           cache, its probabilities over the cached entries are added to their scores, and
 *           if the cache holds more than B entries the lowest-scored entry outside the
 *           recent window is evicted. Before the cache first fills, nothing is evicted and
 *           every query attends to the full prefix: those queries' probabilities (the full
 *           causal rows) are added when the strategy is first consulted, so the scores
 *           are exactly the reference's running sums.
 *   prefill (one-shot form, as KVCache-Factory's H2OKVCluster / kvpress-style prompt
 *           compression): scores are the column sums of the causal attention of ALL prompt
 *           queries [0, P); keep the last r prompt tokens and the B - r heaviest others.
 * Defaults: recent=0.5 (the H2O paper's equal split: heavy_ratio = recent_ratio).
 * Reference: Zhang et al. 2023, "H2O: Heavy-Hitter Oracle for Efficient Generative Inference
 * of Large Language Models" (NeurIPS; github.com/FMInference/H2O, h2o_hf/utils_real_drop:
 * the H2OKVCache hh_score running sum and its keep = topk(hh, among non-recent) + recent).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "evict_util.h"
#include "h2o.h"
#include "strategy.h"

typedef struct h2o_cfg { double recent; } h2o_cfg;

static const rp_param_def h2o_params[] = {
    { "recent", RP_FLOAT, "0.5", 0, 1, NULL, "fraction of the budget kept as the recent window" },
};

size_t h2o_recent(double recent, size_t B)
{
    size_t r = (size_t)floor(recent * (double)B + 0.5);
    return r > B ? B : r;
}

size_t h2o_keep(const double *score, size_t n, size_t B, size_t r, int32_t *kept)
{
    if (B >= n) { for (size_t i = 0; i < n; i++) kept[i] = (int32_t)i; return n; }
    if (r > B) r = B;
    size_t m = rp_topk(score, n - r, B - r, kept);
    for (size_t i = 0; i < r; i++) kept[m + i] = (int32_t)(n - r + i);
    return m + r;
}

static int h2o_configure(const double *values, void **cfg, char *err, size_t errlen)
{
    h2o_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->recent = values[0];
    *cfg = c;
    return 0;
}

static void h2o_free(void *cfg) { free(cfg); }

static int h2o_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                       char *err, size_t errlen)
{
    const h2o_cfg *c = cfg;
    size_t P = ctx->P, G = ctx->G;
    double *acc = calloc(G * P, sizeof *acc), *score = malloc(P * sizeof *score);
    int32_t *kept = malloc(P * sizeof *kept);
    int rc = -1;
    if (!acc || !score || !kept) goto done;
    for (size_t g = 0; g < ctx->Hkv; g++) {
        memset(acc, 0, G * P * sizeof *acc);
        for (size_t i = 0; i < G; i++)
            if (ev_accum_rows(ctx, g * G + i, 0, P, NULL, P, acc + i * P)) goto done;
        ev_reduce(acc, G, P, ctx->gqa_reduce, score);
        size_t m = h2o_keep(score, P, B, h2o_recent(c->recent, B), kept);
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
    }
    rc = 0;
done:
    free(acc); free(score); free(kept);
    return rc;
}

/* Online state of one kv head: the accumulated scores of the cached entries, aligned with
 * the engine's cache (same order; compacted with it). */
typedef struct h2o_state {
    size_t G, n, cap, r;
    int started;
    int32_t *pos;           /* [cap] */
    double *acc;            /* [G][cap] */
    double *score;          /* [cap] */
    int32_t *kept;          /* [cap] */
} h2o_state;

static void h2o_online_free(void *state)
{
    h2o_state *s = state;
    if (!s) return;
    free(s->pos); free(s->acc); free(s->score); free(s->kept);
    free(s);
}

static void *h2o_online_new(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B)
{
    const h2o_cfg *c = cfg;
    h2o_state *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->G = ctx->G;
    s->cap = B + 2;
    s->r = h2o_recent(c->recent, B);
    s->pos = malloc(s->cap * sizeof *s->pos);
    s->acc = calloc(s->G * s->cap, sizeof *s->acc);
    s->score = malloc(s->cap * sizeof *s->score);
    s->kept = malloc(s->cap * sizeof *s->kept);
    if (!s->pos || !s->acc || !s->score || !s->kept) { h2o_online_free(s); return NULL; }
    return s;
}

/* Returning 0 evictions on failure makes the engine report the budget breach. */
static kv_status h2o_online_step(void *state, const rp_layer_ctx *ctx, size_t g, size_t t,
                                 const rp_cache *c, const float *probs, size_t B, size_t *evict,
                                 size_t *n_evict, kv_error *err)
{
    h2o_state *s = state;
    size_t n = c->n, G = s->G, cap = s->cap;
    *n_evict = 0;
    if (n > cap) return kv_error_set(err, KV_ERR_INVALID, "cache of %zu entries, more than the %zu the state holds", n, cap);
    if (!s->started) {
        /* first consultation: nothing was evicted yet, so queries [0, t) saw the full
         * prefix; add their causal rows (columns = the cached positions) */
        double *tmp = calloc(ctx->P, sizeof *tmp);
        if (!tmp) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < G; i++) {
            memset(tmp, 0, ctx->P * sizeof *tmp);
            if (ev_accum_rows(ctx, g * G + i, 0, t, NULL, ctx->P, tmp)) {
                free(tmp);
                return kv_error_set(err, KV_ERR_NOMEM, "out of memory (prompt attention)");
            }
            for (size_t e = 0; e < n; e++) s->acc[i * cap + e] = tmp[c->pos[e]];
        }
        free(tmp);
        for (size_t e = 0; e < n; e++) s->pos[e] = c->pos[e];
        s->n = n;
        s->started = 1;
    } else {
        /* the cache is ours plus the new token t as its last entry */
        if (n != s->n + 1 || c->pos[n - 1] != (int32_t)t)
            return kv_error_set(err, KV_ERR_INVALID, "the cache is not the previous one plus token %zu", t);
        for (size_t i = 0; i < G; i++) s->acc[i * cap + s->n] = 0;
        s->pos[s->n++] = (int32_t)t;
    }
    for (size_t i = 0; i < G; i++)
        for (size_t e = 0; e < n; e++) s->acc[i * cap + e] += probs[i * n + e];
    /* reduce over the group: acc rows are [G][cap], reduce column by column */
    for (size_t e = 0; e < n; e++) {
        double r = s->acc[e];
        for (size_t i = 1; i < G; i++) {
            double v = s->acc[i * cap + e];
            r = ctx->gqa_reduce == RP_GQA_MAX ? (v > r ? v : r) : r + v;
        }
        s->score[e] = ctx->gqa_reduce == RP_GQA_MEAN ? r / (double)G : r;
    }
    size_t m = h2o_keep(s->score, n, B, s->r, s->kept);
    size_t ne = 0, w = 0;
    for (size_t e = 0, i = 0; e < n; e++) {
        if (i < m && (size_t)s->kept[i] == e) {
            i++;
            s->pos[w] = s->pos[e];
            for (size_t q = 0; q < G; q++) s->acc[q * cap + w] = s->acc[q * cap + e];
            w++;
        } else {
            evict[ne++] = e;
        }
    }
    s->n = w;
    *n_evict = ne;
    return KV_OK;
}

/* q_rows: prefill reads the whole prompt's column sums (ev_accum_rows over [0, P), every B)
 * and no query directly: the engine decides whether they come from the trace or from Q */
static size_t h2o_q_rows(const void *cfg, size_t P, size_t B, int *whole)
{
    *whole = 1;
    return 0;
}

const rp_strategy rp_strategy_h2o = {
    .name = "h2o",
    .summary = "heavy hitters (accumulated attention) + recent window; online real-drop or prefill one-shot",
    .reference = "Zhang et al. 2023 (NeurIPS), github.com/FMInference/H2O (utils_real_drop)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL | RP_ONLINE,
    .needs_budget = 1,
    .params = h2o_params,
    .n_params = 1,
    .configure = h2o_configure,
    .free_cfg = h2o_free,
    .prefill = h2o_prefill,
    .online_new = h2o_online_new,
    .online_step = h2o_online_step,
    .online_free = h2o_online_free,
    .head_separable = 1,     /* each kv head's cache from its own rows and scores */
    .q_rows = h2o_q_rows,
};
