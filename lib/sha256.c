/* SHA-256 (FIPS 180-4) of a file's bytes, for results provenance. Written from the
 * standard; tests/unit/test_sha256.c compares it with sha256sum. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kv_internal.h"

typedef struct sha256 {
    uint32_t h[8];
    uint64_t nbytes;
    unsigned char buf[64];
    size_t nbuf;
} sha256;

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static inline uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(sha256 *c, const unsigned char *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3];
    uint32_t e = c->h[4], f = c->h[5], g = c->h[6], h = c->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t S1 = ror(e, 6) ^ ror(e, 11) ^ ror(e, 25);
        uint32_t ch = (e & f) ^ (~e & g);
        uint32_t t1 = h + S1 + ch + K[i] + w[i];
        uint32_t S0 = ror(a, 2) ^ ror(a, 13) ^ ror(a, 22);
        uint32_t maj = (a & b) ^ (a & cc) ^ (b & cc);
        uint32_t t2 = S0 + maj;
        h = g; g = f; f = e; e = d + t1;
        d = cc; cc = b; b = a; a = t1 + t2;
    }
    c->h[0] += a; c->h[1] += b; c->h[2] += cc; c->h[3] += d;
    c->h[4] += e; c->h[5] += f; c->h[6] += g; c->h[7] += h;
}

static void sha256_init(sha256 *c)
{
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, h0, sizeof h0);
    c->nbytes = 0;
    c->nbuf = 0;
}

static void sha256_update(sha256 *c, const unsigned char *p, size_t n)
{
    c->nbytes += n;
    if (c->nbuf) {
        size_t take = 64 - c->nbuf < n ? 64 - c->nbuf : n;
        memcpy(c->buf + c->nbuf, p, take);
        c->nbuf += take; p += take; n -= take;
        if (c->nbuf == 64) {
            sha256_block(c, c->buf);
            c->nbuf = 0;
        }
    }
    for (; n >= 64; p += 64, n -= 64)
        sha256_block(c, p);
    if (n) {
        memcpy(c->buf, p, n);
        c->nbuf = n;
    }
}

static void sha256_final(sha256 *c, unsigned char out[32])
{
    uint64_t bits = c->nbytes * 8;
    unsigned char pad[72] = {0x80};
    size_t npad = (c->nbuf < 56 ? 56 : 120) - c->nbuf;
    for (int i = 0; i < 8; i++)
        pad[npad + i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(c, pad, npad + 8);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++)
            out[4 * i + j] = (unsigned char)(c->h[i] >> (24 - 8 * j));
}

/* The digest of an open stream. */
static kv_status sha256_stream(FILE *f, const char *path, char hex[65], unsigned long long *nbytes, kv_error *err)
{
    sha256 c;
    sha256_init(&c);
    unsigned char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        sha256_update(&c, buf, n);
    if (ferror(f))
        return kverr_set(err, KV_ERR_IO, "%s: file: read error", path);
    if (nbytes)
        *nbytes = c.nbytes;
    unsigned char d[32];
    sha256_final(&c, d);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", d[i]);
    return KV_OK;
}

kv_status kv_file_sha256(const char *path, char hex[65], kv_error *err)
{
    if (!path || !hex)
        return kverr_set(err, KV_ERR_INVALID, "kv_file_sha256: NULL argument");
    FILE *f = fopen(path, "rb");
    if (!f)
        return kverr_set(err, KV_ERR_IO, "%s: file: cannot open: %s", path, strerror(errno));
    kv_status st = sha256_stream(f, path, hex, NULL, err);
    fclose(f);
    return st;
}

/* ---- the digest cache ------------------------------------------------------------------
 *
 * Why a cache keyed by the file's identity, and not a file beside the trace: traces live in
 * read-only and shared directories, a sidecar goes stale when the trace is copied or
 * rewritten in place, and it would be one more file to carry. The key is what the kernel
 * says about the file: (st_dev, st_ino, st_size, st_mtim, st_ctim) to the nanosecond. Any
 * write changes mtime and ctime, and ctime cannot be set by a user (utimensat sets only
 * atime/mtime), so a rewritten or replaced file misses; a copy is a new inode and misses.
 * An entry is one line, "kvtrace-sha256-cache 1 DEV INO SIZE MTIME_NS CTIME_NS HEX", in
 * DIR/sha256-DEV-INO: it is trusted only when every key field equals the file's and the
 * digest is 64 lowercase hex digits; anything else (truncated, edited, another version) is
 * a miss and is overwritten. Entries are written to a temporary name and renamed
 * (kv_atomic); failing to write (read-only or missing cache directory) is not an error: the
 * digest computed is returned all the same. The key is taken with fstat on the descriptor
 * that is hashed, before and after hashing; an entry is stored only when the two agree (a
 * file written while it was hashed is not cached). */

typedef struct hkey { unsigned long long dev, ino, size, mtime, ctime; } hkey;

static void hkey_of(const struct stat *st, hkey *k)
{
    k->dev = (unsigned long long)st->st_dev;
    k->ino = (unsigned long long)st->st_ino;
    k->size = (unsigned long long)st->st_size;
    k->mtime = (unsigned long long)st->st_mtim.tv_sec * 1000000000ull + (unsigned long long)st->st_mtim.tv_nsec;
    k->ctime = (unsigned long long)st->st_ctim.tv_sec * 1000000000ull + (unsigned long long)st->st_ctim.tv_nsec;
}

static int hkey_line(const hkey *k, const char *hex, char *line, size_t len)
{
    int n = snprintf(line, len, "kvtrace-sha256-cache 1 %llu %llu %llu %llu %llu %s\n", k->dev, k->ino, k->size,
                     k->mtime, k->ctime, hex);
    return n > 0 && (size_t)n < len ? 0 : -1;
}

static int hex_ok(const char *h)
{
    for (int i = 0; i < 64; i++)
        if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f')))
            return 0;
    return h[64] == 0;
}

/* 1 and hex filled when entry_path holds the entry of exactly this key. */
static int cache_lookup(const char *entry_path, const hkey *k, char hex[65])
{
    char line[256], want[256], got[65];
    FILE *f = fopen(entry_path, "rb");
    if (!f)
        return 0;
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = 0;
    /* the digest is the line's last field; the line must be exactly the one this key writes */
    if (n < 66 || line[n - 1] != '\n')
        return 0;
    memcpy(got, line + n - 65, 64);
    got[64] = 0;
    if (!hex_ok(got) || hkey_line(k, got, want, sizeof want) || strcmp(want, line))
        return 0;
    memcpy(hex, got, 65);
    return 1;
}

/* line into dir/name... as entry_path: atomically (temporary name, rename), the directory
 * and its parent (XDG_CACHE_HOME or ~/.cache) created private to the user; failing to write
 * (read-only or missing cache directory) is not an error. */
static void cache_store_line(const char *dir, const char *entry_path, const char *line)
{
    char parent[4096];
    kv_atomic a;
    kv_error e2;
    snprintf(parent, sizeof parent, "%s", dir);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = 0;
        mkdir(parent, 0700);
    }
    mkdir(dir, 0700);
    if (kv_atomic_open(&a, entry_path, &e2) != KV_OK)
        return;                                     /* read-only or absent: not an error */
    if (fputs(line, (FILE *)a.fp) == EOF) {
        kv_atomic_discard(&a);
        return;
    }
    kv_atomic_commit(&a, &e2);
}

static void cache_store(const char *dir, const char *entry_path, const hkey *k, const char *hex)
{
    char line[256];
    if (hkey_line(k, hex, line, sizeof line))
        return;
    cache_store_line(dir, entry_path, line);
}

/* The path dir/name into buf; -1 when a name is not one plain file name or it does not fit. */
static int record_path(const char *dir, const char *name, char *buf, size_t len)
{
    if (!dir || !*dir || !name || !*name || strchr(name, '/') || name[0] == '.')
        return -1;
    int n = snprintf(buf, len, "%s/%s", dir, name);
    return n > 0 && (size_t)n < len ? 0 : -1;
}

int kv_cache_record_has(const char *dir, const char *name, const char *line)
{
    char path[4200], got[512];
    size_t want = line ? strlen(line) : 0;
    if (!want || want >= sizeof got || record_path(dir, name, path, sizeof path))
        return 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    size_t n = fread(got, 1, sizeof got, f);       /* one byte more than a match has: longer misses */
    fclose(f);
    return n == want && !memcmp(got, line, want);
}

void kv_cache_record_put(const char *dir, const char *name, const char *line)
{
    char path[4200];
    if (!line || !*line || record_path(dir, name, path, sizeof path))
        return;
    cache_store_line(dir, path, line);
}

const char *kv_hash_cache_dir(char *buf, size_t len)
{
    const char *off = getenv("KVTRACE_HASH_CACHE");
    if (off && !strcmp(off, "0"))
        return NULL;
    const char *x = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int n;
    if (x && x[0] == '/')                           /* XDG: relative paths are ignored */
        n = snprintf(buf, len, "%s/kvtrace", x);
    else if (home && *home)
        n = snprintf(buf, len, "%s/.cache/kvtrace", home);
    else
        return NULL;
    return n > 0 && (size_t)n < len ? buf : NULL;
}

static int same_id(const kv_file_digest *a, const hkey *k)
{
    return a->have_id && a->ino == k->ino && a->size == k->size && a->mtime_ns == k->mtime && a->ctime_ns == k->ctime;
}

kv_status kv_file_sha256_known(const char *path, const char *cache_dir, const kv_file_digest *known,
                               kv_file_digest *d, int *how, kv_error *err)
{
    if (how)
        *how = KV_SHA256_HASHED;
    if (!path || !d)
        return kverr_set(err, KV_ERR_INVALID, "kv_file_sha256_known: NULL argument");
    memset(d, 0, sizeof *d);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return kverr_set(err, KV_ERR_IO, "%s: file: cannot open: %s", path, strerror(errno));
    struct stat st0, st1;
    if (fstat(fd, &st0) || !S_ISREG(st0.st_mode)) {         /* not a plain file: no identity to key */
        FILE *f = fdopen(fd, "rb");
        if (!f) {
            close(fd);
            return kverr_set(err, KV_ERR_IO, "%s: file: cannot open: %s", path, strerror(errno));
        }
        kv_status s = sha256_stream(f, path, d->hex, &d->size, err);
        fclose(f);
        return s;
    }
    hkey k0, k1;
    hkey_of(&st0, &k0);
    if (known && same_id(known, &k0) && hex_ok(known->hex)) {  /* the version another process hashed */
        close(fd);
        *d = *known;
        if (how)
            *how = KV_SHA256_KNOWN;
        return KV_OK;
    }
    char entry[4200];
    int use = 0;
    if (cache_dir) {
        int n = snprintf(entry, sizeof entry, "%s/sha256-%llu-%llu", cache_dir, k0.dev, k0.ino);
        use = n > 0 && (size_t)n < sizeof entry;
    }
    if (use && cache_lookup(entry, &k0, d->hex)) {
        close(fd);
        if (how)
            *how = KV_SHA256_CACHED;
    } else {
        FILE *f = fdopen(fd, "rb");
        if (!f) {
            close(fd);
            return kverr_set(err, KV_ERR_IO, "%s: file: cannot open: %s", path, strerror(errno));
        }
        kv_status s = sha256_stream(f, path, d->hex, &d->size, err);
        int same = fstat(fd, &st1) == 0;
        fclose(f);
        if (s != KV_OK)
            return s;
        hkey_of(&st1, &k1);
        if (!same || memcmp(&k0, &k1, sizeof k0))
            return KV_OK;                   /* written while hashed: no identity, not cached */
        if (use)
            cache_store(cache_dir, entry, &k0, d->hex);
    }
    d->have_id = 1;
    d->ino = k0.ino;
    d->size = k0.size;
    d->mtime_ns = k0.mtime;
    d->ctime_ns = k0.ctime;
    return KV_OK;
}

kv_status kv_file_sha256_cached(const char *path, const char *cache_dir, char hex[65], int *hit, kv_error *err)
{
    if (hit)
        *hit = 0;
    if (!path || !hex)
        return kverr_set(err, KV_ERR_INVALID, "kv_file_sha256_cached: NULL argument");
    kv_file_digest d;
    int how;
    kv_status s = kv_file_sha256_known(path, cache_dir, NULL, &d, &how, err);
    if (s != KV_OK)
        return s;
    memcpy(hex, d.hex, 65);
    if (hit)
        *hit = how == KV_SHA256_CACHED;
    return KV_OK;
}
