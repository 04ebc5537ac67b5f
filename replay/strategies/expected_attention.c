/* expected_attention — the softmax weight future queries are expected to give each key, under
 * a Gaussian model of the queries fitted on the prompt, times the value norm.
 *
 * Rule (prefill protocol; P prompt, s = min(sinks, P), D head_dim, F = future):
 *   1. Pre-RoPE queries: each prompt query t in [s, P) of query head h is un-rotated at its
 *      position with the trace's /rope tables (q_pre = Rot(t)^-1 q). Their mean mu_h and
 *      covariance S_h (divided by P - s) per query head.
 *   2. The rotation averaged over the next F positions: Rbar = mean over p in [P, P + F) of
 *      Rot(p) (block-diagonal over the rotary pairs; identity beyond rotary_dim);
 *      mu' = Rbar mu, S' = Rbar S Rbar^T.
 *   3. For every key j in [s, P) (post-RoPE, as stored):
 *      z_h(j) = mu'_h . k_j / sqrt(D) + k_j^T S'_h k_j / (2 D)   (cov=0: the first term only),
 *      a softmax over j per query head, the mean over the G query heads of the kv head;
 *      vnorm=1: score(j) = (mean + epsilon) * ||v_j||.
 *   4. The sinks [0, s) score above every other key; keep the B highest (ties: lower
 *      position). B >= P keeps everything.
 * Positions past the trace's tables: Rot(p) for p >= the tables' rows is rebuilt from each
 * rotary pair's angular frequency, read from the tables as theta = angle(n - 1) / (n - 1)
 * (unwrapped with the row-1 angle; n = the sequence's tokens), and its amplitude cos(0)
 * (the attention scaling of scaled RoPE variants). This assumes angles linear in the
 * position (plain, linear and llama3 scaling; not dynamic NTK, whose frequencies change
 * with the length). Without /rope tables on a positional=rope trace the strategy refuses
 * (queries cannot be un-rotated); on a trace without RoPE, Rot = identity.
 * Defaults (kvpress ExpectedAttentionPress): preset=kvpress (its budget rule,
 * kvpress_budget.h), sinks=4 (n_sink), future=512
 * (n_future_positions), cov=1 (use_covariance), vnorm=1 (use_vnorm), epsilon=0.
 * Reference: Devoto et al. 2025, "Expected Attention: KV Cache Compression by Estimating
 * Attention from Future Queries Distribution" (arXiv 2510.00636); kvpress
 * ExpectedAttentionPress (github.com/NVIDIA/kvpress, presses/expected_attention_press.py).
 * Differences: kvpress computes pre-RoPE queries from the hidden states with the layer's
 * q_proj; a trace holds post-RoPE queries, so they are un-rotated with the tables (equal up
 * to f16 rounding). kvpress scales by 1/sqrt(head_dim) whatever the model's attention scale;
 * so does this. Statistics and scores in double.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "evict_util.h"
#include "expected_attention.h"
#include "kvpress_budget.h"
#include "strategy.h"

typedef double v2d __attribute__((vector_size(16)));    /* SSE2: every x86-64 */

typedef struct ea_cfg { int preset; size_t sinks, future; int cov, vnorm; double eps; } ea_cfg;

static const rp_param_def ea_params[] = {
    KVPRESS_PRESET_PARAM,
    { "sinks", RP_INT, "4", 0, 1e9, NULL, "first positions kept and left out of the query statistics (n_sink)" },
    { "future", RP_INT, "512", 1, 1e9, NULL, "future positions the rotation is averaged over (n_future_positions)" },
    { "cov", RP_BOOL, "1", 0, 1, NULL, "use the query covariance (use_covariance)" },
    { "vnorm", RP_BOOL, "1", 0, 1, NULL, "multiply by the value norm (use_vnorm)" },
    { "epsilon", RP_FLOAT, "0", 0, 1e9, NULL, "added to the expected attention before the value norm" },
};

static int ea_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    ea_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->preset = (int)v[0];
    c->sinks = (size_t)v[1];
    c->future = (size_t)v[2];
    c->cov = (int)v[3];
    c->vnorm = (int)v[4];
    c->eps = v[5];
    *cfg = c;
    return 0;
}

static void ea_free(void *cfg) { free(cfg); }

/* The rotary pairs: dims a[i], b[i] and the table column col[i], i < R/2. */
static void rope_pair(size_t i, size_t R, int interleaved, size_t *a, size_t *b)
{
    if (interleaved) { *a = 2 * i; *b = 2 * i + 1; }
    else { *a = i; *b = i + R / 2; }
}

/* The averaged rotation as (cr, sr, partner) per dim: (Rbar x)_d = cr[d] x_d + sr[d] x_partner[d]. */
void ea_avg_rotation(const rp_layer_ctx *ctx, size_t P, size_t F, double *cr, double *sr, size_t *partner)
{
    size_t D = ctx->D, R = ctx->rope_cos ? ctx->rotary_dim : 0, m = ctx->n - 1;
    for (size_t d = 0; d < D; d++) { cr[d] = 1; sr[d] = 0; partner[d] = d; }
    for (size_t i = 0; i < R / 2; i++) {
        size_t a, b;
        rope_pair(i, R, ctx->rope_interleaved, &a, &b);
        double amp = ctx->rope_cos[a];                     /* row 0: cos(0) times the scaling */
        double th = ctx->n > 1 ? atan2(ctx->rope_sin[R + a], ctx->rope_cos[R + a]) : 0;
        if (m >= 2) {                                      /* refine on the farthest row, unwrapped */
            double ang = atan2(ctx->rope_sin[m * R + a], ctx->rope_cos[m * R + a]);
            double k = nearbyint((th * (double)m - ang) / (2 * M_PI));
            th = (ang + 2 * M_PI * k) / (double)m;
        }
        double cs = 0, sn = 0;
        for (size_t p = P; p < P + F; p++) { cs += cos(th * (double)p); sn += sin(th * (double)p); }
        cs = amp * cs / (double)F;
        sn = amp * sn / (double)F;
        cr[a] = cs; sr[a] = -sn; partner[a] = b;
        cr[b] = cs; sr[b] = sn; partner[b] = a;
    }
}

/* q un-rotated at position t into out [D] (q_pre = Rot(t)^-1 q, with the amplitude divided out). */
void ea_unrotate(const rp_layer_ctx *ctx, const float *q, size_t t, double *out)
{
    size_t D = ctx->D, R = ctx->rope_cos ? ctx->rotary_dim : 0;
    for (size_t d = 0; d < D; d++) out[d] = q[d];
    for (size_t i = 0; i < R / 2; i++) {
        size_t a, b;
        rope_pair(i, R, ctx->rope_interleaved, &a, &b);
        double c = ctx->rope_cos[t * R + a], s = ctx->rope_sin[t * R + a], n2 = c * c + s * s;
        if (n2 == 0) continue;
        double x = q[a], y = q[b];
        out[a] = (c * x + s * y) / n2;
        out[b] = (c * y - s * x) / n2;
    }
}

typedef struct ea_work {
    double *mu, *S, *mu2, *S2, *x, *cr, *sr, *z, *acc;
    double *kt;                 /* [D][EA_KB] a block of keys, key index as the lane */
    size_t *partner;
} ea_work;

/* The covariance sums add EA_CR centred queries per pass over S (each element still adds
 * them in ascending t), only the upper triangle from each row's 4-aligned diagonal block on
 * (the rest is mirrored: x_d x_e and x_e x_d are the same product). */
enum { EA_CR = 4 };

/* S[d][e] += x[r][d] * x[r][e] for r = 0 .. nr - 1 in order, e from d rounded down to a
 * multiple of ALIGN (the elements left of the diagonal are mirrored over afterwards); x [nr][D].
 * W doubles per op of the GCC vector VT: every element the same sum whatever W. */
#define COV_ROWS_BODY(VT, W, ALIGN)                                                              \
    for (size_t d = 0; d < D; d++) {                                                            \
        double *Sd = S + d * D;                                                                 \
        size_t e = d & ~(size_t)((ALIGN) - 1);                                                  \
        for (; e + (W) <= D; e += (W)) {                                                        \
            VT a;                                                                               \
            memcpy(&a, Sd + e, sizeof a);                                                       \
            for (size_t r = 0; r < nr; r++) {                                                   \
                const double xd = x[r * D + d];                                                 \
                VT b;                                                                           \
                memcpy(&b, x + r * D + e, sizeof b);                                            \
                a += xd * b;                                                                    \
            }                                                                                   \
            memcpy(Sd + e, &a, sizeof a);                                                       \
        }                                                                                       \
        for (; e < D; e++)                                                                      \
            for (size_t r = 0; r < nr; r++) Sd[e] += x[r * D + d] * x[r * D + e];              \
    }

/* Two doubles per SSE2 op (the baseline). */
static void cov_rows_sse2(double *S, const double *x, size_t nr, size_t D)
{
    COV_ROWS_BODY(v2d, 2, 4)
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(ATTN_NO_AVX2)   /* as replay/attn.c */
#define EA_HAVE_AVX2 1
typedef double v4d __attribute__((vector_size(32)));

enum { EA_KB = 8 };      /* keys per pass of ea_keys_avx2 */

/* The vector paths where attn_isa() allows them (tests run each path on one machine). */
static int ea_use_avx2(void) { return attn_isa() >= ATTN_ISA_AVX2; }
static int ea_use_avx512(void) { return attn_isa() >= ATTN_ISA_AVX512; }
typedef double v8d __attribute__((vector_size(64)));

/* Four doubles per op (target "avx2", no FMA): the same sums. */
__attribute__((target("avx2")))
static void cov_rows_avx2(double *S, const double *x, size_t nr, size_t D)
{
    COV_ROWS_BODY(v4d, 4, 4)
}

/* For EA_KB keys at once (kt [D][EA_KB], key i in lane i): a[i] = sum_d mu2[d] k_i[d] and,
 * with S2, b[i] = sum over d of k_i[d] x_d, x_d = sum_e S2[d][e] k_i[e] (d and e ascending),
 * exactly the scalar loop's sums, products and order per key: the same bits. */
__attribute__((target("avx2")))
static void ea_keys_avx2(const double *kt, size_t D, const double *mu2, const double *S2, double *a, double *b)
{
    v4d a0 = {0, 0, 0, 0}, a1 = a0, b0 = a0, b1 = a0;
    for (size_t d = 0; d < D; d++) {
        v4d k0, k1;
        memcpy(&k0, kt + d * EA_KB, sizeof k0);
        memcpy(&k1, kt + d * EA_KB + 4, sizeof k1);
        const v4d m = {mu2[d], mu2[d], mu2[d], mu2[d]};
        a0 += m * k0; a1 += m * k1;
    }
    if (S2) {
        size_t d = 0;
        for (; d + 2 <= D; d += 2) {            /* two rows of S2 per pass over e */
            const double *r0 = S2 + d * D, *r1 = r0 + D;
            v4d x00 = {0, 0, 0, 0}, x01 = x00, x10 = x00, x11 = x00;
            for (size_t e = 0; e < D; e++) {
                v4d k0, k1;
                memcpy(&k0, kt + e * EA_KB, sizeof k0);
                memcpy(&k1, kt + e * EA_KB + 4, sizeof k1);
                const v4d s0 = {r0[e], r0[e], r0[e], r0[e]}, s1 = {r1[e], r1[e], r1[e], r1[e]};
                x00 += s0 * k0; x01 += s0 * k1;
                x10 += s1 * k0; x11 += s1 * k1;
            }
            v4d kd0, kd1, ke0, ke1;
            memcpy(&kd0, kt + d * EA_KB, sizeof kd0);
            memcpy(&kd1, kt + d * EA_KB + 4, sizeof kd1);
            memcpy(&ke0, kt + (d + 1) * EA_KB, sizeof ke0);
            memcpy(&ke1, kt + (d + 1) * EA_KB + 4, sizeof ke1);
            b0 += kd0 * x00; b1 += kd1 * x01;
            b0 += ke0 * x10; b1 += ke1 * x11;
        }
        for (; d < D; d++) {
            const double *r0 = S2 + d * D;
            v4d x00 = {0, 0, 0, 0}, x01 = x00;
            for (size_t e = 0; e < D; e++) {
                v4d k0, k1;
                memcpy(&k0, kt + e * EA_KB, sizeof k0);
                memcpy(&k1, kt + e * EA_KB + 4, sizeof k1);
                const v4d s0 = {r0[e], r0[e], r0[e], r0[e]};
                x00 += s0 * k0; x01 += s0 * k1;
            }
            v4d kd0, kd1;
            memcpy(&kd0, kt + d * EA_KB, sizeof kd0);
            memcpy(&kd1, kt + d * EA_KB + 4, sizeof kd1);
            b0 += kd0 * x00; b1 += kd1 * x01;
        }
    }
    memcpy(a, &a0, sizeof a0); memcpy(a + 4, &a1, sizeof a1);
    memcpy(b, &b0, sizeof b0); memcpy(b + 4, &b1, sizeof b1);
}

/* Eight doubles per op (AVX-512F): the same sums per element. */
__attribute__((target("avx512f")))
static void cov_rows_avx512(double *S, const double *x, size_t nr, size_t D)
{
    COV_ROWS_BODY(v8d, 8, 8)
}

/* ea_keys_avx2 with the EA_KB keys in the lanes of one v8d: the same sums per key. */
__attribute__((target("avx512f")))
static void ea_keys_avx512(const double *kt, size_t D, const double *mu2, const double *S2, double *a, double *b)
{
    v8d a0 = {0, 0, 0, 0, 0, 0, 0, 0}, b0 = a0;
    for (size_t d = 0; d < D; d++) {
        v8d k0;
        memcpy(&k0, kt + d * EA_KB, sizeof k0);
        a0 += mu2[d] * k0;
    }
    if (S2) {
        size_t d = 0;
        for (; d + 2 <= D; d += 2) {            /* two rows of S2 per pass over e */
            const double *r0 = S2 + d * D, *r1 = r0 + D;
            v8d x0 = {0, 0, 0, 0, 0, 0, 0, 0}, x1 = x0;
            for (size_t e = 0; e < D; e++) {
                v8d k0;
                memcpy(&k0, kt + e * EA_KB, sizeof k0);
                x0 += r0[e] * k0; x1 += r1[e] * k0;
            }
            v8d kd, ke;
            memcpy(&kd, kt + d * EA_KB, sizeof kd);
            memcpy(&ke, kt + (d + 1) * EA_KB, sizeof ke);
            b0 += kd * x0;
            b0 += ke * x1;
        }
        for (; d < D; d++) {
            const double *r0 = S2 + d * D;
            v8d x0 = {0, 0, 0, 0, 0, 0, 0, 0};
            for (size_t e = 0; e < D; e++) {
                v8d k0;
                memcpy(&k0, kt + e * EA_KB, sizeof k0);
                x0 += r0[e] * k0;
            }
            v8d kd;
            memcpy(&kd, kt + d * EA_KB, sizeof kd);
            b0 += kd * x0;
        }
    }
    memcpy(a, &a0, sizeof a0);
    memcpy(b, &b0, sizeof b0);
}
#else
#define EA_HAVE_AVX2 0
enum { EA_KB = 1 };
#endif

/* a = mu2 . k and, with S2, b = sum over d of k[d] (S2[d] . k) (d ascending, four rows of S2
 * per pass: independent chains), for one key k [D] (double, exact from the f32 key). */
static void ea_key_scalar(const double *kj, size_t D, const double *mu2, const double *S2, double *pa, double *pb)
{
    double a = 0, b = 0;
    for (size_t d = 0; d < D; d++) a += mu2[d] * kj[d];
    if (S2) {
        size_t d = 0;
        for (; d + 4 <= D; d += 4) {
            const double *r0 = S2 + d * D, *r1 = r0 + D, *r2 = r1 + D, *r3 = r2 + D;
            double x0 = 0, x1 = 0, x2 = 0, x3 = 0;
            for (size_t e = 0; e < D; e++) {
                double ke = kj[e];
                x0 += r0[e] * ke; x1 += r1[e] * ke; x2 += r2[e] * ke; x3 += r3[e] * ke;
            }
            b += kj[d] * x0; b += kj[d + 1] * x1; b += kj[d + 2] * x2; b += kj[d + 3] * x3;
        }
        for (; d < D; d++) {
            double r = 0;
            for (size_t e = 0; e < D; e++) r += S2[d * D + e] * kj[e];
            b += kj[d] * r;
        }
    }
    *pa = a;
    *pb = b;
}

size_t ea_keys_block(void) { return EA_KB; }

void ea_keys(const double *kt, size_t D, const double *mu2, const double *S2, double *kd, double *a, double *b)
{
#if EA_HAVE_AVX2
    if (ea_use_avx512()) { ea_keys_avx512(kt, D, mu2, S2, a, b); return; }
    if (ea_use_avx2()) { ea_keys_avx2(kt, D, mu2, S2, a, b); return; }
#endif
    for (size_t i = 0; i < EA_KB; i++) {
        for (size_t d = 0; d < D; d++) kd[d] = kt[d * EA_KB + i];
        ea_key_scalar(kd, D, mu2, S2, &a[i], &b[i]);
    }
}

void ea_cov_rows(double *S, const double *x, size_t nr, size_t D)
{
#if EA_HAVE_AVX2
    if (ea_use_avx512()) { cov_rows_avx512(S, x, nr, D); return; }
    if (ea_use_avx2()) { cov_rows_avx2(S, x, nr, D); return; }
#endif
    cov_rows_sse2(S, x, nr, D);
}

/* z[j - s] for keys j in [s, P) of query head h over kv head keys k; softmaxed. */
static void ea_head(const ea_cfg *c, const rp_layer_ctx *ctx, size_t h, const float *k, size_t s, size_t P,
                    ea_work *w)
{
    size_t D = ctx->D, N = P - s;
    const float *q = ctx->q + h * ctx->n * D;
    memset(w->mu, 0, D * sizeof *w->mu);
    memset(w->S, 0, D * D * sizeof *w->S);
    for (size_t t = s; t < P; t++) {
        ea_unrotate(ctx, q + t * D, t, w->x);
        for (size_t d = 0; d < D; d++) w->mu[d] += w->x[d];
    }
    for (size_t d = 0; d < D; d++) w->mu[d] /= (double)N;
    if (c->cov) {
        for (size_t t0 = s; t0 < P; t0 += EA_CR) {
            size_t nr = P - t0 < EA_CR ? P - t0 : EA_CR;
            for (size_t r = 0; r < nr; r++) {
                double *x = w->x + r * D;
                ea_unrotate(ctx, q + (t0 + r) * D, t0 + r, x);
                for (size_t d = 0; d < D; d++) x[d] -= w->mu[d];
            }
            ea_cov_rows(w->S, w->x, nr, D);
        }
        for (size_t d = 0; d < D; d++)          /* the lower triangle: x_d x_e = x_e x_d */
            for (size_t e = 0; e < d; e++) w->S[d * D + e] = w->S[e * D + d];
        for (size_t i = 0; i < D * D; i++) w->S[i] /= (double)N;
    }
    /* mu' = Rbar mu; S' = Rbar S Rbar^T, Rbar with two non-zeros per row */
    for (size_t d = 0; d < D; d++) w->mu2[d] = w->cr[d] * w->mu[d] + w->sr[d] * w->mu[w->partner[d]];
    if (c->cov)
        for (size_t d = 0; d < D; d++)
            for (size_t e = 0; e < D; e++) {
                size_t pd = w->partner[d], pe = w->partner[e];
                w->S2[d * D + e] = w->cr[d] * (w->cr[e] * w->S[d * D + e] + w->sr[e] * w->S[d * D + pe]) +
                                   w->sr[d] * (w->cr[e] * w->S[pd * D + e] + w->sr[e] * w->S[pd * D + pe]);
            }
    double rs = 1.0 / sqrt((double)D), mx = -INFINITY, zs = 0;
    size_t j = s;
#if EA_HAVE_AVX2
    if (ea_use_avx2())
        for (; j + EA_KB <= P; j += EA_KB) {
            double a[EA_KB], b[EA_KB];
            for (size_t i = 0; i < EA_KB; i++)
                for (size_t d = 0; d < D; d++) w->kt[d * EA_KB + i] = k[(j + i) * D + d];
            ea_keys(w->kt, D, w->mu2, c->cov ? w->S2 : NULL, w->x, a, b);
            for (size_t i = 0; i < EA_KB; i++) {
                double z = a[i] * rs + (c->cov ? b[i] / (2.0 * (double)D) : 0.0);
                w->z[j + i - s] = z;
                if (z > mx) mx = z;
            }
        }
#endif
    for (; j < P; j++) {
        double a, b;
        for (size_t d = 0; d < D; d++) w->x[d] = k[j * D + d];
        ea_key_scalar(w->x, D, w->mu2, c->cov ? w->S2 : NULL, &a, &b);
        double z = a * rs + (c->cov ? b / (2.0 * (double)D) : 0.0);
        w->z[j - s] = z;
        if (z > mx) mx = z;
    }
    for (size_t i = 0; i < N; i++) { w->z[i] = exp(w->z[i] - mx); zs += w->z[i]; }
    for (size_t i = 0; i < N; i++) w->acc[i] += w->z[i] / zs;
}

static void ea_score(const ea_cfg *c, const rp_layer_ctx *ctx, size_t g, ea_work *w, double *score)
{
    size_t P = ctx->P, D = ctx->D, G = ctx->G, s = c->sinks < P ? c->sinks : P, N = P - s;
    const float *k = ctx->k + g * ctx->n * D, *v = ctx->v + g * ctx->n * D;
    memset(w->acc, 0, (N + 1) * sizeof *w->acc);
    if (N > 0)
        for (size_t i = 0; i < G; i++) ea_head(c, ctx, g * G + i, k, s, P, w);
    double mx = -INFINITY;
    for (size_t j = s; j < P; j++) {
        double a = w->acc[j - s] / (double)G;
        if (c->vnorm) {
            double nv = 0;
            for (size_t d = 0; d < D; d++) nv += (double)v[j * D + d] * v[j * D + d];
            a = (a + c->eps) * sqrt(nv);
        }
        score[j] = a;
        if (a > mx) mx = a;
    }
    for (size_t j = 0; j < s; j++) score[j] = N > 0 ? mx + 1 : 1.0;
}

static int ea_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                      char *err, size_t errlen)
{
    const ea_cfg *c = cfg;
    size_t P = ctx->P, D = ctx->D;
    B = kvpress_n_kept(c->preset, ctx, P, B);
    if (B < P && ctx->info && !strcmp(ctx->info->positional, "rope") && !ctx->rope_cos)
        return rp_failf(err, errlen, "expected_attention: the trace is positional=rope but has no /rope tables: "
                        "queries cannot be un-rotated");
    ea_work w = { 0 };
    w.mu = malloc(D * sizeof *w.mu); w.mu2 = malloc(D * sizeof *w.mu2); w.x = malloc(EA_CR * D * sizeof *w.x);
    w.kt = malloc((EA_KB * D + 1) * sizeof *w.kt);
    w.cr = malloc(D * sizeof *w.cr); w.sr = malloc(D * sizeof *w.sr); w.partner = malloc(D * sizeof *w.partner);
    w.S = malloc(D * D * sizeof *w.S); w.S2 = malloc(D * D * sizeof *w.S2);
    w.z = malloc((P + 1) * sizeof *w.z); w.acc = malloc((P + 1) * sizeof *w.acc);
    double *score = malloc((P + 1) * sizeof *score);
    int32_t *kept = malloc((P + 1) * sizeof *kept);
    int rc = -1;
    if (!w.mu || !w.mu2 || !w.x || !w.kt || !w.cr || !w.sr || !w.partner || !w.S || !w.S2 || !w.z || !w.acc || !score ||
        !kept)
        goto done;
    if (B < P) ea_avg_rotation(ctx, P, c->future, w.cr, w.sr, w.partner);
    for (size_t g = 0; g < ctx->Hkv; g++) {
        size_t m = P;
        if (B >= P) {
            for (size_t j = 0; j < P; j++) kept[j] = (int32_t)j;
        } else {
            ea_score(c, ctx, g, &w, score);
            m = rp_topk(score, P, B, kept);
        }
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
    }
    rc = 0;
done:
    free(w.mu); free(w.mu2); free(w.x); free(w.kt); free(w.cr); free(w.sr); free(w.partner); free(w.S); free(w.S2);
    free(w.z); free(w.acc); free(score); free(kept);
    return rc;
}

const rp_strategy rp_strategy_expected_attention = {
    .name = "expected_attention",
    .summary = "expected softmax weight under a Gaussian model of future (pre-RoPE, re-rotated) queries, "
               "times ||v||; sinks kept (kvpress ExpectedAttentionPress)",
    .reference = "Devoto et al. 2025 (arXiv 2510.00636); kvpress ExpectedAttentionPress (github.com/NVIDIA/kvpress)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = ea_params,
    .n_params = sizeof ea_params / sizeof ea_params[0],
    .configure = ea_configure,
    .free_cfg = ea_free,
    .prefill = ea_prefill,
    .head_separable = 1,     /* each kv head's cache from its own rows and scores */
    .uses_rope = 1,          /* ea_avg_rotation, ea_unrotate */
};
