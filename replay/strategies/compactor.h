/* Scores of kvpress's Compactor family, shared by noncausal_attn, leverage and compactor (the
 * blend of the two). Not a strategy: no entry in list.h. Each works on kv head g's prompt
 * slice [s0, s1) (compactor leaves its sinks out of the slice) and writes S = s1 - s0 raw
 * scores in double; kvpress z-normalises them over every kv head and position together
 * (cp_znorm on the [Hkv][S] block).
 */
#ifndef KV_STRAT_COMPACTOR_H
#define KV_STRAT_COMPACTOR_H

#include <stddef.h>

#include "strategy.h"

/* Non-causal chunked attention (noncausal_attn.c): the slice is cut into chunks of `chunk`
 * positions from s0 (the last one may be short); inside a chunk every query attends to every
 * key of the chunk (no causal mask, unscaled logits q.k, softmax over the chunk); a[j] = mean
 * over the G query heads of the attention key j receives from its chunk's queries; then
 * a[j] * ||v_j|| is smoothed by a 3-wide moving average with zero padding (divided by 3 at
 * the ends too). out [S]. 0 ok, -1 out of memory. */
int cp_noncausal(const rp_layer_ctx *ctx, size_t g, size_t s0, size_t s1, size_t chunk, double *out);

/* Exact leverage scores of the centred pre-RoPE keys (leverage.c): keys un-rotated at their
 * positions with the /rope tables, X = keys minus their mean over the slice, out[i] =
 * max(0, x_i^T (X^T X + j I)^{-1} x_i) through a Cholesky factor, j = 0.01 (kvpress's first
 * jitter; raised tenfold up to four times while the factorisation fails). 0 ok; -1 with one
 * line in err (out of memory, a RoPE trace without tables, no factorisation). */
int cp_leverage(const rp_layer_ctx *ctx, size_t g, size_t s0, size_t s1, double *out, char *err, size_t errlen);

/* x <- (x - mean) / max(std, 1e-6) over x[0..n), std with n - 1 (torch's default; 0 when
 * n < 2). */
void cp_znorm(double *x, size_t n);

/* Plan hooks (strategy.h) of the strategies whose kv heads' scores [P] are z-normalised together
 * (noncausal_attn, leverage): plan_size P, plan_layer cp_znorm of the layer's [Hkv][P] rows. */
size_t cp_plan_size(const void *cfg, size_t P, size_t G, size_t B);
int cp_plan_layer(const void *cfg, size_t Hkv, size_t G, size_t P, size_t B, double *plan, char *err, size_t errlen);

#endif /* KV_STRAT_COMPACTOR_H */
