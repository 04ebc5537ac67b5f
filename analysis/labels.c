/* Display names of configurations (results.h res_name_configs).
 *
 * Canonical strings carry every parameter with its default, so they are exact but long
 * ("snapkv keep=0.25 window=16 kernel=5 pool=max preset=none"): too wide for a table column
 * or a legend. A configuration is shown by its sweep label when it has one, else by its
 * family and the parameters that take more than one value among that family's
 * configurations in these results and differ from the strategy's default there. The
 * defaults come from the results themselves (provenance.json param_defaults, written by
 * kvreplay from its strategy registry, which kvreport does not link); results written
 * before that key existed show every varying parameter. */
#include "results.h"
#include "suggest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One "key=value" word of a canonical string, by part, with its strategy's name. */
typedef struct kvw { size_t part; char key[64]; char val[128]; char strategy[64]; } kvw;

#define MAX_W 64

/* Splits a canonical string into its key=value words (strategy names skipped). */
static size_t split_words(const char *canon, kvw *w)
{
    size_t n = 0, part = 0;
    char strategy[64] = "";
    const char *p = canon;
    while (*p) {
        while (*p == ' ') p++;
        const char *e = p;
        while (*e && *e != ' ') e++;
        size_t len = (size_t)(e - p);
        if (len == 1 && *p == '+') part++;
        else {
            const char *eq = memchr(p, '=', len);
            if (!eq) snprintf(strategy, sizeof strategy, "%.*s", (int)len, p);
            if (eq && n < MAX_W) {
                size_t kl = (size_t)(eq - p), vl = len - kl - 1;
                w[n].part = part;
                memcpy(w[n].strategy, strategy, sizeof strategy);
                snprintf(w[n].key, sizeof w[n].key, "%.*s", (int)kl, p);
                snprintf(w[n].val, sizeof w[n].val, "%.*s", (int)vl, eq + 1);
                n++;
            }
        }
        p = e;
    }
    return n;
}

static int is_budget(const char *key) { return !strcmp(key, "keep") || !strcmp(key, "budget"); }

static int is_number(const char *s)
{
    char *end;
    if (!*s) return 0;
    (void)strtod(s, &end);
    return !*end;
}

/* The default of strategy's parameter key from provenance.json's param_defaults
 * ("name key=default ...;name ..."), into buf; 0 when unknown. */
static int param_default(const res_set *s, const char *strategy, const char *key, char *buf, size_t cap)
{
    const char *defs = s->n_dirs ? res_prov(&s->dirs[0], "param_defaults") : NULL;
    size_t sl = strlen(strategy), kl = strlen(key);
    for (const char *p = defs; p && *p;) {
        const char *end = strchr(p, ';');
        if (!end) end = p + strlen(p);
        if ((size_t)(end - p) > sl && !strncmp(p, strategy, sl) && p[sl] == ' ') {
            for (const char *q = p + sl; q < end;) {
                while (q < end && *q == ' ') q++;
                const char *e = q;
                while (e < end && *e != ' ') e++;
                if ((size_t)(e - q) > kl && !strncmp(q, key, kl) && q[kl] == '=') {
                    snprintf(buf, cap, "%.*s", (int)(e - q - (long)kl - 1), q + kl + 1);
                    return 1;
                }
                q = e;
            }
            return 0;
        }
        p = *end ? end + 1 : end;
    }
    return 0;
}

static int same_value(const char *a, const char *b)
{
    return !strcmp(a, b) || (is_number(a) && is_number(b) && strtod(a, NULL) == strtod(b, NULL));
}

/* Is the word its strategy's default value (numbers by value: "0.50" = "0.5")? */
static int is_default(const res_set *s, const kvw *w)
{
    char def[128];
    return param_default(s, w->strategy, w->key, def, sizeof def) && same_value(def, w->val);
}

static const kvw *find_word(const kvw *w, size_t n, size_t part, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (w[i].part == part && !strcmp(w[i].key, key)) return &w[i];
    return NULL;
}

/* Which words of a family's first configuration take more than one value among the
 * family's configurations (a word absent from some configuration varies). Computed once per
 * family: O(configurations) per family. */
typedef struct famvar { const char *family; kvw w[MAX_W]; size_t n; unsigned char vary[MAX_W]; } famvar;

static void famvar_init(const res_set *s, const char *family, famvar *f)
{
    kvw w[MAX_W];
    f->family = family;
    f->n = 0;
    for (size_t i = 0; i < s->n_configs; i++) {
        if (strcmp(s->configs[i].family, family)) continue;
        size_t n = split_words(s->configs[i].config, w);
        if (!f->n) { memcpy(f->w, w, n * sizeof *w); f->n = n; memset(f->vary, 0, sizeof f->vary); continue; }
        for (size_t k = 0; k < f->n; k++) {
            const kvw *x = find_word(w, n, f->w[k].part, f->w[k].key);
            if (!x || strcmp(x->val, f->w[k].val)) f->vary[k] = 1;
        }
    }
}

static int varies(const famvar *f, size_t part, const char *key)
{
    for (size_t k = 0; k < f->n; k++)
        if (f->w[k].part == part && !strcmp(f->w[k].key, key)) return f->vary[k];
    return 1;          /* not in the family's first configuration: it differs from it */
}

static void append(char *buf, size_t cap, const char *fmt, const char *a, const char *b)
{
    size_t n = strlen(buf);
    if (n < cap) snprintf(buf + n, cap - n, fmt, a, b);
}

/* Automatic name of configuration i; with_budget 0 gives its row name. */
static void auto_name(const res_set *s, size_t i, const famvar *fv, int with_budget, char *buf, size_t cap)
{
    const res_config *c = &s->configs[i];
    kvw w[MAX_W];
    size_t n = split_words(c->config, w);
    snprintf(buf, cap, "%s", c->family);
    for (size_t k = 0; k < n; k++) {
        if (is_budget(w[k].key)) {
            if (with_budget) append(buf, cap, " %s=%s", w[k].key, w[k].val);
            continue;
        }
        /* a parameter that varies within the family, where it is not at its default: two
         * different configurations differ in a parameter that is off its default in one of them */
        if (!varies(fv, w[k].part, w[k].key) || is_default(s, &w[k])) continue;
        append(buf, cap, " %s=%s", w[k].key, w[k].val);
    }
}

/* The budget word of a canonical string (" keep=0.25"), "" when none. */
static void budget_word(const char *canon, char *buf, size_t cap)
{
    kvw w[MAX_W];
    size_t n = split_words(canon, w);
    buf[0] = 0;
    for (size_t k = 0; k < n; k++)
        if (is_budget(w[k].key)) { snprintf(buf, cap, " %s=%s", w[k].key, w[k].val); return; }
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static int replace(char **slot, const char *v)
{
    char *p = dup_str(v);
    if (!p) return -1;
    free(*slot);
    *slot = p;
    return 0;
}

/* The family variation of configuration i's family, computed on first use. */
static const famvar *family_of(const res_set *s, size_t i, famvar **cache, size_t *n_cache)
{
    const char *fam = s->configs[i].family;
    for (size_t k = 0; k < *n_cache; k++)
        if (!strcmp((*cache)[k].family, fam)) return &(*cache)[k];
    famvar *nc = realloc(*cache, (*n_cache + 1) * sizeof *nc);
    if (!nc) return NULL;
    *cache = nc;
    famvar_init(s, fam, &nc[*n_cache]);
    return &nc[(*n_cache)++];
}

/* Every configuration of row key `rowkey` gets row name `row`. */
static int set_row(res_set *s, const char *rowkey, const char *row)
{
    char *k = dup_str(rowkey), *r = dup_str(row);
    int rc = k && r ? 0 : -1;
    for (size_t i = 0; !rc && i < s->n_configs; i++)
        if (!strcmp(s->configs[i].rowkey, k)) rc = replace(&s->configs[i].row, r);
    free(k); free(r);
    return rc;
}

kv_status res_name_configs(res_set *s, kv_error *err)
{
    char buf[1024], bw[256];
    size_t nc = s->n_configs, n_fam = 0;
    famvar *fam = NULL;
    kv_status st = KV_OK;
#define NOMEM() do { st = kv_error_set(err, KV_ERR_NOMEM, "out of memory"); goto out; } while (0)
    for (size_t i = 0; i < nc; i++) {
        res_config *c = &s->configs[i];
        size_t n = strlen(c->config) + 1;
        free(c->rowkey);
        if (!(c->rowkey = malloc(n))) NOMEM();
        /* the canonical string without its budget word */
        kvw w[MAX_W];
        size_t nw = split_words(c->config, w);
        snprintf(c->rowkey, n, "%s", c->config);
        for (size_t k = 0; k < nw; k++)
            if (is_budget(w[k].key)) {
                char word[256];
                snprintf(word, sizeof word, " %s=%s", w[k].key, w[k].val);
                char *at = strstr(c->rowkey, word);
                if (at) memmove(at, at + strlen(word), strlen(at + strlen(word)) + 1);
            }
    }
    for (size_t i = 0; i < nc; i++) {
        res_config *c = &s->configs[i];
        int shared = 0;      /* the label names several budgets of one row */
        for (size_t j = 0; c->label && j < nc && !shared; j++)
            shared = j != i && s->configs[j].label && !strcmp(s->configs[j].label, c->label);
        if (c->label) {
            budget_word(c->config, bw, sizeof bw);
            snprintf(buf, sizeof buf, "%s%s", c->label, shared ? bw : "");
        } else {
            const famvar *fv = family_of(s, i, &fam, &n_fam);
            if (!fv) NOMEM();
            auto_name(s, i, fv, 1, buf, sizeof buf);
        }
        if (replace(&c->name, buf)) NOMEM();
    }
    /* row names: the label every configuration of the row shares, else automatic */
    for (size_t i = 0; i < nc; i++) {
        res_config *c = &s->configs[i];
        const char *lab = c->label;
        for (size_t j = 0; j < nc && lab; j++)
            if (!strcmp(s->configs[j].rowkey, c->rowkey) && (!s->configs[j].label || strcmp(s->configs[j].label, lab))) lab = NULL;
        if (lab) snprintf(buf, sizeof buf, "%s", lab);
        else {
            const famvar *fv = family_of(s, i, &fam, &n_fam);
            if (!fv) NOMEM();
            auto_name(s, i, fv, 0, buf, sizeof buf);
        }
        if (replace(&c->row, buf)) NOMEM();
    }
    /* unique: a name another configuration also has falls back to the canonical string
     * (a label that equals an automatic name); a row name two rows have, to the row key */
    for (size_t i = 0; i < nc; i++)
        for (size_t j = 0; j < nc; j++) {
            res_config *a = &s->configs[i], *b = &s->configs[j];
            if (j == i) continue;
            res_config *x = a->label && !b->label ? b : a;
            if (!strcmp(a->name, b->name) && replace(&x->name, x->config)) NOMEM();
            if (strcmp(a->rowkey, b->rowkey) && !strcmp(a->row, b->row) && set_row(s, x->rowkey, x->rowkey)) NOMEM();
        }
out:
#undef NOMEM
    free(fam);
    return st;
}

/* The strategy names of a config string, in order, joined by '+' (key=value words skipped). */
static void strategies_of(const char *spec, char *out, size_t cap)
{
    out[0] = 0;
    size_t used = 0;
    for (const char *p = spec; *p;) {
        while (*p == ' ') p++;
        const char *e = p;
        while (*e && *e != ' ') e++;
        size_t len = (size_t)(e - p);
        if (len && !memchr(p, '=', len) && !(len == 1 && *p == '+') && used + len + 2 < cap) {
            used += (size_t)snprintf(out + used, cap - used, "%s%.*s", used ? "+" : "", (int)len, p);
        }
        p = e;
    }
}

/* Does spec ("streaming keep=0.25") name the configuration canon: the same strategies in
 * the same order, every key=value of spec present in canon's same part with an equal value,
 * and every parameter spec does not give at its default in canon (when the results record
 * the defaults: provenance.json param_defaults)? */
static int spelling_matches(const res_set *s, const char *spec, const char *canon)
{
    char a[256], b[256];
    strategies_of(spec, a, sizeof a);
    strategies_of(canon, b, sizeof b);
    if (!a[0] || strcmp(a, b)) return 0;
    kvw ws[MAX_W], wc[MAX_W];
    size_t ns = split_words(spec, ws), nc = split_words(canon, wc);
    for (size_t i = 0; i < ns; i++) {
        const kvw *x = find_word(wc, nc, ws[i].part, ws[i].key);
        if (!x || !same_value(x->val, ws[i].val)) return 0;
    }
    for (size_t i = 0; i < nc; i++) {
        char def[128];
        if (!find_word(ws, ns, wc[i].part, wc[i].key) && !is_budget(wc[i].key) &&
            param_default(s, wc[i].strategy, wc[i].key, def, sizeof def) && !same_value(def, wc[i].val))
            return 0;
    }
    return 1;
}

long res_find_name(const res_set *s, const char *name)
{
    for (size_t i = 0; i < s->n_configs; i++)
        if (!strcmp(s->configs[i].name, name)) return (long)i;
    for (size_t i = 0; i < s->n_configs; i++)     /* a label shared by several budgets: only when unique */
        if (s->configs[i].label && !strcmp(s->configs[i].label, name)) {
            for (size_t j = i + 1; j < s->n_configs; j++)
                if (s->configs[j].label && !strcmp(s->configs[j].label, name)) return -1;
            return (long)i;
        }
    return -1;
}

long res_resolve_config(const res_set *s, const char *spec, char *hint, size_t cap)
{
    if (cap) hint[0] = 0;
    long i = res_find_config(s, spec);
    if (i >= 0) return i;
    if ((i = res_find_name(s, spec)) >= 0) return i;
    /* another spelling of a configuration: the same strategies, and every key=value given
     * equal (numbers by value) to the canonical string's, which carries every parameter; the
     * configuration must be the only one that matches */
    long hit = -1;
    size_t nhit = 0;
    for (size_t k = 0; k < s->n_configs; k++)
        if (spelling_matches(s, spec, s->configs[k].config)) { hit = (long)k; nhit++; }
    if (nhit == 1) return hit;
    if (nhit > 1) {
        snprintf(hint, cap, "it matches %zu configurations; give more parameters, e.g. '%s'", nhit, s->configs[hit].config);
        return -1;
    }
    /* not there: the nearest canonical string or name */
    const char **cands = malloc((2 * s->n_configs + 1) * sizeof *cands);
    if (!cands) return -1;
    for (size_t k = 0; k < s->n_configs; k++) { cands[2 * k] = s->configs[k].config; cands[2 * k + 1] = s->configs[k].name; }
    const char *near = kv_suggest(spec, cands, 2 * s->n_configs);
    if (near) snprintf(hint, cap, "did you mean '%s'?", near);
    free(cands);
    return -1;
}
