/* The per-row metrics of replay/metric.h against the naive formulas of docs/METHODS.md, computed
 * here in double from scratch: p = softmax of the full logits over the window, q~ over
 * positions from the compressed logits (a merged entry's q split equally among its members),
 * then cos / KL / recall / output cosine and relative error by their definitions.
 *
 * Tolerances. With q in double (q32 = NULL) both sides compute the same sums in double in a
 * different order, from the same fp32 inputs: relative differences are a few ulps of double
 * times the number of terms (<= 64 here), so 1e-12 (absolute; every quantity is O(1)). With
 * fp32 q (the prefill path), each q_e carries a relative error <= 2^-24 (one rounding of the
 * double value; attn_exp_shift itself is checked against exp in test_attn), hence cos and
 * recall move by ~1e-7 and KL by ~1e-7 * (1 + |log ratio|): 2e-6 absolute.
 * Hand cases: the full cache itself (cos 1, KL 0, recall 1), half the mass dropped, a merged
 * pair of equal probabilities (exact), members outside the window [lo, t] on either side
 * (their mass is lost). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "metric.h"

static int fails = 0, checks = 0;

static void near(const char *what, double got, double want, double tol)
{
    checks++;
    if (!(fabs(got - want) <= tol)) {
        fails++;
        printf("FAIL %s: got %.17g want %.17g (|diff| %.3g > tol %g)\n", what, got, want, fabs(got - want), tol);
    }
}

static unsigned rng = 7;
static double unif(void) { rng = rng * 1103515245u + 12345u; return (double)((rng >> 8) & 0xffff) / 65536.0; }

enum { NMAX = 64, DMAX = 16 };

/* The naive metrics. Entries: ent[r] visible, members of entry e: mem[off[e] .. off[e+1]). */
static void naive(size_t n, size_t lo, size_t t, const float *logit, size_t cnt, const size_t *ent,
                  const float *z, const int32_t *off, const int32_t *mem, double *cos, double *kl, double *rec)
{
    double p[NMAX] = { 0 }, qt[NMAX] = { 0 }, Z = 0, Q = 0, mx = -INFINITY, mz = -INFINITY;
    for (size_t j = lo; j <= t; j++) mx = fmax(mx, logit[j]);
    for (size_t j = lo; j <= t; j++) Z += exp((double)logit[j] - mx);
    for (size_t j = lo; j <= t; j++) p[j] = exp((double)logit[j] - mx) / Z;
    for (size_t r = 0; r < cnt; r++) mz = fmax(mz, z[r]);
    for (size_t r = 0; r < cnt; r++) Q += exp((double)z[r] - mz);
    int covered[NMAX] = { 0 };
    for (size_t r = 0; r < cnt; r++) {
        size_t e = ent[r];
        double q = exp((double)z[r] - mz) / Q, m = (double)(off[e + 1] - off[e]);
        for (int32_t a = off[e]; a < off[e + 1]; a++) { qt[mem[a]] += q / m; covered[mem[a]] = 1; }
    }
    double dot = 0, pp = 0, qq = 0, k = 0, rc = 0;
    for (size_t j = lo; j <= t; j++) {
        dot += p[j] * qt[j]; pp += p[j] * p[j]; qq += qt[j] * qt[j];
        if (qt[j] > 0) k += qt[j] * (log(qt[j]) - log(p[j]));
        if (covered[j]) rc += p[j];
    }
    (void)n;
    *cos = pp > 0 && qq > 0 ? dot / sqrt(pp * qq) : 0;
    *kl = k < 0 ? 0 : k;
    *rec = rc;
}

/* Run the function on the same case; q32: use fp32 q (plain entries only). */
static void run(size_t n, size_t lo, size_t t, const float *logit, size_t cnt, const size_t *ent, const float *z,
                const int32_t *pos, const int32_t *mult, const int32_t *off, const int32_t *mem, int plain, int q32,
                rp_row_metrics *m, float *qout)
{
    double p[NMAX], Z = 0, p2 = 0, L0 = logit[t];    /* any shift works; the kernel uses its lse */
    for (size_t j = lo; j <= t; j++) Z += (p[j] = exp((double)logit[j] - L0));
    for (size_t j = lo; j <= t; j++) { p[j] /= Z; p2 += p[j] * p[j]; }
    double lz = L0 + log(Z), mz = -INFINITY, Q = 0;
    for (size_t r = 0; r < cnt; r++) mz = fmax(mz, z[r]);
    for (size_t r = 0; r < cnt; r++) Q += exp((double)z[r] - mz);
    double lse = mz + log(Q);
    float q[NMAX];
    for (size_t r = 0; r < cnt; r++) q[r] = (float)exp((double)z[r] - lse);
    rp_row_full f = { .lo = lo, .t = t, .p = p, .logit = logit, .lz = lz, .p2 = p2 };
    rp_row_comp c = { .cnt = cnt, .ent = ent, .z = z, .lse = lse, .q32 = q32 ? q : NULL, .pos = pos,
                      .mult = mult, .mem_off = plain ? NULL : off, .members = plain ? NULL : mem };
    rp_attn_row_metrics(&f, &c, qout, m);
}

int main(void)
{
    float logit[NMAX], z[NMAX];
    int32_t pos[NMAX], mult[NMAX], off[NMAX + 1], mem[NMAX];
    size_t ent[NMAX];
    rp_row_metrics m;
    double cs, kl, rc;

    /* hand case 1: the full cache itself, plain entries -> cos 1, KL 0, recall 1 */
    size_t n = 8, t = 7;
    for (size_t j = 0; j < n; j++) {
        logit[j] = (float)j * 0.25f - 1.0f; z[j] = logit[j];
        pos[j] = (int32_t)j; mult[j] = 1; off[j] = (int32_t)j; mem[j] = (int32_t)j; ent[j] = j;
    }
    off[n] = (int32_t)n;
    run(n, 0, t, logit, n, ent, z, pos, mult, off, mem, 1, 0, &m, NULL);
    near("identity cos", m.attn_cos, 1, 1e-15);
    near("identity kl", m.attn_kl, 0, 1e-15);
    near("identity recall", m.mass_recall, 1, 1e-15);

    /* hand case 2: equal logits, keep the 4 even positions: q~ = 1/4 on them, p = 1/8 ->
     * cos = (4 * 1/32) / sqrt(1/8 * 1/4) = 1/sqrt(2), KL = log 2, recall = 1/2 */
    for (size_t j = 0; j < n; j++) logit[j] = 0.5f;
    for (size_t r = 0; r < 4; r++) { ent[r] = 2 * r; z[r] = 0.5f; }
    run(n, 0, t, logit, 4, ent, z, pos, mult, off, mem, 1, 0, &m, NULL);
    near("half cos", m.attn_cos, 1 / sqrt(2.0), 1e-15);
    near("half kl", m.attn_kl, log(2.0), 1e-15);
    near("half recall", m.mass_recall, 0.5, 1e-15);

    /* hand case 3: pairs merged (mult 2, logit + log 2) over equal p: exactly the full row */
    for (size_t e = 0; e < 4; e++) {
        pos[e] = (int32_t)(2 * e); mult[e] = 2; off[e] = (int32_t)(2 * e);
        mem[2 * e] = (int32_t)(2 * e); mem[2 * e + 1] = (int32_t)(2 * e + 1);
        ent[e] = e; z[e] = 0.5f + logf(2.0f);
    }
    off[4] = 8;
    run(n, 0, t, logit, 4, ent, z, pos, mult, off, mem, 0, 0, &m, NULL);
    near("merged pairs cos", m.attn_cos, 1, 1e-7);
    near("merged pairs kl", m.attn_kl, 0, 1e-7);
    near("merged pairs recall", m.mass_recall, 1, 1e-15);

    /* hand case 4: window [4, 7]; the merged entry {2, 5} loses member 2's half */
    size_t lo = 4;
    pos[0] = 2; mult[0] = 2; off[0] = 0; mem[0] = 2; mem[1] = 5;
    pos[1] = 7; mult[1] = 1; off[1] = 2; mem[2] = 7; off[2] = 3;
    ent[0] = 0; ent[1] = 1; z[0] = 0.5f + logf(2.0f); z[1] = 0.5f;
    run(n, lo, t, logit, 2, ent, z, pos, mult, off, mem, 0, 0, &m, NULL);
    naive(n, lo, t, logit, 2, ent, z, off, mem, &cs, &kl, &rc);
    near("window recall = p5 + p7 = 1/2", m.mass_recall, 0.5, 1e-15);
    near("window cos vs naive", m.attn_cos, cs, 1e-12);
    near("window kl vs naive", m.attn_kl, kl, 1e-12);

    /* random cases: plain (double and fp32 q) and merged, with windows and selections */
    double worst[3] = { 0, 0, 0 };
    for (int rep = 0; rep < 500; rep++) {
        n = 2 + (size_t)(unif() * 60);
        t = rep % 4 == 3 ? (size_t)(unif() * (double)(n - 1)) : n - 1;  /* entries beyond t: outside */
        lo = unif() < 0.3 ? (size_t)(unif() * (double)t) : 0;
        for (size_t j = 0; j < n; j++) logit[j] = (float)(unif() * 8 - 4);
        int plain = rep % 3 != 2, q32 = plain && rep % 3 == 1;
        /* entries: plain = one position each; merged = runs of 1-3 consecutive positions */
        size_t N = 0, j = 0, a = 0;
        while (j < n) {
            size_t len = plain ? 1 : 1 + (size_t)(unif() * 3);
            if (j + len > n) len = n - j;
            pos[N] = (int32_t)j; mult[N] = (int32_t)len; off[N] = (int32_t)a;
            for (size_t k = 0; k < len; k++) mem[a++] = (int32_t)(j + k);
            N++; j += len;
        }
        off[N] = (int32_t)a;
        size_t cnt = 0;
        for (size_t e = 0; e < N; e++)
            if (unif() < 0.7 || e == 0) {
                ent[cnt] = e;
                z[cnt++] = (float)(unif() * 8 - 4) + logf((float)mult[e]);
            }
        float qout[NMAX];
        run(n, lo, t, logit, cnt, ent, z, pos, mult, off, mem, plain, q32, &m, qout);
        naive(n, lo, t, logit, cnt, ent, z, off, mem, &cs, &kl, &rc);
        double tol = q32 ? 2e-6 : 1e-12;
        char what[96];
        snprintf(what, sizeof what, "random %d (%s) cos", rep, plain ? (q32 ? "plain fp32 q" : "plain") : "merged");
        near(what, m.attn_cos, cs, tol);
        snprintf(what, sizeof what, "random %d kl", rep);
        near(what, m.attn_kl, kl, tol * (1 + fabs(kl)));
        snprintf(what, sizeof what, "random %d recall", rep);
        near(what, m.mass_recall, rc, tol);
        worst[0] = fmax(worst[0], fabs(m.attn_cos - cs));
        worst[1] = fmax(worst[1], fabs(m.attn_kl - kl));
        worst[2] = fmax(worst[2], fabs(m.mass_recall - rc));
        double qs = 0;                      /* q_out: the row's probabilities, by entry */
        for (size_t r = 0; r < cnt; r++) qs += qout[ent[r]];
        snprintf(what, sizeof what, "random %d q_out sums to 1", rep);
        near(what, qs, 1, 1e-5);
    }
    printf("worst |diff| vs naive: cos %.3g kl %.3g recall %.3g\n", worst[0], worst[1], worst[2]);

    /* rows of plain entries at consecutive positions inside the window, fp32 q (ent NULL: the
     * path that sums whole lane groups as vectors where the CPU has AVX-512F): against the
     * naive formulas, and bit for bit the general path given the same entries in ent, on
     * every ISA path (the lanes fix the order) */
    int same = 1;
    for (int rep = 0; rep < 300; rep++) {
        n = 2 + (size_t)(unif() * 62);
        t = rep % 2 ? n - 1 : (size_t)(unif() * (double)(n - 1));
        lo = unif() < 0.5 ? (size_t)(unif() * (double)t) : 0;
        size_t j0 = lo + (size_t)(unif() * (double)(t - lo)), cnt = 1 + (size_t)(unif() * (double)(t - j0));
        for (size_t j = 0; j < n; j++) {
            logit[j] = (float)(unif() * 8 - 4);
            pos[j] = (int32_t)j; mult[j] = 1; off[j] = (int32_t)j; mem[j] = (int32_t)j;
        }
        off[n] = (int32_t)n;
        for (size_t r = 0; r < cnt; r++) { ent[r] = j0 + r; z[r] = (float)(unif() * 8 - 4); }
        double p[NMAX], Z = 0, p2 = 0, L0 = logit[t], mz = -INFINITY, Q = 0;
        for (size_t j = lo; j <= t; j++) Z += (p[j] = exp((double)logit[j] - L0));
        for (size_t j = lo; j <= t; j++) { p[j] /= Z; p2 += p[j] * p[j]; }
        for (size_t r = 0; r < cnt; r++) mz = fmax(mz, z[r]);
        for (size_t r = 0; r < cnt; r++) Q += exp((double)z[r] - mz);
        double lse = mz + log(Q);
        float q[NMAX], qa[NMAX], qb[NMAX];
        for (size_t r = 0; r < cnt; r++) q[r] = (float)exp((double)z[r] - lse);
        rp_row_full f = { .lo = lo, .t = t, .p = p, .logit = logit, .lz = L0 + log(Z), .p2 = p2 };
        rp_row_comp cf = { .cnt = cnt, .first = j0, .z = z, .lse = lse, .q32 = q, .pos = pos, .mult = mult };
        rp_row_comp cg = cf;
        cg.ent = ent;
        rp_row_metrics mg, mf;
        memset(qa, 0, sizeof qa); memset(qb, 0, sizeof qb);
        rp_attn_row_metrics(&f, &cg, qa, &mg);
        for (int isa = ATTN_ISA_GENERIC; isa <= ATTN_ISA_AVX512; isa++) {
            int old = attn_set_isa_limit(isa);
            rp_attn_row_metrics(&f, &cf, qb, &mf);
            attn_set_isa_limit(old);
            same &= memcmp(&mf, &mg, sizeof mf) == 0 && memcmp(qa, qb, sizeof qa) == 0;
        }
        naive(n, lo, t, logit, cnt, ent, z, off, mem, &cs, &kl, &rc);
        char what[96];
        snprintf(what, sizeof what, "consecutive %d cos", rep);
        near(what, mf.attn_cos, cs, 2e-6);
        snprintf(what, sizeof what, "consecutive %d kl", rep);
        near(what, mf.attn_kl, kl, 2e-6 * (1 + fabs(kl)));
        snprintf(what, sizeof what, "consecutive %d recall", rep);
        near(what, mf.mass_recall, rc, 2e-6);
    }
    checks++;
    if (!same) { fails++; printf("FAIL consecutive rows: not the general path's bits on every ISA path\n"); }

    /* output metrics */
    float o[DMAX], oc[DMAX];
    double ocos, orel;
    unsigned D = 16;
    for (int rep = 0; rep < 200; rep++) {
        double oo = 0, cc = 0, ocd = 0, dd = 0;
        for (size_t d = 0; d < D; d++) {
            o[d] = (float)(unif() * 2 - 1); oc[d] = (float)(unif() * 2 - 1);
            oo += (double)o[d] * o[d]; cc += (double)oc[d] * oc[d]; ocd += (double)o[d] * oc[d];
            dd += ((double)o[d] - oc[d]) * ((double)o[d] - oc[d]);
        }
        rp_out_row_metrics(o, oc, D, &ocos, &orel);
        near("out_cos vs naive", ocos, ocd / sqrt(oo * cc), 1e-12);
        near("out_rel_err vs naive", orel, sqrt(dd / oo), 1e-12);
    }
    memset(o, 0, sizeof o); memset(oc, 0, sizeof oc);
    rp_out_row_metrics(o, oc, D, &ocos, &orel);
    near("both zero: out_cos 1", ocos, 1, 0);
    near("both zero: out_rel_err 0", orel, 0, 0);
    oc[3] = 1;
    rp_out_row_metrics(o, oc, D, &ocos, &orel);
    near("o zero: out_cos 0", ocos, 0, 0);
    near("o zero: out_rel_err 1", orel, 1, 0);
    o[3] = 2; oc[3] = 2;
    rp_out_row_metrics(o, oc, D, &ocos, &orel);
    near("equal: out_cos 1", ocos, 1, 0);
    near("equal: out_rel_err 0", orel, 0, 0);

    printf("test_metric: %d checks, %d failures\n", checks, fails);
    return fails ? 1 : 0;
}
