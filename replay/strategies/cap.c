/* cap — CAPKV: keep the entries with the largest query-weighted capacity (leverage of v under A).
 *
 * Rule (prefill protocol, all kv heads of the layer together): the first s = sinks positions are
 * protected; for each query head h of kv head g:
 *   mu = mean over prompt queries t in [s, P) of the pre-RoPE query (un-rotated with the
 *        trace's /rope tables), rotated by the rotation averaged over the next `future`
 *        positions (expected_attention's Rbar; identity without RoPE);
 *   c_j = cos(k_j, mu) clamped to [-1, 1] for the keys j in [s, P) (post-RoPE, as stored);
 *   w_j = exp(tau c_j - max_j tau c_j);  A = I + sum_j (w_j + epsilon) v_j v_j^T;
 *   s_h(j) = w_j v_j^T A^{-1} v_j (u_j = v_j, the output-direction proxy);
 * score(j) = mean of s_h(j) over the G query heads; the sinks get the maximum score of the
 * layer + 1; each kv head keeps its B highest (ties: lower position). B >= P keeps everything.
 * Defaults (kvpress CapPress): preset=kvpress, tau=5, future=512, sinks=4, epsilon=1e-6.
 * Budget: preset=kvpress keeps kvpress's int(P * (1 - compression_ratio)) with
 * compression_ratio = 1 - keep (kvpress_budget.h); preset=kvtrace the engine's round(keep * P).
 * Reference: CAPKV (arXiv 2604.25975); kvpress CapPress (github.com/NVIDIA/kvpress,
 * presses/cap_press.py), which normalises keys and anchor (the paper uses raw dot products)
 * and rotates the anchor by the averaged future RoPE, both kept here.
 * Differences: kvpress computes pre-RoPE queries from the hidden states with q_proj; here the
 * stored queries are un-rotated with the tables (expected_attention's helpers). kvpress's
 * rotation matrix assumes the rotate_half layout; here the trace's layout. A prompt not
 * longer than the sinks keeps its first B positions (kvpress raises). Solve by Cholesky in
 * double (kvpress: torch.linalg.solve in fp32).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "evict_util.h"
#include "expected_attention.h"
#include "kvpress_budget.h"
#include "strategy.h"

typedef struct cap_cfg { int preset; double tau; size_t future, sinks; double eps; } cap_cfg;

static const rp_param_def cap_params[] = {
    KVPRESS_PRESET_PARAM,
    { "tau", RP_FLOAT, "5", 0, 1e6, NULL, "temperature of the query-key alignment weights" },
    { "future", RP_INT, "512", 1, 1e9, NULL, "future positions the anchor's RoPE rotation is averaged over (n_future_positions)" },
    { "sinks", RP_INT, "4", 0, 1e9, NULL, "first positions always kept (n_sink)" },
    { "epsilon", RP_FLOAT, "1e-6", 0, 1, NULL, "added to the weights inside A" },
};

static int cap_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    cap_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->preset = (int)v[0];
    c->tau = v[1];
    c->future = (size_t)v[2];
    c->sinks = (size_t)v[3];
    c->eps = v[4];
    *cfg = c;
    return 0;
}

static void cap_free(void *cfg) { free(cfg); }

/* vd [N][D]: the kv head's prompt values from s in double (the kernels' rows); lev [N]. */
typedef struct cap_work { double *mu, *mu2, *x, *cr, *sr, *w, *A, *y, *vd, *lev; size_t *partner; } cap_work;

/* acc[j - s] += s_h(j) / G for the keys j in [s, P) of query head h (kv head keys k; its
 * values from s in w->vd). */
static void cap_head(const cap_cfg *c, const rp_layer_ctx *ctx, size_t h, const float *k, size_t s, size_t P,
                     cap_work *w, double *acc)
{
    size_t D = ctx->D, n = ctx->n, N = P - s;
    const float *q = ctx->q + h * n * D;
    memset(w->mu, 0, D * sizeof *w->mu);
    for (size_t t = s; t < P; t++) {
        ea_unrotate(ctx, q + t * D, t, w->x);
        for (size_t d = 0; d < D; d++) w->mu[d] += w->x[d];
    }
    double nm = 0;
    for (size_t d = 0; d < D; d++) w->mu[d] /= (double)N;
    for (size_t d = 0; d < D; d++) {
        w->mu2[d] = w->cr[d] * w->mu[d] + w->sr[d] * w->mu[w->partner[d]];
        nm += w->mu2[d] * w->mu2[d];
    }
    nm = fmax(sqrt(nm), 1e-12);                        /* F.normalize's eps */
    double mx = -INFINITY;
    for (size_t j = 0; j < N; j++) {
        const float *kj = k + (s + j) * D;
        double dot = 0, nk = 0;
        for (size_t d = 0; d < D; d++) { dot += kj[d] * w->mu2[d]; nk += (double)kj[d] * kj[d]; }
        double cs = dot / nm / fmax(sqrt(nk), 1e-12);
        cs = cs < -1 ? -1 : cs > 1 ? 1 : cs;
        w->w[j] = c->tau * cs;
        if (w->w[j] > mx) mx = w->w[j];
    }
    for (size_t j = 0; j < N; j++) w->w[j] = exp(w->w[j] - mx);
    ev_gram_lower(w->vd, D, N, w->w, c->eps, w->A);     /* sum of (w_j + eps) v_j v_j^T */
    for (size_t a = 0; a < D; a++) {            /* A = I + ..., lower Cholesky factor in place */
        w->A[a * D + a] += 1.0;
        for (size_t b = 0; b <= a; b++) {
            double t = w->A[a * D + b];
            for (size_t m = 0; m < b; m++) t -= w->A[a * D + m] * w->A[b * D + m];
            w->A[a * D + b] = a == b ? sqrt(t) : t / w->A[b * D + b];   /* t >= 1 on the diagonal */
        }
    }
    ev_inv_sqnorms(w->vd, D, N, w->A, w->y, w->lev);       /* v_j^T A^-1 v_j = ||L^-1 v_j||^2 */
    for (size_t j = 0; j < N; j++) acc[j] += w->w[j] * w->lev[j] / (double)ctx->G;
}

static int cap_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                       char *err, size_t errlen)
{
    const cap_cfg *c = cfg;
    size_t P = ctx->P, D = ctx->D, Hkv = ctx->Hkv, n = ctx->n;
    size_t s = c->sinks < P ? c->sinks : P, N = P - s;
    B = kvpress_n_kept(c->preset, ctx, P, B);
    if (B < P && ctx->info && !strcmp(ctx->info->positional, "rope") && !ctx->rope_cos)
        return rp_failf(err, errlen, "cap: the trace is positional=rope but has no /rope tables: "
                        "queries cannot be un-rotated");
    cap_work w = { 0 };
    w.mu = malloc(D * sizeof *w.mu); w.mu2 = malloc(D * sizeof *w.mu2); w.x = malloc(D * sizeof *w.x);
    w.cr = malloc(D * sizeof *w.cr); w.sr = malloc(D * sizeof *w.sr); w.y = malloc(EV_LEV_JB * D * sizeof *w.y);
    w.partner = malloc(D * sizeof *w.partner); w.A = malloc(D * D * sizeof *w.A); w.w = malloc((P + 1) * sizeof *w.w);
    w.vd = malloc((N * D + 1) * sizeof *w.vd); w.lev = malloc((N + 1) * sizeof *w.lev);
    double *score = calloc(Hkv * P + 1, sizeof *score);
    int32_t *kept = malloc((P + 1) * sizeof *kept);
    int rc = -1;
    if (!w.mu || !w.mu2 || !w.x || !w.cr || !w.sr || !w.y || !w.partner || !w.A || !w.w || !w.vd || !w.lev || !score ||
        !kept) {
        rc = rp_failf(err, errlen, "cap: out of memory");
        goto done;
    }
    if (B < P && N > 0) {
        ea_avg_rotation(ctx, P, c->future, w.cr, w.sr, w.partner);
        double *acc = calloc(Hkv * N + 1, sizeof *acc);
        if (!acc) { rc = rp_failf(err, errlen, "cap: out of memory"); goto done; }
        for (size_t g = 0; g < Hkv; g++) {
            const float *v = ctx->v + (g * n + s) * D;
            for (size_t e = 0; e < N * D; e++) w.vd[e] = v[e];
            for (size_t i = 0; i < ctx->G; i++)
                cap_head(c, ctx, g * ctx->G + i, ctx->k + g * n * D, s, P, &w, acc + g * N);
        }
        double mx = acc[0];
        for (size_t i = 1; i < Hkv * N; i++) if (acc[i] > mx) mx = acc[i];
        for (size_t g = 0; g < Hkv; g++) {
            for (size_t j = 0; j < s; j++) score[g * P + j] = mx + 1;
            memcpy(score + g * P + s, acc + g * N, N * sizeof *acc);
        }
        free(acc);
    }
    for (size_t g = 0; g < Hkv; g++) {
        size_t m = P;
        if (B >= P) for (size_t j = 0; j < P; j++) kept[j] = (int32_t)j;
        else m = rp_topk(score + g * P, P, B, kept);
        if (ev_push_kept(ctx, g, kept, m, &out[g])) { rc = rp_failf(err, errlen, "cap: out of memory"); goto done; }
    }
    rc = 0;
done:
    free(w.mu); free(w.mu2); free(w.x); free(w.cr); free(w.sr); free(w.y); free(w.partner); free(w.A); free(w.w);
    free(w.vd); free(w.lev);
    free(score); free(kept);
    return rc;
}

const rp_strategy rp_strategy_cap = {
    .name = "cap",
    .summary = "CAPKV capacity: w_j v_j^T A^-1 v_j, A = I + sum w v v^T, w = exp(tau cos(k, mean future-rotated "
               "pre-RoPE query)); 4 sinks (kvpress CapPress)",
    .reference = "CAPKV (arXiv 2604.25975); kvpress CapPress (github.com/NVIDIA/kvpress)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = cap_params,
    .n_params = sizeof cap_params / sizeof cap_params[0],
    .configure = cap_configure,
    .free_cfg = cap_free,
    .prefill = cap_prefill,
    .head_separable = 1,     /* each kv head's cache from its own rows (the sinks rank first whatever the max) */
    .uses_rope = 1,          /* the averaged future rotation and un-rotated queries (expected_attention.h) */
};
