/* duo — DuoAttention: streaming kv heads keep attention sinks + a recent window, full
 * (retrieval) heads keep the whole prompt; the split is derived from calibration sequences.
 *
 * Rule (prefill protocol; no keep=/budget=: the split decides what is kept):
 *   1. mass(l, g), per layer l and kv head g, from the calibration sequences (--calib, never
 *      evaluated): over their query positions t >= sinks + recent (the last calib_q of them
 *      per sequence; every one with calib_q=0), the mean over those positions and the G query
 *      heads of g of the attention probability on the sinks [0, sinks) and on the recent
 *      window [t - recent + 1, t]. Rows are causal, with the layer's scale, soft-cap and
 *      window (the engine's logit, attn_logit), softmax in double. Earlier positions see only
 *      sinks and window (mass 1) and are skipped; with no position left, mass = 1 everywhere.
 *   2. Streaming heads: threshold > 0: every (l, g) with mass >= threshold; threshold = 0:
 *      the round(head_fraction * L * Hkv) heads (Python's round, half to even) of highest
 *      mass over all layers together, ties to the lower (layer, kv head).
 *   3. Prefill: a streaming kv head keeps [0, sinks) and [P - recent, P); a full head keeps
 *      [0, P); decode queries see these plus the exact entries [P, t].
 * Defaults: sinks=128, recent=256 (kvpress's on-the-fly sizes; the sample traces' prompts are
 * shorter than 384, so the default sweep gives smaller ones), head_fraction=0.5,
 * threshold=0 (off), calib_q=64, calib_n=1 (0 = every --calib sequence).
 * Budget: none; the entries kept follow from the split (kvpress DuoAttentionPress has no
 * settable compression_ratio either).
 * Reference: Xiao et al. 2024, "DuoAttention: Efficient Long-Context LLM Inference with
 * Retrieval and Streaming Heads" (arXiv 2410.10819; github.com/mit-han-lab/duo-attention);
 * kvpress DuoAttentionPress (github.com/NVIDIA/kvpress, presses/duo_attention_press.py).
 * Differences: DuoAttention learns a gate per (layer, kv head) by optimisation on synthetic
 * passkey data and kvpress downloads those patterns (or, on the fly, scores the mean query's
 * cumulated attention); here the score is the measured attention mass a streaming head would
 * keep on the calibration sequences, so the split depends on which and how many sequences
 * are given (--calib) and on the sinks/recent sizes. kvpress streams heads at the lowest gate
 * value; here at the highest mass (the heads that lose least). threshold= is this replay's
 * alternative to a fixed share of heads. kvpress masks the streaming heads' middle at
 * attention time; the replay drops those entries (the same visible set).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "evict_util.h"
#include "strategy.h"

typedef struct duo_cfg {
    size_t sinks, recent, calib_q, calib_n;
    double head_fraction, threshold;
    size_t L, Hkv;              /* set by calibrate */
    double *mass;               /* [L][Hkv] */
    unsigned char *done;        /* [L] calibrated */
    unsigned char *streaming;   /* [L][Hkv], set once every layer is calibrated */
} duo_cfg;

static const rp_param_def duo_params[] = {
    { "sinks", RP_INT, "128", 0, 1e9, NULL, "attention-sink tokens a streaming head keeps" },
    { "recent", RP_INT, "256", 0, 1e9, NULL, "recent tokens a streaming head keeps" },
    { "head_fraction", RP_FLOAT, "0.5", 0, 1, NULL, "share of all (layer, kv head) pairs made streaming, by mass" },
    { "threshold", RP_FLOAT, "0", 0, 1, NULL, "> 0: streaming iff mass >= threshold (replaces head_fraction)" },
    { "calib_q", RP_INT, "64", 0, 1e9, NULL, "last query positions per calibration sequence (0 = all)" },
    { "calib_n", RP_INT, "1", 0, 1 << 20, NULL, "calibration sequences (0 = all of --calib)" },
};

static int duo_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    duo_cfg *c = calloc(1, sizeof *c);
    if (!c) return -1;
    c->sinks = (size_t)v[0];
    c->recent = (size_t)v[1];
    c->head_fraction = v[2];
    c->threshold = v[3];
    c->calib_q = (size_t)v[4];
    c->calib_n = (size_t)v[5];
    if (c->sinks + c->recent == 0) {
        free(c);
        return rp_failf(err, errlen, "duo: sinks + recent must be at least 1 (a streaming head keeps nothing)");
    }
    *cfg = c;
    return 0;
}

static void duo_free(void *cfg)
{
    duo_cfg *c = cfg;
    if (!c) return;
    free(c->mass); free(c->done); free(c->streaming); free(c);
}

static size_t duo_calib_seqs(const void *cfg) { return ((const duo_cfg *)cfg)->calib_n; }

enum { DUO_ROWS = 64 };     /* query rows per attn_full_rows call */

/* Sum over query rows t of the attention mass on the sinks and the recent window, and the
 * row count, for query head rows q [n][D] over keys k [n][D]. The logits come from
 * attn_full_rows (bit for bit attn_logit) DUO_ROWS rows at a time; lg [DUO_ROWS][n], p [n]
 * scratch. */
static void duo_head_mass(const duo_cfg *c, const float *q, const float *k, size_t n, size_t D,
                          const attn_params *ap, float *lg, double *p, double *sum, size_t *rows)
{
    size_t first = c->sinks + c->recent;
    if (c->calib_q && n > c->calib_q && n - c->calib_q > first) first = n - c->calib_q;
    for (size_t t0 = first; t0 < n; t0 += DUO_ROWS) {
        size_t t1 = n - t0 < DUO_ROWS ? n : t0 + DUO_ROWS;
        attn_full_rows(q, k, NULL, n, D, t0, t1, ap, NULL, NULL, lg);
        for (size_t t = t0; t < t1; t++) {
            const float *z = lg + (t - t0) * n;
            size_t lo = attn_lo(t, ap->window);
            double mx = -INFINITY, zs = 0, m = 0;
            for (size_t j = lo; j <= t; j++) {
                p[j] = z[j];
                mx = p[j] > mx ? p[j] : mx;
            }
            for (size_t j = lo; j <= t; j++) {
                p[j] = exp(p[j] - mx);
                zs += p[j];
                if (j < c->sinks || j + c->recent > t) m += p[j];
            }
            *sum += m / zs;
            (*rows)++;
        }
    }
}

/* Step 2, once every layer has its masses. */
static int duo_split(duo_cfg *c)
{
    size_t N = c->L * c->Hkv;
    if (c->threshold > 0) {
        for (size_t i = 0; i < N; i++) c->streaming[i] = c->mass[i] >= c->threshold;
        return 0;
    }
    size_t k = (size_t)ev_round_half_even(c->head_fraction * (double)N);
    int32_t *idx = malloc((N ? N : 1) * sizeof *idx);
    if (!idx) return -1;
    size_t m = rp_topk(c->mass, N, k, idx);
    for (size_t i = 0; i < m; i++) c->streaming[idx[i]] = 1;
    free(idx);
    return 0;
}

/* The attention mass of kv head g of the calibrated layer (rp_calib_heads): 0 ok, -1 out of
 * memory. */
typedef struct duo_calib_arg { duo_cfg *c; const rp_calib_ctx *cc; } duo_calib_arg;

static int duo_calib_head(void *arg, size_t g)
{
    duo_cfg *c = ((duo_calib_arg *)arg)->c;
    const rp_calib_ctx *cc = ((duo_calib_arg *)arg)->cc;
    size_t D = cc->D, G = cc->H / cc->Hkv, nmax = 1;
    for (size_t i = 0; i < cc->n_seq; i++) nmax = cc->n[i] > nmax ? cc->n[i] : nmax;
    double *p = malloc(nmax * sizeof *p);
    float *lg = malloc(DUO_ROWS * nmax * sizeof *lg);
    if (!p || !lg) { free(p); free(lg); return -1; }
    double sum = 0;
    size_t rows = 0;
    for (size_t i = 0; i < cc->n_seq; i++)
        for (size_t h = g * G; h < (g + 1) * G; h++)
            duo_head_mass(c, cc->q[i] + h * cc->n[i] * D, cc->k[i] + g * cc->n[i] * D, cc->n[i], D, &cc->ap, lg,
                          p, &sum, &rows);
    c->mass[cc->layer * cc->Hkv + g] = rows ? sum / (double)rows : 1.0;
    free(p); free(lg);
    return 0;
}

static int duo_calibrate(void *cfg, const rp_calib_ctx *cc, char *err, size_t errlen)
{
    duo_cfg *c = cfg;
    size_t Hkv = cc->Hkv, H = cc->H, L = cc->n_layers;
    if (!cc->q || H == 0 || H % Hkv) return rp_failf(err, errlen, "duo: no calibration queries");
    if (!c->mass) {
        c->L = L; c->Hkv = Hkv;
        c->mass = calloc(L * Hkv, sizeof *c->mass);
        c->done = calloc(L, 1);
        c->streaming = calloc(L * Hkv, 1);
        if (!c->mass || !c->done || !c->streaming) return rp_failf(err, errlen, "out of memory");
    }
    if (cc->layer >= c->L || c->Hkv != Hkv) return rp_failf(err, errlen, "duo: calibration shape mismatch");
    duo_calib_arg a = { c, cc };
    if (rp_calib_heads(Hkv, duo_calib_head, &a, NULL)) return rp_failf(err, errlen, "out of memory");
    c->done[cc->layer] = 1;
    for (size_t l = 0; l < c->L; l++)
        if (!c->done[l]) return 0;
    memset(c->streaming, 0, c->L * c->Hkv);
    if (duo_split(c)) return rp_failf(err, errlen, "out of memory");
    return 0;
}

static int duo_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out, char *err, size_t errlen)
{
    const duo_cfg *c = cfg;
    size_t P = ctx->P;
    (void)B;
    if (!c->streaming || ctx->layer >= c->L || ctx->g0 + ctx->Hkv > c->Hkv)
        return rp_failf(err, errlen, "duo: layer %zu was not calibrated (needs --calib sequences)", ctx->layer);
    for (size_t l = 0; l < c->L; l++)
        if (!c->done[l]) return rp_failf(err, errlen, "duo: layer %zu was not calibrated (needs --calib sequences)", l);
    int32_t *kept = malloc((P + 1) * sizeof *kept);
    if (!kept) return rp_failf(err, errlen, "duo: out of memory");
    for (size_t g = 0; g < ctx->Hkv; g++) {
        size_t m = 0;
        int stream = c->streaming[ctx->layer * c->Hkv + ctx->g0 + g];     /* the layer's kv head g0 + g */
        for (size_t j = 0; j < P; j++)
            if (!stream || j < c->sinks || j + c->recent >= P) kept[m++] = (int32_t)j;
        if (ev_push_kept(ctx, g, kept, m, &out[g])) { free(kept); return rp_failf(err, errlen, "duo: out of memory"); }
    }
    free(kept);
    return 0;
}

const rp_strategy rp_strategy_duo = {
    .name = "duo",
    .summary = "streaming kv heads (sinks + recent window) vs full heads, split by the attention mass on sinks + "
               "window over the --calib sequences (kvpress DuoAttentionPress; no budget: the split decides)",
    .reference = "Xiao et al. 2024, DuoAttention (arXiv 2410.10819, github.com/mit-han-lab/duo-attention); kvpress "
                 "DuoAttentionPress (split derived from --calib, not learned)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 0,
    .params = duo_params,
    .n_params = sizeof duo_params / sizeof duo_params[0],
    .configure = duo_configure,
    .free_cfg = duo_free,
    .calib_seqs = duo_calib_seqs,
    .calibrate = duo_calibrate,
    .prefill = duo_prefill,
    .head_separable = 1,     /* each kv head's cache from its calibrated split (ctx->g0 + g) */
};
