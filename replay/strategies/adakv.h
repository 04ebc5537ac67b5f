/* adakv core (pure; replay/strategies/adakv.c is the strategy). */
#ifndef KV_STRAT_ADAKV_H
#define KV_STRAT_ADAKV_H

#include <stddef.h>
#include <stdint.h>

/* Head-adaptive allocation over the Hkv kv heads of a layer: score [Hkv][n]. Each head
 * first reserves its floor(alpha * B) best entries (the safeguard); then the Hkv * B best
 * scores of the whole layer are kept jointly (safeguarded entries rank first; ties: lower
 * flat index h * n + j). keep [Hkv][n] out (1 = kept). Returns the number kept
 * (min(Hkv * B, Hkv * n)), or -1 cast to size_t on ENOMEM. */
size_t adakv_allocate(const double *score, size_t Hkv, size_t n, size_t B, double alpha, uint8_t *keep);

#endif /* KV_STRAT_ADAKV_H */
