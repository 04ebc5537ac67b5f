/* analysis/calib.c: NNLS against scipy.optimize.nnls and the KKT conditions, and the
 * leave-one-strategy-out folds never fitting a configuration they score.
 *
 *   test_calib          run the cases (exit 0 = all pass)
 *   test_calib --cli    read "nnls n L a_00 .. a_(n-1)(L-1) b_0 .. b_(n-1)" lines from stdin and
 *                       print g with %.17g, one line each (tests/py/test_calib_nnls.py compares
 *                       them with scipy.optimize.nnls on random problems)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib.h"
#include "truth.h"

static int fails = 0, checks = 0;

static void check_true(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

/* worst |got - want| over k values against tol */
static void check_vec(const char *what, const double *got, const double *want, size_t k, double tol)
{
    double worst = 0;
    size_t wi = 0;
    for (size_t i = 0; i < k; i++) {
        double e = fabs(got[i] - want[i]);
        if (!(e <= worst)) { worst = e; wi = i; }
    }
    checks++;
    if (!(worst <= tol)) { fails++; printf("FAIL %s: worst element %zu got %.17g want %.17g (|err| %.3g > %.3g)\n", what, wi, got[wi], want[wi], worst, tol); }
    else printf("ok   %s (worst |err| %.3g)\n", what, worst);
}

/* ---- NNLS against scipy ---------------------------------------------------------------------- */

/* Generated with scipy 1.x: rng = np.random.default_rng(11); for (n, L) in [(8, 4), (5, 6)]:
 * A = rng.normal(size=(n, L)); b = rng.normal(size=n); x = scipy.optimize.nnls(A, b)[0]. */
static const double A1[8 * 4] = {
    0.034192767253184167, 1.3597475403099617, 1.2247210785859324, -0.51030707678766751, -0.29796951110644709,
    -0.52738419303342521, 0.56972635757196011, -0.056064439045617594, 0.74688561625654393, -1.8473247989741095,
    1.5665487746995206, -0.096432160155620547, 0.68037845327414614, -0.13656633397682774, -0.37909856707485329,
    0.46311015859758675, 0.82451352753011298, -0.20252987069345152, -0.15278617857019708, 0.68569861080925798,
    -0.8703406419471712, -1.5143835037313955, 0.39498186274953001, -0.67056582368787943, -1.9203405901180286,
    -0.8140536639453595, -0.46759755889274701, -1.1932024774322612, -1.4924638840630338, 0.036637826944805087,
    0.89724925672774758, -0.23313207796045685 };
static const double b1[8] = { -0.74359602950884485, 0.38499380874790828, 0.71723580719438385, -0.30001059848847739,
    0.54466780792089287, 1.0428754765829538, -0.20695643620832396, -0.81351554198157228 };
static const double x1[4] = { 0.15955269142660264, 0, 0.046525047176433396, 0 };
static const double A2[5 * 6] = {
    0.3476505985155095, 0.24754574096284754, 1.0988127684144084, -1.2845807788053449, -0.66161293035554769,
    -0.83816696071567454, -1.7340148462328515, 0.1264345551969962, 0.52780421249552401, -0.73879003147580646,
    1.3856470744961586, 0.8219243366604353, 0.62737647883553527, 0.40170709144096989, 0.95566956444863504,
    -1.3319798395431022, 0.61392965824986434, 0.60277683353344791, -1.7677185771429749, 0.34703010205437973,
    -0.25042134670996841, 0.78152269606169933, -0.43906218763766858, -0.018240857649100332, 0.34285151731765551,
    -0.87626168874420773, 0.59859664818038438, -0.10496318852366823, 0.49248262367924284, -0.52183750633678783 };
static const double b2[5] = { 1.0862015432775176, 0.60520197842947421, -0.17802502471933673, 0.63195715709361011,
    1.2597551613586251 };
static const double x2[6] = { 0, 0.053626853947783014, 2.6243427519675664, 1.644346505902762, 0.01178974920114946, 0 };

/* KKT of min ||Ag - b||^2, g >= 0 (convex: KKT <=> optimal): g >= 0, w = A^T(b - Ag) <= tol,
 * |w_j| <= tol where g_j > 0. Returns the worst violation. */
static double kkt(const double *A, const double *b, size_t n, size_t L, const double *g)
{
    double worst = 0;
    for (size_t j = 0; j < L; j++) {
        double w = 0;
        for (size_t i = 0; i < n; i++) {
            double r = b[i];
            for (size_t k = 0; k < L; k++) r -= A[i * L + k] * g[k];
            w += A[i * L + j] * r;
        }
        if (g[j] < 0) worst = fmax(worst, -g[j]);
        worst = fmax(worst, g[j] > 0 ? fabs(w) : w);
    }
    return worst;
}

static void nnls_cases(void)
{
    kv_error err;
    double g[8];
    check_true("nnls 8x4 runs", cal_fit(CAL_NNLS, A1, b1, 8, 4, g, &err) == KV_OK);
    check_vec("nnls 8x4 = scipy.optimize.nnls", g, x1, 4, 1e-10);
    check_true("nnls 8x4 KKT", kkt(A1, b1, 8, 4, g) < 1e-10);
    check_true("nnls 5x6 (n < L) runs", cal_fit(CAL_NNLS, A2, b2, 5, 6, g, &err) == KV_OK);
    check_vec("nnls 5x6 = scipy.optimize.nnls", g, x2, 6, 1e-9);
    check_true("nnls 5x6 KKT", kkt(A2, b2, 5, 6, g) < 1e-9);

    /* hand-computed: A = I, b = (2, -1, 3): g = (2, 0, 3) */
    const double I3[9] = { 1, 0, 0, 0, 1, 0, 0, 0, 1 }, bh[3] = { 2, -1, 3 }, gh[3] = { 2, 0, 3 };
    check_true("nnls identity runs", cal_fit(CAL_NNLS, I3, bh, 3, 3, g, &err) == KV_OK);
    check_vec("nnls identity = (2, 0, 3)", g, gh, 3, 1e-14);
    /* hand-computed: one column a = (1, 2), b = (1, 1): g = a.b / a.a = 3/5; b = -b: 0 */
    const double a1[2] = { 1, 2 }, bb[2] = { 1, 1 }, bn[2] = { -1, -1 }, g35 = 0.6, g0 = 0;
    cal_fit(CAL_NNLS, a1, bb, 2, 1, g, &err);
    check_vec("nnls one column = 3/5", g, &g35, 1, 1e-14);
    cal_fit(CAL_NNLS, a1, bn, 2, 1, g, &err);
    check_vec("nnls one column, negative target = 0", g, &g0, 1, 0);
    /* OLS on the same: free sign */
    const double gm = -0.6;
    cal_fit(CAL_OLS, a1, bn, 2, 1, g, &err);
    check_vec("ols one column, negative target = -3/5", g, &gm, 1, 1e-14);
    /* NaN input refused */
    const double an[2] = { NAN, 1 };
    check_true("nnls refuses NaN features", cal_fit(CAL_NNLS, an, bb, 2, 1, g, &err) == KV_ERR_VALUE);

    /* random problems: KKT within tolerance (LCG, fixed seed) */
    unsigned long long s = 12345;
    double worst = 0;
    for (int t = 0; t < 200; t++) {
        size_t n = 3 + (size_t)(t % 9), L = 1 + (size_t)(t % 6);
        double A[12 * 6], b[12], gg[6];
        for (size_t i = 0; i < n * L + n; i++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            double u = (double)(s >> 11) / 9007199254740992.0 - 0.5;
            if (i < n * L) A[i] = u; else b[i - n * L] = u;
        }
        if (cal_fit(CAL_NNLS, A, b, n, L, gg, &err) != KV_OK) { worst = INFINITY; break; }
        worst = fmax(worst, kkt(A, b, n, L, gg));
    }
    check_true("nnls 200 random problems satisfy KKT within 1e-9", worst < 1e-9);
    printf("     (worst KKT violation %.3g)\n", worst);
}

/* ---- folds never score a configuration they fitted ------------------------------------------ */

typedef struct audit { const int *fam; size_t n, folds, bad, covered; unsigned char *scored; } audit;

static void audit_fold(void *ud, int f, const size_t *train, size_t ntr, const size_t *test, size_t nte)
{
    audit *a = ud;
    a->folds++;
    for (size_t i = 0; i < ntr; i++)
        for (size_t j = 0; j < nte; j++)
            if (train[i] == test[j]) { a->bad++; printf("     fold %d: configuration %zu both fitted and scored\n", f, test[j]); }
    for (size_t i = 0; i < ntr; i++) if (a->fam[train[i]] == f) { a->bad++; printf("     fold %d: trains on its own family\n", f); }
    for (size_t j = 0; j < nte; j++) {
        if (a->fam[test[j]] != f) a->bad++;
        if (a->scored[test[j]]++) a->bad++;                  /* scored twice */
    }
    if (ntr + nte != a->n) a->bad++;
}

static void fold_cases(void)
{
    kv_error err;
    /* 12 configurations, 4 families interleaved; planted leak: each configuration has its own
     * one-hot feature (A = I) and a distinct target. A fit that saw a configuration reproduces
     * its target exactly (a leaking cross-validation would score Spearman 1, zero error); a
     * fold that did not see it has only zero columns for it, so its gain is 0 and its
     * prediction exactly 0. */
    enum { N = 12 };
    double A[N * N] = { 0 }, b[N], pred[N];
    int fam[N];
    for (size_t i = 0; i < N; i++) { A[i * N + i] = 1; b[i] = 1.0 + (double)((i * 7) % N); fam[i] = (int)(i % 4) * 10; }
    for (int method = CAL_NNLS; method <= CAL_OLS; method++) {
        unsigned char scored[N] = { 0 };
        audit a = { fam, N, 0, 0, 0, scored };
        check_true("loso runs", cal_loso_predict(method, A, b, fam, N, N, pred, audit_fold, &a, &err) == KV_OK);
        check_true("loso: one fold per family (4)", a.folds == 4);
        check_true("loso: train and scored sets disjoint, scored = held-out family only, every row scored once", a.bad == 0);
        size_t all = 0;
        for (size_t i = 0; i < N; i++) all += scored[i] == 1;
        check_true("loso: every configuration scored", all == N);
        double zero[N] = { 0 };
        check_vec(method == CAL_NNLS ? "planted leak (NNLS): held-out predictions are 0, not the seen targets"
                                     : "planted leak (OLS): held-out predictions are 0, not the seen targets",
                  pred, zero, N, 0);
        double rho = tr_spearman(pred, b, N);
        check_true("planted leak: held-out Spearman is not 1 (undefined: constant predictions)", !(rho > 0.999));
    }
    /* a family alone: no training rows -> NaN prediction, no fit on itself */
    int one[3] = { 5, 5, 5 };
    double A3[3] = { 1, 2, 3 }, b3[3] = { 1, 2, 3 }, p3[3];
    check_true("loso single family runs", cal_loso_predict(CAL_NNLS, A3, b3, one, 3, 1, p3, NULL, NULL, &err) == KV_OK);
    check_true("loso single family: predictions NaN", isnan(p3[0]) && isnan(p3[1]) && isnan(p3[2]));
    /* a learnable case: target = 2 x feature in every family -> exact held-out predictions */
    double A4[8], b4[8], p4[8];
    int f4[8];
    for (size_t i = 0; i < 8; i++) { A4[i] = 1.0 + (double)i; b4[i] = 2 * A4[i]; f4[i] = (int)(i / 2); }
    cal_loso_predict(CAL_NNLS, A4, b4, f4, 8, 1, p4, NULL, NULL, &err);
    check_vec("loso learnable: held-out predictions = 2 x feature", p4, b4, 8, 1e-12);
}

static int cli(void)
{
    char w[16];
    size_t n, L;
    while (scanf("%15s %zu %zu", w, &n, &L) == 3) {
        if (strcmp(w, "nnls") || !n || !L || n > 100000 / L) return 2;
        double *A = malloc(n * L * sizeof *A), *b = malloc(n * sizeof *b), *g = malloc(L * sizeof *g);
        if (!A || !b || !g) return 2;
        for (size_t i = 0; i < n * L; i++) if (scanf("%lf", &A[i]) != 1) return 2;
        for (size_t i = 0; i < n; i++) if (scanf("%lf", &b[i]) != 1) return 2;
        kv_error err;
        if (cal_fit(CAL_NNLS, A, b, n, L, g, &err) != KV_OK) { printf("error %s\n", err.msg); }
        else for (size_t j = 0; j < L; j++) printf("%.17g%c", g[j], j + 1 < L ? ' ' : '\n');
        fflush(stdout);
        free(A); free(b); free(g);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--cli")) return cli();
    nnls_cases();
    fold_cases();
    printf("%d/%d checks passed\n", checks - fails, checks);
    return fails ? 1 : 0;
}
