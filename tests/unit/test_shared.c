/* replay/shared.c: the scores shared by the configurations of a work item, against a naive
 * float64 computation and against the row-by-row path the strategies used before.
 *
 * P prompt rows, D head_dim, H q-heads over Hkv kv-heads. For each attention setting (plain,
 * soft-capped, sliding window):
 *   column sums   rp_prompt_colsum over all rows, an observation window, a random row mask,
 *                 against sum_t p_ref(t, j) in double. Tolerance per term: the fp32
 *                 probability p = exp(s - m) / l (attn_probs_row: the kernels' vectorised
 *                 exp, one per entry) has relative error at most
 *                     eps_t = (D + 1) 2^-24 scale max_j sum_d |q_d k_jd|   (fp32 dot product,
 *                             gamma_D, plus the scale; tanh contracts: the cap adds a few ulp)
 *                           + 2e-6 (1 + |lse_t|)                          (the normalisation;
 *                             the kernels' lse bound of test_attn, generous here: l is
 *                             summed in double)
 *                           + 10 2^-24                                    (the exp: within
 *                             8 ulp of exp of its float argument, test_attn; 1/l and the
 *                             product; tanhf, cap)
 *                 plus the rounding of the argument x = s - m, |x| 2^-24: below the lse
 *                 term for |x| <= 33, and beyond it p <= e^-33 < 5e-15 (m <= lse),
 *                 inside the absolute 1e-15 slack of a column (|x| e^-|x| 2^-24 < 1e-15);
 *                 so |sum - ref| <= sum_t eps_t p_ref(t, j) (non-negative terms), + 1e-15;
 *   entropies     -sum p_j (s_j - lz) (log p = s - lz, lz = m + log l: no log per entry):
 *                 an error dp in p and dx in s - lz (|dx| <= eps_t, the same terms) give
 *                 |h - ref| <= sum_j eps_t p_j (|log p_j| + 1) / log(nvis) (+ 1e-12);
 *   bit identity  the sums equal, bit for bit, what summing the rows of one
 *                 attn_full_rows call (attn_probs_row of the logits, masked = 0; the engine's
 *                 prompt_attn) in ascending row order gives: the shared scores change no
 *                 strategy's output; the same with the keys transposed once
 *                 (attn_full_rows_kt, also checked against attn_full_rows directly:
 *                 outputs, lse and logits, key blocks of 64 and 48 keys);
 *   the object    rp_shared_colsum / rp_shared_entropy (cached, recomputed, several ranges
 *                 per head, GQA head mapping) equal the direct calls bit for bit;
 *                 rp_shared_pages equals a naive min/max, also when extended page by page,
 *                 and refuses pages past the sequence;
 *   value norms   rp_value_norms (criticalkv's mean over the query heads of ||v W_O[h]||_1)
 *                 equals, bit for bit, the naive loop that defines its order (each product
 *                 summed over d from 0 in double, |.| summed over heads then columns, / G), on
 *                 shapes off every blocking (P not a multiple of the row tile, C not of the
 *                 panel width, odd D) and on whole blocks; and against a long-double sum within
 *                 (D + C G) 2^-52 of the total (the same terms, rounded in double);
 *                 rp_shared_value_norms gives the same values and keeps them per kv head;
 *   captured      the whole prompt's sums from scores recorded over every row (kvcapture
 *                 --prompt-scores) less the evaluated rows (test_captured: its bound).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#define RNG_SEED 0x243f6a8885a308d3ull
#include "rng_testhelp.h"
#include "shared.h"

static int fails = 0, checks = 0;

static void check(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}


enum { P = 97, D = 16, H = 4, HKV = 2, G = H / HKV, N = P + 5 };

/* Naive float64 probabilities of row t of one head over keys [0, P): pr [P] (0 masked),
 * the row's lse and error bound eps_t (header). */
static void ref_row(const float *q, const float *k, const attn_params *ap, size_t t, double *pr, double *lse,
                    double *eps)
{
    double s[P], mx = -INFINITY, dotmax = 0;
    size_t lo = attn_lo(t, ap->window);
    for (size_t j = 0; j < P; j++) pr[j] = 0;
    for (size_t j = lo; j <= t; j++) {
        double dot = 0, ab = 0;
        for (size_t d = 0; d < D; d++) {
            dot += (double)q[t * D + d] * k[j * D + d];
            ab += fabs((double)q[t * D + d] * k[j * D + d]);
        }
        double x = (double)ap->scale * dot;
        if (ap->softcap > 0) x = ap->softcap * tanh(x / ap->softcap);
        s[j] = x;
        mx = x > mx ? x : mx;
        dotmax = ab > dotmax ? ab : dotmax;
    }
    double z = 0;
    for (size_t j = lo; j <= t; j++) z += exp(s[j] - mx);
    *lse = mx + log(z);
    for (size_t j = lo; j <= t; j++) pr[j] = exp(s[j] - *lse);
    *eps = (D + 1) * ldexp(1, -24) * ap->scale * dotmax + 2e-6 * (1 + fabs(*lse)) + 10 * ldexp(1, -24);
}

/* The strategies' former path: rows of one attn_full_rows call over keys [0, P) (with its
 * softmax: the logits do not depend on it), probabilities attn_probs_row of the visible
 * logits, added in ascending row order. */
static void rows_sum(const float *q, const float *k, const attn_params *ap, size_t t0, size_t t1, const uint8_t *want,
                     double *out)
{
    float *lg = malloc((t1 - t0) * P * sizeof *lg), *lse = malloc((t1 - t0) * sizeof *lse);
    attn_full_rows(q, k, k, P, D, t0, t1, ap, lse, NULL, lg);
    memset(out, 0, P * sizeof *out);
    for (size_t t = t0; t < t1; t++) {
        if (want && !want[t]) continue;
        size_t lo = attn_lo(t, ap->window);
        float *row = lg + (t - t0) * P;
        attn_probs_row(row + lo, t + 1 - lo, row + lo);
        for (size_t j = lo; j <= t; j++) out[j] += row[j];
    }
    free(lg); free(lse);
}

static void test_colsum(const char *name, const attn_params *ap)
{
    float *q = malloc(P * D * sizeof *q), *k = malloc(P * D * sizeof *k);
    for (size_t i = 0; i < P * D; i++) { q[i] = 1.5f * rng_normal(); k[i] = rng_normal(); }
    float *kt = malloc(attn_keys_t_floats(P, D) * sizeof *kt);
    attn_transpose_keys(k, P, D, kt);
    uint8_t want[P];
    for (size_t t = 0; t < P; t++) want[t] = rng_unif() < 0.4;
    double *pr = malloc(P * P * sizeof *pr), eps[P], lse[P];
    for (size_t t = 0; t < P; t++) ref_row(q, k, ap, t, pr + t * P, &lse[t], &eps[t]);
    struct { const char *what; size_t t0, t1; const uint8_t *want; } cases[] = {
        { "all rows", 0, P, NULL }, { "window 9", P - 9, P, NULL }, { "masked", 0, P, want },
        { "masked tail", 30, P, want }, { "one row", 40, 41, NULL }, { "empty", 5, 5, NULL },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        double out[P], old[P], ent[P], worst = 0;
        char msg[160];
        size_t t0 = cases[c].t0, t1 = cases[c].t1;
        int rc = rp_prompt_colsum(q, k, NULL, P, D, ap, t0, t1, cases[c].want, P, out, ent);
        snprintf(msg, sizeof msg, "%s %s: returns 0", name, cases[c].what);
        check(msg, rc == 0);
        double out2[P], ent2[P];
        rc = rp_prompt_colsum(q, k, kt, P, D, ap, t0, t1, cases[c].want, P, out2, ent2);
        snprintf(msg, sizeof msg, "%s %s: keys transposed once: the same bits", name, cases[c].what);
        check(msg, rc == 0 && memcmp(out, out2, sizeof out) == 0 && memcmp(ent, ent2, (t1 - t0) * sizeof *ent) == 0);
        int ok = 1, eok = 1;
        for (size_t j = 0; j < P; j++) {
            double ref = 0, tol = 1e-15;
            for (size_t t = t0; t < t1; t++)
                if (!cases[c].want || cases[c].want[t]) { ref += pr[t * P + j]; tol += eps[t] * pr[t * P + j]; }
            if (!(fabs(out[j] - ref) <= tol)) ok = 0;
            if (fabs(out[j] - ref) / tol > worst) worst = fabs(out[j] - ref) / tol;
        }
        snprintf(msg, sizeof msg, "%s %s: column sums within the fp32 bound (worst %.3f of it)", name, cases[c].what, worst);
        check(msg, ok);
        for (size_t t = t0; t < t1; t++) {
            if (cases[c].want && !cases[c].want[t]) { if (ent[t - t0] != 0) eok = 0; continue; }
            size_t lo = attn_lo(t, ap->window), nv = t + 1 - lo;
            double h = 0, tol = 1e-12;
            for (size_t j = lo; j <= t; j++) {
                double p = pr[t * P + j];
                if (p > 0) { h -= p * log(p); tol += eps[t] * p * (fabs(log(p)) + 1); }
            }
            h = nv > 1 ? h / log((double)nv) : 0;
            if (nv > 1) tol /= log((double)nv);
            if (!(fabs(ent[t - t0] - h) <= tol)) eok = 0;
        }
        snprintf(msg, sizeof msg, "%s %s: row entropies within the bound", name, cases[c].what);
        check(msg, eok);
        if (t1 > t0) {
            rows_sum(q, k, ap, t0, t1, cases[c].want, old);
            snprintf(msg, sizeof msg, "%s %s: bit-identical to summing the prompt rows", name, cases[c].what);
            check(msg, memcmp(out, old, P * sizeof *out) == 0);
        }
    }
    double part[P];
    rp_prompt_colsum(q, k, NULL, P, D, ap, 0, P, NULL, 20, part, NULL);
    double all[P];
    rp_prompt_colsum(q, k, NULL, P, D, ap, 0, P, NULL, P, all, NULL);
    check("ncols < P: the first columns, same bits", memcmp(part, all, 20 * sizeof *part) == 0);
    check("t1 > P refused", rp_prompt_colsum(q, k, NULL, P, D, ap, 0, P + 1, NULL, P, all, NULL) == -1);
    free(q); free(k); free(kt); free(pr);
}

/* want_ent: the whole-prompt column sums are computed with the entropies (same bits). */
static void test_object(const attn_params *ap, int want_ent)
{
    float *q = malloc(H * N * D * sizeof *q), *k = malloc(HKV * N * D * sizeof *k);
    for (size_t i = 0; i < H * N * D; i++) q[i] = rng_normal();
    for (size_t i = 0; i < HKV * N * D; i++) k[i] = rng_normal();
    rp_shared *s = rp_shared_new(q, k, H, HKV, N, P, D, ap, want_ent);
    check("rp_shared_new", s != NULL);
    if (!s) return;
    uint8_t want[P];
    for (size_t t = 0; t < P; t++) want[t] = (t * 7) % 3 == 0;
    int ok = 1;
    for (int pass = 0; pass < 2; pass++)          /* second pass: from the kept ranges */
        for (size_t h = 0; h < H; h++) {
            const float *qh = q + h * N * D, *kh = k + (h / G) * N * D;
            double a[P], b[P], e[P];
            size_t ranges[6][2] = { { 0, P }, { P - 8, P }, { P - 16, P }, { P - 4, P }, { P - 32, P }, { 10, 50 } };
            for (size_t r = 0; r < 6; r++) {        /* more ranges than slots: recycling */
                ok &= rp_shared_colsum(s, h, ranges[r][0], ranges[r][1], NULL, a) == 0;
                rp_prompt_colsum(qh, kh, NULL, P, D, ap, ranges[r][0], ranges[r][1], NULL, P, b, NULL);
                ok &= memcmp(a, b, sizeof a) == 0;
            }
            ok &= rp_shared_colsum(s, h, 0, P, want, a) == 0;
            rp_prompt_colsum(qh, kh, NULL, P, D, ap, 0, P, want, P, b, NULL);
            ok &= memcmp(a, b, sizeof a) == 0;
            const double *se = rp_shared_entropy(s, h);
            rp_prompt_colsum(qh, kh, NULL, P, D, ap, 0, P, NULL, P, b, e);
            ok &= se && memcmp(se, e, sizeof e) == 0;
            ok &= rp_shared_colsum(s, h, 0, P, NULL, a) == 0 && memcmp(a, b, sizeof a) == 0;
        }
    check("shared column sums and entropies: the direct values, bit for bit, per query head", ok);
    /* pages of kv head 1, page 8: naive min/max, extended incrementally */
    const float *mn, *mx;
    size_t page = 8, full = N / page;
    int pok = rp_shared_pages(s, 1, page, 2, &mn, &mx) == 0;
    pok &= rp_shared_pages(s, 1, page, full, &mn, &mx) == 0;
    pok &= rp_shared_pages(s, 1, page, 3, &mn, &mx) == 0;       /* fewer: no recomputation needed */
    for (size_t p = 0; p < full && pok; p++)
        for (size_t d = 0; d < D; d++) {
            float a = INFINITY, b = -INFINITY;
            for (size_t e = p * page; e < (p + 1) * page; e++) {
                float x = k[(1 * N + e) * D + d];
                a = x < a ? x : a;
                b = x > b ? x : b;
            }
            pok &= mn[p * D + d] == a && mx[p * D + d] == b;
        }
    check("page min/max of kv head 1 equal the naive ones (extended incrementally)", pok);
    /* the d-major tables (key_pages): the same values, extended as pages are added */
    const float *tn, *tx;
    size_t ld = 0;
    int tok = rp_shared_pages_t(s, 0, page, 1, &tn, &tx, &ld) == 0 && ld == full;
    tok &= rp_shared_pages_t(s, 0, page, full, &tn, &tx, &ld) == 0;
    tok &= rp_shared_pages(s, 0, page, full, &mn, &mx) == 0;
    for (size_t p = 0; p < full && tok; p++)
        for (size_t d = 0; d < D; d++) tok &= tn[d * ld + p] == mn[p * D + d] && tx[d * ld + p] == mx[p * D + d];
    check("d-major page tables of kv head 0 = the page-major ones, transposed (extended from 1 page)", tok);
    check("d-major: page past the sequence refused", rp_shared_pages_t(s, 0, page, full + 1, &tn, &tx, &ld) == -1);
    check("page past the sequence refused", rp_shared_pages(s, 1, page, full + 1, &mn, &mx) == -1);
    check("kv head out of range refused", rp_shared_pages(s, HKV, page, 1, &mn, &mx) == -1);
    check("query head out of range refused", rp_shared_entropy(s, H) == NULL);
    rp_shared_free(s);
    free(q); free(k);
}

/* Scores recorded at capture (rp_shared_use_captured). The capture's values are built here
 * as the capture tool builds them: float64 probabilities of EVERY row t < n (prompt and
 * evaluated rows) over its visible keys, summed per column, rounded to f32; each row's
 * normalised entropy likewise. The object then serves the whole prompt's sums as
 * captured - (the evaluated rows' fp32 probabilities), clamped at 0. Bound against the
 * recomputed sums r (shared.h): the f32 storage of the captured sum c, 2^-24 c, plus each
 * side's per-term fp32 error eps_t p(t, j) (ref_row's eps_t) over the rows it computes:
 *     |served - r| <= 2^-24 c + sum_{t < n} eps_t p(t, j) + 1e-15.
 * Without the subtraction the error would be the evaluated rows' mass d (far outside).
 * Entropies of the prompt rows: the captured f32 values, bit for bit. */
enum { CN = 150, CP = 100 };
static void test_captured(const attn_params *ap)
{
    float *q = malloc(H * CN * D * sizeof *q), *k = malloc(HKV * CN * D * sizeof *k);
    for (size_t i = 0; i < H * CN * D; i++) q[i] = 1.5f * rng_normal();
    for (size_t i = 0; i < HKV * CN * D; i++) k[i] = rng_normal();
    float *cs = calloc(H * CN, sizeof *cs), *en = calloc(H * CN, sizeof *en), *zero = calloc(H * CN, sizeof *zero);
    double *c64 = calloc(H * CN, sizeof *c64), *tol = calloc(H * CN, sizeof *tol), *dec = calloc(H * CN, sizeof *dec);
    for (size_t h = 0; h < H; h++) {
        const float *qh = q + h * CN * D, *kh = k + (h / G) * CN * D;
        for (size_t t = 0; t < CN; t++) {
            size_t lo = attn_lo(t, ap->window), nv = t + 1 - lo;
            double s[CN], mx = -INFINITY, dotmax = 0, z = 0, ent = 0;
            for (size_t j = lo; j <= t; j++) {
                double dot = 0, ab = 0;
                for (size_t d = 0; d < D; d++) {
                    dot += (double)qh[t * D + d] * kh[j * D + d];
                    ab += fabs((double)qh[t * D + d] * kh[j * D + d]);
                }
                double x = (double)ap->scale * dot;
                if (ap->softcap > 0) x = ap->softcap * tanh(x / ap->softcap);
                s[j] = x;
                mx = x > mx ? x : mx;
                dotmax = ab > dotmax ? ab : dotmax;
            }
            for (size_t j = lo; j <= t; j++) z += exp(s[j] - mx);
            double lse = mx + log(z);
            double eps = (D + 1) * ldexp(1, -24) * ap->scale * dotmax + 2e-6 * (1 + fabs(lse)) + 10 * ldexp(1, -24);
            for (size_t j = lo; j <= t; j++) {
                double pj = exp(s[j] - lse);
                c64[h * CN + j] += pj;
                tol[h * CN + j] += eps * pj;
                if (t >= CP) dec[h * CN + j] += pj;
                ent += pj * (lse - s[j]);
            }
            en[h * CN + t] = (float)(nv > 1 ? ent / log((double)nv) : 0.0);
        }
        for (size_t j = 0; j < CN; j++) cs[h * CN + j] = (float)c64[h * CN + j];
    }
    rp_shared *s = rp_shared_new(q, k, H, HKV, CN, CP, D, ap, 1), *sz = rp_shared_new(q, k, H, HKV, CN, CP, D, ap, 0);
    int ok = s && sz && rp_shared_use_captured(s, cs, en) == 0 && rp_shared_use_captured(sz, zero, zero) == 0;
    int eok = ok, zok = ok, wok = ok, moved = 0;
    double worst = 0;
    for (size_t h = 0; h < H && ok; h++) {
        const float *qh = q + h * CN * D, *kh = k + (h / G) * CN * D;
        double a[CP], r[CP], w1[CP], w2[CP];
        ok &= rp_shared_colsum(s, h, 0, CP, NULL, a) == 0;
        rp_prompt_colsum(qh, kh, NULL, CP, D, ap, 0, CP, NULL, CP, r, NULL);
        for (size_t j = 0; j < CP; j++) {
            double bound = ldexp(1, -24) * c64[h * CN + j] + tol[h * CN + j] + 1e-15, e = fabs(a[j] - r[j]);
            ok &= e <= bound;
            worst = e / bound > worst ? e / bound : worst;
            moved |= dec[h * CN + j] > 1e3 * bound;     /* the subtraction matters in this case */
        }
        const double *se = rp_shared_entropy(s, h);
        for (size_t t = 0; t < CP && se; t++) eok &= se[t] == (double)en[h * CN + t];
        eok &= se != NULL;
        ok &= rp_shared_colsum(sz, h, 0, CP, NULL, a) == 0;     /* captured 0: clamped, never negative */
        for (size_t j = 0; j < CP; j++) zok &= a[j] == 0;
        /* an observation window is still computed, not taken from the capture */
        wok &= rp_shared_colsum(s, h, CP - 9, CP, NULL, w1) == 0;
        rp_prompt_colsum(qh, kh, NULL, CP, D, ap, CP - 9, CP, NULL, CP, w2, NULL);
        wok &= memcmp(w1, w2, sizeof w1) == 0;
    }
    char msg[200];
    snprintf(msg, sizeof msg, "captured (softcap %g, window %lld): prompt sums = captured - evaluated rows, within "
             "2^-24 c + sum eps_t p of the recomputed ones (worst %.3f of it)", ap->softcap, ap->window, worst);
    check(msg, ok);
    check("captured: the evaluated rows' mass is far above the bound somewhere (the subtraction is tested)", moved);
    check("captured: prompt-row entropies are the captured values", eok);
    check("captured: sums clamped at 0", zok);
    check("captured: observation-window sums still recomputed (same bits)", wok);
    check("captured: NULL refused", s && rp_shared_use_captured(s, NULL, en) == -1);
    rp_shared_free(s); rp_shared_free(sz);
    free(q); free(k); free(cs); free(en); free(zero); free(c64); free(tol); free(dec);
}

/* attn_full_rows_kt against attn_full_rows, bit for bit: outputs, lse and logits, for row
 * ranges that start and end inside key blocks, a window, and a head_dim whose key block is
 * not 64 keys. */
static void test_kt(size_t Dx, const attn_params *ap)
{
    enum { TT = 150 };
    float *q = malloc(TT * Dx * sizeof *q), *k = malloc(TT * Dx * sizeof *k), *v = malloc(TT * Dx * sizeof *v);
    for (size_t i = 0; i < TT * Dx; i++) { q[i] = rng_normal(); k[i] = rng_normal(); v[i] = rng_normal(); }
    float *kt = malloc(attn_keys_t_floats(TT, Dx) * sizeof *kt);
    attn_transpose_keys(k, TT, Dx, kt);
    size_t rg[4][2] = { { 0, TT }, { 3, 70 }, { 65, 66 }, { 100, 150 } };
    int ok = 1;
    for (size_t r = 0; r < 4; r++) {
        size_t t0 = rg[r][0], t1 = rg[r][1], nr = t1 - t0;
        float *l1 = malloc(nr * TT * sizeof *l1), *l2 = malloc(nr * TT * sizeof *l2);
        float *o1 = malloc(nr * Dx * sizeof *o1), *o2 = malloc(nr * Dx * sizeof *o2), s1[TT], s2[TT];
        attn_full_rows(q, k, v, TT, Dx, t0, t1, ap, s1, o1, l1);
        attn_full_rows_kt(q, kt, v, TT, Dx, t0, t1, ap, s2, o2, l2);
        ok &= !memcmp(l1, l2, nr * TT * sizeof *l1) && !memcmp(o1, o2, nr * Dx * sizeof *o1) &&
              !memcmp(s1, s2, nr * sizeof *s1);
        attn_full_rows(q, k, v, t1, Dx, t0, t1, ap, s1, NULL, l1);      /* keys [0, t1) only */
        attn_full_rows_kt(q, kt, v, t1, Dx, t0, t1, ap, s2, NULL, l2);
        ok &= !memcmp(l1, l2, nr * t1 * sizeof *l1) && !memcmp(s1, s2, nr * sizeof *s1);
        free(l1); free(l2); free(o1); free(o2);
    }
    char msg[128];
    snprintf(msg, sizeof msg, "attn_full_rows_kt = attn_full_rows bit for bit (D %zu, window %lld)", Dx, ap->window);
    check(msg, ok);
    free(q); free(k); free(v); free(kt);
}

/* The order rp_value_norms documents, one element at a time. */
static void vn_naive(const float *v, size_t P, size_t D, const float *wo, size_t C, size_t G, double *u)
{
    for (size_t j = 0; j < P; j++) {
        double tot = 0;
        for (size_t i = 0; i < G; i++)
            for (size_t c = 0; c < C; c++) {
                double a = 0;
                for (size_t d = 0; d < D; d++) a += (double)v[j * D + d] * (double)wo[(i * D + d) * C + c];
                tot += fabs(a);
            }
        u[j] = tot / (double)G;
    }
}

static void test_value_norms(size_t P, size_t D, size_t C, size_t G)
{
    float *v = malloc(P * D * sizeof *v), *wo = malloc(G * D * C * sizeof *wo);
    double *u = malloc(P * sizeof *u), *ref = malloc(P * sizeof *ref);
    for (size_t i = 0; i < P * D; i++) v[i] = rng_normal();
    for (size_t i = 0; i < G * D * C; i++) wo[i] = rng_normal() * 0.1f;
    check("rp_value_norms runs", rp_value_norms(v, P, D, wo, C, G, u) == 0);
    vn_naive(v, P, D, wo, C, G, ref);
    int same = 1, close = 1;
    for (size_t j = 0; j < P; j++) {
        same &= memcmp(&u[j], &ref[j], sizeof u[j]) == 0;
        long double tot = 0, mag = 0;
        for (size_t i = 0; i < G; i++)
            for (size_t c = 0; c < C; c++) {
                long double a = 0, m = 0;
                for (size_t d = 0; d < D; d++) {
                    long double x = (long double)v[j * D + d] * wo[(i * D + d) * C + c];
                    a += x; m += fabsl(x);
                }
                tot += fabsl(a); mag += m;
            }
        /* every product is exact in double; the D-term sums and the C G-term sum of |.| round */
        close &= fabsl((long double)u[j] - tot / G) <= (long double)(D + C * G) * 0x1p-52L * mag / G;
    }
    char msg[160];
    snprintf(msg, sizeof msg, "rp_value_norms = the naive order bit for bit (P %zu, D %zu, C %zu, G %zu)", P, D, C, G);
    check(msg, same);
    snprintf(msg, sizeof msg, "rp_value_norms within rounding of a long-double sum (P %zu, D %zu, C %zu, G %zu)", P, D,
             C, G);
    check(msg, close);
    free(v); free(wo); free(u); free(ref);
}

/* The shared object's copy per kv head: kv head g uses W_O rows g G D .. and its own values. */
static void test_value_norms_shared(void)
{
    size_t H = 4, Hkv = 2, G = 2, n = 23, P = 19, D = 8, C = 12;
    float *q = calloc(H * n * D, sizeof *q), *k = calloc(Hkv * n * D, sizeof *k), *v = malloc(Hkv * n * D * sizeof *v);
    float *wo = malloc(H * D * C * sizeof *wo);
    double ref[19];
    for (size_t i = 0; i < Hkv * n * D; i++) v[i] = rng_normal();
    for (size_t i = 0; i < H * D * C; i++) wo[i] = rng_normal();
    attn_params ap = { 0.25f, 0, 0 };
    rp_shared *s = rp_shared_new(q, k, H, Hkv, n, P, D, &ap, 0);
    int ok = s != NULL;
    for (size_t g = 0; g < Hkv && ok; g++) {
        const double *u = rp_shared_value_norms(s, g, v + g * n * D, wo, C);
        vn_naive(v + g * n * D, P, D, wo + g * G * D * C, C, G, ref);
        ok = u && !memcmp(u, ref, P * sizeof *u) && rp_shared_value_norms(s, g, v + g * n * D, wo, C) == u;
    }
    check("rp_shared_value_norms per kv head, kept", ok);
    rp_shared_free(s);
    free(q); free(k); free(v); free(wo);
}

int main(void)
{
    attn_params plain = { 0.25f, 0, 0 }, capped = { 0.5f, 5.0f, 0 }, window = { 0.25f, 0, 13 };
    test_colsum("plain", &plain);
    test_colsum("softcap", &capped);
    test_colsum("window", &window);
    test_object(&plain, 0);
    test_object(&window, 0);
    test_object(&plain, 1);
    test_object(&window, 1);
    test_captured(&plain);
    test_captured(&capped);
    test_captured(&window);
    test_kt(16, &plain);
    test_kt(300, &window);
    test_kt(128, &capped);
    test_value_norms(37, 13, 21, 3);       /* off every blocking */
    test_value_norms(32, 16, 64, 2);       /* whole tiles and panels */
    test_value_norms(5, 128, 1024, 4);     /* the bench shape, few rows */
    test_value_norms_shared();
    float one = 1.0f, half[2] = { 0.5f, 0.5f };
    check("entropy of one key = 0", rp_entropy_norm(&one, 1) == 0);
    check("entropy of two halves = 1", fabs(rp_entropy_norm(half, 2) - 1) <= 1e-15);
    printf("test_shared: %d/%d checks passed\n", checks - fails, checks);
    return fails ? 1 : 0;
}
