/* Export of cache states (export.h, traces/EXPORT.md).
 *
 * NC configurations, L layers, Hkv kv heads, D head_dim; one slot per (c, l, g) holds a deep
 * copy of the cache the last position sees for the current sequence and, for time-dependent
 * configurations, when each entry's row first differed from its row before encoding
 * (recorded at every query position by rp_export_step_hook and checked to change once).
 */
#include <hdf5.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "export.h"

typedef struct slot {
    int set;
    size_t n, P;                /* sequence length and split this slot was filled for */
    size_t ne, nm;              /* entries, member positions */
    int32_t *pos, *mult, *members;
    int64_t *moff;              /* [ne + 1] */
    float *k, *v;               /* [ne][D] */
    int32_t *evict_at;          /* online: [n] */
    int modified;
    /* per-position state (time-dependent configurations), entries [0, sn) of the full cache */
    size_t sn, sseq;            /* sn = 0: no query position recorded yet */
    int32_t *efrom;             /* [2][sn] first query that saw a K (V) row other than the base
                                   row; -1 none (keys and values have their own schedules) */
    float *sk, *sv;             /* [sn][D] that row (later queries must see the same) */
    float *bk, *bv;             /* [sn][D] base rows when the base cache is modified (merges), else NULL */
} slot;

struct rp_export {
    char path[4096], tmp[4200];
    hid_t file;
    const rp_sweep *sw;
    uint8_t *chosen;            /* [NC] */
    uint8_t *rows;              /* [NC] configuration has an encoder or a view */
    uint8_t *td;                /* [NC] its rows depend on the query position (per-position state) */
    size_t NC, L, Hkv, D;
    int online;                 /* mode "online": evict_at per (l, g) instead of entry lists */
    slot *slots;                /* [NC][L][Hkv] */
    int closed;
};

/* The cache of the last position (entry lists, rows, eviction times). */
static void slot_clear_last(slot *z)
{
    free(z->pos); free(z->mult); free(z->members); free(z->moff); free(z->k); free(z->v); free(z->evict_at);
    z->pos = z->mult = z->members = z->evict_at = NULL;
    z->moff = NULL;
    z->k = z->v = NULL;
    z->set = 0;
    z->n = z->P = z->ne = z->nm = 0;
    z->modified = 0;
}

static void slot_clear_steps(slot *z)
{
    free(z->efrom); free(z->sk); free(z->sv); free(z->bk); free(z->bv);
    z->efrom = NULL;
    z->sk = z->sv = z->bk = z->bv = NULL;
    z->sn = z->sseq = 0;
}

static void slot_clear(slot *z)
{
    slot_clear_last(z);
    slot_clear_steps(z);
}

static int put_attr(hid_t obj, const char *name, hid_t type, const void *val)
{
    hid_t sp = H5Screate(H5S_SCALAR), a = H5I_INVALID_HID;
    int rc = -1;
    if (sp < 0) goto done;
    a = H5Acreate2(obj, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0 || H5Awrite(a, type, val) < 0) goto done;
    rc = 0;
done:
    if (a >= 0) H5Aclose(a);
    if (sp >= 0) H5Sclose(sp);
    return rc;
}

static int put_ll(hid_t obj, const char *name, long long v) { return put_attr(obj, name, H5T_NATIVE_LLONG, &v); }

static int put_str(hid_t obj, const char *name, const char *s)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    int rc = -1;
    if (t < 0) return -1;
    if (H5Tset_size(t, strlen(s) + 1) >= 0 && H5Tset_strpad(t, H5T_STR_NULLTERM) >= 0)
        rc = put_attr(obj, name, t, s);
    H5Tclose(t);
    return rc;
}

/* A contiguous dataset of rank 1 or 2 written in one call (empty datasets allowed). */
static int put_dset(hid_t grp, const char *name, hid_t ftype, hid_t mtype, int rank, size_t d0, size_t d1,
                    const void *buf)
{
    hsize_t hd[2] = { d0, d1 };
    hid_t sp = H5Screate_simple(rank, hd, NULL), d = H5I_INVALID_HID;
    int rc = -1;
    if (sp < 0) goto done;
    d = H5Dcreate2(grp, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (d < 0) goto done;
    if (d0 > 0 && (rank < 2 || d1 > 0) && H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) goto done;
    rc = 0;
done:
    if (d >= 0) H5Dclose(d);
    if (sp >= 0) H5Sclose(sp);
    return rc;
}

int rp_export_open(const char *path, const rp_sweep *sw, const uint8_t *chosen, const kv_info *in,
                   const rp_export_prov *pv, rp_export **out, char *err, size_t errlen)
{
    rp_export *x = calloc(1, sizeof *x);
    hid_t g = H5I_INVALID_HID;
    if (!x) return rp_failf(err, errlen, "out of memory");
    x->file = H5I_INVALID_HID;
    x->sw = sw;
    x->NC = sw->n; x->L = in->n_layers; x->Hkv = in->n_kv_heads; x->D = in->head_dim;
    x->online = !strcmp(pv->mode, "online");
    if (strlen(path) >= sizeof x->path) { rp_failf(err, errlen, "--export %s: path too long", path); goto fail; }
    snprintf(x->path, sizeof x->path, "%s", path);
    snprintf(x->tmp, sizeof x->tmp, "%s.tmp.%ld", path, (long)getpid());
    x->chosen = calloc(x->NC, 1);
    x->rows = calloc(x->NC, 1);
    x->td = calloc(x->NC, 1);
    x->slots = calloc(x->NC * x->L * x->Hkv, sizeof *x->slots);
    if (!x->chosen || !x->rows || !x->td || !x->slots) { rp_failf(err, errlen, "out of memory"); goto fail; }
    for (size_t c = 0; c < x->NC; c++) {
        const rp_config *cf = &sw->cfg[c];
        x->chosen[c] = chosen ? chosen[c] != 0 : 1;
        if (!x->chosen[c]) continue;
        if (cf->evict->select) {
            rp_failf(err, errlen, "--export: config %zu '%s': %s selects entries per query at decode time; its cache "
                  "state is not a fixed set and cannot be exported (leave it out with --export-configs)",
                  c, cf->canon, cf->evict->name);
            goto fail;
        }
        x->rows[c] = cf->enc || cf->evict->encode || rp_view_active(cf->evict, cf->evict_cfg);
        /* the engine's per-query encoding (prefill): these get rp_export_step_hook calls */
        x->td[c] = (cf->evict->encode && cf->evict->time_dependent) || (cf->enc && cf->enc->time_dependent) ||
                   rp_view_active(cf->evict, cf->evict_cfg);
        if (x->online && (cf->enc || cf->evict->encode)) {     /* views: checked by the engine */
            rp_failf(err, errlen, "--export: config %zu '%s': under --mode online its rows change with the query "
                  "position (an encoder); only eviction can be exported online (leave it out with "
                  "--export-configs)", c, cf->canon);
            goto fail;
        }
    }
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    x->file = H5Fcreate(x->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (x->file < 0) { rp_failf(err, errlen, "--export %s: cannot create %s", path, x->tmp); goto fail; }
    if (put_ll(x->file, "kvtrace_export_version", RP_EXPORT_VERSION) || put_str(x->file, "trace", pv->trace) ||
        put_str(x->file, "trace_sha256", pv->trace_sha256) || put_str(x->file, "model", pv->model) ||
        put_str(x->file, "mode", pv->mode) || put_ll(x->file, "decode", (long long)pv->decode) ||
        put_ll(x->file, "eval_from", (long long)pv->eval_from) || put_ll(x->file, "n_layers", (long long)x->L) ||
        put_ll(x->file, "n_heads", (long long)in->n_heads) || put_ll(x->file, "n_kv_heads", (long long)x->Hkv) ||
        put_ll(x->file, "head_dim", (long long)x->D) || put_str(x->file, "rows_dtype", "float32") ||
        put_str(x->file, "tool", "kvreplay") || put_str(x->file, "tool_version", KV_VERSION_STRING))
        goto h5fail;
    g = H5Gcreate2(x->file, "configs", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) goto h5fail;
    for (size_t c = 0; c < x->NC; c++) {
        if (!x->chosen[c]) continue;
        const rp_config *cf = &sw->cfg[c];
        char name[32];
        snprintf(name, sizeof name, "%zu", c);
        hid_t cg = H5Gcreate2(g, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (cg < 0) goto h5fail;
        int bad = put_str(cg, "config", cf->canon) || put_str(cg, "family", cf->family) ||
                  put_ll(cg, "config_id", (long long)c) || put_ll(cg, "time_dependent", x->td[c]);
        H5Gclose(cg);
        if (bad) goto h5fail;
    }
    H5Gclose(g);
    *out = x;
    return 0;
h5fail:
    rp_failf(err, errlen, "--export %s: HDF5 error while writing the file header", path);
fail:
    if (g >= 0) H5Gclose(g);
    rp_export_free(x);
    return -1;
}

int rp_export_hook(void *xv, size_t c, size_t s, size_t l, size_t g, size_t n, size_t P, const rp_cache *view)
{
    rp_export *x = xv;
    (void)s;
    if (c >= x->NC || !x->chosen[c] || l >= x->L || g >= x->Hkv) return 0;
    slot *z = &x->slots[(c * x->L + l) * x->Hkv + g];
    size_t ne = view->n, D = x->D;
    slot_clear_last(z);
    size_t nm = view->mem_off ? (size_t)view->mem_off[ne] : ne;
    z->pos = malloc((ne ? ne : 1) * sizeof *z->pos);
    z->mult = malloc((ne ? ne : 1) * sizeof *z->mult);
    z->moff = malloc((ne + 1) * sizeof *z->moff);
    z->members = malloc((nm ? nm : 1) * sizeof *z->members);
    z->k = malloc((ne ? ne : 1) * D * sizeof *z->k);
    z->v = malloc((ne ? ne : 1) * D * sizeof *z->v);
    if (!z->pos || !z->mult || !z->moff || !z->members || !z->k || !z->v) { slot_clear_last(z); return -1; }
    memcpy(z->pos, view->pos, ne * sizeof *z->pos);
    memcpy(z->mult, view->mult, ne * sizeof *z->mult);
    for (size_t e = 0; e <= ne; e++) z->moff[e] = view->mem_off ? view->mem_off[e] : (int64_t)e;
    if (view->mem_off) memcpy(z->members, view->members, nm * sizeof *z->members);
    else memcpy(z->members, view->pos, ne * sizeof *z->members);
    memcpy(z->k, view->k, ne * D * sizeof *z->k);
    memcpy(z->v, view->v, ne * D * sizeof *z->v);
    z->ne = ne; z->nm = nm; z->n = n; z->P = P;
    z->modified = view->modified;
    z->set = 1;
    return 0;
}

/* First call of a sequence: every entry still shows its base row. */
static int steps_reset(slot *z, size_t s, const rp_cache *base, size_t D)
{
    size_t sn = base->n, cnt = (sn ? sn : 1) * D;
    slot_clear_steps(z);
    z->efrom = malloc(2 * (sn ? sn : 1) * sizeof *z->efrom);
    z->sk = malloc(cnt * sizeof *z->sk);
    z->sv = malloc(cnt * sizeof *z->sv);
    if (base->modified) {               /* rows before encoding are not the trace's (merges) */
        z->bk = malloc(cnt * sizeof *z->bk);
        z->bv = malloc(cnt * sizeof *z->bv);
    }
    if (!z->efrom || !z->sk || !z->sv || (base->modified && (!z->bk || !z->bv))) { slot_clear_steps(z); return -1; }
    for (size_t e = 0; e < 2 * sn; e++) z->efrom[e] = -1;
    if (base->modified) {
        memcpy(z->bk, base->k, sn * D * sizeof *z->bk);
        memcpy(z->bv, base->v, sn * D * sizeof *z->bv);
    }
    z->sn = sn;
    z->sseq = s;
    return 0;
}

int rp_export_step_hook(void *xv, size_t c, size_t s, size_t l, size_t g, size_t t, size_t n, size_t P,
                        const rp_cache *view, const rp_cache *base)
{
    rp_export *x = xv;
    (void)n; (void)P;
    if (c >= x->NC || !x->chosen[c] || l >= x->L || g >= x->Hkv) return 0;
    slot *z = &x->slots[(c * x->L + l) * x->Hkv + g];
    size_t D = x->D, rb = D * sizeof(float);
    if ((!z->sn || z->sseq != s || !z->efrom) && steps_reset(z, s, base, D)) return -1;
    if (view->n > z->sn || base->n != z->sn) return 1;
    for (size_t e = 0; e < view->n; e++) {
        if (view->pos[e] != base->pos[e]) return 1;
        for (int side = 0; side < 2; side++) {
            const float *r = (side ? view->v : view->k) + e * D, *b = (side ? base->v : base->k) + e * D;
            float *seen = (side ? z->sv : z->sk) + e * D;
            int32_t *f = &z->efrom[side * z->sn + e];
            if (*f < 0) {
                if (!memcmp(r, b, rb)) continue;
                *f = (int32_t)t;        /* the first query that sees the encoded row */
                memcpy(seen, r, rb);
            } else if (memcmp(r, seen, rb)) {
                return 1;               /* a second change: no two-state description */
            }
        }
    }
    return 0;
}

int rp_export_evict_hook(void *xv, size_t c, size_t s, size_t l, size_t g, size_t n, size_t P,
                         const int32_t *evict_at)
{
    rp_export *x = xv;
    (void)s;
    if (c >= x->NC || !x->chosen[c] || l >= x->L || g >= x->Hkv) return 0;
    slot *z = &x->slots[(c * x->L + l) * x->Hkv + g];
    slot_clear(z);
    if (!(z->evict_at = malloc((n ? n : 1) * sizeof *z->evict_at))) return -1;
    memcpy(z->evict_at, evict_at, n * sizeof *z->evict_at);
    z->n = n; z->P = P;
    z->set = 1;
    return 0;
}

/* Online: /configs/<c>/<s>/evict_at [L*Hkv][n]. */
static int write_seq_online(rp_export *x, size_t c, size_t s, char *err, size_t errlen)
{
    size_t LG = x->L * x->Hkv;
    slot *zs = &x->slots[c * LG];
    size_t n = zs[0].n, P = zs[0].P;
    for (size_t i = 0; i < LG; i++)
        if (!zs[i].set || zs[i].n != n)
            return rp_failf(err, errlen, "export: no eviction times for config %zu seq %zu slot %zu (engine hook not called)", c, s, i);
    int32_t *ev = malloc((LG * n > 0 ? LG * n : 1) * sizeof *ev);
    if (!ev) return rp_failf(err, errlen, "out of memory (export)");
    for (size_t i = 0; i < LG; i++) memcpy(ev + i * n, zs[i].evict_at, n * sizeof *ev);
    char name[64];
    snprintf(name, sizeof name, "configs/%zu/%zu", c, s);
    hid_t g = H5Gcreate2(x->file, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int bad = g < 0 || put_ll(g, "seq", (long long)s) || put_ll(g, "seq_len", (long long)n) ||
              put_ll(g, "split", (long long)P) || put_ll(g, "has_rows", 0) ||
              put_dset(g, "evict_at", H5T_STD_I32LE, H5T_NATIVE_INT32, 2, LG, n, ev);
    if (g >= 0) H5Gclose(g);
    free(ev);
    if (bad) return rp_failf(err, errlen, "--export %s: HDF5 error writing %s", x->path, name);
    for (size_t i = 0; i < LG; i++) slot_clear(&zs[i]);
    return 0;
}

/* encoded_from [NE][2] of configuration c, slots in (l, g) order: query t sees entry e's
 * exported K row iff t >= encoded_from[e][0] (V: [e][1]), before that its row before encoding
 * (keys and values have their own schedules, e.g. KIVI). 0 for configurations
 * whose rows do not depend on the query (encoded once) and for entries whose row never
 * changed or was encoded when first seen (a prompt entry at P, a decode entry at its own
 * position). *pre: some cache's rows before encoding are not the trace's (merges). */
static int time_states(const rp_export *x, size_t c, size_t s, const slot *zs, int32_t *efrom, int *pre,
                       char *err, size_t errlen)
{
    size_t LG = x->L * x->Hkv, D = x->D, e0 = 0;
    *pre = 0;
    for (size_t i = 0; i < LG; i++) {
        const slot *z = &zs[i];
        if (!x->td[c]) {
            memset(efrom + 2 * e0, 0, 2 * z->ne * sizeof *efrom);
            e0 += z->ne;
            continue;
        }
        if (!z->efrom || z->sseq != s || z->sn != z->ne)
            return rp_failf(err, errlen, "export: no per-position state for config %zu seq %zu slot %zu (engine hook "
                            "not called)", c, s, i);
        for (size_t e = 0; e < z->ne; e++) {
            int32_t first = z->pos[e] < (int32_t)z->P ? (int32_t)z->P : z->pos[e];
            for (int side = 0; side < 2; side++) {
                int32_t f = z->efrom[side * z->sn + e];
                if (f >= 0 && memcmp((side ? z->sv : z->sk) + e * D, (side ? z->v : z->k) + e * D, D * sizeof(float)))
                    return rp_failf(err, errlen, "export: config %zu seq %zu slot %zu entry %zu: the last position's "
                                    "row differs from the one recorded", c, s, i, e);
                efrom[2 * (e0 + e) + (size_t)side] = f <= first ? 0 : f;
            }
        }
        *pre |= z->bk != NULL;
        e0 += z->ne;
    }
    return 0;
}

/* pre_k/pre_v [NE][D]: the rows before encoding where a cache's base is modified; NaN (the
 * trace's row) elsewhere. */
static void pre_rows(const rp_export *x, const slot *zs, float *pk, float *pv)
{
    size_t LG = x->L * x->Hkv, D = x->D, e0 = 0;
    for (size_t i = 0; i < LG; i++) {
        const slot *z = &zs[i];
        if (z->bk) {
            memcpy(pk + e0 * D, z->bk, z->ne * D * sizeof *pk);
            memcpy(pv + e0 * D, z->bv, z->ne * D * sizeof *pv);
        } else {
            for (size_t j = 0; j < z->ne * D; j++) pk[e0 * D + j] = pv[e0 * D + j] = NAN;
        }
        e0 += z->ne;
    }
}

int rp_export_write_seq(rp_export *x, size_t s, char *err, size_t errlen)
{
    if (x->online) {
        for (size_t c = 0; c < x->NC; c++)
            if (x->chosen[c] && write_seq_online(x, c, s, err, errlen)) return -1;
        return 0;
    }
    size_t LG = x->L * x->Hkv, D = x->D;
    int64_t *eoff = malloc((LG + 1) * sizeof *eoff), *moff = NULL;
    uint8_t *mod = malloc(LG);
    int32_t *pos = NULL, *mult = NULL, *mem = NULL, *efrom = NULL;
    float *k = NULL, *v = NULL, *pk = NULL, *pv = NULL;
    hid_t g = H5I_INVALID_HID;
    int rc = -1;
    if (!eoff || !mod) { rp_failf(err, errlen, "out of memory (export)"); goto done; }
    for (size_t c = 0; c < x->NC; c++) {
        if (!x->chosen[c]) continue;
        slot *zs = &x->slots[c * LG];
        size_t NE = 0, NM = 0, n = 0, P = 0;
        int rows = x->rows[c];
        for (size_t i = 0; i < LG; i++) {
            if (!zs[i].set) { rp_failf(err, errlen, "export: no cache state for config %zu seq %zu slot %zu (engine hook not called)", c, s, i); goto done; }
            eoff[i] = (int64_t)NE;
            NE += zs[i].ne; NM += zs[i].nm;
            mod[i] = (uint8_t)(zs[i].modified != 0);
            rows |= zs[i].modified != 0;
            n = zs[i].n; P = zs[i].P;
        }
        eoff[LG] = (int64_t)NE;
        free(pos); free(mult); free(mem); free(moff); free(k); free(v); free(efrom); free(pk); free(pv);
        efrom = NULL; pk = pv = NULL;
        pos = malloc((NE ? NE : 1) * sizeof *pos); mult = malloc((NE ? NE : 1) * sizeof *mult);
        moff = malloc((NE + 1) * sizeof *moff); mem = malloc((NM ? NM : 1) * sizeof *mem);
        k = rows ? malloc((NE ? NE : 1) * D * sizeof *k) : NULL;
        v = rows ? malloc((NE ? NE : 1) * D * sizeof *v) : NULL;
        if (!pos || !mult || !moff || !mem || (rows && (!k || !v))) { rp_failf(err, errlen, "out of memory (export)"); goto done; }
        int pre = 0;                    /* some base cache is modified: write pre_k/pre_v */
        if (rows) {
            if (!(efrom = malloc(2 * (NE ? NE : 1) * sizeof *efrom))) { rp_failf(err, errlen, "out of memory (export)"); goto done; }
            if (time_states(x, c, s, zs, efrom, &pre, err, errlen)) goto done;
            if (pre) {
                pk = malloc((NE ? NE : 1) * D * sizeof *pk);
                pv = malloc((NE ? NE : 1) * D * sizeof *pv);
                if (!pk || !pv) { rp_failf(err, errlen, "out of memory (export)"); goto done; }
                pre_rows(x, zs, pk, pv);
            }
        }
        size_t e0 = 0, m0 = 0;
        for (size_t i = 0; i < LG; i++) {
            slot *z = &zs[i];
            memcpy(pos + e0, z->pos, z->ne * sizeof *pos);
            memcpy(mult + e0, z->mult, z->ne * sizeof *mult);
            for (size_t e = 0; e < z->ne; e++) moff[e0 + e] = (int64_t)m0 + z->moff[e];
            memcpy(mem + m0, z->members, z->nm * sizeof *mem);
            if (rows) {
                memcpy(k + e0 * D, z->k, z->ne * D * sizeof *k);
                memcpy(v + e0 * D, z->v, z->ne * D * sizeof *v);
            }
            e0 += z->ne; m0 += z->nm;
        }
        moff[NE] = (int64_t)NM;
        char name[64];
        snprintf(name, sizeof name, "configs/%zu/%zu", c, s);
        g = H5Gcreate2(x->file, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (g < 0 || put_ll(g, "seq", (long long)s) || put_ll(g, "seq_len", (long long)n) ||
            put_ll(g, "split", (long long)P) || put_ll(g, "has_rows", rows) ||
            put_dset(g, "entry_off", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, LG + 1, 0, eoff) ||
            put_dset(g, "modified", H5T_STD_U8LE, H5T_NATIVE_UINT8, 1, LG, 0, mod) ||
            put_dset(g, "pos", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, NE, 0, pos) ||
            put_dset(g, "mult", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, NE, 0, mult) ||
            put_dset(g, "member_off", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, NE + 1, 0, moff) ||
            put_dset(g, "members", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, NM, 0, mem) ||
            (rows && (put_dset(g, "k", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, NE, D, k) ||
                      put_dset(g, "v", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, NE, D, v) ||
                      put_dset(g, "encoded_from", H5T_STD_I32LE, H5T_NATIVE_INT32, 2, NE, 2, efrom))) ||
            put_ll(g, "has_pre_rows", pre) ||
            (pre && (put_dset(g, "pre_k", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, NE, D, pk) ||
                     put_dset(g, "pre_v", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, NE, D, pv)))) {
            rp_failf(err, errlen, "--export %s: HDF5 error writing %s", x->path, name);
            goto done;
        }
        H5Gclose(g);
        g = H5I_INVALID_HID;
        for (size_t i = 0; i < LG; i++) slot_clear(&zs[i]);
    }
    rc = 0;
done:
    if (g >= 0) H5Gclose(g);
    free(eoff); free(mod); free(pos); free(mult); free(mem); free(moff); free(k); free(v);
    free(efrom); free(pk); free(pv);
    return rc;
}

int rp_export_close(rp_export *x, char *err, size_t errlen)
{
    if (H5Fflush(x->file, H5F_SCOPE_GLOBAL) < 0 || H5Fclose(x->file) < 0) {
        x->file = H5I_INVALID_HID;
        return rp_failf(err, errlen, "--export %s: HDF5 error closing the file", x->path);
    }
    x->file = H5I_INVALID_HID;
    if (rename(x->tmp, x->path)) return rp_failf(err, errlen, "--export %s: cannot rename %s", x->path, x->tmp);
    x->closed = 1;
    return 0;
}

const char *rp_export_tmp(const rp_export *x)
{
    return x->tmp;
}

void rp_export_free(rp_export *x)
{
    if (!x) return;
    if (x->file >= 0) H5Fclose(x->file);
    if (!x->closed && x->tmp[0]) unlink(x->tmp);
    if (x->slots)
        for (size_t i = 0; i < x->NC * x->L * x->Hkv; i++) slot_clear(&x->slots[i]);
    free(x->slots); free(x->chosen); free(x->rows); free(x->td);
    free(x);
}
