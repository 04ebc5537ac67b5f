/* kvreport tables and report.md (see report.h). Files are written inside the report's
 * temporary directory; the caller renames the whole directory into place. */
#include "report.h"
#include "table.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void rp_note(rp_notes *n, const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char **nl = realloc(n->line, (n->n + 1) * sizeof *nl);
    if (!nl) return;
    n->line = nl;
    n->line[n->n] = strdup(buf);
    if (n->line[n->n]) n->n++;
}

void rp_notes_free(rp_notes *n)
{
    for (size_t i = 0; i < n->n; i++) free(n->line[i]);
    free(n->line);
    n->line = NULL;
    n->n = 0;
}

/* Mean ± half-width with two significant digits of the half-width. */
void rp_fmt_pm(char *buf, size_t cap, double mean, double hw, int has_ci)
{
    if (!has_ci) { snprintf(buf, cap, "%.4g", mean); return; }
    if (hw <= 0) { snprintf(buf, cap, "%.6g ± 0", mean); return; }
    double big = fmax(fabs(mean), hw);
    if (big < 1e-3 || big >= 1e6) { snprintf(buf, cap, "%.2e ± %.1e", mean, hw); return; }
    int dec = 1 - (int)floor(log10(hw));
    if (dec < 0) dec = 0;
    if (dec > 8) dec = 8;
    snprintf(buf, cap, "%.*f ± %.*f", dec, mean, dec, hw);
}

const char *rp_marks(double p)
{
    if (!(p >= 0)) return "";
    return p < 0.001 ? "***" : p < 0.01 ? "**" : p < 0.05 ? "*" : "";
}

FILE *rp_open_out(const rp_ctx *c, const char *rel, const char *mode, kv_error *err)
{
    char path[4608];
    snprintf(path, sizeof path, "%s/%s", c->dir, rel);
    FILE *f = fopen(path, mode);
    if (!f) kv_error_set(err, KV_ERR_IO, "%s: cannot %s: %s", path, mode[0] == 'a' ? "append to" : "create", strerror(errno));
    return f;
}

kv_status rp_close_out(const rp_ctx *c, FILE *f, const char *rel, kv_error *err)
{
    int bad = ferror(f), e = errno;
    if (fclose(f) && !bad) { bad = 1; e = errno; }
    if (bad) return kv_error_set(err, KV_ERR_IO, "%s/%s: write failed: %s", c->shown_dir, rel, strerror(e));
    return KV_OK;
}

void rp_csv_num(FILE *f, double v, int present)
{
    if (present && isfinite(v)) fprintf(f, ",%.9g", v); else fputc(',', f);
}

/* Headline metrics: those with data in at least one configuration. */
static const int HEADLINE[] = { RM_LOGIT_KL, RM_NLL_DELTA, RM_TOP1_AGREE, RM_OUT_COS, RM_ATTN_KL, RM_MASS_RECALL };
#define N_HEADLINE (sizeof HEADLINE / sizeof HEADLINE[0])

static size_t headline(const rp_ctx *c, int *out)
{
    size_t n = 0;
    for (size_t k = 0; k < N_HEADLINE; k++) {
        int any = 0;
        for (size_t i = 0; i < c->an->nc && !any; i++) any = an_get(c->an, i, HEADLINE[k])->valid;
        if (any) out[n++] = HEADLINE[k];
    }
    return n;
}

static void md_escape(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (strchr("|*_\\`", *s)) fputc('\\', f);
        fputc(*s, f);
    }
}

static const char *metric_title(int m)
{
    switch (m) {
    case RM_LOGIT_KL: return "logit KL (nats)";
    case RM_NLL_DELTA: return "ΔNLL (nats)";
    case RM_TOP1_AGREE: return "top-1 agree";
    case RM_OUT_COS: return "out cos";
    case RM_ATTN_KL: return "attn KL (nats)";
    case RM_MASS_RECALL: return "mass recall";
    default: return res_metric_names[m];
    }
}

static const char *metric_latex(int m)
{
    switch (m) {
    case RM_LOGIT_KL: return "logit KL";
    case RM_NLL_DELTA: return "$\\Delta$NLL";
    case RM_TOP1_AGREE: return "top-1";
    case RM_OUT_COS: return "out cos";
    case RM_ATTN_KL: return "attn KL";
    case RM_MASS_RECALL: return "recall";
    default: return res_metric_names[m];
    }
}

static void cell(const rp_ctx *c, size_t i, int m, char *buf, size_t cap, const char **marks)
{
    const an_stat *s = an_get(c->an, i, m);
    *marks = "";
    if (!s->valid) { snprintf(buf, cap, "–"); return; }
    rp_fmt_pm(buf, cap, s->d.mean, (s->d.t_hi - s->d.t_lo) / 2, s->d.has_ci);
    const an_cmp *k = an_cmp_get(c->an, i, m);
    if (k->valid) *marks = rp_marks(k->p_t_holm);
}

kv_status rp_write_tables(rp_ctx *c, kv_error *err)
{
    char path[4608];
    snprintf(path, sizeof path, "%s/tables", c->dir);
    if (mkdir(path, 0777) && errno != EEXIST) return kv_error_set(err, KV_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    const res_set *rs = c->rs;
    const an_result *an = c->an;
    int hm[N_HEADLINE];
    size_t nh = headline(c, hm);
    char buf[128];
    const char *mk;
    kv_status st;
    const char *base = an->baseline >= 0 ? rs->configs[an->baseline].config : NULL;

    /* ---- summary.md ---- */
    FILE *f = rp_open_out(c, "tables/summary.md", "w", err);
    if (!f) return err->code;
    fputs("| configuration | family | n | ratio | keep |", f);
    for (size_t k = 0; k < nh; k++) fprintf(f, " %s |", metric_title(hm[k]));
    fputs("\n|---|---|--:|--:|--:|", f);
    for (size_t k = 0; k < nh; k++) fputs("--:|", f);
    fputc('\n', f);
    for (size_t i = 0; i < an->nc; i++) {
        const res_config *cf = &rs->configs[i];
        fputs("| ", f); md_escape(f, cf->name);
        if ((long)i == an->baseline) fputs(" (baseline)", f);
        if (cf->not_applied) fputs(" ⚠ not applied", f);
        fputs(" | ", f); md_escape(f, cf->family);
        fprintf(f, " | %zu |", cf->n_seqs);
        for (int m = RM_RATIO; ; m = RM_KEEP_FRAC) {
            const an_stat *s = an_get(an, i, m);
            if (s->valid) fprintf(f, " %.3g |", s->d.mean); else fputs(" – |", f);
            if (m == RM_KEEP_FRAC) break;
        }
        for (size_t k = 0; k < nh; k++) {
            cell(c, i, hm[k], buf, sizeof buf, &mk);
            fprintf(f, " %s", buf);
            if (*mk) { fputc(' ', f); for (const char *p = mk; *p; p++) fputs("\\*", f); }
            fputs(" |", f);
        }
        fputc('\n', f);
    }
    fprintf(f, "\nMean over sequences ± half-width of the 95%% t-interval. ratio = fp16 full-cache bytes / compressed bytes; keep = fraction of cache entries held.");
    if (base) {
        fputs(" Marks: paired t-test against the baseline `", f); md_escape(f, base);
        fputs("`, Holm-adjusted across configurations: \\* p < 0.05, \\*\\* p < 0.01, \\*\\*\\* p < 0.001.", f);
    }
    fputc('\n', f);
    if ((st = rp_close_out(c, f, "tables/summary.md", err))) return st;

    /* ---- summary.csv ---- */
    if (!(f = rp_open_out(c, "tables/summary.csv", "w", err))) return err->code;
    fputs("config_id,config,name,family,n_seq,not_applied,ratio,keep_frac", f);
    for (size_t k = 0; k < nh; k++) {
        const char *n = res_metric_names[hm[k]];
        fprintf(f, ",%s_mean,%s_lo,%s_hi,%s_p_holm", n, n, n, n);
    }
    fputc('\n', f);
    for (size_t i = 0; i < an->nc; i++) {
        const res_config *cf = &rs->configs[i];
        fprintf(f, "%zu,%s,%s,%s,%zu,%d", i, cf->config, cf->name, cf->family, cf->n_seqs, cf->not_applied);
        const an_stat *s = an_get(an, i, RM_RATIO);
        rp_csv_num(f, s->d.mean, s->valid);
        s = an_get(an, i, RM_KEEP_FRAC);
        rp_csv_num(f, s->d.mean, s->valid);
        for (size_t k = 0; k < nh; k++) {
            s = an_get(an, i, hm[k]);
            const an_cmp *q = an_cmp_get(an, i, hm[k]);
            rp_csv_num(f, s->d.mean, s->valid);
            rp_csv_num(f, s->d.t_lo, s->valid && s->d.has_ci);
            rp_csv_num(f, s->d.t_hi, s->valid && s->d.has_ci);
            rp_csv_num(f, q->p_t_holm, q->valid);
        }
        fputc('\n', f);
    }
    if ((st = rp_close_out(c, f, "tables/summary.csv", err))) return st;

    /* ---- summary.tex (booktabs): named rows, a longtable when long ---- */
    if (!(f = rp_open_out(c, "tables/summary.tex", "w", err))) return err->code;
    int lng = an->nc > TB_LONG_ROWS, dagger = 0;
    for (size_t i = 0; i < an->nc; i++) dagger |= rs->configs[i].not_applied;
    fprintf(f, "%% kvreport summary table: needs \\usepackage{booktabs,array}%s; fits \\textwidth (table*: spans both "
               "columns of a two-column layout) with the first three headline metrics (all are in summary.md and summary.csv; "
               "kvreport table --pivot for one metric by strategy and budget)\n",
            lng ? " and \\usepackage{longtable} (one-column layouts)" : "");
    size_t nt = nh < 3 ? nh : 3;
    if (lng) fputs("{\\footnotesize\\setlength{\\tabcolsep}{3pt}\n", f);
    else fputs("\\begin{table*}[t]\n\\centering\n\\footnotesize\n\\setlength{\\tabcolsep}{3pt}\n", f);
    /* names wrap in a column of 20% of the text width; numbers stay on one line */
    fprintf(f, "\\begin{%s}{@{}>{\\raggedright\\arraybackslash}p{0.2\\textwidth}r", lng ? "longtable" : "tabular");
    for (size_t k = 0; k < nt; k++) fputc('r', f);
    fputs("@{}}\n", f);
    char head[1024];
    int scale[N_HEADLINE];          /* per metric column: shown = true x 10^scale (table.h) */
    double *col = malloc((an->nc + 1) * sizeof *col);
    if (!col) { fclose(f); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    for (size_t k = 0; k < nt; k++) {
        size_t n = 0;
        for (size_t i = 0; i < an->nc; i++) {
            const an_stat *s = an_get(an, i, hm[k]);
            if (s->valid) col[n++] = s->d.mean;
        }
        scale[k] = tb_scale_exp(col, n);
    }
    free(col);
    {
        size_t L = (size_t)snprintf(head, sizeof head, "\\toprule\nConfiguration & Ratio");
        for (size_t k = 0; k < nt && L < sizeof head; k++) {
            L += (size_t)snprintf(head + L, sizeof head - L, " & %s %s", metric_latex(hm[k]),
                                  an_lower_better(hm[k]) ? "$\\downarrow$" : "$\\uparrow$");
            if (scale[k] && L < sizeof head) L += (size_t)snprintf(head + L, sizeof head - L, " ($\\times10^{%d}$)", -scale[k]);
        }
        if (L < sizeof head) snprintf(head + L, sizeof head - L, " \\\\\n\\midrule\n");
    }
    char cap[2048];
    {
        size_t L = (size_t)snprintf(cap, sizeof cap, "\\caption{Mean over sequences $\\pm$ half-width of the 95\\%% $t$-interval. "
                                    "Ratio: fp16 full-cache bytes / compressed bytes.");
        if (base && L < sizeof cap)
            L += (size_t)snprintf(cap + L, sizeof cap - L, " Marks: paired $t$-test against the baseline, Holm-adjusted: "
                                  "$^{*}p<0.05$, $^{**}p<0.01$, $^{***}p<0.001$.");
        if (dagger && L < sizeof cap)
            L += (size_t)snprintf(cap + L, sizeof cap - L, " $^\\dagger$compression not applied (results equal the full cache bit for bit).");
        if (L < sizeof cap) snprintf(cap + L, sizeof cap - L, "}");
    }
    if (lng) {
        fprintf(f, "%s\\label{tab:kvtrace-summary}\\\\\n%s\\endfirsthead\n\\multicolumn{%zu}{@{}l}{\\emph{(continued)}} \\\\\n%s"
                   "\\endhead\n\\bottomrule\n\\endfoot\n", cap, head, nt + 2, head);
    } else {
        fputs(head, f);
    }
    for (size_t i = 0; i < an->nc; i++) {
        const res_config *cf = &rs->configs[i];
        tb_tex_escape(f, cf->name);
        if ((long)i == an->baseline) fputs(" (baseline)", f);
        if (cf->not_applied) fputs("$^\\dagger$", f);
        const an_stat *rs_ = an_get(an, i, RM_RATIO);
        if (rs_->valid) fprintf(f, " & %.3g", rs_->d.mean); else fputs(" & --", f);
        for (size_t k = 0; k < nt; k++) {
            cell(c, i, hm[k], buf, sizeof buf, &mk);
            fputs(" & ", f);
            if (!strcmp(buf, "–")) { fputs("--", f); continue; }
            const an_stat *s = an_get(an, i, hm[k]);
            double x = pow(10, scale[k]);
            rp_fmt_pm(buf, sizeof buf, s->d.mean * x, (s->d.t_hi - s->d.t_lo) / 2 * x, s->d.has_ci);
            tb_tex_num(f, buf);
            if (*mk) fprintf(f, "$^{%s}$", mk);
        }
        fputs(" \\\\\n", f);
    }
    if (lng) fputs("\\end{longtable}}\n", f);
    else fprintf(f, "\\bottomrule\n\\end{tabular}\n%s\n\\label{tab:kvtrace-summary}\n\\end{table*}\n", cap);
    if ((st = rp_close_out(c, f, "tables/summary.tex", err))) return st;

    /* ---- pivot.{md,csv,tex}: strategy x budget for the primary metric ---- */
    {
        double cols[TB_MAX_COLS];
        tb_opts o = { .metric = c->metric, .kind = TB_KEEP, .label = "tab:kvtrace-pivot" };
        if (!tb_available(rs, an, TB_KEEP, c->metric, cols))
            o.kind = tb_available(rs, an, TB_BUDGET, c->metric, cols) ? TB_BUDGET : TB_RATIO;
        tb_pivot *pv = NULL;
        if ((st = tb_pivot_build(rs, an, &o, &pv, err))) return st;
        static const char *const rel[3] = { "tables/pivot.md", "tables/pivot.csv", "tables/pivot.tex" };
        for (int w = 0; w < 3; w++) {
            if (!(f = rp_open_out(c, rel[w], "w", err))) { tb_pivot_free(pv); return err->code; }
            if (w == 0) tb_write_md(f, pv); else if (w == 1) tb_write_csv(f, pv); else tb_write_tex(f, pv);
            if ((st = rp_close_out(c, f, rel[w], err))) { tb_pivot_free(pv); return st; }
        }
        tb_pivot_free(pv);
    }

    /* ---- stats.csv (long form) ---- */
    if (!(f = rp_open_out(c, "tables/stats.csv", "w", err))) return err->code;
    fputs("config_id,config,family,metric,n,mean,sd,min,max,t_lo,t_hi,boot_lo,boot_hi\n", f);
    for (size_t i = 0; i < an->nc; i++)
        for (int m = 0; m < RM_COUNT; m++) {
            const an_stat *s = an_get(an, i, m);
            if (!s->valid) continue;
            fprintf(f, "%zu,%s,%s,%s,%zu", i, rs->configs[i].config, rs->configs[i].family, res_metric_names[m], s->d.n);
            rp_csv_num(f, s->d.mean, 1); rp_csv_num(f, s->d.sd, s->d.n > 1);
            rp_csv_num(f, s->d.min, 1); rp_csv_num(f, s->d.max, 1);
            rp_csv_num(f, s->d.t_lo, s->d.has_ci); rp_csv_num(f, s->d.t_hi, s->d.has_ci);
            rp_csv_num(f, s->b_lo, s->has_boot); rp_csv_num(f, s->b_hi, s->has_boot);
            fputc('\n', f);
        }
    if ((st = rp_close_out(c, f, "tables/stats.csv", err))) return st;

    /* ---- comparisons.csv ---- */
    if (!(f = rp_open_out(c, "tables/comparisons.csv", "w", err))) return err->code;
    fputs("config_id,config,baseline,metric,n_pairs,mean_diff,sd_diff,t,p_t,p_t_holm,w_plus,w_minus,n_nonzero,wilcoxon_method,z,p_w,p_w_holm,d_z,r_rb\n", f);
    for (size_t i = 0; i < an->nc; i++)
        for (int m = 0; m < RM_COUNT; m++) {
            const an_cmp *q = an_cmp_get(an, i, m);
            if (!q->valid) continue;
            fprintf(f, "%zu,%s,%s,%s,%zu", i, rs->configs[i].config, base, res_metric_names[m], q->p.n);
            rp_csv_num(f, q->p.mean_diff, 1); rp_csv_num(f, q->p.sd_diff, 1);
            rp_csv_num(f, q->p.t, q->p.t_defined);
            rp_csv_num(f, q->p.p_t, 1); rp_csv_num(f, q->p_t_holm, 1);
            rp_csv_num(f, q->p.w_plus, 1); rp_csv_num(f, q->p.w_minus, 1);
            fprintf(f, ",%zu,%s", q->p.n_nonzero, q->p.n_nonzero == 0 ? "none" : q->p.exact ? "exact" : "normal");
            rp_csv_num(f, q->p.z, !q->p.exact && q->p.n_nonzero > 0);
            rp_csv_num(f, q->p.p_w, 1); rp_csv_num(f, q->p_w_holm, 1);
            rp_csv_num(f, q->p.d_z, q->p.dz_defined); rp_csv_num(f, q->p.r_rb, 1);
            fputc('\n', f);
        }
    return rp_close_out(c, f, "tables/comparisons.csv", err);
}

const char *config_display_name(const res_config *cf) { return cf->name ? cf->name : cf->config; }

/* ---- matched-compression selection --------------------------------------------------- */

static int matched_cmp(const void *a, const void *b, void *arg)
{
    const rp_ctx *c = arg;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    double x = an_get(c->an, i, c->metric)->d.mean, y = an_get(c->an, j, c->metric)->d.mean;
    if (!an_lower_better(c->metric)) { x = -x; y = -y; }
    if (x < y) return -1;
    if (x > y) return 1;
    return (i > j) - (i < j);
}

static int dbl_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

size_t rp_matched(rp_ctx *c, size_t *idx, double *target)
{
    const res_set *rs = c->rs;
    double t = c->target_ratio;
    if (!(t > 0)) {
        /* automatic: the median ratio of the compressed configurations with data */
        double *r = malloc((rs->n_configs + 1) * sizeof *r);
        size_t n = 0;
        if (!r) return 0;
        for (size_t i = 0; i < rs->n_configs; i++) {
            const an_stat *s = an_get(c->an, i, RM_RATIO);
            if (s->valid && s->d.mean > 1.0001 && an_get(c->an, i, c->metric)->valid) r[n++] = s->d.mean;
        }
        qsort(r, n, sizeof *r, dbl_cmp);
        t = n ? (n % 2 ? r[n / 2] : sqrt(r[n / 2 - 1] * r[n / 2])) : 1;
        free(r);
    }
    *target = t;
    size_t n = 0;
    for (size_t i = 0; i < rs->n_configs; i++) {
        const res_config *cf = &rs->configs[i];
        if (!strcmp(cf->family, "full") || cf->not_applied) continue;
        const an_stat *s = an_get(c->an, i, RM_RATIO);
        if (!s->valid || !an_get(c->an, i, c->metric)->valid) continue;
        double dist = fabs(log(s->d.mean / t));
        if (dist > log(RP_MATCH_FACTOR)) continue;
        size_t k;
        for (k = 0; k < n; k++) if (!strcmp(rs->configs[idx[k]].family, cf->family)) break;
        if (k == n) { idx[n++] = i; continue; }
        double dk = fabs(log(an_get(c->an, idx[k], RM_RATIO)->d.mean / t));
        if (dist < dk) idx[k] = i;
    }
    qsort_r(idx, n, sizeof *idx, matched_cmp, c);
    return n;
}

/* ---- report.md ------------------------------------------------------------------------- */

static void md_config(FILE *f, const char *s) { fputc('`', f); fputs(s, f); fputc('`', f); }

static kv_status copy_file_into(FILE *out, rp_ctx *c, const char *rel, kv_error *err)
{
    char path[4608];
    snprintf(path, sizeof path, "%s/%s", c->dir, rel);
    FILE *in = fopen(path, "r");
    if (!in) return kv_error_set(err, KV_ERR_IO, "%s: cannot read back: %s", path, strerror(errno));
    char b[8192];
    size_t n;
    while ((n = fread(b, 1, sizeof b, in)) > 0) fwrite(b, 1, n, out);
    fclose(in);
    return KV_OK;
}

kv_status rp_write_report(rp_ctx *c, kv_error *err)
{
    const res_set *rs = c->rs;
    const an_result *an = c->an;
    FILE *f = rp_open_out(c, "report.md", "w", err);
    if (!f) return err->code;
    kv_status st;

    fputs("# kvtrace report\n\n", f);
    fprintf(f, "Written by kvreport %s from %zu results director%s, %zu configuration%s.\n\n",
            c->version, rs->n_dirs, rs->n_dirs == 1 ? "y" : "ies", rs->n_configs, rs->n_configs == 1 ? "" : "s");

    /* ---- loud guard first ---- */
    int loud = 0;
    for (size_t i = 0; i < an->nc; i++) {
        const an_cmp *q = &an->nll[i];
        if (q->valid && q->p.mean_diff < 0 && q->p_t_holm < 0.05) {
            if (!loud) fputs("> **⚠ WARNING: NLL BELOW THE FULL CACHE.** The configurations below have a next-token NLL "
                             "significantly *lower* than the full cache's on the same sequences (paired t-test, "
                             "Holm-adjusted p < 0.05). Layer-local replay of a compressed cache cannot make the model "
                             "better except by chance or by a bug (a leak of future tokens, a wrong mask, a read-out "
                             "error). **This must be explained, not celebrated.**\n>\n", f);
            loud = 1;
            fputs("> - ", f); md_config(f, rs->configs[i].config);
            fprintf(f, ": ΔNLL = %.4g nats (n = %zu, t = %.3g, Holm p = %.3g)\n", q->p.mean_diff, q->p.n,
                    q->p.t_defined ? q->p.t : 0.0, q->p_t_holm);
            rp_note(&c->notes, "WARNING: config '%s' has NLL significantly below the full cache's (ΔNLL %.4g, Holm p %.3g): must be explained, not celebrated",
                    rs->configs[i].config, q->p.mean_diff, q->p_t_holm);
        }
    }
    if (loud) fputs("\n", f);

    /* ---- provenance ---- */
    fputs("## Trace and provenance\n\n", f);
    static const char *keys[] = { "trace", "trace_sha256", "trace_model", "trace_architecture", "mode", "decode",
                                  "sweep", "n_configs", "n_seq", "shard", "tool", "tool_version", "threads",
                                  "hdf5_version", "gsl_version", "openblas_config", "started", "finished", "argv" };
    for (size_t d = 0; d < rs->n_dirs; d++) {
        fprintf(f, "**%s**\n\n| field | value |\n|---|---|\n", rs->dirs[d].path);
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
            const char *v = res_prov(&rs->dirs[d], keys[k]);
            if (!v) continue;
            fprintf(f, "| %s | ", keys[k]); md_escape(f, v); fputs(" |\n", f);
        }
        fputc('\n', f);
    }
    if (rs->mixed_traces)
        fputs("**Mixed traces** (--allow-mixed): the directories above come from different traces; "
              "paired tests pair sequences by index across them.\n\n", f);

    /* ---- sweep ---- */
    fputs("## The sweep\n\nName: the sweep's label, else the family and the parameters that vary within it.\n\n"
          "| id | name | config | family | budget | sequences |\n|--:|---|---|---|---|--:|\n", f);
    for (size_t i = 0; i < rs->n_configs; i++) {
        const res_config *cf = &rs->configs[i];
        fprintf(f, "| %zu | ", i); md_escape(f, cf->name);
        fputs(" | ", f); md_config(f, cf->config);
        fputs(" | ", f); md_escape(f, cf->family);
        fprintf(f, " | %s", cf->budget_kind);
        if (!isnan(cf->budget_value)) fprintf(f, " %.9g", cf->budget_value);
        fprintf(f, " | %zu |\n", cf->n_seqs);
    }
    fputc('\n', f);

    /* ---- guards ---- */
    fputs("## Sanity guards\n\n", f);
    int any = 0;
    for (size_t i = 0; i < rs->n_configs; i++)
        if (rs->configs[i].not_applied && strcmp(rs->configs[i].family, "full")) {
            fputs("- **Compression not applied**: ", f); md_config(f, rs->configs[i].config);
            fputs(" gives results equal to the full cache bit for bit.\n", f);
            rp_note(&c->notes, "config '%s': compression not applied (results equal the full cache bit for bit)", rs->configs[i].config);
            any = 1;
        }
    for (size_t i = 0; i < an->nc; i++)
        for (int m = 0; m < RM_COUNT; m++) {
            const an_stat *s = an_get(an, i, m);
            double lo, hi;
            if (!s->valid || !an_metric_bounds(m, &lo, &hi)) continue;
            int out_t = s->d.has_ci && (s->d.t_lo < lo || s->d.t_hi > hi);
            int out_v = s->d.min < lo || s->d.max > hi;
            if (!out_t && !out_v) continue;
            fputs("- **Interval includes impossible values**: ", f); md_config(f, rs->configs[i].config);
            fprintf(f, " %s: %s [%.6g, %.6g] leaves the possible range [%g, %g]%s\n", res_metric_names[m],
                    out_v ? "observed range" : "95% t-interval", out_v ? s->d.min : s->d.t_lo,
                    out_v ? s->d.max : s->d.t_hi, lo, hi,
                    out_v ? " (a value itself is impossible: a bug upstream)"
                          : " (the t-interval is symmetric; use the bootstrap interval of tables/stats.csv near a bound)");
            any = 1;
        }
    if (loud) { fputs("- **NLL below the full cache**: see the warning at the top.\n", f); any = 1; }
    if (!any) fputs("No guard fired: no configuration flagged \"compression not applied\", no interval outside a metric's possible range, no NLL significantly below the full cache.\n", f);
    fputc('\n', f);

    /* ---- tables ---- */
    fputs("## Results\n\n", f);
    if ((st = copy_file_into(f, c, "tables/summary.md", err))) { fclose(f); return st; }
    fputs("\n### By strategy and budget\n\n", f);
    if ((st = copy_file_into(f, c, "tables/pivot.md", err))) { fclose(f); return st; }
    fputs("\nLaTeX: [tables/pivot.tex](tables/pivot.tex); CSV: [tables/pivot.csv](tables/pivot.csv); other metrics, "
          "columns and layouts: `kvreport table --pivot`.\n", f);
    fputs("\nAll statistics: [tables/stats.csv](tables/stats.csv) (n, mean, sd, min, max, 95% t-interval, "
          "bootstrap percentile interval); paired tests: [tables/comparisons.csv](tables/comparisons.csv); "
          "LaTeX: [tables/summary.tex](tables/summary.tex); CSV: [tables/summary.csv](tables/summary.csv).\n\n", f);

    /* ---- figures ---- */
    fputs("## Figures\n\n", f);
    if (c->no_figures) fputs("Figures were not requested (--no-figures).\n\n", f);
    for (size_t k = 0; k < c->n_fig; k++) {
        const rp_figure *g = &c->fig[k];
        fprintf(f, "### %s\n\n%s\n\n", g->stem, g->caption);
        if (g->rendered)
            fprintf(f, "![%s](figures/%s.png)\n\nPDF: [figures/%s.pdf](figures/%s.pdf); script and data: "
                       "[figures/%s.gp](figures/%s.gp), [figures/%s.dat](figures/%s.dat).\n\n",
                    g->stem, g->stem, g->stem, g->stem, g->stem, g->stem, g->stem, g->stem);
        else if (g->written)
            fprintf(f, "Not rendered: %s. Script and data: [figures/%s.gp](figures/%s.gp), [figures/%s.dat](figures/%s.dat) "
                       "(render with `cd figures && gnuplot %s.gp`).\n\n", g->why, g->stem, g->stem, g->stem, g->stem, g->stem);
        else
            fprintf(f, "Skipped: %s.\n\n", g->why);
    }

    /* ---- methods ---- */
    fputs("## Methods\n\n", f);
    fprintf(f, "- Statistics across sequences: mean, sample sd, 95%% t-interval; bootstrap percentile "
               "interval of the mean from %zu resamples (GSL mt19937, seed %llu).\n", c->n_boot, (unsigned long long)c->seed);
    if (an->baseline >= 0) {
        fputs("- Paired comparisons against the baseline ", f); md_config(f, rs->configs[an->baseline].config);
        fputs(" over the sequences both hold: paired t-test (two-sided) and Wilcoxon signed-rank test "
              "(zero differences dropped, Wilcoxon's convention; exact null distribution for up to 25 "
              "untied non-zero differences, else the normal approximation with tie correction, no "
              "continuity correction). Holm step-down correction across the configurations compared, "
              "per metric and test. Effect sizes: Cohen's d_z and the matched-pairs rank-biserial correlation.\n", f);
    } else {
        fputs("- No baseline: no `full` configuration in the results and no --baseline given; paired comparisons skipped.\n", f);
    }
    fputs("- NLL guard: nll_comp against nll_full of the same sequences within each configuration "
          "(paired t-test, Holm across configurations).\n", f);
    if (c->notes.n) {
        fputs("\n## Notes\n\n", f);
        for (size_t k = 0; k < c->notes.n; k++) { fputs("- ", f); fputs(c->notes.line[k], f); fputc('\n', f); }
    }
    return rp_close_out(c, f, "report.md", err);
}
