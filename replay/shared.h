/* Scores shared by every configuration of a fused sweep: computed once per work item ((sequence,
 * layer), or (sequence, layer, kv head), and once more in a plan item for the planned
 * strategies' plans: engine.h), on the first request, and handed to the
 * strategies through rp_layer_ctx (strategy.h lists which hook gets what). A sweep of twenty
 * configurations then pays for the prompt's attention once, not once per configuration.
 *
 * P prompt length, n valid tokens, D head_dim, H q-heads, Hkv kv-heads.
 *
 * Never a dense P x P matrix: the prompt's attention is streamed in blocks of query rows
 * (the engine's blocked kernel, attn_full_rows) and reduced as it goes: column sums over the
 * rows (accumulated attention: H2O, CAB, ObservedAttention-style scores; over the last w rows:
 * the observation window of SnapKV, PyramidKV, AdaKV) and each row's own normalised
 * entropy (entropy_merge); and, apart from the attention, criticalkv's value norms
 * ||v W_O||_1 per (kv head, prompt token), shared by criticalkv and criticaladakv at every
 * budget. Memory per work item: a few P-long rows per query head, one
 * block of rows x P logits while computing, and page min/max of the keys (Quest).
 *
 * Values are exactly those a strategy would get by summing ctx->prompt_attn rows itself:
 * the probabilities are the same fp32 numbers (attn_probs_row of the logits of the same
 * kernel: one vectorised exp per entry, exp(s - max) / sum, relative error within 10 ulp +
 * |s - max| 2^-24 of the exact softmax, the exp tested against libm over [-87, 0] in
 * test_attn; rows never depend on the block they are computed in, attn.h) and they are
 * added in double in ascending row order starting from 0. So switching a strategy to the
 * shared scores changes no bit of its output. (The prompt pass asks the kernel for logits
 * only: its own online softmax would be a second exp per entry.)
 *
 * Row entropies use log p = s - lz (lz = the row's log partition, p = exp(s - lz) up to
 * p's own rounding), so no log is taken per entry: -sum p log p = sum p (lz - s) in
 * double; against -sum p log(p) of the same fp32 p the difference is at most
 * sum p |log(p_fp32) - (s - lz)| <= (10 + |s - lz|) 2^-24 per unit of mass, ~1e-6 of a
 * nat for the rows here (test_shared bounds both against float64).
 */
#ifndef KV_SHARED_H
#define KV_SHARED_H

#include <stddef.h>
#include <stdint.h>

#include "attn.h"

/* out[j] = sum over the query rows t in [t0, t1) with want == NULL or want[t] != 0 of p(t, j),
 * for every j < ncols, where p(t, .) is query row t's causal attention over the keys [0, P)
 * (normalised over its visible keys, 0 elsewhere); rows added in ascending order in double,
 * starting from 0. ent, when not NULL: ent[t - t0] = the normalised entropy of row t
 * (-sum p log p / log nvis over its visible keys, log p = s - lse as above; 0 for
 * unwanted rows). q [>= t1][D], k [P][D] (t1 <= P); kt NULL, or k transposed once by attn_transpose_keys (>= t1 keys): the same
 * results without a transpose per block of rows. 0 ok, -1 out of memory. Work: only the
 * wanted rows' causal logits. */
int rp_prompt_colsum(const float *q, const float *k, const float *kt, size_t P, size_t D, const attn_params *ap,
                     size_t t0, size_t t1, const uint8_t *want, size_t ncols, double *out, double *ent);

/* Entropy of a probability row p[0..nvis) normalised by log(nvis) (so that rows with few
 * visible keys compare with long ones): -sum_{p_j > 0} p_j log p_j / log nvis, 0 when
 * nvis <= 1. Summed in double in index order. */
double rp_entropy_norm(const float *p, size_t nvis);

/* Elementwise min and max of the keys of pages [p0, p1) of `page` consecutive rows:
 * kmin/kmax [p1 - p0][D]; k [>= p1 * page][D]. */
void rp_page_minmax(const float *k, size_t D, size_t page, size_t p0, size_t p1, float *kmin, float *kmax);

/* The shared object of one work item (not thread-safe: one per item, used by one thread). */
typedef struct rp_shared rp_shared;

/* q [H][n][D], k [Hkv][n][D] stay owned by the caller and must outlive the object. */
/* want_ent: a configuration will ask for the row entropies (the whole prompt's column sums
 * are then computed with them in one pass). */
rp_shared *rp_shared_new(const float *q, const float *k, size_t H, size_t Hkv, size_t n, size_t P, size_t D,
                         const attn_params *ap, int want_ent);
void rp_shared_free(rp_shared *s);
/* Optional, before any other call: the object's scratch (the transposed prompt keys of each
 * kv head, made on first use, and the logits rows of its column sums) goes into buf,
 * rp_shared_scratch_floats(s) floats owned by the caller and outliving the object, instead of
 * a malloc per kv head and per call (the engine passes a thread's buffer, so that a work item
 * does not fault in fresh pages). Every part is written before it is read: buf's previous
 * contents are never read. */
size_t rp_shared_scratch_floats(const rp_shared *s);
void rp_shared_scratch(rp_shared *s, float *buf);

/* Scores recorded at capture (/prompt_scores, kvcapture --prompt-scores; kvreplay run
 * --prompt-scores trace, or auto resolved to it) for the object's H query heads: colsum [H][n], colsum[h][j] = the sum
 * of p(t, j) over EVERY query row t < n (the prompt's and the evaluated ones), and ent [H][n],
 * each row's normalised entropy, both computed by the capture in float64 from the stored
 * (f16) Q/K with these attn_params and rounded to f32. Owned by the caller, outliving the
 * object. From then on the whole-prompt range [0, P) of rp_shared_colsum is
 *     max(0, colsum[h][j] - sum_{t in [P, n)} p(t, j))
 * with p(t, .) the replay's own fp32 probabilities of row t over its visible keys [lo, t]
 * (the same normalisation as the captured rows: keys past P included), computed here for
 * the n - P rows alone (work (n - P) n D per head instead of P^2 D / 2; the engine's full
 * pass computes the same rows' logits, but after the prefill hooks that need these sums:
 * reusing them would mean running it first and keeping (n - P) x n probabilities per query
 * head, 64 MiB per layer at 8k, for about one full pass's logits saved), and
 * rp_shared_entropy serves ent[h][0, P). Other ranges (observation windows, masked rows)
 * are still computed.
 *
 * Error of the served sum against the recomputed one r = sum_{t < P} p~(t, j) (p~ the
 * replay's fp32 probabilities): write c for colsum's exact value, d = sum_{t >= P} p(t, j)
 * (exact), d~ the computed one, eps_p the relative error of one probability of either side
 * (the replay's: within (10 + |s - max|) 2^-24 plus what the fp32 logit's rounding does,
 * shared.h's note on attn_probs_row; the capture's: float64, negligible, from the same f16
 * inputs, so both approximate the same exact p). Then
 *     |(c~ - d~) - r| <= |c~ - c| + |d~ - d| + |(c - d) - r|
 *                     <= 2^-24 c + eps_p d + eps_p r       (f32 storage of c: 2^-24 c;
 *                                                           the double sums: below 2^-50 n)
 *                      = (2^-24 + eps_p) r + (2^-24 + eps_p) d
 * so relative to r: (2^-24 + eps_p)(1 + d / r). d / r is large only for columns the
 * evaluated rows attend much more than the prompt rows do (the last prompt tokens, seen by
 * few prompt rows): their absolute error stays (2^-24 + eps_p)(r + d), ~1e-6 of a probability
 * mass of at most n - j. The clamp at 0 only moves the value towards r (r >= 0). Entropies:
 * the captured float64 value rounded to f32 (2^-24 relative) against the replay's within
 * ~1e-6 of a nat (above). */
int rp_shared_use_captured(rp_shared *s, const float *colsum, const float *ent);

/* The evaluated rows' share for the captured sums above from the caller: fn(arg, h, out) writes
 * out [P] = the sum over rows t in [P, n) of query head h's probabilities p(t, j), j < P, each
 * row normalised over its visible keys (what rp_prompt_colsum computes for those rows), and
 * returns 0, or -1 on failure (the caller's message). The engine computes them from the full
 * pass it runs over those rows anyway (replay/engine.c, item_decode_share) instead of a
 * second pass here. Without it (or fn NULL) the share is computed here. */
typedef int (*rp_decode_share_fn)(void *arg, size_t h, double *out);
void rp_shared_use_decode_share(rp_shared *s, rp_decode_share_fn fn, void *arg);

/* rp_prompt_colsum of query head h (ncols = P). Row ranges without a mask are kept (the
 * whole prompt, observation windows), at most a few per head; masked requests are computed
 * each time (their rows are the configuration's own). The whole-prompt range [0, P) also
 * fills the row entropies. 0 ok, -1 out of memory. */
int rp_shared_colsum(rp_shared *s, size_t h, size_t t0, size_t t1, const uint8_t *want, double *out);

/* [P] the normalised entropy of each prompt row of query head h (row t over keys [lo, t]),
 * or NULL when out of memory. Valid until rp_shared_free. */
const double *rp_shared_entropy(rp_shared *s, size_t h);

/* Min/max of the original keys of kv head g over pages [0, np) of `page` rows, each page
 * whole (np * page <= n): *kmin, *kmax [np][D], valid until the next call or rp_shared_free.
 * Extended incrementally: a request for more pages computes only the new ones. 0 ok, -1 out
 * of memory or np * page > n. */
int rp_shared_pages(rp_shared *s, size_t g, size_t page, size_t np, const float **kmin, const float **kmax);
/* kv head g's n keys transposed once (attn_transpose_keys: attn_keys_t_floats(n, D) floats),
 * for the shared scores and the engine's full pass alike; NULL when out of memory or g is out
 * of range. Valid until rp_shared_free. */
const float *rp_shared_keys_t(rp_shared *s, size_t g);
/* The same pages d-major: page p's dimension d at tmin[d * *ld + p], ld = n / page (the
 * strategy interface's key_pages; lanes of quest_bounds_t are pages). Transposed as pages are
 * added; valid until the next call for (g, page). 0 ok, -1 as rp_shared_pages. */
int rp_shared_pages_t(rp_shared *s, size_t g, size_t page, size_t np, const float **tmin, const float **tmax,
                      size_t *ld);

/* criticalkv's value norms: u[j] = mean over the G query heads i of ||v_j W_i||_1 for j < P,
 * with v [P][D] one kv head's values and W_i = wo + i D C the [D][C] block of W_O of its i-th
 * query head. Each element of v_j W_i is summed in double over d in order from 0 (the
 * products of two floats are exact), the |.| in order of i then c, the mean as that sum / G;
 * the same bits on every machine (an AVX2 path with the same order). Work P G D C.
 * 0 ok, -1 out of memory. */
int rp_value_norms(const float *v, size_t P, size_t D, const float *wo, size_t C, size_t G, double *u);

/* rp_value_norms of kv head g (v its values [n][D], wo the layer's W_O [H*D][C], its rows
 * g G D .. (g + 1) G D - 1 used), computed on the first request and kept: [P], valid until
 * rp_shared_free; the same v, wo and C on every call. NULL when out of memory. */
const double *rp_shared_value_norms(rp_shared *s, size_t g, const float *v, const float *wo, size_t C);

#endif /* KV_SHARED_H */
