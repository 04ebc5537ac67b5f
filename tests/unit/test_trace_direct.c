/* The direct chunk path (lib/kvtrace.h kv_trace_read_rows_f16_direct: pread and decode
 * without libhdf5) against the H5Dread path (kv_trace_read_rows_f16) and against the values
 * written, byte for byte.
 *
 * Traces: written by kv_writer (no filter), then the tensor datasets /layers/<l>/{q,k,v,
 * attn_out} rewritten with raw HDF5 under other chunk shapes and filter pipelines: no filter
 * (whole rows: the in-place pread, also from chunks of several sequences and heads; the head
 * dimension split over chunks: the copy), shuffle + deflate, deflate only, shuffle only,
 * chunks spanning several heads or sequences, partial edge chunks in every dimension (T =
 * 300, D = 24), the writer's own shuffle + deflate, and a 512-byte user block (chunk
 * addresses are relative to it). Each is opened through the validating child; every (kind,
 * layer, sequence, head) is read whole and in random row ranges (empty, one row, across
 * chunk edges) both ways and compared with each other and with the values written, and
 * from two threads at once. Fletcher32 and contiguous datasets must keep the H5Dread path
 * (direct_ok 0). A corrupt compressed chunk (bytes flipped after validation, the mtime
 * put back so that the identity check cannot see it) is an error naming the file and the
 * dataset, not a crash or other bytes: flipped bytes inside the deflate stream, and a flipped
 * byte of its adler32 trailer only (every byte decodes, the checksum alone catches it); a
 * file appended to after open is refused. A deflate chunk stored with trailing bytes up to
 * the validator's cap is read (check_padded).
 * (deflate before shuffle is not among the layouts: lib/trace_validate.c rejects it.)
 *
 * Shapes: S=2, T=300, L=2, H=4, Hkv=2, D=24.
 */
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvtrace.h"
#include "trace_testhelp.h"

enum { S = 2, T = 300, L = 2, H = 4, HKV = 2, D = 24, V = 50 };

static const char *kind_name[4] = {"q", "k", "v", "attn_out"};

static uint16_t bits(int kind, size_t s, size_t l, size_t h, size_t t, size_t d)
{
    uint32_t x = (uint32_t)(kind * 1000003u + s * 7919u + l * 104729u + h * 1299709u + t * 31u + d * 17u);
    uint32_t p = ((x * 2654435761u) >> 7) & 0xffffu;
    if (((p >> 10) & 31u) == 31u)
        p ^= 0x4000u;                 /* no Inf/NaN */
    if (t % 5 == 0 && d < 8)
        p &= 0x8fffu;                 /* some compressible runs */
    return (uint16_t)p;
}

static size_t heads_of(int k) { return (k == KV_K || k == KV_V) ? HKV : H; }

static int write_base(const char *path, int deflate)
{
    kv_meta m = {0};
    kv_error err;
    m.model = "direct-fixture";
    m.architecture = "llama";
    m.positional = "none";
    m.capture_tool = "test_trace_direct";
    m.capture_version = "1";
    m.device = "cpu";
    m.source = "synthetic hash values";
    m.n_seq = S; m.n_tok = T; m.n_layers = L; m.n_heads = H; m.n_kv_heads = HKV;
    m.head_dim = D; m.d_model = 16; m.vocab = V;
    m.attn_scale = 0.2;
    m.bos_id = -1;
    m.deflate = deflate;
    static int32_t tok[S * T];
    static const int32_t seq_len[S] = {300, 257};
    static uint16_t slice[T * D];
    kv_writer *w = NULL;
    if (kv_writer_create(path, &m, &w, &err) != KV_OK)
        goto fail;
    for (size_t i = 0; i < S * T; i++)
        tok[i] = (int32_t)(i % V);
    if (kv_writer_tokens(w, tok, seq_len, &err) != KV_OK)
        goto fail;
    for (int k = 0; k < 4; k++)
        for (size_t l = 0; l < L; l++)
            for (size_t s = 0; s < S; s++)
                for (size_t h = 0; h < heads_of(k); h++) {
                    for (size_t t = 0; t < T; t++)
                        for (size_t d = 0; d < D; d++)
                            slice[t * D + d] = bits(k, s, l, h, t, d);
                    if (kv_writer_head_f16(w, (kv_tensor)k, s, l, h, slice, &err) != KV_OK)
                        goto fail;
                }
    if (kv_writer_finish(w, &err) != KV_OK)
        goto fail;
    return 0;
fail:
    printf("FAIL: writing %s: %s\n", path, err.msg);
    kv_writer_abort(w);
    return -1;
}

/* Storage of the rewritten tensors. */
enum { F_SHUF = 1, F_DEFL = 2, F_FLETCHER = 8, F_CONTIG = 16, F_WRITER = 32 };
typedef struct variant {
    const char *name;
    size_t chunk[4];                  /* clipped to the dataset's dimensions */
    int flags;
    int direct;                       /* direct_ok expected */
    int userblock;                    /* prepend 512 bytes */
} variant;

/* Rewrites every tensor dataset of path with v's layout; 0 ok. */
static int rewrite(const char *path, const variant *v)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0)
        return -1;
    static uint16_t buf[S * H * T * D];
    int rc = 0;
    for (size_t l = 0; l < L && !rc; l++)
        for (int k = 0; k < 4 && !rc; k++) {
            char name[64];
            snprintf(name, sizeof name, "/layers/%zu/%s", l, kind_name[k]);
            hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
            hid_t ty = d >= 0 ? H5Dget_type(d) : H5I_INVALID_HID;
            hid_t sp = d >= 0 ? H5Dget_space(d) : H5I_INVALID_HID;
            hsize_t dims[4];
            if (d < 0 || ty < 0 || sp < 0 || H5Sget_simple_extent_dims(sp, dims, NULL) != 4 ||
                H5Dread(d, ty, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
                rc = -1;
                break;
            }
            H5Dclose(d);
            hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
            if (!(v->flags & F_CONTIG)) {
                hsize_t cd[4];
                for (int i = 0; i < 4; i++)
                    cd[i] = v->chunk[i] < dims[i] ? v->chunk[i] : dims[i];
                H5Pset_chunk(dcpl, 4, cd);
                if (v->flags & F_FLETCHER)
                    H5Pset_fletcher32(dcpl);
                if (v->flags & F_SHUF)
                    H5Pset_shuffle(dcpl);
                if (v->flags & F_DEFL)
                    H5Pset_deflate(dcpl, 6);
            }
            if (H5Ldelete(f, name, H5P_DEFAULT) < 0 ||
                (d = H5Dcreate2(f, name, ty, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT)) < 0 ||
                H5Dwrite(d, ty, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
                rc = -1;
            if (d >= 0)
                H5Dclose(d);
            H5Pclose(dcpl);
            H5Tclose(ty);
            H5Sclose(sp);
        }
    if (H5Fclose(f) < 0)
        rc = -1;
    return rc;
}

/* path with 512 zero bytes in front (a user block: HDF5 finds the superblock at 512). */
static int add_userblock(const char *path, const char *tmp)
{
    FILE *a = fopen(path, "rb"), *b = fopen(tmp, "wb");
    int ok = a && b;
    static char z[512];
    char buf[1 << 16];
    size_t n;
    if (ok)
        ok = fwrite(z, 1, sizeof z, b) == sizeof z;
    while (ok && (n = fread(buf, 1, sizeof buf, a)) > 0)
        ok = fwrite(buf, 1, n, b) == n;
    if (a) fclose(a);
    if (b && fclose(b) != 0) ok = 0;
    return ok && rename(tmp, path) == 0 ? 0 : -1;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static size_t rnd(size_t n)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return n ? (size_t)(rng % n) : 0;
}

/* 1 when rows [t0, t0 + nt) of dst are the values written. */
static int is_written(const uint16_t *dst, int k, size_t s, size_t l, size_t h, size_t t0, size_t nt)
{
    for (size_t t = 0; t < nt; t++)
        for (size_t d = 0; d < D; d++)
            if (dst[t * D + d] != bits(k, s, l, h, t0 + t, d))
                return 0;
    return 1;
}

static void check_variant(const char *dir, const variant *v)
{
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/direct_%d_%s.h5", dir, (int)getpid(), v->name);
    snprintf(tmp, sizeof tmp, "%s.ub", path);
    if (write_base(path, (v->flags & F_WRITER) ? 4 : 0) != 0 || (!(v->flags & F_WRITER) && rewrite(path, v) != 0) ||
        (v->userblock && add_userblock(path, tmp) != 0)) {
        CHECK(0, "%s: cannot write the trace", v->name);
        return;
    }
    kv_trace *t = NULL;
    kv_error err;
    if (kv_trace_open(path, NULL, &t, &err) != KV_OK) {
        CHECK(0, "%s: open: %s", v->name, err.msg);
        return;
    }
    static uint16_t a[(T + 1) * D], b[(T + 1) * D];
    size_t ncmp = 0;
    for (int k = 0; k < 4; k++)
        for (size_t l = 0; l < L; l++) {
            int ok = -1;
            kv_status st = kv_trace_rows_direct_ok(t, (kv_tensor)k, l, &ok, &err);
            CHECK(st == KV_OK && ok == v->direct, "%s: %s layer %zu: direct_ok %d (want %d), status %d %s", v->name,
                  kind_name[k], l, ok, v->direct, (int)st, st ? err.msg : "");
            if (st != KV_OK || !ok) {
                if (st == KV_OK)
                    CHECK(kv_trace_read_rows_f16_direct(t, (kv_tensor)k, 0, l, 0, 0, T, a, &err) == KV_ERR_INVALID,
                          "%s: a direct read where direct_ok said 0 must be refused", v->name);
                continue;
            }
            for (size_t s = 0; s < S; s++)
                for (size_t h = 0; h < heads_of(k); h++)
                    for (int r = 0; r < 12; r++) {
                        size_t t0, nt;
                        switch (r) {
                        case 0: t0 = 0; nt = T; break;
                        case 1: t0 = T - 1; nt = 1; break;
                        case 2: t0 = rnd(T + 1); nt = 0; break;
                        case 3: t0 = 1; nt = T - 2; break;
                        default: t0 = rnd(T); nt = 1 + rnd(T - t0); break;
                        }
                        memset(a, 0xA5, sizeof a);
                        memset(b, 0x5A, sizeof b);
                        kv_status sd = kv_trace_read_rows_f16_direct(t, (kv_tensor)k, s, l, h, t0, nt, a, &err);
                        CHECK(sd == KV_OK, "%s: direct read: %s", v->name, err.msg);
                        kv_status sh = kv_trace_read_rows_f16(t, (kv_tensor)k, s, l, h, t0, nt, b, &err);
                        CHECK(sh == KV_OK, "%s: H5Dread: %s", v->name, err.msg);
                        if (sd || sh)
                            continue;
                        ncmp++;
                        CHECK(!memcmp(a, b, nt * D * sizeof *a) && is_written(a, k, s, l, h, t0, nt),
                              "%s: %s layer %zu seq %zu head %zu rows [%zu, %zu): direct %s H5Dread, %s the values "
                              "written", v->name, kind_name[k], l, s, h, t0, t0 + nt,
                              memcmp(a, b, nt * D * sizeof *a) ? "!=" : "==",
                              is_written(a, k, s, l, h, t0, nt) ? "==" : "!=");
                        CHECK(a[nt * D] == 0xA5A5, "%s: direct read wrote past its rows", v->name);
                    }
        }
    /* the direct reads of one tensor from two threads at once */
    int ok = 0;
    if (kv_trace_rows_direct_ok(t, KV_V, 1, &ok, &err) == KV_OK && ok) {
        int bad = 0;
#pragma omp parallel for num_threads(2) reduction(+ : bad)
        for (int i = 0; i < (int)(S * HKV * 8); i++) {
            uint16_t *x = malloc(T * D * sizeof *x);
            size_t s = (size_t)i / (HKV * 8), h = (size_t)i / 8 % HKV, t0 = (size_t)i % 8 * 37;
            kv_error e;
            bad += !x || kv_trace_read_rows_f16_direct(t, KV_V, s, 1, h, t0, T - t0, x, &e) != KV_OK ||
                   !is_written(x, KV_V, s, 1, h, t0, T - t0);
            free(x);
        }
        CHECK(bad == 0, "%s: %d parallel direct reads differ or fail", v->name, bad);
    }
    if (v->direct)
        printf("%s: %zu row ranges compared\n", v->name, ncmp);
    kv_trace_close(t);
    unlink(path);
}

/* ---- a compressed chunk corrupted after validation ---------------------------------- */

static char g_corrupt[4200];
static int g_flipped;

/* Flips n bytes at byte `pos` of /layers/1/k's stored chunk at row t (seq 0, head 1, dims
 * [0, 16)); pos < 0 counts from the chunk's end. 1 when done. */
static int flip(const char *path, hsize_t t, long long pos, int n)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = f >= 0 ? H5Dopen2(f, "/layers/1/k", H5P_DEFAULT) : H5I_INVALID_HID;
    hsize_t off[4] = {0, 1, t, 0}, size = 0;
    unsigned mask = 0;
    haddr_t addr = HADDR_UNDEF;
    if (d < 0 || H5Dget_chunk_info_by_coord(d, off, &mask, &addr, &size) < 0)
        addr = HADDR_UNDEF;
    if (d >= 0) H5Dclose(d);
    if (f >= 0) H5Fclose(f);
    if (addr == HADDR_UNDEF || size < 16)
        return 0;
    int fd = open(path, O_RDWR), done = 0;
    unsigned char x[8];
    unsigned long long at = (unsigned long long)addr + (unsigned long long)(pos < 0 ? (long long)size + pos : pos);
    if (fd >= 0 && pread(fd, x, (size_t)n, (off_t)at) == n) {
        for (int i = 0; i < n; i++)
            x[i] ^= 0x5a;
        done = pwrite(fd, x, (size_t)n, (off_t)at) == n;
    }
    if (fd >= 0) close(fd);
    printf("corrupt: %llu-byte chunk at row %llu: %d bytes flipped at its byte %lld\n", (unsigned long long)size,
           (unsigned long long)t, n, pos);
    return done;
}

/* The chunk at row 48: 3 bytes in the middle of its deflate stream; the chunk at row 96: the
 * last byte (of the adler32 trailer). Then the mtime put back: the identity check (inode,
 * size, mtime) cannot see the change. */
static void corrupt_chunk(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hsize_t size = 0;
    hid_t d = f >= 0 ? H5Dopen2(f, "/layers/1/k", H5P_DEFAULT) : H5I_INVALID_HID;
    hsize_t off[4] = {0, 1, 48, 0};
    unsigned mask;
    haddr_t addr;
    if (d >= 0 && H5Dget_chunk_info_by_coord(d, off, &mask, &addr, &size) < 0)
        size = 0;
    if (d >= 0) H5Dclose(d);
    if (f >= 0) H5Fclose(f);
    g_flipped = flip(path, 48, (long long)size / 2, 3) + flip(path, 96, -1, 1);
    struct timespec ts[2] = {sb.st_atim, sb.st_mtim};
    utimensat(AT_FDCWD, path, ts, 0);
}

static void check_corrupt(const char *dir)
{
    snprintf(g_corrupt, sizeof g_corrupt, "%s/direct_%d_corrupt.h5", dir, (int)getpid());
    variant v = {"corrupt", {1, 1, 48, 16}, F_SHUF | F_DEFL, 1, 0};
    if (write_base(g_corrupt, 0) != 0 || rewrite(g_corrupt, &v) != 0) {
        CHECK(0, "corrupt: cannot write the trace");
        return;
    }
    kv_open_opts o = {0};
    o.test_after_validate = corrupt_chunk;
    kv_trace *t = NULL;
    kv_error err;
    if (kv_trace_open(g_corrupt, &o, &t, &err) != KV_OK) {
        CHECK(0, "corrupt: open: %s", err.msg);
        return;
    }
    CHECK(g_flipped == 2, "corrupt: the chunks were not changed");
    int ok = 0;
    CHECK(kv_trace_rows_direct_ok(t, KV_K, 1, &ok, &err) == KV_OK && ok, "corrupt: direct_ok: %s", err.msg);
    static uint16_t a[T * D];
    memset(&err, 0, sizeof err);
    kv_status st = kv_trace_read_rows_f16_direct(t, KV_K, 0, 1, 1, 0, T, a, &err);
    printf("corrupt: direct read of the first: %s\n", st ? err.msg : "no error");
    CHECK(st == KV_ERR_FORMAT && strstr(err.msg, g_corrupt) && strstr(err.msg, "/layers/1/k") &&
              strstr(err.msg, "[0, 1, 48, 0]") && !strchr(err.msg, '\n'),
          "corrupt: the direct read must fail with one line naming the file, dataset and chunk: %d %s", (int)st,
          err.msg);
    /* rows of other chunks still read, and the H5Dread path refuses the chunk too */
    CHECK(kv_trace_read_rows_f16_direct(t, KV_K, 0, 1, 1, 0, 48, a, &err) == KV_OK && is_written(a, KV_K, 0, 1, 1, 0, 48),
          "corrupt: rows before the chunk: %s", err.msg);
    CHECK(kv_trace_read_rows_f16_direct(t, KV_K, 0, 1, 1, 144, 10, a, &err) == KV_OK &&
              is_written(a, KV_K, 0, 1, 1, 144, 10), "corrupt: rows after the chunks: %s", err.msg);
    st = kv_trace_read_rows_f16(t, KV_K, 0, 1, 1, 50, 4, a, &err);
    CHECK(st != KV_OK, "corrupt: the H5Dread path read the corrupt chunk");
    /* the checksum alone: the stream decodes to the chunk's 1536 bytes, adler32 differs */
    st = kv_trace_read_rows_f16_direct(t, KV_K, 0, 1, 1, 100, 3, a, &err);
    printf("corrupt: direct read of the second: %s\n", st ? err.msg : "no error");
    CHECK(st == KV_ERR_FORMAT && strstr(err.msg, "[0, 1, 96, 0]") && strstr(err.msg, "1536 bytes decoded") &&
              strstr(err.msg, "/layers/1/k"), "corrupt: adler32: %d %s", (int)st, err.msg);
    st = kv_trace_read_rows_f16(t, KV_K, 0, 1, 1, 100, 3, a, &err);
    CHECK(st != KV_OK, "corrupt: the H5Dread path read the chunk with a bad checksum");
    kv_trace_close(t);

    /* appended to after open: refused */
    variant w = {"append", {1, 1, 64, 24}, 0, 1, 0};
    if (write_base(g_corrupt, 0) != 0 || rewrite(g_corrupt, &w) != 0 || kv_trace_open(g_corrupt, NULL, &t, &err)) {
        CHECK(0, "append: cannot write or open the trace: %s", err.msg);
        return;
    }
    CHECK(kv_trace_rows_direct_ok(t, KV_Q, 0, &ok, &err) == KV_OK && ok &&
              kv_trace_read_rows_f16_direct(t, KV_Q, 0, 0, 0, 0, T, a, &err) == KV_OK,
          "append: a read before the change: %s", err.msg);
    int fd = open(g_corrupt, O_WRONLY | O_APPEND);
    if (fd >= 0) {
        if (write(fd, "", 1) != 1) perror("write");
        close(fd);
    }
    st = kv_trace_read_rows_f16_direct(t, KV_Q, 0, 0, 0, 0, T, a, &err);
    CHECK(st == KV_ERR_IO && strstr(err.msg, "changed since it was validated"), "append: direct read: %d %s",
          (int)st, err.msg);
    kv_trace_close(t);
    unlink(g_corrupt);
}

/* ---- a deflate chunk stored with trailing bytes -------------------------------------
 * The validator (check_chunks) accepts a deflate chunk stored with bytes after its stream,
 * up to cbytes + cbytes / 8 + 4096 + 4 * nf stored bytes, and libhdf5 reads it (inflate stops
 * at the stream's end). The direct path must accept the same stored sizes: /layers/1/k's
 * chunk at row 48 (1536 bytes, shuffle + deflate: nf = 2) rewritten with its stream padded to
 * exactly the validator's cap. */
static void check_padded(const char *dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/direct_%d_padded.h5", dir, (int)getpid());
    variant v = {"padded", {1, 1, 48, 16}, F_SHUF | F_DEFL, 1, 0};
    const size_t cbytes = 48 * 16 * 2, cap = cbytes + cbytes / 8 + 4096 + 4 * 2;
    static unsigned char raw[8192];
    int wrote = 0;
    if (write_base(path, 0) == 0 && rewrite(path, &v) == 0) {
        hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
        hid_t d = f >= 0 ? H5Dopen2(f, "/layers/1/k", H5P_DEFAULT) : H5I_INVALID_HID;
        hsize_t off[4] = {0, 1, 48, 0}, size = 0;
        unsigned mask = 0;
        haddr_t addr = HADDR_UNDEF;
        uint32_t m = 0;
        if (d >= 0 && H5Dget_chunk_info_by_coord(d, off, &mask, &addr, &size) >= 0 && size < cap &&
            H5Dread_chunk(d, H5P_DEFAULT, off, &m, raw) >= 0) {
            memset(raw + size, 0x5a, cap - size);
            wrote = H5Dwrite_chunk(d, H5P_DEFAULT, m, off, cap, raw) >= 0;
        }
        if (d >= 0) H5Dclose(d);
        if (f >= 0 && H5Fclose(f) < 0) wrote = 0;
    }
    CHECK(wrote, "padded: cannot write the trace");
    if (!wrote)
        return;
    kv_trace *t = NULL;
    kv_error err;
    if (kv_trace_open(path, NULL, &t, &err) != KV_OK) {
        CHECK(0, "padded: open (the validator must accept it): %s", err.msg);
        unlink(path);
        return;
    }
    static uint16_t a[T * D], b[T * D];
    int ok = 0;
    kv_status st = kv_trace_rows_direct_ok(t, KV_K, 1, &ok, &err);
    CHECK(st == KV_OK && ok, "padded: direct_ok: %d %s", (int)st, st ? err.msg : "");
    if (st == KV_OK && ok) {
        st = kv_trace_read_rows_f16_direct(t, KV_K, 0, 1, 1, 0, T, a, &err);
        kv_status sh = kv_trace_read_rows_f16(t, KV_K, 0, 1, 1, 0, T, b, &err);
        CHECK(st == KV_OK && sh == KV_OK && !memcmp(a, b, sizeof a) && is_written(a, KV_K, 0, 1, 1, 0, T),
              "padded: direct %d, H5Dread %d, bytes %s", (int)st, (int)sh, memcmp(a, b, sizeof a) ? "differ" : "equal");
    }
    kv_trace_close(t);
    unlink(path);
}

int main(void)
{
    const char *dir = getenv("KV_TMP") ? getenv("KV_TMP") : "/tmp";
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    static const variant vs[] = {
        {"none_rows", {1, 1, 64, 24}, 0, 1, 0},
        {"none_dsplit", {1, 1, 40, 16}, 0, 1, 0},
        {"none_seqs_heads", {2, 3, 50, 24}, 0, 1, 0},
        {"shuffle_deflate_dsplit", {1, 1, 48, 16}, F_SHUF | F_DEFL, 1, 0},
        {"deflate_heads", {1, 3, 37, 24}, F_DEFL, 1, 0},
        {"shuffle_seqs", {2, 1, 100, 8}, F_SHUF, 1, 0},
        {"writer_default", {0, 0, 0, 0}, F_WRITER, 1, 0},
        {"userblock_deflate", {1, 1, 48, 16}, F_SHUF | F_DEFL, 1, 1},
        {"userblock_none", {1, 1, 64, 24}, 0, 1, 1},
        {"fletcher32", {1, 1, 64, 24}, F_FLETCHER | F_SHUF | F_DEFL, 0, 0},
        {"contiguous", {0, 0, 0, 0}, F_CONTIG, 0, 0},
    };
    for (size_t i = 0; i < sizeof vs / sizeof *vs; i++)
        check_variant(dir, &vs[i]);
    check_corrupt(dir);
    check_padded(dir);
    printf("%d checks, %d failed\n", checks, fails);
    return fails ? 1 : 0;
}
