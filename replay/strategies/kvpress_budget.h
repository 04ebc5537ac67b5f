/* kvpress's budget rule, for the strategies that replay a kvpress press (observed_attention,
 * keydiff, cur, lagkv, expected_attention). Not a strategy: no entry in list.h.
 *
 * kvpress's ScorerPress keeps n_kept = int(q_len * (1 - compression_ratio)) entries; a
 * kvtrace configuration gives keep=F, i.e. compression_ratio = 1 - F, so the entries kept are
 * int(P * (1 - (1 - F))) computed in double as Python does (truncation; 1 - (1 - F) may
 * fall just below F, which kvpress then truncates too). At least 1 entry. With budget=N (or
 * outside the engine, ctx->keep == 0) the engine's B is used as given. */
#ifndef KV_STRAT_KVPRESS_BUDGET_H
#define KV_STRAT_KVPRESS_BUDGET_H

#include <stddef.h>

#include "strategy.h"

enum { KVPRESS_PRESET_KVPRESS = 0, KVPRESS_PRESET_KVTRACE = 1 };

/* The `preset` parameter every kvpress press strategy declares first. */
#define KVPRESS_PRESET_PARAM                                                                  \
    { "preset", RP_ENUM, "kvpress", 0, 0, "kvpress|kvtrace",                                 \
      "budget rule: kvpress int(P (1 - compression_ratio)), kvtrace the engine's round(keep P)" }

static inline size_t kvpress_n_kept(int preset, const rp_layer_ctx *ctx, size_t P, size_t B)
{
    if (preset != KVPRESS_PRESET_KVPRESS || ctx->keep <= 0 || ctx->keep >= 1) return B;
    double r = 1.0 - ctx->keep;                     /* kvpress's compression_ratio */
    double n = (double)P * (1.0 - r);
    return n < 1 ? 1 : (size_t)n;
}

#endif /* KV_STRAT_KVPRESS_BUDGET_H */
