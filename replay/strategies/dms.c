/* dms — kvpress's DMSPress: evict by a score threshold instead of a top-k, behind a sliding
 * window of protected recent tokens.
 *
 * Rule: the prompt is kept whole until decoding starts. Every interval decode steps (after
 * query t has attended), the entries that have left the sliding window since the last check
 * (positions <= t - sliding, each judged exactly once) are scored by the scorer (decoding.h,
 * over the whole live cache) and those whose score is below threshold are evicted; the others
 * stay for good. The first check (after the first decode query when interval=1) judges every
 * prompt entry outside the window. The memory is not fixed: it depends on the scores.
 * Defaults: threshold=0, sliding=128 (kvpress sliding_window_size), interval=1 (kvpress checks
 * at every step), scorer=tova. kvpress has no default threshold: it depends on the scorer
 * (knorm scores are -||k||, tova and snapkv attention probabilities); threshold=0 with tova
 * or snapkv evicts nothing. On short traces lower sliding (the default sweep does).
 * Budget: none taken (keep=/budget= are refused); threshold sets the memory.
 * Same results under --mode prefill and --mode online (strategy.h decode_time).
 * Reference: Lancucki et al. 2025, "Inference-Time Hyper-Scaling with KV Cache Compression"
 * (Dynamic Memory Sparsification, arXiv 2506.05345); kvpress DMSPress (github.com/NVIDIA/kvpress,
 * presses/dms_press.py), a dense-prefill version without the paper's trained evictors.
 * Differences: kvpress scores a token once when it enters (the scorer on that step's new keys
 * and hidden states) and prunes the prompt right after prefill, before the first decode query;
 * here a token is scored when it is judged, over the live cache with the trace's queries (the
 * same score for knorm, whose score is the token's own), and the prompt is pruned after the
 * first decode query. kvpress masks evicted entries per (kv head, position), as here.
 */
#include <stdlib.h>

#include "decoding.h"
#include "strategy.h"

typedef struct dms_cfg { dec_scorer sc; double threshold; size_t sliding, interval; } dms_cfg;

static const rp_param_def dms_params[] = {
    { "threshold", RP_FLOAT, "0", -1e300, 1e300, NULL, "evict entries scoring below it (kvpress: no default)" },
    { "sliding", RP_INT, "128", 0, 1e9, NULL, "recent positions protected from eviction (kvpress sliding_window_size)" },
    { "interval", RP_INT, "1", 1, 1e9, NULL, "decode steps between checks (kvpress: every step)" },
    DEC_SCORER_PARAMS("tova"),
};

static int dms_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    dms_cfg *c = dec_cfg_new(sizeof *c, v + 3, "dms", err, errlen);
    if (!c) return -1;
    c->threshold = v[0];
    c->sliding = (size_t)v[1];
    c->interval = (size_t)v[2];
    *cfg = c;
    return 0;
}

typedef struct dms_state {
    dec_state base;
    size_t judged;          /* positions below it have been judged */
} dms_state;

static void *dms_online_new(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B)
{
    return dec_state_new(cfg, sizeof(dms_state));
}

static kv_status dms_online_step(void *state, const rp_layer_ctx *ctx, size_t g, size_t t, const rp_cache *c,
                                 const float *probs, size_t B, size_t *evict, size_t *n_evict, kv_error *err)
{
    dms_state *s = state;
    const dms_cfg *cf = s->base.cfg;
    *n_evict = 0;
    if (!dec_step_due(&s->base, cf->interval) || t + 1 <= cf->sliding) return KV_OK;
    size_t limit = t + 1 - cf->sliding, m = 0;     /* judge positions [judged, limit) */
    if (limit <= s->judged) return KV_OK;
    kv_status st = dec_score_cache(&s->base, &cf->sc, ctx, g, t, c, probs, err);
    if (st != KV_OK) return st;
    const double *score = s->base.score;
    for (size_t e = 0; e < c->n; e++) {
        size_t p = (size_t)c->pos[e];
        if (p >= s->judged && p < limit && score[e] < cf->threshold) evict[m++] = e;
    }
    s->judged = limit;
    *n_evict = m;
    return KV_OK;
}

const rp_strategy rp_strategy_dms = {
    .name = "dms",
    .summary = "decode time: entries leaving a sliding window of recent tokens are evicted when their score "
               "is below threshold (no keep=/budget=: the threshold sets the memory; threshold=0 with the "
               "default tova scorer evicts nothing)",
    .reference = "Lancucki et al. 2025 (arXiv 2506.05345); kvpress DMSPress (presses/dms_press.py)",
    DEC_PRESS_COMMON,
    .params = dms_params,
    .n_params = sizeof dms_params / sizeof dms_params[0],
    .configure = dms_configure,
    .online_new = dms_online_new,
    .online_step = dms_online_step,
    .online_free = dec_online_free,
};
