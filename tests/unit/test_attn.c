/* replay/attn.c: the fast kernels against the scalar double references, and hand cases.
 *
 * T tokens, D head_dim, n entries. Tolerances (fp32 fast kernel vs double reference):
 *   logits   |x - ref| <= (D+1) * 2^-24 * scale * sum_d |q_d k_d| + 4 * 2^-24 * |ref| + 1e-7
 *            (the standard bound gamma_D of a length-D float dot product, one more rounding
 *            for the scale, and a few ulp for tanhf and the final rounding of the cap),
 *            and the fast kernel's logits equal attn_logit() bit for bit;
 *   lse      |x - ref| <= 2e-6 * (1 + |ref|) (lse is 1-Lipschitz in the logits, which are
 *            O(10) here; plus exp/log and one float rounding);
 *   o        |x - ref| <= 4e-6 * vmax + 2e-5 * |ref| per element (float accumulation of
 *            up to 300 terms p_j v_j, sum p = 1), and NMSE <= 1e-10.
 * Each comparison reports its worst element.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#define RNG_SEED 0x9e3779b97f4a7c15ull
#include "rng_testhelp.h"

static int fails = 0, checks = 0;

static float *randn(size_t n, float sd)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = sd * rng_normal();
    return x;
}

static void check_true(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

static void check_close(const char *what, double got, double want, double tol)
{
    checks++;
    int ok = (got == want) || fabs(got - want) <= tol;
    if (!ok) {
        fails++;
        printf("FAIL %s: got %.9g want %.9g (|err| %.3g > tol %.3g)\n", what, got, want,
               fabs(got - want), tol);
    }
}

/* worst-element comparison of o [rows][D] */
typedef struct cmp_acc { double worst_ratio, err, got, want, se, sr; size_t at; } cmp_acc;
static void cmp_o(cmp_acc *c, const float *x, const float *ref, size_t n, double atol, double rtol)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)x[i] - ref[i]);
        double r = e / (atol + rtol * fabs(ref[i]));
        if (!(x[i] == x[i])) r = INFINITY;
        c->se += e * e; c->sr += (double)ref[i] * ref[i];
        if (r > c->worst_ratio || i == 0) { c->worst_ratio = r; c->err = e; c->got = x[i]; c->want = ref[i]; c->at = i; }
    }
}

static double max_abs(const float *x, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) if (fabs(x[i]) > m) m = fabs(x[i]);
    return m;
}

static double worst_full_ratio = 0, worst_nmse = 0;

/* fast vs ref over all rows of one head; also sub-range calls must be bit-identical */
static void case_full(size_t T, size_t D, const attn_params *p, float qsd, const char *tag)
{
    float *q = randn(T * D, qsd), *k = randn(T * D, 1), *v = randn(T * D, 1);
    float *lse = malloc(T * sizeof *lse), *lser = malloc(T * sizeof *lser), *lse2 = malloc(T * sizeof *lse2);
    float *o = malloc(T * D * sizeof *o), *orf = malloc(T * D * sizeof *orf), *o2 = malloc(T * D * sizeof *o2);
    float *lg = malloc(T * T * sizeof *lg), *lgr = malloc(T * T * sizeof *lgr), *lg2 = malloc(T * T * sizeof *lg2);
    char what[256];

    attn_full_rows(q, k, v, T, D, 0, T, p, lse, o, lg);
    attn_full_rows_ref(q, k, v, T, D, 0, T, p, lser, orf, lgr);

    /* logits: bound per element; masked ones exactly -inf in both; == attn_logit bitwise */
    double worst = 0; size_t wt = 0, wj = 0; int bitwise = 1, mask_ok = 1;
    for (size_t t = 0; t < T; t++) {
        size_t lo = attn_lo(t, p->window);
        for (size_t j = 0; j < T; j++) {
            float x = lg[t * T + j], r = lgr[t * T + j];
            if (j < lo || j > t) { if (!(isinf(x) && x < 0 && isinf(r) && r < 0)) mask_ok = 0; continue; }
            if (x != attn_logit(q + t * D, k + j * D, D, p)) bitwise = 0;
            double b = 0;
            for (size_t d = 0; d < D; d++) b += fabs((double)q[t * D + d] * k[j * D + d]);
            double tol = (D + 1) * ldexp(1.0, -24) * p->scale * b + 4 * ldexp(1.0, -24) * fabs(r) + 1e-7;
            double ratio = fabs((double)x - r) / tol;
            if (!(ratio <= worst)) { worst = ratio; wt = t; wj = j; }
        }
    }
    snprintf(what, sizeof what, "%s T=%zu D=%zu logits within gamma_D bound (worst ratio %.3g at t=%zu j=%zu)",
             tag, T, D, worst, wt, wj);
    check_true(what, worst <= 1);
    snprintf(what, sizeof what, "%s T=%zu D=%zu logits == attn_logit bitwise", tag, T, D);
    check_true(what, bitwise);
    snprintf(what, sizeof what, "%s T=%zu D=%zu masked logits are -inf", tag, T, D);
    check_true(what, mask_ok);

    for (size_t t = 0; t < T; t++) {
        snprintf(what, sizeof what, "%s T=%zu D=%zu lse[t=%zu]", tag, T, D, t);
        check_close(what, lse[t], lser[t], 2e-6 * (1 + fabs(lser[t])));
    }
    double vmax = max_abs(v, T * D);
    cmp_acc c;
    cmp_o(&c, o, orf, T * D, 4e-6 * vmax, 2e-5);
    double nmse = c.sr > 0 ? c.se / c.sr : c.se;
    if (c.worst_ratio > worst_full_ratio) worst_full_ratio = c.worst_ratio;
    if (nmse > worst_nmse) worst_nmse = nmse;
    snprintf(what, sizeof what, "%s T=%zu D=%zu o: worst t=%zu d=%zu got %.9g want %.9g (ratio %.3g), NMSE %.3g",
             tag, T, D, c.at / D, c.at % D, c.got, c.want, c.worst_ratio, nmse);
    check_true(what, c.worst_ratio <= 1 && nmse <= 1e-10);

    /* rows computed in two pieces (and without logits) are bit-identical to one call */
    size_t cut = T / 3;
    attn_full_rows(q, k, v, T, D, 0, cut, p, lse2, o2, NULL);
    attn_full_rows(q, k, v, T, D, cut, T, p, lse2 + cut, o2 + cut * D, lg2 + cut * T);
    snprintf(what, sizeof what, "%s T=%zu D=%zu split rows [0,%zu)+[%zu,T) bit-identical", tag, T, D, cut, cut);
    check_true(what, !memcmp(lse, lse2, T * sizeof *lse) && !memcmp(o, o2, T * D * sizeof *o) &&
               !memcmp(lg + cut * T, lg2 + cut * T, (T - cut) * T * sizeof *lg));
    /* o == NULL: lse only, identical */
    attn_full_rows(q, k, v, T, D, 0, T, p, lse2, NULL, NULL);
    snprintf(what, sizeof what, "%s T=%zu D=%zu o=NULL gives the same lse", tag, T, D);
    check_true(what, !memcmp(lse, lse2, T * sizeof *lse));

    /* attn_entries over the visible keys of the last row (as an index list) agrees */
    size_t t = T - 1, lo = attn_lo(t, p->window), n = t + 1 - lo;
    size_t *idx = malloc(n * sizeof *idx);
    for (size_t e = 0; e < n; e++) idx[e] = lo + e;
    float le, oe[1024];
    attn_entries(q + t * D, k, v, idx, NULL, n, D, p, &le, oe, NULL);
    snprintf(what, sizeof what, "%s T=%zu D=%zu entries(last row) lse", tag, T, D);
    check_close(what, le, lser[t], 2e-6 * (1 + fabs(lser[t])));
    cmp_o(&c, oe, orf + t * D, D, 4e-6 * vmax, 2e-5);
    snprintf(what, sizeof what, "%s T=%zu D=%zu entries(last row) o: worst d=%zu got %.9g want %.9g",
             tag, T, D, c.at, c.got, c.want);
    check_true(what, c.worst_ratio <= 1);

    free(idx);
    free(q); free(k); free(v); free(lse); free(lser); free(lse2);
    free(o); free(orf); free(o2); free(lg); free(lgr); free(lg2);
}

/* GQA-like reuse: several query heads over one kv head (the same k, v arrays) */
static void case_gqa(void)
{
    size_t T = 64, D = 32, G = 4;
    attn_params p = {1.0f / sqrtf(32), 0, 0};
    float *q = randn(G * T * D, 2), *k = randn(T * D, 1), *v = randn(T * D, 1);
    float lse[64], lser[64], o[64 * 32], orf[64 * 32];
    for (size_t h = 0; h < G; h++) {
        attn_full_rows(q + h * T * D, k, v, T, D, 0, T, &p, lse, o, NULL);
        attn_full_rows_ref(q + h * T * D, k, v, T, D, 0, T, &p, lser, orf, NULL);
        cmp_acc c;
        cmp_o(&c, o, orf, T * D, 4e-6 * max_abs(v, T * D), 2e-5);
        char what[160];
        snprintf(what, sizeof what, "gqa head %zu of %zu: worst t=%zu d=%zu ratio %.3g", h, G, c.at / D, c.at % D, c.worst_ratio);
        check_true(what, c.worst_ratio <= 1);
    }
    free(q); free(k); free(v);
}

/* attn_full_rows_heads (G query heads over one kv head's transposed keys, the engine's full
 * pass) against one attn_full_rows call per head: lse, o and logits bit for bit, for G up to
 * 11 (more than the kernel's 8 heads per pass), rows cut at block edges, softcap and window. */
static void case_full_heads(void)
{
    size_t T = 150, D = 40;
    size_t Gs[] = {1, 3, 11};
    attn_params ps[] = { {1.0f / sqrtf(40), 0, 0}, {0.3f, 8.0f, 37} };
    for (size_t gi = 0; gi < 3; gi++)
        for (size_t pi = 0; pi < 2; pi++) {
            size_t G = Gs[gi], t0 = 5, t1 = 141, nr = t1 - t0, lhs = nr + 3;
            float *q = randn(G * T * D, 2), *k = randn(T * D, 1), *v = randn(T * D, 1);
            float *kt = malloc(attn_keys_t_floats(T, D) * sizeof *kt);
            float *l1 = malloc(G * lhs * sizeof *l1), *o1 = malloc(G * lhs * D * sizeof *o1), *g1 = malloc(G * lhs * T * sizeof *g1);
            float *l2 = malloc(nr * sizeof *l2), *o2 = malloc(nr * D * sizeof *o2), *g2 = malloc(nr * T * sizeof *g2);
            attn_transpose_keys(k, T, D, kt);
            attn_full_rows_heads(q, T * D, G, kt, v, T, D, t0, t1, &ps[pi], lhs, l1, o1, g1);
            int same = 1;
            for (size_t h = 0; h < G; h++) {
                attn_full_rows(q + h * T * D, k, v, T, D, t0, t1, &ps[pi], l2, o2, g2);
                same &= !memcmp(l1 + h * lhs, l2, nr * sizeof *l2) && !memcmp(o1 + h * lhs * D, o2, nr * D * sizeof *o2)
                        && !memcmp(g1 + h * lhs * T, g2, nr * T * sizeof *g2);
            }
            char what[120];
            snprintf(what, sizeof what, "full_rows_heads G=%zu %s: bit-identical to a call per head", G,
                     pi ? "cap+window" : "plain");
            check_true(what, same);
            free(q); free(k); free(v); free(kt); free(l1); free(o1); free(g1); free(l2); free(o2); free(g2);
        }
}

/* entries with idx, bias, n = 0 and n = 1, against the reference */
static void case_entries(void)
{
    size_t D = 80, R = 200;
    attn_params p = {0.2f, 10.0f, 0};
    float *kk = randn(R * D, 1), *vv = randn(R * D, 1), *q = randn(D, 2);
    size_t ns[] = {0, 1, 3, 63, 64, 65, 150};
    for (size_t a = 0; a < sizeof ns / sizeof *ns; a++) {
        size_t n = ns[a];
        size_t *idx = malloc((n + 1) * sizeof *idx);
        float *bias = malloc((n + 1) * sizeof *bias), *lg = malloc((n + 1) * sizeof *lg), *lgr = malloc((n + 1) * sizeof *lgr);
        for (size_t e = 0; e < n; e++) { idx[e] = rng_u64() % R; bias[e] = logf(1 + rng_u64() % 5); }
        for (int use_idx = 0; use_idx < 2; use_idx++)
            for (int use_bias = 0; use_bias < 2; use_bias++) {
                float l1, l2, o1[80], o2[80];
                memset(o1, 0x7f, sizeof o1);
                attn_entries(q, kk, vv, use_idx ? idx : NULL, use_bias ? bias : NULL, n, D, &p, &l1, o1, lg);
                attn_entries_ref(q, kk, vv, use_idx ? idx : NULL, use_bias ? bias : NULL, n, D, &p, &l2, o2, lgr);
                char what[160];
                snprintf(what, sizeof what, "entries n=%zu idx=%d bias=%d lse", n, use_idx, use_bias);
                if (n == 0) {
                    check_true(what, isinf(l1) && l1 < 0 && isinf(l2) && l2 < 0);
                    check_true("entries n=0: o = 0", max_abs(o1, D) == 0 && max_abs(o2, D) == 0);
                    continue;
                }
                check_close(what, l1, l2, 2e-6 * (1 + fabs(l2)));
                cmp_acc c;
                cmp_o(&c, o1, o2, D, 4e-6 * max_abs(vv, R * D), 2e-5);
                snprintf(what, sizeof what, "entries n=%zu idx=%d bias=%d o: worst d=%zu got %.9g want %.9g",
                         n, use_idx, use_bias, c.at, c.got, c.want);
                check_true(what, c.worst_ratio <= 1);
                double wl = 0;
                for (size_t e = 0; e < n; e++) {
                    size_t row = use_idx ? idx[e] : e;
                    float want = attn_logit(q, kk + row * D, D, &p) + (use_bias ? bias[e] : 0);
                    if (lg[e] != want) wl = 1;
                    if (fabs(lg[e] - lgr[e]) > 1e-5) wl = 1;
                }
                snprintf(what, sizeof what, "entries n=%zu idx=%d bias=%d logits = attn_logit + bias", n, use_idx, use_bias);
                check_true(what, wl == 0);
                if (n == 1 && use_idx) {
                    double md = 0;
                    for (size_t d = 0; d < D; d++) md = fmax(md, fabs(o1[d] - vv[idx[0] * D + d]));
                    check_true("single entry: o == its value row exactly", md == 0);
                }
            }
        free(idx); free(bias); free(lg); free(lgr);
    }
    free(kk); free(vv); free(q);
}

static void hand_cases(void)
{
    attn_params p = {1.0f, 0, 0};
    /* two keys, logits log 3 and 0: p = (3/4, 1/4); v = (1, 0) -> o = 0.75, lse = log 4 */
    float q[1] = {1}, k[2] = {logf(3), 0}, v[2] = {1, 0}, lse, o;
    attn_entries(q, k, v, NULL, NULL, 2, 1, &p, &lse, &o, NULL);
    check_close("two keys: o = 3/4", o, 0.75, 1e-7);
    check_close("two keys: lse = log 4", lse, log(4), 1e-6);
    attn_entries_ref(q, k, v, NULL, NULL, 2, 1, &p, &lse, &o, NULL);
    check_close("two keys ref: o = 3/4", o, 0.75, 1e-7);

    /* full rows on the same two tokens: row 0 sees only key 0 (o = v0), row 1 as above */
    float q2[2] = {1, 1}, lse2[2], o2[2], lg[4];
    attn_full_rows(q2, k, v, 2, 1, 0, 2, &p, lse2, o2, lg);
    check_close("full rows: row 0 o = v0", o2[0], 1, 0);
    check_close("full rows: row 0 lse = logit", lse2[0], logf(3), 0);
    check_close("full rows: row 1 o = 3/4", o2[1], 0.75, 1e-7);
    check_true("full rows: logit[0][1] = -inf", isinf(lg[1]) && lg[1] < 0);

    /* identical keys -> uniform attention -> o = mean of the values, lse = s + log n */
    size_t T = 7, D = 4;
    float qq[28], kk[28], vv[28], ls[7], oo[28];
    for (size_t i = 0; i < T * D; i++) { qq[i] = 0.5f; kk[i] = 1.0f; vv[i] = (float)(i % 5) - 2; }
    attn_full_rows(qq, kk, vv, T, D, 0, T, &p, ls, oo, NULL);
    double worst = 0;
    for (size_t t = 0; t < T; t++)
        for (size_t d = 0; d < D; d++) {
            double m = 0;
            for (size_t j = 0; j <= t; j++) m += vv[j * D + d];
            m /= (double)(t + 1);
            worst = fmax(worst, fabs(oo[t * D + d] - m));
        }
    check_close("uniform keys: o = mean of values (max err)", worst, 0, 1e-6);
    check_close("uniform keys: lse[6] = 2 + log 7", ls[6], 2 + log(7), 1e-6);

    /* a bias of log n on one entry == n copies of it (proportional attention identity) */
    float *kq = randn(3 * 16, 1), *vq = randn(3 * 16, 1), *qv = randn(16, 1);
    attn_params p2 = {0.25f, 0, 0};
    size_t idx_copies[5] = {0, 0, 0, 1, 2};
    float bias3[3] = {logf(3), 0, 0}, la, lb, oa[16], ob[16];
    attn_entries(qv, kq, vq, NULL, bias3, 3, 16, &p2, &la, oa, NULL);
    attn_entries(qv, kq, vq, idx_copies, NULL, 5, 16, &p2, &lb, ob, NULL);
    check_close("bias log 3 == 3 copies: lse", la, lb, 2e-6 * (1 + fabs(lb)));
    double md = 0;
    for (size_t d = 0; d < 16; d++) md = fmax(md, fabs(oa[d] - ob[d]));
    check_close("bias log 3 == 3 copies: o (max err)", md, 0, 1e-6);
    free(kq); free(vq); free(qv);

    /* every logit -inf through the bias: the fully masked row */
    float binf[3] = {-INFINITY, -INFINITY, -INFINITY}, om[16];
    attn_entries(qv = randn(16, 1), kq = randn(48, 1), vq = randn(48, 1), NULL, binf, 3, 16, &p2, &la, om, NULL);
    check_true("all logits -inf: lse = -inf, o = 0", isinf(la) && la < 0 && max_abs(om, 16) == 0);
    free(kq); free(vq); free(qv);

    /* window 1: each query sees only itself: o = v_t exactly, lse = its logit */
    attn_params pw = {0.3f, 0, 1};
    float *q3 = randn(50 * 8, 1), *k3 = randn(50 * 8, 1), *v3 = randn(50 * 8, 1), l3[50], o3[400];
    attn_full_rows(q3, k3, v3, 50, 8, 0, 50, &pw, l3, o3, NULL);
    int ok = !memcmp(o3, v3, sizeof o3);
    for (size_t t = 0; t < 50; t++) if (l3[t] != attn_logit(q3 + t * 8, k3 + t * 8, 8, &pw)) ok = 0;
    check_true("window 1: o = v_t and lse = logit_tt exactly", ok);
    free(q3); free(k3); free(v3);

    /* softcap bounds the logits; huge logits stay finite (max subtracted) */
    float qb[2] = {1000, 0}, kb[4] = {1000, 0, -1000, 0}, vb[4] = {1, 2, 3, 4}, lb2, ob2[2], lgb[2];
    attn_params pc = {1.0f, 30.0f, 0};
    attn_entries(qb, kb, vb, NULL, NULL, 2, 2, &pc, &lb2, ob2, lgb);
    check_close("softcap: logit -> +c", lgb[0], 30, 1e-5);
    check_close("softcap: logit -> -c", lgb[1], -30, 1e-5);
    attn_params pn = {1.0f, 0, 0};
    attn_entries(qb, kb, vb, NULL, NULL, 2, 2, &pn, &lb2, ob2, lgb);
    check_true("1e6 logits: finite lse, o = v0", isfinite(lb2) && ob2[0] == 1 && ob2[1] == 2);

    /* NaN in a query propagates (never silently dropped) */
    float qn[2] = {NAN, 0}, ln, on[2];
    attn_entries(qn, kb, vb, NULL, NULL, 2, 2, &pn, &ln, on, NULL);
    check_true("NaN query: lse and o NaN", isnan(ln) && isnan(on[0]));
    attn_full_rows(qn, kb, vb, 1, 2, 0, 1, &pn, &ln, on, NULL);
    check_true("NaN query (full rows): lse NaN", isnan(ln));

    /* NaN in one key of a long row (the vectorised max/NaN scan): rows that see it get NaN,
     * rows before it stay finite */
    {
        enum { TN = 100, DN = 16, BAD = 37 };
        static float qq[TN * DN], kk[TN * DN], vv[TN * DN], lz[TN], oz[TN * DN];
        for (size_t i = 0; i < TN * DN; i++) { qq[i] = (float)((i * 7) % 11) / 11.0f; kk[i] = (float)((i * 5) % 13) / 13.0f; vv[i] = (float)(i % 3); }
        kk[BAD * DN + 3] = NAN;
        attn_full_rows(qq, kk, vv, TN, DN, 0, TN, &pn, lz, oz, NULL);
        int ok = 1;
        for (size_t t = 0; t < TN; t++) ok &= t < BAD ? isfinite(lz[t]) : isnan(lz[t]);
        check_true("NaN key at 37 of 100: rows >= 37 NaN, rows < 37 finite", ok);
    }
}

/* attn_exp_shift (the engine's prefill probabilities) against double exp of the exact
 * difference: relative error within 8 ulp of float plus the rounding of x = s - m in float
 * (|x| 2^-24), over [-87, 0] (every length 0..37 exercises the tails); exactly 0 at
 * -INFINITY and below -87, exactly 1 at s = m. */
static void case_exp_shift(void)
{
    float s[37], pe[37];
    double worst = 0;
    int zero_ok = 1, one_ok = 1;
    for (size_t n = 0; n <= 37; n++)
        for (int rep = 0; rep < 20; rep++) {
            float m = (float)(rng_unif() * 10.0 - 5.0);
            for (size_t e = 0; e < n; e++) s[e] = m - (float)(rng_unif() * 87.0);
            if (n > 2) { s[0] = -INFINITY; s[1] = m - 90.0f; s[2] = m; }
            attn_exp_shift(s, n, m, pe);
            for (size_t e = 0; e < n; e++) {
                if (n > 2 && e < 2) { zero_ok &= pe[e] == 0.0f; continue; }
                if (n > 2 && e == 2) { one_ok &= pe[e] == 1.0f; continue; }
                double want = exp((double)s[e] - (double)m);
                if (want < 1e-37) continue;         /* subnormal range: 0 is allowed there */
                double x = (double)s[e] - (double)m;
                double r = fabs(pe[e] - want) / want / (8 * 5.96e-8 + fabs(x) * 5.96e-8);
                if (r > worst) worst = r;
            }
        }
    printf("attn_exp_shift: worst relative error / bound %.3g\n", worst);
    check_true("attn_exp_shift within 8 ulp + argument rounding of exp", worst <= 1.0);
    check_true("attn_exp_shift: -inf and < -87 give 0", zero_ok);
    check_true("attn_exp_shift: exp(0) = 1", one_ok);
}

/* attn_exp_sub_f64 (the engine's shared probabilities in double) against libm's exp of the
 * same double argument: within 2 ulp (2^-52 relative) for every argument in [-708, 709]
 * (uniform over it, and over the softmax's usual [-40, 0]); exactly 0 at -INFINITY and below
 * -708, +INFINITY above 709, NaN for NaN, exp(0) = 1; the returned sum is the four partial
 * sums over e mod 4, added as (l0 + l1) + (l2 + l3); every length 0..41 exercises the
 * tails. attn_div_sumsq_f64: p / z exactly as a division and the sum of squares in the same
 * lane order. */
static void case_exp_f64(void)
{
    float s[41];
    double out[41], worst = 0;
    int special_ok = 1, sum_ok = 1, div_ok = 1;
    for (size_t n = 0; n <= 41; n++)
        for (int rep = 0; rep < 400; rep++) {
            double c = (float)(rng_unif() * 8.0 - 4.0), span = rep % 2 ? 40.0 : 1417.0, top = rep % 2 ? 0.0 : 709.0;
            for (size_t e = 0; e < n; e++) s[e] = (float)(c + top - rng_unif() * span);
            if (n > 5 && rep == 0) { s[0] = -INFINITY; s[1] = (float)(c - 720.0); s[2] = (float)c;
                                     s[3] = NAN; s[4] = (float)(c + 720.0); s[5] = INFINITY; }
            double l4[4] = {0, 0, 0, 0};
            double sum = attn_exp_sub_f64(s, n, c, out);
            for (size_t e = 0; e < n; e++) {
                double x = (double)s[e] - c, want = exp(x);
                l4[e % 4] += out[e];
                if (n > 5 && rep == 0 && e < 6) {
                    static const double expect[6] = {0, 0, 1, NAN, INFINITY, INFINITY};
                    special_ok &= e == 3 ? isnan(out[e]) : out[e] == expect[e];
                    continue;
                }
                if (x < -708.0) { special_ok &= out[e] == 0.0; continue; }
                if (x > 709.0) { special_ok &= isinf(out[e]) && out[e] > 0; continue; }
                double r = fabs(out[e] - want) / want / (2 * 0x1p-52);
                if (r > worst) worst = r;
            }
            if (!(n > 5 && rep == 0)) {
                double want_sum = (l4[0] + l4[1]) + (l4[2] + l4[3]);
                sum_ok &= sum == want_sum || (isinf(sum) && isinf(want_sum));
                if (rep % 2 && n) {                /* the softmax range: normalise it */
                    double p[41], s2[4] = {0, 0, 0, 0};
                    memcpy(p, out, n * sizeof *p);
                    double got = attn_div_sumsq_f64(p, n, sum);
                    for (size_t e = 0; e < n; e++) {
                        double q = out[e] / sum;
                        div_ok &= p[e] == q;
                        s2[e % 4] += q * q;
                    }
                    div_ok &= got == (s2[0] + s2[1]) + (s2[2] + s2[3]);
                }
            }
        }
    printf("attn_exp_sub_f64: worst relative error / 2 ulp %.3g\n", worst);
    check_true("attn_exp_sub_f64 within 2 ulp of exp over [-708, 709]", worst <= 1.0);
    check_true("attn_exp_sub_f64: -inf / < -708 give 0, > 709 / +inf give inf, NaN NaN, exp(0) = 1", special_ok);
    check_true("attn_exp_sub_f64: the sum in lanes e mod 4, (l0 + l1) + (l2 + l3)", sum_ok);
    check_true("attn_div_sumsq_f64: p / z and the sum of squares in the same lanes", div_ok);
}

/* attn_exp_sub_f64d (double input) against libm on doubles that are not floats (within 2 ulp
 * over [-708, 709], the special values), its sum against the lanes e mod 4 added in order, in
 * place against out of place, and bit for bit against attn_exp_sub_f64 on float inputs (the
 * same exp: a lane that widened its input differently would differ). */
static void case_exp_f64d(void)
{
    float s[41];
    double x[41], out[41], io[41], ref[41], worst = 0;
    int special_ok = 1, sum_ok = 1, place_ok = 1, same_ok = 1;
    for (size_t n = 0; n <= 41; n++)
        for (int rep = 0; rep < 400; rep++) {
            double c = rng_unif() * 8.0 - 4.0, span = rep % 2 ? 40.0 : 1417.0, top = rep % 2 ? 0.0 : 709.0;
            for (size_t e = 0; e < n; e++) x[e] = c + top - rng_unif() * span;
            if (n > 5 && rep == 0) { x[0] = -INFINITY; x[1] = c - 720.0; x[2] = c;
                                     x[3] = NAN; x[4] = c + 720.0; x[5] = INFINITY; }
            double l4[4] = {0, 0, 0, 0};
            double sum = attn_exp_sub_f64d(x, n, c, out);
            memcpy(io, x, n * sizeof *io);
            double sum_io = attn_exp_sub_f64d(io, n, c, io);
            place_ok &= memcmp(io, out, n * sizeof *io) == 0 && (sum_io == sum || (isnan(sum) && isnan(sum_io)));
            for (size_t e = 0; e < n; e++) {
                double xe = x[e] - c, want = exp(xe);
                l4[e % 4] += out[e];
                if (n > 5 && rep == 0 && e < 6) {
                    static const double expect[6] = {0, 0, 1, NAN, INFINITY, INFINITY};
                    special_ok &= e == 3 ? isnan(out[e]) : out[e] == expect[e];
                    continue;
                }
                if (xe < -708.0) { special_ok &= out[e] == 0.0; continue; }
                if (xe > 709.0) { special_ok &= isinf(out[e]) && out[e] > 0; continue; }
                double r = fabs(out[e] - want) / want / (2 * 0x1p-52);
                if (r > worst) worst = r;
            }
            if (!(n > 5 && rep == 0)) {
                double want_sum = (l4[0] + l4[1]) + (l4[2] + l4[3]);
                sum_ok &= sum == want_sum || (isinf(sum) && isinf(want_sum));
            }
            for (size_t e = 0; e < n; e++) { s[e] = (float)x[e]; x[e] = s[e]; }
            double sf = attn_exp_sub_f64(s, n, c, ref), sd = attn_exp_sub_f64d(x, n, c, out);
            same_ok &= memcmp(ref, out, n * sizeof *out) == 0 && (sf == sd || (isnan(sf) && isnan(sd)));
        }
    printf("attn_exp_sub_f64d: worst relative error / 2 ulp %.3g\n", worst);
    check_true("attn_exp_sub_f64d within 2 ulp of exp over [-708, 709]", worst <= 1.0);
    check_true("attn_exp_sub_f64d: -inf / < -708 give 0, > 709 / +inf give inf, NaN NaN, exp(0) = 1", special_ok);
    check_true("attn_exp_sub_f64d: the sum in lanes e mod 4, (l0 + l1) + (l2 + l3)", sum_ok);
    check_true("attn_exp_sub_f64d: in place equals out of place", place_ok);
    check_true("attn_exp_sub_f64d on float values: the bits of attn_exp_sub_f64", same_ok);
}

/* attn_rows_given with the logits of a kept subset gathered from a full attn_full_rows call
 * against attn_full_rows over the subset's rows itself (the engine's prefill evaluation of a
 * static eviction): lse and o bit for bit. Subset: a random kept prompt part, then every
 * decode position; rows over several key blocks, D with key blocks of 64 and of 48 keys. */
static void case_rows_given(void)
{
    size_t Ds[] = {1, 16, 128, 300};
    int same = 1;
    for (size_t a = 0; a < sizeof Ds / sizeof *Ds; a++)
        for (int capon = 0; capon < 2; capon++) {
            size_t D = Ds[a], n = 260, P = 200, nr = n - P;
            attn_params p = {1.0f / sqrtf((float)D), capon ? 5.0f : 0.0f, 0};
            float *q = randn(n * D, 1.5f), *k = randn(n * D, 1), *v = randn(n * D, 1);
            size_t pos[260], m = 0;
            for (size_t j = 0; j < n; j++)
                if (j >= P || rng_u64() % 3 == 0) pos[m++] = j;
            float *kc = malloc(m * D * sizeof *kc), *vc = malloc(m * D * sizeof *vc);
            for (size_t e = 0; e < m; e++) {
                memcpy(kc + e * D, k + pos[e] * D, D * sizeof *kc);
                memcpy(vc + e * D, v + pos[e] * D, D * sizeof *vc);
            }
            float *lf = malloc(nr * n * sizeof *lf), lsef[60], *of = malloc(nr * D * sizeof *of);
            attn_full_rows(q, k, v, n, D, P, n, &p, lsef, of, lf);
            size_t shift = n - m, nvis[60];
            float *z = malloc(nr * m * sizeof *z), lse1[60], lse2[60];
            float *o1 = malloc(nr * D * sizeof *o1), *o2 = malloc(nr * D * sizeof *o2), *l2 = malloc(nr * m * sizeof *l2);
            for (size_t r = 0; r < nr; r++) {
                nvis[r] = P + r + 1 - shift;
                for (size_t e = 0; e < nvis[r]; e++) z[r * m + e] = lf[r * n + pos[e]];
            }
            attn_rows_given(z, m, nvis, nr, vc, D, lse1, o1);
            attn_full_rows(q + shift * D, kc, vc, m, D, P - shift, n - shift, &p, lse2, o2, l2);
            same &= memcmp(lse1, lse2, nr * sizeof *lse1) == 0 && memcmp(o1, o2, nr * D * sizeof *o1) == 0;
            free(q); free(k); free(v); free(kc); free(vc); free(lf); free(of); free(z); free(o1); free(o2); free(l2);
        }
    check_true("attn_rows_given on gathered logits == attn_full_rows over the subset, bit for bit", same);
}

/* attn_entries_given with one row's logits gathered from a full attn_full_rows call against
 * attn_entries over the same entries (the engine's quest selections and online caches of
 * original rows): lse and o bit for bit. Entries by index (a random selection in random
 * order, more than one block of 64) and contiguous (a window of positions). And merged
 * entries: attn_rows_given on logits with a log-multiplicity bias added (the engine's blocked
 * path for entropy_merge) against attn_entries given the bias, bit for bit where the key
 * blocks are attn_entries' 64 (head_dim <= 256). */
static void case_entries_given(void)
{
    size_t Ds[] = {1, 16, 128, 300};
    int same = 1, bias_same = 1;
    for (size_t a = 0; a < sizeof Ds / sizeof *Ds; a++)
        for (int capon = 0; capon < 2; capon++) {
            size_t D = Ds[a], n = 260, P = 200, nr = n - P;
            attn_params p = {1.0f / sqrtf((float)D), capon ? 5.0f : 0.0f, 0};
            float *q = randn(n * D, 1.5f), *k = randn(n * D, 1), *v = randn(n * D, 1);
            float *lf = malloc(nr * n * sizeof *lf), lsef[60], *of = malloc(nr * D * sizeof *of);
            attn_full_rows(q, k, v, n, D, P, n, &p, lsef, of, lf);
            float *z = malloc(n * sizeof *z), *zr = malloc(n * sizeof *zr);
            float *o1 = malloc(D * sizeof *o1), *o2 = malloc(D * sizeof *o2);
            size_t idx[260];
            for (size_t r = 0; r < nr; r += 7) {
                size_t t = P + r, m = 0;
                for (size_t j = 0; j <= t; j++)
                    if (rng_u64() % 2 == 0) idx[m++] = j;
                for (size_t e = m; e > 1; e--) {        /* any order: the hook's, not the positions' */
                    size_t f = rng_u64() % e, x = idx[e - 1];
                    idx[e - 1] = idx[f]; idx[f] = x;
                }
                float lse1, lse2;
                for (size_t e = 0; e < m; e++) z[e] = lf[r * n + idx[e]];
                attn_entries_given(z, v, idx, m, D, &lse1, o1);
                attn_entries(q + t * D, k, v, idx, NULL, m, D, &p, &lse2, o2, zr);
                same &= m == 0 || (memcmp(&lse1, &lse2, sizeof lse1) == 0 && memcmp(o1, o2, D * sizeof *o1) == 0 &&
                                   memcmp(z, zr, m * sizeof *z) == 0);
                size_t lo = t / 3, c = t + 1 - lo;        /* contiguous entries [lo, t] */
                for (size_t e = 0; e < c; e++) z[e] = lf[r * n + lo + e];
                attn_entries_given(z, v + lo * D, NULL, c, D, &lse1, o1);
                attn_entries(q + t * D, k + lo * D, v + lo * D, NULL, NULL, c, D, &p, &lse2, o2, NULL);
                same &= memcmp(&lse1, &lse2, sizeof lse1) == 0 && memcmp(o1, o2, D * sizeof *o1) == 0;
                if (D > 256) continue;
                /* merged entries: logits with a log-multiplicity bias through attn_rows_given
                 * (the engine's blocked path) against attn_entries with the bias (per row) */
                size_t nv = t + 1;
                for (size_t e = 0; e < nv; e++) {
                    zr[e] = logf((float)(1 + rng_u64() % 5));
                    z[e] = lf[r * n + e] + zr[e];
                }
                attn_rows_given(z, n, &nv, 1, v, D, &lse1, o1);
                attn_entries(q + t * D, k, v, NULL, zr, nv, D, &p, &lse2, o2, NULL);
                bias_same &= memcmp(&lse1, &lse2, sizeof lse1) == 0 && memcmp(o1, o2, D * sizeof *o1) == 0;
            }
            free(q); free(k); free(v); free(lf); free(of); free(z); free(zr); free(o1); free(o2);
        }
    check_true("attn_entries_given on gathered logits == attn_entries over the entries, bit for bit", same);
    check_true("attn_rows_given on biased logits == attn_entries with the bias, bit for bit (D <= 256)", bias_same);
}

/* attn_pv_weighted: o_r += sum_e w[r][e] v[idx[e]], every element a multiply then an add in
 * increasing e on every path (generic, AVX2, AVX-512F; C11 mode, no contraction), so it
 * equals the scalar loop bit for bit, with and without idx, for channel counts that leave
 * tails of each vector width; and two calls over [0, k) and [k, n) equal one call over
 * [0, n) (the nested sums of the shared evaluation continue each other). */
/* attn_gram_acc against the loop it documents (every element, both triangles, the rows in
 * order, one rounding per add), bit for bit: D on and off the 8-column tiles, n on and off
 * the 64-row chunks, and a running sum over two calls (the lower triangle garbage on entry:
 * only the upper one is read). Also within rounding of a long-double sum. */
static void case_gram(void)
{
    size_t Ds[] = {1, 3, 8, 16, 40, 128, 136}, Ns[] = {1, 63, 64, 130};
    int same = 1, close = 1;
    for (size_t a = 0; a < sizeof Ds / sizeof *Ds; a++)
        for (size_t b = 0; b < sizeof Ns / sizeof *Ns; b++) {
            size_t D = Ds[a], n = Ns[b], n2 = n / 3 + 1;
            float *x = randn(n * D, 1.0f), *x2 = randn(n2 * D, 3.0f);
            double *M = calloc(D * D, sizeof *M), *R = calloc(D * D, sizeof *R);
            check_true("attn_gram_acc runs", attn_gram_acc(x, n, D, M) == 0);
            for (size_t i = 1; i < D; i++)
                for (size_t j = 0; j < i; j++) M[i * D + j] = 1e300;    /* not read */
            check_true("attn_gram_acc runs (second call)", attn_gram_acc(x2, n2, D, M) == 0);
            for (size_t i = 0; i < D; i++)
                for (size_t j = 0; j < D; j++) {
                    double r = 0, sa = 0;           /* sa: sum of |products| (the error bound's scale) */
                    long double l = 0;
                    for (size_t t = 0; t < n; t++) {
                        double p = (double)x[t * D + i] * x[t * D + j];
                        r += p; l += p; sa += fabs(p);
                    }
                    for (size_t t = 0; t < n2; t++) {
                        double p = (double)x2[t * D + i] * x2[t * D + j];
                        r += p; l += p; sa += fabs(p);
                    }
                    R[i * D + j] = r;
                    /* recursive summation: |err| <= (terms - 1) 2^-53 sum |p| (+ its own slack) */
                    if (fabsl((long double)M[i * D + j] - l) > (long double)((double)(n + n2) * 0x1p-52 * sa)) close = 0;
                }
            if (memcmp(M, R, D * D * sizeof *M)) {
                same = 0;
                printf("  gram D %zu n %zu: differs from the row-ordered loop\n", D, n);
            }
            free(x); free(x2); free(M); free(R);
        }
    check_true("attn_gram_acc = the row-ordered double loop bit for bit", same);
    check_true("attn_gram_acc within rounding of a long-double sum", close);
}

static void case_pv_weighted(void)
{
    size_t Ds[] = {1, 16, 40, 128, 300}, NRs[] = {1, 5, 32};
    int same = 1, split = 1;
    for (size_t a = 0; a < sizeof Ds / sizeof *Ds; a++)
        for (size_t b = 0; b < sizeof NRs / sizeof *NRs; b++)
            for (int use_idx = 0; use_idx < 2; use_idx++) {
                size_t D = Ds[a], nr = NRs[b], n = 150, rows = 400, ld = n + 3, idx[150];
                for (size_t e = 0; e < n; e++) idx[e] = (size_t)(rng_u64() % rows);
                const size_t *ix = use_idx ? idx : NULL;
                float *w = randn(nr * ld, 0.3f), *v = randn(rows * D, 1), *o0 = randn(nr * D, 1);
                float *o1 = malloc(nr * D * sizeof *o1), *o2 = malloc(nr * D * sizeof *o2);
                float *ref = malloc(nr * D * sizeof *ref);
                memcpy(o1, o0, nr * D * sizeof *o1);
                memcpy(o2, o0, nr * D * sizeof *o2);
                for (size_t r = 0; r < nr; r++)
                    for (size_t d = 0; d < D; d++) {
                        float acc = o0[r * D + d];
                        for (size_t e = 0; e < n; e++) {
                            float prod = w[r * ld + e] * v[(ix ? ix[e] : e) * D + d];
                            acc = acc + prod;
                        }
                        ref[r * D + d] = acc;
                    }
                attn_pv_weighted(w, ld, nr, n, v, ix, D, o1);
                size_t k = 37;              /* not a multiple of the entry blocks */
                attn_pv_weighted(w, ld, nr, k, v, ix, D, o2);
                attn_pv_weighted(w + k, ld, nr, n - k, v + (ix ? 0 : k * D), ix ? ix + k : NULL, D, o2);
                same &= memcmp(o1, ref, nr * D * sizeof *o1) == 0;
                split &= memcmp(o1, o2, nr * D * sizeof *o1) == 0;
                free(w); free(v); free(o0); free(o1); free(o2); free(ref);
            }
    check_true("attn_pv_weighted == the scalar multiply-add loop in e order, bit for bit", same);
    check_true("attn_pv_weighted over [0, k) then [k, n) == over [0, n), bit for bit", split);
}

/* attn_probs_row against a double softmax: relative error within its documented bound
 * (10 ulp + |s - max| 2^-24, i.e. the exp's 8 ulp + argument rounding, 1/l and the
 * product), the log partition within (8 + max |s - max|) 2^-24 + 1e-12 (1 + |lz|) (l sums
 * the fp32 exps, each within 8 ulp + argument rounding; the double sum and log add
 * ~2^-50), -INFINITY entries give 0, an all -INFINITY row gives p = 0
 * and -INFINITY, a NaN gives NaN; and attn_full_rows without lse and o (logits only)
 * gives the logits of a call with them. */
static void case_probs_row(void)
{
    float s[300], p[300];
    double worst = 0, worst_lz = 0;
    for (size_t n = 1; n <= 300; n += 23) {
        for (size_t e = 0; e < n; e++) s[e] = (float)(rng_unif() * 40.0 - 30.0);
        if (n > 3) s[1] = -INFINITY;
        double m = -INFINITY, l = 0;
        for (size_t e = 0; e < n; e++) m = s[e] > m ? s[e] : m;
        for (size_t e = 0; e < n; e++) l += exp((double)s[e] - m);
        double lz = attn_probs_row(s, n, p), lzr = m + log(l), xmax = 0;
        for (size_t e = 0; e < n; e++)
            if (s[e] != -INFINITY && m - s[e] > xmax) xmax = m - s[e];
        double tz = (8 + xmax) * ldexp(1, -24) + 1e-12 * (1 + fabs(lzr));
        if (fabs(lz - lzr) / tz > worst_lz) worst_lz = fabs(lz - lzr) / tz;
        for (size_t e = 0; e < n; e++) {
            double want = exp((double)s[e] - lzr);
            if (s[e] == -INFINITY) { worst = p[e] == 0 ? worst : 1e9; continue; }
            if (want < 1e-37) continue;         /* the exp's subnormal range: 0 allowed */
            double r = fabs(p[e] - want) / want / ((10 + fabs((double)s[e] - m)) * ldexp(1, -24));
            if (r > worst) worst = r;
        }
    }
    printf("attn_probs_row: worst relative error / bound %.3g, log partition %.3g\n", worst, worst_lz);
    check_true("attn_probs_row within its bound", worst <= 1.0);
    check_true("attn_probs_row log partition within its bound", worst_lz <= 1.0);
    float ninf[3] = {-INFINITY, -INFINITY, -INFINITY}, pz[3] = {1, 1, 1};
    double lz = attn_probs_row(ninf, 3, pz);
    check_true("attn_probs_row: a fully masked row gives 0 and -inf", lz == -INFINITY && !pz[0] && !pz[1] && !pz[2]);
    float nn[2] = {0.0f, NAN};
    check_true("attn_probs_row: NaN in, NaN out", isnan(attn_probs_row(nn, 2, pz)));
    size_t T = 150, D = 32;
    attn_params ap = {0.2f, 0, 0};
    float *q = randn(T * D, 1), *k = randn(T * D, 1), *l1 = malloc(T * T * sizeof *l1), *l2 = malloc(T * T * sizeof *l2);
    float *lse = malloc(T * sizeof *lse);
    attn_full_rows(q, k, k, T, D, 0, T, &ap, lse, NULL, l1);
    attn_full_rows(q, k, k, T, D, 0, T, &ap, NULL, NULL, l2);
    check_true("attn_full_rows logits only == its logits with the softmax", !memcmp(l1, l2, T * T * sizeof *l1));
    free(q); free(k); free(l1); free(l2); free(lse);
}

/* attn_rows_cut against attn_entries of each row over its own composed cache (keys from ka
 * below the row's cut, kb from it; values likewise): lse, o and logits bit for bit (the
 * kernel promises identity, not closeness). Rows > 64 (two row groups), entry counts not
 * multiples of 64, empty rows, cuts at 0, inside a block, at the end; softcap on and off. */
static void case_rows_cut(void)
{
    size_t Ds[] = {1, 8, 16, 64, 80, 128, 256};
    int same = 1, refused = 0;
    for (size_t a = 0; a < sizeof Ds / sizeof *Ds; a++)
        for (int capon = 0; capon < 2; capon++) {
            size_t D = Ds[a], nr = 70, N = 300;
            attn_params p = {1.0f / sqrtf((float)D), capon ? 5.0f : 0.0f, 0};
            float *q = randn(nr * D, 1.5f), *ka = randn(N * D, 1), *kb = randn(N * D, 1);
            float *va = randn(N * D, 1), *vb = randn(N * D, 1);
            float *kr = malloc(N * D * sizeof *kr), *vr = malloc(N * D * sizeof *vr);
            size_t nvis[70], kc[70], vc[70];
            for (size_t r = 0; r < nr; r++) {
                nvis[r] = r == 3 ? 0 : r < 40 ? 100 + 2 * r : (size_t)(rng_u64() % (N + 1));
                kc[r] = r % 5 == 0 ? 0 : r % 7 == 0 ? nvis[r] : (size_t)(rng_u64() % (nvis[r] + 1));
                vc[r] = r % 6 == 0 ? nvis[r] : (size_t)(rng_u64() % (nvis[r] + 1));
            }
            float lse[70], *o = malloc(nr * D * sizeof *o), *lg = malloc(nr * N * sizeof *lg);
            attn_cut_src src = {ka, kb, va, vb, kc, vc};
            if (attn_rows_cut(q, nr, D, &p, &src, nvis, N, lse, o, lg)) { refused = 1; continue; }
            for (size_t r = 0; r < nr; r++) {
                size_t n = nvis[r];
                for (size_t e = 0; e < n; e++) {
                    memcpy(kr + e * D, (e < kc[r] ? ka : kb) + e * D, D * sizeof *kr);
                    memcpy(vr + e * D, (e < vc[r] ? va : vb) + e * D, D * sizeof *vr);
                }
                float le, oe[256], lge[300];
                attn_entries(q + r * D, kr, vr, NULL, NULL, n, D, &p, &le, oe, lge);
                same &= memcmp(&le, &lse[r], sizeof le) == 0 && memcmp(oe, o + r * D, D * sizeof *oe) == 0 &&
                        memcmp(lge, lg + r * N, n * sizeof *lge) == 0;
            }
            free(q); free(ka); free(kb); free(va); free(vb); free(kr); free(vr); free(o); free(lg);
        }
    check_true("attn_rows_cut accepts D <= 256", !refused);
    check_true("attn_rows_cut == attn_entries per row, bit for bit", same);
    float x = 0;
    attn_params p1 = {1, 0, 0};
    attn_cut_src s1 = {&x, &x, &x, &x, NULL, NULL};
    check_true("attn_rows_cut refuses D > 256 (the caller's per-row path)",
               attn_rows_cut(&x, 0, 257, &p1, &s1, NULL, 0, NULL, NULL, NULL) == -1);
}

/* attn_rows_cut_heads (the engine's G query heads over one kv head's encoded cache) against
 * one attn_rows_cut call per head: lse, o and logits bit for bit, G up to 9 (more than 8
 * heads per pass), cuts on both sides of entry blocks. */
static void case_rows_cut_heads(void)
{
    size_t Gs[] = {1, 3, 9}, Ds[] = {64, 128};
    int same = 1;
    for (size_t gi = 0; gi < 3; gi++)
        for (size_t di = 0; di < 2; di++) {
            size_t G = Gs[gi], D = Ds[di], nr = 70, N = 300, lhs = nr + 2;
            attn_params p = {1.0f / sqrtf((float)D), gi == 1 ? 5.0f : 0.0f, 0};
            float *q = randn(G * nr * D, 1.5f), *ka = randn(N * D, 1), *kb = randn(N * D, 1);
            float *va = randn(N * D, 1), *vb = randn(N * D, 1);
            size_t nvis[70], kc[70], vc[70];
            for (size_t r = 0; r < nr; r++) {
                nvis[r] = r == 3 ? 0 : (size_t)(rng_u64() % (N + 1));
                kc[r] = r % 5 == 0 ? 0 : (size_t)(rng_u64() % (nvis[r] + 1));
                vc[r] = r % 6 == 0 ? nvis[r] : (size_t)(rng_u64() % (nvis[r] + 1));
            }
            attn_cut_src src = {ka, kb, va, vb, kc, vc};
            float *l1 = malloc(G * lhs * sizeof *l1), *o1 = malloc(G * lhs * D * sizeof *o1);
            float *g1 = malloc(G * lhs * N * sizeof *g1), l2[70], *o2 = malloc(nr * D * sizeof *o2);
            float *g2 = malloc(nr * N * sizeof *g2);
            attn_rows_cut_heads(q, nr * D, G, nr, D, &p, &src, nvis, N, lhs, l1, o1, g1);
            for (size_t h = 0; h < G; h++) {
                attn_rows_cut(q + h * nr * D, nr, D, &p, &src, nvis, N, l2, o2, g2);
                same &= !memcmp(l1 + h * lhs, l2, nr * sizeof *l2) && !memcmp(o1 + h * lhs * D, o2, nr * D * sizeof *o2);
                for (size_t r = 0; r < nr; r++)
                    same &= !memcmp(g1 + (h * lhs + r) * N, g2 + r * N, nvis[r] * sizeof *g2);
            }
            free(q); free(ka); free(kb); free(va); free(vb); free(l1); free(o1); free(g1); free(o2); free(g2);
        }
    check_true("attn_rows_cut_heads == attn_rows_cut per head, bit for bit", same);
}

static void run_all(void)
{
    size_t Ds[] = {1, 16, 32, 64, 128, 80, 300};
    size_t Ts[] = {1, 2, 7, 64, 300};
    for (size_t a = 0; a < sizeof Ds / sizeof *Ds; a++)
        for (size_t b = 0; b < sizeof Ts / sizeof *Ts; b++) {
            size_t D = Ds[a], T = Ts[b];
            if (D == 300 && T > 64) continue;      /* D > 256: smaller key blocks; keep it quick */
            float sc = 1.0f / sqrtf((float)D);
            attn_params plain = {sc, 0, 0}, cap = {sc, 5.0f, 0}, w1 = {sc, 0, 1};
            attn_params w5 = {sc, 0, 5}, wt = {sc, 0, (long long)(T / 3 + 1)}, both = {sc, 20.0f, 70};
            case_full(T, D, &plain, 2.0f, "plain");
            case_full(T, D, &cap, 3.0f, "softcap5");
            case_full(T, D, &w1, 2.0f, "window1");
            case_full(T, D, &w5, 2.0f, "window5");
            case_full(T, D, &wt, 2.0f, "windowT/3");
            case_full(T, D, &both, 2.0f, "cap20+window70");
        }
    printf("fast vs ref: worst o tolerance ratio %.3g, worst NMSE %.3g\n", worst_full_ratio, worst_nmse);
    case_gqa();
    case_full_heads();
    case_entries();
    case_exp_shift();
    case_exp_f64();
    case_exp_f64d();
    case_rows_cut();
    case_rows_cut_heads();
    case_rows_given();
    case_entries_given();
    case_pv_weighted();
    case_gram();
    case_probs_row();
    hand_cases();
}

/* Every check on each vector path the CPU has (attn_set_isa_limit: generic, AVX2, AVX-512F;
 * test_attn_isa compares the paths' outputs with each other byte for byte). */
int main(void)
{
    static const char *names[] = {"generic", "avx2", "avx512"};
    for (int lim = ATTN_ISA_AVX512; lim >= ATTN_ISA_GENERIC; lim--) {
        attn_set_isa_limit(lim);
        if (attn_isa() != lim) {
            printf("path %s: skipped (not on this CPU or build)\n", names[lim]);
            continue;
        }
        int f0 = fails, c0 = checks;
        worst_full_ratio = worst_nmse = 0;
        printf("== path %s\n", names[lim]);
        run_all();
        printf("path %s: %d checks, %d failed\n", names[lim], checks - c0, fails - f0);
    }
    attn_set_isa_limit(ATTN_ISA_AVX512);
    printf("%d checks, %d failed\n", checks, fails);
    return fails ? 1 : 0;
}
