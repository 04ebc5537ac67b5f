/* kvreport table: one table (a strategy x budget pivot) of one metric, to stdout or a file.
 * Like replay/cmd_*.c, a command module: it prints its messages and returns an exit status. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "analyze.h"
#include "cmd_table.h"
#include "suggest.h"
#include "table.h"

static const char *TABLE_USAGE =
    "usage: kvreport table RESULTS_DIR... --pivot [options]\n"
    "\n"
    "A strategy x budget table of one metric: rows are strategies (configurations that differ\n"
    "in their budget alone, named by the sweep's label= or by family and the parameters that\n"
    "vary), columns are budgets or compression ratios, cells the mean over sequences with the\n"
    "half-width of its 95% t-interval; the best cell of each column is in bold, the header\n"
    "arrow says which direction is better. Configurations flagged 'not applied' are marked\n"
    "and never best.\n"
    "\n"
    "options:\n"
    "  --pivot                 the strategy x budget table (the only kind so far; the default)\n"
    "  --metric M              metric of the cells (default logit_kl, or out_cos without read-out);\n"
    "                          any per_seq metric of replay/RESULTS.md or nll_delta\n"
    "  --columns keep|budget|ratio\n"
    "                          columns: nominal keep fraction (default when the sweep has keep=\n"
    "                          budgets), budget in entries, or target compression ratios (each\n"
    "                          configuration in the column nearest its measured ratio)\n"
    "  --cols LIST             the columns to show, comma-separated (e.g. 0.1,0.5, or 2,4,8 for\n"
    "                          ratios; default: every budget, or for ratios the median measured\n"
    "                          ratio of each budget)\n"
    "  --tol F                 ratio columns: accept a configuration within a factor F of the\n"
    "                          target (default 1.25)\n"
    "  --format md|csv|tex     Markdown (default), long-form CSV, or LaTeX (booktabs; a longtable\n"
    "                          above 40 rows; \\footnotesize, sized for \\columnwidth by short row\n"
    "                          names and few columns)\n"
    "  --label NAME            LaTeX \\label (default tab:kvtrace-pivot-METRIC-COLUMNS)\n"
    "  -o, --output FILE       write FILE (through a temporary name) instead of stdout\n"
    "  --allow-mixed           accept results of different traces (trace_sha256)\n"
    "  -h, --help              this text\n";

static const char *const TABLE_OPTS[] = { "--pivot", "--metric", "--columns", "--cols", "--tol", "--format", "--label",
                                          "--output", "--allow-mixed", "--help" };

static int table_usage(const char *msg, const char *arg, const char *hint)
{
    fprintf(stderr, "kvreport table: %s%s%s%s\n(kvreport table --help for usage)\n", msg, arg ? ": " : "", arg ? arg : "",
            hint ? hint : "");
    return 2;
}

/* mkstemp makes files 0600; the table gets the mode of any new file, 0666 & ~umask */
static int fchmod_default(const char *path)
{
    mode_t um = umask(0);
    umask(um);
    return chmod(path, 0666 & ~um);
}

static int parse_cols(const char *s, double *out, size_t *n)
{
    *n = 0;
    char *dup = strdup(s), *save = NULL;
    if (!dup) return -1;
    for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *end;
        errno = 0;
        double v = strtod(t, &end);
        if (*end || end == t || errno || !(v > 0) || !isfinite(v) || *n == TB_MAX_COLS) { free(dup); return -1; }
        out[(*n)++] = v;
    }
    free(dup);
    return *n ? 0 : -1;
}

int kvr_table_main(int argc, char **argv)
{
    const char **dirs = calloc((size_t)argc + 1, sizeof *dirs);
    if (!dirs) { fprintf(stderr, "kvreport table: out of memory\n"); return 1; }
    size_t nd = 0;
    const char *metric = NULL, *columns = NULL, *cols_s = NULL, *format = "md", *label = NULL, *out = NULL;
    double tol = 1.25;
    int allow_mixed = 0, rc = 2;
    char hint[256];
    res_set *rs = NULL;
    an_result *an = NULL;
    tb_pivot *pv = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define NEED() do { if (i + 1 >= argc) { rc = table_usage("missing value after", a, NULL); goto done; } } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(TABLE_USAGE, stdout); rc = 0; goto done; }
        else if (!strcmp(a, "--pivot")) ;
        else if (!strcmp(a, "--metric")) { NEED(); metric = argv[++i]; }
        else if (!strcmp(a, "--columns")) { NEED(); columns = argv[++i]; }
        else if (!strcmp(a, "--cols")) { NEED(); cols_s = argv[++i]; }
        else if (!strcmp(a, "--format")) { NEED(); format = argv[++i]; }
        else if (!strcmp(a, "--label")) { NEED(); label = argv[++i]; }
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) { NEED(); out = argv[++i]; }
        else if (!strcmp(a, "--allow-mixed")) allow_mixed = 1;
        else if (!strcmp(a, "--tol")) {
            NEED();
            char *end;
            tol = strtod(argv[++i], &end);
            if (*end || !(tol > 1) || !isfinite(tol)) { rc = table_usage("--tol needs a factor > 1", argv[i], NULL); goto done; }
        }
        else if (a[0] == '-' && a[1]) {
            rc = table_usage("unknown option", a, kv_suggest_hint(a, TABLE_OPTS, sizeof TABLE_OPTS / sizeof *TABLE_OPTS, hint, sizeof hint));
            goto done;
        }
        else dirs[nd++] = a;
#undef NEED
    }
    if (!nd) { rc = table_usage("no results directory given", NULL, NULL); goto done; }
    static const char *const FORMATS[] = { "md", "csv", "tex" }, *const KINDS[] = { "keep", "budget", "ratio" };
    int fmt = -1, kind = -1;
    for (int k = 0; k < 3; k++) if (!strcmp(format, FORMATS[k])) fmt = k;
    if (fmt < 0) { rc = table_usage("--format is md, csv or tex", format, kv_suggest_hint(format, FORMATS, 3, hint, sizeof hint)); goto done; }
    if (columns) {
        for (int k = 0; k < 3; k++) if (!strcmp(columns, KINDS[k])) kind = k;
        if (kind < 0) { rc = table_usage("--columns is keep, budget or ratio", columns, kv_suggest_hint(columns, KINDS, 3, hint, sizeof hint)); goto done; }
    }
    int mi = -1;
    if (metric && (mi = res_metric_index(metric)) < 0) {
        rc = table_usage("unknown metric (per_seq columns of replay/RESULTS.md, or nll_delta)", metric,
                         kv_suggest_hint(metric, res_metric_names, RM_COUNT, hint, sizeof hint));
        goto done;
    }
    double cols[TB_MAX_COLS];
    size_t ncols = 0;
    if (cols_s && parse_cols(cols_s, cols, &ncols)) { rc = table_usage("--cols needs positive numbers, comma-separated", cols_s, NULL); goto done; }

    rc = 1;
    kv_error err = {0};
    if (res_load(dirs, nd, allow_mixed, &rs, &err) != KV_OK) { fprintf(stderr, "kvreport table: %s\n", err.msg); goto done; }
    if (an_compute(rs, an_find_full(rs), 0, 1, &an, &err) != KV_OK) { fprintf(stderr, "kvreport table: %s\n", err.msg); goto done; }
    if (mi < 0) {
        mi = RM_OUT_COS;
        for (size_t i = 0; i < an->nc; i++) if (an_get(an, i, RM_LOGIT_KL)->valid) { mi = RM_LOGIT_KL; break; }
    }
    double avail[TB_MAX_COLS];
    if (kind < 0) kind = tb_available(rs, an, TB_KEEP, mi, avail) ? TB_KEEP : tb_available(rs, an, TB_BUDGET, mi, avail) ? TB_BUDGET : TB_RATIO;
    char lab[128];
    if (!label) {
        snprintf(lab, sizeof lab, "tab:kvtrace-pivot-%s-%s", res_metric_names[mi], KINDS[kind]);
        for (char *p = lab; *p; p++) if (*p == '_') *p = '-';
        label = lab;
    }
    tb_opts o = { .metric = mi, .kind = (tb_kind)kind, .cols = ncols ? cols : NULL, .n_cols = ncols, .tol = tol, .label = label };
    if (tb_pivot_build(rs, an, &o, &pv, &err) != KV_OK) { fprintf(stderr, "kvreport table: %s\n", err.msg); goto done; }
    if (!pv->n_rows) {
        fprintf(stderr, "kvreport table: no configuration has %s at a %s column (try --columns %s)\n", res_metric_names[mi],
                KINDS[kind], kind == TB_RATIO ? "keep" : "ratio");
        goto done;
    }
    char tmp[4096] = "";
    FILE *f = stdout;
    if (out) {
        snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", out);
        int fd = mkstemp(tmp);
        if (fd < 0 || !(f = fdopen(fd, "w"))) {
            fprintf(stderr, "kvreport table: %s: cannot create: %s\n", tmp, strerror(errno));
            if (fd >= 0) { close(fd); unlink(tmp); }
            goto done;
        }
    }
    if (fmt == 0) tb_write_md(f, pv); else if (fmt == 1) tb_write_csv(f, pv); else tb_write_tex(f, pv);
    if (out) {
        int bad = ferror(f), e = errno;
        if (fclose(f) && !bad) { bad = 1; e = errno; }
        if (!bad && fchmod_default(tmp)) { bad = 1; e = errno; }
        if (bad || rename(tmp, out)) {
            fprintf(stderr, "kvreport table: %s: write failed: %s\n", out, strerror(bad ? e : errno));
            unlink(tmp);
            goto done;
        }
    } else if (fflush(stdout) || ferror(stdout)) {
        fprintf(stderr, "kvreport table: write to stdout failed: %s\n", strerror(errno));
        goto done;
    }
    rc = 0;
done:
    tb_pivot_free(pv);
    an_free(an);
    res_free(rs);
    free(dirs);
    return rc;
}
