/* Sweep parsing, grid expansion and canonical configuration strings (sweep.h). */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "suggest.h"
#include "sweep.h"

#define MAX_TOK 64          /* key=value tokens per line */
#define MAX_VALS 64         /* values of one comma list */

uint64_t rp_hash64(const void *data, size_t n, uint64_t h)
{
    const unsigned char *p = data;
    if (!h) h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ull; }
    return h;
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* Shortest "%.Ng" that reads back to the same double. */
static void fmt_double(char *buf, size_t len, double x)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, x);
        if (strtod(buf, NULL) == x) return;
    }
}

/* choice index of `val` in "a|b|c", or -1; with out != NULL, writes choice i's name. */
static int enum_index(const char *choices, const char *val, int want, char *out, size_t outlen)
{
    int i = 0;
    const char *p = choices;
    while (p && *p) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (val && strlen(val) == len && !strncmp(p, val, len)) return i;
        if (out && i == want) { snprintf(out, outlen, "%.*s", (int)len, p); return i; }
        i++;
        p = bar ? bar + 1 : NULL;
    }
    return -1;
}

/* *text = a copy of s (text may be NULL: nothing kept). 0 ok, -1 out of memory. */
static int set_text(char **text, const char *s, char *err, size_t errlen)
{
    if (!text) return 0;
    char *c = strdup(s);
    if (!c) return fail(err, errlen, "out of memory");
    free(*text);
    *text = c;
    return 0;
}

/* RP_LIST: "a/b/c" -> the count, canonical text with each number in its shortest form. */
static int parse_list_value(const rp_param_def *d, const char *name, const char *val, double *out, char **text,
                            char *err, size_t errlen)
{
    if (!strcmp(val, "none")) { *out = 0; return set_text(text, "none", err, errlen); }
    size_t n = 1;
    for (const char *p = val; *p; p++) n += *p == '/';
    if (n > RP_LIST_MAX)
        return fail(err, errlen, "%s: %s=: %zu numbers, more than %d", name, d->name, n, RP_LIST_MAX);
    char *canon = malloc(n * 32 + 1);
    if (!canon) return fail(err, errlen, "out of memory");
    size_t len = 0, i = 0;
    for (const char *p = val;; i++) {
        size_t k = strcspn(p, "/");
        char item[64], *end = NULL;
        if (k == 0) {
            free(canon);
            return fail(err, errlen, "%s: %s=%s: number %zu is empty (numbers joined by '/', e.g. 0.2/0.5/0.8)", name,
                        d->name, val, i + 1);
        }
        snprintf(item, sizeof item, "%.*s", (int)(k < 63 ? k : 63), p);
        errno = 0;
        double x = strtod(item, &end);
        if (k >= 63 || *end || errno || !isfinite(x)) {
            free(canon);
            return fail(err, errlen, "%s: %s=%s: number %zu '%.*s' is not a finite number", name, d->name, val, i + 1,
                        (int)k, p);
        }
        if (x < d->min || x > d->max) {
            free(canon);
            return fail(err, errlen, "%s: %s=%s: number %zu (%s) out of range [%g, %g]", name, d->name, val, i + 1,
                        item, d->min, d->max);
        }
        char b[32];
        fmt_double(b, sizeof b, x);
        len += (size_t)sprintf(canon + len, "%s%s", i ? "/" : "", b);
        if (!p[k]) break;
        p += k + 1;
    }
    *out = (double)(i + 1);
    int rc = set_text(text, canon, err, errlen);
    free(canon);
    return rc;
}

/* RP_PATH: a readable regular file; relative paths against basedir (a sweep file's directory). */
static int parse_path_value(const rp_param_def *d, const char *name, const char *val, const char *basedir,
                            double *out, char **text, char *err, size_t errlen)
{
    if (!strcmp(val, "none")) { *out = 0; return set_text(text, "none", err, errlen); }
    char path[1024];
    int w = basedir && val[0] != '/' && strcmp(basedir, ".") ? snprintf(path, sizeof path, "%s/%s", basedir, val)
                                                             : snprintf(path, sizeof path, "%s", val);
    if (w < 0 || (size_t)w >= 512) return fail(err, errlen, "%s: %s=%s: path longer than 511 bytes", name, d->name, val);
    struct stat st;
    if (stat(path, &st)) return fail(err, errlen, "%s: %s=%s: cannot open %s: %s", name, d->name, val, path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return fail(err, errlen, "%s: %s=%s: %s is not a regular file", name, d->name, val, path);
    FILE *f = fopen(path, "r");
    if (!f) return fail(err, errlen, "%s: %s=%s: cannot read %s: %s", name, d->name, val, path, strerror(errno));
    fclose(f);
    *out = 1;
    return set_text(text, path, err, errlen);
}

/* One value of parameter d. LIST / PATH also give their canonical text (when text != NULL). */
static int parse_value(const rp_param_def *d, const char *name, const char *val, const char *basedir, double *out,
                       char **text, char *err, size_t errlen)
{
    char *end = NULL;
    errno = 0;
    switch (d->type) {
    case RP_LIST: return parse_list_value(d, name, val, out, text, err, errlen);
    case RP_PATH: return parse_path_value(d, name, val, basedir, out, text, err, errlen);
    case RP_INT: {
        long long x = strtoll(val, &end, 10);
        if (!*val || *end || errno) return fail(err, errlen, "%s: %s=%s is not an integer", name, d->name, val);
        if ((double)x < d->min || (double)x > d->max)
            return fail(err, errlen, "%s: %s=%s out of range [%g, %g]", name, d->name, val, d->min, d->max);
        *out = (double)x;
        return 0;
    }
    case RP_FLOAT: {
        double x = strtod(val, &end);
        if (!*val || *end || errno || !isfinite(x))
            return fail(err, errlen, "%s: %s=%s is not a finite number", name, d->name, val);
        if (x < d->min || x > d->max)
            return fail(err, errlen, "%s: %s=%s out of range [%g, %g]", name, d->name, val, d->min, d->max);
        *out = x;
        return 0;
    }
    case RP_ENUM: {
        int i = enum_index(d->choices, val, -1, NULL, 0);
        if (i < 0) {
            /* the choices as a list, for the suggestion */
            char buf[512], hint[128];
            const char *cands[32];
            size_t nc = 0;
            snprintf(buf, sizeof buf, "%s", d->choices);
            for (char *save = NULL, *t = strtok_r(buf, "|", &save); t && nc < 32; t = strtok_r(NULL, "|", &save)) cands[nc++] = t;
            return fail(err, errlen, "%s: %s=%s is not one of %s%s", name, d->name, val, d->choices,
                        kv_suggest_hint(val, cands, nc, hint, sizeof hint));
        }
        *out = i;
        return 0;
    }
    case RP_BOOL:
        if (!strcmp(val, "1") || !strcmp(val, "true") || !strcmp(val, "yes")) { *out = 1; return 0; }
        if (!strcmp(val, "0") || !strcmp(val, "false") || !strcmp(val, "no")) { *out = 0; return 0; }
        return fail(err, errlen, "%s: %s=%s is not a boolean (0|1)", name, d->name, val);
    }
    return fail(err, errlen, "%s: %s: bad parameter type", name, d->name);
}

static void fmt_value(const rp_param_def *d, double v, char *buf, size_t len)
{
    switch (d->type) {
    case RP_INT: snprintf(buf, len, "%lld", (long long)v); break;
    case RP_FLOAT: fmt_double(buf, len, v); break;
    case RP_ENUM: enum_index(d->choices, NULL, (int)v, buf, len); break;
    case RP_BOOL: snprintf(buf, len, "%d", v != 0); break;
    case RP_LIST: case RP_PATH: snprintf(buf, len, "none"); break;   /* their text is printed instead */
    }
}

static void config_free(rp_config *c)
{
    for (size_t i = 0; i < c->n_parts; i++) {
        if (c->part[i].cfg && c->part[i].s->free_cfg) c->part[i].s->free_cfg(c->part[i].cfg);
        for (size_t k = 0; k < RP_MAX_PARAMS; k++) { free(c->part[i].text[k]); c->part[i].text[k] = NULL; }
    }
    c->n_parts = 0;
}

int sweep_param_defaults(const rp_strategy *s, double *values, char *err, size_t errlen)
{
    for (size_t i = 0; i < s->n_params && i < RP_MAX_PARAMS; i++) {
        char e2[256];
        if (parse_value(&s->params[i], s->name, s->params[i].def, NULL, &values[i], NULL, e2, sizeof e2))
            return fail(err, errlen, "internal: bad default: %s", e2);
    }
    return 0;
}

void sweep_free(rp_sweep *sw)
{
    if (!sw) return;
    for (size_t i = 0; i < sw->n; i++) config_free(&sw->cfg[i]);
    free(sw->cfg);
    memset(sw, 0, sizeof *sw);
}

/* One key=value token of the line, its part, and its comma-split values. */
typedef struct tok {
    size_t part;
    char key[64];
    char *vals[MAX_VALS];
    size_t n_vals;
} tok;

/* Build configuration `pick` (value index per token) of the line. */
void sweep_strip_budget(const char *canon, char *out, size_t cap)
{
    size_t n = 0;
    if (!cap) return;
    for (const char *p = canon; *p;) {
        if (*p == ' ' && (!strncmp(p + 1, "keep=", 5) || !strncmp(p + 1, "budget=", 7))) {
            p++;
            while (*p && *p != ' ') p++;
            continue;
        }
        if (n + 1 < cap) out[n++] = *p;
        p++;
    }
    out[n] = 0;
}

int sweep_label_check(const char *s, char *why, size_t cap)
{
    size_t n = strlen(s);
    if (!n) { snprintf(why, cap, "is empty"); return -1; }
    if (n >= RP_LABEL_MAX) { snprintf(why, cap, "is longer than %d bytes", RP_LABEL_MAX - 1); return -1; }
    if (s[0] == ' ' || s[n - 1] == ' ') { snprintf(why, cap, "starts or ends with a space"); return -1; }
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        /* CSV fields are unquoted (no ','); '"' '{' '}' '#' belong to the sweep syntax; quotes
         * and backslashes would need escaping in gnuplot titles and shell lines */
        if (*p < 0x20 || *p == 0x7f) { snprintf(why, cap, "holds a control character"); return -1; }
        if (strchr(",\"'`\\{}#", *p)) { snprintf(why, cap, "holds '%c' (not allowed in a label)", *p); return -1; }
    }
    return 0;
}

/* Expand {KEY} of a label template with the values the line's tokens take in `pick`. */
static int expand_label(const char *tmpl, const tok *toks, size_t n_tok, const size_t *pick, char *out,
                        size_t cap, const char *where, char *err, size_t errlen)
{
    size_t n = 0;
    for (const char *p = tmpl; *p;) {
        const char *v = NULL;
        size_t vlen = 1;
        if (*p == '{') {
            const char *close = strchr(p, '}');
            if (!close) return fail(err, errlen, "%s: label \"%s\": '{' without '}'", where, tmpl);
            size_t klen = (size_t)(close - p - 1);
            for (size_t t = 0; t < n_tok && !v; t++)
                if (strlen(toks[t].key) == klen && !strncmp(toks[t].key, p + 1, klen)) v = toks[t].vals[pick[t]];
            if (!v)
                return fail(err, errlen, "%s: label \"%s\": {%.*s} names no parameter given on the line", where, tmpl,
                            (int)klen, p + 1);
            vlen = strlen(v);
            p = close + 1;
        } else {
            v = p++;
        }
        if (n + vlen >= cap) return fail(err, errlen, "%s: label \"%s\" is longer than %d bytes", where, tmpl, RP_LABEL_MAX - 1);
        memcpy(out + n, v, vlen);
        n += vlen;
    }
    out[n] = 0;
    char why[128];
    if (sweep_label_check(out, why, sizeof why)) return fail(err, errlen, "%s: label \"%s\" %s", where, out, why);
    return 0;
}

/* A label names one configuration, or several that differ in their budget alone. */
static int label_unique(const rp_sweep *sw, const char *label, const char *canon, const char *where,
                        char *err, size_t errlen)
{
    if (!label[0]) return 0;
    char a[1024], b[1024];
    sweep_strip_budget(canon, a, sizeof a);
    for (size_t i = 0; i < sw->n; i++) {
        if (strcmp(sw->cfg[i].label, label)) continue;
        sweep_strip_budget(sw->cfg[i].canon, b, sizeof b);
        if (strcmp(a, b))
            return fail(err, errlen, "%s: label \"%s\" already names '%s', which differs from '%s' in more than its "
                        "budget (make labels unique, e.g. with {KEY} placeholders)", where, label, sw->cfg[i].canon, canon);
    }
    return 0;
}

static int build(rp_sweep *sw, char names[][64], size_t n_parts, tok *toks, size_t n_tok,
                 const size_t *pick, const char *label_tmpl, const char *where, const char *basedir,
                 char *err, size_t errlen)
{
    char label[RP_LABEL_MAX] = "";
    if (label_tmpl && expand_label(label_tmpl, toks, n_tok, pick, label, sizeof label, where, err, errlen)) return -1;
    rp_config c;
    memset(&c, 0, sizeof c);
    char canon[1024] = "";
    size_t clen = 0;
    if (n_parts == 2) {     /* composition rule first: it explains more than a parameter error */
        const rp_strategy *a = rp_strategy_find(names[0]), *b = rp_strategy_find(names[1]);
        if (a && b && (!(a->kind & RP_EVICT) || b->kind != RP_ENCODE || !b->encode))
            return fail(err, errlen, "%s: a composition is an eviction strategy followed by an encoding one "
                        "(got %s + %s)", where, a->name, b->name);
    }
    for (size_t p = 0; p < n_parts; p++) {
        const rp_strategy *s = rp_strategy_find(names[p]);
        if (!s) {
            char known[1024] = "";
            for (size_t i = 0; i < rp_strategy_count(); i++) {
                strncat(known, i ? ", " : "", sizeof known - strlen(known) - 1);
                strncat(known, rp_strategy_at(i)->name, sizeof known - strlen(known) - 1);
            }
            const char *cands[256];
            size_t nk = rp_strategy_count() < 256 ? rp_strategy_count() : 256;
            for (size_t i = 0; i < nk; i++) cands[i] = rp_strategy_at(i)->name;
            char hint[128];
            config_free(&c);
            return fail(err, errlen, "%s: unknown strategy '%s'%s (known: %s)", where, names[p],
                        kv_suggest_hint(names[p], cands, nk, hint, sizeof hint), known);
        }
        rp_part *pt = &c.part[c.n_parts++];
        pt->s = s;
        int seen[RP_MAX_PARAMS] = { 0 };
        for (size_t i = 0; i < s->n_params; i++) {
            char e2[256];
            if (parse_value(&s->params[i], s->name, s->params[i].def, NULL, &pt->values[i], &pt->text[i], e2,
                            sizeof e2)) {
                config_free(&c);
                return fail(err, errlen, "%s: internal: bad default: %s", where, e2);
            }
        }
        rp_budget_kind bk = RP_BUDGET_NONE;
        double bv = 0;
        for (size_t t = 0; t < n_tok; t++) {
            if (toks[t].part != p) continue;
            const char *key = toks[t].key, *val = toks[t].vals[pick[t]];
            if (!strcmp(key, "keep") || !strcmp(key, "budget")) {
                if (!s->needs_budget) {
                    config_free(&c);
                    return fail(err, errlen, "%s: %s takes no budget (%s=)", where, s->name, key);
                }
                if (bk != RP_BUDGET_NONE) {
                    config_free(&c);
                    return fail(err, errlen, "%s: %s: give one of keep= or budget=, once", where, s->name);
                }
                if (!strcmp(key, "keep")) {
                    char *end;
                    double x = strtod(val, &end);
                    if (!*val || *end || !(x > 0 && x <= 1)) {
                        config_free(&c);
                        return fail(err, errlen, "%s: %s: keep=%s out of range (0, 1]", where, s->name, val);
                    }
                }
                rp_param_def d = !strcmp(key, "keep")
                    ? (rp_param_def){ "keep", RP_FLOAT, "1", 0, 1, NULL, NULL }
                    : (rp_param_def){ "budget", RP_INT, "1", 1, 1e15, NULL, NULL };
                char e2[256];
                if (parse_value(&d, s->name, val, NULL, &bv, NULL, e2, sizeof e2)) {
                    config_free(&c);
                    return fail(err, errlen, "%s: %s", where, e2);
                }
                if (d.type == RP_FLOAT && !(bv > 0)) {
                    config_free(&c);
                    return fail(err, errlen, "%s: %s: keep=%s must be in (0, 1]", where, s->name, val);
                }
                bk = d.type == RP_FLOAT ? RP_BUDGET_KEEP : RP_BUDGET_COUNT;
                continue;
            }
            size_t i = 0;
            while (i < s->n_params && strcmp(s->params[i].name, key)) i++;
            if (i == s->n_params) {
                char known[512] = "";
                for (size_t j = 0; j < s->n_params; j++) {
                    strncat(known, j ? ", " : "", sizeof known - strlen(known) - 1);
                    strncat(known, s->params[j].name, sizeof known - strlen(known) - 1);
                }
                const char *cands[RP_MAX_PARAMS + 2];
                size_t nk = 0;
                if (s->needs_budget) { cands[nk++] = "keep"; cands[nk++] = "budget"; }
                for (size_t j = 0; j < s->n_params && nk < RP_MAX_PARAMS + 2; j++) cands[nk++] = s->params[j].name;
                char hint[128];
                config_free(&c);
                return fail(err, errlen, "%s: unknown parameter '%s' for %s%s (parameters: %s%s%s)", where, key,
                            s->name, kv_suggest_hint(key, cands, nk, hint, sizeof hint),
                            s->needs_budget ? "keep, budget" : "", s->needs_budget && s->n_params ? ", " : "",
                            s->n_params ? known : (s->needs_budget ? "" : "none"));
            }
            if (seen[i]++) {
                config_free(&c);
                return fail(err, errlen, "%s: %s: parameter %s given twice", where, s->name, key);
            }
            char e2[1024];
            if (parse_value(&s->params[i], s->name, val, basedir, &pt->values[i], &pt->text[i], e2, sizeof e2)) {
                config_free(&c);
                return fail(err, errlen, "%s: %s", where, e2);
            }
        }
        if (s->needs_budget && bk == RP_BUDGET_NONE) {
            config_free(&c);
            return fail(err, errlen, "%s: %s needs a budget: keep=FRACTION or budget=ENTRIES", where, s->name);
        }
        if (bk != RP_BUDGET_NONE) {
            if (c.budget_kind != RP_BUDGET_NONE) {
                config_free(&c);
                return fail(err, errlen, "%s: only one part of a composition may take a budget", where);
            }
            c.budget_kind = bk;
            c.budget_value = bv;
        }
        /* canonical text of this part */
        clen += (size_t)snprintf(canon + clen, sizeof canon - clen, "%s%s", p ? " + " : "", s->name);
        if (bk != RP_BUDGET_NONE && clen < sizeof canon) {
            char b[64];
            if (bk == RP_BUDGET_KEEP) fmt_double(b, sizeof b, bv); else snprintf(b, sizeof b, "%lld", (long long)bv);
            clen += (size_t)snprintf(canon + clen, sizeof canon - clen, " %s=%s", bk == RP_BUDGET_KEEP ? "keep" : "budget", b);
        }
        for (size_t i = 0; i < s->n_params && clen < sizeof canon; i++) {
            char b[128];
            fmt_value(&s->params[i], pt->values[i], b, sizeof b);
            if (i + s->late_params >= s->n_params && !pt->text[i] && !strcmp(b, s->params[i].def)) continue;
            clen += (size_t)snprintf(canon + clen, sizeof canon - clen, " %s=%s", s->params[i].name,
                                     pt->text[i] ? pt->text[i] : b);
        }
        if (clen >= sizeof canon) {
            config_free(&c);
            return fail(err, errlen, "%s: configuration string too long", where);
        }
        char e2[512] = "";
        int crc = s->configure_text ? s->configure_text(pt->values, (const char *const *)pt->text, &pt->cfg, e2, sizeof e2)
                  : s->configure ? s->configure(pt->values, &pt->cfg, e2, sizeof e2) : 0;
        if (crc) {
            pt->cfg = NULL;
            config_free(&c);
            return fail(err, errlen, "%s: %s", where, e2[0] ? e2 : "invalid parameters");
        }
        strncat(c.family, p ? "+" : "", sizeof c.family - strlen(c.family) - 1);
        strncat(c.family, s->name, sizeof c.family - strlen(c.family) - 1);
    }
    /* composition rules */
    if (c.n_parts == 1) {
        if (c.part[0].s->kind & RP_EVICT) {
            c.evict = c.part[0].s; c.evict_cfg = c.part[0].cfg;
        } else {
            c.evict = rp_strategy_find("full"); c.evict_cfg = NULL;
            c.enc = c.part[0].s; c.enc_cfg = c.part[0].cfg;
        }
    } else {
        if (!(c.part[0].s->kind & RP_EVICT) || c.part[1].s->kind != RP_ENCODE || !c.part[1].s->encode) {
            config_free(&c);
            return fail(err, errlen, "%s: a composition is an eviction strategy followed by an encoding one "
                        "(got %s + %s)", where, c.part[0].s->name, c.part[1].s->name);
        }
        c.evict = c.part[0].s; c.evict_cfg = c.part[0].cfg;
        c.enc = c.part[1].s; c.enc_cfg = c.part[1].cfg;
    }
    if (!c.evict) { config_free(&c); return fail(err, errlen, "%s: internal: no 'full' strategy registered", where); }
    if (c.enc && !c.enc->encode) {
        config_free(&c);
        return fail(err, errlen, "%s: %s has no encode hook", where, c.enc->name);
    }
    memcpy(c.canon, canon, sizeof canon);
    c.hash = rp_hash64(c.canon, strlen(c.canon), 0);
    for (size_t i = 0; i < sw->n; i++)
        if (sw->cfg[i].hash == c.hash && !strcmp(sw->cfg[i].canon, c.canon)) {   /* duplicate: run once */
            config_free(&c);
            rp_config *old = &sw->cfg[i];
            if (!label[0] || !strcmp(old->label, label)) return 0;
            if (old->label[0])
                return fail(err, errlen, "%s: '%s' is already labelled \"%s\", not \"%s\"", where, old->canon, old->label, label);
            if (label_unique(sw, label, old->canon, where, err, errlen)) return -1;
            memcpy(old->label, label, sizeof old->label);
            return 0;
        }
    if (label_unique(sw, label, c.canon, where, err, errlen)) { config_free(&c); return -1; }
    memcpy(c.label, label, sizeof c.label);
    if (sw->n == sw->cap) {
        size_t cap = sw->cap ? 2 * sw->cap : 16;
        rp_config *q = realloc(sw->cfg, cap * sizeof *q);
        if (!q) { config_free(&c); return fail(err, errlen, "%s: out of memory", where); }
        sw->cfg = q;
        sw->cap = cap;
    }
    c.id = sw->n;
    sw->cfg[sw->n++] = c;
    return 0;
}

static int add_line(rp_sweep *sw, const char *line0, const char *where, const char *basedir, char *err, size_t errlen)
{
    char line[4096];
    if (strlen(line0) >= sizeof line) return fail(err, errlen, "%s: line too long", where);
    strcpy(line, line0);
    /* words: whitespace-separated outside double quotes; '#' outside quotes starts a comment */
    char *words[MAX_TOK + RP_MAX_PARTS * 2 + 1];
    size_t nw = 0;
    const char *label_tmpl = NULL;
    for (char *p = line;;) {
        while (*p && strchr(" \t\r\n", *p)) p++;
        if (!*p || *p == '#') break;
        char *w = p;
        int quoted = 0;
        for (; *p && (quoted || !strchr(" \t\r\n#", *p)); p++)
            if (*p == '"') quoted = !quoted;
        if (quoted) return fail(err, errlen, "%s: a '\"' without its closing '\"'", where);
        int end = !*p || *p == '#';
        *p = 0;
        if (!strncmp(w, "label=", 6)) {            /* the line's display name, not a parameter */
            if (label_tmpl) return fail(err, errlen, "%s: label= given twice", where);
            char *v = w + 6;
            size_t L = strlen(v);
            if (L >= 2 && v[0] == '"' && v[L - 1] == '"') { v[L - 1] = 0; v++; }
            if (!*v) return fail(err, errlen, "%s: empty label=", where);
            if (strchr(v, '"')) return fail(err, errlen, "%s: label=%s: a label holds no '\"'", where, v);
            label_tmpl = v;
        } else {
            if (strchr(w, '"')) return fail(err, errlen, "%s: '%s': quotes are only for label=\"...\"", where, w);
            if (nw == sizeof words / sizeof words[0] - 1) return fail(err, errlen, "%s: too many words", where);
            words[nw++] = w;
        }
        if (end) break;
        p++;
    }
    if (!nw && label_tmpl) return fail(err, errlen, "%s: label= without a configuration", where);
    if (!nw) return 0;
    char names[RP_MAX_PARTS][64];
    size_t n_parts = 0;
    tok toks[MAX_TOK];
    size_t n_tok = 0;
    int expect_name = 1;
    for (size_t w = 0; w < nw; w++) {
        char *x = words[w];
        if (!strcmp(x, "+")) {
            if (expect_name) return fail(err, errlen, "%s: '+' without a strategy before it", where);
            expect_name = 1;
            continue;
        }
        if (expect_name) {
            if (strchr(x, '=')) return fail(err, errlen, "%s: expected a strategy name, got '%s'", where, x);
            if (n_parts == RP_MAX_PARTS)
                return fail(err, errlen, "%s: at most %d strategies per composition", where, RP_MAX_PARTS);
            if (strlen(x) >= 64) return fail(err, errlen, "%s: strategy name too long", where);
            strcpy(names[n_parts++], x);
            expect_name = 0;
            continue;
        }
        char *eq = strchr(x, '=');
        if (!eq || eq == x || !eq[1])
            return fail(err, errlen, "%s: expected key=value after %s, got '%s' (compose with ' + ')", where,
                        names[n_parts - 1], x);
        if (n_tok == MAX_TOK) return fail(err, errlen, "%s: too many parameters", where);
        tok *t = &toks[n_tok++];
        *eq = 0;
        if (strlen(x) >= sizeof t->key) return fail(err, errlen, "%s: parameter name too long", where);
        strcpy(t->key, x);
        t->part = n_parts - 1;
        t->n_vals = 0;
        char *v = eq + 1;
        for (;;) {
            char *comma = strchr(v, ',');
            if (comma) *comma = 0;
            if (!*v) return fail(err, errlen, "%s: empty value in %s=", where, t->key);
            if (t->n_vals == MAX_VALS) return fail(err, errlen, "%s: too many values for %s", where, t->key);
            t->vals[t->n_vals++] = v;
            if (!comma) break;
            v = comma + 1;
        }
    }
    if (expect_name) return fail(err, errlen, "%s: '+' at the end of the line", where);
    /* bounded before any work: 64 values of 7 parameters would be 4e12 configurations */
    size_t product = 1;
    for (size_t t = 0; t < n_tok; t++) {
        product *= toks[t].n_vals;
        if (product > RP_MAX_CONFIGS) break;
    }
    if (product > RP_MAX_CONFIGS || sw->n + product > RP_MAX_CONFIGS)
        return fail(err, errlen, "%s: the line expands to %s%zu configurations; a sweep holds at most %d", where,
                    product > RP_MAX_CONFIGS ? "more than " : "", product > RP_MAX_CONFIGS ? (size_t)RP_MAX_CONFIGS : product,
                    RP_MAX_CONFIGS);
    /* Cartesian product: first list outermost */
    size_t pick[MAX_TOK] = { 0 };
    for (;;) {
        if (build(sw, names, n_parts, toks, n_tok, pick, label_tmpl, where, basedir, err, errlen)) return -1;
        size_t t = n_tok;
        while (t > 0) {
            t--;
            if (++pick[t] < toks[t].n_vals) break;
            pick[t] = 0;
            if (t == 0) return 0;
        }
        if (n_tok == 0) return 0;
    }
}

int sweep_add_line(rp_sweep *sw, const char *line, const char *where, char *err, size_t errlen)
{
    return add_line(sw, line, where, NULL, err, errlen);
}

int sweep_add_file(rp_sweep *sw, const char *path, char *err, size_t errlen)
{
    char dir[1024];
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == path) snprintf(dir, sizeof dir, "/");
    else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    FILE *f = fopen(path, "r");
    if (!f) return fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    char line[4096], where[4200];
    size_t lineno = 0, before = sw->n;
    int rc = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        snprintf(where, sizeof where, "%s:%zu", path, lineno);
        if (!strchr(line, '\n') && !feof(f)) { rc = fail(err, errlen, "%s: line too long", where); break; }
        if ((rc = add_line(sw, line, where, dir, err, errlen))) break;
    }
    if (!rc && ferror(f)) rc = fail(err, errlen, "%s: read error", path);
    fclose(f);
    if (!rc && sw->n == before) rc = fail(err, errlen, "%s: no configuration in the sweep", path);
    return rc;
}

int sweep_budget(const rp_config *c, size_t full, size_t *B)
{
    switch (c->budget_kind) {
    case RP_BUDGET_NONE: *B = full; return 0;
    case RP_BUDGET_KEEP: {
        double b = round(c->budget_value * (double)full);   /* half away from zero */
        *B = b < 1 ? 1 : (size_t)b;
        if (*B > full) *B = full;
        return 0;
    }
    case RP_BUDGET_COUNT:
        if (c->budget_value > (double)full) return -1;
        *B = (size_t)c->budget_value;
        return 0;
    }
    return -1;
}
