/* kvreport's needle outputs (report.h: rp_needle_figures), from the needles.csv of each
 * results directory (replay/RESULTS.md), read as untrusted input like the other results:
 * the exact header, every value in its column's domain (FILE:LINE: column NAME = VALUE out of
 * range [LO, HI]), configurations known to configs.csv, no (configuration, needle) twice.
 *
 *   tables/needles.csv        per (configuration, context length, depth bin): needles, mean
 *                             retained_frac, mass_a_full, mass_a_comp, answer_top1_full,
 *                             answer_top1_comp (empty when a needle lacks it)
 *   figures/needle_heatmap    context length x needle depth, one panel per configuration (the
 *                             first 16): colour = answer accuracy of the compressed read-out,
 *                             or retention when the results have no read-out or the full
 *                             cache answers no needle (accuracy 0 everywhere)
 *   figures/needle_retention  mean retention against the realised keep fraction
 *                             (per_seq.csv), one line per family
 * Depth bins: depth rounded to the nearest 0.1 (make_needles' depths land within 0.02 of the
 * depth asked; the needle's own length shifts them slightly).
 */
#include "report.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ND_PANELS 16
#define ND_COLS 2             /* panels per row of the heat map (twice as many at --two-column width) */
#define ND_SERIES 16

static const char nd_header[] =
    "config_id,config,family,needle,seq,ctx_len,depth,needle_len,value_len,answer_len,retained_frac,"
    "mass_q_full,mass_q_comp,mass_a_full,mass_a_comp,answer_top1_full,answer_top1_comp";
enum { NC_ID, NC_CONFIG, NC_FAMILY, NC_NEEDLE, NC_SEQ, NC_CTX, NC_DEPTH, NC_NLEN, NC_VLEN, NC_ALEN, NC_RET,
       NC_MQF, NC_MQC, NC_MAF, NC_MAC, NC_TOPF, NC_TOPC, NC_COLS };

typedef struct nd_row {
    long cfg;                  /* index in rs->configs */
    long long needle, ctx, dir;
    double depth, v[NC_COLS];  /* numeric columns by NC_*; NaN = empty */
} nd_row;

typedef struct nd_set { nd_row *r; size_t n, cap; } nd_set;

/* Column domains: [lo, hi], whole numbers, empty allowed. */
typedef struct nd_dom { double lo, hi; int whole, empty_ok; } nd_dom;
static const nd_dom nd_doms[NC_COLS] = {
    [NC_ID] = { 0, 1048575, 1, 0 }, [NC_NEEDLE] = { 0, 2147483647, 1, 0 }, [NC_SEQ] = { 0, 2147483647, 1, 0 },
    [NC_CTX] = { 1, 2147483647, 1, 0 }, [NC_DEPTH] = { 0, 1, 0, 0 }, [NC_NLEN] = { 1, 2147483647, 1, 0 },
    [NC_VLEN] = { 1, 2147483647, 1, 0 }, [NC_ALEN] = { 1, 2147483647, 1, 0 }, [NC_RET] = { 0, 1, 0, 0 },
    [NC_MQF] = { 0, 1, 0, 1 }, [NC_MQC] = { 0, 1, 0, 1 }, [NC_MAF] = { 0, 1, 0, 0 }, [NC_MAC] = { 0, 1, 0, 0 },
    [NC_TOPF] = { 0, 1, 0, 1 }, [NC_TOPC] = { 0, 1, 0, 1 },
};
static const char *const nd_names[NC_COLS] = {
    "config_id", "config", "family", "needle", "seq", "ctx_len", "depth", "needle_len", "value_len", "answer_len",
    "retained_frac", "mass_q_full", "mass_q_comp", "mass_a_full", "mass_a_comp", "answer_top1_full", "answer_top1_comp" };
#define ND_SLACK 1e-6          /* as RESULTS.md's RES_SLACK: means printed with %.9g */

static kv_status parse_line(const rp_ctx *c, const char *path, size_t ln, char *line, long long dir, nd_row *out,
                            kv_error *err)
{
    char *f[NC_COLS + 1];
    size_t k = 0;
    for (char *p = line;; ) {
        if (k == NC_COLS) return kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: more than %d columns", path, ln, NC_COLS);
        f[k++] = p;
        char *q = strchr(p, ',');
        if (!q) break;
        *q = 0;
        p = q + 1;
    }
    if (k != NC_COLS) return kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: %zu columns, expected %d", path, ln, k, NC_COLS);
    memset(out, 0, sizeof *out);
    for (int i = 0; i < NC_COLS; i++) {
        out->v[i] = NAN;
        if (i == NC_CONFIG || i == NC_FAMILY) continue;
        const nd_dom *d = &nd_doms[i];
        if (!f[i][0]) {
            if (d->empty_ok) continue;
            return kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: column %s is empty", path, ln, nd_names[i]);
        }
        char *end;
        errno = 0;
        double x = strtod(f[i], &end);
        double slack = d->whole ? 0 : ND_SLACK;
        if (*end || errno || !isfinite(x) || x < d->lo - slack || x > d->hi + slack || (d->whole && x != floor(x)))
            return kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: column %s = %.60s out of range [%.9g, %.9g]%s", path, ln,
                                nd_names[i], f[i], d->lo, d->hi, d->whole ? " (whole number)" : "");
        out->v[i] = x;
    }
    out->cfg = res_find_config(c->rs, f[NC_CONFIG]);
    if (out->cfg < 0)
        return kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: configuration '%.200s' is not in configs.csv", path, ln, f[NC_CONFIG]);
    out->needle = (long long)out->v[NC_NEEDLE];
    out->ctx = (long long)out->v[NC_CTX];
    out->depth = out->v[NC_DEPTH];
    out->dir = dir;
    return KV_OK;
}

/* Every directory's needles.csv; *n_files: how many had one. */
static kv_status load_all(const rp_ctx *c, nd_set *s, size_t *n_files, kv_error *err)
{
    *n_files = 0;
    for (size_t d = 0; d < c->rs->n_dirs; d++) {
        char path[4608], *buf = NULL;
        size_t len = 0;
        int missing = 0;
        snprintf(path, sizeof path, "%s/needles.csv", c->rs->dirs[d].path);
        kv_status st = res_read_file(path, &buf, &len, &missing, err);
        if (st != KV_OK) return st;
        if (missing) continue;
        (*n_files)++;
        size_t ln = 0, first = s->n;
        char *p = buf;
        while (*p) {
            char *nl = strchr(p, '\n');
            if (!nl) { free(buf); return kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: line without its end", path, ln + 1); }
            *nl = 0;
            ln++;
            if (ln == 1) {
                if (strcmp(p, nd_header)) { free(buf); return kv_error_set(err, KV_ERR_FORMAT, "%s:1: not the needles.csv header", path); }
            } else {
                if (s->n == s->cap) {
                    size_t nc = s->cap ? 2 * s->cap : 256;
                    nd_row *q = realloc(s->r, nc * sizeof *q);
                    if (!q) { free(buf); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
                    s->r = q; s->cap = nc;
                }
                if ((st = parse_line(c, path, ln, p, (long long)d, &s->r[s->n], err)) != KV_OK) { free(buf); return st; }
                const nd_row *r = &s->r[s->n];
                for (size_t i = first; i < s->n; i++)       /* quadratic only in one file's rows */
                    if (s->r[i].cfg == r->cfg && s->r[i].needle == r->needle) {
                        free(buf);
                        return kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: configuration '%s', needle %lld appears twice", path,
                                            ln, c->rs->configs[r->cfg].config, r->needle);
                    }
                s->n++;
            }
            p = nl + 1;
        }
        free(buf);
    }
    return KV_OK;
}

/* One cell: a configuration at one context length and depth bin. */
typedef struct nd_cell { long cfg; long long ctx; int dbin; double n, ret, maf, mac, tf, tc, nt; } nd_cell;

static int cell_cmp(const void *a, const void *b)
{
    const nd_cell *x = a, *y = b;
    if (x->cfg != y->cfg) return x->cfg < y->cfg ? -1 : 1;
    if (x->ctx != y->ctx) return x->ctx < y->ctx ? -1 : 1;
    return (x->dbin > y->dbin) - (x->dbin < y->dbin);
}

static kv_status cells_of(const nd_set *s, nd_cell **out, size_t *n_out, kv_error *err)
{
    nd_cell *c = calloc(s->n ? s->n : 1, sizeof *c);
    size_t n = 0;
    if (!c) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < s->n; i++) {
        const nd_row *r = &s->r[i];
        int db = (int)floor(r->depth * 10 + 0.5);
        size_t k = 0;
        while (k < n && !(c[k].cfg == r->cfg && c[k].ctx == r->ctx && c[k].dbin == db)) k++;
        if (k == n) { c[n].cfg = r->cfg; c[n].ctx = r->ctx; c[n].dbin = db; n++; }
        c[k].n += 1;
        c[k].ret += r->v[NC_RET]; c[k].maf += r->v[NC_MAF]; c[k].mac += r->v[NC_MAC];
        if (!isnan(r->v[NC_TOPF]) && !isnan(r->v[NC_TOPC])) { c[k].tf += r->v[NC_TOPF]; c[k].tc += r->v[NC_TOPC]; c[k].nt += 1; }
    }
    qsort(c, n, sizeof *c, cell_cmp);
    *out = c;
    *n_out = n;
    return KV_OK;
}

static kv_status write_table(rp_ctx *c, const nd_cell *cell, size_t n, kv_error *err)
{
    FILE *f = rp_open_out(c, "tables/needles.csv", "w", err);
    if (!f) return err->code;
    fprintf(f, "config,family,ctx_len,depth,n_needles,retained_frac,mass_a_full,mass_a_comp,answer_top1_full,answer_top1_comp\n");
    for (size_t i = 0; i < n; i++) {
        const nd_cell *x = &cell[i];
        const res_config *cf = &c->rs->configs[x->cfg];
        fprintf(f, "%s,%s,%lld,%.1f,%.0f,%.9g,%.9g,%.9g", cf->config, cf->family, x->ctx, x->dbin / 10.0, x->n,
                x->ret / x->n, x->maf / x->n, x->mac / x->n);
        if (x->nt > 0) fprintf(f, ",%.9g,%.9g\n", x->tf / x->nt, x->tc / x->nt);
        else fprintf(f, ",,\n");
    }
    return rp_close_out(c, f, "tables/needles.csv", err);
}

/* A growing text buffer for .dat files and plot commands. */
typedef struct tb { char *s; size_t n, cap; int oom; } tb;
static void tb_add(tb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tb_add(tb *b, const char *fmt, ...)
{
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->n : NULL, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (k < 0) { b->oom = 1; return; }
        if ((size_t)k < b->cap - b->n) { b->n += (size_t)k; return; }
        size_t nc = (b->cap + (size_t)k + 1) * 2;
        char *q = realloc(b->s, nc);
        if (!q) { b->oom = 1; return; }
        b->s = q; b->cap = nc;
    }
}

/* A label without quotes or backslashes (gnuplot single-quoted strings). */
static void clean_label(const res_config *cf, char *buf, size_t cap)
{
    if (!strcmp(cf->budget_kind, "none") || isnan(cf->budget_value)) snprintf(buf, cap, "%s", cf->config);
    else snprintf(buf, cap, "%s %s=%.9g", cf->family, cf->budget_kind, cf->budget_value);
    if (strlen(buf) > 40) strcpy(buf + 37, "...");
    for (char *p = buf; *p; p++) if (*p == '\'' || *p == '\\' || *p == '@') *p = ' ';
}

/* One plot (gnuplot's replot, which writes the PDF, replays a single plot, not a multiplot):
 * the panels on a grid of at most ND_COLS columns (2 ND_COLS at the two-column width),
 * panel p in column p % cols and row p / cols (top row first); its cells at x = column
 * (nx + 1) + context index and y = (rows - 1 - row) (ny + 2) + depth bin index; its name
 * (clean_label) a label above it. */
kv_status rp_needle_heat(rp_ctx *c, const char *stem, const char *what, const char *cblabel, const rp_heat_cell *cell,
                         size_t n, kv_error *err)
{
    long long ctxs[32];
    int dbs[32];
    size_t nx = 0, ny = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = 0;
        while (k < nx && ctxs[k] != cell[i].ctx) k++;
        if (k == nx && nx < 32) ctxs[nx++] = cell[i].ctx;
        k = 0;
        while (k < ny && dbs[k] != cell[i].dbin) k++;
        if (k == ny && ny < 32) dbs[ny++] = cell[i].dbin;
    }
    for (size_t i = 1; i < nx; i++)
        for (size_t j = i; j > 0 && ctxs[j - 1] > ctxs[j]; j--) { long long t = ctxs[j]; ctxs[j] = ctxs[j - 1]; ctxs[j - 1] = t; }
    for (size_t i = 1; i < ny; i++)
        for (size_t j = i; j > 0 && dbs[j - 1] > dbs[j]; j--) { int t = dbs[j]; dbs[j] = dbs[j - 1]; dbs[j - 1] = t; }
    char cap[512];
    snprintf(cap, sizeof cap, "Needle in a haystack: %s by context length (bottom axis) and needle depth, one panel per "
             "configuration, named above it.", what);
    long cfgs[ND_PANELS];
    size_t np = 0, more = 0;
    for (size_t i = 0; i < n; i++)
        if (!i || cell[i - 1].cfg != cell[i].cfg) {
            if (np < ND_PANELS) cfgs[np++] = cell[i].cfg;
            else more++;
        }
    size_t max_cols = c->fig_two_col ? 2 * ND_COLS : ND_COLS;
    size_t cols = np < max_cols ? (np ? np : 1) : max_cols, rows = (np + cols - 1) / cols;
    tb dat = {0}, xt = {0}, lb = {0}, yt = {0};
    tb_add(&dat, "# grid %zu columns %zu rows %zu contexts %zu depths: panel p at column p %% columns, row p / columns; "
                 "x = column * (contexts + 1) + context index, y = (rows - 1 - row) * (depths + 2) + depth index; "
                 "value\n", cols, rows, nx, ny);
    tb_add(&xt, "(");
    for (size_t p = 0; p < np; p++) {
        size_t col = p % cols, row = p / cols, y0 = (rows - 1 - row) * (ny + 2);
        for (size_t i = 0; i < n; i++) {
            if (cell[i].cfg != cfgs[p]) continue;
            size_t x = 0, y = 0;
            while (x < nx && ctxs[x] != cell[i].ctx) x++;
            while (y < ny && dbs[y] != cell[i].dbin) y++;
            if (x == nx || y == ny) continue;       /* beyond 32 distinct values: not drawn */
            tb_add(&dat, "%zu %zu %.9g\n", col * (nx + 1) + x, y0 + y, cell[i].v);
        }
        char lab[64];
        clean_label(&c->rs->configs[cfgs[p]], lab, sizeof lab);
        tb_add(&lb, "set label '%s' at %.1f,%.2f center front font ',7' noenhanced\n", lab,
               (double)(col * (nx + 1)) + ((double)nx - 1) / 2, (double)(y0 + ny) - 0.1);
    }
    for (size_t col = 0; col < cols; col++)
        for (size_t x = 0; x < nx; x++) tb_add(&xt, "%s'%lld' %zu", col || x ? ", " : "", ctxs[x], col * (nx + 1) + x);
    tb_add(&xt, ")");
    tb_add(&yt, "(");
    for (size_t r = 0; r < rows; r++)
        for (size_t y = 0; y < ny; y++) tb_add(&yt, "%s'%.1f' %zu", r || y ? ", " : "", dbs[y] / 10.0, r * (ny + 2) + y);
    tb_add(&yt, ")");
    kv_status st = KV_OK;
    if (dat.oom || xt.oom || lb.oom || yt.oom) st = kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    else if (xt.n >= 4000 || lb.n >= 4000 || yt.n >= 4000)
        rp_skip_figure(c, stem, cap, "too many panels or context lengths for one figure");
    else {
        char v_xmax[32], v_ymax[32];
        snprintf(v_xmax, sizeof v_xmax, "%.1f", (double)(cols * (nx + 1)) - 1.5);
        snprintf(v_ymax, sizeof v_ymax, "%.1f", (double)(rows * (ny + 2)) - 1.5);
        const char *keys[] = { "XMAX", "YMAX", "XTICS", "LABELS", "YTICS", "CBLABEL" };
        const char *vals[] = { v_xmax, v_ymax, xt.s, lb.s, yt.s, cblabel };
        if (more) rp_note(&c->notes, "figure %s: %zu configuration(s) beyond the first %d not drawn (tables/needles.csv has them)",
                          stem, more, ND_PANELS);
        /* taller with more rows of panels and depth bins: 7 depth labels at 8 pt need about
         * 0.15 in a row, the panel name another row */
        double height = 1.6 + 0.16 * (double)(rows * (ny + 2));
        st = rp_emit_figure(c, stem, "needle_heatmap", cap, keys, vals, 6, dat.s, dat.n, height < 2.8 ? 2.8 : height,
                            err);
    }
    free(dat.s); free(xt.s); free(lb.s); free(yt.s);
    return st;
}

/* The proxy's heat map: answer accuracy when every cell has it and the full cache answers some
 * needle: a model that answers none (it does not retrieve) scores 0 under every cache, which
 * says nothing, while retention still tells the strategies apart. */
static kv_status fig_heat(rp_ctx *c, const nd_cell *cell, size_t n, kv_error *err)
{
    int acc = 1, answered = 0;
    for (size_t i = 0; i < n; i++) {
        if (cell[i].nt == 0) acc = 0;
        if (cell[i].tf > 0) answered = 1;
    }
    acc = acc && answered;
    rp_heat_cell *h = malloc((n ? n : 1) * sizeof *h);
    if (!h) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        h[i] = (rp_heat_cell){ cell[i].cfg, cell[i].ctx, cell[i].dbin, acc ? cell[i].tc / cell[i].nt : cell[i].ret / cell[i].n };
    kv_status st = rp_needle_heat(c, "needle_heatmap",
                                  acc ? "answer accuracy of the compressed read-out proxy (top-1, teacher-forced; "
                                        "needles.csv, tables/needles.csv)"
                                      : "retention of the needle's value entries (needles.csv, tables/needles.csv)",
                                  acc ? "answer accuracy (compressed)" : "needle retention", h, n, err);
    free(h);
    return st;
}

/* Mean keep_frac of a configuration over its sequences (per_seq.csv), NaN when absent. */
static double keep_of(const res_config *cf)
{
    double s = 0;
    size_t k = 0;
    for (size_t i = 0; i < cf->n_seqs; i++)
        if (!isnan(cf->seqs[i].v[RM_KEEP_FRAC])) { s += cf->seqs[i].v[RM_KEEP_FRAC]; k++; }
    return k ? s / (double)k : NAN;
}

static kv_status fig_retention(rp_ctx *c, const nd_set *s, kv_error *err)
{
    const char *stem = "needle_retention";
    const char *cap = "Needle retention (share of the needle's value entries the cache holds at the first answer query, "
                      "mean over needles, layers and heads) against the realised keep fraction, one line per family.";
    const res_set *rs = c->rs;
    double *ret = calloc(rs->n_configs, sizeof *ret), *cnt = calloc(rs->n_configs, sizeof *cnt);
    if (!ret || !cnt) { free(ret); free(cnt); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    for (size_t i = 0; i < s->n; i++) { ret[s->r[i].cfg] += s->r[i].v[NC_RET]; cnt[s->r[i].cfg] += 1; }
    const char *fams[ND_SERIES];
    size_t nf = 0;
    for (size_t k = 0; k < rs->n_configs; k++) {
        if (!cnt[k] || isnan(keep_of(&rs->configs[k]))) continue;
        size_t f = 0;
        while (f < nf && strcmp(fams[f], rs->configs[k].family)) f++;
        if (f == nf && nf < ND_SERIES) fams[nf++] = rs->configs[k].family;
    }
    tb dat = {0}, plot = {0};
    tb_add(&plot, "plot ");
    for (size_t f = 0; f < nf; f++) {
        /* the family's points by keep fraction (insertion sort over its configurations) */
        size_t idx[256], m = 0;
        for (size_t k = 0; k < rs->n_configs && m < 256; k++)
            if (cnt[k] && !strcmp(rs->configs[k].family, fams[f]) && !isnan(keep_of(&rs->configs[k]))) idx[m++] = k;
        for (size_t i = 1; i < m; i++)
            for (size_t j = i; j > 0 && keep_of(&rs->configs[idx[j - 1]]) > keep_of(&rs->configs[idx[j]]); j--) {
                size_t t = idx[j]; idx[j] = idx[j - 1]; idx[j - 1] = t;
            }
        tb_add(&dat, "# %s: keep_frac retained_frac\n", fams[f]);
        for (size_t i = 0; i < m; i++) tb_add(&dat, "%.9g %.9g\n", keep_of(&rs->configs[idx[i]]), ret[idx[i]] / cnt[idx[i]]);
        tb_add(&dat, "\n\n");
        char lab[64];
        snprintf(lab, sizeof lab, "%s", fams[f]);
        for (char *p = lab; *p; p++) if (*p == '\'' || *p == '\\' || *p == '@') *p = ' ';
        tb_add(&plot, "%s'%s.dat' index %zu using 1:2 with linespoints lt %zu title '%s'", f ? ", " : "", stem, f, f + 1, lab);
    }
    free(ret); free(cnt);
    kv_status st = KV_OK;
    if (dat.oom || plot.oom) st = kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    else if (!nf) rp_skip_figure(c, stem, cap, "no configuration with both needles and a keep fraction");
    else if (plot.n >= 4000) rp_skip_figure(c, stem, cap, "too many families for one figure");
    else {
        const char *keys[] = { "PLOT" };
        const char *vals[] = { plot.s };
        st = rp_emit_figure(c, stem, "needle_retention", cap, keys, vals, 1, dat.s, dat.n, 2.4, err);
    }
    free(dat.s); free(plot.s);
    return st;
}

kv_status rp_needles_load(const rp_ctx *c, rp_needle_row **rows, size_t *n, kv_error *err)
{
    nd_set s = {0};
    size_t files = 0;
    *rows = NULL;
    *n = 0;
    kv_status st = load_all(c, &s, &files, err);
    if (st != KV_OK || !s.n) { free(s.r); return st; }
    rp_needle_row *r = malloc(s.n * sizeof *r);
    if (!r) { free(s.r); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    for (size_t i = 0; i < s.n; i++)
        r[i] = (rp_needle_row){ s.r[i].cfg, s.r[i].needle, s.r[i].ctx, s.r[i].depth, s.r[i].v[NC_TOPF], s.r[i].v[NC_TOPC] };
    free(s.r);
    *rows = r;
    *n = s.n;
    return KV_OK;
}

kv_status rp_needle_figures(rp_ctx *c, int figures, kv_error *err)
{
    nd_set s = {0};
    size_t files = 0;
    kv_status st = load_all(c, &s, &files, err);
    if (st != KV_OK || !files || !s.n) { free(s.r); return st; }
    nd_cell *cell = NULL;
    size_t n = 0;
    if ((st = cells_of(&s, &cell, &n, err)) == KV_OK && (st = write_table(c, cell, n, err)) == KV_OK && figures &&
        (st = fig_heat(c, cell, n, err)) == KV_OK)
        st = fig_retention(c, &s, err);
    free(cell); free(s.r);
    return st;
}
