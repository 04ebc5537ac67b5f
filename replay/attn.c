/* Attention kernels (replay/attn.h): blocked fp32 kernels and their scalar double twins.
 *
 * T tokens, D head_dim, n entries; RB query rows x KB keys per block.
 *
 * Fast path (attn_full_rows): flash-style online softmax. For a block of RB query rows,
 * keys are visited in blocks of KB: the key block is transposed once (kT [D][KB]) so the
 * logits of RB rows x KB keys are computed with the key index as the vector lane and d as
 * a sequential loop. Every lane therefore sums q[d]*k[d] in d order 0..D-1 in float, i.e.
 * exactly what attn_logit computes: the fast kernel's logits equal attn_logit bit for bit.
 * The running max m, the running sum l (double) and the output accumulator o (float) are
 * rescaled by exp(m_old - m_new) when the max grows; the output is o / l and
 * lse = m + log(l). Vectors are GCC vector extensions (elementwise, no reassociation, no
 * FMA contraction under -std=c11), so results depend on the inputs only, not on flags,
 * threads or the machine's vector width.
 *
 * A row with no visible key (n == 0, or every logit -INFINITY through the bias) is the
 * fully masked row: lse = -INFINITY, o = 0. NaN inputs propagate to lse and o.
 */
#include <math.h>
#include <string.h>

#include "attn.h"

#define RB 8            /* query rows per block */
#define KB_MAX 64       /* keys per block, a multiple of 4 (smaller for large D: kT <= 64 KiB) */
#define KT_FLOATS 16384
#define EB_MAX 64       /* entries per block of attn_entries (row_update's n <= 64) */

/* 4-float vectors: native on every x86-64 (SSE2); wider types are lowered badly by GCC
 * when the target lacks AVX (measured 2.4 vs 14.7 GFLOP/s at T=1024, D=64). */
typedef float v4f __attribute__((vector_size(16)));

static inline float cap(float s, float c)
{
    return c > 0 ? c * tanhf(s / c) : s;
}

float attn_logit(const float *q, const float *k, size_t D, const attn_params *p)
{
    float acc = 0.0f;
    for (size_t d = 0; d < D; d++)
        acc += q[d] * k[d];
    return cap(p->scale * acc, p->softcap);
}

static size_t key_block(size_t D)
{
    size_t kb = KT_FLOATS / (D ? D : 1);
    if (kb > KB_MAX) kb = KB_MAX;
    kb &= ~(size_t)7;
    return kb < 8 ? 8 : kb;
}

/* y[0..D) = y * a  (a == 0 sets 0 even when y holds Inf: a stale accumulator is dropped) */
static void vec_scale(float *y, float a, size_t D)
{
    if (a == 0.0f) { memset(y, 0, D * sizeof *y); return; }
    for (size_t d = 0; d < D; d++) y[d] *= a;
}

/* o [D] += sum_e p[e] * v_row(e), e in order for every d (register-blocked over d) */
static void pv_accum(float *restrict o, const float *restrict p, size_t n,
                     const float *restrict v, const size_t *idx, size_t D)
{
    size_t d = 0;
    for (; d + 8 <= D; d += 8) {
        v4f a0, a1;
        memcpy(&a0, o + d, sizeof a0);
        memcpy(&a1, o + d + 4, sizeof a1);
        for (size_t e = 0; e < n; e++) {
            const float *vr = v + (idx ? idx[e] : e) * D + d;
            float pe = p[e];
            v4f pv = {pe, pe, pe, pe}, x0, x1;
            memcpy(&x0, vr, sizeof x0);
            memcpy(&x1, vr + 4, sizeof x1);
            a0 += pv * x0; a1 += pv * x1;
        }
        memcpy(o + d, &a0, sizeof a0);
        memcpy(o + d + 4, &a1, sizeof a1);
    }
    for (; d + 4 <= D; d += 4) {
        v4f a0;
        memcpy(&a0, o + d, sizeof a0);
        for (size_t e = 0; e < n; e++) {
            float pe = p[e];
            v4f pv = {pe, pe, pe, pe}, x0;
            memcpy(&x0, v + (idx ? idx[e] : e) * D + d, sizeof x0);
            a0 += pv * x0;
        }
        memcpy(o + d, &a0, sizeof a0);
    }
    for (; d < D; d++) {
        float a = o[d];
        for (size_t e = 0; e < n; e++) a += p[e] * v[(idx ? idx[e] : e) * D + d];
        o[d] = a;
    }
}

/* One online-softmax step of a row: logits s [n] (already masked: only visible keys
 * given), values rows vrow(e). Updates *m, *l, o [D]. */
typedef struct row_state { float m; double l; } row_state;

static void row_update(row_state *st, const float *s, size_t n, const float *v,
                       const size_t *idx, size_t D, float *o)
{
    float bm = -INFINITY;
    int has_nan = 0;
    for (size_t e = 0; e < n; e++) {
        if (s[e] > bm) bm = s[e];
        if (s[e] != s[e]) has_nan = 1;
    }
    if (has_nan) { st->m = NAN; st->l = NAN; return; }
    if (bm == -INFINITY || st->m != st->m) return;     /* nothing visible here, or NaN */
    if (bm > st->m) {
        float a = st->m == -INFINITY ? 0.0f : expf(st->m - bm);
        if (o) vec_scale(o, a, D);
        st->l *= a;
        st->m = bm;
    }
    float pe[EB_MAX];
    for (size_t e = 0; e < n; e++) {
        pe[e] = expf(s[e] - st->m);               /* 0 for s = -INFINITY */
        st->l += pe[e];
    }
    if (o) pv_accum(o, pe, n, v, idx, D);
}

static void row_finish(const row_state *st, float *lse, float *o, size_t D)
{
    if (st->m != st->m || st->l != st->l) {
        *lse = NAN;
        if (o) for (size_t d = 0; d < D; d++) o[d] = NAN;
        return;
    }
    if (st->m == -INFINITY || st->l <= 0) {      /* fully masked row */
        *lse = -INFINITY;
        if (o) memset(o, 0, D * sizeof *o);
        return;
    }
    *lse = (float)((double)st->m + log(st->l));
    if (o) {
        float inv = (float)(1.0 / st->l);
        for (size_t d = 0; d < D; d++) o[d] *= inv;
    }
}

/* s [KB] = scale * (q . kT[:, j]) for the KB keys of a transposed block; each lane sums
 * in d order (4 vectors = 16 keys per pass: independent accumulators). */
static void logits_block(const float *restrict q, const float *restrict kT, size_t D,
                         size_t KB, float scale, float *restrict s)
{
    const v4f sc = {scale, scale, scale, scale};
    size_t j = 0;
    for (; j + 16 <= KB; j += 16) {
        v4f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        const float *kr = kT + j;
        for (size_t d = 0; d < D; d++, kr += KB) {
            float qd = q[d];
            v4f qv = {qd, qd, qd, qd}, k0, k1, k2, k3;
            memcpy(&k0, kr, sizeof k0);
            memcpy(&k1, kr + 4, sizeof k1);
            memcpy(&k2, kr + 8, sizeof k2);
            memcpy(&k3, kr + 12, sizeof k3);
            a0 += qv * k0; a1 += qv * k1; a2 += qv * k2; a3 += qv * k3;
        }
        a0 = sc * a0; a1 = sc * a1; a2 = sc * a2; a3 = sc * a3;
        memcpy(s + j, &a0, sizeof a0);
        memcpy(s + j + 4, &a1, sizeof a1);
        memcpy(s + j + 8, &a2, sizeof a2);
        memcpy(s + j + 12, &a3, sizeof a3);
    }
    for (; j < KB; j += 4) {
        v4f a = {0};
        const float *kr = kT + j;
        for (size_t d = 0; d < D; d++, kr += KB) {
            float qd = q[d];
            v4f qv = {qd, qd, qd, qd}, kv;
            memcpy(&kv, kr, sizeof kv);
            a += qv * kv;
        }
        a = sc * a;
        memcpy(s + j, &a, sizeof a);
    }
}

void attn_full_rows(const float *q, const float *k, const float *v, size_t T, size_t D,
                    size_t t0, size_t t1, const attn_params *p,
                    float *lse, float *o, float *logits)
{
    const size_t KB = key_block(D);
    float kT[KT_FLOATS];                  /* [D][KB] transposed key block */
    float s[RB][KB_MAX];                  /* logits of the block */
    row_state st[RB];
    const float scale = p->scale, c = p->softcap;

    for (size_t r0 = t0; r0 < t1; r0 += RB) {
        size_t nr = t1 - r0 < RB ? t1 - r0 : RB;
        for (size_t r = 0; r < nr; r++) {
            st[r].m = -INFINITY; st[r].l = 0;
            if (o) memset(o + (r0 - t0 + r) * D, 0, D * sizeof *o);
            if (logits) {
                float *lr = logits + (r0 - t0 + r) * T;
                for (size_t j = 0; j < T; j++) lr[j] = -INFINITY;
            }
        }
        size_t jlo = attn_lo(r0, p->window);          /* first key any row sees */
        size_t jhi = r0 + nr;                          /* one past the last key */
        for (size_t j0 = jlo - jlo % KB; j0 < jhi; j0 += KB) {
            size_t nk = jhi - j0 < KB ? jhi - j0 : KB;
            /* transpose; pad lanes with 0 so the vector loop is uniform */
            for (size_t d = 0; d < D; d++) {
                float *dst = kT + d * KB;
                for (size_t j = 0; j < nk; j++) dst[j] = k[(j0 + j) * D + d];
                for (size_t j = nk; j < KB; j++) dst[j] = 0.0f;
            }
            for (size_t r = 0; r < nr; r++) {
                const float *qr = q + (r0 + r) * D;
                float *sr = s[r];
                logits_block(qr, kT, D, KB, scale, sr);
                size_t t = r0 + r, lo = attn_lo(t, p->window);
                /* visible keys of row t in this block: [a, b) relative to j0 */
                size_t a = lo > j0 ? lo - j0 : 0;
                size_t b = t + 1 > j0 ? t + 1 - j0 : 0;
                if (b > nk) b = nk;
                if (a >= b) continue;
                if (c > 0)
                    for (size_t j = a; j < b; j++) sr[j] = cap(sr[j], c);
                if (logits)
                    memcpy(logits + (t - t0) * T + j0 + a, sr + a, (b - a) * sizeof *sr);
                row_update(&st[r], sr + a, b - a, v + (j0 + a) * D, NULL, D,
                           o ? o + (t - t0) * D : NULL);
            }
        }
        for (size_t r = 0; r < nr; r++)
            row_finish(&st[r], lse + (r0 - t0 + r), o ? o + (r0 - t0 + r) * D : NULL, D);
    }
}

void attn_entries(const float *q, const float *kk, const float *vv, const size_t *idx,
                  const float *bias, size_t n, size_t D, const attn_params *p,
                  float *lse, float *o, float *logits)
{
    enum { EB = EB_MAX };
    float s[EB];
    row_state st = {-INFINITY, 0};
    if (o) memset(o, 0, D * sizeof *o);
    for (size_t e0 = 0; e0 < n; e0 += EB) {
        size_t ne = n - e0 < EB ? n - e0 : EB;
        size_t e = 0;
        /* four independent dot products at a time, each summed in d order (== attn_logit) */
        for (; e + 4 <= ne; e += 4) {
            const float *k0 = kk + (idx ? idx[e0 + e] : e0 + e) * D;
            const float *k1 = kk + (idx ? idx[e0 + e + 1] : e0 + e + 1) * D;
            const float *k2 = kk + (idx ? idx[e0 + e + 2] : e0 + e + 2) * D;
            const float *k3 = kk + (idx ? idx[e0 + e + 3] : e0 + e + 3) * D;
            float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
            for (size_t d = 0; d < D; d++) {
                float qd = q[d];
                a0 += qd * k0[d]; a1 += qd * k1[d]; a2 += qd * k2[d]; a3 += qd * k3[d];
            }
            s[e] = cap(p->scale * a0, p->softcap);
            s[e + 1] = cap(p->scale * a1, p->softcap);
            s[e + 2] = cap(p->scale * a2, p->softcap);
            s[e + 3] = cap(p->scale * a3, p->softcap);
        }
        for (; e < ne; e++)
            s[e] = attn_logit(q, kk + (idx ? idx[e0 + e] : e0 + e) * D, D, p);
        if (bias)
            for (e = 0; e < ne; e++) s[e] += bias[e0 + e];
        if (logits) memcpy(logits + e0, s, ne * sizeof *s);
        row_update(&st, s, ne, idx ? vv : vv + e0 * D, idx ? idx + e0 : NULL, D, o);
    }
    row_finish(&st, lse, o, D);
}

/* ---- references: scalar, double accumulation ------------------------------------------ */

static double logit_ref(const float *q, const float *k, size_t D, const attn_params *p)
{
    double acc = 0;
    for (size_t d = 0; d < D; d++) acc += (double)q[d] * (double)k[d];
    double s = (double)p->scale * acc;
    if (p->softcap > 0) s = p->softcap * tanh(s / p->softcap);
    return s;
}

/* softmax over s [n] (double), o = sum p_e v_row(e) */
static void softmax_out_ref(const double *s, size_t n, const float *vv, const size_t *idx,
                            size_t D, float *lse, float *o)
{
    double m = -INFINITY;
    int has_nan = 0;
    for (size_t e = 0; e < n; e++) { if (s[e] > m) m = s[e]; if (s[e] != s[e]) has_nan = 1; }
    if (has_nan) {
        *lse = NAN;
        if (o) for (size_t d = 0; d < D; d++) o[d] = NAN;
        return;
    }
    if (m == -INFINITY) {
        *lse = -INFINITY;
        if (o) memset(o, 0, D * sizeof *o);
        return;
    }
    double l = 0;
    for (size_t e = 0; e < n; e++) l += exp(s[e] - m);
    *lse = (float)(m + log(l));
    if (!o) return;
    for (size_t d = 0; d < D; d++) {
        double acc = 0;
        for (size_t e = 0; e < n; e++)
            acc += exp(s[e] - m) / l * (double)vv[(idx ? idx[e] : e) * D + d];
        o[d] = (float)acc;
    }
}

void attn_full_rows_ref(const float *q, const float *k, const float *v, size_t T, size_t D,
                        size_t t0, size_t t1, const attn_params *p,
                        float *lse, float *o, float *logits)
{
    for (size_t t = t0; t < t1; t++) {
        size_t lo = attn_lo(t, p->window), n = t + 1 - lo;
        double s[n];            /* VLA: the reference is for test-sized inputs */
        for (size_t j = lo; j <= t; j++) s[j - lo] = logit_ref(q + t * D, k + j * D, D, p);
        if (logits) {
            float *lr = logits + (t - t0) * T;
            for (size_t j = 0; j < T; j++) lr[j] = (j >= lo && j <= t) ? (float)s[j - lo] : -INFINITY;
        }
        softmax_out_ref(s, n, v + lo * D, NULL, D, lse + (t - t0), o ? o + (t - t0) * D : NULL);
    }
}

void attn_entries_ref(const float *q, const float *kk, const float *vv, const size_t *idx,
                      const float *bias, size_t n, size_t D, const attn_params *p,
                      float *lse, float *o, float *logits)
{
    double s[n ? n : 1];
    for (size_t e = 0; e < n; e++) {
        s[e] = logit_ref(q, kk + (idx ? idx[e] : e) * D, D, p);
        if (bias) s[e] += bias[e];
        if (logits) logits[e] = (float)s[e];
    }
    softmax_out_ref(s, n, vv, idx, D, lse, o);
}
