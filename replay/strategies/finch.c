/* finch — FINCH: SnapKV whose observation window is the question, kept keys re-rotated to
 * contiguous positions.
 *
 * Rule (prefill protocol, per kv head; the prompt [0, P) is the context):
 *   Window. On a trace with /prefill_len the window is the question: the w tokens [P, P + w)
 *   after the prompt (w = n - P, or the first `question` of them). On a trace without it
 *   (no question: the tokens after the split are the ones evaluated, not a question) the
 *   window is the last `window` prompt tokens [P - w, P), as SnapKV's.
 *   Score of a key j before the window: the mean over the window rows t and the G query heads
 *   of the group of p_h(t, j) * t (normalize=1, kvpress's normalize_scores: row t has t + 1
 *   visible keys) or p_h(t, j) (normalize=0); p is the causal row of query t over its
 *   visible keys (the window's own keys included; the layer's scale, soft-cap and window;
 *   attn_logit, softmax in double). No pooling (kvpress's FinchPress has none).
 *   Kept: question window: the Bc context keys of highest score (ties: lower position); the
 *   question itself is not part of the prompt cache: decode queries see it exactly, as every
 *   prefill strategy's. Prompt window: the window's entries score max + 1 (always kept first,
 *   as kvpress pads them), then the best of the rest, B in all.
 *   rerotate=1: each query t sees the kept keys re-rotated to contiguous positions: entry e of
 *   the m entries it sees (kept context, then the exact entries [P, t]) at t - (m - 1 - e),
 *   i.e. the c kept context keys at P - c .. P - 1 and the exact entries where they are
 *   (streaming reindex=1's view, on the trace's /rope tables: de-rotated at the original
 *   position, rotated at the new one). This is kvpress's KeyRerotationPress.rerotate_keys
 *   (kept keys moved to 0 .. c + w - 1, generation continuing at position c + w): the same
 *   query-key distances, since RoPE logits depend only on them. It changes attention (the
 *   kept keys move closer to the queries), so every metric sees it; kv_mse stays empty (not
 *   a reconstruction). The trace holds post-RoPE keys and the tables, so nothing is
 *   approximated. Traces of models without RoPE (positional != rope): no rotation exists,
 *   re-rotation is a no-op. A RoPE trace without /rope is refused when rerotate=1.
 * Budget: preset=kvpress (default): kvpress keeps max(1, int(k_len (1 - compression_ratio)))
 * entries of context + window, k_len = P + w (question window) or P (prompt window),
 * compression_ratio = 1 - keep, the window first; with a question window the context keeps
 * Bc = that count minus w, at least 1 (kvpress keeps no context then). preset=kvtrace: the
 * engine's round(keep * P) context entries (Bc = B). budget=N: N context entries.
 * Chunks: chunk=N (kvpress's chunk_length; keep= only) keeps the same scores but selects per
 * chunk: the scored positions [0, k_len) are cut into chunks of N from 0 and each chunk of len
 * positions keeps its own share by score, preset=kvpress max(1, int(len keep)) (kvpress's
 * rule), preset=kvtrace max(1, round(keep len)). k_len: with a question window P + w under
 * preset=kvpress (kvpress's context + question: the question's positions, scored above the
 * context, take a chunk's first slots, its context the rest, none when they fill it), else P
 * (the context alone, or the prompt with its padded window). At least one context entry (the
 * best) is kept. kvpress's condition N > w / keep (a whole chunk keeps more than the window) is
 * checked wherever the window is chunked: a sequence that breaks it is refused, named.
 * Defaults: preset=kvpress, question=0 (every token after the prompt), window=16, normalize=1,
 * rerotate=1 (kvpress FinchPress's normalize_scores and rerotate_keys), chunk=0 (off).
 * Reference: Corallo and Papotti 2024, "FINCH: Prompt-guided Key-Value Cache Compression for
 * Large Language Models" (TACL; github.com/giulio98/context-compression); kvpress FinchPress
 * (github.com/NVIDIA/kvpress, presses/finch_press.py, key_rerotation_press.py).
 * Differences: kvpress finds the question with a delimiter token; here it is /prefill_len
 * (sample_qa.h5: the question then the answer follow the context with no delimiter recorded,
 * so by default the window holds both; question=N keeps the first N). kvpress computes the
 * question's own queries on the full context during the prefill; the replay evaluates every
 * position after P on the compressed cache, the question's included. Without /prefill_len
 * kvpress refuses the input; the prompt window is this replay's fallback. chunk=N is kvpress's
 * chunked selection over scores of the whole context; the paper's own chunked processing (each
 * chunk run through the model with the question, attending to the compressed cache of the
 * chunks before it) cannot be replayed: its later chunks' queries and keys differ from the
 * uncompressed run a trace holds. kvpress can drop question tokens in a short last chunk; here
 * the question is always seen exactly. A --decode split on a trace with /prefill_len makes the
 * tokens after that split the window. Sliding-window layers: the layer's window is applied at
 * the original positions.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "evict_util.h"
#include "kvpress_budget.h"
#include "strategy.h"

typedef struct finch_cfg { int preset; size_t question, window; int normalize, rerotate; size_t chunk; } finch_cfg;

static const rp_param_def finch_params[] = {
    KVPRESS_PRESET_PARAM,
    { "question", RP_INT, "0", 0, 1e9, NULL, "window = the first N tokens after /prefill_len (0 = every one)" },
    { "window", RP_INT, "16", 1, 1e9, NULL, "traces without /prefill_len: window = the last N prompt tokens" },
    { "normalize", RP_BOOL, "1", 0, 1, NULL, "weigh window row t by t (kvpress normalize_scores)" },
    { "rerotate", RP_BOOL, "1", 0, 1, NULL, "kept keys re-rotated to contiguous positions (needs /rope on RoPE traces)" },
    { "chunk", RP_INT, "0", 0, 1e9, NULL,
      "kvpress chunk_length: every chunk of N positions keeps its own share keep * N (needs keep=; 0 = off)" },
};

static int finch_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    finch_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->preset = (int)v[0];
    c->question = (size_t)v[1];
    c->window = (size_t)v[2];
    c->normalize = v[3] != 0;
    c->rerotate = v[4] != 0;
    c->chunk = (size_t)v[5];
    *cfg = c;
    return 0;
}

static void finch_free(void *cfg) { free(cfg); }

/* The window rows [*t0, *t1): the question after the prompt, or the prompt's tail. */
static void finch_window(const finch_cfg *c, const rp_layer_ctx *ctx, size_t *t0, size_t *t1)
{
    size_t P = ctx->P, n = ctx->n;
    if (ctx->info && ctx->info->has_prefill && n > P) {
        size_t w = c->question && c->question < n - P ? c->question : n - P;
        *t0 = P; *t1 = P + w;
    } else {
        size_t w = c->window < P ? c->window : P;
        *t0 = P - w; *t1 = P;
    }
}

enum { FINCH_ROWS = 32 };   /* window rows per logits kernel call */

/* score [ncols]: the rule's window score of keys [0, ncols) for kv head g; p [n] and lg
 * [FINCH_ROWS][t1] scratch. The logits of FINCH_ROWS window rows come from one kernel call
 * (attn_full_rows, logits only: the same bits as attn_logit per key, attn.h; 991 of ~6000
 * samples of a finch run at 8k tokens went to the scalar attn_logit loop before), the
 * softmax per row in double as before: the same scores. */
static void finch_score(const finch_cfg *c, const rp_layer_ctx *ctx, size_t g, size_t t0, size_t t1, size_t ncols,
                        double *p, float *lg, double *score)
{
    size_t D = ctx->D, n = ctx->n, G = ctx->G;
    const float *k = ctx->k + g * n * D;
    memset(score, 0, ncols * sizeof *score);
    for (size_t h = g * G; h < (g + 1) * G; h++)
        for (size_t a = t0; a < t1; a += FINCH_ROWS) {
            size_t b = t1 - a < FINCH_ROWS ? t1 : a + FINCH_ROWS;
            /* keys [0, b) cover every visible key of rows < b; the row stride is b */
            attn_full_rows(ctx->q + h * n * D, k, k, b, D, a, b, &ctx->ap, NULL, NULL, lg);
            for (size_t t = a; t < b; t++) {
                const float *row = lg + (t - a) * b;
                size_t lo = attn_lo(t, ctx->ap.window);
                double mx = -INFINITY, z = 0;
                for (size_t j = lo; j <= t; j++) {
                    p[j] = row[j];
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (size_t j = lo; j <= t; j++) z += (p[j] = exp(p[j] - mx));
                double wt = c->normalize ? (double)t : 1.0;
                for (size_t j = lo; j < ncols && j <= t; j++) score[j] += p[j] / z * wt;
            }
        }
    for (size_t j = 0; j < ncols; j++) score[j] /= (double)((t1 - t0) * G);
}

/* Context entries kept (question window: w = t1 - t0 tokens after the prompt). */
static size_t finch_budget(const finch_cfg *c, const rp_layer_ctx *ctx, size_t B, size_t w, int question)
{
    size_t P = ctx->P;
    if (c->preset != KVPRESS_PRESET_KVPRESS || ctx->keep <= 0 || ctx->keep >= 1) return B;
    if (!question) return kvpress_n_kept(c->preset, ctx, P, B);
    double r = 1.0 - ctx->keep;                     /* kvpress's compression_ratio */
    double x = (double)(P + w) * (1.0 - r);
    size_t tot = x < 1 ? 1 : (size_t)x;
    return tot > w + 1 ? tot - w : 1;
}

/* The entries a chunk of len positions keeps: kvpress max(1, int(len (1 - compression_ratio)))
 * in double as Python computes it; preset=kvtrace max(1, round(keep len)) as the engine's B. */
static size_t finch_chunk_kept(const finch_cfg *c, double keep, size_t len)
{
    double x = c->preset == KVPRESS_PRESET_KVPRESS ? (double)len * (1.0 - (1.0 - keep)) : round(keep * (double)len);
    return x < 1 ? 1 : (size_t)x;
}

/* Chunked selection (chunk > 0): the scored range [0, klen) cut into chunks of c->chunk
 * positions from 0, each keeping its own share of entries by score (the window's entries of a
 * prompt window score above all others, so they fill a chunk's share first). klen = P + w with
 * a question window under preset=kvpress (kvpress's k_len: context + question): the question
 * positions of a chunk take its first slots and the context the rest, none when they fill it.
 * Otherwise klen = P. kept [P] ascending; at least one entry (the best) when every chunk's
 * share went to the question. */
static size_t finch_chunk_select(const finch_cfg *c, const rp_layer_ctx *ctx, const double *score, size_t w,
                                 int question, int32_t *kept)
{
    size_t P = ctx->P, klen = question && c->preset == KVPRESS_PRESET_KVPRESS ? P + w : P, m = 0;
    for (size_t a = 0; a < klen && a < P; a += c->chunk) {
        size_t b = klen - a < c->chunk ? klen : a + c->chunk, hi = b < P ? b : P;
        size_t ni = finch_chunk_kept(c, ctx->keep, b - a), wi = b - hi;    /* wi: question positions */
        size_t mi = rp_topk(score + a, hi - a, ni > wi ? ni - wi : 0, kept + m);
        for (size_t i = 0; i < mi; i++) kept[m + i] += (int32_t)a;
        m += mi;
    }
    return m ? m : rp_topk(score, P, 1, kept);
}

/* Whether a chunked configuration can run: a keep= fraction, and where the window is part of
 * the chunked range (not a question under preset=kvtrace) kvpress's condition chunk_length >
 * window / (1 - compression_ratio): a whole chunk keeps more than the window. */
static int finch_chunk_check(const finch_cfg *c, const rp_layer_ctx *ctx, size_t w, int question, char *err,
                             size_t errlen)
{
    if (ctx->keep <= 0)
        return rp_failf(err, errlen, "finch: chunk=%zu needs keep= (each chunk keeps that fraction), not budget=",
                        c->chunk);
    double keep = 1.0 - (1.0 - ctx->keep);     /* 1 - compression_ratio, as kvpress computes it */
    if ((!question || c->preset == KVPRESS_PRESET_KVPRESS) && !((double)c->chunk > (double)w / keep))
        return rp_failf(err, errlen, "finch: chunk=%zu must exceed window / keep = %zu / %g (seq %zu; kvpress's "
                        "condition: a whole chunk keeps more than the window)", c->chunk, w, ctx->keep, ctx->seq);
    return 0;
}

static int finch_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out, char *err, size_t errlen)
{
    const finch_cfg *c = cfg;
    size_t P = ctx->P, t0, t1;
    finch_window(c, ctx, &t0, &t1);
    int question = t0 == P;
    size_t Bc = finch_budget(c, ctx, B, t1 - t0, question);
    if (c->chunk) {
        if (ctx->keep >= 1) Bc = P;                     /* keep=1: nothing to select */
        else if (finch_chunk_check(c, ctx, t1 - t0, question, err, errlen)) return -1;
        else Bc = 0;                                    /* chosen per chunk below */
    }
    double *p = malloc((ctx->n + 1) * sizeof *p), *score = malloc((P + 1) * sizeof *score);
    float *lg = malloc(((size_t)FINCH_ROWS * t1 + 1) * sizeof *lg);
    int32_t *kept = malloc((P + 1) * sizeof *kept);
    int rc = -1;
    if (!p || !score || !kept || !lg) { rp_failf(err, errlen, "finch: out of memory"); goto done; }
    for (size_t g = 0; g < ctx->Hkv; g++) {
        size_t m = P;
        if (Bc >= P) {
            for (size_t j = 0; j < P; j++) kept[j] = (int32_t)j;
        } else if (question) {
            finch_score(c, ctx, g, t0, t1, P, p, lg, score);
            m = c->chunk ? finch_chunk_select(c, ctx, score, t1 - t0, 1, kept) : rp_topk(score, P, Bc, kept);
        } else {                        /* the prompt's tail: padded with the maximum + 1 */
            finch_score(c, ctx, g, t0, t1, t0, p, lg, score);
            double mx = -INFINITY;
            for (size_t j = 0; j < t0; j++) mx = score[j] > mx ? score[j] : mx;
            for (size_t j = t0; j < P; j++) score[j] = t0 ? mx + 1 : 1;
            m = c->chunk ? finch_chunk_select(c, ctx, score, t1 - t0, 0, kept) : rp_topk(score, P, Bc, kept);
        }
        if (ev_push_kept(ctx, g, kept, m, &out[g])) { rp_failf(err, errlen, "finch: out of memory"); goto done; }
    }
    rc = 0;
done:
    free(p); free(score); free(kept); free(lg);
    return rc;
}

static int finch_view_active(const void *cfg) { return ((const finch_cfg *)cfg)->rerotate; }

/* Re-rotation as a per-query view (both protocols' engine path; prefill here). */
static int finch_view(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *c, char *err,
                      size_t errlen)
{
    const finch_cfg *cf = cfg;
    if (!cf->rerotate) return 0;
    if (ctx->info && strcmp(ctx->info->positional, "rope") != 0) return 0;   /* no rotation to move */
    return ev_reindex_view(ctx, t, c, "finch rerotate=1", err, errlen);
}

const rp_strategy rp_strategy_finch = {
    .name = "finch",
    .summary = "SnapKV-like window score from the question after /prefill_len (rows weighted by position), kept "
               "keys re-rotated to contiguous positions (kvpress FinchPress); budget: kvpress int((P + w) keep) "
               "counting the question, or preset=kvtrace round(keep P) context entries",
    .reference = "Corallo and Papotti 2024, FINCH (TACL; github.com/giulio98/context-compression); kvpress FinchPress "
                 "(normalize_scores, rerotate_keys); no /prefill_len: the last window= prompt tokens",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = finch_params,
    .n_params = sizeof finch_params / sizeof finch_params[0],
    .configure = finch_configure,
    .free_cfg = finch_free,
    .prefill = finch_prefill,
    .online_view = finch_view,
    .view_active = finch_view_active,
    .cfg_uses_rope = finch_view_active,   /* rerotate=1 re-rotates keys with /rope */
    .view_static = 1,
    .head_separable = 1,     /* each kv head's window score of its own rows; the view per entry */
    .late_params = 1,           /* chunk: named only when on */
};
