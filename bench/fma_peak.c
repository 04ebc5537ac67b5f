/* fma_peak: this machine's measured fp32 peak (GFLOP/s), 1 and N threads.
 *
 * Each variant runs NACC independent chains a = a * b + c (one FMA = 2 flops per lane)
 * long enough to hide the FMA latency on every port; variants are compiled with
 * __attribute__((target)) and chosen at run time with __builtin_cpu_supports, so the
 * build needs no -m flags. Rows:
 *   avx512  16 lanes, _mm512_fmadd_ps       (AVX-512F)
 *   avx2    8 lanes, _mm256_fmadd_ps        (AVX2 + FMA)
 *   avx2mul 8 lanes, separate mul and add   (AVX2 without FMA: the ceiling of the attention
 *           kernels, which keep mul and add separately rounded to stay bit-identical to
 *           attn_logit and across vector widths)
 *   sse     4 lanes, separate mul and add   (baseline x86-64, no -m flags)
 * peak = the best variant; a kernel's roofline fraction is its GFLOP/s over that peak.
 *
 * Usage: fma_peak [--threads N] [--seconds S] [--csv FILE]
 * Output: a table on stdout; CSV rows isa,threads,gflops (+ a "peak" row per thread count).
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NACC 12            /* independent accumulators: > latency (4) x FMA ports (2) */
#define INNER 1000

/* twelve named accumulators (an array would live in memory at -O2) */
#define ACC12(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static volatile float sink;

__attribute__((target("avx512f")))
static double run_avx512(long iters)
{
    const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
#define D_(i) __m512 a##i = _mm512_set1_ps(1.0f + i);
#define S_(i) a##i = _mm512_fmadd_ps(a##i, b, c);
#define A_(i) s = _mm512_add_ps(s, a##i);
    ACC12(D_)
    for (long it = 0; it < iters; it++)
        for (int r = 0; r < INNER; r++) { ACC12(S_) }
    __m512 s = _mm512_set1_ps(0.0f);
    ACC12(A_)
#undef D_
#undef S_
#undef A_
    float out[16];
    _mm512_storeu_ps(out, s);
    sink = out[0];
    return 2.0 * 16 * NACC * (double)INNER * iters;
}

__attribute__((target("avx2,fma")))
static double run_avx2(long iters)
{
    const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
#define D_(i) __m256 a##i = _mm256_set1_ps(1.0f + i);
#define S_(i) a##i = _mm256_fmadd_ps(a##i, b, c);
#define A_(i) s = _mm256_add_ps(s, a##i);
    ACC12(D_)
    for (long it = 0; it < iters; it++)
        for (int r = 0; r < INNER; r++) { ACC12(S_) }
    __m256 s = _mm256_set1_ps(0.0f);
    ACC12(A_)
#undef D_
#undef S_
#undef A_
    float out[8];
    _mm256_storeu_ps(out, s);
    sink = out[0];
    return 2.0 * 8 * NACC * (double)INNER * iters;
}

__attribute__((target("avx2")))
static double run_avx2mul(long iters)
{
    const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
#define D_(i) __m256 a##i = _mm256_set1_ps(1.0f + i);
#define S_(i) a##i = _mm256_add_ps(_mm256_mul_ps(a##i, b), c);
#define A_(i) s = _mm256_add_ps(s, a##i);
    ACC12(D_)
    for (long it = 0; it < iters; it++)
        for (int r = 0; r < INNER; r++) { ACC12(S_) }
    __m256 s = _mm256_set1_ps(0.0f);
    ACC12(A_)
#undef D_
#undef S_
#undef A_
    float out[8];
    _mm256_storeu_ps(out, s);
    sink = out[0];
    return 2.0 * 8 * NACC * (double)INNER * iters;
}

static double run_sse(long iters)
{
    const __m128 b = _mm_set1_ps(0.999999f), c = _mm_set1_ps(1e-7f);
#define D_(i) __m128 a##i = _mm_set1_ps(1.0f + i);
#define S_(i) a##i = _mm_add_ps(_mm_mul_ps(a##i, b), c);
#define A_(i) s = _mm_add_ps(s, a##i);
    ACC12(D_)
    for (long it = 0; it < iters; it++)
        for (int r = 0; r < INNER; r++) { ACC12(S_) }
    __m128 s = _mm_set1_ps(0.0f);
    ACC12(A_)
#undef D_
#undef S_
#undef A_
    float out[4];
    _mm_storeu_ps(out, s);
    sink = out[0];
    return 2.0 * 4 * NACC * (double)INNER * iters;
}

typedef double (*runner)(long);

/* GFLOP/s of fn on nthreads threads (each runs its own chains), best of 3 timings of
 * about `seconds` each. */
static double measure(runner fn, int nthreads, double seconds)
{
    long iters = 1;
    for (;;) {                               /* calibrate on one thread */
        double t0 = now();
        fn(iters);
        double dt = now() - t0;
        if (dt > 0.02) { iters = (long)(iters * seconds / dt) + 1; break; }
        iters *= 4;
    }
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        double flops = 0, t0 = now();
        #pragma omp parallel num_threads(nthreads) reduction(+:flops)
        flops += fn(iters);
        double g = flops / (now() - t0) * 1e-9;
        if (g > best) best = g;
    }
    return best;
}

int main(int argc, char **argv)
{
    int maxthreads = omp_get_num_procs();
    double seconds = 0.15;
    const char *csv = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) maxthreads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--csv") && i + 1 < argc) csv = argv[++i];
        else {
            fprintf(stderr, "usage: fma_peak [--threads N] [--seconds S] [--csv FILE]\n");
            return 2;
        }
    }
    if (maxthreads < 1 || seconds <= 0) {
        fprintf(stderr, "fma_peak: --threads must be >= 1 and --seconds > 0\n");
        return 2;
    }
    FILE *out = NULL;
    if (csv && !(out = fopen(csv, "w"))) {
        fprintf(stderr, "fma_peak: cannot write %s\n", csv);
        return 1;
    }
    struct { const char *name; runner fn; int ok; } v[] = {
        {"avx512", run_avx512, __builtin_cpu_supports("avx512f")},
        {"avx2", run_avx2, __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")},
        {"avx2mul", run_avx2mul, __builtin_cpu_supports("avx2")},
        {"sse", run_sse, 1},
    };
    if (out) fprintf(out, "isa,threads,gflops\n");
    printf("%-8s %8s %12s\n", "isa", "threads", "GFLOP/s");
    int counts[2] = {1, maxthreads};
    for (int ci = 0; ci < (maxthreads > 1 ? 2 : 1); ci++) {
        int nt = counts[ci];
        double peak = 0;
        for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
            if (!v[i].ok) { printf("%-8s %8d %12s\n", v[i].name, nt, "n/a"); continue; }
            double g = measure(v[i].fn, nt, seconds);
            if (g > peak) peak = g;
            printf("%-8s %8d %12.1f\n", v[i].name, nt, g);
            if (out) fprintf(out, "%s,%d,%.3f\n", v[i].name, nt, g);
        }
        printf("%-8s %8d %12.1f\n", "peak", nt, peak);
        if (out) fprintf(out, "peak,%d,%.3f\n", nt, peak);
    }
    if (out && fclose(out) != 0) {
        fprintf(stderr, "fma_peak: write error on %s\n", csv);
        return 1;
    }
    return 0;
}
