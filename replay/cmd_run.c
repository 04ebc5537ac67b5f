/* kvreplay run — replay a sweep of compression configurations over a trace (docs/METHODS.md),
 * and kvreplay merge (combine the results directories of --shard runs). */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "commands.h"
#include "engine.h"
#include "export.h"
#include "output.h"
#include "progress.h"
#include "readout.h"
#include "suggest.h"
#include "sweep.h"

static const char run_usage[] =
    "usage: kvreplay run TRACE (--sweep FILE | --strategy 'SPEC' ...) -o DIR [options]\n"
    "\n"
    "Replays every configuration over the trace in one pass and writes DIR (replay/RESULTS.md);\n"
    "a trace with /needles also gets needles.csv and needle_heads.csv (needle metrics).\n"
    "  --sweep FILE        one configuration per line; comma lists expand (sweeps/README.md); a\n"
    "                      relative FILE not found is looked up in the installed sweeps\n"
    "                      (PREFIX/share/kvtrace/sweeps: --sweep sweeps/default.sweep anywhere)\n"
    "  --strategy SPEC     one sweep line, e.g. 'snapkv keep=0.25' (repeatable)\n"
    "  -o, --out DIR       results directory (created; an existing one must be empty)\n"
    "  --mode MODE         prefill (default) | online (docs/METHODS.md §3)\n"
    "  --decode N          the last N tokens of each sequence are the evaluated queries (the\n"
    "                      prefill split; default: /prefill_len, else a quarter of the\n"
    "                      shortest sequence)\n"
    "  --eval-from N       the split at position N for every sequence (instead of --decode)\n"
    "  --seqs LIST         evaluated sequences, e.g. 0,2,5-7 (default: all but calibration)\n"
    "  --calib LIST        calibration sequences for strategies that calibrate (never evaluated;\n"
    "                      default: the last sequences of the trace, as many as they ask for)\n"
    "  --readout           require the read-out metrics (exit 1 when the trace has none; the\n"
    "                      attention metrics are still written)\n"
    "  --no-readout        skip the read-out metrics\n"
    "  --per-layer-readout also the read-out of each layer's perturbation alone -> per_layer.csv\n"
    "  --gqa-reduce R      mean (default) | max | sum: how strategies that leave it open reduce\n"
    "                      scores over the query heads of a kv head (docs/METHODS.md §4)\n"
    "  --threads N         OpenMP threads (default: OMP_NUM_THREADS or all cores)\n"
    "  --page-size N       paged accounting: tokens per page (default 16, vLLM's block size;\n"
    "                      0 = unpaged) -> kv_bytes_paged, frag_bytes\n"
    "  --prompt-scores SRC auto (default) | trace | recompute: where the whole prompt's\n"
    "                      attention column sums and row entropies (h2o, cab,\n"
    "                      observed_attention, entropy_merge) come from. trace: the trace's\n"
    "                      /prompt_scores (kvcapture --prompt-scores) less the evaluated rows'\n"
    "                      share, linear in the context instead of a quadratic prompt pass;\n"
    "                      equal within ~1e-6 relative (replay/shared.h). recompute: that pass.\n"
    "                      auto: trace when the trace has the group and it was captured with\n"
    "                      the trace's attention parameters, else recompute (with a note when\n"
    "                      the group does not apply); provenance.json records the choice\n"
    "  --no-share          evaluate every eviction-only configuration alone (prefill); by\n"
    "                      default they share the full pass's probabilities and, when their\n"
    "                      kept sets nest, one pass over the largest (docs/METHODS.md): equal\n"
    "                      to rounding (~1e-6 relative); this option gives earlier versions' bits\n"
    "  --resume            continue an interrupted run in DIR, skipping finished sequences\n"
    "                      (its parts are verified; the options must equal the run's, kept in\n"
    "                      DIR/parts/options; DIR/parts/lock keeps a second run out)\n"
    "  --shard i/N         evaluate every N-th sequence starting at i (N alone: i from\n"
    "                      SLURM_ARRAY_TASK_ID; slurm: i = SLURM_ARRAY_TASK_ID -\n"
    "                      SLURM_ARRAY_TASK_MIN, N = SLURM_ARRAY_TASK_COUNT); every\n"
    "                      configuration of a sequence runs in its shard (one fused pass);\n"
    "                      combine the shards with kvreplay merge\n"
    "  --list              list the strategies and their parameters, then exit\n"
    "  --export PATH       write what each configuration did to the cache (traces/EXPORT.md):\n"
    "                      PATH.h5, or a directory that gets export.h5 (online: eviction only)\n"
    "  --export-configs LIST  config ids to export, e.g. 0,3-5 (default: all)\n"
    "  --progress-every S  when stderr is not a terminal, a progress line (sequences done,\n"
    "                      elapsed, eta) every S seconds (default 30; 0 = after every sequence);\n"
    "                      on a terminal one line is updated in place\n"
    "  --quiet             no progress and no final summary line (warnings still printed)\n"
    "  --no-hash-cache     hash the whole trace for provenance even when the digest cache\n"
    "                      ($XDG_CACHE_HOME/kvtrace or ~/.cache/kvtrace, keyed by device, inode,\n"
    "                      size, mtime and ctime) has it; KVTRACE_HASH_CACHE=0 does the same\n"
    "SIGINT/SIGTERM finish the current sequence and exit with status 3 (resumable).\n";

static volatile sig_atomic_t g_stop = 0;
static char g_prog[64] = "kvreplay run";     /* message prefix */
static void on_signal(int sig) { (void)sig; g_stop = 1; }

/* "0,2,5-7" -> sorted unique list within [0, S). */
static int parse_list(const char *s, size_t S, size_t **out, size_t *n, const char *opt)
{
    uint8_t *mark = calloc(S ? S : 1, 1);
    if (!mark) return -1;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long a = strtol(p, &end, 10), b = a;
        if (end == p || errno || a < 0) goto bad;
        p = end;
        if (*p == '-') {
            b = strtol(p + 1, &end, 10);
            if (end == p + 1 || errno || b < a) goto bad;
            p = end;
        }
        if ((size_t)b >= S) {
            fprintf(stderr, "%s: %s %s: sequence %ld outside [0, %zu)\n", g_prog, opt, s, b, S);
            free(mark);
            return -1;
        }
        for (long i = a; i <= b; i++) mark[i] = 1;
        if (*p == ',') p++;
        else if (*p) goto bad;
    }
    *n = 0;
    for (size_t i = 0; i < S; i++) *n += mark[i];
    *out = malloc((*n ? *n : 1) * sizeof **out);
    if (!*out) { free(mark); return -1; }
    for (size_t i = 0, k = 0; i < S; i++) if (mark[i]) (*out)[k++] = i;
    free(mark);
    return 0;
bad:
    fprintf(stderr, "%s: %s '%s': expected a list like 0,2,5-7\n", g_prog, opt, s);
    free(mark);
    return -1;
}

/* An error: one line, or several (the infeasible configurations of a sweep), each prefixed. */
static void print_err(const char *err)
{
    do {
        size_t n = strcspn(err, "\n");
        fprintf(stderr, "%s: %.*s\n", g_prog, (int)n, err);
        err += n + (err[n] == '\n');
    } while (*err);
}

static void list_strategies(void)
{
    for (size_t i = 0; i < rp_strategy_count(); i++) {
        const rp_strategy *s = rp_strategy_at(i);
        printf("%s — %s%s%s\n  reference: %s\n", s->name, s->summary,
               s->kind == RP_ENCODE ? " [encoding]" : "", s->protocols == RP_PREFILL ? " [prefill only]" :
               s->protocols == RP_ONLINE ? " [online only]" : "", s->reference);
        if (s->needs_budget) printf("  keep=F | budget=N   budget (fraction of the cache, or entries per kv head)\n");
        for (size_t j = 0; j < s->n_params; j++) {
            const rp_param_def *d = &s->params[j];
            char range[512] = "";
            if (d->type == RP_ENUM) snprintf(range, sizeof range, "%s", d->choices);
            else if (d->type == RP_BOOL) snprintf(range, sizeof range, "0|1");
            else if (d->type == RP_LIST) snprintf(range, sizeof range, "none|N/N/... in [%g, %g]", d->min, d->max);
            else if (d->type == RP_PATH) snprintf(range, sizeof range, "none|FILE");
            else snprintf(range, sizeof range, "[%g, %g]", d->min, d->max);
            printf("  %s=%s   %s %s\n", d->name, d->def, range, d->help ? d->help : "");
        }
    }
}

/* mkdir -p of dir's parents: `-o out/shard_3` in a fresh job directory (Slurm array tasks
 * create out/ concurrently: EEXIST is success). */
static int mkdir_parents(const char *dir)
{
    char p[4096];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p) { errno = ENAMETOOLONG; return -1; }
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0777) && errno != EEXIST) return -1;
        *s = '/';
    }
    return 0;
}

/* Whether dir/name is the file ign (the same inode): --export DIR/x.h5 with -o DIR writes its
 * temporary file into DIR before DIR is checked for emptiness. */
static int same_file(const char *dir, const char *name, const char *ign)
{
    struct stat a, b;
    char p[4400];
    if (!ign || snprintf(p, sizeof p, "%s/%s", dir, name) >= (int)sizeof p) return 0;
    return !stat(p, &a) && !stat(ign, &b) && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* 0 empty or absent (created, with its parents), 1 has other content, -1 error. The file
 * ign (NULL: none) does not count as content. */
static int dir_state(const char *dir, const char *ign, int *has_parts)
{
    struct stat st;
    *has_parts = 0;
    if (stat(dir, &st)) {
        if (errno != ENOENT) return -1;
        if (mkdir_parents(dir)) return -1;
        return mkdir(dir, 0777) && errno != EEXIST ? -1 : 0;
    }
    if (!S_ISDIR(st.st_mode)) return 1;
    DIR *d = opendir(dir);
    if (!d) return -1;
    int other = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (!strcmp(e->d_name, "parts")) *has_parts = 1;
        else if (!same_file(dir, e->d_name, ign)) other = 1;
    }
    closedir(d);
    return other || *has_parts;
}

static void remove_parts(const char *dir)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/parts", dir);
    DIR *d = opendir(p);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char f[4700];
        snprintf(f, sizeof f, "%s/%s", p, e->d_name);
        unlink(f);
    }
    closedir(d);
    rmdir(p);
}

/* ---- the run directory: one run at a time, resumed only with its own options ------------- */

/* "0,2,5-7" form of a sorted index list, appended to a growing string. */
static int opt_list(char **s, size_t *n, size_t *cap, const char *name, const size_t *v, size_t k)
{
    char buf[64];
    int len = snprintf(buf, sizeof buf, "%s=", name);
    for (size_t i = 0; i <= k; i++) {
        if (*n + (size_t)len + 2 > *cap) {
            size_t nc = 2 * *cap + (size_t)len + 64;
            char *q = realloc(*s, nc);
            if (!q) return -1;
            *s = q; *cap = nc;
        }
        memcpy(*s + *n, buf, (size_t)len);
        *n += (size_t)len;
        if (i == k) break;
        size_t j = i;
        while (j + 1 < k && v[j + 1] == v[j] + 1) j++;
        len = j > i ? snprintf(buf, sizeof buf, "%s%zu-%zu", i ? "," : "", v[i], v[j])
                    : snprintf(buf, sizeof buf, "%s%zu", i ? "," : "", v[i]);
        i = j;
    }
    (*s)[(*n)++] = '\n';
    (*s)[*n] = 0;
    return 0;
}

/* The options that determine a run's parts, one "name=value" line each (DIR/parts/options):
 * --resume compares them line by line and names the first that differs. */
static char *run_options_text(const char *sha, unsigned mode, long long decode, long long eval_from, int readout,
                              int per_layer, int gqa, long long page_size, int pscores, int no_share, long shard_i, long shard_n,
                              const size_t *seqs, size_t n_seqs, const size_t *calib, size_t n_calib, const rp_sweep *sw)
{
    size_t cap = 1024, n = 0;
    char *s = malloc(cap);
    if (!s) return NULL;
    n = (size_t)snprintf(s, cap, "format=kvparts 2\ntool_version=%s\ntrace_sha256=%s\nmode=%s\ndecode=%lld\neval-from=%lld\n"
                         "readout=%d\nper-layer-readout=%d\ngqa-reduce=%s\npage-size=%lld\nshard=%ld/%ld\n", KV_VERSION_STRING,
                         sha, mode == RP_ONLINE ? "online" : "prefill", decode, eval_from, readout, per_layer,
                         gqa == RP_GQA_MAX ? "max" : gqa == RP_GQA_SUM ? "sum" : "mean", page_size, shard_i, shard_n);
    if (n < cap && pscores == RP_PS_TRACE)      /* absent: recompute (options of older runs unchanged) */
        n += (size_t)snprintf(s + n, cap - n, "prompt-scores=trace\n");
    if (n < cap && no_share)                    /* absent: shared evaluation (the default) */
        n += (size_t)snprintf(s + n, cap - n, "share=off\n");
    if (n >= cap || opt_list(&s, &n, &cap, "seqs", seqs, n_seqs) || opt_list(&s, &n, &cap, "calib", calib, n_calib)) {
        free(s);
        return NULL;
    }
    for (size_t c = 0; c <= sw->n; c++) {
        char line[1200];
        int k = c < sw->n ? snprintf(line, sizeof line, "config %zu=%s\n", c, sw->cfg[c].canon)
                          : snprintf(line, sizeof line, "configs=%zu\n", sw->n);
        if (n + (size_t)k + 1 > cap) {
            char *q = realloc(s, 2 * cap + (size_t)k);
            if (!q) { free(s); return NULL; }
            s = q; cap = 2 * cap + (size_t)k;
        }
        memcpy(s + n, line, (size_t)k + 1);
        n += (size_t)k;
    }
    return s;
}

/* Takes DIR/parts/lock (flock, held until exit; *fd) and writes (new run) or compares
 * (--resume) DIR/parts/options. 0, or -1 with one line in err. */
static int run_dir_claim(const char *outdir, int resume, const char *opts, int *fd, char *err, size_t errlen)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/parts/lock", outdir);
    *fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (*fd < 0) { snprintf(err, errlen, "%s: %s", p, strerror(errno)); return -1; }
    if (flock(*fd, LOCK_EX | LOCK_NB)) {
        char pid[32] = "";
        ssize_t k = pread(*fd, pid, sizeof pid - 1, 0);
        pid[k > 0 ? k : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        if (errno == EWOULDBLOCK || errno == EAGAIN || k >= 0)
            snprintf(err, errlen, "%s is in use by another run (pid %s)", outdir, pid[0] ? pid : "unknown");
        else
            snprintf(err, errlen, "%s: cannot lock: %s", p, strerror(errno));
        close(*fd);
        *fd = -1;
        return -1;
    }
    char pid[32];
    int k = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(*fd, 0) || pwrite(*fd, pid, (size_t)k, 0) != k) { snprintf(err, errlen, "%s: %s", p, strerror(errno)); return -1; }
    snprintf(p, sizeof p, "%s/parts/options", outdir);
    if (resume) {
        char *old = NULL;
        size_t len = 0;
        int got = out_read_file(p, (size_t)64 << 20, &old, &len, err, errlen);
        if (got < 0) return -1;
        if (got == 0) {
            snprintf(err, errlen, "--resume %s: %s is missing (parts of an older kvreplay, or not a run directory): "
                     "start in a new directory", outdir, p);
            return -1;
        }
        /* first differing line, by name */
        const char *a = old, *b = opts;
        while (*a || *b) {
            size_t la = strcspn(a, "\n"), lb = strcspn(b, "\n");
            if (la != lb || strncmp(a, b, la)) {
                size_t na = strcspn(a, "="), nb = strcspn(b, "=");
                if (na > la) na = la;
                if (nb > lb) nb = lb;
                if (!la || !lb || na != nb || strncmp(a, b, na))
                    snprintf(err, errlen, "--resume %s: the interrupted run's options differ: it had '%.*s', this run '%.*s' "
                             "(resume with the same options, or use a new directory)", outdir, (int)(la > 300 ? 300 : la), a,
                             (int)(lb > 300 ? 300 : lb), b);
                else
                    snprintf(err, errlen, "--resume %s: the interrupted run used %.*s = '%.*s', this run '%.*s' (resume with "
                             "the same options, or use a new directory)", outdir, (int)na, a,
                             (int)(la - na - 1 > 300 ? 300 : la - na - 1), a + na + 1, (int)(lb - nb - 1 > 300 ? 300 : lb - nb - 1),
                             b + nb + 1);
                free(old);
                return -1;
            }
            a += la + (a[la] == '\n');
            b += lb + (b[lb] == '\n');
        }
        free(old);
        return 0;
    }
    kv_atomic at;
    kv_error ke;
    if (kv_atomic_open(&at, p, &ke) != KV_OK) { snprintf(err, errlen, "%s", ke.msg); return -1; }
    fputs(opts, at.fp);
    if (kv_atomic_commit(&at, &ke) != KV_OK) { snprintf(err, errlen, "%s", ke.msg); return -1; }
    return 0;
}

/* A prepared run (kvrun_open): everything kvcmd_run's loop and kvrun_finish need. Work item i
 * is evaluated sequence seqs[i]; res[i] holds its accumulators once computed or loaded. */
struct kvrun {
    int argc;
    char **argv;
    const char *tool, *trace_path, *sweep_path, *outdir, *export_cfg_s;
    long shard_i, shard_n;
    long long decode, page_size;
    int prompt_scores;          /* RP_PS_RECOMPUTE | RP_PS_TRACE */
    int no_share;               /* --no-share */
    unsigned mode;
    int readout_flag, resume;
    char started[64], sha[65], key[17], xpath[4200];
    kv_file_digest digest;      /* sha and the identity of the trace version it is of */
    rp_sweep sw;
    kv_trace *tr;
    const kv_info *in;
    rp_engine *eng;
    rp_export *xp;
    size_t *xcfg, n_xcfg;
    uint8_t *xchosen;
    rp_seq_result *res;
    size_t *seqs, *calib, n_seqs, n_calib, n_res, skipped;
    int32_t *seq_len;           /* [S], work item sizes */
    int lock_fd;                /* DIR/parts/lock, held for the run; -1 none */
    double progress_every;      /* --progress-every (s) */
    int quiet;                  /* --quiet */
};

/* A --sweep path that does not exist as given, relative, is looked up among the sweeps
 * installed with the program (PREFIX/share/kvtrace/, `make install`), so that the README's
 * `--sweep sweeps/default.sweep` works from any directory: DIR/PATH, then
 * DIR/sweeps/BASENAME, with DIR the program's ../share/kvtrace. Returns path or buf. */
static const char *resolve_sweep(const char *path, char *buf, size_t cap)
{
    if (!access(path, F_OK) || path[0] == '/') return path;
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return path;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash) return path;
    *slash = 0;
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    const char *fmt[2] = { "%s/../share/kvtrace/%s", "%s/../share/kvtrace/sweeps/%s" };
    const char *arg[2] = { path, base };
    for (int k = 0; k < 2; k++) {
        snprintf(buf, cap, fmt[k], exe, arg[k]);
        if (!access(buf, R_OK)) return buf;
    }
    return path;
}

/* KVTRACE_DEBUG containing "hash": one stderr line each time the trace's bytes are hashed
 * (not when the digest comes from the cache or from the driver), for tests and for users who
 * wonder where the time goes; normal output never depends on it. */
static int debug_hash(void)
{
    const char *d = getenv("KVTRACE_DEBUG");
    return d && strstr(d, "hash");
}

/* KVTRACE_DEBUG naming `word` as one of its comma-separated items: "layer-items" keeps the
 * engine's (sequence, layer) work items where the sweep could run per kv head (the same
 * results: the tests' reference), "units" prints one stderr line naming the work item the run
 * uses, "scan" one stderr line with how many value-scan tasks ran and how many were skipped
 * (a record of the part's passed scan for this digest: engine.c scan_finite), "rope" reads and
 * scans the trace's /rope tables even when no configuration uses them (strategy.h uses_rope; the
 * tests' reference). Normal output never depends on them. */
static int debug_item(const char *word)
{
    const char *d = getenv("KVTRACE_DEBUG");
    size_t n = strlen(word);
    while (d && *d) {
        size_t k = strcspn(d, ",");
        if (k == n && !strncmp(d, word, n)) return 1;
        d += k + (d[k] == ',');
    }
    return 0;
}

/* --prompt-scores auto, resolved once from the trace alone (so every shard, MPI rank and
 * resumed run of it resolves alike) to the concrete source that the run key, DIR/parts/
 * options, provenance and the engine then see: trace when the trace has /prompt_scores
 * and they apply, else recompute. They apply to every run of the trace: they cover every row
 * of every sequence, so any split (--decode, --eval-from, /prefill_len, --mode online's
 * whole sequence) subtracts its own evaluated rows; calibration does not use them; and no
 * kvreplay option changes the attention they are sums of. That attention is the trace's
 * (scale, softcap, windows): a group recorded with other parameters (an edited trace,
 * kv_info.prompt_scores_stale) does not apply. trace and recompute are kept as given (the
 * engine refuses trace where auto falls back). */
static int resolve_prompt_scores(int pscores, const kv_info *in)
{
    if (pscores != RP_PS_AUTO) return pscores;
    return in->has_prompt_scores && !in->prompt_scores_stale[0] ? RP_PS_TRACE : RP_PS_RECOMPUTE;
}

int kvrun_open(int argc, char **argv, const char *tool, unsigned flags, const kv_file_digest *known, kvrun **out)
{
    *out = NULL;
    snprintf(g_prog, sizeof g_prog, "%s run", tool);
    rs_blas_set_threads(1);     /* first: it also stops OpenBLAS's spinning threads (readout.h) */
    const char *trace_path = NULL, *sweep_path = NULL, *outdir = NULL, *seqs_s = NULL, *calib_s = NULL;
    const char *shard_s = NULL;
    const char *export_s = NULL, *export_cfg_s = NULL;     /* --export */
    long shard_i = 0, shard_n = 1;
    const char *specs[64];
    size_t n_specs = 0;
    unsigned mode = RP_PREFILL;
    long long decode = 0, threads = 0, eval_from = 0, page_size = 16;
    int split_note = 0, calib_note = 0;
    int resume = 0, readout_flag = 1, list = 0, gqa = RP_GQA_MEAN;
    int per_layer = 0, hash_cache = 1, quiet = 0, pscores = RP_PS_AUTO, no_share = 0;
    double progress_every = KV_PROGRESS_EVERY_DEFAULT;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(run_usage, stdout); return KV_EXIT_OK; }
        else if (!strcmp(a, "--sweep") && more) sweep_path = argv[++i];
        else if (!strcmp(a, "--strategy") && more) {
            if (n_specs == 64) { fprintf(stderr, "%s: too many --strategy options (max 64)\n", g_prog); return KV_EXIT_USAGE; }
            specs[n_specs++] = argv[++i];
        } else if ((!strcmp(a, "-o") || !strcmp(a, "--out")) && more) outdir = argv[++i];
        else if (!strcmp(a, "--mode") && more) {
            const char *m = argv[++i];
            if (!strcmp(m, "prefill")) mode = RP_PREFILL;
            else if (!strcmp(m, "online")) mode = RP_ONLINE;
            else { fprintf(stderr, "%s: --mode %s: expected prefill or online\n", g_prog, m); return KV_EXIT_USAGE; }
        } else if ((!strcmp(a, "--decode") || !strcmp(a, "--threads") || !strcmp(a, "--eval-from")) && more) {
            char *end;
            errno = 0;
            long long v = strtoll(argv[++i], &end, 10);
            if (*end || errno || v < 1) {
                fprintf(stderr, "%s: %s %s: expected a positive integer\n", g_prog, a, argv[i]);
                return KV_EXIT_USAGE;
            }
            if (!strcmp(a, "--decode")) decode = v;
            else if (!strcmp(a, "--eval-from")) eval_from = v;
            else threads = v;
        } else if (!strcmp(a, "--page-size") && more) {
            char *end;
            errno = 0;
            page_size = strtoll(argv[++i], &end, 10);
            if (*end || errno || page_size < 0 || page_size > (1 << 24)) {
                fprintf(stderr, "%s: --page-size %s: expected tokens per page, 0 (unpaged) to 16777216\n", g_prog, argv[i]);
                return KV_EXIT_USAGE;
            }
        } else if (!strcmp(a, "--gqa-reduce") && more) {
            const char *r = argv[++i];
            if (!strcmp(r, "mean")) gqa = RP_GQA_MEAN;
            else if (!strcmp(r, "max")) gqa = RP_GQA_MAX;
            else if (!strcmp(r, "sum")) gqa = RP_GQA_SUM;
            else { fprintf(stderr, "%s: --gqa-reduce %s: expected mean, max or sum\n", g_prog, r); return KV_EXIT_USAGE; }
        } else if (!strcmp(a, "--prompt-scores") && more) {
            const char *r = argv[++i];
            if (!strcmp(r, "recompute")) pscores = RP_PS_RECOMPUTE;
            else if (!strcmp(r, "trace")) pscores = RP_PS_TRACE;
            else if (!strcmp(r, "auto")) pscores = RP_PS_AUTO;
            else { fprintf(stderr, "%s: --prompt-scores %s: expected auto, trace or recompute\n", g_prog, r); return KV_EXIT_USAGE; }
        } else if (!strcmp(a, "--shard") && more) shard_s = argv[++i];
        else if (!strcmp(a, "--seqs") && more) seqs_s = argv[++i];
        else if (!strcmp(a, "--calib") && more) calib_s = argv[++i];
        else if (!strcmp(a, "--export") && more) export_s = argv[++i];
        else if (!strcmp(a, "--export-configs") && more) export_cfg_s = argv[++i];
        else if (!strcmp(a, "--resume")) resume = 1;
        else if (!strcmp(a, "--readout") || !strcmp(a, "--require-readout")) readout_flag = 2;
        else if (!strcmp(a, "--no-readout")) readout_flag = 0;
        else if (!strcmp(a, "--no-share")) no_share = 1;
        else if (!strcmp(a, "--per-layer-readout")) per_layer = 1;     /* per_layer.csv */
        else if (!strcmp(a, "--no-hash-cache")) hash_cache = 0;
        else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) quiet = 1;
        else if (!strcmp(a, "--progress-every") && more) {
            char *end;
            errno = 0;
            progress_every = strtod(argv[++i], &end);
            if (*end || errno || !(progress_every >= 0) || progress_every > 1e9) {
                fprintf(stderr, "%s: --progress-every %s: expected seconds, 0 or more\n", g_prog, argv[i]);
                return KV_EXIT_USAGE;
            }
        }
        else if (!strcmp(a, "--list")) list = 1;
        else if (a[0] == '-' && a[1]) {
            static const char *const opts[] = { "--sweep", "--strategy", "--out", "--mode", "--decode", "--threads",
                "--eval-from", "--page-size", "--gqa-reduce", "--prompt-scores", "--shard", "--seqs", "--calib", "--export",
                "--export-configs", "--resume", "--readout", "--require-readout", "--no-readout",
                "--per-layer-readout", "--no-share", "--no-hash-cache", "--quiet", "--progress-every", "--list", "--help" };
            char hint[128];
            fprintf(stderr, "%s: unknown or incomplete option '%s'%s (try --help)\n", g_prog, a,
                    kv_suggest_hint(a, opts, sizeof opts / sizeof *opts, hint, sizeof hint));
            return KV_EXIT_USAGE;
        }
        else if (!trace_path) trace_path = a;
        else { fprintf(stderr, "%s: unexpected argument '%s'\n", g_prog, a); return KV_EXIT_USAGE; }
    }
    if (list) { list_strategies(); return KV_EXIT_OK; }
    if ((flags & KVRUN_NO_EXPORT) && (export_s || export_cfg_s)) {
        fprintf(stderr, "%s: --export is not supported by %s (one writer per export file); use kvreplay run\n", g_prog, tool);
        return KV_EXIT_USAGE;
    }
    if (!trace_path || !outdir || (!sweep_path && !n_specs)) {
        fprintf(stderr, "%s: need TRACE, --sweep FILE or --strategy SPEC, and -o DIR (try --help)\n", g_prog);
        return KV_EXIT_USAGE;
    }
    static char sweep_buf[8400];
    if (sweep_path) {
        const char *given = sweep_path;
        sweep_path = resolve_sweep(sweep_path, sweep_buf, sizeof sweep_buf);
        if (sweep_path != given) fprintf(stderr, "%s: note: --sweep %s: the installed %s\n", g_prog, given, sweep_path);
    }
    if (sweep_path && n_specs) {
        fprintf(stderr, "%s: give --sweep or --strategy, not both\n", g_prog);
        return KV_EXIT_USAGE;
    }
    if (shard_s) {      /* "i/N", or "N" with i from SLURM_ARRAY_TASK_ID (job arrays) */
        char *end;
        const char *slash = strchr(shard_s, '/');
        errno = 0;
        if (!strcmp(shard_s, "slurm")) {   /* both from the job array: i = ID - MIN, N = COUNT */
            const char *id = getenv("SLURM_ARRAY_TASK_ID"), *cnt = getenv("SLURM_ARRAY_TASK_COUNT");
            const char *mn = getenv("SLURM_ARRAY_TASK_MIN");
            if (!id || !cnt) {
                fprintf(stderr, "%s: --shard slurm: SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are not set (not a Slurm job array task)\n", g_prog);
                return KV_EXIT_USAGE;
            }
            shard_i = strtol(id, &end, 10) - (mn ? strtol(mn, NULL, 10) : 0);
            if (*end) shard_i = -1;
            shard_n = strtol(cnt, &end, 10);
        } else if (slash) {
            shard_i = strtol(shard_s, &end, 10);
            if (end != slash) shard_i = -1;
            shard_n = strtol(slash + 1, &end, 10);
        } else {
            shard_n = strtol(shard_s, &end, 10);
            const char *id = getenv("SLURM_ARRAY_TASK_ID");
            shard_i = id ? strtol(id, NULL, 10) : -1;
        }
        if (*end || errno || shard_n < 1 || shard_i < 0 || shard_i >= shard_n) {
            fprintf(stderr, "%s: --shard %s: expected i/N with 0 <= i < N (or N with SLURM_ARRAY_TASK_ID set, or slurm "
                    "with SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN < SLURM_ARRAY_TASK_COUNT)\n", g_prog, shard_s);
            return KV_EXIT_USAGE;
        }
    }

    char err[4600] = "", started[64], sha[65] = "", key[17];
    kv_file_digest tdig;
    out_utc_now(started, sizeof started);
    kv_trace *tr = NULL;
    rp_engine *eng = NULL;
    rp_export *xp = NULL;
    size_t *xcfg = NULL, n_xcfg = 0;
    uint8_t *xchosen = NULL;
    char xpath[4200] = "";
    rp_seq_result *res = NULL;
    size_t *seqs = NULL, *calib = NULL, n_seqs = 0, n_calib = 0;
    int rc = KV_EXIT_FAIL;
    kv_error ke;
    int32_t *seq_len = NULL;
    int lock_fd = -1;
    size_t *seqs_all = NULL, n_seqs_all = 0;
    kvrun *r = calloc(1, sizeof *r);     /* first: the engine keeps a pointer to r->sw */
    if (!r) { fprintf(stderr, "%s: out of memory\n", g_prog); return KV_EXIT_FAIL; }
    rp_sweep *sw = &r->sw;

    if (sweep_path) {
        if (sweep_add_file(sw, sweep_path, err, sizeof err)) goto fail;
    } else {
        for (size_t i = 0; i < n_specs; i++) {
            size_t before = sw->n;
            if (sweep_add_line(sw, specs[i], "--strategy", err, sizeof err)) goto fail;
            if (sw->n == before && !strchr(specs[i], '#')) {
                int blank = 1;
                for (const char *p = specs[i]; *p; p++) if (*p != ' ' && *p != '\t') blank = 0;
                if (blank) { snprintf(err, sizeof err, "--strategy: empty specification"); goto fail; }
            }
        }
        if (!sw->n) { snprintf(err, sizeof err, "--strategy: no configuration"); goto fail; }
    }

    /* provenance: the trace's SHA-256, hashed once per file version (lib/sha256.c), or the
     * digest a driver passed (known) when this is the version it is of. Taken before the open
     * so that a record of this digest's passed full validation (valid-<sha256>, in the digest
     * cache's directory) lets the validating child skip the chunks (kv_open_opts.validated:
     * only for the file version the digest belongs to). A failure to hash waits until the
     * open has spoken: for a bad file the user sees the validator's one line, as before. */
    char hdir[4096];                    /* the digest cache's directory: outlives the engine's setup */
    const char *hd = hash_cache ? kv_hash_cache_dir(hdir, sizeof hdir) : NULL;
    char vname[80] = "", vline[128] = "";
    struct stat tsb;    /* not a regular file (a FIFO would block or be consumed): hashed after the open refused it */
    int regular = stat(trace_path, &tsb) == 0 && S_ISREG(tsb.st_mode);
    int how = -1, have_dig = regular && kv_file_sha256_known(trace_path, hd, known, &tdig, &how, &ke) == KV_OK;
    kv_error dig_err = ke;
    kv_open_opts oo;
    memset(&oo, 0, sizeof oo);
    if (have_dig && hd && tdig.have_id) {
        snprintf(vname, sizeof vname, "valid-%s", tdig.hex);
        snprintf(vline, sizeof vline, "kvtrace-validated 1 %s\n", tdig.hex);
        if (kv_cache_record_has(hd, vname, vline)) oo.validated = &tdig;
    }
    if (kv_trace_open(trace_path, &oo, &tr, &ke) != KV_OK) { snprintf(err, sizeof err, "%s", ke.msg); goto fail; }
    if (debug_item("validate"))
        fprintf(stderr, "kvtrace: validated %s: %s\n", trace_path,
                kv_trace_validation(tr) == 2 ? "metadata only (a record of a full validation of these bytes)"
                                             : "full (every chunk read)");
    /* a full validation of the bytes the digest names (the child read that very version) */
    if (vname[0] && kv_trace_validation(tr) == 1 && kv_trace_is_version(tr, &tdig)) kv_cache_record_put(hd, vname, vline);
    if (!regular && !(have_dig = kv_file_sha256_known(trace_path, hd, known, &tdig, &how, &ke) == KV_OK)) dig_err = ke;
    if (!have_dig) { snprintf(err, sizeof err, "%s", dig_err.msg); goto fail; }
    const kv_info *in = kv_trace_info(tr);
    int ps_note = pscores == RP_PS_AUTO && in->has_prompt_scores && in->prompt_scores_stale[0];
    pscores = resolve_prompt_scores(pscores, in);
    if (calib_s && parse_list(calib_s, in->n_seq, &calib, &n_calib, "--calib")) goto fail_quiet;
    {
        /* calibrating strategies (lowrank): without --calib, the last k sequences of the trace
         * (k = the most any configuration asks for) calibrate and are not evaluated */
        size_t want = 0;
        for (size_t c = 0; c < sw->n; c++)
            for (size_t p = 0; p < sw->cfg[c].n_parts; p++) {
                const rp_strategy *st = sw->cfg[c].part[p].s;
                if (!st->calibrate) continue;
                size_t k = st->calib_seqs ? st->calib_seqs(sw->cfg[c].part[p].cfg) : 1;
                if (k == RP_CALIB_NONE) continue;
                if ((k ? k : 1) > want) want = k ? k : 1;
            }
        if (want && !calib_s) {
            if (want >= in->n_seq) {
                snprintf(err, sizeof err, "calibration needs %zu sequences but the trace has %zu: nothing left to evaluate",
                         want, in->n_seq);
                goto fail;
            }
            calib = malloc(want * sizeof *calib);
            if (!calib) { snprintf(err, sizeof err, "out of memory"); goto fail; }
            for (size_t i = 0; i < want; i++) calib[i] = in->n_seq - want + i;
            n_calib = want;
            calib_note = 1;
        }
    }
    if (seqs_s) {
        if (parse_list(seqs_s, in->n_seq, &seqs, &n_seqs, "--seqs")) goto fail_quiet;
        for (size_t i = 0; i < n_seqs; i++)
            for (size_t j = 0; j < n_calib; j++)
                if (seqs[i] == calib[j]) {
                    snprintf(err, sizeof err, "sequence %zu is both evaluated (--seqs) and a calibration sequence (--calib)", seqs[i]);
                    goto fail;
                }
    } else {
        seqs = malloc(in->n_seq * sizeof *seqs);
        if (!seqs) { snprintf(err, sizeof err, "out of memory"); goto fail; }
        for (size_t s = 0; s < in->n_seq; s++) {
            int is_cal = 0;
            for (size_t j = 0; j < n_calib; j++) is_cal |= calib[j] == s;
            if (!is_cal) seqs[n_seqs++] = s;
        }
    }
    if (!n_seqs) { snprintf(err, sizeof err, "no sequence to evaluate"); goto fail; }
    /* the evaluated list before --shard enters the run key: shards of different lists, whose
     * union could leave a gap, are refused by kvreplay merge as parts of different runs */
    uint64_t seqs_hash = rp_hash64(seqs, n_seqs * sizeof *seqs, 0);
    if (!(seqs_all = malloc(n_seqs * sizeof *seqs_all))) { snprintf(err, sizeof err, "out of memory"); goto fail; }
    memcpy(seqs_all, seqs, n_seqs * sizeof *seqs_all);
    n_seqs_all = n_seqs;
    if (shard_n > 1) {      /* round-robin over the evaluated sequences */
        size_t k = 0;
        for (size_t i = 0; i < n_seqs; i++) if ((long)(i % (size_t)shard_n) == shard_i) seqs[k++] = seqs[i];
        n_seqs = k;
        if (!n_seqs) { snprintf(err, sizeof err, "shard %ld/%ld has no sequence to evaluate", shard_i, shard_n); goto fail; }
    }

    if (decode && eval_from) { snprintf(err, sizeof err, "give --decode or --eval-from, not both"); goto fail; }
    if (mode == RP_PREFILL && !in->has_prefill && !decode && !eval_from) {
        /* docs/METHODS.md §3: the split is a run parameter; default to the last quarter of the
         * shortest evaluated sequence, the same N for every sequence */
        long long mn = -1;
        int32_t *sl = malloc(in->n_seq * sizeof *sl);
        if (!sl || kv_trace_read_seq_len(tr, sl, &ke) != KV_OK) {
            free(sl);
            snprintf(err, sizeof err, "%s", sl ? ke.msg : "out of memory");
            goto fail;
        }
        for (size_t i = 0; i < n_seqs; i++) if (mn < 0 || sl[seqs[i]] < mn) mn = sl[seqs[i]];
        free(sl);
        decode = mn / 4 > 0 ? mn / 4 : 1;
        split_note = 1;     /* printed once the run starts (errors stay one line) */
    }
    if (threads <= 0 && (flags & KVRUN_THREADS1)) threads = 1;     /* MPI ranks: no oversubscription */
    if (threads > 0) {
#ifdef _OPENMP
        omp_set_num_threads((int)threads);
#endif
    }

    size_t scan_stats[2] = {0, 0};
    rp_run_opts opts = { .mode = mode, .decode = (size_t)decode, .eval_from = (size_t)eval_from, .readout = readout_flag != 0, .gqa_reduce = gqa,
                         .calib = calib, .n_calib = n_calib, .per_layer_readout = per_layer,
                         .page_size = (size_t)page_size, .prompt_scores = pscores, .no_share = no_share };
    {   /* provenance: the digest taken before the open */
        memcpy(sha, tdig.hex, sizeof sha);
        if (how == KV_SHA256_HASHED && debug_hash())
            fprintf(stderr, "kvtrace: sha256 of %s: hashed %llu bytes\n", trace_path, tdig.size);
        if (hd && tdig.have_id) {       /* records of passed value scans, keyed by this digest */
            opts.scan_cache_dir = hd;
            opts.trace_sha256 = sha;
        }
    }
    if (export_cfg_s && !export_s) { snprintf(err, sizeof err, "--export-configs needs --export PATH"); goto fail; }
    if (export_s) {     /* the exporter is the engine's export hook */
        if (resume) { snprintf(err, sizeof err, "--export cannot be combined with --resume (sequences taken from parts/ are not re-run)"); goto fail; }
        size_t ln = strlen(export_s);
        if (ln > 3 && !strcmp(export_s + ln - 3, ".h5")) {
            snprintf(xpath, sizeof xpath, "%s", export_s);
            if (mkdir_parents(xpath)) { snprintf(err, sizeof err, "--export %s: %s", export_s, strerror(errno)); goto fail; }
        } else {
            if (mkdir(export_s, 0777) && errno != EEXIST) { snprintf(err, sizeof err, "--export %s: %s", export_s, strerror(errno)); goto fail; }
            snprintf(xpath, sizeof xpath, "%s/export.h5", export_s);
        }
        if (!(xchosen = calloc(sw->n, 1))) { snprintf(err, sizeof err, "out of memory"); goto fail; }
        if (export_cfg_s) {
            if (parse_list(export_cfg_s, sw->n, &xcfg, &n_xcfg, "--export-configs")) goto fail_quiet;
            for (size_t i = 0; i < n_xcfg; i++) xchosen[xcfg[i]] = 1;
        } else memset(xchosen, 1, sw->n);
        rp_export_prov xpv = { .trace = trace_path, .trace_sha256 = sha, .model = in->model,
                               .mode = mode == RP_ONLINE ? "online" : "prefill",
                               .decode = (size_t)decode, .eval_from = (size_t)eval_from };
        if (rp_export_open(xpath, sw, xchosen, in, &xpv, &xp, err, sizeof err)) goto fail;
        if (mode == RP_ONLINE) opts.export_evict_hook = rp_export_evict_hook;
        else {
            opts.export_hook = rp_export_hook;
            opts.export_step_hook = rp_export_step_hook;
        }
        opts.export_ud = xp;
    }
    opts.layer_items = debug_item("layer-items");
    opts.q_debug = (debug_item("q-poison") ? RP_QDEBUG_POISON : 0) | (debug_item("q-all") ? RP_QDEBUG_ALL : 0) |
                   (debug_item("q-rows") ? RP_QDEBUG_ROWS : 0);
    opts.read_rope = debug_item("rope");
    opts.scan_stats = scan_stats;
    if (rp_engine_new(tr, sw, &opts, seqs, n_seqs, &eng, err, sizeof err)) goto fail;
    if (debug_item("scan"))
        fprintf(stderr, "kvtrace: value scan: %zu tasks run, %zu skipped (recorded as passed)\n", scan_stats[0], scan_stats[1]);
    if (debug_item("units"))
        fprintf(stderr, "kvtrace: work items: (sequence, layer%s)\n", rp_engine_per_head(eng) ? ", kv head" : "");

    /* run key: everything that determines the parts */
    {
        uint64_t h = rp_hash64(sha, strlen(sha), 0);
        char buf[256];
        snprintf(buf, sizeof buf, "%s|%u|%lld|%lld|%d|%d|%lld|%s", KV_VERSION_STRING, mode, decode, eval_from,
                 rp_engine_has_readout(eng), gqa, page_size, "v2");
        h = rp_hash64(buf, strlen(buf), h);
        if (pscores == RP_PS_TRACE) h = rp_hash64("prompt-scores=trace", 19, h);  /* recompute: the key of older runs */
        if (no_share) h = rp_hash64("share=off", 9, h);
        h = rp_hash64(calib ? (const void *)calib : "", n_calib * sizeof *calib, h);
        h = rp_hash64(&seqs_hash, sizeof seqs_hash, h);
        for (size_t c = 0; c < sw->n; c++) h = rp_hash64(sw->cfg[c].canon, strlen(sw->cfg[c].canon) + 1, h);
        snprintf(key, sizeof key, "%016llx", (unsigned long long)h);
    }

    if (!(flags & KVRUN_WORKER)) {     /* workers find DIR/parts made by rank 0 */
        int has_parts = 0, ds = dir_state(outdir, xp ? rp_export_tmp(xp) : NULL, &has_parts);
        if (ds < 0) { snprintf(err, sizeof err, "%s: cannot create or read the output directory: %s", outdir, strerror(errno)); goto fail; }
        if (ds > 0 && !(resume && has_parts)) {
            snprintf(err, sizeof err, "%s exists and is not empty%s", outdir,
                     resume ? " and holds no interrupted run (parts/) to resume" : " (choose a new directory, or --resume an interrupted run)");
            goto fail;
        }
        {
            char p[4200];
            snprintf(p, sizeof p, "%s/parts", outdir);
            if (mkdir(p, 0777) && errno != EEXIST) { snprintf(err, sizeof err, "%s: %s", p, strerror(errno)); goto fail; }
        }
        char *opts = run_options_text(sha, mode, decode, eval_from, rp_engine_has_readout(eng), per_layer, gqa, page_size, pscores, no_share,
                                      shard_i, shard_n, seqs_all, n_seqs_all, calib, n_calib, sw);
        if (!opts) { snprintf(err, sizeof err, "out of memory"); goto fail; }
        int claim = run_dir_claim(outdir, resume, opts, &lock_fd, err, sizeof err);
        free(opts);
        if (claim) goto fail;
    }
    free(seqs_all);
    seqs_all = NULL;
    if (calib_note && !(flags & KVRUN_WORKER))
        fprintf(stderr, "%s: note: calibrating on the last %zu sequence(s) of the trace (%zu..%zu), not "
                "evaluated (--calib LIST to choose)\n", g_prog, n_calib, calib[0], calib[n_calib - 1]);
    if (ps_note && !(flags & KVRUN_WORKER))
        fprintf(stderr, "%s: note: %s: /prompt_scores do not apply (%s): recomputing the prompt scores\n",
                g_prog, trace_path, in->prompt_scores_stale);
    if (split_note && !(flags & KVRUN_WORKER))
        fprintf(stderr, "%s: note: %s has no /prefill_len; evaluating the last %lld tokens of each sequence "
                "(--decode N to choose)\n", g_prog, trace_path, decode);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    seq_len = malloc((in->n_seq ? in->n_seq : 1) * sizeof *seq_len);
    if (!seq_len || kv_trace_read_seq_len(tr, seq_len, &ke) != KV_OK) {
        snprintf(err, sizeof err, "%s", seq_len ? ke.msg : "out of memory");
        goto fail;
    }
    res = calloc(n_seqs, sizeof *res);
    if (!res) { snprintf(err, sizeof err, "out of memory"); goto fail; }
    *r = (kvrun){ .argc = argc, .argv = argv, .tool = tool, .trace_path = trace_path, .sweep_path = sweep_path,
                  .outdir = outdir, .export_cfg_s = export_cfg_s, .shard_i = shard_i, .shard_n = shard_n,
                  .decode = decode, .page_size = page_size, .prompt_scores = pscores, .no_share = no_share, .mode = mode, .readout_flag = readout_flag, .resume = resume, .sw = *sw, .tr = tr, .in = in,
                  .eng = eng, .xp = xp, .xcfg = xcfg, .n_xcfg = n_xcfg, .xchosen = xchosen, .res = res,
                  .seqs = seqs, .calib = calib, .n_seqs = n_seqs, .n_calib = n_calib, .seq_len = seq_len,
                  .lock_fd = lock_fd, .progress_every = progress_every, .quiet = quiet };
    memcpy(r->started, started, sizeof started);
    memcpy(r->sha, sha, sizeof sha);
    r->digest = tdig;
    memcpy(r->key, key, sizeof key);
    memcpy(r->xpath, xpath, sizeof xpath);
    *out = r;
    return KV_EXIT_OK;
fail:
    print_err(err);
fail_quiet:
    if (lock_fd >= 0) close(lock_fd);
    free(seqs_all);
    free(res); free(seqs); free(calib); free(seq_len);
    rp_engine_free(eng);
    rp_export_free(xp); free(xcfg); free(xchosen);
    kv_trace_close(tr);
    sweep_free(sw);
    free(r);
    return rc == KV_EXIT_OK ? KV_EXIT_FAIL : rc;
}

size_t kvrun_n_items(const kvrun *r) { return r->n_seqs; }
size_t kvrun_item_seq(const kvrun *r, size_t i) { return r->seqs[i]; }
size_t kvrun_item_size(const kvrun *r, size_t i) { return (size_t)r->seq_len[r->seqs[i]]; }
int kvrun_resuming(const kvrun *r) { return r->resume; }
const kv_file_digest *kvrun_trace_digest(const kvrun *r) { return &r->digest; }
const char *kvrun_trace_path(const kvrun *r) { return r->trace_path; }
void kvrun_progress_opts(const kvrun *r, double *every, int *quiet) { *every = r->progress_every; *quiet = r->quiet; }
int kvrun_stop_requested(void) { return g_stop != 0; }

int kvrun_load(kvrun *r, size_t i, int resumed, char *err, size_t errlen)
{
    if (r->res[i].sa) return 1;
    int got = out_part_read(r->outdir, r->key, r->seqs[i], &r->res[i], r->sw.n, r->in->n_layers, r->in->n_heads,
                            err, errlen);
    if (got == 1) { r->n_res++; r->skipped += resumed != 0; }
    return got;
}

int kvrun_compute(kvrun *r, size_t i, int keep, char *err, size_t errlen)
{
    rp_seq_result *res = &r->res[i];
    if (rp_engine_seq(r->eng, r->seqs[i], res, err, errlen)) return -1;
    if (r->xp && rp_export_write_seq(r->xp, r->seqs[i], err, errlen)) return -1;
    if (out_part_write(r->outdir, r->key, res, r->sw.n, r->in->n_layers, r->in->n_heads, err, errlen)) return -1;
    if (keep) r->n_res++;
    else rp_seq_result_free(res);
    return 0;
}

int kvrun_finish(kvrun *r)
{
    char err[4600] = "";
    const kv_info *in = r->in;
    size_t L = in->n_layers, H = in->n_heads;
    int rc = KV_EXIT_FAIL;
    if (r->n_res < r->n_seqs) {
        fprintf(stderr, "%s: interrupted after %zu of %zu sequences; rerun with --resume to continue in %s\n",
                g_prog, r->n_res, r->n_seqs, r->outdir);
        return KV_EXIT_INTERRUPTED;
    }
    {
        char argvs[8192] = "";
        strncat(argvs, r->tool, sizeof argvs - 1);
        for (int i = 0; i < r->argc; i++) {
            strncat(argvs, " ", sizeof argvs - strlen(argvs) - 1);
            strncat(argvs, r->argv[i], sizeof argvs - strlen(argvs) - 1);
        }
        char shard[64];
        snprintf(shard, sizeof shard, "%ld/%ld", r->shard_i, r->shard_n);
        size_t nthreads = 1;
#ifdef _OPENMP
        nthreads = (size_t)omp_get_max_threads();
#endif
        out_prov pv = { .trace = r->trace_path, .trace_sha256 = r->sha, .model = in->model, .architecture = in->architecture,
                        .mode = r->mode == RP_PREFILL ? "prefill" : "online", .sweep = r->sweep_path ? r->sweep_path : "-",
                        .argv = argvs, .started = r->started, .decode = (size_t)r->decode,
                        .n_seq = r->n_seqs, .threads = nthreads, .shard = shard, .page_size = (size_t)r->page_size,
                        .prompt_scores = r->prompt_scores == RP_PS_TRACE ? "trace" : NULL,
                        .evaluation = r->no_share ? "separate" : NULL,
                        .n_kv_heads = in->n_kv_heads, .head_dim = in->head_dim };
        size_t n_na = 0;
        if (out_write_results(r->outdir, &r->sw, r->res, r->n_res, L, H, rp_engine_has_readout(r->eng), &pv, &n_na,
                              err, sizeof err))
            goto fail;
        if (r->xp) {
            if (rp_export_close(r->xp, err, sizeof err)) goto fail;
            fprintf(stderr, "%s: exported the cache states of %zu configuration(s) to %s\n", g_prog,
                    r->export_cfg_s ? r->n_xcfg : r->sw.n, r->xpath);
        }
        if (r->shard_n == 1) remove_parts(r->outdir);     /* shards keep them for kvreplay merge */
        if (n_na)
            fprintf(stderr, "%s: warning: %zu configuration(s) gave results identical to the full cache "
                    "(compression not applied; see not_applied in summary.csv)\n", g_prog, n_na);
        if (r->skipped) fprintf(stderr, "%s: resumed: %zu sequence(s) taken from %s/parts\n", g_prog, r->skipped, r->outdir);
    }
    if (r->readout_flag == 2 && !in->has_readout) {
        fprintf(stderr, "%s: %s has no /readout%s%s: read-out metrics requested (--readout) but left empty; "
                "attention metrics written to %s\n", g_prog, r->trace_path, in->readout_unavailable[0] ? ": " : "",
                in->readout_unavailable, r->outdir);
        rc = KV_EXIT_FAIL;
    } else {
        rc = KV_EXIT_OK;
    }
    return rc;
fail:
    print_err(err);
    return KV_EXIT_FAIL;
}

void kvrun_free(kvrun *r)
{
    if (!r) return;
    if (r->res) for (size_t i = 0; i < r->n_seqs; i++) rp_seq_result_free(&r->res[i]);
    free(r->res); free(r->seqs); free(r->calib); free(r->seq_len);
    rp_engine_free(r->eng);
    rp_export_free(r->xp); free(r->xcfg); free(r->xchosen);
    kv_trace_close(r->tr);
    sweep_free(&r->sw);
    if (r->lock_fd >= 0) close(r->lock_fd);
    free(r);
}

int kvcmd_run(int argc, char **argv)
{
    kvrun *r = NULL;
    int rc = kvrun_open(argc, argv, "kvreplay", 0, NULL, &r);
    if (!r) return rc;
    char err[4600] = "", detail[64];
    size_t n = r->n_seqs;
    kv_progress pg;
    kv_progress_start(&pg, g_prog, "sequences", n, r->progress_every, r->quiet);
    snprintf(detail, sizeof detail, " (%zu configs)", r->sw.n);
    for (size_t i = 0; i < n; i++) {
        int got = r->resume ? kvrun_load(r, i, 1, err, sizeof err) : 0;
        if (got < 0) goto fail;
        if (got) { kv_progress_item_done(&pg, 0); continue; }
        if (g_stop) break;
        kv_progress_begin_item(&pg, i, detail);
        if (kvrun_compute(r, i, 1, err, sizeof err)) goto fail;
        kv_progress_item_done(&pg, 1);
        if (g_stop && i + 1 < n) break;
    }
    kv_progress_clear(&pg);
    rc = kvrun_finish(r);
    if (rc == KV_EXIT_OK) kv_progress_summary(&pg);
    kvrun_free(r);
    return rc;
fail:
    kv_progress_clear(&pg);
    print_err(err);
    kvrun_free(r);
    return KV_EXIT_FAIL;
}

static const char merge_usage[] =
    "usage: kvreplay merge -o DIR SHARD_DIR...\n"
    "\n"
    "Combines the results directories of `kvreplay run ... --shard i/N` (every shard 0..N-1 of\n"
    "one run, each with its parts/) into DIR: the CSVs are those an unsharded run writes.\n"
    "Refuses a missing shard, a shard given twice, a shard whose parts/ lacks a sequence, and\n"
    "shards of different runs (trace, sweep, sequence list or options); every part's checksum\n"
    "and values are verified (non-finite values refused).\n";

/* provenance.json / configs.csv of a shard: regular files, bounded (16 MiB: RP_MAX_CONFIGS
 * lines of at most ~1 KiB). NULL with err. */
static char *slurp(const char *path, char *err, size_t errlen)
{
    char *b = NULL;
    size_t n = 0;
    int got = out_read_file(path, (size_t)16 << 20, &b, &n, err, errlen);
    if (got == 0) snprintf(err, errlen, "%s: missing", path);
    return got == 1 ? b : NULL;
}

int kvcmd_merge(int argc, char **argv)
{
    const char *outdir = NULL, *dirs[1024];
    size_t nd = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { fputs(merge_usage, stdout); return KV_EXIT_OK; }
        if ((!strcmp(argv[i], "-o") || !strcmp(argv[i], "--out")) && i + 1 < argc) outdir = argv[++i];
        else if (argv[i][0] == '-') {
            static const char *const opts[] = { "--out", "--help" };
            char hint[128];
            fprintf(stderr, "kvreplay merge: unknown option '%s'%s (try --help)\n", argv[i], kv_suggest_hint(argv[i], opts, 2, hint, sizeof hint));
            return KV_EXIT_USAGE;
        }
        else if (nd < 1024) dirs[nd++] = argv[i];
        else { fprintf(stderr, "kvreplay merge: too many directories (max 1024)\n"); return KV_EXIT_USAGE; }
    }
    if (!outdir || !nd) { fprintf(stderr, "kvreplay merge: need -o DIR and at least one shard directory\n"); return KV_EXIT_USAGE; }
    char err[4600] = "", key[128] = "", path[4300], started[64];
    out_utc_now(started, sizeof started);
    char *prov0 = NULL, *cfg0 = NULL;
    rp_sweep sw = { 0 };
    rp_seq_result *res = NULL;
    size_t n_res = 0, cap = 0, L = 0, H = 0, NC = 0, shard_n = 0;
    unsigned char *seen_shard = NULL;
    long *from = NULL;          /* [cap] shard index of each part */
    int rc = KV_EXIT_FAIL, has_ro = -1;
    for (size_t d = 0; d < nd; d++) {
        snprintf(path, sizeof path, "%s/provenance.json", dirs[d]);
        char *prov = slurp(path, err, sizeof err), sh[64] = "", *cfgs;
        if (!prov) {
            if (strstr(err, ": missing")) snprintf(err, sizeof err, "%s: not a finished shard (no provenance.json)", dirs[d]);
            goto fail;
        }
        long si = -1, sn = -1;
        if (out_json_get(prov, "shard", sh, sizeof sh) || sscanf(sh, "%ld/%ld", &si, &sn) != 2 || sn < 1 || si < 0 || si >= sn) {
            free(prov);
            snprintf(err, sizeof err, "%s/provenance.json: no valid \"shard\" field", dirs[d]);
            goto fail;
        }
        if (!shard_n) {
            shard_n = (size_t)sn;
            seen_shard = calloc(shard_n, 1);
            if (!seen_shard) { free(prov); snprintf(err, sizeof err, "out of memory"); goto fail; }
        }
        if ((size_t)sn != shard_n) { free(prov); snprintf(err, sizeof err, "%s is shard %s, the others are of %zu shards", dirs[d], sh, shard_n); goto fail; }
        if (seen_shard[si]++) { free(prov); snprintf(err, sizeof err, "%s: shard %s given twice", dirs[d], sh); goto fail; }
        char nsv[32];
        size_t want_parts = 0, got_parts = 0;
        if (!out_json_get(prov, "n_seq", nsv, sizeof nsv)) want_parts = (size_t)strtoull(nsv, NULL, 10);
        snprintf(path, sizeof path, "%s/configs.csv", dirs[d]);
        if (!(cfgs = slurp(path, err, sizeof err))) { free(prov); goto fail; }
        if (!d) { prov0 = prov; cfg0 = cfgs; }
        else {
            int same = !strcmp(cfgs, cfg0);
            free(prov); free(cfgs);
            if (!same) { snprintf(err, sizeof err, "%s: configurations differ from %s", path, dirs[0]); goto fail; }
        }
        /* parts */
        snprintf(path, sizeof path, "%s/parts", dirs[d]);
        DIR *dp = opendir(path);
        if (!dp) { snprintf(err, sizeof err, "%s: missing (was it run with --shard?)", path); goto fail; }
        struct dirent *e;
        while ((e = readdir(dp))) {
            size_t s;
            char tail[8];
            if (sscanf(e->d_name, "seq_%zu.%7s", &s, tail) != 2 || strcmp(tail, "part")) continue;
            snprintf(path, sizeof path, "%s/parts/%s", dirs[d], e->d_name);
            out_part_hdr ph;
            if (out_part_header(path, &ph, err, sizeof err)) { closedir(dp); goto fail; }
            if (ph.seq != s) { closedir(dp); snprintf(err, sizeof err, "%s: holds sequence %zu", path, ph.seq); goto fail; }
            if (!key[0]) { snprintf(key, sizeof key, "%s", ph.key); NC = ph.n_cfg; L = ph.L; H = ph.H; has_ro = ph.has_readout; }
            if (strcmp(ph.key, key) || ph.n_cfg != NC || ph.L != L || ph.H != H || ph.has_readout != has_ro) {
                closedir(dp);
                snprintf(err, sizeof err, "%s: from a different run (trace, sweep, sequence list or options differ)", path);
                goto fail;
            }
            for (size_t i = 0; i < n_res; i++)
                if (res[i].seq == s) { closedir(dp); snprintf(err, sizeof err, "sequence %zu appears in two shards", s); goto fail; }
            if (n_res == cap) {
                size_t nc = cap ? 2 * cap : 64;
                rp_seq_result *q = realloc(res, nc * sizeof *q);
                if (q) res = q;
                long *fq = q ? realloc(from, nc * sizeof *fq) : NULL;
                if (!fq) { closedir(dp); snprintf(err, sizeof err, "out of memory"); goto fail; }
                memset(q + cap, 0, (nc - cap) * sizeof *q);
                from = fq; cap = nc;
            }
            snprintf(path, sizeof path, "%s", dirs[d]);
            if (out_part_read(path, key, s, &res[n_res], NC, L, H, err, sizeof err) != 1) {
                closedir(dp);
                if (!err[0]) snprintf(err, sizeof err, "%s/parts/seq_%zu.part: vanished while merging", dirs[d], s);
                goto fail;
            }
            from[n_res++] = si;
            got_parts++;
        }
        closedir(dp);
        if (got_parts != want_parts) {     /* a gap inside a shard: lost or deleted parts */
            snprintf(err, sizeof err, "%s: %zu part(s) in parts/, its provenance.json says %zu sequence(s)", dirs[d],
                     got_parts, want_parts);
            goto fail;
        }
    }
    for (size_t i = 0; i < shard_n; i++)
        if (!seen_shard[i]) { snprintf(err, sizeof err, "shard %zu/%zu is missing", i, shard_n); goto fail; }
    if (!n_res) { snprintf(err, sizeof err, "no parts found"); goto fail; }
    /* sequence order, as an unsharded run writes them */
    for (size_t i = 1; i < n_res; i++)
        for (size_t j = i; j > 0 && res[j - 1].seq > res[j].seq; j--) {
            rp_seq_result t = res[j]; res[j] = res[j - 1]; res[j - 1] = t;
            long f = from[j]; from[j] = from[j - 1]; from[j - 1] = f;
        }
    /* --shard deals the evaluated sequences round-robin: the r-th of them is in shard r mod N;
     * anything else means the shards evaluated different sequence lists (--seqs, --calib) */
    for (size_t i = 0; i < n_res; i++)
        if ((size_t)from[i] != i % shard_n) {
            snprintf(err, sizeof err, "sequence %zu is in shard %ld/%zu, but dealing the merged sequences round-robin puts it in "
                     "shard %zu/%zu: the shards were run with different sequence lists (--seqs, --calib)", res[i].seq,
                     from[i], shard_n, i % shard_n, shard_n);
            goto fail;
        }
    /* the configurations, from their canonical strings (valid sweep lines) */
    {
        char *line = strchr(cfg0, '\n');
        size_t want = 0;
        while (line && line[1]) {
            char *next = strchr(line + 1, '\n');
            if (next) *next = 0;
            char *c1 = strchr(line + 1, ','), *c2 = c1 ? strchr(c1 + 1, ',') : NULL;
            if (!c1 || !c2) { snprintf(err, sizeof err, "%s/configs.csv: malformed", dirs[0]); goto fail; }
            *c2 = 0;
            if (sweep_add_line(&sw, c1 + 1, "configs.csv", err, sizeof err)) goto fail;
            want++;
            if (sw.n != want || strcmp(sw.cfg[want - 1].canon, c1 + 1)) {
                snprintf(err, sizeof err, "%s/configs.csv: configuration '%s' does not parse back to itself", dirs[0], c1 + 1);
                goto fail;
            }
            /* the label, 6th field when present (config_id,config,family,budget_kind,budget_value,label) */
            const char *lab = c2 + 1;
            for (int k = 0; k < 3 && lab; k++) { lab = strchr(lab, ','); if (lab) lab++; }
            if (lab && *lab) {
                char why[128];
                if (sweep_label_check(lab, why, sizeof why)) {
                    snprintf(err, sizeof err, "%s/configs.csv: label '%.64s' %s", dirs[0], lab, why);
                    goto fail;
                }
                snprintf(sw.cfg[want - 1].label, sizeof sw.cfg[want - 1].label, "%s", lab);
            }
            line = next;
        }
        if (sw.n != NC) { snprintf(err, sizeof err, "%s: %zu configurations, the parts hold %zu", dirs[0], sw.n, NC); goto fail; }
    }
    int has_parts = 0, ds = dir_state(outdir, NULL, &has_parts);
    if (ds != 0) {
        snprintf(err, sizeof err, ds < 0 ? "%s: cannot create the output directory" : "%s exists and is not empty", outdir);
        goto fail;
    }
    {
        char v[13][1024];
        const char *keys[] = { "trace", "trace_sha256", "trace_model", "trace_architecture", "mode", "sweep", "decode", "threads",
                               "page_size", "n_kv_heads", "head_dim", "prompt_scores", "evaluation" };
        for (size_t i = 0; i < 13; i++) if (out_json_get(prov0, keys[i], v[i], sizeof v[i])) v[i][0] = 0;
        char argvs[8192] = "kvreplay";
        for (int i = 0; i < argc; i++) {
            strncat(argvs, " ", sizeof argvs - strlen(argvs) - 1);
            strncat(argvs, argv[i], sizeof argvs - strlen(argvs) - 1);
        }
        out_prov pv = { .trace = v[0], .trace_sha256 = v[1], .model = v[2], .architecture = v[3], .mode = v[4],
                        .sweep = v[5], .argv = argvs, .started = started, .decode = (size_t)strtoull(v[6], NULL, 10),
                        .n_seq = n_res, .threads = (size_t)strtoull(v[7], NULL, 10), .shard = "0/1",
                        .page_size = (size_t)strtoull(v[8], NULL, 10), .n_kv_heads = (size_t)strtoull(v[9], NULL, 10),
                        .head_dim = (size_t)strtoull(v[10], NULL, 10),
                        .prompt_scores = v[11][0] ? v[11] : NULL,        /* the shards' run key holds both */
                        .evaluation = v[12][0] ? v[12] : NULL };
        size_t n_na = 0;
        if (out_write_results(outdir, &sw, res, n_res, L, H, has_ro, &pv, &n_na, err, sizeof err)) goto fail;
    }
    fprintf(stderr, "kvreplay merge: %zu shard(s), %zu sequence(s), %zu configuration(s) -> %s\n", nd, n_res, NC, outdir);
    rc = KV_EXIT_OK;
    goto done;
fail:
    fprintf(stderr, "kvreplay merge: %s\n", err);
done:
    if (res) for (size_t i = 0; i < cap; i++) rp_seq_result_free(&res[i]);
    free(res); free(from); free(prov0); free(cfg0); free(seen_shard);
    sweep_free(&sw);
    return rc;
}
