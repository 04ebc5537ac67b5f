/* Calibrated proxy (docs/METHODS.md §12): per-layer gains on the per-layer direct-path read-out
 * (replay per_layer.csv), fitted on a truth set and scored by leave-one-strategy-out
 * cross-validation.
 *
 * n configurations (rows), L layers (features), A [n][L] row-major, b [n] the truth.
 *   NNLS   min ||A g - b||^2 subject to g >= 0: Lawson & Hanson (1974), ch. 23 active-set
 *          algorithm, implemented here; the passive-set least squares go through GSL's
 *          gsl_multifit_linear (SVD).
 *   OLS    the same without the sign constraint (gsl_multifit_linear), no intercept.
 * Library code: status codes, no printing.
 */
#ifndef KV_CALIB_H
#define KV_CALIB_H

#include <stddef.h>

#include "kvtrace.h"

enum { CAL_NNLS, CAL_OLS };

/* Fits g [L]. NNLS stops after 3L+10 outer iterations (then KV_ERR_VALUE). n may be < L
 * (the minimum-norm SVD solution on the passive set). */
kv_status cal_fit(int method, const double *A, const double *b, size_t n, size_t L, double *g, kv_error *err);

/* One cross-validation fold as seen by the audit callback: the rows fitted on and the rows
 * scored (indices into the n rows), and the held-out family. */
typedef void (*cal_fold_cb)(void *ud, int family, const size_t *train, size_t n_train, const size_t *test,
                            size_t n_test);

/* Leave-one-family-out: for each family f present in fam [n], fit on the rows of every
 * other family only and predict the rows of f: pred[i] = A[i] . g_(-fam[i]). A family
 * whose complement is empty gets pred NaN. cb (may be NULL) sees every fold. */
kv_status cal_loso_predict(int method, const double *A, const double *b, const int *fam, size_t n, size_t L,
                           double *pred, cal_fold_cb cb, void *ud, kv_error *err);

#endif /* KV_CALIB_H */
