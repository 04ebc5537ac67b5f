/* kvreport: statistics, tables and gnuplot figures from kvtrace results directories.
 * Only this file prints and exits; the work is in the library files of analysis/. */
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <dirent.h>
#include <libgen.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "analyze.h"
#include "compare.h"
#include "cmd_table.h"
#include "suggest.h"
#include "report.h"
#include "truth.h"
#include "results.h"
#include "trace_stats.h"

#define MARKER ".kvreport"

static const char *USAGE =
    "usage: kvreport RESULTS_DIR... -o REPORT_DIR [options]\n"
    "       kvreport compare RUN_DIR... -o COMPARE_DIR [--pair A B]... [--metric M]... (kvreport compare --help)\n"
    "       kvreport table RESULTS_DIR... --pivot [--metric M] [--columns keep|budget|ratio] [--cols LIST]\n"
    "                [--format md|csv|tex] [-o FILE]   (a strategy x budget table; kvreport table --help)\n"
    "\n"
    "Statistics across sequences, paired tests against a baseline, tables (Markdown, CSV,\n"
    "LaTeX booktabs) and gnuplot figures (PNG + PDF, with their .gp and .dat) from one or more\n"
    "kvtrace results directories (replay/RESULTS.md, version 1). Directories merge: shards and\n"
    "separate runs add sequences; the same configuration and sequence twice must be identical.\n"
    "\n"
    "options:\n"
    "  -o, --output DIR        report directory (written atomically; an existing one must be\n"
    "                          empty or a previous kvreport report, which is replaced)\n"
    "  --baseline CONFIG       configuration every other is compared with: its config string (any\n"
    "                          spelling the sweep syntax reads as it, e.g. 'streaming keep=0.25'),\n"
    "                          label or display name (default: the full cache `full` when present)\n"
    "  --metric M              primary metric of the ranked chart (default logit_kl, or out_cos\n"
    "                          without read-out); also the heat-map metric when per_head has it\n"
    "  --heatmap-config CONFIG configuration of the heat map (default: the best at matched\n"
    "                          compression)\n"
    "  --reliability-config CONFIG  a configuration of the reliability diagram, beside the full\n"
    "                          cache (repeatable, up to 4; default: up to three at matched\n"
    "                          compression whose predictions differ from the full cache's)\n"
    "  --figure-width W        one (3.3 in, one column; default) or two (6.9 in, two columns);\n"
    "                          8 pt text, PDF and a 200 dpi PNG of the same layout\n"
    "  --pareto-all            quality-vs-compression figures with every line of every family,\n"
    "                          in panels of at most 8 (default: one panel, the best line of each\n"
    "                          of the 8 families nearest the Pareto front; the caption lists the rest)\n"
    "  --target-ratio R        matched-compression target (default: median ratio)\n"
    "  --trace TRACE           the trace the results came from: memory vs context (bytes per\n"
    "                          token) and attention-entropy figures\n"
    "  --allow-mixed           accept results of different traces (trace_sha256) that share no\n"
    "                          configuration and sequence (runs to put side by side: kvreport compare)\n"
    "  --force-trace           accept a --trace whose SHA-256 is not the results' trace_sha256, or\n"
    "                          --gains fitted on another trace of the same model (stated in the report)\n"
    "  --seed N                bootstrap seed (default 12345)\n"
    "  --bootstrap N           bootstrap resamples (default 2000; 0 = none)\n"
    "  --no-figures            tables and report only\n"
    "  --truth TRUTH.h5        in-model truth (kvcapture.py validate): proxy-vs-truth correlations\n"
    "  --gains CALIB.csv       apply per-layer gains an earlier --truth report fitted (its\n"
    "                          tables/truth_calib.csv) to these results (need per_layer.csv)\n"
    "  --plots DIR             gnuplot templates (default: plots/ beside the program, or ./plots)\n"
    "  -h, --help              this text\n";

static int usage_error(const char *msg, const char *arg)
{
    fprintf(stderr, "kvreport: %s%s%s\n(kvreport --help for usage)\n", msg, arg ? ": " : "", arg ? arg : "");
    return 2;
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *f)
{
    (void)sb; (void)flag; (void)f;
    return remove(p);
}
static void rm_tree(const char *p) { nftw(p, rm_cb, 16, FTW_DEPTH | FTW_PHYS); }

/* 0 absent, 1 empty dir, 2 previous report, -1 refuse (message printed) */
static int report_dir_state(const char *dir)
{
    struct stat st;
    if (stat(dir, &st)) {
        if (errno == ENOENT) return 0;
        fprintf(stderr, "kvreport: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) { fprintf(stderr, "kvreport: %s: exists and is not a directory\n", dir); return -1; }
    char m[PATH_MAX + 32];
    snprintf(m, sizeof m, "%s/%s", dir, MARKER);
    if (!access(m, F_OK)) return 2;
    DIR *d = opendir(dir);
    if (!d) { fprintf(stderr, "kvreport: %s: %s\n", dir, strerror(errno)); return -1; }
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) { empty = 0; break; }
    closedir(d);
    if (empty) return 1;
    fprintf(stderr, "kvreport: %s: exists, is not empty and is not a previous kvreport report; refusing to replace it\n", dir);
    return -1;
}

static char *find_on_path(const char *prog)
{
    const char *path = getenv("PATH");
    if (!path) return NULL;
    char *dup = strdup(path), *save = NULL;
    if (!dup) return NULL;
    for (char *d = strtok_r(dup, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        char cand[PATH_MAX];
        snprintf(cand, sizeof cand, "%s/%s", *d ? d : ".", prog);
        struct stat st;
        if (!stat(cand, &st) && S_ISREG(st.st_mode) && !access(cand, X_OK)) { free(dup); return strdup(cand); }
    }
    free(dup);
    return NULL;
}

static int has_templates(const char *dir)
{
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/style.gp", dir);
    return !access(p, R_OK);
}

static char *find_plots(const char *given)
{
    if (given) return has_templates(given) ? realpath(given, NULL) : NULL;
    const char *env = getenv("KVTRACE_PLOTS");
    if (env && has_templates(env)) return realpath(env, NULL);
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *d = dirname(exe);
        static const char *rel[] = { "/../plots", "/../share/kvtrace/plots" };
        for (int i = 0; i < 2; i++) {
            char c[PATH_MAX + 32];
            snprintf(c, sizeof c, "%s%s", d, rel[i]);
            if (has_templates(c)) return realpath(c, NULL);
        }
    }
    if (has_templates("plots")) return realpath("plots", NULL);
    return NULL;
}

static int parse_u64(const char *s, unsigned long long *v)
{
    char *end;
    errno = 0;
    if (!*s || *s == '-') return -1;
    *v = strtoull(s, &end, 10);
    return (*end || errno) ? -1 : 0;
}

static const char **g_dirs;
static void free_dirs(void) { free(g_dirs); }

/* ---- kvreport compare ---------------------------------------------------------------------- */

static const char *USAGE_COMPARE =
    "usage: kvreport compare RUN_DIR... -o COMPARE_DIR [options]\n"
    "\n"
    "Several runs side by side: results directories of different traces, models, decode splits\n"
    "or protocols (each one run; shards: kvreplay merge them first). Nothing is merged across\n"
    "runs: each is analysed alone, and configurations are matched across runs by their canonical\n"
    "configuration string. Writes COMPARE_DIR/compare.md, tables/pivot.csv (per metric and\n"
    "configuration, per run: n, mean, 95% t-interval), tables/pairs.csv, and per metric\n"
    "figures/compare_<metric>.{gp,dat,png,pdf} with one panel per run.\n"
    "\n"
    "options:\n"
    "  -o, --output DIR        output directory (written atomically; an existing one must be empty\n"
    "                          or a previous kvreport output, which is replaced)\n"
    "  --pair A B              paired test between configurations A and B in every run holding both:\n"
    "                          over the sequences both hold, d = A - B, paired t-test and Wilcoxon\n"
    "                          signed-rank, Holm-adjusted within each metric and test across every\n"
    "                          (pair, run) comparison made (repeatable). A and B: config strings, or\n"
    "                          words that pick out one ('quant kbits=4 vbits=4')\n"
    "  --metric M              a metric to tabulate, plot and test (repeatable; default: out_cos,\n"
    "                          attn_kl, logit_kl, nll_delta, those some run has)\n"
    "  --no-figures            tables and compare.md only\n"
    "  --plots DIR             gnuplot templates (default: plots/ beside the program, or ./plots)\n"
    "  -h, --help              this text\n";

static const char **g_pair_a, **g_pair_b;
static void free_pairs(void) { free(g_pair_a); free(g_pair_b); }

/* A temporary directory next to out (absolute: gnuplot runs inside it), with the mode of a
 * new directory. 0, or -1 with the message printed. */
static int make_tmp_dir(const char *out, char *tmp, size_t cap)
{
    char *a = strdup(out), *b = strdup(out);
    if (!a || !b) { free(a); free(b); fprintf(stderr, "kvreport: out of memory\n"); return -1; }
    char *parent = realpath(dirname(a), NULL);
    if (!parent) { fprintf(stderr, "kvreport: %s: the parent directory is not usable: %s\n", out, strerror(errno)); free(a); free(b); return -1; }
    snprintf(tmp, cap, "%s/.%s.tmp.XXXXXX", parent, basename(b));
    free(parent); free(a); free(b);
    if (!mkdtemp(tmp)) { fprintf(stderr, "kvreport: %s: cannot create a temporary directory: %s\n", tmp, strerror(errno)); return -1; }
    mode_t um = umask(0);
    umask(um);
    if (chmod(tmp, 0777 & ~um)) { fprintf(stderr, "kvreport: %s: %s\n", tmp, strerror(errno)); rm_tree(tmp); return -1; }
    char marker[PATH_MAX + 32];
    snprintf(marker, sizeof marker, "%s/%s", tmp, MARKER);
    FILE *mf = fopen(marker, "w");
    if (!mf || fputs("kvreport report directory (replaced by the next kvreport -o here)\n", mf) < 0 || fclose(mf)) {
        fprintf(stderr, "kvreport: %s: cannot write: %s\n", marker, strerror(errno));
        rm_tree(tmp);
        return -1;
    }
    return 0;
}

/* Renames tmp to out: an empty out (state 1) or a previous output (state 2) is replaced. */
static int swap_into_place(int state, const char *tmp, const char *out)
{
    if (state == 1 && rmdir(out)) { fprintf(stderr, "kvreport: %s: %s\n", out, strerror(errno)); return -1; }
    char old[PATH_MAX + 16] = "";
    if (state == 2) {
        snprintf(old, sizeof old, "%s.old", tmp);
        if (rename(out, old)) { fprintf(stderr, "kvreport: %s: cannot move the previous output aside: %s\n", out, strerror(errno)); return -1; }
    }
    if (rename(tmp, out)) {
        fprintf(stderr, "kvreport: %s: cannot rename the new output into place: %s\n", out, strerror(errno));
        if (old[0]) rename(old, out);
        return -1;
    }
    if (old[0]) rm_tree(old);
    return 0;
}

static int compare_main(int argc, char **argv)
{
    const char **dirs = g_dirs;
    size_t nd = 0, np = 0, nm = 0;
    g_pair_a = calloc((size_t)argc + 1, sizeof *g_pair_a);
    g_pair_b = calloc((size_t)argc + 1, sizeof *g_pair_b);
    atexit(free_pairs);
    if (!g_pair_a || !g_pair_b) { fprintf(stderr, "kvreport: out of memory\n"); return 1; }
    const char *out = NULL, *plots = NULL;
    int no_figures = 0, metrics[RM_COUNT];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(USAGE_COMPARE, stdout); return 0; }
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            if (i + 1 >= argc) return usage_error("missing value after", a);
            out = argv[++i];
        } else if (!strcmp(a, "--plots")) {
            if (i + 1 >= argc) return usage_error("missing value after", a);
            plots = argv[++i];
        } else if (!strcmp(a, "--pair")) {
            if (i + 2 >= argc) return usage_error("--pair needs two configurations", NULL);
            g_pair_a[np] = argv[++i];
            g_pair_b[np++] = argv[++i];
        } else if (!strcmp(a, "--metric")) {
            if (i + 1 >= argc) return usage_error("missing value after", a);
            int m = res_metric_index(argv[++i]);
            if (m < 0) return usage_error("unknown metric (see replay/RESULTS.md per_seq columns, or nll_delta)", argv[i]);
            int dup = 0;
            for (size_t k = 0; k < nm; k++) dup |= metrics[k] == m;
            if (!dup && nm < RM_COUNT) metrics[nm++] = m;
        } else if (!strcmp(a, "--no-figures")) no_figures = 1;
        else if (a[0] == '-' && a[1]) return usage_error("unknown option of kvreport compare", a);
        else dirs[nd++] = a;
    }
    if (!nd) return usage_error("compare: no results directory given", NULL);
    if (!out) return usage_error("compare: no output directory given (-o DIR)", NULL);
    int state = report_dir_state(out);
    if (state < 0) return 1;

    kv_error err = {0};
    cmp_set *s = NULL;
    if (cmp_load(dirs, nd, &s, &err) != KV_OK) { fprintf(stderr, "kvreport compare: %s\n", err.msg); return 1; }
    rp_ctx c = {0};
    c.version = KV_VERSION_STRING;
    c.no_figures = no_figures;
    c.shown_dir = out;
    cmp_set_metrics(s, metrics, nm);
    char tmp[PATH_MAX] = "";
    char *gnuplot = NULL, *plots_dir = NULL;
    int rc = 1;
    if (!s->n_metrics) { fprintf(stderr, "kvreport compare: no run has a value of any default metric; pass --metric\n"); goto done; }
    if (cmp_test_pairs(s, g_pair_a, g_pair_b, np, &c.notes, &err) != KV_OK) { fprintf(stderr, "kvreport compare: %s\n", err.msg); goto done; }
    if (!no_figures) {
        gnuplot = find_on_path("gnuplot");
        if (!gnuplot) fprintf(stderr, "kvreport: warning: gnuplot not found on PATH: figures not rendered (their .gp and .dat are written)\n");
        plots_dir = find_plots(plots);
        if (!plots_dir && plots) { fprintf(stderr, "kvreport: --plots %s: no style.gp there\n", plots); goto done; }
        if (!plots_dir) fprintf(stderr, "kvreport: warning: gnuplot templates (plots/) not found: figures skipped (pass --plots DIR)\n");
    }
    c.gnuplot = gnuplot;
    c.plots_dir = plots_dir;
    if (make_tmp_dir(out, tmp, sizeof tmp)) { tmp[0] = 0; goto done; }
    c.dir = tmp;
    if (cmp_write(s, &c, &err) != KV_OK) { fprintf(stderr, "kvreport compare: %s\n", err.msg); goto done; }
    if (swap_into_place(state, tmp, out)) goto done;
    tmp[0] = 0;
    size_t nr = 0;
    for (size_t k = 0; k < s->n_fig; k++) nr += s->fig[k].rendered;
    fprintf(stderr, "kvreport compare: %zu runs, %zu configurations matched by configuration string, %zu paired tests; "
            "%zu of %zu figures rendered; %s/compare.md\n", s->n_runs, s->n_keys, s->n_tests, nr, s->n_fig, out);
    rc = 0;
done:
    if (tmp[0]) rm_tree(tmp);
    rp_notes_free(&c.notes);
    free(gnuplot); free(plots_dir);
    cmp_free(s);
    return rc;
}
static const char *const OPTIONS[] = {
    "--output", "--baseline", "--metric", "--heatmap-config", "--target-ratio", "--trace", "--allow-mixed",
    "--force-trace", "--seed", "--bootstrap", "--no-figures", "--truth", "--gains", "--plots", "--help",
    "--reliability-config", "--figure-width", "--pareto-all",
};

int main(int argc, char **argv)
{
    signal(SIGXFSZ, SIG_IGN);      /* a file-size limit (ulimit -f) becomes a write error (EFBIG) with a message */
    if (argc > 1 && !strcmp(argv[1], "table")) return kvr_table_main(argc - 1, argv + 1);
    char hint[256];
    const char **dirs = calloc((size_t)argc + 1, sizeof *dirs);
    g_dirs = dirs;
    atexit(free_dirs);             /* every return path, usage errors included */
    size_t nd = 0;
    const char *out = NULL, *baseline = NULL, *metric = NULL, *heat = NULL, *trace = NULL, *plots = NULL, *truth = NULL;
    const char *gains = NULL;
    const char *rel_names[4];
    size_t n_rel = 0;
    int two_col = 0, pareto_all = 0;
    int allow_mixed = 0, no_figures = 0, force_trace = 0;
    unsigned long long seed = 12345, nboot = 2000;
    double target = 0;
    if (!dirs) { fprintf(stderr, "kvreport: out of memory\n"); return 1; }
    if (argc > 1 && !strcmp(argv[1], "compare")) return compare_main(argc - 1, argv + 1);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define NEED_ARG() do { if (i + 1 >= argc) return usage_error("missing value after", a); } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(USAGE, stdout); return 0; }
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) { NEED_ARG(); out = argv[++i]; }
        else if (!strcmp(a, "--baseline")) { NEED_ARG(); baseline = argv[++i]; }
        else if (!strcmp(a, "--metric")) { NEED_ARG(); metric = argv[++i]; }
        else if (!strcmp(a, "--heatmap-config")) { NEED_ARG(); heat = argv[++i]; }
        else if (!strcmp(a, "--reliability-config")) {
            NEED_ARG();
            if (n_rel == 4) return usage_error("--reliability-config given more than 4 times", argv[i + 1]);
            rel_names[n_rel++] = argv[++i];
        }
        else if (!strcmp(a, "--figure-width")) {
            NEED_ARG();
            const char *w = argv[++i];
            if (!strcmp(w, "one")) two_col = 0;
            else if (!strcmp(w, "two")) two_col = 1;
            else return usage_error("--figure-width needs one or two", w);
        }
        else if (!strcmp(a, "--trace")) { NEED_ARG(); trace = argv[++i]; }
        else if (!strcmp(a, "--truth")) { NEED_ARG(); truth = argv[++i]; }
        else if (!strcmp(a, "--gains")) { NEED_ARG(); gains = argv[++i]; }
        else if (!strcmp(a, "--plots")) { NEED_ARG(); plots = argv[++i]; }
        else if (!strcmp(a, "--pareto-all")) pareto_all = 1;
        else if (!strcmp(a, "--allow-mixed")) allow_mixed = 1;
        else if (!strcmp(a, "--force-trace")) force_trace = 1;
        else if (!strcmp(a, "--no-figures")) no_figures = 1;
        else if (!strcmp(a, "--seed")) { NEED_ARG(); if (parse_u64(argv[++i], &seed)) return usage_error("--seed needs a non-negative integer", argv[i]); }
        else if (!strcmp(a, "--bootstrap")) { NEED_ARG(); if (parse_u64(argv[++i], &nboot) || nboot > 1000000) return usage_error("--bootstrap needs an integer in 0..1000000", argv[i]); }
        else if (!strcmp(a, "--target-ratio")) {
            NEED_ARG();
            char *end;
            target = strtod(argv[++i], &end);
            if (*end || !(target >= 1) || !isfinite(target)) return usage_error("--target-ratio needs a number >= 1", argv[i]);
        }
        else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "kvreport: unknown option: %s%s\n(kvreport --help for usage)\n", a,
                    kv_suggest_hint(a, OPTIONS, sizeof OPTIONS / sizeof *OPTIONS, hint, sizeof hint));
            return 2;
        }
        else dirs[nd++] = a;
#undef NEED_ARG
    }
    if (!nd) return usage_error("no results directory given", NULL);
    if (!out) return usage_error("no report directory given (-o REPORT_DIR)", NULL);
    int mi = -1;
    if (metric && (mi = res_metric_index(metric)) < 0) {
        fprintf(stderr, "kvreport: unknown metric (see replay/RESULTS.md per_seq columns, or nll_delta): %s%s\n"
                "(kvreport --help for usage)\n", metric, kv_suggest_hint(metric, res_metric_names, RM_COUNT, hint, sizeof hint));
        return 2;
    }

    /* the report directory: refuse early, before any work */
    int state = report_dir_state(out);
    if (state < 0) return 1;

    kv_error err = {0};
    res_set *rs = NULL;
    if (res_load(dirs, nd, allow_mixed, &rs, &err) != KV_OK) { fprintf(stderr, "kvreport: %s\n", err.msg); return 1; }
    if (rs->mixed_traces) fprintf(stderr, "kvreport: warning: results of different traces combined (--allow-mixed)\n");

    /* --trace: the trace the results came from, by content (SHA-256 of provenance.json) */
    char trace_forced[512] = "";
    if (trace) {
        char sha[65];
        kv_error se = {0};
        if (kv_file_sha256(trace, sha, &se) != KV_OK) { fprintf(stderr, "kvreport: --trace %s\n", se.msg); res_free(rs); return 1; }
        for (size_t d = 0; d < rs->n_dirs; d++) {
            const char *want = res_prov(&rs->dirs[d], "trace_sha256");
            if (want && !strcmp(want, sha)) continue;
            if (!force_trace) {
                fprintf(stderr, "kvreport: --trace %s: SHA-256 %.16s... is not the trace of %s (trace_sha256 %.16s...): "
                        "pass the trace the results came from, or --force-trace\n", trace, sha, rs->dirs[d].path,
                        want ? want : "(absent)");
                res_free(rs);
                return 1;
            }
            snprintf(trace_forced, sizeof trace_forced, "WARNING: --force-trace: the --trace file %s (sha256 %.16s...) is not "
                     "the trace of %s (trace_sha256 %.16s...); memory and entropy figures describe that file", trace, sha,
                     rs->dirs[d].path, want ? want : "(absent)");
        }
    }

    long base = -1;
    if (baseline) {
        base = res_resolve_config(rs, baseline, hint, sizeof hint);
        if (base < 0) {
            fprintf(stderr, "kvreport: --baseline '%s' is not a configuration in the results (%zu configurations): %s\n",
                    baseline, rs->n_configs, hint[0] ? hint : "give its config string, label or name (report.md, The sweep)");
            res_free(rs);
            return 1;
        }
    } else {
        base = an_find_full(rs);
        if (base < 0) fprintf(stderr, "kvreport: warning: no `full` configuration and no --baseline: paired comparisons skipped\n");
    }
    long focus = -1;
    if (heat && (focus = res_resolve_config(rs, heat, hint, sizeof hint)) < 0) {
        fprintf(stderr, "kvreport: --heatmap-config '%s' is not a configuration in the results: %s\n", heat,
                hint[0] ? hint : "give its config string, label or name (report.md, The sweep)");
        res_free(rs);
        return 1;
    }

    long rel_idx[4];
    for (size_t k = 0; k < n_rel; k++)
        if ((rel_idx[k] = res_find_config(rs, rel_names[k])) < 0) {
            fprintf(stderr, "kvreport: --reliability-config '%s' is not a configuration in the results\n", rel_names[k]);
            res_free(rs);
            return 1;
        }

    an_result *an = NULL;
    if (an_compute(rs, base, (size_t)nboot, seed, &an, &err) != KV_OK) { fprintf(stderr, "kvreport: %s\n", err.msg); res_free(rs); return 1; }

    if (mi < 0) {
        mi = RM_OUT_COS;
        for (size_t i = 0; i < an->nc; i++) if (an_get(an, i, RM_LOGIT_KL)->valid) { mi = RM_LOGIT_KL; break; }
    }
    int hm = res_head_metric_index(res_metric_names[mi]);
    if (hm < 0 || hm == RH_KEEP_FRAC) hm = RH_OUT_COS;

    /* temporary report directory next to the final one */
    char *outdup = strdup(out), *outdup2 = strdup(out);
    char tmp[PATH_MAX];
    if (!outdup || !outdup2) { fprintf(stderr, "kvreport: out of memory\n"); return 1; }
    /* absolute: gnuplot runs with the figures directory as its working directory */
    char *parent = realpath(dirname(outdup), NULL);
    if (!parent) { fprintf(stderr, "kvreport: %s: the parent directory is not usable: %s\n", out, strerror(errno)); return 1; }
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp.XXXXXX", parent, basename(outdup2));
    free(parent);
    if (!mkdtemp(tmp)) { fprintf(stderr, "kvreport: %s: cannot create a temporary directory: %s\n", tmp, strerror(errno)); return 1; }
    {   /* mkdtemp makes it 0700; the report gets the mode of any new directory, 0777 & ~umask */
        mode_t um = umask(0);
        umask(um);
        if (chmod(tmp, 0777 & ~um)) { fprintf(stderr, "kvreport: %s: %s\n", tmp, strerror(errno)); rm_tree(tmp); return 1; }
    }

    rp_ctx c = {0};
    c.rs = rs; c.an = an; c.dir = tmp; c.shown_dir = out;
    c.metric = mi; c.head_metric = hm; c.target_ratio = target;
    c.no_figures = no_figures; c.seed = seed; c.n_boot = (size_t)nboot;
    c.version = KV_VERSION_STRING;
    c.force_trace = force_trace;
    c.fig_two_col = two_col;
    c.pareto_all = pareto_all;
    c.rel_configs = n_rel ? rel_idx : NULL;
    c.n_rel = n_rel;
    if (trace_forced[0]) rp_note(&c.notes, "%s", trace_forced);
    if (focus < 0) {
        size_t *idx = malloc((rs->n_configs + 1) * sizeof *idx);
        double t;
        if (idx && rp_matched(&c, idx, &t) > 0) focus = (long)idx[0];
        free(idx);
        for (size_t i = 0; focus < 0 && i < rs->n_configs; i++)
            if ((long)i != base && rs->configs[i].n_heads) focus = (long)i;
    }
    c.focus = focus;

    char *gnuplot = NULL, *plots_dir = NULL;
    rp_entropy *ent = NULL;
    char ent_note[256] = "";
    int rc = 1;
    if (!no_figures) {
        gnuplot = find_on_path("gnuplot");
        if (!gnuplot) {
            fprintf(stderr, "kvreport: warning: gnuplot not found on PATH: figures not rendered (their .gp and .dat are written; tables are complete)\n");
            rp_note(&c.notes, "gnuplot was not found on PATH: figures were not rendered; install gnuplot-nox and run `gnuplot NAME.gp` in figures/, or re-run kvreport");
        }
        plots_dir = find_plots(plots);
        if (!plots_dir && plots) { fprintf(stderr, "kvreport: --plots %s: no style.gp there\n", plots); goto cleanup; }
        if (!plots_dir) fprintf(stderr, "kvreport: warning: gnuplot templates (plots/) not found: figures skipped (pass --plots DIR)\n");
        if (trace) {
            kv_error te = {0};
            double bpt = 0;
            if (ts_load(trace, &bpt, &ent, ent_note, sizeof ent_note, &te) != KV_OK) {
                fprintf(stderr, "kvreport: %s\n", te.msg);
                goto cleanup;
            }
            c.bytes_per_token = bpt;
            c.trace_path = trace;
            if (ent_note[0]) rp_note(&c.notes, "%s", ent_note);
        } else {
            c.entropy_why = "needs the trace: pass --trace TRACE";
        }
    }
    c.gnuplot = gnuplot;
    c.plots_dir = plots_dir;
    c.entropy = ent;

    char marker[PATH_MAX + 32];
    snprintf(marker, sizeof marker, "%s/%s", tmp, MARKER);
    FILE *mf = fopen(marker, "w");
    if (!mf || fputs("kvreport report directory (replaced by the next kvreport -o here)\n", mf) < 0 || fclose(mf)) {
        fprintf(stderr, "kvreport: %s: cannot write: %s\n", marker, strerror(errno));
        goto cleanup;
    }
    if (rp_write_tables(&c, &err) || rp_write_figures(&c, &err) || rp_write_report(&c, &err)) {
        fprintf(stderr, "kvreport: %s\n", err.msg);
        goto cleanup;
    }
    if (truth) {        /* proxy vs in-model truth, appended to report.md */
        size_t n_warn = 0;
        if (tr_write(&c, truth, &n_warn, &err)) { fprintf(stderr, "kvreport: %s\n", err.msg); goto cleanup; }
        if (n_warn) fprintf(stderr, "kvreport: WARNING: proxy-vs-truth rank correlation below %.1f for %zu metric(s) (see report.md)\n",
                            TR_WARN_RHO, n_warn);
    }
    if (gains && tr_apply_gains(&c, gains, &err)) { fprintf(stderr, "kvreport: %s\n", err.msg); goto cleanup; }

    /* swap into place: an empty directory or a previous report is replaced */
    if (state == 1 && rmdir(out)) { fprintf(stderr, "kvreport: %s: %s\n", out, strerror(errno)); goto cleanup; }
    char old[PATH_MAX + 16] = "";
    if (state == 2) {
        snprintf(old, sizeof old, "%s.old", tmp);
        if (rename(out, old)) { fprintf(stderr, "kvreport: %s: cannot move the previous report aside: %s\n", out, strerror(errno)); goto cleanup; }
    }
    if (rename(tmp, out)) {
        fprintf(stderr, "kvreport: %s: cannot rename the new report into place: %s\n", out, strerror(errno));
        if (old[0]) rename(old, out);
        goto cleanup;
    }
    if (old[0]) rm_tree(old);
    tmp[0] = 0;

    size_t nr = 0, nf = 0;
    for (size_t k = 0; k < c.n_fig; k++) { nf += c.fig[k].written; nr += c.fig[k].rendered; }
    for (size_t k = 0; k < c.notes.n; k++)
        if (!strncmp(c.notes.line[k], "WARNING", 7) || strstr(c.notes.line[k], "not applied"))
            fprintf(stderr, "kvreport: %s\n", c.notes.line[k]);
    fprintf(stderr, "kvreport: %zu configurations from %zu director%s; %zu figure%s rendered of %zu written; report: %s/report.md\n",
            rs->n_configs, rs->n_dirs, rs->n_dirs == 1 ? "y" : "ies", nr, nr == 1 ? "" : "s", nf, out);
    rc = 0;
cleanup:
    if (tmp[0]) rm_tree(tmp);
    rp_notes_free(&c.notes);
    ts_entropy_free(ent);
    free(gnuplot); free(plots_dir); free(outdup); free(outdup2);
    an_free(an);
    res_free(rs);
    return rc;
}
