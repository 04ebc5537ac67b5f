/* Attention kernels (replay/attn.h): blocked fp32 kernels and their scalar double twins.
 *
 * T tokens, D head_dim, n entries; RB query rows x KB keys per block.
 *
 * Fast path (attn_full_rows): flash-style online softmax. For a block of RB query rows,
 * keys are visited in blocks of KB: the key block is transposed once (kT [D][KB]) so the
 * logits of RB rows x KB keys are computed with the key index as the vector lane and d as
 * a sequential loop. Every lane therefore sums q[d]*k[d] in d order 0..D-1 in float, i.e.
 * exactly what attn_logit computes: the fast kernel's logits equal attn_logit bit for bit.
 * The running max m, the running sum l (double) and the output accumulator o (float) are
 * rescaled by exp(m_old - m_new) when the max grows; the output is o / l and
 * lse = m + log(l). The probabilities exp(s - m) use a vectorised exp (exp4_nonpos:
 * Cephes expf's reduction and polynomial, ~1 ulp, 0 below -87) and l sums them in four
 * double partial sums (e mod 4) added in a fixed order. Vectors are GCC vector extensions
 * (elementwise, no reassociation, no FMA contraction under -std=c11), so results depend on
 * the inputs only, not on flags, threads or the machine's vector width.
 *
 * A row with no visible key (n == 0, or every logit -INFINITY through the bias) is the
 * fully masked row: lse = -INFINITY, o = 0. NaN inputs propagate to lse and o.
 *
 * AVX2 path (chosen at run time, __builtin_cpu_supports): the same arithmetic with 8-float
 * lanes and register blocking over rows, so that a loaded key/value vector serves 4 query
 * rows: logits of 4 rows x 16 keys per pass over d, and p.v of 4 rows x 16 channels per
 * pass over e (key blocks every row of the group sees in full; edge blocks of the causal
 * diagonal or a window go through the generic row_update); attn_entries computes 8 logits
 * at a time from an in-register 8x8 transpose of the key rows, and p.v with 8-float
 * lanes. Every lane still computes
 * acc = acc + x * y in the same order with separate roundings (target "avx2", not "fma";
 * no contraction under -std=c11), so both paths give bit-identical results.
 *
 * AVX-512F path (chosen at run time where the CPU has it): the AVX2 kernels with 16-float
 * lanes, target "avx512f" and GCC vector arithmetic (no FMA intrinsic; no contraction under
 * -std=c11, so each lane is one multiply and one add, as above): logits of 4 rows x 32 keys
 * per pass over d (then 16 keys, then 8 where a key block is not a multiple of 16) and p.v of
 * 4 rows x 32 channels per pass over e (then 16, then the generic per-row tail) for the
 * whole key blocks the AVX2 path batches (the same edge blocks take row_update, whose p.v is
 * 64/16/8 channels wide); the max; exp(s - m) (float, 16 lanes) and exp(x - c) (double,
 * two 8-lane vectors) on 16 entries at a time, their double sums still in four lanes e mod
 * 4, each taking a block's four quarters in order; the last n mod 16 entries go through the
 * AVX2 loops, padded as there. So the sums' terms, order and roundings are the AVX2 path's,
 * and all three paths give the same bits (tests/unit/test_attn_isa.c runs each under
 * attn_set_isa_limit and compares them), but for the sign of a NaN sum whose lane adds NaNs
 * of both signs (the commutative add's operand order is the compiler's; the generic and
 * AVX2 attn_div_sumsq_f64 differ so too; the engine rejects NaN before these sums).
 * attn_entries' 8-key logits and attn_div_sumsq_f64 keep their AVX2 kernels.
 * attn_set_isa_limit (tests, benchmarks) caps the path: attn_use_avx2/avx512/fma read it.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__) && !defined(ATTN_NO_AVX2)
#include <immintrin.h>
#endif

#include "attn.h"

#define RB 64           /* query rows per block (amortises the key-block transpose) */
#define KB_MAX 64       /* keys per block, a multiple of 4 (smaller for large D: kT <= 64 KiB) */
#define KT_FLOATS 16384
#define EB_MAX 64       /* entries per block of attn_entries (row_update's n <= 64) */

/* 4-float vectors: native on every x86-64 (SSE2); wider types are lowered badly by GCC
 * when the target lacks AVX (measured 2.4 vs 14.7 GFLOP/s at T=1024, D=64). */
typedef float v4f __attribute__((vector_size(16)));

static inline float cap(float s, float c)
{
    return c > 0 ? c * tanhf(s / c) : s;
}

float attn_logit(const float *q, const float *k, size_t D, const attn_params *p)
{
    float acc = 0.0f;
    for (size_t d = 0; d < D; d++)
        acc += q[d] * k[d];
    return cap(p->scale * acc, p->softcap);
}

static size_t key_block(size_t D)
{
    size_t kb = KT_FLOATS / (D ? D : 1);
    if (kb > KB_MAX) kb = KB_MAX;
    kb &= ~(size_t)7;
    return kb < 8 ? 8 : kb;
}

/* y[0..D) = y * a  (a == 0 sets 0 even when y holds Inf: a stale accumulator is dropped) */
static void vec_scale(float *y, float a, size_t D)
{
    if (a == 0.0f) { memset(y, 0, D * sizeof *y); return; }
    for (size_t d = 0; d < D; d++) y[d] *= a;
}

/* o [D] += sum_e p[e] * v_row(e), e in order for every d (register-blocked over d) */
static void pv_accum_generic(float *restrict o, const float *restrict p, size_t n,
                             const float *restrict v, const size_t *idx, size_t D)
{
    size_t d = 0;
    for (; d + 8 <= D; d += 8) {
        v4f a0, a1;
        memcpy(&a0, o + d, sizeof a0);
        memcpy(&a1, o + d + 4, sizeof a1);
        for (size_t e = 0; e < n; e++) {
            const float *vr = v + (idx ? idx[e] : e) * D + d;
            float pe = p[e];
            v4f pv = {pe, pe, pe, pe}, x0, x1;
            memcpy(&x0, vr, sizeof x0);
            memcpy(&x1, vr + 4, sizeof x1);
            a0 += pv * x0; a1 += pv * x1;
        }
        memcpy(o + d, &a0, sizeof a0);
        memcpy(o + d + 4, &a1, sizeof a1);
    }
    for (; d + 4 <= D; d += 4) {
        v4f a0;
        memcpy(&a0, o + d, sizeof a0);
        for (size_t e = 0; e < n; e++) {
            float pe = p[e];
            v4f pv = {pe, pe, pe, pe}, x0;
            memcpy(&x0, v + (idx ? idx[e] : e) * D + d, sizeof x0);
            a0 += pv * x0;
        }
        memcpy(o + d, &a0, sizeof a0);
    }
    for (; d < D; d++) {
        float a = o[d];
        for (size_t e = 0; e < n; e++) a += p[e] * v[(idx ? idx[e] : e) * D + d];
        o[d] = a;
    }
}

/* One online-softmax step of a row: logits s [n] (already masked: only visible keys
 * given), values rows vrow(e). Updates *m, *l, o [D]. */
typedef struct row_state { float m; double l; } row_state;

typedef int v4i __attribute__((vector_size(16)));

/* exp(x) for x <= 0 (the softmax's s - m) on 4 (or 8) lanes: Cephes expf's range reduction
 * (x = n ln2 + r, ln2 split in two) and degree-6 polynomial, 2^n put in the exponent
 * bits; relative error ~1 ulp. x < -87 (including -INFINITY) gives exactly 0 (expf would
 * give a subnormal below 1.7e-38 there). Elementwise vector operations only, no
 * contraction: every lane computes the same function, whatever the vector width. */
#define EXP_NONPOS_BODY(VF, VI, x)                                                        \
    const VI under = x < -87.0f;                                                          \
    VF xc, m87 = {0}, sc, y, n, r, p;                                                     \
    VI xb, lim, bits, yb;                                                                 \
    m87 = m87 - 87.0f;                                                                    \
    memcpy(&xb, &x, sizeof xb);                                                           \
    memcpy(&lim, &m87, sizeof lim);                                                       \
    xb = (xb & ~under) | (lim & under);                                                   \
    memcpy(&xc, &xb, sizeof xc);                                                          \
    n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  /* round(x log2 e) */  \
    r = xc - n * 0.693359375f;                                                            \
    r = r - n * -2.12194440e-4f;                                                          \
    p = r * 1.9875691500e-4f + 1.3981999507e-3f;                                          \
    p = p * r + 8.3334519073e-3f;                                                         \
    p = p * r + 4.1665795894e-2f;                                                         \
    p = p * r + 1.6666665459e-1f;                                                         \
    p = p * r + 5.0000001201e-1f;                                                         \
    y = p * (r * r) + r + 1.0f;                                                           \
    bits = (__builtin_convertvector(n, VI) + 127) << 23;     /* 2^n, n in [-126, 0] */    \
    memcpy(&sc, &bits, sizeof sc);                                                        \
    y = y * sc;                                                                           \
    memcpy(&yb, &y, sizeof yb);                                                           \
    yb &= ~under;                                                                         \
    memcpy(&y, &yb, sizeof y);                                                            \
    return y;

static inline v4f exp4_nonpos(v4f x)
{
    EXP_NONPOS_BODY(v4f, v4i, x)
}

/* The best path the kernels may take (attn_set_isa_limit; tests and benchmarks only). */
static int isa_limit = ATTN_ISA_AVX512;

int attn_set_isa_limit(int limit)
{
    int old = isa_limit;
    isa_limit = limit < ATTN_ISA_GENERIC ? ATTN_ISA_GENERIC : limit > ATTN_ISA_AVX512 ? ATTN_ISA_AVX512 : limit;
    return old;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(ATTN_NO_AVX2)   /* -DATTN_NO_AVX2: generic only */
#define ATTN_HAVE_AVX2_PATH 1
typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));
typedef double v4d __attribute__((vector_size(32)));
typedef float v16f __attribute__((vector_size(64)));
typedef int v16i __attribute__((vector_size(64)));
typedef double v8d __attribute__((vector_size(64)));
typedef long long v8l __attribute__((vector_size(64)));

static int attn_use_avx2(void)
{
    static int cached = -1;
    if (cached < 0) cached = __builtin_cpu_supports("avx2") ? 1 : 0;
    return cached && isa_limit >= ATTN_ISA_AVX2;
}

/* AVX-512F (16-float lanes): the same elementwise arithmetic as the AVX2 path. */
static int attn_use_avx512(void)
{
    static int cached = -1;
    if (cached < 0) cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f") ? 1 : 0;
    return cached && isa_limit >= ATTN_ISA_AVX512;
}

__attribute__((target("avx2")))
static inline v8f exp8_nonpos(v8f x)
{
    EXP_NONPOS_BODY(v8f, v8i, x)
}

/* pe [n] = exp(s - m); returns the sum the generic loop of row_probs computes, in the
 * same order: lane i of the double accumulator sums e = i mod 4 in increasing e. The entries
 * from e0 on, continuing the sum l (probs_avx512's tail). */
__attribute__((target("avx2"))) static inline __attribute__((always_inline))
double probs_avx2_from(const float *s, size_t n, float m, float *pe, size_t e0, v4d l)
{
    for (size_t e = e0; e < n; e += 8) {
        v8f x, y;
        if (e + 8 <= n) memcpy(&x, s + e, sizeof x);
        else for (size_t i = 0; i < 8; i++) x[i] = e + i < n ? s[e + i] : -INFINITY;
        x = x - m;
        y = exp8_nonpos(x);
        if (e + 8 <= n) memcpy(pe + e, &y, sizeof y);
        else for (size_t i = 0; e + i < n; i++) pe[e + i] = y[i];
        v4f lo = {y[0], y[1], y[2], y[3]}, hi = {y[4], y[5], y[6], y[7]};
        l += __builtin_convertvector(lo, v4d);
        l += __builtin_convertvector(hi, v4d);
    }
    return (l[0] + l[1]) + (l[2] + l[3]);
}

__attribute__((target("avx2")))
static double probs_avx2(const float *s, size_t n, float m, float *pe)
{
    return probs_avx2_from(s, n, m, pe, 0, (v4d){0, 0, 0, 0});
}

__attribute__((target("avx512f")))
static inline v16f exp16_nonpos(v16f x)
{
    EXP_NONPOS_BODY(v16f, v16i, x)
}

/* probs_avx2 with 16 lanes while 16 entries remain: lane i of the double sum still takes
 * e = i mod 4 in increasing e (the four quarters of a block in order); the last n mod 16
 * entries go through probs_avx2's loop, padded as there. */
__attribute__((target("avx512f")))
static double probs_avx512(const float *s, size_t n, float m, float *pe)
{
    v4d l = {0, 0, 0, 0};
    size_t e = 0;
    for (; e + 16 <= n; e += 16) {
        v16f x;
        memcpy(&x, s + e, sizeof x);
        const v16f y = exp16_nonpos(x - m);
        memcpy(pe + e, &y, sizeof y);
        const __m512 yz = (__m512)y;
        l += (v4d)_mm256_cvtps_pd(_mm512_extractf32x4_ps(yz, 0));
        l += (v4d)_mm256_cvtps_pd(_mm512_extractf32x4_ps(yz, 1));
        l += (v4d)_mm256_cvtps_pd(_mm512_extractf32x4_ps(yz, 2));
        l += (v4d)_mm256_cvtps_pd(_mm512_extractf32x4_ps(yz, 3));
    }
    return probs_avx2_from(s, n, m, pe, e, l);
}

static double probs_fast(const float *s, size_t n, float m, float *pe)
{
    return attn_use_avx512() ? probs_avx512(s, n, m, pe) : probs_avx2(s, n, m, pe);
}
#else
#define ATTN_HAVE_AVX2_PATH 0
static inline int attn_use_avx2(void) { return 0; }
static inline int attn_use_avx512(void) { return 0; }
#endif

int attn_isa(void)
{
    return attn_use_avx512() ? ATTN_ISA_AVX512 : attn_use_avx2() ? ATTN_ISA_AVX2 : ATTN_ISA_GENERIC;
}

#if ATTN_HAVE_AVX2_PATH
/* pv_accum with 8-float lanes, 32 channels per pass over e (same per-element order). */
__attribute__((target("avx2")))
static void pv_accum_avx2(float *restrict o, const float *restrict p, size_t n,
                          const float *restrict v, const size_t *idx, size_t D)
{
    size_t d = 0;
    for (; d + 32 <= D; d += 32) {
        v8f a0, a1, a2, a3;
        memcpy(&a0, o + d, 32); memcpy(&a1, o + d + 8, 32);
        memcpy(&a2, o + d + 16, 32); memcpy(&a3, o + d + 24, 32);
        for (size_t e = 0; e < n; e++) {
            const float *vr = v + (idx ? idx[e] : e) * D + d;
            const float pe = p[e];
            v8f x0, x1, x2, x3;
            memcpy(&x0, vr, 32); memcpy(&x1, vr + 8, 32);
            memcpy(&x2, vr + 16, 32); memcpy(&x3, vr + 24, 32);
            a0 += pe * x0; a1 += pe * x1; a2 += pe * x2; a3 += pe * x3;
        }
        memcpy(o + d, &a0, 32); memcpy(o + d + 8, &a1, 32);
        memcpy(o + d + 16, &a2, 32); memcpy(o + d + 24, &a3, 32);
    }
    for (; d + 8 <= D; d += 8) {
        v8f a0;
        memcpy(&a0, o + d, 32);
        for (size_t e = 0; e < n; e++) {
            v8f x0;
            memcpy(&x0, v + (idx ? idx[e] : e) * D + d, 32);
            a0 += p[e] * x0;
        }
        memcpy(o + d, &a0, 32);
    }
    for (; d < D; d++) {
        float a = o[d];
        for (size_t e = 0; e < n; e++) a += p[e] * v[(idx ? idx[e] : e) * D + d];
        o[d] = a;
    }
}
#endif

#if ATTN_HAVE_AVX2_PATH
/* pv_accum with 16-float lanes, 64 channels per pass over e (same per-element order). */
__attribute__((target("avx512f")))
static void pv_accum_avx512(float *restrict o, const float *restrict p, size_t n,
                            const float *restrict v, const size_t *idx, size_t D)
{
    size_t d = 0;
    for (; d + 64 <= D; d += 64) {
        v16f a0, a1, a2, a3;
        memcpy(&a0, o + d, 64); memcpy(&a1, o + d + 16, 64);
        memcpy(&a2, o + d + 32, 64); memcpy(&a3, o + d + 48, 64);
        for (size_t e = 0; e < n; e++) {
            const float *vr = v + (idx ? idx[e] : e) * D + d;
            const float pe = p[e];
            v16f x0, x1, x2, x3;
            memcpy(&x0, vr, 64); memcpy(&x1, vr + 16, 64);
            memcpy(&x2, vr + 32, 64); memcpy(&x3, vr + 48, 64);
            a0 += pe * x0; a1 += pe * x1; a2 += pe * x2; a3 += pe * x3;
        }
        memcpy(o + d, &a0, 64); memcpy(o + d + 16, &a1, 64);
        memcpy(o + d + 32, &a2, 64); memcpy(o + d + 48, &a3, 64);
    }
    for (; d + 16 <= D; d += 16) {
        v16f a0;
        memcpy(&a0, o + d, 64);
        for (size_t e = 0; e < n; e++) {
            v16f x0;
            memcpy(&x0, v + (idx ? idx[e] : e) * D + d, 64);
            a0 += p[e] * x0;
        }
        memcpy(o + d, &a0, 64);
    }
    for (; d + 8 <= D; d += 8) {
        v8f a0;
        memcpy(&a0, o + d, 32);
        for (size_t e = 0; e < n; e++) {
            v8f x0;
            memcpy(&x0, v + (idx ? idx[e] : e) * D + d, 32);
            a0 += p[e] * x0;
        }
        memcpy(o + d, &a0, 32);
    }
    for (; d < D; d++) {
        float a = o[d];
        for (size_t e = 0; e < n; e++) a += p[e] * v[(idx ? idx[e] : e) * D + d];
        o[d] = a;
    }
}
#endif

#if ATTN_HAVE_AVX2_PATH
/* Logits of 8 entries (key rows kp[0..7]): s8[i] = scale * (q . kp[i]), each summed in d
 * order like attn_logit: blocks of 8 channels are transposed in registers (8x8) so the
 * entry index is the vector lane; a channel tail continues lane by lane in scalar code. */
__attribute__((target("avx2")))
static void logits8_avx2(const float *restrict q, const float *const *kp, size_t D, float scale,
                         float *restrict s8)
{
    typedef int v8m __attribute__((vector_size(32)));
    const v8m lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};
    const v8m p01 = {0, 1, 8, 9, 4, 5, 12, 13}, p23 = {2, 3, 10, 11, 6, 7, 14, 15};
    const v8m h0 = {0, 1, 2, 3, 8, 9, 10, 11}, h1 = {4, 5, 6, 7, 12, 13, 14, 15};
    v8f acc = {0};
    size_t d = 0;
    for (; d + 8 <= D; d += 8) {
        v8f r0, r1, r2, r3, r4, r5, r6, r7;
        memcpy(&r0, kp[0] + d, 32); memcpy(&r1, kp[1] + d, 32);
        memcpy(&r2, kp[2] + d, 32); memcpy(&r3, kp[3] + d, 32);
        memcpy(&r4, kp[4] + d, 32); memcpy(&r5, kp[5] + d, 32);
        memcpy(&r6, kp[6] + d, 32); memcpy(&r7, kp[7] + d, 32);
        v8f t0 = __builtin_shuffle(r0, r1, lo), t1 = __builtin_shuffle(r0, r1, hi);
        v8f t2 = __builtin_shuffle(r2, r3, lo), t3 = __builtin_shuffle(r2, r3, hi);
        v8f t4 = __builtin_shuffle(r4, r5, lo), t5 = __builtin_shuffle(r4, r5, hi);
        v8f t6 = __builtin_shuffle(r6, r7, lo), t7 = __builtin_shuffle(r6, r7, hi);
        v8f u0 = __builtin_shuffle(t0, t2, p01), u1 = __builtin_shuffle(t0, t2, p23);
        v8f u2 = __builtin_shuffle(t1, t3, p01), u3 = __builtin_shuffle(t1, t3, p23);
        v8f u4 = __builtin_shuffle(t4, t6, p01), u5 = __builtin_shuffle(t4, t6, p23);
        v8f u6 = __builtin_shuffle(t5, t7, p01), u7 = __builtin_shuffle(t5, t7, p23);
        acc += q[d] * __builtin_shuffle(u0, u4, h0);       /* column d: k_i[d] for i = 0..7 */
        acc += q[d + 1] * __builtin_shuffle(u1, u5, h0);
        acc += q[d + 2] * __builtin_shuffle(u2, u6, h0);
        acc += q[d + 3] * __builtin_shuffle(u3, u7, h0);
        acc += q[d + 4] * __builtin_shuffle(u0, u4, h1);
        acc += q[d + 5] * __builtin_shuffle(u1, u5, h1);
        acc += q[d + 6] * __builtin_shuffle(u2, u6, h1);
        acc += q[d + 7] * __builtin_shuffle(u3, u7, h1);
    }
    float a[8];
    memcpy(a, &acc, sizeof a);
    for (; d < D; d++)
        for (int i = 0; i < 8; i++) a[i] += q[d] * kp[i][d];
    for (int i = 0; i < 8; i++) s8[i] = scale * a[i];
}
#endif

/* o [D] += sum_e p[e] * v_row(e), e in order for every d */
static void pv_accum(float *restrict o, const float *restrict p, size_t n,
                     const float *restrict v, const size_t *idx, size_t D)
{
#if ATTN_HAVE_AVX2_PATH
    if (attn_use_avx512()) { pv_accum_avx512(o, p, n, v, idx, D); return; }
    if (attn_use_avx2()) { pv_accum_avx2(o, p, n, v, idx, D); return; }
#endif
    pv_accum_generic(o, p, n, v, idx, D);
}

/* The softmax part of a step: new max, rescale of o, pe [n] = exp(s - m), l += sum pe
 * (four double partial sums over e mod 4, added in a fixed order).
 * Returns 1 when pe must be accumulated into o (0: nothing visible, or NaN state). */
#if ATTN_HAVE_AVX2_PATH
/* max of s [n] (-INFINITY when empty) and whether any is NaN, 8 lanes at a time. The max of
 * a set does not depend on the order it is taken in (only the sign of an all-zero maximum
 * can, which no later result sees: m enters only through s - m, m - m' and m + log l). */
__attribute__((target("avx2")))
static float max_avx2(const float *s, size_t n, int *has_nan)
{
    v8f mx = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    v8i bad = {0};
    size_t e = 0;
    for (; e + 8 <= n; e += 8) {
        v8f x;
        memcpy(&x, s + e, sizeof x);
        bad |= x != x;
        v8i gt = x > mx, xi, mi;
        memcpy(&xi, &x, sizeof xi);
        memcpy(&mi, &mx, sizeof mi);
        mi = (xi & gt) | (mi & ~gt);
        memcpy(&mx, &mi, sizeof mx);
    }
    float bm = -INFINITY;
    int nan = 0;
    for (int i = 0; i < 8; i++) { if (mx[i] > bm) bm = mx[i]; nan |= bad[i] != 0; }
    for (; e < n; e++) {
        if (s[e] > bm) bm = s[e];
        if (s[e] != s[e]) nan = 1;
    }
    *has_nan = nan;
    return bm;
}

/* max_avx2 with 16 lanes (the same maximum: see there). */
__attribute__((target("avx512f")))
static float max_avx512(const float *s, size_t n, int *has_nan)
{
    v16f mx;
    v16i bad = {0};
    for (int i = 0; i < 16; i++) mx[i] = -INFINITY;
    size_t e = 0;
    for (; e + 16 <= n; e += 16) {
        v16f x;
        memcpy(&x, s + e, sizeof x);
        bad |= x != x;
        v16i gt = x > mx, xi, mi;
        memcpy(&xi, &x, sizeof xi);
        memcpy(&mi, &mx, sizeof mi);
        mi = (xi & gt) | (mi & ~gt);
        memcpy(&mx, &mi, sizeof mx);
    }
    float bm = -INFINITY;
    int nan = 0;
    for (int i = 0; i < 16; i++) { if (mx[i] > bm) bm = mx[i]; nan |= bad[i] != 0; }
    for (; e < n; e++) {
        if (s[e] > bm) bm = s[e];
        if (s[e] != s[e]) nan = 1;
    }
    *has_nan = nan;
    return bm;
}

static float max_fast(const float *s, size_t n, int *has_nan)
{
    return attn_use_avx512() ? max_avx512(s, n, has_nan) : max_avx2(s, n, has_nan);
}
#endif

void attn_exp_shift(const float *s, size_t n, float m, float *pe)
{
#if ATTN_HAVE_AVX2_PATH
    if (attn_use_avx2()) { probs_fast(s, n, m, pe); return; }
#endif
    size_t e = 0;
    for (; e + 4 <= n; e += 4) {
        v4f x;
        memcpy(&x, s + e, sizeof x);
        x = exp4_nonpos(x - m);
        memcpy(pe + e, &x, sizeof x);
    }
    for (; e < n; e++) {
        v4f x = { s[e] - m, 0, 0, 0 };
        pe[e] = exp4_nonpos(x)[0];
    }
}

double attn_probs_row(const float *s, size_t n, float *p)
{
    float m = -INFINITY;
    int has_nan = 0;
    double l = 0;
#if ATTN_HAVE_AVX2_PATH
    if (attn_use_avx2()) m = max_fast(s, n, &has_nan);
    else
#endif
    for (size_t e = 0; e < n; e++) {
        if (s[e] > m) m = s[e];
        if (s[e] != s[e]) has_nan = 1;
    }
    if (has_nan) return NAN;
    if (m == -INFINITY) { memset(p, 0, n * sizeof *p); return -INFINITY; }
#if ATTN_HAVE_AVX2_PATH
    if (attn_use_avx2()) l = probs_fast(s, n, m, p);
    else
#endif
    {
        double l4[4] = {0, 0, 0, 0};
        attn_exp_shift(s, n, m, p);
        for (size_t e = 0; e < n; e++) l4[e % 4] += p[e];
        l = (l4[0] + l4[1]) + (l4[2] + l4[3]);
    }
    float inv = (float)(1.0 / l);
    for (size_t e = 0; e < n; e++) p[e] *= inv;
    return (double)m + log(l);
}

/* exp(x) in double, lane by lane: x = n ln2 + r with n = round(x log2 e) (the 1.5 2^52
 * shifter: t = x log2 e + 1.5 2^52 holds n in its low mantissa bits) and ln2 split in two
 * (ln2_hi has 21 trailing zero bits, so n ln2_hi is exact for |n| < 2^21); exp(r) for
 * |r| <= ln2/2 by its Taylor series to r^13 (the first term left out is below 0.03 ulp)
 * in Estrin's form (short dependency chains), y = (p r^2 + r) + 1; 2^n put in the exponent
 * bits. Within 2 ulp of the exact exp (test_attn: against libm over [-708, 709]). x < -708 (including -INFINITY)
 * gives 0 (libm: subnormals below 2^-1021, nothing a softmax sum of terms <= 1 sees), x > 709
 * gives +INFINITY, NaN gives NaN. Elementwise vector operations only, no contraction: every
 * lane computes the same function whatever the vector width, so the results are the same
 * bits on every CPU (libm's exp is chosen per CPU at run time). */
#define EXP64_BODY(VD, VL, x)                                                             \
    const VL under = x < -708.0, over = x > 709.0;                                        \
    VD xc = x, lo = (VD){0} - 708.0, hi = (VD){0} + 709.0, t, n, r, r2, r4, p, y, sc;     \
    VL xb, lb, hb, tb, bits, yb, infb = (VL){0} + 0x7ff0000000000000LL;                   \
    const double shift = 6755399441055744.0;                  /* 1.5 2^52 */             \
    memcpy(&xb, &xc, sizeof xb);                                                          \
    memcpy(&lb, &lo, sizeof lb);                                                          \
    memcpy(&hb, &hi, sizeof hb);                                                          \
    xb = (xb & ~under & ~over) | (lb & under) | (hb & over);                              \
    memcpy(&xc, &xb, sizeof xc);                                                          \
    t = xc * 1.4426950408889634074 + shift;                                               \
    n = t - shift;                                                                        \
    r = xc - n * 6.93147180369123816490e-01;                 /* ln2_hi */                \
    r = r - n * 1.90821492927058770002e-10;                  /* ln2_lo */                \
    r2 = r * r;                                              /* Estrin: short chains */ \
    r4 = r2 * r2;                                                                         \
    p = ((1.0 / 2 + r * (1.0 / 6)) + r2 * (1.0 / 24 + r * (1.0 / 120)))                   \
        + r4 * ((1.0 / 720 + r * (1.0 / 5040)) + r2 * (1.0 / 40320 + r * (1.0 / 362880)))  \
        + (r4 * r4) * ((1.0 / 3628800 + r * (1.0 / 39916800))                             \
                       + r2 * (1.0 / 479001600 + r * (1.0 / 6227020800.0)));               \
    y = (p * r2 + r) + 1.0;                                                               \
    memcpy(&tb, &t, sizeof tb);                                                           \
    bits = (tb - 0x4338000000000000LL + 1023) << 52;        /* 2^n, n in [-1022, 1023] */ \
    memcpy(&sc, &bits, sizeof sc);                                                        \
    y = y * sc;                                                                           \
    memcpy(&yb, &y, sizeof yb);                                                           \
    yb = (yb & ~under & ~over) | (infb & over);                                           \
    memcpy(&y, &yb, sizeof y);                                                            \
    return y;

typedef double v2d __attribute__((vector_size(16)));
typedef long long v2l __attribute__((vector_size(16)));

static inline v2d exp2d(v2d x)
{
    EXP64_BODY(v2d, v2l, x)
}

#if ATTN_HAVE_AVX2_PATH
typedef long long v4l __attribute__((vector_size(32)));

__attribute__((target("avx2")))
static inline v4d exp4d(v4d x)
{
    EXP64_BODY(v4d, v4l, x)
}

/* out [n] = exp(x[e] - c) over float (sf) or double (sd) input, the other NULL (always
 * inlined with a constant NULL, so each wrapper below is one specialised loop; a float
 * converts to double exactly, so both give the same bits for the same values); returns the
 * sum in lanes e mod 4. Each block is loaded before it is stored (out may be sd). */
__attribute__((target("avx2"))) static inline __attribute__((always_inline))
double exp_sub_avx2_body(const float *sf, const double *sd, size_t n, double c, double *out, size_t e, v4d l)
{
#define EXP_LOAD4(dst, e) do { if (sf) { v4f t_; memcpy(&t_, sf + (e), sizeof t_); dst = __builtin_convertvector(t_, v4d); } \
                               else memcpy(&dst, sd + (e), sizeof dst); } while (0)
    for (; e + 8 <= n; e += 8) {        /* two independent exps in flight (latency-bound) */
        v4d x0, x1;
        EXP_LOAD4(x0, e);
        EXP_LOAD4(x1, e + 4);
        v4d y0 = exp4d(x0 - c), y1 = exp4d(x1 - c);
        memcpy(out + e, &y0, sizeof y0);
        memcpy(out + e + 4, &y1, sizeof y1);
        l += y0;
        l += y1;
    }
    for (; e < n; e += 4) {
        v4d x = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
        if (e + 4 <= n) EXP_LOAD4(x, e);
        else for (size_t i = 0; e + i < n; i++) x[i] = sf ? sf[e + i] : sd[e + i];
        v4d y = exp4d(x - c);
        if (e + 4 <= n) memcpy(out + e, &y, sizeof y);
        else for (size_t i = 0; e + i < n; i++) out[e + i] = y[i];
        l += y;
    }
#undef EXP_LOAD4
    return (l[0] + l[1]) + (l[2] + l[3]);
}

__attribute__((target("avx2")))
static double exp_sub_f64_avx2(const float *s, size_t n, double c, double *out)
{
    return exp_sub_avx2_body(s, NULL, n, c, out, 0, (v4d){0, 0, 0, 0});
}

__attribute__((target("avx2")))
static double exp_sub_f64d_avx2(const double *x, size_t n, double c, double *out)
{
    return exp_sub_avx2_body(NULL, x, n, c, out, 0, (v4d){0, 0, 0, 0});
}

__attribute__((target("avx512f")))
static inline v8d exp8d(v8d x)
{
    EXP64_BODY(v8d, v8l, x)
}

/* exp_sub_avx2_body with 8-double lanes while 16 entries remain: the sum's lane i still
 * takes e = i mod 4 in increasing e (the four quarters of a block in order); the last
 * n mod 16 entries go through exp_sub_avx2_body's loops, padded as there. */
__attribute__((target("avx512f"))) static inline __attribute__((always_inline))
double exp_sub_avx512_body(const float *sf, const double *sd, size_t n, double c, double *out)
{
    v4d l = {0, 0, 0, 0};
    size_t e = 0;
    for (; e + 16 <= n; e += 16) {      /* two independent exps in flight */
        v8d x0, x1;
        if (sf) {
            v8f t0, t1;
            memcpy(&t0, sf + e, sizeof t0);
            memcpy(&t1, sf + e + 8, sizeof t1);
            x0 = __builtin_convertvector(t0, v8d);
            x1 = __builtin_convertvector(t1, v8d);
        } else {
            memcpy(&x0, sd + e, sizeof x0);
            memcpy(&x1, sd + e + 8, sizeof x1);
        }
        const v8d y0 = exp8d(x0 - c), y1 = exp8d(x1 - c);
        memcpy(out + e, &y0, sizeof y0);
        memcpy(out + e + 8, &y1, sizeof y1);
        l += (v4d)_mm512_castpd512_pd256((__m512d)y0);
        l += (v4d)_mm512_extractf64x4_pd((__m512d)y0, 1);
        l += (v4d)_mm512_castpd512_pd256((__m512d)y1);
        l += (v4d)_mm512_extractf64x4_pd((__m512d)y1, 1);
    }
    return exp_sub_avx2_body(sf, sd, n, c, out, e, l);
}

__attribute__((target("avx512f")))
static double exp_sub_f64_avx512(const float *s, size_t n, double c, double *out)
{
    return exp_sub_avx512_body(s, NULL, n, c, out);
}

__attribute__((target("avx512f")))
static double exp_sub_f64d_avx512(const double *x, size_t n, double c, double *out)
{
    return exp_sub_avx512_body(NULL, x, n, c, out);
}

__attribute__((target("avx2")))
static double div_sumsq_f64_avx2(double *p, size_t n, double z)
{
    v4d l = {0, 0, 0, 0};
    size_t e = 0;
    for (; e + 4 <= n; e += 4) {
        v4d x;
        memcpy(&x, p + e, sizeof x);
        x = x / z;
        memcpy(p + e, &x, sizeof x);
        l += x * x;
    }
    for (size_t i = 0; e < n; e++, i++) { p[e] /= z; l[i] += p[e] * p[e]; }
    return (l[0] + l[1]) + (l[2] + l[3]);
}
#endif

/* The generic path of both (SSE2 pairs: lanes e mod 4 = 0, 1 and 2, 3), as exp_sub_avx2_body. */
static inline __attribute__((always_inline))
double exp_sub_generic_body(const float *sf, const double *sd, size_t n, double c, double *out)
{
    v2d la = {0, 0}, lb = {0, 0};
    for (size_t e = 0; e < n; e += 4) {
        v2d xa = {-INFINITY, -INFINITY}, xb = {-INFINITY, -INFINITY};
        for (size_t i = 0; i < 2 && e + i < n; i++) xa[i] = sf ? sf[e + i] : sd[e + i];
        for (size_t i = 0; i < 2 && e + 2 + i < n; i++) xb[i] = sf ? sf[e + 2 + i] : sd[e + 2 + i];
        v2d ya = exp2d(xa - c), yb = exp2d(xb - c);
        for (size_t i = 0; i < 2 && e + i < n; i++) out[e + i] = ya[i];
        for (size_t i = 0; i < 2 && e + 2 + i < n; i++) out[e + 2 + i] = yb[i];
        la += ya;
        lb += yb;
    }
    return (la[0] + la[1]) + (lb[0] + lb[1]);
}

double attn_exp_sub_f64(const float *s, size_t n, double c, double *out)
{
#if ATTN_HAVE_AVX2_PATH
    if (attn_use_avx512()) return exp_sub_f64_avx512(s, n, c, out);
    if (attn_use_avx2()) return exp_sub_f64_avx2(s, n, c, out);
#endif
    return exp_sub_generic_body(s, NULL, n, c, out);
}

double attn_exp_sub_f64d(const double *x, size_t n, double c, double *out)
{
#if ATTN_HAVE_AVX2_PATH
    if (attn_use_avx512()) return exp_sub_f64d_avx512(x, n, c, out);
    if (attn_use_avx2()) return exp_sub_f64d_avx2(x, n, c, out);
#endif
    return exp_sub_generic_body(NULL, x, n, c, out);
}

double attn_div_sumsq_f64(double *p, size_t n, double z)
{
#if ATTN_HAVE_AVX2_PATH
    if (attn_use_avx2()) return div_sumsq_f64_avx2(p, n, z);
#endif
    double l[4] = {0, 0, 0, 0};
    for (size_t e = 0; e < n; e++) {
        p[e] /= z;
        l[e % 4] += p[e] * p[e];
    }
    return (l[0] + l[1]) + (l[2] + l[3]);
}

static int row_probs(row_state *st, const float *s, size_t n, size_t D, float *o, float *pe)
{
    float bm = -INFINITY;
    int has_nan = 0;
#if ATTN_HAVE_AVX2_PATH
    if (attn_use_avx2()) bm = max_fast(s, n, &has_nan);
    else
#endif
    for (size_t e = 0; e < n; e++) {
        if (s[e] > bm) bm = s[e];
        if (s[e] != s[e]) has_nan = 1;
    }
    if (has_nan) { st->m = NAN; st->l = NAN; return 0; }
    if (bm == -INFINITY || st->m != st->m) return 0;   /* nothing visible here, or NaN */
    if (bm > st->m) {
        float a = st->m == -INFINITY ? 0.0f : expf(st->m - bm);
        if (o) vec_scale(o, a, D);
        st->l *= a;
        st->m = bm;
    }
    const float m = st->m;
    double l0 = 0, l1 = 0, l2 = 0, l3 = 0;
#if ATTN_HAVE_AVX2_PATH
    if (attn_use_avx2()) {
        st->l += probs_fast(s, n, m, pe);
        return 1;
    }
#endif
    for (size_t e = 0; e < n; e += 4) {
        v4f x = {-INFINITY, -INFINITY, -INFINITY, -INFINITY}, y;
        if (e + 4 <= n) memcpy(&x, s + e, sizeof x);
        else for (size_t i = 0; e + i < n; i++) x[i] = s[e + i];
        x = x - m;
        y = exp4_nonpos(x);                       /* 0 for s = -INFINITY (and padding) */
        if (e + 4 <= n) memcpy(pe + e, &y, sizeof y);
        else for (size_t i = 0; e + i < n; i++) pe[e + i] = y[i];
        l0 += y[0]; l1 += y[1]; l2 += y[2]; l3 += y[3];
    }
    st->l += (l0 + l1) + (l2 + l3);
    return 1;
}

static void row_update(row_state *st, const float *s, size_t n, const float *v,
                       const size_t *idx, size_t D, float *o)
{
    float pe[EB_MAX];
    if (row_probs(st, s, n, D, o, pe) && o) pv_accum(o, pe, n, v, idx, D);
}

static void row_finish(const row_state *st, float *lse, float *o, size_t D)
{
    if (st->m != st->m || st->l != st->l) {
        *lse = NAN;
        if (o) for (size_t d = 0; d < D; d++) o[d] = NAN;
        return;
    }
    if (st->m == -INFINITY || st->l <= 0) {      /* fully masked row */
        *lse = -INFINITY;
        if (o) memset(o, 0, D * sizeof *o);
        return;
    }
    *lse = (float)((double)st->m + log(st->l));
    if (o) {
        float inv = (float)(1.0 / st->l);
        for (size_t d = 0; d < D; d++) o[d] *= inv;
    }
}

/* s [KB] = scale * (q . kT[:, j]) for the KB keys of a transposed block; each lane sums
 * in d order (4 vectors = 16 keys per pass: independent accumulators). */
static void logits_block(const float *restrict q, const float *restrict kT, size_t D,
                         size_t KB, float scale, float *restrict s)
{
    const v4f sc = {scale, scale, scale, scale};
    size_t j = 0;
    for (; j + 16 <= KB; j += 16) {
        v4f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        const float *kr = kT + j;
        for (size_t d = 0; d < D; d++, kr += KB) {
            float qd = q[d];
            v4f qv = {qd, qd, qd, qd}, k0, k1, k2, k3;
            memcpy(&k0, kr, sizeof k0);
            memcpy(&k1, kr + 4, sizeof k1);
            memcpy(&k2, kr + 8, sizeof k2);
            memcpy(&k3, kr + 12, sizeof k3);
            a0 += qv * k0; a1 += qv * k1; a2 += qv * k2; a3 += qv * k3;
        }
        a0 = sc * a0; a1 = sc * a1; a2 = sc * a2; a3 = sc * a3;
        memcpy(s + j, &a0, sizeof a0);
        memcpy(s + j + 4, &a1, sizeof a1);
        memcpy(s + j + 8, &a2, sizeof a2);
        memcpy(s + j + 12, &a3, sizeof a3);
    }
    for (; j < KB; j += 4) {
        v4f a = {0};
        const float *kr = kT + j;
        for (size_t d = 0; d < D; d++, kr += KB) {
            float qd = q[d];
            v4f qv = {qd, qd, qd, qd}, kv;
            memcpy(&kv, kr, sizeof kv);
            a += qv * kv;
        }
        a = sc * a;
        memcpy(s + j, &a, sizeof a);
    }
}

/* ---- AVX2 path: 8-float lanes, 4 rows per pass (bit-identical to the generic code) ---- */

#if ATTN_HAVE_AVX2_PATH

/* s [nr][KB_MAX]: scale * (q_r . kT[:, j]) for j < KB, rows q [nr][D]. */
__attribute__((target("avx2")))
static void logits_rows_avx2(const float *restrict q, size_t nr, const float *restrict kT,
                             size_t D, size_t KB, float scale, float (*restrict s)[KB_MAX])
{
    const v8f sc = {scale, scale, scale, scale, scale, scale, scale, scale};
    size_t r = 0;
    for (; r + 4 <= nr; r += 4) {
        const float *q0 = q + r * D, *q1 = q0 + D, *q2 = q1 + D, *q3 = q2 + D;
        size_t j = 0;
        for (; j + 16 <= KB; j += 16) {
            v8f a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};
            const float *kr = kT + j;
            for (size_t d = 0; d < D; d++, kr += KB) {
                v8f k0, k1;
                memcpy(&k0, kr, sizeof k0);
                memcpy(&k1, kr + 8, sizeof k1);
                const float b0 = q0[d], b1 = q1[d], b2 = q2[d], b3 = q3[d];  /* broadcast */
                a00 += b0 * k0; a01 += b0 * k1;
                a10 += b1 * k0; a11 += b1 * k1;
                a20 += b2 * k0; a21 += b2 * k1;
                a30 += b3 * k0; a31 += b3 * k1;
            }
            a00 = sc * a00; a01 = sc * a01; a10 = sc * a10; a11 = sc * a11;
            a20 = sc * a20; a21 = sc * a21; a30 = sc * a30; a31 = sc * a31;
            memcpy(s[r] + j, &a00, sizeof a00); memcpy(s[r] + j + 8, &a01, sizeof a01);
            memcpy(s[r + 1] + j, &a10, sizeof a10); memcpy(s[r + 1] + j + 8, &a11, sizeof a11);
            memcpy(s[r + 2] + j, &a20, sizeof a20); memcpy(s[r + 2] + j + 8, &a21, sizeof a21);
            memcpy(s[r + 3] + j, &a30, sizeof a30); memcpy(s[r + 3] + j + 8, &a31, sizeof a31);
        }
        for (; j < KB; j += 8) {              /* KB is a multiple of 8 */
            v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            const float *kr = kT + j;
            for (size_t d = 0; d < D; d++, kr += KB) {
                v8f k0;
                memcpy(&k0, kr, sizeof k0);
                a0 += q0[d] * k0; a1 += q1[d] * k0; a2 += q2[d] * k0; a3 += q3[d] * k0;
            }
            a0 = sc * a0; a1 = sc * a1; a2 = sc * a2; a3 = sc * a3;
            memcpy(s[r] + j, &a0, sizeof a0); memcpy(s[r + 1] + j, &a1, sizeof a1);
            memcpy(s[r + 2] + j, &a2, sizeof a2); memcpy(s[r + 3] + j, &a3, sizeof a3);
        }
    }
    for (; r < nr; r++) {
        const float *q0 = q + r * D;
        for (size_t j = 0; j < KB; j += 8) {
            v8f a0 = {0};
            const float *kr = kT + j;
            for (size_t d = 0; d < D; d++, kr += KB) {
                v8f k0;
                memcpy(&k0, kr, sizeof k0);
                a0 += q0[d] * k0;
            }
            a0 = sc * a0;
            memcpy(s[r] + j, &a0, sizeof a0);
        }
    }
}

/* o_r [D] += sum_e pe[r][e] * v[e] (e in order for every d) for the listed rows;
 * o of row r at o + orow[r] * D. */
__attribute__((target("avx2")))
static void pv_rows_avx2(float *restrict o, const size_t *orow, const int *rows, size_t nact,
                         float (*restrict pe)[KB_MAX], size_t n, const float *restrict v, size_t D)
{
    size_t i = 0;
    for (; i + 4 <= nact; i += 4) {
        const float *p0 = pe[rows[i]], *p1 = pe[rows[i + 1]], *p2 = pe[rows[i + 2]], *p3 = pe[rows[i + 3]];
        float *o0 = o + orow[rows[i]] * D, *o1 = o + orow[rows[i + 1]] * D;
        float *o2 = o + orow[rows[i + 2]] * D, *o3 = o + orow[rows[i + 3]] * D;
        size_t d = 0;
        for (; d + 16 <= D; d += 16) {
            v8f a00, a01, a10, a11, a20, a21, a30, a31;
            memcpy(&a00, o0 + d, 32); memcpy(&a01, o0 + d + 8, 32);
            memcpy(&a10, o1 + d, 32); memcpy(&a11, o1 + d + 8, 32);
            memcpy(&a20, o2 + d, 32); memcpy(&a21, o2 + d + 8, 32);
            memcpy(&a30, o3 + d, 32); memcpy(&a31, o3 + d + 8, 32);
            const float *vr = v + d;
            for (size_t e = 0; e < n; e++, vr += D) {
                v8f x0, x1;
                memcpy(&x0, vr, 32);
                memcpy(&x1, vr + 8, 32);
                const float b0 = p0[e], b1 = p1[e], b2 = p2[e], b3 = p3[e];  /* broadcast */
                a00 += b0 * x0; a01 += b0 * x1;
                a10 += b1 * x0; a11 += b1 * x1;
                a20 += b2 * x0; a21 += b2 * x1;
                a30 += b3 * x0; a31 += b3 * x1;
            }
            memcpy(o0 + d, &a00, 32); memcpy(o0 + d + 8, &a01, 32);
            memcpy(o1 + d, &a10, 32); memcpy(o1 + d + 8, &a11, 32);
            memcpy(o2 + d, &a20, 32); memcpy(o2 + d + 8, &a21, 32);
            memcpy(o3 + d, &a30, 32); memcpy(o3 + d + 8, &a31, 32);
        }
        if (d < D) {                          /* channel tail: the generic code per row */
            size_t rest = D - d;
            float *os[4] = {o0, o1, o2, o3};
            const float *ps[4] = {p0, p1, p2, p3};
            for (int r = 0; r < 4; r++)
                for (size_t dd = 0; dd < rest; dd++) {
                    float a = os[r][d + dd];
                    for (size_t e = 0; e < n; e++) a += ps[r][e] * v[e * D + d + dd];
                    os[r][d + dd] = a;
                }
        }
    }
    for (; i < nact; i++)
        pv_accum(o + orow[rows[i]] * D, pe[rows[i]], n, v, NULL, D);
}

/* ---- AVX-512F path: logits_rows_avx2 and pv_rows_avx2 with 16-float lanes ------------
 * 4 rows x 32 keys (logits) or 32 channels (p.v) per pass, eight accumulators; each lane
 * the same multiply, then add, in the same order (d for a logit, e for an output element):
 * the bits of the AVX2 and generic paths. */

/* logits_rows_avx2 (the same s, the same layout). */
__attribute__((target("avx512f")))
static void logits_rows_avx512(const float *restrict q, size_t nr, const float *restrict kT,
                               size_t D, size_t KB, float scale, float (*restrict s)[KB_MAX])
{
    size_t r = 0;
    for (; r + 4 <= nr; r += 4) {
        const float *q0 = q + r * D, *q1 = q0 + D, *q2 = q1 + D, *q3 = q2 + D;
        size_t j = 0;
        for (; j + 32 <= KB; j += 32) {
            v16f a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};
            const float *kr = kT + j;
            for (size_t d = 0; d < D; d++, kr += KB) {
                v16f k0, k1;
                memcpy(&k0, kr, sizeof k0);
                memcpy(&k1, kr + 16, sizeof k1);
                const float b0 = q0[d], b1 = q1[d], b2 = q2[d], b3 = q3[d];  /* broadcast */
                a00 += b0 * k0; a01 += b0 * k1;
                a10 += b1 * k0; a11 += b1 * k1;
                a20 += b2 * k0; a21 += b2 * k1;
                a30 += b3 * k0; a31 += b3 * k1;
            }
            a00 = scale * a00; a01 = scale * a01; a10 = scale * a10; a11 = scale * a11;
            a20 = scale * a20; a21 = scale * a21; a30 = scale * a30; a31 = scale * a31;
            memcpy(s[r] + j, &a00, 64); memcpy(s[r] + j + 16, &a01, 64);
            memcpy(s[r + 1] + j, &a10, 64); memcpy(s[r + 1] + j + 16, &a11, 64);
            memcpy(s[r + 2] + j, &a20, 64); memcpy(s[r + 2] + j + 16, &a21, 64);
            memcpy(s[r + 3] + j, &a30, 64); memcpy(s[r + 3] + j + 16, &a31, 64);
        }
        for (; j + 16 <= KB; j += 16) {
            v16f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            const float *kr = kT + j;
            for (size_t d = 0; d < D; d++, kr += KB) {
                v16f k0;
                memcpy(&k0, kr, sizeof k0);
                a0 += q0[d] * k0; a1 += q1[d] * k0; a2 += q2[d] * k0; a3 += q3[d] * k0;
            }
            a0 = scale * a0; a1 = scale * a1; a2 = scale * a2; a3 = scale * a3;
            memcpy(s[r] + j, &a0, 64); memcpy(s[r + 1] + j, &a1, 64);
            memcpy(s[r + 2] + j, &a2, 64); memcpy(s[r + 3] + j, &a3, 64);
        }
        for (; j < KB; j += 8) {              /* KB is a multiple of 8 */
            v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            const float *kr = kT + j;
            for (size_t d = 0; d < D; d++, kr += KB) {
                v8f k0;
                memcpy(&k0, kr, sizeof k0);
                a0 += q0[d] * k0; a1 += q1[d] * k0; a2 += q2[d] * k0; a3 += q3[d] * k0;
            }
            a0 = scale * a0; a1 = scale * a1; a2 = scale * a2; a3 = scale * a3;
            memcpy(s[r] + j, &a0, 32); memcpy(s[r + 1] + j, &a1, 32);
            memcpy(s[r + 2] + j, &a2, 32); memcpy(s[r + 3] + j, &a3, 32);
        }
    }
    for (; r < nr; r++) {
        const float *q0 = q + r * D;
        size_t j = 0;
        for (; j + 16 <= KB; j += 16) {
            v16f a0 = {0};
            const float *kr = kT + j;
            for (size_t d = 0; d < D; d++, kr += KB) {
                v16f k0;
                memcpy(&k0, kr, sizeof k0);
                a0 += q0[d] * k0;
            }
            a0 = scale * a0;
            memcpy(s[r] + j, &a0, 64);
        }
        for (; j < KB; j += 8) {
            v8f a0 = {0};
            const float *kr = kT + j;
            for (size_t d = 0; d < D; d++, kr += KB) {
                v8f k0;
                memcpy(&k0, kr, sizeof k0);
                a0 += q0[d] * k0;
            }
            a0 = scale * a0;
            memcpy(s[r] + j, &a0, 32);
        }
    }
}

/* pv_rows_avx2 (the same outputs). */
__attribute__((target("avx512f")))
static void pv_rows_avx512(float *restrict o, const size_t *orow, const int *rows, size_t nact,
                           float (*restrict pe)[KB_MAX], size_t n, const float *restrict v, size_t D)
{
    size_t i = 0;
    for (; i + 4 <= nact; i += 4) {
        const float *p0 = pe[rows[i]], *p1 = pe[rows[i + 1]], *p2 = pe[rows[i + 2]], *p3 = pe[rows[i + 3]];
        float *o0 = o + orow[rows[i]] * D, *o1 = o + orow[rows[i + 1]] * D;
        float *o2 = o + orow[rows[i + 2]] * D, *o3 = o + orow[rows[i + 3]] * D;
        size_t d = 0;
        for (; d + 32 <= D; d += 32) {
            v16f a00, a01, a10, a11, a20, a21, a30, a31;
            memcpy(&a00, o0 + d, 64); memcpy(&a01, o0 + d + 16, 64);
            memcpy(&a10, o1 + d, 64); memcpy(&a11, o1 + d + 16, 64);
            memcpy(&a20, o2 + d, 64); memcpy(&a21, o2 + d + 16, 64);
            memcpy(&a30, o3 + d, 64); memcpy(&a31, o3 + d + 16, 64);
            const float *vr = v + d;
            for (size_t e = 0; e < n; e++, vr += D) {
                v16f x0, x1;
                memcpy(&x0, vr, 64);
                memcpy(&x1, vr + 16, 64);
                const float b0 = p0[e], b1 = p1[e], b2 = p2[e], b3 = p3[e];  /* broadcast */
                a00 += b0 * x0; a01 += b0 * x1;
                a10 += b1 * x0; a11 += b1 * x1;
                a20 += b2 * x0; a21 += b2 * x1;
                a30 += b3 * x0; a31 += b3 * x1;
            }
            memcpy(o0 + d, &a00, 64); memcpy(o0 + d + 16, &a01, 64);
            memcpy(o1 + d, &a10, 64); memcpy(o1 + d + 16, &a11, 64);
            memcpy(o2 + d, &a20, 64); memcpy(o2 + d + 16, &a21, 64);
            memcpy(o3 + d, &a30, 64); memcpy(o3 + d + 16, &a31, 64);
        }
        for (; d + 16 <= D; d += 16) {
            v16f a0, a1, a2, a3;
            memcpy(&a0, o0 + d, 64); memcpy(&a1, o1 + d, 64);
            memcpy(&a2, o2 + d, 64); memcpy(&a3, o3 + d, 64);
            const float *vr = v + d;
            for (size_t e = 0; e < n; e++, vr += D) {
                v16f x0;
                memcpy(&x0, vr, 64);
                a0 += p0[e] * x0; a1 += p1[e] * x0; a2 += p2[e] * x0; a3 += p3[e] * x0;
            }
            memcpy(o0 + d, &a0, 64); memcpy(o1 + d, &a1, 64);
            memcpy(o2 + d, &a2, 64); memcpy(o3 + d, &a3, 64);
        }
        if (d < D) {                          /* channel tail: the generic code per row */
            size_t rest = D - d;
            float *os[4] = {o0, o1, o2, o3};
            const float *ps[4] = {p0, p1, p2, p3};
            for (int r = 0; r < 4; r++)
                for (size_t dd = 0; dd < rest; dd++) {
                    float a = os[r][d + dd];
                    for (size_t e = 0; e < n; e++) a += ps[r][e] * v[e * D + d + dd];
                    os[r][d + dd] = a;
                }
        }
    }
    for (; i < nact; i++)
        pv_accum(o + orow[rows[i]] * D, pe[rows[i]], n, v, NULL, D);
}

static void logits_rows_fast(const float *q, size_t nr, const float *kT, size_t D, size_t KB, float scale,
                             float (*s)[KB_MAX])
{
    if (attn_use_avx512()) logits_rows_avx512(q, nr, kT, D, KB, scale, s);
    else logits_rows_avx2(q, nr, kT, D, KB, scale, s);
}

static void pv_rows_fast(float *o, const size_t *orow, const int *rows, size_t nact, float (*pe)[KB_MAX],
                         size_t n, const float *v, size_t D)
{
    if (attn_use_avx512()) pv_rows_avx512(o, orow, rows, nact, pe, n, v, D);
    else pv_rows_avx2(o, orow, rows, nact, pe, n, v, D);
}

#endif

#if ATTN_HAVE_AVX2_PATH
/* Four rows of attn_pv_weighted over entries [0, n), 16 channels per pass over e (the
 * rows share each loaded value row). */
__attribute__((target("avx2")))
static void pv_weighted4_avx2(const float *const *p, float *const *o, size_t n, const float *restrict v,
                              const size_t *idx, size_t ld, size_t D)
{
    const float *p0 = p[0], *p1 = p[1], *p2 = p[2], *p3 = p[3];
    float *o0 = o[0], *o1 = o[1], *o2 = o[2], *o3 = o[3];
    size_t d = 0;
    for (; d + 16 <= D; d += 16) {      /* eight named accumulators: they stay in registers */
        v8f a00, a01, a10, a11, a20, a21, a30, a31;
        memcpy(&a00, o0 + d, 32); memcpy(&a01, o0 + d + 8, 32);
        memcpy(&a10, o1 + d, 32); memcpy(&a11, o1 + d + 8, 32);
        memcpy(&a20, o2 + d, 32); memcpy(&a21, o2 + d + 8, 32);
        memcpy(&a30, o3 + d, 32); memcpy(&a31, o3 + d + 8, 32);
        for (size_t e = 0; e < n; e++) {
            const float *vr = v + (idx ? idx[e] : e) * ld + d;
            v8f x0, x1;
            memcpy(&x0, vr, 32);
            memcpy(&x1, vr + 8, 32);
            const float b0 = p0[e], b1 = p1[e], b2 = p2[e], b3 = p3[e];
            a00 += b0 * x0; a01 += b0 * x1;
            a10 += b1 * x0; a11 += b1 * x1;
            a20 += b2 * x0; a21 += b2 * x1;
            a30 += b3 * x0; a31 += b3 * x1;
        }
        memcpy(o0 + d, &a00, 32); memcpy(o0 + d + 8, &a01, 32);
        memcpy(o1 + d, &a10, 32); memcpy(o1 + d + 8, &a11, 32);
        memcpy(o2 + d, &a20, 32); memcpy(o2 + d + 8, &a21, 32);
        memcpy(o3 + d, &a30, 32); memcpy(o3 + d + 8, &a31, 32);
    }
    for (; d < D; d++)                    /* channel tail */
        for (int r = 0; r < 4; r++) {
            float s = o[r][d];
            for (size_t e = 0; e < n; e++) s += p[r][e] * v[(idx ? idx[e] : e) * ld + d];
            o[r][d] = s;
        }
}
#endif

#if ATTN_HAVE_AVX2_PATH
/* The same with 16-float lanes where the CPU has AVX-512F: every element still takes one
 * multiply and one add in e order (C11 mode: no contraction into FMA), so the bits equal
 * the AVX2 and generic paths'; twice the channels per instruction. */

__attribute__((target("avx512f")))
static void pv_weighted4_avx512(const float *const *p, float *const *o, size_t n, const float *restrict v,
                                const size_t *idx, size_t D)
{
    const float *p0 = p[0], *p1 = p[1], *p2 = p[2], *p3 = p[3];
    float *o0 = o[0], *o1 = o[1], *o2 = o[2], *o3 = o[3];
    size_t d = 0;
    for (; d + 32 <= D; d += 32) {
        v16f a00, a01, a10, a11, a20, a21, a30, a31;
        memcpy(&a00, o0 + d, 64); memcpy(&a01, o0 + d + 16, 64);
        memcpy(&a10, o1 + d, 64); memcpy(&a11, o1 + d + 16, 64);
        memcpy(&a20, o2 + d, 64); memcpy(&a21, o2 + d + 16, 64);
        memcpy(&a30, o3 + d, 64); memcpy(&a31, o3 + d + 16, 64);
        for (size_t e = 0; e < n; e++) {
            const float *vr = v + (idx ? idx[e] : e) * D + d;
            v16f x0, x1;
            memcpy(&x0, vr, 64);
            memcpy(&x1, vr + 16, 64);
            const float b0 = p0[e], b1 = p1[e], b2 = p2[e], b3 = p3[e];
            a00 += b0 * x0; a01 += b0 * x1;
            a10 += b1 * x0; a11 += b1 * x1;
            a20 += b2 * x0; a21 += b2 * x1;
            a30 += b3 * x0; a31 += b3 * x1;
        }
        memcpy(o0 + d, &a00, 64); memcpy(o0 + d + 16, &a01, 64);
        memcpy(o1 + d, &a10, 64); memcpy(o1 + d + 16, &a11, 64);
        memcpy(o2 + d, &a20, 64); memcpy(o2 + d + 16, &a21, 64);
        memcpy(o3 + d, &a30, 64); memcpy(o3 + d + 16, &a31, 64);
    }
    if (d < D) {                          /* the channels left: the AVX2 kernel on them */
        const float *vd = v + d;
        float *od[4] = { o0 + d, o1 + d, o2 + d, o3 + d };
        pv_weighted4_avx2(p, od, n, vd, idx, D, D - d);
    }
}
#endif

#if ATTN_HAVE_AVX2_PATH
/* Eight rows at once (sixteen accumulators): each loaded value row serves twice the rows of
 * pv_weighted4_avx512 for the same loop overhead; every element still takes one multiply and
 * one add in e order (the same bits). 32 channels a pass; the channels left go to the
 * four-row kernel. */
#define PV8_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define PV8_LOAD(r) v16f a##r##0, a##r##1; memcpy(&a##r##0, o[r] + d, 64); memcpy(&a##r##1, o[r] + d + 16, 64);
#define PV8_STEP(r) { const float b = p[r][e]; a##r##0 += b * x0; a##r##1 += b * x1; }
#define PV8_STORE(r) memcpy(o[r] + d, &a##r##0, 64); memcpy(o[r] + d + 16, &a##r##1, 64);
__attribute__((target("avx512f")))
static void pv_weighted8_avx512(const float *const *p, float *const *o, size_t n, const float *restrict v,
                                const size_t *idx, size_t D)
{
    size_t d = 0;
    for (; d + 32 <= D; d += 32) {
        PV8_ROWS(PV8_LOAD)
        for (size_t e = 0; e < n; e++) {
            const float *vr = v + (idx ? idx[e] : e) * D + d;
            v16f x0, x1;
            memcpy(&x0, vr, 64);
            memcpy(&x1, vr + 16, 64);
            PV8_ROWS(PV8_STEP)
        }
        PV8_ROWS(PV8_STORE)
    }
    if (d < D)
        for (int h = 0; h < 2; h++) {
            const float *ph[4] = { p[4 * h] + 0, p[4 * h + 1], p[4 * h + 2], p[4 * h + 3] };
            float *oh[4] = { o[4 * h] + d, o[4 * h + 1] + d, o[4 * h + 2] + d, o[4 * h + 3] + d };
            pv_weighted4_avx2(ph, oh, n, v + d, idx, D, D - d);
        }
}
#undef PV8_ROWS
#undef PV8_LOAD
#undef PV8_STEP
#undef PV8_STORE
#endif

void attn_pv_weighted(const float *w, size_t ldw, size_t nr, size_t n, const float *v, const size_t *idx, size_t D,
                      float *o)
{
    const size_t EB = 64;                 /* entries per pass: their value rows stay in cache for every row */
    for (size_t e0 = 0; e0 < n; e0 += EB) {
        size_t ne = n - e0 < EB ? n - e0 : EB, r = 0;
        const size_t *ix = idx ? idx + e0 : NULL;
        const float *vb = idx ? v : v + e0 * D;
#if ATTN_HAVE_AVX2_PATH
        if (attn_use_avx512())
            for (; r + 8 <= nr; r += 8) {
                const float *p[8];
                float *os[8];
                for (int i = 0; i < 8; i++) { p[i] = w + (r + i) * ldw + e0; os[i] = o + (r + i) * D; }
                pv_weighted8_avx512(p, os, ne, vb, ix, D);
            }
        if (attn_use_avx2())
            for (; r + 4 <= nr; r += 4) {
                const float *p[4] = { w + r * ldw + e0, w + (r + 1) * ldw + e0, w + (r + 2) * ldw + e0,
                                      w + (r + 3) * ldw + e0 };
                float *os[4] = { o + r * D, o + (r + 1) * D, o + (r + 2) * D, o + (r + 3) * D };
                if (attn_use_avx512()) pv_weighted4_avx512(p, os, ne, vb, ix, D);
                else pv_weighted4_avx2(p, os, ne, vb, ix, D, D);
            }
#endif
        for (; r < nr; r++) pv_accum(o + r * D, w + r * ldw + e0, ne, vb, ix, D);
    }
}

size_t attn_keys_t_floats(size_t T, size_t D)
{
    size_t KB = key_block(D);
    return (T + KB - 1) / KB * KB * D;
}

void attn_transpose_keys(const float *k, size_t T, size_t D, float *kt)
{
    size_t KB = key_block(D);
    for (size_t j0 = 0; j0 < T; j0 += KB) {
        size_t nk = T - j0 < KB ? T - j0 : KB;
        float *blk = kt + j0 * D;           /* block j0 / KB of KB * D floats */
        for (size_t d = 0; d < D; d++) {
            float *dst = blk + d * KB;
            for (size_t j = 0; j < nk; j++) dst[j] = k[(j0 + j) * D + d];
            for (size_t j = nk; j < KB; j++) dst[j] = 0.0f;
        }
    }
}

/* attn_full_rows with the key blocks transposed here (kt_all NULL) or taken from
 * attn_transpose_keys, for G query heads of one kv head: head i's queries at q + i qhs, its
 * outputs at lse + i lhs, o + i lhs D, logits + i lhs T. Each key block (and its value rows)
 * serves every head while it is in cache; a row's arithmetic is the same as in a call of
 * its own, so the results are bit-identical to G calls. A block cut by the rows' last key
 * holds the next keys in its spare lanes instead of zeros: their logits are computed and
 * never read (no row sees them). */
#define GH 8            /* heads per pass over the key blocks (row states on the stack) */
static void full_rows(const float *q, size_t qhs, size_t G, const float *k, const float *v, const float *kt_all,
                      size_t T, size_t D, size_t t0, size_t t1, const attn_params *p, size_t lhs,
                      float *lse, float *o, float *logits)
{
    const size_t KB = key_block(D);
    float kT[KT_FLOATS];                  /* [D][KB] transposed key block */
    float s[RB][KB_MAX];                  /* logits of the block (one head at a time) */
    float pe[RB][KB_MAX];                 /* probabilities of the block (AVX2 path) */
    size_t orow[RB];                      /* output row of block row r */
    int active[RB];
    row_state st[GH][RB];
    const float scale = p->scale, c = p->softcap;
#if ATTN_HAVE_AVX2_PATH
    const int avx2 = attn_use_avx2();
#else
    const int avx2 = 0;
    (void)pe; (void)orow; (void)active;
#endif

    for (size_t i0 = 0; i0 < G; i0 += GH) {
      size_t gn = G - i0 < GH ? G - i0 : GH;
      for (size_t r0 = t0; r0 < t1; r0 += RB) {
        size_t nr = t1 - r0 < RB ? t1 - r0 : RB;
        for (size_t r = 0; r < nr; r++) orow[r] = r0 - t0 + r;
        for (size_t i = 0; i < gn; i++)
            for (size_t r = 0; r < nr; r++) {
                size_t h = i0 + i;
                st[i][r].m = -INFINITY; st[i][r].l = 0;
                if (o) memset(o + (h * lhs + r0 - t0 + r) * D, 0, D * sizeof *o);
                if (logits) {
                    float *lr = logits + (h * lhs + r0 - t0 + r) * T;
                    for (size_t j = 0; j < T; j++) lr[j] = -INFINITY;
                }
            }
        size_t jlo = attn_lo(r0, p->window);          /* first key any row sees */
        size_t jhi = r0 + nr;                          /* one past the last key */
        for (size_t j0 = jlo - jlo % KB; j0 < jhi; j0 += KB) {
            size_t nk = jhi - j0 < KB ? jhi - j0 : KB;
            const float *kTb = kT;
            if (kt_all) {
                kTb = kt_all + j0 * D;
            } else {
                /* transpose; pad lanes with 0 so the vector loop is uniform */
                for (size_t d = 0; d < D; d++) {
                    float *dst = kT + d * KB;
                    for (size_t j = 0; j < nk; j++) dst[j] = k[(j0 + j) * D + d];
                    for (size_t j = nk; j < KB; j++) dst[j] = 0.0f;
                }
            }
            for (size_t i = 0; i < gn; i++) {
                size_t h = i0 + i;
                const float *qh = q + h * qhs;
                float *oh = o ? o + h * lhs * D : NULL, *lh = logits ? logits + h * lhs * T : NULL;
#if ATTN_HAVE_AVX2_PATH
                if (avx2) logits_rows_fast(qh + r0 * D, nr, kTb, D, KB, scale, s);
#endif
                int nact = 0;
                for (size_t r = 0; r < nr; r++) {
                    float *sr = s[r];
                    if (!avx2) logits_block(qh + (r0 + r) * D, kTb, D, KB, scale, sr);
                    size_t t = r0 + r, lo = attn_lo(t, p->window);
                    /* visible keys of row t in this block: [a, b) relative to j0 */
                    size_t a = lo > j0 ? lo - j0 : 0;
                    size_t b = t + 1 > j0 ? t + 1 - j0 : 0;
                    if (b > nk) b = nk;
                    if (a >= b) continue;
                    if (c > 0)
                        for (size_t j = a; j < b; j++) sr[j] = cap(sr[j], c);
                    if (lh)
                        memcpy(lh + (t - t0) * T + j0 + a, sr + a, (b - a) * sizeof *sr);
                    float *orow_p = oh ? oh + (t - t0) * D : NULL;
                    if (!lse) continue;                     /* logits only */
                    if (avx2 && oh && a == 0 && b == nk) {    /* whole block: batched p.v below */
                        if (row_probs(&st[i][r], sr, nk, D, orow_p, pe[r])) active[nact++] = (int)r;
                    } else {
                        row_update(&st[i][r], sr + a, b - a, v + (j0 + a) * D, NULL, D, orow_p);
                    }
                }
#if ATTN_HAVE_AVX2_PATH
                if (nact) pv_rows_fast(oh, orow, active, (size_t)nact, pe, nk, v + j0 * D, D);
#endif
            }
        }
        for (size_t i = 0; i < gn && lse; i++)
            for (size_t r = 0; r < nr; r++) {
                size_t h = i0 + i;
                row_finish(&st[i][r], lse + h * lhs + (r0 - t0 + r), o ? o + (h * lhs + r0 - t0 + r) * D : NULL, D);
            }
      }
    }
}

void attn_full_rows(const float *q, const float *k, const float *v, size_t T, size_t D,
                    size_t t0, size_t t1, const attn_params *p,
                    float *lse, float *o, float *logits)
{
    full_rows(q, 0, 1, k, v, NULL, T, D, t0, t1, p, 0, lse, o, logits);
}

void attn_full_rows_kt(const float *q, const float *kt, const float *v, size_t T, size_t D,
                       size_t t0, size_t t1, const attn_params *p,
                       float *lse, float *o, float *logits)
{
    full_rows(q, 0, 1, NULL, v, kt, T, D, t0, t1, p, 0, lse, o, logits);
}

void attn_full_rows_heads(const float *q, size_t qhs, size_t G, const float *kt, const float *v, size_t T,
                          size_t D, size_t t0, size_t t1, const attn_params *p, size_t lhs,
                          float *lse, float *o, float *logits)
{
    full_rows(q, qhs, G, NULL, v, kt, T, D, t0, t1, p, lhs, lse, o, logits);
}

void attn_full_rows_heads_k(const float *q, size_t qhs, size_t G, const float *k, const float *v, size_t T,
                            size_t D, size_t t0, size_t t1, const attn_params *p, size_t lhs,
                            float *lse, float *o, float *logits)
{
    full_rows(q, qhs, G, k, v, NULL, T, D, t0, t1, p, lhs, lse, o, logits);
}

/* Starts a block of nb rows whose outputs begin at o (NULL: none): fresh softmax states,
 * zeroed outputs, block row r written to output row r (pv_rows_avx2 writes o + r * D).
 * Returns the most keys any row of the block sees. */
static size_t rows_begin(row_state *st, size_t *orow, const size_t *nvis, size_t nb, float *o, size_t D)
{
    size_t nmax = 0;
    for (size_t r = 0; r < nb; r++) {
        orow[r] = r;
        st[r].m = -INFINITY; st[r].l = 0;
        if (o) memset(o + r * D, 0, D * sizeof *o);
        if (nvis[r] > nmax) nmax = nvis[r];
    }
    return nmax;
}

void attn_rows_given(const float *z, size_t ldz, const size_t *nvis, size_t nr, const float *v, size_t D,
                     float *lse, float *o)
{
    const size_t KB = key_block(D);
    float pe[RB][KB_MAX];
    size_t orow[RB];
    int act[RB];
    row_state st[RB];
    const int avx2 = attn_use_avx2();
    (void)act;                            /* read only by the AVX2 path */
    for (size_t r0 = 0; r0 < nr; r0 += RB) {
        size_t nb = nr - r0 < RB ? nr - r0 : RB;
        size_t nmax = rows_begin(st, orow, nvis + r0, nb, o ? o + r0 * D : NULL, D);
        for (size_t j0 = 0; j0 < nmax; j0 += KB) {       /* full_rows' key blocks */
            size_t nk = nmax - j0 < KB ? nmax - j0 : KB;
            int nact = 0;
            for (size_t r = 0; r < nb; r++) {
                size_t nv = nvis[r0 + r];
                if (nv <= j0) continue;
                size_t b = nv - j0 < nk ? nv - j0 : nk;
                const float *sr = z + (r0 + r) * ldz + j0;
                float *orp = o ? o + (r0 + r) * D : NULL;
                if (avx2 && o && b == nk) {
                    if (row_probs(&st[r], sr, nk, D, orp, pe[r])) act[nact++] = (int)r;
                } else {
                    row_update(&st[r], sr, b, v + j0 * D, NULL, D, orp);
                }
            }
#if ATTN_HAVE_AVX2_PATH
            if (nact) pv_rows_fast(o + r0 * D, orow, act, (size_t)nact, pe, nk, v + j0 * D, D);
#endif
        }
        for (size_t r = 0; r < nb; r++)
            row_finish(&st[r], lse + r0 + r, o ? o + (r0 + r) * D : NULL, D);
    }
}

/* Keys of block [j0, j0 + nk) with the entries of row r at j >= cut[r] - j0 taken from kb:
 * logits of every row against ka's block, then, when some row's cut falls below the
 * block's end, against kb's block merged in. kT [D][EB_MAX] scratch, s/s2 [RB][KB_MAX]. */
/* Which key sources rows [0, nr) need in the entry block [j0, j0 + nk): ka (entries below a
 * row's cut) and kb (from it on). */
static void cut_sides(size_t nr, const size_t *kcut, const size_t *nvis, size_t j0, size_t nk, int *need_a,
                      int *need_b)
{
    *need_a = *need_b = 0;
    for (size_t r = 0; r < nr; r++) {
        if (nvis[r] <= j0) continue;
        *need_a |= kcut[r] > j0;
        *need_b |= kcut[r] < j0 + nk && nvis[r] > kcut[r];
    }
}

/* kT [D][EB_MAX] = k rows [j0, j0 + nk) transposed, pad lanes 0 */
static void cut_transpose(const float *k, size_t j0, size_t nk, size_t D, float *kT)
{
    for (size_t d = 0; d < D; d++) {
        float *t = kT + d * EB_MAX;
        for (size_t j = 0; j < nk; j++) t[j] = k[(j0 + j) * D + d];
        for (size_t j = nk; j < EB_MAX; j++) t[j] = 0.0f;
    }
}

/* The logits of rows [0, nr) over the entry block: s from the transposed ka block kTa, s2 from
 * kb's kTb, row r taking ka's below its cut and kb's from it on (into s). */
static void cut_logits(const float *q, size_t nr, const float *kTa, const float *kTb, int need_a, int need_b,
                       const size_t *kcut, size_t j0, size_t nk, size_t D, float scale,
                       float (*s)[KB_MAX], float (*s2)[KB_MAX], int avx2)
{
    for (int side = 0; side < 2; side++) {
        if (!(side ? need_b : need_a)) continue;
        const float *kT = side ? kTb : kTa;
        float (*dst)[KB_MAX] = side && need_a ? s2 : s;
#if ATTN_HAVE_AVX2_PATH
        if (avx2) logits_rows_fast(q, nr, kT, D, EB_MAX, scale, dst);
        else
#endif
        for (size_t r = 0; r < nr; r++) logits_block(q + r * D, kT, D, EB_MAX, scale, dst[r]);
    }
    (void)avx2;
    if (!(need_a && need_b)) return;
    for (size_t r = 0; r < nr; r++)          /* row r: ka below its cut, kb from it on */
        for (size_t j = kcut[r] > j0 ? kcut[r] - j0 : 0; j < nk; j++) s[r][j] = s2[r][j];
}

/* attn_rows_cut for G query heads (head h's rows at q + h qhs, outputs at lse + h lhs,
 * o + h lhs D, logits + h lhs ld): each entry block is transposed once for every head, and
 * its key and value rows serve all heads while in cache. A row's arithmetic is that of a call
 * of its own: bit-identical to G calls. */
static int rows_cut(const float *q, size_t qhs, size_t G, size_t nr, size_t D, const attn_params *p,
                    const attn_cut_src *src, const size_t *nvis, size_t ld, size_t lhs, float *lse, float *o,
                    float *logits)
{
    enum { EB = EB_MAX };
    if (D == 0 || D * EB > KT_FLOATS) return -1;
    float kT[2 * KT_FLOATS];              /* [2][D][EB] the transposed ka and kb blocks */
    float s[RB][KB_MAX], s2[RB][KB_MAX];  /* logits of the block: ka's, kb's (one head at a time) */
    float pe[RB][KB_MAX];                 /* probabilities of the block */
    size_t orow[RB];
    int act[2][RB];
    row_state st[GH][RB];
    const int avx2 = attn_use_avx2();
    float *kTa = kT, *kTb = kT + D * EB;
    (void)act;                            /* read only by the AVX2 path */
    for (size_t i0 = 0; i0 < G; i0 += GH) {
      size_t gn = G - i0 < GH ? G - i0 : GH;
      for (size_t r0 = 0; r0 < nr; r0 += RB) {
        size_t nb = nr - r0 < RB ? nr - r0 : RB;
        const size_t *nv = nvis + r0, *kc = src->kcut + r0, *vc = src->vcut + r0;
        size_t nmax = 0;
        for (size_t i = 0; i < gn; i++)
            nmax = rows_begin(st[i], orow, nv, nb, o ? o + ((i0 + i) * lhs + r0) * D : NULL, D);
        for (size_t j0 = 0; j0 < nmax; j0 += EB) {
            size_t nk = nmax - j0 < EB ? nmax - j0 : EB;
            int need_a, need_b;
            cut_sides(nb, kc, nv, j0, nk, &need_a, &need_b);
            if (need_a) cut_transpose(src->ka, j0, nk, D, kTa);
            if (need_b) cut_transpose(src->kb, j0, nk, D, kTb);
            for (size_t i = 0; i < gn; i++) {
                size_t h = i0 + i, na[2] = {0, 0};
                float *oh = o ? o + h * lhs * D : NULL, *lh = logits ? logits + h * lhs * ld : NULL;
                cut_logits(q + h * qhs + r0 * D, nb, kTa, kTb, need_a, need_b, kc, j0, nk, D, p->scale, s, s2, avx2);
                for (size_t r = 0; r < nb; r++) {
                    if (nv[r] <= j0) continue;
                    size_t b = nv[r] - j0 < nk ? nv[r] - j0 : nk;     /* attn_entries' block of ne */
                    float *sr = s[r], *orp = oh ? oh + (r0 + r) * D : NULL;
                    if (p->softcap > 0)
                        for (size_t j = 0; j < b; j++) sr[j] = cap(sr[j], p->softcap);
                    if (lh) memcpy(lh + (r0 + r) * ld + j0, sr, b * sizeof *sr);
                    if (!row_probs(&st[i][r], sr, b, D, orp, pe[r]) || !orp) continue;
                    size_t c = vc[r] <= j0 ? 0 : vc[r] - j0 < b ? vc[r] - j0 : b;  /* from va: [0, c) */
                    if (avx2 && b == EB && (c == 0 || c == b)) {
                        act[c == 0][na[c == 0]++] = (int)r;      /* whole block, one source: batched */
                        continue;
                    }
                    if (c) pv_accum(orp, pe[r], c, src->va + j0 * D, NULL, D);
                    if (c < b) pv_accum(orp, pe[r] + c, b - c, src->vb + (j0 + c) * D, NULL, D);
                }
#if ATTN_HAVE_AVX2_PATH
                if (na[0]) pv_rows_fast(oh + r0 * D, orow, act[0], na[0], pe, EB, src->va + j0 * D, D);
                if (na[1]) pv_rows_fast(oh + r0 * D, orow, act[1], na[1], pe, EB, src->vb + j0 * D, D);
#endif
            }
        }
        for (size_t i = 0; i < gn; i++)
            for (size_t r = 0; r < nb; r++) {
                size_t h = i0 + i;
                row_finish(&st[i][r], lse + h * lhs + r0 + r, o ? o + (h * lhs + r0 + r) * D : NULL, D);
            }
      }
    }
    return 0;
}

int attn_rows_cut(const float *q, size_t nr, size_t D, const attn_params *p, const attn_cut_src *src,
                  const size_t *nvis, size_t ld, float *lse, float *o, float *logits)
{
    return rows_cut(q, 0, 1, nr, D, p, src, nvis, ld, 0, lse, o, logits);
}

int attn_rows_cut_heads(const float *q, size_t qhs, size_t G, size_t nr, size_t D, const attn_params *p,
                        const attn_cut_src *src, const size_t *nvis, size_t ld, size_t lhs, float *lse, float *o,
                        float *logits)
{
    return rows_cut(q, qhs, G, nr, D, p, src, nvis, ld, lhs, lse, o, logits);
}

void attn_entries(const float *q, const float *kk, const float *vv, const size_t *idx,
                  const float *bias, size_t n, size_t D, const attn_params *p,
                  float *lse, float *o, float *logits)
{
    enum { EB = EB_MAX };
    float s[EB];
    row_state st = {-INFINITY, 0};
#if ATTN_HAVE_AVX2_PATH
    const int avx2 = attn_use_avx2();
#endif
    if (o) memset(o, 0, D * sizeof *o);
    for (size_t e0 = 0; e0 < n; e0 += EB) {
        size_t ne = n - e0 < EB ? n - e0 : EB;
        size_t e = 0;
        /* eight / four independent dot products at a time, each summed in d order
         * (== attn_logit): independent chains hide the add latency */
        for (; e + 8 <= ne; e += 8) {
            const float *kp[8];
            for (int i = 0; i < 8; i++) kp[i] = kk + (idx ? idx[e0 + e + i] : e0 + e + i) * D;
#if ATTN_HAVE_AVX2_PATH
            if (avx2) {
                float s8[8];
                logits8_avx2(q, kp, D, p->scale, s8);
                for (int i = 0; i < 8; i++) s[e + i] = cap(s8[i], p->softcap);
                continue;
            }
#endif
            float a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
            for (size_t d = 0; d < D; d++) {
                float qd = q[d];
                a0 += qd * kp[0][d]; a1 += qd * kp[1][d]; a2 += qd * kp[2][d]; a3 += qd * kp[3][d];
                a4 += qd * kp[4][d]; a5 += qd * kp[5][d]; a6 += qd * kp[6][d]; a7 += qd * kp[7][d];
            }
            s[e] = cap(p->scale * a0, p->softcap);
            s[e + 1] = cap(p->scale * a1, p->softcap);
            s[e + 2] = cap(p->scale * a2, p->softcap);
            s[e + 3] = cap(p->scale * a3, p->softcap);
            s[e + 4] = cap(p->scale * a4, p->softcap);
            s[e + 5] = cap(p->scale * a5, p->softcap);
            s[e + 6] = cap(p->scale * a6, p->softcap);
            s[e + 7] = cap(p->scale * a7, p->softcap);
        }
        for (; e + 4 <= ne; e += 4) {
            const float *k0 = kk + (idx ? idx[e0 + e] : e0 + e) * D;
            const float *k1 = kk + (idx ? idx[e0 + e + 1] : e0 + e + 1) * D;
            const float *k2 = kk + (idx ? idx[e0 + e + 2] : e0 + e + 2) * D;
            const float *k3 = kk + (idx ? idx[e0 + e + 3] : e0 + e + 3) * D;
            float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
            for (size_t d = 0; d < D; d++) {
                float qd = q[d];
                a0 += qd * k0[d]; a1 += qd * k1[d]; a2 += qd * k2[d]; a3 += qd * k3[d];
            }
            s[e] = cap(p->scale * a0, p->softcap);
            s[e + 1] = cap(p->scale * a1, p->softcap);
            s[e + 2] = cap(p->scale * a2, p->softcap);
            s[e + 3] = cap(p->scale * a3, p->softcap);
        }
        for (; e < ne; e++)
            s[e] = attn_logit(q, kk + (idx ? idx[e0 + e] : e0 + e) * D, D, p);
        if (bias)
            for (e = 0; e < ne; e++) s[e] += bias[e0 + e];
        if (logits) memcpy(logits + e0, s, ne * sizeof *s);
        row_update(&st, s, ne, idx ? vv : vv + e0 * D, idx ? idx + e0 : NULL, D, o);
    }
    row_finish(&st, lse, o, D);
}

void attn_entries_given(const float *z, const float *vv, const size_t *idx, size_t n, size_t D, float *lse,
                        float *o)
{
    row_state st = {-INFINITY, 0};
    if (o) memset(o, 0, D * sizeof *o);
    for (size_t e0 = 0; e0 < n; e0 += EB_MAX) {      /* attn_entries' blocks */
        size_t ne = n - e0 < EB_MAX ? n - e0 : EB_MAX;
        row_update(&st, z + e0, ne, idx ? vv : vv + e0 * D, idx ? idx + e0 : NULL, D, o);
    }
    row_finish(&st, lse, o, D);
}

/* ---- references: scalar, double accumulation ------------------------------------------ */

static double logit_ref(const float *q, const float *k, size_t D, const attn_params *p)
{
    double acc = 0;
    for (size_t d = 0; d < D; d++) acc += (double)q[d] * (double)k[d];
    double s = (double)p->scale * acc;
    if (p->softcap > 0) s = p->softcap * tanh(s / p->softcap);
    return s;
}

/* softmax over s [n] (double), o = sum p_e v_row(e) */
static void softmax_out_ref(const double *s, size_t n, const float *vv, const size_t *idx,
                            size_t D, float *lse, float *o)
{
    double m = -INFINITY;
    int has_nan = 0;
    for (size_t e = 0; e < n; e++) { if (s[e] > m) m = s[e]; if (s[e] != s[e]) has_nan = 1; }
    if (has_nan) {
        *lse = NAN;
        if (o) for (size_t d = 0; d < D; d++) o[d] = NAN;
        return;
    }
    if (m == -INFINITY) {
        *lse = -INFINITY;
        if (o) memset(o, 0, D * sizeof *o);
        return;
    }
    double l = 0;
    for (size_t e = 0; e < n; e++) l += exp(s[e] - m);
    *lse = (float)(m + log(l));
    if (!o) return;
    for (size_t d = 0; d < D; d++) {
        double acc = 0;
        for (size_t e = 0; e < n; e++)
            acc += exp(s[e] - m) / l * (double)vv[(idx ? idx[e] : e) * D + d];
        o[d] = (float)acc;
    }
}

void attn_full_rows_ref(const float *q, const float *k, const float *v, size_t T, size_t D,
                        size_t t0, size_t t1, const attn_params *p,
                        float *lse, float *o, float *logits)
{
    for (size_t t = t0; t < t1; t++) {
        size_t lo = attn_lo(t, p->window), n = t + 1 - lo;
        double s[n];            /* VLA: the reference is for test-sized inputs */
        for (size_t j = lo; j <= t; j++) s[j - lo] = logit_ref(q + t * D, k + j * D, D, p);
        if (logits) {
            float *lr = logits + (t - t0) * T;
            for (size_t j = 0; j < T; j++) lr[j] = (j >= lo && j <= t) ? (float)s[j - lo] : -INFINITY;
        }
        softmax_out_ref(s, n, v + lo * D, NULL, D, lse + (t - t0), o ? o + (t - t0) * D : NULL);
    }
}

void attn_entries_ref(const float *q, const float *kk, const float *vv, const size_t *idx,
                      const float *bias, size_t n, size_t D, const attn_params *p,
                      float *lse, float *o, float *logits)
{
    double s[n ? n : 1];
    for (size_t e = 0; e < n; e++) {
        s[e] = logit_ref(q, kk + (idx ? idx[e] : e) * D, D, p);
        if (bias) s[e] += bias[e];
        if (logits) logits[e] = (float)s[e];
    }
    softmax_out_ref(s, n, vv, idx, D, lse, o);
}

/* ---- double panels: dot[r][c] = sum over d of x[r][d] * panel[d][c] ----------------------
 * Used where a few float rows meet many: criticalkv's value norms (rows of V against W_O's
 * columns) and merging's cosine similarities (evicted keys against kept keys). Every sum
 * starts from 0 and adds d = 0, 1, ... in order with separate roundings (no FMA), the order a
 * loop per pair has; the products of two floats held as doubles are exact. */
typedef double v2d __attribute__((vector_size(16)));    /* SSE2: every x86-64 */

/* Columns [c0, c0 + 4) of the panel for the ATTN_PANEL_ROWS rows. */
static void panel_dot4(const double *x, size_t D, const double *panel, size_t c0, double *dot)
{
    v2d a00 = {0, 0}, a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    for (size_t d = 0; d < D; d++) {
        v2d k0, k1;
        memcpy(&k0, panel + d * ATTN_PANEL_COLS + c0, sizeof k0);
        memcpy(&k1, panel + d * ATTN_PANEL_COLS + c0 + 2, sizeof k1);
        const v2d x0 = {x[d], x[d]}, x1 = {x[D + d], x[D + d]};
        const v2d x2 = {x[2 * D + d], x[2 * D + d]}, x3 = {x[3 * D + d], x[3 * D + d]};
        a00 += x0 * k0; a01 += x0 * k1;
        a10 += x1 * k0; a11 += x1 * k1;
        a20 += x2 * k0; a21 += x2 * k1;
        a30 += x3 * k0; a31 += x3 * k1;
    }
    const v2d a[ATTN_PANEL_ROWS][2] = { { a00, a01 }, { a10, a11 }, { a20, a21 }, { a30, a31 } };
    for (size_t r = 0; r < ATTN_PANEL_ROWS; r++) memcpy(dot + r * ATTN_PANEL_COLS + c0, a[r], sizeof a[r]);
}

#if ATTN_HAVE_AVX2_PATH
static int attn_use_fma(void)
{
    static int cached = -1;
    if (cached < 0) cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
    return cached && isa_limit >= ATTN_ISA_AVX2;
}

/* The whole panel with 4-double lanes and one FMA per product: x and the panel hold float
 * values (attn.h), so x * k is exact in double and round(x * k + a) equals round(round(x * k)
 * + a), the separate multiply and add of the other paths: the same bits, half the
 * instructions. */
__attribute__((target("avx2,fma")))
static void panel_dot_fma(const double *x, size_t D, const double *panel, size_t c0, double *dot)
{
    __m256d a00 = _mm256_setzero_pd(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    for (size_t d = 0; d < D; d++) {
        const __m256d k0 = _mm256_loadu_pd(panel + d * ATTN_PANEL_COLS + c0);
        const __m256d k1 = _mm256_loadu_pd(panel + d * ATTN_PANEL_COLS + c0 + 4);
        const __m256d x0 = _mm256_broadcast_sd(x + d), x1 = _mm256_broadcast_sd(x + D + d);
        const __m256d x2 = _mm256_broadcast_sd(x + 2 * D + d), x3 = _mm256_broadcast_sd(x + 3 * D + d);
        a00 = _mm256_fmadd_pd(x0, k0, a00); a01 = _mm256_fmadd_pd(x0, k1, a01);
        a10 = _mm256_fmadd_pd(x1, k0, a10); a11 = _mm256_fmadd_pd(x1, k1, a11);
        a20 = _mm256_fmadd_pd(x2, k0, a20); a21 = _mm256_fmadd_pd(x2, k1, a21);
        a30 = _mm256_fmadd_pd(x3, k0, a30); a31 = _mm256_fmadd_pd(x3, k1, a31);
    }
    double *o = dot + c0;
    _mm256_storeu_pd(o, a00); _mm256_storeu_pd(o + 4, a01);
    _mm256_storeu_pd(o + ATTN_PANEL_COLS, a10); _mm256_storeu_pd(o + ATTN_PANEL_COLS + 4, a11);
    _mm256_storeu_pd(o + 2 * ATTN_PANEL_COLS, a20); _mm256_storeu_pd(o + 2 * ATTN_PANEL_COLS + 4, a21);
    _mm256_storeu_pd(o + 3 * ATTN_PANEL_COLS, a30); _mm256_storeu_pd(o + 3 * ATTN_PANEL_COLS + 4, a31);
}

/* The whole panel (16 columns: two 8-double lanes per row, 8 accumulators) where the CPU has
 * AVX-512F, one FMA per product as above. */
__attribute__((target("avx512f")))
static void panel_dot_avx512(const double *x, size_t D, const double *panel, double *dot)
{
    __m512d a00 = _mm512_setzero_pd(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    for (size_t d = 0; d < D; d++) {
        const __m512d k0 = _mm512_loadu_pd(panel + d * ATTN_PANEL_COLS);
        const __m512d k1 = _mm512_loadu_pd(panel + d * ATTN_PANEL_COLS + 8);
        const __m512d x0 = _mm512_set1_pd(x[d]), x1 = _mm512_set1_pd(x[D + d]);
        const __m512d x2 = _mm512_set1_pd(x[2 * D + d]), x3 = _mm512_set1_pd(x[3 * D + d]);
        a00 = _mm512_fmadd_pd(x0, k0, a00); a01 = _mm512_fmadd_pd(x0, k1, a01);
        a10 = _mm512_fmadd_pd(x1, k0, a10); a11 = _mm512_fmadd_pd(x1, k1, a11);
        a20 = _mm512_fmadd_pd(x2, k0, a20); a21 = _mm512_fmadd_pd(x2, k1, a21);
        a30 = _mm512_fmadd_pd(x3, k0, a30); a31 = _mm512_fmadd_pd(x3, k1, a31);
    }
    _mm512_storeu_pd(dot, a00); _mm512_storeu_pd(dot + 8, a01);
    _mm512_storeu_pd(dot + ATTN_PANEL_COLS, a10); _mm512_storeu_pd(dot + ATTN_PANEL_COLS + 8, a11);
    _mm512_storeu_pd(dot + 2 * ATTN_PANEL_COLS, a20); _mm512_storeu_pd(dot + 2 * ATTN_PANEL_COLS + 8, a21);
    _mm512_storeu_pd(dot + 3 * ATTN_PANEL_COLS, a30); _mm512_storeu_pd(dot + 3 * ATTN_PANEL_COLS + 8, a31);
}

/* Columns [c0, c0 + 8) with 4-double lanes: the same products and sums in the same order. */
__attribute__((target("avx2")))
static void panel_dot_avx2(const double *x, size_t D, const double *panel, size_t c0, double *dot)
{
    v4d a00 = {0, 0, 0, 0}, a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    for (size_t d = 0; d < D; d++) {
        v4d k0, k1;
        memcpy(&k0, panel + d * ATTN_PANEL_COLS + c0, sizeof k0);
        memcpy(&k1, panel + d * ATTN_PANEL_COLS + c0 + 4, sizeof k1);
        const v4d x0 = {x[d], x[d], x[d], x[d]}, x1 = {x[D + d], x[D + d], x[D + d], x[D + d]};
        const v4d x2 = {x[2 * D + d], x[2 * D + d], x[2 * D + d], x[2 * D + d]};
        const v4d x3 = {x[3 * D + d], x[3 * D + d], x[3 * D + d], x[3 * D + d]};
        a00 += x0 * k0; a01 += x0 * k1;
        a10 += x1 * k0; a11 += x1 * k1;
        a20 += x2 * k0; a21 += x2 * k1;
        a30 += x3 * k0; a31 += x3 * k1;
    }
    const v4d a[ATTN_PANEL_ROWS][2] = { { a00, a01 }, { a10, a11 }, { a20, a21 }, { a30, a31 } };
    for (size_t r = 0; r < ATTN_PANEL_ROWS; r++) memcpy(dot + r * ATTN_PANEL_COLS + c0, a[r], sizeof a[r]);
}
#endif

#if ATTN_HAVE_AVX2_PATH
/* Eight rows at once: sixteen accumulators, twice the FMA chains the four-row kernel has, so
 * that the FMA latency is hidden with room to spare (the four-row kernel's eight chains just
 * cover latency x ports and ran at ~64% of the double FMA peak in criticalkv's value norms).
 * Every dot is still its own sum over d in order: the same bits as two four-row calls. */
__attribute__((target("avx512f")))
static void panel_dot8_avx512(const double *x, size_t D, const double *panel, double *dot)
{
    /* sixteen named accumulators (an array would live in memory at -O2) */
#define PD8_ROWS(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7)
#define PD8_DECL(r) __m512d a##r##0 = _mm512_setzero_pd(), a##r##1 = a##r##0;
#define PD8_STEP(r) { const __m512d xr = _mm512_set1_pd(x[r * D + d]); \
                      a##r##0 = _mm512_fmadd_pd(xr, k0, a##r##0); a##r##1 = _mm512_fmadd_pd(xr, k1, a##r##1); }
#define PD8_STORE(r) _mm512_storeu_pd(dot + r * ATTN_PANEL_COLS, a##r##0); \
                     _mm512_storeu_pd(dot + r * ATTN_PANEL_COLS + 8, a##r##1);
    PD8_ROWS(PD8_DECL)
    for (size_t d = 0; d < D; d++) {
        const __m512d k0 = _mm512_loadu_pd(panel + d * ATTN_PANEL_COLS);
        const __m512d k1 = _mm512_loadu_pd(panel + d * ATTN_PANEL_COLS + 8);
        PD8_ROWS(PD8_STEP)
    }
    PD8_ROWS(PD8_STORE)
#undef PD8_ROWS
#undef PD8_DECL
#undef PD8_STEP
#undef PD8_STORE
}
#endif

void attn_panel_dot_rows(const double *x, size_t nrows, size_t D, const double *panel, double *dot)
{
    size_t r = 0;
#if ATTN_HAVE_AVX2_PATH
    if (attn_use_avx512())
        for (; r + 8 <= nrows; r += 8) panel_dot8_avx512(x + r * D, D, panel, dot + r * ATTN_PANEL_COLS);
#endif
    for (; r < nrows; r += ATTN_PANEL_ROWS) attn_panel_dot(x + r * D, D, panel, dot + r * ATTN_PANEL_COLS);
}

void attn_panel_dot(const double *x, size_t D, const double *panel, double *dot)
{
#if ATTN_HAVE_AVX2_PATH
    if (attn_use_avx512()) { panel_dot_avx512(x, D, panel, dot); return; }
    if (attn_use_fma()) {
        for (size_t c0 = 0; c0 < ATTN_PANEL_COLS; c0 += 8) panel_dot_fma(x, D, panel, c0, dot);
        return;
    }
    if (attn_use_avx2()) {
        for (size_t c0 = 0; c0 < ATTN_PANEL_COLS; c0 += 8) panel_dot_avx2(x, D, panel, c0, dot);
        return;
    }
#endif
    for (size_t c0 = 0; c0 < ATTN_PANEL_COLS; c0 += 4) panel_dot4(x, D, panel, c0, dot);
}

/* ---- Gram matrix of float rows ------------------------------------------------------------
 * M[a][b] += sum over rows r in order of (double)x[r][a] * x[r][b]. The product of two
 * floats is exact in double, so M[a][b] and M[b][a] are the same sums: the upper triangle
 * (b >= a) is accumulated and the lower one copied from it. */
static void gram_generic(const float *x, size_t n, size_t D, double *M)
{
    for (size_t r = 0; r < n; r++) {
        const float *xr = x + r * D;
        for (size_t a = 0; a < D; a++) {
            const double xa = xr[a];
            double *m = M + a * D;
            for (size_t b = a; b < D; b++) m[b] += xa * xr[b];
        }
    }
}

#if ATTN_HAVE_AVX2_PATH
enum { GRAM_CH = 64 };      /* rows per chunk: converted to double once, then every tile */

/* The chunk loop both tiled kernels share: rows [r0, r0 + nr) converted to double into xd
 * (CVT, every STEP floats), then the tiles of RA rows a x CB columns b that reach the upper
 * triangle, each TILE(a0, b0) over the chunk's rows. */
#define GRAM_CHUNKS(STEP, CVT, RA, CB, TILE)                                                      \
    for (size_t r0 = 0; r0 < n; r0 += GRAM_CH) {                                                  \
        size_t nr = n - r0 < GRAM_CH ? n - r0 : GRAM_CH;                                           \
        for (size_t i = 0; i < nr * D; i += (STEP)) CVT;                                           \
        for (size_t a0 = 0; a0 < D; a0 += (RA))                                                    \
            for (size_t b0 = a0 / (CB) * (CB); b0 < D; b0 += (CB)) TILE(M, xd, nr, D, a0, b0);     \
    }

/* Tiles of 4 rows a x 8 columns b of M (those reaching the upper triangle), each held in
 * registers over the chunk's rows in order: per element the same exact products added in
 * the same order (FMA = the separate multiply and add, the product being exact). D % 8 == 0;
 * xd [GRAM_CH][D] scratch. */
__attribute__((target("avx2,fma"), always_inline))
static inline void gram_tile_fma(double *M, const double *xd, size_t nr, size_t D, size_t a0, size_t b0)
{
    double *m0 = M + a0 * D + b0, *m1 = m0 + D, *m2 = m1 + D, *m3 = m2 + D;
    __m256d c00 = _mm256_loadu_pd(m0), c01 = _mm256_loadu_pd(m0 + 4);
    __m256d c10 = _mm256_loadu_pd(m1), c11 = _mm256_loadu_pd(m1 + 4);
    __m256d c20 = _mm256_loadu_pd(m2), c21 = _mm256_loadu_pd(m2 + 4);
    __m256d c30 = _mm256_loadu_pd(m3), c31 = _mm256_loadu_pd(m3 + 4);
    for (size_t r = 0; r < nr; r++) {
        const double *xr = xd + r * D;
        const __m256d k0 = _mm256_loadu_pd(xr + b0), k1 = _mm256_loadu_pd(xr + b0 + 4);
        const __m256d x0 = _mm256_broadcast_sd(xr + a0), x1 = _mm256_broadcast_sd(xr + a0 + 1);
        const __m256d x2 = _mm256_broadcast_sd(xr + a0 + 2), x3 = _mm256_broadcast_sd(xr + a0 + 3);
        c00 = _mm256_fmadd_pd(x0, k0, c00); c01 = _mm256_fmadd_pd(x0, k1, c01);
        c10 = _mm256_fmadd_pd(x1, k0, c10); c11 = _mm256_fmadd_pd(x1, k1, c11);
        c20 = _mm256_fmadd_pd(x2, k0, c20); c21 = _mm256_fmadd_pd(x2, k1, c21);
        c30 = _mm256_fmadd_pd(x3, k0, c30); c31 = _mm256_fmadd_pd(x3, k1, c31);
    }
    _mm256_storeu_pd(m0, c00); _mm256_storeu_pd(m0 + 4, c01);
    _mm256_storeu_pd(m1, c10); _mm256_storeu_pd(m1 + 4, c11);
    _mm256_storeu_pd(m2, c20); _mm256_storeu_pd(m2 + 4, c21);
    _mm256_storeu_pd(m3, c30); _mm256_storeu_pd(m3 + 4, c31);
}

__attribute__((target("avx2,fma")))
static void gram_fma(const float *x, size_t n, size_t D, double *M, double *xd)
{
    GRAM_CHUNKS(4, _mm256_storeu_pd(xd + i, _mm256_cvtps_pd(_mm_loadu_ps(x + r0 * D + i))), 4, 8, gram_tile_fma)
}

/* Tiles of 8 rows a x 16 columns b (sixteen accumulators, as panel_dot8_avx512: the four-row
 * AVX2 tile's eight chains left the FMA ports idle). */
__attribute__((target("avx512f"), always_inline))
static inline void gram_tile_avx512(double *M, const double *xd, size_t nr, size_t D, size_t a0, size_t b0)
{
#define GR8_ROWS(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7)
#define GR8_LOAD(r) __m512d c##r##0 = _mm512_loadu_pd(M + (a0 + r) * D + b0), \
                            c##r##1 = _mm512_loadu_pd(M + (a0 + r) * D + b0 + 8);
#define GR8_STEP(r) { const __m512d xa = _mm512_set1_pd(xr[a0 + r]); \
                      c##r##0 = _mm512_fmadd_pd(xa, k0, c##r##0); c##r##1 = _mm512_fmadd_pd(xa, k1, c##r##1); }
#define GR8_STORE(r) _mm512_storeu_pd(M + (a0 + r) * D + b0, c##r##0); \
                     _mm512_storeu_pd(M + (a0 + r) * D + b0 + 8, c##r##1);
    GR8_ROWS(GR8_LOAD)
    for (size_t r = 0; r < nr; r++) {
        const double *xr = xd + r * D;
        const __m512d k0 = _mm512_loadu_pd(xr + b0), k1 = _mm512_loadu_pd(xr + b0 + 8);
        GR8_ROWS(GR8_STEP)
    }
    GR8_ROWS(GR8_STORE)
#undef GR8_ROWS
#undef GR8_LOAD
#undef GR8_STEP
#undef GR8_STORE
}

/* D % 16 == 0. */
__attribute__((target("avx512f")))
static void gram_avx512(const float *x, size_t n, size_t D, double *M, double *xd)
{
    GRAM_CHUNKS(8, _mm512_storeu_pd(xd + i, _mm512_cvtps_pd(_mm256_loadu_ps(x + r0 * D + i))), 8, 16,
                gram_tile_avx512)
}
#undef GRAM_CHUNKS
#endif

int attn_gram_acc(const float *x, size_t n, size_t D, double *M)
{
#if ATTN_HAVE_AVX2_PATH
    if ((attn_use_avx512() && D % 16 == 0 && n) || (attn_use_fma() && D % 8 == 0 && n)) {
        double *xd = malloc(GRAM_CH * D * sizeof *xd);
        if (!xd) return -1;
        if (attn_use_avx512() && D % 16 == 0) gram_avx512(x, n, D, M, xd);
        else gram_fma(x, n, D, M, xd);
        free(xd);
    } else
#endif
        gram_generic(x, n, D, M);
    for (size_t a = 1; a < D; a++)
        for (size_t b = 0; b < a; b++) M[a * D + b] = M[b * D + a];
    return 0;
}
