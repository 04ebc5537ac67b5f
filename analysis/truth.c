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
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
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
    double *r = malloc((n ? n : 1) * sizeof *r);
    size_t k = 0;
    for (size_t i = 0; r && i < n; i++) if (px[i] > 0) r[k++] = ty[i] / px[i];
    if (k) { qsort(r, k, sizeof *r, cmp_d); o->med_ratio = k % 2 ? r[k / 2] : 0.5 * (r[k / 2 - 1] + r[k / 2]); }
    free(r);
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
            /* per-layer features of the same (config, sequence); a missing one disables the
             * calibration (have_pl = 0) rather than pairing other sequences */
            if (have_pl) {
                size_t got = 0;
                long long sq = rows[i].seq;
                for (size_t r = pl_find(pl, npl, cf->config, sq); r < npl && pl_match(&pl[r], cf->config, sq); r++)
                    if (isfinite(pl[r].kl) && isfinite(pl[r].nll)) {
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

    /* tables/truth.csv */
    snprintf(path, sizeof path, "%s/tables/truth.csv", c->dir);
    if (!(f = fopen(path, "w"))) { st = fail(err, KV_ERR_IO, "%s: cannot write: %s", path, strerror(errno)); goto done; }
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
    if (fclose(f)) { f = NULL; st = fail(err, KV_ERR_IO, "%s: write failed: %s", path, strerror(errno)); goto done; }
    f = NULL;
    snprintf(path, sizeof path, "%s/tables/truth_pairs.csv", c->dir);
    if (!(f = fopen(path, "w"))) { st = fail(err, KV_ERR_IO, "%s: cannot write: %s", path, strerror(errno)); goto done; }
    fprintf(f, "config,family,proxy_logit_kl,true_logit_kl,proxy_nll_delta,true_nll_delta\n");
    for (size_t i = 0; i < np; i++)
        fprintf(f, "%s,%s,%.9g,%.9g,%.9g,%.9g\n", rs->configs[cid[i]].config, rs->configs[cid[i]].family,
                px[TM_KL][i], ty[TM_KL][i], px[TM_NLL][i], ty[TM_NLL][i]);
    if (fclose(f)) { f = NULL; st = fail(err, KV_ERR_IO, "%s: write failed: %s", path, strerror(errno)); goto done; }
    f = NULL;
    if (ncal) {     /* every calibration: cross-validated statistics and the full-data gains */
        snprintf(path, sizeof path, "%s/tables/truth_calib.csv", c->dir);
        if (!(f = fopen(path, "w"))) { st = fail(err, KV_ERR_IO, "%s: cannot write: %s", path, strerror(errno)); goto done; }
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
        if (fclose(f)) { f = NULL; st = fail(err, KV_ERR_IO, "%s: write failed: %s", path, strerror(errno)); goto done; }
        f = NULL;
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
            f = NULL;
            char script[64];
            snprintf(script, sizeof script, "truth_%s.gp", tm_name[m]);
            rendered[m] = render(c, figdir, script) == 0;
        }
    }

    /* report.md section (appended) */
    snprintf(path, sizeof path, "%s/report.md", c->dir);
    if (!(f = fopen(path, "a"))) { st = fail(err, KV_ERR_IO, "%s: cannot append: %s", path, strerror(errno)); goto done; }
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
    if (fclose(f)) { f = NULL; st = fail(err, KV_ERR_IO, "%s: write failed: %s", path, strerror(errno)); goto done; }
    f = NULL;
    st = KV_OK;
done:
    if (f) fclose(f);
    for (size_t i = 0; i < N; i++) free(rows[i].config);
    free(rows); free(cid);
    for (size_t i = 0; i < npl; i++) free(pl[i].config);
    free(pl); free(fx[0]); free(fx[1]); free(fam);
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
    char path[8192];
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
    snprintf(path, sizeof path, "%s/tables/calibrated.csv", c->dir);
    if (!(o = fopen(path, "w"))) { st = fail(err, KV_ERR_IO, "%s: cannot write: %s", path, strerror(errno)); goto done; }
    fprintf(o, "config,family,n_seq,logit_kl,logit_kl_cal,nll_delta_cal,rank_raw,rank_cal\n");
    for (size_t ci = 0; ci < NC; ci++) {
        const res_config *cf = &rs->configs[ci];
        double v[5] = { raw[ci], cal[ci], caln[ci], rr[ci], rc[ci] };
        fprintf(o, "%s,%s,%zu", cf->config, cf->family, nseq[ci]);
        put_nums(o, v, 5);
        fputc('\n', o);
    }
    if (fclose(o)) { o = NULL; st = fail(err, KV_ERR_IO, "%s: write failed: %s", path, strerror(errno)); goto done; }
    o = NULL;
    snprintf(path, sizeof path, "%s/report.md", c->dir);
    if (!(o = fopen(path, "a"))) { st = fail(err, KV_ERR_IO, "%s: cannot append: %s", path, strerror(errno)); goto done; }
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
    if (fclose(o)) { o = NULL; st = fail(err, KV_ERR_IO, "%s: write failed: %s", path, strerror(errno)); goto done; }
    o = NULL;
    st = KV_OK;
done:
    if (o) fclose(o);
    for (size_t i = 0; i < npl; i++) free(pl[i].config);
    free(pl); free(f); free(raw); free(cal); free(caln); free(rr); free(rc); free(nseq); free(ord);
    return st;
}
