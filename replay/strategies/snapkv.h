/* snapkv core (pure functions + the scorer shared with pyramidkv and adakv;
 * replay/strategies/snapkv.c is the strategy). P prompt tokens, w window, G query heads of
 * one kv head, B budget (entries, the window included). */
#ifndef KV_STRAT_SNAPKV_H
#define KV_STRAT_SNAPKV_H

#include <stddef.h>
#include <stdint.h>

#include "strategy.h"

enum { SNAPKV_PRESET_SNAPKV = 0, SNAPKV_PRESET_KVPRESS = 1, SNAPKV_PRESET_FACTORY = 2 };
enum { SNAPKV_POOL_AVG = 0, SNAPKV_POOL_MAX = 1 };
enum { SNAPKV_REDUCE_SUM = 0, SNAPKV_REDUCE_MEAN = 1 };
#define SNAPKV_GQA_RUN (-1)         /* the run's --gqa-reduce (ctx->gqa_reduce) */

typedef struct snapkv_opts {
    size_t window, kernel;
    int pool;               /* SNAPKV_POOL_* */
    int reduce;             /* over the window's queries: SNAPKV_REDUCE_* */
    int gqa;                /* RP_GQA_* or SNAPKV_GQA_RUN */
    int gqa_before;         /* 1: reduce over the group before pooling, 0: after */
} snapkv_opts;

/* Preset values (see snapkv.c's header for their sources). */
void snapkv_preset(int preset, snapkv_opts *o);

/* Resolve a parameter set: window/kernel < 0 and pool/reduce/gqa < 0 take the preset's
 * value. Checks kernel odd and >= 1, window >= 1. 0 ok, -1 with one line in err. */
int snapkv_resolve(int preset, long window, long kernel, int pool, int reduce, int gqa, int gqa_before,
                   snapkv_opts *o, const char *who, char *err, size_t errlen);

/* PyTorch's avg_pool1d / max_pool1d with kernel k (odd), stride 1, padding k/2: the average
 * counts the zero padding (count_include_pad), the maximum ignores it. x, out [n], distinct. */
void snapkv_pool(const double *x, size_t n, size_t k, int pool, double *out);

/* Scores of the prefix keys [0, P - w) from the window's attention:
 * attn [G][w][P] (row r = query P - w + r, causal, normalised over its visible keys).
 * gqa: RP_GQA_* (resolved). score [P - w] out. 0 ok, -1 ENOMEM. */
int snapkv_score(const snapkv_opts *o, int gqa, const float *attn, size_t G, size_t P, double *score);

/* Keep the window [P - w, P) and the B - w best prefix scores (ties: lower position).
 * Requires w < B < P. kept [B] ascending. Returns B (rp_topk: cannot fail). */
size_t snapkv_keep(const double *score, size_t P, size_t w, size_t B, int32_t *kept);

/* snapkv_score for kv head g of a layer: the window's column sums from ctx->prompt_colsum
 * (shared by every configuration with the same window), else the rows from ctx->prompt_attn.
 * Requires w < P. 0 ok, -1 ENOMEM. */
int snapkv_head_score(const snapkv_opts *o, const rp_layer_ctx *ctx, size_t g, double *score);

/* Shared parameter validation: "window W must be smaller than the budget B". */
int snapkv_check_window(const char *who, size_t w, size_t B, const rp_layer_ctx *ctx, char *err, size_t errlen);

#endif /* KV_STRAT_SNAPKV_H */
