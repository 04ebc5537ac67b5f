/* analysis/stats.c against hand-computed cases.
 *
 *   test_stats          run the hand-computed cases (exit 0 = all pass)
 *   test_stats --cli    read commands from stdin, print results with %.17g, one line each
 *                       (used by tests/py/test_stats.py to compare with scipy):
 *       describe x...                   -> n mean sd min max t_lo t_hi
 *       boot SEED B x...                -> lo hi
 *       paired N x1..xN y1..yN          -> mean_diff t_defined t p_t w_plus w_minus exact z p_w dz_defined d_z r_rb n_nonzero
 *       holm p...                       -> adjusted p...
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stats.h"

static int fails = 0, checks = 0;

static void check_close(const char *what, double got, double want, double tol)
{
    checks++;
    double err = fabs(got - want);
    if (!(err <= tol + 1e-12 * fabs(want))) {
        fails++;
        printf("FAIL %s: got %.17g want %.17g (|err| %.3g > tol %.3g)\n", what, got, want, err, tol);
    }
}

static void check_true(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

static int hand_cases(void)
{
    st_desc d;
    /* mean 5, sum of squares about the mean 32, sd = sqrt(32/7) */
    double x1[] = {2, 4, 4, 4, 5, 5, 7, 9};
    check_true("describe ok", stats_describe(x1, 8, 0.95, &d) == ST_OK);
    check_close("mean", d.mean, 5, 1e-15);
    check_close("sd", d.sd, sqrt(32.0 / 7), 1e-14);
    check_close("min", d.min, 2, 0);
    check_close("max", d.max, 9, 0);

    /* df = 1: the t distribution is Cauchy, t_{0.975,1} = tan(0.475 pi) */
    double x2[] = {1, 3};
    check_true("describe2 ok", stats_describe(x2, 2, 0.95, &d) == ST_OK);
    double q1 = tan(0.475 * M_PI);
    check_close("t-interval lo (df 1)", d.t_lo, 2 - q1 * sqrt(2.0) / sqrt(2.0), 1e-9);
    check_close("t-interval hi (df 1)", d.t_hi, 2 + q1, 1e-9);

    /* n = 1: no interval, sd 0 */
    double x3[] = {4.5};
    check_true("describe1 ok", stats_describe(x3, 1, 0.95, &d) == ST_OK && !d.has_ci && d.sd == 0);
    check_true("describe0 refused", stats_describe(x3, 0, 0.95, &d) == ST_ERR_INVALID);
    double bad[] = {1, NAN};
    check_true("NaN refused", stats_describe(bad, 2, 0.95, &d) == ST_ERR_INVALID);

    /* paired t with df = 1: d = {1, 3}, t = 2 / (sqrt2/sqrt2) = 2, p = 1 - 2 atan(2)/pi */
    st_paired pr;
    double a[] = {1, 3}, z2[] = {0, 0};
    check_true("paired ok", stats_paired(a, z2, 2, &pr) == ST_OK);
    check_close("paired t", pr.t, 2, 1e-14);
    check_close("paired p (Cauchy)", pr.p_t, 1 - 2 * atan(2.0) / M_PI, 1e-10);
    check_close("d_z", pr.d_z, 2 / sqrt(2.0), 1e-14);

    /* d = 1,2,3,4: d_z = 2.5 / sd(1..4) = 2.5 / sqrt(5/3) */
    double b[] = {1, 2, 3, 4}, z4[] = {0, 0, 0, 0};
    check_true("paired4 ok", stats_paired(b, z4, 4, &pr) == ST_OK);
    check_close("d_z 4", pr.d_z, 2.5 / sqrt(5.0 / 3), 1e-14);
    /* Wilcoxon exact, all 4 positive: W+ = 10, P = 2 / 16 */
    check_true("exact used", pr.exact == 1 && pr.ties == 0);
    check_close("wilcoxon W+", pr.w_plus, 10, 0);
    check_close("wilcoxon p n=4", pr.p_w, 0.125, 1e-15);
    check_close("r_rb all positive", pr.r_rb, 1, 0);

    /* d = 1,-2,3,4,5: W+ = 13, W- = 2; P(W+ <= 2) = #{ {}, {1}, {2} } / 32 = 3/32 */
    double c[] = {1, -2, 3, 4, 5}, z5[] = {0, 0, 0, 0, 0};
    check_true("paired5 ok", stats_paired(c, z5, 5, &pr) == ST_OK);
    check_close("wilcoxon W+ 5", pr.w_plus, 13, 0);
    check_close("wilcoxon W- 5", pr.w_minus, 2, 0);
    check_close("wilcoxon p n=5", pr.p_w, 6.0 / 32, 1e-15);
    check_close("r_rb", pr.r_rb, 11.0 / 15, 1e-15);

    /* zeros dropped (Wilcoxon convention): d = 0,0,1,2 -> n_r = 2, W+ = 3, p = 2 * 1/4 */
    double e[] = {0, 0, 1, 2};
    check_true("paired zeros ok", stats_paired(e, z4, 4, &pr) == ST_OK);
    check_true("zeros dropped", pr.n_nonzero == 2 && pr.exact == 1);
    check_close("wilcoxon p zeros", pr.p_w, 0.5, 1e-15);

    /* ties -> normal approximation: d = 1,1,-1,2: ranks 2,2,2,4; W+ = 8, mean 5,
     * var = 4*5*9/24 - (27 - 3)/48 = 7, z = 3/sqrt(7), p = erfc(z / sqrt 2) */
    double f[] = {1, 1, -1, 2};
    check_true("paired ties ok", stats_paired(f, z4, 4, &pr) == ST_OK);
    check_true("ties -> approx", pr.exact == 0 && pr.ties == 1);
    check_close("wilcoxon W+ ties", pr.w_plus, 8, 0);
    check_close("wilcoxon z ties", pr.z, 3 / sqrt(7.0), 1e-14);
    check_close("wilcoxon p ties", pr.p_w, erfc(3 / sqrt(7.0) / sqrt(2.0)), 1e-12);

    /* constant differences: t undefined, p_t = 0 (non-zero) or 1 (zero) */
    double g[] = {1, 1, 1};
    check_true("paired const ok", stats_paired(g, z4, 3, &pr) == ST_OK);
    check_true("constant diff: t undefined, p 0", !pr.t_defined && pr.p_t == 0 && !pr.dz_defined);
    check_true("paired equal ok", stats_paired(z4, z4, 4, &pr) == ST_OK);
    check_true("equal: p_t 1, p_w 1, r 0", pr.p_t == 1 && pr.p_w == 1 && pr.r_rb == 0);
    check_true("paired n=1 refused", stats_paired(g, z4, 1, &pr) == ST_ERR_INVALID);

    /* Holm: p = .01 .04 .03 .005 -> sorted .005*4=.02, .01*3=.03, .03*2=.06, .04*1 -> .06 */
    double p[] = {0.01, 0.04, 0.03, 0.005}, adj[4];
    check_true("holm ok", stats_holm(p, 4, adj) == ST_OK);
    double want[] = {0.03, 0.06, 0.06, 0.02};
    for (int i = 0; i < 4; i++) check_close("holm", adj[i], want[i], 1e-15);
    double p2[] = {0.5, 0.9}, adj2[2];
    check_true("holm cap ok", stats_holm(p2, 2, adj2) == ST_OK);
    check_close("holm cap 1", adj2[0], 1, 0);
    check_close("holm monotone", adj2[1], 1, 0);
    double p3[] = {1.5};
    check_true("holm refuses p > 1", stats_holm(p3, 1, adj2) == ST_ERR_INVALID);

    /* bootstrap: constant sample -> degenerate interval; same seed -> same interval */
    double k[] = {3, 3, 3};
    double lo, hi, lo2, hi2;
    check_true("boot const", stats_bootstrap_mean(k, 3, 200, 7, 0.95, &lo, &hi) == ST_OK && lo == 3 && hi == 3);
    check_true("boot 1", stats_bootstrap_mean(x1, 8, 500, 7, 0.95, &lo, &hi) == ST_OK);
    check_true("boot 2", stats_bootstrap_mean(x1, 8, 500, 7, 0.95, &lo2, &hi2) == ST_OK);
    check_true("boot deterministic", lo == lo2 && hi == hi2);
    check_true("boot brackets the mean", lo < 5 && hi > 5 && lo >= 2 && hi <= 9);

    /* exact distribution total: for n = 10 the centre has p = 1 */
    double pc;
    check_true("exact centre", stats_wilcoxon_exact_p(10, 27.5, &pc) == ST_OK);
    check_close("exact centre p", pc, 1, 0);

    printf("%d checks, %d failed\n", checks, fails);
    return fails ? 1 : 0;
}

static int parse_nums(char *s, double *v, int cap)
{
    int n = 0;
    char *tok, *save = NULL;
    for (tok = strtok_r(s, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save)) {
        if (n == cap) return -1;
        char *end;
        v[n] = strtod(tok, &end);
        if (*end) return -1;
        n++;
    }
    return n;
}

static int cli(void)
{
    static char line[1 << 16];
    static double v[4096];
    stats_init();
    while (fgets(line, sizeof line, stdin)) {
        char cmd[32];
        int off = 0;
        if (sscanf(line, "%31s%n", cmd, &off) != 1) continue;
        int n = parse_nums(line + off, v, 4096);
        if (n < 0) { fprintf(stderr, "test_stats: bad numbers\n"); return 2; }
        if (!strcmp(cmd, "describe")) {
            st_desc d;
            if (stats_describe(v, (size_t)n, 0.95, &d) != ST_OK) { puts("error"); continue; }
            printf("%zu %.17g %.17g %.17g %.17g %.17g %.17g\n", d.n, d.mean, d.sd, d.min, d.max, d.t_lo, d.t_hi);
        } else if (!strcmp(cmd, "boot")) {
            double lo, hi;
            if (n < 3 || stats_bootstrap_mean(v + 2, (size_t)n - 2, (size_t)v[1], (uint64_t)v[0], 0.95, &lo, &hi) != ST_OK) {
                puts("error"); continue;
            }
            printf("%.17g %.17g\n", lo, hi);
        } else if (!strcmp(cmd, "paired")) {
            st_paired p;
            int m = (int)v[0];
            if (n != 1 + 2 * m || stats_paired(v + 1, v + 1 + m, (size_t)m, &p) != ST_OK) { puts("error"); continue; }
            printf("%.17g %d %.17g %.17g %.17g %.17g %d %.17g %.17g %d %.17g %.17g %zu\n", p.mean_diff,
                   p.t_defined, p.t, p.p_t, p.w_plus, p.w_minus, p.exact, p.z, p.p_w, p.dz_defined,
                   p.d_z, p.r_rb, p.n_nonzero);
        } else if (!strcmp(cmd, "holm")) {
            double adj[4096];
            if (stats_holm(v, (size_t)n, adj) != ST_OK) { puts("error"); continue; }
            for (int i = 0; i < n; i++) printf(i ? " %.17g" : "%.17g", adj[i]);
            putchar('\n');
        } else {
            fprintf(stderr, "test_stats: unknown command %s\n", cmd);
            return 2;
        }
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv)
{
    stats_init();
    if (argc > 1 && !strcmp(argv[1], "--cli")) return cli();
    return hand_cases();
}
