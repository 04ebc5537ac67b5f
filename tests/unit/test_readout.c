/* replay/readout.c: hand-computed cases, and a fixture mode for tests/py/test_readout_numpy.py.
 *
 *   test_readout                  hand cases (ECE bins and values, lse, top-k ties, compare)
 *   test_readout --fixture IN OUT read a read-out problem written by the Python test (format
 *                                 below), compute everything with the C read-out and write
 *                                 the results to OUT; the Python test compares with numpy.
 *
 * C d_model, V vocab, L layers, HD = H*D, N positions.
 * Fixture IN (little-endian): "KVRO" u32 version=1; u64 N C V L HD; i32 rmsnorm has_norm_b
 * has_b_u layer; f64 eps softcap; f32 norm_w[C] (norm_b[C]) w_u[V][C] (b_u[V])
 * w_o[L][HD][C] h[N][C] dO[N][HD]; i32 y[N].
 * OUT: "KVRR" u32 1; f32 logits_full[N][V] logits_comp[N][V] h2[N][C]; per position
 * f64 lse_full lse_comp kl nll_full nll_comp conf_full conf_comp; i32 top1 correct_full
 * correct_comp; i32 ids[8]; f32 vals[8]; then f64 ece_full ece_comp; then the blas string
 * length u32 and bytes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "readout.h"

static int fails = 0, checks = 0;

static void check_close(const char *what, double got, double want, double tol)
{
    checks++;
    if (!(got == want || fabs(got - want) <= tol)) {
        fails++;
        printf("FAIL %s: got %.17g want %.17g (|err| %.3g > tol %.3g)\n", what, got, want, fabs(got - want), tol);
    }
}

static void check_true(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

static void hand_cases(void)
{
    /* ECE: bins [b/15, (b+1)/15); 0.95 (bin 14) correct, 0.95 wrong, 0.5 (bin 7) correct:
     * bin 14: |1 - 1.9| = 0.9, bin 7: |1 - 0.5| = 0.5 -> ECE = 1.4 / 3 */
    ece_acc e;
    memset(&e, 0, sizeof e);
    check_close("empty ECE = 0", ece_value(&e), 0, 0);
    ece_add(&e, 0.95, 1); ece_add(&e, 0.95, 0); ece_add(&e, 0.5, 1);
    check_close("ECE hand case", ece_value(&e), 1.4 / 3, 1e-15);
    check_close("ECE bin 14 count", e.count[14], 2, 0);
    check_close("ECE bin 7 count", e.count[7], 1, 0);
    /* perfectly calibrated: conf 0.75 with 3 of 4 correct -> 0 */
    memset(&e, 0, sizeof e);
    for (int i = 0; i < 4; i++) ece_add(&e, 0.75, i < 3);
    check_close("calibrated ECE = 0", ece_value(&e), 0, 1e-15);
    /* edges: b/15 goes to bin b; 1.0 to the last bin; 0 to bin 0; NaN not counted */
    memset(&e, 0, sizeof e);
    for (int b = 0; b < ECE_BINS; b++) ece_add(&e, b / 15.0, 1);
    int edges_ok = 1;
    for (int b = 0; b < ECE_BINS; b++) if (e.count[b] != 1) edges_ok = 0;
    check_true("ECE edge b/15 lands in bin b", edges_ok);
    ece_add(&e, 1.0, 1);
    check_close("ECE conf 1 -> bin 14", e.count[14], 2, 0);
    ece_add(&e, nextafter(1 / 15.0, 0), 0);
    check_close("ECE just below 1/15 -> bin 0", e.count[0], 2, 0);
    ece_add(&e, NAN, 1);
    double n = 0;
    for (int b = 0; b < ECE_BINS; b++) n += e.count[b];
    check_close("ECE NaN not counted", n, 17, 0);

    /* lse */
    float x[4] = {0, 0, 0, 0};
    check_close("lse of 4 zeros = log 4", readout_lse(x, 4), log(4), 1e-15);
    float big[2] = {1000, 1000};
    check_close("lse large logits", readout_lse(big, 2), 1000 + log(2), 1e-12);
    float ninf[2] = {-INFINITY, -INFINITY};
    check_true("lse all -inf = -inf", isinf(readout_lse(ninf, 2)) && readout_lse(ninf, 2) < 0);
    float nanr[2] = {0, NAN};
    check_true("lse with NaN = NaN", isnan(readout_lse(nanr, 2)));

    /* top-k: descending, ties by lower id, k > V padded */
    float z[6] = {1, 3, 3, -1, 5, 3};
    int32_t ids[8];
    float vals[8];
    readout_topk(z, 6, 4, ids, vals);
    check_true("topk ids 4 1 2 5", ids[0] == 4 && ids[1] == 1 && ids[2] == 2 && ids[3] == 5);
    check_true("topk vals", vals[0] == 5 && vals[1] == 3 && vals[3] == 3);
    readout_topk(z, 6, 8, ids, vals);
    check_true("topk k > V: tail id -1, -inf", ids[5] == 3 && ids[6] == -1 && isinf(vals[7]));

    /* compare: identical rows -> KL exactly 0, top1 agree; two-token hand case */
    float lf[3] = {log(0.5f), log(0.25f), log(0.25f)}, lc[3] = {log(0.25f), log(0.5f), log(0.25f)};
    readout_cmp c;
    memset(&c, 0, sizeof c);
    readout_compare(lf, lf, 3, 0, &c);
    check_close("KL(p||p) = 0 exactly", c.logit_kl, 0, 0);
    check_true("top1 agree on identical rows", c.top1_agree == 1);
    readout_compare(lf, lc, 3, 1, &c);
    /* KL = .5 log(.5/.25) + .25 log(.25/.5) + 0 = .25 log 2 */
    check_close("KL hand case", c.logit_kl, 0.25 * log(2), 1e-7);
    check_close("nll_full = -log .25", c.nll_full, log(4), 1e-7);
    check_close("nll_comp = -log .5", c.nll_comp, log(2), 1e-7);
    check_close("conf_full = .5", c.conf_full, 0.5, 1e-7);
    check_true("top1 disagree, correct comp only", !c.top1_agree && !c.correct_full && c.correct_comp);
    c.nll_full = 123;
    readout_compare(lf, lc, 3, -1, &c);
    check_close("y < 0 leaves nll untouched", c.nll_full, 123, 0);

    /* readout_logits on a tiny hand model: C=2, V=2, rmsnorm, w=1, eps=0:
     * h=(3,4): rms = sqrt(12.5); x = h / rms; W_U = I -> logits = x */
    float nw[2] = {1, 1}, wu[4] = {1, 0, 0, 1}, wo[4] = {1, 0, 0, 1};
    readout r = {2, 2, 1, 2, 1, 0, 0, nw, NULL, wu, NULL, wo};
    float h[2] = {3, 4}, lg[2];
    readout_logits(&r, h, 1, lg);
    check_close("rmsnorm logits[0]", lg[0], 3 / sqrt(12.5), 1e-6);
    check_close("rmsnorm logits[1]", lg[1], 4 / sqrt(12.5), 1e-6);
    float dO[2] = {1, -1};
    readout_add_delta(&r, 0, dO, 1, h);
    check_true("add_delta with W_O = I", h[0] == 4 && h[1] == 3);
    /* layernorm of (1, 3): mean 2, var 1 -> (-1, 1); softcap 0.5: 0.5 tanh(+-2) */
    readout r2 = r;
    r2.rmsnorm = 0; r2.final_softcap = 0.5;
    float h2[2] = {1, 3};
    readout_logits(&r2, h2, 1, lg);
    check_close("layernorm + softcap", lg[1], 0.5 * tanh(2), 1e-6);
    check_true("blas info names a BLAS", strstr(rs_blas_info(), "BLAS") != NULL);
}

/* ---- fixture mode --------------------------------------------------------------------- */

static int rd(FILE *f, void *p, size_t sz, size_t n) { return fread(p, sz, n, f) == n; }

static int fixture(const char *inp, const char *outp)
{
    FILE *f = fopen(inp, "rb");
    if (!f) { fprintf(stderr, "%s: cannot open\n", inp); return 2; }
    char magic[4]; unsigned ver; unsigned long long dims[5]; int flags[4]; double eps, cap;
    if (!rd(f, magic, 1, 4) || memcmp(magic, "KVRO", 4) || !rd(f, &ver, 4, 1) || ver != 1 ||
        !rd(f, dims, 8, 5) || !rd(f, flags, 4, 4) || !rd(f, &eps, 8, 1) || !rd(f, &cap, 8, 1)) {
        fprintf(stderr, "%s: not a KVRO version 1 fixture (regenerate with tests/py/test_readout_numpy.py)\n", inp);
        fclose(f);
        return 2;
    }
    size_t N = dims[0], C = dims[1], V = dims[2], L = dims[3], HD = dims[4];
    readout r = {C, V, L, HD, flags[0], eps, cap, NULL, NULL, NULL, NULL, NULL};
    r.norm_w = malloc(C * 4);
    if (flags[1]) r.norm_b = malloc(C * 4);
    r.w_u = malloc(V * C * 4);
    if (flags[2]) r.b_u = malloc(V * 4);
    r.w_o = malloc(L * HD * C * 4);
    float *h = malloc(N * C * 4), *dO = malloc(N * HD * 4), *lf = malloc(N * V * 4), *lc = malloc(N * V * 4);
    int32_t *y = malloc(N * 4);
    int ok = rd(f, r.norm_w, 4, C) && (!flags[1] || rd(f, r.norm_b, 4, C)) && rd(f, r.w_u, 4, V * C) &&
             (!flags[2] || rd(f, r.b_u, 4, V)) && rd(f, r.w_o, 4, L * HD * C) && rd(f, h, 4, N * C) &&
             rd(f, dO, 4, N * HD) && rd(f, y, 4, N);
    fclose(f);
    if (!ok) { fprintf(stderr, "%s: truncated fixture\n", inp); return 2; }

    readout_logits(&r, h, N, lf);
    readout_add_delta(&r, (size_t)flags[3], dO, N, h);
    readout_logits(&r, h, N, lc);

    FILE *o = fopen(outp, "wb");
    if (!o) { fprintf(stderr, "%s: cannot write\n", outp); return 2; }
    unsigned one = 1;
    fwrite("KVRR", 1, 4, o); fwrite(&one, 4, 1, o);
    fwrite(lf, 4, N * V, o); fwrite(lc, 4, N * V, o); fwrite(h, 4, N * C, o);
    ece_acc ef, ec;
    memset(&ef, 0, sizeof ef); memset(&ec, 0, sizeof ec);
    for (size_t i = 0; i < N; i++) {
        readout_cmp c;
        memset(&c, 0, sizeof c);
        c.nll_full = c.nll_comp = NAN;
        readout_compare(lf + i * V, lc + i * V, V, y[i], &c);
        double d[7] = {readout_lse(lf + i * V, V), readout_lse(lc + i * V, V), c.logit_kl,
                       c.nll_full, c.nll_comp, c.conf_full, c.conf_comp};
        int32_t k[3] = {c.top1_agree, c.correct_full, c.correct_comp};
        int32_t ids[8]; float vals[8];
        readout_topk(lf + i * V, V, 8, ids, vals);
        fwrite(d, 8, 7, o); fwrite(k, 4, 3, o); fwrite(ids, 4, 8, o); fwrite(vals, 4, 8, o);
        if (y[i] >= 0) { ece_add(&ef, c.conf_full, c.correct_full); ece_add(&ec, c.conf_comp, c.correct_comp); }
    }
    double ev[2] = {ece_value(&ef), ece_value(&ec)};
    fwrite(ev, 8, 2, o);
    const char *bi = rs_blas_info();
    unsigned bl = (unsigned)strlen(bi);
    fwrite(&bl, 4, 1, o); fwrite(bi, 1, bl, o);
    if (fclose(o) != 0) { fprintf(stderr, "%s: write failed\n", outp); return 2; }
    free(r.norm_w); free(r.norm_b); free(r.w_u); free(r.b_u); free(r.w_o);
    free(h); free(dO); free(lf); free(lc); free(y);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "--fixture")) return fixture(argv[2], argv[3]);
    if (argc != 1) { fprintf(stderr, "usage: test_readout [--fixture IN OUT]\n"); return 2; }
    hand_cases();
    printf("%s; %d checks, %d failed\n", rs_blas_info(), checks, fails);
    return fails ? 1 : 0;
}
