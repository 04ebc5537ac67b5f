/* minicache core: SLERP merging of two adjacent layers' rows (pure functions;
 * replay/strategies/minicache.c is the strategy). m rows, D head_dim. */
#ifndef KV_STRAT_MINICACHE_H
#define KV_STRAT_MINICACHE_H

#include <stddef.h>
#include <stdint.h>

/* out = SLERP(a/|a|, b/|b|; t), a unit vector (t = 0: a's direction, t = 1: b's).
 * Nearly parallel directions (sin theta < 1e-6) interpolate linearly, then normalise;
 * a zero vector contributes the other's direction. */
void minicache_slerp(const float *a, const float *b, size_t D, double t, float *out);

/* Merge layer rows xa (lower layer) and xb (upper) [m][D]: the round(retain * m) tokens with
 * the lowest cosine between the layers are retained exact (retained[i] = 1), the others
 * share one direction SLERP(a, b; t) and keep their own magnitudes. out_a, out_b [m][D]
 * (either may be NULL): the reconstructions of the two layers. Returns the retained count,
 * or (size_t)-1 when out of memory. */
size_t minicache_merge(const float *xa, const float *xb, size_t m, size_t D, double t, double retain,
                       float *out_a, float *out_b, uint8_t *retained);

#endif /* KV_STRAT_MINICACHE_H */
