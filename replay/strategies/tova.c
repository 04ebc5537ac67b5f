/* tova — Token Omission Via Attention: evict the entry the current query attends to least.
 *
 * Rule (online): token t is appended, query t attends to the cache; when the cache holds
 * more than B entries, the entry with the lowest attention from query t is evicted (t itself
 * included, as in the reference). The G query heads of a kv head are reduced with the run's
 * --gqa-reduce (mean by default). Ties: the lower position is kept.
 * Prefill (an extension, kvpress TOVAPress form): the last prompt query's attention over the
 * prompt, the last prompt token always kept (it gets the maximum score).
 * Defaults: no parameter besides the budget.
 * Deviation: the reference averages the attention over ALL heads of a layer and applies one
 * eviction to every head; here memory lives per kv head (docs/METHODS.md §4), so the average is over
 * the kv head's query group (with --gqa-reduce mean and Hkv = 1 the two coincide).
 * Reference: Oren et al. 2024, "Transformers are Multi-State RNNs" (github.com/schwartz-lab-NLP/TOVA);
 * kvpress TOVAPress.
 */
#include <stdlib.h>
#include <string.h>

#include "evict_util.h"
#include "strategy.h"
#include "tova.h"

size_t tova_evict(const float *probs, size_t G, size_t n, size_t B, int how, double *score, size_t *evict)
{
    if (n <= B) return 0;
    for (size_t e = 0; e < n; e++) {
        double r = probs[e];
        for (size_t i = 1; i < G; i++) {
            double v = probs[i * n + e];
            r = how == RP_GQA_MAX ? (v > r ? v : r) : r + v;
        }
        score[e] = how == RP_GQA_MEAN ? r / (double)G : r;
    }
    return ev_evict_complement(score, n, B, evict);
}

static int tova_configure(const double *values, void **cfg, char *err, size_t errlen)
{
    *cfg = NULL;
    return 0;
}

static int tova_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                        char *err, size_t errlen)
{
    size_t P = ctx->P, G = ctx->G;
    double *acc = calloc(G * P, sizeof *acc), *score = malloc(P * sizeof *score);
    int32_t *kept = malloc(P * sizeof *kept);
    int rc = -1;
    if (!acc || !score || !kept) goto done;
    for (size_t g = 0; g < ctx->Hkv; g++) {
        memset(acc, 0, G * P * sizeof *acc);
        for (size_t i = 0; i < G; i++)
            if (ev_accum_rows(ctx, g * G + i, P - 1, P, NULL, P, acc + i * P)) goto done;
        ev_reduce(acc, G, P, ctx->gqa_reduce, score);
        double mx = score[0];
        for (size_t j = 1; j < P; j++) mx = score[j] > mx ? score[j] : mx;
        score[P - 1] = mx;
        size_t m = rp_topk(score, P, B, kept);
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
    }
    rc = 0;
done:
    free(acc); free(score); free(kept);
    return rc;
}

typedef struct tova_state { double *score; } tova_state;

static void tova_online_free(void *state)
{
    tova_state *s = state;
    if (!s) return;
    free(s->score);
    free(s);
}

static void *tova_online_new(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B)
{
    tova_state *s = malloc(sizeof *s);
    if (!s) return NULL;
    if (!(s->score = malloc((B + 2) * sizeof *s->score))) { free(s); return NULL; }
    return s;
}

static kv_status tova_online_step(void *state, const rp_layer_ctx *ctx, size_t g, size_t t,
                                  const rp_cache *c, const float *probs, size_t B, size_t *evict,
                                  size_t *n_evict, kv_error *err)
{
    tova_state *s = state;
    *n_evict = 0;
    if (c->n > B + 2)                      /* engine contract: at most B + 1 */
        return kv_error_set(err, KV_ERR_INVALID, "cache of %zu entries, more than budget %zu + 1", c->n, B);
    size_t m = tova_evict(probs, ctx->G, c->n, B, ctx->gqa_reduce, s->score, evict);
    if (m == (size_t)-1) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    *n_evict = m;
    return KV_OK;
}

const rp_strategy rp_strategy_tova = {
    .name = "tova",
    .summary = "online: evict the entry with the lowest attention from the current query",
    .reference = "Oren et al. 2024 (github.com/schwartz-lab-NLP/TOVA); kvpress TOVAPress",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL | RP_ONLINE,
    .needs_budget = 1,
    .configure = tova_configure,
    .prefill = tova_prefill,
    .online_new = tova_online_new,
    .online_step = tova_online_step,
    .online_free = tova_online_free,
    .head_separable = 1,     /* each kv head's cache from its own rows and scores */
};
