/* replay/gemm.c: the read-out's packed-B product against two independent references.
 *
 *   1. a naive fp32 loop, c = fmaf(a[k], b[k], c) for k = 0, 1, ...: gemm.h promises exactly
 *      this sequence per element, so the bits must be equal (any tiling, row tail, column
 *      tail, K block boundary);
 *   2. the exact sum in double: within gamma_K (|c0| + sum |a||b|), gamma_K = K u / (1 - K u),
 *      u = 2^-24 (the error bound of a sequential fp32 dot product; the double reference's
 *      own error is below 2^-53 of the same sum).
 * Also: a row computed alone has the bits it has in a call over many rows, and with
 * attn_set_isa_limit below AVX-512F the product is not offered (gemm_b_floats 0). On a CPU
 * without AVX-512F the kernel checks are skipped (said on stdout); the rest still runs.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "gemm.h"

#define RNG_SEED 0x6e6d
#include "rng_testhelp.h"

static int fails = 0, checks = 0;

static void check_true(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

static float frand(void) { return (float)(2 * rng_unif() - 1); }   /* uniform in (-1, 1) */

/* One product of M x K by K x N with padded strides, checked four ways. */
static void one_case(size_t M, size_t K, size_t N)
{
    size_t lda = K + 3, ldb = N + 5, ldc = N + 1;
    float *a = malloc(M * lda * sizeof *a), *b = malloc(K * ldb * sizeof *b);
    float *c = malloc(M * ldc * sizeof *c), *c0 = malloc(M * ldc * sizeof *c0), *c1 = malloc(ldc * sizeof *c1);
    float *buf = malloc(gemm_b_floats(K, N) * sizeof *buf);
    if (!a || !b || !c || !c0 || !c1 || !buf) { printf("FAIL out of memory\n"); exit(1); }
    for (size_t i = 0; i < M * lda; i++) a[i] = frand();
    for (size_t i = 0; i < K * ldb; i++) b[i] = frand();
    for (size_t i = 0; i < M * ldc; i++) c0[i] = c[i] = frand();
    gemm_b pk;
    gemm_pack_b(b, K, N, ldb, buf, &pk);
    gemm_add(&pk, a, lda, M, c, ldc);
    const double u = ldexp(1.0, -24), gam = (double)K * u / (1.0 - (double)K * u);
    int bits = 1, bound = 1, pad = 1, alone = 1;
    for (size_t i = 0; i < M; i++) {
        for (size_t j = 0; j < N; j++) {
            float f = c0[i * ldc + j];
            double e = c0[i * ldc + j], mag = fabs(e);
            for (size_t k = 0; k < K; k++) {
                f = fmaf(a[i * lda + k], b[k * ldb + j], f);
                e += (double)a[i * lda + k] * b[k * ldb + j];
                mag += fabs((double)a[i * lda + k] * b[k * ldb + j]);
            }
            float got = c[i * ldc + j];
            if (memcmp(&got, &f, sizeof f)) bits = 0;
            if (!(fabs(got - e) <= gam * mag)) bound = 0;
        }
        if (c[i * ldc + N] != c0[i * ldc + N]) pad = 0;       /* the column past N untouched */
    }
    /* row M/2 alone: the bits it got among the others */
    size_t r = M / 2;
    memcpy(c1, c0 + r * ldc, ldc * sizeof *c1);
    gemm_add(&pk, a + r * lda, lda, 1, c1, ldc);
    if (memcmp(c1, c + r * ldc, N * sizeof *c1)) alone = 0;
    char what[160];
    snprintf(what, sizeof what, "M=%zu K=%zu N=%zu: bits of the sequential fmaf loop", M, K, N);
    check_true(what, bits);
    snprintf(what, sizeof what, "M=%zu K=%zu N=%zu: within gamma_K of the double sum", M, K, N);
    check_true(what, bound);
    snprintf(what, sizeof what, "M=%zu K=%zu N=%zu: columns past N untouched", M, K, N);
    check_true(what, pad);
    snprintf(what, sizeof what, "M=%zu K=%zu N=%zu: a row alone has the same bits", M, K, N);
    check_true(what, alone);
    free(a); free(b); free(c); free(c0); free(c1); free(buf);
}

int main(void)
{
    int prev = attn_set_isa_limit(ATTN_ISA_AVX2);
    check_true("no packed product below AVX-512F", gemm_b_floats(64, 64) == 0);
    attn_set_isa_limit(prev);
    check_true("no packed product for K = 0 or N = 0", gemm_b_floats(0, 8) == 0 && gemm_b_floats(8, 0) == 0);
    if (!gemm_b_floats(1, 1)) {
        printf("skip: no AVX-512F path on this CPU (the read-out uses cblas_sgemm)\n");
    } else {
        /* tiles of 8 rows and their tail, panels of 32 columns and a partial one (a mask
         * inside the first or the second half), K blocks of 256 and their tail */
        static const size_t cases[][3] = {
            {1, 1, 1}, {3, 5, 7}, {8, 16, 32}, {9, 255, 17}, {16, 256, 48}, {17, 257, 33}, {24, 513, 64},
            {13, 700, 95}, {64, 512, 128},
        };
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) one_case(cases[i][0], cases[i][1], cases[i][2]);
    }
    printf("test_gemm: %d checks, %d failures\n", checks, fails);
    return fails != 0;
}
