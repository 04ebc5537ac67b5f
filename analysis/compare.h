/* kvreport compare: several runs (results directories of different traces, models, decode
 * splits or protocols) side by side, never merged.
 *
 * Each run is loaded and analysed alone (res_load, an_compute). Configurations are matched
 * across runs by their key (cmp_config_key: the sweep label when it has one, else the canonical configuration string; a
 * configuration's label, when the results carry one, is the place to plug in). Outputs,
 * under rp_ctx.dir (the caller builds it in a temporary directory and renames it):
 *   compare.md                  the runs, one pivot table per metric, the paired tests
 *   tables/pivot.csv            metric x key rows, per run: n, mean, 95% t-interval
 *   tables/pairs.csv            paired tests between two configurations of one run
 *   figures/compare_<metric>.*  one figure per metric, a panel per run (gnuplot multiplot:
 *                               plots/style.gp + plots/compare.gp), .gp/.dat/.png/.pdf
 *
 * Paired tests (conventions: stats.h): for a pair (A, B) of keys and each run holding both,
 * d = A - B over the sequences both hold (an_pairs), paired t and Wilcoxon signed-rank with
 * the effect sizes; Holm-adjusted within each metric and test across every (pair, run)
 * comparison made, as the report does across configurations against its baseline.
 *
 * Ownership: cmp_load allocates the set, cmp_free releases it (NULL-safe). Library code:
 * returns kv_status; warnings go to rp_ctx.notes.
 */
#ifndef KV_COMPARE_H
#define KV_COMPARE_H

#include <stddef.h>

#include "report.h"

#define CMP_MAX_RUNS 64

typedef struct cmp_run {
    char *label;                   /* unique: the directory's name ([A-Za-z0-9_.-]), "_2" ... on repeats */
    char *path;
    res_set *rs;
    an_result *an;
} cmp_run;

typedef struct cmp_test {
    size_t run, key_a, key_b;
    int metric;
    double mean_a, mean_b;         /* over the pairs */
    an_cmp c;                      /* paired statistics, Holm-adjusted p */
} cmp_test;

typedef struct cmp_set {
    cmp_run *runs; size_t n_runs;
    char **keys; size_t n_keys;    /* in order of first appearance over the runs */
    long *idx;                     /* [n_keys][n_runs]: configuration index in the run, -1 absent */
    int metrics[RM_COUNT]; size_t n_metrics;
    cmp_test *tests; size_t n_tests;
    rp_figure fig[RM_COUNT]; size_t n_fig;
} cmp_set;

/* The key a configuration is matched by across runs. */
const char *cmp_config_key(const res_config *c);

/* Loads and analyses each directory as one run and matches their configurations. */
kv_status cmp_load(const char *const *dirs, size_t n, cmp_set **out, kv_error *err);
void cmp_free(cmp_set *s);
long cmp_find_key(const cmp_set *s, const char *key);

/* The metrics compared: metrics[0..n-1] (RM_*), or with n == 0 the defaults among out_cos,
 * attn_kl, logit_kl and nll_delta that some run has. */
void cmp_set_metrics(cmp_set *s, const int *metrics, size_t n);

/* Paired tests of every pair (a[i], b[i]) of keys in every run holding both, for every
 * metric; a run that lacks one of them, or has fewer than two pairs, is noted and skipped.
 * KV_ERR_INVALID when a key is in no run or a pair names one key twice. */
kv_status cmp_test_pairs(cmp_set *s, const char *const *a, const char *const *b, size_t n_pairs,
                         rp_notes *notes, kv_error *err);

/* compare.md, tables/ and figures/ (figures skipped with c->no_figures or without
 * c->plots_dir). Uses c->dir, c->shown_dir, c->gnuplot, c->plots_dir, c->notes. */
kv_status cmp_write(cmp_set *s, rp_ctx *c, kv_error *err);

#endif /* KV_COMPARE_H */
