/* bench_attn: the attention kernel's GFLOP/s, a BLAS sgemm of the same shape, and OpenMP
 * scaling over independent heads.
 *
 * T tokens, D head_dim, H heads. One head of causal attention (attn_full_rows, all rows)
 * costs 4 * D * T(T+1)/2 flops: 2D per visible (query, key) pair for q.k and 2D for p.v
 * (exp, max and the softmax sums are not counted, as in FlashAttention's convention).
 * The sgemm comparison runs the dense (non-causal) products of the same shape,
 * S = Q K^T ([T,D] x [D,T]) and O = S V ([T,T] x [T,D]), 4 D T^2 flops, on one thread;
 * its GFLOP/s is what BLAS reaches on these shapes, and "kernel/sgemm" compares rates.
 *
 * Inputs: Q, K, V of (sequence 0, layer 0, head 0 / its kv head) of --trace when it has
 * at least T tokens (src=trace), else N(0,1) data (src=synthetic; speed does not depend
 * on the values).
 *
 * Usage:
 *   bench_attn kernel --trace F --T 1024,2048 [--peak GFLOPS] [--seconds S] [--csv OUT] [--tag NAME]
 *   bench_attn sgemm  --D 64 --T 1024,2048 [--seconds S] [--csv OUT] [--tag NAME]
 *   bench_attn omp    --trace F [--seconds S] [--csv OUT] [--threads N]
 *   bench_attn isa    --T 1024,4096 [--trace F] [--D 64] [--seconds S] [--csv OUT] [--tag NAME]
 *
 * isa: attn_full_rows (lse and o; and with the logits written, as the replay engine calls it)
 * on each vector path this CPU has (attn_set_isa_limit: generic, AVX2, AVX-512F), the paths
 * timed in turn three times (best of each), their rates and avx512/avx2, and whether
 * every path gave the same bits (it must).
 */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attn.h"
#include "kvtrace.h"
#include "readout.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static unsigned long long rng_s = 0x9e3779b97f4a7c15ull;
static float rng_normal(void)
{
    double u[2];
    for (int i = 0; i < 2; i++) {
        unsigned long long z = (rng_s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        u[i] = (((z ^ (z >> 31)) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    }
    return (float)(sqrt(-2 * log(u[0])) * cos(2 * M_PI * u[1]));
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "bench_attn: out of memory (%zu bytes)\n", n); exit(1); }
    return p;
}

/* Best time of fn over repetitions filling about `seconds` (at least 2 runs). */
typedef void (*bench_fn)(void *);
static double best_time(bench_fn fn, void *arg, double seconds)
{
    double best = INFINITY, spent = 0;
    for (int rep = 0; rep < 2 || spent < seconds; rep++) {
        double t0 = now();
        fn(arg);
        double dt = now() - t0;
        spent += dt;
        if (dt < best) best = dt;
        if (rep >= 50) break;
    }
    return best;
}

static int parse_list(const char *s, size_t *out, int max)
{
    int n = 0;
    while (*s && n < max) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v <= 0) return -1;
        out[n++] = (size_t)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return n;
}

typedef struct head_data { size_t T, D; float *q, *k, *v, *lse, *o; attn_params p; } head_data;

static void run_kernel(void *arg)
{
    head_data *h = arg;
    attn_full_rows(h->q, h->k, h->v, h->T, h->D, 0, h->T, &h->p, h->lse, h->o, NULL);
}

/* Loads the first T rows of (0, 0, 0) from the trace when it is long enough. */
static int load_head(kv_trace *tr, head_data *h)
{
    const kv_info *in = tr ? kv_trace_info(tr) : NULL;
    size_t T = h->T, D = h->D;
    h->q = xmalloc(T * D * sizeof(float));
    h->k = xmalloc(T * D * sizeof(float));
    h->v = xmalloc(T * D * sizeof(float));
    h->lse = xmalloc(T * sizeof(float));
    h->o = xmalloc(T * D * sizeof(float));
    if (in && in->n_tok >= T && in->head_dim == D) {
        kv_error err;
        if (kv_trace_read_rows(tr, KV_Q, 0, 0, 0, 0, T, h->q, &err) != KV_OK ||
            kv_trace_read_rows(tr, KV_K, 0, 0, 0, 0, T, h->k, &err) != KV_OK ||
            kv_trace_read_rows(tr, KV_V, 0, 0, 0, 0, T, h->v, &err) != KV_OK) {
            fprintf(stderr, "bench_attn: %s\n", err.msg);
            exit(1);
        }
        h->p.scale = (float)in->attn_scale;
        return 1;
    }
    for (size_t i = 0; i < T * D; i++) { h->q[i] = rng_normal(); h->k[i] = rng_normal(); h->v[i] = rng_normal(); }
    h->p.scale = 1.0f / sqrtf((float)D);
    return 0;
}

static void free_head(head_data *h)
{
    free(h->q); free(h->k); free(h->v); free(h->lse); free(h->o);
}

static kv_trace *open_trace(const char *path)
{
    if (!path) return NULL;
    kv_error err;
    kv_trace *t = NULL;
    if (kv_trace_open(path, NULL, &t, &err) != KV_OK) {
        fprintf(stderr, "bench_attn: %s\n", err.msg);
        exit(1);
    }
    return t;
}

static FILE *open_csv(const char *path, const char *header)
{
    if (!path) return NULL;
    FILE *f = fopen(path, "a");
    if (!f) { fprintf(stderr, "bench_attn: cannot write %s\n", path); exit(1); }
    if (ftell(f) == 0) fprintf(f, "%s\n", header);
    return f;
}

static int cmd_kernel(const char *trace, const size_t *Ts, int nT, double peak, double seconds,
                      const char *csv, const char *tag)
{
    kv_trace *tr = open_trace(trace);
    size_t D = tr ? kv_trace_info(tr)->head_dim : 64;
    FILE *f = open_csv(csv, "tag,T,D,src,seconds,gflops,peak_gflops,roofline_frac");
    printf("attention kernel attn_full_rows, 1 thread, %s, D=%zu (best of repeated runs)\n",
           tag, D);
    printf("  %6s %4s %-9s %10s %9s %10s\n", "T", "D", "src", "ms", "GFLOP/s", "of peak");
    for (int i = 0; i < nT; i++) {
        head_data h = {.T = Ts[i], .D = D, .p = {0}};
        int from_trace = load_head(tr, &h);
        double flops = 4.0 * D * (double)h.T * (h.T + 1) / 2;
        double t = best_time(run_kernel, &h, seconds);
        double g = flops / t * 1e-9;
        printf("  %6zu %4zu %-9s %10.2f %9.2f %9.1f%%\n", h.T, D, from_trace ? "trace" : "synthetic",
               t * 1e3, g, peak > 0 ? 100 * g / peak : 0);
        if (f) fprintf(f, "%s,%zu,%zu,%s,%.6f,%.3f,%.3f,%.4f\n", tag, h.T, D,
                       from_trace ? "trace" : "synthetic", t, g, peak, peak > 0 ? g / peak : 0);
        free_head(&h);
    }
    if (f) fclose(f);
    kv_trace_close(tr);
    return 0;
}

typedef struct gemm_data { size_t T, D; float *q, *k, *v, *s, *o; } gemm_data;

static void run_gemm(void *arg)
{
    gemm_data *g = arg;
    int T = (int)g->T, D = (int)g->D;
    /* S [T,T] = Q [T,D] K^T;  O [T,D] = S V [T,D] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, D, 1.0f, g->q, D, g->k, D,
                0.0f, g->s, T);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, T, 1.0f, g->s, T, g->v, D,
                0.0f, g->o, D);
}

static int cmd_sgemm(size_t D, const size_t *Ts, int nT, double seconds, const char *csv,
                     const char *tag)
{
    rs_blas_set_threads(1);
    FILE *f = open_csv(csv, "tag,T,D,seconds,gflops,blas");
    const char *env = getenv("OPENBLAS_CORETYPE");
    printf("BLAS sgemm, same shapes (S=QK^T, O=SV, dense), 1 thread: %s%s%s\n", rs_blas_info(),
           env ? ", OPENBLAS_CORETYPE=" : "", env ? env : "");
    printf("  config: %s\n", rs_blas_config());
    printf("  %6s %4s %10s %9s\n", "T", "D", "ms", "GFLOP/s");
    for (int i = 0; i < nT; i++) {
        gemm_data g = {.T = Ts[i], .D = D};
        size_t T = g.T;
        g.q = xmalloc(T * D * sizeof(float));
        g.k = xmalloc(T * D * sizeof(float));
        g.v = xmalloc(T * D * sizeof(float));
        g.o = xmalloc(T * D * sizeof(float));
        g.s = xmalloc(T * T * sizeof(float));
        for (size_t j = 0; j < T * D; j++) { g.q[j] = rng_normal(); g.k[j] = rng_normal(); g.v[j] = rng_normal(); }
        double t = best_time(run_gemm, &g, seconds);
        double gf = 4.0 * D * (double)T * T / t * 1e-9;
        printf("  %6zu %4zu %10.2f %9.2f\n", T, D, t * 1e3, gf);
        if (f) fprintf(f, "%s,%zu,%zu,%.6f,%.3f,%s\n", tag, T, D, t, gf, rs_blas_info());
        free(g.q); free(g.k); free(g.v); free(g.o); free(g.s);
    }
    if (f) fclose(f);
    return 0;
}

/* All heads of (sequence 0, layer 0), each an independent attn_full_rows over its own
 * query head and kv head (GQA: kv head h / (H/Hkv)). */
typedef struct heads_data { size_t H, G, T, D; float *q, *k, *v, *lse, *o; attn_params p; int threads; } heads_data;

static void run_heads(void *arg)
{
    heads_data *hd = arg;
    size_t T = hd->T, D = hd->D, grp = hd->H / hd->G;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(hd->threads)
    for (size_t h = 0; h < hd->H; h++) {
        size_t g = h / grp;
        attn_full_rows(hd->q + h * T * D, hd->k + g * T * D, hd->v + g * T * D, T, D, 0, T,
                       &hd->p, hd->lse + h * T, hd->o + h * T * D, NULL);
    }
}

static int cmd_omp(const char *trace, int maxthreads, double seconds, const char *csv,
                   const char *tag)
{
    kv_trace *tr = open_trace(trace);
    const kv_info *in = kv_trace_info(tr);
    heads_data hd = {.H = in->n_heads, .G = in->n_kv_heads, .T = in->n_tok, .D = in->head_dim};
    size_t T = hd.T, D = hd.D;
    hd.p.scale = (float)in->attn_scale;
    hd.q = xmalloc(hd.H * T * D * sizeof(float));
    hd.o = xmalloc(hd.H * T * D * sizeof(float));
    hd.lse = xmalloc(hd.H * T * sizeof(float));
    hd.k = xmalloc(hd.G * T * D * sizeof(float));
    hd.v = xmalloc(hd.G * T * D * sizeof(float));
    kv_error err;
    for (size_t h = 0; h < hd.H; h++)
        if (kv_trace_read_head(tr, KV_Q, 0, 0, h, hd.q + h * T * D, &err) != KV_OK) goto fail;
    for (size_t g = 0; g < hd.G; g++)
        if (kv_trace_read_head(tr, KV_K, 0, 0, g, hd.k + g * T * D, &err) != KV_OK ||
            kv_trace_read_head(tr, KV_V, 0, 0, g, hd.v + g * T * D, &err) != KV_OK) goto fail;
    FILE *f = open_csv(csv, "tag,H,T,D,threads,seconds,gflops,speedup,efficiency");
    double flops = hd.H * 4.0 * D * (double)T * (T + 1) / 2, t1 = 0;
    printf("OpenMP scaling of the kernel over the %zu heads of one layer (%s, T=%zu, D=%zu)\n",
           hd.H, tag, T, D);
    printf("  %7s %10s %9s %8s %10s\n", "threads", "ms", "GFLOP/s", "speedup", "efficiency");
    for (int nt = 1; nt <= maxthreads; nt *= 2) {
        hd.threads = nt;
        double t = best_time(run_heads, &hd, seconds);
        if (nt == 1) t1 = t;
        double sp = t1 / t, eff = sp / nt;
        printf("  %7d %10.2f %9.2f %8.2f %9.1f%%\n", nt, t * 1e3, flops / t * 1e-9, sp, 100 * eff);
        if (f) fprintf(f, "%s,%zu,%zu,%zu,%d,%.6f,%.3f,%.4f,%.4f\n", tag, hd.H, T, D, nt, t,
                       flops / t * 1e-9, sp, eff);
        if (nt < maxthreads && nt * 2 > maxthreads) nt = maxthreads / 2;   /* end on max */
    }
    if (f) fclose(f);
    free(hd.q); free(hd.k); free(hd.v); free(hd.o); free(hd.lse);
    kv_trace_close(tr);
    return 0;
fail:
    fprintf(stderr, "bench_attn: %s\n", err.msg);
    return 1;
}

typedef struct isa_data { head_data *h; float *lg; } isa_data;

static void run_kernel_logits(void *arg)
{
    isa_data *d = arg;
    head_data *h = d->h;
    attn_full_rows(h->q, h->k, h->v, h->T, h->D, 0, h->T, &h->p, h->lse, h->o, d->lg);
}

static int cmd_isa(const char *trace, size_t Dopt, const size_t *Ts, int nT, double seconds, const char *csv,
                   const char *tag)
{
    static const char *names[] = {"generic", "avx2", "avx512"};
    kv_trace *tr = open_trace(trace);
    size_t D = tr ? kv_trace_info(tr)->head_dim : Dopt;
    int have[3];
    for (int lim = 0; lim < 3; lim++) { attn_set_isa_limit(lim); have[lim] = attn_isa() == lim; }
    FILE *f = open_csv(csv, "tag,T,D,kernel,isa,seconds,gflops");
    printf("attn_full_rows per vector path, 1 thread, %s, D=%zu (best of 3 alternating rounds)%s%s\n", tag, D,
           have[2] ? "" : "; no AVX-512F here", have[1] ? "" : "; no AVX2 here");
    printf("  %6s %-12s %10s %10s %10s %13s %5s\n", "T", "kernel", "generic", "avx2", "avx512", "avx512/avx2",
           "same");
    for (int i = 0; i < nT; i++) {
        head_data h = {.T = Ts[i], .D = D, .p = {0}};
        load_head(tr, &h);
        size_t T = h.T;
        isa_data d = {&h, xmalloc(T * T * sizeof(float))};
        float *ref_o = xmalloc(T * D * sizeof(float)), *ref_l = xmalloc(T * sizeof(float));
        double flops = 4.0 * D * (double)T * (T + 1) / 2;
        for (int kind = 0; kind < 2; kind++) {
            double best[3] = {INFINITY, INFINITY, INFINITY};
            int same = 1, first = 1;
            for (int round = 0; round < 3; round++)
                for (int lim = 0; lim < 3; lim++) {
                    if (!have[lim]) continue;
                    attn_set_isa_limit(lim);
                    double t = best_time(kind ? run_kernel_logits : run_kernel, kind ? (void *)&d : (void *)&h,
                                         seconds / 3);
                    if (t < best[lim]) best[lim] = t;
                    if (first) {
                        memcpy(ref_o, h.o, T * D * sizeof(float));
                        memcpy(ref_l, h.lse, T * sizeof(float));
                        first = 0;
                    } else {
                        same &= !memcmp(ref_o, h.o, T * D * sizeof(float)) && !memcmp(ref_l, h.lse, T * sizeof(float));
                    }
                }
            const char *kn = kind ? "full+logits" : "full";
            printf("  %6zu %-12s", T, kn);
            for (int lim = 0; lim < 3; lim++) {
                if (have[lim]) printf(" %10.2f", flops / best[lim] * 1e-9);
                else printf(" %10s", "-");
                if (f && have[lim])
                    fprintf(f, "%s,%zu,%zu,%s,%s,%.6f,%.3f\n", tag, T, D, kn, names[lim], best[lim],
                            flops / best[lim] * 1e-9);
            }
            if (have[1] && have[2]) printf(" %13.3f", best[1] / best[2]);
            else printf(" %13s", "-");
            printf(" %5s\n", same ? "yes" : "NO");
            if (!same) { fprintf(stderr, "bench_attn: the paths gave different bits\n"); return 1; }
        }
        free(d.lg); free(ref_o); free(ref_l);
        free_head(&h);
    }
    printf("  (GFLOP/s; avx512/avx2: speed ratio)\n");
    attn_set_isa_limit(ATTN_ISA_AVX512);
    if (f) fclose(f);
    kv_trace_close(tr);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) goto usage;
    const char *cmd = argv[1], *trace = NULL, *csv = NULL, *tag = "";
    size_t Ts[16], D = 64;
    int nT = 0, threads = omp_get_num_procs();
    double peak = 0, seconds = 0.3;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) goto usage;
        i++;
        if (!strcmp(a, "--trace")) trace = v;
        else if (!strcmp(a, "--csv")) csv = v;
        else if (!strcmp(a, "--tag")) tag = v;
        else if (!strcmp(a, "--peak")) peak = atof(v);
        else if (!strcmp(a, "--seconds")) seconds = atof(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--D")) D = (size_t)atol(v);
        else if (!strcmp(a, "--T")) {
            if ((nT = parse_list(v, Ts, 16)) <= 0) { fprintf(stderr, "bench_attn: bad --T '%s'\n", v); return 2; }
        } else goto usage;
    }
    if (!strcmp(cmd, "kernel") && nT > 0) return cmd_kernel(trace, Ts, nT, peak, seconds, csv, tag);
    if (!strcmp(cmd, "sgemm") && nT > 0 && D > 0) return cmd_sgemm(D, Ts, nT, seconds, csv, tag);
    if (!strcmp(cmd, "omp") && trace && threads >= 1) return cmd_omp(trace, threads, seconds, csv, tag);
    if (!strcmp(cmd, "isa") && nT > 0 && D > 0) return cmd_isa(trace, D, Ts, nT, seconds, csv, tag);
usage:
    fprintf(stderr, "usage: bench_attn kernel --trace F --T 1024,2048 [--peak G] [--seconds S] [--csv F] [--tag N]\n"
                    "       bench_attn sgemm --D 64 --T 1024,2048 [--seconds S] [--csv F] [--tag N]\n"
                    "       bench_attn omp --trace F [--threads N] [--seconds S] [--csv F] [--tag N]\n"
                    "       bench_attn isa --T 1024,4096 [--trace F] [--D 64] [--seconds S] [--csv F] [--tag N]\n");
    return 2;
}
