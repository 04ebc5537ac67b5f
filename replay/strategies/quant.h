/* quant core: KIVI asymmetric min-max and per-token symmetric quantisers (pure functions,
 * no engine dependency; replay/strategies/quant.c wraps them as the `quant` strategy).
 *
 * m entries (the cache in order), D head_dim, G group, R residual window, b bits.
 * All quantisers work in place on f32 rows and return the reconstruction (dequantised
 * values); rounding is round-half-to-even (nearbyintf), as numpy's np.round.
 */
#ifndef KV_STRAT_QUANT_H
#define KV_STRAT_QUANT_H

#include <stddef.h>

/* Asymmetric min-max over cnt elements x[0], x[stride], ...: scale = (max - min)/(2^b - 1),
 * q = clamp(round((x - min)/scale), 0, 2^b - 1), x <- q*scale + min. A constant group
 * (scale 0) is left exact. Returns the scale. */
float quant_asym_group(float *x, size_t cnt, size_t stride, int bits);
/* Symmetric per row: scale = max|x|/(2^(b-1) - 1), x <- clamp(round(x/scale)) * scale. */
float quant_sym_row(float *x, size_t D, int bits);

/* KIVI stream state after m entries: keys quantised in blocks of R (m - m % R of them;
 * R = 0: m - m % G), values token by token beyond the R most recent (max(0, m - R)). */
size_t quant_kivi_nq_keys(size_t m, size_t G, size_t R);
size_t quant_kivi_nq_values(size_t m, size_t R);

/* KIVI keys [m][D]: per channel, groups of G consecutive entries among the first
 * quant_kivi_nq_keys ones; the rest stay exact (fp16 residual). */
void quant_kivi_keys(float *k, size_t m, size_t D, int bits, size_t G, size_t R);
/* The incremental form: the key groups that enter the quantised range when the stream
 * grows from m_prev to m entries (rows below m_prev already quantised; keys = grow from 0). */
void quant_kivi_keys_grow(float *k, size_t m_prev, size_t m, size_t D, int bits, size_t G, size_t R);
/* KIVI values [m][D]: per entry, groups of G channels (G must divide D), for the first
 * quant_kivi_nq_values entries. */
void quant_kivi_values(float *v, size_t m, size_t D, int bits, size_t G, size_t R);
/* One value row [D] of KIVI values (the per-entry step of quant_kivi_values). */
void quant_kivi_value_row(float *v, size_t D, int bits, size_t G);

/* Bytes of m KIVI entries (K and V together): payload (codes + fp16 residual) and
 * scales (scale + zero-point, fp16 each, per group). */
void quant_kivi_bytes(size_t m, size_t D, int kbits, int vbits, size_t G, size_t R,
                      double *payload, double *scales);
/* The same for one side: keys != 0 the key side of m entries, else the value side. */
void quant_kivi_side_bytes(size_t m, size_t D, int bits, size_t G, size_t R, int keys, double *payload,
                           double *scales);
/* Bytes of m per-token symmetric entries (K and V): codes + one fp16 scale per row. */
void quant_sym_bytes(size_t m, size_t D, int bits, double *payload, double *scales);

#endif /* KV_STRAT_QUANT_H */
