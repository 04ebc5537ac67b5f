/* Strategy x budget tables ("pivot"): rows are strategies (configurations that differ in
 * their budget alone, named by res_config.row), columns are budgets (nominal keep fraction or
 * entry count) or compression ratios, a cell holds one metric's mean over sequences with its
 * 95% t-interval; the best cell of each column (lowest or highest mean by the metric's
 * direction, ties included; a column of one cell has none) is marked best.
 *
 * Ratio columns: each configuration goes to the column whose target ratio is nearest its mean
 * ratio in log distance, when within a factor tol of it; a row keeps, per column, the
 * configuration nearest the target. Configurations flagged "not applied" are shown, marked,
 * and never best.
 *
 * Writers: Markdown (best in bold), long-form CSV and LaTeX (booktabs; a longtable above
 * TB_LONG_ROWS rows). The LaTeX fits a column by construction of its cells (footnotesize,
 * the interval in scriptsize, 4pt column separation); its width grows with the row names
 * and the number of columns, which the caller chooses.
 */
#ifndef KV_TABLE_H
#define KV_TABLE_H

#include <stdio.h>
#include "analyze.h"

#define TB_LONG_ROWS 40
#define TB_MAX_COLS 64

typedef enum { TB_KEEP = 0, TB_BUDGET, TB_RATIO } tb_kind;

typedef struct tb_opts {
    int metric;                  /* RM_* */
    tb_kind kind;
    const double *cols;          /* chosen columns (keep, entries or target ratios); NULL: all */
    size_t n_cols;
    double tol;                  /* ratio columns: accepted factor from the target (> 1) */
    const char *label;           /* LaTeX \label (unique per table) */
} tb_opts;

typedef struct tb_cell {
    long cfg;                    /* configuration index, -1: empty */
    int best, not_applied;
} tb_cell;

typedef struct tb_pivot {
    const res_set *rs;
    const an_result *an;
    int metric, lower_better;
    tb_kind kind;
    size_t n_rows, n_cols;
    long *row_cfg;               /* [n_rows] a configuration of the row (its row name) */
    double *col;                 /* [n_cols] column values, ascending */
    tb_cell *cell;               /* [n_rows * n_cols] */
    size_t n_outside;            /* configurations with the metric that no column takes */
    const char *label;
} tb_pivot;

/* Builds the table. A chosen column that no configuration has is an error naming the
 * available ones. */
kv_status tb_pivot_build(const res_set *rs, const an_result *an, const tb_opts *o, tb_pivot **out, kv_error *err);
void tb_pivot_free(tb_pivot *p);
/* The columns available for a kind (ascending); returns the count (capacity TB_MAX_COLS). */
size_t tb_available(const res_set *rs, const an_result *an, tb_kind kind, int metric, double *cols);

void tb_write_md(FILE *f, const tb_pivot *p);
void tb_write_csv(FILE *f, const tb_pivot *p);
void tb_write_tex(FILE *f, const tb_pivot *p);

/* Shown values are true values x 10^e: e puts the median of the nonzero |x| in [1, 10)
 * when that median is below 0.1 or at least 1000, else e = 0. */
int tb_scale_exp(const double *x, size_t n);

/* Shared with the summary table: a "mean ± hw" string in LaTeX (text mode, the interval in
 * \scriptsize). */
void tb_tex_num(FILE *f, const char *pm);
void tb_tex_escape(FILE *f, const char *s);

#endif /* KV_TABLE_H */
