/* cp_noncausal (replay/strategies/noncausal_attn.c, shared by noncausal_attn and compactor)
 * against a naive double reference: each logit the scalar dot product sum over d of
 * (double)q[d] * k[d], libm's exp, the softmax sum and the accumulation in ascending order.
 *
 * Tolerance 1e-13 relative, from rounding: the logits are the same sums in the same order
 * (exact agreement); the kernel's exp is within 2 ulp of exp and libm's within 1, and the
 * softmax sum of m <= 256 positive terms in a different order (four lanes) differs by at
 * most 2 * 256 * 2^-53 = 5.7e-14 relative; the division adds an ulp; the accumulation,
 * ||v|| and the smoothing add positive terms in the same order, which keeps the worst
 * relative error of the terms. The shapes cover the AVX2 path's edges: a prompt slice not
 * starting at 0, chunk and slice lengths that are not multiples of the 4 rows or the 8 keys
 * per pass, chunk 1 and a chunk longer than the slice, D = 1, 5, 128, G = 1, 3, 4.
 * Plus one exact case: chunk 1 (every key's softmax over itself is exactly 1).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strategies/compactor.h"
#include "strategy.h"

static int fails = 0, checks = 0;

static void check(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double unif(void)        /* xorshift64, [0, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * 0x1p-53;
}

static float *fill(size_t n, double amp)
{
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; x && i < n; i++) x[i] = (float)((2 * unif() - 1) * amp);
    return x;
}

/* The rule, one logit, one exp and one addition at a time. */
static void ref_noncausal(const rp_layer_ctx *ctx, size_t g, size_t s0, size_t s1, size_t chunk, double *out)
{
    size_t D = ctx->D, n = ctx->n, S = s1 - s0, G = ctx->G;
    double *a = calloc(S, sizeof *a), *z = malloc(S * sizeof *z);
    const float *k = ctx->k + g * n * D, *v = ctx->v + g * n * D;
    for (size_t i = 0; i < G; i++) {
        const float *q = ctx->q + (g * G + i) * n * D;
        for (size_t c0 = s0; c0 < s1; c0 += chunk) {
            size_t c1 = c0 + chunk < s1 ? c0 + chunk : s1;
            for (size_t t = c0; t < c1; t++) {
                double mx = -INFINITY, sum = 0;
                for (size_t j = c0; j < c1; j++) {
                    double s = 0;
                    for (size_t d = 0; d < D; d++) s += (double)q[t * D + d] * k[j * D + d];
                    z[j - c0] = s;
                    if (s > mx) mx = s;
                }
                for (size_t j = c0; j < c1; j++) { z[j - c0] = exp(z[j - c0] - mx); sum += z[j - c0]; }
                for (size_t j = c0; j < c1; j++) a[j - s0] += z[j - c0] / sum;
            }
        }
    }
    for (size_t j = 0; j < S; j++) {
        const float *vj = v + (s0 + j) * D;
        double vn = 0;
        for (size_t d = 0; d < D; d++) vn += (double)vj[d] * vj[d];
        a[j] = a[j] / (double)G * sqrt(vn);
    }
    for (size_t j = 0; j < S; j++) {
        double s = a[j];
        if (j > 0) s += a[j - 1];
        if (j + 1 < S) s += a[j + 1];
        out[j] = s / 3.0;
    }
    free(a); free(z);
}

static void case_against_ref(void)
{
    struct { size_t D, n, G, Hkv, chunk, s0, s1; double amp; } cs[] = {
        {128, 1000, 4, 2, 256, 0, 1000, 1.0},   /* the default chunk, a short last chunk */
        {128, 517, 4, 1, 100, 0, 517, 4.0},     /* chunks of 100: rows 4k + 1, keys 8k + 4 */
        {64, 300, 1, 2, 256, 50, 300, 3.0},     /* a slice (compactor's), one chunk of 250 */
        {5, 37, 3, 1, 7, 3, 37, 2.0},           /* odd D, chunks of 7 */
        {1, 9, 2, 1, 4, 0, 9, 1.0},             /* D = 1 */
        {16, 11, 3, 1, 1, 0, 11, 1.0},          /* chunk 1 */
        {16, 23, 1, 1, 1000, 2, 23, 2.0},       /* chunk longer than the slice */
    };
    double worst = 0;
    int all_ok = 1;
    for (size_t c = 0; c < sizeof cs / sizeof *cs; c++) {
        size_t D = cs[c].D, n = cs[c].n, G = cs[c].G, Hkv = cs[c].Hkv, S = cs[c].s1 - cs[c].s0;
        float *q = fill(Hkv * G * n * D, cs[c].amp), *k = fill(Hkv * n * D, 1), *v = fill(Hkv * n * D, 1);
        double *got = malloc(S * sizeof *got), *want = malloc(S * sizeof *want);
        rp_layer_ctx ctx;
        memset(&ctx, 0, sizeof ctx);
        ctx.H = Hkv * G; ctx.Hkv = Hkv; ctx.G = G; ctx.D = D; ctx.n = n; ctx.P = n;
        ctx.q = q; ctx.k = k; ctx.v = v;
        for (size_t g = 0; g < Hkv; g++) {
            int rc = cp_noncausal(&ctx, g, cs[c].s0, cs[c].s1, cs[c].chunk, got);
            ref_noncausal(&ctx, g, cs[c].s0, cs[c].s1, cs[c].chunk, want);
            int ok = rc == 0;
            for (size_t j = 0; j < S; j++) {
                double r = fabs(got[j] - want[j]) / want[j];
                if (!(r <= 1e-13)) ok = 0;
                if (r > worst) worst = r;
            }
            if (!ok) printf("  case %zu (D %zu, G %zu, chunk %zu, [%zu, %zu)) kv head %zu off\n",
                            c, D, G, cs[c].chunk, cs[c].s0, cs[c].s1, g);
            all_ok &= ok;
        }
        free(q); free(k); free(v); free(got); free(want);
    }
    printf("cp_noncausal: worst relative difference from the reference %.3g\n", worst);
    check("cp_noncausal within 1e-13 of the naive reference (every shape, every kv head)", all_ok);
}

/* chunk 1: a(j) = 1 for every head, so out[j] = (||v_{j-1}|| + ||v_j|| + ||v_{j+1}||) / 3 with
 * the smoothing's order (self, left, right) and zeros outside. */
static void case_chunk1_exact(void)
{
    size_t D = 8, n = 6, G = 2;
    float *q = fill(G * n * D, 5), *k = fill(n * D, 1), *v = fill(n * D, 1);
    double got[6], nv[6];
    rp_layer_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.H = G; ctx.Hkv = 1; ctx.G = G; ctx.D = D; ctx.n = n; ctx.P = n; ctx.q = q; ctx.k = k; ctx.v = v;
    int ok = cp_noncausal(&ctx, 0, 0, n, 1, got) == 0;
    for (size_t j = 0; j < n; j++) {
        double vn = 0;
        for (size_t d = 0; d < D; d++) vn += (double)v[j * D + d] * v[j * D + d];
        nv[j] = sqrt(vn);
    }
    for (size_t j = 0; j < n; j++) {
        double s = nv[j];
        if (j > 0) s += nv[j - 1];
        if (j + 1 < n) s += nv[j + 1];
        ok &= got[j] == s / 3.0;
    }
    check("cp_noncausal chunk 1: the smoothed ||v|| exactly", ok);
    free(q); free(k); free(v);
}

/* The generic, AVX2 and AVX-512F paths give the same bits (each logit the same sum in the same order;
 * the paths follow attn_set_isa_limit): D = 128, G = 4, 300 keys in chunks of 64 (a short last
 * chunk). An FMA variant (exact products of float values: the same bits) was measured at 8%
 * of the kernel's samples on this AMD EPYC and not kept. */
static void case_paths_identical(void)
{
    enum { D = 128, G = 4, N = 300 };
    float *q = fill(G * N * D, 3), *k = fill(N * D, 1), *v = fill(N * D, 1);
    double *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b);
    rp_layer_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.H = G; ctx.Hkv = 1; ctx.G = G; ctx.D = D; ctx.n = N; ctx.P = N;
    ctx.q = q; ctx.k = k; ctx.v = v;
    int prev = attn_set_isa_limit(ATTN_ISA_GENERIC);
    int ok = q && k && v && a && b && cp_noncausal(&ctx, 0, 0, N, 64, a) == 0;
    for (int isa = ATTN_ISA_AVX2; isa <= ATTN_ISA_AVX512; isa++) {     /* each vector path the CPU has */
        attn_set_isa_limit(isa);
        ok = ok && cp_noncausal(&ctx, 0, 0, N, 64, b) == 0 && memcmp(a, b, N * sizeof *a) == 0;
    }
    attn_set_isa_limit(prev);
    printf("cp_noncausal: generic path vs %s: %s\n",
           attn_isa() >= ATTN_ISA_AVX512 ? "AVX2 and AVX-512F" : attn_isa() >= ATTN_ISA_AVX2 ? "AVX2" : "itself",
           ok ? "identical" : "DIFFERENT");
    check("cp_noncausal: the same bits on the generic and the vector path", ok);
    free(q); free(k); free(v); free(a); free(b);
}

int main(void)
{
    case_against_ref();
    case_chunk1_exact();
    case_paths_identical();
    printf("%d checks, %d failed\n", checks, fails);
    return fails != 0;
}
