/* kvreplay-mpi — `kvreplay run` spread over MPI ranks (README.md, Clusters).
 *
 *     mpirun -np R kvreplay-mpi run TRACE --sweep FILE -o DIR [the options of kvreplay run]
 *
 * Work items are the evaluated sequences (commands.h: kvrun_*); every configuration of a
 * sequence is evaluated in one pass because they share its full-cache attention. Rank 0 is
 * the driver: it prepares DIR, hands items out one at a time, largest (longest sequence)
 * first, to whichever worker asks, and once every item is done reads the parts the workers
 * wrote into DIR/parts and writes the results exactly as a single-process run does (the parts
 * hold the accumulators as hex floats, so the CSVs are byte-identical). With one rank, rank 0
 * does the work itself.
 *
 * Protocol (tag 1, worker -> rank 0): msg { kind, item, stop, err }: READY (first message),
 * DONE item (its part is written), FAIL err (the run fails with that line). Rank 0 answers
 * each message (tag 2) with the next item, or -1: stop. A worker that dies loses only the
 * item it was computing; Open MPI then ends the job, and `--resume` re-runs the missing
 * items. SIGINT/SIGTERM: workers finish their item, rank 0 stops handing out, exit 3.
 *
 * The trace's SHA-256 (provenance, run key) is computed once, by rank 0, and broadcast with
 * the identity of the file version it is of (kv_file_digest); a worker whose trace has that
 * identity (the same file, shared or on rank 0's node) takes the digest without reading the
 * trace. A worker whose trace is another file (a node-local copy) hashes it and, when the
 * digests differ, fails the run naming its rank, the path and both digests: results of
 * different files are never merged.
 *
 * Threads: each rank runs --threads OpenMP threads (default 1: one rank per core).
 * Test-only knob: KVREPLAY_MPI_TEST_KILL=R makes rank R kill itself (SIGKILL) when it is
 * handed its second item, to test the loss and --resume of one item.
 */
#include <mpi.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "kvtrace.h"
#include "progress.h"

enum { MSG_READY, MSG_DONE, MSG_FAIL };
enum { TAG_MSG = 1, TAG_ITEM = 2 };

typedef struct msg {
    int64_t kind, item, stop;
    char err[1024];
} msg;

static const char usage[] =
    "usage: mpirun -np R kvreplay-mpi run TRACE (--sweep FILE | --strategy 'SPEC' ...) -o DIR [options]\n"
    "\n"
    "The run of `kvreplay run` (same arguments; see kvreplay run --help) spread over MPI ranks:\n"
    "rank 0 hands out sequences, longest first; the other ranks evaluate them and write their\n"
    "parts; rank 0 writes DIR exactly as a single-process run. --threads N: OpenMP threads per\n"
    "rank (default 1). --resume continues a run that was interrupted or lost a rank.\n"
    "--export is not supported (use kvreplay run).\n";

/* The line a worker whose trace (path) has digest mine fails with when rank 0's has another
 * (theirs), into buf; NULL when they are equal. */
static const char *trace_mismatch(const char *mine, const char *theirs, const char *path, int rank, char *buf, size_t len)
{
    if (!strcmp(mine, theirs)) return NULL;
    snprintf(buf, len, "%s is another file than rank 0's: SHA-256 %s on rank %d, %s on rank 0 (results of different "
             "files are not merged)", path, mine, rank, theirs);
    return buf;
}

/* Items in decreasing size, ties by index (deterministic hand-out order). */
static const kvrun *g_run;
static int by_size_desc(const void *a, const void *b)
{
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    size_t si = kvrun_item_size(g_run, i), sj = kvrun_item_size(g_run, j);
    if (si != sj) return si > sj ? -1 : 1;
    return i < j ? -1 : i > j;
}

static void start_progress(const kvrun *r, kv_progress *pg)
{
    double every;
    int quiet;
    kvrun_progress_opts(r, &every, &quiet);
    kv_progress_start(pg, "kvreplay-mpi run", "sequences", kvrun_n_items(r), every, quiet);
}

/* One rank: the loop of kvreplay run. */
static int run_alone(kvrun *r)
{
    char err[4600] = "";
    size_t n = kvrun_n_items(r);
    kv_progress pg;
    start_progress(r, &pg);
    for (size_t i = 0; i < n; i++) {
        int got = kvrun_resuming(r) ? kvrun_load(r, i, 1, err, sizeof err) : 0;
        if (got < 0) goto fail;
        if (got) { kv_progress_item_done(&pg, 0); continue; }
        if (kvrun_stop_requested()) break;
        kv_progress_begin_item(&pg, i, NULL);
        if (kvrun_compute(r, i, 1, err, sizeof err)) goto fail;
        kv_progress_item_done(&pg, 1);
    }
    kv_progress_clear(&pg);
    int rc = kvrun_finish(r);
    if (rc == KV_EXIT_OK) kv_progress_summary(&pg);
    return rc;
fail:
    fprintf(stderr, "kvreplay-mpi run: %s\n", err);
    return KV_EXIT_FAIL;
}

static int drive(kvrun *r, int nranks)
{
    size_t n = kvrun_n_items(r), n_todo = 0, next = 0;
    size_t *order = malloc((n ? n : 1) * sizeof *order);
    char err[4600] = "";
    int failed = 0, stop = 0, active = nranks - 1;
    kv_progress pg;
    start_progress(r, &pg);
    if (!order) { snprintf(err, sizeof err, "out of memory"); failed = 1; }
    for (size_t i = 0; order && i < n; i++) {
        int got = kvrun_resuming(r) ? kvrun_load(r, i, 1, err, sizeof err) : 0;
        if (got < 0) { failed = 1; break; }
        if (!got) order[n_todo++] = i;
        else kv_progress_item_done(&pg, 0);
    }
    if (order) {
        g_run = r;
        qsort(order, n_todo, sizeof *order, by_size_desc);
    }
    /* test knob (KVREPLAY_MPI_TEST_KILL): the workers' first requests are answered once every
     * worker has made one, in rank order, so the rank that dies on its second item gets a first
     * one however late it started (else a slow rank can find every item taken). A worker whose
     * setup failed is not waited for. */
    int fair = getenv("KVREPLAY_MPI_TEST_KILL") != NULL, n_held = 0, n_served = 0, need = nranks - 1;
    msg *held = fair ? calloc((size_t)nranks, sizeof *held) : NULL;
    int *held_src = fair ? calloc((size_t)nranks, sizeof *held_src) : NULL;
    if (!held || !held_src) fair = 0;
    while (active > 0) {
        msg m;
        MPI_Status st;
        if (fair == 1 && n_held == need) fair = 2;
        if (fair == 2 && n_served < n_held) {
            m = held[n_served];
            st.MPI_SOURCE = held_src[n_served++];
        } else {
            MPI_Recv(&m, (int)sizeof m, MPI_BYTE, MPI_ANY_SOURCE, TAG_MSG, MPI_COMM_WORLD, &st);
            if (fair == 1 && m.kind == MSG_READY) {     /* hold it, kept in rank order */
                int j = n_held++;
                for (; j > 0 && held_src[j - 1] > st.MPI_SOURCE; j--) {
                    held[j] = held[j - 1];
                    held_src[j] = held_src[j - 1];
                }
                held[j] = m;
                held_src[j] = st.MPI_SOURCE;
                continue;
            }
            if (fair == 1 && m.kind == MSG_FAIL) need--;
        }
        m.err[sizeof m.err - 1] = 0;
        if (m.kind == MSG_DONE && !failed) {
            char e2[4600] = "";
            size_t i = (size_t)m.item;
            int got = i < n ? kvrun_load(r, i, 0, e2, sizeof e2) : -1;
            if (got != 1) {
                snprintf(err, sizeof err, "rank %d: the part of sequence %zu cannot be read back%s%s", st.MPI_SOURCE,
                         i < n ? kvrun_item_seq(r, i) : (size_t)m.item, e2[0] ? ": " : "", e2);
                failed = 1;
            } else {
                kv_progress_item_done(&pg, 1);
            }
        } else if (m.kind == MSG_FAIL && !failed) {
            snprintf(err, sizeof err, "rank %d: %s", st.MPI_SOURCE, m.err);
            failed = 1;
        }
        if (m.stop || kvrun_stop_requested()) stop = 1;
        int64_t item = -1;
        if (!failed && !stop && m.kind != MSG_FAIL && next < n_todo) item = (int64_t)order[next++];
        if (item < 0) active--;
        MPI_Send(&item, 1, MPI_INT64_T, st.MPI_SOURCE, TAG_ITEM, MPI_COMM_WORLD);
    }
    free(order); free(held); free(held_src);
    kv_progress_clear(&pg);
    if (failed) {
        fprintf(stderr, "kvreplay-mpi run: %s\n", err);
        return KV_EXIT_FAIL;
    }
    int rc = kvrun_finish(r);   /* exit 3 (resumable) when items are missing */
    if (rc == KV_EXIT_OK) kv_progress_summary(&pg);
    return rc;
}

static void work(kvrun *r, int rank, const char *setup_err)
{
    msg m;
    memset(&m, 0, sizeof m);
    m.kind = setup_err ? MSG_FAIL : MSG_READY;
    if (setup_err) snprintf(m.err, sizeof m.err, "%s", setup_err);
    const char *kill_s = getenv("KVREPLAY_MPI_TEST_KILL");
    int kill_me = kill_s && atoi(kill_s) == rank;
    size_t handed = 0;
    for (;;) {
        int64_t item;
        MPI_Send(&m, (int)sizeof m, MPI_BYTE, 0, TAG_MSG, MPI_COMM_WORLD);
        MPI_Recv(&item, 1, MPI_INT64_T, 0, TAG_ITEM, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        if (item < 0) break;
        if (kill_me && ++handed == 2) raise(SIGKILL);       /* test knob: die mid-item */
        char err[4600] = "";
        memset(&m, 0, sizeof m);
        m.item = item;
        if (kvrun_compute(r, (size_t)item, 0, err, sizeof err)) {
            m.kind = MSG_FAIL;
            snprintf(m.err, sizeof m.err, "sequence %zu: %s", kvrun_item_seq(r, (size_t)item), err);
        } else {
            m.kind = MSG_DONE;
        }
        m.stop = kvrun_stop_requested();
    }
}

int main(int argc, char **argv)
{
    signal(SIGXFSZ, SIG_IGN);      /* ulimit -f: a write error (EFBIG) with a message, not a silent kill */
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? KV_EXIT_USAGE : KV_EXIT_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("kvreplay-mpi %s (trace schema %d)\n", KV_VERSION_STRING, KV_SCHEMA_VERSION);
        return KV_EXIT_OK;
    }
    if (strcmp(argv[1], "run")) {
        fprintf(stderr, "kvreplay-mpi: unknown command '%s' (only run; try kvreplay-mpi --help)\n", argv[1]);
        return KV_EXIT_USAGE;
    }
    int rank = 0, nranks = 1;
    if (MPI_Init(&argc, &argv) != MPI_SUCCESS) {
        fprintf(stderr, "kvreplay-mpi: MPI_Init failed\n");
        return KV_EXIT_FAIL;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    unsigned flags = KVRUN_THREADS1 | KVRUN_NO_EXPORT;
    kvrun *r = NULL;
    int rc = KV_EXIT_OK;
    struct { int go, rc; kv_file_digest d; } hello;     /* rank 0 -> all, as bytes */
    memset(&hello, 0, sizeof hello);
    if (rank == 0) {        /* validates the arguments, prepares DIR, hashes the trace; the workers follow */
        rc = kvrun_open(argc - 1, argv + 1, "kvreplay-mpi", flags, NULL, &r);
        hello.go = r != NULL;
        hello.rc = rc;
        if (r) hello.d = *kvrun_trace_digest(r);
    }
    MPI_Bcast(&hello, (int)sizeof hello, MPI_BYTE, 0, MPI_COMM_WORLD);
    if (!hello.go) {        /* error, --help or --list: rank 0 has said it */
        MPI_Finalize();
        return hello.rc;
    }
    if (rank == 0) {
        rc = nranks == 1 ? run_alone(r) : drive(r, nranks);
    } else {
        hello.d.hex[64] = 0;
        int orc = kvrun_open(argc - 1, argv + 1, "kvreplay-mpi", flags | KVRUN_WORKER, &hello.d, &r);
        char why[sizeof ((msg *)0)->err];
        const char *bad = why;
        if (!r) snprintf(why, sizeof why, "setup failed (exit %d; its message is above)", orc);
        else bad = trace_mismatch(kvrun_trace_digest(r)->hex, hello.d.hex, kvrun_trace_path(r), rank, why, sizeof why);
        work(r, rank, bad);
        rc = bad ? KV_EXIT_FAIL : KV_EXIT_OK;
    }
    kvrun_free(r);
    MPI_Finalize();
    return rc;
}
