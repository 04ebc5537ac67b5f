/* replay/verify.c on small traces written with the C writer.
 *
 * S sequences, T tokens, L layers, H q-heads, Hkv kv-heads, D head_dim, C d_model, V vocab.
 * The "model" computes attention and logits in double from unrounded float inputs; the
 * trace stores them in f16, as a capture does. Then:
 *  - verify_attn_out and verify_readout pass with the default tolerances;
 *  - one attn_out element moved by 0.05 and one ref_lse moved by 0.05 make them fail, and
 *    the worst location reported is exactly the perturbed one;
 *  - attn_stats_compute matches the same statistics computed with the double reference
 *    kernel (1e-5), a uniform head has entropy == uniform entropy, a planted sink head
 *    has sink mass > 0.99 and is reported as the layer's most specialised head.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "kvtrace.h"
#include "attn_stats.h"
#include "verify.h"

enum { S = 2, T = 24, L = 2, H = 4, HKV = 2, D = 8, C = 16, V = 32 };
static const int32_t SEQ_LEN[S] = {24, 17};

static int fails = 0, checks = 0;
static void check_true(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}
static void check_close(const char *what, double got, double want, double tol)
{
    checks++;
    if (!(fabs(got - want) <= tol)) {
        fails++;
        printf("FAIL %s: got %.9g want %.9g (tol %.3g)\n", what, got, want, tol);
    }
}

static unsigned long long rs = 12345;
static float rnd(void)
{
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rs >> 11) / 9007199254740992.0 * 2 - 1);
}

/* the data of the fake model: [S][L][H|HKV][T][D] */
static float q[S][L][H][T][D], k[S][L][HKV][T][D], v[S][L][HKV][T][D], ao[S][L][H][T][D];
static float hid[S][T][C], nw[C], wu[V][C], wo[L][H * D][C], rlse[S][T], rtop[S][T][8];
static int32_t rids[S][T][8], tokens[S][T];
static const attn_params P = {0.5f, 0, 0};

static void make_data(void)
{
    for (size_t s = 0; s < S; s++)
        for (size_t l = 0; l < L; l++) {
            for (size_t h = 0; h < H; h++)
                for (size_t t = 0; t < T; t++)
                    for (size_t d = 0; d < D; d++) q[s][l][h][t][d] = 2 * rnd();
            for (size_t g = 0; g < HKV; g++)
                for (size_t t = 0; t < T; t++)
                    for (size_t d = 0; d < D; d++) { k[s][l][g][t][d] = 2 * rnd(); v[s][l][g][t][d] = rnd(); }
            /* layer 0, head 0: q = 0 -> uniform attention */
            memset(q[s][0][0], 0, sizeof q[s][0][0]);
            /* layer 0, kv head 1 (heads 2, 3): k_0 = u, other keys 0, head 2's q = 20 u -> sink */
            for (size_t t = 0; t < T; t++)
                for (size_t d = 0; d < D; d++) {
                    k[s][0][1][t][d] = t == 0 ? (d == 0 ? 1.0f : 0.0f) : 0.0f;
                    q[s][0][2][t][d] = d == 0 ? 20.0f : 0.0f;
                }
            for (size_t h = 0; h < H; h++) {      /* the model's output, in double */
                float lse[T];
                attn_full_rows_ref(&q[s][l][h][0][0], &k[s][l][h / 2][0][0], &v[s][l][h / 2][0][0],
                                   T, D, 0, T, &P, lse, &ao[s][l][h][0][0], NULL);
            }
        }
    for (size_t c = 0; c < C; c++) nw[c] = 1 + 0.3f * rnd();
    for (size_t i = 0; i < V; i++) for (size_t c = 0; c < C; c++) wu[i][c] = rnd();
    for (size_t l = 0; l < L; l++) for (size_t i = 0; i < H * D; i++) for (size_t c = 0; c < C; c++) wo[l][i][c] = rnd();
    for (size_t s = 0; s < S; s++)
        for (size_t t = 0; t < T; t++) {
            tokens[s][t] = (int32_t)((s * 7 + t * 3) % V);
            for (size_t c = 0; c < C; c++) hid[s][t][c] = 3 * rnd();
            /* rmsnorm, eps 1e-5, in double; logits; lse; top-8 */
            double ms = 0, z[V];
            for (size_t c = 0; c < C; c++) ms += (double)hid[s][t][c] * hid[s][t][c];
            double inv = 1 / sqrt(ms / C + 1e-5), m = -INFINITY, sum = 0;
            for (size_t i = 0; i < V; i++) {
                z[i] = 0;
                for (size_t c = 0; c < C; c++) z[i] += (double)wu[i][c] * hid[s][t][c] * inv * nw[c];
                if (z[i] > m) m = z[i];
            }
            for (size_t i = 0; i < V; i++) sum += exp(z[i] - m);
            rlse[s][t] = (float)(m + log(sum));
            int used[V] = {0};
            for (size_t r = 0; r < 8; r++) {
                size_t b = 0;
                while (used[b]) b++;
                for (size_t i = 0; i < V; i++) if (!used[i] && z[i] > z[b]) b = i;
                used[b] = 1; rids[s][t][r] = (int32_t)b; rtop[s][t][r] = (float)z[b];
            }
        }
}

/* writes the trace; perturb = 1: one attn_out element and one ref_lse moved by 0.05 */
static int write_trace(const char *path, int perturb)
{
    kv_error err;
    kv_meta m;
    memset(&m, 0, sizeof m);
    m.model = "test"; m.architecture = "kvtrace-ref"; m.positional = "none";
    m.n_seq = S; m.n_tok = T; m.n_layers = L; m.n_heads = H; m.n_kv_heads = HKV;
    m.head_dim = D; m.d_model = C; m.vocab = V; m.attn_scale = P.scale; m.bos_id = -1;
    kv_writer *w = NULL;
#define TRY(x) do { if ((x) != KV_OK) { printf("writer: %s\n", err.msg); kv_writer_abort(w); return 1; } } while (0)
    TRY(kv_writer_create(path, &m, &w, &err));
    TRY(kv_writer_tokens(w, &tokens[0][0], SEQ_LEN, &err));
    for (size_t s = 0; s < S; s++)
        for (size_t l = 0; l < L; l++) {
            for (size_t h = 0; h < H; h++) {
                TRY(kv_writer_head(w, KV_Q, s, l, h, &q[s][l][h][0][0], &err));
                float a[T][D];
                memcpy(a, ao[s][l][h], sizeof a);
                if (perturb && s == 1 && l == 1 && h == 3) a[5][2] += 0.05f;
                TRY(kv_writer_head(w, KV_ATTN_OUT, s, l, h, &a[0][0], &err));
            }
            for (size_t g = 0; g < HKV; g++) {
                TRY(kv_writer_head(w, KV_K, s, l, g, &k[s][l][g][0][0], &err));
                TRY(kv_writer_head(w, KV_V, s, l, g, &v[s][l][g][0][0], &err));
            }
        }
    TRY(kv_writer_readout(w, "rmsnorm", 1e-5, nw, NULL, &wu[0][0], NULL, &err));
    for (size_t l = 0; l < L; l++) TRY(kv_writer_w_o(w, l, &wo[l][0][0], &err));
    for (size_t s = 0; s < S; s++) {
        float lse[T];
        memcpy(lse, rlse[s], sizeof lse);
        if (perturb && s == 0) lse[11] += 0.05f;
        TRY(kv_writer_hidden(w, s, &hid[s][0][0], &err));
        TRY(kv_writer_ref(w, s, lse, &rids[s][0][0], &rtop[s][0][0], &err));
    }
    TRY(kv_writer_finish(w, &err));
#undef TRY
    return 0;
}

/* The double reference of attn_stats over the positions pos[s][0..npos) of each sequence
 * (pos NULL: every t = 1..n-1): sums of entropy, uniform entropy, sink and previous-token mass
 * per (layer, head), from the stored (f16-rounded) inputs read back through the library. */
typedef struct ref_stats { double e[L][H], u[L][H], s[L][H], p[L][H]; size_t npos; } ref_stats;

static void ref_stats_sum(kv_trace *t, const size_t (*pos)[5], size_t npos, ref_stats *r)
{
    kv_error err;
    memset(r, 0, sizeof *r);
    for (size_t s = 0; s < S; s++) {
        size_t n = (size_t)SEQ_LEN[s], m = pos ? npos : n - 1;
        r->npos += m;
        for (size_t l = 0; l < L; l++)
            for (size_t h = 0; h < H; h++) {
                float qq[T * D], kk[T * D], vv[T * D], lse[T], lg[T * T];
                kv_trace_read_rows(t, KV_Q, s, l, h, 0, n, qq, &err);
                kv_trace_read_rows(t, KV_K, s, l, h / 2, 0, n, kk, &err);
                kv_trace_read_rows(t, KV_V, s, l, h / 2, 0, n, vv, &err);
                attn_full_rows_ref(qq, kk, vv, n, D, 0, n, &P, lse, NULL, lg);
                for (size_t i = 0; i < m; i++) {
                    size_t tt = pos ? pos[s][i] : i + 1;
                    for (size_t j = 0; j <= tt; j++) {
                        double pj = exp((double)lg[tt * n + j] - lse[tt]);
                        if (pj > 0) r->e[l][h] -= pj * log(pj);
                    }
                    r->u[l][h] += log((double)tt + 1);
                    r->s[l][h] += exp((double)lg[tt * n] - lse[tt]);
                    r->p[l][h] += exp((double)lg[tt * n + tt - 1] - lse[tt]);
                }
            }
    }
}

int main(int argc, char **argv)
{
    /* test_verify --write DIR: only write DIR/verify_good.h5 and DIR/verify_bad.h5 (used by
     * tests/sh/test_check_verify.sh to run `kvreplay check` on them) */
    const char *tmp = argc == 3 && !strcmp(argv[1], "--write") ? argv[2]
                    : getenv("KV_TMP") ? getenv("KV_TMP") : "/tmp";
    char good[4096], bad[4096];
    snprintf(good, sizeof good, "%s/verify_good.h5", tmp);
    snprintf(bad, sizeof bad, "%s/verify_bad.h5", tmp);
    make_data();
    if (write_trace(good, 0) || write_trace(bad, 1)) return 1;
    if (argc == 3) return 0;

    kv_error err;
    kv_trace *t = NULL;
    if (kv_trace_open(good, NULL, &t, &err) != KV_OK) { printf("open: %s\n", err.msg); return 1; }
    verify_attn_result ar;
    check_true("verify_attn_out runs", verify_attn_out(t, VERIFY_ATTN_ATOL, VERIFY_ATTN_RTOL, 0, &ar, &err) == KV_OK);
    printf("attn_out: %zu slices, %zu elems, max |err| %.3g, worst %.3g of tolerance at s%zu l%zu h%zu t%zu d%zu\n",
           ar.n_slices, ar.n_elems, ar.max_abs_err, ar.worst_ratio, ar.w_s, ar.w_l, ar.w_h, ar.w_t, ar.w_d);
    check_true("attn_out passes on a faithful trace", ar.present && ar.pass && ar.n_bad == 0);
    check_true("attn_out compared every valid element", ar.n_elems == (size_t)(SEQ_LEN[0] + SEQ_LEN[1]) * L * H * D);
    verify_readout_result rr;
    check_true("verify_readout runs", verify_readout(t, VERIFY_READOUT_ATOL, VERIFY_READOUT_RTOL, 0, &rr, &err) == KV_OK);
    printf("readout: %zu positions, max lse err %.3g (%.3g of tol), max top err %.3g (%.3g of tol), swaps %zu\n",
           rr.n_pos, rr.max_lse_err, rr.worst_lse_ratio, rr.max_top_err, rr.worst_top_ratio, rr.n_swaps);
    check_true("readout passes on a faithful trace", rr.present && rr.pass && rr.n_pos == (size_t)(SEQ_LEN[0] + SEQ_LEN[1]));

    /* statistics vs the double reference kernel */
    attn_stats *st = NULL;
    check_true("attn_stats runs", attn_stats_compute(t, 0, 0, &st, &err) == KV_OK && st);
    if (st) {
        static ref_stats rs;
        ref_stats_sum(t, NULL, 0, &rs);
        size_t npos = rs.npos;
        check_true("stats n_pos", st->n_pos == npos && st->n_seq == S);
        for (size_t l = 0; l < L; l++)
            for (size_t h = 0; h < H; h++) {
                char w[96];
                size_t i = l * H + h;
                snprintf(w, sizeof w, "entropy l%zu h%zu", l, h);
                check_close(w, st->entropy[i], rs.e[l][h] / npos, 1e-5);
                snprintf(w, sizeof w, "uniform l%zu h%zu", l, h);
                check_close(w, st->uniform[i], rs.u[l][h] / npos, 1e-12);
                snprintf(w, sizeof w, "sink l%zu h%zu", l, h);
                check_close(w, st->sink[i], rs.s[l][h] / npos, 1e-6);
                snprintf(w, sizeof w, "prev l%zu h%zu", l, h);
                check_close(w, st->prev[i], rs.p[l][h] / npos, 1e-6);
            }
        check_close("uniform head: entropy == uniform", st->entropy[0], st->uniform[0], 1e-6);
        check_true("planted sink head: sink > 0.99", st->sink[2] > 0.99);
        size_t head; const char *kind; double score;
        attn_stats_special(st, 0, &head, &kind, &score);
        check_true("most specialised head of layer 0 is the sink head 2", head == 2 && !strcmp(kind, "sink"));
        for (size_t l = 0; l < L; l++) {
            printf("layer %zu:", l);
            for (size_t h = 0; h < H; h++)
                printf("  h%zu H=%.3f/%.3f sink=%.3f prev=%.3f", h, st->entropy[l * H + h],
                       st->uniform[l * H + h], st->sink[l * H + h], st->prev[l * H + h]);
            printf("\n");
        }
    }
    attn_stats_free(st);

    /* at most 5 positions per sequence: evenly spaced from 1 to n - 1, both included
     * (by hand: n = 24 -> 1 + floor(22 i / 4) = 1, 6, 12, 17, 23; n = 17 -> 1, 4, 8, 12, 16) */
    st = NULL;
    check_true("attn_stats runs (5 positions)", attn_stats_compute(t, 0, 5, &st, &err) == KV_OK && st);
    if (st) {
        static const size_t pos[S][5] = { {1, 6, 12, 17, 23}, {1, 4, 8, 12, 16} };
        static ref_stats rs;
        ref_stats_sum(t, pos, 5, &rs);
        check_true("sampled stats: n_pos 10 of n_all 39", st->n_pos == 10 && st->n_all == 23 + 16);
        for (size_t i = 0; i < L * H; i++) {
            char w[96];
            snprintf(w, sizeof w, "sampled entropy l%zu h%zu", i / H, i % H);
            check_close(w, st->entropy[i], rs.e[i / H][i % H] / 10, 1e-5);
            snprintf(w, sizeof w, "sampled sink l%zu h%zu", i / H, i % H);
            check_close(w, st->sink[i], rs.s[i / H][i % H] / 10, 1e-6);
            snprintf(w, sizeof w, "sampled prev l%zu h%zu", i / H, i % H);
            check_close(w, st->prev[i], rs.p[i / H][i % H] / 10, 1e-6);
        }
    }
    attn_stats_free(st);
    kv_trace_close(t);

    /* perturbed trace: both verifications fail at exactly the perturbed spots */
    if (kv_trace_open(bad, NULL, &t, &err) != KV_OK) { printf("open: %s\n", err.msg); return 1; }
    check_true("verify_attn_out runs (bad)", verify_attn_out(t, VERIFY_ATTN_ATOL, VERIFY_ATTN_RTOL, 0, &ar, &err) == KV_OK);
    check_true("attn_out fails on a perturbed element", !ar.pass && ar.n_bad == 1);
    check_true("worst attn_out element located at s1 l1 h3 t5 d2",
               ar.w_s == 1 && ar.w_l == 1 && ar.w_h == 3 && ar.w_t == 5 && ar.w_d == 2);
    check_true("verify_readout runs (bad)", verify_readout(t, VERIFY_READOUT_ATOL, VERIFY_READOUT_RTOL, 0, &rr, &err) == KV_OK);
    check_true("readout fails on a perturbed lse", !rr.pass && rr.n_lse_bad == 1 && rr.n_top_bad == 0);
    check_true("worst lse located at s0 t11", rr.lse_s == 0 && rr.lse_t == 11);
    /* max_seq = 1 skips the perturbed attn_out of sequence 1 */
    verify_attn_out(t, VERIFY_ATTN_ATOL, VERIFY_ATTN_RTOL, 1, &ar, &err);
    check_true("max_seq 1 limits the check to sequence 0", ar.pass && ar.n_seq == 1);
    kv_trace_close(t);

    printf("%d checks, %d failed\n", checks, fails);
    return fails ? 1 : 0;
}
