/* Trace writer: the C producer side of traces/SCHEMA.md (version 1).
 *
 * Everything goes to "<dir>/.<name>.tmp.XXXXXX" next to the final path; kv_writer_finish
 * checks completeness (every required dataset, every (sequence, layer, head) slice written),
 * closes, fsyncs and renames. Rank-4 tensors are chunked (1, 1, min(T, 256), D), the replay
 * access pattern, with shuffle + deflate when meta->deflate > 0.
 *
 * Shapes: S sequences, T tokens, L layers, H q-heads, Hkv kv-heads, D head_dim, C d_model,
 * V vocab, R rotary_dim.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kv_internal.h"

struct kv_writer {
    char path[4096], tmp[4200], dir[4096];
    size_t S, T, L, H, Hkv, D, C, V, R;
    int deflate, rope;
    hid_t file, f16;
    hid_t *tens;                    /* [L * 4] */
    unsigned char *done[4];         /* [L * S * heads] slice written */
    size_t ndone[4];
    int tokens_done, readout_done;
    int32_t *seq_len;               /* [S] once tokens are written */
    unsigned char *wo_done, *hidden_done, *ref_done;
    hid_t hidden, lse, top_ids, top_logits;
    uint16_t *scratch;              /* [max(T*D, T*C, H*D*C, V*C)] f16 staging, grown on use */
    size_t scratch_n;
};

static const char *tname[4] = {"q", "k", "v", "attn_out"};

#define WCAP_S ((size_t)1 << 20)
#define WCAP_T ((size_t)1 << 22)
#define WCAP_C ((size_t)1 << 17)
#define WCAP_V ((size_t)1 << 22)

/* ---- small HDF5 helpers ------------------------------------------------------------ */

static int put_attr(hid_t obj, const char *name, hid_t ftype, hid_t mtype, const void *val)
{
    if (H5Aexists(obj, name) > 0 && H5Adelete(obj, name) < 0)
        return -1;
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = sp >= 0 ? H5Acreate2(obj, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT) : H5I_INVALID_HID;
    int r = (a >= 0 && H5Awrite(a, mtype, val) >= 0) ? 0 : -1;
    if (a >= 0)
        H5Aclose(a);
    if (sp >= 0)
        H5Sclose(sp);
    return r;
}

static int put_int(hid_t obj, const char *name, long long v)
{
    return put_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_LLONG, &v);
}

static int put_double(hid_t obj, const char *name, double v)
{
    return put_attr(obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v);
}

/* Variable-length UTF-8 string, as h5py writes str attributes. */
static int put_str(hid_t obj, const char *name, const char *s)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0)
        return -1;
    int r = (H5Tset_size(t, H5T_VARIABLE) >= 0 && H5Tset_cset(t, H5T_CSET_UTF8) >= 0)
                ? put_attr(obj, name, t, t, &s) : -1;
    H5Tclose(t);
    return r;
}

/* Creates a dataset; chunk == NULL: contiguous. Filters only when chunked and deflate > 0. */
static hid_t make_dset(kv_writer *w, const char *path, hid_t type, int rank, const size_t *dims,
                       const size_t *chunk)
{
    hsize_t hd[4], hc[4];
    for (int i = 0; i < rank; i++) {
        hd[i] = dims[i];
        hc[i] = chunk ? chunk[i] : 0;
    }
    hid_t sp = H5Screate_simple(rank, hd, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    hid_t d = H5I_INVALID_HID;
    if (sp < 0 || dcpl < 0 || lcpl < 0 || H5Pset_create_intermediate_group(lcpl, 1) < 0)
        goto done;
    if (chunk) {
        if (H5Pset_chunk(dcpl, rank, hc) < 0)
            goto done;
        if (w->deflate > 0 && (H5Pset_shuffle(dcpl) < 0 || H5Pset_deflate(dcpl, (unsigned)w->deflate) < 0))
            goto done;
    }
    d = H5Dcreate2(w->file, path, type, sp, lcpl, dcpl, H5P_DEFAULT);
done:
    if (lcpl >= 0)
        H5Pclose(lcpl);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (sp >= 0)
        H5Sclose(sp);
    return d;
}

/* Writes the hyperslab [start, start+count) of d from buf (memory type mtype). */
static int write_slab(hid_t d, hid_t mtype, int rank, const size_t *start, const size_t *count, const void *buf)
{
    hsize_t hs[4], hc[4], n = 1;
    for (int i = 0; i < rank; i++) {
        hs[i] = start[i];
        hc[i] = count[i];
        n *= hc[i];
    }
    hid_t fs = H5Dget_space(d);
    hid_t ms = H5Screate_simple(1, &n, NULL);
    int r = (fs >= 0 && ms >= 0 && H5Sselect_hyperslab(fs, H5S_SELECT_SET, hs, NULL, hc, NULL) >= 0 &&
             H5Dwrite(d, mtype, ms, fs, H5P_DEFAULT, buf) >= 0) ? 0 : -1;
    if (ms >= 0)
        H5Sclose(ms);
    if (fs >= 0)
        H5Sclose(fs);
    return r;
}

/* Whole small dataset, contiguous, in one write. */
static int write_whole(kv_writer *w, const char *path, hid_t ftype, hid_t mtype, int rank, const size_t *dims,
                       const void *buf)
{
    hid_t d = make_dset(w, path, ftype, rank, dims, NULL);
    if (d < 0)
        return -1;
    size_t start[4] = {0, 0, 0, 0};
    int r = write_slab(d, mtype, rank, start, dims, buf);
    return (H5Dclose(d) < 0 || r < 0) ? -1 : 0;
}

static kv_status scratch_reserve(kv_writer *w, size_t n, kv_error *err)
{
    if (n <= w->scratch_n)
        return KV_OK;
    uint16_t *p = realloc(w->scratch, n * sizeof *p);
    if (!p)
        return kverr_set(err, KV_ERR_NOMEM, "%s: out of memory", w->path);
    w->scratch = p;
    w->scratch_n = n;
    return KV_OK;
}

static kv_status werr(kv_writer *w, const char *obj, const char *what, kv_error *err)
{
    return kverr_set(err, KV_ERR_IO, "%s: %s: %s (temporary file %s)", w->path, obj, what, w->tmp);
}

/* f16 2-D weight [rows, C]: contiguous, or chunked by rows (<= 32 MiB a chunk) with deflate. */
static kv_status write_matrix_f16(kv_writer *w, const char *path, size_t rows, size_t cols, const float *src,
                                  kv_error *err)
{
    size_t n = rows * cols;
    kv_status st = scratch_reserve(w, n, err);
    if (st != KV_OK)
        return st;
    kv_f32_to_f16(src, w->scratch, n);
    size_t dims[2] = {rows, cols};
    size_t chunk[2] = {rows, cols};
    size_t maxrows = ((size_t)32 << 20) / (cols * 2);
    if (maxrows < 1)
        maxrows = 1;
    if (chunk[0] > maxrows)
        chunk[0] = maxrows;
    hid_t d = make_dset(w, path, w->f16, 2, dims, w->deflate > 0 ? chunk : NULL);
    if (d < 0)
        return werr(w, path, "cannot create the dataset", err);
    size_t start[2] = {0, 0};
    int r = write_slab(d, w->f16, 2, start, dims, w->scratch);
    if (H5Dclose(d) < 0 || r < 0)
        return werr(w, path, "write failed", err);
    return KV_OK;
}

/* ---- create ------------------------------------------------------------------------ */

static kv_status check_meta(const char *path, const kv_meta *m, kv_error *err)
{
    if (!m->model || !m->architecture || !m->positional)
        return kverr_set(err, KV_ERR_INVALID, "%s: meta: model, architecture and positional are required", path);
    struct { const char *name; size_t v, cap; } d[] = {
        {"n_seq", m->n_seq, WCAP_S}, {"n_tok", m->n_tok, WCAP_T}, {"n_layers", m->n_layers, 1024},
        {"n_heads", m->n_heads, 1024}, {"n_kv_heads", m->n_kv_heads, 1024}, {"head_dim", m->head_dim, 1024},
        {"d_model", m->d_model, WCAP_C}, {"vocab", m->vocab, WCAP_V},
    };
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++)
        if (d[i].v < 1 || d[i].v > d[i].cap)
            return kverr_set(err, KV_ERR_INVALID, "%s: meta: %s = %zu outside [1, %zu]", path, d[i].name, d[i].v,
                             d[i].cap);
    if (m->n_heads % m->n_kv_heads)
        return kverr_set(err, KV_ERR_INVALID, "%s: meta: n_heads = %zu is not divisible by n_kv_heads = %zu", path,
                         m->n_heads, m->n_kv_heads);
    size_t e = 1;
    const size_t big = (size_t)1 << 40;
    if (!kv_mul_ok(m->n_seq, m->n_heads, big, &e) || !kv_mul_ok(e, m->n_tok, big, &e) ||
        !kv_mul_ok(e, m->head_dim, big, &e) || !kv_mul_ok(m->vocab, m->d_model, big, &e))
        return kverr_set(err, KV_ERR_INVALID, "%s: meta: tensor element count exceeds 2^40", path);
    if (!(m->attn_scale > 0) || !(m->attn_softcap >= 0) || m->sliding_window < 0)
        return kverr_set(err, KV_ERR_INVALID, "%s: meta: need attn_scale > 0, attn_softcap >= 0, sliding_window >= 0",
                         path);
    int rope = !strcmp(m->positional, "rope");
    if (!rope && strcmp(m->positional, "learned") && strcmp(m->positional, "alibi") && strcmp(m->positional, "none"))
        return kverr_set(err, KV_ERR_INVALID, "%s: meta: positional '%s' is not rope, learned, alibi or none", path,
                         m->positional);
    if (rope && (!m->rope_layout || (strcmp(m->rope_layout, "rotate_half") && strcmp(m->rope_layout, "interleaved"))))
        return kverr_set(err, KV_ERR_INVALID, "%s: meta: positional rope needs rope_layout rotate_half or interleaved",
                         path);
    if (rope && m->rotary_dim && (m->rotary_dim % 2 || m->rotary_dim > m->head_dim))
        return kverr_set(err, KV_ERR_INVALID, "%s: meta: rotary_dim %zu must be even and <= head_dim", path,
                         m->rotary_dim);
    if (m->deflate < 0 || m->deflate > 9)
        return kverr_set(err, KV_ERR_INVALID, "%s: meta: deflate level %d outside [0, 9]", path, m->deflate);
    if (m->bos_id >= 0 && (size_t)m->bos_id >= m->vocab)
        return kverr_set(err, KV_ERR_INVALID, "%s: meta: bos_id %lld outside [0, vocab)", path, m->bos_id);
    return KV_OK;
}

static void created_now(char *buf, size_t cap)
{
    const char *epoch = getenv("SOURCE_DATE_EPOCH");
    time_t t = epoch && *epoch ? (time_t)strtoll(epoch, NULL, 10) : time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

kv_status kv_writer_create(const char *path, const kv_meta *meta, kv_writer **out, kv_error *err)
{
    if (!path || !meta || !out || !*path)
        return kverr_set(err, KV_ERR_INVALID, "kv_writer_create: NULL argument");
    *out = NULL;
    if (strlen(path) >= 4000)
        return kverr_set(err, KV_ERR_INVALID, "%s: path too long", path);
    kv_status st = check_meta(path, meta, err);
    if (st != KV_OK)
        return st;
    kvh5_quiet();
    kv_writer *w = calloc(1, sizeof *w);
    if (!w)
        return kverr_set(err, KV_ERR_NOMEM, "%s: out of memory", path);
    w->file = w->f16 = w->hidden = w->lse = w->top_ids = w->top_logits = H5I_INVALID_HID;
    snprintf(w->path, sizeof w->path, "%s", path);
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (slash)
        snprintf(w->dir, sizeof w->dir, "%.*s", (int)(slash - path == 0 ? 1 : slash - path), path);
    else
        snprintf(w->dir, sizeof w->dir, ".");
    snprintf(w->tmp, sizeof w->tmp, "%s/.%s.tmp.XXXXXX", w->dir, base);
    w->S = meta->n_seq; w->T = meta->n_tok; w->L = meta->n_layers; w->H = meta->n_heads;
    w->Hkv = meta->n_kv_heads; w->D = meta->head_dim; w->C = meta->d_model; w->V = meta->vocab;
    w->rope = !strcmp(meta->positional, "rope");
    w->R = w->rope ? (meta->rotary_dim ? meta->rotary_dim : w->D) : 0;
    w->deflate = meta->deflate;

    int fd = mkstemp(w->tmp);
    if (fd < 0) {
        st = kverr_set(err, KV_ERR_IO, "%s: cannot create a temporary file in %s: %s", path, w->dir, strerror(errno));
        free(w);
        return st;
    }
    close(fd);
    w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    w->f16 = kvh5_f16_type();
    w->tens = malloc(w->L * 4 * sizeof *w->tens);
    for (int k = 0; k < 4; k++) {
        size_t heads = (k == KV_Q || k == KV_ATTN_OUT) ? w->H : w->Hkv;
        w->done[k] = calloc(w->L * w->S * heads, 1);
    }
    w->wo_done = calloc(w->L, 1);
    w->hidden_done = calloc(w->S, 1);
    w->ref_done = calloc(w->S, 1);
    if (w->file < 0 || w->f16 < 0) {
        st = werr(w, "file", "cannot create the HDF5 file", err);
        goto fail;
    }
    if (!w->tens || !w->done[0] || !w->done[1] || !w->done[2] || !w->done[3] || !w->wo_done ||
        !w->hidden_done || !w->ref_done) {
        st = kverr_set(err, KV_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    for (size_t i = 0; i < w->L * 4; i++)
        w->tens[i] = H5I_INVALID_HID;

    hid_t root = H5Gopen2(w->file, "/", H5P_DEFAULT);
    char created[32];
    created_now(created, sizeof created);
    int bad = root < 0;
    bad = bad || put_int(root, "kvtrace_version", KV_SCHEMA_VERSION) < 0;
    bad = bad || put_str(root, "model", meta->model) < 0;
    bad = bad || put_str(root, "architecture", meta->architecture) < 0;
    bad = bad || put_int(root, "n_layers", (long long)w->L) < 0;
    bad = bad || put_int(root, "n_heads", (long long)w->H) < 0;
    bad = bad || put_int(root, "n_kv_heads", (long long)w->Hkv) < 0;
    bad = bad || put_int(root, "head_dim", (long long)w->D) < 0;
    bad = bad || put_int(root, "d_model", (long long)w->C) < 0;
    bad = bad || put_int(root, "vocab_size", (long long)w->V) < 0;
    bad = bad || put_double(root, "attn_scale", meta->attn_scale) < 0;
    bad = bad || put_double(root, "attn_softcap", meta->attn_softcap) < 0;
    bad = bad || put_int(root, "sliding_window", meta->sliding_window) < 0;
    bad = bad || put_str(root, "positional", meta->positional) < 0;
    if (w->rope) {
        bad = bad || put_str(root, "rope_layout", meta->rope_layout) < 0;
        bad = bad || put_int(root, "rotary_dim", (long long)w->R) < 0;
    }
    if (meta->bos_id >= 0)
        bad = bad || put_int(root, "bos_id", meta->bos_id) < 0;
    struct { const char *name, *val; } prov[] = {
        {"capture_tool", meta->capture_tool}, {"capture_version", meta->capture_version},
        {"device", meta->device}, {"torch_version", meta->torch_version},
        {"transformers_version", meta->transformers_version}, {"source", meta->source},
        {"command", meta->command}, {"created", created},
    };
    for (size_t i = 0; i < sizeof prov / sizeof prov[0]; i++)
        if (prov[i].val)
            bad = bad || put_str(root, prov[i].name, prov[i].val) < 0;
    if (root >= 0)
        H5Gclose(root);
    for (size_t l = 0; l < w->L && !bad; l++) {
        char p[64];
        snprintf(p, sizeof p, "/layers/%zu", l);
        hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
        H5Pset_create_intermediate_group(lcpl, 1);
        hid_t g = H5Gcreate2(w->file, p, lcpl, H5P_DEFAULT, H5P_DEFAULT);
        H5Pclose(lcpl);
        bad = g < 0;
        if (g >= 0)
            H5Gclose(g);
    }
    if (bad) {
        st = werr(w, "/", "cannot write the root attributes or layer groups", err);
        goto fail;
    }
    *out = w;
    return KV_OK;
fail:
    kv_writer_abort(w);
    return st;
}

/* ---- tensors ------------------------------------------------------------------------ */

kv_status kv_writer_head_f16(kv_writer *w, kv_tensor which, size_t s, size_t l, size_t h,
                             const uint16_t *src, kv_error *err)
{
    if (!w || !src || w->file < 0)
        return kverr_set(err, KV_ERR_INVALID, "kv_writer_head_f16: NULL argument or closed writer");
    if ((unsigned)which > KV_ATTN_OUT)
        return kverr_set(err, KV_ERR_INVALID, "%s: unknown tensor kind %d", w->path, (int)which);
    size_t heads = (which == KV_Q || which == KV_ATTN_OUT) ? w->H : w->Hkv;
    char p[64];
    snprintf(p, sizeof p, "/layers/%zu/%s", l, tname[which]);
    if (s >= w->S || l >= w->L || h >= heads)
        return kverr_set(err, KV_ERR_INVALID, "%s: %s: index (s=%zu, l=%zu, h=%zu) out of range (S=%zu, L=%zu, heads=%zu)",
                         w->path, p, s, l, h, w->S, w->L, heads);
    hid_t *d = &w->tens[l * 4 + (size_t)which];
    if (*d < 0) {
        size_t dims[4] = {w->S, heads, w->T, w->D};
        size_t chunk[4] = {1, 1, w->T < 256 ? w->T : 256, w->D};
        *d = make_dset(w, p, w->f16, 4, dims, chunk);
        if (*d < 0)
            return werr(w, p, "cannot create the dataset", err);
    }
    size_t start[4] = {s, h, 0, 0}, count[4] = {1, 1, w->T, w->D};
    if (write_slab(*d, w->f16, 4, start, count, src) < 0)
        return werr(w, p, "write failed", err);
    unsigned char *flag = &w->done[which][(l * w->S + s) * heads + h];
    if (!*flag) {
        *flag = 1;
        w->ndone[which]++;
    }
    return KV_OK;
}

kv_status kv_writer_head(kv_writer *w, kv_tensor which, size_t s, size_t l, size_t h,
                         const float *src, kv_error *err)
{
    if (!w || !src)
        return kverr_set(err, KV_ERR_INVALID, "kv_writer_head: NULL argument");
    kv_status st = scratch_reserve(w, w->T * w->D, err);
    if (st != KV_OK)
        return st;
    kv_f32_to_f16(src, w->scratch, w->T * w->D);
    return kv_writer_head_f16(w, which, s, l, h, w->scratch, err);
}

kv_status kv_writer_tokens(kv_writer *w, const int32_t *tokens, const int32_t *seq_len, kv_error *err)
{
    if (!w || !tokens || !seq_len || w->file < 0)
        return kverr_set(err, KV_ERR_INVALID, "kv_writer_tokens: NULL argument or closed writer");
    if (w->tokens_done)
        return kverr_set(err, KV_ERR_INVALID, "%s: /tokens: already written", w->path);
    for (size_t s = 0; s < w->S; s++) {
        if (seq_len[s] < 1 || (size_t)seq_len[s] > w->T)
            return kverr_set(err, KV_ERR_INVALID, "%s: /seq_len[%zu]: %d outside [1, T = %zu]", w->path, s,
                             (int)seq_len[s], w->T);
        for (size_t t = 0; t < (size_t)seq_len[s]; t++)
            if (tokens[s * w->T + t] < 0 || (size_t)tokens[s * w->T + t] >= w->V)
                return kverr_set(err, KV_ERR_INVALID, "%s: /tokens[%zu, %zu]: id %d outside [0, V = %zu)", w->path, s,
                                 t, (int)tokens[s * w->T + t], w->V);
    }
    w->seq_len = malloc(w->S * sizeof *w->seq_len);
    if (!w->seq_len)
        return kverr_set(err, KV_ERR_NOMEM, "%s: out of memory", w->path);
    memcpy(w->seq_len, seq_len, w->S * sizeof *seq_len);
    size_t td[2] = {w->S, w->T}, sd[1] = {w->S};
    if (write_whole(w, "/tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, 2, td, tokens) < 0)
        return werr(w, "/tokens", "write failed", err);
    if (write_whole(w, "/seq_len", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, sd, seq_len) < 0)
        return werr(w, "/seq_len", "write failed", err);
    w->tokens_done = 1;
    return KV_OK;
}

kv_status kv_writer_prefill_len(kv_writer *w, const int32_t *prefill_len, kv_error *err)
{
    if (!w || !prefill_len || w->file < 0)
        return kverr_set(err, KV_ERR_INVALID, "kv_writer_prefill_len: NULL argument or closed writer");
    if (!w->tokens_done)
        return kverr_set(err, KV_ERR_INVALID, "%s: /prefill_len: write the tokens (kv_writer_tokens) first", w->path);
    for (size_t s = 0; s < w->S; s++)
        if (prefill_len[s] < 1 || prefill_len[s] >= w->seq_len[s])
            return kverr_set(err, KV_ERR_INVALID, "%s: /prefill_len[%zu]: %d outside [1, seq_len = %d)", w->path, s,
                             (int)prefill_len[s], (int)w->seq_len[s]);
    size_t sd[1] = {w->S};
    if (write_whole(w, "/prefill_len", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, sd, prefill_len) < 0)
        return werr(w, "/prefill_len", "write failed", err);
    return KV_OK;
}

kv_status kv_writer_rope(kv_writer *w, const float *cos, const float *sin, kv_error *err)
{
    if (!w || !cos || !sin || w->file < 0)
        return kverr_set(err, KV_ERR_INVALID, "kv_writer_rope: NULL argument or closed writer");
    if (!w->rope)
        return kverr_set(err, KV_ERR_INVALID, "%s: /rope: positional is not rope", w->path);
    size_t dims[2] = {w->T, w->R};
    if (write_whole(w, "/rope/cos", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, dims, cos) < 0)
        return werr(w, "/rope/cos", "write failed", err);
    if (write_whole(w, "/rope/sin", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, dims, sin) < 0)
        return werr(w, "/rope/sin", "write failed", err);
    return KV_OK;
}

kv_status kv_writer_layer_attr_int(kv_writer *w, size_t l, const char *name, long long v, kv_error *err)
{
    if (!w || !name || w->file < 0)
        return kverr_set(err, KV_ERR_INVALID, "kv_writer_layer_attr_int: NULL argument or closed writer");
    if (l >= w->L)
        return kverr_set(err, KV_ERR_INVALID, "%s: /layers/%zu: layer out of range (L = %zu)", w->path, l, w->L);
    char p[64];
    snprintf(p, sizeof p, "/layers/%zu", l);
    hid_t g = H5Gopen2(w->file, p, H5P_DEFAULT);
    int r = g >= 0 ? put_int(g, name, v) : -1;
    if (g >= 0)
        H5Gclose(g);
    return r < 0 ? werr(w, p, "cannot write the attribute", err) : KV_OK;
}

kv_status kv_writer_attr_str(kv_writer *w, const char *name, const char *value, kv_error *err)
{
    if (!w || !name || !value || w->file < 0)
        return kverr_set(err, KV_ERR_INVALID, "kv_writer_attr_str: NULL argument or closed writer");
    if (strlen(value) > 4096)
        return kverr_set(err, KV_ERR_INVALID, "%s: / attribute %s: longer than 4096 bytes", w->path, name);
    hid_t g = H5Gopen2(w->file, "/", H5P_DEFAULT);
    int r = g >= 0 ? put_str(g, name, value) : -1;
    if (g >= 0)
        H5Gclose(g);
    return r < 0 ? werr(w, "/", "cannot write the attribute", err) : KV_OK;
}

kv_status kv_writer_attr_float(kv_writer *w, const char *obj, const char *name, double value, kv_error *err)
{
    if (!w || !obj || !name || w->file < 0)
        return kverr_set(err, KV_ERR_INVALID, "kv_writer_attr_float: NULL argument or closed writer");
    if (H5Lexists(w->file, obj, H5P_DEFAULT) <= 0 && strcmp(obj, "/"))
        return kverr_set(err, KV_ERR_INVALID, "%s: %s: no such group (write it first)", w->path, obj);
    hid_t g = H5Gopen2(w->file, obj, H5P_DEFAULT);
    int r = g >= 0 ? put_double(g, name, value) : -1;
    if (g >= 0)
        H5Gclose(g);
    return r < 0 ? werr(w, obj, "cannot write the attribute", err) : KV_OK;
}

/* ---- read-out ----------------------------------------------------------------------- */

kv_status kv_writer_readout(kv_writer *w, const char *norm_type, double norm_eps,
                            const float *norm_weight, const float *norm_bias,
                            const float *w_u, const float *b_u, kv_error *err)
{
    if (!w || !norm_type || !norm_weight || !w_u || w->file < 0)
        return kverr_set(err, KV_ERR_INVALID, "kv_writer_readout: NULL argument or closed writer");
    if (w->readout_done)
        return kverr_set(err, KV_ERR_INVALID, "%s: /readout: already written", w->path);
    if (strcmp(norm_type, "layernorm") && strcmp(norm_type, "rmsnorm"))
        return kverr_set(err, KV_ERR_INVALID, "%s: /readout: norm_type '%s' is not layernorm or rmsnorm", w->path,
                         norm_type);
    if (!(norm_eps >= 0))
        return kverr_set(err, KV_ERR_INVALID, "%s: /readout: norm_eps must be >= 0", w->path);
    hid_t g = H5Gcreate2(w->file, "/readout", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int bad = g < 0 || put_str(g, "norm_type", norm_type) < 0 || put_double(g, "norm_eps", norm_eps) < 0;
    if (g >= 0)
        H5Gclose(g);
    if (bad)
        return werr(w, "/readout", "cannot create the group", err);
    size_t c[1] = {w->C}, v[1] = {w->V};
    if (write_whole(w, "/readout/norm_weight", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, c, norm_weight) < 0)
        return werr(w, "/readout/norm_weight", "write failed", err);
    if (norm_bias && write_whole(w, "/readout/norm_bias", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, c, norm_bias) < 0)
        return werr(w, "/readout/norm_bias", "write failed", err);
    if (b_u && write_whole(w, "/readout/b_u", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, v, b_u) < 0)
        return werr(w, "/readout/b_u", "write failed", err);
    kv_status st = write_matrix_f16(w, "/readout/w_u", w->V, w->C, w_u, err);
    if (st != KV_OK)
        return st;
    g = H5Gcreate2(w->file, "/readout/w_o", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0)
        return werr(w, "/readout/w_o", "cannot create the group", err);
    H5Gclose(g);
    w->readout_done = 1;
    return KV_OK;
}

kv_status kv_writer_w_o(kv_writer *w, size_t l, const float *w_o, kv_error *err)
{
    if (!w || !w_o || w->file < 0)
        return kverr_set(err, KV_ERR_INVALID, "kv_writer_w_o: NULL argument or closed writer");
    if (!w->readout_done)
        return kverr_set(err, KV_ERR_INVALID, "%s: /readout/w_o: call kv_writer_readout first", w->path);
    if (l >= w->L || w->wo_done[l])
        return kverr_set(err, KV_ERR_INVALID, "%s: /readout/w_o/%zu: layer out of range or already written", w->path, l);
    char p[64];
    snprintf(p, sizeof p, "/readout/w_o/%zu", l);
    kv_status st = write_matrix_f16(w, p, w->H * w->D, w->C, w_o, err);
    if (st == KV_OK)
        w->wo_done[l] = 1;
    return st;
}

kv_status kv_writer_hidden(kv_writer *w, size_t s, const float *hidden, kv_error *err)
{
    if (!w || !hidden || w->file < 0)
        return kverr_set(err, KV_ERR_INVALID, "kv_writer_hidden: NULL argument or closed writer");
    if (!w->readout_done)
        return kverr_set(err, KV_ERR_INVALID, "%s: /readout/hidden: call kv_writer_readout first", w->path);
    if (s >= w->S)
        return kverr_set(err, KV_ERR_INVALID, "%s: /readout/hidden: sequence %zu out of range", w->path, s);
    if (w->hidden < 0) {
        size_t dims[3] = {w->S, w->T, w->C}, chunk[3] = {1, w->T < 256 ? w->T : 256, w->C};
        w->hidden = make_dset(w, "/readout/hidden", w->f16, 3, dims, chunk);
        if (w->hidden < 0)
            return werr(w, "/readout/hidden", "cannot create the dataset", err);
    }
    kv_status st = scratch_reserve(w, w->T * w->C, err);
    if (st != KV_OK)
        return st;
    kv_f32_to_f16(hidden, w->scratch, w->T * w->C);
    size_t start[3] = {s, 0, 0}, count[3] = {1, w->T, w->C};
    if (write_slab(w->hidden, w->f16, 3, start, count, w->scratch) < 0)
        return werr(w, "/readout/hidden", "write failed", err);
    w->hidden_done[s] = 1;
    return KV_OK;
}

kv_status kv_writer_ref(kv_writer *w, size_t s, const float *lse, const int32_t *top_ids,
                        const float *top_logits, kv_error *err)
{
    if (!w || !lse || !top_ids || !top_logits || w->file < 0)
        return kverr_set(err, KV_ERR_INVALID, "kv_writer_ref: NULL argument or closed writer");
    if (!w->readout_done)
        return kverr_set(err, KV_ERR_INVALID, "%s: /readout/ref_lse: call kv_writer_readout first", w->path);
    if (s >= w->S)
        return kverr_set(err, KV_ERR_INVALID, "%s: /readout/ref_lse: sequence %zu out of range", w->path, s);
    for (size_t i = 0; i < w->T * KV_TOPK; i++)
        if (top_ids[i] < 0 || (size_t)top_ids[i] >= w->V)
            return kverr_set(err, KV_ERR_INVALID, "%s: /readout/ref_top_ids[%zu, %zu, %zu]: id %d outside [0, V)",
                             w->path, s, i / KV_TOPK, i % KV_TOPK, (int)top_ids[i]);
    if (w->lse < 0) {
        size_t d2[2] = {w->S, w->T}, d3[3] = {w->S, w->T, KV_TOPK};
        w->lse = make_dset(w, "/readout/ref_lse", H5T_IEEE_F32LE, 2, d2, NULL);
        w->top_ids = make_dset(w, "/readout/ref_top_ids", H5T_STD_I32LE, 3, d3, NULL);
        w->top_logits = make_dset(w, "/readout/ref_top_logits", H5T_IEEE_F32LE, 3, d3, NULL);
        if (w->lse < 0 || w->top_ids < 0 || w->top_logits < 0)
            return werr(w, "/readout/ref_lse", "cannot create the reference datasets", err);
    }
    size_t a2[2] = {s, 0}, c2[2] = {1, w->T}, a3[3] = {s, 0, 0}, c3[3] = {1, w->T, KV_TOPK};
    if (write_slab(w->lse, H5T_NATIVE_FLOAT, 2, a2, c2, lse) < 0 ||
        write_slab(w->top_ids, H5T_NATIVE_INT32, 3, a3, c3, top_ids) < 0 ||
        write_slab(w->top_logits, H5T_NATIVE_FLOAT, 3, a3, c3, top_logits) < 0)
        return werr(w, "/readout/ref_lse", "write failed", err);
    w->ref_done[s] = 1;
    return KV_OK;
}

/* ---- finish / abort ------------------------------------------------------------------ */

static kv_status check_complete(kv_writer *w, kv_error *err)
{
    if (!w->tokens_done)
        return kverr_set(err, KV_ERR_INVALID, "%s: /tokens: incomplete trace: tokens and seq_len not written", w->path);
    for (int k = 0; k < 4; k++) {
        size_t heads = (k == KV_Q || k == KV_ATTN_OUT) ? w->H : w->Hkv;
        size_t need = w->L * w->S * heads;
        if (k == KV_ATTN_OUT && w->ndone[k] == 0)
            continue;                          /* optional, all or nothing */
        if (w->ndone[k] == need)
            continue;
        size_t i = 0;
        while (i < need && w->done[k][i])
            i++;
        size_t l = i / (w->S * heads), s = (i / heads) % w->S, h = i % heads;
        return kverr_set(err, KV_ERR_INVALID,
                         "%s: /layers/%zu/%s: incomplete trace: %zu of %zu (layer, sequence, head) slices written; "
                         "first missing: s=%zu, h=%zu", w->path, l, tname[k], w->ndone[k], need, s, h);
    }
    if (w->readout_done) {
        for (size_t l = 0; l < w->L; l++)
            if (!w->wo_done[l])
                return kverr_set(err, KV_ERR_INVALID, "%s: /readout/w_o/%zu: incomplete read-out: not written",
                                 w->path, l);
        for (size_t s = 0; s < w->S; s++) {
            if (!w->hidden_done[s])
                return kverr_set(err, KV_ERR_INVALID, "%s: /readout/hidden: incomplete read-out: sequence %zu not written",
                                 w->path, s);
            if (!w->ref_done[s])
                return kverr_set(err, KV_ERR_INVALID, "%s: /readout/ref_lse: incomplete read-out: sequence %zu not written",
                                 w->path, s);
        }
    }
    return KV_OK;
}

/* Closes every HDF5 handle; returns -1 when a close (hence a flush) failed. */
static int close_all(kv_writer *w)
{
    int bad = 0;
    if (w->tens)
        for (size_t i = 0; i < w->L * 4; i++)
            if (w->tens[i] >= 0) {
                bad |= H5Dclose(w->tens[i]) < 0;
                w->tens[i] = H5I_INVALID_HID;
            }
    hid_t *hs[4] = {&w->hidden, &w->lse, &w->top_ids, &w->top_logits};
    for (int i = 0; i < 4; i++)
        if (*hs[i] >= 0) {
            bad |= H5Dclose(*hs[i]) < 0;
            *hs[i] = H5I_INVALID_HID;
        }
    if (w->f16 >= 0) {
        H5Tclose(w->f16);
        w->f16 = H5I_INVALID_HID;
    }
    if (w->file >= 0) {
        bad |= H5Fclose(w->file) < 0;
        w->file = H5I_INVALID_HID;
    }
    return bad ? -1 : 0;
}

static void writer_free(kv_writer *w)
{
    free(w->tens);
    for (int k = 0; k < 4; k++)
        free(w->done[k]);
    free(w->wo_done);
    free(w->hidden_done);
    free(w->ref_done);
    free(w->seq_len);
    free(w->scratch);
    free(w);
}

kv_status kv_writer_finish(kv_writer *w, kv_error *err)
{
    if (!w)
        return kverr_set(err, KV_ERR_INVALID, "kv_writer_finish: NULL writer");
    if (w->file < 0)
        return kverr_set(err, KV_ERR_INVALID, "%s: writer already failed; call kv_writer_abort", w->path);
    kv_status st = check_complete(w, err);
    if (st != KV_OK)
        return st;                              /* still open: complete it, or abort */
    if (close_all(w) < 0) {
        unlink(w->tmp);
        return werr(w, "file", "closing the HDF5 file failed", err);
    }
    int fd = open(w->tmp, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        unlink(w->tmp);
        return kverr_set(err, KV_ERR_IO, "%s: file: fsync of %s failed: %s", w->path, w->tmp, strerror(e));
    }
    close(fd);
    if (rename(w->tmp, w->path) != 0) {
        int e = errno;
        unlink(w->tmp);
        return kverr_set(err, KV_ERR_IO, "%s: file: rename from %s failed: %s", w->path, w->tmp, strerror(e));
    }
    w->tmp[0] = '\0';
    int dfd = open(w->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);                             /* best effort: the rename is durable */
        close(dfd);
    }
    writer_free(w);
    return KV_OK;
}

void kv_writer_abort(kv_writer *w)
{
    if (!w)
        return;
    close_all(w);
    if (w->tmp[0])
        unlink(w->tmp);
    writer_free(w);
}
