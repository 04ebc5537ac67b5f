/* kv_file_sha256 against sha256sum (coreutils, an independent implementation) on lengths
 * around the 55/56/64-byte padding boundaries and a 1 MiB file, plus the FIPS 180-4 "abc"
 * vector; kv_atomic_* (commit renames, discard leaves nothing); the digest cache and the
 * digest passed between processes (kv_file_sha256_known). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kvtrace.h"

static int fails = 0, checks = 0;

static int sha256sum(const char *path, char out[65])
{
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "sha256sum '%s'", path);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    int ok = fscanf(p, "%64s", out) == 1;
    return pclose(p) == 0 && ok ? 0 : -1;
}

static void expect(const char *what, int cond)
{
    checks++;
    if (!cond) {
        fails++;
        printf("FAIL %s\n", what);
    }
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

/* The digest cache (kv_file_sha256_cached): a hit returns what a fresh hash returns; a
 * changed size or mtime misses; a corrupt or foreign entry is not trusted; an unwritable
 * cache directory still gives the digest. Hits are observed through *hit and through a
 * forged entry (right key, wrong digest), which only a lookup by key would return. */
static void cache_tests(const char *dir)
{
    char path[4200], cdir[4200], entry[4400], got[65], fresh[65];
    kv_error err = {0};
    int hit = -1;
    snprintf(path, sizeof path, "%s/trace.bin", dir);
    snprintf(cdir, sizeof cdir, "%s/cache/kvtrace", dir);
    expect("cache: write test file", write_file(path, "some trace bytes\n") == 0);
    expect("cache: fresh hash", kv_file_sha256(path, fresh, &err) == KV_OK);
    expect("cache: first call misses and hashes",
           kv_file_sha256_cached(path, cdir, got, &hit, &err) == KV_OK && hit == 0 && !strcmp(got, fresh));
    expect("cache: second call hits with the same digest",
           kv_file_sha256_cached(path, cdir, got, &hit, &err) == KV_OK && hit == 1 && !strcmp(got, fresh));
    struct stat st;
    stat(path, &st);
    snprintf(entry, sizeof entry, "%s/sha256-%llu-%llu", cdir, (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
    /* a forged digest under the right key is what a hit returns: the lookup is by key */
    char line[512];
    FILE *f = fopen(entry, "rb");
    size_t n = f ? fread(line, 1, sizeof line - 1, f) : 0;
    if (f)
        fclose(f);
    line[n] = 0;
    expect("cache: entry holds the digest", n > 65 && !strncmp(line + n - 65, fresh, 64));
    char forged[512];
    snprintf(forged, sizeof forged, "%.*s%s\n", (int)(n - 65), line,
             "0000000000000000000000000000000000000000000000000000000000000000");
    write_file(entry, forged);
    expect("cache: a well-formed entry with the file's key is used",
           kv_file_sha256_cached(path, cdir, got, &hit, &err) == KV_OK && hit == 1 && got[0] == '0' && got[63] == '0');
    /* corrupt entries: not trusted, re-hashed, rewritten */
    const char *bad[] = { "", "garbage\n", "kvtrace-sha256-cache 1 1 2 3 4 5 zz\n" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(entry, bad[i]);
        expect("cache: a corrupt entry is ignored",
               kv_file_sha256_cached(path, cdir, got, &hit, &err) == KV_OK && hit == 0 && !strcmp(got, fresh));
    }
    snprintf(forged, sizeof forged, "%.*sXYZ\n", (int)(n - 65), line);      /* right key, digest not hex */
    write_file(entry, forged);
    expect("cache: a non-hex digest is ignored",
           kv_file_sha256_cached(path, cdir, got, &hit, &err) == KV_OK && hit == 0 && !strcmp(got, fresh));
    expect("cache: rewritten after a corrupt entry",
           kv_file_sha256_cached(path, cdir, got, &hit, &err) == KV_OK && hit == 1 && !strcmp(got, fresh));
    /* the file changes: size (appended), then mtime alone (same bytes, utimensat) */
    f = fopen(path, "ab");
    fputs("more", f);
    fclose(f);
    char fresh2[65];
    kv_file_sha256(path, fresh2, &err);
    expect("cache: a size change misses",
           kv_file_sha256_cached(path, cdir, got, &hit, &err) == KV_OK && hit == 0 && !strcmp(got, fresh2));
    struct timespec ts[2] = { { 0, UTIME_OMIT }, { 1000000000, 123 } };
    utimensat(AT_FDCWD, path, ts, 0);
    expect("cache: an mtime change misses",
           kv_file_sha256_cached(path, cdir, got, &hit, &err) == KV_OK && hit == 0 && !strcmp(got, fresh2));
    expect("cache: and is cached again",
           kv_file_sha256_cached(path, cdir, got, &hit, &err) == KV_OK && hit == 1 && !strcmp(got, fresh2));
    /* no cache dir (NULL) and an unwritable one: the digest all the same */
    expect("cache: NULL dir = plain hash",
           kv_file_sha256_cached(path, NULL, got, &hit, &err) == KV_OK && hit == 0 && !strcmp(got, fresh2));
    char ro[4200], rodir[4300];
    snprintf(ro, sizeof ro, "%s/ro", dir);
    snprintf(rodir, sizeof rodir, "%s/kvtrace", ro);
    mkdir(ro, 0500);
    expect("cache: read-only cache dir still hashes",
           kv_file_sha256_cached(path, rodir, got, &hit, &err) == KV_OK && hit == 0 && !strcmp(got, fresh2));
    expect("cache: ... twice (nothing was stored)",
           kv_file_sha256_cached(path, rodir, got, &hit, &err) == KV_OK && !strcmp(got, fresh2));
    expect("cache: missing file is an i/o error",
           kv_file_sha256_cached("/nonexistent/x.h5", cdir, got, &hit, &err) == KV_ERR_IO);
    /* the default directory */
    char buf[4200];
    setenv("XDG_CACHE_HOME", "/x/y", 1);
    expect("cache dir: XDG_CACHE_HOME/kvtrace", kv_hash_cache_dir(buf, sizeof buf) && !strcmp(buf, "/x/y/kvtrace"));
    setenv("XDG_CACHE_HOME", "relative", 1);
    setenv("HOME", "/h", 1);
    expect("cache dir: relative XDG ignored -> HOME/.cache/kvtrace",
           kv_hash_cache_dir(buf, sizeof buf) && !strcmp(buf, "/h/.cache/kvtrace"));
    setenv("KVTRACE_HASH_CACHE", "0", 1);
    expect("cache dir: KVTRACE_HASH_CACHE=0 disables", kv_hash_cache_dir(buf, sizeof buf) == NULL);
    unsetenv("KVTRACE_HASH_CACHE");
    rmdir(ro);
    remove(entry);
    rmdir(cdir);
    snprintf(buf, sizeof buf, "%s/cache", dir);
    rmdir(buf);
    unlink(path);
}

/* kv_file_sha256_known: the identity it reports is stat's; a known digest whose identity is
 * the file's is returned without reading (a forged digest shows through, as only a match by
 * identity would return it); any identity field that differs, no identity, a digest that is
 * not hex, or a file changed since, and the file is hashed. */
static void known_tests(const char *dir)
{
    char path[4200], cdir[4200], fresh[65], zeros[65];
    kv_error err = {0};
    kv_file_digest d, k, d2;
    int how = -1;
    memset(zeros, '0', 64);
    zeros[64] = 0;
    snprintf(path, sizeof path, "%s/known.bin", dir);
    snprintf(cdir, sizeof cdir, "%s/kcache", dir);
    expect("known: write test file", write_file(path, "the bytes of a trace\n") == 0);
    expect("known: fresh hash", kv_file_sha256(path, fresh, &err) == KV_OK);
    struct stat st;
    stat(path, &st);
    expect("known: NULL known hashes",
           kv_file_sha256_known(path, NULL, NULL, &d, &how, &err) == KV_OK && how == KV_SHA256_HASHED && !strcmp(d.hex, fresh));
    expect("known: the identity is stat's (inode, size, mtime ns, ctime ns)",
           d.have_id && d.ino == (unsigned long long)st.st_ino && d.size == (unsigned long long)st.st_size &&
           d.mtime_ns == (unsigned long long)st.st_mtim.tv_sec * 1000000000ull + (unsigned long long)st.st_mtim.tv_nsec &&
           d.ctime_ns == (unsigned long long)st.st_ctim.tv_sec * 1000000000ull + (unsigned long long)st.st_ctim.tv_nsec);
    k = d;
    memcpy(k.hex, zeros, 65);
    expect("known: the file's identity: the known digest, not read",
           kv_file_sha256_known(path, NULL, &k, &d2, &how, &err) == KV_OK && how == KV_SHA256_KNOWN && !strcmp(d2.hex, zeros) &&
           d2.have_id && d2.ino == d.ino && d2.ctime_ns == d.ctime_ns);
    expect("known: ... before the cache too",
           kv_file_sha256_known(path, cdir, &k, &d2, &how, &err) == KV_OK && how == KV_SHA256_KNOWN && !strcmp(d2.hex, zeros));
    unsigned long long *field[4] = { &k.ino, &k.size, &k.mtime_ns, &k.ctime_ns };
    const char *name[4] = { "inode", "size", "mtime", "ctime" };
    for (int i = 0; i < 4; i++) {
        char what[128];
        snprintf(what, sizeof what, "known: another %s: hashed", name[i]);
        (*field[i])++;
        expect(what, kv_file_sha256_known(path, NULL, &k, &d2, &how, &err) == KV_OK && how == KV_SHA256_HASHED && !strcmp(d2.hex, fresh));
        (*field[i])--;
    }
    k.have_id = 0;
    expect("known: no identity: hashed",
           kv_file_sha256_known(path, NULL, &k, &d2, &how, &err) == KV_OK && how == KV_SHA256_HASHED && !strcmp(d2.hex, fresh));
    k.have_id = 1;
    k.hex[5] = 'Z';
    expect("known: a digest that is not hex: hashed",
           kv_file_sha256_known(path, NULL, &k, &d2, &how, &err) == KV_OK && how == KV_SHA256_HASHED && !strcmp(d2.hex, fresh));
    k.hex[5] = '0';
    expect("known: through the cache: hashed once, then cached",
           kv_file_sha256_known(path, cdir, NULL, &d2, &how, &err) == KV_OK && how == KV_SHA256_HASHED && !strcmp(d2.hex, fresh) &&
           kv_file_sha256_known(path, cdir, NULL, &d2, &how, &err) == KV_OK && how == KV_SHA256_CACHED && !strcmp(d2.hex, fresh) &&
           d2.have_id && d2.ino == d.ino && d2.size == d.size && d2.mtime_ns == d.mtime_ns && d2.ctime_ns == d.ctime_ns);
    FILE *f = fopen(path, "ab");
    fputs("more", f);
    fclose(f);
    kv_file_sha256(path, fresh, &err);
    expect("known: the file changed since: hashed",
           kv_file_sha256_known(path, NULL, &k, &d2, &how, &err) == KV_OK && how == KV_SHA256_HASHED && !strcmp(d2.hex, fresh) &&
           d2.size == d.size + 4);
    expect("known: missing file is an i/o error", kv_file_sha256_known("/nonexistent/x.h5", NULL, &k, &d2, &how, &err) == KV_ERR_IO);
    char entry[4400];
    snprintf(entry, sizeof entry, "%s/sha256-%llu-%llu", cdir, (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
    remove(entry);
    rmdir(cdir);
    unlink(path);
}

int main(void)
{
    char dir[4096];
    const char *base = getenv("KV_TMP");
    snprintf(dir, sizeof dir, "%s/sha.XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(dir))
        return 1;
    char path[4200], got[65], want[65];
    kv_error err = {0};
    int have_tool = 1;
    size_t lens[] = {0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, 1 << 20};
    unsigned seed = 12345;
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        snprintf(path, sizeof path, "%s/f%zu", dir, lens[i]);
        FILE *f = fopen(path, "wb");
        for (size_t j = 0; j < lens[i]; j++) {
            seed = seed * 1103515245u + 12345u;
            fputc((int)(seed >> 16) & 0xff, f);
        }
        fclose(f);
        checks++;
        if (kv_file_sha256(path, got, &err) != KV_OK) {
            fails++;
            printf("FAIL %s\n", err.msg);
            continue;
        }
        if (sha256sum(path, want) != 0) {
            have_tool = 0;
            continue;
        }
        if (strcmp(got, want)) {
            fails++;
            printf("FAIL length %zu: %s, sha256sum %s\n", lens[i], got, want);
        }
        unlink(path);
    }
    /* FIPS 180-4 example: "abc" */
    snprintf(path, sizeof path, "%s/abc", dir);
    FILE *f = fopen(path, "wb");
    fputs("abc", f);
    fclose(f);
    checks++;
    if (kv_file_sha256(path, got, &err) != KV_OK ||
        strcmp(got, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")) {
        fails++;
        printf("FAIL abc: %s\n", got);
    }
    unlink(path);
    checks++;
    snprintf(path, sizeof path, "%s/missing", dir);
    if (kv_file_sha256(path, got, &err) != KV_ERR_IO || !strstr(err.msg, path)) {
        fails++;
        printf("FAIL missing file: %s\n", err.msg);
    }

    /* atomic output */
    kv_atomic a;
    snprintf(path, sizeof path, "%s/out.csv", dir);
    checks++;
    if (kv_atomic_open(&a, path, &err) != KV_OK) {
        fails++;
        printf("FAIL atomic open: %s\n", err.msg);
    } else {
        fputs("x,y\n1,2\n", (FILE *)a.fp);
        struct stat sb;
        if (stat(path, &sb) == 0) {
            fails++;
            printf("FAIL final name exists before commit\n");
        }
        if (kv_atomic_commit(&a, &err) != KV_OK || stat(path, &sb) != 0 || sb.st_size != 8 || stat(a.tmp, &sb) == 0) {
            fails++;
            printf("FAIL atomic commit: %s\n", err.msg);
        }
        unlink(path);
    }
    checks++;
    if (kv_atomic_open(&a, path, &err) == KV_OK) {
        fputs("partial", (FILE *)a.fp);
        kv_atomic_discard(&a);
        struct stat sb;
        if (stat(path, &sb) == 0 || stat(a.tmp, &sb) == 0) {
            fails++;
            printf("FAIL discard left a file\n");
        }
    } else {
        fails++;
    }
    cache_tests(dir);
    known_tests(dir);
    rmdir(dir);
    if (!have_tool)
        printf("note: sha256sum not available; only the FIPS vector was checked\n");
    printf("%d checks, %d failures\n", checks, fails);
    return fails ? 1 : 0;
}
