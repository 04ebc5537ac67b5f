/* decoding — kvpress's DecodingPress: compress the cache periodically while decoding.
 *
 * Rule: the prompt is kept whole (the press does nothing at prefill). Decode step k is query
 * t = P + k - 1; after query t has attended, when k is a multiple of interval (the steps since
 * the last compression reach interval) and the cache of a kv head holds more than target
 * entries, the scorer (decoding.h) ranks the cache and the target highest scores are kept
 * (ties: the lower position); the step count restarts at every multiple of interval,
 * compressed or not. Between compressions the cache grows by one entry per step, so it holds
 * at most target + interval - 1 entries after a compression step and up to target + interval
 * during one.
 * Defaults: interval=512, target=2048 (kvpress's compression_interval and target_size),
 * scorer=knorm. On traces whose decode is shorter than interval, or whose sequences are
 * shorter than target, nothing is compressed: the default sweep uses small values.
 * Budget: none taken (keep=/budget= are refused); target and interval set the memory.
 * Under --mode prefill and --mode online the results are the same (the decode steps follow the
 * online protocol in both; strategy.h decode_time).
 * Reference: kvpress DecodingPress (github.com/NVIDIA/kvpress, presses/decoding_press.py).
 * Differences: kvpress scores with the base press's own inputs (the buffered hidden states of
 * the last decode steps, from which the scorer recomputes queries); here the scorers read the
 * trace's queries and keys directly (decoding.h). kvpress's scorer ranks each kv head of a
 * layer with that head's scores, as here; its SnapKV pads the window with the layer's
 * maximum, here the kv head's (the same kept set unless scores tie with that maximum).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "decoding.h"
#include "evict_util.h"
#include "strategy.h"

/* ---- the shared decode-time scorers (decoding.h) ------------------------------------------ */

int dec_scorer_resolve(const double *v, dec_scorer *s, const char *who, char *err, size_t errlen)
{
    s->kind = (int)v[0];
    s->window = (size_t)v[1];
    s->kernel = (size_t)v[2];
    if (s->kernel % 2 == 0)
        return rp_failf(err, errlen, "%s: kernel=%zu must be odd (centred pooling)", who, s->kernel);
    return 0;
}

int dec_grow(void **p, size_t *cap, size_t need, size_t sz)
{
    if (need <= *cap) return 0;
    size_t nc = *cap ? *cap : 16;
    while (nc < need) nc *= 2;
    void *q = realloc(*p, nc * sz);
    if (!q) return -1;
    *p = q;
    *cap = nc;
    return 0;
}

static double row_norm(const float *x, size_t D)
{
    double s = 0;
    for (size_t d = 0; d < D; d++) s += (double)x[d] * x[d];
    return sqrt(s);
}

static void score_knorm(const rp_cache *c, double *score)
{
    for (size_t e = 0; e < c->n; e++) score[e] = -row_norm(c->k + e * c->D, c->D);
}

/* a zero key (or anchor) scores 0: torch's epsilon clamps only matter for exact zeros */
static int score_keydiff(const rp_cache *c, double *score)
{
    size_t n = c->n, D = c->D;
    double *a = calloc(D, sizeof *a);
    if (!a) return -1;
    for (size_t e = 0; e < n; e++) {
        double r = row_norm(c->k + e * D, D);
        if (r > 0)
            for (size_t d = 0; d < D; d++) a[d] += c->k[e * D + d] / r;
    }
    for (size_t d = 0; d < D; d++) a[d] /= (double)n;
    double an = 0;
    for (size_t d = 0; d < D; d++) an += a[d] * a[d];
    an = sqrt(an);
    for (size_t e = 0; e < n; e++) {
        double r = row_norm(c->k + e * D, D), dot = 0;
        for (size_t d = 0; d < D; d++) dot += c->k[e * D + d] * a[d];
        score[e] = r > 0 && an > 0 ? -dot / (r * an) : 0;
    }
    free(a);
    return 0;
}

static double max_of(const double *x, size_t n)
{
    double m = x[0];
    for (size_t i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

static int score_tova(const rp_layer_ctx *ctx, const rp_cache *c, const float *probs, double *score)
{
    size_t n = c->n, G = ctx->G;
    double *x = malloc(G * n * sizeof *x);
    if (!x) return -1;
    for (size_t i = 0; i < G * n; i++) x[i] = probs[i];
    ev_reduce(x, G, n, ctx->gqa_reduce, score);
    free(x);
    score[n - 1] = max_of(score, n);
    return 0;
}

/* SnapKV over the live cache: window queries of the trace, the cache's key rows. */
static int score_snapkv(const dec_scorer *s, const rp_layer_ctx *ctx, size_t g, size_t t, const rp_cache *c,
                        double *score)
{
    size_t n = c->n, G = ctx->G, D = ctx->D, w = s->window < n ? s->window : n, m = n - w;
    size_t r0 = t + 1 > s->window ? t + 1 - s->window : 0, half = s->kernel / 2;
    if (m == 0) {                       /* the window covers the cache: every entry ranks first */
        for (size_t e = 0; e < n; e++) score[e] = 0;
        return 0;
    }
    double *mean = calloc(G * m, sizeof *mean), *pool = malloc(G * m * sizeof *pool), *lg = malloc(n * sizeof *lg);
    if (!mean || !pool || !lg) { free(mean); free(pool); free(lg); return -1; }
    for (size_t i = 0; i < G; i++) {
        size_t h = g * G + i;
        for (size_t r = r0; r <= t; r++) {
            const float *q = ctx->q + (h * ctx->n + r) * D;
            size_t lo = attn_lo(r, ctx->ap.window);
            double mx = -INFINITY, z = 0;
            for (size_t e = 0; e < n; e++) {
                size_t p = (size_t)c->pos[e];
                lg[e] = p <= r && p >= lo ? (double)attn_logit(q, c->k + e * D, D, &ctx->ap) : -INFINITY;
                mx = lg[e] > mx ? lg[e] : mx;
            }
            for (size_t e = 0; e < n; e++) z += lg[e] == -INFINITY ? 0 : exp(lg[e] - mx);
            for (size_t e = 0; e < m; e++)
                if (lg[e] != -INFINITY) mean[i * m + e] += exp(lg[e] - mx) / z;
        }
        for (size_t e = 0; e < m; e++) mean[i * m + e] /= (double)(t + 1 - r0);
        for (size_t e = 0; e < m; e++) {           /* avg_pool1d, zero padding counted */
            double acc = 0;
            for (size_t j = e >= half ? e - half : 0; j <= e + half && j < m; j++) acc += mean[i * m + j];
            pool[i * m + e] = acc / (double)s->kernel;
        }
    }
    ev_reduce(pool, G, m, ctx->gqa_reduce, score);
    double mx = max_of(score, m);
    for (size_t e = m; e < n; e++) score[e] = mx;
    free(mean); free(pool); free(lg);
    return 0;
}

int dec_score(const dec_scorer *s, const rp_layer_ctx *ctx, size_t g, size_t t, const rp_cache *c,
              const float *probs, double *score)
{
    switch (s->kind) {
    case DEC_KNORM: score_knorm(c, score); return 0;
    case DEC_KEYDIFF: return score_keydiff(c, score);
    case DEC_TOVA: return score_tova(ctx, c, probs, score);
    default: return score_snapkv(s, ctx, g, t, c, score);
    }
}

int dec_prefill_all(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out, char *err, size_t errlen)
{
    int32_t *kept = malloc((ctx->P ? ctx->P : 1) * sizeof *kept);
    if (!kept) return -1;
    for (size_t j = 0; j < ctx->P; j++) kept[j] = (int32_t)j;
    int rc = 0;
    for (size_t g = 0; g < ctx->Hkv && !rc; g++) rc = ev_push_kept(ctx, g, kept, ctx->P, &out[g]);
    free(kept);
    return rc;
}

void *dec_cfg_new(size_t size, const double *sv, const char *who, char *err, size_t errlen)
{
    dec_scorer *sc = calloc(1, size);     /* the configuration starts with its scorer */
    if (!sc) return NULL;
    if (dec_scorer_resolve(sv, sc, who, err, errlen)) { free(sc); return NULL; }
    return sc;
}

void dec_cfg_free(void *cfg) { free(cfg); }

void *dec_state_new(const void *cfg, size_t size)
{
    dec_state *s = calloc(1, size);
    if (s) s->cfg = cfg;
    return s;
}

void *dec_online_new(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B)
{
    return dec_state_new(cfg, sizeof(dec_state));
}

void dec_online_free(void *state)
{
    dec_state *s = state;
    if (s) free(s->score);
    free(s);
}

int dec_step_due(dec_state *s, size_t interval)
{
    if (++s->steps < interval) return 0;
    s->steps = 0;
    return 1;
}

kv_status dec_score_cache(dec_state *s, const dec_scorer *sc, const rp_layer_ctx *ctx, size_t g, size_t t,
                          const rp_cache *c, const float *probs, kv_error *err)
{
    if (dec_grow((void **)&s->score, &s->cap, c->n, sizeof *s->score) || dec_score(sc, ctx, g, t, c, probs, s->score))
        return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    return KV_OK;
}

/* ---- the press ------------------------------------------------------------------------------ */

typedef struct decoding_cfg { dec_scorer sc; size_t interval, target; } decoding_cfg;

static const rp_param_def decoding_params[] = {
    DEC_PERIODIC_PARAMS,
    DEC_SCORER_PARAMS("knorm"),
};

static int decoding_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    decoding_cfg *c = dec_cfg_new(sizeof *c, v + 2, "decoding", err, errlen);
    if (!c) return -1;
    c->interval = (size_t)v[0];
    c->target = (size_t)v[1];
    *cfg = c;
    return 0;
}

static kv_status decoding_online_step(void *state, const rp_layer_ctx *ctx, size_t g, size_t t,
                                      const rp_cache *c, const float *probs, size_t B, size_t *evict,
                                      size_t *n_evict, kv_error *err)
{
    dec_state *s = state;
    const decoding_cfg *cf = s->cfg;
    *n_evict = 0;
    if (!dec_step_due(s, cf->interval) || c->n <= cf->target) return KV_OK;
    kv_status st = dec_score_cache(s, &cf->sc, ctx, g, t, c, probs, err);
    if (st != KV_OK) return st;
    size_t m = ev_evict_complement(s->score, c->n, cf->target, evict);
    if (m == (size_t)-1) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    *n_evict = m;
    return KV_OK;
}

const rp_strategy rp_strategy_decoding = {
    .name = "decoding",
    .summary = "decode time: every interval steps keep the target best entries of the cache by a scorer "
               "(defaults interval=512 target=2048 need long decodes; no keep=/budget=, target sets the memory)",
    .reference = "kvpress DecodingPress (github.com/NVIDIA/kvpress, presses/decoding_press.py)",
    DEC_PRESS_COMMON,
    .params = decoding_params,
    .n_params = sizeof decoding_params / sizeof decoding_params[0],
    .configure = decoding_configure,
    .online_new = dec_online_new,
    .online_step = decoding_online_step,
    .online_free = dec_online_free,
};
