/* replay/strategies/expected_attention.c: its vector paths against its scalar one.
 *
 * ea_keys (the key terms mu' . k and k^T S' k of a block of keys) and ea_cov_rows (the query
 * covariance sums) run a generic, an AVX2 and an AVX-512F path, chosen by attn_isa(); each
 * path must give the bits of the generic one (every value the same double sum in the same
 * order), which tests/py/test_golden_presses.py holds to the reference implementation. Each
 * path the CPU has is run here under attn_set_isa_limit, for D = 128 and D = 70 (tails of
 * the 8-, 4- and 2-wide loops), with and without the covariance term. The terms are also
 * checked against a plain double evaluation (within 1e-12 relative: the same exact products
 * summed in another order).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "strategies/expected_attention.h"

#define RNG_SEED 0xea
#include "rng_testhelp.h"

static int fails = 0, checks = 0;

static void check(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

static double urand(void) { return 2 * rng_unif() - 1; }           /* uniform in (-1, 1) */

static void case_keys(size_t D, int cov)
{
    size_t KB = ea_keys_block();
    double *kt = malloc(D * KB * sizeof *kt), *mu2 = malloc(D * sizeof *mu2), *S2 = malloc(D * D * sizeof *S2);
    double *kd = malloc(D * sizeof *kd), a0[64], b0[64], a[64], b[64];
    if (!kt || !mu2 || !S2 || !kd || KB > 64) { printf("FAIL setup\n"); exit(1); }
    for (size_t i = 0; i < D * KB; i++) kt[i] = (double)(float)urand();      /* f32 keys, widened */
    for (size_t d = 0; d < D; d++) mu2[d] = urand();
    for (size_t i = 0; i < D * D; i++) S2[i] = urand();
    int prev = attn_set_isa_limit(ATTN_ISA_GENERIC), same = 1, close = 1;
    memset(b0, 0, sizeof b0);
    ea_keys(kt, D, mu2, cov ? S2 : NULL, kd, a0, b0);
    for (int isa = ATTN_ISA_AVX2; isa <= ATTN_ISA_AVX512; isa++) {
        attn_set_isa_limit(isa);
        memset(b, 0, sizeof b);
        ea_keys(kt, D, mu2, cov ? S2 : NULL, kd, a, b);
        same &= !memcmp(a, a0, KB * sizeof *a) && (!cov || !memcmp(b, b0, KB * sizeof *b));
    }
    attn_set_isa_limit(prev);
    for (size_t i = 0; i < KB; i++) {          /* the plain evaluation */
        double ra = 0, rb = 0, ma = 0, mb = 0;
        for (size_t d = 0; d < D; d++) { ra += mu2[d] * kt[d * KB + i]; ma += fabs(mu2[d] * kt[d * KB + i]); }
        for (size_t d = 0; d < D && cov; d++)
            for (size_t e = 0; e < D; e++) {
                double t = kt[d * KB + i] * S2[d * D + e] * kt[e * KB + i];
                rb += t; mb += fabs(t);
            }
        close &= fabs(a0[i] - ra) <= 1e-12 * ma && (!cov || fabs(b0[i] - rb) <= 1e-12 * mb);
    }
    char what[128];
    snprintf(what, sizeof what, "ea_keys D=%zu cov=%d: every path the generic bits", D, cov);
    check(what, same);
    snprintf(what, sizeof what, "ea_keys D=%zu cov=%d: within 1e-12 of the plain sums", D, cov);
    check(what, close);
    free(kt); free(mu2); free(S2); free(kd);
}

static void case_cov(size_t D)
{
    enum { NR = 4 };
    double *x = malloc(NR * D * sizeof *x), *S0 = malloc(D * D * sizeof *S0), *S = malloc(D * D * sizeof *S);
    if (!x || !S0 || !S) { printf("FAIL setup\n"); exit(1); }
    for (size_t i = 0; i < NR * D; i++) x[i] = urand();
    for (size_t i = 0; i < D * D; i++) S0[i] = urand();          /* a running sum already there */
    double *ref = malloc(D * D * sizeof *ref);
    memcpy(ref, S0, D * D * sizeof *ref);
    int prev = attn_set_isa_limit(ATTN_ISA_GENERIC), same = 1, exact = 1;
    ea_cov_rows(ref, x, NR, D);
    for (int isa = ATTN_ISA_AVX2; isa <= ATTN_ISA_AVX512; isa++) {
        attn_set_isa_limit(isa);
        memcpy(S, S0, D * D * sizeof *S);
        ea_cov_rows(S, x, NR, D);
        for (size_t d = 0; d < D; d++)
            for (size_t e = d; e < D; e++) same &= !memcmp(&S[d * D + e], &ref[d * D + e], sizeof *S);
    }
    attn_set_isa_limit(prev);
    for (size_t d = 0; d < D; d++)              /* the generic path against the loop it promises */
        for (size_t e = d; e < D; e++) {
            double s = S0[d * D + e];
            for (size_t r = 0; r < NR; r++) s += x[r * D + d] * x[r * D + e];
            exact &= s == ref[d * D + e];
        }
    char what[128];
    snprintf(what, sizeof what, "ea_cov_rows D=%zu: every path the generic bits on and above the diagonal", D);
    check(what, same);
    snprintf(what, sizeof what, "ea_cov_rows D=%zu: the generic path is the row-ordered sum, exactly", D);
    check(what, exact);
    free(x); free(S0); free(S); free(ref);
}

int main(void)
{
    static const size_t Ds[] = { 128, 70 };
    for (size_t i = 0; i < 2; i++) {
        case_keys(Ds[i], 0);
        case_keys(Ds[i], 1);
        case_cov(Ds[i]);
    }
    printf("test_expected_attention: paths compared up to %s; %d checks, %d failures\n",
           attn_isa() >= ATTN_ISA_AVX512 ? "AVX-512F" : attn_isa() >= ATTN_ISA_AVX2 ? "AVX2" : "generic only",
           checks, fails);
    return fails != 0;
}
