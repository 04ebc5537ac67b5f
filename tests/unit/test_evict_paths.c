/* replay/strategies/evict_util.c: the leverage kernels (cap, leverage, compactor) on every
 * vector path against the generic one and against plain loops.
 *
 * ev_gram_lower and ev_inv_sqnorms run a generic, an AVX2 and an AVX-512F path (attn_isa()):
 * each must give the generic path's bits (every element the same sum in the same order). The
 * generic path itself is held to the loops evict_util.h promises: A's lower triangle exactly
 * (the row-ordered sum of (w_i + eps) X_i[a] X_i[b]), and ||L^-1 X_i||^2 exactly as the
 * forward substitution in the order given there. N = 37 rows (two blocks of 16 and a short
 * one), D = 70 and 128 (tails of the 8- and 4-wide steps).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "strategies/evict_util.h"

#define RNG_SEED 0xe7
#include "rng_testhelp.h"

static int fails = 0, checks = 0;

static void check(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

static double urand(void) { return 2 * rng_unif() - 1; }           /* uniform in (-1, 1) */

static void one_case(size_t D)
{
    enum { N = 37 };
    const double eps = 0.125;
    double *X = malloc(N * D * sizeof *X), *w = malloc(N * sizeof *w), *A0 = malloc(D * D * sizeof *A0);
    double *A = malloc(D * D * sizeof *A), *L = calloc(D * D, sizeof *L), *yb = malloc(D * EV_LEV_JB * sizeof *yb);
    double out0[N], out[N];
    if (!X || !w || !A0 || !A || !L || !yb) { printf("FAIL setup\n"); exit(1); }
    for (size_t i = 0; i < N * D; i++) X[i] = urand();
    for (size_t i = 0; i < N; i++) w[i] = 0.5 + 0.5 * urand();
    for (size_t a = 0; a < D; a++) {           /* a well-conditioned lower triangle */
        for (size_t m = 0; m < a; m++) L[a * D + m] = 0.1 * urand();
        L[a * D + a] = 1.5 + urand();
    }
    int prev = attn_set_isa_limit(ATTN_ISA_GENERIC), gram = 1, inv = 1, gram_ref = 1, inv_ref = 1;
    ev_gram_lower(X, D, N, w, eps, A0);
    ev_inv_sqnorms(X, D, N, L, yb, out0);
    for (int isa = ATTN_ISA_AVX2; isa <= ATTN_ISA_AVX512; isa++) {
        attn_set_isa_limit(isa);
        ev_gram_lower(X, D, N, w, eps, A);
        for (size_t a = 0; a < D; a++) gram &= !memcmp(A + a * D, A0 + a * D, (a + 1) * sizeof *A);
        ev_inv_sqnorms(X, D, N, L, yb, out);
        inv &= !memcmp(out, out0, sizeof out);
    }
    attn_set_isa_limit(prev);
    for (size_t a = 0; a < D; a++)             /* the promised loops, exactly */
        for (size_t b = 0; b <= a; b++) {
            double s = 0;
            for (size_t i = 0; i < N; i++) s += ((w[i] + eps) * X[i * D + a]) * X[i * D + b];
            gram_ref &= s == A0[a * D + b];
        }
    double *y = malloc(D * sizeof *y);
    for (size_t i = 0; i < N && y; i++) {
        double sq = 0;
        for (size_t a = 0; a < D; a++) {
            double t = X[i * D + a];
            for (size_t m = 0; m < a; m++) t -= L[a * D + m] * y[m];
            y[a] = t / L[a * D + a];
            sq += y[a] * y[a];
        }
        inv_ref &= sq == out0[i];
    }
    char what[128];
    snprintf(what, sizeof what, "ev_gram_lower D=%zu: every path the generic bits", D);
    check(what, gram);
    snprintf(what, sizeof what, "ev_gram_lower D=%zu: the generic path is the row-ordered sum, exactly", D);
    check(what, gram_ref);
    snprintf(what, sizeof what, "ev_inv_sqnorms D=%zu: every path the generic bits", D);
    check(what, inv);
    snprintf(what, sizeof what, "ev_inv_sqnorms D=%zu: the generic path is the forward substitution, exactly", D);
    check(what, inv_ref && y);
    free(X); free(w); free(A0); free(A); free(L); free(yb); free(y);
}

int main(void)
{
    one_case(70);
    one_case(128);
    printf("test_evict_paths: paths compared up to %s; %d checks, %d failures\n",
           attn_isa() >= ATTN_ISA_AVX512 ? "AVX-512F" : attn_isa() >= ATTN_ISA_AVX2 ? "AVX2" : "generic only",
           checks, fails);
    return fails != 0;
}
