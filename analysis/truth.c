/* Proxy vs in-model truth (truth.h).
 *
 * N truth rows (config, sequence); NC paired configurations; B bootstrap resamples.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <spawn.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <stdint.h>
#include <unistd.h>

#include <gsl/gsl_fit.h>
#include <gsl/gsl_rng.h>
#include <gsl/gsl_sort.h>
#include <gsl/gsl_statistics_double.h>

#include "calib.h"
#include "truth.h"

extern char **environ;

enum { TM_KL, TM_NLL, TM_N };
static const char *const tm_name[TM_N] = { "logit_kl", "nll_delta" };
#define TR_CROSS_NAME "nll_delta_by_proxy_kl"

static kv_status fail(kv_error *err, kv_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->code = s;
    return s;
}

/* ---- correlations ------------------------------------------------------------------------- */

double tr_kendall(const double *x, const double *y, size_t n)
{
    /* naive O(n^2) tau-b: (C - D) / sqrt((n0 - tx)(n0 - ty)) */
    double c = 0, d = 0, tx = 0, ty = 0, n0 = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++) {
            double a = x[i] - x[j], b = y[i] - y[j];
            n0 += 1;
            if (a == 0) tx += 1;
            if (b == 0) ty += 1;
            if (a == 0 || b == 0) continue;
            if ((a > 0) == (b > 0)) c += 1; else d += 1;
        }
    double den = sqrt((n0 - tx) * (n0 - ty));
    return den > 0 ? (c - d) / den : NAN;
}

double tr_spearman(const double *x, const double *y, size_t n)
{
    if (n < 2) return NAN;
    double *w = malloc(2 * n * sizeof *w);
    if (!w) return NAN;
    double r = gsl_stats_spearman(x, 1, y, 1, n, w);
    free(w);
    return isfinite(r) ? r : NAN;
}

/* ---- truth file ------------------------------------------------------------------------- */

typedef struct trow { char *config; long long seq; double kl, nll_f, nll_c; } trow;

static int read_1d(hid_t f, const char *name, hid_t mtype, size_t n, void *buf)
{
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT), sp = H5I_INVALID_HID;
    int rc = -1;
    if (d < 0) return -1;
    sp = H5Dget_space(d);
    hsize_t dim = 0;
    if (sp >= 0 && H5Sget_simple_extent_ndims(sp) == 1 && H5Sget_simple_extent_dims(sp, &dim, NULL) == 1 &&
        dim == n && (n == 0 || H5Dread(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0))
        rc = 0;
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(d);
    return rc;
}

static kv_status load_truth(const char *path, trow **out, size_t *n_out, char *apply, size_t apply_cap, kv_error *err)
{
    hid_t f = H5I_INVALID_HID, d = H5I_INVALID_HID, ft = H5I_INVALID_HID, mt = H5I_INVALID_HID, a = H5I_INVALID_HID;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    trow *rows = NULL;
    char *sbuf = NULL;
    long long *seq = NULL;
    double *kl = NULL, *nf = NULL, *nc = NULL;
    size_t N = 0;
    kv_status st = KV_ERR_FORMAT;
    if (access(path, R_OK)) return fail(err, KV_ERR_IO, "--truth %s: %s", path, strerror(errno));
    f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return fail(err, KV_ERR_FORMAT, "--truth %s: not an HDF5 file", path);
    long long ver = 0;
    a = H5Aopen(f, "kvtrace_truth_version", H5P_DEFAULT);
    if (a < 0 || H5Aread(a, H5T_NATIVE_LLONG, &ver) < 0 || ver != 1) {
        fail(err, KV_ERR_VERSION, "--truth %s: not a kvtrace truth file (kvtrace_truth_version 1 expected)", path);
        goto done;
    }
    H5Aclose(a);
    a = H5Aopen(f, "apply", H5P_DEFAULT);
    snprintf(apply, apply_cap, "?");
    if (a >= 0) {
        hid_t at = H5Aget_type(a);
        if (at >= 0 && H5Tis_variable_str(at) > 0) {
            char *s = NULL;
            hid_t vt = H5Tcopy(H5T_C_S1);
            H5Tset_size(vt, H5T_VARIABLE);
            H5Tset_cset(vt, H5Tget_cset(at));
            if (H5Aread(a, vt, &s) >= 0 && s) { snprintf(apply, apply_cap, "%s", s); H5free_memory(s); }
            H5Tclose(vt);
        }
        if (at >= 0) H5Tclose(at);
        H5Aclose(a);
    }
    a = H5I_INVALID_HID;
    d = H5Dopen2(f, "rows/config", H5P_DEFAULT);
    if (d < 0) { fail(err, KV_ERR_FORMAT, "--truth %s: /rows/config missing", path); goto done; }
    {
        hid_t sp = H5Dget_space(d);
        hsize_t dim = 0;
        int ok = sp >= 0 && H5Sget_simple_extent_ndims(sp) == 1 && H5Sget_simple_extent_dims(sp, &dim, NULL) == 1;
        if (sp >= 0) H5Sclose(sp);
        if (!ok || dim > 10000000) { fail(err, KV_ERR_FORMAT, "--truth %s: /rows/config: expected rank 1", path); goto done; }
        N = (size_t)dim;
    }
    ft = H5Dget_type(d);
    size_t w = ft >= 0 ? H5Tget_size(ft) : 0;
    if (ft < 0 || H5Tget_class(ft) != H5T_STRING || H5Tis_variable_str(ft) > 0 || w == 0 || w > 4096) {
        fail(err, KV_ERR_FORMAT, "--truth %s: /rows/config: fixed-length strings expected", path);
        goto done;
    }
    mt = H5Tcopy(H5T_C_S1);
    H5Tset_size(mt, w + 1);
    H5Tset_strpad(mt, H5T_STR_NULLTERM);
    sbuf = calloc(N ? N : 1, w + 1);
    seq = malloc((N ? N : 1) * sizeof *seq);
    kl = malloc((N ? N : 1) * sizeof *kl); nf = malloc((N ? N : 1) * sizeof *nf); nc = malloc((N ? N : 1) * sizeof *nc);
    rows = calloc(N ? N : 1, sizeof *rows);
    if (!sbuf || !seq || !kl || !nf || !nc || !rows) { st = fail(err, KV_ERR_NOMEM, "out of memory"); goto done; }
    if ((N && H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, sbuf) < 0) ||
        read_1d(f, "rows/seq", H5T_NATIVE_LLONG, N, seq) || read_1d(f, "rows/logit_kl", H5T_NATIVE_DOUBLE, N, kl) ||
        read_1d(f, "rows/nll_full", H5T_NATIVE_DOUBLE, N, nf) || read_1d(f, "rows/nll_comp", H5T_NATIVE_DOUBLE, N, nc)) {
        fail(err, KV_ERR_FORMAT, "--truth %s: /rows: missing or inconsistent datasets (config, seq, logit_kl, nll_full, nll_comp of %zu rows)", path, N);
        goto done;
    }
    for (size_t i = 0; i < N; i++) {
        if (!isfinite(kl[i]) || !isfinite(nf[i]) || !isfinite(nc[i])) {
            fail(err, KV_ERR_VALUE, "--truth %s: row %zu: NaN/Inf metric", path, i);
            goto done;
        }
        rows[i].config = strndup(sbuf + i * (w + 1), w);
        if (!rows[i].config) { st = fail(err, KV_ERR_NOMEM, "out of memory"); goto done; }
        rows[i].seq = seq[i]; rows[i].kl = kl[i]; rows[i].nll_f = nf[i]; rows[i].nll_c = nc[i];
    }
    *out = rows; *n_out = N;
    rows = NULL;
    st = KV_OK;
done:
    if (rows) { for (size_t i = 0; i < N; i++) free(rows[i].config); free(rows); }
    free(sbuf); free(seq); free(kl); free(nf); free(nc);
    if (a >= 0) H5Aclose(a);
    if (mt >= 0) H5Tclose(mt);
    if (ft >= 0) H5Tclose(ft);
    if (d >= 0) H5Dclose(d);
    if (f >= 0) H5Fclose(f);
    return st;
}

/* ---- per_layer.csv (kvreplay run --per-layer-readout) -------------------------------------- */

typedef struct plrow { char *config; long long seq, layer; double kl, nll; } plrow;

static int pl_cmp(const void *a, const void *b)
{
    const plrow *x = a, *y = b;
    int c = strcmp(x->config, y->config);
    if (c) return c;
    if (x->seq != y->seq) return x->seq < y->seq ? -1 : 1;
    return (x->layer > y->layer) - (x->layer < y->layer);
}

/* First of the sorted rows of (config, seq); rows of it run while config and seq match
 * (pl_match); npl when there are none. */
static size_t pl_find(const plrow *pl, size_t npl, const char *config, long long seq)
{
    plrow key = { (char *)config, seq, -1, 0, 0 };
    size_t lo = 0, hi = npl;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (pl_cmp(&pl[mid], &key) < 0) lo = mid + 1; else hi = mid;
    }
    return lo;
}

static int pl_match(const plrow *r, const char *config, long long seq)
{
    return r->seq == seq && !strcmp(r->config, config);
}

/* Rows of every results directory's per_layer.csv, sorted by (config, seq, layer) for
 * pl_find; *n = 0 when none has one. Empty fields are NaN. */
/* A results or gains file read whole and bounded (res_read_file: regular files only, so a
 * FIFO cannot block) and handed out as a FILE (close it, then free *buf). NULL: *missing
 * set, or err set. */
static FILE *open_checked(const char *path, char **buf, int *missing, kv_error *err)
{
    size_t len = 0;
    *buf = NULL;
    *missing = 0;
    if (res_read_file(path, buf, &len, missing, err) != KV_OK || *missing) return NULL;
    FILE *f = fmemopen(*buf, len ? len : 1, "r");
    if (!f) { free(*buf); *buf = NULL; fail(err, KV_ERR_NOMEM, "%s: out of memory", path); }
    return f;
}

static kv_status load_per_layer(const res_set *rs, plrow **out, size_t *n_out, size_t *L_out, kv_error *err)
{
    plrow *rows = NULL;
    size_t n = 0, cap = 0, L = 0;
    char *line = NULL;
    size_t lcap = 0;
    *out = NULL; *n_out = 0; *L_out = 0;
    for (size_t d = 0; d < rs->n_dirs; d++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/per_layer.csv", rs->dirs[d].path);
        char *fbuf = NULL;
        int missing = 0;
        FILE *f = open_checked(path, &fbuf, &missing, err);
        if (missing) continue;
        if (!f) { free(line); for (size_t i = 0; i < n; i++) free(rows[i].config); free(rows); return KV_ERR_FORMAT; }
        size_t ln = 0;
        while (getline(&line, &lcap, f) > 0) {
            if (++ln == 1) continue;                           /* header */
            line[strcspn(line, "\r\n")] = 0;
            char *fld[6], *p = line;
            int nf = 0;
            for (; nf < 6; nf++) { fld[nf] = p; p = strchr(p, ','); if (!p) { nf++; break; } *p++ = 0; }
            if (nf != 6 || p) { fclose(f); free(fbuf); free(line); goto bad; }
            if (n == cap) {
                cap = cap ? 2 * cap : 1024;
                plrow *q = realloc(rows, cap * sizeof *q);
                if (!q) { fclose(f); free(fbuf); free(line); for (size_t i = 0; i < n; i++) free(rows[i].config); free(rows); return fail(err, KV_ERR_NOMEM, "out of memory"); }
                rows = q;
            }
            plrow *r = &rows[n];
            char *e1, *e2;
            r->seq = strtoll(fld[2], &e1, 10);
            r->layer = strtoll(fld[3], &e2, 10);
            r->kl = *fld[4] ? strtod(fld[4], NULL) : NAN;
            r->nll = *fld[5] ? strtod(fld[5], NULL) : NAN;
            if (*e1 || *e2 || r->layer < 0 || r->layer > 100000) { fclose(f); free(fbuf); free(line); goto bad; }
            if (!(r->config = strdup(fld[1]))) { fclose(f); free(fbuf); free(line); for (size_t i = 0; i < n; i++) free(rows[i].config); free(rows); return fail(err, KV_ERR_NOMEM, "out of memory"); }
            if ((size_t)r->layer + 1 > L) L = (size_t)r->layer + 1;
            n++;
        }
        fclose(f); free(fbuf);
        continue;
    bad:
        for (size_t i = 0; i < n; i++) free(rows[i].config);
        free(rows);
        return fail(err, KV_ERR_FORMAT, "%s line %zu: expected config_id,config,seq,layer,logit_kl_layer,nll_delta_layer", path, ln);
    }
    free(line);
    if (n) qsort(rows, n, sizeof *rows, pl_cmp);
    *out = rows; *n_out = n; *L_out = L;
    return KV_OK;
}

/* ---- statistics of one metric -------------------------------------------------------------- */

typedef struct tstat {
    size_t n;
    double rho, rho_lo, rho_hi, tau, tau_lo, tau_hi, slope, intercept, med_ratio;
} tstat;

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ty[i] / px[i] over the configurations idx[0..n) (all n when idx is NULL) whose proxy is
 * positive: how many times the true effect exceeds the direct-path proxy's. n: the
 * configurations considered, k: those with a ratio; med, lo, hi NAN when k = 0. */
typedef struct { size_t n, k; double med, lo, hi; } tratio;

static tratio ratio_stats(const double *px, const double *ty, const size_t *idx, size_t n, int *oom)
{
    tratio o = { n, 0, NAN, NAN, NAN };
    double *r = malloc((n ? n : 1) * sizeof *r);
    if (!r) { if (oom) *oom = 1; return o; }
    for (size_t a = 0; a < n; a++) {
        size_t i = idx ? idx[a] : a;
        if (px[i] > 0) r[o.k++] = ty[i] / px[i];
    }
    if (o.k) {
        qsort(r, o.k, sizeof *r, cmp_d);
        o.med = o.k % 2 ? r[o.k / 2] : 0.5 * (r[o.k / 2 - 1] + r[o.k / 2]);
        o.lo = r[0]; o.hi = r[o.k - 1];
    }
    free(r);
    return o;
}

static void corr_stats(const double *px, const double *ty, size_t n, size_t B, uint64_t seed, tstat *o)
{
    o->n = n;
    o->rho = tr_spearman(px, ty, n);
    o->tau = tr_kendall(px, ty, n);
    o->rho_lo = o->rho_hi = o->tau_lo = o->tau_hi = NAN;
    o->slope = o->intercept = o->med_ratio = NAN;
    if (n >= 2) {
        double c0, c1, c00, c01, c11, ss;
        if (gsl_fit_linear(px, 1, ty, 1, n, &c0, &c1, &c00, &c01, &c11, &ss) == 0 && isfinite(c1)) {
            o->slope = c1; o->intercept = c0;
        }
    }
    o->med_ratio = ratio_stats(px, ty, NULL, n, NULL).med;
    if (B == 0 || n < 3) return;
    double *bx = malloc(n * sizeof *bx), *by = malloc(n * sizeof *by);
    double *rs = malloc(B * sizeof *rs), *ts = malloc(B * sizeof *ts);
    gsl_rng *g = gsl_rng_alloc(gsl_rng_mt19937);
    if (bx && by && rs && ts && g) {
        gsl_rng_set(g, (unsigned long)seed);
        size_t nr = 0, nt = 0;
        for (size_t b = 0; b < B; b++) {
            for (size_t i = 0; i < n; i++) {
                size_t j = gsl_rng_uniform_int(g, n);
                bx[i] = px[j]; by[i] = ty[j];
            }
            double a = tr_spearman(bx, by, n), t = tr_kendall(bx, by, n);
            if (isfinite(a)) rs[nr++] = a;
            if (isfinite(t)) ts[nt++] = t;
        }
        if (nr) { gsl_sort(rs, 1, nr); o->rho_lo = gsl_stats_quantile_from_sorted_data(rs, 1, nr, 0.025); o->rho_hi = gsl_stats_quantile_from_sorted_data(rs, 1, nr, 0.975); }
        if (nt) { gsl_sort(ts, 1, nt); o->tau_lo = gsl_stats_quantile_from_sorted_data(ts, 1, nt, 0.025); o->tau_hi = gsl_stats_quantile_from_sorted_data(ts, 1, nt, 0.975); }
    }
    if (g) gsl_rng_free(g);
    free(bx); free(by); free(rs); free(ts);
}

/* ---- outputs ------------------------------------------------------------------------------ */

static void fmt_num(char *b, size_t cap, double x)
{
    if (isfinite(x)) snprintf(b, cap, "%.3g", x); else snprintf(b, cap, "n/a");
}

static int render(const rp_ctx *c, const char *figdir, const char *script)
{
    if (!c->gnuplot) return -1;
    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa)) return -1;
    int ok = !posix_spawn_file_actions_addchdir_np(&fa, figdir) &&
             !posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0) &&
             !posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0) &&
             !posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    char *argv[] = { (char *)c->gnuplot, (char *)script, NULL };
    int rc = ok ? posix_spawn(&pid, c->gnuplot, &fa, NULL, argv, environ) : -1;
    posix_spawn_file_actions_destroy(&fa);
    if (rc) return -1;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* The calibrations tried, in report order. feature: TM_KL = per-layer logit KL, TM_NLL =
 * per-layer ΔNLL; target: the true metric; primary: the one shown in tables/truth.csv. */
typedef struct tcal_def { const char *name, *features, *fit; int method, feature, target, primary; } tcal_def;
static const tcal_def tr_cal_defs[] = {
    { "kl_nnls", "per-layer logit_kl", "NNLS", CAL_NNLS, TM_KL, TM_KL, 1 },
    { "nll_ols", "per-layer nll_delta", "OLS (free sign)", CAL_OLS, TM_NLL, TM_NLL, 1 },
    { "nll_from_kl", "per-layer logit_kl", "NNLS", CAL_NNLS, TM_KL, TM_NLL, 0 },
};
#define TR_NCAL (sizeof tr_cal_defs / sizeof tr_cal_defs[0])
typedef struct tcal { const tcal_def *def; tstat st; double *pred, *g; } tcal;

/* CSV fields ",%.9g" for v[0..n), empty where not finite. */
static void put_nums(FILE *f, const double *v, int n)
{
    for (int i = 0; i < n; i++) { if (isfinite(v[i])) fprintf(f, ",%.9g", v[i]); else fputs(",", f); }
}

/* An identity field of truth_calib.csv (model names hold commas: "ref-random:5:n_layers=2,d_model=32"):
 * '%', ',', control characters and non-ASCII bytes as %XX. */
static void put_id(FILE *f, const char *v)
{
    for (const unsigned char *p = (const unsigned char *)(v ? v : ""); *p; p++)
        if (*p == '%' || *p == ',' || *p < 0x20 || *p >= 0x7f) fprintf(f, "%%%02X", *p);
        else fputc(*p, f);
}

/* ---- what users decide with: budget buckets, winners, regret ------------------------------ */

/* Keep-fraction buckets (lo, hi]: the nominal keep of the configuration, or its realised
 * keep_frac when it has no keep (budget=N, encodings). Memory buckets: the measured
 * full_bytes / kv_bytes within TR_MEM_TOL of 2x, 4x, 8x. */
static const double tr_keep_edges[] = { 0, 0.1, 0.25, 0.4, 0.6, 1.0 };
#define TR_NKEEP (sizeof tr_keep_edges / sizeof tr_keep_edges[0] - 1)
static const double tr_mem_targets[] = { 2, 4, 8 };
#define TR_NMEM (sizeof tr_mem_targets / sizeof tr_mem_targets[0])
#define TR_NBUCKET (TR_NKEEP + TR_NMEM)
#define TR_MEM_TOL 0.15
#define TR_FOLD_WARN 3.0        /* fold-to-fold max/min of a layer's gain above which report.md warns */

/* Per paired configuration: its bucket membership ([TR_NBUCKET] flags); ratio: the whole
 * cache's memory ratio, pratio the prompt's alone (NaN when not defined: prompt_ratio_seq). */
typedef struct tbucket_in { double keep, ratio, pratio; int keep_realised; unsigned char in[TR_NBUCKET]; } tbucket_in;

/* What the prompt-only ratio needs from provenance.json: the fp16 K+V bytes of one token over
 * every layer and kv head (4 D Hkv L) and the position index bytes of one entry over them
 * (4 Hkv L). Both 0 when unknown (results written before provenance recorded n_kv_heads and
 * head_dim), when the directories disagree, or when a run is online (no prompt/decode split of
 * the cache). */
typedef struct tdims { double tok, idx; } tdims;

static tdims prompt_dims(const res_set *rs)
{
    tdims d = { 0, 0 };
    for (size_t i = 0; i < rs->n_dirs; i++) {
        const char *L = res_prov(&rs->dirs[i], "n_layers"), *Hkv = res_prov(&rs->dirs[i], "n_kv_heads"),
                   *D = res_prov(&rs->dirs[i], "head_dim"), *mode = res_prov(&rs->dirs[i], "mode");
        if (!L || !Hkv || !D || !mode || strcmp(mode, "prefill")) return (tdims){ 0, 0 };
        double lh = atof(L) * atof(Hkv), tok = 4.0 * atof(D) * lh;
        if (!(tok > 0) || (i && tok != d.tok)) return (tdims){ 0, 0 };
        d.tok = tok;
        d.idx = 4.0 * lh;
    }
    return d;
}

/* The prompt-only memory ratio of one sequence: the full prompt's bytes over what the compressed
 * cache spends on the prompt, i.e. kv_bytes less the n_query exact decode entries (fp16 rows, plus
 * their position indices when the cache stores indices, i.e. kv_bytes != full_bytes). The
 * sequence length is full_bytes / tok. Defined for caches of the trace's own rows under the
 * prefill protocol (eviction); NaN for encoded or merged rows (kv_mse recorded: the decode
 * entries are encoded too), for the decode-time presses (they evict decode entries), when the
 * length is not a whole number of tokens (sliding-window layers count fewer) or the prompt
 * part is not positive. */
static double prompt_ratio_seq(const res_config *cf, const res_seq *s, const tdims *d)
{
    static const char *const decode_time[] = { "decoding", "dms", "cam" };
    double F = s->v[RM_FULL_BYTES], K = s->v[RM_KV_BYTES], q = s->n_query;
    if (!(d->tok > 0) || !isfinite(F) || !isfinite(K) || !isfinite(q) || isfinite(s->v[RM_KV_MSE_K]) ||
        isfinite(s->v[RM_KV_MSE_V]))
        return NAN;
    for (size_t i = 0; i < sizeof decode_time / sizeof decode_time[0]; i++)
        if (cf->family && !strcmp(cf->family, decode_time[i])) return NAN;
    double n = round(F / d->tok);
    if (fabs(F - n * d->tok) > 1e-8 * F || n <= q) return NAN;     /* %.9g of the CSV */
    double kp = K - q * (d->tok + (K != F ? d->idx : 0));
    return kp > 0 ? (n - q) * d->tok / kp : NAN;
}

static double mean_metric(const res_config *cf, int m)
{
    double s = 0;
    size_t k = 0;
    for (size_t j = 0; j < cf->n_seqs; j++) if (isfinite(cf->seqs[j].v[m])) { s += cf->seqs[j].v[m]; k++; }
    return k ? s / (double)k : NAN;
}

static void bucket_of(const res_config *cf, const tdims *d, tbucket_in *b)
{
    memset(b, 0, sizeof *b);
    b->keep_realised = !(cf->budget_kind && !strcmp(cf->budget_kind, "keep") && isfinite(cf->budget_value));
    b->keep = b->keep_realised ? mean_metric(cf, RM_KEEP_FRAC) : cf->budget_value;
    b->ratio = mean_metric(cf, RM_RATIO);
    double ps = 0;                      /* mean over the sequences; NaN when one has none */
    for (size_t j = 0; j < cf->n_seqs; j++) ps += prompt_ratio_seq(cf, &cf->seqs[j], d);
    b->pratio = cf->n_seqs ? ps / (double)cf->n_seqs : NAN;
    for (size_t k = 0; k < TR_NKEEP; k++)
        b->in[k] = isfinite(b->keep) && b->keep > tr_keep_edges[k] && b->keep <= tr_keep_edges[k + 1];
    for (size_t k = 0; k < TR_NMEM; k++)
        b->in[TR_NKEEP + k] = isfinite(b->ratio) && fabs(b->ratio / tr_mem_targets[k] - 1) <= TR_MEM_TOL;
}

/* rr: min and max over the members idx [n] of the whole-cache ratio, then of the prompt-only
 * ratio among the members that have one (NaN when none does). */
static void ratio_range(const tbucket_in *bi, const size_t *idx, size_t n, double *rr)
{
    rr[0] = rr[1] = rr[2] = rr[3] = NAN;
    for (size_t i = 0; i < n; i++) {
        const tbucket_in *b = &bi[idx[i]];
        for (int w = 0; w < 2; w++) {
            double x = w ? b->pratio : b->ratio;
            if (!isfinite(x)) continue;
            if (!(x >= rr[2 * w])) rr[2 * w] = x;        /* NaN start: the first value */
            if (!(x <= rr[2 * w + 1])) rr[2 * w + 1] = x;
        }
    }
}

/* "2.01-2.3 (3.9-4.6)": a range (one number when min = max), the prompt part "(-)" when none. */
static void ratio_text(const double *rr, char *buf, size_t cap)
{
    char r[2][64];
    for (int w = 0; w < 2; w++) {
        if (!isfinite(rr[2 * w])) { snprintf(r[w], sizeof r[w], "-"); continue; }
        if (rr[2 * w] == rr[2 * w + 1]) snprintf(r[w], sizeof r[w], "%.3gx", rr[2 * w]);
        else snprintf(r[w], sizeof r[w], "%.3g-%.3gx", rr[2 * w], rr[2 * w + 1]);
    }
    snprintf(buf, cap, "%s (%s)", r[0], r[1]);
}

static void bucket_label(size_t k, char *buf, size_t cap)
{
    if (k < TR_NKEEP) snprintf(buf, cap, "keep (%g-%g]", tr_keep_edges[k], tr_keep_edges[k + 1]);
    else snprintf(buf, cap, "memory %gx", tr_mem_targets[k - TR_NKEEP]);
}

/* One bucket's decision over the members idx [n] (pair indices, distinct): proxy winner
 * (lowest proxy), true winner (lowest truth), ties to the first member; regret = truth of
 * the proxy's pick - the lowest truth; rel = regret / lowest truth (NaN when that is 0). */
typedef struct tdec { size_t n, pw, tw; int agree; double regret, rel, tau; } tdec;

static void decide(const double *p, const double *t, const size_t *idx, size_t n, double *wx, double *wy, tdec *o)
{
    o->n = n;
    o->pw = o->tw = n ? idx[0] : 0;
    o->agree = 0;
    o->regret = o->rel = o->tau = NAN;
    if (!n) return;
    for (size_t i = 1; i < n; i++) {
        if (p[idx[i]] < p[o->pw]) o->pw = idx[i];
        if (t[idx[i]] < t[o->tw]) o->tw = idx[i];
    }
    o->agree = o->pw == o->tw || t[o->pw] == t[o->tw];
    o->regret = t[o->pw] - t[o->tw];
    o->rel = t[o->tw] > 0 ? o->regret / t[o->tw] : NAN;
    for (size_t i = 0; i < n; i++) { wx[i] = p[idx[i]]; wy[i] = t[idx[i]]; }
    o->tau = n >= 2 ? tr_kendall(wx, wy, n) : NAN;
}

/* Headline over the buckets with >= 2 members of the included pairs (inc [np], NULL = all):
 * *agree of *nb buckets agree; mean absolute regret; when mean_rel is not NULL, the mean
 * over the buckets of regret / the bucket's lowest truth (buckets whose lowest truth is 0
 * left out of it). */
static void headline_rel(const double *p, const double *t, const tbucket_in *bi, const unsigned char *inc, size_t np,
                         size_t *idx, double *wx, double *wy, size_t *agree, size_t *nb, double *mean_regret,
                         double *mean_rel)
{
    double s = 0, sr = 0;
    size_t nr = 0;
    *agree = *nb = 0;
    for (size_t k = 0; k < TR_NBUCKET; k++) {
        size_t n = 0;
        for (size_t i = 0; i < np; i++) if ((!inc || inc[i]) && bi[i].in[k]) idx[n++] = i;
        if (n < 2) continue;
        tdec d;
        decide(p, t, idx, n, wx, wy, &d);
        (*nb)++;
        *agree += (size_t)d.agree;
        s += d.regret;
        if (isfinite(d.rel)) { sr += d.rel; nr++; }
    }
    *mean_regret = *nb ? s / (double)*nb : NAN;
    if (mean_rel) *mean_rel = nr ? sr / (double)nr : NAN;
}

static void headline(const double *p, const double *t, const tbucket_in *bi, const unsigned char *inc, size_t np,
                     size_t *idx, double *wx, double *wy, size_t *agree, size_t *nb, double *mean_regret)
{
    headline_rel(p, t, bi, inc, np, idx, wx, wy, agree, nb, mean_regret, NULL);
}

/* The (configuration, sequence) values of the paired configurations: pair, seq, proxy and
 * true logit KL, in pairing order. */
typedef struct tps { size_t pair; long long seq; double p, t; } tps;

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* The distinct sequence ids of ps [nps], ascending, into seqs [nps]; returns how many. */
static size_t distinct_seqs(const tps *ps, size_t nps, long long *seqs)
{
    size_t S = 0;
    for (size_t i = 0; i < nps; i++) seqs[i] = ps[i].seq;
    qsort(seqs, nps, sizeof *seqs, cmp_ll);
    for (size_t i = 0; i < nps; i++) if (!S || seqs[S - 1] != seqs[i]) seqs[S++] = seqs[i];
    return S;
}

/* The family-scaled proxy, held out by sequence. For each sequence s: each family's factor is
 * the median over its pairs of (mean truth / mean proxy over the sequences other than s,
 * pairs with a positive proxy there), and scales the proxy of the family's pairs on s. A
 * pair's prediction (pred [np]) is the mean over its sequences of those scaled proxies: no
 * truth of the sequence being predicted enters its factor. NaN for a pair when the trace
 * has one sequence, or its family has no factor without s. */
static kv_status family_scale_loso(const tps *ps, size_t nps, const int *fam, size_t np, double *pred, kv_error *err)
{
    long long *seqs = malloc((nps + 1) * sizeof *seqs);
    double *sp = malloc((np + 1) * sizeof *sp), *st = malloc((np + 1) * sizeof *st);
    double *fac = malloc((np + 1) * sizeof *fac), *sum = calloc(np + 1, sizeof *sum);
    size_t *cnt = calloc(np + 1, sizeof *cnt), *nk = malloc((np + 1) * sizeof *nk), *mem = malloc((np + 1) * sizeof *mem);
    size_t S = 0;
    int oom = 0;
    kv_status rc = KV_OK;
    if (!seqs || !sp || !st || !fac || !sum || !cnt || !nk || !mem) { rc = fail(err, KV_ERR_NOMEM, "out of memory"); goto out; }
    S = distinct_seqs(ps, nps, seqs);
    for (size_t k = 0; S >= 2 && k < S; k++) {
        for (size_t i = 0; i < np; i++) { sp[i] = st[i] = 0; nk[i] = 0; }
        for (size_t i = 0; i < nps; i++)
            if (ps[i].seq != seqs[k]) { sp[ps[i].pair] += ps[i].p; st[ps[i].pair] += ps[i].t; nk[ps[i].pair]++; }
        for (size_t f = 0; f < np; f++) {
            fac[f] = NAN;
            if (fam[f] != (int)f) continue;
            size_t m = 0;
            for (size_t i = f; i < np; i++) if (fam[i] == (int)f && nk[i]) mem[m++] = i;
            fac[f] = ratio_stats(sp, st, mem, m, &oom).med;     /* of sums: the counts cancel */
        }
        if (oom) { rc = fail(err, KV_ERR_NOMEM, "out of memory"); goto out; }
        for (size_t i = 0; i < nps; i++)
            if (ps[i].seq == seqs[k]) { sum[ps[i].pair] += ps[i].p * fac[fam[ps[i].pair]]; cnt[ps[i].pair]++; }
    }
    for (size_t i = 0; i < np; i++) pred[i] = S >= 2 && cnt[i] ? sum[i] / (double)cnt[i] : NAN;
out:
    free(seqs); free(sp); free(st); free(fac); free(sum); free(cnt); free(nk); free(mem);
    return rc;
}

/* The per-layer calibration (kl_nnls) held out by strategy family AND sequence: for each
 * family f and sequence s, NNLS gains fitted on the other families' pairs, their per-layer
 * features (psx [nps][L]) and truth averaged over the sequences other than s, predict f's
 * pairs on s (psx . g); a pair's prediction (pred [np]) is the mean over its sequences. NaN
 * when the trace has one sequence or f is the only family. */
static kv_status cal_family_seq_predict(const tps *ps, const double *psx, size_t nps, const int *fam, size_t np,
                                        size_t L, double *pred, kv_error *err)
{
    long long *seqs = malloc((nps + 1) * sizeof *seqs);
    double *A = malloc((np * L + 1) * sizeof *A), *b = malloc((np + 1) * sizeof *b), *g = malloc((L + 1) * sizeof *g);
    double *sum = calloc(np + 1, sizeof *sum);
    size_t *cnt = calloc(np + 1, sizeof *cnt), *nk = malloc((np + 1) * sizeof *nk), *row = malloc((np + 1) * sizeof *row);
    size_t S = 0;
    kv_status rc = KV_OK;
    if (!seqs || !A || !b || !g || !sum || !cnt || !nk || !row) { rc = fail(err, KV_ERR_NOMEM, "out of memory"); goto out; }
    S = distinct_seqs(ps, nps, seqs);
    for (size_t f = 0; S >= 2 && f < np; f++) {
        if (fam[f] != (int)f) continue;
        for (size_t k = 0; k < S; k++) {
            /* training rows: the other families' pairs, means over the sequences other than s */
            size_t m = 0;
            for (size_t i = 0; i < np; i++) { nk[i] = 0; row[i] = SIZE_MAX; }
            for (size_t i = 0; i < np; i++) if (fam[i] != (int)f) row[i] = m++;
            for (size_t i = 0; i < m * L; i++) A[i] = 0;
            for (size_t i = 0; i < m; i++) b[i] = 0;
            for (size_t e = 0; e < nps; e++) {
                size_t i = ps[e].pair;
                if (row[i] == SIZE_MAX || ps[e].seq == seqs[k]) continue;
                for (size_t l = 0; l < L; l++) A[row[i] * L + l] += psx[e * L + l];
                b[row[i]] += ps[e].t;
                nk[i]++;
            }
            /* a pair seen only on s has no training row: drop it (compact) */
            size_t w = 0;
            for (size_t i = 0; i < np; i++) {
                if (row[i] == SIZE_MAX || !nk[i]) continue;
                for (size_t l = 0; l < L; l++) A[w * L + l] = A[row[i] * L + l] / (double)nk[i];
                b[w++] = b[row[i]] / (double)nk[i];
            }
            if (!w) continue;
            if ((rc = cal_fit(CAL_NNLS, A, b, w, L, g, err)) != KV_OK) goto out;
            for (size_t e = 0; e < nps; e++) {
                size_t i = ps[e].pair;
                if (fam[i] != (int)f || ps[e].seq != seqs[k]) continue;
                double y = 0;
                for (size_t l = 0; l < L; l++) y += psx[e * L + l] * g[l];
                sum[i] += y;
                cnt[i]++;
            }
        }
    }
    for (size_t i = 0; i < np; i++) pred[i] = S >= 2 && cnt[i] ? sum[i] / (double)cnt[i] : NAN;
out:
    free(seqs); free(A); free(b); free(g); free(sum); free(cnt); free(nk); free(row);
    return rc;
}

/* Two-level bootstrap of the logit KL ranking and decisions. Families: the F distinct
 * families of the pairs (fam [np] = index of the family's first pair), in order of first
 * appearance; sequences: the S distinct sequence ids, ascending. Replicate b: F family
 * draws, then S sequence draws, each gsl_rng_uniform_int of one mt19937 stream seeded with
 * `seed`; a pair's proxy and truth = the mean over the drawn sequences it has (with their
 * multiplicity); each pair enters the Spearman once per draw of its family; the headline
 * uses the distinct drawn pairs. Every replicate's draws and statistics go to bf (CSV). */
typedef struct tboot { double rho_lo, rho_hi, agree_lo, agree_hi, reg_lo, reg_hi; size_t B, F, S; } tboot;

static double pct(double *v, size_t n, double q)
{
    if (!n) return NAN;
    gsl_sort(v, 1, n);
    return gsl_stats_quantile_from_sorted_data(v, 1, n, q);
}

static kv_status two_level_boot(const tps *ps, size_t nps, const int *fam, const tbucket_in *bi, size_t np, size_t B,
                                uint64_t seed, FILE *bf, tboot *o, kv_error *err)
{
    kv_status st = KV_OK;
    memset(o, 0, sizeof *o);
    o->rho_lo = o->rho_hi = o->agree_lo = o->agree_hi = o->reg_lo = o->reg_hi = NAN;
    size_t *fams = malloc((np + 1) * sizeof *fams), F = 0, S = 0;
    long long *seqs = malloc((nps + 1) * sizeof *seqs);
    size_t *fd = NULL, *sd = NULL, *idx = NULL, *mult = NULL;
    double *w = NULL, *sp = NULL, *st_ = NULL, *pp = NULL, *tt = NULL, *bx = NULL, *by = NULL, *wx = NULL, *wy = NULL,
           *rr = NULL, *ag = NULL, *rg = NULL;
    unsigned char *inc = NULL;
    gsl_rng *g = NULL;
    if (!fams || !seqs) { st = fail(err, KV_ERR_NOMEM, "out of memory"); goto done; }
    for (size_t i = 0; i < np; i++) if (fam[i] == (int)i) fams[F++] = i;
    S = distinct_seqs(ps, nps, seqs);
    o->F = F; o->S = S; o->B = B;
    fprintf(bf, "replicate,families,seqs,spearman,winner_agreement,mean_regret\n");
    if (!B || !F || !S) goto done;
    size_t cap = np * F + 1;
    fd = malloc(F * sizeof *fd); sd = malloc(S * sizeof *sd); idx = malloc((np + 1) * sizeof *idx);
    mult = malloc((np + 1) * sizeof *mult); w = malloc(S * sizeof *w);
    sp = calloc(np + 1, sizeof *sp); st_ = calloc(np + 1, sizeof *st_); pp = malloc((np + 1) * sizeof *pp);
    tt = malloc((np + 1) * sizeof *tt); bx = malloc(cap * sizeof *bx); by = malloc(cap * sizeof *by);
    wx = malloc((np + 1) * sizeof *wx); wy = malloc((np + 1) * sizeof *wy); inc = malloc(np + 1);
    rr = malloc(B * sizeof *rr); ag = malloc(B * sizeof *ag); rg = malloc(B * sizeof *rg);
    g = gsl_rng_alloc(gsl_rng_mt19937);
    if (!fd || !sd || !idx || !mult || !w || !sp || !st_ || !pp || !tt || !bx || !by || !wx || !wy || !inc || !rr ||
        !ag || !rg || !g) { st = fail(err, KV_ERR_NOMEM, "out of memory"); goto done; }
    gsl_rng_set(g, (unsigned long)seed);
    size_t nr = 0, na = 0, ng = 0;
    for (size_t b = 0; b < B; b++) {
        for (size_t k = 0; k < F; k++) fd[k] = gsl_rng_uniform_int(g, F);
        for (size_t k = 0; k < S; k++) sd[k] = gsl_rng_uniform_int(g, S);
        for (size_t k = 0; k < S; k++) w[k] = 0;
        for (size_t k = 0; k < S; k++) w[sd[k]] += 1;
        double *ws = calloc(np + 1, sizeof *ws);
        if (!ws) { st = fail(err, KV_ERR_NOMEM, "out of memory"); goto done; }
        for (size_t i = 0; i < np; i++) sp[i] = st_[i] = 0;
        for (size_t r = 0; r < nps; r++) {
            long long *hit = bsearch(&ps[r].seq, seqs, S, sizeof *seqs, cmp_ll);
            double wt = w[hit - seqs];
            sp[ps[r].pair] += wt * ps[r].p; st_[ps[r].pair] += wt * ps[r].t; ws[ps[r].pair] += wt;
        }
        for (size_t i = 0; i < np; i++) {
            pp[i] = ws[i] > 0 ? sp[i] / ws[i] : NAN;
            tt[i] = ws[i] > 0 ? st_[i] / ws[i] : NAN;
            mult[i] = 0;
        }
        free(ws);
        size_t n = 0;
        for (size_t k = 0; k < F; k++)
            for (size_t i = 0; i < np; i++)
                if (fam[i] == (int)fams[fd[k]] && isfinite(pp[i])) { bx[n] = pp[i]; by[n] = tt[i]; n++; mult[i]++; }
        for (size_t i = 0; i < np; i++) inc[i] = mult[i] > 0;
        double rho = n >= 3 ? tr_spearman(bx, by, n) : NAN, mreg;
        size_t agree, nb;
        headline(pp, tt, bi, inc, np, idx, wx, wy, &agree, &nb, &mreg);
        double afrac = nb ? (double)agree / (double)nb : NAN;
        if (isfinite(rho)) rr[nr++] = rho;
        if (isfinite(afrac)) ag[na++] = afrac;
        if (isfinite(mreg)) rg[ng++] = mreg;
        fprintf(bf, "%zu,", b);
        for (size_t k = 0; k < F; k++) fprintf(bf, "%s%zu", k ? " " : "", fd[k]);
        fputc(',', bf);
        for (size_t k = 0; k < S; k++) fprintf(bf, "%s%lld", k ? " " : "", seqs[sd[k]]);
        double v[3] = { rho, afrac, mreg };
        put_nums(bf, v, 3);
        fputc('\n', bf);
    }
    o->rho_lo = pct(rr, nr, 0.025); o->rho_hi = pct(rr, nr, 0.975);
    o->agree_lo = pct(ag, na, 0.025); o->agree_hi = pct(ag, na, 0.975);
    o->reg_lo = pct(rg, ng, 0.025); o->reg_hi = pct(rg, ng, 0.975);
done:
    if (g) gsl_rng_free(g);
    free(fams); free(seqs); free(fd); free(sd); free(idx); free(mult); free(w); free(sp); free(st_); free(pp);
    free(tt); free(bx); free(by); free(wx); free(wy); free(inc); free(rr); free(ag); free(rg);
    return st;
}

/* ---- needle answers: proxy vs true (truth file /needles) ---------------------------------- */

/* One (configuration, needle) of the truth file's /needles (traces/EXPORT.md), paired with the
 * results: cfg indexes rs->configs; proxy top-1 from needles.csv (NaN when absent). */
typedef struct tneedle {
    long cfg;
    long long needle, ctx;
    int dbin;                       /* depth rounded to the nearest 0.1, in tenths (as needle_fig.c) */
    double tf, tc, pf, pc;          /* true full / compressed, proxy full / compressed */
} tneedle;

/* Fixed-length strings of a rank-1 dataset of n rows -> n NUL-terminated strings of width *w
 * (one buffer, the caller frees it); NULL on a shape or type error. */
static char *read_strings(hid_t f, const char *name, size_t n, size_t *w)
{
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT), ft = H5I_INVALID_HID, mt = H5I_INVALID_HID, sp = H5I_INVALID_HID;
    char *buf = NULL;
    if (d < 0) return NULL;
    sp = H5Dget_space(d);
    hsize_t dim = 0;
    ft = H5Dget_type(d);
    size_t width = ft >= 0 ? H5Tget_size(ft) : 0;
    if (sp >= 0 && H5Sget_simple_extent_ndims(sp) == 1 && H5Sget_simple_extent_dims(sp, &dim, NULL) == 1 && dim == n &&
        ft >= 0 && H5Tget_class(ft) == H5T_STRING && H5Tis_variable_str(ft) <= 0 && width > 0 && width <= 4096) {
        mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, width + 1);
        H5Tset_strpad(mt, H5T_STR_NULLTERM);
        buf = calloc(n ? n : 1, width + 1);
        if (buf && n && H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) { free(buf); buf = NULL; }
        *w = width + 1;
    }
    if (mt >= 0) H5Tclose(mt);
    if (ft >= 0) H5Tclose(ft);
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(d);
    return buf;
}

static int tn_cmp(const void *a, const void *b)
{
    const tneedle *x = a, *y = b;
    if (x->cfg != y->cfg) return x->cfg < y->cfg ? -1 : 1;
    if (x->dbin != y->dbin) return x->dbin < y->dbin ? -1 : 1;
    if (x->ctx != y->ctx) return x->ctx < y->ctx ? -1 : 1;
    return (x->needle > y->needle) - (x->needle < y->needle);
}

/* The truth file's /needles (absent: *n = 0), the configurations the results know, each paired
 * with its needles.csv row; values checked in their domains. */
static kv_status load_truth_needles(const rp_ctx *c, const char *path, tneedle **out, size_t *n_out, size_t *n_unknown,
                                    kv_error *err)
{
    *out = NULL; *n_out = 0; *n_unknown = 0;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return fail(err, KV_ERR_FORMAT, "--truth %s: not an HDF5 file", path);
    kv_status st = KV_OK;
    char *cfgs = NULL;
    long long *needle = NULL, *ctx = NULL;
    double *depth = NULL, *tf = NULL, *tc = NULL;
    tneedle *r = NULL;
    rp_needle_row *pr = NULL;
    size_t npr = 0, N = 0, w = 0, k = 0;
    if (H5Lexists(f, "needles", H5P_DEFAULT) <= 0) goto done;
    {
        hid_t d = H5Dopen2(f, "needles/needle", H5P_DEFAULT);
        hid_t sp = d >= 0 ? H5Dget_space(d) : H5I_INVALID_HID;
        hsize_t dim = 0;
        int ok = sp >= 0 && H5Sget_simple_extent_ndims(sp) == 1 && H5Sget_simple_extent_dims(sp, &dim, NULL) == 1 &&
                 dim <= 100000000;
        if (sp >= 0) H5Sclose(sp);
        if (d >= 0) H5Dclose(d);
        if (!ok) { st = fail(err, KV_ERR_FORMAT, "--truth %s: /needles/needle: expected rank 1", path); goto done; }
        N = (size_t)dim;
    }
    size_t m = N ? N : 1;
    needle = malloc(m * sizeof *needle); ctx = malloc(m * sizeof *ctx);
    depth = malloc(m * sizeof *depth); tf = malloc(m * sizeof *tf); tc = malloc(m * sizeof *tc);
    r = calloc(m, sizeof *r);
    if (!needle || !ctx || !depth || !tf || !tc || !r) { st = fail(err, KV_ERR_NOMEM, "out of memory"); goto done; }
    if (!(cfgs = read_strings(f, "needles/config", N, &w)) ||
        read_1d(f, "needles/needle", H5T_NATIVE_LLONG, N, needle) || read_1d(f, "needles/ctx_len", H5T_NATIVE_LLONG, N, ctx) ||
        read_1d(f, "needles/depth", H5T_NATIVE_DOUBLE, N, depth) ||
        read_1d(f, "needles/answer_top1_full", H5T_NATIVE_DOUBLE, N, tf) ||
        read_1d(f, "needles/answer_top1_comp", H5T_NATIVE_DOUBLE, N, tc)) {
        st = fail(err, KV_ERR_FORMAT, "--truth %s: /needles: missing or inconsistent datasets (config, needle, ctx_len, "
                  "depth, answer_top1_full, answer_top1_comp of %zu rows)", path, N);
        goto done;
    }
    for (size_t i = 0; i < N; i++) {
        double v[3] = { depth[i], tf[i], tc[i] };
        for (int j = 0; j < 3; j++)
            if (!(v[j] >= 0 && v[j] <= 1)) {
                st = fail(err, KV_ERR_VALUE, "--truth %s: /needles row %zu: %s = %g outside [0, 1]", path, i,
                          j == 0 ? "depth" : j == 1 ? "answer_top1_full" : "answer_top1_comp", v[j]);
                goto done;
            }
        if (needle[i] < 0 || ctx[i] < 1) {
            st = fail(err, KV_ERR_VALUE, "--truth %s: /needles row %zu: needle %lld / ctx_len %lld out of range", path, i,
                      needle[i], ctx[i]);
            goto done;
        }
    }
    if ((st = rp_needles_load(c, &pr, &npr, err)) != KV_OK) goto done;
    for (size_t i = 0; i < N; i++) {
        long cf = res_find_config(c->rs, cfgs + i * w);
        if (cf < 0) { (*n_unknown)++; continue; }
        tneedle *q = &r[k++];
        *q = (tneedle){ cf, needle[i], ctx[i], (int)floor(depth[i] * 10 + 0.5), tf[i], tc[i], NAN, NAN };
        for (size_t j = 0; j < npr; j++)
            if (pr[j].cfg == cf && pr[j].needle == needle[i]) { q->pf = pr[j].top1_full; q->pc = pr[j].top1_comp; break; }
    }
    qsort(r, k, sizeof *r, tn_cmp);
    *out = r; *n_out = k;
    r = NULL;
done:
    free(cfgs); free(needle); free(ctx); free(depth); free(tf); free(tc); free(r); free(pr);
    H5Fclose(f);
    return st;
}

/* Mean of x over the rows [a, b) of r where it is finite: NaN when none. */
static double tn_mean(const tneedle *r, size_t a, size_t b, size_t off)
{
    double s = 0;
    size_t k = 0;
    for (size_t i = a; i < b; i++) {
        double x = *(const double *)((const char *)&r[i] + off);
        if (isfinite(x)) { s += x; k++; }
    }
    return k ? s / (double)k : NAN;
}

/* tables/truth_needles.csv (per configuration, context length and depth bin) and a report.md
 * section (per configuration, with the depth bins), when the truth file has /needles. */
static kv_status tr_needles(rp_ctx *c, const char *truth_path, kv_error *err)
{
    tneedle *r = NULL;
    size_t n = 0, unknown = 0;
    kv_status st = load_truth_needles(c, truth_path, &r, &n, &unknown, err);
    if (st != KV_OK || !n) { free(r); return st; }
    static const size_t off[4] = { offsetof(tneedle, pf), offsetof(tneedle, pc), offsetof(tneedle, tf),
                                   offsetof(tneedle, tc) };
    FILE *f = rp_open_out(c, "tables/truth_needles.csv", "w", err);
    if (!f) { free(r); return err->code; }
    fprintf(f, "config,family,ctx_len,depth,n_needles,proxy_top1_full,proxy_top1_comp,true_top1_full,true_top1_comp\n");
    /* cells (config, ctx, depth bin): r is sorted by config, depth bin, ctx */
    for (size_t a = 0; a < n;) {
        size_t b = a + 1;
        while (b < n && r[b].cfg == r[a].cfg && r[b].dbin == r[a].dbin && r[b].ctx == r[a].ctx) b++;
        const res_config *cf = &c->rs->configs[r[a].cfg];
        fprintf(f, "%s,%s,%lld,%.1f,%zu", cf->config, cf->family, r[a].ctx, r[a].dbin / 10.0, b - a);
        for (int j = 0; j < 4; j++) { double v = tn_mean(r, a, b, off[j]); put_nums(f, &v, 1); }
        fputc('\n', f);
        a = b;
    }
    if ((st = rp_close_out(c, f, "tables/truth_needles.csv", err)) != KV_OK) { free(r); return st; }
    /* the heat map of the true accuracy (the proxy's is figures/needle_heatmap): what the
     * direct-path proxy cannot see, a retrieval lost in an early layer, shows here */
    int heat = !c->no_figures && c->plots_dir;
    if (heat) {
        rp_heat_cell *h = malloc(n * sizeof *h);
        size_t m = 0;
        if (!h) { free(r); return fail(err, KV_ERR_NOMEM, "out of memory"); }
        for (size_t a = 0; a < n;) {
            size_t b = a + 1;
            while (b < n && r[b].cfg == r[a].cfg && r[b].dbin == r[a].dbin && r[b].ctx == r[a].ctx) b++;
            h[m++] = (rp_heat_cell){ r[a].cfg, r[a].ctx, r[a].dbin, tn_mean(r, a, b, off[3]) };
            a = b;
        }
        st = rp_needle_heat(c, "needle_heatmap_truth", "true answer accuracy under each cache state (the model re-run, "
                            "teacher-forced; tables/truth_needles.csv)", "answer accuracy (true)", h, m, err);
        free(h);
        if (st != KV_OK) { free(r); return st; }
    }
    /* agreement: mean |proxy - true| of the compressed answer accuracy over the paired needles */
    double dsum = 0;
    size_t dn = 0, nprox = 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(r[i].pc)) { dsum += fabs(r[i].pc - r[i].tc); dn++; nprox++; }
    if (!(f = rp_open_out(c, "report.md", "a", err))) { free(r); return err->code; }
    char md[32];
    fmt_num(md, sizeof md, dn ? dsum / (double)dn : NAN);
    fprintf(f, "\n### Needle answers: proxy vs in-model truth\n\n"
               "Answer accuracy of the needles (the share of answer tokens whose top-1 is the true token, teacher-forced): "
               "the read-out proxy (needles.csv `answer_top1_*`) beside the in-model re-run under the same cache state "
               "(the truth file's /needles), full cache / compressed, means over %zu (configuration, needle) rows%s. "
               "Mean |proxy - true| of the compressed accuracy: %s over %zu rows with a proxy value. Per context length "
               "and depth: tables/truth_needles.csv.\n\n",
            n, unknown ? " (rows of configurations these results do not hold left out)" : "", md, nprox);
    if (heat) {
        char png[8300];
        snprintf(png, sizeof png, "%s/figures/needle_heatmap_truth.png", c->dir);
        if (access(png, R_OK) == 0)
            fprintf(f, "![True answer accuracy by context length and needle depth, one panel per configuration]"
                       "(figures/needle_heatmap_truth.png)\n\n");
    }
    fputs("| configuration | needles | proxy full | proxy comp | true full | true comp | comp by depth: proxy / true |\n"
          "|---|---|---|---|---|---|---|\n", f);
    for (size_t a = 0; a < n;) {
        size_t b = a + 1;
        while (b < n && r[b].cfg == r[a].cfg) b++;
        char v[4][32];
        for (int j = 0; j < 4; j++) fmt_num(v[j], 32, tn_mean(r, a, b, off[j]));
        fprintf(f, "| %s | %zu | %s | %s | %s | %s |", c->rs->configs[r[a].cfg].config, b - a, v[0], v[1], v[2], v[3]);
        for (size_t d = a; d < b;) {
            size_t e = d + 1;
            while (e < b && r[e].dbin == r[d].dbin) e++;
            char p[32], t[32];
            fmt_num(p, 32, tn_mean(r, d, e, off[1])); fmt_num(t, 32, tn_mean(r, d, e, off[3]));
            fprintf(f, "%s%.1f: %s / %s", d > a ? "; " : " ", r[d].dbin / 10.0, p, t);
            d = e;
        }
        fputs(" |\n", f);
        a = b;
    }
    fputc('\n', f);
    free(r);
    return rp_close_out(c, f, "report.md", err);
}

/* Per family (fam[i]: index of the family's first pair): the first pair of each family in
 * pairing order (*idx_out [n]) and the ratio statistics of its pairs (*ratio_out [n]). */
static kv_status family_ratios(const double *px, const double *ty, const int *fam, size_t np,
                               size_t **idx_out, tratio **ratio_out, size_t *n_out, kv_error *err)
{
    size_t nf = 0;
    for (size_t i = 0; i < np; i++) nf += fam[i] == (int)i;
    size_t *first = malloc((nf ? nf : 1) * sizeof *first), *members = malloc((np ? np : 1) * sizeof *members);
    tratio *r = malloc((nf ? nf : 1) * sizeof *r);
    int oom = !first || !members || !r;
    for (size_t i = 0, k = 0; !oom && i < np; i++) {
        if (fam[i] != (int)i) continue;
        size_t m = 0;
        for (size_t j = i; j < np; j++) if (fam[j] == (int)i) members[m++] = j;
        first[k] = i;
        r[k++] = ratio_stats(px, ty, members, m, &oom);
    }
    free(members);
    if (oom) { free(first); free(r); return fail(err, KV_ERR_NOMEM, "out of memory"); }
    *idx_out = first; *ratio_out = r; *n_out = nf;
    return KV_OK;
}

kv_status tr_write(rp_ctx *c, const char *truth_path, size_t *n_warn, kv_error *err)
{
    const res_set *rs = c->rs;
    trow *rows = NULL;
    size_t N = 0;
    char apply[64];
    kv_status st = load_truth(truth_path, &rows, &N, apply, sizeof apply, err);
    if (st != KV_OK) return st;
    size_t NC = rs->n_configs, np = 0, nrow_used = 0;
    double *px[TM_N], *ty[TM_N];
    long *cid = malloc((NC ? NC : 1) * sizeof *cid);
    /* calibrated proxies (calib.h): per-layer features of each paired configuration */
    plrow *pl = NULL;
    size_t npl = 0, L = 0, ncal = 0;
    double *fx[TM_N] = { NULL, NULL };      /* [np][L] means of logit_kl_layer, nll_delta_layer */
    int *fam = malloc((NC ? NC : 1) * sizeof *fam), have_pl = 0;     /* family id of each pair */
    tcal cal[TR_NCAL];
    memset(cal, 0, sizeof cal);
    tps *ps = NULL;                         /* per (pair, sequence) logit KLs: the two-level bootstrap */
    double *psx = NULL;                     /* [nps][L] per (pair, sequence) per-layer logit KLs */
    size_t nps = 0, ps_cap = 0;
    tbucket_in *bi = NULL;
    tboot boot;
    memset(&boot, 0, sizeof boot);
    size_t hl_agree = 0, hl_nb = 0;
    double hl_regret = NAN, *fold_g = NULL; /* [TR_NCAL][nfam][L] per-fold gains */
    /* the raw proxy's decisions beside the better proxies', each held out from what it predicts */
    struct { const char *name, *held_out; size_t n, agree, nb; double regret, rel; } alt[4];
    size_t n_alt = 0;
    double *alt_pred = NULL, *cal_fs = NULL;    /* family scale; kl_nnls held out by family and sequence */
    size_t *fold_fam = NULL, n_fold = 0;
    int fold_warn[TR_NCAL] = { 0 };
    size_t *fam_idx = NULL, n_fam = 0;      /* the first pair of each family, in pairing order */
    tratio *fam_ratio = NULL;               /* [n_fam] true / proxy logit KL per family */
    for (int m = 0; m < TM_N; m++) { px[m] = malloc((NC ? NC : 1) * sizeof **px); ty[m] = malloc((NC ? NC : 1) * sizeof **ty); }
    FILE *f = NULL;
    char path[8192];
    *n_warn = 0;
    if (!cid || !fam || !px[0] || !px[1] || !ty[0] || !ty[1]) { st = fail(err, KV_ERR_NOMEM, "out of memory"); goto done; }
    if ((st = load_per_layer(rs, &pl, &npl, &L, err)) != KV_OK) goto done;
    have_pl = npl > 0 && L > 0;
    if (have_pl) {
        fx[0] = calloc(NC * L, sizeof *fx[0]); fx[1] = calloc(NC * L, sizeof *fx[1]);
        if (!fx[0] || !fx[1]) { st = fail(err, KV_ERR_NOMEM, "out of memory"); goto done; }
    }
    /* pair per configuration: means over the sequences present in both (full family left out) */
    for (size_t ci = 0; ci < NC; ci++) {
        const res_config *cf = &rs->configs[ci];
        if (!strcmp(cf->family, "full")) continue;
        double s[2][TM_N] = { { 0 } };
        size_t k = 0;
        for (size_t i = 0; i < N; i++) {
            if (strcmp(rows[i].config, cf->config)) continue;
            const res_seq *q = NULL;
            for (size_t j = 0; j < cf->n_seqs; j++) if (cf->seqs[j].seq == rows[i].seq) q = &cf->seqs[j];
            if (!q || isnan(q->v[RM_LOGIT_KL]) || isnan(q->v[RM_NLL_DELTA])) continue;
            s[0][TM_KL] += q->v[RM_LOGIT_KL]; s[0][TM_NLL] += q->v[RM_NLL_DELTA];
            s[1][TM_KL] += rows[i].kl; s[1][TM_NLL] += rows[i].nll_c - rows[i].nll_f;
            if (nps == ps_cap) {
                ps_cap = ps_cap ? 2 * ps_cap : 256;
                tps *q2 = realloc(ps, ps_cap * sizeof *q2);
                if (!q2) { st = fail(err, KV_ERR_NOMEM, "out of memory"); goto done; }
                ps = q2;
                if (have_pl) {
                    double *x2 = realloc(psx, ps_cap * L * sizeof *x2);
                    if (!x2) { st = fail(err, KV_ERR_NOMEM, "out of memory"); goto done; }
                    psx = x2;
                }
            }
            ps[nps++] = (tps){ np, rows[i].seq, q->v[RM_LOGIT_KL], rows[i].kl };
            /* per-layer features of the same (config, sequence); a missing one disables the
             * calibration (have_pl = 0) rather than pairing other sequences */
            if (have_pl) {
                size_t got = 0;
                long long sq = rows[i].seq;
                for (size_t r = pl_find(pl, npl, cf->config, sq); r < npl && pl_match(&pl[r], cf->config, sq); r++)
                    if (isfinite(pl[r].kl) && isfinite(pl[r].nll)) {
                        psx[(nps - 1) * L + (size_t)pl[r].layer] = pl[r].kl;
                        fx[0][np * L + (size_t)pl[r].layer] += pl[r].kl;
                        fx[1][np * L + (size_t)pl[r].layer] += pl[r].nll;
                        got++;
                    }
                if (got != L) have_pl = 0;
            }
            k++;
        }
        if (!k) continue;
        for (int m = 0; m < TM_N; m++) { px[m][np] = s[0][m] / (double)k; ty[m][np] = s[1][m] / (double)k; }
        if (have_pl)
            for (size_t l = 0; l < L; l++) { fx[0][np * L + l] /= (double)k; fx[1][np * L + l] /= (double)k; }
        cid[np++] = (long)ci;
        nrow_used += k;
    }
    if (np < 3) {
        st = fail(err, KV_ERR_INVALID, "--truth %s: only %zu configuration(s) pair with the results (same config string and "
                  "sequence, read-out metrics present, full left out); at least 3 are needed", truth_path, np);
        goto done;
    }
    tstat ts[TM_N], tsx;
    for (int m = 0; m < TM_N; m++) corr_stats(px[m], ty[m], np, c->n_boot, c->seed + (uint64_t)m, &ts[m]);
    /* cross-metric, no fit: the proxy logit KL as a ranking of the true ΔNLL (the raw
     * direct-path ΔNLL misses the later layers' response; the KL's ranking carries over) */
    corr_stats(px[TM_KL], ty[TM_NLL], np, c->n_boot, c->seed + 50, &tsx);
    tsx.med_ratio = NAN;
    /* family ids: index of the first paired configuration of the same family */
    for (size_t i = 0; i < np; i++) {
        fam[i] = (int)i;
        for (size_t j = 0; j < i; j++)
            if (!strcmp(rs->configs[cid[i]].family, rs->configs[cid[j]].family)) { fam[i] = fam[j]; break; }
    }
    if ((st = family_ratios(px[TM_KL], ty[TM_KL], fam, np, &fam_idx, &fam_ratio, &n_fam, err)) != KV_OK)
        goto done;
    if (have_pl) {
        ncal = TR_NCAL;
        for (size_t k = 0; k < ncal; k++) {
            tcal *q = &cal[k];
            q->def = &tr_cal_defs[k];
            q->pred = malloc(np * sizeof *q->pred);
            q->g = calloc(L, sizeof *q->g);
            if (!q->pred || !q->g) { st = fail(err, KV_ERR_NOMEM, "out of memory"); goto done; }
            const double *A = fx[q->def->feature], *b = ty[q->def->target];
            if ((st = cal_loso_predict(q->def->method, A, b, fam, np, L, q->pred, NULL, NULL, err)) != KV_OK) goto done;
            if ((st = cal_fit(q->def->method, A, b, np, L, q->g, err)) != KV_OK) goto done;
            /* rows whose family is the only one cannot be predicted (NaN): scored without them */
            double *pp = malloc(np * sizeof *pp), *tt = malloc(np * sizeof *tt);
            size_t m = 0;
            if (!pp || !tt) { free(pp); free(tt); st = fail(err, KV_ERR_NOMEM, "out of memory"); goto done; }
            for (size_t i = 0; i < np; i++) if (isfinite(q->pred[i])) { pp[m] = q->pred[i]; tt[m] = b[i]; m++; }
            corr_stats(pp, tt, m, c->n_boot, c->seed + 100 + (uint64_t)k, &q->st);
            free(pp); free(tt);
        }
    }

    /* decisions: budget buckets of the paired configurations, winners and regret (logit KL) */
    if (!(bi = calloc(np, sizeof *bi))) { st = fail(err, KV_ERR_NOMEM, "out of memory"); goto done; }
    tdims dims = prompt_dims(rs);
    for (size_t i = 0; i < np; i++) bucket_of(&rs->configs[cid[i]], &dims, &bi[i]);
    {
        size_t *idx = malloc(np * sizeof *idx);
        double *wx = malloc(np * sizeof *wx), *wy = malloc(np * sizeof *wy);
        FILE *mf = NULL;
        if (!idx || !wx || !wy) { free(idx); free(wx); free(wy); st = fail(err, KV_ERR_NOMEM, "out of memory"); goto done; }
        headline(px[TM_KL], ty[TM_KL], bi, NULL, np, idx, wx, wy, &hl_agree, &hl_nb, &hl_regret);
        unsigned char *inc = malloc(np);
        alt_pred = malloc(np * sizeof *alt_pred);
        cal_fs = have_pl ? malloc(np * sizeof *cal_fs) : NULL;
        st = !inc || !alt_pred || (have_pl && !cal_fs) ? fail(err, KV_ERR_NOMEM, "out of memory")
                                                       : family_scale_loso(ps, nps, fam, np, alt_pred, err);
        if (st == KV_OK && have_pl) st = cal_family_seq_predict(ps, psx, nps, fam, np, L, cal_fs, err);
        for (int a = 0; st == KV_OK && a < 4; a++) {
            const double *q = a == 0 ? px[TM_KL] : a == 1 ? (ncal ? cal[0].pred : NULL) : a == 2 ? cal_fs : alt_pred;
            size_t n = 0;
            for (size_t i = 0; q && i < np; i++) n += (inc[i] = (unsigned char)isfinite(q[i]));
            if (n < 2) continue;            /* one sequence: no family scale held out by sequence */
            alt[n_alt].name = a == 0 ? "raw direct-path logit_kl" : a <= 2 ? "per-layer calibration (kl_nnls)"
                                                                      : "family scale";
            alt[n_alt].held_out = a == 0 ? "-" : a == 1 ? "strategy family" : a == 2 ? "strategy family and sequence"
                                                                                       : "sequence";
            alt[n_alt].n = n;
            headline_rel(q, ty[TM_KL], bi, inc, np, idx, wx, wy, &alt[n_alt].agree, &alt[n_alt].nb, &alt[n_alt].regret,
                         &alt[n_alt].rel);
            n_alt++;
        }
        free(inc);
        if (st != KV_OK) { free(idx); free(wx); free(wy); goto done; }
        f = rp_open_out(c, "tables/truth_buckets.csv", "w", err);
        mf = f ? rp_open_out(c, "tables/truth_buckets.md", "w", err) : NULL;
        if (!f || !mf) { free(idx); free(wx); free(wy); st = err->code; goto done; }
        fprintf(f, "bucket,n_configs,n_realised_keep,proxy_winner,true_winner,agree,proxy_pick_true_kl,best_true_kl,"
                   "regret,regret_rel,kendall,ratio_min,ratio_max,prompt_ratio_min,prompt_ratio_max\n");
        fprintf(mf, "| bucket | n | proxy winner | true winner | agree | regret (true KL) | regret / best | Kendall | "
                    "memory ratio: whole cache (prompt only) |\n|---|---|---|---|---|---|---|---|---|\n");
        for (size_t k = 0; k < TR_NBUCKET; k++) {
            size_t n = 0, nreal = 0;
            for (size_t i = 0; i < np; i++) if (bi[i].in[k]) { idx[n++] = i; nreal += k < TR_NKEEP && bi[i].keep_realised; }
            char lab[64];
            bucket_label(k, lab, sizeof lab);
            if (!n) continue;
            tdec d;
            decide(px[TM_KL], ty[TM_KL], idx, n, wx, wy, &d);
            const char *pw = rs->configs[cid[d.pw]].config, *tw = rs->configs[cid[d.tw]].config;
            fprintf(f, "%s,%zu,%zu,%s,%s,%d", lab, n, nreal, pw, tw, d.agree);
            double rr[4];
            ratio_range(bi, idx, n, rr);
            double v[9] = { ty[TM_KL][d.pw], ty[TM_KL][d.tw], d.regret, d.rel, d.tau, rr[0], rr[1], rr[2], rr[3] };
            put_nums(f, v, 9);
            fputc('\n', f);
            char a[3][32], rtxt[160];
            fmt_num(a[0], 32, d.regret); fmt_num(a[1], 32, d.rel); fmt_num(a[2], 32, d.tau);
            ratio_text(rr, rtxt, sizeof rtxt);
            fprintf(mf, "| %s%s | %zu | %s | %s | %s | %s | %s | %s | %s |\n", lab, nreal ? " (realised keep in it)" : "", n,
                    pw, tw, n < 2 ? "(one)" : d.agree ? "yes" : "no", a[0], a[1], a[2], rtxt);
        }
        free(idx); free(wx); free(wy);
        st = rp_close_out(c, f, "tables/truth_buckets.csv", err);
        f = NULL;
        kv_status ms = rp_close_out(c, mf, "tables/truth_buckets.md", err);
        if (st == KV_OK) st = ms;
        if (st != KV_OK) goto done;
    }
    if (!(f = rp_open_out(c, "tables/truth_boot.csv", "w", err))) { st = err->code; goto done; }
    st = two_level_boot(ps, nps, fam, bi, np, c->n_boot, c->seed + 200, f, &boot, err);
    if (st == KV_OK) st = rp_close_out(c, f, "tables/truth_boot.csv", err);
    else fclose(f);
    f = NULL;
    if (st != KV_OK) goto done;
    if (!(f = rp_open_out(c, "tables/truth_decisions.csv", "w", err))) { st = err->code; goto done; }
    fprintf(f, "metric,buckets,agree,mean_regret,mean_regret_lo,mean_regret_hi,agreement_lo,agreement_hi,spearman,"
               "spearman_lo,spearman_hi,n_boot,n_families,n_seqs\n%s,%zu,%zu", tm_name[TM_KL], hl_nb, hl_agree);
    {
        double v[8] = { hl_regret, boot.reg_lo, boot.reg_hi, boot.agree_lo, boot.agree_hi, ts[TM_KL].rho, boot.rho_lo,
                        boot.rho_hi };
        put_nums(f, v, 8);
    }
    fprintf(f, ",%zu,%zu,%zu\n", boot.B, boot.F, boot.S);
    st = rp_close_out(c, f, "tables/truth_decisions.csv", err);
    f = NULL;
    if (st != KV_OK) goto done;

    /* calibration folds: every held-out family's gains (fitted on the other families) */
    if (ncal) {
        size_t nfam = 0;
        for (size_t i = 0; i < np; i++) nfam += fam[i] == (int)i;
        fold_g = calloc(TR_NCAL * nfam * L + 1, sizeof *fold_g);
        fold_fam = malloc((nfam + 1) * sizeof *fold_fam);
        double *A = malloc(np * L * sizeof *A), *bb = malloc(np * sizeof *bb);
        if (!fold_g || !fold_fam || !A || !bb) { free(A); free(bb); st = fail(err, KV_ERR_NOMEM, "out of memory"); goto done; }
        for (size_t i = 0; i < np; i++) if (fam[i] == (int)i) fold_fam[n_fold++] = i;
        for (size_t k = 0; k < ncal && st == KV_OK; k++)
            for (size_t fi = 0; fi < n_fold && st == KV_OK; fi++) {
                const double *Af = fx[tr_cal_defs[k].feature], *bf = ty[tr_cal_defs[k].target];
                size_t m = 0;
                for (size_t i = 0; i < np; i++) {
                    if (fam[i] == (int)fold_fam[fi]) continue;
                    memcpy(A + m * L, Af + i * L, L * sizeof *A);
                    bb[m++] = bf[i];
                }
                double *gg = fold_g + (k * n_fold + fi) * L;
                if (!m) { for (size_t l = 0; l < L; l++) gg[l] = NAN; continue; }
                st = cal_fit(tr_cal_defs[k].method, A, bb, m, L, gg, err);
            }
        free(A); free(bb);
        if (st != KV_OK) goto done;
        if (!(f = rp_open_out(c, "tables/truth_folds.csv", "w", err))) { st = err->code; goto done; }
        fprintf(f, "calibration,held_out_family,n_train");
        for (size_t l = 0; l < L; l++) fprintf(f, ",gain_%zu", l);
        fputc('\n', f);
        for (size_t k = 0; k < ncal; k++)
            for (size_t fi = 0; fi < n_fold; fi++) {
                size_t m = 0;
                for (size_t i = 0; i < np; i++) m += fam[i] != (int)fold_fam[fi];
                fprintf(f, "%s,%s,%zu", tr_cal_defs[k].name, rs->configs[cid[fold_fam[fi]]].family, m);
                put_nums(f, fold_g + (k * n_fold + fi) * L, (int)L);
                fputc('\n', f);
            }
        st = rp_close_out(c, f, "tables/truth_folds.csv", err);
        f = NULL;
        if (st != KV_OK) goto done;
    }

    /* tables/truth.csv */
    if (!(f = rp_open_out(c, "tables/truth.csv", "w", err))) { st = err->code; goto done; }
    fprintf(f, "metric,n_configs,spearman,spearman_lo,spearman_hi,kendall,kendall_lo,kendall_hi,slope,intercept,median_ratio,"
               "cal_method,cal_spearman,cal_spearman_lo,cal_spearman_hi,cal_kendall,cal_kendall_lo,cal_kendall_hi\n");
    for (int m = 0; m < TM_N; m++) {
        const tstat *t = &ts[m];
        double v[10] = { t->rho, t->rho_lo, t->rho_hi, t->tau, t->tau_lo, t->tau_hi, t->slope, t->intercept, t->med_ratio };
        fprintf(f, "%s,%zu", tm_name[m], t->n);
        put_nums(f, v, 9);
        /* side by side: the metric's primary calibration (leave-one-strategy-out predictions) */
        const tcal *q = NULL;
        for (size_t k = 0; k < ncal; k++) if (cal[k].def->target == m && cal[k].def->primary) q = &cal[k];
        if (q) {
            double u[6] = { q->st.rho, q->st.rho_lo, q->st.rho_hi, q->st.tau, q->st.tau_lo, q->st.tau_hi };
            fprintf(f, ",%s", q->def->name);
            put_nums(f, u, 6);
        } else fputs(",,,,,,,", f);
        fputc('\n', f);
    }
    {
        double v[9] = { tsx.rho, tsx.rho_lo, tsx.rho_hi, tsx.tau, tsx.tau_lo, tsx.tau_hi, tsx.slope, tsx.intercept, NAN };
        fprintf(f, "%s,%zu", TR_CROSS_NAME, tsx.n);
        put_nums(f, v, 9);
        fputs(",,,,,,,\n", f);
    }
    st = rp_close_out(c, f, "tables/truth.csv", err);
    f = NULL;
    if (st != KV_OK) goto done;
    if (!(f = rp_open_out(c, "tables/truth_pairs.csv", "w", err))) { st = err->code; goto done; }
    fprintf(f, "config,family,proxy_logit_kl,true_logit_kl,proxy_nll_delta,true_nll_delta,family_scale_logit_kl,"
               "kl_nnls_family_seq_logit_kl\n");
    for (size_t i = 0; i < np; i++) {
        fprintf(f, "%s,%s,%.9g,%.9g,%.9g,%.9g", rs->configs[cid[i]].config, rs->configs[cid[i]].family,
                px[TM_KL][i], ty[TM_KL][i], px[TM_NLL][i], ty[TM_NLL][i]);
        put_nums(f, &alt_pred[i], 1);       /* the family-scaled proxy held out by sequence */
        if (cal_fs) put_nums(f, &cal_fs[i], 1);  /* kl_nnls held out by family and sequence */
        else fputc(',', f);
        fputc('\n', f);
    }
    st = rp_close_out(c, f, "tables/truth_pairs.csv", err);
    f = NULL;
    if (st != KV_OK) goto done;
    if (!(f = rp_open_out(c, "tables/truth_proxies.csv", "w", err))) { st = err->code; goto done; }
    fprintf(f, "proxy,held_out,n_configs,buckets,agree,mean_regret,mean_regret_rel\n");
    for (size_t a = 0; a < n_alt; a++) {
        double v[2] = { alt[a].regret, alt[a].rel };
        fprintf(f, "%s,%s,%zu,%zu,%zu", alt[a].name, alt[a].held_out, alt[a].n, alt[a].nb, alt[a].agree);
        put_nums(f, v, 2);
        fputc('\n', f);
    }
    st = rp_close_out(c, f, "tables/truth_proxies.csv", err);
    f = NULL;
    if (st != KV_OK) goto done;
    if (!(f = rp_open_out(c, "tables/truth_families.csv", "w", err))) { st = err->code; goto done; }
    fprintf(f, "family,n_configs,n_ratio,median_true_over_proxy_logit_kl,min_ratio,max_ratio\n");
    for (size_t k = 0; k < n_fam; k++) {
        double v[3] = { fam_ratio[k].med, fam_ratio[k].lo, fam_ratio[k].hi };
        fprintf(f, "%s,%zu,%zu", rs->configs[cid[fam_idx[k]]].family, fam_ratio[k].n, fam_ratio[k].k);
        put_nums(f, v, 3);
        fputc('\n', f);
    }
    st = rp_close_out(c, f, "tables/truth_families.csv", err);
    f = NULL;
    if (st != KV_OK) goto done;
    if (ncal) {     /* every calibration: cross-validated statistics and the full-data gains */
        if (!(f = rp_open_out(c, "tables/truth_calib.csv", "w", err))) { st = err->code; goto done; }
        fprintf(f, "calibration,metric,features,fit,n_configs,n_families,spearman,spearman_lo,spearman_hi,kendall,"
                   "kendall_lo,kendall_hi");
        for (size_t l = 0; l < L; l++) fprintf(f, ",gain_%zu", l);
        fputs(",trace_model,trace_sha256,mode\n", f);     /* what the gains were fitted on (--gains checks it) */
        const char *id_model = res_prov(&rs->dirs[0], "trace_model"), *id_sha = res_prov(&rs->dirs[0], "trace_sha256"),
                   *id_mode = res_prov(&rs->dirs[0], "mode");
        size_t nfam = 0;
        for (size_t i = 0; i < np; i++) nfam += fam[i] == (int)i;
        for (size_t k = 0; k < ncal; k++) {
            const tcal *q = &cal[k];
            double u[6] = { q->st.rho, q->st.rho_lo, q->st.rho_hi, q->st.tau, q->st.tau_lo, q->st.tau_hi };
            fprintf(f, "%s,%s,%s,%s,%zu,%zu", q->def->name, tm_name[q->def->target], q->def->features, q->def->fit,
                    q->st.n, nfam);
            put_nums(f, u, 6);
            for (size_t l = 0; l < L; l++) fprintf(f, ",%.9g", q->g[l]);
            fputc(',', f); put_id(f, id_model);
            fputc(',', f); put_id(f, id_sha);
            fputc(',', f); put_id(f, id_mode);
            fputc('\n', f);
        }
        st = rp_close_out(c, f, "tables/truth_calib.csv", err);
        f = NULL;
        if (st != KV_OK) goto done;
    }

    /* figures: one scatter per metric (self-contained gnuplot scripts) */
    int rendered[TM_N] = { 0 };
    if (!c->no_figures) {
        char figdir[4200];
        snprintf(figdir, sizeof figdir, "%s/figures", c->dir);
        for (int m = 0; m < TM_N; m++) {
            snprintf(path, sizeof path, "%s/truth_%s.dat", figdir, tm_name[m]);
            if (!(f = fopen(path, "w"))) { st = fail(err, KV_ERR_IO, "%s: cannot write: %s", path, strerror(errno)); goto done; }
            /* one data block per family (gnuplot index), families in order of first appearance */
            fprintf(f, "# proxy truth family; one block per family\n");
            size_t nf = 0;
            for (size_t i = 0; i < np; i++) {
                if (fam[i] != (int)i) continue;
                fprintf(f, "%s\n", nf ? "\n" : "");
                for (size_t j = i; j < np; j++)
                    if (fam[j] == (int)i)
                        fprintf(f, "%.9g %.9g \"%s\"\n", px[m][j], ty[m][j], rs->configs[cid[j]].family);
                nf++;
            }
            if (fclose(f)) { f = NULL; st = fail(err, KV_ERR_IO, "%s: write failed: %s", path, strerror(errno)); goto done; }
            snprintf(path, sizeof path, "%s/truth_%s.gp", figdir, tm_name[m]);
            if (!(f = fopen(path, "w"))) { st = fail(err, KV_ERR_IO, "%s: cannot write: %s", path, strerror(errno)); goto done; }
            int logs = m == TM_KL;
            fprintf(f, "# proxy (direct-path read-out) vs in-model truth, %s; written by kvreport\n"
                       "set terminal pngcairo size 900,600 noenhanced\nset output 'truth_%s.png'\n"
                       "set xlabel 'proxy %s (kvreplay read-out)'\nset ylabel 'true %s (in-model re-run)'\n"
                       "set title 'Spearman %.3f, Kendall %.3f, n = %zu configurations'\nset key outside right\n"
                       "set grid lc rgb '#dddddd'\n%s"
                       "plot ",
                    tm_name[m], tm_name[m], tm_name[m], tm_name[m], ts[m].rho, ts[m].tau, np,
                    logs ? "set logscale xy\nset format xy '%.0e'\n" : "");
            static const char *const col[] = { "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7",
                                               "#000000", "#F0E442" };
            static const int pts[] = { 7, 5, 9, 13, 11 };
            for (size_t i = 0, b = 0; i < np; i++) {
                if (fam[i] != (int)i) continue;
                fprintf(f, "'truth_%s.dat' index %zu using 1:2 with points pt %d ps 1.3 lc rgb '%s' title '%s', \\\n     ",
                        tm_name[m], b, pts[b / 8 % 5], col[b % 8], rs->configs[cid[i]].family);
                b++;
            }
            fprintf(f, "x with lines dt 2 lc rgb 'gray' title 'y = x'\n");
            if (fclose(f)) { f = NULL; st = fail(err, KV_ERR_IO, "%s: write failed: %s", path, strerror(errno)); goto done; }
            char script[64];
            snprintf(script, sizeof script, "truth_%s.gp", tm_name[m]);
            rendered[m] = render(c, figdir, script) == 0;
        }
    }

    /* report.md section (appended) */
    if (!(f = rp_open_out(c, "report.md", "a", err))) { st = err->code; goto done; }
    /* what the apply mode measures (traces/EXPORT.md): the reader must not compare truths of both */
    const char *how = !strcmp(apply, "delta") ? ", the compression's change of each layer's rows added to the "
                                                "re-run's own, so error from earlier layers propagates for every family"
                    : !strcmp(apply, "substitute") ? ", the exported rows as they are: for encoders and merges the "
                                                     "error carried in from earlier layers is dropped"
                    : "";
    fprintf(f, "\n## Proxy vs in-model truth\n\n"
               "Truth: `%s` (`kvcapture.py validate`, rows applied by `%s`%s): %zu configurations paired with the "
               "results (%zu (configuration, sequence) rows; the `full` family left out). Per configuration, the mean "
               "over its sequences of the direct-path proxy (this report's read-out metrics) against the same "
               "metric of an in-model re-run with the exported cache state. Intervals: percentile bootstrap over "
               "configurations (%zu resamples). Slope: least squares of truth on proxy.\n\n",
            truth_path, apply, how, np, nrow_used, c->n_boot);
    {
        char r0[32], r1[32], r2[32], a0[32], a1[32], s0[32], s1[32];
        fmt_num(r0, 32, hl_regret); fmt_num(r1, 32, boot.reg_lo); fmt_num(r2, 32, boot.reg_hi);
        fmt_num(a0, 32, boot.agree_lo); fmt_num(a1, 32, boot.agree_hi);
        fmt_num(s0, 32, boot.rho_lo); fmt_num(s1, 32, boot.rho_hi);
        fprintf(f, "**Winner agreement: %zu of %zu budget buckets** (the proxy's lowest logit_kl is the true lowest); "
                   "**mean regret %s** true logit_kl (the true KL of the proxy's pick minus the bucket's best; "
                   "two-level 95%% interval [%s, %s]; agreement fraction [%s, %s]). Spearman of logit_kl under the "
                   "same two-level bootstrap: [%s, %s].\n\n",
                hl_agree, hl_nb, r0, r1, r2, a0, a1, s0, s1);
        fprintf(f, "Better proxies, each scored on what it was not fitted on: the per-layer calibration predicts "
                   "each strategy family from gains fitted on the other families; the family scale multiplies "
                   "each configuration's proxy on a sequence by its family's median true / proxy factor measured "
                   "on the other sequences (tables/truth_proxies.csv; regret relative to the bucket's best true "
                   "KL, mean over buckets).\n\n"
                   "| proxy | held out | configurations | winner agreement | mean regret | mean regret / best |\n"
                   "|---|---|---|---|---|---|\n");
        for (size_t a = 0; a < n_alt; a++) {
            char g0[32], g1[32];
            fmt_num(g0, 32, alt[a].regret); fmt_num(g1, 32, alt[a].rel);
            fprintf(f, "| %s | %s | %zu | %zu of %zu | %s | %s |\n", alt[a].name, alt[a].held_out, alt[a].n,
                    alt[a].agree, alt[a].nb, g0, g1);
        }
        fputc('\n', f);
        fprintf(f, "Buckets: keep fraction (the configuration's nominal keep; configurations without one, such as "
                   "encodings, by their realised keep_frac, marked) and memory ratio (measured full_bytes / kv_bytes "
                   "of the whole cache within %.0f%% of 2x, 4x, 8x); each bucket lists the range of its configurations' whole-cache ratio and, "
                   "in brackets, of their prompt-only ratio (the prompt's bytes alone, evictions under the prefill protocol). "
                   "Buckets with one configuration have no decision and are left out of the headline. Two-level "
                   "bootstrap: %zu resamples of the %zu strategy families, then of the %zu sequences (each "
                   "configuration's proxy and truth re-averaged over the drawn sequences); draws and replicate "
                   "statistics in tables/truth_boot.csv.\n\n",
                100 * TR_MEM_TOL, boot.B, boot.F, boot.S);
        char bpath[8192];
        snprintf(bpath, sizeof bpath, "%s/tables/truth_buckets.md", c->dir);
        char *bbuf = NULL;
        size_t blen = 0;
        int bmiss = 0;
        kv_error e3;
        if (res_read_file(bpath, &bbuf, &blen, &bmiss, &e3) == KV_OK && !bmiss) { fwrite(bbuf, 1, blen, f); fputc('\n', f); }
        free(bbuf);
    }
    for (int m = 0; m < TM_N; m++)
        if (isfinite(ts[m].rho) && ts[m].rho < TR_WARN_RHO) {
            fprintf(f, "> **WARNING: the proxy ranks configurations with Spearman %.3f < %.1f against the in-model "
                       "re-run for %s: do not trust its ranking on this model without the truth run.**\n\n",
                    ts[m].rho, TR_WARN_RHO, tm_name[m]);
            (*n_warn)++;
        }
    fprintf(f, "| metric | n | Spearman [95%% CI] | Kendall [95%% CI] | slope | median truth/proxy |\n"
               "|---|---|---|---|---|---|\n");
    for (int m = 0; m < TM_N; m++) {
        const tstat *t = &ts[m];
        char a[6][32];
        fmt_num(a[0], 32, t->rho); fmt_num(a[1], 32, t->rho_lo); fmt_num(a[2], 32, t->rho_hi);
        fmt_num(a[3], 32, t->tau); fmt_num(a[4], 32, t->tau_lo); fmt_num(a[5], 32, t->tau_hi);
        char sl[32], mr[32];
        fmt_num(sl, 32, t->slope); fmt_num(mr, 32, t->med_ratio);
        fprintf(f, "| %s | %zu | %s [%s, %s] | %s [%s, %s] | %s | %s |\n", tm_name[m], t->n, a[0], a[1], a[2], a[3],
                a[4], a[5], sl, mr);
    }
    {
        char a[7][32];
        fmt_num(a[0], 32, tsx.rho); fmt_num(a[1], 32, tsx.rho_lo); fmt_num(a[2], 32, tsx.rho_hi);
        fmt_num(a[3], 32, tsx.tau); fmt_num(a[4], 32, tsx.tau_lo); fmt_num(a[5], 32, tsx.tau_hi);
        fmt_num(a[6], 32, tsx.slope);
        fprintf(f, "| nll_delta ranked by the proxy logit_kl | %zu | %s [%s, %s] | %s [%s, %s] | %s | |\n", tsx.n, a[0],
                a[1], a[2], a[3], a[4], a[5], a[6]);
    }
    fprintf(f, "\nThe last row (`%s` in tables/truth.csv) uses no fit: it scores the proxy logit KL as a "
               "ranking of the true ΔNLL.\n\n", TR_CROSS_NAME);
    fprintf(f, "Underestimate by family: true / proxy logit_kl per configuration (configurations whose proxy is "
               "0 left out), the median and range over the family; a family whose factor stands apart from the "
               "others is ranked wrongly against them by the raw proxy (tables/truth_families.csv).\n\n"
               "| family | configurations | median true / proxy | range |\n|---|---|---|---|\n");
    for (size_t k = 0; k < n_fam; k++) {
        char a[3][32];
        fmt_num(a[0], 32, fam_ratio[k].med); fmt_num(a[1], 32, fam_ratio[k].lo); fmt_num(a[2], 32, fam_ratio[k].hi);
        fprintf(f, "| %s | %zu | %s | %s-%s |\n", rs->configs[cid[fam_idx[k]]].family, fam_ratio[k].n, a[0], a[1], a[2]);
    }
    fputc('\n', f);
    if (ncal) {
        size_t nfam = 0;
        for (size_t i = 0; i < np; i++) nfam += fam[i] == (int)i;
        fprintf(f, "### Calibrated proxy (per-layer gains, leave-one-strategy-out)\n\n"
                   "Features: the per-layer direct-path read-out of `per_layer.csv` (each layer's perturbation alone, "
                   "means over the paired sequences). Every fold fits the gains on the configurations of the other "
                   "%zu strategy families only and predicts the held-out family; the correlations below are of those "
                   "held-out predictions with the truth (bootstrap intervals as above). Raw = the proxy above. Gains: "
                   "fitted on all %zu configurations (what to apply to new configurations), first to last layer.\n\n",
                nfam > 0 ? nfam - 1 : 0, np);
        fprintf(f, "| metric | calibration | fit | raw Spearman [95%% CI] | calibrated Spearman [95%% CI] | raw Kendall "
                   "[95%% CI] | calibrated Kendall [95%% CI] | gains |\n|---|---|---|---|---|---|---|---|\n");
        for (size_t k = 0; k < ncal; k++) {
            const tcal *q = &cal[k];
            const tstat *t = &ts[q->def->target];
            char a[12][32];
            fmt_num(a[0], 32, t->rho); fmt_num(a[1], 32, t->rho_lo); fmt_num(a[2], 32, t->rho_hi);
            fmt_num(a[3], 32, q->st.rho); fmt_num(a[4], 32, q->st.rho_lo); fmt_num(a[5], 32, q->st.rho_hi);
            fmt_num(a[6], 32, t->tau); fmt_num(a[7], 32, t->tau_lo); fmt_num(a[8], 32, t->tau_hi);
            fmt_num(a[9], 32, q->st.tau); fmt_num(a[10], 32, q->st.tau_lo); fmt_num(a[11], 32, q->st.tau_hi);
            fprintf(f, "| %s | %s (%s) | %s | %s [%s, %s] | %s [%s, %s] | %s [%s, %s] | %s [%s, %s] |", tm_name[q->def->target],
                    q->def->name, q->def->features, q->def->fit, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9],
                    a[10], a[11]);
            for (size_t l = 0; l < L; l++) { char g[32]; fmt_num(g, 32, q->g[l]); fprintf(f, "%s%s", l ? ", " : " ", g); }
            fprintf(f, " |\n");
        }
        fprintf(f, "\nThe %s rows: the raw direct-path ΔNLL has the wrong sign on this kind of model (it ignores "
                   "the later layers' response), so `nll_ols` lets each layer's gain take either sign; `nll_from_kl` "
                   "predicts ΔNLL from the per-layer KLs with non-negative gains. Statistics and gains: "
                   "tables/truth_calib.csv.\n\n", tm_name[TM_NLL]);
        /* fold-to-fold spread of the gains: per layer max/min over the held-out-family folds */
        fprintf(f, "Fold-to-fold spread of the gains (tables/truth_folds.csv: each fold's gains, fitted without one "
                   "family; the family's configurations and all their sequences are held out together, the sequences "
                   "being shared by every family): per layer, the largest fold gain over the smallest.\n\n"
                   "| calibration | max/min per layer, first to last |\n|---|---|\n");
        for (size_t k = 0; k < ncal; k++) {
            double worst = 1;
            fprintf(f, "| %s |", tr_cal_defs[k].name);
            for (size_t l = 0; l < L; l++) {
                double lo = INFINITY, hi = -INFINITY;
                for (size_t fi = 0; fi < n_fold; fi++) {
                    double v = fabs(fold_g[(k * n_fold + fi) * L + l]);
                    if (isfinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
                }
                double r = !(hi > 0) ? 1 : lo > 0 ? hi / lo : INFINITY;
                if (r > worst) worst = r;
                char b[32];
                if (isinf(r)) snprintf(b, sizeof b, "inf (a fold sets it to 0)"); else fmt_num(b, 32, r);
                fprintf(f, "%s%s", l ? ", " : " ", b);
            }
            fprintf(f, " |\n");
            if (worst > TR_FOLD_WARN) fold_warn[k] = 1;
        }
        fputc('\n', f);
        for (size_t k = 0; k < ncal; k++)
            if (fold_warn[k])
                fprintf(f, "> **WARNING: the %s gains move by more than %gx between folds: one strategy family "
                           "decides them; do not apply them to new families without another truth run.**\n\n",
                        tr_cal_defs[k].name, TR_FOLD_WARN);
    } else {
        fprintf(f, "No calibrated proxy: the results have no complete per_layer.csv for the paired configurations "
                   "(run `kvreplay run ... --per-layer-readout`).\n\n");
    }
    for (int m = 0; m < TM_N; m++) {
        if (rendered[m]) fprintf(f, "![proxy vs truth, %s](figures/truth_%s.png)\n\n", tm_name[m], tm_name[m]);
        else if (!c->no_figures) fprintf(f, "Figure truth_%s not rendered (figures/truth_%s.gp and .dat are written).\n\n",
                                         tm_name[m], tm_name[m]);
    }
    fprintf(f, "Pairs: tables/truth_pairs.csv; statistics: tables/truth.csv.\n");
    st = rp_close_out(c, f, "report.md", err);
    f = NULL;
    if (st != KV_OK) goto done;
    st = tr_needles(c, truth_path, err);
done:
    if (f) fclose(f);
    for (size_t i = 0; i < N; i++) free(rows[i].config);
    free(rows); free(cid);
    for (size_t i = 0; i < npl; i++) free(pl[i].config);
    free(pl); free(fx[0]); free(fx[1]); free(fam);
    free(ps); free(psx); free(bi); free(fold_g); free(fold_fam); free(fam_idx); free(fam_ratio); free(alt_pred);
    free(cal_fs);
    for (size_t k = 0; k < TR_NCAL; k++) { free(cal[k].pred); free(cal[k].g); }
    for (int m = 0; m < TM_N; m++) { free(px[m]); free(ty[m]); }
    return st;
}

/* ---- --gains: a previous truth run's calibration applied to new results ------------------- */

#define TR_MAX_GAINS 4096

/* Reads the gains of row `name` of a truth_calib.csv-like file into g [TR_MAX_GAINS]; *L =
 * their count. KV_OK, or an error (KV_ERR_INVALID: no such row) with err set. */
typedef struct gains_id { char model[256], sha[72], mode[16]; int has; } gains_id;

/* put_id's inverse (a malformed %XX is kept as it is: it then matches nothing). */
static void copy_field(char *dst, size_t cap, const char *src)
{
    size_t n = 0;
    for (const char *p = src; *p && n + 1 < cap; p++) {
        unsigned x;
        if (*p == '%' && isxdigit((unsigned char)p[1]) && isxdigit((unsigned char)p[2]) && sscanf(p + 1, "%2x", &x) == 1) {
            dst[n++] = (char)x;
            p += 2;
        } else dst[n++] = *p;
    }
    dst[n] = 0;
}

static kv_status read_gains(const char *path, const char *name, double *g, size_t *L, gains_id *id, kv_error *err)
{
    int col_model = -1, col_sha = -1, col_mode = -1;
    if (id) memset(id, 0, sizeof *id);
    char *fbuf = NULL;
    int missing = 0;
    kv_error e0;
    FILE *f = open_checked(path, &fbuf, &missing, &e0);
    if (missing) return fail(err, KV_ERR_IO, "--gains %s: cannot open: %s", path, strerror(ENOENT));
    if (!f) return fail(err, KV_ERR_IO, "--gains %s", e0.msg);
    char *line = NULL;
    size_t cap = 0, ln = 0;
    int col_name = -1, first_gain = -1, n_gain = 0;
    kv_status st = fail(err, KV_ERR_INVALID, "--gains %s: no row '%s'", path, name);
    while (getline(&line, &cap, f) > 0) {
        line[strcspn(line, "\r\n")] = 0;
        ln++;
        char *p = line;
        int col = 0;
        if (ln == 1) {          /* header: calibration, ..., gain_0 .. gain_{L-1} in order */
            for (char *tok = p; tok; col++) {
                char *nx = strchr(tok, ',');
                if (nx) *nx++ = 0;
                if (!strcmp(tok, "calibration")) col_name = col;
                if (!strcmp(tok, "trace_model")) col_model = col;
                if (!strcmp(tok, "trace_sha256")) col_sha = col;
                if (!strcmp(tok, "mode")) col_mode = col;
                char want[32];
                snprintf(want, sizeof want, "gain_%d", n_gain);
                if (!strcmp(tok, want)) { if (first_gain < 0) first_gain = col; n_gain++; }
                tok = nx;
            }
            if (col_name < 0 || n_gain == 0 || n_gain > TR_MAX_GAINS) {
                st = fail(err, KV_ERR_FORMAT, "--gains %s line 1: expected a header with 'calibration' and gain_0, "
                          "gain_1, ... (kvreport --truth writes tables/truth_calib.csv)", path);
                break;
            }
            continue;
        }
        char *fld[TR_MAX_GAINS + 64];
        int nf = 0;
        for (char *tok = p; tok && nf < (int)(sizeof fld / sizeof *fld); nf++) {
            char *nx = strchr(tok, ',');
            if (nx) *nx++ = 0;
            fld[nf] = tok;
            tok = nx;
        }
        if (nf <= col_name || strcmp(fld[col_name], name)) continue;
        if (nf < first_gain + n_gain) {
            st = fail(err, KV_ERR_FORMAT, "--gains %s line %zu: %d fields, the header names %d", path, ln, nf,
                      first_gain + n_gain);
            break;
        }
        st = KV_OK;
        if (id && col_model >= 0 && col_sha >= 0 && col_mode >= 0 && nf > col_model && nf > col_sha && nf > col_mode) {
            copy_field(id->model, sizeof id->model, fld[col_model]);
            copy_field(id->sha, sizeof id->sha, fld[col_sha]);
            copy_field(id->mode, sizeof id->mode, fld[col_mode]);
            id->has = 1;
        }
        for (int l = 0; l < n_gain; l++) {
            char *e;
            g[l] = strtod(fld[first_gain + l], &e);
            if (e == fld[first_gain + l] || *e || !isfinite(g[l])) {
                st = fail(err, KV_ERR_FORMAT, "--gains %s line %zu: gain_%d '%s' is not a finite number", path, ln, l,
                          fld[first_gain + l]);
                break;
            }
        }
        *L = (size_t)n_gain;
        break;
    }
    free(line);
    fclose(f);
    free(fbuf);
    return st;
}

/* order [n]: indices of the finite x ascending (ties: lower index first), *m of them; r [n]:
 * their 1-based ranks (ties: average), NaN for the others. */
static int ranks_of(const double *x, size_t n, size_t *order, size_t *m, double *r)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) { r[i] = NAN; if (isfinite(x[i])) order[k++] = i; }
    *m = 0;
    if (!k) return 0;
    /* indices by value; gsl_sort_index leaves the order of ties open: fixed below */
    double *v = malloc(k * sizeof *v);
    size_t *p = malloc(k * sizeof *p);
    if (!v || !p) { free(v); free(p); return -1; }
    for (size_t i = 0; i < k; i++) v[i] = x[order[i]];
    gsl_sort_index(p, v, 1, k);
    for (size_t i = 0; i < k; i++) p[i] = order[p[i]];
    /* ties: order by index inside each run of equal values */
    for (size_t a = 0; a < k;) {
        size_t b = a + 1;
        while (b < k && x[p[b]] == x[p[a]]) b++;
        for (size_t i = a + 1; i < b; i++)
            for (size_t j = i; j > a && p[j - 1] > p[j]; j--) { size_t t = p[j]; p[j] = p[j - 1]; p[j - 1] = t; }
        for (size_t i = a; i < b; i++) r[p[i]] = (double)(a + 1 + b) / 2.0;
        a = b;
    }
    memcpy(order, p, k * sizeof *order);
    free(v); free(p);
    *m = k;
    return 0;
}

kv_status tr_apply_gains(rp_ctx *c, const char *gains_path, kv_error *err)
{
    const res_set *rs = c->rs;
    double gk[TR_MAX_GAINS], gn[TR_MAX_GAINS];
    size_t L = 0, Ln = 0, npl = 0, Lr = 0, NC = rs->n_configs;
    gains_id id;
    kv_status st = read_gains(gains_path, "kl_nnls", gk, &L, &id, err);
    if (st != KV_OK) return st;
    kv_error e2;
    int have_nll = read_gains(gains_path, "nll_from_kl", gn, &Ln, NULL, &e2) == KV_OK && Ln == L;
    /* the identity the gains were fitted on: the same model and protocol always; the same
     * trace unless --force-trace (then stated in report.md) */
    char forced[1024] = "";
    if (!id.has) {
        if (!c->force_trace)
            return fail(err, KV_ERR_INVALID, "--gains %s: no trace_model/trace_sha256/mode columns: what the gains were "
                        "fitted on is unknown (written by an older kvreport; --force-trace to apply them anyway)", gains_path);
        snprintf(forced, sizeof forced, "the gains file does not record the model and trace it was fitted on; applied "
                 "anyway (--force-trace)");
    }
    for (size_t d = 0; id.has && d < rs->n_dirs; d++) {
        const char *m = res_prov(&rs->dirs[d], "trace_model"), *h = res_prov(&rs->dirs[d], "trace_sha256"),
                   *p = res_prov(&rs->dirs[d], "mode");
        if (!m || strcmp(m, id.model))
            return fail(err, KV_ERR_INVALID, "--gains %s: fitted on model '%s', but %s holds results of model '%s' "
                        "(gains fit one model's layers)", gains_path, id.model, rs->dirs[d].path, m ? m : "(unknown)");
        if (!p || strcmp(p, id.mode))
            return fail(err, KV_ERR_INVALID, "--gains %s: fitted under the %s protocol, but %s was run with mode %s",
                        gains_path, id.mode, rs->dirs[d].path, p ? p : "(unknown)");
        if (!h || strcmp(h, id.sha)) {
            if (!c->force_trace)
                return fail(err, KV_ERR_INVALID, "--gains %s: fitted on trace sha256 %.16s..., but %s is of trace %.16s... "
                            "(--force-trace to apply gains of the same model fitted on another trace)", gains_path, id.sha,
                            rs->dirs[d].path, h ? h : "(unknown)");
            snprintf(forced, sizeof forced, "the gains were fitted on trace sha256 %s, these results are of trace %s "
                     "(same model '%s'); applied with --force-trace", id.sha, h ? h : "(unknown)", m);
        }
    }
    plrow *pl = NULL;
    if ((st = load_per_layer(rs, &pl, &npl, &Lr, err)) != KV_OK) return st;
    double *f = NULL, *raw = NULL, *cal = NULL, *caln = NULL, *rr = NULL, *rc = NULL;
    size_t *nseq = NULL, *ord = NULL, nord = 0;
    FILE *o = NULL;
    if (!npl) {
        st = fail(err, KV_ERR_INVALID, "--gains: the results have no per_layer.csv (run kvreplay run ... "
                  "--per-layer-readout)");
        goto done;
    }
    if (Lr != L) {
        st = fail(err, KV_ERR_INVALID, "--gains %s: %zu layer gains, but the results' per_layer.csv has %zu layers "
                  "(gains fit one model's layers)", gains_path, L, Lr);
        goto done;
    }
    f = calloc(NC * L + 1, sizeof *f);
    raw = calloc(NC + 1, sizeof *raw); cal = calloc(NC + 1, sizeof *cal); caln = calloc(NC + 1, sizeof *caln);
    rr = calloc(NC + 1, sizeof *rr); rc = calloc(NC + 1, sizeof *rc);
    nseq = calloc(NC + 1, sizeof *nseq);
    ord = calloc(NC + 1, sizeof *ord);
    if (!f || !raw || !cal || !caln || !rr || !rc || !nseq || !ord) { st = fail(err, KV_ERR_NOMEM, "out of memory"); goto done; }
    /* per configuration: means over its sequences whose L layers are all present and finite */
    for (size_t ci = 0; ci < NC; ci++) {
        const res_config *cf = &rs->configs[ci];
        double sraw = 0;
        size_t k = 0;
        for (size_t j = 0; j < cf->n_seqs; j++) {
            double row[TR_MAX_GAINS];
            size_t got = 0;
            long long sq = cf->seqs[j].seq;
            for (size_t r = pl_find(pl, npl, cf->config, sq); r < npl && pl_match(&pl[r], cf->config, sq); r++)
                if (isfinite(pl[r].kl)) {
                    row[pl[r].layer] = pl[r].kl;
                    got++;
                }
            if (got != L || isnan(cf->seqs[j].v[RM_LOGIT_KL])) continue;
            for (size_t l = 0; l < L; l++) f[ci * L + l] += row[l];
            sraw += cf->seqs[j].v[RM_LOGIT_KL];
            k++;
        }
        nseq[ci] = k;
        if (!k) { raw[ci] = cal[ci] = caln[ci] = NAN; continue; }
        raw[ci] = sraw / (double)k;
        double a = 0, b = 0;
        for (size_t l = 0; l < L; l++) {
            double m = f[ci * L + l] / (double)k;
            a += gk[l] * m;
            b += have_nll ? gn[l] * m : 0;
        }
        cal[ci] = a;
        caln[ci] = have_nll ? b : NAN;
    }
    if (ranks_of(raw, NC, ord, &nord, rr) || ranks_of(cal, NC, ord, &nord, rc)) {   /* ord: calibrated order */
        st = fail(err, KV_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (!(o = rp_open_out(c, "tables/calibrated.csv", "w", err))) { st = err->code; goto done; }
    fprintf(o, "config,family,n_seq,logit_kl,logit_kl_cal,nll_delta_cal,rank_raw,rank_cal\n");
    for (size_t ci = 0; ci < NC; ci++) {
        const res_config *cf = &rs->configs[ci];
        double v[5] = { raw[ci], cal[ci], caln[ci], rr[ci], rc[ci] };
        fprintf(o, "%s,%s,%zu", cf->config, cf->family, nseq[ci]);
        put_nums(o, v, 5);
        fputc('\n', o);
    }
    st = rp_close_out(c, o, "tables/calibrated.csv", err);
    o = NULL;
    if (st != KV_OK) goto done;
    if (!(o = rp_open_out(c, "report.md", "a", err))) { st = err->code; goto done; }
    fprintf(o, "\n## Calibrated proxy (gains from `%s`)\n\n"
               "logit_kl_cal = sum over layers of gain x the layer's own direct-path logit KL (per_layer.csv, means "
               "over each configuration's sequences), with the %zu `kl_nnls` gains an earlier `kvreport --truth` "
               "fitted on an in-model truth set%s. Gains transfer between runs of the same model and protocol only. "
               "Ranks: 1 = least damage. All configurations: tables/calibrated.csv.\n\n",
            gains_path, L, have_nll ? " (and `nll_from_kl` for nll_delta_cal)" : "");
    if (forced[0]) fprintf(o, "**Note:** %s.\n\n", forced);
    fputs("| configuration | logit_kl (raw) | rank | logit_kl_cal | rank |\n|---|---|---|---|---|\n", o);
    for (size_t i = 0; i < nord; i++) {      /* the configurations in calibrated order */
        size_t ci = ord[i];
        char a[32], b[32], r1[32], r2[32];
        fmt_num(a, 32, raw[ci]); fmt_num(b, 32, cal[ci]); fmt_num(r1, 32, rr[ci]); fmt_num(r2, 32, rc[ci]);
        fprintf(o, "| %s | %s | %s | %s | %s |\n", rs->configs[ci].config, a, r1, b, r2);
    }
    fputc('\n', o);
    st = rp_close_out(c, o, "report.md", err);
    o = NULL;
    if (st != KV_OK) goto done;
    st = KV_OK;
done:
    if (o) fclose(o);
    for (size_t i = 0; i < npl; i++) free(pl[i].config);
    free(pl); free(f); free(raw); free(cal); free(caln); free(rr); free(rc); free(nseq); free(ord);
    return st;
}
