/* leverage — keep the keys that are geometric outliers: leverage scores of the centred pre-RoPE keys.
 *
 * Rule (prefill protocol, all kv heads of the layer together): each prompt key of kv head g is
 * un-rotated at its position with the trace's /rope tables (k_pre = Rot(j)^-1 k, the pre-RoPE
 * key; identity on a trace without RoPE); X = the pre-RoPE keys minus their mean over the
 * prompt; score(j) = max(0, x_j^T (X^T X + 0.01 I)^{-1} x_j) (Cholesky factor; the jitter is
 * raised tenfold, up to four times, while the factorisation fails, as kvpress does); the
 * scores of every kv head and position are z-normalised together ((s - mean) / max(std, 1e-6),
 * std with n - 1) and each kv head keeps its B highest (ties: lower position). B >= P keeps
 * everything.
 * Defaults: preset=kvpress (kvpress LeverageScorePress; its sketch_dimension is not a parameter
 * here, see Differences).
 * Budget: preset=kvpress keeps kvpress's int(P * (1 - compression_ratio)) with
 * compression_ratio = 1 - keep (kvpress_budget.h); preset=kvtrace the engine's round(keep * P).
 * Reference: Chari & Van Durme 2025, "Compactor: Calibrated Query-Agnostic KV Cache
 * Compression with Approximate Leverage Scores" (arXiv 2507.08143); kvpress LeverageScorePress
 * (github.com/NVIDIA/kvpress, presses/leverage_press.py).
 * Differences: kvpress APPROXIMATES these scores with a right Gaussian sketch (X Phi, Phi of
 * D x 48 fresh torch.randn draws per call, so its selection is itself random); this strategy
 * computes the EXACT leverage scores the sketch estimates (no sketch), so a replay is a
 * function of the trace. kvpress computes pre-RoPE keys from the hidden states with k_proj;
 * here the stored keys are un-rotated with the tables (equal up to rounding; amplitude of
 * scaled RoPE divided out). Scores in double (kvpress: fp32 after the sketch).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compactor.h"
#include "evict_util.h"
#include "expected_attention.h"
#include "kvpress_budget.h"
#include "strategy.h"

typedef struct lev_cfg { int preset; } lev_cfg;

static const rp_param_def lev_params[] = { KVPRESS_PRESET_PARAM };

static int lev_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    lev_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->preset = (int)v[0];
    *cfg = c;
    return 0;
}

static void lev_free(void *cfg) { free(cfg); }

/* Lower Cholesky factor of the D x D matrix A + jit I into L; 0 ok, -1 not positive definite. */
static int cholesky(const double *A, size_t D, double jit, double *L)
{
    for (size_t i = 0; i < D; i++)
        for (size_t j = 0; j <= i; j++) {
            double s = A[i * D + j] + (i == j ? jit : 0.0);
            for (size_t m = 0; m < j; m++) s -= L[i * D + m] * L[j * D + m];
            if (i == j) {
                if (!(s > 0)) return -1;
                L[i * D + i] = sqrt(s);
            } else {
                L[i * D + j] = s / L[j * D + j];
            }
        }
    return 0;
}

typedef double lev_v4d __attribute__((vector_size(32)));   /* GCC vectors: elementwise, no FMA */

enum { LEV_JB = 16 };   /* rows per block of lev_gram and lev_solve */

/* The lower triangle of A += X^T X (X [S][D]): element (a, b) adds X[i][a] X[i][b] over i
 * ascending, as one row at a time does, but LEV_JB rows per pass over A and four b per
 * vector op. */
static inline __attribute__((always_inline))
void lev_gram_body(const double *X, size_t D, size_t S, double *A)
{
    for (size_t i0 = 0; i0 < S; i0 += LEV_JB) {
        size_t nb = S - i0 < LEV_JB ? S - i0 : LEV_JB;
        const double *Xb = X + i0 * D;
        for (size_t a = 0; a < D; a++) {
            double *Aa = A + a * D;
            size_t b = 0;
            for (; b + 4 <= a + 1; b += 4) {
                lev_v4d t, x;
                memcpy(&t, Aa + b, sizeof t);
                for (size_t i = 0; i < nb; i++) {
                    memcpy(&x, Xb + i * D + b, sizeof x);
                    t += Xb[i * D + a] * x;
                }
                memcpy(Aa + b, &t, sizeof t);
            }
            for (; b <= a; b++)
                for (size_t i = 0; i < nb; i++) Aa[b] += Xb[i * D + a] * Xb[i * D + b];
        }
    }
}

/* out[i] = max(||L^-1 x_i||^2, 0): forward substitution y[a] = (x[a] - sum over m < a of
 * L[a][m] y[m], m ascending) / L[a][a], the squares added over a ascending, per row exactly
 * as one row at a time, but LEV_JB rows at once in the lanes of four vectors (a row's chain
 * of subtractions was bound by their latency). yb [D][LEV_JB] scratch. A short last block
 * repeats its last row in the lanes left over and drops them. */
static inline __attribute__((always_inline))
void lev_solve_body(const double *X, size_t D, size_t S, const double *L, double *yb, double *out)
{
    for (size_t i0 = 0; i0 < S; i0 += LEV_JB) {
        size_t nb = S - i0 < LEV_JB ? S - i0 : LEV_JB;
        lev_v4d l0 = {0, 0, 0, 0}, l1 = l0, l2 = l0, l3 = l0, t0, t1, t2, t3, y;
        for (size_t a = 0; a < D; a++) {
            double tv[LEV_JB];
            for (size_t i = 0; i < LEV_JB; i++) tv[i] = X[(i0 + (i < nb ? i : nb - 1)) * D + a];
            memcpy(&t0, tv, sizeof t0);
            memcpy(&t1, tv + 4, sizeof t1);
            memcpy(&t2, tv + 8, sizeof t2);
            memcpy(&t3, tv + 12, sizeof t3);
            const double *La = L + a * D;
            for (size_t m = 0; m < a; m++) {
                const double l = La[m], *ym = yb + m * LEV_JB;
                memcpy(&y, ym, sizeof y);      t0 -= l * y;
                memcpy(&y, ym + 4, sizeof y);  t1 -= l * y;
                memcpy(&y, ym + 8, sizeof y);  t2 -= l * y;
                memcpy(&y, ym + 12, sizeof y); t3 -= l * y;
            }
            double *ya = yb + a * LEV_JB;
            y = t0 / La[a]; memcpy(ya, &y, sizeof y);      l0 += y * y;
            y = t1 / La[a]; memcpy(ya + 4, &y, sizeof y);  l1 += y * y;
            y = t2 / La[a]; memcpy(ya + 8, &y, sizeof y);  l2 += y * y;
            y = t3 / La[a]; memcpy(ya + 12, &y, sizeof y); l3 += y * y;
        }
        double lev[LEV_JB];
        memcpy(lev, &l0, sizeof l0);
        memcpy(lev + 4, &l1, sizeof l1);
        memcpy(lev + 8, &l2, sizeof l2);
        memcpy(lev + 12, &l3, sizeof l3);
        for (size_t i = 0; i < nb; i++) out[i0 + i] = lev[i] > 0 ? lev[i] : 0.0;
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(ATTN_NO_AVX2)   /* as replay/attn.c */
#define LEV_HAVE_AVX2 1
static int lev_use_avx2(void)
{
    static int cached = -1;
    if (cached < 0) cached = __builtin_cpu_supports("avx2") ? 1 : 0;
    return cached;
}

/* The same bodies compiled for AVX2 (not FMA): four doubles per instruction, the same bits. */
__attribute__((target("avx2")))
static void lev_gram_avx2(const double *X, size_t D, size_t S, double *A) { lev_gram_body(X, D, S, A); }

__attribute__((target("avx2")))
static void lev_solve_avx2(const double *X, size_t D, size_t S, const double *L, double *yb, double *out)
{
    lev_solve_body(X, D, S, L, yb, out);
}
#else
#define LEV_HAVE_AVX2 0
#endif

static void lev_gram(const double *X, size_t D, size_t S, double *A)
{
#if LEV_HAVE_AVX2
    if (lev_use_avx2()) { lev_gram_avx2(X, D, S, A); return; }
#endif
    lev_gram_body(X, D, S, A);
}

static void lev_solve(const double *X, size_t D, size_t S, const double *L, double *yb, double *out)
{
#if LEV_HAVE_AVX2
    if (lev_use_avx2()) { lev_solve_avx2(X, D, S, L, yb, out); return; }
#endif
    lev_solve_body(X, D, S, L, yb, out);
}

int cp_leverage(const rp_layer_ctx *ctx, size_t g, size_t s0, size_t s1, double *out, char *err, size_t errlen)
{
    size_t D = ctx->D, n = ctx->n, S = s1 - s0;
    if (S == 0) return 0;
    if (ctx->info && !strcmp(ctx->info->positional, "rope") && !ctx->rope_cos)
        return rp_failf(err, errlen, "the trace is positional=rope but has no /rope tables: keys cannot be un-rotated");
    double *X = malloc(S * D * sizeof *X), *mu = calloc(D, sizeof *mu), *A = calloc(D * D, sizeof *A),
           *L = calloc(D * D, sizeof *L), *y = malloc(LEV_JB * D * sizeof *y);
    int rc = -1;
    if (!X || !mu || !A || !L || !y) { rc = rp_failf(err, errlen, "out of memory"); goto done; }
    const float *k = ctx->k + g * n * D;
    for (size_t i = 0; i < S; i++) {
        ea_unrotate(ctx, k + (s0 + i) * D, s0 + i, X + i * D);
        for (size_t d = 0; d < D; d++) mu[d] += X[i * D + d];
    }
    for (size_t d = 0; d < D; d++) mu[d] /= (double)S;
    for (size_t i = 0; i < S; i++)
        for (size_t d = 0; d < D; d++) X[i * D + d] -= mu[d];
    lev_gram(X, D, S, A);                     /* A = X^T X (lower triangle, mirrored) */
    for (size_t a = 0; a < D; a++)
        for (size_t b = 0; b < a; b++) A[b * D + a] = A[a * D + b];
    double jit = 1e-2;
    int ok = 0;
    for (int tries = 0; tries < 5 && !ok; tries++, jit *= 10)
        ok = cholesky(A, D, jit, L) == 0;
    if (!ok) { rc = rp_failf(err, errlen, "kv head %zu: the key Gram matrix has no Cholesky factor", g); goto done; }
    lev_solve(X, D, S, L, y, out);            /* ||L^-1 x_i||^2 = x_i^T A^-1 x_i */
    rc = 0;
done:
    free(X); free(mu); free(A); free(L); free(y);
    return rc;
}

static int lev_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                       char *err, size_t errlen)
{
    const lev_cfg *c = cfg;
    size_t P = ctx->P, Hkv = ctx->Hkv;
    B = kvpress_n_kept(c->preset, ctx, P, B);
    double *score = malloc((Hkv * P + 1) * sizeof *score);
    int32_t *kept = malloc((P + 1) * sizeof *kept);
    int rc = -1;
    if (!score || !kept) { rc = rp_failf(err, errlen, "leverage: out of memory"); goto done; }
    if (B < P) {
        for (size_t g = 0; g < Hkv; g++) {
            char e2[200];
            if (cp_leverage(ctx, g, 0, P, score + g * P, e2, sizeof e2)) {
                rc = rp_failf(err, errlen, "leverage: %s", e2);
                goto done;
            }
        }
        cp_znorm(score, Hkv * P);
    }
    for (size_t g = 0; g < Hkv; g++) {
        size_t m = P;
        if (B >= P) for (size_t j = 0; j < P; j++) kept[j] = (int32_t)j;
        else m = rp_topk(score + g * P, P, B, kept);
        if (ev_push_kept(ctx, g, kept, m, &out[g])) { rc = rp_failf(err, errlen, "leverage: out of memory"); goto done; }
    }
    rc = 0;
done:
    free(score); free(kept);
    return rc;
}

const rp_strategy rp_strategy_leverage = {
    .name = "leverage",
    .summary = "exact leverage scores of the centred pre-RoPE keys (un-rotated with /rope), z-normalised "
               "(kvpress LeverageScorePress without its random sketch)",
    .reference = "Chari & Van Durme 2025, Compactor (arXiv 2507.08143); kvpress LeverageScorePress "
                 "(github.com/NVIDIA/kvpress)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = lev_params,
    .n_params = sizeof lev_params / sizeof lev_params[0],
    .configure = lev_configure,
    .free_cfg = lev_free,
    .prefill = lev_prefill,
};
