/* The results directory's column table (results_schema.h; prose: replay/RESULTS.md). */
#include "results_schema.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define I KV_COL_INT
#define N KV_COL_NUM
#define O KV_COL_NUM_OPT
#define S KV_COL_STR

static const kv_column configs_cols[] = {
    { "config_id", I, 0 }, { "config", S, 0 }, { "family", S, 0 }, { "budget_kind", S, 0 },
    { "budget_value", O, 0 }, { "label", S, 2 },
};

/* The metric block per_seq and summary share (summary adds ppl_* among the read-out). */
static const kv_column per_seq_cols[] = {
    { "config_id", I, 0 }, { "config", S, 0 }, { "family", S, 0 }, { "seq", I, 0 },
    { "n_query", I, 0 }, { "keep_frac", N, 0 }, { "kv_bytes", N, 0 }, { "full_bytes", N, 0 },
    { "ratio", N, 0 }, { "kv_mse_k", O, 0 }, { "kv_mse_v", O, 0 }, { "kv_rel_mse_k", O, 0 },
    { "kv_rel_mse_v", O, 0 }, { "attn_cos", N, 0 }, { "out_cos", N, 0 }, { "out_rel_err", N, 0 },
    { "attn_kl", N, 0 }, { "mass_recall", N, 0 }, { "logit_kl", O, 0 }, { "nll_full", O, 0 },
    { "nll_comp", O, 0 }, { "top1_agree", O, 0 }, { "ece_full", O, 0 }, { "ece_comp", O, 0 },
    { "kv_bytes_paged", N, 1 }, { "frag_bytes", N, 1 },
};

static const kv_column per_head_cols[] = {
    { "config_id", I, 0 }, { "config", S, 0 }, { "layer", I, 0 }, { "head", I, 0 },
    { "n_query", I, 0 }, { "keep_frac", N, 0 }, { "budget", N, 0 }, { "attn_cos", N, 0 },
    { "out_cos", N, 0 }, { "out_rel_err", N, 0 }, { "attn_kl", N, 0 }, { "mass_recall", N, 0 },
    { "kv_mse_k", O, 0 }, { "kv_mse_v", O, 0 },
};

static const kv_column summary_cols[] = {
    { "config_id", I, 0 }, { "config", S, 0 }, { "family", S, 0 }, { "n_seq", I, 0 },
    { "n_query", I, 0 }, { "keep_frac", N, 0 }, { "kv_bytes", N, 0 }, { "full_bytes", N, 0 },
    { "ratio", N, 0 }, { "kv_mse_k", O, 0 }, { "kv_mse_v", O, 0 }, { "kv_rel_mse_k", O, 0 },
    { "kv_rel_mse_v", O, 0 }, { "attn_cos", N, 0 }, { "out_cos", N, 0 }, { "out_rel_err", N, 0 },
    { "attn_kl", N, 0 }, { "mass_recall", N, 0 }, { "logit_kl", O, 0 }, { "nll_full", O, 0 },
    { "nll_comp", O, 0 }, { "ppl_full", O, 0 }, { "ppl_comp", O, 0 }, { "top1_agree", O, 0 },
    { "ece_full", O, 0 }, { "ece_comp", O, 0 }, { "kv_bytes_paged", N, 1 }, { "frag_bytes", N, 1 },
    { "not_applied", I, 0 },
};

static const kv_column calib_cols[] = {
    { "config_id", I, 0 }, { "config", S, 0 }, { "which", S, 0 }, { "bin", I, 0 },
    { "count", N, 0 }, { "conf_sum", N, 0 }, { "acc_sum", N, 0 },
};

static const kv_column per_layer_cols[] = {
    { "config_id", I, 0 }, { "config", S, 0 }, { "seq", I, 0 }, { "layer", I, 0 },
    { "logit_kl_layer", O, 0 }, { "nll_delta_layer", O, 0 },
};

/* provenance.json keys, in the order the writer prints them (strings and integers). */
static const kv_column per_pos_cols[] = {
    { "config_id", I, 0 }, { "config", S, 0 }, { "offset", I, 0 }, { "n_seq", I, 0 },
    { "attn_kl", N, 0 }, { "out_cos", N, 0 }, { "logit_kl", O, 0 },
};

static const kv_column provenance_keys[] = {
    { "results_version", I, 0 }, { "tool", S, 0 }, { "tool_version", S, 0 }, { "trace", S, 0 },
    { "trace_sha256", S, 0 }, { "trace_model", S, 0 }, { "trace_architecture", S, 0 },
    { "mode", S, 0 }, { "decode", I, 0 }, { "sweep", S, 0 }, { "n_configs", I, 0 },
    { "n_seq", I, 0 }, { "threads", I, 0 }, { "page_size", I, 1 }, { "n_layers", I, 1 },
    { "n_heads", I, 1 }, { "n_kv_heads", I, 1 }, { "head_dim", I, 1 }, { "prompt_scores", S, 1 }, { "evaluation", S, 1 }, { "hdf5_version", S, 0 }, { "gsl_version", S, 0 },
    { "openblas_config", S, 0 }, { "blas", S, 1 }, { "readout_product", S, 1 }, { "param_defaults", S, 1 }, { "argv", S, 0 }, { "started", S, 0 },
    { "finished", S, 0 }, { "shard", S, 0 },
};

#undef I
#undef N
#undef O
#undef S

#define FILE_ENTRY(name, req, cols) { name, req, cols, sizeof cols / sizeof cols[0] }
static const kv_results_file files[KV_RF_COUNT] = {
    FILE_ENTRY("configs.csv", 1, configs_cols),
    FILE_ENTRY("per_seq.csv", 1, per_seq_cols),
    FILE_ENTRY("per_head.csv", 0, per_head_cols),
    FILE_ENTRY("summary.csv", 1, summary_cols),
    FILE_ENTRY("calib.csv", 0, calib_cols),
    FILE_ENTRY("per_layer.csv", 0, per_layer_cols),
    FILE_ENTRY("per_pos.csv", 0, per_pos_cols),
    FILE_ENTRY("provenance.json", 1, provenance_keys),
};

const kv_results_file *kv_results_file_get(kv_rfile f)
{
    return (unsigned)f < KV_RF_COUNT ? &files[f] : NULL;
}

long kv_results_column(kv_rfile f, const char *name)
{
    const kv_results_file *rf = kv_results_file_get(f);
    for (size_t i = 0; rf && i < rf->n_cols; i++)
        if (!strcmp(rf->cols[i].name, name)) return (long)i;
    return -1;
}

int kv_results_put_header_opt(FILE *fp, kv_rfile f, int with_optional)
{
    const kv_results_file *rf = kv_results_file_get(f);
    if (!rf) return -1;
    for (size_t i = 0; i < rf->n_cols; i++) {
        if (rf->cols[i].late == 2 && !with_optional) continue;
        if (fprintf(fp, "%s%s", i ? "," : "", rf->cols[i].name) < 0) return -1;
    }
    return fputc('\n', fp) == EOF ? -1 : 0;
}

int kv_results_put_header(FILE *fp, kv_rfile f) { return kv_results_put_header_opt(fp, f, 0); }

int kv_results_cell_ok(kv_col_type t, const char *s)
{
    switch (t) {
    case KV_COL_INT: {
        const char *p = s + (*s == '-');
        return *p && strspn(p, "0123456789") == strlen(p);
    }
    case KV_COL_NUM_OPT:
        if (!*s) return 1;
        /* fall through */
    case KV_COL_NUM: {
        char *end;
        errno = 0;
        double x = strtod(s, &end);
        return *s && !*end && errno != ERANGE && isfinite(x);
    }
    case KV_COL_STR:
        return !strpbrk(s, ",\n\r");
    }
    return 0;
}

const char *kv_col_type_name(kv_col_type t)
{
    switch (t) {
    case KV_COL_INT: return "an integer";
    case KV_COL_NUM: return "a finite number";
    case KV_COL_NUM_OPT: return "a finite number or empty";
    case KV_COL_STR: return "text without commas";
    }
    return "?";
}
