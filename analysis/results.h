/* Reading kvtrace results directories (replay/RESULTS.md, version 1) for kvreport.
 *
 * One or more directories merge into one res_set: configurations are identified by their
 * canonical config string; shards and separate runs add sequences. The same (config,
 * sequence) row twice is accepted only when identical. per_head.csv and calib.csv of a
 * configuration found in several directories are combined when those directories hold
 * disjoint sequence sets (per_head: weighted by n_query; calib: counts summed), accepted
 * when the sequence sets are equal and the rows identical, and refused otherwise.
 *
 * Missing values (empty CSV fields) are stored as NaN here and must never be printed as
 * numbers: every consumer checks isnan(). NaN/Inf text in a file is an error.
 *
 * Ownership: res_load() allocates the whole set; res_free() releases it (NULL-safe).
 * Library code: returns kv_status with one line in *err; never prints.
 */
#ifndef KV_RESULTS_H
#define KV_RESULTS_H

#include <stddef.h>
#include "kvtrace.h"
#include "results_schema.h"

#define RES_VERSION KV_RESULTS_VERSION

/* per_seq metrics (RESULTS.md column order) followed by the derived nll_delta. */
enum res_metric {
    RM_KEEP_FRAC = 0, RM_KV_BYTES, RM_FULL_BYTES, RM_RATIO, RM_KV_MSE_K, RM_KV_MSE_V,
    RM_KV_REL_MSE_K, RM_KV_REL_MSE_V, RM_ATTN_COS, RM_OUT_COS, RM_OUT_REL_ERR, RM_ATTN_KL,
    RM_MASS_RECALL, RM_LOGIT_KL, RM_NLL_FULL, RM_NLL_COMP, RM_TOP1_AGREE, RM_ECE_FULL,
    RM_ECE_COMP,
    RM_NLL_DELTA,              /* nll_comp - nll_full, per sequence (derived) */
    RM_COUNT
};
extern const char *const res_metric_names[RM_COUNT];
/* Index of a metric name, -1 when unknown. */
int res_metric_index(const char *name);

/* per_head metrics (RESULTS.md column order after n_query). */
enum res_head_metric {
    RH_KEEP_FRAC = 0, RH_BUDGET, RH_ATTN_COS, RH_OUT_COS, RH_OUT_REL_ERR, RH_ATTN_KL,
    RH_MASS_RECALL, RH_KV_MSE_K, RH_KV_MSE_V, RH_COUNT
};
extern const char *const res_head_metric_names[RH_COUNT];
int res_head_metric_index(const char *name);

#define RES_CALIB_BINS 15

/* Every file of a results directory is read whole: regular files only (a FIFO, device or
 * directory is refused without blocking), at most RES_MAX_FILE bytes each. */
#define RES_MAX_FILE (1ull << 30)
/* Value domains (replay/RESULTS.md "Value domains"): a value outside its column's domain is
 * refused with file:line and the column. Bounded quantities (cosines, fractions) get
 * RES_SLACK beyond their bounds and KL / NLL / relative errors RES_SLACK below 0: they are
 * means of double-precision terms printed with %.9g, whose rounding stays orders of
 * magnitude below it. */
#define RES_SLACK 1e-6
#define RES_MAX_SEQ 2147483647ll          /* sequence index (int32 in traces) */
#define RES_MAX_LAYER_HEAD 65535ll        /* layer / head index when provenance lacks the shape */
#define RES_MAX_CONFIG_ID 1048575ll

typedef struct res_seq {
    long long seq;
    double n_query;
    double v[RM_COUNT];            /* NaN = empty field */
} res_seq;

typedef struct res_head {
    long long layer, head;
    double n_query;
    double v[RH_COUNT];
} res_head;

typedef struct res_calib_bin { double count, conf_sum, acc_sum; } res_calib_bin;

/* per_pos.csv: a configuration's quality at decode offset `offset` (means over n_seq
 * sequences; logit_kl NaN without read-out). */
typedef struct res_pos { long long offset, n_seq; double attn_kl, out_cos, logit_kl; } res_pos;

typedef struct res_config {
    char *config, *family, *budget_kind;
    char *label;                   /* configs.csv label column (the sweep's label=), NULL when none */
    /* Display names (res_name_configs): name is unique and names the configuration in every
     * table and legend; row names its pivot row (name without the budget) and rowkey groups
     * the configurations that differ in their budget alone (config without " keep=F" /
     * " budget=N"). */
    char *name, *row, *rowkey;
    double budget_value;           /* NaN when empty */
    long long first_id;            /* config_id in the first directory that had it */
    int not_applied;               /* summary.csv flag (AND over contributing directories) */
    res_seq *seqs;  size_t n_seqs;   /* sorted by seq */
    res_head *heads; size_t n_heads; /* sorted by (layer, head) */
    int has_calib;
    res_calib_bin calib[2][RES_CALIB_BINS];  /* [0] full, [1] comp */
    res_pos *pos; size_t n_pos;    /* per_pos.csv, by increasing offset; none when absent or when
                                      several directories hold the configuration (no pooling) */
    long pos_dir;                  /* directory the rows came from, -1 none; -2 dropped (several) */
} res_config;

typedef struct res_kv { char *key, *value; } res_kv;

typedef struct res_dir {
    char *path;
    res_kv *prov; size_t n_prov;   /* provenance.json in file order */
} res_dir;

typedef struct res_set {
    res_dir *dirs;  size_t n_dirs;
    res_config *configs; size_t n_configs;  /* in order of first appearance */
    int mixed_traces;              /* 1 when trace_sha256 differs between directories */
} res_set;

/* Loads and merges dirs[0..n-1]. allow_mixed: accept different trace_sha256 values. */
kv_status res_load(const char *const *dirs, size_t n, int allow_mixed, res_set **out, kv_error *err);
/* A whole regular file of at most RES_MAX_FILE bytes without NUL bytes, NUL-terminated in
 * *out (free it); a FIFO or device is refused without blocking. missing != NULL: an absent
 * file gives KV_OK with *missing = 1 and *out = NULL. */
kv_status res_read_file(const char *path, char **out, size_t *len, int *missing, kv_error *err);
void res_free(res_set *s);

/* Display names of every configuration (called by res_load): the label when the sweep gave
 * one (with the budget appended when configurations of several budgets share it), else the
 * family followed by its budget and the parameters that vary between the family's
 * configurations, where they differ from the strategy's default ("snapkv keep=0.25
 * window=16 pool=max"); unique. */
kv_status res_name_configs(res_set *s, kv_error *err);
/* Configuration index by display name or label, -1 when absent. */
long res_find_name(const res_set *s, const char *name);

/* A configuration named on the command line: its canonical string, display name or label,
 * or any other spelling the sweep parser reads as one of the configurations ("streaming
 * keep=0.25" for "streaming keep=0.25 sinks=4 reindex=0"). -1 when none, with a hint for
 * the message in hint ("did you mean '...'?", or why it does not parse; may be empty). */
long res_resolve_config(const res_set *s, const char *spec, char *hint, size_t cap);

/* Provenance value of a directory, NULL when absent. */
const char *res_prov(const res_dir *d, const char *key);
/* Configuration index by exact config string, -1 when absent. */
long res_find_config(const res_set *s, const char *config);
/* Values of metric m of configuration c in sequence order, skipping empty fields;
 * returns the count (x and seq may be NULL to count only). */
size_t res_values(const res_config *c, int m, double *x, long long *seq);

#endif /* KV_RESULTS_H */
