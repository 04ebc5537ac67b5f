/* Attention structure statistics of a trace (attn_stats.h). Work is read per (s, l) —
 * q [H][n][D], k [Hkv][n][D] — then the heads run in parallel, each on its own slots. */
#include "attn_stats.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static kv_status fail_nomem(const kv_info *in, kv_error *err)
{
    return kv_error_set(err, KV_ERR_NOMEM, "%.600s: attention statistics: out of memory", in->path);
}

/* Rows [0, n) of every head of one tensor of (s, l) into dst [nh][n][D]. */
static kv_status read_heads(kv_trace *t, kv_tensor which, size_t s, size_t l, size_t nh,
                            size_t n, size_t D, float *dst, kv_error *err)
{
    for (size_t h = 0; h < nh; h++) {
        kv_status st = kv_trace_read_rows(t, which, s, l, h, 0, n, dst + h * n * D, err);
        if (st != KV_OK) return st;
    }
    return KV_OK;
}

typedef struct row_sums { double ent, uni, sink, prev; } row_sums;

/* q.k in double with four independent partial sums (about 2.7x faster than one chain of
 * dependent additions; the same bits in every build and thread count). */
static double dot(const float *q, const float *k, size_t D)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t d = 0;
    for (; d + 4 <= D; d += 4) {
        s0 += (double)q[d] * (double)k[d];
        s1 += (double)q[d + 1] * (double)k[d + 1];
        s2 += (double)q[d + 2] * (double)k[d + 2];
        s3 += (double)q[d + 3] * (double)k[d + 3];
    }
    for (; d < D; d++) s0 += (double)q[d] * (double)k[d];
    return (s0 + s1) + (s2 + s3);
}

/* The i-th of R query positions of a sequence of n >= 2: every t = 1..n-1 when R = n - 1,
 * else R evenly spaced ones from 1 to n - 1 (both ends included). */
static size_t stat_pos(size_t i, size_t R, size_t n)
{
    if (R == n - 1) return 1 + i;
    if (R == 1) return n - 1;
    return 1 + (size_t)((unsigned long long)i * (n - 2) / (R - 1));
}

/* One query head of one (s, l): q [n][D], k [n][D]; s [n] is scratch. Adds the sums over
 * the R positions stat_pos(0..R-1) to *acc. */
static void head_sums(const float *q, const float *k, size_t n, size_t R, size_t D, double scale,
                      double softcap, long long window, double *s, row_sums *acc)
{
    for (size_t i = 0; i < R; i++) {
        size_t t = stat_pos(i, R, n);
        size_t lo = (window > 0 && t + 1 > (size_t)window) ? t + 1 - (size_t)window : 0;
        double m = -INFINITY;
        for (size_t j = lo; j <= t; j++) {
            double x = scale * dot(q + t * D, k + j * D, D);
            if (softcap > 0) x = softcap * tanh(x / softcap);
            s[j] = x;
            if (x > m) m = x;
        }
        double z = 0;
        for (size_t j = lo; j <= t; j++) z += exp(s[j] - m);
        double lse = m + log(z), e = 0;
        for (size_t j = lo; j <= t; j++) {
            double p = exp(s[j] - lse);
            if (p > 0) e += p * (lse - s[j]);
        }
        acc->ent += e;
        acc->uni += log((double)(t + 1 - lo));
        if (lo == 0) acc->sink += exp(s[0] - lse);
        if (t - 1 >= lo) acc->prev += exp(s[t - 1] - lse);
    }
}

void attn_stats_free(attn_stats *st)
{
    if (!st) return;
    free(st->entropy); free(st->uniform); free(st->sink); free(st->prev);
    free(st);
}

kv_status attn_stats_compute(kv_trace *t, size_t max_seq, size_t max_pos, attn_stats **out, kv_error *err)
{
    const kv_info *in = kv_trace_info(t);
    *out = NULL;
    size_t S = in->n_seq, T = in->n_tok, L = in->n_layers, H = in->n_heads, Hkv = in->n_kv_heads;
    size_t D = in->head_dim, G = H / Hkv;
    if (max_seq && max_seq < S) S = max_seq;
    kv_status st = KV_OK;
    attn_stats *a = calloc(1, sizeof *a);
    int32_t *seq_len = malloc(in->n_seq * sizeof *seq_len);
    float *q = malloc(H * T * D * sizeof *q), *k = malloc(Hkv * T * D * sizeof *k);
    if (!a || !seq_len || !q || !k) { st = fail_nomem(in, err); goto done; }
    a->L = L; a->H = H;
    a->entropy = calloc(L * H, sizeof(double));
    a->uniform = calloc(L * H, sizeof(double));
    a->sink = calloc(L * H, sizeof(double));
    a->prev = calloc(L * H, sizeof(double));
    if (!a->entropy || !a->uniform || !a->sink || !a->prev) { st = fail_nomem(in, err); goto done; }
    if ((st = kv_trace_read_seq_len(t, seq_len, err)) != KV_OK) goto done;

    for (size_t s = 0; s < S; s++) {
        size_t n = (size_t)seq_len[s];
        size_t R = n >= 2 ? (max_pos && max_pos < n - 1 ? max_pos : n - 1) : 0;
        a->n_pos += R;
        if (n >= 2) a->n_all += n - 1;
        for (size_t l = 0; l < L && n >= 2; l++) {
            if ((st = read_heads(t, KV_Q, s, l, H, n, D, q, err)) != KV_OK) goto done;
            if ((st = read_heads(t, KV_K, s, l, Hkv, n, D, k, err)) != KV_OK) goto done;
            long long window = in->layer_window ? in->layer_window[l] : in->sliding_window;
            int nomem = 0;
#ifdef _OPENMP
            #pragma omp parallel for schedule(dynamic, 1) reduction(|:nomem)
#endif
            for (size_t h = 0; h < H; h++) {
                double *sc = malloc(n * sizeof *sc);
                if (!sc) { nomem = 1; continue; }
                row_sums r = { 0, 0, 0, 0 };
                head_sums(q + h * n * D, k + (h / G) * n * D, n, R, D, in->attn_scale, in->attn_softcap, window, sc, &r);
                free(sc);
                a->entropy[l * H + h] += r.ent;
                a->uniform[l * H + h] += r.uni;
                a->sink[l * H + h] += r.sink;
                a->prev[l * H + h] += r.prev;
            }
            if (nomem) { st = fail_nomem(in, err); goto done; }
        }
        a->n_seq++;
    }
    if (a->n_pos)
        for (size_t i = 0; i < L * H; i++) {
            a->entropy[i] /= (double)a->n_pos; a->uniform[i] /= (double)a->n_pos;
            a->sink[i] /= (double)a->n_pos;    a->prev[i] /= (double)a->n_pos;
        }
    *out = a;
    a = NULL;
done:
    attn_stats_free(a);
    free(seq_len); free(q); free(k);
    return st;
}

void attn_stats_special(const attn_stats *st, size_t l, size_t *head, const char **kind,
                        double *score)
{
    *head = 0; *kind = "focus"; *score = -INFINITY;
    for (size_t h = 0; h < st->H; h++) {
        size_t i = l * st->H + h;
        double focus = st->uniform[i] > 0 ? 1 - st->entropy[i] / st->uniform[i] : 0;
        if (st->sink[i] > *score) { *score = st->sink[i]; *head = h; *kind = "sink"; }
        if (st->prev[i] > *score) { *score = st->prev[i]; *head = h; *kind = "prev"; }
        if (focus > *score) { *score = focus; *head = h; *kind = "focus"; }
    }
}
