/* Packed-B fp32 GEMM for the read-out's per-layer products (gemm.h).
 *
 * B [K][N] is packed into panels of NR = 32 columns, [panel][K][NR], zero-padded past N.
 * gemm_add walks K in blocks of KC rows (a panel's block, 32 KiB, stays in L1 while every
 * row tile of A passes over it), the panels, then tiles of MR = 8 rows: 16 accumulators of
 * 16 floats, per k two loads of B, eight broadcasts of A and sixteen FMAs (FMA-bound: two
 * per cycle). A tile's partial sums go back to c between K blocks (exact fp32 stores), so an
 * element's value is c + a[0] b[0] + a[1] b[1] + ... in k order, one FMA each, however the
 * rows and columns are tiled. Rows past the last full tile take the one-row kernel with the
 * same per-element sequence.
 */
#include <string.h>

#include "attn.h"
#include "gemm.h"

#define NR 32           /* columns per panel: two 16-float vectors */
#define MR 8            /* rows per tile */
#define KC 256          /* k per block: a panel's block is KC * NR * 4 = 32 KiB */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(ATTN_NO_AVX2)
#include <immintrin.h>
#define GEMM_HAVE_AVX512 1
#else
#define GEMM_HAVE_AVX512 0
#endif

size_t gemm_b_floats(size_t K, size_t N)
{
    if (!GEMM_HAVE_AVX512 || attn_isa() < ATTN_ISA_AVX512 || !K || !N) return 0;
    size_t np = (N + NR - 1) / NR;
    return K > (size_t)-1 / NR / sizeof(float) / np ? 0 : np * K * NR;
}

const char *gemm_path(void)
{
    return gemm_b_floats(1, 1) ? "kvtrace AVX-512F (W_O packed per work item)" : "cblas_sgemm";
}

void gemm_pack_b(const float *b, size_t K, size_t N, size_t ldb, float *buf, gemm_b *out)
{
    size_t np = (N + NR - 1) / NR;
    for (size_t k = 0; k < K; k++)              /* row k of B: one read, a row of each panel */
        for (size_t j = 0; j < np; j++) {
            size_t j0 = j * NR, w = N - j0 < NR ? N - j0 : NR;
            float *dst = buf + (j * K + k) * NR;
            memcpy(dst, b + k * ldb + j0, w * sizeof *dst);
            for (size_t x = w; x < NR; x++) dst[x] = 0.0f;
        }
    out->K = K; out->N = N; out->np = np; out->p = buf;
}

#if GEMM_HAVE_AVX512
/* c [MR rows][NR] (masked to the panel's columns) += a [MR][kc] @ bp [kc][NR]. */
#define ROWS8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define ACC_DECL(r) __m512 c##r##0 = _mm512_maskz_loadu_ps(m0, c + (r) * ldc), \
                           c##r##1 = _mm512_maskz_loadu_ps(m1, c + (r) * ldc + 16);
#define ACC_FMA(r) { __m512 x = _mm512_set1_ps(a[(r) * lda + k]);                   \
                     c##r##0 = _mm512_fmadd_ps(x, b0, c##r##0); c##r##1 = _mm512_fmadd_ps(x, b1, c##r##1); }
#define ACC_STORE(r) _mm512_mask_storeu_ps(c + (r) * ldc, m0, c##r##0); \
                     _mm512_mask_storeu_ps(c + (r) * ldc + 16, m1, c##r##1);

__attribute__((target("avx512f")))
static void kern8(size_t kc, const float *a, size_t lda, const float *bp, float *c, size_t ldc, __mmask16 m0,
                  __mmask16 m1)
{
    ROWS8(ACC_DECL)
    for (size_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_loadu_ps(bp + k * NR), b1 = _mm512_loadu_ps(bp + k * NR + 16);
        ROWS8(ACC_FMA)
    }
    ROWS8(ACC_STORE)
}

__attribute__((target("avx512f")))
static void kern1(size_t kc, const float *a, size_t lda, const float *bp, float *c, size_t ldc, __mmask16 m0,
                  __mmask16 m1)
{
    ACC_DECL(0)
    for (size_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_loadu_ps(bp + k * NR), b1 = _mm512_loadu_ps(bp + k * NR + 16);
        ACC_FMA(0)
    }
    ACC_STORE(0)
}
#undef ROWS8
#undef ACC_DECL
#undef ACC_FMA
#undef ACC_STORE

void gemm_add(const gemm_b *p, const float *a, size_t lda, size_t M, float *c, size_t ldc)
{
    size_t K = p->K, N = p->N;
    for (size_t k0 = 0; k0 < K; k0 += KC) {
        size_t kc = K - k0 < KC ? K - k0 : KC;
        for (size_t j = 0; j < p->np; j++) {
            size_t j0 = j * NR, w = N - j0 < NR ? N - j0 : NR;
            __mmask16 m0 = (__mmask16)(w >= 16 ? 0xFFFF : (1u << w) - 1);
            __mmask16 m1 = (__mmask16)(w >= 32 ? 0xFFFF : w > 16 ? (1u << (w - 16)) - 1 : 0);
            const float *bp = p->p + (j * K + k0) * NR;
            size_t i = 0;
            for (; i + MR <= M; i += MR) kern8(kc, a + i * lda + k0, lda, bp, c + i * ldc + j0, ldc, m0, m1);
            for (; i < M; i++) kern1(kc, a + i * lda + k0, lda, bp, c + i * ldc + j0, ldc, m0, m1);
        }
    }
}
#else
void gemm_add(const gemm_b *p, const float *a, size_t lda, size_t M, float *c, size_t ldc)
{
    (void)p; (void)a; (void)lda; (void)M; (void)c; (void)ldc;   /* gemm_pack_b gave no B */
}
#endif
