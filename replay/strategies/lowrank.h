/* lowrank core: RoPE (de-)rotation, a PCA basis through GSL, projection with an optional
 * quantised latent (pure functions; replay/strategies/lowrank.c is the strategy).
 *
 * D head_dim, R rotary_dim (leading dims rotated), r rank, U [D][D] row-major whose first r
 * COLUMNS are the basis vectors, sorted by decreasing eigenvalue.
 */
#ifndef KV_STRAT_LOWRANK_H
#define KV_STRAT_LOWRANK_H

#include <stddef.h>

/* x <- RoPE(x) with tables cos/sin [R] of one position (sign = +1), or its inverse
 * (sign = -1, de-rotation). interleaved: pairs (2i, 2i+1); else rotate_half pairs (i, i+R/2). */
void lowrank_rope(float *x, size_t R, const float *cos, const float *sin, int interleaved, int sign);

/* Eigenvectors of the symmetric D x D matrix cov (row-major, double) into U (columns,
 * descending eigenvalues), eigenvalues into eval (may be NULL). 0 ok, -1 GSL failure or
 * out of memory. */
int lowrank_basis(const double *cov, size_t D, double *U, double *eval);

/* x <- U_r (q(U_r^T x)) where q quantises the latent per token, symmetric, with `bits`
 * (0 = fp16/none, 8 or 4). */
void lowrank_project(float *x, size_t D, const double *U, size_t r, int bits);

/* Bytes of the stored rows of one side (K or V) of m entries at rank r (0 or D: fp16 rows;
 * else the latent: fp16, or `bits` per coordinate; its per-token scales are counted apart). */
double lowrank_side_bytes(size_t m, size_t D, size_t r, int bits);
/* Bytes of that side's per-token latent scales (an fp16 scale per projected row when the
 * latent is quantised, bits 8 or 4; none otherwise). */
double lowrank_side_scales(size_t m, size_t D, size_t r, int bits);

#endif /* KV_STRAT_LOWRANK_H */
