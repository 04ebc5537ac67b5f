/* mem_scale: how much of one thread's read bandwidth each thread keeps when N threads read at
 * once, on buffers of the sizes a replay item streams (1 MiB: a block of keys; 8 MiB: one kv
 * head's keys at 16k tokens, head_dim 128, in float32; 64 MiB: beyond the caches).
 *
 * Each thread sums its own buffer (first touched by that thread) with 16-float vector adds
 * (AVX-512F where the CPU has it), 4 GiB per timing; the per-thread GB/s is the best of 3
 * timings. The ratio of the N-thread figure to the 1-thread one is the ceiling of N-thread
 * efficiency for a kernel that streams such buffers: below 1 where the threads share caches,
 * memory bandwidth or a clock budget, which fma_peak's register-only loop does not show.
 *
 * Usage: mem_scale [--threads N] [--csv FILE]
 * Output: a table; CSV rows size_mib,threads,gbps_per_thread.
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef float v16f __attribute__((vector_size(64)));

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static volatile float sink;

/* one pass over n floats (n a multiple of 64): four independent vector sums; compiled for
 * AVX-512F too (chosen at run time), so that on such a CPU the loads, not the adds, limit it */
#define SUM_PASS_BODY                                                       \
    v16f s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                            \
    for (size_t i = 0; i < n; i += 64) {                                    \
        v16f x0, x1, x2, x3;                                                \
        memcpy(&x0, a + i, 64); memcpy(&x1, a + i + 16, 64);                \
        memcpy(&x2, a + i + 32, 64); memcpy(&x3, a + i + 48, 64);           \
        s0 += x0; s1 += x1; s2 += x2; s3 += x3;                             \
    }                                                                       \
    v16f s = (s0 + s1) + (s2 + s3);                                         \
    float t = 0;                                                            \
    for (int k = 0; k < 16; k++) t += s[k];                                 \
    return t;

__attribute__((target("avx512f")))
static float sum_pass_avx512(const float *a, size_t n) { SUM_PASS_BODY }

static float sum_pass_generic(const float *a, size_t n) { SUM_PASS_BODY }

static float sum_pass(const float *a, size_t n)
{
    static int avx512 = -1;
    if (avx512 < 0) avx512 = __builtin_cpu_supports("avx512f");
    return avx512 ? sum_pass_avx512(a, n) : sum_pass_generic(a, n);
}

/* GB/s per thread with nthreads threads each reading its own `mib` MiB buffer `reps` times;
 * -1 when out of memory */
static double measure(int nthreads, size_t mib, int reps)
{
    size_t n = mib << 18;                       /* floats */
    double best = 0;
    int bad = 0;
    #pragma omp parallel num_threads(nthreads) reduction(+:bad)
    {
        float *a = aligned_alloc(64, n * sizeof *a);
        if (!a) bad = 1;
        else for (size_t i = 0; i < n; i++) a[i] = (float)(i & 1023) * 1e-3f;
        for (int rep = 0; rep < 3; rep++) {
            #pragma omp barrier
            double t0 = now();
            float s = 0;
            if (a)
                for (int r = 0; r < reps; r++) {
                    __asm__ volatile("" ::: "memory");      /* every pass reads the buffer again */
                    s += sum_pass(a, n);
                }
            #pragma omp barrier
            double dt = now() - t0;
            #pragma omp master
            {
                double g = (double)mib * reps / 1024.0 / dt;
                if (g > best) best = g;
            }
            sink = s;
        }
        free(a);
    }
    return bad ? -1 : best;
}

int main(int argc, char **argv)
{
    int threads = omp_get_num_procs();
    const char *csv = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--csv") && i + 1 < argc) csv = argv[++i];
        else { fprintf(stderr, "usage: mem_scale [--threads N] [--csv FILE]\n"); return 2; }
    }
    if (threads < 1) { fprintf(stderr, "mem_scale: --threads must be >= 1\n"); return 2; }
    FILE *f = csv ? fopen(csv, "w") : NULL;
    if (csv && !f) { fprintf(stderr, "mem_scale: cannot write %s\n", csv); return 1; }
    if (f) fprintf(f, "size_mib,threads,gbps_per_thread\n");
    printf("  %8s %8s %16s %10s\n", "MiB", "threads", "GB/s per thread", "vs 1 thr");
    static const size_t sizes[] = { 1, 8, 64 };
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t mib = sizes[k];
        int reps = (int)(4096 / mib);           /* 4 GiB read per thread per timing */
        double g1 = measure(1, mib, reps);
        double gn = threads > 1 ? measure(threads, mib, reps) : g1;
        if (g1 <= 0 || gn <= 0) { fprintf(stderr, "mem_scale: out of memory\n"); return 1; }
        printf("  %8zu %8d %16.1f %10s\n", mib, 1, g1, "");
        if (threads > 1) printf("  %8zu %8d %16.1f %9.0f%%\n", mib, threads, gn, 100 * gn / g1);
        if (f) {
            fprintf(f, "%zu,1,%.2f\n", mib, g1);
            if (threads > 1) fprintf(f, "%zu,%d,%.2f\n", mib, threads, gn);
        }
    }
    if (f && fclose(f)) { fprintf(stderr, "mem_scale: cannot write %s\n", csv); return 1; }
    return 0;
}
