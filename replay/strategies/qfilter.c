/* qfilter — Q-Filters: score each key by minus its projection on the layer-head's query direction.
 *
 * Rule (prefill protocol, per kv head): f = the filter of (layer, kv head g); score(j) =
 * -<f, k_j> on the stored (post-RoPE) prompt keys; keep the B highest (ties: lower position).
 * B >= P keeps everything.
 * Filters (calibrate, never from evaluated sequences): over the calibration sequences' queries
 * of the G query heads of kv head g, every position, stored post-RoPE as the keys they are
 * applied to, u = the leading right singular vector of the stacked query matrix (the top
 * eigenvector of sum q q^T, through GSL) signed so that the queries' mean projection on it is
 * positive, and f = -u. Then -<f, k> = <u, k>: the logit <q, k> is dominated by
 * <q, u><u, k> with <q, u> > 0 on average, so the keys kept are those the queries' dominant
 * direction attends to most (Q-Filters' observation on the query-key geometry).
 * Defaults: preset=kvpress, calib_n=1 (calibration sequences; 0 = every --calib sequence).
 * Budget: preset=kvpress keeps kvpress's int(P * (1 - compression_ratio)) with
 * compression_ratio = 1 - keep (kvpress_budget.h); preset=kvtrace the engine's round(keep * P).
 * Reference: Godey et al. 2025, "Q-Filters: Leveraging QK Geometry for Efficient KV Cache
 * Compression" (arXiv 2503.02812); kvpress QFilterPress (github.com/NVIDIA/kvpress,
 * presses/qfilter_press.py: scores = -(q_filter * keys).sum(-1)).
 * Differences: kvpress loads filters learned offline for a named model (nthngdy/<model>_qfilt);
 * here they are computed from the trace's calibration sequences, so they depend on how many
 * and which sequences are given (--calib). The sign convention of the released filters was
 * not checked against them: f = -u is chosen so that kvpress's -<f, k> keeps the keys the
 * queries favour. Scores in double.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "evict_util.h"
#include "kvpress_budget.h"
#include "lowrank.h"
#include "strategy.h"

typedef struct qf_cfg {
    int preset;
    size_t calib_n;
    size_t L, Hkv, D;           /* set by calibrate */
    double *f;                  /* [L][Hkv][D] filters */
    unsigned char *done;        /* [L] calibrated */
} qf_cfg;

static const rp_param_def qf_params[] = {
    KVPRESS_PRESET_PARAM,
    { "calib_n", RP_INT, "1", 0, 1 << 20, NULL, "calibration sequences the filters come from (0 = all of --calib)" },
};

static int qf_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    qf_cfg *c = calloc(1, sizeof *c);
    if (!c) return -1;
    c->preset = (int)v[0];
    c->calib_n = (size_t)v[1];
    *cfg = c;
    return 0;
}

static void qf_free(void *cfg)
{
    qf_cfg *c = cfg;
    if (!c) return;
    free(c->f); free(c->done); free(c);
}

static size_t qf_calib_seqs(const void *cfg) { return ((const qf_cfg *)cfg)->calib_n; }

/* The filter of kv head g of the calibrated layer (rp_calib_heads): 0 ok, -1 out of memory,
 * -2 the eigen-decomposition failed. */
typedef struct qf_calib_arg { qf_cfg *c; const rp_calib_ctx *cc; } qf_calib_arg;

static int qf_calib_head(void *arg, size_t g)
{
    qf_cfg *c = ((qf_calib_arg *)arg)->c;
    const rp_calib_ctx *cc = ((qf_calib_arg *)arg)->cc;
    size_t D = cc->D, Hkv = cc->Hkv, G = cc->H / Hkv;
    double *M = calloc(D * D, sizeof *M), *U = malloc(D * D * sizeof *U);
    int rc = -1;
    if (!M || !U) goto done;
    for (size_t h = g * G; h < (g + 1) * G; h++)        /* rows in (head, sequence, position) order */
        for (size_t i = 0; i < cc->n_seq; i++)
            if (attn_gram_acc(cc->q[i] + h * cc->n[i] * D, cc->n[i], D, M)) goto done;
    if (lowrank_basis(M, D, U, NULL)) { rc = -2; goto done; }
    double proj = 0;                     /* sign: the queries' mean projection positive */
    for (size_t h = g * G; h < (g + 1) * G; h++)
        for (size_t i = 0; i < cc->n_seq; i++)
            for (size_t t = 0; t < cc->n[i]; t++) {
                const float *q = cc->q[i] + (h * cc->n[i] + t) * D;
                for (size_t a = 0; a < D; a++) proj += q[a] * U[a * D];
            }
    double sg = proj < 0 ? 1.0 : -1.0;   /* f = -u, u signed so that proj > 0 */
    for (size_t a = 0; a < D; a++) c->f[(cc->layer * Hkv + g) * D + a] = sg * U[a * D];
    rc = 0;
done:
    free(M); free(U);
    return rc;
}

static int qf_calibrate(void *cfg, const rp_calib_ctx *cc, char *err, size_t errlen)
{
    qf_cfg *c = cfg;
    size_t D = cc->D, Hkv = cc->Hkv, H = cc->H, L = cc->n_layers;
    if (!cc->q || H == 0 || H % Hkv) return rp_failf(err, errlen, "qfilter: no calibration queries");
    if (!c->f) {
        c->L = L; c->Hkv = Hkv; c->D = D;
        c->f = calloc(L * Hkv * D, sizeof *c->f);
        c->done = calloc(L, 1);
        if (!c->f || !c->done) return rp_failf(err, errlen, "out of memory");
    }
    if (cc->layer >= c->L || c->Hkv != Hkv || c->D != D) return rp_failf(err, errlen, "qfilter: calibration shape mismatch");
    qf_calib_arg a = { c, cc };
    int rc = rp_calib_heads(Hkv, qf_calib_head, &a, NULL);
    if (rc == -2) return rp_failf(err, errlen, "qfilter: eigen-decomposition failed");
    if (rc) return rp_failf(err, errlen, "out of memory");
    c->done[cc->layer] = 1;
    return 0;
}

static int qf_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                      char *err, size_t errlen)
{
    const qf_cfg *c = cfg;
    size_t P = ctx->P, D = ctx->D, n = ctx->n;
    B = kvpress_n_kept(c->preset, ctx, P, B);
    if (B < P && (!c->f || ctx->layer >= c->L || !c->done[ctx->layer] || ctx->g0 + ctx->Hkv > c->Hkv || c->D != D))
        return rp_failf(err, errlen, "qfilter: layer %zu was not calibrated (needs --calib sequences)", ctx->layer);
    double *score = malloc((P + 1) * sizeof *score);
    int32_t *kept = malloc((P + 1) * sizeof *kept);
    int rc = -1;
    if (!score || !kept) { rc = rp_failf(err, errlen, "qfilter: out of memory"); goto done; }
    for (size_t g = 0; g < ctx->Hkv; g++) {
        size_t m = P;
        if (B >= P) {
            for (size_t j = 0; j < P; j++) kept[j] = (int32_t)j;
        } else {
            const double *f = c->f + (ctx->layer * c->Hkv + ctx->g0 + g) * D;   /* the layer's kv head g0 + g */
            const float *k = ctx->k + g * n * D;
            for (size_t j = 0; j < P; j++) {
                double s = 0;
                for (size_t d = 0; d < D; d++) s += f[d] * k[j * D + d];
                score[j] = -s;
            }
            m = rp_topk(score, P, B, kept);
        }
        if (ev_push_kept(ctx, g, kept, m, &out[g])) { rc = rp_failf(err, errlen, "qfilter: out of memory"); goto done; }
    }
    rc = 0;
done:
    free(score); free(kept);
    return rc;
}

const rp_strategy rp_strategy_qfilter = {
    .name = "qfilter",
    .summary = "score -<f, k> with f the leading singular direction of the calibration queries per (layer, kv head) "
               "(kvpress QFilterPress; needs --calib)",
    .reference = "Godey et al. 2025, Q-Filters (arXiv 2503.02812); kvpress QFilterPress (github.com/NVIDIA/kvpress)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = qf_params,
    .n_params = sizeof qf_params / sizeof qf_params[0],
    .configure = qf_configure,
    .free_cfg = qf_free,
    .calib_seqs = qf_calib_seqs,
    .calibrate = qf_calibrate,
    .prefill = qf_prefill,
    .head_separable = 1,     /* each kv head's cache from its own keys and filter (ctx->g0 + g) */
};
