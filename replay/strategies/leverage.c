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

extern const rp_strategy rp_strategy_leverage;

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

int cp_leverage(const rp_layer_ctx *ctx, size_t g, size_t s0, size_t s1, double *out, char *err, size_t errlen)
{
    size_t D = ctx->D, n = ctx->n, S = s1 - s0;
    if (S == 0) return 0;
    if (ctx->info && !strcmp(ctx->info->positional, "rope") && !ctx->rope_cos)
        return rp_failf(err, errlen, "the trace is positional=rope but has no /rope tables: keys cannot be un-rotated");
    double *X = malloc(S * D * sizeof *X), *mu = calloc(D, sizeof *mu), *A = calloc(D * D, sizeof *A),
           *L = calloc(D * D, sizeof *L), *y = malloc(EV_LEV_JB * D * sizeof *y);
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
    ev_gram_lower(X, D, S, NULL, 0, A);       /* A = X^T X (lower triangle, mirrored) */
    for (size_t a = 0; a < D; a++)
        for (size_t b = 0; b < a; b++) A[b * D + a] = A[a * D + b];
    double jit = 1e-2;
    int ok = 0;
    for (int tries = 0; tries < 5 && !ok; tries++, jit *= 10)
        ok = cholesky(A, D, jit, L) == 0;
    if (!ok) { rc = rp_failf(err, errlen, "kv head %zu: the key Gram matrix has no Cholesky factor", g); goto done; }
    ev_inv_sqnorms(X, D, S, L, y, out);       /* ||L^-1 x_i||^2 = x_i^T A^-1 x_i */
    for (size_t i = 0; i < S; i++) out[i] = out[i] > 0 ? out[i] : 0.0;
    rc = 0;
done:
    free(X); free(mu); free(A); free(L); free(y);
    return rc;
}

/* The plan: kv head g's leverage scores [P], z-normalised over the layer's kv heads
 * (cp_plan_size, cp_plan_layer). */
static int lev_plan_score(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B, double *out, char *err,
                          size_t errlen)
{
    char e2[200];
    (void)cfg; (void)B;
    if (cp_leverage(ctx, g, 0, ctx->P, out, e2, sizeof e2)) return rp_failf(err, errlen, "leverage: %s", e2);
    return 0;
}

static int lev_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                       char *err, size_t errlen)
{
    const lev_cfg *c = cfg;
    size_t P = ctx->P, Hkv = ctx->Hkv;
    B = kvpress_n_kept(c->preset, ctx, P, B);
    const double *plan = NULL;
    double *own = NULL;
    int32_t *kept = malloc((P + 1) * sizeof *kept);
    int rc = -1;
    if (!kept) { rc = rp_failf(err, errlen, "leverage: out of memory"); goto done; }
    if (B < P && rp_plan_get(&rp_strategy_leverage, cfg, ctx, B, &plan, &own, err, errlen)) goto done;
    for (size_t g = 0; g < Hkv; g++) {
        size_t m = P;
        if (B >= P) for (size_t j = 0; j < P; j++) kept[j] = (int32_t)j;
        else m = rp_topk(plan + g * P, P, B, kept);
        if (ev_push_kept(ctx, g, kept, m, &out[g])) { rc = rp_failf(err, errlen, "leverage: out of memory"); goto done; }
    }
    rc = 0;
done:
    free(own); free(kept);
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
    .head_separable = 1,     /* given its plan: the z-normalisation over the layer's kv heads */
    .uses_rope = 1,          /* keys un-rotated (ea_unrotate) */
    .plan_size = cp_plan_size,
    .plan_score = lev_plan_score,
    .plan_layer = cp_plan_layer,
};
