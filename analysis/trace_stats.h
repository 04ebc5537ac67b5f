/* Trace-derived inputs of kvreport (--trace): full-cache bytes per token and the
 * per-layer attention-entropy distribution (lib/attn_stats.h).
 * Ownership: *entropy is allocated here, released with ts_entropy_free (NULL-safe). */
#ifndef KV_TRACE_STATS_H
#define KV_TRACE_STATS_H

#include "report.h"

kv_status ts_load(const char *path, double *bytes_per_token, rp_entropy **entropy,
                  char *note, size_t note_cap, kv_error *err);
void ts_entropy_free(rp_entropy *e);

#endif
