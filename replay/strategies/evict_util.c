/* Helpers shared by the attention-scored eviction strategies (evict_util.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "evict_util.h"

void ev_reduce(const double *x, size_t G, size_t n, int how, double *out)
{
    for (size_t j = 0; j < n; j++) {
        double r = x[j];
        for (size_t g = 1; g < G; g++) {
            double v = x[g * n + j];
            if (how == RP_GQA_MAX) r = v > r ? v : r;
            else r += v;
        }
        out[j] = how == RP_GQA_MEAN ? r / (double)G : r;
    }
}

enum { EV_ROWS = 64 };

int ev_accum_rows(const rp_layer_ctx *ctx, size_t h, size_t t0, size_t t1, const uint8_t *want,
                  size_t ncols, double *acc)
{
    size_t P = ctx->P;
    if (ctx->prompt_colsum) {   /* the engine's shared scores: same values, computed once */
        double *sum = malloc((P ? P : 1) * sizeof *sum);
        if (!sum || ctx->prompt_colsum(ctx, h, t0, t1, want, sum)) { free(sum); return -1; }
        for (size_t j = 0; j < ncols; j++) acc[j] += sum[j];
        free(sum);
        return 0;
    }
    float *buf = malloc(EV_ROWS * P * sizeof *buf);
    if (!buf) return -1;
    for (size_t a = t0; a < t1; a += EV_ROWS) {
        size_t b = a + EV_ROWS < t1 ? a + EV_ROWS : t1;
        if (want) {             /* skip blocks with no wanted row */
            size_t r = a;
            while (r < b && !want[r]) r++;
            if (r == b) continue;
        }
        if (ctx->prompt_attn(ctx, h, a, b, buf)) { free(buf); return -1; }
        for (size_t r = a; r < b; r++) {
            if (want && !want[r]) continue;
            const float *row = buf + (r - a) * P;
            for (size_t j = 0; j < ncols; j++) acc[j] += row[j];
        }
    }
    free(buf);
    return 0;
}

int ev_push_kept(const rp_layer_ctx *ctx, size_t g, const int32_t *kept, size_t m, rp_cache *c)
{
    size_t D = ctx->D;
    const float *k = ctx->k + g * ctx->n * D, *v = ctx->v + g * ctx->n * D;
    if (rp_cache_reserve(c, m, 0)) return -1;
    for (size_t i = 0; i < m; i++)
        if (rp_cache_push(c, kept[i], k + (size_t)kept[i] * D, v + (size_t)kept[i] * D)) return -1;
    return 0;
}

size_t ev_evict_complement(const double *score, size_t n, size_t B, size_t *evict)
{
    if (n <= B) return 0;
    int32_t *kept = malloc((B ? B : 1) * sizeof *kept);
    if (!kept) return (size_t)-1;
    size_t nk = rp_topk(score, n, B, kept), m = 0;
    for (size_t e = 0, i = 0; e < n; e++) {
        if (i < nk && (size_t)kept[i] == e) { i++; continue; }
        evict[m++] = e;
    }
    free(kept);
    return m;
}

double ev_round_half_even(double x)
{
    double r = floor(x + 0.5);
    if (r - x == 0.5 && fmod(r, 2.0) != 0.0) r -= 1.0;   /* exact half: go to the even one */
    return r;
}

/* x [R] rotated at position a -> rotated at position b (tables [T][R]). */
static void rerotate(float *x, size_t R, int interleaved, const float *ca, const float *sa,
                     const float *cb, const float *sb)
{
    float tmp[1024];
    size_t half = R / 2;
    /* de-rotate: x0 = x ca - rot(x) sa */
    for (size_t d = 0; d < R; d++) {
        float rot = interleaved ? ((d & 1) ? x[d - 1] : -x[d + 1]) : (d < half ? -x[d + half] : x[d - half]);
        tmp[d] = x[d] * ca[d] - rot * sa[d];
    }
    for (size_t d = 0; d < R; d++) {
        float rot = interleaved ? ((d & 1) ? tmp[d - 1] : -tmp[d + 1]) : (d < half ? -tmp[d + half] : tmp[d - half]);
        x[d] = tmp[d] * cb[d] + rot * sb[d];
    }
}

int ev_reindex_view(const rp_layer_ctx *ctx, size_t t, rp_cache *c, const char *who, char *err, size_t errlen)
{
    if (!ctx->rope_cos || !ctx->rope_sin || !ctx->rotary_dim) {
        snprintf(err, errlen, "%s needs the trace's /rope tables (this trace has none)", who);
        return -1;
    }
    size_t R = ctx->rotary_dim, m = c->n;
    if (R > 1024 || R > c->D) { snprintf(err, errlen, "%s: rotary_dim %zu unsupported", who, R); return -1; }
    for (size_t e = 0; e < m; e++) {
        size_t from = (size_t)c->pos[e];
        if (t + 1 < m - e) { snprintf(err, errlen, "%s: cache larger than the position", who); return -1; }
        size_t to = t - (m - 1 - e);
        if (to == from) continue;
        rerotate(c->k + e * c->D, R, ctx->rope_interleaved, ctx->rope_cos + from * R, ctx->rope_sin + from * R,
                 ctx->rope_cos + to * R, ctx->rope_sin + to * R);
    }
    return 0;
}

typedef double ev_v4d __attribute__((vector_size(32)));    /* GCC vectors: elementwise, no FMA */
typedef double ev_v8d __attribute__((vector_size(64)));

/* The bodies below for a vector type VT of W doubles (4: the generic and AVX2 paths, 8:
 * AVX-512F): every element of A and out is the same sum in the same order whatever W (A's
 * b-blocks only change which elements share an op; out's rows are lanes), so every path gives
 * the same bits. */
#define GRAM_LOWER_BODY(VT, W)                                                                   \
    memset(A, 0, D * D * sizeof *A);                                                            \
    for (size_t i0 = 0; i0 < N; i0 += EV_LEV_JB) {                                              \
        size_t nb = N - i0 < EV_LEV_JB ? N - i0 : EV_LEV_JB;                                    \
        const double *Xb = X + i0 * D;                                                          \
        for (size_t a = 0; a < D; a++) {                                                        \
            double wa[EV_LEV_JB];                                                               \
            for (size_t i = 0; i < nb; i++) wa[i] = w ? (w[i0 + i] + eps) * Xb[i * D + a] : Xb[i * D + a]; \
            double *Aa = A + a * D;                                                             \
            size_t b = 0;                                                                       \
            for (; b + (W) <= a + 1; b += (W)) {                                                \
                VT t, x;                                                                        \
                memcpy(&t, Aa + b, sizeof t);                                                   \
                for (size_t i = 0; i < nb; i++) {                                               \
                    memcpy(&x, Xb + i * D + b, sizeof x);                                       \
                    t += wa[i] * x;                                                             \
                }                                                                               \
                memcpy(Aa + b, &t, sizeof t);                                                   \
            }                                                                                   \
            for (; b <= a; b++)                                                                 \
                for (size_t i = 0; i < nb; i++) Aa[b] += wa[i] * Xb[i * D + b];                 \
        }                                                                                       \
    }

/* A short last block repeats its last row in the lanes left over and drops them. Named
 * vectors (four of W = 4 doubles, or two of W = 8: V2 repeats the step for the other two or
 * not at all): arrays of them stayed in memory, three times slower. */
#define INV_SQNORMS_BODY(VT, W, V2)                                                              \
    for (size_t i0 = 0; i0 < N; i0 += EV_LEV_JB) {                                              \
        size_t nb = N - i0 < EV_LEV_JB ? N - i0 : EV_LEV_JB;                                    \
        VT l0, l1, t0, t1, y;                                                                   \
        V2(VT l2, l3, t2, t3;)                                                                  \
        memset(&l0, 0, sizeof l0); l1 = l0;                                                     \
        V2(l2 = l3 = l0;)                                                                       \
        for (size_t a = 0; a < D; a++) {                                                        \
            double tv[EV_LEV_JB];                                                               \
            for (size_t i = 0; i < EV_LEV_JB; i++) tv[i] = X[(i0 + (i < nb ? i : nb - 1)) * D + a]; \
            memcpy(&t0, tv, sizeof t0);                                                         \
            memcpy(&t1, tv + (W), sizeof t1);                                                   \
            V2(memcpy(&t2, tv + 2 * (W), sizeof t2); memcpy(&t3, tv + 3 * (W), sizeof t3);)     \
            const double *La = L + a * D;                                                       \
            for (size_t m = 0; m < a; m++) {                                                    \
                const double lm = La[m], *ym = yb + m * EV_LEV_JB;                              \
                memcpy(&y, ym, sizeof y);          t0 -= lm * y;                                \
                memcpy(&y, ym + (W), sizeof y);    t1 -= lm * y;                                \
                V2(memcpy(&y, ym + 2 * (W), sizeof y); t2 -= lm * y;                            \
                   memcpy(&y, ym + 3 * (W), sizeof y); t3 -= lm * y;)                           \
            }                                                                                   \
            double *ya = yb + a * EV_LEV_JB;                                                    \
            y = t0 / La[a]; memcpy(ya, &y, sizeof y);          l0 += y * y;                     \
            y = t1 / La[a]; memcpy(ya + (W), &y, sizeof y);    l1 += y * y;                     \
            V2(y = t2 / La[a]; memcpy(ya + 2 * (W), &y, sizeof y); l2 += y * y;                 \
               y = t3 / La[a]; memcpy(ya + 3 * (W), &y, sizeof y); l3 += y * y;)                \
        }                                                                                       \
        double sq[EV_LEV_JB];                                                                   \
        memcpy(sq, &l0, sizeof l0);                                                             \
        memcpy(sq + (W), &l1, sizeof l1);                                                       \
        V2(memcpy(sq + 2 * (W), &l2, sizeof l2); memcpy(sq + 3 * (W), &l3, sizeof l3);)         \
        memcpy(out + i0, sq, nb * sizeof *sq);                                                  \
    }
#define EV_ALL(...) __VA_ARGS__
#define EV_NONE(...)
_Static_assert(EV_LEV_JB == 16, "INV_SQNORMS_BODY names four vectors of 4 or two of 8");

static void gram_lower_generic(const double *X, size_t D, size_t N, const double *w, double eps, double *A)
{
    GRAM_LOWER_BODY(ev_v4d, 4)
}

static void inv_sqnorms_generic(const double *X, size_t D, size_t N, const double *L, double *yb, double *out)
{
    INV_SQNORMS_BODY(ev_v4d, 4, EV_ALL)
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(ATTN_NO_AVX2)   /* as replay/attn.c */
#define EV_HAVE_AVX2 1
/* The vector paths where attn_isa() allows them (tests run each path on one machine). */
static int ev_use_avx2(void) { return attn_isa() >= ATTN_ISA_AVX2; }
static int ev_use_avx512(void) { return attn_isa() >= ATTN_ISA_AVX512; }

/* The same bodies compiled for AVX2 (not FMA), and with eight doubles per op for AVX-512F. */
__attribute__((target("avx2")))
static void gram_lower_avx2(const double *X, size_t D, size_t N, const double *w, double eps, double *A)
{
    GRAM_LOWER_BODY(ev_v4d, 4)
}

__attribute__((target("avx2")))
static void inv_sqnorms_avx2(const double *X, size_t D, size_t N, const double *L, double *yb, double *out)
{
    INV_SQNORMS_BODY(ev_v4d, 4, EV_ALL)
}

__attribute__((target("avx512f")))
static void gram_lower_avx512(const double *X, size_t D, size_t N, const double *w, double eps, double *A)
{
    GRAM_LOWER_BODY(ev_v8d, 8)
}

__attribute__((target("avx512f")))
static void inv_sqnorms_avx512(const double *X, size_t D, size_t N, const double *L, double *yb, double *out)
{
    INV_SQNORMS_BODY(ev_v8d, 8, EV_NONE)
}
#else
#define EV_HAVE_AVX2 0
#endif

void ev_gram_lower(const double *X, size_t D, size_t N, const double *w, double eps, double *A)
{
#if EV_HAVE_AVX2
    if (ev_use_avx512()) { gram_lower_avx512(X, D, N, w, eps, A); return; }
    if (ev_use_avx2()) { gram_lower_avx2(X, D, N, w, eps, A); return; }
#endif
    gram_lower_generic(X, D, N, w, eps, A);
}

void ev_inv_sqnorms(const double *X, size_t D, size_t N, const double *L, double *yb, double *out)
{
#if EV_HAVE_AVX2
    if (ev_use_avx512()) { inv_sqnorms_avx512(X, D, N, L, yb, out); return; }
    if (ev_use_avx2()) { inv_sqnorms_avx2(X, D, N, L, yb, out); return; }
#endif
    inv_sqnorms_generic(X, D, N, L, yb, out);
}
