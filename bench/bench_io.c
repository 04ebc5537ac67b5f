/* bench_io: trace read throughput through libkvtrace and f16 -> f32 conversion speed.
 *
 * S sequences, L layers, H q-heads, Hkv kv-heads, T tokens, D head_dim.
 *   read   every (s, l, head) slice of q, k and v with kv_trace_read_head (f16 read +
 *          converted to f32, the replay's access pattern), and again raw with
 *          kv_trace_read_head_f16 (HDF5 + filters only); MB/s counts the f16 bytes
 *          delivered (2 per value), whatever the file holds on disk. The file is read
 *          once before timing (warm page cache: this measures the library, not the disk).
 *   f16    kv_f16_to_f32 (F16C when the CPU has it) vs kv_f16_to_f32_scalar on 16 Mi
 *          values (all finite f16 bit patterns, cycled).
 *
 * Usage: bench_io read --trace F [--tag NAME] [--csv OUT] | bench_io f16 [--csv OUT]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvtrace.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static FILE *open_csv(const char *path, const char *header)
{
    if (!path) return NULL;
    FILE *f = fopen(path, "a");
    if (!f) { fprintf(stderr, "bench_io: cannot write %s\n", path); exit(1); }
    if (ftell(f) == 0) fprintf(f, "%s\n", header);
    return f;
}

/* Reads every q/k/v slice; returns seconds, or -1 on error (message in err). */
static double read_all(kv_trace *t, int raw, float *buf, uint16_t *buf16, size_t *bytes,
                       kv_error *err)
{
    const kv_info *in = kv_trace_info(t);
    double t0 = now();
    size_t n = 0;
    for (size_t s = 0; s < in->n_seq; s++)
        for (size_t l = 0; l < in->n_layers; l++)
            for (int w = 0; w < 3; w++) {
                kv_tensor which = w == 0 ? KV_Q : w == 1 ? KV_K : KV_V;
                size_t nh = w == 0 ? in->n_heads : in->n_kv_heads;
                for (size_t h = 0; h < nh; h++) {
                    kv_status st = raw ? kv_trace_read_head_f16(t, which, s, l, h, buf16, err)
                                       : kv_trace_read_head(t, which, s, l, h, buf, err);
                    if (st != KV_OK) return -1;
                    n += in->n_tok * in->head_dim * 2;
                }
            }
    *bytes = n;
    return now() - t0;
}

static int cmd_read(const char *path, const char *tag, const char *csv)
{
    kv_error err;
    kv_trace *t = NULL;
    if (kv_trace_open(path, NULL, &t, &err) != KV_OK) {
        fprintf(stderr, "bench_io: %s\n", err.msg);
        return 1;
    }
    const kv_info *in = kv_trace_info(t);
    size_t slice = in->n_tok * in->head_dim;
    float *buf = malloc(slice * sizeof *buf);
    uint16_t *buf16 = malloc(slice * sizeof *buf16);
    if (!buf || !buf16) { fprintf(stderr, "bench_io: out of memory\n"); return 1; }
    const char *filters = in->q_deflate ? (in->q_shuffle ? "shuffle+deflate" : "deflate") : "none";
    FILE *f = open_csv(csv, "tag,filters,mode,bytes_f16,seconds,mb_per_s");
    size_t bytes = 0;
    if (read_all(t, 1, buf, buf16, &bytes, &err) < 0) goto fail;    /* warm the page cache */
    for (int raw = 0; raw < 2; raw++) {
        double best = 1e30;
        for (int rep = 0; rep < 3; rep++) {
            double dt = read_all(t, raw, buf, buf16, &bytes, &err);
            if (dt < 0) goto fail;
            if (dt < best) best = dt;
        }
        const char *mode = raw ? "raw_f16" : "f16_to_f32";
        double mbs = bytes / best / 1e6;
        printf("  %-8s %-16s %-11s %9.1f MB %8.3f s %9.1f MB/s\n", tag, filters, mode,
               bytes / 1e6, best, mbs);
        if (f) fprintf(f, "%s,%s,%s,%zu,%.6f,%.2f\n", tag, filters, mode, bytes, best, mbs);
    }
    if (f) fclose(f);
    free(buf); free(buf16);
    kv_trace_close(t);
    return 0;
fail:
    fprintf(stderr, "bench_io: %s\n", err.msg);
    return 1;
}

static int cmd_f16(const char *csv)
{
    const size_t n = (size_t)1 << 24;
    uint16_t *src = malloc(n * sizeof *src);
    float *dst = malloc(n * sizeof *dst);
    if (!src || !dst) { fprintf(stderr, "bench_io: out of memory\n"); return 1; }
    for (size_t i = 0, b = 0; i < n; i++, b++) {
        while ((b & 0x7c00) == 0x7c00) b++;              /* skip Inf/NaN patterns */
        src[i] = (uint16_t)b;
    }
    FILE *f = open_csv(csv, "path,values,seconds,mb_per_s,gvalues_per_s");
    int have = kv_f16_to_f32_f16c(src, dst, 16);
    for (int path = 0; path < 2; path++) {
        if (path == 0 && !have) { printf("  %-8s not available on this CPU\n", "f16c"); continue; }
        double best = 1e30;
        for (int rep = 0; rep < 5; rep++) {
            double t0 = now();
            if (path == 0) kv_f16_to_f32(src, dst, n);
            else kv_f16_to_f32_scalar(src, dst, n);
            double dt = now() - t0;
            if (dt < best) best = dt;
        }
        const char *name = path == 0 ? "f16c" : "scalar";
        printf("  %-8s %9.1f MB/s of f16 (%6.2f Gvalues/s)\n", name, n * 2 / best / 1e6, n / best / 1e9);
        if (f) fprintf(f, "%s,%zu,%.6f,%.2f,%.4f\n", name, n, best, n * 2 / best / 1e6, n / best / 1e9);
    }
    if (f) fclose(f);
    free(src); free(dst);
    return 0;
}

int main(int argc, char **argv)
{
    const char *trace = NULL, *csv = NULL, *tag = "";
    if (argc < 2) goto usage;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--trace")) trace = argv[i + 1];
        else if (!strcmp(argv[i], "--csv")) csv = argv[i + 1];
        else if (!strcmp(argv[i], "--tag")) tag = argv[i + 1];
        else goto usage;
    }
    if (argc % 2) goto usage;
    if (!strcmp(argv[1], "read") && trace) return cmd_read(trace, tag, csv);
    if (!strcmp(argv[1], "f16")) return cmd_f16(csv);
usage:
    fprintf(stderr, "usage: bench_io read --trace F [--tag N] [--csv F] | bench_io f16 [--csv F]\n");
    return 2;
}
