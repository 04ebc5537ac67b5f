/* Results directory reader and merger (see results.h; format: replay/RESULTS.md). */
#include "results.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *const res_metric_names[RM_COUNT] = {
    "keep_frac", "kv_bytes", "full_bytes", "ratio", "kv_mse_k", "kv_mse_v",
    "kv_rel_mse_k", "kv_rel_mse_v", "attn_cos", "out_cos", "out_rel_err", "attn_kl",
    "mass_recall", "logit_kl", "nll_full", "nll_comp", "top1_agree", "ece_full",
    "ece_comp", "nll_delta",
};
const char *const res_head_metric_names[RH_COUNT] = {
    "keep_frac", "budget", "attn_cos", "out_cos", "out_rel_err", "attn_kl", "mass_recall",
    "kv_mse_k", "kv_mse_v",
};

int res_metric_index(const char *name)
{
    for (int i = 0; i < RM_COUNT; i++)
        if (!strcmp(name, res_metric_names[i])) return i;
    return -1;
}

int res_head_metric_index(const char *name)
{
    for (int i = 0; i < RH_COUNT; i++)
        if (!strcmp(name, res_head_metric_names[i])) return i;
    return -1;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* ---- whole-file read ------------------------------------------------------------------ */

kv_status res_read_file(const char *path, char **out, size_t *len, int *missing, kv_error *err)
{
    *out = NULL;
    if (missing) *missing = 0;
    /* O_NONBLOCK: a FIFO opens without waiting for a writer, and is then refused as not a
     * regular file (as are devices: /dev/zero, /dev/urandom). A symlink to a regular file is
     * followed (results directories assembled from links are fine). */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT && missing) { *missing = 1; return KV_OK; }
        return kv_error_set(err, KV_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb)) {
        int e = errno;
        close(fd);
        return kv_error_set(err, KV_ERR_IO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return kv_error_set(err, KV_ERR_FORMAT, "%s: not a regular file (a device, FIFO, socket or directory)", path);
    }
    if ((unsigned long long)sb.st_size > RES_MAX_FILE) {
        close(fd);
        return kv_error_set(err, KV_ERR_FORMAT, "%s: %lld bytes, larger than the %llu-byte limit of a results file",
                            path, (long long)sb.st_size, (unsigned long long)RES_MAX_FILE);
    }
    size_t cap = (size_t)sb.st_size + 1, n = 0;     /* +1: sees a file that grew since fstat */
    char *buf = malloc(cap + 1);
    if (!buf) { close(fd); return kv_error_set(err, KV_ERR_NOMEM, "%s: out of memory", path); }
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            free(buf); close(fd);
            return kv_error_set(err, KV_ERR_IO, "%s: read error: %s", path, strerror(e));
        }
        if (r == 0) break;
        n += (size_t)r;
        if (n == cap) {
            free(buf); close(fd);
            return kv_error_set(err, KV_ERR_IO, "%s: the file changed while it was read", path);
        }
    }
    close(fd);
    buf[n] = 0;
    if (memchr(buf, 0, n)) { free(buf); return kv_error_set(err, KV_ERR_FORMAT, "%s: contains NUL bytes", path); }
    *out = buf;
    *len = n;
    return KV_OK;
}

/* ---- CSV: header-addressed fields, no quoting (RESULTS.md) ---------------------------- */

#define CSV_MAXF 64
typedef struct csv {
    const char *path;
    char *buf, *cur;
    size_t line;                  /* 1-based number of the current row */
    char *hdr[CSV_MAXF]; size_t nhdr;
    char *f[CSV_MAXF];   size_t nf;
    int type[CSV_MAXF];           /* kv_col_type of each header field, -1 unknown to the schema */
} csv;

static int csv_split(char *line, char **f, size_t *nf)
{
    size_t n = 0;
    char *p = line;
    for (;;) {
        if (n == CSV_MAXF) return -1;
        f[n++] = p;
        char *c = strchr(p, ',');
        if (!c) break;
        *c = 0;
        p = c + 1;
    }
    *nf = n;
    return 0;
}

/* Next non-empty line into buf (NUL-terminated in place); NULL at the end. */
static char *csv_nextline(csv *c)
{
    while (c->cur && *c->cur) {
        char *s = c->cur;
        char *nl = strchr(s, '\n');
        if (nl) { *nl = 0; c->cur = nl + 1; } else c->cur = s + strlen(s);
        c->line++;
        size_t L = strlen(s);
        if (L && s[L - 1] == '\r') s[--L] = 0;
        if (L) return s;
    }
    return NULL;
}

static kv_status csv_open(csv *c, const char *path, int optional, int *missing, kv_error *err)
{
    memset(c, 0, sizeof *c);
    c->path = path;
    size_t len;
    kv_status s = res_read_file(path, &c->buf, &len, optional ? missing : NULL, err);
    if (s != KV_OK || !c->buf) return s;
    c->cur = c->buf;
    char *h = csv_nextline(c);
    if (!h) return kv_error_set(err, KV_ERR_FORMAT, "%s: empty file (no header row)", path);
    if (csv_split(h, c->hdr, &c->nhdr)) return kv_error_set(err, KV_ERR_FORMAT, "%s: too many columns", path);
    return KV_OK;
}

static void csv_close(csv *c) { free(c->buf); c->buf = NULL; }

/* The schema's columns of file f (lib/results_schema.h): every column it declares, `late`
 * ones excepted, must be in the header; the type of each is kept for csv_typed. Columns
 * the schema does not know are ignored (a newer writer's additions). */
static kv_status csv_schema(csv *c, kv_rfile f, kv_error *err)
{
    const kv_results_file *rf = kv_results_file_get(f);
    for (size_t i = 0; i < c->nhdr; i++) {
        long k = kv_results_column(f, c->hdr[i]);
        c->type[i] = k < 0 ? -1 : (int)rf->cols[k].type;
    }
    for (size_t k = 0; k < rf->n_cols; k++) {
        if (rf->cols[k].late) continue;
        size_t i = 0;
        while (i < c->nhdr && strcmp(c->hdr[i], rf->cols[k].name)) i++;
        if (i == c->nhdr) return kv_error_set(err, KV_ERR_FORMAT, "%s: header lacks column '%s'", c->path, rf->cols[k].name);
    }
    return KV_OK;
}

/* Every field of the current row against its declared type (after the reader's own parsing,
 * whose messages name the domain; this catches the columns it does not parse). */
static kv_status csv_typed(csv *c, kv_error *err)
{
    for (size_t i = 0; i < c->nf; i++)
        if (c->type[i] >= 0 && !kv_results_cell_ok((kv_col_type)c->type[i], c->f[i]))
            return kv_error_set(err, KV_ERR_VALUE, "%s:%zu: column %s = '%s' is not %s", c->path, c->line, c->hdr[i],
                                c->f[i], kv_col_type_name((kv_col_type)c->type[i]));
    return KV_OK;
}

static kv_status csv_col(csv *c, const char *name, int required, long *idx, kv_error *err)
{
    for (size_t i = 0; i < c->nhdr; i++)
        if (!strcmp(c->hdr[i], name)) { *idx = (long)i; return KV_OK; }
    *idx = -1;
    if (required) return kv_error_set(err, KV_ERR_FORMAT, "%s: header lacks column '%s'", c->path, name);
    return KV_OK;
}

/* 1 = a row, 0 = end. */
static int csv_row(csv *c, kv_error *err, kv_status *st)
{
    *st = KV_OK;
    char *l = csv_nextline(c);
    if (!l) return 0;
    if (csv_split(l, c->f, &c->nf) || c->nf != c->nhdr) {
        *st = kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: %zu fields, the header has %zu", c->path, c->line,
                   c->nf, c->nhdr);
        return 0;
    }
    return 1;
}

/* A number field: empty -> NaN (when allow_empty), else a finite double. */
static kv_status csv_num(csv *c, long col, int allow_empty, double *v, kv_error *err)
{
    if (col < 0) { *v = NAN; return KV_OK; }
    const char *s = c->f[col];
    if (!*s) {
        if (allow_empty) { *v = NAN; return KV_OK; }
        return kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: column '%s' is empty", c->path, c->line, c->hdr[col]);
    }
    char *end;
    errno = 0;
    double x = strtod(s, &end);
    if (*end || end == s || errno == ERANGE || !isfinite(x))
        return kv_error_set(err, KV_ERR_VALUE, "%s:%zu: column '%s': '%s' is not a finite number", c->path,
                    c->line, c->hdr[col], s);
    *v = x;
    return KV_OK;
}

static kv_status csv_int(csv *c, long col, long long *v, kv_error *err)
{
    const char *s = c->f[col];
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (!*s || *end || errno)
        return kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: column '%s': '%s' is not an integer", c->path,
                    c->line, c->hdr[col], s);
    *v = x;
    return KV_OK;
}

/* Domain of a numeric column: [lo, hi] as documented (lo_s, hi_s), accepted with the slack
 * of results.h; integral: the value must be a whole number. NaN (empty field) passes. */
typedef struct res_dom { double lo, hi; const char *lo_s, *hi_s; int slack_lo, slack_hi, integral; } res_dom;
#define DOM_NONNEG      { 0, INFINITY, "0", "inf", 0, 0, 0 }
#define DOM_NONNEG_RND  { 0, INFINITY, "0", "inf", 1, 0, 0 }
#define DOM_UNIT        { 0, 1, "0", "1", 1, 1, 0 }
#define DOM_COS         { -1, 1, "-1", "1", 1, 1, 0 }

static kv_status csv_check(csv *c, long col, double v, const res_dom *d, kv_error *err)
{
    if (col < 0 || isnan(v)) return KV_OK;
    double lo = d->lo - (d->slack_lo ? RES_SLACK : 0), hi = d->hi + (d->slack_hi ? RES_SLACK : 0);
    if (v < lo || v > hi)
        return kv_error_set(err, KV_ERR_VALUE, "%s:%zu: column %s = %s out of range [%s, %s]", c->path, c->line,
                            c->hdr[col], c->f[col], d->lo_s, d->hi_s);
    if (d->integral && v != floor(v))
        return kv_error_set(err, KV_ERR_VALUE, "%s:%zu: column %s = %s is not a whole number", c->path, c->line,
                            c->hdr[col], c->f[col]);
    return KV_OK;
}

static kv_status csv_check_int(csv *c, long col, long long v, long long lo, long long hi, kv_error *err)
{
    if (v < lo || v > hi)
        return kv_error_set(err, KV_ERR_VALUE, "%s:%zu: column %s = %s out of range [%lld, %lld]", c->path, c->line,
                            c->hdr[col], c->f[col], lo, hi);
    return KV_OK;
}

/* A label (configs.csv): at most 63 bytes without control characters, quotes, backquotes,
 * backslashes, braces or '#' (the sweep's rules; a label reaches gnuplot titles and LaTeX),
 * no leading or trailing space. */
static kv_status check_label(csv *c, long col, kv_error *err)
{
    const unsigned char *v = (const unsigned char *)c->f[col];
    size_t n = strlen((const char *)v);
    int bad = n > 63 || v[0] == ' ' || v[n - 1] == ' ';
    for (const unsigned char *p = v; *p && !bad; p++) bad = *p < 0x20 || *p == 0x7f || strchr(",\"'`\\{}#", *p);
    if (bad)
        return kv_error_set(err, KV_ERR_VALUE, "%s:%zu: column label = '%.80s' is not a label (at most 63 bytes, no control "
                            "characters, quotes, backslashes, braces or '#', no leading or trailing space)", c->path, c->line, c->f[col]);
    return KV_OK;
}

/* per_seq.csv metric domains, res_metric order (nll_delta is derived, not read). */
static const res_dom seq_dom[RM_NLL_DELTA] = {
    DOM_UNIT, DOM_NONNEG, DOM_NONNEG, DOM_NONNEG, DOM_NONNEG, DOM_NONNEG, DOM_NONNEG, DOM_NONNEG,
    DOM_COS, DOM_COS, DOM_NONNEG_RND, DOM_NONNEG_RND, DOM_UNIT, DOM_NONNEG_RND, DOM_NONNEG_RND,
    DOM_NONNEG_RND, DOM_UNIT, DOM_UNIT, DOM_UNIT,
};
/* per_head.csv metric domains, res_head_metric order. */
static const res_dom head_dom[RH_COUNT] = {
    DOM_UNIT, DOM_NONNEG, DOM_COS, DOM_COS, DOM_NONNEG_RND, DOM_NONNEG_RND, DOM_UNIT, DOM_NONNEG, DOM_NONNEG,
};
static const res_dom nq_seq_dom = { 0, 2147483647.0, "0", "2147483647", 0, 0, 1 };
static const res_dom nq_head_dom = { 0, 9007199254740992.0, "0", "2^53", 0, 0, 1 };
static const res_dom count_dom = { 0, 9007199254740992.0, "0", "2^53", 0, 0, 0 };

/* ---- provenance.json: a flat object of strings and numbers ------------------------------ */

static const char *json_ws(const char *p) { while (isspace((unsigned char)*p)) p++; return p; }

static const char *json_string(const char *p, char *out, size_t cap)
{
    if (*p != '"') return NULL;
    p++;
    size_t n = 0;
    while (*p && *p != '"') {
        char ch = *p++;
        if (ch == '\\') {
            char e = *p++;
            switch (e) {
            case '"': ch = '"'; break;
            case '\\': ch = '\\'; break;
            case '/': ch = '/'; break;
            case 'n': ch = ' '; break;
            case 't': ch = ' '; break;
            case 'r': ch = ' '; break;
            case 'b': case 'f': ch = ' '; break;
            case 'u':
                for (int i = 0; i < 4; i++) if (!isxdigit((unsigned char)*p++)) return NULL;
                ch = '?';
                break;
            default: return NULL;
            }
        }
        if (n + 1 < cap) out[n++] = ch;
    }
    if (*p != '"') return NULL;
    out[n] = 0;
    return p + 1;
}

static kv_status parse_provenance(const char *path, res_dir *d, kv_error *err)
{
    char *buf = NULL;
    size_t len;
    int missing = 0;
    kv_status s = res_read_file(path, &buf, &len, &missing, err);
    if (s != KV_OK) return s;
    if (missing) return kv_error_set(err, KV_ERR_FORMAT, "%s: missing: not a kvtrace results directory", path);
    const char *p = json_ws(buf);
    static char key[4096], val[65536];
    if (*p++ != '{') { free(buf); return kv_error_set(err, KV_ERR_FORMAT, "%s: not a JSON object", path); }
    p = json_ws(p);
    if (*p == '}') p++;
    else for (;;) {
        p = json_string(json_ws(p), key, sizeof key);
        if (!p) goto bad;
        p = json_ws(p);
        if (*p++ != ':') goto bad;
        p = json_ws(p);
        if (*p == '"') {
            p = json_string(p, val, sizeof val);
            if (!p) goto bad;
        } else {
            size_t n = 0;
            while (*p && (isalnum((unsigned char)*p) || strchr("+-.", *p)) && n + 1 < sizeof val) val[n++] = *p++;
            val[n] = 0;
            if (!n) goto bad;
        }
        res_kv *nk = realloc(d->prov, (d->n_prov + 1) * sizeof *nk);
        if (!nk) { free(buf); return kv_error_set(err, KV_ERR_NOMEM, "%s: out of memory", path); }
        d->prov = nk;
        d->prov[d->n_prov].key = xstrdup(key);
        d->prov[d->n_prov].value = xstrdup(val);
        d->n_prov++;
        p = json_ws(p);
        if (*p == ',') { p++; continue; }
        if (*p == '}') { p++; break; }
        goto bad;
    }
    if (*json_ws(p)) goto bad;
    free(buf);
    return KV_OK;
bad:
    free(buf);
    return kv_error_set(err, KV_ERR_FORMAT, "%s: malformed JSON (a flat object of strings and numbers expected)", path);
}

const char *res_prov(const res_dir *d, const char *key)
{
    for (size_t i = 0; i < d->n_prov; i++)
        if (!strcmp(d->prov[i].key, key)) return d->prov[i].value;
    return NULL;
}

long res_find_config(const res_set *s, const char *config)
{
    for (size_t i = 0; i < s->n_configs; i++)
        if (!strcmp(s->configs[i].config, config)) return (long)i;
    return -1;
}

size_t res_values(const res_config *c, int m, double *x, long long *seq)
{
    size_t n = 0;
    for (size_t i = 0; i < c->n_seqs; i++) {
        double v = c->seqs[i].v[m];
        if (isnan(v)) continue;
        if (x) x[n] = v;
        if (seq) seq[n] = c->seqs[i].seq;
        n++;
    }
    return n;
}

/* ---- per-directory contribution of one configuration --------------------------------- */

typedef struct contrib {
    size_t cfg;                     /* global index */
    size_t dir;                     /* the directory it comes from */
    long long *seqs; size_t n_seqs; /* sequences this directory holds for it (sorted) */
    res_head *heads; size_t n_heads;
    int has_calib; res_calib_bin calib[2][RES_CALIB_BINS];
    unsigned char calib_seen[2][RES_CALIB_BINS];
    int has_summary, not_applied;
} contrib;

static int same_num(double a, double b) { return (isnan(a) && isnan(b)) || a == b; }

static int seq_cmp(const void *a, const void *b)
{
    const res_seq *x = a, *y = b;
    return (x->seq > y->seq) - (x->seq < y->seq);
}
static int ll_cmp(const void *a, const void *b)
{
    const long long *x = a, *y = b;
    return (*x > *y) - (*x < *y);
}
static int head_cmp(const void *a, const void *b)
{
    const res_head *x = a, *y = b;
    if (x->layer != y->layer) return (x->layer > y->layer) - (x->layer < y->layer);
    return (x->head > y->head) - (x->head < y->head);
}

typedef struct loader {
    res_set *s;
    int allow_mixed;
    contrib *cb; size_t n_cb;       /* all contributions, every directory */
} loader;

static kv_status add_config(loader *L, const char *cfg, const char *family, const char *bk,
                            double bv, const char *label, long long id, const char *where, size_t *gi, kv_error *err)
{
    res_set *s = L->s;
    long i = res_find_config(s, cfg);
    if (i >= 0) {
        res_config *c = &s->configs[i];
        if (strcmp(c->family, family) || strcmp(c->budget_kind, bk) || !same_num(c->budget_value, bv))
            return kv_error_set(err, KV_ERR_FORMAT, "%s: config '%s' has family/budget '%s %s %g' here but '%s %s %g' in an earlier directory",
                        where, cfg, family, bk, bv, c->family, c->budget_kind, c->budget_value);
        if (label && c->label && strcmp(label, c->label))
            return kv_error_set(err, KV_ERR_FORMAT, "%s: config '%s' is labelled '%s' here but '%s' in an earlier directory",
                                where, cfg, label, c->label);
        if (label && !c->label && !(c->label = xstrdup(label))) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
        *gi = (size_t)i;
        return KV_OK;
    }
    res_config *nc = realloc(s->configs, (s->n_configs + 1) * sizeof *nc);
    if (!nc) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    s->configs = nc;
    res_config *c = &s->configs[s->n_configs];
    memset(c, 0, sizeof *c);
    c->config = xstrdup(cfg); c->family = xstrdup(family); c->budget_kind = xstrdup(bk);
    if (!c->config || !c->family || !c->budget_kind) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    c->budget_value = bv;
    if (label && !(c->label = xstrdup(label))) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    c->first_id = id;
    c->pos_dir = -1;
    c->not_applied = -1;            /* unset until a summary row is seen */
    *gi = s->n_configs++;
    return KV_OK;
}

/* The directory before `before` that holds (configuration gi, sequence seq); 0 if none. */
static size_t earlier_holder(const loader *L, size_t gi, long long seq, size_t before)
{
    for (size_t k = 0; k < L->n_cb; k++) {
        const contrib *cb = &L->cb[k];
        if (cb->cfg != gi || cb->dir >= before) continue;
        for (size_t i = 0; i < cb->n_seqs; i++)
            if (cb->seqs[i] == seq) return cb->dir;
    }
    return 0;
}

/* "0-6, 9" from sorted sequence indices (truncated with "..." past cap). */
static void seq_ranges(const long long *s, size_t n, char *buf, size_t cap)
{
    size_t w = 0;
    buf[0] = 0;
    for (size_t i = 0; i < n && w + 32 < cap;) {
        size_t j = i;
        while (j + 1 < n && s[j + 1] == s[j] + 1) j++;
        int k = j > i ? snprintf(buf + w, cap - w, "%s%lld-%lld", w ? ", " : "", s[i], s[j])
                      : snprintf(buf + w, cap - w, "%s%lld", w ? ", " : "", s[i]);
        if (k < 0) break;
        w += (size_t)k;
        i = j + 1;
        if (i < n && w + 32 >= cap) snprintf(buf + w, cap - w, ", ...");
    }
}

/* Why two directories' results cannot be one run's, for messages: the recorded options
 * that change results and differ, and what to do instead. */
static void run_cause(const res_dir *a, const res_dir *b, const char *if_equal, char *buf, size_t cap)
{
    static const char *const keys[] = { "trace_sha256", "mode", "decode", "page_size" };
    size_t w = 0;
    int traces = 0;
    for (size_t k = 0; k < sizeof keys / sizeof keys[0] && w + 64 < cap; k++) {
        const char *va = res_prov(a, keys[k]), *vb = res_prov(b, keys[k]);
        if ((!va && !vb) || (va && vb && !strcmp(va, vb))) continue;
        traces |= k == 0;
        int n = snprintf(buf + w, cap - w, "%s%s %.16s%s in %s but %.16s%s in %s", w ? "; " : "the runs differ in ", keys[k],
                         va ? va : "(absent)", va && strlen(va) > 16 ? "..." : "", a->path,
                         vb ? vb : "(absent)", vb && strlen(vb) > 16 ? "..." : "", b->path);
        if (n < 0) break;
        w += (size_t)n < cap - w ? (size_t)n : cap - w - 1;
    }
    if (!w) w = (size_t)snprintf(buf, cap, "their recorded trace, mode and decode split are equal%s", if_equal);
    if (traces && w < cap)
        w += (size_t)snprintf(buf + w, cap - w, " (different traces: sequence numbers name different sequences, which "
                              "--allow-mixed cannot merge)");
    if (w < cap)
        snprintf(buf + w, cap - w, "; different runs go side by side with `kvreport compare %s %s -o DIR`", a->path, b->path);
}

static kv_status load_dir(loader *L, size_t di, kv_error *err)
{
    res_set *s = L->s;
    res_dir *d = &s->dirs[di];
    char path[4608];
    kv_status st;
    csv c;
    size_t *map = NULL, nmap = 0;   /* local config_id -> global index */
    size_t cb0 = L->n_cb;

    snprintf(path, sizeof path, "%s/provenance.json", d->path);
    if ((st = parse_provenance(path, d, err)) != KV_OK) return st;
    const char *ver = res_prov(d, "results_version");
    if (!ver) return kv_error_set(err, KV_ERR_FORMAT, "%s: no results_version", path);
    char want[16];
    snprintf(want, sizeof want, "%d", KV_RESULTS_VERSION);
    if (strcmp(ver, want))
        return kv_error_set(err, KV_ERR_VERSION, "%s: results_version %s is not supported (kvreport reads version %d)",
                    path, ver, RES_VERSION);
    {   /* the schema's integer keys (decode, n_seq, n_layers, ...) hold integers when present */
        const kv_results_file *pf = kv_results_file_get(KV_RF_PROVENANCE);
        for (size_t k = 0; k < pf->n_cols; k++) {
            const char *v = res_prov(d, pf->cols[k].name);
            if (v && pf->cols[k].type == KV_COL_INT && !kv_results_cell_ok(KV_COL_INT, v))
                return kv_error_set(err, KV_ERR_FORMAT, "%s: key %s = '%s' is not an integer", path, pf->cols[k].name, v);
        }
    }

    /* results of another trace than the first directory's: refused before any row is read */
    if (di > 0) {
        const char *a = res_prov(&s->dirs[0], "trace_sha256"), *b = res_prov(d, "trace_sha256");
        if (!a || !b || strcmp(a, b)) {
            s->mixed_traces = 1;
            if (!L->allow_mixed)
                return kv_error_set(err, KV_ERR_INVALID, "%s: trace_sha256 %s differs from %s's %s (results of different traces; "
                                    "pass --allow-mixed to combine runs that share no configuration and sequence, or put them "
                                    "side by side with `kvreport compare`)", d->path, b ? b : "(absent)", s->dirs[0].path,
                                    a ? a : "(absent)");
        }
    }

    /* configs.csv */
    snprintf(path, sizeof path, "%s/configs.csv", d->path);
    if ((st = csv_open(&c, path, 0, NULL, err)) != KV_OK || (st = csv_schema(&c, KV_RF_CONFIGS, err)) != KV_OK) { csv_close(&c); return st; }
    long ci, cc, cf, cbk, cbv;
    if ((st = csv_col(&c, "config_id", 1, &ci, err)) || (st = csv_col(&c, "config", 1, &cc, err)) ||
        (st = csv_col(&c, "family", 1, &cf, err)) || (st = csv_col(&c, "budget_kind", 1, &cbk, err)) ||
        (st = csv_col(&c, "budget_value", 1, &cbv, err)))
        goto out;
    long clab;                      /* optional: present when the sweep labelled a configuration */
    if ((st = csv_col(&c, "label", 0, &clab, err))) goto out;
    while (csv_row(&c, err, &st)) {
        long long id;
        double bv;
        if ((st = csv_int(&c, ci, &id, err)) || (st = csv_num(&c, cbv, 1, &bv, err))) goto out;
        if ((st = csv_check_int(&c, ci, id, 0, RES_MAX_CONFIG_ID, err))) goto out;
        if (!*c.f[cc]) { st = kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: empty config string", path, c.line); goto out; }
        {   /* budget_kind keep | budget | none with its value (RESULTS.md configs.csv) */
            const char *bk = c.f[cbk];
            static const res_dom keep_dom = { 0, 1, "0", "1", 0, 0, 0 };
            static const res_dom budget_dom = { 1, 9007199254740992.0, "1", "2^53", 0, 0, 1 };
            if (!strcmp(bk, "keep") || !strcmp(bk, "budget")) {
                int keep = bk[0] == 'k';
                if (isnan(bv)) { st = kv_error_set(err, KV_ERR_VALUE, "%s:%zu: column budget_value is empty for budget_kind %s", path, c.line, bk); goto out; }
                if ((st = csv_check(&c, cbv, bv, keep ? &keep_dom : &budget_dom, err))) goto out;
                if (keep && bv == 0) { st = kv_error_set(err, KV_ERR_VALUE, "%s:%zu: column budget_value = %s out of range (0, 1]", path, c.line, c.f[cbv]); goto out; }
            } else if (!strcmp(bk, "none")) {
                if (!isnan(bv)) { st = kv_error_set(err, KV_ERR_VALUE, "%s:%zu: column budget_value = %s given for budget_kind none", path, c.line, c.f[cbv]); goto out; }
            } else {
                st = kv_error_set(err, KV_ERR_VALUE, "%s:%zu: column budget_kind = '%s' is not keep, budget or none", path, c.line, bk);
                goto out;
            }
        }
        if ((size_t)id >= nmap) {
            size_t nn = (size_t)id + 1;
            size_t *nm = realloc(map, nn * sizeof *nm);
            if (!nm) { st = kv_error_set(err, KV_ERR_NOMEM, "out of memory"); goto out; }
            for (size_t k = nmap; k < nn; k++) nm[k] = (size_t)-1;
            map = nm; nmap = nn;
        }
        if (map[id] != (size_t)-1) { st = kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: config_id %lld repeated", path, c.line, id); goto out; }
        if ((st = csv_typed(&c, err))) goto out;
        const char *lab = clab >= 0 && *c.f[clab] ? c.f[clab] : NULL;
        if (lab && (st = check_label(&c, clab, err))) goto out;
        size_t gi = 0;
        if ((st = add_config(L, c.f[cc], c.f[cf], c.f[cbk], bv, lab, id, path, &gi, err))) goto out;
        for (size_t k = cb0; k < L->n_cb; k++)
            if (L->cb[k].cfg == gi) { st = kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: config '%s' listed twice", path, c.line, c.f[cc]); goto out; }
        contrib *ncb = realloc(L->cb, (L->n_cb + 1) * sizeof *ncb);
        if (!ncb) { st = kv_error_set(err, KV_ERR_NOMEM, "out of memory"); goto out; }
        L->cb = ncb;
        memset(&L->cb[L->n_cb], 0, sizeof L->cb[0]);
        L->cb[L->n_cb].cfg = gi;
        L->cb[L->n_cb].dir = di;
        L->n_cb++;
        map[id] = gi;
    }
    if (st) goto out;
    if (L->n_cb == cb0) { st = kv_error_set(err, KV_ERR_FORMAT, "%s: no configurations", path); goto out; }
    csv_close(&c);

#define LOOKUP_CB(gi_, cbp_) do { cbp_ = NULL; \
        for (size_t k_ = cb0; k_ < L->n_cb; k_++) if (L->cb[k_].cfg == (gi_)) { cbp_ = &L->cb[k_]; break; } } while (0)
#define ROW_CONFIG(colid, colcfg, gi_) do { long long id_; \
        if ((st = csv_int(&c, colid, &id_, err))) goto out; \
        if (id_ < 0 || (size_t)id_ >= nmap || map[id_] == (size_t)-1) { \
            st = kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: config_id %lld not in configs.csv", path, c.line, id_); goto out; } \
        gi_ = map[id_]; \
        if (strcmp(c.f[colcfg], s->configs[gi_].config)) { \
            st = kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: config_id %lld is '%s' here but '%s' in configs.csv", \
                      path, c.line, id_, c.f[colcfg], s->configs[gi_].config); goto out; } } while (0)

    /* per_seq.csv */
    snprintf(path, sizeof path, "%s/per_seq.csv", d->path);
    if ((st = csv_open(&c, path, 0, NULL, err)) != KV_OK || (st = csv_schema(&c, KV_RF_PER_SEQ, err)) != KV_OK) goto out;
    long pid, pcfg, pseq, pnq, pm[RM_COUNT];
    if ((st = csv_col(&c, "config_id", 1, &pid, err)) || (st = csv_col(&c, "config", 1, &pcfg, err)) ||
        (st = csv_col(&c, "seq", 1, &pseq, err)) || (st = csv_col(&c, "n_query", 1, &pnq, err)))
        goto out;
    for (int m = 0; m < RM_NLL_DELTA; m++)
        if ((st = csv_col(&c, res_metric_names[m], 1, &pm[m], err))) goto out;
    size_t rows = 0;
    while (csv_row(&c, err, &st)) {
        size_t gi = 0;
        ROW_CONFIG(pid, pcfg, gi);
        res_seq r;
        if ((st = csv_int(&c, pseq, &r.seq, err)) || (st = csv_check_int(&c, pseq, r.seq, 0, RES_MAX_SEQ, err)) ||
            (st = csv_num(&c, pnq, 0, &r.n_query, err)) || (st = csv_check(&c, pnq, r.n_query, &nq_seq_dom, err)))
            goto out;
        for (int m = 0; m < RM_NLL_DELTA; m++)
            if ((st = csv_num(&c, pm[m], 1, &r.v[m], err)) || (st = csv_check(&c, pm[m], r.v[m], &seq_dom[m], err))) goto out;
        if ((st = csv_typed(&c, err))) goto out;
        r.v[RM_NLL_DELTA] = (isnan(r.v[RM_NLL_COMP]) || isnan(r.v[RM_NLL_FULL])) ? NAN
                            : r.v[RM_NLL_COMP] - r.v[RM_NLL_FULL];
        contrib *cb;
        LOOKUP_CB(gi, cb);
        for (size_t k = 0; k < cb->n_seqs; k++)
            if (cb->seqs[k] == r.seq) { st = kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: config '%s' sequence %lld appears twice", path, c.line, s->configs[gi].config, r.seq); goto out; }
        long long *ns = realloc(cb->seqs, (cb->n_seqs + 1) * sizeof *ns);
        if (!ns) { st = kv_error_set(err, KV_ERR_NOMEM, "out of memory"); goto out; }
        cb->seqs = ns;
        cb->seqs[cb->n_seqs++] = r.seq;
        /* merge into the configuration: identical duplicates from another directory pass */
        res_config *g = &s->configs[gi];
        res_seq *dup = NULL;
        for (size_t k = 0; k < g->n_seqs; k++) if (g->seqs[k].seq == r.seq) { dup = &g->seqs[k]; break; }
        if (dup) {
            int same = same_num(dup->n_query, r.n_query);
            for (int m = 0; m < RM_COUNT; m++) same = same && same_num(dup->v[m], r.v[m]);
            if (!same) {
                size_t other = earlier_holder(L, gi, r.seq, di);
                char why[1024];
                run_cause(&s->dirs[other], d, " (the same configuration twice with different results)", why, sizeof why);
                st = kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: config '%s' sequence %lld differs from the row an earlier directory gave (%s): %s",
                                  path, c.line, g->config, r.seq, s->dirs[other].path, why);
                goto out;
            }
        } else {
            res_seq *ng = realloc(g->seqs, (g->n_seqs + 1) * sizeof *ng);
            if (!ng) { st = kv_error_set(err, KV_ERR_NOMEM, "out of memory"); goto out; }
            g->seqs = ng;
            g->seqs[g->n_seqs++] = r;
        }
        rows++;
    }
    if (st) goto out;
    if (!rows) { st = kv_error_set(err, KV_ERR_FORMAT, "%s: no rows", path); goto out; }
    csv_close(&c);

    /* summary.csv: the not_applied guard */
    snprintf(path, sizeof path, "%s/summary.csv", d->path);
    if ((st = csv_open(&c, path, 0, NULL, err)) != KV_OK || (st = csv_schema(&c, KV_RF_SUMMARY, err)) != KV_OK) goto out;
    long sid, scfg, sna;
    if ((st = csv_col(&c, "config_id", 1, &sid, err)) || (st = csv_col(&c, "config", 1, &scfg, err)) ||
        (st = csv_col(&c, "not_applied", 1, &sna, err)))
        goto out;
    while (csv_row(&c, err, &st)) {
        size_t gi = 0;
        ROW_CONFIG(sid, scfg, gi);
        long long na;
        if ((st = csv_int(&c, sna, &na, err))) goto out;
        if (na != 0 && na != 1) { st = kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: not_applied must be 0 or 1", path, c.line); goto out; }
        if ((st = csv_typed(&c, err))) goto out;
        contrib *cb;
        LOOKUP_CB(gi, cb);
        if (cb->has_summary) { st = kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: config '%s' has a second row", path, c.line, s->configs[gi].config); goto out; }
        cb->has_summary = 1;
        cb->not_applied = (int)na;
    }
    if (st) goto out;
    csv_close(&c);

    /* per_head.csv (optional) */
    int missing = 0;
    snprintf(path, sizeof path, "%s/per_head.csv", d->path);
    if ((st = csv_open(&c, path, 1, &missing, err)) != KV_OK) goto out;
    if (!missing && (st = csv_schema(&c, KV_RF_PER_HEAD, err)) != KV_OK) goto out;
    if (!missing) {
        long hid, hcfg, hl, hh, hnq, hm[RH_COUNT];
        /* layer < n_layers, head < n_heads of provenance.json when it records them */
        long long max_layer = RES_MAX_LAYER_HEAD, max_head = RES_MAX_LAYER_HEAD, top_layer = -1, top_head = -1;
        size_t top_line = 0;
        const char *pl = res_prov(d, "n_layers"), *ph = res_prov(d, "n_heads");
        if (pl && atoll(pl) >= 1 && atoll(pl) - 1 < max_layer) max_layer = atoll(pl) - 1;
        if (ph && atoll(ph) >= 1 && atoll(ph) - 1 < max_head) max_head = atoll(ph) - 1;
        if ((st = csv_col(&c, "config_id", 1, &hid, err)) || (st = csv_col(&c, "config", 1, &hcfg, err)) ||
            (st = csv_col(&c, "layer", 1, &hl, err)) || (st = csv_col(&c, "head", 1, &hh, err)) ||
            (st = csv_col(&c, "n_query", 1, &hnq, err)))
            goto out;
        for (int m = 0; m < RH_COUNT; m++)
            if ((st = csv_col(&c, res_head_metric_names[m], 1, &hm[m], err))) goto out;
        while (csv_row(&c, err, &st)) {
            size_t gi;
            ROW_CONFIG(hid, hcfg, gi);
            res_head r;
            if ((st = csv_int(&c, hl, &r.layer, err)) || (st = csv_check_int(&c, hl, r.layer, 0, max_layer, err)) ||
                (st = csv_int(&c, hh, &r.head, err)) || (st = csv_check_int(&c, hh, r.head, 0, max_head, err)) ||
                (st = csv_num(&c, hnq, 0, &r.n_query, err)) || (st = csv_check(&c, hnq, r.n_query, &nq_head_dom, err)))
                goto out;
            for (int m = 0; m < RH_COUNT; m++)
                if ((st = csv_num(&c, hm[m], 1, &r.v[m], err)) || (st = csv_check(&c, hm[m], r.v[m], &head_dom[m], err))) goto out;
            if ((st = csv_typed(&c, err))) goto out;
            if (r.layer > top_layer) { top_layer = r.layer; top_line = c.line; }
            if (r.head > top_head) { top_head = r.head; top_line = r.layer == top_layer ? c.line : top_line; }
            contrib *cb;
            LOOKUP_CB(gi, cb);
            for (size_t k = 0; k < cb->n_heads; k++)
                if (cb->heads[k].layer == r.layer && cb->heads[k].head == r.head) { st = kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: (layer %lld, head %lld) repeated for config '%s'", path, c.line, r.layer, r.head, s->configs[gi].config); goto out; }
            res_head *nh = realloc(cb->heads, (cb->n_heads + 1) * sizeof *nh);
            if (!nh) { st = kv_error_set(err, KV_ERR_NOMEM, "out of memory"); goto out; }
            cb->heads = nh;
            cb->heads[cb->n_heads++] = r;
        }
        if (st) goto out;
        /* one row per (layer, head) of the model: every configuration covers the same full
         * grid 0..top_layer x 0..top_head (no duplicates, so the count decides) */
        for (size_t k = cb0; k < L->n_cb; k++) {
            size_t want = (size_t)(top_layer + 1) * (size_t)(top_head + 1);
            if (L->cb[k].n_heads && L->cb[k].n_heads != want) {
                st = kv_error_set(err, KV_ERR_FORMAT, "%s: config '%s' has %zu (layer, head) rows, not the %lld x %lld of a full grid that "
                                  "layer %lld / head %lld (line %zu) imply", path, s->configs[L->cb[k].cfg].config,
                                  L->cb[k].n_heads, top_layer + 1, top_head + 1, top_layer, top_head, top_line);
                goto out;
            }
        }
    }
    csv_close(&c);

    /* calib.csv (optional: only with read-out) */
    snprintf(path, sizeof path, "%s/calib.csv", d->path);
    if ((st = csv_open(&c, path, 1, &missing, err)) != KV_OK) goto out;
    if (!missing && (st = csv_schema(&c, KV_RF_CALIB, err)) != KV_OK) goto out;
    if (!missing) {
        long kid, kcfg, kw, kb, kc, kcs, kas;
        if ((st = csv_col(&c, "config_id", 1, &kid, err)) || (st = csv_col(&c, "config", 1, &kcfg, err)) ||
            (st = csv_col(&c, "which", 1, &kw, err)) || (st = csv_col(&c, "bin", 1, &kb, err)) ||
            (st = csv_col(&c, "count", 1, &kc, err)) || (st = csv_col(&c, "conf_sum", 1, &kcs, err)) ||
            (st = csv_col(&c, "acc_sum", 1, &kas, err)))
            goto out;
        while (csv_row(&c, err, &st)) {
            size_t gi;
            ROW_CONFIG(kid, kcfg, gi);
            long long bin;
            double cnt, cs, as;
            if ((st = csv_int(&c, kb, &bin, err)) || (st = csv_num(&c, kc, 0, &cnt, err)) ||
                (st = csv_num(&c, kcs, 0, &cs, err)) || (st = csv_num(&c, kas, 0, &as, err)))
                goto out;
            if ((st = csv_check(&c, kc, cnt, &count_dom, err))) goto out;
            int w = !strcmp(c.f[kw], "full") ? 0 : !strcmp(c.f[kw], "comp") ? 1 : -1;
            if (w < 0 || bin < 0 || bin >= RES_CALIB_BINS || cnt < 0 || cs < 0 || as < 0 || cs > cnt * (1 + 1e-9) || as > cnt * (1 + 1e-9)) {
                st = kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: bad calibration row (which full|comp, bin 0..14, 0 <= sums <= count)", path, c.line);
                goto out;
            }
            if ((st = csv_typed(&c, err))) goto out;
            contrib *cb;
            LOOKUP_CB(gi, cb);
            if (cb->calib_seen[w][bin]++) {
                st = kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: config '%s' %s bin %lld has a second row", path, c.line,
                                  s->configs[gi].config, c.f[kw], bin);
                goto out;
            }
            cb->has_calib = 1;
            cb->calib[w][bin].count += cnt;
            cb->calib[w][bin].conf_sum += cs;
            cb->calib[w][bin].acc_sum += as;
        }
        if (st) goto out;
    }
    csv_close(&c);

    /* per_pos.csv (optional): kept per configuration from one directory only; a
     * configuration several directories hold has none (their means are not pooled) */
    snprintf(path, sizeof path, "%s/per_pos.csv", d->path);
    if ((st = csv_open(&c, path, 1, &missing, err)) != KV_OK) goto out;
    if (!missing && (st = csv_schema(&c, KV_RF_PER_POS, err)) != KV_OK) goto out;
    if (!missing) {
        static const res_dom kl_dom = DOM_NONNEG_RND, cos_dom = DOM_COS;
        long kid, kcfg, koff, kns, kkl, kcos, kro;
        if ((st = csv_col(&c, "config_id", 1, &kid, err)) || (st = csv_col(&c, "config", 1, &kcfg, err)) ||
            (st = csv_col(&c, "offset", 1, &koff, err)) || (st = csv_col(&c, "n_seq", 1, &kns, err)) ||
            (st = csv_col(&c, "attn_kl", 1, &kkl, err)) || (st = csv_col(&c, "out_cos", 1, &kcos, err)) ||
            (st = csv_col(&c, "logit_kl", 1, &kro, err)))
            goto out;
        while (csv_row(&c, err, &st)) {
            size_t gi;
            ROW_CONFIG(kid, kcfg, gi);
            res_pos r;
            if ((st = csv_int(&c, koff, &r.offset, err)) || (st = csv_int(&c, kns, &r.n_seq, err)) ||
                (st = csv_num(&c, kkl, 0, &r.attn_kl, err)) || (st = csv_num(&c, kcos, 0, &r.out_cos, err)) ||
                (st = csv_num(&c, kro, 1, &r.logit_kl, err)))
                goto out;
            if ((st = csv_check_int(&c, koff, r.offset, 0, 2147483647LL, err)) ||
                (st = csv_check_int(&c, kns, r.n_seq, 1, 2147483647LL, err)) ||
                (st = csv_check(&c, kkl, r.attn_kl, &kl_dom, err)) || (st = csv_check(&c, kcos, r.out_cos, &cos_dom, err)) ||
                (st = csv_check(&c, kro, r.logit_kl, &kl_dom, err)) || (st = csv_typed(&c, err)))
                goto out;
            res_config *cf = &s->configs[gi];
            if (cf->pos_dir == -2) continue;
            if (cf->pos_dir >= 0 && cf->pos_dir != (long)di) {     /* a second directory: none kept */
                free(cf->pos); cf->pos = NULL; cf->n_pos = 0; cf->pos_dir = -2;
                continue;
            }
            if (cf->n_pos && r.offset <= cf->pos[cf->n_pos - 1].offset) {
                st = kv_error_set(err, KV_ERR_FORMAT, "%s:%zu: config '%s' offset %lld after offset %lld (a row twice or out "
                                  "of order)", path, c.line, cf->config, r.offset, cf->pos[cf->n_pos - 1].offset);
                goto out;
            }
            if (!(cf->n_pos & (cf->n_pos + 1))) {    /* grow at 0, 1, 3, 7, ... rows */
                res_pos *np = realloc(cf->pos, (2 * cf->n_pos + 2) * sizeof *np);
                if (!np) { st = kv_error_set(err, KV_ERR_NOMEM, "out of memory"); goto out; }
                cf->pos = np;
            }
            cf->pos[cf->n_pos++] = r;
            cf->pos_dir = (long)di;
        }
        if (st) goto out;
    }
    st = KV_OK;
out:
    csv_close(&c);
    free(map);
    return st;
#undef LOOKUP_CB
#undef ROW_CONFIG
}

/* Combine the per-directory per_head/calib/summary parts of configuration gi. */
static kv_status finish_config(loader *L, size_t gi, kv_error *err)
{
    res_config *g = &L->s->configs[gi];
    contrib *first = NULL;
    for (size_t k = 0; k < L->n_cb; k++) {
        contrib *cb = &L->cb[k];
        if (cb->cfg != gi || cb->n_seqs == 0) continue;   /* listed, not run in this shard */
        qsort(cb->seqs, cb->n_seqs, sizeof *cb->seqs, ll_cmp);
        if (cb->n_heads) qsort(cb->heads, cb->n_heads, sizeof *cb->heads, head_cmp);
        if (cb->has_summary) g->not_applied = g->not_applied < 0 ? cb->not_applied : (g->not_applied && cb->not_applied);
        if (!first) {
            first = cb;
            g->heads = malloc((cb->n_heads ? cb->n_heads : 1) * sizeof *g->heads);
            if (!g->heads) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
            if (cb->n_heads) memcpy(g->heads, cb->heads, cb->n_heads * sizeof *g->heads);   /* no per_head.csv: none */
            g->n_heads = cb->n_heads;
            g->has_calib = cb->has_calib;
            memcpy(g->calib, cb->calib, sizeof g->calib);
            continue;
        }
        /* equal sequence sets: the same work twice; disjoint: shards; else refuse */
        int equal = cb->n_seqs == first->n_seqs && !memcmp(cb->seqs, first->seqs, cb->n_seqs * sizeof *cb->seqs);
        int disjoint = 1;
        for (size_t a = 0, b = 0; a < cb->n_seqs && b < first->n_seqs;) {
            if (cb->seqs[a] == first->seqs[b]) { disjoint = 0; break; }
            if (cb->seqs[a] < first->seqs[b]) a++; else b++;
        }
        if (equal) {
            int same = cb->n_heads == g->n_heads && cb->has_calib == g->has_calib;
            for (size_t h = 0; same && h < cb->n_heads; h++) {
                same = cb->heads[h].layer == g->heads[h].layer && cb->heads[h].head == g->heads[h].head &&
                       same_num(cb->heads[h].n_query, g->heads[h].n_query);
                for (int m = 0; same && m < RH_COUNT; m++) same = same_num(cb->heads[h].v[m], g->heads[h].v[m]);
            }
            if (same && cb->has_calib) same = !memcmp(cb->calib, g->calib, sizeof g->calib);
            if (!same)
                return kv_error_set(err, KV_ERR_FORMAT, "config '%s': per_head.csv/calib.csv differ between two directories holding the same sequences", g->config);
        } else if (disjoint) {
            if (cb->n_heads != g->n_heads)
                return kv_error_set(err, KV_ERR_FORMAT, "config '%s': per_head.csv of two shards cover different (layer, head) sets", g->config);
            for (size_t h = 0; h < cb->n_heads; h++) {
                res_head *a = &g->heads[h];
                const res_head *b = &cb->heads[h];
                if (a->layer != b->layer || a->head != b->head)
                    return kv_error_set(err, KV_ERR_FORMAT, "config '%s': per_head.csv of two shards cover different (layer, head) sets", g->config);
                double wa = a->n_query, wb = b->n_query;
                for (int m = 0; m < RH_COUNT; m++) {
                    if (isnan(b->v[m])) continue;
                    if (isnan(a->v[m])) { a->v[m] = b->v[m]; continue; }
                    a->v[m] = (wa + wb) > 0 ? (wa * a->v[m] + wb * b->v[m]) / (wa + wb) : a->v[m];
                }
                a->n_query = wa + wb;
            }
            if (cb->has_calib != g->has_calib)
                return kv_error_set(err, KV_ERR_FORMAT, "config '%s': calib.csv present in one shard and not another", g->config);
            for (int w = 0; w < 2; w++)
                for (int b = 0; b < RES_CALIB_BINS; b++) {
                    g->calib[w][b].count += cb->calib[w][b].count;
                    g->calib[w][b].conf_sum += cb->calib[w][b].conf_sum;
                    g->calib[w][b].acc_sum += cb->calib[w][b].acc_sum;
                }
        } else {
        {
            char sa[256], sb[256], why[1024];
            seq_ranges(first->seqs, first->n_seqs, sa, sizeof sa);
            seq_ranges(cb->seqs, cb->n_seqs, sb, sizeof sb);
            const res_dir *da = &L->s->dirs[first->dir], *db = &L->s->dirs[cb->dir];
            run_cause(da, db, "", why, sizeof why);
            return kv_error_set(err, KV_ERR_FORMAT, "config '%s': two directories hold overlapping but different sequence sets "
                                "(%s: %s; %s: %s): one run evaluated sequences the other did not (--seqs, --calib: strategies "
                                "that calibrate, such as lowrank, reserve sequences; or shards of different runs), so "
                                "per_head.csv cannot be merged; %s", g->config, da->path, sa, db->path, sb, why);
        }
        }
    }
    if (g->not_applied < 0) g->not_applied = 0;
    if (g->n_seqs) qsort(g->seqs, g->n_seqs, sizeof *g->seqs, seq_cmp);
    return KV_OK;
}

kv_status res_load(const char *const *dirs, size_t n, int allow_mixed, res_set **out, kv_error *err)
{
    *out = NULL;
    if (n == 0) return kv_error_set(err, KV_ERR_INVALID, "no results directory given");
    loader L = {0};
    res_set *s = calloc(1, sizeof *s);
    if (!s) return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
    L.s = s;
    L.allow_mixed = allow_mixed;
    kv_status st = KV_OK;
    s->dirs = calloc(n, sizeof *s->dirs);
    if (!s->dirs) { st = kv_error_set(err, KV_ERR_NOMEM, "out of memory"); goto done; }
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < i; j++)
            if (!strcmp(dirs[i], dirs[j])) { st = kv_error_set(err, KV_ERR_INVALID, "%s: results directory given twice", dirs[i]); goto done; }
        s->dirs[i].path = xstrdup(dirs[i]);
        s->n_dirs = i + 1;
        if (!s->dirs[i].path) { st = kv_error_set(err, KV_ERR_NOMEM, "out of memory"); goto done; }
        if ((st = load_dir(&L, i, err)) != KV_OK) goto done;
    }
    for (size_t g = 0; g < s->n_configs; g++)
        if ((st = finish_config(&L, g, err)) != KV_OK) goto done;
    st = res_name_configs(s, err);
done:
    for (size_t k = 0; k < L.n_cb; k++) { free(L.cb[k].seqs); free(L.cb[k].heads); }
    free(L.cb);
    if (st != KV_OK) { res_free(s); return st; }
    *out = s;
    return KV_OK;
}

void res_free(res_set *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->n_dirs; i++) {
        free(s->dirs[i].path);
        for (size_t k = 0; k < s->dirs[i].n_prov; k++) { free(s->dirs[i].prov[k].key); free(s->dirs[i].prov[k].value); }
        free(s->dirs[i].prov);
    }
    free(s->dirs);
    for (size_t i = 0; i < s->n_configs; i++) {
        res_config *c = &s->configs[i];
        free(c->config); free(c->family); free(c->budget_kind);
        free(c->label); free(c->name); free(c->row); free(c->rowkey);
        free(c->seqs); free(c->heads); free(c->pos);
    }
    free(s->configs);
    free(s);
}
