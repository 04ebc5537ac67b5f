/* Atomic small-file output: write "<path>.tmp.<pid>", fsync, rename onto path. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kv_internal.h"

kv_status kv_atomic_open(kv_atomic *a, const char *path, kv_error *err)
{
    if (!a || !path || !*path)
        return kverr_set(err, KV_ERR_INVALID, "kv_atomic_open: NULL or empty path");
    memset(a, 0, sizeof *a);
    if (strlen(path) >= sizeof a->path)
        return kverr_set(err, KV_ERR_INVALID, "%s: path too long", path);
    snprintf(a->path, sizeof a->path, "%s", path);
    snprintf(a->tmp, sizeof a->tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(a->tmp, "w");
    if (!f)
        return kverr_set(err, KV_ERR_IO, "%s: cannot create temporary file: %s", a->tmp, strerror(errno));
    a->fp = f;
    return KV_OK;
}

kv_status kv_atomic_commit(kv_atomic *a, kv_error *err)
{
    if (!a || !a->fp)
        return kverr_set(err, KV_ERR_INVALID, "kv_atomic_commit: not open");
    FILE *f = a->fp;
    a->fp = NULL;
    int bad = fflush(f) != 0 || ferror(f) || fsync(fileno(f)) != 0;
    int e = errno;
    if (fclose(f) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    if (bad) {
        unlink(a->tmp);
        return kverr_set(err, KV_ERR_IO, "%s: write failed: %s", a->path, strerror(e));
    }
    if (rename(a->tmp, a->path) != 0) {
        e = errno;
        unlink(a->tmp);
        return kverr_set(err, KV_ERR_IO, "%s: rename from %s failed: %s", a->path, a->tmp, strerror(e));
    }
    return KV_OK;
}

void kv_atomic_discard(kv_atomic *a)
{
    if (!a)
        return;
    if (a->fp) {
        fclose(a->fp);
        a->fp = NULL;
        unlink(a->tmp);
    }
}
