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

typedef struct cap_work { double *mu, *mu2, *x, *cr, *sr, *w, *A, *y, *vb; size_t *partner; } cap_work;

typedef double cap_v4d __attribute__((vector_size(32)));   /* GCC vectors: elementwise, no FMA */

enum { CAP_JB = 16 };   /* keys per block of cap_gram and cap_leverage */

/* The lower triangle of A += sum over the N keys j of (w_j + eps) v_j v_j^T: element (a, b)
 * adds ((w_j + eps) v_j[a]) v_j[b] over j in ascending order, as one key at a time does, but
 * CAP_JB keys per pass over A (A's rows are read and written once per block, not per key)
 * and four b per vector op. vb [CAP_JB][D] scratch. A is zeroed first. */
static inline __attribute__((always_inline))
void cap_gram_body(const float *v, size_t D, size_t N, const double *w, double eps, double *A, double *vb)
{
    memset(A, 0, D * D * sizeof *A);
    for (size_t j0 = 0; j0 < N; j0 += CAP_JB) {
        size_t nb = N - j0 < CAP_JB ? N - j0 : CAP_JB;
        for (size_t i = 0; i < nb; i++)
            for (size_t d = 0; d < D; d++) vb[i * D + d] = v[(j0 + i) * D + d];
        for (size_t a = 0; a < D; a++) {
            double wa[CAP_JB];
            for (size_t i = 0; i < nb; i++) wa[i] = (w[j0 + i] + eps) * vb[i * D + a];
            double *Aa = A + a * D;
            size_t b = 0;
            for (; b + 4 <= a + 1; b += 4) {
                cap_v4d t;
                memcpy(&t, Aa + b, sizeof t);
                for (size_t i = 0; i < nb; i++) {
                    cap_v4d x;
                    memcpy(&x, vb + i * D + b, sizeof x);
                    t += wa[i] * x;
                }
                memcpy(Aa + b, &t, sizeof t);
            }
            for (; b <= a; b++)
                for (size_t i = 0; i < nb; i++) Aa[b] += wa[i] * vb[i * D + b];
        }
    }
}

/* acc[j] += w_j ||L^-1 v_j||^2 / G for the N keys (L lower [D][D], the Cholesky factor in A):
 * forward substitution y[a] = (v[a] - sum over m < a of L[a][m] y[m], m ascending) / L[a][a],
 * the squares added over a ascending, per key exactly as one key at a time, but CAP_JB = 16
 * keys at once in the lanes of four vectors (a key's chain of subtractions was bound by
 * their latency). yb [D][CAP_JB] scratch. A short last block repeats its last key in the
 * lanes left over and drops them. */
static inline __attribute__((always_inline))
void cap_leverage_body(const float *v, size_t D, size_t N, const double *L, const double *w, double G,
                       double *yb, double *acc)
{
    for (size_t j0 = 0; j0 < N; j0 += CAP_JB) {
        size_t nb = N - j0 < CAP_JB ? N - j0 : CAP_JB;
        cap_v4d l0 = {0, 0, 0, 0}, l1 = l0, l2 = l0, l3 = l0, t0, t1, t2, t3, y;
        for (size_t a = 0; a < D; a++) {
            double tv[CAP_JB];
            for (size_t i = 0; i < CAP_JB; i++) tv[i] = v[(j0 + (i < nb ? i : nb - 1)) * D + a];
            memcpy(&t0, tv, sizeof t0);
            memcpy(&t1, tv + 4, sizeof t1);
            memcpy(&t2, tv + 8, sizeof t2);
            memcpy(&t3, tv + 12, sizeof t3);
            const double *La = L + a * D;
            for (size_t m = 0; m < a; m++) {
                const double l = La[m], *ym = yb + m * CAP_JB;
                memcpy(&y, ym, sizeof y);      t0 -= l * y;
                memcpy(&y, ym + 4, sizeof y);  t1 -= l * y;
                memcpy(&y, ym + 8, sizeof y);  t2 -= l * y;
                memcpy(&y, ym + 12, sizeof y); t3 -= l * y;
            }
            double *ya = yb + a * CAP_JB;
            y = t0 / La[a]; memcpy(ya, &y, sizeof y);      l0 += y * y;
            y = t1 / La[a]; memcpy(ya + 4, &y, sizeof y);  l1 += y * y;
            y = t2 / La[a]; memcpy(ya + 8, &y, sizeof y);  l2 += y * y;
            y = t3 / La[a]; memcpy(ya + 12, &y, sizeof y); l3 += y * y;
        }
        double lev[CAP_JB];
        memcpy(lev, &l0, sizeof l0);
        memcpy(lev + 4, &l1, sizeof l1);
        memcpy(lev + 8, &l2, sizeof l2);
        memcpy(lev + 12, &l3, sizeof l3);
        for (size_t i = 0; i < nb; i++) acc[j0 + i] += w[j0 + i] * lev[i] / G;
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(ATTN_NO_AVX2)   /* as replay/attn.c */
#define CAP_HAVE_AVX2 1
static int cap_use_avx2(void)
{
    static int cached = -1;
    if (cached < 0) cached = __builtin_cpu_supports("avx2") ? 1 : 0;
    return cached;
}

/* The same bodies compiled for AVX2 (not FMA): four doubles per instruction, the same bits. */
__attribute__((target("avx2")))
static void cap_gram_avx2(const float *v, size_t D, size_t N, const double *w, double eps, double *A, double *vb)
{
    cap_gram_body(v, D, N, w, eps, A, vb);
}

__attribute__((target("avx2")))
static void cap_leverage_avx2(const float *v, size_t D, size_t N, const double *L, const double *w, double G,
                              double *yb, double *acc)
{
    cap_leverage_body(v, D, N, L, w, G, yb, acc);
}
#else
#define CAP_HAVE_AVX2 0
#endif

static void cap_gram(const float *v, size_t D, size_t N, const double *w, double eps, double *A, double *vb)
{
#if CAP_HAVE_AVX2
    if (cap_use_avx2()) { cap_gram_avx2(v, D, N, w, eps, A, vb); return; }
#endif
    cap_gram_body(v, D, N, w, eps, A, vb);
}

static void cap_leverage(const float *v, size_t D, size_t N, const double *L, const double *w, double G,
                         double *yb, double *acc)
{
#if CAP_HAVE_AVX2
    if (cap_use_avx2()) { cap_leverage_avx2(v, D, N, L, w, G, yb, acc); return; }
#endif
    cap_leverage_body(v, D, N, L, w, G, yb, acc);
}

/* acc[j - s] += s_h(j) / G for the keys j in [s, P) of query head h (kv head keys k, values v). */
static void cap_head(const cap_cfg *c, const rp_layer_ctx *ctx, size_t h, const float *k, const float *v,
                     size_t s, size_t P, cap_work *w, double *acc)
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
    cap_gram(v + s * D, D, N, w->w, c->eps, w->A, w->vb);
    for (size_t a = 0; a < D; a++) {            /* A = I + ..., lower Cholesky factor in place */
        w->A[a * D + a] += 1.0;
        for (size_t b = 0; b <= a; b++) {
            double t = w->A[a * D + b];
            for (size_t m = 0; m < b; m++) t -= w->A[a * D + m] * w->A[b * D + m];
            w->A[a * D + b] = a == b ? sqrt(t) : t / w->A[b * D + b];   /* t >= 1 on the diagonal */
        }
    }
    cap_leverage(v + s * D, D, N, w->A, w->w, (double)ctx->G, w->y, acc);
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
    w.cr = malloc(D * sizeof *w.cr); w.sr = malloc(D * sizeof *w.sr); w.y = malloc(CAP_JB * D * sizeof *w.y);
    w.partner = malloc(D * sizeof *w.partner); w.vb = malloc(CAP_JB * D * sizeof *w.vb); w.A = malloc(D * D * sizeof *w.A); w.w = malloc((P + 1) * sizeof *w.w);
    double *score = calloc(Hkv * P + 1, sizeof *score);
    int32_t *kept = malloc((P + 1) * sizeof *kept);
    int rc = -1;
    if (!w.mu || !w.mu2 || !w.x || !w.cr || !w.sr || !w.y || !w.partner || !w.vb || !w.A || !w.w || !score || !kept) {
        rc = rp_failf(err, errlen, "cap: out of memory");
        goto done;
    }
    if (B < P && N > 0) {
        ea_avg_rotation(ctx, P, c->future, w.cr, w.sr, w.partner);
        double *acc = calloc(Hkv * N + 1, sizeof *acc);
        if (!acc) { rc = rp_failf(err, errlen, "cap: out of memory"); goto done; }
        for (size_t g = 0; g < Hkv; g++)
            for (size_t i = 0; i < ctx->G; i++)
                cap_head(c, ctx, g * ctx->G + i, ctx->k + g * n * D, ctx->v + g * n * D, s, P, &w, acc + g * N);
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
    free(w.mu); free(w.mu2); free(w.x); free(w.cr); free(w.sr); free(w.y); free(w.partner); free(w.vb); free(w.A); free(w.w);
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
};
