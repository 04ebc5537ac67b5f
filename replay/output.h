/* Results directory writer (replay/RESULTS.md, version 1) and per-sequence parts (resume).
 *
 * Parts: DIR/parts/seq_<s>.part holds one sequence's accumulators (engine.h) as hex floats
 * (exact round trip) under the run key; the final CSVs are always computed from the
 * parts, so a resumed run writes the same bytes as an uninterrupted one. Every file is
 * written to a temporary name and renamed (kv_atomic). Library code: no printing.
 */
#ifndef KV_OUTPUT_H
#define KV_OUTPUT_H

#include <stddef.h>

#include "engine.h"
#include "sweep.h"

/* Write / read one sequence's part (r->pl, when set, as an optional block before "end"),
 * checksummed (a "sum" line of FNV-1a 64 over the content); only finite values are written
 * or read. read: 1 = loaded, 0 = absent (the sequence is computed), -1 = error: checksum
 * mismatch, a non-finite or malformed value, a part of another run. */
int out_part_write(const char *dir, const char *key, const rp_seq_result *r, size_t n_cfg,
                   size_t L, size_t H, char *err, size_t errlen);
int out_part_read(const char *dir, const char *key, size_t seq, rp_seq_result *r, size_t n_cfg,
                  size_t L, size_t H, char *err, size_t errlen);
/* The header line of the part at path (kvreplay merge): 0, or -1 with err. */
typedef struct out_part_hdr { char key[17]; size_t seq, n_cfg, L, H; int has_readout; } out_part_hdr;
int out_part_header(const char *path, out_part_hdr *h, char *err, size_t errlen);
/* A whole regular file of at most cap bytes, NUL-terminated (a FIFO or device is refused
 * without blocking): 1 read, 0 absent, -1 error. */
int out_read_file(const char *path, size_t cap, char **out, size_t *len, char *err, size_t errlen);

/* Provenance fields that the writer does not compute itself. */
typedef struct out_prov {
    const char *trace, *trace_sha256, *model, *architecture, *mode, *sweep, *argv, *started;
    const char *shard;              /* "i/N"; NULL = "0/1" */
    size_t decode, n_seq, threads;
    size_t page_size;               /* paged accounting: entries per page, 0 = unpaged */
    size_t n_kv_heads, head_dim;    /* the trace's shape (kvreport's prompt-only ratio); 0 = unknown, not written */
    const char *prompt_scores;      /* "trace" (--prompt-scores trace, or auto resolved to it); NULL = "recompute" */
    const char *evaluation;         /* "separate" (--no-share); NULL = "shared" */
} out_prov;

/* configs.csv, per_seq.csv, per_head.csv, summary.csv, calib.csv (with read-out),
 * per_layer.csv (with read-out, when every res[i].pl is set; an error when only some are),
 * provenance.json. res[i] in evaluation order. *n_not_applied: configurations flagged. */
int out_write_results(const char *dir, const rp_sweep *sw, const rp_seq_result *res, size_t n_res,
                      size_t L, size_t H, int has_readout, const out_prov *pv,
                      size_t *n_not_applied, char *err, size_t errlen);

/* The string or number value of `key` in a flat JSON object (provenance.json) as text;
 * -1 when absent. */
int out_json_get(const char *json, const char *key, char *val, size_t len);

/* UTC ISO 8601 now. */
void out_utc_now(char *buf, size_t len);

#endif /* KV_OUTPUT_H */
