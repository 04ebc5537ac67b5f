/* criticalkv core shared with criticaladakv (replay/strategies/criticalkv.c). */
#ifndef KV_STRAT_CRITICALKV_H
#define KV_STRAT_CRITICALKV_H

#include <stddef.h>

#include "strategy.h"

/* *u [ctx->P]: u[j] = mean over the G query heads h of kv head g of ||v_j W_O[h]||_1 (shared.h
 * rp_value_norms), with wo [H*D][C] the layer's W_O (rows hD .. hD + D - 1: head h): the
 * engine's shared copy (ctx->value_norms), or computed into buf [P] when the context has no
 * engine. 0 ok, -1 out of memory or a read error. */
int criticalkv_value_norms(const rp_layer_ctx *ctx, size_t g, const float *wo, size_t C, double *buf,
                           const double **u);

/* The layer's W_O through ctx->w_o: 0 ok; -1 with one line in err (no read-out, or out of
 * memory / read error). */
int criticalkv_w_o(const rp_layer_ctx *ctx, const char *who, const float **wo, size_t *C, char *err, size_t errlen);

#endif /* KV_STRAT_CRITICALKV_H */
