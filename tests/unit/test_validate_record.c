/* kv_open_opts.validated: a record that these bytes passed the full validation lets the
 * validating child skip reading the chunks, only for the file version the digest belongs to.
 *
 * Cases (traces/sample_qa.h5, copied): no record: full (kv_trace_validation 1); the file's own
 * digest: metadata only (2), the same description and rows; the digest with its ctime, mtime,
 * size or inode off by one (another version of the file): full; a digest without identity:
 * full; a file that is not HDF5 with its own digest: the same one-line error as without.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvtrace.h"
#include "trace_testhelp.h"

/* Opens path with opts.validated = d; returns kv_trace_validation (-1: the open failed, the
 * message in msg). row: the first q row of (0, 0, 0) when not NULL. */
static int open_how(const char *path, const kv_file_digest *d, float *row, char *msg, size_t mlen)
{
    kv_open_opts o;
    memset(&o, 0, sizeof o);
    o.validated = d;
    kv_trace *t = NULL;
    kv_error err = {0};
    if (kv_trace_open(path, &o, &t, &err) != KV_OK) {
        snprintf(msg, mlen, "%s", err.msg);
        return -1;
    }
    int how = kv_trace_validation(t);
    if (row) {
        const kv_info *in = kv_trace_info(t);
        float *h = malloc(in->n_tok * in->head_dim * sizeof *h);
        CHECK(h && kv_trace_read_head(t, KV_Q, 0, 0, 0, h, &err) == KV_OK, "read: %s", err.msg);
        if (h) memcpy(row, h, in->head_dim * sizeof *row);
        CHECK(in->n_layers == 4 && in->n_seq == 6, "description: L=%zu S=%zu", in->n_layers, in->n_seq);
        free(h);
    }
    kv_trace_close(t);
    return how;
}

int main(void)
{
    const char *root = getenv("KV_ROOT") ? getenv("KV_ROOT") : ".";
    const char *tmp = getenv("KV_TMP") ? getenv("KV_TMP") : "/tmp";
    char src[4096], path[4200], bad[4200], msg[1200], msg2[1200];
    snprintf(src, sizeof src, "%s/traces/sample_qa.h5", root);
    snprintf(path, sizeof path, "%s/vrec_%ld.h5", tmp, (long)getpid());
    snprintf(bad, sizeof bad, "%s/vrec_%ld.bad", tmp, (long)getpid());
    if (copy_file(src, path) != 0) {
        printf("FAIL: cannot copy %s to %s\n", src, path);
        return 1;
    }
    kv_file_digest d;
    kv_error err = {0};
    int how = -1;
    CHECK(kv_file_sha256_known(path, NULL, NULL, &d, &how, &err) == KV_OK && d.have_id, "digest: %s", err.msg);

    float full_row[512] = {0}, meta_row[512] = {0};
    CHECK(open_how(path, NULL, full_row, msg, sizeof msg) == 1, "no record: want full: %s", msg);
    CHECK(open_how(path, &d, meta_row, msg, sizeof msg) == 2, "own digest: want metadata only: %s", msg);
    CHECK(!memcmp(full_row, meta_row, 64 * sizeof(float)), "rows differ between full and metadata-only opens");

    /* another version of the file: each identity field off by one */
    unsigned long long *field[4] = {&d.ino, &d.size, &d.mtime_ns, &d.ctime_ns};
    const char *fname[4] = {"inode", "size", "mtime", "ctime"};
    for (int i = 0; i < 4; i++) {
        kv_file_digest o = d;
        *(field[i] - &d.ino + &o.ino) += 1;
        CHECK(open_how(path, &o, NULL, msg, sizeof msg) == 1, "%s differs: want full", fname[i]);
    }
    kv_file_digest n = d;
    n.have_id = 0;
    CHECK(open_how(path, &n, NULL, msg, sizeof msg) == 1, "digest without identity: want full");

    /* not HDF5, with its own digest: the full validation's message */
    FILE *f = fopen(bad, "wb");
    if (f) { fputs("not an HDF5 file at all\n", f); fclose(f); }
    kv_file_digest db;
    CHECK(kv_file_sha256_known(bad, NULL, NULL, &db, &how, &err) == KV_OK, "digest: %s", err.msg);
    CHECK(open_how(bad, NULL, NULL, msg, sizeof msg) == -1 && open_how(bad, &db, NULL, msg2, sizeof msg2) == -1,
          "a non-HDF5 file opened");
    CHECK(!strcmp(msg, msg2) && strstr(msg, "not an HDF5 file"), "messages differ: '%s' vs '%s'", msg, msg2);

    unlink(path);
    unlink(bad);
    printf("%d/%d checks passed\n", checks - fails, checks);
    return fails ? 1 : 0;
}
