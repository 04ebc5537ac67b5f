/* kvreplay check TRACE — full validation (child process, traces/SCHEMA.md) plus a value
 * scan of every float dataset: NaN/Inf counts with the location of the first bad value and
 * max |x| per tensor; warnings for chunk shapes other than the recommended
 * (1, 1, min(T, 256), D). Exit 0 only for a valid file without NaN/Inf.
 *
 * S sequences, T tokens, L layers, H q-heads, Hkv kv-heads, D head_dim, C d_model, V vocab.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "kvtrace.h"
#include "verify.h"

#define SCAN_BLOCK ((size_t)1 << 22)   /* elements per bounded read (16 MiB as f32) */

static const char check_usage[] =
    "usage: kvreplay check [--quiet] TRACE\n"
    "\n"
    "Validates TRACE against traces/SCHEMA.md (in a child process with resource limits),\n"
    "then scans every float dataset for NaN/Inf (reporting the first bad value's location)\n"
    "and its max |x|, and warns about chunk shapes that make replay reads slow.\n"
    "  --quiet   print only problems and the final verdict\n"
    "Exit status: 0 valid and finite, 1 invalid trace or NaN/Inf found, 2 bad command line.\n";

typedef struct scan_result {
    size_t n, n_nan, n_inf;
    double max_abs;
    int have_bad;
    size_t bad_at[4];
} scan_result;

/* Scans dataset `name` (rank <= 4) in bounded blocks: split at the first dim j whose
 * trailing product fits SCAN_BLOCK; index tuples over dims[0..j) one at a time, dim j in
 * steps of m rows. */
static kv_status scan_dataset(kv_trace *t, const char *name, const kv_dset_info *di, float *buf,
                              scan_result *r, kv_error *err)
{
    int rank = di->rank;
    memset(r, 0, sizeof *r);
    size_t tail[5];
    tail[rank] = 1;
    for (int i = rank - 1; i >= 0; i--)
        tail[i] = tail[i + 1] * di->dims[i];        /* <= 2^40, validated */
    if (rank == 0 || tail[0] == 0)
        return KV_OK;
    int j = 0;
    while (tail[j + 1] > SCAN_BLOCK)
        j++;
    size_t m = SCAN_BLOCK / tail[j + 1];
    size_t idx[4] = {0, 0, 0, 0};                    /* outer tuple over dims[0..j) */
    for (;;) {
        for (size_t j0 = 0; j0 < di->dims[j]; j0 += m) {
            size_t start[4] = {0, 0, 0, 0}, count[4];
            for (int i = 0; i < rank; i++)
                count[i] = di->dims[i];
            for (int i = 0; i < j; i++) {
                start[i] = idx[i];
                count[i] = 1;
            }
            start[j] = j0;
            count[j] = di->dims[j] - j0 < m ? di->dims[j] - j0 : m;
            size_t n = count[j] * tail[j + 1];
            kv_status st = kv_trace_read_f32(t, name, rank, start, count, buf, err);
            if (st != KV_OK)
                return st;
            for (size_t e = 0; e < n; e++) {
                float x = buf[e];
                if (isnan(x) || isinf(x)) {
                    if (isnan(x))
                        r->n_nan++;
                    else
                        r->n_inf++;
                    if (!r->have_bad) {
                        r->have_bad = 1;
                        size_t rem = e;
                        for (int i = 0; i < rank; i++) {
                            size_t stride = 1;
                            for (int k = i + 1; k < rank; k++)
                                stride *= count[k];
                            r->bad_at[i] = start[i] + rem / stride;
                            rem %= stride;
                        }
                    }
                } else if (fabs(x) > r->max_abs) {
                    r->max_abs = fabs(x);
                }
            }
            r->n += n;
        }
        int i = j - 1;                               /* next outer tuple */
        while (i >= 0 && ++idx[i] == di->dims[i])
            idx[i--] = 0;
        if (i < 0)
            break;
    }
    return KV_OK;
}

int kvcmd_check(int argc, char **argv)
{
    const char *path = NULL;
    int quiet = 0;
    int ec = kvcmd_one_trace("check", check_usage, argc, argv, &quiet, &path);
    if (ec >= 0) return ec;

    kv_error err = {0};
    kv_trace *t = NULL;
    if (kv_trace_open(path, NULL, &t, &err) != KV_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return KV_EXIT_FAIL;
    }
    const kv_info *in = kv_trace_info(t);
    int rc = KV_EXIT_FAIL, bad = 0;
    float *buf = malloc(SCAN_BLOCK * sizeof *buf);
    if (!buf) {
        fprintf(stderr, "%s: out of memory\n", path);
        goto done;
    }
    if (!quiet)
        printf("%s: valid kvtrace version %d trace (%zu layers, S=%zu, T=%zu); value scan:\n", in->path, in->version,
               in->n_layers, in->n_seq, in->n_tok);

    /* the float datasets of the schema, in file order of importance */
    size_t nnames = 0, cap = in->n_layers * 5 + 16;
    char (*names)[64] = malloc(cap * sizeof *names);
    if (!names) {
        fprintf(stderr, "%s: out of memory\n", path);
        goto done;
    }
    static const char *lt[4] = {"q", "k", "v", "attn_out"};
    for (size_t l = 0; l < in->n_layers; l++)
        for (int k = 0; k < (in->has_attn_out ? 4 : 3); k++)
            snprintf(names[nnames++], 64, "/layers/%zu/%s", l, lt[k]);
    if (in->has_rope) {
        snprintf(names[nnames++], 64, "/rope/cos");
        snprintf(names[nnames++], 64, "/rope/sin");
    }
    if (in->has_readout) {
        snprintf(names[nnames++], 64, "/readout/hidden");
        for (size_t l = 0; l < in->n_layers; l++)
            snprintf(names[nnames++], 64, "/readout/w_o/%zu", l);
        snprintf(names[nnames++], 64, "/readout/w_u");
        if (in->has_b_u)
            snprintf(names[nnames++], 64, "/readout/b_u");
        snprintf(names[nnames++], 64, "/readout/norm_weight");
        if (in->has_norm_bias)
            snprintf(names[nnames++], 64, "/readout/norm_bias");
        snprintf(names[nnames++], 64, "/readout/ref_lse");
        snprintf(names[nnames++], 64, "/readout/ref_top_logits");
    }

    size_t n_chunk_warn = 0;
    char first_warn[600] = "";
    size_t rec_t = in->n_tok < 256 ? in->n_tok : 256;
    for (size_t i = 0; i < nnames; i++) {
        kv_dset_info di;
        scan_result r;
        if (kv_trace_dataset_info(t, names[i], &di, &err) != KV_OK ||
            scan_dataset(t, names[i], &di, buf, &r, &err) != KV_OK) {
            fprintf(stderr, "%s\n", err.msg);
            free(names);
            goto done;
        }
        if (!strncmp(names[i], "/layers/", 8)) {
            int rec = di.chunked && di.chunk[0] == 1 && di.chunk[1] == 1 && di.chunk[2] == rec_t &&
                      di.chunk[3] == in->head_dim;
            if (!rec && n_chunk_warn++ == 0) {
                if (di.chunked)
                    snprintf(first_warn, sizeof first_warn, "%s: chunk shape (%zu, %zu, %zu, %zu)", names[i],
                             di.chunk[0], di.chunk[1], di.chunk[2], di.chunk[3]);
                else
                    snprintf(first_warn, sizeof first_warn, "%s: contiguous layout", names[i]);
            }
        }
        if (r.n_nan || r.n_inf) {
            bad = 1;
            char at[128] = "";
            size_t o = 0;
            for (int k = 0; k < di.rank; k++)
                o += (size_t)snprintf(at + o, sizeof at - o, "%s%zu", k ? ", " : "", r.bad_at[k]);
            fprintf(stderr, "%s: %s: %zu NaN and %zu Inf values; first at [%s]\n", in->path, names[i], r.n_nan,
                    r.n_inf, at);
        }
        if (!quiet)
            printf("  %-26s %-4s %12zu values  max|x| %-12.6g NaN %zu  Inf %zu\n", names[i],
                   di.dtype == KV_DT_F16 ? "f16" : "f32", r.n, r.max_abs, r.n_nan, r.n_inf);
    }
    free(names);
    if (n_chunk_warn)
        fprintf(stderr, "%s: warning: %zu layer tensor(s) not chunked (1, 1, %zu, %zu) as recommended, e.g. %s: "
                        "replay reads will be slow\n", in->path, n_chunk_warn, rec_t, in->head_dim, first_warn);

    /* ==== KERNELS HOOK: attention and read-out verification ==============================
     * verify_attn_out() recomputes attention over the stored q/k/v and compares it with
     * /layers/<l>/attn_out; verify_readout() the read-out with /readout/ref_* (tolerances
     * and their reasons: replay/verify.h). Skipped when the value scan found NaN/Inf.
     * ===================================================================================== */
    int nonfinite = bad;
    double u = verify_compute_u(in);   /* the compute dtype's rounding, beyond float32's */
    if (u > 0 && !quiet && !nonfinite && (in->has_attn_out || in->has_readout))
        printf("  compute dtype %s: tolerances widened by its unit roundoff %.3g (replay/verify.h)\n",
               in->compute_dtype, u);
    if (!nonfinite && in->has_attn_out) {
        verify_attn_result ar;
        if (verify_attn_out(t, VERIFY_ATTN_ATOL + 2 * u, VERIFY_ATTN_RTOL + 2 * u, 0, &ar, &err) != KV_OK) {
            fprintf(stderr, "%s\n", err.msg);
            goto done;
        }
        char line[512];
        snprintf(line, sizeof line, "attn_out vs recomputed attention: %zu (s,l,h) slices, %zu values, "
                 "max |err| %.3g; worst %.3g of tolerance (atol %g + rtol %g |stored| + the f16-storage bound of verify.h) at s=%zu l=%zu "
                 "h=%zu t=%zu d=%zu (recomputed %.7g, stored %.7g)", ar.n_slices, ar.n_elems,
                 ar.max_abs_err, ar.worst_ratio, ar.atol, ar.rtol, ar.w_s, ar.w_l, ar.w_h, ar.w_t,
                 ar.w_d, ar.w_x, ar.w_ref);
        if (!ar.pass) {
            bad = 1;
            fprintf(stderr, "%s: attention check FAILED: %zu of %zu values outside tolerance; %s\n",
                    in->path, ar.n_bad, ar.n_elems, line);
        } else if (!quiet) {
            printf("  %s: ok\n", line);
        }
    } else if (!nonfinite && !quiet) {
        printf("  attn_out absent: attention check skipped\n");
    }
    if (!nonfinite && in->has_readout) {
        verify_readout_result rr;
        if (verify_readout(t, VERIFY_READOUT_ATOL, VERIFY_READOUT_RTOL + 3 * u, 0, &rr, &err) != KV_OK) {
            fprintf(stderr, "%s\n", err.msg);
            goto done;
        }
        char line[600];
        snprintf(line, sizeof line, "read-out vs /readout/ref_*: %zu positions; lse max |err| %.3g, worst "
                 "%.3g of tolerance at s=%zu t=%zu (%.7g vs %.7g); top-8 max |err| %.3g, worst %.3g of "
                 "tolerance at s=%zu t=%zu rank %zu (id %d vs %d, %.7g vs %.7g); %zu near-tie swaps",
                 rr.n_pos, rr.max_lse_err, rr.worst_lse_ratio, rr.lse_s, rr.lse_t, rr.lse_x, rr.lse_ref,
                 rr.max_top_err, rr.worst_top_ratio, rr.top_s, rr.top_t, rr.top_rank, (int)rr.top_id_x,
                 (int)rr.top_id_ref, rr.top_x, rr.top_ref, rr.n_swaps);
        if (!rr.pass) {
            bad = 1;
            fprintf(stderr, "%s: read-out check FAILED: lse outside tolerance at %zu and top-8 at %zu of %zu "
                    "positions; %s\n", in->path, rr.n_lse_bad, rr.n_top_bad, rr.n_pos, line);
        } else if (!quiet) {
            printf("  %s: ok\n", line);
        }
    } else if (!nonfinite && !quiet) {
        printf("  no /readout: read-out check skipped\n");
    }

    if (!nonfinite && in->has_prompt_scores) {
        verify_ps_result pr;
        if (verify_prompt_scores(t, 0, &pr, &err) != KV_OK) {
            fprintf(stderr, "%s\n", err.msg);
            goto done;
        }
        char line[512];
        snprintf(line, sizeof line, "/prompt_scores vs recomputed column sums and row entropies: %zu (s,l,h) slices, "
                 "%zu values; worst %.3g of tolerance (replay/verify.h) at %s[layer %zu, seq %zu, head %zu, pos %zu] "
                 "(recomputed %.7g, stored %.7g)", pr.n_slices, pr.n_elems, pr.worst_ratio,
                 pr.w_ent ? "entropy" : "colsum", pr.w_l, pr.w_s, pr.w_h, pr.w_t, pr.w_x, pr.w_ref);
        if (!pr.pass) {
            bad = 1;
            fprintf(stderr, "%s: prompt-scores check FAILED: %zu of %zu values outside tolerance; %s\n", in->path,
                    pr.n_bad, pr.n_elems, line);
        } else if (!quiet) {
            printf("  %s: ok\n", line);
        }
    }
    if (bad)
        goto done;                  /* each bad tensor has its line on stderr */
    printf("%s: check passed (%zu float datasets scanned, no NaN/Inf)\n", in->path, nnames);
    rc = KV_EXIT_OK;
done:
    free(buf);
    kv_trace_close(t);
    return rc;
}
