/* kvreport figures: .dat data + .gp scripts from plots/ templates, rendered by gnuplot run
 * as a program (posix_spawn) inside the figures directory. See report.h for the layout.
 *
 * Figure kinds (plots/<kind>.gp): pareto (a), heatmap (b), layers (c), memory (d),
 * reliability (e), entropy (f), ranked (g), position (i). Every script = header + style.gp + <kind>.gp
 * + finish.gp with @NAME@ placeholders replaced; an unknown placeholder is an error.
 */
#include "report.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define PNG_SIZE "1200,800"
#define PDF_SIZE "6in,4in"

/* ---- growing string --------------------------------------------------------------- */

typedef struct sbuf { char *s; size_t n, cap; int oom; } sbuf;

static void sb_add(sbuf *b, const char *fmt, ...)
{
    if (b->oom) return;
    va_list ap;
    for (;;) {
        size_t room = b->cap - b->n;
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->n : NULL, room, fmt, ap);
        va_end(ap);
        if (k < 0) { b->oom = 1; return; }
        if ((size_t)k < room) { b->n += (size_t)k; return; }
        size_t nc = (b->cap + (size_t)k + 1) * 2;
        char *ns = realloc(b->s, nc);
        if (!ns) { b->oom = 1; return; }
        b->s = ns; b->cap = nc;
    }
}

/* A gnuplot single-quoted string literal (a quote is doubled). */
static void sb_quoted(sbuf *b, const char *s)
{
    sb_add(b, "'");
    for (; *s; s++) sb_add(b, *s == '\'' ? "''" : "%c", *s);
    sb_add(b, "'");
}

/* ---- templates ------------------------------------------------------------------------ */

typedef struct kv { const char *k; char *v; } kv;
typedef struct tvars { kv v[48]; size_t n; int oom; } tvars;

static void tv_set(tvars *t, const char *k, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void tv_set(tvars *t, const char *k, const char *fmt, ...)
{
    if (t->n >= sizeof t->v / sizeof t->v[0]) { t->oom = 1; return; }
    kv *e = &t->v[t->n];
    va_list ap;
    va_start(ap, fmt);
    int r = vasprintf(&e->v, fmt, ap);
    va_end(ap);
    if (r < 0) { t->oom = 1; return; }
    e->k = k;
    t->n++;
}

static void tv_free(tvars *t)
{
    for (size_t i = 0; i < t->n; i++) free(t->v[i].v);
    t->n = 0;
}

static kv_status read_template(const rp_ctx *c, const char *name, char **out, kv_error *err)
{
    char path[4608];
    snprintf(path, sizeof path, "%s/%s", c->plots_dir, name);
    FILE *f = fopen(path, "r");
    if (!f) return kv_error_set(err, KV_ERR_IO, "%s: cannot open template: %s", path, strerror(errno));
    sbuf b = {0};
    char line[4096];
    while (fgets(line, sizeof line, f)) sb_add(&b, "%s", line);
    fclose(f);
    if (b.oom || !b.s) { free(b.s); return kv_error_set(err, KV_ERR_FORMAT, "%s: empty template", path); }
    *out = b.s;
    return KV_OK;
}

static kv_status substitute(sbuf *out, const char *tpl, const char *tname, const tvars *t, kv_error *err)
{
    for (const char *p = tpl; *p;) {
        if (*p == '@') {
            const char *q = p + 1;
            while ((*q >= 'A' && *q <= 'Z') || *q == '_') q++;
            if (*q == '@' && q > p + 1) {
                size_t len = (size_t)(q - p - 1);
                size_t i;
                for (i = 0; i < t->n; i++)
                    if (strlen(t->v[i].k) == len && !strncmp(t->v[i].k, p + 1, len)) break;
                if (i == t->n)
                    return kv_error_set(err, KV_ERR_FORMAT, "plots/%s: unknown placeholder @%.*s@", tname, (int)len, p + 1);
                sb_add(out, "%s", t->v[i].v);
                p = q + 1;
                continue;
            }
        }
        sb_add(out, "%c", *p++);
    }
    return KV_OK;
}

/* ---- running gnuplot ------------------------------------------------------------------- */

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) ? -1 : (long)st.st_size;
}

static void render(rp_ctx *c, rp_figure *g, const char *figdir)
{
    char script[128], log[4800], png[4800], pdf[4800];
    snprintf(script, sizeof script, "%s.gp", g->stem);
    snprintf(log, sizeof log, "%s/%s.log", figdir, g->stem);
    snprintf(png, sizeof png, "%s/%s.png", figdir, g->stem);
    snprintf(pdf, sizeof pdf, "%s/%s.pdf", figdir, g->stem);
    if (!c->gnuplot) { snprintf(g->why, sizeof g->why, "gnuplot was not found on PATH"); return; }
    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa)) { snprintf(g->why, sizeof g->why, "cannot spawn gnuplot"); return; }
    int ok = !posix_spawn_file_actions_addchdir_np(&fa, figdir) &&
             !posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0) &&
             !posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644) &&
             !posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid;
    char *argv[] = { (char *)c->gnuplot, script, NULL };
    int rc = ok ? posix_spawn(&pid, c->gnuplot, &fa, NULL, argv, environ) : -1;
    posix_spawn_file_actions_destroy(&fa);
    if (rc) { snprintf(g->why, sizeof g->why, "cannot run %s: %s", c->gnuplot, strerror(rc > 0 ? rc : EINVAL)); return; }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && file_size(png) > 0 && file_size(pdf) > 0) {
        g->rendered = 1;
        unlink(log);
        return;
    }
    /* first line of gnuplot's complaint, for the report */
    char first[256] = "";
    FILE *lf = fopen(log, "r");
    if (lf) {
        char line[256];
        while (fgets(line, sizeof line, lf)) {
            line[strcspn(line, "\n")] = 0;
            if (line[strspn(line, " ^")]) { snprintf(first, sizeof first, "%s", line); }
        }
        fclose(lf);
    }
    char why[sizeof g->why], stem[sizeof g->stem];
    memcpy(stem, g->stem, sizeof stem);
    snprintf(why, sizeof why, "gnuplot failed (%s; see figures/%s.log)", first[0] ? first : "no output", stem);
    memcpy(g->why, why, sizeof why);
    rp_note(&c->notes, "figure %s: %s", g->stem, g->why);
}

/* ---- size presets and panel layout ------------------------------------------------------- */

#define FIG_DPI 200.0          /* PNG resolution: the PDF's layout, rasterised */
#define FIG_W_ONE 3.3          /* inches: one column of a two-column paper */
#define FIG_W_TWO 6.9          /* inches: the full text width */
#define MAX_SERIES 8           /* per panel: one colour and marker each (plots/style.gp) */
#define KEY_ROW_IN 0.15        /* one row of a 7 pt key (measured) */
#define LABEL_MAX 17           /* key labels (characters): two 7 pt key columns fit 3.3 in */
#define LABEL_WIDE 36          /* key labels in one column */
#define TITLE_MAX 34           /* panel titles (characters) at 8 pt over a 2.5 in plot */

static double fig_width(const rp_ctx *c) { return c->fig_two_col ? FIG_W_TWO : FIG_W_ONE; }

/* A grid of panels, each: title, plot area, x axis (tics + label), key rows below. */
typedef struct layout {
    int ncol, nrow, key_rows;
    double pw, ph, ml, mr, mt, plot_h, axis_h;
} layout;

static layout make_layout(const rp_ctx *c, size_t n_panels, int key_rows, int two_per_row_when_wide)
{
    layout g = { .ncol = 1, .key_rows = key_rows, .ml = 0.72, .mr = 0.12, .mt = 0.3, .axis_h = 0.45 };
    if (c->fig_two_col && two_per_row_when_wide && n_panels > 1) g.ncol = 2;
    g.nrow = (int)((n_panels + (size_t)g.ncol - 1) / (size_t)g.ncol);
    g.pw = fig_width(c) / g.ncol;
    g.plot_h = c->fig_two_col ? 1.5 : 1.25;
    g.ph = g.mt + g.plot_h + g.axis_h + key_rows * KEY_ROW_IN + (key_rows ? 0.08 : 0.02);
    return g;
}

static void layout_vars(tvars *t, const layout *g)
{
    tv_set(t, "NCOL", "%d", g->ncol);
    tv_set(t, "PW", "%.4g", g->pw);
    tv_set(t, "PH", "%.4g", g->ph);
    tv_set(t, "ML", "%.4g", g->ml);
    tv_set(t, "MR", "%.4g", g->mr);
    tv_set(t, "MT", "%.4g", g->mt);
    tv_set(t, "PLOT_H", "%.4g", g->plot_h);
    tv_set(t, "AXIS_H", "%.4g", g->axis_h);
    tv_set(t, "KEYROWS", "%d", g->key_rows > 0 ? g->key_rows : 1);
}

static double layout_height(const layout *g) { return g->nrow * g->ph; }

/* Writes figures/<g->stem>.dat (already in dat) and .gp (style.gp + <kind>.gp + finish.gp
 * with t's placeholders and the size ones), then renders; height in inches. Frees t. */
static kv_status emit_into(rp_ctx *c, rp_figure *g, const char *kind, tvars *t, const sbuf *dat,
                           double height, kv_error *err)
{
    const char *stem = g->stem;
    double w = fig_width(c);
    tv_set(t, "STEM", "%s", stem);
    tv_set(t, "W_IN", "%.4g", w);
    tv_set(t, "H_IN", "%.4g", height);
    tv_set(t, "PNG_W", "%ld", lround(w * FIG_DPI));
    tv_set(t, "PNG_H", "%ld", lround(height * FIG_DPI));
    tv_set(t, "SCALE", "%.4f", FIG_DPI / 72.0);
    tv_set(t, "DPI", "%.0f", FIG_DPI);
    if (dat->oom || t->oom) { tv_free(t); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    char figdir[4608], path[4700];
    snprintf(figdir, sizeof figdir, "%s/figures", c->dir);

    char tname[64];
    snprintf(tname, sizeof tname, "%s.gp", kind);
    const char *parts[3] = { "style.gp", tname, "finish.gp" };
    sbuf gp = {0};
    sb_add(&gp, "# %s.gp: written by kvreport from plots/%s; render with: gnuplot %s.gp\n", stem, tname, stem);
    for (int i = 0; i < 3; i++) {
        char *tpl = NULL;
        kv_status st = read_template(c, parts[i], &tpl, err);
        if (st == KV_OK) st = substitute(&gp, tpl, parts[i], t, err);
        free(tpl);
        if (st != KV_OK) { free(gp.s); tv_free(t); return st; }
    }
    tv_free(t);
    if (gp.oom) { free(gp.s); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }

    const char *what[2] = { "dat", "gp" };
    const sbuf *body[2] = { dat, &gp };
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s.%s", figdir, stem, what[i]);
        FILE *f = fopen(path, "w");
        if (!f) { free(gp.s); return kv_error_set(err, KV_ERR_IO, "%s: cannot create: %s", path, strerror(errno)); }
        if (body[i]->n) fwrite(body[i]->s, 1, body[i]->n, f);
        int bad = ferror(f), e = errno;
        if (fclose(f) && !bad) { bad = 1; e = errno; }
        if (bad) { free(gp.s); return kv_error_set(err, KV_ERR_IO, "%s: write failed: %s", path, strerror(e)); }
    }
    free(gp.s);
    g->written = 1;
    render(c, g, figdir);
    return KV_OK;
}

static kv_status emit(rp_ctx *c, const char *stem, const char *kind, const char *caption,
                      tvars *t, sbuf *dat, double height, kv_error *err)
{
    if (c->n_fig >= sizeof c->fig / sizeof c->fig[0]) { tv_free(t); return kv_error_set(err, KV_ERR_INVALID, "too many figures"); }
    rp_figure *g = &c->fig[c->n_fig++];
    memset(g, 0, sizeof *g);
    snprintf(g->stem, sizeof g->stem, "%s", stem);
    snprintf(g->caption, sizeof g->caption, "%s", caption);
    return emit_into(c, g, kind, t, dat, height, err);
}

kv_status rp_emit_figure_into(rp_ctx *c, rp_figure *g, const char *kind, const char *const *names,
                         const char *const *values, size_t nv, const char *dat, size_t dat_len,
                         double height, kv_error *err)
{
    tvars t = {0};
    for (size_t i = 0; i < nv; i++) tv_set(&t, names[i], "%s", values[i]);
    sbuf d = {0};
    if (dat_len) sb_add(&d, "%.*s", (int)dat_len, dat);
    if (d.oom) { tv_free(&t); free(d.s); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    kv_status st = emit_into(c, g, kind, &t, &d, height, err);
    free(d.s);
    return st;
}

static void skip(rp_ctx *c, const char *stem, const char *caption, const char *fmt, ...)
{
    if (c->n_fig >= sizeof c->fig / sizeof c->fig[0]) return;
    rp_figure *g = &c->fig[c->n_fig++];
    memset(g, 0, sizeof *g);
    snprintf(g->stem, sizeof g->stem, "%s", stem);
    snprintf(g->caption, sizeof g->caption, "%s", caption);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->why, sizeof g->why, fmt, ap);
    va_end(ap);
    rp_note(&c->notes, "figure %s skipped: %s", stem, g->why);
}

/* Cut buf to maxlen characters with ".." (UTF-8 safe: cuts only before a lead byte). */
static void cut_to(char *buf, size_t cap, size_t maxlen)
{
    size_t n = strlen(buf);
    if (n > maxlen && cap > maxlen) {
        size_t k = maxlen - 2;
        while (k > 0 && ((unsigned char)buf[k] & 0xC0) == 0x80) k--;
        memcpy(buf + k, "..", 3);
    }
}

/* A key label cut to LABEL_MAX characters (buffers hold more). */
static void cut_label(char *buf) { cut_to(buf, LABEL_MAX + 1, LABEL_MAX); }

static const char *metric_axis(int m)
{
    switch (m) {
    case RM_LOGIT_KL: return "logit KL (nats)";
    case RM_NLL_DELTA: return "ΔNLL (nats/token)";
    case RM_OUT_COS: return "output cosine";
    case RM_ATTN_COS: return "attention cosine";
    case RM_ATTN_KL: return "attention KL (nats)";
    case RM_MASS_RECALL: return "mass recall";
    case RM_TOP1_AGREE: return "top-1 agreement";
    case RM_OUT_REL_ERR: return "output rel. error";
    case RM_ECE_COMP: return "ECE, compressed";
    default: return res_metric_names[m];
    }
}

static const char *head_axis(int m)
{
    switch (m) {
    case RH_OUT_COS: return "output cosine";
    case RH_ATTN_COS: return "attention cosine";
    case RH_ATTN_KL: return "attention KL (nats)";
    case RH_MASS_RECALL: return "mass recall";
    case RH_OUT_REL_ERR: return "output rel. error";
    case RH_BUDGET: return "kv entries held";
    case RH_KEEP_FRAC: return "keep fraction";
    default: return res_head_metric_names[m];
    }
}

/* ---- value axes: log where values span more than two decades ----------------------------- */

/* How a metric is drawn: as is, or as 1 - value (the deficit of a cosine, recall or
 * agreement, whose interesting range is 0.9..1), linear or log. */
typedef struct axis { int deficit, log, symlog; double lo, hi, lin; size_t n_dropped; } axis;

static int deficit_metric(int m)
{
    double lo, hi;
    return !an_lower_better(m) && an_metric_bounds(m, &lo, &hi) && hi == 1;
}

/* Value and 95% interval of the mean as drawn: the bootstrap percentile interval (inside
 * the range of the data, so positive for positive data), else the t-interval. */
static void drawn(const an_stat *s, int deficit, double *v, double *lo, double *hi)
{
    double m = s->d.mean, a = m, b = m;
    if (s->has_boot) { a = s->b_lo; b = s->b_hi; }
    else if (s->d.has_ci) { a = s->d.t_lo; b = s->d.t_hi; }
    if (deficit) { double t = 1 - a; a = 1 - b; b = t; m = 1 - m; }
    *v = m; *lo = a; *hi = b;
}

/* Decides deficit/log over the means vals[0..n-1] of metric m (raw values; m < 0: plain
 * values, never a deficit). */
static axis choose_axis(int m, const double *vals, size_t n)
{
    axis a = { .deficit = 0, .log = 0 };
    for (int pass = 0; pass < 2; pass++) {
        int deficit = pass == 0 && m >= 0 && deficit_metric(m);
        if (pass == 0 && !deficit) continue;
        double pmin = INFINITY, pmax = 0;
        int neg = 0;
        for (size_t i = 0; i < n; i++) {
            double v = deficit ? 1 - vals[i] : vals[i];
            if (v < 0) neg = 1;
            else if (v > 0) { pmin = fmin(pmin, v); pmax = fmax(pmax, v); }
        }
        if (!neg && pmax > 0 && pmax / pmin > 100) { a.deficit = deficit; a.log = 1; return a; }
    }
    return a;
}

/* Values of both signs over more than two decades of magnitude (a ΔNLL: most configurations
 * cost a little, a few a lot, some gain a little): a symmetric log axis, sign(v) *
 * log10(1 + |v| / lin), linear within about lin of 0 and logarithmic beyond. lin is the
 * smallest nonzero magnitude rounded down to a power of 10, but at most 4 decades below the
 * largest, so that the small ones stay apart from 0 and the axis keeps about 4 labelled
 * decades per sign. Unlike |v| on a log axis it keeps the sign and order of the values
 * and their intervals; unlike a ratio it stays in the metric's own unit. */
static void choose_symlog(axis *a, const double *vals, size_t n)
{
    double amin = INFINITY, amax = 0;
    int neg = 0;
    for (size_t i = 0; i < n; i++) {
        double v = fabs(vals[i]);
        if (vals[i] < 0) neg = 1;
        if (v > 0) { amin = fmin(amin, v); amax = fmax(amax, v); }
    }
    if (a->log || !neg || !(amax > 0) || amax / amin <= 100) return;
    a->symlog = 1;
    a->lin = pow(10, floor(log10(fmax(amin, amax * 1e-4))));
}

static double symlog_of(double v, double lin) { return (v < 0 ? -1 : 1) * log10(1 + fabs(v) / lin); }
static double symlog_inv(double y, double lin) { return (y < 0 ? -1 : 1) * lin * (pow(10, fabs(y)) - 1); }

/* A symmetric log axis (choose_symlog) over the drawn lows and highs: gnuplot's nonlinear
 * axis with tics at 0 and +-lin * 10^k. */
static void symlog_range(axis *a, double lo, double hi, tvars *t, const char *name)
{
    double tlo = symlog_of(fmin(lo, 0), a->lin), thi = symlog_of(fmax(hi, 0), a->lin);
    double pad = (thi - tlo) * 0.06;
    a->lo = symlog_inv(tlo - pad, a->lin);
    a->hi = symlog_inv(thi + pad, a->lin);
    sbuf b = {0};
    sb_add(&b, "unset logscale %s\nKV_LIN = %.6g\nset nonlinear %s via (%s < 0 ? -1 : 1) * log10(1 + abs(%s) / KV_LIN) "
           "inverse (%s < 0 ? -1 : 1) * KV_LIN * (10**abs(%s) - 1)\nset %stics (", name, a->lin, name, name, name, name, name, name);
    int k0 = (int)lround(log10(a->lin));
    int kmax = (int)floor(log10(fmax(fabs(a->lo), fabs(a->hi))) + 1e-9);
    int step = (kmax - k0 + 1 + 3) / 4;   /* at most about 4 labelled decades per sign */
    if (step < 1) step = 1;
    sb_add(&b, "'0' 0");
    for (int sg = -1; sg <= 1; sg += 2)     /* down from the largest; +-lin itself would sit on the 0 label */
        for (int k = kmax; k > k0; k -= step) {
            double v = sg * pow(10, k);
            if (v < a->lo || v > a->hi) continue;
            sb_add(&b, ", '%s10^{%d}' %.6g", sg < 0 ? "−" : "", k, v);
        }
    sb_add(&b, ")\nunset m%stics\n", name);
    tv_set(t, name[0] == 'x' ? "XAXIS" : "YAXIS", "%s", b.s ? b.s : "");
    tv_set(t, name[0] == 'x' ? "XRANGE" : "YRANGE", "%.6g:%.6g", a->lo, a->hi);
    free(b.s);
}

/* Range and tics of a value axis from drawn lows and highs. */
static void axis_range(axis *a, double lo, double hi, tvars *t, const char *name)
{
    sbuf b = {0};
    if (a->log) {
        double l = pow(10, floor(log10(lo))), h = pow(10, ceil(log10(hi)));
        if (h <= l) h = l * 10;
        int decades = (int)lround(log10(h / l));
        int step = (decades + 3) / 4;     /* at most about 4 labelled decades */
        a->lo = l; a->hi = h;
        sb_add(&b, "set logscale %s 10\nset format %s '10^{%%L}'\nset %stics %g\nset m%stics %s\n", name, name, name,
               pow(10, step), name, step == 1 ? "10" : "1");
    } else {
        if (!(hi > lo)) { double d = fabs(lo) > 0 ? fabs(lo) * 0.05 : 1e-9; lo -= d; hi += d; }
        double pad = (hi - lo) * 0.06;
        lo -= pad; hi += pad;
        double raw = (hi - lo) / 4, mag = pow(10, floor(log10(raw))), f = raw / mag;
        double step = (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
        a->lo = lo; a->hi = hi;
        sb_add(&b, "unset logscale %s\nset format %s '%%g'\nset %stics %.6g\nset m%stics 2\n", name, name, name, step, name);
    }
    tv_set(t, name[0] == 'x' ? "XAXIS" : "YAXIS", "%s", b.s ? b.s : "");
    tv_set(t, name[0] == 'x' ? "XRANGE" : "YRANGE", "%.6g:%.6g", a->lo, a->hi);
    free(b.s);
}

/* ---- configuration parameters: which one a line varies ----------------------------------- */

#define MAX_PARAMS 48

typedef struct params { size_t n; char key[MAX_PARAMS][40]; char val[MAX_PARAMS][40]; } params;

/* "knorm keep=0.5 + quant kbits=4" -> keys "keep", "2:kbits" (a composition's later stages
 * are told apart by their position). */
static void parse_params(const char *config, params *p)
{
    p->n = 0;
    int stage = 1;
    const char *q = config;
    while (*q) {
        while (*q == ' ') q++;
        const char *e = q;
        while (*e && *e != ' ') e++;
        size_t len = (size_t)(e - q);
        if (len == 1 && *q == '+') stage++;
        const char *eq = memchr(q, '=', len);
        if (eq && p->n < MAX_PARAMS) {
            size_t kl = (size_t)(eq - q), vl = len - kl - 1;
            if (stage > 1) snprintf(p->key[p->n], sizeof p->key[0], "%d:%.*s", stage, (int)(kl > 30 ? 30 : kl), q);
            else snprintf(p->key[p->n], sizeof p->key[0], "%.*s", (int)(kl > 38 ? 38 : kl), q);
            snprintf(p->val[p->n], sizeof p->val[0], "%.*s", (int)(vl > 38 ? 38 : vl), eq + 1);
            p->n++;
        }
        q = e;
    }
}

/* A parameter name as the key shows it: initials of snake_case parts ("rank_v" -> "rv",
 * "latent_bits" -> "lb"), else the first 3 letters of a name longer than 6 ("residual" ->
 * "res"); a composition's stage prefix ("2:") is kept. */
static void abbrev_key(const char *k, char *out, size_t cap)
{
    size_t n = 0;
    const char *colon = strchr(k, ':');
    if (colon) { for (const char *q = k; q <= colon && n + 1 < cap; q++) out[n++] = *q; k = colon + 1; }
    if (strchr(k, '_')) {
        for (const char *q = k; *q && n + 1 < cap; q++)
            if (q == k || q[-1] == '_') out[n++] = *q;
    } else {
        size_t l = strlen(k), take = l > 6 ? 3 : l;
        for (size_t i = 0; i < take && n + 1 < cap; i++) out[n++] = k[i];
    }
    out[n] = 0;
}

static const char *param_get(const params *p, const char *key)
{
    for (size_t i = 0; i < p->n; i++) if (!strcmp(p->key[i], key)) return p->val[i];
    return "";
}

/* Short label: a name the user gave the configuration (config_display_name), else the family and the parameters that vary within it over the results (names
 * shortened as in the keys: "streaming keep=0.25 rei=1"); the family alone when it has one
 * configuration. Cut to `maxlen` characters. */
static void short_label_n(const rp_ctx *c, const res_config *cf, char *buf, size_t cap, size_t maxlen)
{
    const res_set *rs = c->rs;
    const char *shown = config_display_name(cf);
    if (strcmp(shown, cf->config)) {      /* a name the user gave the configuration wins */
        snprintf(buf, cap, "%s", shown);
        cut_to(buf, cap, maxlen);
        return;
    }
    params me, other;
    parse_params(cf->config, &me);
    int varied[MAX_PARAMS] = {0}, any_other = 0;
    for (size_t i = 0; i < rs->n_configs; i++) {
        const res_config *o = &rs->configs[i];
        if (o == cf || strcmp(o->family, cf->family)) continue;
        any_other = 1;
        parse_params(o->config, &other);
        for (size_t k = 0; k < me.n; k++) varied[k] |= strcmp(param_get(&other, me.key[k]), me.val[k]) != 0;
    }
    if (!any_other) snprintf(buf, cap, "%s", strcmp(cf->family, "full") ? cf->family : config_display_name(cf));
    else {
        sbuf b = {0};
        sb_add(&b, "%s", cf->family);
        for (size_t k = 0; k < me.n; k++)
            if (varied[k]) {
                char ak[40];
                abbrev_key(me.key[k], ak, sizeof ak);
                sb_add(&b, " %s=%s", ak, me.val[k]);
            }
        snprintf(buf, cap, "%s", b.s ? b.s : cf->family);
        free(b.s);
    }
    cut_to(buf, cap, maxlen);
}

/* A line of a figure: configurations of one family that differ in one parameter only. */
typedef struct series {
    size_t fam;                    /* family index */
    size_t *rows, n;               /* configuration indices, sorted by ratio */
    char label[96];                /* other varied parameters ("vbits=2 res=32"), may be empty */
    char vals[96], keys[96];       /* the same as "2/32" under the heading "vbits/res" */
    char along[40];                /* the parameter the line varies, "" for one point */
} series;

typedef struct series_set { series *s; size_t n; const char *fam[256]; size_t nf; char fam_along[256][40]; } series_set;

static void series_free(series_set *ss)
{
    for (size_t i = 0; i < ss->n; i++) free(ss->s[i].rows);
    free(ss->s);
    ss->s = NULL; ss->n = 0;
}

static int by_ratio_ctx(const void *a, const void *b, void *arg)
{
    const an_result *an = arg;
    double x = an_get(an, *(const size_t *)a, RM_RATIO)->d.mean, y = an_get(an, *(const size_t *)b, RM_RATIO)->d.mean;
    if (x != y) return x < y ? -1 : 1;
    return (*(const size_t *)a > *(const size_t *)b) - (*(const size_t *)a < *(const size_t *)b);
}

/* Splits the configurations ok[0..n-1] into series: per family, the varied parameter that
 * leaves the fewest series runs along each line (ties: the first in the config string); the
 * other varied parameters make separate series. */
static kv_status build_series(const rp_ctx *c, const size_t *ok, size_t n, series_set *ss, kv_error *err)
{
    const res_set *rs = c->rs;
    memset(ss, 0, sizeof *ss);
    params *pp = malloc((n + 1) * sizeof *pp);
    size_t *mem = malloc((n + 1) * sizeof *mem);
    ss->s = calloc(n + 1, sizeof *ss->s);
    if (!pp || !mem || !ss->s) { free(pp); free(mem); free(ss->s); ss->s = NULL; return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    for (size_t k = 0; k < n; k++) parse_params(rs->configs[ok[k]].config, &pp[k]);
    for (size_t k = 0; k < n; k++) {
        const char *f = rs->configs[ok[k]].family;
        size_t j;
        for (j = 0; j < ss->nf; j++) if (!strcmp(ss->fam[j], f)) break;
        if (j == ss->nf && ss->nf < 256) ss->fam[ss->nf++] = f;
    }
    for (size_t j = 0; j < ss->nf; j++) {
        size_t nm = 0;
        for (size_t k = 0; k < n; k++) if (!strcmp(rs->configs[ok[k]].family, ss->fam[j])) mem[nm++] = k;
        /* varied keys, in order of first appearance */
        const char *vk[MAX_PARAMS];
        size_t nv = 0;
        for (size_t a = 0; a < nm; a++)
            for (size_t i = 0; i < pp[mem[a]].n; i++) {
                const char *key = pp[mem[a]].key[i];
                size_t z;
                for (z = 0; z < nv; z++) if (!strcmp(vk[z], key)) break;
                if (z < nv || nv == MAX_PARAMS) continue;
                int varies = 0;
                for (size_t b = 0; b < nm && !varies; b++) varies = strcmp(param_get(&pp[mem[b]], key), pp[mem[a]].val[i]) != 0;
                if (varies) vk[nv++] = key;
            }
        /* the line parameter: fewest groups by the other varied keys */
        long best = -1;
        size_t best_groups = (size_t)-1;
        for (size_t z = 0; z < nv; z++) {
            size_t groups = 0;
            for (size_t a = 0; a < nm; a++) {
                int seen = 0;
                for (size_t b = 0; b < a && !seen; b++) {
                    int same = 1;
                    for (size_t y = 0; y < nv && same; y++)
                        if (y != z) same = !strcmp(param_get(&pp[mem[a]], vk[y]), param_get(&pp[mem[b]], vk[y]));
                    seen = same;
                }
                groups += !seen;
            }
            if (groups < best_groups) { best_groups = groups; best = (long)z; }
        }
        snprintf(ss->fam_along[j], sizeof ss->fam_along[j], "%s", best >= 0 ? vk[best] : "");
        /* group */
        size_t first_series = ss->n;
        for (size_t a = 0; a < nm; a++) {
            size_t sidx;
            for (sidx = first_series; sidx < ss->n; sidx++) {
                const params *r = &pp[ss->s[sidx].rows[0]];   /* rows hold indices into ok[] until sorted */
                int same = 1;
                for (size_t y = 0; y < nv && same; y++)
                    if ((long)y != best) same = !strcmp(param_get(&pp[mem[a]], vk[y]), param_get(r, vk[y]));
                if (same) break;
            }
            if (sidx == ss->n) {
                series *se = &ss->s[ss->n++];
                se->fam = j;
                se->rows = malloc(nm * sizeof *se->rows);
                if (!se->rows) { free(pp); free(mem); series_free(ss); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
                sbuf lab = {0}, vl = {0}, kl = {0};
                for (size_t y = 0; y < nv; y++)
                    if ((long)y != best) {
                        char ak[40];
                        abbrev_key(vk[y], ak, sizeof ak);
                        sb_add(&lab, "%s%s=%s", lab.n ? " " : "", ak, param_get(&pp[mem[a]], vk[y]));
                        sb_add(&vl, "%s%s", vl.n ? "/" : "", param_get(&pp[mem[a]], vk[y]));
                        sb_add(&kl, "%s%s", kl.n ? "/" : "", ak);
                    }
                snprintf(se->label, sizeof se->label, "%s", lab.s ? lab.s : "");
                snprintf(se->vals, sizeof se->vals, "%s", vl.s ? vl.s : "");
                snprintf(se->keys, sizeof se->keys, "%s", kl.s ? kl.s : "");
                free(lab.s); free(vl.s); free(kl.s);
            }
            ss->s[sidx].rows[ss->s[sidx].n++] = mem[a];   /* index into ok[] for now */
        }
        for (size_t sidx = first_series; sidx < ss->n; sidx++) {
            series *se = &ss->s[sidx];
            for (size_t a = 0; a < se->n; a++) se->rows[a] = ok[se->rows[a]];
            qsort_r(se->rows, se->n, sizeof *se->rows, by_ratio_ctx, (void *)c->an);
            if (se->n > 1 && best >= 0) snprintf(se->along, sizeof se->along, "%s", vk[best]);
        }
    }
    free(pp); free(mem);
    return KV_OK;
}

/* Panels of at most MAX_SERIES series, whole families together where they fit. pfirst[p] ..
 * plast[p] (0-based, inclusive) are series indices; returns the panel count. */
static size_t pack_panels(const series_set *ss, size_t *pfirst, size_t *plast)
{
    size_t np = 0, i = 0;
    while (i < ss->n) {
        size_t start = i, cnt = 0;
        while (i < ss->n) {
            size_t fam = ss->s[i].fam, k = i;
            while (k < ss->n && ss->s[k].fam == fam) k++;
            size_t fs = k - i;
            if (cnt && cnt + fs > MAX_SERIES) break;
            if (fs > MAX_SERIES) { if (!cnt) { i += MAX_SERIES; cnt = MAX_SERIES; } break; }
            cnt += fs; i = k;
        }
        pfirst[np] = start; plast[np] = i - 1; np++;
    }
    return np;
}

/* ---- (a) Pareto fronts ----------------------------------------------------------------- */

/* b dominates a: b compresses at least as much and a's quality is not significantly better
 * (the 95% intervals of the means overlap, or b's is better), and b is strictly ahead on
 * one of the two (more compression, or significantly better quality). Differences within
 * the noise never make a configuration Pareto-optimal. */
static int dominates(const an_result *an, size_t b, size_t a, int m)
{
    double ra = an_get(an, a, RM_RATIO)->d.mean, rb = an_get(an, b, RM_RATIO)->d.mean;
    if (rb < ra) return 0;
    double va, la, ha, vb, lb, hb;
    drawn(an_get(an, a, m), 0, &va, &la, &ha);
    drawn(an_get(an, b, m), 0, &vb, &lb, &hb);
    int lower = an_lower_better(m);
    int b_sig_better = lower ? hb < la : lb > ha;
    int a_sig_better = lower ? ha < lb : la > hb;
    if (a_sig_better) return 0;
    if (rb > ra) return 1;
    return b_sig_better;
}

/* "keep: random, streaming, knorm; t: minicache": the parameter each family's lines vary. */
static void panel_title(const series_set *ss, size_t first, size_t last, char *buf, size_t cap)
{
    sbuf b = {0};
    size_t fams[MAX_SERIES], nf = 0;
    for (size_t i = first; i <= last; i++)
        if (!nf || fams[nf - 1] != ss->s[i].fam) fams[nf++] = ss->s[i].fam;
    int done[MAX_SERIES] = {0};
    for (size_t a = 0; a < nf; a++) {
        if (done[a] || !ss->fam_along[fams[a]][0]) continue;
        sb_add(&b, "%s%s: ", b.n ? "; " : "along ", ss->fam_along[fams[a]]);
        for (size_t z = a, k = 0; z < nf; z++)
            if (!done[z] && !strcmp(ss->fam_along[fams[z]], ss->fam_along[fams[a]])) {
                sb_add(&b, "%s%s", k++ ? ", " : "", ss->fam[fams[z]]);
                done[z] = 1;
            }
    }
    snprintf(buf, cap, "%s", b.s ? b.s : "single configurations");
    free(b.s);
    size_t lim = TITLE_MAX;
    if (strlen(buf) > lim && cap > lim) { size_t k = lim - 3; while (k && ((unsigned char)buf[k] & 0xC0) == 0x80) k--; memcpy(buf + k, "...", 4); }
}

/* The default Pareto figure: one panel, one line per family, for the MAX_SERIES families
 * nearest the front. A configuration's distance from the front is the number of others that
 * dominate it (0: Pareto-optimal). A family's line is its series with the most
 * Pareto-optimal points, then the fewest dominators at its best point, then on average;
 * families rank by that line's best point, then by its Pareto-optimal count. Keeps those
 * series in ss (best family first) and lists the dropped families in `rest`. */
typedef struct fam_rank { size_t series, front, mindom, sumdom, npts; } fam_rank;

static int rank_better(const fam_rank *a, const fam_rank *b)
{
    if (a->front != b->front) return a->front > b->front;
    if (a->mindom != b->mindom) return a->mindom < b->mindom;
    if (a->sumdom * b->npts != b->sumdom * a->npts) return a->sumdom * b->npts < b->sumdom * a->npts;
    return a->npts > b->npts;
}

static kv_status keep_leading(const rp_ctx *c, const size_t *ok, size_t n, int m, series_set *ss, char *rest,
                              size_t restcap, size_t *n_fam, kv_error *err)
{
    size_t nc = c->rs->n_configs;
    size_t *ndom = calloc(nc + 1, sizeof *ndom);
    fam_rank *fr = calloc(ss->nf + 1, sizeof *fr);
    size_t *order = malloc((ss->nf + 1) * sizeof *order);
    if (!ndom || !fr || !order) { free(ndom); free(fr); free(order); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    for (size_t a = 0; a < n; a++)
        for (size_t b = 0; b < n; b++) ndom[ok[a]] += b != a && dominates(c->an, ok[b], ok[a], m);
    for (size_t j = 0; j < ss->nf; j++) fr[j].series = (size_t)-1;
    for (size_t i = 0; i < ss->n; i++) {
        const series *se = &ss->s[i];
        fam_rank r = { .series = i, .mindom = (size_t)-1, .npts = se->n };
        for (size_t a = 0; a < se->n; a++) {
            size_t d = ndom[se->rows[a]];
            r.front += d == 0;
            r.sumdom += d;
            if (d < r.mindom) r.mindom = d;
        }
        if (fr[se->fam].series == (size_t)-1 || rank_better(&r, &fr[se->fam])) fr[se->fam] = r;
    }
    size_t nf = 0;
    for (size_t j = 0; j < ss->nf; j++)
        if (fr[j].series != (size_t)-1) order[nf++] = j;
    for (size_t a = 1; a < nf; a++)        /* stable insertion sort: ties keep the results' order */
        for (size_t b = a; b > 0; b--) {
            const fam_rank *x = &fr[order[b]], *y = &fr[order[b - 1]];
            int before = x->mindom != y->mindom ? x->mindom < y->mindom : x->front > y->front;
            if (!before) break;
            size_t t = order[b]; order[b] = order[b - 1]; order[b - 1] = t;
        }
    size_t keep = nf < MAX_SERIES ? nf : MAX_SERIES;
    series *ns = calloc(keep + 1, sizeof *ns);
    if (!ns) { free(ndom); free(fr); free(order); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    for (size_t k = 0; k < keep; k++) {
        ns[k] = ss->s[fr[order[k]].series];
        ss->s[fr[order[k]].series].rows = NULL;
    }
    sbuf b = {0};
    for (size_t k = keep; k < nf; k++) sb_add(&b, "%s%s", k > keep ? ", " : "", ss->fam[order[k]]);
    snprintf(rest, restcap, "%s", b.s ? b.s : "");
    free(b.s);
    series_free(ss);
    ss->s = ns;
    ss->n = keep;
    *n_fam = nf;
    free(ndom); free(fr); free(order);
    return KV_OK;
}

static kv_status fig_pareto(rp_ctx *c, int m, const char *stem, kv_error *err)
{
    const res_set *rs = c->rs;
    const an_result *an = c->an;
    size_t nc = rs->n_configs;
    char cap[1024];
    size_t *ok = malloc((nc + 1) * sizeof *ok), n = 0;
    double *vals = calloc(nc + 1, sizeof *vals);
    if (!ok || !vals) { free(ok); free(vals); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    for (size_t i = 0; i < nc; i++)
        if (an_get(an, i, m)->valid && an_get(an, i, RM_RATIO)->valid && !rs->configs[i].not_applied) {
            vals[n] = an_get(an, i, m)->d.mean;
            ok[n++] = i;
        }
    axis ax = choose_axis(m, vals, n);
    choose_symlog(&ax, vals, n);
    free(vals);
    size_t dropped = 0;
    if (ax.log) {           /* exactly 0 (or no deficit) has no place on a log axis */
        size_t w = 0;
        for (size_t k = 0; k < n; k++) {
            double v = an_get(an, ok[k], m)->d.mean;
            if ((ax.deficit ? 1 - v : v) > 0) ok[w++] = ok[k]; else dropped++;
        }
        n = w;
    }
    char scale[160] = "";
    if (ax.log) snprintf(scale, sizeof scale, ", log scale");
    else if (ax.symlog)
        snprintf(scale, sizeof scale, ", symmetric log scale: linear within %.3g of 0, logarithmic beyond, so that values of both signs "
                 "and several decades show", ax.lin);
    if (c->pareto_all)
        snprintf(cap, sizeof cap, "Quality vs compression: %s%s against the compression ratio (mean over sequences, bootstrap "
                 "95%% interval bars%s; %s is better). Each line varies one parameter of one family (named in the panel title); the other "
                 "varied parameters make separate lines (parameter names shortened in the key); at most %d lines per panel. Ringed: Pareto-optimal, where "
                 "differences count only when the 95%% intervals do not overlap.", ax.deficit ? "1 − " : "",
                 res_metric_names[m], scale, (an_lower_better(m) || ax.deficit) ? "lower" : "higher", MAX_SERIES);
    else
        snprintf(cap, sizeof cap, "Quality vs compression: %s%s against the compression ratio (mean over sequences, bootstrap "
                 "95%% interval bars%s; %s is better). One line per family, for the %d families nearest the Pareto front (fewest "
                 "configurations significantly better at no less compression): the line of the family with the most Pareto-optimal "
                 "points; the key names the family, its fixed parameters and, in brackets, the one the line varies. Ringed: drawn "
                 "points Pareto-optimal among all configurations, where differences count only when the 95%% intervals do not overlap. "
                 "kvreport --pareto-all draws every line of every family.", ax.deficit ? "1 − " : "",
                 res_metric_names[m], scale, (an_lower_better(m) || ax.deficit) ? "lower" : "higher", MAX_SERIES);
    if (!n) { free(ok); skip(c, stem, cap, "no configuration has %s (no read-out in the trace?)", res_metric_names[m]); return KV_OK; }
    series_set ss;
    kv_status st = build_series(c, ok, n, &ss, err);
    if (st) { free(ok); return st; }
    char rest[2048] = "";
    size_t n_fam = 0;
    if (!c->pareto_all && (st = keep_leading(c, ok, n, m, &ss, rest, sizeof rest, &n_fam, err))) { free(ok); series_free(&ss); return st; }
    size_t *pfirst = malloc((ss.n + 1) * sizeof *pfirst), *plast = malloc((ss.n + 1) * sizeof *plast);
    size_t *panel_of = malloc((nc + 1) * sizeof *panel_of);
    if (!pfirst || !plast || !panel_of) { free(ok); free(pfirst); free(plast); free(panel_of); series_free(&ss); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    size_t np;
    if (c->pareto_all) np = pack_panels(&ss, pfirst, plast);
    else { np = 1; pfirst[0] = 0; plast[0] = ss.n - 1; }
    memset(panel_of, 0, (nc + 1) * sizeof *panel_of);    /* 0: a configuration not drawn */

    sbuf dat = {0};
    double xmin = INFINITY, xmax = 0, ylo = INFINITY, yhi = -INFINITY, ypos_min = INFINITY;
    size_t max_in_panel = 0;
    for (size_t p = 0; p < np; p++) {
        if (plast[p] - pfirst[p] + 1 > max_in_panel) max_in_panel = plast[p] - pfirst[p] + 1;
        for (size_t i = pfirst[p]; i <= plast[p]; i++)
            for (size_t a = 0; a < ss.s[i].n; a++) panel_of[ss.s[i].rows[a]] = p + 1;
    }
    for (size_t i = 0; i < ss.n; i++) {
        const series *se = &ss.s[i];
        sb_add(&dat, "# %s%s%s%s%s: ratio value lo hi config_id\n", ss.fam[se->fam], se->label[0] ? " " : "", se->label,
               se->along[0] ? ", along " : "", se->along);
        for (size_t a = 0; a < se->n; a++) {
            double v, lo, hi, r = an_get(an, se->rows[a], RM_RATIO)->d.mean;
            drawn(an_get(an, se->rows[a], m), ax.deficit, &v, &lo, &hi);
            xmin = fmin(xmin, r); xmax = fmax(xmax, r);
            if (ax.log && !(lo > 0)) lo = v;
            ylo = fmin(ylo, lo); yhi = fmax(yhi, hi);
            if (v > 0) ypos_min = fmin(ypos_min, v);
            sb_add(&dat, "%.9g %.9g %.9g %.9g %zu\n", r, v, lo, hi, se->rows[a]);
        }
        sb_add(&dat, "\n\n");
    }
    sb_add(&dat, "# Pareto-optimal: ratio value config_id panel\n");
    size_t n_front = 0;
    for (size_t a = 0; a < n; a++) {
        int dominated = 0;
        for (size_t b = 0; b < n && !dominated; b++) if (b != a) dominated = dominates(an, ok[b], ok[a], m);
        if (dominated) continue;
        double v, lo, hi;
        drawn(an_get(an, ok[a], m), ax.deficit, &v, &lo, &hi);
        sb_add(&dat, "%.9g %.9g %zu %zu\n", an_get(an, ok[a], RM_RATIO)->d.mean, v, ok[a], panel_of[ok[a]]);
        n_front++;
    }
    if (!n_front) sb_add(&dat, "NaN NaN 0 0\n");
    free(ok);
    if (!(ylo <= yhi)) { ylo = 0; yhi = 1; }
    ax.n_dropped = dropped;
    if (dropped) {
        size_t l = strlen(cap);
        snprintf(cap + l, sizeof cap - l, " %zu configuration%s at exactly %s are not drawn on the log axis.", dropped,
                 dropped == 1 ? "" : "s", ax.deficit ? "1 (no deficit)" : "0");
    }
    if (rest[0]) {
        size_t l = strlen(cap);
        snprintf(cap + l, sizeof cap - l, " Not drawn (%zu of %zu families): %s.", n_fam - ss.n, n_fam, rest);
    }

    tvars t = {0};
    sbuf pt = {0}, pf = {0}, pl = {0}, stl = {0}, kt = {0};
    for (size_t p = 0; p < np; p++) {
        char title[256];
        if (c->pareto_all) panel_title(&ss, pfirst[p], plast[p], title, sizeof title);
        else if (n_fam > ss.n) snprintf(title, sizeof title, "%zu of %zu families, nearest the front", ss.n, n_fam);
        else snprintf(title, sizeof title, "%zu famil%s", n_fam, n_fam == 1 ? "y" : "ies");
        int one_family = c->pareto_all && ss.s[pfirst[p]].fam == ss.s[plast[p]].fam && ss.s[pfirst[p]].keys[0];
        if (p) { sb_add(&pt, ", "); sb_add(&pf, ", "); sb_add(&pl, ", "); sb_add(&kt, ", "); }
        sb_quoted(&pt, title);
        char ktitle[128];
        snprintf(ktitle, sizeof ktitle, "%s", one_family ? ss.s[pfirst[p]].keys : "");
        cut_label(ktitle);
        sb_quoted(&kt, ktitle);
        sb_add(&pf, "%zu", pfirst[p] + 1);
        sb_add(&pl, "%zu", plast[p] + 1);
        for (size_t i = pfirst[p]; i <= plast[p]; i++) {
            char lab[256];
            const series *se = &ss.s[i];
            if (one_family) snprintf(lab, sizeof lab, "%s", se->vals);
            else if (!c->pareto_all)
                snprintf(lab, sizeof lab, "%s%s%s%s%s%s", ss.fam[se->fam], se->label[0] ? " " : "", se->label,
                         se->along[0] ? " (" : "", se->along, se->along[0] ? ")" : "");
            else snprintf(lab, sizeof lab, "%s%s%s", ss.fam[se->fam], se->label[0] ? " " : "", se->label);
            if (c->pareto_all) cut_label(lab);
            else cut_to(lab, sizeof lab, LABEL_WIDE);
            if (i) sb_add(&stl, ", ");
            sb_quoted(&stl, lab);
        }
    }
    tv_set(&t, "NP", "%zu", np);
    tv_set(&t, "NS", "%zu", ss.n);
    tv_set(&t, "PTITLES", "%s", pt.s);
    tv_set(&t, "PFIRST", "%s", pf.s);
    tv_set(&t, "PLAST", "%s", pl.s);
    tv_set(&t, "STITLES", "%s", stl.s);
    tv_set(&t, "KTITLES", "%s", kt.s);
    free(pt.s); free(pf.s); free(pl.s); free(stl.s); free(kt.s);
    tv_set(&t, "YLABEL", "%s%s", ax.deficit ? "1 − " : "", metric_axis(m));
    tv_set(&t, "XRANGE", "%.6g:%.6g", xmin / 1.15, xmax * 1.15);
    if (ax.symlog) symlog_range(&ax, ylo, yhi, &t, "y");
    else axis_range(&ax, ylo, yhi, &t, "y");
    layout g;
    if (c->pareto_all) g = make_layout(c, np, (int)((max_in_panel + 1 + 1) / 2) + 1, 1);
    else {      /* one taller panel; its key in one column (two in the wide preset) with whole labels */
        size_t entries = max_in_panel + 1;
        int rows = c->fig_two_col ? (int)((entries + 1) / 2) : (int)entries;
        g = make_layout(c, 1, rows + 1, 0);
        g.plot_h = c->fig_two_col ? 2.4 : 1.9;
        g.ph = g.mt + g.plot_h + g.axis_h + g.key_rows * KEY_ROW_IN + 0.08;
    }
    if (ax.symlog) g.ml += 0.1;      /* the tic labels' minus signs */
    layout_vars(&t, &g);
    series_free(&ss);
    free(pfirst); free(plast); free(panel_of);
    st = emit(c, stem, "pareto", cap, &t, &dat, layout_height(&g), err);
    free(dat.s);
    return st;
}

/* ---- (b) heat map ------------------------------------------------------------------------ */

static kv_status fig_heatmap(rp_ctx *c, kv_error *err)
{
    const char *stem = "heatmap";
    char cap[1024];
    if (c->focus < 0) { skip(c, stem, "Layer x head heat map.", "no configuration chosen"); return KV_OK; }
    const res_config *cf = &c->rs->configs[c->focus];
    int m = c->head_metric;
    snprintf(cap, sizeof cap, "Layer x head heat map of %s for `%s` (mean over sequences and evaluated positions, from per_head.csv).",
             res_head_metric_names[m], config_display_name(cf));
    long long L = 0, H = 0;
    size_t nv = 0;
    for (size_t k = 0; k < cf->n_heads; k++) {
        if (cf->heads[k].layer + 1 > L) L = cf->heads[k].layer + 1;
        if (cf->heads[k].head + 1 > H) H = cf->heads[k].head + 1;
        if (!isnan(cf->heads[k].v[m])) nv++;
    }
    if (!nv) { skip(c, stem, cap, "per_head.csv has no %s for this configuration", res_head_metric_names[m]); return KV_OK; }
    sbuf dat = {0};
    double lo = INFINITY, hi = -INFINITY;
    sb_add(&dat, "# head layer %s\n", res_head_metric_names[m]);
    long long prev = -1;
    for (size_t k = 0; k < cf->n_heads; k++) {
        const res_head *h = &cf->heads[k];
        if (isnan(h->v[m])) continue;
        if (prev >= 0 && h->layer != prev) sb_add(&dat, "\n");
        prev = h->layer;
        sb_add(&dat, "%lld %lld %.9g\n", h->head, h->layer, h->v[m]);
        lo = fmin(lo, h->v[m]); hi = fmax(hi, h->v[m]);
    }
    if (hi <= lo) { hi = lo + (lo != 0 ? fabs(lo) * 1e-6 : 1e-12); }
    char lab[128];
    short_label_n(c, cf, lab, sizeof lab, TITLE_MAX);
    tvars t = {0};
    tv_set(&t, "TITLE", "%s", lab);
    tv_set(&t, "CBLABEL", "%s", head_axis(m));
    tv_set(&t, "XMAX", "%.1f", (double)H - 0.5);
    tv_set(&t, "YMAX", "%.1f", (double)L - 0.5);
    tv_set(&t, "XTIC", "%lld", H > 8 ? (H + 3) / 4 : 1);
    tv_set(&t, "YTIC", "%lld", L > 8 ? (L + 3) / 4 : 1);
    tv_set(&t, "CBRANGE", "%.9g:%.9g", lo, hi);
    kv_status st = emit(c, stem, "heatmap", cap, &t, &dat, c->fig_two_col ? 3.0 : 2.4, err);
    free(dat.s);
    return st;
}

/* ---- selection for multi-series figures: baseline/full + matched-compression configs ---- */

static size_t series_select(rp_ctx *c, size_t *idx, size_t cap)
{
    size_t n = 0;
    long full = an_find_full(c->rs);
    if (full >= 0) idx[n++] = (size_t)full;
    double t;
    size_t m = rp_matched(c, idx + n, &t);
    n += m;
    return n < cap ? n : cap;
}

/* Series with exactly the same values as an earlier one are drawn once, their names listed
 * in the caption ("identical: ..."). */
static int same_vec(const double *a, const double *b, size_t n)
{
    for (size_t i = 0; i < n; i++) if (!(a[i] == b[i]) && !(isnan(a[i]) && isnan(b[i]))) return 0;
    return 1;
}

static void append_identical(char *cap, size_t capsz, const char *kept, const char *dup, int *started)
{
    size_t l = strlen(cap);
    if (l + 8 >= capsz) return;
    snprintf(cap + l, capsz - l, "%s`%s` = `%s`", *started ? "; " : " Drawn once (identical values): ", dup, kept);
    *started = 1;
}

static void end_identical(char *cap, size_t capsz, int started)
{
    size_t l = strlen(cap);
    if (started && l + 2 < capsz) snprintf(cap + l, capsz - l, ".");
}

/* ---- (c) per-layer budgets and metric profile ------------------------------------------ */

static kv_status fig_layers(rp_ctx *c, int m, const char *stem, kv_error *err)
{
    const res_set *rs = c->rs;
    char cap[1024];
    snprintf(cap, sizeof cap, m == RH_BUDGET
             ? "Per-layer budgets: mean kv entries held per head at the evaluated positions, per layer, for the full cache and the best configurations at matched compression (at most 8 lines; PyramidKV-style allocations show as slopes)."
             : "Per-layer profile of %s (mean over heads) for the full cache and the best configurations at matched compression (at most 8 lines).",
             res_head_metric_names[m]);
    size_t *idx = malloc((rs->n_configs + 1) * sizeof *idx);
    long long L = 0;
    for (size_t i = 0; i < rs->n_configs; i++)
        for (size_t k = 0; k < rs->configs[i].n_heads; k++) if (rs->configs[i].heads[k].layer + 1 > L) L = rs->configs[i].heads[k].layer + 1;
    double *vec = malloc(((size_t)L * (MAX_SERIES + 1) + 1) * sizeof *vec);
    if (!idx || !vec) { free(idx); free(vec); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    size_t ns = series_select(c, idx, rs->n_configs);
    sbuf dat = {0}, titles = {0};
    size_t nser = 0, longest = 0;
    size_t kept[MAX_SERIES];
    int ident = 0;
    double lo = INFINITY, hi = -INFINITY;
    for (size_t s = 0; s < ns && nser < MAX_SERIES; s++) {
        const res_config *cf = &rs->configs[idx[s]];
        double *v = vec + nser * (size_t)L;
        int any = 0;
        for (long long l = 0; l < L; l++) {
            double sum = 0; size_t cnt = 0;
            for (size_t k = 0; k < cf->n_heads; k++)
                if (cf->heads[k].layer == l && !isnan(cf->heads[k].v[m])) { sum += cf->heads[k].v[m]; cnt++; }
            v[l] = cnt ? sum / (double)cnt : NAN;
            any |= cnt > 0;
        }
        if (!any) continue;
        size_t d;
        for (d = 0; d < nser; d++) if (same_vec(vec + d * (size_t)L, v, (size_t)L)) break;
        if (d < nser) { append_identical(cap, sizeof cap, config_display_name(&rs->configs[kept[d]]), config_display_name(cf), &ident); continue; }
        sb_add(&dat, "# %s: layer mean_over_heads(%s)\n", config_display_name(cf), res_head_metric_names[m]);
        for (long long l = 0; l < L; l++)
            if (!isnan(v[l])) { sb_add(&dat, "%lld %.9g\n", l, v[l]); lo = fmin(lo, v[l]); hi = fmax(hi, v[l]); }
        sb_add(&dat, "\n\n");
        char lab[128];
        short_label_n(c, cf, lab, sizeof lab, LABEL_WIDE);
        if (strlen(lab) > longest) longest = strlen(lab);
        if (nser) sb_add(&titles, ", ");
        sb_quoted(&titles, lab);
        kept[nser++] = idx[s];
    }
    end_identical(cap, sizeof cap, ident);
    free(idx); free(vec);
    kv_status st = KV_OK;
    if (!nser) skip(c, stem, cap, "per_head.csv has no %s for the selected configurations", res_head_metric_names[m]);
    else {
        tvars t = {0};
        tv_set(&t, "N", "%zu", nser);
        tv_set(&t, "TITLES", "%s", titles.s);
        tv_set(&t, "TITLE", m == RH_BUDGET ? "Per-layer kv budget" : "Per-layer %s", res_head_metric_names[m]);
        tv_set(&t, "YLABEL", "%s", head_axis(m));
        tv_set(&t, "XTIC", "%lld", L > 8 ? (L + 3) / 4 : 1);
        tv_set(&t, "XRANGE", "%.1f:%.1f", -0.3, (double)L - 0.7);
        double vals[2] = { lo, hi };
        axis ax = choose_axis(-1, vals, 2);     /* plain values: log only if positive over 2 decades */
        axis_range(&ax, lo, hi, &t, "y");
        /* two key columns when the labels fit them, else one column of longer labels */
        layout g = make_layout(c, 1, longest <= LABEL_MAX ? (int)(nser + 1) / 2 : (int)nser, 0);
        layout_vars(&t, &g);
        st = emit(c, stem, "layers", cap, &t, &dat, layout_height(&g), err);
    }
    free(dat.s); free(titles.s);
    return st;
}

/* ---- (i) quality vs decode position ------------------------------------------------------- */

#define POS_BINS 16     /* more offsets than this are averaged in bins of equal width: 8 lines stay apart */

/* per_pos.csv's column for the primary metric: output cosine or attention KL when that is
 * the metric, else the logit KL when the results have it, else the attention KL. */
static int pos_metric(const rp_ctx *c, int *col)
{
    int have_ro = 0;
    for (size_t i = 0; i < c->rs->n_configs && !have_ro; i++)
        for (size_t k = 0; k < c->rs->configs[i].n_pos && !have_ro; k++) have_ro = !isnan(c->rs->configs[i].pos[k].logit_kl);
    if (c->metric == RM_OUT_COS) *col = 1;
    else if (c->metric == RM_ATTN_KL || !have_ro) *col = 0;
    else *col = 2;
    return *col == 0 ? RM_ATTN_KL : *col == 1 ? RM_OUT_COS : RM_LOGIT_KL;
}

static double pos_value(const res_pos *p, int col) { return col == 0 ? p->attn_kl : col == 1 ? p->out_cos : p->logit_kl; }

static kv_status fig_position(rp_ctx *c, kv_error *err)
{
    const char *stem = "position";
    const res_set *rs = c->rs;
    int col;
    int m = pos_metric(c, &col);
    int deficit = m == RM_OUT_COS;
    char cap[1024];
    size_t *idx = malloc((rs->n_configs + 1) * sizeof *idx);
    if (!idx) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    double target;
    size_t n = rp_matched(c, idx, &target), nser = 0, longest = 0, kept[MAX_SERIES];
    long long maxoff = 0;
    for (size_t k = 0; k < n; k++) {       /* the best (ranked order) with per-position rows */
        const res_config *cf = &rs->configs[idx[k]];
        if (!cf->n_pos || nser == MAX_SERIES) continue;
        kept[nser++] = idx[k];
        if (cf->pos[cf->n_pos - 1].offset > maxoff) maxoff = cf->pos[cf->n_pos - 1].offset;
    }
    free(idx);
    long long width = maxoff + 1 > POS_BINS ? (maxoff + POS_BINS) / POS_BINS : 1;
    snprintf(cap, sizeof cap, "Quality vs decode position: %s%s at each decode offset from the prompt end (mean over layers, "
             "query heads and sequences; per_pos.csv) for the best configuration of each family at matched compression "
             "(nearest %.3g×, at most %d, as in the ranked figure)%s; %s is better.", deficit ? "1 − " : "", res_metric_names[m],
             target, MAX_SERIES, width > 1 ? "; offsets averaged in bins of equal width (weighted by sequences)" : "",
             "lower");
    if (!nser) { skip(c, stem, cap, "no per_pos.csv rows for the configurations at matched compression (results of an older kvreplay, or several directories)"); return KV_OK; }
    size_t nb = (size_t)(maxoff / width + 1);
    double *v = malloc((nser * nb + 1) * sizeof *v), *xs = malloc((nser * nb + 1) * sizeof *xs);
    if (!v || !xs) { free(v); free(xs); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    for (size_t s = 0; s < nser; s++) {
        const res_config *cf = &rs->configs[kept[s]];
        for (size_t b = 0; b < nb; b++) {
            double sw = 0, sv = 0, sx = 0;
            for (size_t k = 0; k < cf->n_pos; k++) {
                const res_pos *p = &cf->pos[k];
                double x = pos_value(p, col);
                if ((size_t)(p->offset / width) != b || isnan(x)) continue;
                sw += (double)p->n_seq; sv += (double)p->n_seq * (deficit ? 1 - x : x); sx += (double)p->n_seq * (double)p->offset;
            }
            v[s * nb + b] = sw > 0 ? sv / sw : NAN;
            xs[s * nb + b] = sw > 0 ? sx / sw : NAN;
        }
    }
    double *all = malloc((nser * nb + 1) * sizeof *all);
    size_t na = 0;
    if (!all) { free(v); free(xs); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    for (size_t i = 0; i < nser * nb; i++) if (!isnan(v[i])) all[na++] = v[i];
    axis ax = choose_axis(-1, all, na);     /* values as drawn (1 − cosine already) */
    free(all);
    sbuf dat = {0}, titles = {0};
    double lo = INFINITY, hi = -INFINITY;
    size_t dropped = 0;
    for (size_t s = 0; s < nser; s++) {
        const res_config *cf = &rs->configs[kept[s]];
        sb_add(&dat, "# %s: offset %s%s n_seq\n", config_display_name(cf), deficit ? "1-" : "", res_metric_names[m]);
        for (size_t b = 0; b < nb; b++) {
            double y = v[s * nb + b];
            if (isnan(y)) continue;
            if (ax.log && !(y > 0)) { dropped++; continue; }
            lo = fmin(lo, y); hi = fmax(hi, y);
            sb_add(&dat, "%.9g %.9g\n", xs[s * nb + b], y);
        }
        sb_add(&dat, "\n\n");
        char lab[128];
        short_label_n(c, cf, lab, sizeof lab, LABEL_WIDE);
        if (strlen(lab) > longest) longest = strlen(lab);
        if (s) sb_add(&titles, ", ");
        sb_quoted(&titles, lab);
    }
    free(v); free(xs);
    if (dropped) {
        size_t l = strlen(cap);
        snprintf(cap + l, sizeof cap - l, " %zu point%s at exactly 0 not drawn on the log axis.", dropped, dropped == 1 ? "" : "s");
    }
    if (!(lo <= hi)) { lo = 0; hi = 1; }
    tvars t = {0};
    tv_set(&t, "N", "%zu", nser);
    tv_set(&t, "TITLES", "%s", titles.s);
    tv_set(&t, "TITLE", "%s%s by decode position", deficit ? "1 − " : "", res_metric_names[m]);
    tv_set(&t, "YLABEL", "%s%s", deficit ? "1 − " : "", metric_axis(m));
    tv_set(&t, "XRANGE", "%.1f:%.1f", -0.5, (double)maxoff + 0.5);
    axis_range(&ax, lo, hi, &t, "y");
    layout g = make_layout(c, 1, longest <= LABEL_MAX ? (int)(nser + 1) / 2 : (int)nser, 0);
    layout_vars(&t, &g);
    kv_status st = emit(c, stem, "position", cap, &t, &dat, layout_height(&g), err);
    free(dat.s); free(titles.s);
    return st;
}

/* ---- (d) memory vs context ------------------------------------------------------------- */

static kv_status fig_memory(rp_ctx *c, kv_error *err)
{
    const char *stem = "memory";
    const res_set *rs = c->rs;
    const char *cap = "KV-cache memory against context length for the configurations with a fixed budget (budget_kind = "
                      "budget), which saturate at it, and the full cache: measured bytes per held token (kv_bytes over "
                      "the entries held at the last evaluated position, mean over sequences) times the entries held.";
    if (!(c->bytes_per_token > 0)) { skip(c, stem, cap, "the token count needs the trace's dimensions: pass --trace TRACE"); return KV_OK; }
    size_t *idx = malloc((rs->n_configs + 1) * sizeof *idx);
    if (!idx) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    /* the full cache and every fixed-budget configuration: the others are the full cache's
     * line divided by their ratio (tables/summary), nothing a figure adds */
    size_t ns = 0, n_sat = 0;
    long full = an_find_full(rs);
    if (full >= 0) idx[ns++] = (size_t)full;
    for (size_t i = 0; i < rs->n_configs && ns < MAX_SERIES; i++) {
        const res_config *cf = &rs->configs[i];
        if ((long)i != full && !strcmp(cf->budget_kind, "budget") && !isnan(cf->budget_value) && cf->budget_value > 0) { idx[ns++] = i; n_sat++; }
    }
    if (!n_sat) {
        free(idx);
        skip(c, stem, cap, "no configuration has a fixed budget (budget_kind = budget): each one's memory is the full cache's divided by its ratio (tables/summary)");
        return KV_OK;
    }
    double tmax = 0;
    for (size_t s = 0; s < ns; s++) {
        const res_config *cf = &rs->configs[idx[s]];
        for (size_t k = 0; k < cf->n_seqs; k++)
            if (!isnan(cf->seqs[k].v[RM_FULL_BYTES])) tmax = fmax(tmax, cf->seqs[k].v[RM_FULL_BYTES] / c->bytes_per_token);
    }
    double xmax = fmax(4096, pow(2, ceil(log2(fmax(tmax, 1) * 8))));
    sbuf dat = {0}, titles = {0};
    size_t nser = 0, longest = 0;
    for (size_t s = 0; s < ns; s++) {
        const res_config *cf = &rs->configs[idx[s]];
        double bpt = 0; size_t cnt = 0;
        for (size_t k = 0; k < cf->n_seqs; k++) {
            double kb = cf->seqs[k].v[RM_KV_BYTES], fb = cf->seqs[k].v[RM_FULL_BYTES];
            if (isnan(kb) || isnan(fb) || fb <= 0) continue;
            double ctx = fb / c->bytes_per_token;
            double held = ctx;
            if (!strcmp(cf->budget_kind, "budget") && !isnan(cf->budget_value) && cf->budget_value < ctx) held = cf->budget_value;
            bpt += kb / held; cnt++;
        }
        if (!cnt) continue;
        bpt /= (double)cnt;
        int sat = !strcmp(cf->budget_kind, "budget") && !isnan(cf->budget_value) && cf->budget_value > 0;
        sb_add(&dat, "# %s: context_tokens MiB (%.9g bytes per held token%s)\n", config_display_name(cf), bpt, sat ? ", saturating at the budget" : "");
        for (int p = 0; p <= 64; p++) {
            double x = xmax * p / 64;
            if (sat && x > cf->budget_value && x - xmax / 64 < cf->budget_value)
                sb_add(&dat, "%.9g %.9g\n", cf->budget_value, cf->budget_value * bpt / 1048576.0);
            double held = sat ? fmin(x, cf->budget_value) : x;
            sb_add(&dat, "%.9g %.9g\n", x, held * bpt / 1048576.0);
        }
        sb_add(&dat, "\n\n");
        char lab[128];
        short_label_n(c, cf, lab, sizeof lab, LABEL_WIDE);
        if (strlen(lab) > longest) longest = strlen(lab);
        if (nser++) sb_add(&titles, ", ");
        sb_quoted(&titles, lab);
    }
    free(idx);
    kv_status st = KV_OK;
    if (!nser) skip(c, stem, cap, "no configuration has kv_bytes");
    else {
        tvars t = {0};
        tv_set(&t, "N", "%zu", nser);
        tv_set(&t, "TITLES", "%s", titles.s);
        tv_set(&t, "TITLE", "KV-cache memory (full: %.9g B/token)", c->bytes_per_token);
        tv_set(&t, "XMAX", "%.9g", xmax);
        /* two key columns when the labels fit them, else one column of longer labels */
        layout g = make_layout(c, 1, longest <= LABEL_MAX ? (int)(nser + 1) / 2 : (int)nser, 0);
        layout_vars(&t, &g);
        st = emit(c, stem, "memory", cap, &t, &dat, layout_height(&g), err);
    }
    free(dat.s); free(titles.s);
    return st;
}

/* ---- (e) reliability diagram ---------------------------------------------------------------- */

static double ece_of(const res_calib_bin *b)
{
    double num = 0, tot = 0;
    for (int i = 0; i < RES_CALIB_BINS; i++) { num += fabs(b[i].acc_sum - b[i].conf_sum); tot += b[i].count; }
    return tot > 0 ? num / tot : 0;
}

static int calib_equal(const res_calib_bin *a, const res_calib_bin *b)
{
    for (int i = 0; i < RES_CALIB_BINS; i++)
        if (a[i].count != b[i].count || a[i].conf_sum != b[i].conf_sum || a[i].acc_sum != b[i].acc_sum) return 0;
    return 1;
}

/* Configurations of the reliability diagram: --reliability-config, else up to three at
 * matched compression whose predictions differ from the full cache's (the best, and those
 * whose ECE moves most), so that no curve repeats the full cache's. */
static size_t reliability_select(rp_ctx *c, size_t *sel, size_t cap)
{
    const res_set *rs = c->rs;
    size_t n = 0;
    if (c->n_rel) {
        for (size_t k = 0; k < c->n_rel && n < cap; k++)
            if (rs->configs[c->rel_configs[k]].has_calib) sel[n++] = (size_t)c->rel_configs[k];
        return n;
    }
    size_t *idx = malloc((rs->n_configs + 1) * sizeof *idx);
    if (!idx) return 0;
    double t;
    size_t m = rp_matched(c, idx, &t), nd = 0;
    for (size_t k = 0; k < m; k++) {
        const res_config *cf = &rs->configs[idx[k]];
        if (cf->has_calib && !calib_equal(cf->calib[0], cf->calib[1])) idx[nd++] = idx[k];
    }
    if (nd) sel[n++] = idx[0];                /* best at matched compression */
    while (n < cap && n < nd) {               /* then the largest ECE changes */
        size_t best = (size_t)-1;
        double bd = -1;
        for (size_t k = 1; k < nd; k++) {
            int used = 0;
            for (size_t z = 0; z < n; z++) used |= sel[z] == idx[k];
            if (used) continue;
            const res_config *cf = &rs->configs[idx[k]];
            double d = fabs(ece_of(cf->calib[1]) - ece_of(cf->calib[0]));
            if (d > bd) { bd = d; best = idx[k]; }
        }
        if (best == (size_t)-1) break;
        sel[n++] = best;
    }
    free(idx);
    return n;
}

static kv_status fig_reliability(rp_ctx *c, kv_error *err)
{
    const char *stem = "reliability";
    const res_set *rs = c->rs;
    char cap[1024];
    size_t sel[4];
    size_t ns = reliability_select(c, sel, c->n_rel ? 4 : 3);
    snprintf(cap, sizeof cap, "Reliability diagram of next-token predictions (15 equal-width confidence bins pooled over "
             "positions; ECE in the key), full cache vs %s; below, the number of predictions per bin (log scale).",
             c->n_rel ? "the configurations of --reliability-config"
                      : "configurations at matched compression whose predictions differ from the full cache's (the best, then the largest ECE changes)");
    if (!ns) { skip(c, stem, cap, "no configuration with calib.csv rows differs from the full cache (no read-out in the trace?)"); return KV_OK; }
    sbuf dat = {0}, titles = {0};
    double cmax = 1;
    for (size_t w = 0; w <= ns; w++) {
        const res_config *cf = &rs->configs[sel[w ? w - 1 : 0]];
        const res_calib_bin *b = cf->calib[w ? 1 : 0];
        char lab[160], nm[128];
        if (w) short_label_n(c, cf, nm, sizeof nm, 26); else snprintf(nm, sizeof nm, "full cache");
        snprintf(lab, sizeof lab, "%s (ECE %.3f)", nm, ece_of(b));
        sb_add(&dat, "# %s: bin mean_confidence accuracy count\n", w ? config_display_name(cf) : "full cache");
        for (int i = 0; i < RES_CALIB_BINS; i++)
            if (b[i].count > 0) {
                sb_add(&dat, "%d %.9g %.9g %.9g\n", i, b[i].conf_sum / b[i].count, b[i].acc_sum / b[i].count, b[i].count);
                cmax = fmax(cmax, b[i].count);
            }
        sb_add(&dat, "\n\n");
        if (w) sb_add(&titles, ", ");
        sb_quoted(&titles, lab);
    }
    for (size_t k = 0; k < ns; k++) {
        const res_config *cf = &rs->configs[sel[k]];
        size_t l = strlen(cap);
        snprintf(cap + l, sizeof cap - l, "%s`%s`", k ? ", " : " Configurations: ", config_display_name(cf));
    }
    { size_t l = strlen(cap); if (l + 2 < sizeof cap) snprintf(cap + l, sizeof cap - l, "."); }
    tvars t = {0};
    tv_set(&t, "N", "%zu", ns + 1);
    tv_set(&t, "TITLES", "%s", titles.s);
    tv_set(&t, "BINS", "%d", RES_CALIB_BINS);
    tv_set(&t, "CMAX", "%.6g", pow(10, ceil(log10(cmax * 1.5))));
    layout g = make_layout(c, 1, (int)ns + 2, 0);     /* one key column: labels with their ECE */
    g.plot_h = c->fig_two_col ? 2.0 : 1.7;
    g.ml = 0.72;
    g.mt = 0.12;
    double hist_h = 0.6;
    g.ph = g.mt + g.plot_h + 0.12 + hist_h + g.axis_h + g.key_rows * KEY_ROW_IN + 0.08;
    /* a diagram wider than about 2.6 in only stretches the diagonal: in a wide figure the
     * plot keeps that width and the key goes to its right */
    double plot_w = fig_width(c) - g.ml - g.mr;
    int key_right = plot_w > 2.6 + 2.4;
    if (key_right) {
        plot_w = 2.6;
        g.ph = g.mt + g.plot_h + 0.12 + hist_h + g.axis_h + 0.05;
    }
    layout_vars(&t, &g);
    tv_set(&t, "HIST_H", "%.4g", hist_h);
    tv_set(&t, "PLOT_W", "%.4g", plot_w);
    tv_set(&t, "KEY_RIGHT", "%d", key_right);
    kv_status st = emit(c, stem, "reliability", cap, &t, &dat, layout_height(&g), err);
    free(dat.s); free(titles.s);
    return st;
}

/* ---- (f) attention entropy ------------------------------------------------------------------ */

static kv_status fig_entropy(rp_ctx *c, kv_error *err)
{
    const char *stem = "entropy";
    const char *cap = "Attention entropy per layer: each point is one query head's mean entropy of its full causal "
                      "attention rows (over the trace's sequences and positions); the bar is the layer's median head; "
                      "the dashed line is the entropy of uniform attention over the visible keys.";
    const rp_entropy *e = c->entropy;
    if (!e) { skip(c, stem, cap, "%s", c->entropy_why ? c->entropy_why : "needs the trace: pass --trace TRACE"); return KV_OK; }
    sbuf dat = {0};
    sb_add(&dat, "# layer median mean_log_visible (nats)\n");
    for (size_t l = 0; l < e->n_layers; l++) sb_add(&dat, "%zu %.9g %.9g\n", l, e->q[l * 5 + 2], e->max_entropy[l]);
    sb_add(&dat, "\n\n# layer+offset head_entropy head (nats; offset spreads the heads of a layer)\n");
    for (size_t l = 0; l < e->n_layers; l++)
        for (size_t h = 0; h < e->n_heads; h++) {
            double off = e->n_heads > 1 ? -0.25 + 0.5 * (double)h / (double)(e->n_heads - 1) : 0;
            sb_add(&dat, "%.6g %.9g %zu\n", (double)l + off, e->head[l * e->n_heads + h], h);
        }
    tvars t = {0};
    tv_set(&t, "TITLE", "Attention entropy (%zu heads/layer)", e->n_heads);
    double ymax = 0;
    for (size_t l = 0; l < e->n_layers; l++) {
        ymax = fmax(ymax, e->max_entropy[l]);
        for (size_t h = 0; h < e->n_heads; h++) ymax = fmax(ymax, e->head[l * e->n_heads + h]);
    }
    double raw = fmax(ymax, 1e-6) / 4, mag = pow(10, floor(log10(raw))), f = raw / mag;
    tv_set(&t, "YTIC", "%.6g", (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag);
    tv_set(&t, "XMAX", "%.1f", (double)e->n_layers - 0.4);
    tv_set(&t, "XTIC", "%zu", e->n_layers > 8 ? (e->n_layers + 3) / 4 : 1);
    layout g = make_layout(c, 1, 2, 0);
    layout_vars(&t, &g);
    kv_status st = emit(c, stem, "entropy", cap, &t, &dat, layout_height(&g), err);
    free(dat.s);
    return st;
}

/* ---- (g) ranked dot plot at matched compression, (h) per-sequence strips -------------------- */

static kv_status fig_ranked(rp_ctx *c, int strip, kv_error *err)
{
    const char *stem = strip ? "per_seq" : "ranked";
    const res_set *rs = c->rs;
    int m = c->metric;
    size_t *idx = malloc((rs->n_configs + 2) * sizeof *idx);
    if (!idx) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    double target;
    size_t n = rp_matched(c, idx, &target);
    c->target_used = target;
    if (strip && n > 12) n = 12;
    double rlo = INFINITY, rhi = 0;
    for (size_t k = 0; k < n; k++) {
        double r = an_get(c->an, idx[k], RM_RATIO)->d.mean;
        rlo = fmin(rlo, r); rhi = fmax(rhi, r);
    }
    char cap[4096];
    if (strip)
        snprintf(cap, sizeof cap, "Per-sequence %s at matched compression (%s of the configurations of the ranked figure, "
                 "nearest %.3g×; ratios %.3g–%.3g×): one point per sequence, the bar is the mean over sequences; best first.",
                 res_metric_names[m], n == 12 ? "the 12 best" : "each", target, rlo, rhi);
    else
        snprintf(cap, sizeof cap, "Strategies at matched compression: per family the configuration whose ratio is nearest %.3g× "
                 "(within ±%.0f%%: ratios %.3g–%.3g×), ranked by %s (%s is better), mean over sequences with bootstrap 95%% "
                 "intervals.", target, (RP_MATCH_FACTOR - 1) * 100, rlo, rhi, res_metric_names[m], an_lower_better(m) ? "lower" : "higher");
    if (!n) { free(idx); skip(c, stem, cap, "no compressed configuration within ±%.0f%% of %.3g× has %s", (RP_MATCH_FACTOR - 1) * 100, target, res_metric_names[m]); return KV_OK; }
    /* the axis from every value drawn */
    size_t nv = 0;
    double *vals = NULL;
    {
        size_t cap_v = 0;
        for (size_t k = 0; k < n; k++) cap_v += strip ? rs->configs[idx[k]].n_seqs : 1;
        vals = malloc((cap_v + 1) * sizeof *vals);
        if (!vals) { free(idx); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
        for (size_t k = 0; k < n; k++) {
            if (strip) nv += res_values(&rs->configs[idx[k]], m, vals + nv, NULL);
            else vals[nv++] = an_get(c->an, idx[k], m)->d.mean;
        }
    }
    axis ax = choose_axis(m, vals, nv);
    sbuf dat = {0}, ytics = {0};
    double lo_all = INFINITY, hi_all = -INFINITY;
    size_t dropped = 0;
    sb_add(&dat, "# row value lo hi ratio config_id (row 1 = best, drawn at the top)\n");
    for (size_t k = 0; k < n; k++) {
        double v, lo, hi, r = an_get(c->an, idx[k], RM_RATIO)->d.mean;
        drawn(an_get(c->an, idx[k], m), ax.deficit, &v, &lo, &hi);
        if (ax.log && !(lo > 0)) lo = v;
        if (!ax.log || v > 0) { lo_all = fmin(lo_all, lo); hi_all = fmax(hi_all, hi); sb_add(&dat, "%zu %.9g %.9g %.9g %.9g %zu\n", k + 1, v, lo, hi, r, idx[k]); }
        char lab[128], full[160];
        short_label_n(c, &rs->configs[idx[k]], lab, sizeof lab, 20);
        snprintf(full, sizeof full, "%s %.3g×", lab, r);
        sb_add(&ytics, "%s", k ? ", " : "");
        sb_quoted(&ytics, full);
        sb_add(&ytics, " %zu", k + 1);
    }
    sb_add(&dat, "\n\n# row value seq (per sequence)\n");
    if (strip) {
        for (size_t k = 0; k < n; k++) {
            const res_config *cf = &rs->configs[idx[k]];
            size_t cnt = res_values(cf, m, vals, NULL);
            for (size_t q = 0; q < cnt; q++) {
                double v = ax.deficit ? 1 - vals[q] : vals[q];
                if (ax.log && !(v > 0)) { dropped++; continue; }
                /* a deterministic spread of the points of a row: the sequence's rank in the row */
                double off = cnt > 1 ? -0.22 + 0.44 * (double)q / (double)(cnt - 1) : 0;
                sb_add(&dat, "%.6g %.9g %zu\n", (double)(k + 1) + off, v, q);
                lo_all = fmin(lo_all, v); hi_all = fmax(hi_all, v);
            }
        }
    } else {
        sb_add(&dat, "NaN NaN 0\n");
    }
    for (size_t k = 0; k < n; k++) {
        size_t l = strlen(cap);
        snprintf(cap + l, sizeof cap - l, "%s`%s`", k ? ", " : " Rows, top to bottom: ", config_display_name(&rs->configs[idx[k]]));
    }
    { size_t l = strlen(cap); if (l + 2 < sizeof cap) snprintf(cap + l, sizeof cap - l, "."); }
    free(vals); free(idx);
    if (!(lo_all <= hi_all)) { lo_all = 0; hi_all = 1; }
    if (dropped) {
        size_t l = strlen(cap);
        snprintf(cap + l, sizeof cap - l, " %zu sequence value%s of exactly %s not drawn on the log axis.", dropped, dropped == 1 ? "" : "s",
                 ax.deficit ? "1" : "0");
    }
    tvars t = {0};
    tv_set(&t, "TITLE", "%s at %.3g–%.3g×, best first", strip ? "per sequence" : "mean, 95% CI", rlo, rhi);
    tv_set(&t, "XLABEL", "%s%s", ax.deficit ? "1 − " : "", metric_axis(m));
    tv_set(&t, "YTICS", "%s", ytics.s);
    tv_set(&t, "YRANGE", "%.1f:0.4", (double)n + 0.6);
    tv_set(&t, "STRIP", "%d", strip);
    axis_range(&ax, lo_all, hi_all, &t, "x");
    free(ytics.s);
    double w = fig_width(c);
    double ml = fmin(2.0, w * 0.6);         /* labels of 20 characters + the ratio at 7 pt */
    tv_set(&t, "ML", "%.4g", ml);
    tv_set(&t, "MR", "%.4g", 0.15);
    tv_set(&t, "MT", "%.4g", 0.28);
    tv_set(&t, "PLOT_H", "%.4g", 0.2 * (double)n + 0.1);
    tv_set(&t, "AXIS_H", "%.4g", 0.45);
    double h = 0.28 + 0.2 * (double)n + 0.1 + 0.45 + 0.05;
    kv_status st = emit(c, stem, "ranked", cap, &t, &dat, h, err);
    free(dat.s);
    return st;
}

kv_status rp_emit_figure(rp_ctx *c, const char *stem, const char *kind, const char *caption, const char *const *keys,
                         const char *const *vals, size_t nv, const char *dat, size_t datlen, double height, kv_error *err)
{
    tvars t = {0};
    if (nv > sizeof t.v / sizeof t.v[0] - 8) return kv_error_set(err, KV_ERR_INVALID, "too many template values");
    for (size_t i = 0; i < nv; i++) tv_set(&t, keys[i], "%s", vals[i]);
    if (t.oom) { tv_free(&t); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    sbuf d = {0};
    if (datlen) {
        if (!(d.s = malloc(datlen + 1))) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
        memcpy(d.s, dat, datlen);
        d.n = datlen; d.cap = datlen + 1;
    }
    kv_status st = emit(c, stem, kind, caption, &t, &d, height, err);
    free(d.s);
    return st;
}

void rp_skip_figure(rp_ctx *c, const char *stem, const char *caption, const char *why)
{
    skip(c, stem, caption, "%s", why);
}

kv_status rp_write_figures(rp_ctx *c, kv_error *err)
{
    if (c->no_figures) return rp_needle_figures(c, 0, err);     /* its table still */
    char figdir[4608];
    snprintf(figdir, sizeof figdir, "%s/figures", c->dir);
    if (mkdir(figdir, 0777) && errno != EEXIST) return kv_error_set(err, KV_ERR_IO, "%s: cannot create: %s", figdir, strerror(errno));
    if (!c->plots_dir) {
        rp_note(&c->notes, "figures skipped: the gnuplot templates (plots/) were not found; pass --plots DIR");
        return rp_needle_figures(c, 0, err);
    }
    kv_status st;
    if ((st = fig_pareto(c, RM_LOGIT_KL, "pareto_logit_kl", err))) return st;
    if ((st = fig_pareto(c, RM_NLL_DELTA, "pareto_nll_delta", err))) return st;
    if ((st = fig_pareto(c, RM_OUT_COS, "pareto_out_cos", err))) return st;
    if ((st = fig_heatmap(c, err))) return st;
    if ((st = fig_layers(c, RH_BUDGET, "layer_budget", err))) return st;
    if ((st = fig_layers(c, c->head_metric, "layer_profile", err))) return st;
    if ((st = fig_memory(c, err))) return st;
    if ((st = fig_reliability(c, err))) return st;
    if ((st = fig_entropy(c, err))) return st;
    if ((st = fig_ranked(c, 0, err))) return st;
    if ((st = fig_ranked(c, 1, err))) return st;
    if ((st = fig_position(c, err))) return st;
    return rp_needle_figures(c, 1, err);    /* analysis/needle_fig.c */
}

