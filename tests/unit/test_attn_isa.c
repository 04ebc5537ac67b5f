/* replay/attn.c: every vector path (generic, AVX2, AVX-512F) gives the same bits.
 *
 * One workload of random inputs (attn_full_rows and its _kt/_heads forms, attn_entries,
 * attn_rows_given, attn_rows_cut(_heads), attn_pv_weighted, attn_exp_shift, attn_probs_row,
 * attn_exp_sub_f64(d), attn_div_sumsq_f64, attn_panel_dot(_rows), attn_gram_acc; T, D and entry
 * counts on and off every vector width and block size, causal, windowed, soft-capped,
 * biased, masked and special-value cases) runs once under each attn_set_isa_limit the CPU
 * allows; every output is recorded, and the records of each path must equal the generic
 * path's byte for byte (memcmp). Each path's logits must also equal attn_logit (+ bias) bit
 * for bit, as test_attn checks for the default path. Paths the CPU (or the build) lacks are
 * skipped with a line saying so; with only one path the test exits 77 (skipped).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "rng_testhelp.h"

static int fails = 0, checks = 0;

static void check_true(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

static float *randn(size_t n, float sd)
{
    float *x = calloc(n ? n : 1, sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = sd * rng_normal();
    return x;
}

/* The record of one path: named sections of output bytes, in call order. */
typedef struct section { char name[160]; size_t off, len; } section;
typedef struct record { unsigned char *buf; size_t len, cap; section *sec; size_t nsec, seccap; } record;

static record *cur;                     /* the record being written */

static void put(const char *name, const void *p, size_t len)
{
    record *r = cur;
    if (r->len + len > r->cap) {
        r->cap = (r->len + len) * 2 + 4096;
        r->buf = realloc(r->buf, r->cap);
    }
    if (r->nsec == r->seccap) {
        r->seccap = r->seccap * 2 + 64;
        r->sec = realloc(r->sec, r->seccap * sizeof *r->sec);
    }
    if (!r->buf || !r->sec) { fprintf(stderr, "test_attn_isa: out of memory\n"); exit(2); }
    section *s = &r->sec[r->nsec++];
    snprintf(s->name, sizeof s->name, "%s", name);
    s->off = r->len;
    s->len = len;
    if (len) memcpy(r->buf + r->len, p, len);
    r->len += len;
}

/* A double sum recorded with its NaNs made one NaN: a lane that adds NaNs of both signs (an
 * input NaN and an Inf - Inf) ends with the sign of whichever operand the compiler put
 * first in the commutative add, on any path (the generic and AVX2 paths of
 * attn_div_sumsq_f64 already differ so); the elements themselves are compared bit for bit. */
static void put_sum(const char *name, double x)
{
    if (isnan(x)) x = NAN;
    put(name, &x, sizeof x);
}

static int logit_bitwise_ok = 1;        /* this path's logits == attn_logit (+ bias) */

static void w_full(size_t T, size_t D, const attn_params *p, float qsd, const char *tag)
{
    char nm[160];
    float *q = randn(T * D, qsd), *k = randn(T * D, 1), *v = randn(T * D, 1);
    float *lse = malloc(T * sizeof *lse), *o = malloc(T * D * sizeof *o), *lg = malloc(T * T * sizeof *lg);
    attn_full_rows(q, k, v, T, D, 0, T, p, lse, o, lg);
    snprintf(nm, sizeof nm, "full %s T=%zu D=%zu", tag, T, D);
    put(nm, lse, T * sizeof *lse);
    put(nm, o, T * D * sizeof *o);
    put(nm, lg, T * T * sizeof *lg);
    for (size_t t = 0; t < T; t++)
        for (size_t j = attn_lo(t, p->window); j <= t; j++)
            if (lg[t * T + j] != attn_logit(q + t * D, k + j * D, D, p)) logit_bitwise_ok = 0;
    /* rows in two calls, logits only, lse only */
    size_t cut = T / 3;
    attn_full_rows(q, k, v, T, D, cut, T, p, lse, o, lg);
    snprintf(nm, sizeof nm, "full split %s T=%zu D=%zu", tag, T, D);
    put(nm, lse, (T - cut) * sizeof *lse);
    put(nm, o, (T - cut) * D * sizeof *o);
    attn_full_rows(q, k, v, T, D, 0, T, p, NULL, NULL, lg);
    snprintf(nm, sizeof nm, "full logits-only %s T=%zu D=%zu", tag, T, D);
    put(nm, lg, T * T * sizeof *lg);
    /* pre-transposed keys */
    float *kt = malloc(attn_keys_t_floats(T, D) * sizeof *kt);
    attn_transpose_keys(k, T, D, kt);
    attn_full_rows_kt(q, kt, v, T, D, 0, T, p, lse, o, lg);
    snprintf(nm, sizeof nm, "full_kt %s T=%zu D=%zu", tag, T, D);
    put(nm, lse, T * sizeof *lse);
    put(nm, o, T * D * sizeof *o);
    put(nm, lg, T * T * sizeof *lg);
    free(kt);
    free(q); free(k); free(v); free(lse); free(o); free(lg);
}

static void w_heads(void)
{
    size_t T = 150, D = 80, G = 3, lhs = T + 1;
    attn_params p = {1.0f / sqrtf((float)D), 0, 40};
    float *q = randn(G * T * D, 2), *k = randn(T * D, 1), *v = randn(T * D, 1);
    float *kt = malloc(attn_keys_t_floats(T, D) * sizeof *kt);
    float *lse = malloc(G * lhs * sizeof *lse), *o = malloc(G * lhs * D * sizeof *o), *lg = malloc(G * lhs * T * sizeof *lg);
    memset(lse, 0, G * lhs * sizeof *lse);
    memset(o, 0, G * lhs * D * sizeof *o);
    memset(lg, 0, G * lhs * T * sizeof *lg);
    attn_transpose_keys(k, T, D, kt);
    attn_full_rows_heads(q, T * D, G, kt, v, T, D, 10, T, &p, lhs, lse, o, lg);
    put("full_heads", lse, G * lhs * sizeof *lse);
    put("full_heads", o, G * lhs * D * sizeof *o);
    put("full_heads", lg, G * lhs * T * sizeof *lg);
    free(q); free(k); free(v); free(kt); free(lse); free(o); free(lg);
}

static void w_entries(size_t n, size_t D, int with_idx, int with_bias, float capv)
{
    char nm[160];
    size_t N = n + 20;
    attn_params p = {1.0f / sqrtf((float)D), capv, 0};
    float *q = randn(D, 2), *k = randn(N * D, 1), *v = randn(N * D, 1), *bias = randn(n, 1);
    size_t *idx = malloc((n ? n : 1) * sizeof *idx);
    for (size_t e = 0; e < n; e++) idx[e] = (size_t)(rng_u64() % N);
    if (n > 3) bias[2] = -INFINITY;                 /* a masked entry */
    float lse, *o = malloc(D * sizeof *o), *lg = malloc((n ? n : 1) * sizeof *lg);
    attn_entries(q, k, v, with_idx ? idx : NULL, with_bias ? bias : NULL, n, D, &p, &lse, o, lg);
    snprintf(nm, sizeof nm, "entries n=%zu D=%zu idx=%d bias=%d cap=%g", n, D, with_idx, with_bias, capv);
    put(nm, &lse, sizeof lse);
    put(nm, o, D * sizeof *o);
    put(nm, lg, n * sizeof *lg);
    for (size_t e = 0; e < n; e++) {
        float want = attn_logit(q, k + (with_idx ? idx[e] : e) * D, D, &p);
        if (with_bias) want += bias[e];
        if (memcmp(&want, &lg[e], sizeof want)) logit_bitwise_ok = 0;
    }
    free(q); free(k); free(v); free(bias); free(idx); free(o); free(lg);
}

static void w_rows_given(size_t D)
{
    char nm[160];
    size_t nr = 90, m = 230;
    float *z = randn(nr * m, 3), *v = randn(m * D, 1);
    size_t nvis[90];
    for (size_t r = 0; r < nr; r++) nvis[r] = r == 5 ? 0 : r < 60 ? 140 + r : (size_t)(rng_u64() % (m + 1));
    z[7 * m + 3] = -INFINITY;
    float lse[90], *o = malloc(nr * D * sizeof *o);
    attn_rows_given(z, m, nvis, nr, v, D, lse, o);
    snprintf(nm, sizeof nm, "rows_given D=%zu", D);
    put(nm, lse, sizeof lse);
    put(nm, o, nr * D * sizeof *o);
    attn_rows_given(z, m, nvis, nr, v, D, lse, NULL);
    put(nm, lse, sizeof lse);
    free(z); free(v); free(o);
}

static void w_rows_cut(size_t D, size_t G, float capv)
{
    char nm[160];
    size_t nr = 70, N = 300, lhs = nr + 1;
    attn_params p = {1.0f / sqrtf((float)D), capv, 0};
    float *q = randn(G * nr * D, 1.5f), *ka = randn(N * D, 1), *kb = randn(N * D, 1);
    float *va = randn(N * D, 1), *vb = randn(N * D, 1);
    size_t nvis[70], kc[70], vc[70];
    for (size_t r = 0; r < nr; r++) {
        nvis[r] = r == 3 ? 0 : r < 40 ? 100 + 2 * r : (size_t)(rng_u64() % (N + 1));
        kc[r] = r % 5 == 0 ? 0 : r % 7 == 0 ? nvis[r] : (size_t)(rng_u64() % (nvis[r] + 1));
        vc[r] = r % 6 == 0 ? nvis[r] : r % 4 == 0 ? 0 : (size_t)(rng_u64() % (nvis[r] + 1));
    }
    attn_cut_src src = {ka, kb, va, vb, kc, vc};
    float *lse = calloc(G * lhs, sizeof *lse), *o = calloc(G * lhs * D, sizeof *o), *lg = calloc(G * lhs * N, sizeof *lg);
    int rc = G == 1 ? attn_rows_cut(q, nr, D, &p, &src, nvis, N, lse, o, lg)
                    : attn_rows_cut_heads(q, nr * D, G, nr, D, &p, &src, nvis, N, lhs, lse, o, lg);
    snprintf(nm, sizeof nm, "rows_cut D=%zu G=%zu cap=%g", D, G, capv);
    put(nm, &rc, sizeof rc);
    put(nm, lse, G * lhs * sizeof *lse);
    put(nm, o, G * lhs * D * sizeof *o);
    for (size_t h = 0; h < G; h++)
        for (size_t r = 0; r < nr; r++) {
            put(nm, lg + (h * lhs + r) * N, nvis[r] * sizeof *lg);
            for (size_t e = 0; e < nvis[r]; e++)
                if (lg[(h * lhs + r) * N + e] != attn_logit(q + (h * nr + r) * D, (e < kc[r] ? ka : kb) + e * D, D, &p))
                    logit_bitwise_ok = 0;
        }
    free(q); free(ka); free(kb); free(va); free(vb); free(lse); free(o); free(lg);
}

static void w_pv_weighted(size_t nr, size_t n, size_t D, int with_idx)
{
    char nm[160];
    size_t N = n + 10, ldw = n + 3;
    float *w = randn(nr * ldw, 0.3f), *v = randn(N * D, 1), *o = randn(nr * D, 1);
    size_t *idx = malloc((n ? n : 1) * sizeof *idx);
    for (size_t e = 0; e < n; e++) idx[e] = (size_t)(rng_u64() % N);
    attn_pv_weighted(w, ldw, nr, n, v, with_idx ? idx : NULL, D, o);
    snprintf(nm, sizeof nm, "pv_weighted nr=%zu n=%zu D=%zu idx=%d", nr, n, D, with_idx);
    put(nm, o, nr * D * sizeof *o);
    free(w); free(v); free(o); free(idx);
}

/* softmax pieces on rows of n entries with special values mixed in */
static void w_rowfns(size_t n, int special)
{
    char nm[160];
    float *s = randn(n, 4), *pe = malloc((n ? n : 1) * sizeof *pe);
    double *out = malloc((n ? n : 1) * sizeof *out), *xd = malloc((n ? n : 1) * sizeof *xd);
    if (special == 2)                       /* exp(s - m) from 1 down to 1e-13: the double sums round */
        for (size_t e = 0; e < n; e++) s[e] = (float)(-30 * rng_unif());
    if (special == 3)                       /* one 1 and tiny terms: l = 1 + O(1e-6), log l keeps the sum's last bits */
        for (size_t e = 0; e < n; e++) s[e] = e == 0 ? 0.0f : (float)(-20 - 10 * rng_unif());
    if (special == 1 && n > 0) {
        static const float sv[] = {-INFINITY, -100.0f, -87.5f, 0.0f, -0.0f, 1e-30f, -1e-30f, -700.0f, -800.0f, NAN};
        for (size_t e = 0; e < n; e += 3) s[e] = sv[rng_u64() % (sizeof sv / sizeof *sv)];
    }
    float m = -INFINITY;
    for (size_t e = 0; e < n; e++) if (s[e] > m) m = s[e];
    if (m == -INFINITY) m = 0;
    attn_exp_shift(s, n, m, pe);
    snprintf(nm, sizeof nm, "exp_shift n=%zu special=%d", n, special);
    put(nm, pe, n * sizeof *pe);
    for (size_t e = 0; e < n; e++) pe[e] = 42.0f;      /* p is left unset when a logit is NaN */
    double lp = attn_probs_row(s, n, pe);
    snprintf(nm, sizeof nm, "probs_row n=%zu special=%d", n, special);
    put(nm, &lp, sizeof lp);
    put(nm, pe, n * sizeof *pe);
    const double cs[] = {(double)m, (double)m + 0.37, -INFINITY, 3.0};
    for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) {
        double sum = attn_exp_sub_f64(s, n, cs[i], out);
        snprintf(nm, sizeof nm, "exp_sub_f64 n=%zu special=%d c=%g", n, special, cs[i]);
        put_sum(nm, sum);
        put(nm, out, n * sizeof *out);
        for (size_t e = 0; e < n; e++) xd[e] = (double)s[e] * 1.7 - 3.0;
        sum = attn_exp_sub_f64d(xd, n, cs[i], xd);            /* in place */
        snprintf(nm, sizeof nm, "exp_sub_f64d n=%zu special=%d c=%g", n, special, cs[i]);
        put_sum(nm, sum);
        put(nm, xd, n * sizeof *xd);
        sum = attn_div_sumsq_f64(xd, n, 1.3);
        snprintf(nm, sizeof nm, "div_sumsq n=%zu special=%d c=%g", n, special, cs[i]);
        put_sum(nm, sum);
        put(nm, xd, n * sizeof *xd);
    }
    free(s); free(pe); free(out); free(xd);
}

static void w_panel_gram(size_t D)
{
    char nm[160];
    double *x = malloc(ATTN_PANEL_ROWS * D * sizeof *x), *panel = malloc(D * ATTN_PANEL_COLS * sizeof *panel);
    double dot[ATTN_PANEL_ROWS * ATTN_PANEL_COLS];
    for (size_t i = 0; i < ATTN_PANEL_ROWS * D; i++) x[i] = rng_normal();
    for (size_t i = 0; i < D * ATTN_PANEL_COLS; i++) panel[i] = rng_normal();
    attn_panel_dot(x, D, panel, dot);
    snprintf(nm, sizeof nm, "panel_dot D=%zu", D);
    put(nm, dot, sizeof dot);
    /* attn_panel_dot_rows over 12 rows (one eight-row kernel call and a four-row one where
     * the CPU has AVX-512F): the bits of three attn_panel_dot calls on this path, and the
     * same record on every path */
    enum { NR = 3 * ATTN_PANEL_ROWS };
    double *xr12 = malloc(NR * D * sizeof *xr12), rows[NR * ATTN_PANEL_COLS], one[NR * ATTN_PANEL_COLS];
    for (size_t i = 0; i < NR * D; i++) xr12[i] = rng_normal();
    attn_panel_dot_rows(xr12, NR, D, panel, rows);
    for (size_t r = 0; r < NR; r += ATTN_PANEL_ROWS) attn_panel_dot(xr12 + r * D, D, panel, one + r * ATTN_PANEL_COLS);
    snprintf(nm, sizeof nm, "panel_dot_rows D=%zu == attn_panel_dot per four rows", D);
    check_true(nm, !memcmp(rows, one, sizeof rows));
    snprintf(nm, sizeof nm, "panel_dot_rows D=%zu", D);
    put(nm, rows, sizeof rows);
    free(xr12);
    size_t n = 130;
    float *xr = randn(n * D, 1);
    double *M = calloc(D * D, sizeof *M);
    int rc = attn_gram_acc(xr, n, D, M);
    snprintf(nm, sizeof nm, "gram D=%zu", D);
    put(nm, &rc, sizeof rc);
    put(nm, M, D * D * sizeof *M);
    free(x); free(panel); free(xr); free(M);
}

static void workload(void)
{
    rng_state = 0x243f6a8885a308d3ull;      /* the same inputs on every path */
    logit_bitwise_ok = 1;
    const size_t Ds[] = {64, 96, 128, 80, 8, 40, 520};      /* 520: key blocks of 24 (16 + 8 lanes) */
    const size_t Ts[] = {1, 5, 17, 64, 100, 203};
    for (size_t a = 0; a < sizeof Ds / sizeof *Ds; a++)
        for (size_t b = 0; b < sizeof Ts / sizeof *Ts; b++) {
            size_t D = Ds[a], T = Ts[b];
            if (D == 520 && T > 100) continue;
            float sc = 1.0f / sqrtf((float)D);
            attn_params plain = {sc, 0, 0}, capped = {sc, 5.0f, 0}, w1 = {sc, 0, 1}, w7 = {sc, 0, 7};
            attn_params wt = {sc, 0, (long long)(T / 3 + 1)}, both = {sc, 20.0f, 70};
            w_full(T, D, &plain, 2.0f, "plain");
            w_full(T, D, &capped, 3.0f, "softcap5");
            w_full(T, D, &w1, 2.0f, "window1");
            w_full(T, D, &w7, 2.0f, "window7");
            w_full(T, D, &wt, 2.0f, "windowT/3");
            w_full(T, D, &both, 2.0f, "cap20+window70");
            if (T >= 64) w_full(T, D, &plain, 30.0f, "wide");      /* logits over ~[-100, 100] */
        }
    {                                       /* a NaN key: NaN logits in some rows */
        size_t T = 100, D = 64;
        attn_params p = {0.125f, 0, 0};
        float *q = randn(T * D, 1), *k = randn(T * D, 1), *v = randn(T * D, 1);
        float lse[100], *o = malloc(T * D * sizeof *o);
        k[70 * D + 5] = NAN;
        attn_full_rows(q, k, v, T, D, 0, T, &p, lse, o, NULL);
        put("full NaN key", lse, sizeof lse);
        put("full NaN key", o, T * D * sizeof *o);
        free(q); free(k); free(v); free(o);
    }
    w_heads();
    const size_t ns[] = {0, 1, 7, 8, 15, 16, 17, 33, 64, 65, 200};
    const size_t eDs[] = {64, 80, 96, 128, 13};
    for (size_t a = 0; a < sizeof eDs / sizeof *eDs; a++)
        for (size_t b = 0; b < sizeof ns / sizeof *ns; b++)
            for (int mode = 0; mode < 4; mode++)
                w_entries(ns[b], eDs[a], mode & 1, mode >> 1 & 1, mode == 3 ? 5.0f : 0.0f);
    const size_t gDs[] = {1, 16, 64, 80, 96, 128, 300};
    for (size_t a = 0; a < sizeof gDs / sizeof *gDs; a++) w_rows_given(gDs[a]);
    const size_t cDs[] = {8, 64, 80, 96, 128, 256};
    for (size_t a = 0; a < sizeof cDs / sizeof *cDs; a++) {
        w_rows_cut(cDs[a], 1, 0);
        w_rows_cut(cDs[a], 1, 5.0f);
        w_rows_cut(cDs[a], 3, 0);
    }
    const size_t pDs[] = {1, 8, 16, 40, 64, 80, 96, 128, 200};
    for (size_t a = 0; a < sizeof pDs / sizeof *pDs; a++) {
        w_pv_weighted(7, 150, pDs[a], 0);
        w_pv_weighted(5, 70, pDs[a], 1);
    }
    for (size_t n = 0; n <= 70; n++) w_rowfns(n, (int)(n % 2));
    w_rowfns(1000, 0);
    w_rowfns(1003, 1);
    for (size_t n = 4090; n < 4100; n++) w_rowfns(n, 2);
    for (size_t n = 100; n < 4100; n += 333) w_rowfns(n, 3);
    const size_t gramD[] = {8, 13, 64, 96};
    for (size_t a = 0; a < sizeof gramD / sizeof *gramD; a++) w_panel_gram(gramD[a]);
}

static const char *isa_name(int isa)
{
    return isa == ATTN_ISA_AVX512 ? "avx512" : isa == ATTN_ISA_AVX2 ? "avx2" : "generic";
}

int main(void)
{
    record rec[3];
    int have[3] = {0, 0, 0};
    memset(rec, 0, sizeof rec);
    for (int lim = ATTN_ISA_GENERIC; lim <= ATTN_ISA_AVX512; lim++) {
        attn_set_isa_limit(lim);
        if (attn_isa() != lim) {
            printf("path %s: skipped (this CPU or build has no %s path; the best is %s)\n", isa_name(lim),
                   isa_name(lim), isa_name(attn_isa()));
            continue;
        }
        have[lim] = 1;
        cur = &rec[lim];
        workload();
        char what[128];
        snprintf(what, sizeof what, "path %s: logits == attn_logit (+ bias) bit for bit", isa_name(lim));
        check_true(what, logit_bitwise_ok);
        printf("path %s: %zu sections, %zu bytes of output\n", isa_name(lim), rec[lim].nsec, rec[lim].len);
    }
    attn_set_isa_limit(ATTN_ISA_AVX512);
    for (int lim = ATTN_ISA_AVX2; lim <= ATTN_ISA_AVX512; lim++) {
        if (!have[lim]) continue;
        const record *a = &rec[ATTN_ISA_GENERIC], *b = &rec[lim];
        size_t bad = 0;
        const char *first = NULL;
        int layout = a->nsec == b->nsec && a->len == b->len;
        for (size_t i = 0; layout && i < a->nsec; i++) {
            if (a->sec[i].len != b->sec[i].len || strcmp(a->sec[i].name, b->sec[i].name)) { layout = 0; break; }
            if (memcmp(a->buf + a->sec[i].off, b->buf + b->sec[i].off, a->sec[i].len)) {
                if (!first) first = a->sec[i].name;
                bad++;
                if (bad <= 3) printf("  %s differs from generic: %s\n", isa_name(lim), a->sec[i].name);
            }
        }
        char what[320];
        snprintf(what, sizeof what, "path %s: the same outputs as generic, byte for byte (%zu of %zu sections differ%s%s)",
                 isa_name(lim), bad, a->nsec, first ? "; first: " : "", first ? first : "");
        check_true(what, layout && bad == 0);
    }
    int npaths = have[0] + have[1] + have[2];
    for (int i = 0; i < 3; i++) { free(rec[i].buf); free(rec[i].sec); }
    printf("%d checks, %d failed\n", checks, fails);
    if (fails) return 1;
    if (npaths < 2) { printf("only the generic path runs here: nothing to compare\n"); return 77; }
    return 0;
}
