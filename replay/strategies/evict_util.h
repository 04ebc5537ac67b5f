/* Helpers shared by the attention-scored eviction strategies (h2o, tova, snapkv, pyramidkv,
 * adakv, quest, cab). Not a strategy itself: no entry in list.h.
 *
 * Scores are double (the references rank in fp32/fp16; double keeps our ranking a function of
 * the data, not of summation order). Ranking everywhere through rp_topk (strategy.h): ties to the lower index, NaN lowest. */
#ifndef KV_STRAT_EVICT_UTIL_H
#define KV_STRAT_EVICT_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "strategy.h"

/* out[j] = reduce over g < G of x[g][j] (x [G][n]); how: RP_GQA_MEAN | RP_GQA_MAX | RP_GQA_SUM. */
void ev_reduce(const double *x, size_t G, size_t n, int how, double *out);

/* acc[j] += sum over query rows r in [t0, t1) of p_h(r, j), j < ncols (ncols <= ctx->P),
 * with p from ctx->prompt_attn (causal rows over keys [0, P)). Rows in blocks; row r is
 * included only when want == NULL or want[r] != 0. Through ctx->prompt_colsum when the
 * engine provides it (the shared scores: unmasked ranges computed once per (sequence,
 * layer) for every configuration; the sum is the same to the bit when acc starts at 0, as
 * in every caller). 0 ok, -1 ENOMEM. */
int ev_accum_rows(const rp_layer_ctx *ctx, size_t h, size_t t0, size_t t1, const uint8_t *want,
                  size_t ncols, double *acc);

/* Append the kept positions (ascending) of kv head g's original K/V rows to c. 0 ok, -1 ENOMEM. */
int ev_push_kept(const rp_layer_ctx *ctx, size_t g, const int32_t *kept, size_t m, rp_cache *c);

/* Evict list for "keep the top B of score over the n cache entries": writes the complement
 * of rp_topk(score, n, B) to evict, returns its length (0 if n <= B; (size_t)-1 on ENOMEM). */
size_t ev_evict_complement(const double *score, size_t n, size_t B, size_t *evict);

/* Positions within the cache (an online_view): entry e of the m entries of c seen by query t
 * moves from its position c->pos[e] to t - (m - 1 - e); its key is de-rotated with the
 * trace's /rope tables at the old position and rotated at the new one (rotate_half or
 * interleaved, first rotary_dim dims). who names the option in errors ("streaming
 * reindex=1"): no tables, rotary_dim over 1024, more entries than positions. 0 ok, -1 with err. */
int ev_reindex_view(const rp_layer_ctx *ctx, size_t t, rp_cache *c, const char *who, char *err, size_t errlen);

/* Leverage-type kernels on double rows X [N][D] (cap, leverage). Every element takes the
 * operations of one row at a time in the same order (no FMA: GCC vectors, AVX2 or AVX-512F at
 * run time as attn_isa() allows, the generic path elsewhere and under -DATTN_NO_AVX2: the
 * same bits on each, tests/unit/test_evict_paths.c), EV_LEV_JB rows per block: A's rows
 * are read and written once per block, and the rows' chains of subtractions run in vector
 * lanes instead of waiting on each other's latency.
 * ev_gram_lower: the lower triangle of A = sum over i ascending of (c_i X_i[a]) X_i[b], with
 *   c_i = w[i] + eps (w NULL: the product X_i[a] X_i[b] itself); A [D][D] is zeroed first.
 * ev_inv_sqnorms: out[i] = ||L^-1 X_i||^2 for the lower triangular L [D][D] (forward
 *   substitution y[a] = (X_i[a] - sum over m < a of L[a][m] y[m], m ascending) / L[a][a],
 *   the squares added over a ascending); yb [D][EV_LEV_JB] scratch. */
enum { EV_LEV_JB = 16 };
void ev_gram_lower(const double *X, size_t D, size_t N, const double *w, double eps, double *A);
void ev_inv_sqnorms(const double *X, size_t D, size_t N, const double *L, double *yb, double *out);

/* Round half to even (Python's round(), used by the kvpress budget formulas). */
double ev_round_half_even(double x);

#endif /* KV_STRAT_EVICT_UTIL_H */
