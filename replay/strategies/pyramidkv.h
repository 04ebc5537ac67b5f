/* pyramidkv core (pure; replay/strategies/pyramidkv.c is the strategy). */
#ifndef KV_STRAT_PYRAMIDKV_H
#define KV_STRAT_PYRAMIDKV_H

#include <stddef.h>

/* KVCache-Factory integer form: C = max_capacity_prompt (the average budget per kv head,
 * window included), w window, beta, N layers, layer l, P prompt length. Returns the entries
 * kept at layer l (window included); P when P < C (no compression). */
size_t pyramidkv_budget_factory(size_t C, size_t w, size_t beta, size_t N, size_t l, size_t P);

/* kvpress float form (PyramidKVPress.get_layer_budget): B = kept entries per head on
 * average (q_len * (1 - compression_ratio)), w window, beta, N layers, layer l, P prompt
 * length. Returns round-half-even of the layer's budget, or round(B) in the fallback. */
size_t pyramidkv_budget_kvpress(double B, size_t w, size_t beta, size_t N, size_t l, size_t P);

#endif /* KV_STRAT_PYRAMIDKV_H */
