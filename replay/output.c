/* Results directory writer and resume parts (output.h). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <gsl/gsl_version.h>
#include <hdf5.h>

#include "gemm.h"
#include "output.h"
#include "readout.h"
#include "results_schema.h"

static int failf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

void out_utc_now(char *buf, size_t len)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int out_json_get(const char *json, const char *key, char *val, size_t len)
{
    char pat[256];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(json, pat);
    if (!p || !len) return -1;
    p += strlen(pat);
    while (*p == ' ') p++;
    size_t w = 0;
    if (*p == '"') {
        for (p++; *p && *p != '"'; p++) {
            char c = *p;
            if (c == '\\' && p[1]) {
                p++;
                if (*p == 'u') {        /* \u00XX: the writer escapes control characters only */
                    unsigned x = 0;
                    if (sscanf(p + 1, "%4x", &x) != 1) return -1;
                    c = (char)x;
                    p += 4;
                } else c = *p;
            }
            if (w + 1 < len) val[w++] = c;
        }
        if (*p != '"') return -1;
    } else {
        while (*p && *p != ',' && *p != '\n' && *p != '}') { if (w + 1 < len) val[w++] = *p; p++; }
    }
    val[w] = 0;
    return 0;
}

/* ---- parts ------------------------------------------------------------------------------ */

/* "kvparts 2 KEY SEQ NC L H RO\n", the values as hex floats, an optional "pl" block, an
 * optional "pp N" block (per-position sums, N evaluated positions), "end\n",
 * then "sum HEX16\n": FNV-1a 64 of every byte before the "sum" line. Any change of one byte
 * changes the sum (each FNV-1a step is a bijection of the state); an unkeyed checksum guards
 * against damage and stray edits, not against someone who rewrites the sum too. */
#define PART_MAGIC "kvparts 2 "
#define PART_MAX_POS ((size_t)1 << 20)  /* evaluated positions of one sequence in a part */

static size_t part_values(size_t n_cfg, size_t L, size_t H, int with_pl)
{
    return n_cfg * (SA_NF + L * H * HA_NF) + (with_pl ? n_cfg * L * PL_NF : 0);
}

/* Needle k's three arrays in the part's order: meta [NM_NF], nd [NC][ND_NF], nh [NC][L][H][NH_NF]. */
static void needle_block(const rp_needles *ns, size_t k, size_t n_cfg, size_t L, size_t H, const double *v[3],
                         size_t cnt[3])
{
    cnt[0] = NM_NF; cnt[1] = n_cfg * ND_NF; cnt[2] = n_cfg * L * H * NH_NF;
    v[0] = ns->meta + k * cnt[0]; v[1] = ns->nd + k * cnt[1]; v[2] = ns->nh + k * cnt[2];
}

int out_part_write(const char *dir, const char *key, const rp_seq_result *r, size_t n_cfg,
                   size_t L, size_t H, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/parts/seq_%zu.part", dir, r->seq);
    /* never a non-finite accumulator: RESULTS.md promises no NaN/Inf in any output */
    size_t nsa = n_cfg * SA_NF, nha = n_cfg * L * H * HA_NF, npl = r->pl ? n_cfg * L * PL_NF : 0;
    for (size_t i = 0; i < nsa + nha + npl; i++) {
        double x = i < nsa ? r->sa[i] : i < nsa + nha ? r->ha[i - nsa] : r->pl[i - nsa - nha];
        if (!isfinite(x))
            return failf(err, errlen, "sequence %zu: a non-finite accumulator (%g) in configuration %zu: the trace holds "
                         "NaN/Inf or extreme values (kvreplay check TRACE)", r->seq, x,
                         i < nsa ? i / SA_NF : i < nsa + nha ? (i - nsa) / (L * H * HA_NF) : (i - nsa - nha) / (L * PL_NF));
    }
    for (size_t i = 0; r->pp && i < n_cfg * r->n_pos * PP_NF; i++)
        if (!isfinite(r->pp[i]))
            return failf(err, errlen, "sequence %zu: a non-finite per-position accumulator (%g) in configuration %zu: the "
                         "trace holds NaN/Inf or extreme values (kvreplay check TRACE)", r->seq, r->pp[i], i / (r->n_pos * PP_NF));
    for (size_t k = 0; k < r->nd.n; k++) {
        const double *v[3];
        size_t cnt[3];
        needle_block(&r->nd, k, n_cfg, L, H, v, cnt);
        for (int b = 0; b < 3; b++)
            for (size_t i = 0; i < cnt[b]; i++)
                if (!isfinite(v[b][i]))
                    return failf(err, errlen, "sequence %zu: a non-finite needle accumulator (%g): the trace holds NaN/Inf "
                                 "or extreme values (kvreplay check TRACE)", r->seq, v[b][i]);
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    if (!m) return failf(err, errlen, "%s: out of memory", path);
    fprintf(m, PART_MAGIC "%s %zu %zu %zu %zu %d\n", key, r->seq, n_cfg, L, H, r->has_readout);
    for (size_t c = 0; c < n_cfg; c++) {
        for (size_t i = 0; i < SA_NF; i++) fprintf(m, "%a%c", r->sa[c * SA_NF + i], i + 1 < SA_NF ? ' ' : '\n');
        for (size_t j = 0; j < L * H; j++)
            for (size_t i = 0; i < HA_NF; i++)
                fprintf(m, "%a%c", r->ha[(c * L * H + j) * HA_NF + i], i + 1 < HA_NF ? ' ' : '\n');
    }
    if (r->pl) {        /* per-layer read-out: optional block before "end" */
        fprintf(m, "pl\n");
        for (size_t j = 0; j < n_cfg * L; j++)
            for (size_t i = 0; i < PL_NF; i++) fprintf(m, "%a%c", r->pl[j * PL_NF + i], i + 1 < PL_NF ? ' ' : '\n');
    }
    if (r->pp) {        /* per-position sums: optional block, NC * N lines of PP_NF */
        fprintf(m, "pp %zu\n", r->n_pos);
        for (size_t j = 0; j < n_cfg * r->n_pos; j++)
            for (size_t i = 0; i < PP_NF; i++) fprintf(m, "%a%c", r->pp[j * PP_NF + i], i + 1 < PP_NF ? ' ' : '\n');
    }
    if (r->nd.n) {      /* needles (needle.h): optional block before "end"; per needle its
                           meta line, NC lines of ND_NF, NC*L*H lines of NH_NF */
        fprintf(m, "nd %zu\n", r->nd.n);
        for (size_t k = 0; k < r->nd.n; k++) {
            const double *v[3];
            size_t cnt[3], w[3] = { NM_NF, ND_NF, NH_NF };
            needle_block(&r->nd, k, n_cfg, L, H, v, cnt);
            for (int b = 0; b < 3; b++)
                for (size_t i = 0; i < cnt[b]; i++) fprintf(m, "%a%c", v[b][i], (i + 1) % w[b] ? ' ' : '\n');
        }
    }
    fprintf(m, "end\n");
    if (fclose(m) || !buf) { free(buf); return failf(err, errlen, "%s: out of memory", path); }
    kv_atomic a;
    kv_error ke;
    if (kv_atomic_open(&a, path, &ke) != KV_OK) { free(buf); return failf(err, errlen, "%s", ke.msg); }
    FILE *f = a.fp;
    fwrite(buf, 1, len, f);
    fprintf(f, "sum %016llx\n", (unsigned long long)rp_hash64(buf, len, 0));
    free(buf);
    if (ferror(f)) {
        int e = errno;
        kv_atomic_discard(&a);
        return failf(err, errlen, "%s: write error: %s", path, strerror(e));
    }
    if (kv_atomic_commit(&a, &ke) != KV_OK) return failf(err, errlen, "%s", ke.msg);
    return 0;
}

int out_read_file(const char *path, size_t cap, char **out, size_t *len, char *err, size_t errlen)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return 0;
        return failf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        close(fd);
        return failf(err, errlen, "%s: not a regular file", path);
    }
    if ((unsigned long long)sb.st_size > cap) {
        close(fd);
        return failf(err, errlen, "%s: %lld bytes, more than the %zu this file can hold", path, (long long)sb.st_size, cap);
    }
    size_t want = (size_t)sb.st_size + 1, n = 0;
    char *buf = malloc(want + 1);
    if (!buf) { close(fd); return failf(err, errlen, "%s: out of memory", path); }
    for (;;) {
        ssize_t k = read(fd, buf + n, want - n);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) { int e = errno; free(buf); close(fd); return failf(err, errlen, "%s: read error: %s", path, strerror(e)); }
        if (k == 0) break;
        n += (size_t)k;
        if (n == want) { free(buf); close(fd); return failf(err, errlen, "%s: the file changed while it was read", path); }
    }
    close(fd);
    buf[n] = 0;
    if (memchr(buf, 0, n)) { free(buf); return failf(err, errlen, "%s: contains NUL bytes", path); }
    *out = buf;
    *len = n;
    return 1;
}

/* The checked text of a part: 1 with *buf (the content, the sum line cut off), 0 absent,
 * -1 error (not a part, checksum mismatch, too large for its shape). */
static int part_load(const char *path, size_t cap, char **buf, char *err, size_t errlen)
{
    size_t len = 0;
    int got = out_read_file(path, cap, buf, &len, err, errlen);
    if (got != 1) return got;
    char *b = *buf;
    if (strncmp(b, PART_MAGIC, strlen(PART_MAGIC))) {
        free(b); *buf = NULL;
        return failf(err, errlen, "%s: not a kvreplay part of this version (\"%s\" expected; parts of an older kvreplay "
                     "cannot be resumed or merged)", path, PART_MAGIC "...");
    }
    /* the last line: "sum HEX16\n" */
    char *sum = len >= 22 ? b + len - 21 : NULL;
    unsigned long long want = 0;
    char tail = 0;
    if (!sum || sum[-1] != '\n' || sscanf(sum, "sum %16llx%c", &want, &tail) != 2 || tail != '\n' || strspn(sum + 4, "0123456789abcdef") != 16) {
        free(b); *buf = NULL;
        return failf(err, errlen, "%s: no checksum line at the end (truncated or edited part)", path);
    }
    size_t body = (size_t)(sum - b);
    if (rp_hash64(b, body, 0) != want) {
        free(b); *buf = NULL;
        return failf(err, errlen, "%s: checksum mismatch: the part was modified or damaged after it was written "
                     "(delete it to recompute that sequence with --resume)", path);
    }
    *sum = 0;
    return 1;
}

static size_t part_cap(size_t n_cfg, size_t L, size_t H)
{
    /* a hex float prints in at most 24 characters plus its separator */
    return 512 + 25 * part_values(n_cfg, L, H, 1) + 25 * n_cfg * PP_NF * PART_MAX_POS +
           (size_t)RP_MAX_NEEDLES_PER_SEQ * 25 * (NM_NF + n_cfg * ND_NF + n_cfg * L * H * NH_NF);
}

/* The positions of a needle read back from a part must be what the engine writes: whole
 * numbers with 0 <= start <= vs < ve <= end <= ctx, P < as < ae, index >= 0. */
static int needle_meta_ok(const double *m)
{
    for (int i = 0; i < NM_NF; i++)
        if (m[i] < 0 || m[i] > 2147483647.0 || m[i] != floor(m[i])) return 0;
    return m[NM_START] <= m[NM_VS] && m[NM_VS] < m[NM_VE] && m[NM_VE] <= m[NM_END] && m[NM_END] <= m[NM_CTX] &&
           m[NM_CTX] <= m[NM_AS] && m[NM_P] < m[NM_AS] && m[NM_AS] < m[NM_AE];
}

/* The optional needle block "nd N" at *pp (needle.h): 1 read, 0 absent, -1 malformed (why). */
static int part_read_needles(char **pp, rp_needles *ns, size_t n_cfg, size_t L, size_t H, const char **why)
{
    char *p = *pp, *end;
    if (strncmp(p, "nd ", 3)) return 0;
    unsigned long long n = strtoull(p + 3, &end, 10);
    if (end == p + 3 || *end != '\n' || n < 1 || n > RP_MAX_NEEDLES_PER_SEQ) { *why = "bad needle block header"; return -1; }
    p = end + 1;
    size_t per = NM_NF + n_cfg * ND_NF + n_cfg * L * H * NH_NF;
    if (per * n > strlen(p) / 2) { *why = "needle block too short"; return -1; }
    if (rp_needles_alloc(ns, (size_t)n, n_cfg, L, H)) { *why = "out of memory"; return -1; }
    for (size_t k = 0; k < ns->n; k++) {
        const double *v[3];
        size_t cnt[3];
        needle_block(ns, k, n_cfg, L, H, v, cnt);
        for (int b = 0; b < 3; b++)
            for (size_t i = 0; i < cnt[b]; i++) {
                while (*p == ' ' || *p == '\n') p++;
                double x = strtod(p, &end);
                if (end == p || (*end != ' ' && *end != '\n') || !isfinite(x)) { *why = "malformed or non-finite needle value"; return -1; }
                ((double *)v[b])[i] = x;
                p = end;
            }
        if (!needle_meta_ok(v[0])) { *why = "needle positions out of order"; return -1; }
    }
    *pp = p;
    return 1;
}

int out_part_header(const char *path, out_part_hdr *h, char *err, size_t errlen)
{
    char b[512];
    ssize_t n = -1;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    struct stat sb;
    if (fd >= 0 && !fstat(fd, &sb) && S_ISREG(sb.st_mode)) n = read(fd, b, sizeof b - 1);
    if (fd >= 0) close(fd);
    if (n < 0) return failf(err, errlen, "%s: not a readable regular file", path);
    b[n] = 0;
    char k[128];
    int used = 0;
    int ok = sscanf(b, PART_MAGIC "%127s %zu %zu %zu %zu %d%n", k, &h->seq, &h->n_cfg, &h->L, &h->H, &h->has_readout, &used) == 6 &&
             b[used] == '\n' && strlen(k) == 16 && h->n_cfg >= 1 && h->n_cfg <= RP_MAX_CONFIGS && h->L >= 1 && h->L <= 65536 &&
             h->H >= 1 && h->H <= 65536 && (h->has_readout == 0 || h->has_readout == 1);
    if (!ok) return failf(err, errlen, "%s: not a kvreplay part of this version (bad header line)", path);
    snprintf(h->key, sizeof h->key, "%s", k);
    return 0;
}

int out_part_read(const char *dir, const char *key, size_t seq, rp_seq_result *r, size_t n_cfg,
                  size_t L, size_t H, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/parts/seq_%zu.part", dir, seq);
    char *buf = NULL;
    int got = part_load(path, part_cap(n_cfg, L, H), &buf, err, errlen);
    if (got != 1) return got;
    char k2[128];
    size_t s2, c2, l2, h2;
    int ro, n = 0;
    if (sscanf(buf, PART_MAGIC "%127s %zu %zu %zu %zu %d%n", k2, &s2, &c2, &l2, &h2, &ro, &n) != 6 || buf[n] != '\n' ||
        (ro != 0 && ro != 1)) {
        free(buf);
        return failf(err, errlen, "%s: bad header line", path);
    }
    if (strcmp(k2, key) || s2 != seq || c2 != n_cfg || l2 != L || h2 != H) {
        free(buf);
        return failf(err, errlen, "%s: from a different run (run key %s, sequence %zu, %zu configurations, %zu x %zu heads; "
                     "expected %s, %zu, %zu, %zu x %zu)", path, k2, s2, c2, l2, h2, key, seq, n_cfg, L, H);
    }
    /* every value takes at least 2 bytes (digit and separator): a header claiming more values
     * than the file can hold is refused before allocating for them */
    if (part_values(n_cfg, L, H, 0) > strlen(buf) / 2) {
        free(buf);
        return failf(err, errlen, "%s: %zu values announced (%zu configurations, %zu x %zu heads), the file is too short",
                     path, part_values(n_cfg, L, H, 0), n_cfg, L, H);
    }
    if (rp_seq_result_alloc(r, n_cfg, L, H)) { free(buf); return failf(err, errlen, "out of memory"); }
    r->seq = seq;
    r->has_readout = ro;
    char *p = buf + n + 1, *end;
    size_t total = n_cfg * (SA_NF + L * H * HA_NF), npl = n_cfg * L * PL_NF, k = 0;
    const char *what = "value";
    for (; k < total + npl; k++) {
        if (k == total) {       /* the optional per-layer block */
            while (*p == ' ' || *p == '\n') p++;
            if (strncmp(p, "pl\n", 3)) break;
            p += 3;
            if (!(r->pl = calloc(npl ? npl : 1, sizeof *r->pl))) { free(buf); rp_seq_result_free(r); return failf(err, errlen, "out of memory"); }
        }
        while (*p == ' ' || *p == '\n') p++;
        double x = strtod(p, &end);
        if (end == p || (*end != ' ' && *end != '\n')) { what = "malformed"; break; }
        if (!isfinite(x)) {
            free(buf); rp_seq_result_free(r);
            return failf(err, errlen, "%s: value %zu is not finite (%.*s): refused", path, k + 1, (int)(end - p), p);
        }
        size_t cfgv = SA_NF + L * H * HA_NF;
        if (k < total) {
            size_t c = k / cfgv, o = k % cfgv;
            if (o < SA_NF) r->sa[c * SA_NF + o] = x;
            else r->ha[c * L * H * HA_NF + (o - SA_NF)] = x;
        } else r->pl[k - total] = x;
        p = end;
    }
    while (*p == ' ' || *p == '\n') p++;
    int ok = k == total || k == total + npl;
    if (ok && !strncmp(p, "pp ", 3)) {     /* the optional per-position block */
        char *q;
        unsigned long long np = strtoull(p + 3, &q, 10);
        size_t nv = (size_t)np * n_cfg * PP_NF;
        if (q == p + 3 || *q != '\n' || np == 0 || np > PART_MAX_POS || np != (unsigned long long)r->sa[SA_NQ] ||
            nv > strlen(q) / 2) {
            int shown = (int)strcspn(p + 3, "\n");
            failf(err, errlen, "%s: bad per-position block (\"pp %.*s\"; the sequence has %.0f evaluated positions)",
                  path, shown > 24 ? 24 : shown, p + 3, r->sa[SA_NQ]);
            free(buf); rp_seq_result_free(r);      /* after the message: it reads both */
            return -1;
        }
        if (!(r->pp = malloc(nv * sizeof *r->pp))) { free(buf); rp_seq_result_free(r); return failf(err, errlen, "out of memory"); }
        r->n_pos = (size_t)np;
        p = q + 1;
        for (size_t i = 0; i < nv; i++) {
            while (*p == ' ' || *p == '\n') p++;
            double x = strtod(p, &end);
            if (end == p || (*end != ' ' && *end != '\n') || !isfinite(x)) {
                free(buf); rp_seq_result_free(r);
                return failf(err, errlen, "%s: per-position value %zu malformed or not finite: refused", path, i + 1);
            }
            r->pp[i] = x;
            p = end;
        }
        while (*p == ' ' || *p == '\n') p++;
    }
    if (ok) {
        const char *why = NULL;
        int got_nd = part_read_needles(&p, &r->nd, n_cfg, L, H, &why);
        if (got_nd < 0) {
            free(buf); rp_seq_result_free(r);
            return failf(err, errlen, "%s: %s", path, why);
        }
        while (*p == ' ' || *p == '\n') p++;
    }
    ok = ok && !strcmp(p, "end\n");
    free(buf);
    if (!ok) {
        rp_seq_result_free(r);
        return failf(err, errlen, "%s: %s part: %zu of %zu values before \"end\"", path, what, k, total);
    }
    return 1;
}

/* ---- CSV helpers ---------------------------------------------------------------------- */

static void put_f(FILE *f, double x) { fprintf(f, ",%.9g", x); }
static void put_opt(FILE *f, int have, double x) { if (have) fprintf(f, ",%.9g", x); else fputc(',', f); }

typedef struct open_file { kv_atomic a; int open; } open_file;

static FILE *ofile(open_file *o, const char *dir, const char *name, char *err, size_t errlen)
{
    char path[4096];
    kv_error ke;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (kv_atomic_open(&o->a, path, &ke) != KV_OK) { failf(err, errlen, "%s", ke.msg); return NULL; }
    o->open = 1;
    return o->a.fp;
}

static int ocommit(open_file *o, char *err, size_t errlen)
{
    kv_error ke;
    if (!o->open) return 0;
    o->open = 0;
    if (ferror((FILE *)o->a.fp)) {
        int e = errno;      /* of the failed write (EFBIG under ulimit -f, ENOSPC, EIO) */
        kv_atomic_discard(&o->a);
        return failf(err, errlen, "%s: write error: %s", o->a.path, strerror(e));
    }
    if (kv_atomic_commit(&o->a, &ke) != KV_OK) return failf(err, errlen, "%s", ke.msg);
    return 0;
}

/* Every strategy's parameter defaults, "name key=default ...;name ...": results describe
 * themselves, so kvreport (which does not link the strategy registry) can name
 * configurations by their non-default parameters and read "streaming keep=0.25" as the
 * configuration with every other parameter at its default. NULL when out of memory. */
static char *param_defaults(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    if (!m) return NULL;
    for (size_t i = 0; i < rp_strategy_count(); i++) {
        const rp_strategy *st = rp_strategy_at(i);
        fprintf(m, "%s%s", i ? ";" : "", st->name);
        for (size_t k = 0; k < st->n_params; k++)
            if (st->params[k].def) fprintf(m, " %s=%s", st->params[k].name, st->params[k].def);
    }
    if (fclose(m)) { free(buf); return NULL; }
    return buf;
}

static void json_str(FILE *f, const char *key, const char *v, int last)
{
    fprintf(f, "  \"%s\": \"", key);
    for (const unsigned char *p = (const unsigned char *)(v ? v : ""); *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fprintf(f, "\"%s\n", last ? "" : ",");
}

/* Sums of head accumulators over (l, h) for config c of one sequence, in fixed order. */
static void sum_heads(const rp_seq_result *r, size_t c, size_t L, size_t H, double *acc)
{
    for (size_t j = 0; j < L * H; j++)
        for (size_t i = 0; i < HA_NF; i++) acc[i] += r->ha[(c * L * H + j) * HA_NF + i];
}

/* The attention and budget columns shared by per_seq and summary. */
static void put_attn(FILE *f, const double *ha, int modified)
{
    double N = ha[HA_N];
    int mse = modified && ha[HA_MCNT] > 0;
    put_opt(f, mse, mse ? ha[HA_KERR] / ha[HA_MCNT] : 0);
    put_opt(f, mse, mse ? ha[HA_VERR] / ha[HA_MCNT] : 0);
    put_opt(f, mse && ha[HA_KSQ] > 0, mse && ha[HA_KSQ] > 0 ? ha[HA_KERR] / ha[HA_KSQ] : 0);
    put_opt(f, mse && ha[HA_VSQ] > 0, mse && ha[HA_VSQ] > 0 ? ha[HA_VERR] / ha[HA_VSQ] : 0);
    put_f(f, ha[HA_COS] / N); put_f(f, ha[HA_OCOS] / N); put_f(f, ha[HA_OREL] / N);
    put_f(f, ha[HA_KL] / N); put_f(f, ha[HA_REC] / N);
}

static void put_readout(FILE *f, int ro, const double *sa, const ece_acc *ef, const ece_acc *ec, int ppl)
{
    int ny = ro && sa[SA_NY] > 0, rn = ro && sa[SA_RO_N] > 0;
    put_opt(f, rn, rn ? sa[SA_RO_KL] / sa[SA_RO_N] : 0);
    put_opt(f, ny, ny ? sa[SA_NLL_F] / sa[SA_NY] : 0);
    put_opt(f, ny, ny ? sa[SA_NLL_C] / sa[SA_NY] : 0);
    if (ppl) {
        put_opt(f, ny, ny ? exp(sa[SA_NLL_F] / sa[SA_NY]) : 0);
        put_opt(f, ny, ny ? exp(sa[SA_NLL_C] / sa[SA_NY]) : 0);
    }
    put_opt(f, rn, rn ? sa[SA_RO_TOP1] / sa[SA_RO_N] : 0);
    put_opt(f, ny, ny ? ece_value(ef) : 0);
    put_opt(f, ny, ny ? ece_value(ec) : 0);
}

/* The four mass columns of needle sums a (NH_*) over `units` (layer, head) pairs. */
static void put_needle_mass(FILE *f, const double *a, double units, double nq, double na)
{
    put_opt(f, nq > 0, nq > 0 ? a[NH_MQF] / (units * nq) : 0);
    put_opt(f, nq > 0, nq > 0 ? a[NH_MQC] / (units * nq) : 0);
    put_f(f, a[NH_MAF] / (units * na));
    put_f(f, a[NH_MAC] / (units * na));
}

/* per_pos.csv: per configuration and decode offset d (evaluated position P + d), the mean
 * over the sequences evaluated at d of the per-position means over layers and query heads
 * (attn_kl, out_cos) and of the logit KL. Sums in the sequences' order (res[], ascending
 * sequence index, however they were computed), so the file is the same across threads,
 * shards and ranks. Not written when a sequence lacks the sums (parts of an older kvreplay)
 * or no position is evaluated. of: one slot. */
static int write_per_pos(open_file *of, const char *dir, const rp_sweep *sw, const rp_seq_result *res, size_t n_res,
                         size_t L, size_t H, int has_readout, char *err, size_t errlen)
{
    size_t NC = sw->n, maxp = 0;
    for (size_t i = 0; i < n_res; i++) {
        if (!res[i].pp && res[i].sa[SA_NQ] > 0) return 0;
        if (res[i].n_pos > maxp) maxp = res[i].n_pos;
    }
    if (!maxp) return 0;
    FILE *f = ofile(of, dir, "per_pos.csv", err, errlen);
    if (!f) return -1;
    kv_results_put_header(f, KV_RF_PER_POS);
    double units = (double)L * (double)H;
    for (size_t c = 0; c < NC; c++)
        for (size_t d = 0; d < maxp; d++) {
            double a[PP_NF] = {0};
            size_t ns = 0;
            for (size_t i = 0; i < n_res; i++) {
                if (d >= res[i].n_pos) continue;
                const double *b = res[i].pp + (c * res[i].n_pos + d) * PP_NF;
                for (int k = 0; k < PP_NF; k++) a[k] += b[k];
                ns++;
            }
            if (!ns) continue;
            fprintf(f, "%zu,%s,%zu,%zu", c, sw->cfg[c].canon, d, ns);
            put_f(f, a[PP_ATTN_KL] / (units * (double)ns));
            put_f(f, a[PP_OUT_COS] / (units * (double)ns));
            put_opt(f, has_readout, a[PP_LOGIT_KL] / (double)ns);
            fputc('\n', f);
        }
    return ocommit(of, err, errlen);
}

/* needles.csv (one row per configuration and measured needle, means over layers and query
 * heads) and needle_heads.csv (per layer and query head), when any sequence has a measured
 * needle. Rows: configuration, then sequence order, then needle order. of: two slots. */
static int write_needles(open_file *of, const char *dir, const rp_sweep *sw, const rp_seq_result *res, size_t n_res,
                         size_t L, size_t H, int has_readout, char *err, size_t errlen)
{
    size_t any = 0, NC = sw->n;
    for (size_t i = 0; i < n_res; i++) any += res[i].nd.n;
    if (!any) return 0;
    FILE *f = ofile(&of[0], dir, "needles.csv", err, errlen);
    if (!f) return -1;
    fprintf(f, "config_id,config,family,needle,seq,ctx_len,depth,needle_len,value_len,answer_len,retained_frac,"
               "mass_q_full,mass_q_comp,mass_a_full,mass_a_comp,answer_top1_full,answer_top1_comp\n");
    for (size_t c = 0; c < NC; c++)
        for (size_t i = 0; i < n_res; i++)
            for (size_t k = 0; k < res[i].nd.n; k++) {
                const rp_needles *ns = &res[i].nd;
                const double *m = ns->meta + k * NM_NF, *nd = ns->nd + (k * NC + c) * ND_NF;
                double a[NH_NF] = { 0 }, nlen = m[NM_END] - m[NM_START], vlen = m[NM_VE] - m[NM_VS];
                double na = m[NM_AE] - m[NM_AS], nq = m[NM_AS] - 1 - m[NM_P], units = (double)(L * H);
                for (size_t j = 0; j < L * H; j++)
                    for (int q = 0; q < NH_NF; q++) a[q] += ns->nh[((k * NC + c) * L * H + j) * NH_NF + q];
                /* depth: the share of the context outside the needle that lies before it */
                double depth = m[NM_CTX] > nlen ? m[NM_START] / (m[NM_CTX] - nlen) : 0.0;
                fprintf(f, "%zu,%s,%s,%.0f,%zu,%.0f", c, sw->cfg[c].canon, sw->cfg[c].family, m[NM_INDEX], res[i].seq,
                        m[NM_CTX]);
                put_f(f, depth > 1 ? 1 : depth);
                fprintf(f, ",%.0f,%.0f,%.0f", nlen, vlen, na);
                put_f(f, a[NH_RET] / (units * vlen));
                put_needle_mass(f, a, units, nq, na);
                put_opt(f, has_readout, has_readout ? nd[ND_TOP1_F] / na : 0);
                put_opt(f, has_readout, has_readout ? nd[ND_TOP1_C] / na : 0);
                fputc('\n', f);
            }
    if (ocommit(&of[0], err, errlen)) return -1;
    f = ofile(&of[1], dir, "needle_heads.csv", err, errlen);
    if (!f) return -1;
    fprintf(f, "config_id,config,needle,seq,layer,head,retained_frac,mass_q_full,mass_q_comp,mass_a_full,mass_a_comp\n");
    for (size_t c = 0; c < NC; c++)
        for (size_t i = 0; i < n_res; i++)
            for (size_t k = 0; k < res[i].nd.n; k++) {
                const rp_needles *ns = &res[i].nd;
                const double *m = ns->meta + k * NM_NF;
                double vlen = m[NM_VE] - m[NM_VS], na = m[NM_AE] - m[NM_AS], nq = m[NM_AS] - 1 - m[NM_P];
                for (size_t l = 0; l < L; l++)
                    for (size_t h = 0; h < H; h++) {
                        const double *a = ns->nh + (((k * NC + c) * L + l) * H + h) * NH_NF;
                        fprintf(f, "%zu,%s,%.0f,%zu,%zu,%zu", c, sw->cfg[c].canon, m[NM_INDEX], res[i].seq, l, h);
                        put_f(f, a[NH_RET] / vlen);
                        put_needle_mass(f, a, 1.0, nq, na);
                        fputc('\n', f);
                    }
            }
    return ocommit(&of[1], err, errlen);
}

int out_write_results(const char *dir, const rp_sweep *sw, const rp_seq_result *res, size_t n_res,
                      size_t L, size_t H, int has_readout, const out_prov *pv,
                      size_t *n_not_applied, char *err, size_t errlen)
{
    size_t NC = sw->n;
    open_file of[10];
    memset(of, 0, sizeof of);
    int rc = -1;
    double *tot_ha = calloc(NC * HA_NF, sizeof *tot_ha), *tot_sa = calloc(NC * SA_NF, sizeof *tot_sa);
    if (!tot_ha || !tot_sa) { failf(err, errlen, "out of memory"); goto fail; }
    *n_not_applied = 0;

    FILE *f = ofile(&of[0], dir, "configs.csv", err, errlen);
    if (!f) goto fail;
    /* the label column only when the sweep names a configuration: results of unlabelled
     * sweeps stay byte-identical to those of earlier versions */
    int labels = 0;
    for (size_t c = 0; c < NC && !labels; c++) labels = sw->cfg[c].label[0] != 0;
    kv_results_put_header_opt(f, KV_RF_CONFIGS, labels);
    for (size_t c = 0; c < NC; c++) {
        const rp_config *cf = &sw->cfg[c];
        fprintf(f, "%zu,%s,%s,%s,", c, cf->canon, cf->family,
                cf->budget_kind == RP_BUDGET_KEEP ? "keep" : cf->budget_kind == RP_BUDGET_COUNT ? "budget" : "none");
        if (cf->budget_kind != RP_BUDGET_NONE) fprintf(f, "%.9g", cf->budget_value);
        if (labels) fprintf(f, ",%s", cf->label);
        fputc('\n', f);
    }
    if (ocommit(&of[0], err, errlen)) goto fail;

    f = ofile(&of[1], dir, "per_seq.csv", err, errlen);
    if (!f) goto fail;
    kv_results_put_header(f, KV_RF_PER_SEQ);
    for (size_t c = 0; c < NC; c++) {
        const rp_config *cf = &sw->cfg[c];
        for (size_t i = 0; i < n_res; i++) {
            const rp_seq_result *r = &res[i];
            const double *sa = r->sa + c * SA_NF;
            double ha[HA_NF] = { 0 };
            sum_heads(r, c, L, H, ha);
            fprintf(f, "%zu,%s,%s,%zu,%.0f", c, cf->canon, cf->family, r->seq, sa[SA_NQ]);
            put_f(f, ha[HA_KEEP] / ha[HA_N]);
            fprintf(f, ",%.9g,%.9g", sa[SA_KVB], sa[SA_FULLB]);
            put_f(f, sa[SA_FULLB] / sa[SA_KVB]);
            put_attn(f, ha, sa[SA_MODIFIED] != 0);
            ece_acc ef, ec;
            memcpy(&ef, sa + SA_ECE_F, sizeof ef);
            memcpy(&ec, sa + SA_ECE_C, sizeof ec);
            put_readout(f, has_readout, sa, &ef, &ec, 0);
            fprintf(f, ",%.9g,%.9g\n", sa[SA_PAGED], sa[SA_FRAG]);
            for (size_t k = 0; k < HA_NF; k++) tot_ha[c * HA_NF + k] += ha[k];
            for (size_t k = 0; k < SA_NF; k++)
                if (k == SA_MODIFIED || k == SA_DIFFERS) { if (sa[k] != 0) tot_sa[c * SA_NF + k] = 1; }
                else tot_sa[c * SA_NF + k] += sa[k];
        }
    }
    if (ocommit(&of[1], err, errlen)) goto fail;

    f = ofile(&of[2], dir, "per_head.csv", err, errlen);
    if (!f) goto fail;
    kv_results_put_header(f, KV_RF_PER_HEAD);
    for (size_t c = 0; c < NC; c++) {
        int modified = 0;
        for (size_t i = 0; i < n_res; i++) modified |= res[i].sa[c * SA_NF + SA_MODIFIED] != 0;
        for (size_t l = 0; l < L; l++)
            for (size_t h = 0; h < H; h++) {
                double a[HA_NF] = { 0 };
                for (size_t i = 0; i < n_res; i++)
                    for (size_t k = 0; k < HA_NF; k++) a[k] += res[i].ha[((c * L + l) * H + h) * HA_NF + k];
                double N = a[HA_N];
                fprintf(f, "%zu,%s,%zu,%zu,%.0f", c, sw->cfg[c].canon, l, h, N);
                put_f(f, a[HA_KEEP] / N); put_f(f, a[HA_BUDGET] / N);
                put_f(f, a[HA_COS] / N); put_f(f, a[HA_OCOS] / N); put_f(f, a[HA_OREL] / N);
                put_f(f, a[HA_KL] / N); put_f(f, a[HA_REC] / N);
                int mse = modified && a[HA_MCNT] > 0;
                put_opt(f, mse, mse ? a[HA_KERR] / a[HA_MCNT] : 0);
                put_opt(f, mse, mse ? a[HA_VERR] / a[HA_MCNT] : 0);
                fputc('\n', f);
            }
    }
    if (ocommit(&of[2], err, errlen)) goto fail;

    f = ofile(&of[3], dir, "summary.csv", err, errlen);
    if (!f) goto fail;
    kv_results_put_header(f, KV_RF_SUMMARY);
    for (size_t c = 0; c < NC; c++) {
        const rp_config *cf = &sw->cfg[c];
        const double *sa = tot_sa + c * SA_NF, *ha = tot_ha + c * HA_NF;
        fprintf(f, "%zu,%s,%s,%zu,%.0f", c, cf->canon, cf->family, n_res, sa[SA_NQ]);
        put_f(f, ha[HA_KEEP] / ha[HA_N]);
        put_f(f, sa[SA_KVB] / (double)n_res);
        put_f(f, sa[SA_FULLB] / (double)n_res);
        put_f(f, sa[SA_FULLB] / sa[SA_KVB]);
        put_attn(f, ha, sa[SA_MODIFIED] != 0);
        ece_acc ef, ec;
        memcpy(&ef, sa + SA_ECE_F, sizeof ef);
        memcpy(&ec, sa + SA_ECE_C, sizeof ec);
        put_readout(f, has_readout, sa, &ef, &ec, 1);
        put_f(f, sa[SA_PAGED] / (double)n_res);
        put_f(f, sa[SA_FRAG] / (double)n_res);
        int na = strcmp(cf->family, "full") != 0 && sa[SA_DIFFERS] == 0;
        *n_not_applied += (size_t)na;
        fprintf(f, ",%d\n", na);
    }
    if (ocommit(&of[3], err, errlen)) goto fail;

    if (has_readout) {
        f = ofile(&of[4], dir, "calib.csv", err, errlen);
        if (!f) goto fail;
        kv_results_put_header(f, KV_RF_CALIB);
        for (size_t c = 0; c < NC; c++)
            for (int w = 0; w < 2; w++) {
                ece_acc e;
                memcpy(&e, tot_sa + c * SA_NF + (w ? SA_ECE_C : SA_ECE_F), sizeof e);
                for (int b = 0; b < ECE_BINS; b++)
                    fprintf(f, "%zu,%s,%s,%d,%.9g,%.9g,%.9g\n", c, sw->cfg[c].canon, w ? "comp" : "full", b,
                            e.count[b], e.conf[b], e.acc[b]);
            }
        if (ocommit(&of[4], err, errlen)) goto fail;
    }

    /* per_layer.csv: only when every sequence has the per-layer read-out */
    size_t n_pl = 0;
    for (size_t i = 0; i < n_res; i++) n_pl += res[i].pl != NULL;
    if (n_pl && n_pl != n_res) {
        failf(err, errlen, "per_layer.csv: %zu of %zu sequences lack the per-layer read-out (parts from a run without "
              "--per-layer-readout); rerun without --resume", n_res - n_pl, n_res);
        goto fail;
    }
    if (n_pl && has_readout) {
        f = ofile(&of[6], dir, "per_layer.csv", err, errlen);
        if (!f) goto fail;
        kv_results_put_header(f, KV_RF_PER_LAYER);
        for (size_t c = 0; c < NC; c++)
            for (size_t i = 0; i < n_res; i++) {
                const double *sa = res[i].sa + c * SA_NF;
                int rn = sa[SA_RO_N] > 0, ny = sa[SA_NY] > 0;
                for (size_t l = 0; l < L; l++) {
                    const double *b = res[i].pl + (c * L + l) * PL_NF;
                    fprintf(f, "%zu,%s,%zu,%zu", c, sw->cfg[c].canon, res[i].seq, l);
                    put_opt(f, rn, rn ? b[PL_KL] / sa[SA_RO_N] : 0);
                    put_opt(f, ny, ny ? (b[PL_NLL_C] - sa[SA_NLL_F]) / sa[SA_NY] : 0);
                    fputc('\n', f);
                }
            }
        if (ocommit(&of[6], err, errlen)) goto fail;
    }

    if (write_per_pos(of + 9, dir, sw, res, n_res, L, H, has_readout, err, errlen)) goto fail;
    if (write_needles(of + 7, dir, sw, res, n_res, L, H, has_readout, err, errlen)) goto fail;

    f = ofile(&of[5], dir, "provenance.json", err, errlen);
    if (!f) goto fail;
    unsigned maj = 0, min = 0, rel = 0;
    H5get_libversion(&maj, &min, &rel);
    char h5v[64], fin[64];
    const char *shard = pv->shard ? pv->shard : "0/1";
    snprintf(h5v, sizeof h5v, "%u.%u.%u", maj, min, rel);
    out_utc_now(fin, sizeof fin);
    fprintf(f, "{\n  \"results_version\": %d,\n", KV_RESULTS_VERSION);
    json_str(f, "tool", "kvreplay", 0);
    json_str(f, "tool_version", KV_VERSION_STRING, 0);
    json_str(f, "trace", pv->trace, 0);
    json_str(f, "trace_sha256", pv->trace_sha256, 0);
    json_str(f, "trace_model", pv->model, 0);
    json_str(f, "trace_architecture", pv->architecture, 0);
    json_str(f, "mode", pv->mode, 0);
    fprintf(f, "  \"decode\": %zu,\n", pv->decode);
    json_str(f, "sweep", pv->sweep, 0);
    fprintf(f, "  \"n_configs\": %zu,\n  \"n_seq\": %zu,\n  \"threads\": %zu,\n  \"page_size\": %zu,\n", NC, pv->n_seq,
            pv->threads, pv->page_size);
    fprintf(f, "  \"n_layers\": %zu,\n  \"n_heads\": %zu,\n", L, H);     /* kvreport bounds layer/head by them */
    if (pv->n_kv_heads && pv->head_dim)     /* the bytes of one token: kvreport's prompt-only ratio */
        fprintf(f, "  \"n_kv_heads\": %zu,\n  \"head_dim\": %zu,\n", pv->n_kv_heads, pv->head_dim);
    /* where the whole prompt's attention scores came from */
    json_str(f, "prompt_scores", pv->prompt_scores ? pv->prompt_scores : "recompute", 0);
    /* eviction-only prefill configurations: from the full pass's probabilities (shared) or alone */
    json_str(f, "evaluation", pv->evaluation ? pv->evaluation : "shared", 0);
    json_str(f, "hdf5_version", h5v, 0);
    json_str(f, "gsl_version", GSL_VERSION, 0);
    json_str(f, "openblas_config", rs_blas_config(), 0);
    json_str(f, "blas", rs_blas_info(), 0);
    json_str(f, "readout_product", gemm_path(), 0);
    char *defs = param_defaults();
    json_str(f, "param_defaults", defs ? defs : "", 0);
    free(defs);
    json_str(f, "argv", pv->argv, 0);
    json_str(f, "started", pv->started, 0);
    json_str(f, "finished", fin, 0);
    json_str(f, "shard", shard, 1);
    fprintf(f, "}\n");
    if (ocommit(&of[5], err, errlen)) goto fail;
    rc = 0;
fail:
    for (size_t i = 0; i < 10; i++) if (of[i].open) kv_atomic_discard(&of[i].a);
    free(tot_ha); free(tot_sa);
    return rc;
}
