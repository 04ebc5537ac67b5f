/* quant — KIVI key/value quantisation (plus a plain per-token symmetric baseline).
 *
 * Rule (mode=kivi): asymmetric min-max, x ~ q*scale + min with q in [0, 2^b - 1].
 *   keys:   per channel, in groups of G consecutive cache entries (KIVI quantises keys along
 *           the token axis). Keys are flushed in blocks of R: after m entries the first
 *           m - m % R are quantised, the m % R newest stay in fp16 (R = 0: no residual,
 *           every complete group of G is quantised).
 *   values: per entry, in groups of G channels; the R newest entries stay in fp16 and each
 *           older one is quantised token by token (max(0, m - R) quantised).
 *   The cache is treated as the stream of its entries in order (after an eviction part of a
 *   composition, its kept entries), re-encoded for every query position t (time_dependent):
 *   KIVI's state after m tokens does not depend on how they arrived (prefill or decode), so
 *   this is exactly what KIVI holds when query t attends.
 *   Constant groups: the reference divides by a zero scale; here scale 0 leaves them exact.
 * Rule (mode=sym8|sym4): every entry, K and V alike, per token over all D channels,
 *   symmetric: scale = max|x| / (2^(b-1) - 1), x ~ round(x/scale)*scale (no residual; kbits,
 *   vbits, group and residual are ignored).
 * Bytes: codes (b/8 per element), fp16 residual entries (2 per element), scales and
 *   zero-points fp16 each (KIVI: 4 bytes per key group per channel and per value group per
 *   token; sym: one 2-byte scale per row).
 * Defaults: kbits=2 vbits=2 group=32 residual=128 (KIVI-2 in the paper's main setting).
 * Deviations: scales and zero-points are counted as fp16 but kept in f32 when dequantising
 *   (fp16 storage would add at most 2^-11 relative error to them); round half to even.
 * Reference: Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV
 *   Cache" (ICML 2024, arXiv 2402.02750), github.com/jy-yuan/KIVI.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strategy.h"
#include "strategies/quant.h"

/* ---- core ------------------------------------------------------------------------------ */

/* The quantisers write y from x (y == x: in place; else x is left unchanged and y gets
 * exactly what the in-place form leaves in x: same operations on the same values). */
static float asym_group_to(float *y, const float *x, size_t cnt, size_t stride, int bits)
{
    if (cnt == 0) return 0.0f;
    float mn = x[0], mx = x[0];
    for (size_t i = 1; i < cnt; i++) {
        float a = x[i * stride];
        if (a < mn) mn = a;
        if (a > mx) mx = a;
    }
    float qmax = (float)((1u << bits) - 1u);
    float scale = (mx - mn) / qmax;
    if (!(scale > 0.0f)) {                 /* constant group: exact */
        if (y != x) for (size_t i = 0; i < cnt; i++) y[i * stride] = x[i * stride];
        return 0.0f;
    }
    for (size_t i = 0; i < cnt; i++) {
        float q = nearbyintf((x[i * stride] - mn) / scale);
        if (q < 0.0f) q = 0.0f;
        if (q > qmax) q = qmax;
        y[i * stride] = q * scale + mn;
    }
    return scale;
}

float quant_asym_group(float *x, size_t cnt, size_t stride, int bits) { return asym_group_to(x, x, cnt, stride, bits); }

static float sym_row_to(float *y, const float *x, size_t D, int bits)
{
    float amax = 0.0f;
    for (size_t d = 0; d < D; d++) if (fabsf(x[d]) > amax) amax = fabsf(x[d]);
    float qmax = (float)((1u << (bits - 1)) - 1u);
    float scale = amax / qmax;
    if (!(scale > 0.0f)) {
        if (y != x) memcpy(y, x, D * sizeof *y);
        return 0.0f;
    }
    for (size_t d = 0; d < D; d++) {
        float q = nearbyintf(x[d] / scale);
        if (q < -qmax) q = -qmax;
        if (q > qmax) q = qmax;
        y[d] = q * scale;
    }
    return scale;
}

float quant_sym_row(float *x, size_t D, int bits) { return sym_row_to(x, x, D, bits); }

size_t quant_kivi_nq_keys(size_t m, size_t G, size_t R)
{
    return R ? m - m % R : m - m % G;
}

size_t quant_kivi_nq_values(size_t m, size_t R)
{
    return m > R ? m - R : 0;
}

static void kivi_keys_grow_to(float *k, const float *src, size_t m_prev, size_t m, size_t D, int bits, size_t G, size_t R)
{
    size_t k0 = quant_kivi_nq_keys(m_prev, G, R), k1 = quant_kivi_nq_keys(m, G, R);
    for (size_t a = k0; a + G <= k1; a += G)
        for (size_t d = 0; d < D; d++) asym_group_to(k + a * D + d, src + a * D + d, G, D, bits);
}

void quant_kivi_keys_grow(float *k, size_t m_prev, size_t m, size_t D, int bits, size_t G, size_t R)
{
    kivi_keys_grow_to(k, k, m_prev, m, D, bits, G, R);
}

void quant_kivi_keys(float *k, size_t m, size_t D, int bits, size_t G, size_t R)
{
    quant_kivi_keys_grow(k, 0, m, D, bits, G, R);
}

/* channels past the last whole group stay exact (the strategy refuses G not dividing D) */
static void kivi_value_row_to(float *v, const float *src, size_t D, int bits, size_t G)
{
    size_t c = 0;
    for (; c + G <= D; c += G) asym_group_to(v + c, src + c, G, 1, bits);
    if (v != src && c < D) memcpy(v + c, src + c, (D - c) * sizeof *v);
}

void quant_kivi_value_row(float *v, size_t D, int bits, size_t G) { kivi_value_row_to(v, v, D, bits, G); }

void quant_kivi_values(float *v, size_t m, size_t D, int bits, size_t G, size_t R)
{
    size_t nq = quant_kivi_nq_values(m, R);
    for (size_t e = 0; e < nq; e++) quant_kivi_value_row(v + e * D, D, bits, G);
}

void quant_kivi_side_bytes(size_t m, size_t D, int bits, size_t G, size_t R, int keys, double *payload,
                           double *scales)
{
    double nq = (double)(keys ? quant_kivi_nq_keys(m, G, R) : quant_kivi_nq_values(m, R));
    double dm = (double)m, dD = (double)D;
    *payload = nq * dD * bits / 8.0 + (dm - nq) * dD * 2.0;
    *scales = keys ? (nq / (double)G) * dD * 4.0 : nq * (dD / (double)G) * 4.0;
}

void quant_kivi_bytes(size_t m, size_t D, int kbits, int vbits, size_t G, size_t R,
                      double *payload, double *scales)
{
    double kp, ks, vp, vs;      /* exact: multiples of 1/4 far below 2^53 */
    quant_kivi_side_bytes(m, D, kbits, G, R, 1, &kp, &ks);
    quant_kivi_side_bytes(m, D, vbits, G, R, 0, &vp, &vs);
    *payload = kp + vp;
    *scales = ks + vs;
}

void quant_sym_bytes(size_t m, size_t D, int bits, double *payload, double *scales)
{
    *payload = 2.0 * (double)m * (double)D * bits / 8.0;
    *scales = 2.0 * (double)m * 2.0;
}

/* ---- strategy ---------------------------------------------------------------------------- */

enum { QM_KIVI = 0, QM_SYM8 = 1, QM_SYM4 = 2 };

typedef struct quant_cfg { int mode, kbits, vbits; size_t group, residual; } quant_cfg;

static const rp_param_def quant_params[] = {
    { "kbits", RP_INT, "2", 2, 8, NULL, "key bits: 2, 4 or 8" },
    { "vbits", RP_INT, "2", 2, 8, NULL, "value bits: 2, 4 or 8" },
    { "group", RP_INT, "32", 1, 65536, NULL, "G: key groups of G entries per channel, value groups of G channels" },
    { "residual", RP_INT, "128", 0, 1 << 30, NULL, "R: newest entries kept in fp16 (multiple of G)" },
    { "mode", RP_ENUM, "kivi", 0, 0, "kivi|sym8|sym4", "kivi, or per-token symmetric int8/int4" },
};

static int bits_ok(int b) { return b == 2 || b == 4 || b == 8; }

static int quant_configure(const double *values, void **cfg, char *err, size_t errlen)
{
    quant_cfg c = { .kbits = (int)values[0], .vbits = (int)values[1], .group = (size_t)values[2],
                    .residual = (size_t)values[3], .mode = (int)values[4] };
    *cfg = NULL;
    if (c.mode == QM_KIVI) {
        if (!bits_ok(c.kbits) || !bits_ok(c.vbits)) {
            snprintf(err, errlen, "quant: kbits=%d vbits=%d: bits must be 2, 4 or 8", c.kbits, c.vbits);
            return -1;
        }
        if (c.residual % c.group) {
            snprintf(err, errlen, "quant: residual=%zu is not a multiple of group=%zu (KIVI flushes keys in blocks of R)",
                     c.residual, c.group);
            return -1;
        }
    }
    quant_cfg *p = malloc(sizeof *p);
    if (!p) { snprintf(err, errlen, "out of memory"); return -1; }
    *p = c;
    *cfg = p;
    return 0;
}

static void quant_free_cfg(void *cfg) { free(cfg); }

/* encode_extend: the KIVI state only grows (keys: whole groups of G rows below
 * quant_kivi_nq_keys(m), a multiple of G; values: rows below quant_kivi_nq_values(m)), and a
 * quantised group depends on its own rows only, so the rows quantised between m_prev and m
 * entries are the whole of the difference. Sym modes are per row. Equal to quant_encode bit
 * for bit with one encode of all m entries (tests/unit/test_quant.c checks every m against the
 * core functions quant_kivi_keys/values).
 * encode_rows is its body with the exact rows read from sk, sv: c->k, c->v (in place), or
 * for m_prev = 0 another cache's rows (encode_from: every row of c is written, quantised or
 * copied exact). */
static int encode_rows(const quant_cfg *q, rp_cache *c, size_t m_prev, const float *sk, const float *sv, char *err,
                       size_t errlen)
{
    size_t m = c->n, D = c->D;
    int copy = sk != c->k || sv != c->v;
    if (m_prev > m || (copy && m_prev)) {
        snprintf(err, errlen, "quant: encode_extend from %zu to %zu entries", m_prev, m);
        return -1;
    }
    if (q->mode != QM_KIVI) {
        int b = q->mode == QM_SYM8 ? 8 : 4;
        for (size_t e = m_prev; e < m; e++) {
            sym_row_to(c->k + e * D, sk + e * D, D, b);
            sym_row_to(c->v + e * D, sv + e * D, D, b);
        }
        quant_sym_bytes(m, D, b, &c->bytes.payload, &c->bytes.scales);
        c->modified = 1;
        return 0;
    }
    if (D % q->group) {
        snprintf(err, errlen, "quant: group=%zu does not divide head_dim %zu", q->group, D);
        return -1;
    }
    size_t G = q->group, R = q->residual;
    kivi_keys_grow_to(c->k, sk, m_prev, m, D, q->kbits, G, R);
    size_t k1 = quant_kivi_nq_keys(m, G, R), v1 = quant_kivi_nq_values(m, R);
    for (size_t e = quant_kivi_nq_values(m_prev, R); e < v1; e++)
        kivi_value_row_to(c->v + e * D, sv + e * D, D, q->vbits, G);
    if (copy) {                         /* the exact rows: the fp16 residual */
        memcpy(c->k + k1 * D, sk + k1 * D, (m - k1) * D * sizeof *c->k);
        memcpy(c->v + v1 * D, sv + v1 * D, (m - v1) * D * sizeof *c->v);
    }
    quant_kivi_bytes(m, D, q->kbits, q->vbits, G, R, &c->bytes.payload, &c->bytes.scales);
    c->modified = k1 + v1 > 0;
    return 0;
}

static int quant_encode_extend(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *c,
                               size_t m_prev, char *err, size_t errlen)
{
    (void)ctx; (void)g; (void)t;
    return encode_rows(cfg, c, m_prev, c->k, c->v, err, errlen);
}

/* encode_from: encode of a copy whose rows are sk, sv, written straight into c. */
static int quant_encode_from(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t, const float *sk,
                             const float *sv, rp_cache *c, char *err, size_t errlen)
{
    (void)ctx; (void)g; (void)t;
    return encode_rows(cfg, c, 0, sk, sv, err, errlen);
}

/* encode_cuts: KIVI quantises key groups below quant_kivi_nq_keys(m) and value rows below
 * quant_kivi_nq_values(m), each from its own exact rows only, and never touches them again;
 * the sym modes quantise every row on arrival. */
static int quant_encode_cuts(const void *cfg, const rp_layer_ctx *ctx, const rp_cache *c, size_t m, size_t *kcut,
                             size_t *vcut)
{
    const quant_cfg *q = cfg;
    (void)ctx; (void)c;
    if (q->mode != QM_KIVI) { *kcut = *vcut = m; return 0; }
    *kcut = quant_kivi_nq_keys(m, q->group, q->residual);
    *vcut = quant_kivi_nq_values(m, q->residual);
    return 0;
}

/* encode = encode_extend from an empty state (every row is new). */
static int quant_encode(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *c,
                        char *err, size_t errlen)
{
    return quant_encode_extend(cfg, ctx, g, t, c, 0, err, errlen);
}

/* q_rows: encode, encode_extend, encode_cuts and encode_from read the cache rows only (never ctx) */
static size_t quant_q_rows(const void *cfg, size_t P, size_t B, int *whole) { return 0; }

const rp_strategy rp_strategy_quant = {
    .name = "quant",
    .summary = "KIVI: keys per channel, values per token, asymmetric min-max, fp16 residual",
    .reference = "Liu et al. 2024, KIVI (arXiv 2402.02750); github.com/jy-yuan/KIVI",
    .kind = RP_ENCODE,
    .protocols = RP_PREFILL | RP_ONLINE,
    .time_dependent = 1,
    .params = quant_params,
    .n_params = sizeof quant_params / sizeof quant_params[0],
    .configure = quant_configure,
    .free_cfg = quant_free_cfg,
    .encode = quant_encode,
    .encode_extend = quant_encode_extend,
    .encode_cuts = quant_encode_cuts,
    .encode_from = quant_encode_from,
    .head_separable = 1,     /* rows and key groups of one kv head's cache only */
    .q_rows = quant_q_rows,   /* no prompt query read */
};
