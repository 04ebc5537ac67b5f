/* The results directory's schema (replay/RESULTS.md): one table of every file's columns,
 * their types and order, and the results version. Its one owner: the writer
 * (replay/output.c prints its header rows from it) and the reader (analysis/results.c
 * requires and type-checks the columns it declares) both use it, and
 * tests/unit/test_results_schema.c reads a directory kvreplay wrote back column by column
 * with the declared types.
 *
 * A column marked `late` was added to version 1 after its first release: the writer always
 * writes it, a reader accepts a file without it. A new column goes here (and in
 * replay/RESULTS.md); the writer then has to print a value for it in the same position.
 */
#ifndef KV_RESULTS_SCHEMA_H
#define KV_RESULTS_SCHEMA_H

#include <stddef.h>
#include <stdio.h>

#define KV_RESULTS_VERSION 1

typedef enum kv_col_type {
    KV_COL_INT,        /* an integer: optional '-', decimal digits */
    KV_COL_NUM,        /* a finite number (strtod, the writer prints %.9g) */
    KV_COL_NUM_OPT,    /* a finite number or the empty field (metric that does not apply) */
    KV_COL_STR,        /* text without ',' or line breaks (config strings use spaces) */
} kv_col_type;

typedef struct kv_column {
    const char *name;
    kv_col_type type;
    int late;          /* 1: may be absent in a version-1 file written before it existed;
                          2: optional, written only when used (configs.csv's label: results
                          of sweeps without labels stay byte-identical to earlier ones) */
} kv_column;

typedef enum kv_rfile {
    KV_RF_CONFIGS = 0, KV_RF_PER_SEQ, KV_RF_PER_HEAD, KV_RF_SUMMARY, KV_RF_CALIB,
    KV_RF_PER_LAYER, KV_RF_PER_POS, KV_RF_PROVENANCE, KV_RF_COUNT
} kv_rfile;

typedef struct kv_results_file {
    const char *name;            /* file name inside the results directory */
    int required;                /* 0: written only in some runs (per_head, calib, per_layer, per_pos) */
    const kv_column *cols;       /* CSV: in header order; provenance.json: in key order */
    size_t n_cols;
} kv_results_file;

const kv_results_file *kv_results_file_get(kv_rfile f);
/* Index of column name in file f, -1 when the schema has no such column. */
long kv_results_column(kv_rfile f, const char *name);
/* The header row of CSV file f (names joined by ',', then '\n'), without the optional
 * columns (late == 2) unless with_optional; returns fprintf's status. */
int kv_results_put_header(FILE *fp, kv_rfile f);
int kv_results_put_header_opt(FILE *fp, kv_rfile f, int with_optional);
/* 1 when the field text s is a valid value of type t, else 0. */
int kv_results_cell_ok(kv_col_type t, const char *s);
/* "an integer", "a finite number", ... for messages. */
const char *kv_col_type_name(kv_col_type t);

#endif /* KV_RESULTS_SCHEMA_H */
