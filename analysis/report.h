/* kvreport outputs: tables (Markdown, CSV, LaTeX booktabs), gnuplot figures and report.md.
 *
 * Layout written under rp_ctx.dir (the caller builds it in a temporary directory and
 * renames it into place):
 *   report.md                       the report (provenance, sweep, guards, tables, figures)
 *   tables/summary.{md,csv,tex}     headline table by display name: metric mean ± 95% t-interval,
 *                                   ratio, keep (LaTeX: three metrics, a longtable when long)
 *   tables/pivot.{md,csv,tex}       the primary metric by strategy and budget (table.h)
 *   tables/stats.csv                every configuration x metric: n, mean, sd, min, max,
 *                                   t-interval, bootstrap interval
 *   tables/comparisons.csv          paired tests against the baseline, Holm-adjusted
 *   tables/needles.csv              needle results per (config, context length, depth bin),
 *                                   when the results have needles.csv (analysis/needle_fig.c)
 *   figures/<name>.{gp,dat,png,pdf} one gnuplot script per figure, run inside figures/
 *
 * Figure scripts are the templates of plots/ (style.gp + <kind>.gp + finish.gp) with
 * @NAME@ placeholders substituted; the result is deterministic (no dates, no absolute
 * paths), so tests compare scripts byte for byte.
 *
 * Library code: returns kv_status; warnings go to rp_ctx.notes (main prints them).
 */
#ifndef KV_REPORT_H
#define KV_REPORT_H

#include <stddef.h>
#include "analyze.h"

typedef struct rp_notes { char **line; size_t n; } rp_notes;
void rp_note(rp_notes *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void rp_notes_free(rp_notes *n);

/* Attention entropy per layer (figure f): quantiles over (head, position, sequence). */
typedef struct rp_entropy {
    size_t n_layers;
    double *q;                     /* [L][5]: 5%, 25%, 50%, 75%, 95% (nats) */
    double *mean;                  /* [L] */
    double *max_entropy;           /* [L] mean log(visible keys), the uniform bound */
    size_t n_heads;                /* H query heads */
    double *head;                  /* [L][H] each head's mean entropy (nats) */
} rp_entropy;

typedef struct rp_figure {
    char stem[64];
    char caption[4096];
    int written;                   /* .gp/.dat written */
    int rendered;                  /* PNG and PDF produced */
    char why[512];                 /* skip or failure reason when not rendered */
} rp_figure;

typedef struct rp_ctx {
    const res_set *rs;
    const an_result *an;
    const char *dir;               /* output root (temporary name) */
    const char *shown_dir;         /* final name, for messages and report.md */
    int metric;                    /* primary metric (RM_*) */
    int head_metric;               /* heatmap/profile metric (RH_*) */
    long focus;                    /* configuration of the heatmap and reliability diagram */
    double target_ratio;           /* matched-compression target; <= 0: automatic */
    const char *plots_dir;         /* templates; NULL: figures skipped */
    int no_figures;
    const char *gnuplot;           /* gnuplot executable, NULL: not found (scripts still written) */
    /* from --trace (optional) */
    const char *trace_path;
    int force_trace;               /* --force-trace: a --trace or --gains of another trace accepted */
    double bytes_per_token;        /* fp16 K+V bytes per token of the full cache; 0 = unknown */
    const rp_entropy *entropy;     /* NULL: figure f skipped */
    const char *entropy_why;       /* reason when entropy is NULL */
    uint64_t seed;
    size_t n_boot;
    const char *version;           /* kvreport version string */
    rp_notes notes;                /* filled by the writers */
    rp_figure fig[16];
    size_t n_fig;
    double target_used;            /* target ratio of the matched-compression selection */
    int fig_two_col;               /* --figure-width two: 6.9 in wide figures (default one column, 3.3 in) */
    int pareto_all;                /* --pareto-all: every line of every family in the Pareto figures */
    const long *rel_configs;       /* --reliability-config (repeatable); NULL: chosen automatically */
    size_t n_rel;
} rp_ctx;

/* Matched compression: a configuration's ratio within this factor of the target. */
#define RP_MATCH_FACTOR 1.15

/* The name a figure, table or legend shows for a configuration (today the canonical config
 * string; one place to plug in user labels). */
const char *config_display_name(const res_config *cf);

kv_status rp_write_tables(rp_ctx *c, kv_error *err);
kv_status rp_write_figures(rp_ctx *c, kv_error *err);
kv_status rp_write_report(rp_ctx *c, kv_error *err);

/* For figure writers outside figures.c: the template plots/<kind>.gp with keys[i] -> vals[i]
 * (plus STEM and the size placeholders of the --figure-width preset; height in inches), dat
 * written as <stem>.dat, rendered; or a skipped figure. */
kv_status rp_emit_figure(rp_ctx *c, const char *stem, const char *kind, const char *caption, const char *const *keys,
                         const char *const *vals, size_t nv, const char *dat, size_t datlen, double height, kv_error *err);
void rp_skip_figure(rp_ctx *c, const char *stem, const char *caption, const char *why);

/* Needle results (analysis/needle_fig.c): tables/needles.csv and, with figures = 1, the
 * figures needle_heatmap and needle_retention, from each results directory's needles.csv,
 * when any has one. */
kv_status rp_needle_figures(rp_ctx *c, int figures, kv_error *err);

/* One cell of a needle heat map: configuration (index into c->rs->configs), context length,
 * depth bin (tenths) and the value drawn, in [0, 1]. */
typedef struct rp_heat_cell { long cfg; long long ctx; int dbin; double v; } rp_heat_cell;
/* figures/<stem>: the cells as a grid of panels (context x depth), one per configuration in
 * the order of first appearance (at most 16); what: the caption's description of the value. */
kv_status rp_needle_heat(rp_ctx *c, const char *stem, const char *what, const char *cblabel, const rp_heat_cell *cell,
                         size_t n, kv_error *err);

/* One row of a needles.csv as rp_needles_load gives it: cfg indexes c->rs->configs; top1_*
 * NaN where the file has none (no read-out). */
typedef struct rp_needle_row { long cfg; long long needle, ctx; double depth, top1_full, top1_comp; } rp_needle_row;
/* Every results directory's needles.csv, validated as for the figures (domains, configurations
 * known, no (configuration, needle) twice); *n = 0 when none has one. The caller frees *rows. */
kv_status rp_needles_load(const rp_ctx *c, rp_needle_row **rows, size_t *n, kv_error *err);

/* Matched-compression selection: per family (full excluded) the configuration whose
 * ratio is nearest the target in log distance, within RP_MATCH_FACTOR; sorted by the primary
 * metric, best first. Returns the count written to idx (capacity rs->n_configs). */
size_t rp_matched(rp_ctx *c, size_t *idx, double *target);

/* Renders figures/<g->stem>.gp (written by the caller under c->dir) with c->gnuplot; sets
 * g->rendered, or g->why and a note. */
/* For writers outside figures.c (compare.c): figures/<g->stem>.{dat,gp} from plots/style.gp
 * + plots/<kind>.gp + plots/finish.gp with the given placeholders (the size placeholders
 * of the --figure-width preset added), rendered like every report figure. */
kv_status rp_emit_figure_into(rp_ctx *c, rp_figure *g, const char *kind, const char *const *names,
                         const char *const *values, size_t nv, const char *dat, size_t dat_len,
                         double height, kv_error *err);

/* The writers' files: DIR/rel opened with mode ("w" or "a"; NULL with err naming the path
 * when it cannot be), and closed with any write error reported against the report's final
 * name (c->shown_dir/rel): KV_OK or KV_ERR_IO. */
FILE *rp_open_out(const rp_ctx *c, const char *rel, const char *mode, kv_error *err);
kv_status rp_close_out(const rp_ctx *c, FILE *f, const char *rel, kv_error *err);

/* Text helpers shared by the writers. */
/* ",%.9g" of v, or a bare "," (an empty CSV field) when v is missing (!present or not finite). */
void rp_csv_num(FILE *f, double v, int present);
void rp_fmt_pm(char *buf, size_t cap, double mean, double hw, int has_ci);
const char *rp_marks(double p_holm);

#endif /* KV_REPORT_H */
