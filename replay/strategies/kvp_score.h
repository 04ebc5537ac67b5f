/* What kvpress's wrapper presses (chunk, chunkkv, criticalkv, criticaladakv, merging) share: the
 * base score, SnapKV's observation window score as kvpress's SnapKVPress.score returns it (the
 * window itself padded with the layer's maximum score so that it ranks first), their scorer
 * parameters and their configuration. Not a strategy: no entry in list.h. */
#ifndef KV_STRAT_KVP_SCORE_H
#define KV_STRAT_KVP_SCORE_H

#include <stddef.h>
#include <stdint.h>

#include "snapkv.h"
#include "strategy.h"

/* The base score of a layer, score [Hkv][P]: kv head g's SnapKV prefix scores
 * (snapkv_head_score, from the shared window sums) at [0, P - w) and, at the window [P - w, P),
 * the maximum prefix score over every kv head of the layer. Made in two steps, the plan hooks
 * of strategy.h (the padding crosses the kv heads of a layer, so the wrappers run per kv head
 * through a plan): kvp_plan_score writes kv head g's row (snapkv_head_score; w < P checked),
 * kvp_pad_window pads every row's window with the maximum over the rows' prefixes, heads in
 * order. cfg a kvp_cfg; kvp_plan_size is P when B < P, else 0 (no plan: everything kept). */
void kvp_pad_window(const snapkv_opts *o, double *score, size_t Hkv, size_t P);
size_t kvp_plan_size(const void *cfg, size_t P, size_t G, size_t B);
int kvp_plan_score(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B, double *out, char *err,
                   size_t errlen);
/* plan_layer of the wrappers whose plan is the padded score itself (criticalkv, merging). */
int kvp_plan_layer(const void *cfg, size_t Hkv, size_t G, size_t P, size_t B, double *plan, char *err,
                   size_t errlen);

/* The parameters every wrapper shares, declared in this order after its own: preset, window,
 * kernel (the SnapKV scorer's; preset kvpress by default). */
#define KVP_SCORER_PARAMS \
    { "preset", RP_ENUM, "kvpress", 0, 0, "snapkv|kvpress|factory", "base scorer: SnapKV with these defaults" }, \
    { "window", RP_INT, "-1", -1, 1e9, NULL, "observation window w (-1: the preset's)" }, \
    { "kernel", RP_INT, "-1", -1, 1e9, NULL, "pooling kernel, odd (-1: the preset's)" }

/* Resolve those three values (v[0..3)) into o. 0 ok, -1 with one line in err. */
int kvp_scorer_resolve(const double *v, snapkv_opts *o, const char *who, char *err, size_t errlen);

/* check_budget for wrappers whose scorer needs a window shorter than the prompt. */
int kvp_check_window(const snapkv_opts *o, const char *who, size_t P, char *err, size_t errlen);

/* The configuration of a wrapper whose own parameters are all numbers: those values (v[0..n_own),
 * in declaration order), then the resolved scorer. who names the strategy in messages. */
#define KVP_MAX_OWN 3
typedef struct kvp_cfg { const char *who; double own[KVP_MAX_OWN]; snapkv_opts o; } kvp_cfg;

/* configure for such a wrapper: n_own (<= KVP_MAX_OWN) values, then KVP_SCORER_PARAMS. 0 ok, -1
 * (one line in err unless out of memory). */
int kvp_configure(const double *v, size_t n_own, const char *who, void **cfg, char *err, size_t errlen);
void kvp_free(void *cfg);

/* check_budget for a kvp_cfg: the window must be shorter than the prompt when B < P. */
int kvp_check_budget(const void *cfg, size_t P, size_t B, size_t n_layers, char *err, size_t errlen);

/* B >= P: every kv head keeps all P entries unchanged (kept: P scratch). 0 ok, -1 out of memory. */
int kvp_keep_all(const rp_layer_ctx *ctx, int32_t *kept, rp_cache *out);

#endif /* KV_STRAT_KVP_SCORE_H */
