/* noncausal_attn — keep the prompt keys that receive the most non-causal, chunk-local attention.
 *
 * Rule (prefill protocol, all kv heads of the layer together, on the stored post-RoPE queries
 * and keys of the prompt): the prompt is cut into chunks [0, c), [c, 2c), ... (the last one
 * may be short); inside a chunk every query attends to every key of the chunk, without the
 * causal mask and with unscaled logits q.k (kvpress's sm_scale = 1); a(j) = mean over the G
 * query heads of the kv head of the attention key j receives from the queries of its chunk;
 * s(j) = a(j) * ||v_j||, smoothed by a 3-wide moving average (zero padding, always / 3);
 * the scores of every kv head and position are z-normalised together ((s - mean) /
 * max(std, 1e-6), std with n - 1), and each kv head keeps its B highest (ties: lower
 * position). B >= P keeps everything.
 * Defaults: preset=kvpress, chunk=256 (kvpress NonCausalAttnPress chunk_size).
 * Budget: preset=kvpress keeps kvpress's int(P * (1 - compression_ratio)) with
 * compression_ratio = 1 - keep (kvpress_budget.h); preset=kvtrace the engine's round(keep * P).
 * Reference: Chari & Van Durme 2025, "Compactor: Calibrated Query-Agnostic KV Cache
 * Compression with Approximate Leverage Scores" (arXiv 2507.08143); kvpress NonCausalAttnPress
 * (github.com/NVIDIA/kvpress, presses/non_causal_attention_press.py).
 * Differences: kvpress takes the logits in the model's dtype and the softmax in fp32; here
 * both in double. The layer's softcap and window are not applied (kvpress ignores them too).
 * The z-normalisation changes no kv head's ranking; it matters in compactor's blend.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "compactor.h"
#include "evict_util.h"
#include "kvpress_budget.h"
#include "strategy.h"

typedef struct nca_cfg { int preset; size_t chunk; } nca_cfg;

static const rp_param_def nca_params[] = {
    KVPRESS_PRESET_PARAM,
    { "chunk", RP_INT, "256", 1, 1e9, NULL, "chunk of the non-causal attention (chunk_size)" },
};

static int nca_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    nca_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->preset = (int)v[0];
    c->chunk = (size_t)v[1];
    *cfg = c;
    return 0;
}

static void nca_free(void *cfg) { free(cfg); }

extern const rp_strategy rp_strategy_noncausal_attn;

void cp_znorm(double *x, size_t n)
{
    if (n == 0) return;
    double m = 0, ss = 0;
    for (size_t i = 0; i < n; i++) m += x[i];
    m /= (double)n;
    for (size_t i = 0; i < n; i++) ss += (x[i] - m) * (x[i] - m);
    double sd = n > 1 ? sqrt(ss / (double)(n - 1)) : 0.0;
    if (sd < 1e-6) sd = 1e-6;
    for (size_t i = 0; i < n; i++) x[i] = (x[i] - m) / sd;
}

typedef double v2d __attribute__((vector_size(16)));    /* SSE2: every x86-64 */

enum { NC_KEYS = 8 };   /* keys per pass of a pair of query rows */

/* z0[j - a], z1[j - a] = the unscaled logits q0.k_j, q1.k_j of two query rows for j in
 * [a, b): the two rows in the lanes of one vector, NC_KEYS keys per pass over d (sixteen
 * independent sums: one chain per key was bound by the latency of its adds), each key's k
 * loaded once for both rows. Every logit is still (double)q[d] * k[d] added over d in order
 * from 0: the same bits as one dot product at a time. qq [D][2]: the two rows interleaved,
 * in double. */
static void chunk_logits2(const double *qq, const float *k, size_t D, size_t a, size_t b, double *z0, double *z1)
{
    size_t j = a;
    for (; j + NC_KEYS <= b; j += NC_KEYS) {
        const float *kj = k + j * D;
        v2d s[NC_KEYS];
        for (int i = 0; i < NC_KEYS; i++) s[i] = (v2d){0, 0};
        for (size_t d = 0; d < D; d++) {
            v2d x;
            memcpy(&x, qq + 2 * d, sizeof x);
            for (int i = 0; i < NC_KEYS; i++) {
                double kv = kj[i * D + d];
                s[i] += x * (v2d){kv, kv};
            }
        }
        for (int i = 0; i < NC_KEYS; i++) { z0[j + i - a] = s[i][0]; z1[j + i - a] = s[i][1]; }
    }
    for (; j < b; j++) {
        const float *kj = k + j * D;
        double s0 = 0, s1 = 0;
        for (size_t d = 0; d < D; d++) { s0 += qq[2 * d] * kj[d]; s1 += qq[2 * d + 1] * kj[d]; }
        z0[j - a] = s0; z1[j - a] = s1;
    }
}

/* acc[j] += softmax over j < m of the logits z (overwritten). The exp is the kernels' vectorised
 * double exp (attn.h: within 2 ulp of libm's, the same bits on every CPU; libm's exp, one call
 * per entry instead), its sum in four lanes e mod 4. */
static void chunk_softmax_acc(double *z, size_t m, double *acc)
{
    double mx = -INFINITY;
    for (size_t j = 0; j < m; j++)
        if (z[j] > mx) mx = z[j];
    double sum = attn_exp_sub_f64d(z, m, mx, z);
    for (size_t j = 0; j < m; j++) acc[j] += z[j] / sum;
}

/* acc[j - a] += softmax over the chunk [a, b) of the unscaled logits of query rows
 * [t0, t1), rows added in ascending order; qq [D][2], z [2][b - a] scratch. */
static void chunk_rows(const float *q, const float *k, size_t D, size_t t0, size_t t1, size_t a, size_t b,
                       double *qq, double *z, double *acc)
{
    size_t m = b - a;
    for (size_t t = t0; t < t1; t += 2) {
        const float *q0 = q + t * D, *q1 = t + 1 < t1 ? q0 + D : q0;   /* a lone last row: twice */
        for (size_t d = 0; d < D; d++) { qq[2 * d] = q0[d]; qq[2 * d + 1] = q1[d]; }
        chunk_logits2(qq, k, D, a, b, z, z + m);
        chunk_softmax_acc(z, m, acc);
        if (t + 1 < t1) chunk_softmax_acc(z + m, m, acc);
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(ATTN_NO_AVX2)   /* as replay/attn.c */
#define NC_HAVE_AVX2 1
typedef double v4d __attribute__((vector_size(32)));

enum { NC_ROWS = 4 };   /* query rows per pass of the AVX2 path (the lanes of a v4d) */
_Static_assert(NC_KEYS == 8, "chunk_logits4_avx2 names its eight sums");

/* The AVX2 paths where attn_isa() allows them (tests run each path on one machine). */
static int nc_use_avx2(void)
{
    return attn_isa() >= ATTN_ISA_AVX2;
}

/* z[r][j] = the unscaled logit of query row r < NR against key j < m: the NR rows in the
 * lanes of one vector VT (qq [D][NR], in double), NC_KEYS keys per pass over d, the keys
 * read from kT [D][m] (the chunk's keys transposed and widened to double once per chunk,
 * exact, so a pass's NC_KEYS keys at one d share a cache line and broadcast from memory).
 * Every lane adds (double)q[d] * k[d] over d in order from 0 with separate roundings (target
 * "avx2", not "fma"; no contraction under -std=c11): the same bits as chunk_logits2. */
#define CHUNK_LOGITS_BODY(VT, NR)                                                                \
    size_t j = 0;                                                                               \
    for (; j + NC_KEYS <= m; j += NC_KEYS) {                                                    \
        /* eight named sums: an array of them stayed in memory (a store and a load per add) */  \
        VT s0 = {0}, s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;             \
        for (size_t d = 0; d < D; d++) {                                                        \
            VT x;                                                                               \
            memcpy(&x, qq + (NR) * d, sizeof x);                                                \
            const double *kd = kT + d * m + j;                                                  \
            s0 += x * kd[0]; s1 += x * kd[1]; s2 += x * kd[2]; s3 += x * kd[3];                 \
            s4 += x * kd[4]; s5 += x * kd[5]; s6 += x * kd[6]; s7 += x * kd[7];                 \
        }                                                                                       \
        const VT s[NC_KEYS] = {s0, s1, s2, s3, s4, s5, s6, s7};                                 \
        for (int i = 0; i < NC_KEYS; i++)                                                       \
            for (int r = 0; r < (NR); r++) z[r * m + j + i] = s[i][r];                          \
    }                                                                                           \
    for (; j < m; j++) {                                                                        \
        VT s = {0};                                                                             \
        for (size_t d = 0; d < D; d++) {                                                        \
            VT x;                                                                               \
            memcpy(&x, qq + (NR) * d, sizeof x);                                                \
            s += x * kT[d * m + j];                                                             \
        }                                                                                       \
        for (int r = 0; r < (NR); r++) z[r * m + j] = s[r];                                     \
    }

/* chunk_rows with NR rows per pass (LOGITS: the matching CHUNK_LOGITS_BODY kernel); kT [D][m]
 * the chunk's keys in double, qq [D][NR], z [NR][m] scratch. */
#define CHUNK_ROWS_BODY(NR, LOGITS)                                                              \
    for (size_t t = t0; t < t1; t += (NR)) {                                                    \
        size_t nr = t1 - t < (NR) ? t1 - t : (NR);                                              \
        for (size_t r = 0; r < (NR); r++) {                                                     \
            const float *qr = q + (t + (r < nr ? r : nr - 1)) * D;   /* short group: last row again */ \
            for (size_t d = 0; d < D; d++) qq[(NR) * d + r] = qr[d];                            \
        }                                                                                       \
        LOGITS(qq, kT, D, m, z);                                                                \
        for (size_t r = 0; r < nr; r++) chunk_softmax_acc(z + r * m, m, acc);                   \
    }

typedef double v8d __attribute__((vector_size(64)));
enum { NC_ROWS8 = 8 };  /* query rows per pass of the AVX-512F path */

static int nc_use_avx512(void)
{
    return attn_isa() >= ATTN_ISA_AVX512;
}

/* Four rows a pass (AVX2), eight (AVX-512F): every lane the same sum in the same order, so the
 * bits of chunk_logits2. */
__attribute__((target("avx2")))
static void chunk_logits4_avx2(const double *qq, const double *kT, size_t D, size_t m, double *z)
{
    CHUNK_LOGITS_BODY(v4d, NC_ROWS)
}

__attribute__((target("avx512f")))
static void chunk_logits8_avx512(const double *qq, const double *kT, size_t D, size_t m, double *z)
{
    CHUNK_LOGITS_BODY(v8d, NC_ROWS8)
}

__attribute__((target("avx2")))
static void chunk_rows_avx2(const float *q, const double *kT, size_t D, size_t t0, size_t t1, size_t m,
                            double *qq, double *z, double *acc)
{
    CHUNK_ROWS_BODY(NC_ROWS, chunk_logits4_avx2)
}

__attribute__((target("avx512f")))
static void chunk_rows_avx512(const float *q, const double *kT, size_t D, size_t t0, size_t t1, size_t m,
                              double *qq, double *z, double *acc)
{
    CHUNK_ROWS_BODY(NC_ROWS8, chunk_logits8_avx512)
}
#else
#define NC_HAVE_AVX2 0
#endif

/* kT [D][b - a] = the keys [a, b) transposed, in double. */
static void chunk_keys_t(const float *k, size_t D, size_t a, size_t b, double *kT)
{
    size_t m = b - a;
    for (size_t j = 0; j < m; j++)
        for (size_t d = 0; d < D; d++) kT[d * m + j] = k[(a + j) * D + d];
}

int cp_noncausal(const rp_layer_ctx *ctx, size_t g, size_t s0, size_t s1, size_t chunk, double *out)
{
    size_t D = ctx->D, n = ctx->n, S = s1 - s0, G = ctx->G;
    if (S == 0) return 0;
    size_t cs = chunk < S ? chunk : S;
    int wide = 0;           /* 1: AVX2, four rows a pass; 2: AVX-512F, eight */
#if NC_HAVE_AVX2
    wide = nc_use_avx512() ? 2 : nc_use_avx2();
#endif
    size_t nz = wide == 2 ? 8 : wide ? 4 : 2;
    double *z = malloc(nz * cs * sizeof *z), *a = calloc(S, sizeof *a), *qq = malloc(nz * D * sizeof *qq);
    double *kT = wide ? malloc(D * cs * sizeof *kT) : NULL;
    if (!z || !a || !qq || (wide && !kT)) { free(z); free(a); free(qq); free(kT); return -1; }
    const float *k = ctx->k + g * n * D, *v = ctx->v + g * n * D;
    /* chunk outer, head inner: every key belongs to one chunk, so a[j] still adds head 0's
     * rows, then head 1's, ... in ascending order, as with the heads outer */
    for (size_t c0 = s0; c0 < s1; c0 += cs) {
        size_t c1 = c0 + cs < s1 ? c0 + cs : s1;
        if (wide) chunk_keys_t(k, D, c0, c1, kT);
        for (size_t i = 0; i < G; i++) {
            const float *q = ctx->q + (g * G + i) * n * D;
#if NC_HAVE_AVX2
            if (wide == 2) { chunk_rows_avx512(q, kT, D, c0, c1, c1 - c0, qq, z, a + (c0 - s0)); continue; }
            if (wide) { chunk_rows_avx2(q, kT, D, c0, c1, c1 - c0, qq, z, a + (c0 - s0)); continue; }
#endif
            chunk_rows(q, k, D, c0, c1, c0, c1, qq, z, a + (c0 - s0));
        }
    }
    for (size_t j = 0; j < S; j++) {
        const float *vj = v + (s0 + j) * D;
        double vn = 0;
        for (size_t d = 0; d < D; d++) vn += (double)vj[d] * vj[d];
        a[j] = a[j] / (double)G * sqrt(vn);
    }
    for (size_t j = 0; j < S; j++) {        /* avg_pool1d(kernel 3, padding 1): zeros outside */
        double s = a[j];
        if (j > 0) s += a[j - 1];
        if (j + 1 < S) s += a[j + 1];
        out[j] = s / 3.0;
    }
    free(z); free(a); free(qq); free(kT);
    return 0;
}

/* The plan (strategy.h plan_size): kv head g's scores [P] (plan_score), z-normalised over every
 * kv head of the layer together (plan_layer: cp_znorm of the [Hkv][P] block). Made whatever the
 * budget (the kvpress budget needs ctx->keep); prefill asks for it only when it evicts. */
size_t cp_plan_size(const void *cfg, size_t P, size_t G, size_t B)
{
    (void)cfg; (void)G; (void)B;
    return P;
}

int cp_plan_layer(const void *cfg, size_t Hkv, size_t G, size_t P, size_t B, double *plan, char *err, size_t errlen)
{
    (void)cfg; (void)G; (void)B; (void)err; (void)errlen;
    cp_znorm(plan, Hkv * P);
    return 0;
}

static int nca_plan_score(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B, double *out, char *err,
                          size_t errlen)
{
    const nca_cfg *c = cfg;
    (void)B;
    if (cp_noncausal(ctx, g, 0, ctx->P, c->chunk, out)) return rp_failf(err, errlen, "noncausal_attn: out of memory");
    return 0;
}

static int nca_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                       char *err, size_t errlen)
{
    const nca_cfg *c = cfg;
    size_t P = ctx->P, Hkv = ctx->Hkv;
    B = kvpress_n_kept(c->preset, ctx, P, B);
    const double *plan = NULL;
    double *own = NULL;
    int32_t *kept = malloc((P + 1) * sizeof *kept);
    int rc = -1;
    if (!kept) goto done;
    if (B < P && rp_plan_get(&rp_strategy_noncausal_attn, cfg, ctx, B, &plan, &own, err, errlen)) goto done;
    for (size_t g = 0; g < Hkv; g++) {
        size_t m = P;
        if (B >= P) for (size_t j = 0; j < P; j++) kept[j] = (int32_t)j;
        else m = rp_topk(plan + g * P, P, B, kept);
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
    }
    rc = 0;
done:
    free(own); free(kept);
    return rc;
}

const rp_strategy rp_strategy_noncausal_attn = {
    .name = "noncausal_attn",
    .summary = "non-causal attention within chunks of 256 (unscaled), summed over queries, times ||v||, "
               "smoothed, z-normalised (kvpress NonCausalAttnPress)",
    .reference = "Chari & Van Durme 2025, Compactor (arXiv 2507.08143); kvpress NonCausalAttnPress "
                 "(github.com/NVIDIA/kvpress)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = nca_params,
    .n_params = sizeof nca_params / sizeof nca_params[0],
    .configure = nca_configure,
    .free_cfg = nca_free,
    .prefill = nca_prefill,
    .head_separable = 1,     /* given its plan: the z-normalisation over the layer's kv heads */
    .plan_size = cp_plan_size,
    .plan_score = nca_plan_score,
    .plan_layer = cp_plan_layer,
};
