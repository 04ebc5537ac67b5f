/* entropy_merge core (pure functions; replay/strategies/entropy_merge.c is the strategy).
 * P prompt tokens, B budget (entries). */
#ifndef KV_STRAT_ENTROPY_MERGE_H
#define KV_STRAT_ENTROPY_MERGE_H

#include <stddef.h>
#include <stdint.h>

/* Normalised Shannon entropy of one attention row over its nvis visible keys:
 * -sum p log p / log(nvis) (0 when nvis <= 1). */
double emerge_entropy(const float *p, size_t nvis);

/* Choose the merged (high-entropy) tokens: the first min(sinks, B - 1) tokens are never
 * merged; the others enter the merged set by decreasing entropy (ties: lower position
 * first) until the entries (kept tokens + contiguous merged spans) are at most B.
 * high[P] out (1 = merged). Returns the number of entries. */
size_t emerge_plan(const float *ent, size_t P, size_t sinks, size_t B, uint8_t *high);

#endif /* KV_STRAT_ENTROPY_MERGE_H */
