/* kvreport compare: runs side by side (compare.h). */
#include "compare.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const char *cmp_config_key(const res_config *c)
{
    return c->label && *c->label ? c->label : c->config;     /* a sweep label names the same configuration across runs */
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* ---- loading and matching ------------------------------------------------------------- */

/* The last path component without trailing slashes ("runs/llama/" -> "llama"), characters
 * other than [A-Za-z0-9_.-] made '_' (the label also names CSV columns). */
static void dir_label(const char *path, char *buf, size_t cap)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/') b--;
    snprintf(buf, cap, "%.*s", (int)(n - b), path + b);
    if (!buf[0]) snprintf(buf, cap, "run");
    for (char *p = buf; *p; p++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", *p)) *p = '_';
}

long cmp_find_key(const cmp_set *s, const char *key)
{
    for (size_t k = 0; k < s->n_keys; k++)
        if (!strcmp(s->keys[k], key)) return (long)k;
    return -1;
}

static kv_status match_keys(cmp_set *s, kv_error *err)
{
    size_t cap = 0;
    for (size_t r = 0; r < s->n_runs; r++) cap += s->runs[r].rs->n_configs;
    s->keys = calloc(cap + 1, sizeof *s->keys);
    s->idx = malloc((cap + 1) * s->n_runs * sizeof *s->idx);
    if (!s->keys || !s->idx) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    for (size_t r = 0; r < s->n_runs; r++) {
        const res_set *rs = s->runs[r].rs;
        for (size_t c = 0; c < rs->n_configs; c++) {
            const char *key = cmp_config_key(&rs->configs[c]);
            long k = cmp_find_key(s, key);
            if (k < 0) {
                k = (long)s->n_keys++;
                if (!(s->keys[k] = xstrdup(key))) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
                for (size_t q = 0; q < s->n_runs; q++) s->idx[(size_t)k * s->n_runs + q] = -1;
            }
            long *slot = &s->idx[(size_t)k * s->n_runs + r];
            if (*slot >= 0)
                return kv_error_set(err, KV_ERR_FORMAT, "%s: configurations '%s' and '%s' have the same key '%s'", s->runs[r].path,
                                    rs->configs[*slot].config, rs->configs[c].config, key);
            *slot = (long)c;
        }
    }
    return KV_OK;
}

kv_status cmp_load(const char *const *dirs, size_t n, cmp_set **out, kv_error *err)
{
    *out = NULL;
    if (n == 0) return kv_error_set(err, KV_ERR_INVALID, "no results directory given");
    if (n > CMP_MAX_RUNS) return kv_error_set(err, KV_ERR_INVALID, "%zu runs: at most %d can be compared", n, CMP_MAX_RUNS);
    cmp_set *s = calloc(1, sizeof *s);
    if (!s || !(s->runs = calloc(n, sizeof *s->runs))) { free(s); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    kv_status st = KV_OK;
    for (size_t r = 0; r < n; r++) {
        cmp_run *run = &s->runs[r];
        s->n_runs = r + 1;
        for (size_t q = 0; q < r; q++)
            if (!strcmp(dirs[q], dirs[r])) { st = kv_error_set(err, KV_ERR_INVALID, "%s: results directory given twice", dirs[r]); goto fail; }
        const char *one[1] = { dirs[r] };
        if ((st = res_load(one, 1, 0, &run->rs, err)) != KV_OK) goto fail;
        if ((st = an_compute(run->rs, -1, 0, 0, &run->an, err)) != KV_OK) goto fail;
        char lab[256], uniq[300];
        dir_label(dirs[r], lab, sizeof lab);
        snprintf(uniq, sizeof uniq, "%s", lab);
        for (int k = 2;; k++) {
            size_t q = 0;
            while (q < r && strcmp(s->runs[q].label, uniq)) q++;
            if (q == r) break;
            snprintf(uniq, sizeof uniq, "%s_%d", lab, k);
        }
        run->label = xstrdup(uniq);
        run->path = xstrdup(dirs[r]);
        if (!run->label || !run->path) { st = kv_error_set(err, KV_ERR_NOMEM, "out of memory"); goto fail; }
    }
    if ((st = match_keys(s, err)) != KV_OK) goto fail;
    *out = s;
    return KV_OK;
fail:
    cmp_free(s);
    return st;
}

void cmp_free(cmp_set *s)
{
    if (!s) return;
    for (size_t r = 0; r < s->n_runs; r++) {
        free(s->runs[r].label); free(s->runs[r].path);
        an_free(s->runs[r].an);
        res_free(s->runs[r].rs);
    }
    free(s->runs);
    for (size_t k = 0; k < s->n_keys; k++) free(s->keys[k]);
    free(s->keys); free(s->idx); free(s->tests);
    free(s);
}

/* The statistics of key k in run r, NULL when the run lacks it or has no value of m. */
static const an_stat *stat_of(const cmp_set *s, size_t k, size_t r, int m)
{
    long c = s->idx[k * s->n_runs + r];
    if (c < 0) return NULL;
    const an_stat *st = an_get(s->runs[r].an, (size_t)c, m);
    return st->valid ? st : NULL;
}

void cmp_set_metrics(cmp_set *s, const int *metrics, size_t n)
{
    s->n_metrics = 0;
    if (n) {
        for (size_t i = 0; i < n && i < RM_COUNT; i++) s->metrics[s->n_metrics++] = metrics[i];
        return;
    }
    static const int defaults[] = { RM_OUT_COS, RM_ATTN_KL, RM_LOGIT_KL, RM_NLL_DELTA };
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++) {
        int have = 0;
        for (size_t k = 0; k < s->n_keys && !have; k++)
            for (size_t r = 0; r < s->n_runs && !have; r++) have = stat_of(s, k, r, defaults[i]) != NULL;
        if (have) s->metrics[s->n_metrics++] = defaults[i];
    }
}

/* ---- paired tests ---------------------------------------------------------------------- */

/* 1 when every space-separated word of spec is a word of key ("streaming keep=0.25" is in
 * "streaming keep=0.25 sinks=4 reindex=0"). */
static int words_in(const char *spec, const char *key)
{
    size_t nw = 0;
    for (const char *p = spec; *p;) {
        while (*p == ' ') p++;
        size_t n = strcspn(p, " ");
        if (!n) break;
        nw++;
        int found = 0;
        for (const char *q = key; *q && !found;) {
            while (*q == ' ') q++;
            size_t m = strcspn(q, " ");
            found = m == n && !strncmp(p, q, n);
            q += m;
        }
        if (!found) return 0;
        p += n;
    }
    return nw > 0;
}

/* The key a --pair argument names: the exact key, else the only key holding all its words
 * (a sweep line without the defaults); KV_ERR_INVALID naming the candidates otherwise. */
static kv_status resolve_key(const cmp_set *s, const char *spec, size_t *k, rp_notes *notes, kv_error *err)
{
    long e = cmp_find_key(s, spec);
    if (e >= 0) { *k = (size_t)e; return KV_OK; }
    size_t hits = 0, first = 0, second = 0;
    for (size_t i = 0; i < s->n_keys; i++)
        if (words_in(spec, s->keys[i])) { if (!hits) first = i; else if (hits == 1) second = i; hits++; }
    if (hits == 1) {
        *k = first;
        rp_note(notes, "--pair '%s' is configuration '%s'", spec, s->keys[first]);
        return KV_OK;
    }
    if (hits > 1)
        return kv_error_set(err, KV_ERR_INVALID, "--pair: '%s' matches %zu configurations ('%s', '%s'%s): give more of its parameters",
                            spec, hits, s->keys[first], s->keys[second], hits > 2 ? ", ..." : "");
    return kv_error_set(err, KV_ERR_INVALID, "--pair: '%s' is not a configuration of any run (%zu configurations, e.g. '%s')",
                        spec, s->n_keys, s->n_keys ? s->keys[0] : "");
}

static kv_status holm_metric(cmp_set *s, int m, kv_error *err)
{
    double *pt = malloc((s->n_tests + 1) * sizeof *pt), *pw = malloc((s->n_tests + 1) * sizeof *pw);
    size_t *at = malloc((s->n_tests + 1) * sizeof *at), n = 0;
    if (!pt || !pw || !at) { free(pt); free(pw); free(at); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    for (size_t i = 0; i < s->n_tests; i++)
        if (s->tests[i].metric == m && s->tests[i].c.valid) { pt[n] = s->tests[i].c.p.p_t; pw[n] = s->tests[i].c.p.p_w; at[n++] = i; }
    kv_status st = KV_OK;
    if (n && (stats_holm(pt, n, pt) != ST_OK || stats_holm(pw, n, pw) != ST_OK))
        st = kv_error_set(err, KV_ERR_VALUE, "Holm adjustment failed (p-value outside [0, 1])");
    for (size_t i = 0; st == KV_OK && i < n; i++) { s->tests[at[i]].c.p_t_holm = pt[i]; s->tests[at[i]].c.p_w_holm = pw[i]; }
    free(pt); free(pw); free(at);
    return st;
}

kv_status cmp_test_pairs(cmp_set *s, const char *const *a, const char *const *b, size_t n_pairs,
                         rp_notes *notes, kv_error *err)
{
    stats_init();
    size_t *ka = malloc((n_pairs + 1) * sizeof *ka), *kb = malloc((n_pairs + 1) * sizeof *kb);
    if (!ka || !kb) { free(ka); free(kb); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    for (size_t p = 0; p < n_pairs; p++) {
        kv_status rs;
        if ((rs = resolve_key(s, a[p], &ka[p], notes, err)) || (rs = resolve_key(s, b[p], &kb[p], notes, err))) { free(ka); free(kb); return rs; }
        if (ka[p] == kb[p]) {
            free(ka); free(kb);
            return kv_error_set(err, KV_ERR_INVALID, "--pair: '%s' and '%s' are the same configuration: it is not compared with itself", a[p], b[p]);
        }
    }
    size_t maxn = 1;
    for (size_t r = 0; r < s->n_runs; r++)
        for (size_t c = 0; c < s->runs[r].rs->n_configs; c++)
            if (s->runs[r].rs->configs[c].n_seqs > maxn) maxn = s->runs[r].rs->configs[c].n_seqs;
    free(s->tests);
    s->n_tests = 0;
    s->tests = calloc(n_pairs * s->n_runs * s->n_metrics + 1, sizeof *s->tests);
    double *x = malloc(maxn * sizeof *x), *y = malloc(maxn * sizeof *y);
    kv_status st = KV_OK;
    if (!s->tests || !x || !y) { st = kv_error_set(err, KV_ERR_NOMEM, "out of memory"); goto done; }
    for (size_t p = 0; p < n_pairs; p++) {
        const char *A = s->keys[ka[p]], *B = s->keys[kb[p]];
        for (size_t r = 0; r < s->n_runs; r++) {
            long ca = s->idx[ka[p] * s->n_runs + r], cb = s->idx[kb[p] * s->n_runs + r];
            if (ca < 0 || cb < 0) {
                rp_note(notes, "pair '%s' vs '%s': run %s lacks '%s'; not tested there", A, B, s->runs[r].label, ca < 0 ? A : B);
                continue;
            }
            const res_set *rs = s->runs[r].rs;
            for (size_t i = 0; i < s->n_metrics; i++) {
                int m = s->metrics[i];
                size_t n = an_pairs(&rs->configs[ca], &rs->configs[cb], m, x, y);
                cmp_test *t = &s->tests[s->n_tests];
                memset(t, 0, sizeof *t);
                t->run = r; t->key_a = ka[p]; t->key_b = kb[p]; t->metric = m;
                if (n < 2) {
                    if (n || stat_of(s, ka[p], r, m) || stat_of(s, kb[p], r, m))
                        rp_note(notes, "pair '%s' vs '%s', run %s, %s: %zu sequence(s) with both values; no test", A, B,
                                s->runs[r].label, res_metric_names[m], n);
                    continue;
                }
                double sa = 0, sb = 0;
                for (size_t j = 0; j < n; j++) { sa += x[j]; sb += y[j]; }
                t->mean_a = sa / (double)n;
                t->mean_b = sb / (double)n;
                st_status ss = stats_paired(x, y, n, &t->c.p);
                if (ss != ST_OK) {
                    st = kv_error_set(err, KV_ERR_VALUE, "run %s, '%s' vs '%s', %s: paired test failed: %s", s->runs[r].label,
                                      A, B, res_metric_names[m], stats_status_name(ss));
                    goto done;
                }
                t->c.valid = 1;
                s->n_tests++;
            }
        }
    }
    for (size_t i = 0; st == KV_OK && i < s->n_metrics; i++) st = holm_metric(s, s->metrics[i], err);
done:
    free(x); free(y); free(ka); free(kb);
    return st;
}

/* ---- writers --------------------------------------------------------------------------- */

/* A run label as a CSV header prefix: characters other than [A-Za-z0-9_.-] become '_'. */
static void csv_label(FILE *f, const char *s)
{
    for (; *s; s++) fputc(strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", *s) ? *s : '_', f);
}

static void md_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (strchr("|*_\\`<>", *s)) fputc('\\', f);
        fputc(*s, f);
    }
}

static kv_status write_pivot_csv(const cmp_set *s, const rp_ctx *c, kv_error *err)
{
    FILE *f = rp_open_out(c, "tables/pivot.csv", "w", err);
    if (!f) return err->code;
    fputs("metric,config", f);
    for (size_t r = 0; r < s->n_runs; r++) {
        static const char *const sfx[] = { "_n", "_mean", "_t_lo", "_t_hi" };
        for (int i = 0; i < 4; i++) { fputc(',', f); csv_label(f, s->runs[r].label); fputs(sfx[i], f); }
    }
    fputc('\n', f);
    for (size_t i = 0; i < s->n_metrics; i++) {
        int m = s->metrics[i];
        for (size_t k = 0; k < s->n_keys; k++) {
            fprintf(f, "%s,%s", res_metric_names[m], s->keys[k]);
            for (size_t r = 0; r < s->n_runs; r++) {
                const an_stat *st = stat_of(s, k, r, m);
                if (!st) { fputs(",,,,", f); continue; }
                fprintf(f, ",%zu", st->d.n);
                rp_csv_num(f, st->d.mean, 1);
                rp_csv_num(f, st->d.t_lo, st->d.has_ci);
                rp_csv_num(f, st->d.t_hi, st->d.has_ci);
            }
            fputc('\n', f);
        }
    }
    return rp_close_out(c, f, "tables/pivot.csv", err);
}

static void tex_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '_': case '&': case '%': case '#': case '$': case '{': case '}': fprintf(f, "\\%c", *s); break;
        case '~': fputs("\\textasciitilde{}", f); break;
        case '^': fputs("\\textasciicircum{}", f); break;
        case '\\': fputs("\\textbackslash{}", f); break;
        default: fputc(*s, f);
        }
    }
}

/* LaTeX (booktabs): one tabular per metric, the cells of compare.md's pivot tables. */
static kv_status write_pivot_tex(const cmp_set *s, const rp_ctx *c, kv_error *err)
{
    FILE *f = rp_open_out(c, "tables/pivot.tex", "w", err);
    if (!f) return err->code;
    fputs("% kvreport compare: per metric, mean over each run's sequences $\\pm$ the half-width of its 95% t-interval\n"
          "% (booktabs; \\usepackage{booktabs}). Rows: configurations matched across runs; -- : not in that run.\n", f);
    for (size_t i = 0; i < s->n_metrics; i++) {
        int m = s->metrics[i];
        fprintf(f, "\n%% %s (%s is better)\n\\begin{tabular}{rl", res_metric_names[m], an_lower_better(m) ? "lower" : "higher");
        for (size_t r = 0; r < s->n_runs; r++) fputc('c', f);
        fputs("}\n\\toprule\n\\# & Configuration", f);
        for (size_t r = 0; r < s->n_runs; r++) { fputs(" & ", f); tex_text(f, s->runs[r].label); }
        fputs(" \\\\\n\\midrule\n", f);
        for (size_t k = 0; k < s->n_keys; k++) {
            fprintf(f, "%zu & \\texttt{", k + 1);
            tex_text(f, s->keys[k]);
            fputc('}', f);
            for (size_t r = 0; r < s->n_runs; r++) {
                const an_stat *st = stat_of(s, k, r, m);
                if (!st) { fputs(" & --", f); continue; }
                char buf[96];
                rp_fmt_pm(buf, sizeof buf, st->d.mean, (st->d.t_hi - st->d.t_lo) / 2, st->d.has_ci);
                char *pm = strstr(buf, " ± ");
                if (pm) { *pm = 0; fprintf(f, " & $%s \\pm %s$", buf, pm + strlen(" ± ")); }
                else fprintf(f, " & $%s$", buf);
            }
            fputs(" \\\\\n", f);
        }
        fputs("\\bottomrule\n\\end{tabular}\n", f);
    }
    return rp_close_out(c, f, "tables/pivot.tex", err);
}

static kv_status write_pairs_csv(const cmp_set *s, const rp_ctx *c, kv_error *err)
{
    FILE *f = rp_open_out(c, "tables/pairs.csv", "w", err);
    if (!f) return err->code;
    fputs("run,metric,config_a,config_b,n_pairs,mean_a,mean_b,mean_diff,sd_diff,t,p_t,p_t_holm,w_plus,w_minus,n_nonzero,"
          "wilcoxon_method,z,p_w,p_w_holm,d_z,r_rb\n", f);
    for (size_t i = 0; i < s->n_tests; i++) {
        const cmp_test *t = &s->tests[i];
        const st_paired *p = &t->c.p;
        csv_label(f, s->runs[t->run].label);
        fprintf(f, ",%s,%s,%s,%zu", res_metric_names[t->metric], s->keys[t->key_a], s->keys[t->key_b], p->n);
        rp_csv_num(f, t->mean_a, 1); rp_csv_num(f, t->mean_b, 1);
        rp_csv_num(f, p->mean_diff, 1); rp_csv_num(f, p->sd_diff, 1);
        rp_csv_num(f, p->t, p->t_defined);
        rp_csv_num(f, p->p_t, 1); rp_csv_num(f, t->c.p_t_holm, 1);
        rp_csv_num(f, p->w_plus, 1); rp_csv_num(f, p->w_minus, 1);
        fprintf(f, ",%zu,%s", p->n_nonzero, p->n_nonzero == 0 ? "none" : p->exact ? "exact" : "normal");
        rp_csv_num(f, p->z, !p->exact && p->n_nonzero > 0);
        rp_csv_num(f, p->p_w, 1); rp_csv_num(f, t->c.p_w_holm, 1);
        rp_csv_num(f, p->d_z, p->dz_defined); rp_csv_num(f, p->r_rb, 1);
        fputc('\n', f);
    }
    return rp_close_out(c, f, "tables/pairs.csv", err);
}

/* ---- figures --------------------------------------------------------------------------- */

/* A gnuplot single-quoted string literal (a quote is doubled). */
static void gp_quoted(FILE *f, const char *s)
{
    fputc('\'', f);
    for (; *s; s++) { if (*s == '\'') fputc('\'', f); fputc(*s, f); }
    fputc('\'', f);
}


/* The multiplot commands of one metric's figure (drawn once per terminal). */
static void panels(const cmp_set *s, int m, size_t rows, size_t cols, double ylo, double yhi, const char *stem, FILE *f)
{
    fprintf(f, "set multiplot layout %zu,%zu title ", rows, cols);
    gp_quoted(f, res_metric_names[m]);
    fputs(" noenhanced\n", f);
    if (ylo < yhi) fprintf(f, "set yrange [%.9g:%.9g]\n", ylo, yhi);
    /* tic labels: the configuration's number (compare.md and the caption list the keys);
     * fixed margins keep the panels the same size */
    fputs("set xtics 1 font ',7'\nset format x '%.0f'\nset format y '%.2g'\nset grid noxtics ytics\n"
          "set lmargin 9\nset rmargin 2\nset bmargin 2.5\nset tmargin 2.5\n", f);
    fprintf(f, "set xrange [0.4:%.1f]\n", (double)s->n_keys + 0.6);
    fprintf(f, "set ylabel '%s%s' noenhanced\n", res_metric_names[m], an_lower_better(m) ? " (lower is better)" : " (higher is better)");
    for (size_t r = 0; r < s->n_runs; r++) {
        const cmp_run *run = &s->runs[r];
        const char *model = run->rs->n_dirs ? res_prov(&run->rs->dirs[0], "trace_model") : NULL;
        if (model && strrchr(model, '/')) model = strrchr(model, '/') + 1;     /* the name, not its path */
        const char *mode = run->rs->n_dirs ? res_prov(&run->rs->dirs[0], "mode") : NULL;
        const char *dec = run->rs->n_dirs ? res_prov(&run->rs->dirs[0], "decode") : NULL;
        char title[1024];
        snprintf(title, sizeof title, "%s: %s, %s%s%s", run->label, model && *model ? model : "?", mode ? mode : "?",
                 dec && strcmp(dec, "0") ? ", decode " : "", dec && strcmp(dec, "0") ? dec : "");
        fputs("set title ", f);
        gp_quoted(f, title);
        fputs(" noenhanced font ',8'\n", f);
        int any = 0;
        for (size_t k = 0; k < s->n_keys && !any; k++) any = stat_of(s, k, r, m) != NULL;
        if (any) fprintf(f, "plot '%s.dat' index %zu using ($1 + 1):2:3:4 with yerrorbars linetype 1 notitle\n", stem, r);
        else fputs("set label 1 'no values in this run' at graph 0.5, graph 0.5 center\nplot NaN notitle\nunset label 1\n", f);
        if (r == 0) fputs("unset ylabel\n", f);
    }
    fputs("unset multiplot\n", f);
}

static kv_status write_figure(cmp_set *s, rp_ctx *c, int m, kv_error *err)
{
    rp_figure *g = &s->fig[s->n_fig++];
    memset(g, 0, sizeof *g);
    snprintf(g->stem, sizeof g->stem, "compare_%s", res_metric_names[m]);
    snprintf(g->caption, sizeof g->caption, "%s, one panel per run: mean over the run's sequences with its 95%% t-interval; "
             "configurations matched across runs on the x axis, one y range for all panels (%s is better).",
             res_metric_names[m], an_lower_better(m) ? "lower" : "higher");
    for (size_t k = 0; k < s->n_keys; k++) {           /* the x axis numbers the configurations */
        size_t used = strlen(g->caption);
        snprintf(g->caption + used, sizeof g->caption - used, "%s%zu = %s", k ? "; " : " Configurations: ", k + 1, s->keys[k]);
    }
    /* data: one block per run; the shared y range covers every interval */
    char *dat = NULL, *pan = NULL;
    size_t dat_len = 0, pan_len = 0;
    FILE *f = open_memstream(&dat, &dat_len);
    if (!f) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    double ylo = INFINITY, yhi = -INFINITY;
    for (size_t r = 0; r < s->n_runs; r++) {
        fprintf(f, "%s# run %s: x mean t_lo t_hi\n", r ? "\n\n" : "", s->runs[r].label);
        size_t rows = 0;
        for (size_t k = 0; k < s->n_keys; k++) {
            const an_stat *st = stat_of(s, k, r, m);
            if (!st) continue;
            double lo = st->d.has_ci ? st->d.t_lo : st->d.mean, hi = st->d.has_ci ? st->d.t_hi : st->d.mean;
            fprintf(f, "%zu %.9g %.9g %.9g\n", k, st->d.mean, lo, hi);
            ylo = fmin(ylo, lo); yhi = fmax(yhi, hi);
            rows++;
        }
        if (!rows) fputs("0 NaN NaN NaN\n", f);       /* keeps the block numbering */
    }
    if (fclose(f) || !dat) { free(dat); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    double pad = isfinite(ylo) && yhi > ylo ? 0.05 * (yhi - ylo) : isfinite(ylo) ? fmax(1e-9, 0.05 * fabs(ylo)) : 0;
    double lo = isfinite(ylo) ? ylo - pad : 0, hi = isfinite(yhi) ? yhi + pad : 0;

    /* panels: stacked at one-column width, up to 3 a row at two-column width */
    size_t cols = c->fig_two_col ? (s->n_runs < 3 ? s->n_runs : 3) : 1, rows = (s->n_runs + cols - 1) / cols;
    FILE *pf = open_memstream(&pan, &pan_len);
    if (!pf) { free(dat); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    panels(s, m, rows, cols, lo, hi, g->stem, pf);
    if (fclose(pf) || !pan) { free(dat); free(pan); return kv_error_set(err, KV_ERR_NOMEM, "out of memory"); }
    const char *names[] = { "PANELS" }, *values[] = { pan };
    kv_status st = rp_emit_figure_into(c, g, "compare", names, values, 1, dat, dat_len, 0.35 + 1.9 * (double)rows, err);
    free(dat);
    free(pan);
    return st;
}

/* ---- compare.md ------------------------------------------------------------------------ */

static void md_runs(const cmp_set *s, FILE *f)
{
    fputs("| run | directory | model | trace sha256 | mode | decode | sequences | configurations |\n"
          "|---|---|---|---|---|---|---|---|\n", f);
    for (size_t r = 0; r < s->n_runs; r++) {
        const cmp_run *run = &s->runs[r];
        const res_dir *d = &run->rs->dirs[0];
        const char *model = res_prov(d, "trace_model"), *sha = res_prov(d, "trace_sha256"), *mode = res_prov(d, "mode");
        const char *dec = res_prov(d, "decode");
        size_t nseq = 0;
        for (size_t c = 0; c < run->rs->n_configs; c++)
            if (run->rs->configs[c].n_seqs > nseq) nseq = run->rs->configs[c].n_seqs;
        fputs("| ", f); md_text(f, run->label);
        fputs(" | ", f); md_text(f, run->path);
        fputs(" | ", f); md_text(f, model ? model : "?");
        fprintf(f, " | %.12s | ", sha ? sha : "?");
        md_text(f, mode ? mode : "?");
        fprintf(f, " | %s | %zu | %zu |\n", dec && strcmp(dec, "0") ? dec : "prefill_len", nseq, run->rs->n_configs);
    }
}

static void md_pivot(const cmp_set *s, int m, FILE *f)
{
    fprintf(f, "\n### %s (%s is better)\n\n| # | configuration |", res_metric_names[m], an_lower_better(m) ? "lower" : "higher");
    for (size_t r = 0; r < s->n_runs; r++) { fputc(' ', f); md_text(f, s->runs[r].label); fputs(" |", f); }
    fputs("\n|---|---|", f);
    for (size_t r = 0; r < s->n_runs; r++) fputs("---|", f);
    fputc('\n', f);
    for (size_t k = 0; k < s->n_keys; k++) {
        fprintf(f, "| %zu | `", k + 1);
        fputs(s->keys[k], f);
        fputs("` |", f);
        for (size_t r = 0; r < s->n_runs; r++) {
            const an_stat *st = stat_of(s, k, r, m);
            char buf[96];
            if (!st) { fputs(" – |", f); continue; }
            rp_fmt_pm(buf, sizeof buf, st->d.mean, (st->d.t_hi - st->d.t_lo) / 2, st->d.has_ci);
            fprintf(f, " %s (n=%zu) |", buf, st->d.n);
        }
        fputc('\n', f);
    }
}

static void md_pairs(const cmp_set *s, FILE *f)
{
    fputs("\n## Paired tests between configurations\n\n", f);
    if (!s->n_tests) { fputs("No pairs tested (`kvreport compare --pair A B`).\n", f); return; }
    fputs("Within each run, over the sequences both configurations hold: d = A − B, paired t-test and Wilcoxon "
          "signed-rank, p-values Holm-adjusted within each metric and test across every (pair, run) comparison "
          "below (* p < 0.05, ** p < 0.01, *** p < 0.001 after adjustment). tables/pairs.csv has every column.\n\n"
          "| run | metric | A | B | n | mean A | mean B | mean A − B | p (t, Holm) | p (Wilcoxon, Holm) | d_z |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|\n", f);
    for (size_t i = 0; i < s->n_tests; i++) {
        const cmp_test *t = &s->tests[i];
        const st_paired *p = &t->c.p;
        fputs("| ", f); md_text(f, s->runs[t->run].label);
        fprintf(f, " | %s | `%s` | `%s` | %zu | %.4g | %.4g | %.3g | %.3g%s | %.3g%s | ", res_metric_names[t->metric],
                s->keys[t->key_a], s->keys[t->key_b], p->n, t->mean_a, t->mean_b, p->mean_diff, t->c.p_t_holm,
                rp_marks(t->c.p_t_holm), t->c.p_w_holm, rp_marks(t->c.p_w_holm));
        if (p->dz_defined) fprintf(f, "%.3g |\n", p->d_z); else fputs("– |\n", f);
    }
}

kv_status cmp_write(cmp_set *s, rp_ctx *c, kv_error *err)
{
    char d[4608];
    const char *sub[2] = { "tables", "figures" };
    for (int i = 0; i < 2; i++) {
        if (i == 1 && c->no_figures) break;
        snprintf(d, sizeof d, "%s/%s", c->dir, sub[i]);
        if (mkdir(d, 0777) && errno != EEXIST) return kv_error_set(err, KV_ERR_IO, "%s: cannot create: %s", d, strerror(errno));
    }
    kv_status st;
    if ((st = write_pivot_csv(s, c, err)) || (st = write_pivot_tex(s, c, err)) || (st = write_pairs_csv(s, c, err))) return st;
    s->n_fig = 0;
    if (!c->no_figures && !c->plots_dir)
        rp_note(&c->notes, "figures skipped: the gnuplot templates (plots/) were not found; pass --plots DIR");
    if (!c->no_figures && c->plots_dir)
        for (size_t i = 0; i < s->n_metrics; i++)
            if ((st = write_figure(s, c, s->metrics[i], err))) return st;

    FILE *f = rp_open_out(c, "compare.md", "w", err);
    if (!f) return err->code;
    fprintf(f, "# kvreport compare\n\n%zu runs side by side (kvreport %s). Each run is analysed alone: nothing is merged "
            "across runs. Configurations are matched across runs by their canonical configuration string (# = its number on the figures' x axes); – marks a "
            "configuration a run lacks or a metric it has no value of. Cells: mean over the run's sequences ± the "
            "half-width of its 95%% t-interval (n sequences).\n\n## Runs\n\n", s->n_runs, c->version ? c->version : "");
    md_runs(s, f);
    fputs("\n## Pivot tables\n\ntables/pivot.csv holds the same numbers (n, mean, t-interval per run), tables/pivot.tex "
          "the same tables in LaTeX (booktabs).\n", f);
    for (size_t i = 0; i < s->n_metrics; i++) md_pivot(s, s->metrics[i], f);
    md_pairs(s, f);
    if (s->n_fig) {
        fputs("\n## Figures\n", f);
        for (size_t i = 0; i < s->n_fig; i++) {
            const rp_figure *g = &s->fig[i];
            if (g->rendered) fprintf(f, "\n![%s](figures/%s.png)\n\n%s (figures/%s.pdf)\n", g->stem, g->stem, g->caption, g->stem);
            else fprintf(f, "\n%s: not rendered (%s); figures/%s.gp and .dat are written.\n", g->stem, g->why, g->stem);
        }
    }
    if (c->notes.n) {
        fputs("\n## Notes\n\n", f);
        for (size_t i = 0; i < c->notes.n; i++) { fputs("- ", f); md_text(f, c->notes.line[i]); fputc('\n', f); }
    }
    return rp_close_out(c, f, "compare.md", err);
}
