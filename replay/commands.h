/* Subcommands of bin/kvreplay; each parses its own arguments (argv[0] is the subcommand
 * name) and returns the process exit status. Only these functions print. */
#ifndef KV_COMMANDS_H
#define KV_COMMANDS_H

#include <stddef.h>

#include "kvtrace.h"     /* kv_file_digest */

/* Exit statuses shared by every subcommand. */
enum {
    KV_EXIT_OK = 0,
    KV_EXIT_FAIL = 1,        /* bad input, invalid trace, failed check */
    KV_EXIT_USAGE = 2,       /* bad command line */
    KV_EXIT_INTERRUPTED = 3, /* SIGINT/SIGTERM: finished the current unit, resumable */
};

int kvcmd_info(int argc, char **argv);
/* The command line of a subcommand that takes one TRACE (info, check): --help prints usage;
 * --quiet/-q sets *quiet when quiet is not NULL (else it is an unknown option). Returns -1
 * when *path is set and the subcommand goes on, else the exit status (message printed,
 * naming "kvreplay <name>"). */
int kvcmd_one_trace(const char *name, const char *usage, int argc, char **argv, int *quiet, const char **path);
int kvcmd_check(int argc, char **argv);
int kvcmd_run(int argc, char **argv);
int kvcmd_merge(int argc, char **argv);

/* kvcmd_run in pieces, for drivers that spread its work items (bin/kvreplay-mpi). Work item
 * i is the i-th evaluated sequence (after --seqs, calibration and --shard); its size is the
 * sequence's length. Every configuration of a sequence is evaluated in one pass (they share
 * the full-cache attention), so items are never split by configuration.
 *   kvrun_open     parse `run` arguments, open the trace, build the engine; unless
 *                  KVRUN_WORKER, check/create DIR and DIR/parts and print the notes. Returns
 *                  an exit status (message printed); *out is NULL when there is nothing to
 *                  run (error, --help, --list). known (NULL: none) is the trace digest
 *                  another process computed (the driver's kvrun_trace_digest): when its file
 *                  identity (kv_file_digest, lib/kvtrace.h) is the trace's, its digest is
 *                  taken without reading the trace; otherwise the trace is hashed as without
 *                  it (through the digest cache unless --no-hash-cache). kvrun_open does not
 *                  compare digests: a driver whose processes must read the same file compares
 *                  kvrun_trace_digest's hex with the one it passed.
 *   kvrun_trace_digest  the trace's SHA-256 (provenance, run key) and the identity of the
 *                  file version it is of (have_id 0: unknown); valid until kvrun_free.
 *   kvrun_trace_path    the TRACE argument.
 *   kvrun_load     item i from DIR/parts (1 loaded, 0 absent or from another run, -1 error);
 *                  resumed != 0 counts it in the "resumed" note.
 *   kvrun_compute  evaluate item i and write its part; keep = 0 frees the result afterwards.
 *   kvrun_finish   the results directory from every item (exit 3 when some are missing).
 * Messages start with "<tool> run:". */
typedef struct kvrun kvrun;
enum { KVRUN_WORKER = 1, KVRUN_THREADS1 = 2, KVRUN_NO_EXPORT = 4 };
int kvrun_open(int argc, char **argv, const char *tool, unsigned flags, const kv_file_digest *known, kvrun **out);
const kv_file_digest *kvrun_trace_digest(const kvrun *r);
const char *kvrun_trace_path(const kvrun *r);
size_t kvrun_n_items(const kvrun *r);
size_t kvrun_item_seq(const kvrun *r, size_t i);
size_t kvrun_item_size(const kvrun *r, size_t i);
int kvrun_resuming(const kvrun *r);
/* --progress-every seconds and --quiet (progress.h). */
void kvrun_progress_opts(const kvrun *r, double *every, int *quiet);
int kvrun_stop_requested(void);     /* SIGINT/SIGTERM seen */
int kvrun_load(kvrun *r, size_t i, int resumed, char *err, size_t errlen);
int kvrun_compute(kvrun *r, size_t i, int keep, char *err, size_t errlen);
int kvrun_finish(kvrun *r);
void kvrun_free(kvrun *r);

#endif
