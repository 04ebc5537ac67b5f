/* kvreport figures: .dat data + .gp scripts from plots/ templates, rendered by gnuplot run
 * as a program (posix_spawn) inside the figures directory. See report.h for the layout.
 *
 * Figure kinds (plots/<kind>.gp): pareto (a), heatmap (b), layers (c), memory (d),
 * reliability (e), entropy (f), ranked (g). Every script = header + style.gp + <kind>.gp
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

typedef struct kv { const char *k; char v[4096]; } kv;
typedef struct tvars { kv v[16]; size_t n; } tvars;

static void tv_set(tvars *t, const char *k, const char *fmt, ...)
{
    kv *e = &t->v[t->n++];
    e->k = k;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->v, sizeof e->v, fmt, ap);
    va_end(ap);
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

/* Writes <stem>.dat (already in dat) and <stem>.gp, then renders. */
static kv_status emit(rp_ctx *c, const char *stem, const char *kind, const char *caption,
                      tvars *t, sbuf *dat, kv_error *err)
{
    if (c->n_fig >= sizeof c->fig / sizeof c->fig[0]) return kv_error_set(err, KV_ERR_INVALID, "too many figures");
    rp_figure *g = &c->fig[c->n_fig++];
    memset(g, 0, sizeof *g);
    snprintf(g->stem, sizeof g->stem, "%s", stem);
    snprintf(g->caption, sizeof g->caption, "%s", caption);
    if (dat->oom) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    char figdir[4608], path[4700];
    snprintf(figdir, sizeof figdir, "%s/figures", c->dir);

    tv_set(t, "STEM", "%s", stem);
    tv_set(t, "PNG_SIZE", "%s", PNG_SIZE);
    tv_set(t, "PDF_SIZE", "%s", PDF_SIZE);
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
        if (st != KV_OK) { free(gp.s); return st; }
    }
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

/* Short label: the configuration's display name (results.h; config strings carry every default). */
static void short_label(const res_config *cf, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", cf->name);
    if (strlen(buf) > 40 && cap > 41) { buf[37] = '.'; buf[38] = '.'; buf[39] = '.'; buf[40] = 0; }
}

static const char *metric_axis(int m)
{
    switch (m) {
    case RM_LOGIT_KL: return "logit KL(P_{full} || P_{comp}) (nats)";
    case RM_NLL_DELTA: return "NLL_{comp} - NLL_{full} (nats per token)";
    case RM_OUT_COS: return "attention-output cosine (o, õ)";
    case RM_ATTN_COS: return "attention-row cosine (p, p̃)";
    case RM_ATTN_KL: return "attention KL(p̃ || p) (nats)";
    case RM_MASS_RECALL: return "attention mass recall (fraction)";
    case RM_TOP1_AGREE: return "top-1 agreement (fraction)";
    case RM_OUT_REL_ERR: return "output relative error ||o - õ|| / ||o||";
    case RM_ECE_COMP: return "ECE, compressed (fraction)";
    default: return res_metric_names[m];
    }
}

static const char *head_axis(int m)
{
    switch (m) {
    case RH_OUT_COS: return "attention-output cosine";
    case RH_ATTN_COS: return "attention-row cosine";
    case RH_ATTN_KL: return "attention KL (nats)";
    case RH_MASS_RECALL: return "attention mass recall";
    case RH_OUT_REL_ERR: return "output relative error";
    case RH_BUDGET: return "kv entries held (mean)";
    case RH_KEEP_FRAC: return "keep fraction";
    default: return res_head_metric_names[m];
    }
}

/* ---- (a) Pareto fronts ----------------------------------------------------------------- */

static kv_status fig_pareto(rp_ctx *c, int m, const char *stem, kv_error *err)
{
    const res_set *rs = c->rs;
    const an_result *an = c->an;
    size_t nc = rs->n_configs;
    char cap[512];
    snprintf(cap, sizeof cap, "Quality vs compression: %s against the compression ratio, one line per strategy family "
             "(mean over sequences, 95%% t-interval bars); ringed points are Pareto-optimal (no configuration "
             "compresses at least as much with at least as good a %s).", res_metric_names[m], res_metric_names[m]);
    size_t *ok = malloc((nc + 1) * sizeof *ok), n = 0;
    if (!ok) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < nc; i++)
        if (an_get(an, i, m)->valid && an_get(an, i, RM_RATIO)->valid && !rs->configs[i].not_applied) ok[n++] = i;
    if (!n) { free(ok); skip(c, stem, cap, "no configuration has %s (no read-out in the trace?)", res_metric_names[m]); return KV_OK; }
    /* families in order of first appearance */
    const char *fam[64];
    size_t nf = 0;
    for (size_t k = 0; k < n; k++) {
        const char *f = rs->configs[ok[k]].family;
        size_t j;
        for (j = 0; j < nf; j++) if (!strcmp(fam[j], f)) break;
        if (j == nf && nf < 64) fam[nf++] = f;
    }
    int lower = an_lower_better(m);
    sbuf dat = {0};
    double xmin = INFINITY, xmax = 0;
    for (size_t j = 0; j < nf; j++) {
        sb_add(&dat, "# family %s: ratio mean t_lo t_hi config_id\n", fam[j]);
        /* rows sorted by ratio (selection sort: a few configurations per family) */
        size_t rows[4096], nr = 0;
        for (size_t k = 0; k < n && nr < 4096; k++) if (!strcmp(rs->configs[ok[k]].family, fam[j])) rows[nr++] = ok[k];
        for (size_t a = 0; a < nr; a++)
            for (size_t b = a + 1; b < nr; b++)
                if (an_get(an, rows[b], RM_RATIO)->d.mean < an_get(an, rows[a], RM_RATIO)->d.mean) { size_t t = rows[a]; rows[a] = rows[b]; rows[b] = t; }
        for (size_t a = 0; a < nr; a++) {
            const an_stat *s = an_get(an, rows[a], m);
            double r = an_get(an, rows[a], RM_RATIO)->d.mean;
            xmin = fmin(xmin, r); xmax = fmax(xmax, r);
            sb_add(&dat, "%.9g %.9g %.9g %.9g %zu\n", r, s->d.mean, s->d.has_ci ? s->d.t_lo : s->d.mean,
                   s->d.has_ci ? s->d.t_hi : s->d.mean, rows[a]);
        }
        sb_add(&dat, "\n\n");
    }
    sb_add(&dat, "# Pareto-optimal: ratio mean config_id\n");
    for (size_t a = 0; a < n; a++) {
        double ra = an_get(an, ok[a], RM_RATIO)->d.mean, qa = an_get(an, ok[a], m)->d.mean;
        int dominated = 0;
        for (size_t b = 0; b < n && !dominated; b++) {
            if (b == a) continue;
            double rb = an_get(an, ok[b], RM_RATIO)->d.mean, qb = an_get(an, ok[b], m)->d.mean;
            int better_q = lower ? qb <= qa : qb >= qa;
            int strict = rb > ra || (lower ? qb < qa : qb > qa);
            if (rb >= ra && better_q && strict) dominated = 1;
        }
        if (!dominated) sb_add(&dat, "%.9g %.9g %zu\n", ra, qa, ok[a]);
    }
    free(ok);
    tvars t = {0};
    sbuf fl = {0};
    for (size_t j = 0; j < nf; j++) { if (j) sb_add(&fl, ", "); sb_quoted(&fl, fam[j]); }
    tv_set(&t, "N", "%zu", nf);
    tv_set(&t, "FAMILIES", "%s", fl.s ? fl.s : "");
    free(fl.s);
    tv_set(&t, "TITLE", "Quality vs compression: %s", res_metric_names[m]);
    tv_set(&t, "YLABEL", "%s%s", metric_axis(m), lower ? ", lower is better" : ", higher is better");
    tv_set(&t, "XRANGE", "%.6g:%.6g", xmin / 1.25, xmax * 1.25);
    kv_status st = emit(c, stem, "pareto", cap, &t, &dat, err);
    free(dat.s);
    return st;
}

/* ---- (b) heat map ------------------------------------------------------------------------ */

static kv_status fig_heatmap(rp_ctx *c, kv_error *err)
{
    const char *stem = "heatmap";
    char cap[512];
    if (c->focus < 0) { skip(c, stem, "Layer x head heat map.", "no configuration chosen"); return KV_OK; }
    const res_config *cf = &c->rs->configs[c->focus];
    int m = c->head_metric;
    snprintf(cap, sizeof cap, "Layer x head heat map of %s for `%s` (mean over sequences and evaluated positions, from per_head.csv).",
             res_head_metric_names[m], cf->config);
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
    tvars t = {0};
    tv_set(&t, "TITLE", "%s per layer and head: %s", res_head_metric_names[m], cf->name);
    tv_set(&t, "CBLABEL", "%s", head_axis(m));
    tv_set(&t, "XMAX", "%.1f", (double)H - 0.5);
    tv_set(&t, "YMAX", "%.1f", (double)L - 0.5);
    tv_set(&t, "XTIC", "%lld", H > 16 ? (H + 7) / 8 : 1);
    tv_set(&t, "YTIC", "%lld", L > 16 ? (L + 7) / 8 : 1);
    tv_set(&t, "CBRANGE", "%.9g:%.9g", lo, hi);
    kv_status st = emit(c, stem, "heatmap", cap, &t, &dat, err);
    free(dat.s);
    return st;
}

/* ---- selection for multi-series figures: baseline/full + matched-compression configs ---- */

static size_t series_select(rp_ctx *c, size_t *idx)
{
    size_t n = 0;
    long full = an_find_full(c->rs);
    if (full >= 0) idx[n++] = (size_t)full;
    double t;
    size_t m = rp_matched(c, idx + n, &t);
    n += m;
    if (n > 16) n = 16;
    return n;
}

/* ---- (c) per-layer budgets and metric profile ------------------------------------------ */

static kv_status fig_layers(rp_ctx *c, int m, const char *stem, kv_error *err)
{
    const res_set *rs = c->rs;
    char cap[512];
    snprintf(cap, sizeof cap, m == RH_BUDGET
             ? "Per-layer budgets: mean kv entries held per head at the evaluated positions, per layer, for the full cache and the configurations at matched compression (PyramidKV-style allocations show as slopes)."
             : "Per-layer profile of %s (mean over heads) for the full cache and the configurations at matched compression.",
             res_head_metric_names[m]);
    size_t *idx = malloc((rs->n_configs + 1) * sizeof *idx);
    if (!idx) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    size_t ns = series_select(c, idx);
    sbuf dat = {0}, titles = {0};
    size_t nser = 0;
    long long L = 0;
    for (size_t s = 0; s < ns; s++) {
        const res_config *cf = &rs->configs[idx[s]];
        long long Lc = 0;
        for (size_t k = 0; k < cf->n_heads; k++) if (cf->heads[k].layer + 1 > Lc) Lc = cf->heads[k].layer + 1;
        int any = 0;
        for (long long l = 0; l < Lc; l++) {
            double sum = 0; size_t cnt = 0;
            for (size_t k = 0; k < cf->n_heads; k++)
                if (cf->heads[k].layer == l && !isnan(cf->heads[k].v[m])) { sum += cf->heads[k].v[m]; cnt++; }
            if (!cnt) continue;
            if (!any) sb_add(&dat, "# %s: layer mean_over_heads(%s)\n", cf->config, res_head_metric_names[m]);
            any = 1;
            sb_add(&dat, "%lld %.9g\n", l, sum / (double)cnt);
        }
        if (!any) continue;
        if (Lc > L) L = Lc;
        sb_add(&dat, "\n\n");
        char lab[64];
        short_label(cf, lab, sizeof lab);
        if (nser++) sb_add(&titles, ", ");
        sb_quoted(&titles, lab);
    }
    free(idx);
    kv_status st = KV_OK;
    if (!nser) skip(c, stem, cap, "per_head.csv has no %s for the selected configurations", res_head_metric_names[m]);
    else {
        tvars t = {0};
        tv_set(&t, "N", "%zu", nser);
        tv_set(&t, "TITLES", "%s", titles.s);
        tv_set(&t, "TITLE", m == RH_BUDGET ? "Per-layer kv budget" : "Per-layer %s", res_head_metric_names[m]);
        tv_set(&t, "YLABEL", "%s", head_axis(m));
        tv_set(&t, "XTIC", "%lld", L > 16 ? (L + 7) / 8 : 1);
        tv_set(&t, "XRANGE", "%.1f:%.1f", -0.3, (double)L - 0.7);
        st = emit(c, stem, "layers", cap, &t, &dat, err);
    }
    free(dat.s); free(titles.s);
    return st;
}

/* ---- (d) memory vs context ------------------------------------------------------------- */

static kv_status fig_memory(rp_ctx *c, kv_error *err)
{
    const char *stem = "memory";
    const res_set *rs = c->rs;
    const char *cap = "KV-cache memory against context length: each configuration's measured bytes per token "
                      "(kv_bytes over the tokens cached at the last evaluated position, mean over sequences) times "
                      "the context; fixed-budget configurations (budget_kind = budget) saturate at their budget.";
    if (!(c->bytes_per_token > 0)) { skip(c, stem, cap, "the token count needs the trace's dimensions: pass --trace TRACE"); return KV_OK; }
    size_t *idx = malloc((rs->n_configs + 1) * sizeof *idx);
    if (!idx) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    size_t ns = series_select(c, idx);
    /* context axis: 8x the longest measured context, at least 4096 */
    double tmax = 0;
    for (size_t s = 0; s < ns; s++) {
        const res_config *cf = &rs->configs[idx[s]];
        for (size_t k = 0; k < cf->n_seqs; k++)
            if (!isnan(cf->seqs[k].v[RM_FULL_BYTES])) tmax = fmax(tmax, cf->seqs[k].v[RM_FULL_BYTES] / c->bytes_per_token);
    }
    double xmax = fmax(4096, pow(2, ceil(log2(fmax(tmax, 1) * 8))));
    sbuf dat = {0}, titles = {0};
    size_t nser = 0;
    for (size_t s = 0; s < ns; s++) {
        const res_config *cf = &rs->configs[idx[s]];
        /* bytes per cached token and entries held at the last position */
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
        sb_add(&dat, "# %s: context_tokens MiB (%.9g bytes per held token%s)\n", cf->config, bpt, sat ? ", saturating at the budget" : "");
        for (int p = 0; p <= 64; p++) {
            double x = xmax * p / 64;
            if (sat && x > cf->budget_value && x - xmax / 64 < cf->budget_value)
                sb_add(&dat, "%.9g %.9g\n", cf->budget_value, cf->budget_value * bpt / 1048576.0);
            double held = sat ? fmin(x, cf->budget_value) : x;
            sb_add(&dat, "%.9g %.9g\n", x, held * bpt / 1048576.0);
        }
        sb_add(&dat, "\n\n");
        char lab[64];
        short_label(cf, lab, sizeof lab);
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
        tv_set(&t, "TITLE", "KV-cache memory vs context (full cache: %.9g bytes per token)", c->bytes_per_token);
        tv_set(&t, "XMAX", "%.9g", xmax);
        st = emit(c, stem, "memory", cap, &t, &dat, err);
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

static kv_status fig_reliability(rp_ctx *c, kv_error *err)
{
    const char *stem = "reliability";
    char cap[512];
    if (c->focus < 0) { skip(c, stem, "Reliability diagram.", "no configuration chosen"); return KV_OK; }
    const res_config *cf = &c->rs->configs[c->focus];
    snprintf(cap, sizeof cap, "Reliability diagram of next-token predictions, full cache vs `%s` (15 equal-width confidence bins, pooled over positions; ECE in the key).", cf->config);
    if (!cf->has_calib) { skip(c, stem, cap, "calib.csv has no rows for this configuration (no read-out in the trace?)"); return KV_OK; }
    sbuf dat = {0};
    for (int w = 0; w < 2; w++) {
        sb_add(&dat, "# %s: mean_confidence accuracy count\n", w ? "compressed" : "full cache");
        for (int b = 0; b < RES_CALIB_BINS; b++) {
            const res_calib_bin *x = &cf->calib[w][b];
            if (x->count > 0) sb_add(&dat, "%.9g %.9g %.9g\n", x->conf_sum / x->count, x->acc_sum / x->count, x->count);
        }
        sb_add(&dat, "\n\n");
    }
    char lab[64];
    short_label(cf, lab, sizeof lab);
    char a[128], b[128];
    snprintf(a, sizeof a, "full cache (ECE %.4f)", ece_of(cf->calib[0]));
    snprintf(b, sizeof b, "%s (ECE %.4f)", lab, ece_of(cf->calib[1]));
    sbuf titles = {0};
    sb_quoted(&titles, a); sb_add(&titles, ", "); sb_quoted(&titles, b);
    tvars t = {0};
    tv_set(&t, "TITLES", "%s", titles.s);
    tv_set(&t, "TITLE", "Reliability: %s", cf->name);
    kv_status st = emit(c, stem, "reliability", cap, &t, &dat, err);
    free(dat.s); free(titles.s);
    return st;
}

/* ---- (f) attention entropy ------------------------------------------------------------------ */

static kv_status fig_entropy(rp_ctx *c, kv_error *err)
{
    const char *stem = "entropy";
    const char *cap = "Attention-entropy distribution per layer: each query head's mean entropy of its full causal attention "
                      "rows (over the trace's sequences and positions), distributed over the heads of the layer; the line is "
                      "the entropy of uniform attention over the visible keys.";
    const rp_entropy *e = c->entropy;
    if (!e) { skip(c, stem, cap, "%s", c->entropy_why ? c->entropy_why : "needs the trace: pass --trace TRACE"); return KV_OK; }
    sbuf dat = {0};
    sb_add(&dat, "# layer q05 q25 median q75 q95 mean_log_visible (nats)\n");
    for (size_t l = 0; l < e->n_layers; l++)
        sb_add(&dat, "%zu %.9g %.9g %.9g %.9g %.9g %.9g\n", l, e->q[l * 5], e->q[l * 5 + 1], e->q[l * 5 + 2],
               e->q[l * 5 + 3], e->q[l * 5 + 4], e->max_entropy[l]);
    tvars t = {0};
    tv_set(&t, "TITLE", "Attention entropy per layer");
    tv_set(&t, "XMAX", "%.1f", (double)e->n_layers - 0.4);
    tv_set(&t, "XTIC", "%zu", e->n_layers > 16 ? (e->n_layers + 7) / 8 : 1);
    kv_status st = emit(c, stem, "entropy", cap, &t, &dat, err);
    free(dat.s);
    return st;
}

/* ---- (g) ranked bars at matched compression ------------------------------------------------- */

static kv_status fig_ranked(rp_ctx *c, kv_error *err)
{
    const char *stem = "ranked";
    const res_set *rs = c->rs;
    int m = c->metric;
    size_t *idx = malloc((rs->n_configs + 1) * sizeof *idx);
    if (!idx) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    double target;
    size_t n = rp_matched(c, idx, &target);
    c->target_used = target;
    char cap[512];
    snprintf(cap, sizeof cap, "Strategies at matched compression: per family the configuration whose ratio is nearest %.3g× "
             "(within a factor 1.5), ranked by %s (%s is better), mean over sequences with 95%% t-interval bars.",
             target, res_metric_names[m], an_lower_better(m) ? "lower" : "higher");
    if (!n) { free(idx); skip(c, stem, cap, "no compressed configuration within a factor 1.5 of %.3g× has %s", target, res_metric_names[m]); return KV_OK; }
    sbuf dat = {0};
    sb_add(&dat, "# rank mean t_lo t_hi ratio label\n");
    double lo_all = INFINITY;
    for (size_t k = 0; k < n; k++) {
        const an_stat *s = an_get(c->an, idx[k], m);
        double r = an_get(c->an, idx[k], RM_RATIO)->d.mean;
        char lab[64];
        short_label(&rs->configs[idx[k]], lab, sizeof lab);
        double lo = s->d.has_ci ? s->d.t_lo : s->d.mean, hi = s->d.has_ci ? s->d.t_hi : s->d.mean;
        lo_all = fmin(lo_all, lo);
        sb_add(&dat, "%zu %.9g %.9g %.9g %.9g \"%s (%.3g×)\"\n", k + 1, s->d.mean, lo, hi, r, lab, r);
    }
    free(idx);
    double blo, bhi;
    int bounded = an_metric_bounds(m, &blo, &bhi) && blo == 0 && an_lower_better(m);
    tvars t = {0};
    tv_set(&t, "TITLE", "At matched compression (≈%.3g×): %s", target, res_metric_names[m]);
    tv_set(&t, "YLABEL", "%s%s", metric_axis(m), an_lower_better(m) ? ", lower is better" : ", higher is better");
    tv_set(&t, "XMAX", "%.1f", (double)n - 0.4);
    tv_set(&t, "YLO", "%s", bounded ? "0" : "*");
    (void)lo_all;
    kv_status st = emit(c, stem, "ranked", cap, &t, &dat, err);
    free(dat.s);
    return st;
}

kv_status rp_write_figures(rp_ctx *c, kv_error *err)
{
    if (c->no_figures) return KV_OK;
    char figdir[4608];
    snprintf(figdir, sizeof figdir, "%s/figures", c->dir);
    if (mkdir(figdir, 0777) && errno != EEXIST) return kv_error_set(err, KV_ERR_IO, "%s: cannot create: %s", figdir, strerror(errno));
    if (!c->plots_dir) { rp_note(&c->notes, "figures skipped: the gnuplot templates (plots/) were not found; pass --plots DIR"); return KV_OK; }
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
    return fig_ranked(c, err);
}
