/* Calibrated proxy: NNLS / OLS gains and leave-one-family-out cross-validation (calib.h).
 *
 * n rows (configurations), L features (layers), A [n][L] row-major, b [n], g [L].
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_errno.h>
#include <gsl/gsl_multifit.h>

#include "calib.h"

static kv_status fail(kv_error *err, kv_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->code = s;
    return s;
}

static kv_status ls_nz(const double *A, const double *b, size_t n, size_t L, const size_t *cols, size_t k,
                       double *z, kv_error *err);

/* Unconstrained least squares of b [n] on the columns cols [k] of A: z[cols[j]] = solution,
 * other entries untouched. k = 0: nothing. gsl_multifit_linear (SVD, minimum norm). */
static kv_status ls_cols(const double *A, const double *b, size_t n, size_t L, const size_t *cols, size_t k,
                         double *z, kv_error *err)
{
    /* all-zero columns get 0 and stay out of the fit (GSL's column scaling divides by
     * their norm): the minimum-norm solution */
    size_t *nz = malloc((k ? k : 1) * sizeof *nz), kk = 0;
    if (!nz) return fail(err, KV_ERR_NOMEM, "out of memory (calibration fit)");
    for (size_t j = 0; j < k; j++) {
        int any = 0;
        for (size_t i = 0; i < n && !any; i++) any = A[i * L + cols[j]] != 0;
        if (any) nz[kk++] = cols[j]; else z[cols[j]] = 0;
    }
    kv_status st = ls_nz(A, b, n, L, nz, kk, z, err);
    free(nz);
    return st;
}

static kv_status ls_nz(const double *A, const double *b, size_t n, size_t L, const size_t *cols, size_t k,
                       double *z, kv_error *err)
{
    if (!k) return KV_OK;
    gsl_matrix *X = gsl_matrix_alloc(n, k), *cov = gsl_matrix_alloc(k, k);
    gsl_vector *y = gsl_vector_alloc(n), *c = gsl_vector_alloc(k);
    gsl_multifit_linear_workspace *w = gsl_multifit_linear_alloc(n, k);
    kv_status st = KV_OK;
    if (!X || !cov || !y || !c || !w) { st = fail(err, KV_ERR_NOMEM, "out of memory (calibration fit)"); goto done; }
    for (size_t i = 0; i < n; i++) {
        gsl_vector_set(y, i, b[i]);
        for (size_t j = 0; j < k; j++) gsl_matrix_set(X, i, j, A[i * L + cols[j]]);
    }
    double chisq;
    gsl_error_handler_t *old = gsl_set_error_handler_off();
    int rc = gsl_multifit_linear(X, y, c, cov, &chisq, w);
    gsl_set_error_handler(old);
    if (rc) { st = fail(err, KV_ERR_VALUE, "calibration fit: least squares failed (%s)", gsl_strerror(rc)); goto done; }
    for (size_t j = 0; j < k; j++) z[cols[j]] = gsl_vector_get(c, j);
done:
    if (w) gsl_multifit_linear_free(w);
    gsl_matrix_free(X); gsl_matrix_free(cov); gsl_vector_free(y); gsl_vector_free(c);
    return st;
}

/* w [L] = A^T (b - A g) */
static void gradient(const double *A, const double *b, size_t n, size_t L, const double *g, double *w)
{
    for (size_t j = 0; j < L; j++) w[j] = 0;
    for (size_t i = 0; i < n; i++) {
        double r = b[i];
        for (size_t j = 0; j < L; j++) r -= A[i * L + j] * g[j];
        for (size_t j = 0; j < L; j++) w[j] += A[i * L + j] * r;
    }
}

/* Lawson-Hanson NNLS: passive set P (free, g > 0), active set R (g = 0). */
static kv_status nnls(const double *A, const double *b, size_t n, size_t L, double *g, kv_error *err)
{
    double *w = malloc((L ? L : 1) * sizeof *w), *z = malloc((L ? L : 1) * sizeof *z);
    size_t *cols = malloc((L ? L : 1) * sizeof *cols);
    unsigned char *inP = calloc(L ? L : 1, 1);
    kv_status st = KV_OK;
    if (!w || !z || !cols || !inP) { st = fail(err, KV_ERR_NOMEM, "out of memory (NNLS)"); goto done; }
    for (size_t j = 0; j < L; j++) g[j] = 0;
    /* tolerance on the gradient, relative to the scale of A^T b */
    double scale = 0;
    gradient(A, b, n, L, g, w);
    for (size_t j = 0; j < L; j++) scale = fmax(scale, fabs(w[j]));
    double tol = 1e-12 * (scale > 0 ? scale : 1);
    size_t outer = 0, max_outer = 3 * L + 10;
    for (;;) {
        gradient(A, b, n, L, g, w);
        size_t jm = L;
        for (size_t j = 0; j < L; j++)
            if (!inP[j] && w[j] > tol && (jm == L || w[j] > w[jm])) jm = j;
        if (jm == L) break;                                   /* KKT satisfied */
        if (++outer > max_outer) { st = fail(err, KV_ERR_VALUE, "NNLS: no convergence after %zu iterations", max_outer); goto done; }
        inP[jm] = 1;
        for (size_t inner = 0; inner <= 3 * L + 10; inner++) {
            size_t k = 0;
            for (size_t j = 0; j < L; j++) { z[j] = 0; if (inP[j]) cols[k++] = j; }
            if ((st = ls_cols(A, b, n, L, cols, k, z, err)) != KV_OK) goto done;
            int feasible = 1;
            for (size_t q = 0; q < k; q++) if (z[cols[q]] <= 0) feasible = 0;
            if (feasible) { memcpy(g, z, L * sizeof *g); break; }
            /* step from g towards z until the first passive variable hits 0; it (and any
             * other at or below 0) leaves the passive set */
            double alpha = 2;
            size_t jz = L;
            for (size_t q = 0; q < k; q++) {
                size_t j = cols[q];
                if (z[j] <= 0) { double a = g[j] / (g[j] - z[j]); if (a < alpha) { alpha = a; jz = j; } }
            }
            for (size_t j = 0; j < L; j++) g[j] += alpha * (z[j] - g[j]);
            g[jz] = 0;
            for (size_t q = 0; q < k; q++) { size_t j = cols[q]; if (g[j] <= 0) { inP[j] = 0; g[j] = 0; } }
        }
    }
done:
    free(w); free(z); free(cols); free(inP);
    return st;
}

kv_status cal_fit(int method, const double *A, const double *b, size_t n, size_t L, double *g, kv_error *err)
{
    for (size_t i = 0; i < n * L; i++) if (!isfinite(A[i])) return fail(err, KV_ERR_VALUE, "calibration fit: NaN/Inf feature");
    for (size_t i = 0; i < n; i++) if (!isfinite(b[i])) return fail(err, KV_ERR_VALUE, "calibration fit: NaN/Inf target");
    if (method == CAL_NNLS) return nnls(A, b, n, L, g, err);
    if (method != CAL_OLS) return fail(err, KV_ERR_INVALID, "calibration fit: unknown method %d", method);
    size_t *cols = malloc((L ? L : 1) * sizeof *cols);
    if (!cols) return fail(err, KV_ERR_NOMEM, "out of memory");
    for (size_t j = 0; j < L; j++) { cols[j] = j; g[j] = 0; }
    kv_status st = ls_cols(A, b, n, L, cols, L, g, err);
    free(cols);
    return st;
}

kv_status cal_loso_predict(int method, const double *A, const double *b, const int *fam, size_t n, size_t L,
                           double *pred, cal_fold_cb cb, void *ud, kv_error *err)
{
    size_t *tr = malloc((n ? n : 1) * sizeof *tr), *te = malloc((n ? n : 1) * sizeof *te);
    double *At = malloc((n && L ? n * L : 1) * sizeof *At), *bt = malloc((n ? n : 1) * sizeof *bt);
    double *g = malloc((L ? L : 1) * sizeof *g);
    unsigned char *done_f = calloc(n ? n : 1, 1);     /* row i's family already held out */
    kv_status st = KV_OK;
    if (!tr || !te || !At || !bt || !g || !done_f) { st = fail(err, KV_ERR_NOMEM, "out of memory"); goto done; }
    for (size_t i = 0; i < n; i++) pred[i] = NAN;
    for (size_t i0 = 0; i0 < n; i0++) {
        if (done_f[i0]) continue;
        int f = fam[i0];
        size_t ntr = 0, nte = 0;
        for (size_t i = 0; i < n; i++) {
            if (fam[i] == f) { te[nte++] = i; done_f[i] = 1; }
            else tr[ntr++] = i;
        }
        if (cb) cb(ud, f, tr, ntr, te, nte);
        if (!ntr) continue;
        /* the fit sees the training rows only: copied out, nothing else is passed */
        for (size_t r = 0; r < ntr; r++) {
            memcpy(At + r * L, A + tr[r] * L, L * sizeof *At);
            bt[r] = b[tr[r]];
        }
        if ((st = cal_fit(method, At, bt, ntr, L, g, err)) != KV_OK) goto done;
        for (size_t r = 0; r < nte; r++) {
            double s = 0;
            for (size_t j = 0; j < L; j++) s += A[te[r] * L + j] * g[j];
            pred[te[r]] = s;
        }
    }
done:
    free(tr); free(te); free(At); free(bt); free(g); free(done_f);
    return st;
}
