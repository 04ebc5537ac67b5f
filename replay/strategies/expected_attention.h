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

#endif /* KV_STRAT_EXPECTED_ATTENTION_H */
