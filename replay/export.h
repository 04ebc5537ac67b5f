/* Export of what each configuration did to the cache (traces/EXPORT.md, version 2).
 *
 * `kvreplay run ... --export PATH [--export-configs LIST]` writes, per chosen
 * (configuration, sequence, layer, kv head), under the prefill protocol the cache the last
 * evaluated position n-1 sees:
 * entry positions, multiplicities, member lists and, for configurations with an encoder (or a
 * view that rewrites rows), the reconstructed K/V rows and, per entry, the first query position
 * that sees the encoded row (time-dependent encoders such as KIVI's fp16 residual window:
 * before it the query sees the row before encoding); under the online protocol (eviction
 * only) the position at which each token left the cache. capture/validate.py re-runs the model
 * with exactly that state; no strategy is re-implemented there.
 *
 * Shapes: NC configurations of the sweep, L layers, Hkv kv heads, D head_dim, NE entries of
 * one cache, NM member positions of one cache.
 *
 * Flow (driven by cmd_run.c):
 *     rp_export_open(path, ...)                 -> temporary file next to path
 *     per sequence: rp_engine_seq(...)         the engine calls rp_export_hook (last position)
 *                                               and, for time-dependent configurations,
 *                                               rp_export_step_hook (every query position) from
 *                                               its worker threads (distinct (c, l, g) slots: no lock)
 *                   rp_export_write_seq(x, s)  writes the slots of that sequence, clears them
 *     rp_export_close(x)                        renames the temporary file to path
 *     rp_export_free(x)                         removes the temporary file if not closed
 * Library code: status codes and one-line errors, no printing.
 */
#ifndef KV_EXPORT_H
#define KV_EXPORT_H

#include <stddef.h>
#include <stdint.h>

#include "kvtrace.h"
#include "sweep.h"

#define RP_EXPORT_VERSION 2

typedef struct rp_export rp_export;

typedef struct rp_export_prov {
    const char *trace, *trace_sha256, *model;
    const char *mode;           /* "prefill" (entry lists) or "online" (eviction times) */
    size_t decode, eval_from;
} rp_export_prov;

/* chosen[c] != 0: configuration c is exported (NULL: all). Refuses configurations whose
 * cache is not a fixed state (a decode-time select hook, e.g. Quest). */
int rp_export_open(const char *path, const rp_sweep *sw, const uint8_t *chosen, const kv_info *in,
                   const rp_export_prov *pv, rp_export **out, char *err, size_t errlen);
/* The engine's hook (rp_run_opts.export_hook): copies the cache `view` (entries with
 * positions < n) of configuration c, layer l, kv head g of the current sequence. Thread-safe
 * for distinct (c, l, g). 0 ok, -1 out of memory. */
int rp_export_hook(void *x, size_t c, size_t s, size_t l, size_t g, size_t n, size_t P,
                   const rp_cache *view);
/* The per-position hook (rp_run_opts.export_step_hook), prefill, time-dependent
 * configurations, every query t in order: records, per entry, the first query whose row
 * differs from the base row (the cache before encoding) and checks that every later query
 * sees that same row. 0 ok, -1 out of memory, 1 not a two-state description. */
int rp_export_step_hook(void *x, size_t c, size_t s, size_t l, size_t g, size_t t, size_t n, size_t P,
                        const rp_cache *view, const rp_cache *base);
/* The online protocol's hook (rp_run_opts.export_evict_hook): copies evict_at [n]. */
int rp_export_evict_hook(void *x, size_t c, size_t s, size_t l, size_t g, size_t n, size_t P,
                         const int32_t *evict_at);
int rp_export_write_seq(rp_export *x, size_t s, char *err, size_t errlen);
int rp_export_close(rp_export *x, char *err, size_t errlen);
/* The temporary file the export is written to until rp_export_close renames it. */
const char *rp_export_tmp(const rp_export *x);
void rp_export_free(rp_export *x);

#endif /* KV_EXPORT_H */
