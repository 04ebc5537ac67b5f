/* The read-out's per-layer product h += dO @ W (readout.c) with W packed once and shared by
 * every configuration of a work item (replay/gemm.c).
 *
 * A sweep multiplies NC perturbations dO_c [M][K] by the same rows W [K][N] of W_O: a BLAS
 * call per configuration repacks W every time, and the BLAS runs the kernel it picked at
 * load time (OpenBLAS: OPENBLAS_CORETYPE, or its CPU detection, which may choose an AVX2
 * kernel on a CPU with AVX-512F). gemm_pack_b packs W once into column panels; gemm_add
 * then runs an AVX-512F register-blocked kernel over them.
 *
 * Arithmetic: every element is c + sum over k in increasing order of a[k] * b[k], one fused
 * multiply-add per term in fp32, whatever the tiling (rows per tile, the row tail, the
 * column panels, the K blocks, which store and reload the exact fp32 partial sums): the same
 * bits on any thread count and for any split of the rows. Its error is that of a
 * sequential fp32 dot product, |err| <= gamma_K (|c| + sum |a||b|) with gamma_K = K u / (1 - K u),
 * u = 2^-24 (tests/unit/test_gemm.c). Where the CPU has no AVX-512F, or attn_set_isa_limit
 * lowers the path below it, gemm_b_floats is 0 and the caller uses cblas_sgemm. */
#ifndef KVTRACE_GEMM_H
#define KVTRACE_GEMM_H

#include <stddef.h>

/* B packed: [np][K][32] floats in caller-owned memory (np = ceil(N / 32) column panels). */
typedef struct gemm_b {
    size_t K, N, np;
    float *p;
} gemm_b;

/* The floats gemm_pack_b needs for B [K][N]; 0 where there is no AVX-512F path (above) or K
 * or N is 0: the caller then uses cblas_sgemm. */
size_t gemm_b_floats(size_t K, size_t N);

/* B [K][N] (row stride ldb) packed into buf [gemm_b_floats(K, N)]. */
void gemm_pack_b(const float *b, size_t K, size_t N, size_t ldb, float *buf, gemm_b *out);

/* What computes the read-out's W_O products on this CPU (provenance "readout_product"). */
const char *gemm_path(void);

/* c [M][N] (row stride ldc) += a [M][K] (row stride lda) @ B. */
void gemm_add(const gemm_b *p, const float *a, size_t lda, size_t M, float *c, size_t ldc);

#endif
