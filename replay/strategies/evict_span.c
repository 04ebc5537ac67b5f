/* evict_span — a diagnostic, not a compression method: evict exactly the prompt entries of the
 * sequence's planted needles (traces with /needles, traces/SCHEMA.md), keep everything else.
 *
 * Why: the proxy-vs-truth loop needs configurations whose damage is known to be large for the
 * model (the answer is gone) while their bytes barely change; a faithful proxy must rank them
 * badly although they keep almost the whole cache (sweeps/discriminating.sweep, group C).
 * Rule (prefill protocol): every kv head keeps the prompt positions [0, P) outside the spans of
 * this sequence's needles: span=needle the whole needle [start, end), span=value only its
 * copied value [value_start, value_end). Parts of a span at or after the run's split P are
 * decode entries and stay (the prefill protocol never evicts them). A sequence without
 * needles, or a trace without /needles, keeps its whole prompt (kvreplay then flags the
 * configuration "compression not applied"); a prompt entirely inside spans keeps its last
 * entry (a cache is never empty).
 * Defaults: span=needle. Budget: none taken (keep=/budget= are refused): the spans set it.
 * Reference: none (kvtrace's own diagnostic, for the needle traces of capture/make_needles.py).
 */
#include <stdlib.h>

#include "evict_util.h"
#include "kvtrace.h"
#include "strategy.h"

enum { SPAN_NEEDLE = 0, SPAN_VALUE = 1 };

static const rp_param_def evict_span_params[] = {
    { "span", RP_ENUM, "needle", 0, 0, "needle|value", "evict the whole needle [start, end) or its value [value_start, value_end)" },
};

static int evict_span_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    int *c = malloc(sizeof *c);
    if (!c) return -1;
    *c = (int)v[0];
    *cfg = c;
    return 0;
}

static void evict_span_free(void *cfg) { free(cfg); }

/* drop[j] = 1 for the prompt positions j < P inside a span of sequence ctx->seq. */
static void mark_spans(int span, const rp_layer_ctx *ctx, unsigned char *drop)
{
    size_t N = ctx->n_needles;
    const int32_t *nd = ctx->needles;
    int lo_f = span == SPAN_VALUE ? KV_ND_VALUE_START : KV_ND_START, hi_f = span == SPAN_VALUE ? KV_ND_VALUE_END : KV_ND_END;
    for (size_t i = 0; nd && i < N; i++) {
        if ((size_t)nd[KV_ND_SEQ * N + i] != ctx->seq) continue;
        size_t a = (size_t)nd[(size_t)lo_f * N + i], b = (size_t)nd[(size_t)hi_f * N + i];
        for (size_t j = a; j < b && j < ctx->P; j++) drop[j] = 1;
    }
}

static int evict_span_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out, char *err,
                              size_t errlen)
{
    size_t P = ctx->P, m = 0;
    unsigned char *drop = calloc(P ? P : 1, 1);
    int32_t *kept = malloc((P ? P : 1) * sizeof *kept);
    int rc = -1;
    if (!drop || !kept) goto done;
    mark_spans(*(const int *)cfg, ctx, drop);
    for (size_t j = 0; j < P; j++) if (!drop[j]) kept[m++] = (int32_t)j;
    if (!m && P) kept[m++] = (int32_t)(P - 1);
    rc = 0;
    for (size_t g = 0; g < ctx->Hkv && !rc; g++) rc = ev_push_kept(ctx, g, kept, m, &out[g]);
done:
    free(drop);
    free(kept);
    return rc;
}

const rp_strategy rp_strategy_evict_span = {
    .name = "evict_span",
    .summary = "diagnostic, not a method: evict exactly the prompt entries of the sequence's needles (traces "
               "with /needles; none: keeps all); no keep=/budget=",
    .reference = "kvtrace's own diagnostic for the proxy-vs-truth loop (sweeps/discriminating.sweep)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .params = evict_span_params,
    .n_params = 1,
    .configure = evict_span_configure,
    .free_cfg = evict_span_free,
    .prefill = evict_span_prefill,
    .head_separable = 1,     /* every kv head keeps the same positions, from the needles alone */
};
