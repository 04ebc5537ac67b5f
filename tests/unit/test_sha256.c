/* kv_file_sha256 against sha256sum (coreutils, an independent implementation) on lengths
 * around the 55/56/64-byte padding boundaries and a 1 MiB file, plus the FIPS 180-4 "abc"
 * vector; and kv_atomic_* (commit renames, discard leaves nothing). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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
    rmdir(dir);
    if (!have_tool)
        printf("note: sha256sum not available; only the FIPS vector was checked\n");
    printf("%d checks, %d failures\n", checks, fails);
    return fails ? 1 : 0;
}
