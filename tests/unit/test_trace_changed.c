/* A trace changed between validation and reading is refused, never read (issue 13).
 *
 * kv_trace_open validates in a child, then opens the file in this process; the file this
 * process opens must be the one the child read (inode, size, modification time), and it is
 * re-checked before every read. kv_open_opts.test_after_validate changes the file in the
 * window between the two. Cases: unchanged (opens, reads); one byte appended; mtime moved
 * by one second; replaced by a byte-identical copy with the same mtime (only the inode
 * differs); and appended to after a successful open (the next read is refused).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvtrace.h"
#include "trace_testhelp.h"

static char g_path[4096], g_copy[4200];

static void append_byte(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND);
    if (fd >= 0) {
        if (write(fd, "", 1) != 1) perror("write");
        close(fd);
    }
}

static void touch_later(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0) return;
    struct timespec ts[2] = {sb.st_atim, sb.st_mtim};
    ts[1].tv_sec += 1;
    utimensat(AT_FDCWD, path, ts, 0);
}

static void replace_same(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0 || copy_file(path, g_copy) != 0) return;
    struct timespec ts[2] = {sb.st_atim, sb.st_mtim};
    utimensat(AT_FDCWD, g_copy, ts, 0);          /* same bytes, size and mtime: a new inode */
    rename(g_copy, path);
}

static void nothing(const char *path)
{
    (void)path;
}

static void fresh(const char *src)
{
    unlink(g_path);
    if (copy_file(src, g_path) != 0) {
        printf("FAIL: cannot copy %s to %s\n", src, g_path);
        exit(1);
    }
}

int main(void)
{
    const char *root = getenv("KV_ROOT") ? getenv("KV_ROOT") : ".";
    const char *tmp = getenv("KV_TMP") ? getenv("KV_TMP") : "/tmp";
    char src[4096];
    snprintf(src, sizeof src, "%s/traces/sample_qa.h5", root);
    snprintf(g_path, sizeof g_path, "%s/changed_%ld.h5", tmp, (long)getpid());
    snprintf(g_copy, sizeof g_copy, "%s.copy", g_path);

    struct { const char *name; void (*hook)(const char *); int refused; } cases[] = {
        {"unchanged", nothing, 0},
        {"one byte appended", append_byte, 1},
        {"mtime + 1 s", touch_later, 1},
        {"replaced by an identical copy (new inode)", replace_same, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fresh(src);
        kv_open_opts o = {.test_after_validate = cases[i].hook};
        kv_trace *t = NULL;
        kv_error err = {0};
        kv_status st = kv_trace_open(g_path, &o, &t, &err);
        if (cases[i].refused) {
            CHECK(st == KV_ERR_IO && t == NULL, "%s: status %d (want KV_ERR_IO), %s", cases[i].name, (int)st, err.msg);
            CHECK(strstr(err.msg, "changed since it was validated") && strstr(err.msg, g_path),
                  "%s: message %s", cases[i].name, err.msg);
        } else {
            CHECK(st == KV_OK, "%s: %s", cases[i].name, err.msg);
            if (st == KV_OK) {
                const kv_info *in = kv_trace_info(t);
                float *row = malloc(in->n_tok * in->head_dim * sizeof *row);
                CHECK(row && kv_trace_read_head(t, KV_Q, 0, 0, 0, row, &err) == KV_OK, "%s: read: %s",
                      cases[i].name, err.msg);
                CHECK(in->n_layers == 4 && in->n_seq == 6 && !strcmp(in->architecture, "kvtrace-ref"),
                      "%s: description from the child: L=%zu S=%zu arch=%s", cases[i].name, in->n_layers,
                      in->n_seq, in->architecture);
                free(row);
            }
        }
        kv_trace_close(t);
    }

    /* changed after the open: the next read is refused */
    fresh(src);
    kv_trace *t = NULL;
    kv_error err = {0};
    CHECK(kv_trace_open(g_path, NULL, &t, &err) == KV_OK, "open: %s", err.msg);
    if (t) {
        const kv_info *in = kv_trace_info(t);
        float *row = malloc(in->n_tok * in->head_dim * sizeof *row);
        CHECK(kv_trace_read_head(t, KV_K, 1, 2, 1, row, &err) == KV_OK, "read before the change: %s", err.msg);
        append_byte(g_path);
        kv_status st = kv_trace_read_head(t, KV_K, 1, 2, 1, row, &err);
        CHECK(st == KV_ERR_IO && strstr(err.msg, "changed since it was validated"),
              "read after the change: status %d, %s", (int)st, err.msg);
        size_t a[1] = {0}, c[1] = {in->n_seq};
        int32_t sl[64];
        st = kv_trace_read_i32(t, "/seq_len", 1, a, c, sl, &err);
        CHECK(st == KV_ERR_IO, "generic read after the change: status %d, %s", (int)st, err.msg);
        free(row);
        kv_trace_close(t);
    }
    unlink(g_path);
    printf("%d checks, %d failures\n", checks, fails);
    return fails ? 1 : 0;
}
