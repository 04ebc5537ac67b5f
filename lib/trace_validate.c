/* Validation of a trace against traces/SCHEMA.md (version 1) and filling of kv_info.
 *
 * trace_inspect(full = 1) runs in the validating child (lib/trace_read.c): it walks every
 * link (hard links only; group by group, depth <= 8 and <= 100000 links, each object once),
 * checks the storage rules of every dataset (kinds, datatypes, layouts, filters,
 * allocation, caps) and reads every chunk of every chunked dataset (check_chunks), then
 * the schema's structure, shapes, attributes (strings: strict UTF-8, no NUL) and
 * consistency rules including the values of /seq_len, /prefill_len, /tokens and
 * /readout/ref_top_ids. The child hands the resulting kv_info to the parent.
 *
 * The trust boundary. libhdf5 trusts a file's chunk index: a chunk shape, a
 * filter mask or a stored size that does not match the chunk's bytes makes H5Dread read
 * past its buffers, in whichever process calls it. Two designs were possible: (a) every
 * HDF5 read in the child, the data reaching the parent through a pipe or shared memory;
 * (b) the child reads every chunk the parent could read, with its own checks, before the
 * parent reads anything. (b) is what this file does: the tools read a trace many times
 * over in hyperslabs of their choosing (per head, per row range, per layer), and (a) would
 * either copy the whole decoded trace through the boundary (the f16 tensors of a real
 * capture are tens of GB) or keep a child alive as a read server for every hyperslab;
 * both change every reader. With (b) the parent keeps its bounded H5Dread calls, and the
 * cost is one extra decode of the file per open (measured in the README). Per chunk: its
 * index entry (by coordinate) inside the file, filter mask 0, a stored size a deflate
 * stream of that chunk can have; the stored bytes decoded here with zlib to exactly the
 * chunk's size; then the chunk read through H5Dread, so that whatever libhdf5 does with
 * it happens in the child first. The parent then opens only the file the child read
 * (same inode, size, mtime, lib/trace_read.c) and takes its description from the child
 * instead of parsing the attributes again. What remains in the parent is libhdf5 parsing
 * object headers and the chunk index of objects the child already parsed, on the same
 * bytes.
 *
 * Messages: "FILE: OBJECT: reason", one line.
 * Shapes: S sequences, T tokens, L layers, H q-heads, Hkv kv-heads, D head_dim, C d_model,
 * V vocab, R rotary_dim.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "kv_internal.h"

#define CAP_S        ((size_t)1 << 20)
#define CAP_T        ((size_t)1 << 22)
#define CAP_L        ((size_t)1024)
#define CAP_HEADS    ((size_t)1024)
#define CAP_D        ((size_t)1024)
#define CAP_C        ((size_t)1 << 17)
#define CAP_V        ((size_t)1 << 22)
#define CAP_ELEMS    ((size_t)1 << 40)
#define CAP_CHUNK    ((size_t)64 << 20)
#define CAP_STR      4096
#define CAP_LINKS    100000

#define M_F16 (1u << KVDT_F16)
#define M_F32 (1u << KVDT_F32)
#define M_I32 (1u << KVDT_I32)

typedef struct vctx {
    const char *path;
    hid_t file;
    int full;
    kv_info *info;
    kv_error *err;
    int failed;                 /* err holds a message */
    unsigned long long fsize, userblock;
    size_t nlinks;
    haddr_t *seen;              /* object addresses visited by the walk (hash set) */
    size_t seen_cap, nseen;
} vctx;

static kv_status vfail(vctx *v, kv_status code, const char *obj, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static kv_status vfail(vctx *v, kv_status code, const char *obj, const char *fmt, ...)
{
    char reason[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    v->failed = 1;
    return kverr_set(v->err, code, "%s: %s: %s", v->path, obj, reason);
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}

/* ---- path helpers ----------------------------------------------------------------- */

/* 1 when every component of the absolute path exists as a link, 0 when one is missing,
 * -1 on an HDF5 error. */
static int path_exists(hid_t file, const char *path)
{
    char buf[512];
    size_t n = strlen(path);
    if (n >= sizeof buf)
        return -1;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        htri_t e = H5Lexists(file, buf, H5P_DEFAULT);
        buf[i] = c;
        if (e <= 0)
            return e < 0 ? -1 : 0;
    }
    return 1;
}

/* Object type at path: H5O_TYPE_* or -2 when absent; fails with a message on errors. */
static kv_status obj_type(vctx *v, const char *path, int *type)
{
    int e = path_exists(v->file, path);
    if (e < 0)
        return vfail(v, KV_ERR_FORMAT, path, "cannot resolve the link (corrupt file)");
    if (e == 0) {
        *type = -2;
        return KV_OK;
    }
    H5O_info_t oi;
    if (H5Oget_info_by_name2(v->file, path, &oi, H5O_INFO_BASIC, H5P_DEFAULT) < 0)
        return vfail(v, KV_ERR_FORMAT, path, "cannot read the object header (corrupt file)");
    *type = (int)oi.type;
    return KV_OK;
}

static const char *type_word(int t)
{
    switch (t) {
    case H5O_TYPE_GROUP:         return "a group";
    case H5O_TYPE_DATASET:       return "a dataset";
    case H5O_TYPE_NAMED_DATATYPE:return "a named datatype";
    default:                     return "an object of unknown kind";
    }
}

/* ---- attributes ------------------------------------------------------------------- */

/* Opens attribute `name` of obj, which must hold n elements (n = 1: "a single value");
 * *attr stays H5I_INVALID_HID when it is absent. */
static kv_status attr_open_n(vctx *v, hid_t obj, const char *oname, const char *name, size_t n, hid_t *attr)
{
    char what[300];
    snprintf(what, sizeof what, "%s attribute %s", oname, name);
    *attr = H5I_INVALID_HID;
    htri_t e = H5Aexists(obj, name);
    if (e < 0)
        return vfail(v, KV_ERR_FORMAT, what, "cannot read the attribute list (corrupt file)");
    if (e == 0)
        return KV_OK;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0)
        return vfail(v, KV_ERR_FORMAT, what, "cannot open the attribute (corrupt file)");
    hid_t sp = H5Aget_space(a);
    hssize_t np = sp < 0 ? -1 : H5Sget_simple_extent_npoints(sp);
    if (sp >= 0)
        H5Sclose(sp);
    if (np != (hssize_t)n) {
        H5Aclose(a);
        if (n == 1)
            return vfail(v, KV_ERR_FORMAT, what, "expected a single value, found %lld elements", (long long)np);
        return vfail(v, KV_ERR_FORMAT, what, "expected %zu values (one per layer), found %lld", n, (long long)np);
    }
    *attr = a;
    return KV_OK;
}

static kv_status attr_open(vctx *v, hid_t obj, const char *oname, const char *name, hid_t *attr)
{
    return attr_open_n(v, obj, oname, name, 1, attr);
}

static kv_status attr_missing(vctx *v, const char *oname, const char *name)
{
    char what[300];
    snprintf(what, sizeof what, "%s attribute %s", oname, name);
    return vfail(v, KV_ERR_FORMAT, what, "required attribute is missing");
}

/* *present = 0 when absent (and not required). */
static kv_status attr_int(vctx *v, hid_t obj, const char *oname, const char *name, int required,
                          long long *val, int *present)
{
    char what[300];
    snprintf(what, sizeof what, "%s attribute %s", oname, name);
    hid_t a;
    kv_status st = attr_open(v, obj, oname, name, &a);
    if (st != KV_OK)
        return st;
    if (present)
        *present = a >= 0;
    if (a < 0)
        return required ? attr_missing(v, oname, name) : KV_OK;
    hid_t t = H5Aget_type(a);
    char tn[64] = "unknown type";
    int ok = t >= 0 && H5Tget_class(t) == H5T_INTEGER && H5Tget_size(t) <= 8;
    if (t >= 0) {
        kvh5_type_name(t, tn, sizeof tn);
        H5Tclose(t);
    }
    if (!ok) {
        H5Aclose(a);
        return vfail(v, KV_ERR_FORMAT, what, "expected an integer, found %s", tn);
    }
    herr_t r = H5Aread(a, H5T_NATIVE_LLONG, val);
    H5Aclose(a);
    if (r < 0)
        return vfail(v, KV_ERR_FORMAT, what, "cannot read the value");
    return KV_OK;
}

static kv_status attr_float(vctx *v, hid_t obj, const char *oname, const char *name, int required,
                            double *val, int *present)
{
    char what[300];
    snprintf(what, sizeof what, "%s attribute %s", oname, name);
    hid_t a;
    kv_status st = attr_open(v, obj, oname, name, &a);
    if (st != KV_OK)
        return st;
    if (present)
        *present = a >= 0;
    if (a < 0)
        return required ? attr_missing(v, oname, name) : KV_OK;
    hid_t t = H5Aget_type(a);
    char tn[64] = "unknown type";
    int ok = 0;
    if (t >= 0) {
        H5T_class_t c = H5Tget_class(t);
        size_t sz = H5Tget_size(t);
        ok = (c == H5T_FLOAT && sz <= 16) || (c == H5T_INTEGER && sz <= 8);
        kvh5_type_name(t, tn, sizeof tn);
        H5Tclose(t);
    }
    if (!ok) {
        H5Aclose(a);
        return vfail(v, KV_ERR_FORMAT, what, "expected a number, found %s", tn);
    }
    herr_t r = H5Aread(a, H5T_NATIVE_DOUBLE, val);
    H5Aclose(a);
    if (r < 0)
        return vfail(v, KV_ERR_FORMAT, what, "cannot read the value");
    if (!isfinite(*val))
        return vfail(v, KV_ERR_FORMAT, what, "value is not finite");
    return KV_OK;
}

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
 * Returns n when s[0..n) is valid, else the offset of the first bad byte. */
static size_t utf8_valid_prefix(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) { i++; continue; }
        else if (c >= 0xC2 && c <= 0xDF) k = 1;
        else if (c == 0xE0) { k = 2; lo = 0xA0; }
        else if (c == 0xED) { k = 2; hi = 0x9F; }
        else if (c >= 0xE1 && c <= 0xEF) k = 2;
        else if (c == 0xF0) { k = 3; lo = 0x90; }
        else if (c == 0xF4) { k = 3; hi = 0x8F; }
        else if (c >= 0xF1 && c <= 0xF3) k = 3;
        else return i;
        if (n - i <= k)
            return i;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t j = 2; j <= k; j++)
            if (s[i + j] < 0x80 || s[i + j] > 0xBF)
                return i;
        i += k + 1;
    }
    return n;
}

/* Copies a valid UTF-8 string into dst (cap bytes), cut at a character boundary. */
static void copy_utf8(char *dst, size_t cap, const char *src, size_t n)
{
    if (cap == 0)
        return;
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;                  /* src[n] would start the cut character: drop it whole */
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* The string checks shared by both storage kinds: length cap, UTF-8, then the copy. */
static kv_status str_accept(vctx *v, const char *what, const char *p, size_t n, char *buf, size_t cap)
{
    if (n > CAP_STR)
        return vfail(v, KV_ERR_FORMAT, what, "string of %zu bytes exceeds the 4096-byte cap", n);
    size_t ok = utf8_valid_prefix((const unsigned char *)p, n);
    if (ok != n)
        return vfail(v, KV_ERR_FORMAT, what, "not valid UTF-8 (byte 0x%02x at offset %zu)", (unsigned char)p[ok], ok);
    copy_utf8(buf, cap, p, n);
    return KV_OK;
}

/* Reads a string attribute (fixed or variable length, <= 4096 bytes) into buf (truncated
 * to cap - 1 bytes). */
static kv_status attr_str(vctx *v, hid_t obj, const char *oname, const char *name, int required,
                          char *buf, size_t cap, int *present)
{
    char what[300];
    snprintf(what, sizeof what, "%s attribute %s", oname, name);
    hid_t a, t = H5I_INVALID_HID, mt = H5I_INVALID_HID;
    char *tmp = NULL;
    kv_status st = attr_open(v, obj, oname, name, &a);
    if (st != KV_OK)
        return st;
    if (present)
        *present = a >= 0;
    if (a < 0)
        return required ? attr_missing(v, oname, name) : KV_OK;
    t = H5Aget_type(a);
    if (t < 0 || H5Tget_class(t) != H5T_STRING) {
        char tn[64] = "unknown type";
        if (t >= 0)
            kvh5_type_name(t, tn, sizeof tn);
        st = vfail(v, KV_ERR_FORMAT, what, "expected a string, found %s", tn);
        goto done;
    }
    htri_t vl = H5Tis_variable_str(t);
    if (vl < 0) {
        st = vfail(v, KV_ERR_FORMAT, what, "unsupported string type");
        goto done;
    }
    if (vl) {
        char *p = NULL;
        mt = H5Tcopy(H5T_C_S1);
        if (mt < 0 || H5Tset_cset(mt, H5Tget_cset(t)) < 0 || H5Tset_size(mt, H5T_VARIABLE) < 0 ||
            H5Aread(a, mt, &p) < 0) {
            st = vfail(v, KV_ERR_FORMAT, what, "cannot read the string");
            goto done;
        }
        st = str_accept(v, what, p ? p : "", p ? strlen(p) : 0, buf, cap);
        H5free_memory(p);
        if (st != KV_OK)
            goto done;
    } else {
        /* the stored bytes as they are (the file's own type: no conversion), so that a NUL
         * inside the string is seen rather than silently ending it */
        size_t sz = H5Tget_size(t);
        if (sz == 0 || sz > CAP_STR) {
            st = vfail(v, KV_ERR_FORMAT, what, "string of %zu bytes exceeds the 4096-byte cap", sz);
            goto done;
        }
        tmp = calloc(sz + 1, 1);
        if (!tmp) {
            st = vfail(v, KV_ERR_NOMEM, what, "out of memory");
            goto done;
        }
        mt = H5Tcopy(t);
        if (mt < 0 || H5Aread(a, mt, tmp) < 0) {
            st = vfail(v, KV_ERR_FORMAT, what, "cannot read the string");
            goto done;
        }
        size_t n = strnlen(tmp, sz), end = sz;
        if (H5Tget_strpad(t) == H5T_STR_SPACEPAD)
            while (end > n && tmp[end - 1] == ' ')
                end--;
        while (end > n && tmp[end - 1] == '\0')
            end--;
        if (end > n) {
            st = vfail(v, KV_ERR_FORMAT, what, "NUL byte inside the string (offset %zu)", n);
            goto done;
        }
        if (H5Tget_strpad(t) == H5T_STR_SPACEPAD)
            while (n > 0 && tmp[n - 1] == ' ')
                n--;
        if ((st = str_accept(v, what, tmp, n, buf, cap)) != KV_OK)
            goto done;
    }
    st = KV_OK;
done:
    free(tmp);
    if (mt >= 0)
        H5Tclose(mt);
    if (t >= 0)
        H5Tclose(t);
    H5Aclose(a);
    return st;
}

/* ---- storage rules of every dataset ---------------------------------------------------- */

int kvh5_storage_facts(hid_t dset, int rank, int *chunked, size_t *chunk, int *deflate, int *shuffle,
                       int *fletcher32)
{
    hid_t dcpl = H5Dget_create_plist(dset);
    if (dcpl < 0)
        return -1;
    *chunked = H5Pget_layout(dcpl) == H5D_CHUNKED;
    *deflate = *shuffle = *fletcher32 = 0;
    for (int i = 0; i < rank; i++)
        chunk[i] = 0;
    if (*chunked && rank > 0 && rank <= 32) {
        hsize_t cd[32];
        if (H5Pget_chunk(dcpl, rank, cd) == rank)
            for (int i = 0; i < rank; i++)
                chunk[i] = (size_t)cd[i];
    }
    int nf = H5Pget_nfilters(dcpl);
    for (int i = 0; i < nf; i++) {
        unsigned flags = 0;
        size_t ncd = 0;
        H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, NULL, 0, NULL, NULL);
        if (id == H5Z_FILTER_DEFLATE)
            *deflate = 1;
        else if (id == H5Z_FILTER_SHUFFLE)
            *shuffle = 1;
        else if (id == H5Z_FILTER_FLETCHER32)
            *fletcher32 = 1;
    }
    H5Pclose(dcpl);
    return 0;
}

/* ---- chunks ------------------------------------------------------------------------- */

/* Vets every stored chunk of a chunked dataset before anything reads it through HDF5's
 * filter pipeline (which trusts the chunk index: a chunk shape or a filter mask that does
 * not match the bytes makes H5Dread read past its buffers). For each chunk of the grid,
 * looked up by coordinate (O(log n) in the index): stored inside the file, filter mask 0
 * (nothing skipped), raw size within a cap; then the raw bytes are read
 * and undone in reverse pipeline order with our own code (fletcher32: 4 bytes stripped,
 * deflate: zlib, inflating to exactly the size the next stage expects; shuffle: size
 * unchanged) and must come out at exactly the chunk's size in bytes. Last, the chunk is
 * read through H5Dread, in this (validating) process, so whatever HDF5 does with it
 * happens here first. */
static kv_status check_chunks(vctx *v, hid_t d, hid_t dcpl, const char *obj, int rank, const hsize_t *dims,
                              const hsize_t *cd, size_t cbytes, hid_t ftype)
{
    kv_status st = KV_OK;
    int nf = H5Pget_nfilters(dcpl);
    H5Z_filter_t ids[32];
    if (nf < 0 || nf > 32)
        return vfail(v, KV_ERR_FORMAT, obj, "cannot read the filter pipeline");
    for (int i = 0; i < nf; i++) {
        unsigned flags = 0;
        size_t ncd = 0;
        ids[i] = H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, NULL, 0, NULL, NULL);
    }
    size_t fwd[33];                       /* bytes entering filter i on write; fwd[nf] = stored */
    fwd[0] = cbytes;
    for (int i = 0; i < nf; i++)
        fwd[i + 1] = ids[i] == H5Z_FILTER_FLETCHER32 ? fwd[i] + 4 : ids[i] == H5Z_FILTER_DEFLATE ? 0 : fwd[i];
    size_t raw_cap = cbytes + cbytes / 8 + 4096 + 4 * (size_t)nf;     /* > deflate's worst case */
    unsigned char *raw = malloc(raw_cap), *a = malloc(cbytes + 4 * (size_t)nf + 1),
                  *b = malloc(cbytes + 4 * (size_t)nf + 1);
    hid_t fs = H5Dget_space(d);
    hsize_t off[32], cnt[32];
    char where[700];
    if (!raw || !a || !b) {
        st = vfail(v, KV_ERR_NOMEM, obj, "out of memory (chunk of %zu bytes)", cbytes);
        goto done;
    }
    if (fs < 0) {
        st = vfail(v, KV_ERR_FORMAT, obj, "cannot read the dataspace");
        goto done;
    }
    for (int i = 0; i < rank; i++)
        off[i] = 0;
    for (;;) {
        int n = 0;
        for (int i = 0; i < rank; i++)
            n += snprintf(where + n, sizeof where - (size_t)n, "%s%llu", i ? ", " : "", (unsigned long long)off[i]);
        unsigned mask = 0;
        haddr_t addr = HADDR_UNDEF;
        hsize_t size = 0;
        if (H5Dget_chunk_info_by_coord(d, off, &mask, &addr, &size) < 0 || addr == HADDR_UNDEF) {
            st = vfail(v, KV_ERR_FORMAT, obj, "chunk at [%s]: not in the chunk index (corrupt index)", where);
            goto done;
        }
        if (addr > v->fsize || size > v->fsize - addr || v->userblock > v->fsize - addr - size) {
            st = vfail(v, KV_ERR_FORMAT, obj, "chunk at [%s]: %llu bytes at offset %llu extend past the end of the file",
                       where, (unsigned long long)size, (unsigned long long)addr);
            goto done;
        }
        if (size == 0 || size > raw_cap) {
            st = vfail(v, KV_ERR_FORMAT, obj, "chunk at [%s]: stored size %llu bytes impossible for a %zu-byte chunk",
                       where, (unsigned long long)size, cbytes);
            goto done;
        }
        if (mask != 0) {
            /* HDF5 stores a chunk unfiltered past an optional filter that failed; no filter
             * kvtrace allows can fail, so a set bit is a corrupt or crafted index entry */
            st = vfail(v, KV_ERR_FORMAT, obj, "chunk at [%s]: filter mask 0x%x says filters were skipped when it was "
                       "written (never by the allowed filters)", where, mask);
            goto done;
        }
        uint32_t rmask = 0;
        if (H5Dread_chunk(d, H5P_DEFAULT, off, &rmask, raw) < 0 || rmask != mask) {
            st = vfail(v, KV_ERR_FORMAT, obj, "chunk at [%s]: cannot read the stored bytes", where);
            goto done;
        }
        /* undo the pipeline */
        const unsigned char *cur = raw;
        size_t len = (size_t)size;
        for (int i = nf - 1; i >= 0; i--) {
            if (ids[i] == H5Z_FILTER_FLETCHER32) {
                if (len < 4) {
                    st = vfail(v, KV_ERR_FORMAT, obj, "chunk at [%s]: %zu bytes, too short for its checksum", where, len);
                    goto done;
                }
                len -= 4;
            } else if (ids[i] == H5Z_FILTER_DEFLATE) {
                unsigned char *dst = cur == a ? b : a;
                size_t want = fwd[i];
                z_stream zs;
                memset(&zs, 0, sizeof zs);
                if (inflateInit(&zs) != Z_OK) {
                    st = vfail(v, KV_ERR_NOMEM, obj, "zlib: cannot initialise");
                    goto done;
                }
                zs.next_in = (Bytef *)cur;
                zs.avail_in = (uInt)len;
                zs.next_out = dst;
                zs.avail_out = (uInt)(want + 1);         /* one spare byte: more output = bad */
                int zr = inflate(&zs, Z_FINISH);
                size_t got = want + 1 - zs.avail_out;
                inflateEnd(&zs);
                if (zr != Z_STREAM_END || got != want) {
                    st = vfail(v, KV_ERR_FORMAT, obj,
                               "chunk at [%s]: deflate data %s (%zu bytes decoded, the chunk shape needs %zu)", where,
                               zr == Z_STREAM_END || zr == Z_BUF_ERROR || zr == Z_OK ? "of the wrong size" : "corrupt",
                               got, want);
                    goto done;
                }
                cur = dst;
                len = got;
            }
            /* shuffle: same size */
        }
        if (len != cbytes) {
            st = vfail(v, KV_ERR_FORMAT, obj, "chunk at [%s]: %zu bytes after the filters, the chunk shape needs %zu",
                       where, len, cbytes);
            goto done;
        }
        /* the same chunk through HDF5, here rather than in the tool */
        for (int i = 0; i < rank; i++)
            cnt[i] = dims[i] - off[i] < cd[i] ? dims[i] - off[i] : cd[i];
        hid_t ms2 = H5Screate_simple(rank, cnt, NULL);
        herr_t r = ms2 < 0 ? -1 : H5Sselect_hyperslab(fs, H5S_SELECT_SET, off, NULL, cnt, NULL);
        if (r >= 0)
            r = H5Dread(d, ftype, ms2, fs, H5P_DEFAULT, a);
        if (ms2 >= 0)
            H5Sclose(ms2);
        if (r < 0) {
            st = vfail(v, KV_ERR_FORMAT, obj, "chunk at [%s]: HDF5 cannot read it (checksum or filter error)", where);
            goto done;
        }
        /* next chunk of the grid (last dimension fastest) */
        int i = rank - 1;
        for (; i >= 0; i--) {
            off[i] += cd[i];
            if (off[i] < dims[i])
                break;
            off[i] = 0;
        }
        if (i < 0)
            break;
    }
done:
    if (fs >= 0)
        H5Sclose(fs);
    free(raw);
    free(a);
    free(b);
    return st;
}

static kv_status check_storage(vctx *v, hid_t loc, const char *name, const char *obj)
{
    kv_status st = KV_OK;
    hid_t d = H5I_INVALID_HID, t = H5I_INVALID_HID, sp = H5I_INVALID_HID, dcpl = H5I_INVALID_HID;
    d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0)
        return vfail(v, KV_ERR_FORMAT, obj, "cannot open the dataset (corrupt or unsupported)");
    t = H5Dget_type(d);
    if (t < 0) {
        st = vfail(v, KV_ERR_FORMAT, obj, "cannot read the datatype");
        goto done;
    }
    if (kvh5_dtype_class(t) == KVDT_OTHER) {
        char tn[64];
        kvh5_type_name(t, tn, sizeof tn);
        st = vfail(v, KV_ERR_FORMAT, obj, "datatype is %s; datasets must be f16 or f32 little-endian, or i32", tn);
        goto done;
    }
    size_t tsize = H5Tget_size(t);
    sp = H5Dget_space(d);
    H5S_class_t sc = sp < 0 ? H5S_NO_CLASS : H5Sget_simple_extent_type(sp);
    if (sc != H5S_SIMPLE && sc != H5S_SCALAR && sc != H5S_NULL) {
        st = vfail(v, KV_ERR_FORMAT, obj, "cannot read the dataspace");
        goto done;
    }
    int rank = sc == H5S_SIMPLE ? H5Sget_simple_extent_ndims(sp) : 0;
    if (rank < 0 || rank > 32) {
        st = vfail(v, KV_ERR_FORMAT, obj, "unsupported rank %d", rank);
        goto done;
    }
    hsize_t dims[32];
    if (rank > 0 && H5Sget_simple_extent_dims(sp, dims, NULL) != rank) {
        st = vfail(v, KV_ERR_FORMAT, obj, "cannot read the dimensions");
        goto done;
    }
    size_t nelem = sc == H5S_NULL ? 0 : 1;
    for (int i = 0; i < rank; i++) {
        if (dims[i] > CAP_ELEMS || !kv_mul_ok(nelem, (size_t)dims[i], CAP_ELEMS, &nelem)) {
            st = vfail(v, KV_ERR_FORMAT, obj, "element count exceeds the cap of 2^40");
            goto done;
        }
    }
    size_t bytes = nelem * tsize;     /* <= 2^42: no overflow */
    dcpl = H5Dget_create_plist(d);
    if (dcpl < 0) {
        st = vfail(v, KV_ERR_FORMAT, obj, "cannot read the creation properties");
        goto done;
    }
    int next = H5Pget_external_count(dcpl);
    if (next != 0) {
        st = vfail(v, KV_ERR_FORMAT, obj, "external raw data storage (%d external files) is not allowed", next);
        goto done;
    }
    H5D_layout_t lay = H5Pget_layout(dcpl);
    if (lay == H5D_COMPACT) {
        st = vfail(v, KV_ERR_FORMAT, obj, "compact layout is not allowed (contiguous or chunked only)");
        goto done;
    }
    if (lay == H5D_VIRTUAL) {
        st = vfail(v, KV_ERR_FORMAT, obj, "virtual dataset (VDS) layout is not allowed (contiguous or chunked only)");
        goto done;
    }
    if (lay != H5D_CONTIGUOUS && lay != H5D_CHUNKED) {
        st = vfail(v, KV_ERR_FORMAT, obj, "unknown layout %d (contiguous or chunked only)", (int)lay);
        goto done;
    }
    int nf = H5Pget_nfilters(dcpl);
    if (nf < 0) {
        st = vfail(v, KV_ERR_FORMAT, obj, "cannot read the filter pipeline");
        goto done;
    }
    for (int i = 0; i < nf; i++) {
        unsigned flags = 0;
        size_t ncd = 0;
        H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, NULL, 0, NULL, NULL);
        if (id != H5Z_FILTER_DEFLATE && id != H5Z_FILTER_SHUFFLE && id != H5Z_FILTER_FLETCHER32) {
            st = vfail(v, KV_ERR_FORMAT, obj,
                       "filter id %d is not allowed (only deflate 1, shuffle 2, fletcher32 3)", (int)id);
            goto done;
        }
    }
    if (lay == H5D_CHUNKED) {
        hsize_t cd[32];
        if (rank == 0 || H5Pget_chunk(dcpl, rank, cd) != rank) {
            st = vfail(v, KV_ERR_FORMAT, obj, "cannot read the chunk shape");
            goto done;
        }
        size_t cbytes = tsize, needed = 1;
        for (int i = 0; i < rank; i++) {
            if (cd[i] == 0 || cd[i] > CAP_CHUNK || !kv_mul_ok(cbytes, (size_t)cd[i], CAP_CHUNK, &cbytes)) {
                st = vfail(v, KV_ERR_FORMAT, obj, "chunk shape is zero or exceeds the 64 MiB chunk cap");
                goto done;
            }
            size_t nc = (size_t)((dims[i] + cd[i] - 1) / cd[i]);
            if (!kv_mul_ok(needed, nc, CAP_ELEMS, &needed)) {
                st = vfail(v, KV_ERR_FORMAT, obj, "chunk count exceeds the cap");
                goto done;
            }
        }
        /* the stored chunks: counted by walking the chunk index (all of it: at 16k tokens ~10 ms
         * of B-tree node loads), then each read (check_chunks). Bytes that passed this before
         * (KV_INSPECT_NO_CHUNKS) skip both: the index is part of what was checked */
        hsize_t have = needed;
        if (v->full != KV_INSPECT_NO_CHUNKS && H5Dget_num_chunks(d, sp, &have) < 0) {
            st = vfail(v, KV_ERR_FORMAT, obj, "cannot count the stored chunks (corrupt chunk index)");
            goto done;
        }
        if ((size_t)have != needed) {
            st = vfail(v, KV_ERR_FORMAT, obj,
                       "%llu of %zu chunks stored: not fully allocated (declared shape larger than its data)",
                       (unsigned long long)have, needed);
            goto done;
        }
        if (v->full != KV_INSPECT_NO_CHUNKS && (st = check_chunks(v, d, dcpl, obj, rank, dims, cd, cbytes, t)) != KV_OK)
            goto done;
    } else if (bytes > 0) {
        hsize_t stored = H5Dget_storage_size(d);
        haddr_t off = H5Dget_offset(d);
        if (stored < bytes || off == HADDR_UNDEF) {
            st = vfail(v, KV_ERR_FORMAT, obj,
                       "%llu of %zu bytes allocated: not fully allocated (declared shape larger than its data)",
                       (unsigned long long)stored, bytes);
            goto done;
        }
        if (off > v->fsize || bytes > v->fsize - off || v->userblock > v->fsize - off - bytes) {
            st = vfail(v, KV_ERR_FORMAT, obj,
                       "data at offset %llu + %zu bytes extends past the end of the file (%llu bytes)",
                       (unsigned long long)off, bytes, v->fsize);
            goto done;
        }
    }
done:
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (sp >= 0)
        H5Sclose(sp);
    if (t >= 0)
        H5Tclose(t);
    H5Dclose(d);
    return st;
}

/* The object tree, walked group by group (H5Literate) with an explicit depth and object
 * budget: H5Lvisit has no limit and its cost grows about cubically with nesting (a
 * 2000-deep chain took 60 s). Every object is visited once (addresses remembered), so
 * hard-link cycles and shared objects cost nothing extra. */
#define CAP_DEPTH 8

typedef struct walk_ctx {
    vctx *v;
    const char *gpath;           /* path of the group being listed ("" for the root) */
    int depth;                   /* its depth (root 0) */
} walk_ctx;

/* 1 when addr was seen before, else remembers it; -1 out of memory. Open addressing. */
static int seen_addr(vctx *v, haddr_t addr)
{
    if (2 * (v->nseen + 1) > v->seen_cap) {
        size_t cap = v->seen_cap ? 2 * v->seen_cap : 1024;
        haddr_t *n = malloc(cap * sizeof *n);
        if (!n)
            return -1;
        for (size_t i = 0; i < cap; i++)
            n[i] = HADDR_UNDEF;
        for (size_t i = 0; i < v->seen_cap; i++) {
            if (v->seen[i] == HADDR_UNDEF)
                continue;
            size_t h = (size_t)(v->seen[i] * 0x9E3779B97F4A7C15ull) & (cap - 1);
            while (n[h] != HADDR_UNDEF)
                h = (h + 1) & (cap - 1);
            n[h] = v->seen[i];
        }
        free(v->seen);
        v->seen = n;
        v->seen_cap = cap;
    }
    size_t h = (size_t)(addr * 0x9E3779B97F4A7C15ull) & (v->seen_cap - 1);
    while (v->seen[h] != HADDR_UNDEF) {
        if (v->seen[h] == addr)
            return 1;
        h = (h + 1) & (v->seen_cap - 1);
    }
    v->seen[h] = addr;
    v->nseen++;
    return 0;
}

/* Refuses a group whose link count alone would pass the cap, before listing it. */
static int group_too_big(vctx *v, hid_t g, const char *obj)
{
    H5G_info_t gi;
    if (H5Gget_info(g, &gi) < 0) {
        vfail(v, KV_ERR_FORMAT, obj, "cannot read the group (corrupt file)");
        return 1;
    }
    if (gi.nlinks > CAP_LINKS || v->nlinks + (size_t)gi.nlinks > CAP_LINKS) {
        vfail(v, KV_ERR_FORMAT, obj, "more than %d links in the file (this group alone has %llu)", CAP_LINKS,
              (unsigned long long)gi.nlinks);
        return 1;
    }
    return 0;
}

static herr_t walk_cb(hid_t g, const char *name, const H5L_info_t *li, void *op)
{
    walk_ctx *w = op;
    vctx *v = w->v;
    char obj[600];
    snprintf(obj, sizeof obj, "%s/%s", w->gpath, name);
    if (++v->nlinks > CAP_LINKS) {
        vfail(v, KV_ERR_FORMAT, obj, "more than %d links in the file", CAP_LINKS);
        return -1;
    }
    if (li->type != H5L_TYPE_HARD) {
        const char *kind = li->type == H5L_TYPE_SOFT ? "soft link"
                         : li->type == H5L_TYPE_EXTERNAL ? "external link" : "user-defined link";
        vfail(v, KV_ERR_FORMAT, obj, "%s: only hard links are allowed", kind);
        return -1;
    }
    H5O_info_t oi;
    if (H5Oget_info_by_name2(g, name, &oi, H5O_INFO_BASIC, H5P_DEFAULT) < 0) {
        vfail(v, KV_ERR_FORMAT, obj, "cannot read the object header (corrupt file)");
        return -1;
    }
    if (oi.type != H5O_TYPE_GROUP && oi.type != H5O_TYPE_DATASET && oi.type != H5O_TYPE_NAMED_DATATYPE) {
        vfail(v, KV_ERR_FORMAT, obj, "object of unknown kind");
        return -1;
    }
    int seen = seen_addr(v, oi.addr);
    if (seen < 0) {
        vfail(v, KV_ERR_NOMEM, obj, "out of memory");
        return -1;
    }
    if (seen)
        return 0;                 /* another hard link to an object already checked */
    if (oi.type == H5O_TYPE_DATASET)
        return check_storage(v, g, name, obj) == KV_OK ? 0 : -1;
    if (oi.type != H5O_TYPE_GROUP)
        return 0;
    if (w->depth + 1 > CAP_DEPTH) {
        vfail(v, KV_ERR_FORMAT, obj, "groups nested deeper than %d levels", CAP_DEPTH);
        return -1;
    }
    hid_t sub = H5Gopen2(g, name, H5P_DEFAULT);
    if (sub < 0) {
        vfail(v, KV_ERR_FORMAT, obj, "cannot open the group (corrupt file)");
        return -1;
    }
    if (group_too_big(v, sub, obj)) {
        H5Gclose(sub);
        return -1;
    }
    walk_ctx child = {v, obj, w->depth + 1};
    herr_t r = H5Literate(sub, H5_INDEX_NAME, H5_ITER_NATIVE, NULL, walk_cb, &child);
    H5Gclose(sub);
    if (r < 0 && !v->failed)
        vfail(v, KV_ERR_FORMAT, obj, "cannot list the group (corrupt file)");
    return r < 0 ? -1 : 0;
}

/* ---- schema datasets ------------------------------------------------------------------- */

static void shape_str(char *buf, size_t cap, int rank, const size_t *d)
{
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (int i = 0; i < rank && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%zu", i ? ", " : "", d[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

/* Checks the dataset at path: kind, datatype class in mask, rank, and (want != NULL)
 * shape. legend names the dims for messages ("[S, H, T, D]"). *present (when non-NULL)
 * says whether it exists; required datasets fail when absent. dims_out gets the shape. */
static kv_status expect_dset(vctx *v, const char *path, unsigned mask, int rank, const size_t *want,
                             const char *legend, int *present, size_t *dims_out, int *dtype_out)
{
    int type;
    kv_status st = obj_type(v, path, &type);
    if (st != KV_OK)
        return st;
    if (present)
        *present = type != -2;
    if (type == -2)
        return present ? KV_OK : vfail(v, KV_ERR_FORMAT, path, "required dataset is missing");
    if (type != H5O_TYPE_DATASET)
        return vfail(v, KV_ERR_FORMAT, path, "expected a dataset, found %s", type_word(type));
    hid_t d = H5Dopen2(v->file, path, H5P_DEFAULT);
    if (d < 0)
        return vfail(v, KV_ERR_FORMAT, path, "cannot open the dataset");
    hid_t t = H5Dget_type(d);
    hid_t sp = H5Dget_space(d);
    st = KV_OK;
    int cls = t >= 0 ? kvh5_dtype_class(t) : KVDT_OTHER;
    if (!(mask & (1u << cls))) {
        char tn[64] = "unknown type";
        if (t >= 0)
            kvh5_type_name(t, tn, sizeof tn);
        if (cls == KVDT_F16) snprintf(tn, sizeof tn, "f16");
        if (cls == KVDT_F32) snprintf(tn, sizeof tn, "f32");
        if (cls == KVDT_I32) snprintf(tn, sizeof tn, "i32");
        st = vfail(v, KV_ERR_FORMAT, path, "datatype is %s, expected %s", tn,
                   mask == M_F16 ? "f16 (IEEE binary16 little-endian)" : mask == M_F32 ? "f32 little-endian"
                   : mask == M_I32 ? "i32 little-endian" : "f16 or f32");
        goto done;
    }
    if (dtype_out)
        *dtype_out = cls;
    int r = (sp >= 0 && H5Sget_simple_extent_type(sp) == H5S_SIMPLE) ? H5Sget_simple_extent_ndims(sp) : 0;
    if (r != rank) {
        st = vfail(v, KV_ERR_FORMAT, path, "rank %d, expected rank %d %s", r, rank, legend);
        goto done;
    }
    hsize_t hd[8];
    size_t dd[8];
    if (H5Sget_simple_extent_dims(sp, hd, NULL) != rank) {
        st = vfail(v, KV_ERR_FORMAT, path, "cannot read the dimensions");
        goto done;
    }
    for (int i = 0; i < rank; i++)
        dd[i] = (size_t)hd[i];
    if (want) {
        for (int i = 0; i < rank; i++) {
            if (dd[i] != want[i]) {
                char a[160], b[160];
                shape_str(a, sizeof a, rank, dd);
                shape_str(b, sizeof b, rank, want);
                st = vfail(v, KV_ERR_FORMAT, path, "shape %s, expected %s = %s", a, legend, b);
                goto done;
            }
        }
    }
    if (dims_out)
        memcpy(dims_out, dd, (size_t)rank * sizeof *dd);
done:
    if (sp >= 0)
        H5Sclose(sp);
    if (t >= 0)
        H5Tclose(t);
    H5Dclose(d);
    return st;
}

/* Reads a dataset region [start, start+count) (rank <= 3) into dst as the memory type mt
 * (H5T_NATIVE_INT32 or H5T_NATIVE_FLOAT: HDF5 converts). */
static kv_status read_region(vctx *v, const char *path, int rank, const hsize_t *start, const hsize_t *count,
                             hid_t mt, void *dst)
{
    kv_status st = KV_OK;
    hid_t d = H5Dopen2(v->file, path, H5P_DEFAULT);
    hid_t fs = d >= 0 ? H5Dget_space(d) : H5I_INVALID_HID;
    hid_t ms = H5Screate_simple(rank, count, NULL);
    if (d < 0 || fs < 0 || ms < 0 ||
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
        H5Dread(d, mt, ms, fs, H5P_DEFAULT, dst) < 0)
        st = vfail(v, KV_ERR_FORMAT, path, "cannot read the data (corrupt or unsupported storage)");
    if (ms >= 0)
        H5Sclose(ms);
    if (fs >= 0)
        H5Sclose(fs);
    if (d >= 0)
        H5Dclose(d);
    return st;
}

static kv_status read_i32(vctx *v, const char *path, int rank, const hsize_t *start, const hsize_t *count,
                          int32_t *dst)
{
    return read_region(v, path, rank, start, count, H5T_NATIVE_INT32, dst);
}

static kv_status read_f32(vctx *v, const char *path, int rank, const hsize_t *start, const hsize_t *count,
                          float *dst)
{
    return read_region(v, path, rank, start, count, H5T_NATIVE_FLOAT, dst);
}

/* ---- the schema -------------------------------------------------------------------- */

static kv_status group_kind(vctx *v, const char *path, int *present)
{
    int type;
    kv_status st = obj_type(v, path, &type);
    if (st != KV_OK)
        return st;
    *present = type != -2;
    if (type != -2 && type != H5O_TYPE_GROUP)
        return vfail(v, KV_ERR_FORMAT, path, "expected a group, found %s", type_word(type));
    return KV_OK;
}

static kv_status size_attr(vctx *v, hid_t root, const char *name, size_t cap, size_t *out)
{
    long long x;
    kv_status st = attr_int(v, root, "/", name, 1, &x, NULL);
    if (st != KV_OK)
        return st;
    char what[100];
    snprintf(what, sizeof what, "/ attribute %s", name);
    if (x < 1 || (unsigned long long)x > cap)
        return vfail(v, KV_ERR_FORMAT, what, "value %lld outside [1, %zu]", x, cap);
    *out = (size_t)x;
    return KV_OK;
}

typedef struct layers_scan { vctx *v; size_t L; int bad; } layers_scan;

static herr_t layers_cb(hid_t g, const char *name, const H5L_info_t *li, void *op)
{
    layers_scan *ls = op;
    (void)g; (void)li;
    size_t n = strlen(name);
    if (n == 0 || strspn(name, "0123456789") != n)
        return 0;                   /* not a layer index: an ignored extra object */
    char obj[300];
    snprintf(obj, sizeof obj, "/layers/%s", name);
    if ((n > 1 && name[0] == '0') || n > 6 || (size_t)strtoul(name, NULL, 10) >= ls->L) {
        vfail(ls->v, KV_ERR_FORMAT, obj, "layer group beyond n_layers = %zu (or with leading zeros)", ls->L);
        ls->bad = 1;
        return -1;
    }
    return 0;
}

/* /needles (optional): seven i32 [N] datasets, N >= 1, with /prefill_len; in the full
 * validation every row obeys 0 <= seq < S and 0 <= start <= value_start < value_end <= end
 * <= prefill_len[seq] <= answer_start < answer_end <= seq_len[seq]. */
#define CAP_NEEDLES ((size_t)1 << 20)
static kv_status validate_needles(vctx *v, size_t S)
{
    kv_info *in = v->info;
    int present;
    kv_status st = group_kind(v, "/needles", &present);
    in->n_needles = 0;
    if (st || !present)
        return st;
    char p[96];
    size_t N = 0;
    for (int k = 0; k < KV_NEEDLE_NF; k++) {
        size_t dims[1];
        snprintf(p, sizeof p, "/needles/%s", kv_needle_names[k]);
        if ((st = expect_dset(v, p, M_I32, 1, k ? &N : NULL, "[N] (as /needles/seq)", NULL, dims, NULL)))
            return st;
        if (!k) {
            N = dims[0];
            if (N < 1 || N > CAP_NEEDLES)
                return vfail(v, KV_ERR_FORMAT, p, "%zu needles, expected 1 to 2^20", N);
        }
    }
    if (!in->has_prefill)
        return vfail(v, KV_ERR_FORMAT, "/needles", "needs /prefill_len (the context the needles lie in)");
    if (v->full) {
        int32_t *b = malloc((KV_NEEDLE_NF * N + 2 * S) * sizeof *b);
        if (!b)
            return vfail(v, KV_ERR_NOMEM, "/needles", "out of memory");
        int32_t *sl = b + KV_NEEDLE_NF * N, *pl = sl + S;
        hsize_t a0[1] = {0}, cn[1] = {N}, cs[1] = {S};
        for (int k = 0; k < KV_NEEDLE_NF && !st; k++) {
            snprintf(p, sizeof p, "/needles/%s", kv_needle_names[k]);
            st = read_i32(v, p, 1, a0, cn, b + (size_t)k * N);
        }
        if (!st && !(st = read_i32(v, "/seq_len", 1, a0, cs, sl)))
            st = read_i32(v, "/prefill_len", 1, a0, cs, pl);
        for (size_t i = 0; i < N && !st; i++) {
            int32_t x[KV_NEEDLE_NF];
            for (int k = 0; k < KV_NEEDLE_NF; k++)
                x[k] = b[(size_t)k * N + i];
            if (x[KV_ND_SEQ] < 0 || (size_t)x[KV_ND_SEQ] >= S) {
                snprintf(p, sizeof p, "/needles/seq[%zu]", i);
                st = vfail(v, KV_ERR_FORMAT, p, "value %d outside [0, S = %zu)", (int)x[KV_ND_SEQ], S);
                break;
            }
            int32_t P = pl[x[KV_ND_SEQ]], n = sl[x[KV_ND_SEQ]];
            if (!(0 <= x[KV_ND_START] && x[KV_ND_START] <= x[KV_ND_VALUE_START] &&
                  x[KV_ND_VALUE_START] < x[KV_ND_VALUE_END] && x[KV_ND_VALUE_END] <= x[KV_ND_END] &&
                  x[KV_ND_END] <= P && P <= x[KV_ND_ANSWER_START] && x[KV_ND_ANSWER_START] < x[KV_ND_ANSWER_END] &&
                  x[KV_ND_ANSWER_END] <= n)) {
                snprintf(p, sizeof p, "/needles[%zu]", i);
                st = vfail(v, KV_ERR_FORMAT, p,
                           "start %d, end %d, value [%d, %d), answer [%d, %d) of sequence %d (prefill_len %d, seq_len %d) "
                           "break 0 <= start <= value_start < value_end <= end <= prefill_len <= answer_start < "
                           "answer_end <= seq_len", (int)x[KV_ND_START], (int)x[KV_ND_END], (int)x[KV_ND_VALUE_START],
                           (int)x[KV_ND_VALUE_END], (int)x[KV_ND_ANSWER_START], (int)x[KV_ND_ANSWER_END],
                           (int)x[KV_ND_SEQ], (int)P, (int)n);
            }
        }
        free(b);
        if (st)
            return st;
    }
    in->n_needles = N;
    return KV_OK;
}

/* A 1-D integer attribute of exactly n elements (absent: *present = 0, KV_OK). */
static kv_status attr_int_array(vctx *v, hid_t obj, const char *oname, const char *name, size_t n,
                                long long *val, int *present)
{
    char what[300];
    snprintf(what, sizeof what, "%s attribute %s", oname, name);
    *present = 0;
    hid_t a;
    kv_status st = attr_open_n(v, obj, oname, name, n, &a);
    if (st != KV_OK || a == H5I_INVALID_HID)
        return st;
    hid_t t = H5Aget_type(a);
    int ok = t >= 0 && H5Tget_class(t) == H5T_INTEGER && H5Tget_size(t) <= 8;
    if (t >= 0)
        H5Tclose(t);
    if (!ok)
        st = vfail(v, KV_ERR_FORMAT, what, "expected integers");
    else if (H5Aread(a, H5T_NATIVE_LLONG, val) < 0)
        st = vfail(v, KV_ERR_FORMAT, what, "cannot read the values");
    H5Aclose(a);
    *present = st == KV_OK;
    return st;
}

/* The attention parameters kvcapture computed /prompt_scores with (group attributes
 * attn_scale, attn_softcap, layer_window; absent in traces captured before they were
 * recorded) against the trace's own, as the replay holds them (scale and softcap rounded to
 * f32, each layer's effective window): the scores are a function of exactly these and the
 * stored Q/K, so an edited trace attribute makes them another attention's. The first
 * difference goes to in->prompt_scores_stale. */
static kv_status prompt_scores_params(vctx *v, size_t L)
{
    kv_info *in = v->info;
    in->prompt_scores_stale[0] = 0;
    hid_t g = H5Gopen2(v->file, "/prompt_scores", H5P_DEFAULT);
    if (g < 0)
        return vfail(v, KV_ERR_FORMAT, "/prompt_scores", "cannot open the group (corrupt file)");
    double scale = 0, cap = 0;
    int hs = 0, hc = 0, hw = 0;
    long long *w = malloc((L ? L : 1) * sizeof *w);
    kv_status st = w ? KV_OK : vfail(v, KV_ERR_NOMEM, "/prompt_scores", "out of memory");
    if (!st && !(st = attr_float(v, g, "/prompt_scores", "attn_scale", 0, &scale, &hs)) &&
        !(st = attr_float(v, g, "/prompt_scores", "attn_softcap", 0, &cap, &hc)) &&
        !(st = attr_int_array(v, g, "/prompt_scores", "layer_window", L, w, &hw))) {
        char *why = in->prompt_scores_stale;
        size_t cw = sizeof in->prompt_scores_stale;
        if (hs && (float)scale != (float)in->attn_scale)
            snprintf(why, cw, "they were captured with attn_scale %.9g, the trace's is %.9g", scale, in->attn_scale);
        else if (hc && (float)cap != (float)in->attn_softcap)
            snprintf(why, cw, "they were captured with attn_softcap %.9g, the trace's is %.9g", cap, in->attn_softcap);
        for (size_t l = 0; l < L && hw && !why[0]; l++) {
            long long tw = in->layer_window ? in->layer_window[l] : in->sliding_window;
            if (w[l] != tw)
                snprintf(why, cw, "they were captured with a window of %lld on layer %zu, the trace's is %lld",
                         w[l], l, tw);
        }
    }
    free(w);
    H5Gclose(g);
    return st;
}

/* /prompt_scores (optional, kvcapture --prompt-scores): colsum and entropy, f32
 * [L, S, H, T] each. The replay uses these values as they are (no recomputation), so the
 * full validation checks every one of them: finite, 0 <= colsum <= seq_len[s] (a column sums
 * at most one probability per query row; zero past seq_len) and 0 <= entropy <= 1 (a
 * normalised entropy). The first bad value is named with its index. */
static kv_status validate_prompt_scores(vctx *v, size_t L, size_t S, size_t H, size_t T)
{
    kv_info *in = v->info;
    int present;
    kv_status st = group_kind(v, "/prompt_scores", &present);
    in->has_prompt_scores = 0;
    in->prompt_scores_stale[0] = 0;
    if (st || !present)
        return st;
    static const char *const names[2] = {"/prompt_scores/colsum", "/prompt_scores/entropy"};
    size_t want[4] = {L, S, H, T};
    for (int k = 0; k < 2; k++)
        if ((st = expect_dset(v, names[k], M_F32, 4, want, "[L, S, H, T]", NULL, NULL, NULL)))
            return st;
    /* the values: L S H T floats of each (chunked; at 16k tokens 4 MiB, at 32 layers x 8 x 32
     * heads x 8k 0.5 GiB): read in full validations only, like the other chunks' contents */
    if (v->full && v->full != KV_INSPECT_NO_CHUNKS) {
        float *b = malloc(T * sizeof *b);
        int32_t *sl = malloc(S * sizeof *sl);
        hsize_t a0[1] = {0}, cs[1] = {S};
        if (!b || !sl) {
            free(b); free(sl);
            return vfail(v, KV_ERR_NOMEM, "/prompt_scores", "out of memory");
        }
        st = read_i32(v, "/seq_len", 1, a0, cs, sl);
        for (int k = 0; k < 2 && !st; k++)
            for (size_t l = 0; l < L && !st; l++)
                for (size_t s = 0; s < S && !st; s++)
                    for (size_t h = 0; h < H && !st; h++) {
                        hsize_t a[4] = {l, s, h, 0}, c[4] = {1, 1, 1, T};
                        if ((st = read_f32(v, names[k], 4, a, c, b)))
                            break;
                        double hi = k ? 1.0 : (double)sl[s];
                        for (size_t t = 0; t < T; t++) {
                            double x = b[t];
                            if (isfinite(x) && x >= 0 && x <= (t < (size_t)sl[s] ? hi : 0))
                                continue;
                            char p[128];
                            snprintf(p, sizeof p, "%s[layer %zu, seq %zu, head %zu, pos %zu]", names[k], l, s, h, t);
                            st = vfail(v, KV_ERR_FORMAT, p, "value %g %s", x,
                                       !isfinite(x) ? "is not finite"
                                       : t >= (size_t)sl[s] ? "past seq_len (must be 0)"
                                       : k ? "outside [0, 1] (a normalised entropy)"
                                           : "outside [0, seq_len] (a column sum of probabilities)");
                            break;
                        }
                    }
        free(b); free(sl);
        if (st)
            return st;
    }
    if ((st = prompt_scores_params(v, L)))
        return st;
    in->has_prompt_scores = 1;
    return KV_OK;
}

/* compute_dtype's values (traces/SCHEMA.md) */
static int compute_dtype_known(const char *s)
{
    return !strcmp(s, "float32") || !strcmp(s, "float16") || !strcmp(s, "bfloat16");
}

static kv_status inspect(vctx *v)
{
    kv_info *in = v->info;
    kv_status st;
    hid_t root = H5I_INVALID_HID, g = H5I_INVALID_HID;
    int32_t *buf = NULL;
    char p[300];

    root = H5Gopen2(v->file, "/", H5P_DEFAULT);
    if (root < 0)
        return vfail(v, KV_ERR_FORMAT, "/", "cannot open the root group (corrupt file)");

    /* version first: a newer file may legitimately use what version 1 rejects */
    long long ver;
    if ((st = attr_int(v, root, "/", "kvtrace_version", 1, &ver, NULL)) != KV_OK)
        goto done;
    if (ver != KV_SCHEMA_VERSION) {
        st = vfail(v, KV_ERR_VERSION, "/ attribute kvtrace_version",
                   "unsupported kvtrace_version %lld (this reader reads version %d)", ver, KV_SCHEMA_VERSION);
        goto done;
    }
    in->version = (int)ver;

    if (v->full) {
        walk_ctx w = {v, "", 0};
        if (group_too_big(v, root, "/")) {
            st = v->err->code;
            goto done;
        }
        if (H5Literate(root, H5_INDEX_NAME, H5_ITER_NATIVE, NULL, walk_cb, &w) < 0) {
            st = v->failed ? v->err->code : vfail(v, KV_ERR_FORMAT, "/", "cannot traverse the links (corrupt file)");
            goto done;
        }
    }

    /* root attributes */
    if ((st = attr_str(v, root, "/", "model", 1, in->model, sizeof in->model, NULL)) ||
        (st = attr_str(v, root, "/", "architecture", 1, in->architecture, sizeof in->architecture, NULL)) ||
        (st = size_attr(v, root, "n_layers", CAP_L, &in->n_layers)) ||
        (st = size_attr(v, root, "n_heads", CAP_HEADS, &in->n_heads)) ||
        (st = size_attr(v, root, "n_kv_heads", CAP_HEADS, &in->n_kv_heads)) ||
        (st = size_attr(v, root, "head_dim", CAP_D, &in->head_dim)) ||
        (st = size_attr(v, root, "d_model", CAP_C, &in->d_model)) ||
        (st = size_attr(v, root, "vocab_size", CAP_V, &in->vocab)) ||
        (st = attr_float(v, root, "/", "attn_scale", 1, &in->attn_scale, NULL)) ||
        (st = attr_float(v, root, "/", "attn_softcap", 1, &in->attn_softcap, NULL)) ||
        (st = attr_int(v, root, "/", "sliding_window", 1, &in->sliding_window, NULL)) ||
        (st = attr_str(v, root, "/", "positional", 1, in->positional, sizeof in->positional, NULL)))
        goto done;
    if (in->n_heads % in->n_kv_heads) {
        st = vfail(v, KV_ERR_FORMAT, "/ attribute n_kv_heads", "n_heads = %zu is not divisible by n_kv_heads = %zu",
                   in->n_heads, in->n_kv_heads);
        goto done;
    }
    if (!(in->attn_scale > 0)) {
        st = vfail(v, KV_ERR_FORMAT, "/ attribute attn_scale", "must be > 0, got %g", in->attn_scale);
        goto done;
    }
    if (in->attn_softcap < 0) {
        st = vfail(v, KV_ERR_FORMAT, "/ attribute attn_softcap", "must be >= 0, got %g", in->attn_softcap);
        goto done;
    }
    if (in->sliding_window < 0) {
        st = vfail(v, KV_ERR_FORMAT, "/ attribute sliding_window", "must be >= 0, got %lld", in->sliding_window);
        goto done;
    }
    int is_rope = !strcmp(in->positional, "rope");
    if (!is_rope && strcmp(in->positional, "learned") && strcmp(in->positional, "alibi") &&
        strcmp(in->positional, "none")) {
        st = vfail(v, KV_ERR_FORMAT, "/ attribute positional",
                   "'%s' is not one of rope, learned, alibi, none", in->positional);
        goto done;
    }
    int have;
    if ((st = attr_str(v, root, "/", "rope_layout", is_rope, in->rope_layout, sizeof in->rope_layout, &have)))
        goto done;
    if (is_rope && strcmp(in->rope_layout, "rotate_half") && strcmp(in->rope_layout, "interleaved")) {
        st = vfail(v, KV_ERR_FORMAT, "/ attribute rope_layout", "'%s' is not rotate_half or interleaved",
                   in->rope_layout);
        goto done;
    }
    long long rd = 0;
    int have_rd = 0;
    if ((st = attr_int(v, root, "/", "rotary_dim", 0, &rd, &have_rd)))
        goto done;
    if (have_rd && is_rope && (rd < 2 || rd % 2 || (size_t)rd > in->head_dim)) {
        st = vfail(v, KV_ERR_FORMAT, "/ attribute rotary_dim", "%lld is not even and in [2, head_dim = %zu]", rd,
                   in->head_dim);
        goto done;
    }
    in->rotary_dim = is_rope ? (have_rd ? (size_t)rd : in->head_dim) : 0;
    in->bos_id = -1;
    if ((st = attr_int(v, root, "/", "bos_id", 0, &in->bos_id, &have)))
        goto done;
    if (!have)
        in->bos_id = -1;
    else if (in->bos_id < 0 || (unsigned long long)in->bos_id >= in->vocab) {
        st = vfail(v, KV_ERR_FORMAT, "/ attribute bos_id", "%lld outside [0, vocab_size)", in->bos_id);
        goto done;
    }
    struct { const char *name; char *dst; size_t cap; } prov[] = {
        {"capture_tool", in->capture_tool, sizeof in->capture_tool},
        {"capture_version", in->capture_version, sizeof in->capture_version},
        {"device", in->device, sizeof in->device},
        {"torch_version", in->torch_version, sizeof in->torch_version},
        {"transformers_version", in->transformers_version, sizeof in->transformers_version},
        {"created", in->created, sizeof in->created},
        {"source", in->source, sizeof in->source},
        {"readout_unavailable", in->readout_unavailable, sizeof in->readout_unavailable},
        {"compute_dtype", in->compute_dtype, sizeof in->compute_dtype},
    };
    for (size_t i = 0; i < sizeof prov / sizeof prov[0]; i++)
        if ((st = attr_str(v, root, "/", prov[i].name, 0, prov[i].dst, prov[i].cap, NULL)))
            goto done;
    if (!in->compute_dtype[0]) {        /* kvcapture 1.0: "...; compute dtype X" at the end of source */
        const char *m = strstr(in->source, "compute dtype ");
        if (m) {
            m += strlen("compute dtype ");
            size_t n = strspn(m, "abcdefghijklmnopqrstuvwxyz0123456789");
            if (n < sizeof in->compute_dtype) {
                memcpy(in->compute_dtype, m, n);
                in->compute_dtype[n] = 0;
            }
            if (!compute_dtype_known(in->compute_dtype))
                in->compute_dtype[0] = 0;   /* free text that is not a dtype: unknown */
        }
    } else if (!compute_dtype_known(in->compute_dtype)) {
        st = vfail(v, KV_ERR_FORMAT, "/ attribute compute_dtype", "'%s' is not float32, float16 or bfloat16",
                   in->compute_dtype);
        goto done;
    }
    if (v->full) {
        char cmd[16];     /* validated only (string, <= 4096 bytes) */
        if ((st = attr_str(v, root, "/", "command", 0, cmd, sizeof cmd, NULL)))
            goto done;
    }

    /* tokens, seq_len, prefill_len */
    size_t td[2];
    if ((st = expect_dset(v, "/tokens", M_I32, 2, NULL, "[S, T]", NULL, td, NULL)))
        goto done;
    if (td[0] < 1 || td[0] > CAP_S || td[1] < 1 || td[1] > CAP_T) {
        st = vfail(v, KV_ERR_FORMAT, "/tokens", "shape [%zu, %zu] outside S in [1, 2^20], T in [1, 2^22]", td[0], td[1]);
        goto done;
    }
    size_t S = in->n_seq = td[0], T = in->n_tok = td[1];
    size_t L = in->n_layers, H = in->n_heads, Hkv = in->n_kv_heads, D = in->head_dim, C = in->d_model,
           V = in->vocab;
    if ((st = expect_dset(v, "/seq_len", M_I32, 1, &S, "[S]", NULL, NULL, NULL)) ||
        (st = expect_dset(v, "/prefill_len", M_I32, 1, &S, "[S]", &in->has_prefill, NULL, NULL)))
        goto done;
    if (v->full) {
        size_t rowbuf = T * KV_TOPK > S ? T * KV_TOPK : S;
        int32_t *sl = malloc(S * sizeof *sl);
        buf = malloc(rowbuf * sizeof *buf);
        if (!sl || !buf) {
            free(sl);
            st = vfail(v, KV_ERR_NOMEM, "/seq_len", "out of memory");
            goto done;
        }
        hsize_t s0[3] = {0, 0, 0}, c1[3] = {S, 0, 0};
        if ((st = read_i32(v, "/seq_len", 1, s0, c1, sl))) {
            free(sl);
            goto done;
        }
        for (size_t s = 0; s < S; s++)
            if (sl[s] < 1 || (size_t)sl[s] > T) {
                snprintf(p, sizeof p, "/seq_len[%zu]", s);
                st = vfail(v, KV_ERR_FORMAT, p, "value %d outside [1, T = %zu]", (int)sl[s], T);
                free(sl);
                goto done;
            }
        if (in->has_prefill) {
            if ((st = read_i32(v, "/prefill_len", 1, s0, c1, buf))) {
                free(sl);
                goto done;
            }
            for (size_t s = 0; s < S; s++)
                if (buf[s] < 1 || buf[s] >= sl[s]) {
                    snprintf(p, sizeof p, "/prefill_len[%zu]", s);
                    st = vfail(v, KV_ERR_FORMAT, p, "value %d outside [1, seq_len = %d)", (int)buf[s], (int)sl[s]);
                    free(sl);
                    goto done;
                }
        }
        for (size_t s = 0; s < S; s++) {
            hsize_t st2[2] = {s, 0}, ct2[2] = {1, (hsize_t)sl[s]};
            if ((st = read_i32(v, "/tokens", 2, st2, ct2, buf))) {
                free(sl);
                goto done;
            }
            for (size_t t = 0; t < (size_t)sl[s]; t++)
                if (buf[t] < 0 || (size_t)buf[t] >= V) {
                    snprintf(p, sizeof p, "/tokens[%zu, %zu]", s, t);
                    st = vfail(v, KV_ERR_FORMAT, p, "token id %d outside [0, vocab_size = %zu)", (int)buf[t], V);
                    free(sl);
                    goto done;
                }
        }
        free(sl);
    }

    /* rope tables */
    int rope_grp;
    if ((st = group_kind(v, "/rope", &rope_grp)))
        goto done;
    if (rope_grp) {
        size_t cd[2], sd[2];
        int hc, hs;
        if ((st = expect_dset(v, "/rope/cos", M_F32, 2, NULL, "[T, R]", &hc, cd, NULL)) ||
            (st = expect_dset(v, "/rope/sin", M_F32, 2, NULL, "[T, R]", &hs, sd, NULL)))
            goto done;
        if (hc != hs) {
            st = vfail(v, KV_ERR_FORMAT, hc ? "/rope/sin" : "/rope/cos", "missing (cos and sin go together)");
            goto done;
        }
        if (hc) {
            size_t R = cd[1];
            if (cd[0] != T || sd[0] != T || sd[1] != R || R < 2 || R % 2 || R > D ||
                (is_rope && have_rd && R != in->rotary_dim)) {
                st = vfail(v, KV_ERR_FORMAT, "/rope/cos",
                           "shapes [%zu, %zu] and [%zu, %zu], expected [T = %zu, R] with R even, <= head_dim = %zu%s",
                           cd[0], cd[1], sd[0], sd[1], T, D, have_rd ? " and = rotary_dim" : "");
                goto done;
            }
            in->has_rope = 1;
            if (is_rope)
                in->rotary_dim = R;
        }
    }

    /* layers */
    int lg;
    if ((st = group_kind(v, "/layers", &lg)))
        goto done;
    if (!lg) {
        st = vfail(v, KV_ERR_FORMAT, "/layers", "required group is missing");
        goto done;
    }
    if (v->full) {
        layers_scan ls = {v, L, 0};
        hid_t lgid = H5Gopen2(v->file, "/layers", H5P_DEFAULT);
        herr_t r = lgid < 0 ? -1 : H5Literate(lgid, H5_INDEX_NAME, H5_ITER_NATIVE, NULL, layers_cb, &ls);
        if (lgid >= 0)
            H5Gclose(lgid);
        if (r < 0) {
            st = ls.bad ? v->err->code : vfail(v, KV_ERR_FORMAT, "/layers", "cannot list the group (corrupt file)");
            goto done;
        }
    }
    free(in->layer_window);
    free(in->model_layer);
    in->layer_window = calloc(L, sizeof *in->layer_window);
    in->model_layer = calloc(L, sizeof *in->model_layer);
    if (!in->layer_window || !in->model_layer) {
        st = vfail(v, KV_ERR_NOMEM, "/layers", "out of memory");
        goto done;
    }
    size_t qs[4] = {S, H, T, D}, ks[4] = {S, Hkv, T, D};
    for (size_t l = 0; l < L; l++) {
        int present;
        snprintf(p, sizeof p, "/layers/%zu", l);
        if ((st = group_kind(v, p, &present)))
            goto done;
        if (!present) {
            st = vfail(v, KV_ERR_FORMAT, p, "required layer group is missing (n_layers = %zu)", L);
            goto done;
        }
        g = H5Gopen2(v->file, p, H5P_DEFAULT);
        if (g < 0) {
            st = vfail(v, KV_ERR_FORMAT, p, "cannot open the group");
            goto done;
        }
        long long x;
        int hx;
        if ((st = attr_int(v, g, p, "model_layer", 0, &x, &hx)))
            goto done;
        if (hx && x < 0) {
            st = vfail(v, KV_ERR_FORMAT, p, "attribute model_layer = %lld is negative", x);
            goto done;
        }
        in->model_layer[l] = hx ? x : (long long)l;
        if ((st = attr_int(v, g, p, "sliding_window", 0, &x, &hx)))
            goto done;
        if (hx && x < 0) {
            st = vfail(v, KV_ERR_FORMAT, p, "attribute sliding_window = %lld is negative", x);
            goto done;
        }
        in->layer_window[l] = hx ? x : in->sliding_window;
        H5Gclose(g);
        g = H5I_INVALID_HID;
        char dp[340];
        snprintf(dp, sizeof dp, "%s/q", p);
        if ((st = expect_dset(v, dp, M_F16, 4, qs, "[S, H, T, D]", NULL, NULL, NULL)))
            goto done;
        snprintf(dp, sizeof dp, "%s/k", p);
        if ((st = expect_dset(v, dp, M_F16, 4, ks, "[S, Hkv, T, D]", NULL, NULL, NULL)))
            goto done;
        snprintf(dp, sizeof dp, "%s/v", p);
        if ((st = expect_dset(v, dp, M_F16, 4, ks, "[S, Hkv, T, D]", NULL, NULL, NULL)))
            goto done;
        snprintf(dp, sizeof dp, "%s/attn_out", p);
        int ho;
        if ((st = expect_dset(v, dp, M_F16, 4, qs, "[S, H, T, D]", &ho, NULL, NULL)))
            goto done;
        if (l == 0)
            in->has_attn_out = ho;
        else if (ho != in->has_attn_out) {
            st = vfail(v, KV_ERR_FORMAT, dp, "attn_out must exist in every layer or in none (layer 0 %s it)",
                       in->has_attn_out ? "has" : "lacks");
            goto done;
        }
    }

    /* storage facts of /layers/0/q for `info` */
    {
        hid_t d = H5Dopen2(v->file, "/layers/0/q", H5P_DEFAULT);
        if (d < 0 || kvh5_storage_facts(d, 4, &in->q_chunked, in->q_chunk, &in->q_deflate, &in->q_shuffle,
                                        &in->q_fletcher32) < 0) {
            if (d >= 0)
                H5Dclose(d);
            st = vfail(v, KV_ERR_FORMAT, "/layers/0/q", "cannot read the creation properties");
            goto done;
        }
        H5Dclose(d);
    }

    /* read-out */
    int rg;
    if ((st = group_kind(v, "/readout", &rg)))
        goto done;
    in->has_readout = rg;
    if (rg) {
        g = H5Gopen2(v->file, "/readout", H5P_DEFAULT);
        if (g < 0) {
            st = vfail(v, KV_ERR_FORMAT, "/readout", "cannot open the group");
            goto done;
        }
        int hs;
        in->final_logit_softcap = 0;
        if ((st = attr_str(v, g, "/readout", "norm_type", 1, in->norm_type, sizeof in->norm_type, NULL)) ||
            (st = attr_float(v, g, "/readout", "norm_eps", 1, &in->norm_eps, NULL)) ||
            (st = attr_float(v, g, "/readout", "final_logit_softcap", 0, &in->final_logit_softcap, &hs)))
            goto done;
        H5Gclose(g);
        g = H5I_INVALID_HID;
        if (strcmp(in->norm_type, "layernorm") && strcmp(in->norm_type, "rmsnorm")) {
            st = vfail(v, KV_ERR_FORMAT, "/readout attribute norm_type", "'%s' is not layernorm or rmsnorm",
                       in->norm_type);
            goto done;
        }
        if (in->norm_eps < 0 || in->final_logit_softcap < 0) {
            st = vfail(v, KV_ERR_FORMAT, "/readout", "norm_eps and final_logit_softcap must be >= 0");
            goto done;
        }
        size_t hsz[3] = {S, T, C}, wu[2] = {V, C}, vv[1] = {V}, cc[1] = {C}, st2[2] = {S, T},
               top[3] = {S, T, KV_TOPK}, wo[2];
        if (!kv_mul_ok(H, D, CAP_ELEMS, &wo[0])) {
            st = vfail(v, KV_ERR_FORMAT, "/readout/w_o", "H*D overflows");
            goto done;
        }
        wo[1] = C;
        if ((st = expect_dset(v, "/readout/hidden", M_F16, 3, hsz, "[S, T, C]", NULL, NULL, NULL)) ||
            (st = expect_dset(v, "/readout/w_u", M_F16, 2, wu, "[V, C]", NULL, NULL, NULL)) ||
            (st = expect_dset(v, "/readout/b_u", M_F16 | M_F32, 1, vv, "[V]", &in->has_b_u, NULL, NULL)) ||
            (st = expect_dset(v, "/readout/norm_weight", M_F16 | M_F32, 1, cc, "[C]", NULL, NULL, NULL)) ||
            (st = expect_dset(v, "/readout/norm_bias", M_F16 | M_F32, 1, cc, "[C]", &in->has_norm_bias, NULL, NULL)) ||
            (st = expect_dset(v, "/readout/ref_lse", M_F32, 2, st2, "[S, T]", NULL, NULL, NULL)) ||
            (st = expect_dset(v, "/readout/ref_top_ids", M_I32, 3, top, "[S, T, 8]", NULL, NULL, NULL)) ||
            (st = expect_dset(v, "/readout/ref_top_logits", M_F32, 3, top, "[S, T, 8]", NULL, NULL, NULL)))
            goto done;
        int wg;
        if ((st = group_kind(v, "/readout/w_o", &wg)))
            goto done;
        if (!wg) {
            st = vfail(v, KV_ERR_FORMAT, "/readout/w_o", "required group is missing");
            goto done;
        }
        for (size_t l = 0; l < L; l++) {
            snprintf(p, sizeof p, "/readout/w_o/%zu", l);
            if ((st = expect_dset(v, p, M_F16, 2, wo, "[H*D, C]", NULL, NULL, NULL)))
                goto done;
        }
        if (v->full) {
            for (size_t s = 0; s < S; s++) {
                hsize_t a[3] = {s, 0, 0}, c[3] = {1, T, KV_TOPK};
                if ((st = read_i32(v, "/readout/ref_top_ids", 3, a, c, buf)))
                    goto done;
                for (size_t i = 0; i < T * KV_TOPK; i++)
                    if (buf[i] < 0 || (size_t)buf[i] >= V) {
                        snprintf(p, sizeof p, "/readout/ref_top_ids[%zu, %zu, %zu]", s, i / KV_TOPK, i % KV_TOPK);
                        st = vfail(v, KV_ERR_FORMAT, p, "token id %d outside [0, vocab_size = %zu)", (int)buf[i], V);
                        goto done;
                    }
            }
        }
    }
    if ((st = validate_needles(v, S)) || (st = validate_prompt_scores(v, L, S, H, T)))
        goto done;
    st = KV_OK;
done:
    free(buf);
    if (g >= 0)
        H5Gclose(g);
    H5Gclose(root);
    return st;
}

kv_status trace_inspect(const char *path, hid_t file, int full, kv_info *info, kv_error *err)
{
    vctx v = {.path = path, .file = file, .full = full, .info = info, .err = err};
    kv_error local;
    if (!v.err)
        v.err = &local;
    struct stat sb;
    if (stat(path, &sb) != 0)
        return vfail(&v, KV_ERR_IO, "file", "cannot stat: %s", strerror(errno));
    v.fsize = (unsigned long long)sb.st_size;
    info->file_bytes = v.fsize;
    copy_str(info->path, sizeof info->path, path);
    hid_t fcpl = H5Fget_create_plist(file);
    hsize_t ub = 0;
    if (fcpl >= 0) {
        H5Pget_userblock(fcpl, &ub);
        H5Pclose(fcpl);
    }
    v.userblock = ub;
    kv_status st = inspect(&v);
    free(v.seen);
    return st;
}
