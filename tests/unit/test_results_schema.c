/* The results schema (lib/results_schema.h) against both of its users: a results directory
 * kvreplay writes (replay/output.c) is read back file by file and column by column with the
 * declared names, order and types, then through kvreport's reader (analysis/results.c),
 * whose values must equal the fields as written. Also: every metric the reader knows by
 * name is a numeric column of the schema.
 *
 * Needs $BIN/kvreplay and $KV_ROOT/traces/sample.h5 (exit 77 without them); writes under
 * $KV_TMP. The sweep covers an eviction (no reconstruction: empty kv_mse fields), an
 * encoding (reconstruction) and the full cache, with read-out and per-layer read-out, so
 * every file and both the empty and the numeric form of optional columns are written.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "results.h"
#include "results_schema.h"

static int fails = 0, checks = 0;

static void check_true(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) { free(b); b = NULL; }
    if (b) b[n] = 0;
    fclose(f);
    return b;
}

/* Splits line at ',' in place; returns the field count (at most cap). */
static size_t split(char *line, char **f, size_t cap)
{
    size_t n = 0;
    for (char *p = line;;) {
        if (n < cap) f[n] = p;
        n++;
        char *c = strchr(p, ',');
        if (!c) break;
        *c = 0;
        p = c + 1;
    }
    return n;
}

/* One CSV file against the schema: header = the declared names in order, every row as many
 * fields, every field of its declared type. Returns the number of rows (-1: unreadable). */
static long check_csv(const char *dir, kv_rfile which)
{
    const kv_results_file *rf = kv_results_file_get(which);
    char path[8192], what[8500];
    snprintf(path, sizeof path, "%s/%s", dir, rf->name);
    char *buf = slurp(path);
    if (!buf) return -1;
    char *save = NULL, *line = strtok_r(buf, "\n", &save);
    char *f[64];
    size_t n = line ? split(line, f, 64) : 0;
    /* optional columns (late == 2, written only when used: configs.csv's label) count only
     * when the header has them, in their place */
    size_t want = 0;
    for (size_t i = 0; i < rf->n_cols; i++)
        if (rf->cols[i].late != 2 || (i < n && !strcmp(f[i], rf->cols[i].name))) want++;
    snprintf(what, sizeof what, "%s: header has the schema's %zu columns", rf->name, want);
    check_true(what, n == want);
    for (size_t i = 0; i < n && i < rf->n_cols; i++) {
        snprintf(what, sizeof what, "%s: header column %zu is %s", rf->name, i, rf->cols[i].name);
        check_true(what, !strcmp(f[i], rf->cols[i].name));
    }
    long rows = 0;
    size_t bad = 0, empty_opt = 0, num_opt = 0;
    while ((line = strtok_r(NULL, "\n", &save))) {
        rows++;
        n = split(line, f, 64);
        if (n != want) { bad++; continue; }
        for (size_t i = 0; i < n; i++) {
            if (!kv_results_cell_ok(rf->cols[i].type, f[i])) {
                if (bad++ < 5) printf("  %s:%ld: column %s = '%s' is not %s\n", rf->name, rows + 1, rf->cols[i].name, f[i],
                                      kv_col_type_name(rf->cols[i].type));
            }
            if (rf->cols[i].type == KV_COL_NUM_OPT) { if (*f[i]) num_opt++; else empty_opt++; }
        }
    }
    snprintf(what, sizeof what, "%s: every row has the declared field count and types", rf->name);
    check_true(what, bad == 0);
    printf("%-16s %ld rows, %zu columns, optional fields: %zu numbers, %zu empty\n", rf->name, rows, rf->n_cols, num_opt, empty_opt);
    free(buf);
    return rows;
}

/* provenance.json: the declared keys in the declared order, integers where declared. */
static void check_provenance(const char *dir)
{
    const kv_results_file *rf = kv_results_file_get(KV_RF_PROVENANCE);
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", dir, rf->name);
    char *buf = slurp(path);
    check_true("provenance.json readable", buf != NULL);
    if (!buf) return;
    size_t k = 0, order_ok = 1, int_ok = 1;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *q = strchr(line, '"');
        if (!q) continue;
        char *e = strchr(q + 1, '"');
        if (!e) continue;
        *e = 0;
        if (k >= rf->n_cols || strcmp(q + 1, rf->cols[k].name)) { order_ok = 0; printf("  provenance key %zu: %s\n", k, q + 1); }
        else if (rf->cols[k].type == KV_COL_INT) {
            char *v = e + 2;
            while (*v == ' ') v++;
            v[strcspn(v, ",")] = 0;
            if (!kv_results_cell_ok(KV_COL_INT, v)) { int_ok = 0; printf("  provenance %s = %s\n", q + 1, v); }
        }
        k++;
    }
    check_true("provenance.json: the schema's keys in its order", order_ok && k == rf->n_cols);
    check_true("provenance.json: integer keys hold integers", int_ok);
    free(buf);
}

/* The reader's per_seq values against the written fields. */
static void check_reader(const char *dir)
{
    kv_error err = {0};
    res_set *rs = NULL;
    const char *dirs[1] = { dir };
    check_true("res_load reads what kvreplay wrote", res_load(dirs, 1, 0, &rs, &err) == KV_OK);
    if (!rs) { printf("  %s\n", err.msg); return; }
    char path[8192];
    snprintf(path, sizeof path, "%s/per_seq.csv", dir);
    char *buf = slurp(path), *save = NULL, *f[64];
    strtok_r(buf, "\n", &save);
    long cc = kv_results_column(KV_RF_PER_SEQ, "config"), cs = kv_results_column(KV_RF_PER_SEQ, "seq");
    long cq = kv_results_column(KV_RF_PER_SEQ, "n_query");
    size_t cmp = 0, diff = 0, rows = 0;
    for (char *line = strtok_r(NULL, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        split(line, f, 64);
        long ci = res_find_config(rs, f[cc]);
        const res_seq *r = NULL;
        for (size_t i = 0; ci >= 0 && i < rs->configs[ci].n_seqs; i++)
            if (rs->configs[ci].seqs[i].seq == atoll(f[cs])) r = &rs->configs[ci].seqs[i];
        rows++;
        if (!r) { diff++; continue; }
        if (r->n_query != strtod(f[cq], NULL)) diff++;
        for (int m = 0; m < RM_NLL_DELTA; m++) {
            long col = kv_results_column(KV_RF_PER_SEQ, res_metric_names[m]);
            const char *s = f[col];
            double want = *s ? strtod(s, NULL) : NAN;
            int same = (isnan(want) && isnan(r->v[m])) || want == r->v[m];
            diff += !same;
            cmp++;
        }
    }
    printf("reader: %zu per_seq rows, %zu metric values compared, %zu differ\n", rows, cmp, diff);
    check_true("reader: every per_seq value as written (empty = NaN)", rows > 0 && diff == 0);
    free(buf);
    res_free(rs);
}

int main(void)
{
    /* the reader's metric names are numeric columns of the schema */
    for (int m = 0; m < RM_NLL_DELTA; m++) {
        long k = kv_results_column(KV_RF_PER_SEQ, res_metric_names[m]);
        char w[128];
        snprintf(w, sizeof w, "per_seq metric %s is a numeric schema column", res_metric_names[m]);
        check_true(w, k >= 0 && kv_results_file_get(KV_RF_PER_SEQ)->cols[k].type != KV_COL_STR &&
                      kv_results_file_get(KV_RF_PER_SEQ)->cols[k].type != KV_COL_INT);
    }
    for (int m = 0; m < RH_COUNT; m++) {
        long k = kv_results_column(KV_RF_PER_HEAD, res_head_metric_names[m]);
        char w[128];
        snprintf(w, sizeof w, "per_head metric %s is a numeric schema column", res_head_metric_names[m]);
        check_true(w, k >= 0 && kv_results_file_get(KV_RF_PER_HEAD)->cols[k].type != KV_COL_STR);
    }
    check_true("the reader reads the schema's version", RES_VERSION == KV_RESULTS_VERSION);
    /* cell types: hand cases */
    check_true("int", kv_results_cell_ok(KV_COL_INT, "12") && kv_results_cell_ok(KV_COL_INT, "-3") &&
                      !kv_results_cell_ok(KV_COL_INT, "1.5") && !kv_results_cell_ok(KV_COL_INT, "") &&
                      !kv_results_cell_ok(KV_COL_INT, "-"));
    check_true("num", kv_results_cell_ok(KV_COL_NUM, "1.5e-3") && !kv_results_cell_ok(KV_COL_NUM, "") &&
                      !kv_results_cell_ok(KV_COL_NUM, "nan") && !kv_results_cell_ok(KV_COL_NUM, "inf") &&
                      !kv_results_cell_ok(KV_COL_NUM, "1x"));
    check_true("num_opt", kv_results_cell_ok(KV_COL_NUM_OPT, "") && kv_results_cell_ok(KV_COL_NUM_OPT, "2") &&
                          !kv_results_cell_ok(KV_COL_NUM_OPT, "nan"));
    check_true("str", kv_results_cell_ok(KV_COL_STR, "snapkv keep=0.25 + quant") && !kv_results_cell_ok(KV_COL_STR, "a,b"));

    const char *bin = getenv("BIN"), *root = getenv("KV_ROOT"), *tmp = getenv("KV_TMP");
    char trace[2048], exe[2048];
    snprintf(trace, sizeof trace, "%s/traces/sample.h5", root ? root : ".");
    snprintf(exe, sizeof exe, "%s/kvreplay", bin ? bin : "bin");
    struct stat sb;
    if (stat(trace, &sb) || stat(exe, &sb) || !tmp) {
        printf("%d checks, %d failed\n", checks, fails);
        if (fails) return 1;
        printf("skip: the writer check needs $BIN/kvreplay, $KV_ROOT/traces/sample.h5 and $KV_TMP\n");
        return 77;
    }
    char dir[2048], cmd[16384];
    snprintf(dir, sizeof dir, "%s/schema_run", tmp);
    snprintf(cmd, sizeof cmd, "'%s' run '%s' --strategy full --strategy 'streaming keep=0.5 sinks=4' "
             "--strategy 'quant kbits=4 vbits=4' --decode 32 --seqs 0-2 --threads 1 --per-layer-readout "
             "-o '%s' > '%s.log' 2>&1", exe, trace, dir, dir);
    int rc = system(cmd);
    check_true("kvreplay run writes the results directory", rc == 0);
    if (rc != 0) { printf("  %s (see %s.log)\n", cmd, dir); return 1; }
    for (int f = 0; f < KV_RF_PROVENANCE; f++) {
        long rows = check_csv(dir, (kv_rfile)f);
        char w[128];
        snprintf(w, sizeof w, "%s written, with rows", kv_results_file_get((kv_rfile)f)->name);
        check_true(w, rows > 0);
    }
    check_provenance(dir);
    check_reader(dir);
    printf("%d checks, %d failed\n", checks, fails);
    return fails ? 1 : 0;
}
