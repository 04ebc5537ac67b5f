/* cam — kvpress's CAMPress (Cache Merging): DecodingPress's periodic compression, with the
 * values of evicted entries merged into the kept neighbours that follow them.
 *
 * Rule, per kv head: the prompt is kept whole. From the first decode query on, A_e sums the
 * attention of every decode query over cache entry e (the mean over the kv head's query group;
 * an entry enters with 0). After query t, when the decode steps since the last compression
 * reach interval and the cache holds more than target entries:
 *   1. the scorer (decoding.h) ranks the cache; the target best are kept (ties: the lower
 *      position), the others are evicted;
 *   2. of the evicted, the k = (steps since the last compression) highest scores (ties: the
 *      later position first) are merge candidates;
 *   3. candidate m's window is the merge_budget kept entries that follow it in position order
 *      (fewer at the end of the cache: a = their count);
 *   4. p = clamp(A_m / mean of A over the window, 0, 1) (0/0 gives 0, x/0 gives 1);
 *   5. with probability p (u < p, u uniform in [0, 1)) v_m / a is added to the value of every
 *      entry of the window; values are those before this compression's merges;
 *   6. the evicted entries are dropped with their A.
 * The step count restarts only when a compression happens (kvpress CAMPress), so a cache at or
 * below target compresses at the first step it exceeds target once interval steps have passed.
 * Randomness: one uniform per candidate, in position order, from a splitmix64 stream seeded by
 * (the engine's seed of configuration, sequence and layer; the kv head's number in the layer,
 * ctx->g0 + g; step position t), so the
 * draws never depend on threads, shards or ranks.
 * Defaults: interval=512, target=2048, merge_budget=32 (kvpress's compression_interval,
 * target_size, merge_budget), scorer=knorm. Short traces need small interval and target (the
 * default sweep uses them). Budget: none taken (keep=/budget= are refused); target and interval
 * set the memory as in `decoding`. Same results under --mode prefill and --mode online
 * (strategy.h decode_time).
 * Reference: Zhang et al. 2024, "CaM: Cache Merging for Memory-efficient LLMs Inference" (ICML,
 * openreview LCTmppB165); kvpress CAMPress (github.com/NVIDIA/kvpress, presses/cam_press.py).
 * Differences: kvpress averages the base scores over the kv heads of a layer and evicts the
 * same positions in every kv head; here each kv head ranks, evicts and merges with its own
 * scores (memory lives per kv head). kvpress draws with torch.bernoulli on the device; here the
 * seeded stream above. Merges accumulate in double and are rounded to the cache's fp32 rows once.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "decoding.h"
#include "strategy.h"

typedef struct cam_cfg { dec_scorer sc; size_t interval, target, budget; } cam_cfg;

static const rp_param_def cam_params[] = {
    DEC_PERIODIC_PARAMS,
    { "merge_budget", RP_INT, "32", 1, 1e9, NULL, "kept neighbours an evicted value is merged into" },
    DEC_SCORER_PARAMS("knorm"),
};

static int cam_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    cam_cfg *c = dec_cfg_new(sizeof *c, v + 3, "cam", err, errlen);
    if (!c) return -1;
    c->interval = (size_t)v[0];
    c->target = (size_t)v[1];
    c->budget = (size_t)v[2];
    *cfg = c;
    return 0;
}

typedef struct cam_state {
    dec_state base;         /* steps: since the last compression */
    size_t D, n;
    int started, pending;   /* pending: delta waits for online_rows */
    double *A, *delta;
    int32_t *kept, *ev, *cand;
    size_t capA, capD, capK, capE, capC;
    size_t n_kept;
} cam_state;

static void *cam_online_new(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B)
{
    cam_state *s = dec_state_new(cfg, sizeof *s);
    if (!s) return NULL;
    s->D = ctx->D;
    return s;
}

static void cam_online_free(void *state)
{
    cam_state *s = state;
    if (!s) return;
    free(s->A); free(s->delta); free(s->kept); free(s->ev); free(s->cand);
    dec_online_free(s);
}

/* The stream of kv head g at step t (strategy.h: mix the kv head in yourself). */
static uint64_t step_seed(uint64_t seed, size_t g, size_t t)
{
    rp_rng r = { seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(g + 1)) };
    rp_rng r2 = { rp_rng_next(&r) ^ (0x9E3779B97F4A7C15ull * (uint64_t)(t + 1)) };
    return rp_rng_next(&r2);
}

/* Merge candidates: the k best evicted entries by (score desc, position desc), in index order. */
static size_t pick_candidates(const cam_state *s, const rp_cache *c, size_t ne, size_t k, int32_t *cand)
{
    if (k > ne) k = ne;
    uint8_t *taken = calloc(ne ? ne : 1, 1);
    if (!taken) return (size_t)-1;
    for (size_t r = 0; r < k; r++) {     /* k selections over ne: O(k ne), fine at these sizes */
        size_t best = ne;
        for (size_t i = ne; i-- > 0;) {  /* from the later positions: ties go to them */
            if (taken[i]) continue;
            const double *score = s->base.score, x = score[s->ev[i]];
            if (best == ne || x > score[s->ev[best]] || (isnan(score[s->ev[best]]) && !isnan(x))) best = i;
        }
        taken[best] = 1;
    }
    size_t m = 0;
    for (size_t i = 0; i < ne; i++) if (taken[i]) cand[m++] = s->ev[i];
    free(taken);
    return m;
}

static kv_status cam_compress(cam_state *s, const rp_layer_ctx *ctx, size_t g, size_t t, const rp_cache *c,
                              const float *probs, size_t *evict, size_t *n_evict, kv_error *err)
{
    const cam_cfg *cf = s->base.cfg;
    size_t n = c->n, D = s->D, T = cf->target;
    if (dec_grow((void **)&s->kept, &s->capK, n, sizeof *s->kept) ||
        dec_grow((void **)&s->ev, &s->capE, n, sizeof *s->ev) ||
        dec_grow((void **)&s->cand, &s->capC, n, sizeof *s->cand) ||
        dec_grow((void **)&s->delta, &s->capD, n * D, sizeof *s->delta))
        return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    kv_status st = dec_score_cache(&s->base, &cf->sc, ctx, g, t, c, probs, err);
    if (st != KV_OK) return st;
    size_t nk = rp_topk(s->base.score, n, T, s->kept), ne = 0;
    for (size_t e = 0, i = 0; e < n; e++) {
        if (i < nk && (size_t)s->kept[i] == e) { i++; continue; }
        s->ev[ne++] = (int32_t)e;
    }
    size_t nc = pick_candidates(s, c, ne, s->base.steps, s->cand);
    if (nc == (size_t)-1) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    memset(s->delta, 0, n * D * sizeof *s->delta);
    rp_rng r = { step_seed(ctx->seed, ctx->g0 + g, t) };     /* the kv head's number in the layer */
    size_t j = 0;                       /* first kept index after the candidate */
    for (size_t i = 0; i < nc; i++) {
        size_t m = (size_t)s->cand[i];
        while (j < nk && (size_t)s->kept[j] < m) j++;
        size_t a = nk - j < cf->budget ? nk - j : cf->budget;
        double u = rp_rng_uniform(&r), mean = 0;
        if (!a) continue;
        for (size_t w = j; w < j + a; w++) mean += s->A[s->kept[w]];
        mean /= (double)a;
        double p = s->A[m] / mean;
        if (isnan(p)) p = 0;
        p = p < 0 ? 0 : p > 1 ? 1 : p;  /* x / 0 = inf clamps to 1 */
        if (!(u < p)) continue;
        for (size_t w = j; w < j + a; w++)
            for (size_t d = 0; d < D; d++) s->delta[(size_t)s->kept[w] * D + d] += (double)c->v[m * D + d] / (double)a;
    }
    for (size_t i = 0; i < nk; i++) s->A[i] = s->A[s->kept[i]];     /* kept ascending: in place */
    for (size_t i = 0; i < ne; i++) evict[i] = (size_t)s->ev[i];
    s->n = nk;
    s->n_kept = nk;
    s->base.steps = 0;
    s->pending = 1;
    *n_evict = ne;
    return KV_OK;
}

static kv_status cam_online_step(void *state, const rp_layer_ctx *ctx, size_t g, size_t t, const rp_cache *c,
                                 const float *probs, size_t B, size_t *evict, size_t *n_evict, kv_error *err)
{
    cam_state *s = state;
    const cam_cfg *cf = s->base.cfg;
    size_t n = c->n, G = ctx->G;
    *n_evict = 0;
    if (s->started && n != s->n + 1)
        return kv_error_set(err, KV_ERR_INVALID, "the cache is not the previous one plus token %zu", t);
    if (dec_grow((void **)&s->A, &s->capA, n, sizeof *s->A)) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    for (size_t e = s->started ? s->n : 0; e < n; e++) s->A[e] = 0;
    s->started = 1;
    s->n = n;
    for (size_t e = 0; e < n; e++) {
        double a = 0;
        for (size_t i = 0; i < G; i++) a += probs[i * n + e];
        s->A[e] += a / (double)G;
    }
    if (++s->base.steps < cf->interval || n <= cf->target) return KV_OK;
    return cam_compress(s, ctx, g, t, c, probs, evict, n_evict, err);
}

/* After the engine dropped the evicted entries: kept entry i was entry kept[i] before. */
static int cam_online_rows(void *state, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *c, char *err,
                           size_t errlen)
{
    cam_state *s = state;
    size_t D = s->D;
    if (!s->pending) return 0;
    s->pending = 0;
    if (c->n != s->n_kept) return rp_failf(err, errlen, "cache of %zu entries after a compression to %zu", c->n, s->n_kept);
    for (size_t i = 0; i < c->n; i++) {
        const double *dl = s->delta + (size_t)s->kept[i] * D;
        for (size_t d = 0; d < D; d++) {
            if (dl[d] == 0) continue;
            c->v[i * D + d] = (float)((double)c->v[i * D + d] + dl[d]);
            c->modified = 1;
        }
    }
    return 0;
}

const rp_strategy rp_strategy_cam = {
    .name = "cam",
    .summary = "decode time: as decoding (every interval steps keep the target best), evicted values merged "
               "into the next merge_budget kept entries with CaM's Bernoulli probability (reproducible draws; defaults "
               "interval=512 target=2048 need long decodes; no keep=/budget=)",
    .reference = "Zhang et al. 2024 (ICML, CaM); kvpress CAMPress (presses/cam_press.py)",
    DEC_PRESS_COMMON,
    .params = cam_params,
    .n_params = sizeof cam_params / sizeof cam_params[0],
    .configure = cam_configure,
    .online_new = cam_online_new,
    .online_step = cam_online_step,
    .online_free = cam_online_free,
    .online_rows = cam_online_rows,
};
