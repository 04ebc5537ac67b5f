/* Strategy x budget tables (table.h). */
#include "table.h"
#include "report.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int dbl_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Equal column values: nominal budgets are printed with %.9g in configs.csv and read back,
 * so equal budgets are equal doubles; ratio targets come from the user. */
static int same_col(double a, double b) { return fabs(a - b) <= 1e-12 * fmax(fabs(a), fabs(b)); }

static const char *kind_name(tb_kind k) { return k == TB_KEEP ? "keep" : k == TB_BUDGET ? "budget" : "ratio"; }

static int usable(const res_set *rs, const an_result *an, size_t i, int metric)
{
    return an_get(an, i, metric)->valid;
}

static double ratio_of(const an_result *an, size_t i)
{
    const an_stat *s = an_get(an, i, RM_RATIO);
    return s->valid ? s->d.mean : NAN;
}

static size_t add_unique(double *cols, size_t n, double v)
{
    for (size_t k = 0; k < n; k++) if (same_col(cols[k], v)) return n;
    if (n < TB_MAX_COLS) cols[n++] = v;
    return n;
}

/* Two significant digits: ratio targets derived from the data are shown as columns. */
static double round2(double x)
{
    if (!(x > 0)) return x;
    double e = pow(10, floor(log10(x)) - 1);
    return round(x / e) * e;
}

size_t tb_available(const res_set *rs, const an_result *an, tb_kind kind, int metric, double *cols)
{
    size_t n = 0;
    if (kind != TB_RATIO) {
        const char *bk = kind == TB_KEEP ? "keep" : "budget";
        for (size_t i = 0; i < rs->n_configs; i++)
            if (!strcmp(rs->configs[i].budget_kind, bk) && usable(rs, an, i, metric))
                n = add_unique(cols, n, rs->configs[i].budget_value);
    } else {
        /* the median measured ratio of each nominal budget (keep first, else entries): where
         * the sweep's budgets land once metadata and exact decode tokens are counted */
        for (int pass = 0; pass < 2 && !n; pass++) {
            double b[TB_MAX_COLS];
            size_t nb = tb_available(rs, an, pass ? TB_BUDGET : TB_KEEP, metric, b);
            for (size_t k = 0; k < nb; k++) {
                double r[4096];
                size_t m = 0;
                for (size_t i = 0; i < rs->n_configs && m < 4096; i++) {
                    const res_config *c = &rs->configs[i];
                    if (strcmp(c->budget_kind, pass ? "budget" : "keep") || !same_col(c->budget_value, b[k])) continue;
                    double x = ratio_of(an, i);
                    if (isfinite(x) && usable(rs, an, i, metric)) r[m++] = x;
                }
                if (!m) continue;
                qsort(r, m, sizeof *r, dbl_cmp);
                double med = m % 2 ? r[m / 2] : sqrt(r[m / 2 - 1] * r[m / 2]);
                if (med > 1.0001) n = add_unique(cols, n, round2(med));
            }
        }
        if (!n) { cols[0] = 2; cols[1] = 4; cols[2] = 8; n = 3; }
    }
    qsort(cols, n, sizeof *cols, dbl_cmp);
    return n;
}

void tb_pivot_free(tb_pivot *p)
{
    if (!p) return;
    free(p->row_cfg); free(p->col); free(p->cell);
    free(p);
}

/* Column of configuration i, -1 when none takes it. */
static long column_of(const tb_pivot *p, size_t i, double tol)
{
    const res_config *c = &p->rs->configs[i];
    if (p->kind != TB_RATIO) {
        if (strcmp(c->budget_kind, kind_name(p->kind))) return -1;
        for (size_t k = 0; k < p->n_cols; k++) if (same_col(p->col[k], c->budget_value)) return (long)k;
        return -1;
    }
    double r = ratio_of(p->an, i);
    if (!(r > 0)) return -1;
    long best = -1;
    double bd = log(tol) + 1e-12;
    for (size_t k = 0; k < p->n_cols; k++) {
        double d = fabs(log(r / p->col[k]));
        if (d <= bd) { bd = d; best = (long)k; }
    }
    return best;
}

kv_status tb_pivot_build(const res_set *rs, const an_result *an, const tb_opts *o, tb_pivot **out, kv_error *err)
{
    *out = NULL;
    double avail[TB_MAX_COLS];
    size_t na = tb_available(rs, an, o->kind, o->metric, avail);
    tb_pivot *p = calloc(1, sizeof *p);
    if (!p) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    p->rs = rs; p->an = an; p->metric = o->metric; p->kind = o->kind;
    p->lower_better = an_lower_better(o->metric);
    p->label = o->label;
    size_t nc = o->cols ? o->n_cols : na;
    p->col = malloc((nc ? nc : 1) * sizeof *p->col);
    p->row_cfg = malloc((rs->n_configs + 1) * sizeof *p->row_cfg);
    p->cell = malloc(((rs->n_configs + 1) * (nc ? nc : 1)) * sizeof *p->cell);
    if (!p->col || !p->row_cfg || !p->cell) { tb_pivot_free(p); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    if (o->cols) {
        for (size_t k = 0; k < nc; k++) {
            int found = o->kind == TB_RATIO;          /* ratio targets are free */
            for (size_t j = 0; j < na && !found; j++) found = same_col(avail[j], o->cols[k]);
            if (!found) {
                char list[512] = "";
                for (size_t j = 0; j < na; j++) {
                    size_t L = strlen(list);
                    snprintf(list + L, sizeof list - L, "%s%.9g", j ? ", " : "", avail[j]);
                }
                tb_pivot_free(p);
                return kv_error_set(err, KV_ERR_INVALID, "column %s=%.9g: no configuration with %s has it (%s columns: %s)",
                                    kind_name(o->kind), o->cols[k], res_metric_names[o->metric], kind_name(o->kind),
                                    na ? list : "none");
            }
            p->col[k] = o->cols[k];
        }
        qsort(p->col, nc, sizeof *p->col, dbl_cmp);
        for (size_t k = 1; k < nc; k++)
            if (same_col(p->col[k], p->col[k - 1])) {
                double v = p->col[k];
                tb_pivot_free(p);
                return kv_error_set(err, KV_ERR_INVALID, "column %.9g given twice", v);
            }
    } else {
        memcpy(p->col, avail, nc * sizeof *p->col);
    }
    p->n_cols = nc;
    if (!nc) { *out = p; return KV_OK; }
    double tol = o->tol > 1 ? o->tol : 1.25;
    for (size_t i = 0; i < rs->n_configs; i++) {
        if (!usable(rs, an, i, o->metric)) continue;
        long k = column_of(p, i, tol);
        if (k < 0) { p->n_outside++; continue; }
        size_t r;
        for (r = 0; r < p->n_rows; r++) if (!strcmp(rs->configs[p->row_cfg[r]].rowkey, rs->configs[i].rowkey)) break;
        if (r == p->n_rows) {
            p->row_cfg[p->n_rows++] = (long)i;
            for (size_t j = 0; j < nc; j++) p->cell[r * nc + j] = (tb_cell){ -1, 0, 0 };
        }
        tb_cell *c = &p->cell[r * nc + (size_t)k];
        if (c->cfg >= 0) {
            /* two configurations of one row in one column: ratio columns only (budgets
             * differ within a row); the nearest the target stays */
            double dn = fabs(log(ratio_of(an, i) / p->col[k])), dc = fabs(log(ratio_of(an, (size_t)c->cfg) / p->col[k]));
            p->n_outside++;
            if (!(dn < dc)) continue;
        }
        c->cfg = (long)i;
        c->not_applied = rs->configs[i].not_applied;
    }
    /* best per column: extreme mean by direction, ties included, among applied cells;
     * a column of a single cell has no best */
    for (size_t k = 0; k < nc; k++) {
        double best = NAN;
        size_t cnt = 0;
        for (size_t r = 0; r < p->n_rows; r++) {
            const tb_cell *c = &p->cell[r * nc + k];
            if (c->cfg < 0 || c->not_applied) continue;
            double m = an_get(an, (size_t)c->cfg, o->metric)->d.mean;
            cnt++;
            if (isnan(best) || (p->lower_better ? m < best : m > best)) best = m;
        }
        if (cnt < 2) continue;
        for (size_t r = 0; r < p->n_rows; r++) {
            tb_cell *c = &p->cell[r * nc + k];
            if (c->cfg >= 0 && !c->not_applied && an_get(an, (size_t)c->cfg, o->metric)->d.mean == best) c->best = 1;
        }
    }
    *out = p;
    return KV_OK;
}

/* ---- writers ---------------------------------------------------------------------------- */

static const char *metric_name(int m)
{
    switch (m) {
    case RM_LOGIT_KL: return "logit KL (nats)";
    case RM_NLL_DELTA: return "ΔNLL (nats)";
    case RM_TOP1_AGREE: return "top-1 agreement";
    case RM_OUT_COS: return "output cosine";
    case RM_ATTN_KL: return "attention KL (nats)";
    case RM_MASS_RECALL: return "mass recall";
    case RM_ATTN_COS: return "attention cosine";
    default: return res_metric_names[m];
    }
}

static const char *metric_tex(int m)
{
    switch (m) {
    case RM_LOGIT_KL: return "logit KL";
    case RM_NLL_DELTA: return "$\\Delta$NLL";
    case RM_TOP1_AGREE: return "top-1 agreement";
    case RM_OUT_COS: return "output cosine";
    case RM_ATTN_KL: return "attention KL";
    case RM_MASS_RECALL: return "mass recall";
    case RM_ATTN_COS: return "attention cosine";
    default: return NULL;
    }
}

static void col_title(char *buf, size_t cap, const tb_pivot *p, size_t k)
{
    if (p->kind == TB_RATIO) snprintf(buf, cap, "%.3g×", p->col[k]);
    else snprintf(buf, cap, "%.9g", p->col[k]);
}

static const char *axis_title(const tb_pivot *p)
{
    return p->kind == TB_KEEP ? "keep fraction" : p->kind == TB_BUDGET ? "budget (entries)" : "compression ratio";
}

/* Common scale of the Markdown and LaTeX cells: shown values are true values x 10^e, chosen
 * from the median of the nonzero |means| (tb_scale_exp): KL divergences of 1e-4..1e-2 read
 * "0.02 ... 6.0" under a "x10^-2" header instead of scientific notation in every cell, which
 * would not fit a column. */
int tb_scale_exp(const double *x, size_t n)
{
    double *a = malloc((n ? n : 1) * sizeof *a);
    size_t m = 0;
    if (!a) return 0;
    for (size_t i = 0; i < n; i++) if (isfinite(x[i]) && x[i] != 0) a[m++] = fabs(x[i]);
    int e = 0;
    if (m) {
        qsort(a, m, sizeof *a, dbl_cmp);
        double med = a[m / 2];
        if (med < 0.1 || med >= 1000) e = -(int)floor(log10(med));
    }
    free(a);
    return e;
}

static int table_scale(const tb_pivot *p)
{
    double *x = malloc((p->n_rows * p->n_cols + 1) * sizeof *x);
    size_t n = 0;
    if (!x) return 0;
    for (size_t i = 0; i < p->n_rows * p->n_cols; i++)
        if (p->cell[i].cfg >= 0) x[n++] = an_get(p->an, (size_t)p->cell[i].cfg, p->metric)->d.mean;
    int e = tb_scale_exp(x, n);
    free(x);
    return e;
}

static void cell_text(const tb_pivot *p, const tb_cell *c, char *buf, size_t cap)
{
    const an_stat *s = an_get(p->an, (size_t)c->cfg, p->metric);
    double k = pow(10, table_scale(p));
    rp_fmt_pm(buf, cap, s->d.mean * k, (s->d.t_hi - s->d.t_lo) / 2 * k, s->d.has_ci);
}

static int any_not_applied(const tb_pivot *p)
{
    for (size_t i = 0; i < p->n_rows * p->n_cols; i++) if (p->cell[i].cfg >= 0 && p->cell[i].not_applied) return 1;
    return 0;
}

static void md_escape(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (strchr("|*_\\`", *s)) fputc('\\', f);
        fputc(*s, f);
    }
}

void tb_write_md(FILE *f, const tb_pivot *p)
{
    char buf[128];
    int e = table_scale(p);
    fprintf(f, "| strategy (%s", metric_name(p->metric));
    if (e) fprintf(f, " ×10^%d", -e);
    fprintf(f, " %s) |", p->lower_better ? "↓" : "↑");
    for (size_t k = 0; k < p->n_cols; k++) { col_title(buf, sizeof buf, p, k); fprintf(f, " %s %s |", p->kind == TB_RATIO ? "ratio" : kind_name(p->kind), buf); }
    fputs("\n|---|", f);
    for (size_t k = 0; k < p->n_cols; k++) fputs("--:|", f);
    fputc('\n', f);
    for (size_t r = 0; r < p->n_rows; r++) {
        fputs("| ", f);
        md_escape(f, p->rs->configs[p->row_cfg[r]].row);
        fputs(" |", f);
        for (size_t k = 0; k < p->n_cols; k++) {
            const tb_cell *c = &p->cell[r * p->n_cols + k];
            if (c->cfg < 0) { fputs(" – |", f); continue; }
            cell_text(p, c, buf, sizeof buf);
            fprintf(f, " %s%s%s", c->best ? "**" : "", buf, c->best ? "**" : "");
            if (p->kind == TB_RATIO) fprintf(f, " (%.3g×)", ratio_of(p->an, (size_t)c->cfg));
            if (c->not_applied) fputs(" †", f);
            fputs(" |", f);
        }
        fputc('\n', f);
    }
    fprintf(f, "\n%s, %s is better: mean over sequences ± half-width of the 95%% t-interval; best per column in bold "
               "(ties included; none in a column of one cell).", metric_name(p->metric), p->lower_better ? "lower" : "higher");
    if (e) fprintf(f, " Values are in units of 10^%d.", -e);
    if (p->kind == TB_RATIO)
        fputs(" Columns: target compression ratios; each configuration is in the column nearest its measured ratio "
              "(in parentheses) within the tolerance.", f);
    if (any_not_applied(p)) fputs(" † compression not applied (results equal the full cache bit for bit; never best).", f);
    if (p->n_outside) fprintf(f, " %zu configuration%s with this metric fall%s in no column.", p->n_outside,
                              p->n_outside == 1 ? "" : "s", p->n_outside == 1 ? "s" : "");
    fputc('\n', f);
}

void tb_write_csv(FILE *f, const tb_pivot *p)
{
    fputs("row,column_kind,column,config_id,config,name,n,mean,t_lo,t_hi,ratio,best,not_applied\n", f);
    for (size_t r = 0; r < p->n_rows; r++)
        for (size_t k = 0; k < p->n_cols; k++) {
            const tb_cell *c = &p->cell[r * p->n_cols + k];
            if (c->cfg < 0) continue;
            const res_config *cf = &p->rs->configs[c->cfg];
            const an_stat *s = an_get(p->an, (size_t)c->cfg, p->metric);
            fprintf(f, "%s,%s,%.9g,%ld,%s,%s,%zu,%.9g,", p->rs->configs[p->row_cfg[r]].row, kind_name(p->kind), p->col[k],
                    c->cfg, cf->config, cf->name, s->d.n, s->d.mean);
            if (s->d.has_ci) fprintf(f, "%.9g,%.9g,", s->d.t_lo, s->d.t_hi); else fputs(",,", f);
            double x = ratio_of(p->an, (size_t)c->cfg);
            if (isfinite(x)) fprintf(f, "%.9g", x);
            fprintf(f, ",%d,%d\n", c->best, c->not_applied);
        }
}

void tb_tex_escape(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        /* a name may wrap after '_' and '+' in a paragraph column (summary.tex) */
        case '_': fputs("\\_\\allowbreak{}", f); break;
        case '+': fputs("+\\allowbreak{}", f); break;
        case '&': case '%': case '#': case '$': case '{': case '}': fprintf(f, "\\%c", *s); break;
        case '~': fputs("\\textasciitilde{}", f); break;
        case '^': fputs("\\textasciicircum{}", f); break;
        case '\\': fputs("\\textbackslash{}", f); break;
        case '<': fputs("\\textless{}", f); break;
        case '>': fputs("\\textgreater{}", f); break;
        case '|': fputs("\\textbar{}", f); break;
        default: fputc(*s, f);
        }
    }
}

/* One number of rp_fmt_pm's output in text mode: "-0.12" -> "$-$0.12", "8.05e-04" ->
 * "8.05$\times10^{-4}$". */
static const char *tex_number(FILE *f, const char *p)
{
    if (*p == '-') { fputs("$-$", f); p++; }
    while (*p && *p != ' ' && *p != 'e') fputc(*p++, f);
    if (*p == 'e') {
        int ex = atoi(p + 1);
        fprintf(f, "$\\times10^{%d}$", ex);
        p++;
        if (*p == '-' || *p == '+') p++;
        while (*p >= '0' && *p <= '9') p++;
    }
    return p;
}

void tb_tex_num(FILE *f, const char *pm)
{
    const char *p = tex_number(f, pm);
    const char *pmsym = strstr(p, "±");
    if (!pmsym) return;
    fputs("{\\scriptsize\\,$\\pm$", f);
    p = pmsym + strlen("±");
    while (*p == ' ') p++;
    tex_number(f, p);
    fputc('}', f);
}

static void tex_cell(FILE *f, const tb_pivot *p, const tb_cell *c)
{
    if (c->cfg < 0) { fputs("--", f); return; }
    char buf[128];
    cell_text(p, c, buf, sizeof buf);
    if (c->best) {       /* the mean in bold, the interval as is */
        const char *sp = strstr(buf, " ±");
        fputs("\\textbf{", f);
        char mean[64];
        size_t n = sp ? (size_t)(sp - buf) : strlen(buf);
        snprintf(mean, sizeof mean, "%.*s", (int)(n < 63 ? n : 63), buf);
        tex_number(f, mean);
        fputc('}', f);
        if (sp) { fputs("{\\scriptsize\\,$\\pm$", f); const char *q = sp + strlen(" ±"); while (*q == ' ') q++; tex_number(f, q); fputc('}', f); }
    } else {
        tb_tex_num(f, buf);
    }
    if (c->not_applied) fputs("$^\\dagger$", f);
}

static void tex_header(FILE *f, const tb_pivot *p)
{
    const char *mt = metric_tex(p->metric);
    if (mt) fputs(mt, f); else tb_tex_escape(f, res_metric_names[p->metric]);
    int e = table_scale(p);
    if (e) fprintf(f, " ($\\times10^{%d}$)", -e);
    fprintf(f, " $%s$ & \\multicolumn{%zu}{c}{%s} \\\\\n", p->lower_better ? "\\downarrow" : "\\uparrow", p->n_cols,
            p->kind == TB_KEEP ? "keep fraction" : p->kind == TB_BUDGET ? "budget (entries)" : "compression ratio");
    fprintf(f, "\\cmidrule(l){2-%zu}\nStrategy", p->n_cols + 1);
    for (size_t k = 0; k < p->n_cols; k++) {
        if (p->kind == TB_RATIO) fprintf(f, " & %.3g$\\times$", p->col[k]);
        else fprintf(f, " & %.9g", p->col[k]);
    }
    fputs(" \\\\\n\\midrule\n", f);
}

static void tex_caption(FILE *f, const tb_pivot *p)
{
    fputs("\\caption{", f);
    const char *mt = metric_tex(p->metric);
    if (mt) fputs(mt, f); else { fputs("\\texttt{", f); tb_tex_escape(f, res_metric_names[p->metric]); fputc('}', f); }
    fprintf(f, " by strategy and %s (%s is better): mean over sequences $\\pm$ half-width of the 95\\%% $t$-interval; "
               "best per column in bold.", axis_title(p), p->lower_better ? "lower" : "higher");
    int e = table_scale(p);
    if (e) fprintf(f, " Values are in units of $10^{%d}$.", -e);
    if (p->kind == TB_RATIO) fputs(" Each configuration is in the column nearest its measured ratio.", f);
    if (any_not_applied(p)) fputs(" $^\\dagger$compression not applied (equal to the full cache).", f);
    fputc('}', f);
}

/* Row names longer than this many characters wrap in a paragraph column of 25% of the line
 * width (at '_', '+' and spaces) instead of widening the table past its column. */
#define TB_WRAP_NAME 24

void tb_write_tex(FILE *f, const tb_pivot *p)
{
    int lng = p->n_rows > TB_LONG_ROWS;
    size_t longest = 0;
    for (size_t r = 0; r < p->n_rows; r++) {
        size_t L = strlen(p->rs->configs[p->row_cfg[r]].row);
        if (L > longest) longest = L;
    }
    int wrap = longest > TB_WRAP_NAME;
    fprintf(f, "%% kvreport pivot table: needs \\usepackage{booktabs}%s%s\n", wrap ? ", \\usepackage{array}" : "",
            lng ? " and \\usepackage{longtable} (a longtable: one-column layouts, or \\onecolumn)" : "");
    if (lng) fputs("{\\footnotesize\\setlength{\\tabcolsep}{4pt}\n", f);
    else fputs("\\begin{table}[t]\n\\centering\n\\footnotesize\n\\setlength{\\tabcolsep}{4pt}\n", f);
    fprintf(f, "\\begin{%s}{@{}%s*{%zu}{r}@{}}\n", lng ? "longtable" : "tabular",
            wrap ? ">{\\raggedright\\arraybackslash}p{0.25\\linewidth}" : "l", p->n_cols ? p->n_cols : 1);
    if (lng) {
        tex_caption(f, p);
        fprintf(f, "\\label{%s}\\\\\n\\toprule\n", p->label ? p->label : "tab:kvtrace-pivot");
        tex_header(f, p);
        fputs("\\endfirsthead\n", f);
        fprintf(f, "\\multicolumn{%zu}{@{}l}{\\emph{(continued)}} \\\\\n\\toprule\n", p->n_cols + 1);
        tex_header(f, p);
        fputs("\\endhead\n\\bottomrule\n\\endfoot\n", f);
    } else {
        fputs("\\toprule\n", f);
        tex_header(f, p);
    }
    for (size_t r = 0; r < p->n_rows; r++) {
        tb_tex_escape(f, p->rs->configs[p->row_cfg[r]].row);
        for (size_t k = 0; k < p->n_cols; k++) { fputs(" & ", f); tex_cell(f, p, &p->cell[r * p->n_cols + k]); }
        fputs(" \\\\\n", f);
    }
    if (lng) { fputs("\\end{longtable}}\n", f); return; }
    fputs("\\bottomrule\n\\end{tabular}\n", f);
    tex_caption(f, p);
    fprintf(f, "\n\\label{%s}\n\\end{table}\n", p->label ? p->label : "tab:kvtrace-pivot");
}
