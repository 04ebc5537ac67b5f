/* The RoPE helpers of expected_attention, shared with the strategies that need pre-RoPE
 * vectors or kvpress's averaged future rotation (leverage, compactor, cap). Not a strategy. */
#ifndef KV_STRAT_EXPECTED_ATTENTION_H
#define KV_STRAT_EXPECTED_ATTENTION_H

#include <stddef.h>

#include "strategy.h"

/* The rotation averaged over positions [P, P + F), per dim: (Rbar x)_d = cr[d] x_d +
 * sr[d] x_partner[d] (frequencies and amplitude read from the /rope tables; identity without
 * them). cr, sr, partner [D]. */
void ea_avg_rotation(const rp_layer_ctx *ctx, size_t P, size_t F, double *cr, double *sr, size_t *partner);

/* x (post-RoPE, at position t) un-rotated into out [D]: the exact inverse of the table's
 * rotation, amplitude divided out; a copy without tables. */
void ea_unrotate(const rp_layer_ctx *ctx, const float *x, size_t t, double *out);

/* Step 3's key terms for ea_keys_block() keys at once (kt [D][block], key i in lane i, in
 * double): a[i] = mu2 . k_i and, with S2, b[i] = sum over d of k_i[d] (S2[d] . k_i); kd [D]
 * scratch. On the path attn_isa() allows (generic, AVX2, AVX-512F): the same bits on each. */
size_t ea_keys_block(void);
void ea_keys(const double *kt, size_t D, const double *mu2, const double *S2, double *kd, double *a, double *b);

/* S[d][e] += x[r][d] x[r][e] over rows r = 0 .. nr - 1 in order (x [nr][D]), for e >= d (the
 * path may also write some e < d, which ea_head mirrors over); the same bits on each path. */
void ea_cov_rows(double *S, const double *x, size_t nr, size_t D);

#endif /* KV_STRAT_EXPECTED_ATTENTION_H */
