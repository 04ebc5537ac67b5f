/* Trace reader: child-process validation, then read-only access through bounded
 * hyperslabs.
 *
 * Why a child: libhdf5 1.10 crashes or hangs on crafted files (README.md, trust boundary). The child
 * (fork) gets an address-space limit (skipped under AddressSanitizer, which reserves
 * terabytes of shadow memory), a CPU limit and no core dumps, validates the whole file
 * (lib/trace_validate.c) and reports one status byte plus one message line through a pipe.
 * The parent waits with a wall-clock timeout and kills it; a crash, a limit or a timeout
 * becomes KV_ERR_VALIDATOR with a line naming the file and the signal. Only after the
 * child accepted the file does this process open it, and only if it is the file the child
 * read (inode, size, mtime: file_id, re-checked before every read); the description
 * (kv_info) comes from the child's verdict, so this process does not parse the
 * attributes again. Design: lib/trace_validate.c, top. kv_open_opts.validated (a record the
 * caller keeps that these bytes passed all that before): the child skips reading the chunks
 * (trace_inspect KV_INSPECT_NO_CHUNKS), and the parent takes that verdict only for the file
 * version the digest names (file_id_is_digest), else validates fully.
 *
 * Shapes: S sequences, T tokens, L layers, H q-heads, Hkv kv-heads, D head_dim, C d_model.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "kv_internal.h"

#if defined(__SANITIZE_ADDRESS__)
#define KV_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KV_ASAN 1
#endif
#endif

/* What identifies the file the validator accepted: the parent opens the same inode with
 * the same size and modification time, or refuses (and re-checks before every read). */
typedef struct file_id {
    unsigned long long dev, ino, size;
    long long mtime_s, mtime_ns;
    long long ctime_s, ctime_ns;    /* not in file_id_same: only matched against a digest's */
} file_id;

struct kv_trace {
    kv_info info;
    hid_t file;
    int have_id;            /* 1: id holds what the validating child saw */
    int validation;         /* kv_trace_validation */
    file_id id;
    hid_t *tens;            /* [L * 4] /layers/<l>/{q,k,v,attn_out}, opened on first use */
    uint16_t *scratch;      /* raw f16 staging buffer */
    size_t scratch_n;
    /* direct chunk reads (below, "direct chunk reads") */
    int fd;                 /* this library's own read-only descriptor of the file; -1: none */
    file_id fd_id;          /* its identity at open (= id when have_id), re-checked per read */
    unsigned long long base; /* file offset of HDF5 address 0 (the user block's size) */
    struct dtab **dtab;     /* [L * 4] chunk tables, built on first use; NULL: not yet */
};

static const char *tensor_name[4] = {"q", "k", "v", "attn_out"};

static void info_free(kv_info *in)
{
    free(in->layer_window);
    free(in->model_layer);
    in->layer_window = NULL;
    in->model_layer = NULL;
}

static void id_from_stat(const struct stat *sb, file_id *id)
{
    id->dev = (unsigned long long)sb->st_dev;
    id->ino = (unsigned long long)sb->st_ino;
    id->size = (unsigned long long)sb->st_size;
    id->mtime_s = (long long)sb->st_mtim.tv_sec;
    id->mtime_ns = (long long)sb->st_mtim.tv_nsec;
    id->ctime_s = (long long)sb->st_ctim.tv_sec;
    id->ctime_ns = (long long)sb->st_ctim.tv_nsec;
}

/* The identity of an open HDF5 file, from its own descriptor (sec2 driver) or, failing
 * that, from path. */
static int file_identity(hid_t f, const char *path, file_id *id)
{
    struct stat sb;
    void *h = NULL;
    int ok = 0;
    if (f >= 0 && H5Fget_vfd_handle(f, H5P_DEFAULT, &h) >= 0 && h)
        ok = fstat(*(int *)h, &sb) == 0;
    if (!ok && stat(path, &sb) != 0)
        return -1;
    id_from_stat(&sb, id);
    return 0;
}

static int file_id_same(const file_id *a, const file_id *b)
{
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtime_s == b->mtime_s &&
           a->mtime_ns == b->mtime_ns;
}

/* 1 when the file the child read is the version digest d (lib/sha256.c) belongs to: the
 * same inode, size, mtime and ctime (no device, as in the digest). */
static int file_id_is_digest(const file_id *a, const kv_file_digest *d)
{
    return d->have_id && a->ino == d->ino && a->size == d->size &&
           (unsigned long long)a->mtime_s * 1000000000ull + (unsigned long long)a->mtime_ns == d->mtime_ns &&
           (unsigned long long)a->ctime_s * 1000000000ull + (unsigned long long)a->ctime_ns == d->ctime_ns;
}

/* Opens path read-only and runs trace_inspect on it, in this process. */
static kv_status open_and_inspect(const char *path, int full, kv_info *info, hid_t *file_out, file_id *id,
                                  kv_error *err)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return kverr_set(err, KV_ERR_IO, "%s: file: cannot open: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        return kverr_set(err, KV_ERR_IO, "%s: file: not a regular file", path);
    if (sb.st_size == 0)
        return kverr_set(err, KV_ERR_FORMAT, "%s: file: empty file (0 bytes), not an HDF5 file", path);
    if (access(path, R_OK) != 0)
        return kverr_set(err, KV_ERR_IO, "%s: file: cannot read: %s", path, strerror(errno));
    kvh5_quiet();
    htri_t is = H5Fis_hdf5(path);
    if (is <= 0)
        return kverr_set(err, KV_ERR_FORMAT, "%s: file: not an HDF5 file (no HDF5 signature found)", path);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return kverr_set(err, KV_ERR_FORMAT, "%s: file: cannot open as HDF5 (truncated or corrupt file)", path);
    kv_status st = trace_inspect(path, f, full, info, err);
    if (st == KV_OK && id && file_identity(f, path, id) != 0)
        st = kverr_set(err, KV_ERR_IO, "%s: file: cannot stat: %s", path, strerror(errno));
    if (st != KV_OK || !file_out) {
        H5Fclose(f);
        return st;
    }
    *file_out = f;
    return KV_OK;
}

/* ---- the validating child ---------------------------------------------------------- */

#ifndef KV_ASAN
static unsigned long long current_vm_bytes(void)
{
    unsigned long long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%llu", &pages) != 1)
            pages = 0;
        fclose(f);
    }
    return pages * (unsigned long long)sysconf(_SC_PAGESIZE);
}
#endif

static void write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

static __attribute__((noreturn)) void child_main(int fd, const char *path, const kv_open_opts *o, int level,
                                                 unsigned timeout, unsigned long long mem)
{
    struct rlimit rl;
    rl.rlim_cur = rl.rlim_max = 0;
    setrlimit(RLIMIT_CORE, &rl);
    setrlimit(RLIMIT_FSIZE, &rl);              /* the validator never writes files */
    rl.rlim_cur = timeout + 1;
    rl.rlim_max = timeout + 2;
    setrlimit(RLIMIT_CPU, &rl);
#ifndef KV_ASAN
    rl.rlim_cur = rl.rlim_max = current_vm_bytes() + mem;
    setrlimit(RLIMIT_AS, &rl);
#else
    (void)mem;
#endif
    signal(SIGPIPE, SIG_IGN);
    setenv("HDF5_PLUGIN_PRELOAD", "::", 1);
    if (o && o->test_fault == 1) {
        signal(SIGSEGV, SIG_DFL);              /* a real signal death, even under ASan */
        raise(SIGSEGV);
    }
    if (o && o->test_fault == 2)
        for (;;)
            sleep(1);
    kv_info info;
    kv_error e;
    memset(&info, 0, sizeof info);
    memset(&e, 0, sizeof e);
    file_id id;
    kv_status st = open_and_inspect(path, level, &info, NULL, &id, &e);
    unsigned char code = (unsigned char)st;
    write_all(fd, &code, 1);
    if (st != KV_OK) {
        write_all(fd, e.msg, strlen(e.msg));
    } else {
        /* the verdict carries what the parent would otherwise read again from the file's
         * metadata (attributes, shapes): [file_id][kv_info][layer_window L][model_layer L] */
        write_all(fd, &id, sizeof id);
        write_all(fd, &info, sizeof info);
        write_all(fd, info.layer_window, info.n_layers * sizeof *info.layer_window);
        write_all(fd, info.model_layer, info.n_layers * sizeof *info.model_layer);
    }
    info_free(&info);
    write_all(fd, "\n", 1);
    _exit(0);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The child's verdict: KV_OK with *id and (info != NULL) *info filled from its report, or
 * its error. level: trace_inspect's full (1, or KV_INSPECT_NO_CHUNKS). */
static kv_status validate_in_child(const char *path, const kv_open_opts *o, int level, file_id *id,
                                   kv_info *info, kv_error *err)
{
    /* default: 60 s plus 1 s per 32 MiB, since the child decodes every chunk (a 20 GB
     * trace needs minutes, not a hang) */
    unsigned timeout = 60;
    struct stat sb;
    if (o && o->timeout_s)
        timeout = o->timeout_s;
    else if (stat(path, &sb) == 0 && sb.st_size > 0)
        timeout += (unsigned)((unsigned long long)sb.st_size / (32ull << 20) < 86400 ? (unsigned long long)sb.st_size / (32ull << 20) : 86400);
    unsigned long long mem = o && o->mem_limit ? o->mem_limit : 4ULL << 30;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return kverr_set(err, KV_ERR_VALIDATOR, "%s: validator: cannot create a pipe: %s", path, strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(fds[0]);
        close(fds[1]);
        return kverr_set(err, KV_ERR_VALIDATOR, "%s: validator: cannot fork: %s", path, strerror(e));
    }
    if (pid == 0) {
        close(fds[0]);
        child_main(fds[1], path, o, level, timeout, mem);
    }
    close(fds[1]);

    size_t cap = 1 + sizeof(file_id) + sizeof(kv_info) + 2 * 1024 * sizeof(long long) + 1100, got = 0;
    char *msg = malloc(cap);
    if (!msg) {
        close(fds[0]);
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        return kverr_set(err, KV_ERR_NOMEM, "%s: validator: out of memory", path);
    }
    kv_status ret;
    int timed_out = 0;
    double deadline = now_s() + timeout;
    for (;;) {
        double left = deadline - now_s();
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
        int r = poll(&pfd, 1, (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            break;
        if (r == 0)
            continue;                          /* re-check the deadline */
        ssize_t n = read(fds[0], msg + got, cap - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;                             /* EOF: the child is gone */
        got += (size_t)n;
        if (got == cap - 1)
            break;
    }
    close(fds[0]);
    if (timed_out)
        kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    msg[got] = '\0';
    if (timed_out) {
        ret = kverr_set(err, KV_ERR_VALIDATOR,
                        "%s: validator: timed out after %u s and was killed (crafted or pathological file?)", path,
                        timeout);
    } else if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        ret = kverr_set(err, KV_ERR_VALIDATOR,
                        "%s: validator: killed by signal %d (%s)%s; the file is probably corrupt or crafted", path, sig,
                        strsignal(sig), sig == SIGXCPU ? " after its CPU limit" : "");
    } else if (got < 2 || msg[got - 1] != '\n') {
        ret = kverr_set(err, KV_ERR_VALIDATOR, "%s: validator: exited with status %d without a verdict (memory limit?)",
                        path, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    } else if ((kv_status)(unsigned char)msg[0] == KV_OK) {
        size_t head = 1 + sizeof(file_id) + sizeof(kv_info);
        kv_info ci;
        if (got >= head)
            memcpy(&ci, msg + 1 + sizeof(file_id), sizeof ci);
        if (got < head || ci.n_layers > 1024 || got != head + 2 * ci.n_layers * sizeof(long long) + 1) {
            ret = kverr_set(err, KV_ERR_VALIDATOR, "%s: validator: accepted the file with a malformed report", path);
        } else {
            if (id)
                memcpy(id, msg + 1, sizeof *id);
            ret = KV_OK;
            if (info) {
                *info = ci;
                size_t nb = ci.n_layers * sizeof(long long);
                info->layer_window = malloc(nb ? nb : 1);
                info->model_layer = malloc(nb ? nb : 1);
                if (!info->layer_window || !info->model_layer) {
                    info_free(info);
                    ret = kverr_set(err, KV_ERR_NOMEM, "%s: out of memory", path);
                } else {
                    memcpy(info->layer_window, msg + head, nb);
                    memcpy(info->model_layer, msg + head + nb, nb);
                }
            }
        }
    } else {
        kv_status code = (kv_status)(unsigned char)msg[0];
        msg[got - 1] = '\0';
        ret = kverr_set(err, code > KV_ERR_VALUE ? KV_ERR_VALIDATOR : code, "%s", msg + 1);
    }
    free(msg);
    return ret;
}

/* ---- open / close ------------------------------------------------------------------ */

struct dtab;
static void direct_open(kv_trace *t);
static void dtab_free(struct dtab *d);

kv_status kv_trace_validate(const char *path, const kv_open_opts *opts, kv_error *err)
{
    if (!path)
        return kverr_set(err, KV_ERR_INVALID, "kv_trace_validate: NULL path");
    if (opts && opts->skip_child_validation) {
        kv_info info;
        memset(&info, 0, sizeof info);
        kv_status st = open_and_inspect(path, 1, &info, NULL, NULL, err);
        info_free(&info);
        return st;
    }
    return validate_in_child(path, opts, 1, NULL, NULL, err);
}

kv_status kv_trace_open(const char *path, const kv_open_opts *opts, kv_trace **out, kv_error *err)
{
    if (!path || !out)
        return kverr_set(err, KV_ERR_INVALID, "kv_trace_open: NULL argument");
    *out = NULL;
    if (strlen(path) >= sizeof ((kv_info *)0)->path)
        return kverr_set(err, KV_ERR_INVALID, "%s: path too long", path);
    int skip = opts && opts->skip_child_validation;
    file_id vid;
    kv_trace *t = calloc(1, sizeof *t);
    if (!t)
        return kverr_set(err, KV_ERR_NOMEM, "%s: out of memory", path);
    t->file = H5I_INVALID_HID;
    t->fd = -1;
    if (!skip) {
        /* opts->validated: these bytes passed the full validation before; the child skips
         * the chunks, and its verdict counts only for the file the digest belongs to. Any
         * doubt (another version, a failure) falls back to the full validation, so the
         * verdict and its message are the full validation's. */
        const kv_file_digest *vd = opts ? opts->validated : NULL;
        int level = vd && vd->have_id ? KV_INSPECT_NO_CHUNKS : 1;
        kv_status st = validate_in_child(path, opts, level, &vid, &t->info, err);
        if (level != 1 && (st == KV_OK ? !file_id_is_digest(&vid, vd) : st != KV_ERR_VALIDATOR)) {
            if (st == KV_OK)
                info_free(&t->info);
            memset(&t->info, 0, sizeof t->info);
            level = 1;
            st = validate_in_child(path, opts, level, &vid, &t->info, err);
        }
        if (st != KV_OK) {
            free(t);
            return st;
        }
        t->validation = level;
    }
    /* skip: validate fully in-process (no crash isolation: files this process wrote).
     * Otherwise: the description (kv_info: attributes, shapes) is the child's, and the file
     * this process opens must be the one the child read (same inode, size and mtime), else
     * it was replaced or modified since, and nothing is read. */
    kv_status st;
    if (!skip) {
        if (opts && opts->test_after_validate)
            opts->test_after_validate(path);
        kvh5_quiet();
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f < 0) {
            kv_trace_close(t);
            return kverr_set(err, KV_ERR_IO, "%s: file: changed since it was validated (cannot open it again)", path);
        }
        file_id now;
        if (file_identity(f, path, &now) != 0 || !file_id_same(&now, &vid)) {
            H5Fclose(f);
            kv_trace_close(t);
            return kverr_set(err, KV_ERR_IO,
                             "%s: file: changed since it was validated (inode, size or modification time differ); "
                             "not read", path);
        }
        t->file = f;
        t->have_id = 1;
        t->id = vid;
        st = KV_OK;
    } else {
        st = open_and_inspect(path, 1, &t->info, &t->file, NULL, err);
    }
    if (st != KV_OK) {
        kv_trace_close(t);
        return st;
    }
    t->tens = malloc(t->info.n_layers * 4 * sizeof *t->tens);
    if (!t->tens) {
        kv_trace_close(t);
        return kverr_set(err, KV_ERR_NOMEM, "%s: out of memory", path);
    }
    for (size_t i = 0; i < t->info.n_layers * 4; i++)
        t->tens[i] = H5I_INVALID_HID;
    t->dtab = calloc(t->info.n_layers * 4, sizeof *t->dtab);
    if (!t->dtab) {
        kv_trace_close(t);
        return kverr_set(err, KV_ERR_NOMEM, "%s: out of memory", path);
    }
    direct_open(t);
    *out = t;
    return KV_OK;
}

int kv_trace_validation(const kv_trace *t)
{
    return t ? t->validation : 0;
}

int kv_trace_is_version(const kv_trace *t, const kv_file_digest *d)
{
    return t && d && t->have_id && file_id_is_digest(&t->id, d);
}

void kv_trace_close(kv_trace *t)
{
    if (!t)
        return;
    if (t->tens)
        for (size_t i = 0; i < t->info.n_layers * 4; i++)
            if (t->tens[i] >= 0)
                H5Dclose(t->tens[i]);
    free(t->tens);
    if (t->dtab)
        for (size_t i = 0; i < t->info.n_layers * 4; i++)
            dtab_free(t->dtab[i]);
    free(t->dtab);
    if (t->fd >= 0)
        close(t->fd);
    if (t->file >= 0)
        H5Fclose(t->file);
    info_free(&t->info);
    free(t->scratch);
    free(t);
}

const kv_info *kv_trace_info(const kv_trace *t)
{
    return t ? &t->info : NULL;
}

/* ---- reads ------------------------------------------------------------------------- */

static kv_status scratch_reserve(kv_trace *t, size_t n, kv_error *err)
{
    if (n <= t->scratch_n)
        return KV_OK;
    uint16_t *p = realloc(t->scratch, n * sizeof *p);
    if (!p)
        return kverr_set(err, KV_ERR_NOMEM, "%s: out of memory (%zu-element read buffer)", t->info.path, n);
    t->scratch = p;
    t->scratch_n = n;
    return KV_OK;
}

/* Reads the hyperslab [start, start+count) of d with d's own file type as the memory type
 * (no HDF5 conversion: raw bytes), into dst. */
static kv_status read_raw(kv_trace *t, hid_t d, const char *name, int rank, const size_t *start,
                          const size_t *count, hid_t memtype, void *dst, kv_error *err)
{
    hsize_t hs[4], hc[4], n = 1;
    for (int i = 0; i < rank; i++) {
        hs[i] = start[i];
        hc[i] = count[i];
        n *= hc[i];
    }
    kv_status st = KV_OK;
    hid_t ft = H5I_INVALID_HID, fs = H5I_INVALID_HID, ms = H5I_INVALID_HID;
    if (n == 0)
        return KV_OK;
    file_id now;
    if (t->have_id && (file_identity(t->file, t->info.path, &now) != 0 || !file_id_same(&now, &t->id)))
        return kverr_set(err, KV_ERR_IO, "%s: file: changed since it was validated (size or modification time "
                         "differ); not read", t->info.path);
    ft = memtype >= 0 ? H5I_INVALID_HID : H5Dget_type(d);
    fs = H5Dget_space(d);
    /* The memory space has the selection's own rank and shape: with a 1-D memory space
     * HDF5 1.10 maps chunks element by element (46x slower, measured by bench/bench_io). */
    ms = H5Screate_simple(rank, hc, NULL);
    if ((memtype < 0 && ft < 0) || fs < 0 || ms < 0 ||
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, hs, NULL, hc, NULL) < 0 ||
        H5Dread(d, memtype >= 0 ? memtype : ft, ms, fs, H5P_DEFAULT, dst) < 0)
        st = kverr_set(err, KV_ERR_FORMAT, "%s: %s: read failed (corrupt data or I/O error)", t->info.path, name);
    if (ms >= 0)
        H5Sclose(ms);
    if (fs >= 0)
        H5Sclose(fs);
    if (ft >= 0)
        H5Tclose(ft);
    return st;
}

static kv_status tensor_get(kv_trace *t, kv_tensor which, size_t s, size_t l, size_t h, hid_t *d,
                            char *name, size_t namecap, kv_error *err)
{
    const kv_info *in = &t->info;
    if ((unsigned)which > KV_ATTN_OUT)
        return kverr_set(err, KV_ERR_INVALID, "%s: unknown tensor kind %d", in->path, (int)which);
    snprintf(name, namecap, "/layers/%zu/%s", l, tensor_name[which]);
    if (which == KV_ATTN_OUT && !in->has_attn_out)
        return kverr_set(err, KV_ERR_INVALID, "%s: /layers/%zu/attn_out: the trace has no attn_out", in->path, l);
    size_t heads = (which == KV_Q || which == KV_ATTN_OUT) ? in->n_heads : in->n_kv_heads;
    if (s >= in->n_seq || l >= in->n_layers || h >= heads)
        return kverr_set(err, KV_ERR_INVALID, "%s: %s: index (s=%zu, l=%zu, h=%zu) out of range (S=%zu, L=%zu, heads=%zu)",
                         in->path, name, s, l, h, in->n_seq, in->n_layers, heads);
    hid_t *slot = &t->tens[l * 4 + (size_t)which];
    if (*slot < 0) {
        /* chunk cache off: the reader reads every chunk of a head once per call (whole rows
         * [t0, t1) in one hyperslab), so a cache only holds memory -- 1 MiB per open
         * dataset by default, which grew the replay's RSS with the number of layers */
        hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
        if (dapl >= 0) H5Pset_chunk_cache(dapl, H5D_CHUNK_CACHE_NSLOTS_DEFAULT, 0, H5D_CHUNK_CACHE_W0_DEFAULT);
        *slot = H5Dopen2(t->file, name, dapl >= 0 ? dapl : H5P_DEFAULT);
        if (dapl >= 0) H5Pclose(dapl);
        if (*slot < 0)
            return kverr_set(err, KV_ERR_FORMAT, "%s: %s: cannot open the dataset", in->path, name);
    }
    *d = *slot;
    return KV_OK;
}

kv_status kv_trace_read_head_f16(kv_trace *t, kv_tensor which, size_t s, size_t l, size_t h,
                                 uint16_t *dst, kv_error *err)
{
    return kv_trace_read_rows_f16(t, which, s, l, h, 0, t ? t->info.n_tok : 0, dst, err);
}

/* The dataset of rows [t0, t0+nt) of one (s, l, h) slice, bounds checked. */
static kv_status rows_open(kv_trace *t, kv_tensor which, size_t s, size_t l, size_t h, size_t t0, size_t nt,
                           hid_t *d, char *name, size_t namecap, kv_error *err)
{
    kv_status st = tensor_get(t, which, s, l, h, d, name, namecap, err);
    if (st != KV_OK)
        return st;
    size_t T = t->info.n_tok;
    if (t0 > T || nt > T - t0)
        return kverr_set(err, KV_ERR_INVALID, "%s: %s: rows [%zu, %zu+%zu) outside [0, T = %zu)", t->info.path,
                         name, t0, t0, nt, T);
    return KV_OK;
}

kv_status kv_trace_read_rows_f16(kv_trace *t, kv_tensor which, size_t s, size_t l, size_t h,
                                 size_t t0, size_t nt, uint16_t *dst, kv_error *err)
{
    if (!t || !dst)
        return kverr_set(err, KV_ERR_INVALID, "kv_trace_read_rows_f16: NULL argument");
    hid_t d;
    char name[64];
    kv_status st = rows_open(t, which, s, l, h, t0, nt, &d, name, sizeof name, err);
    if (st != KV_OK || nt == 0)
        return st;
    size_t start[4] = {s, h, t0, 0}, count[4] = {1, 1, nt, t->info.head_dim};
    return read_raw(t, d, name, 4, start, count, H5I_INVALID_HID, dst, err);
}

kv_status kv_trace_read_rows(kv_trace *t, kv_tensor which, size_t s, size_t l, size_t h,
                             size_t t0, size_t nt, float *dst, kv_error *err)
{
    if (!t || !dst)
        return kverr_set(err, KV_ERR_INVALID, "kv_trace_read_rows: NULL argument");
    hid_t d;
    char name[64];
    kv_status st = rows_open(t, which, s, l, h, t0, nt, &d, name, sizeof name, err);
    if (st != KV_OK || nt == 0)
        return st;
    size_t D = t->info.head_dim;
    if ((st = scratch_reserve(t, nt * D, err)) != KV_OK)
        return st;
    size_t start[4] = {s, h, t0, 0}, count[4] = {1, 1, nt, D};
    if ((st = read_raw(t, d, name, 4, start, count, H5I_INVALID_HID, t->scratch, err)) != KV_OK)
        return st;
    kv_f16_to_f32(t->scratch, dst, nt * D);
    return KV_OK;
}

kv_status kv_trace_read_head(kv_trace *t, kv_tensor which, size_t s, size_t l, size_t h,
                             float *dst, kv_error *err)
{
    return kv_trace_read_rows(t, which, s, l, h, 0, t ? t->info.n_tok : 0, dst, err);
}

/* ---- direct chunk reads -------------------------------------------------------------
 *
 * kv_trace_read_rows_f16 goes through H5Dread, and libhdf5 is not thread-safe: a replay
 * serialises its reads under one lock, and with compressed traces the decompression runs
 * under it too. The direct path reads a tensor's chunks with pread on this library's own
 * descriptor (t->fd: opened at kv_trace_open, the same file identity as t->file and as the
 * file the child validated, re-checked before every read) and decodes them here (no filter,
 * shuffle, deflate with zlib, the filter mask honoured), so that the reads of several
 * threads run at once. What needs libhdf5 happens once per dataset, under the caller's lock
 * (kv_trace_rows_direct_ok, dtab_build): the layout and filter pipeline, and a table of the
 * chunks (file offset, stored size, filter mask) from H5Dget_chunk_info_by_coord. Any other
 * layout or pipeline (contiguous, fletcher32, a shuffle of another element size, partial
 * edge chunks stored unfiltered, another rank or element size) keeps the H5Dread path.
 *
 * Why this is safe on untrusted files (README.md, trust boundary): the child read every
 * chunk of the dataset before (lib/trace_validate.c check_chunks: each index entry inside
 * the file, filter mask 0, the stored bytes inflated with zlib to exactly the chunk's size,
 * then the chunk through H5Dread; with kv_open_opts.validated, a validation of these bytes
 * before did), on the same file (inode, size, mtime). The table comes from the same index
 * through the same libhdf5 call the child made, and is trusted no further than its bounds:
 * every offset and stored size is checked against the validated file
 * size and the chunk's byte count; the first chunk's stored bytes must equal what
 * H5Dread_chunk returns for it (the address convention: HDF5 1.10 gives addresses relative
 * to the user block); a stored chunk is read into a buffer of its checked size; inflate
 * writes into the chunk's size plus one byte and must produce exactly the chunk's bytes
 * (with the stream's adler32); every copy is indexed by the validated dimensions. A file
 * changed after validation in a way the identity check misses gives at worst an error or
 * wrong values, never a read or write out of bounds.
 */

enum { DF_SHUFFLE = 1, DF_DEFLATE = 2 };
#define DIRECT_CHUNK_CAP ((size_t)64 << 20)   /* the validator's chunk cap (CAP_CHUNK) */
#define DIRECT_MAX_FILTERS 8

typedef struct dchunk {
    unsigned long long off;     /* file offset of the stored bytes */
    uint32_t size, mask;        /* stored bytes; filter mask (bit i: filter i skipped) */
} dchunk;

typedef struct dtab {
    int ok;                     /* 1: direct reads; 0: the H5Dread path */
    size_t dims[4], chunk[4], grid[4];
    size_t cbytes, raw_cap;     /* bytes of a chunk; the largest stored size accepted */
    int nf, filt[DIRECT_MAX_FILTERS]; /* the pipeline in write order (DF_*) */
    dchunk *c;                  /* [grid[0] * grid[1] * grid[2] * grid[3]], row-major */
} dtab;

static void dtab_free(dtab *d)
{
    if (!d)
        return;
    free(d->c);
    free(d);
}

/* Reads n bytes at off from fd into buf: 0, or -1 with errno (0 at a short file). */
static int pread_full(int fd, void *buf, size_t n, unsigned long long off)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = 0;
            return -1;
        }
        p += r;
        n -= (size_t)r;
        off += (unsigned long long)r;
    }
    return 0;
}

/* The descriptor of the direct path: the same file as t->file (and, when validated by the
 * child, the file it read). Without it (any failure) every read takes the H5Dread path. */
static void direct_open(kv_trace *t)
{
    hsize_t ub = 0;
    hid_t fcpl = H5Fget_create_plist(t->file);
    if (fcpl < 0)
        return;
    herr_t r = H5Pget_userblock(fcpl, &ub);
    H5Pclose(fcpl);
    file_id h5, me;
    if (r < 0 || file_identity(t->file, t->info.path, &h5) != 0 || (t->have_id && !file_id_same(&h5, &t->id)))
        return;
    int fd = open(t->info.path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return;
    }
    id_from_stat(&sb, &me);
    if (!file_id_same(&me, &h5)) {
        close(fd);
        return;
    }
    t->fd = fd;
    t->fd_id = me;
    t->base = (unsigned long long)ub;
}

/* 0 when t->fd is still the file it was at open (size, mtime): the check read_raw makes. */
static kv_status direct_unchanged(const kv_trace *t, kv_error *err)
{
    struct stat sb;
    file_id now;
    if (fstat(t->fd, &sb) == 0) {
        id_from_stat(&sb, &now);
        if (file_id_same(&now, &t->fd_id))
            return KV_OK;
    }
    return kverr_set(err, KV_ERR_IO, "%s: file: changed since it was validated (size or modification time "
                     "differ); not read", t->info.path);
}

/* The chunk table of tensor dataset d (name), or tab->ok = 0 when the direct path does not
 * handle it (or libhdf5 cannot describe it: H5Dread will say). Errors: an index entry
 * outside the file or of an impossible size (one line naming the file and the dataset).
 * Under the caller's lock (libhdf5). heads: the dataset's second dimension. */
static kv_status dtab_build(kv_trace *t, hid_t d, const char *name, size_t heads, dtab *tab, kv_error *err)
{
    const kv_info *in = &t->info;
    kv_status st = KV_OK;
    hid_t dcpl = H5I_INVALID_HID, ty = H5I_INVALID_HID, sp = H5I_INVALID_HID;
    unsigned char *a = NULL, *b = NULL;
    tab->ok = 0;
    if (t->fd < 0)
        return KV_OK;
    if ((st = direct_unchanged(t, err)) != KV_OK)
        return st;
    dcpl = H5Dget_create_plist(d);
    ty = H5Dget_type(d);
    sp = H5Dget_space(d);
    if (dcpl < 0 || ty < 0 || sp < 0 || H5Pget_layout(dcpl) != H5D_CHUNKED || H5Tget_size(ty) != 2 ||
        H5Sget_simple_extent_ndims(sp) != 4)
        goto done;
    unsigned copts = 0;
    hsize_t dims[4], cd[4];
    if (H5Pget_chunk_opts(dcpl, &copts) < 0 || copts != 0 || H5Sget_simple_extent_dims(sp, dims, NULL) != 4 ||
        H5Pget_chunk(dcpl, 4, cd) != 4)
        goto done;
    /* the validated shape (trace_inspect checked the file's against it) */
    size_t want[4] = {in->n_seq, heads, in->n_tok, in->head_dim};
    for (int i = 0; i < 4; i++)
        if (dims[i] != want[i] || want[i] == 0)
            goto done;
    int nf = H5Pget_nfilters(dcpl);
    if (nf < 0 || nf > DIRECT_MAX_FILTERS)
        goto done;
    for (int i = 0; i < nf; i++) {
        unsigned flags = 0, cdv[8] = {0};
        size_t ncd = 8;
        H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, cdv, 0, NULL, NULL);
        if (id == H5Z_FILTER_DEFLATE)
            tab->filt[i] = DF_DEFLATE;
        else if (id == H5Z_FILTER_SHUFFLE && ncd >= 1 && cdv[0] == 2)
            tab->filt[i] = DF_SHUFFLE;        /* cd_values[0]: the element size HDF5 unshuffles with */
        else
            goto done;                        /* fletcher32, anything else: H5Dread */
    }
    tab->nf = nf;
    size_t cbytes = 2, nchunks = 1;
    for (int i = 0; i < 4; i++) {
        if (cd[i] == 0 || cd[i] > DIRECT_CHUNK_CAP || !kv_mul_ok(cbytes, (size_t)cd[i], DIRECT_CHUNK_CAP, &cbytes))
            goto done;
        tab->dims[i] = (size_t)dims[i];
        tab->chunk[i] = (size_t)cd[i];
        tab->grid[i] = (tab->dims[i] + tab->chunk[i] - 1) / tab->chunk[i];
        if (!kv_mul_ok(nchunks, tab->grid[i], (size_t)1 << 32, &nchunks))
            goto done;
    }
    tab->cbytes = cbytes;
    /* the validator's cap (check_chunks: > deflate's worst case, + 4 bytes per filter): a
     * stored size it accepts (a stream with bytes after its end: inflate stops there) is read */
    tab->raw_cap = nf ? cbytes + cbytes / 8 + 4096 + 4 * (size_t)nf : cbytes;
    tab->c = malloc(nchunks * sizeof *tab->c);
    if (!tab->c) {
        st = kverr_set(err, KV_ERR_NOMEM, "%s: %s: out of memory (table of %zu chunks)", in->path, name, nchunks);
        goto done;
    }
    unsigned long long fsize = t->fd_id.size;
    unsigned all = nf ? (1u << nf) - 1u : 0u;
    size_t ci[4] = {0, 0, 0, 0};
    for (size_t k = 0; k < nchunks; k++) {
        hsize_t off[4];
        for (int i = 0; i < 4; i++)
            off[i] = (hsize_t)(ci[i] * tab->chunk[i]);
        unsigned mask = 0;
        haddr_t addr = HADDR_UNDEF;
        hsize_t size = 0;
        if (H5Dget_chunk_info_by_coord(d, off, &mask, &addr, &size) < 0 || addr == HADDR_UNDEF)
            goto done;
        unsigned long long o = (unsigned long long)addr + t->base;
        int deflated = 0;
        for (int i = 0; i < nf; i++)
            if (tab->filt[i] == DF_DEFLATE && !(mask & (1u << i)))
                deflated = 1;
        const char *why = NULL;
        if (o < t->base || o > fsize || size > fsize - o)
            why = "extend past the end of the file";
        else if (size == 0 || size > tab->raw_cap || (!deflated && size != cbytes))
            why = "are an impossible stored size for the chunk";
        else if (mask & ~all)
            why = "have a filter mask naming filters the dataset lacks";
        if (why) {
            st = kverr_set(err, KV_ERR_FORMAT,
                           "%s: %s: chunk at [%llu, %llu, %llu, %llu]: %llu bytes at offset %llu (mask 0x%x) %s (%llu "
                           "bytes, %zu-byte chunk)", in->path, name, (unsigned long long)off[0],
                           (unsigned long long)off[1], (unsigned long long)off[2], (unsigned long long)off[3],
                           (unsigned long long)size, o, mask, why, fsize, cbytes);
            goto done;
        }
        tab->c[k].off = o;
        tab->c[k].size = (uint32_t)size;
        tab->c[k].mask = mask;
        for (int i = 3; i >= 0; i--) {        /* next chunk, last dimension fastest */
            if (++ci[i] < tab->grid[i])
                break;
            ci[i] = 0;
        }
    }
    /* the address convention, checked on the first chunk: its stored bytes as libhdf5 reads
     * them must be the bytes at the table's offset */
    size_t n0 = tab->c[0].size;
    a = malloc(n0);
    b = malloc(n0);
    hsize_t zero[4] = {0, 0, 0, 0};
    uint32_t m0 = 0;
    if (!a || !b) {
        st = kverr_set(err, KV_ERR_NOMEM, "%s: %s: out of memory", in->path, name);
        goto done;
    }
    if (H5Dread_chunk(d, H5P_DEFAULT, zero, &m0, a) < 0 || m0 != tab->c[0].mask ||
        pread_full(t->fd, b, n0, tab->c[0].off) != 0 || memcmp(a, b, n0) != 0)
        goto done;
    tab->ok = 1;
done:
    free(a);
    free(b);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (ty >= 0)
        H5Tclose(ty);
    if (sp >= 0)
        H5Sclose(sp);
    if (!tab->ok) {
        free(tab->c);
        tab->c = NULL;
    }
    return st;
}

kv_status kv_trace_rows_direct_ok(kv_trace *t, kv_tensor which, size_t l, int *ok, kv_error *err)
{
    if (ok)
        *ok = 0;
    if (!t || !ok)
        return kverr_set(err, KV_ERR_INVALID, "kv_trace_rows_direct_ok: NULL argument");
    if (t->fd < 0)
        return KV_OK;
    hid_t d;
    char name[64];
    kv_status st = tensor_get(t, which, 0, l, 0, &d, name, sizeof name, err);
    if (st != KV_OK)
        return st;
    dtab **slot = &t->dtab[l * 4 + (size_t)which];
    if (!*slot) {
        dtab *tab = calloc(1, sizeof *tab);
        if (!tab)
            return kverr_set(err, KV_ERR_NOMEM, "%s: %s: out of memory", t->info.path, name);
        size_t heads = (which == KV_Q || which == KV_ATTN_OUT) ? t->info.n_heads : t->info.n_kv_heads;
        if ((st = dtab_build(t, d, name, heads, tab, err)) != KV_OK) {
            dtab_free(tab);
            return st;
        }
        *slot = tab;
    }
    *ok = (*slot)->ok;
    return KV_OK;
}

/* Undoes the pipeline of one stored chunk (raw, ch->size bytes) into x or y (tab->cbytes + 1
 * bytes each): *res = the chunk's bytes. at: the chunk's first element (for messages). */
static kv_status direct_decode(const kv_trace *t, const dtab *tab, const char *name, const dchunk *ch, const size_t *at,
                               unsigned char *raw, unsigned char *x, unsigned char *y, z_stream *zs, int *zinit,
                               const unsigned char **res, kv_error *err)
{
    const unsigned char *cur = raw;
    size_t len = ch->size, cb = tab->cbytes;
    const char *bad = NULL;
    char got_s[160] = "";
    for (int i = tab->nf - 1; i >= 0 && !bad; i--) {
        if (ch->mask & (1u << i))
            continue;
        unsigned char *out = cur == x ? y : x;
        if (tab->filt[i] == DF_DEFLATE) {
            int zr;
            if (!*zinit) {
                memset(zs, 0, sizeof *zs);
                zr = inflateInit(zs);
                if (zr != Z_OK)
                    return kverr_set(err, KV_ERR_NOMEM, "%s: %s: zlib: cannot initialise", t->info.path, name);
                *zinit = 1;
            } else if (inflateReset(zs) != Z_OK) {
                bad = "zlib cannot reset its stream";
                break;
            }
            zs->next_in = (Bytef *)cur;
            zs->avail_in = (uInt)len;
            zs->next_out = out;
            zs->avail_out = (uInt)(cb + 1);  /* one spare byte: more output = bad */
            zr = inflate(zs, Z_FINISH);
            size_t got = cb + 1 - zs->avail_out;
            if (zr != Z_STREAM_END || got != cb) {
                bad = zr == Z_STREAM_END || zr == Z_BUF_ERROR || zr == Z_OK ? "deflate data of the wrong size"
                                                                           : "deflate data corrupt";
                snprintf(got_s, sizeof got_s, " (%zu bytes decoded, the chunk has %zu%s%.80s)", got, cb,
                         zs->msg ? "; zlib: " : "", zs->msg ? zs->msg : "");
            }
            len = got;
        } else {                              /* DF_SHUFFLE, element size 2 (H5Z shuffle) */
            if (len != cb) {
                bad = "shuffled bytes of the wrong size";
                break;
            }
            size_t ne = len / 2;
            if (ne > 1) {
                for (size_t j = 0; j < ne; j++) {
                    out[2 * j] = cur[j];
                    out[2 * j + 1] = cur[ne + j];
                }
            } else {
                memcpy(out, cur, len);
            }
        }
        cur = out;
    }
    if (!bad && len != cb) {
        bad = "stored bytes of the wrong size";
        snprintf(got_s, sizeof got_s, " (%zu, the chunk has %zu)", len, cb);
    }
    if (bad)
        return kverr_set(err, KV_ERR_FORMAT, "%s: %s: chunk at [%zu, %zu, %zu, %zu]: %s%s (direct read)", t->info.path,
                         name, at[0], at[1], at[2], at[3], bad, got_s);
    *res = cur;
    return KV_OK;
}

/* The box [start, start + count) of tab's dataset into dst (row-major over count), chunk
 * by chunk. Thread-safe: reads t and tab only. */
static kv_status direct_copy(const kv_trace *t, const dtab *tab, const char *name, const size_t *start,
                             const size_t *count, unsigned char *dst, kv_error *err)
{
    kv_status st = KV_OK;
    const size_t *C = tab->chunk;
    size_t c0[4], c1[4], ci[4];
    size_t ds[4] = {count[1] * count[2] * count[3], count[2] * count[3], count[3], 1};    /* elements */
    size_t cs[4] = {C[1] * C[2] * C[3], C[2] * C[3], C[3], 1};
    for (int i = 0; i < 4; i++) {
        if (count[i] == 0)
            return KV_OK;
        if (start[i] > tab->dims[i] || count[i] > tab->dims[i] - start[i])
            return kverr_set(err, KV_ERR_INVALID, "%s: %s: dimension %d: [%zu, %zu+%zu) outside [0, %zu)", t->info.path,
                             name, i, start[i], start[i], count[i], tab->dims[i]);
        c0[i] = ci[i] = start[i] / C[i];
        c1[i] = (start[i] + count[i] - 1) / C[i];
    }
    unsigned char *raw = NULL, *x = NULL, *y = NULL;
    z_stream zs;
    int zinit = 0;
    for (;;) {
        size_t k = ((ci[0] * tab->grid[1] + ci[1]) * tab->grid[2] + ci[2]) * tab->grid[3] + ci[3];
        const dchunk *ch = &tab->c[k];
        size_t lo[4], hi[4], at[4];
        for (int i = 0; i < 4; i++) {
            at[i] = ci[i] * C[i];
            lo[i] = start[i] > at[i] ? start[i] : at[i];
            hi[i] = start[i] + count[i] < at[i] + C[i] ? start[i] + count[i] : at[i] + C[i];
        }
        size_t w = hi[3] - lo[3];
        int filtered = 0;
        for (int i = 0; i < tab->nf; i++)
            if (!(ch->mask & (1u << i)))
                filtered = 1;
        if (!filtered && w == C[3] && w == count[3]) {
            /* stored as is, whole rows: rows [lo2, hi2) are contiguous in the chunk and in
             * dst; read them in place (the table checked size == cbytes) */
            for (size_t i0 = lo[0]; i0 < hi[0]; i0++)
                for (size_t i1 = lo[1]; i1 < hi[1]; i1++) {
                    size_t src = (i0 - at[0]) * cs[0] + (i1 - at[1]) * cs[1] + (lo[2] - at[2]) * cs[2];
                    size_t dd = (i0 - start[0]) * ds[0] + (i1 - start[1]) * ds[1] + (lo[2] - start[2]) * ds[2];
                    if (pread_full(t->fd, dst + 2 * dd, 2 * (hi[2] - lo[2]) * C[3], ch->off + 2 * src) != 0) {
                        st = kverr_set(err, KV_ERR_IO, "%s: %s: chunk at [%zu, %zu, %zu, %zu]: read failed: %s",
                                       t->info.path, name, at[0], at[1], at[2], at[3],
                                       errno ? strerror(errno) : "file shorter than validated");
                        goto done;
                    }
                }
        } else {
            if (!raw) {
                raw = malloc(tab->raw_cap);
                x = malloc(tab->cbytes + 1);
                y = malloc(tab->cbytes + 1);
                if (!raw || !x || !y) {
                    st = kverr_set(err, KV_ERR_NOMEM, "%s: %s: out of memory (chunk of %zu bytes)", t->info.path, name,
                                   tab->cbytes);
                    goto done;
                }
            }
            if (pread_full(t->fd, raw, ch->size, ch->off) != 0) {
                st = kverr_set(err, KV_ERR_IO, "%s: %s: chunk at [%zu, %zu, %zu, %zu]: read failed: %s", t->info.path,
                               name, at[0], at[1], at[2], at[3], errno ? strerror(errno) : "file shorter than validated");
                goto done;
            }
            const unsigned char *cb = NULL;
            if ((st = direct_decode(t, tab, name, ch, at, raw, x, y, &zs, &zinit, &cb, err)) != KV_OK)
                goto done;
            for (size_t i0 = lo[0]; i0 < hi[0]; i0++)
                for (size_t i1 = lo[1]; i1 < hi[1]; i1++)
                    for (size_t i2 = lo[2]; i2 < hi[2]; i2++) {
                        size_t src = (i0 - at[0]) * cs[0] + (i1 - at[1]) * cs[1] + (i2 - at[2]) * cs[2] + (lo[3] - at[3]);
                        size_t dd = (i0 - start[0]) * ds[0] + (i1 - start[1]) * ds[1] + (i2 - start[2]) * ds[2] +
                                    (lo[3] - start[3]);
                        memcpy(dst + 2 * dd, cb + 2 * src, 2 * w);
                    }
        }
        int i = 3;                            /* next chunk of the box, last dimension fastest */
        for (; i >= 0; i--) {
            if (++ci[i] <= c1[i])
                break;
            ci[i] = c0[i];
        }
        if (i < 0)
            break;
    }
done:
    if (zinit)
        inflateEnd(&zs);
    free(raw);
    free(x);
    free(y);
    return st;
}

kv_status kv_trace_read_rows_f16_direct(const kv_trace *t, kv_tensor which, size_t s, size_t l, size_t h,
                                        size_t t0, size_t nt, uint16_t *dst, kv_error *err)
{
    if (!t || !dst)
        return kverr_set(err, KV_ERR_INVALID, "kv_trace_read_rows_f16_direct: NULL argument");
    const kv_info *in = &t->info;
    if ((unsigned)which > KV_ATTN_OUT)
        return kverr_set(err, KV_ERR_INVALID, "%s: unknown tensor kind %d", in->path, (int)which);
    char name[64];
    snprintf(name, sizeof name, "/layers/%zu/%s", l, tensor_name[which]);
    if (which == KV_ATTN_OUT && !in->has_attn_out)
        return kverr_set(err, KV_ERR_INVALID, "%s: /layers/%zu/attn_out: the trace has no attn_out", in->path, l);
    size_t heads = (which == KV_Q || which == KV_ATTN_OUT) ? in->n_heads : in->n_kv_heads;
    if (s >= in->n_seq || l >= in->n_layers || h >= heads)
        return kverr_set(err, KV_ERR_INVALID, "%s: %s: index (s=%zu, l=%zu, h=%zu) out of range (S=%zu, L=%zu, heads=%zu)",
                         in->path, name, s, l, h, in->n_seq, in->n_layers, heads);
    size_t T = in->n_tok;
    if (t0 > T || nt > T - t0)
        return kverr_set(err, KV_ERR_INVALID, "%s: %s: rows [%zu, %zu+%zu) outside [0, T = %zu)", in->path, name, t0,
                         t0, nt, T);
    const dtab *tab = t->dtab[l * 4 + (size_t)which];
    if (!tab || !tab->ok)
        return kverr_set(err, KV_ERR_INVALID, "%s: %s: no direct read (kv_trace_rows_direct_ok did not allow it)",
                         in->path, name);
    if (nt == 0)
        return KV_OK;
    kv_status st = direct_unchanged(t, err);
    if (st != KV_OK)
        return st;
    size_t start[4] = {s, h, t0, 0}, count[4] = {1, 1, nt, in->head_dim};
    return direct_copy(t, tab, name, start, count, (unsigned char *)dst, err);
}

/* Opens dataset `path` after checking it exists as a dataset; checks rank and bounds. */
static kv_status open_generic(kv_trace *t, const char *path, int rank, const size_t *start, const size_t *count,
                              hid_t *d_out, int *cls_out, size_t *n_out, kv_error *err)
{
    const char *fp = t->info.path;
    if (!path || path[0] != '/' || strlen(path) > 400)
        return kverr_set(err, KV_ERR_INVALID, "%s: %s: dataset path must be absolute", fp, path ? path : "(null)");
    if (rank < 1 || rank > 4 || (!start && rank) || (!count && rank))
        return kverr_set(err, KV_ERR_INVALID, "%s: %s: rank %d outside [1, 4]", fp, path, rank);
    /* every component must exist (H5Lexists needs the parents) */
    char buf[512];
    snprintf(buf, sizeof buf, "%s", path);
    for (size_t i = 1, n = strlen(buf); i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        htri_t e = H5Lexists(t->file, buf, H5P_DEFAULT);
        buf[i] = c;
        if (e <= 0)
            return kverr_set(err, KV_ERR_INVALID, "%s: %s: no such dataset", fp, path);
    }
    H5O_info_t oi;
    if (H5Oget_info_by_name2(t->file, path, &oi, H5O_INFO_BASIC, H5P_DEFAULT) < 0 || oi.type != H5O_TYPE_DATASET)
        return kverr_set(err, KV_ERR_INVALID, "%s: %s: not a dataset", fp, path);
    hid_t d = H5Dopen2(t->file, path, H5P_DEFAULT);
    if (d < 0)
        return kverr_set(err, KV_ERR_FORMAT, "%s: %s: cannot open the dataset", fp, path);
    hid_t ty = H5Dget_type(d), sp = H5Dget_space(d);
    int cls = ty >= 0 ? kvh5_dtype_class(ty) : KVDT_OTHER;
    int r = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    hsize_t dims[4] = {0};
    if (r == rank)
        H5Sget_simple_extent_dims(sp, dims, NULL);
    if (ty >= 0)
        H5Tclose(ty);
    if (sp >= 0)
        H5Sclose(sp);
    if (r != rank) {
        H5Dclose(d);
        return kverr_set(err, KV_ERR_INVALID, "%s: %s: rank %d, requested %d", fp, path, r, rank);
    }
    size_t n = 1;
    for (int i = 0; i < rank; i++) {
        if (start[i] > dims[i] || count[i] > dims[i] - start[i] || !kv_mul_ok(n, count[i], (size_t)1 << 40, &n)) {
            H5Dclose(d);
            return kverr_set(err, KV_ERR_INVALID, "%s: %s: dimension %d: [%zu, %zu+%zu) outside [0, %llu)", fp, path,
                             i, start[i], start[i], count[i], (unsigned long long)dims[i]);
        }
    }
    *d_out = d;
    *cls_out = cls;
    *n_out = n;
    return KV_OK;
}

kv_status kv_trace_read_f32(kv_trace *t, const char *dset, int rank, const size_t *start,
                            const size_t *count, float *dst, kv_error *err)
{
    if (!t || !dst)
        return kverr_set(err, KV_ERR_INVALID, "kv_trace_read_f32: NULL argument");
    hid_t d;
    int cls;
    size_t n;
    kv_status st = open_generic(t, dset, rank, start, count, &d, &cls, &n, err);
    if (st != KV_OK)
        return st;
    if (cls == KVDT_F16) {
        if ((st = scratch_reserve(t, n, err)) == KV_OK &&
            (st = read_raw(t, d, dset, rank, start, count, H5I_INVALID_HID, t->scratch, err)) == KV_OK)
            kv_f16_to_f32(t->scratch, dst, n);
    } else if (cls == KVDT_F32) {
        st = read_raw(t, d, dset, rank, start, count, H5T_NATIVE_FLOAT, dst, err);
    } else {
        st = kverr_set(err, KV_ERR_INVALID, "%s: %s: not a float dataset", t->info.path, dset);
    }
    H5Dclose(d);
    return st;
}

kv_status kv_trace_read_i32(kv_trace *t, const char *dset, int rank, const size_t *start,
                            const size_t *count, int32_t *dst, kv_error *err)
{
    if (!t || !dst)
        return kverr_set(err, KV_ERR_INVALID, "kv_trace_read_i32: NULL argument");
    hid_t d;
    int cls;
    size_t n;
    kv_status st = open_generic(t, dset, rank, start, count, &d, &cls, &n, err);
    if (st != KV_OK)
        return st;
    if (cls == KVDT_I32)
        st = read_raw(t, d, dset, rank, start, count, H5T_NATIVE_INT32, dst, err);
    else
        st = kverr_set(err, KV_ERR_INVALID, "%s: %s: not an int32 dataset", t->info.path, dset);
    H5Dclose(d);
    return st;
}

kv_status kv_trace_read_tokens(kv_trace *t, int32_t *dst, kv_error *err)
{
    size_t st[2] = {0, 0}, ct[2] = {t ? t->info.n_seq : 0, t ? t->info.n_tok : 0};
    return kv_trace_read_i32(t, "/tokens", 2, st, ct, dst, err);
}

kv_status kv_trace_read_seq_len(kv_trace *t, int32_t *dst, kv_error *err)
{
    size_t st[1] = {0}, ct[1] = {t ? t->info.n_seq : 0};
    return kv_trace_read_i32(t, "/seq_len", 1, st, ct, dst, err);
}

kv_status kv_trace_read_prefill_len(kv_trace *t, int32_t *dst, kv_error *err)
{
    if (t && !t->info.has_prefill)
        return kverr_set(err, KV_ERR_INVALID, "%s: /prefill_len: the trace has none", t->info.path);
    size_t st[1] = {0}, ct[1] = {t ? t->info.n_seq : 0};
    return kv_trace_read_i32(t, "/prefill_len", 1, st, ct, dst, err);
}

const char *const kv_needle_names[KV_NEEDLE_NF] = {
    "seq", "start", "end", "value_start", "value_end", "answer_start", "answer_end"};

kv_status kv_trace_read_needles(kv_trace *t, int32_t *dst, kv_error *err)
{
    if (t && !t->info.n_needles)
        return kverr_set(err, KV_ERR_INVALID, "%s: /needles: the trace has none", t->info.path);
    size_t st[1] = {0}, ct[1] = {t ? t->info.n_needles : 0};
    for (int k = 0; k < KV_NEEDLE_NF; k++) {
        char p[64];
        snprintf(p, sizeof p, "/needles/%s", kv_needle_names[k]);
        kv_status s = kv_trace_read_i32(t, p, 1, st, ct, dst + (size_t)k * ct[0], err);
        if (s != KV_OK)
            return s;
    }
    return KV_OK;
}

kv_status kv_trace_read_rope(kv_trace *t, float *cos, float *sin, kv_error *err)
{
    if (!t || !cos || !sin)
        return kverr_set(err, KV_ERR_INVALID, "kv_trace_read_rope: NULL argument");
    if (!t->info.has_rope)
        return kverr_set(err, KV_ERR_INVALID, "%s: /rope: the trace has no RoPE tables", t->info.path);
    size_t R = t->info.rotary_dim ? t->info.rotary_dim : t->info.head_dim;
    size_t st[2] = {0, 0}, ct[2] = {t->info.n_tok, R};
    kv_status s = kv_trace_read_f32(t, "/rope/cos", 2, st, ct, cos, err);
    return s != KV_OK ? s : kv_trace_read_f32(t, "/rope/sin", 2, st, ct, sin, err);
}

static kv_status need_readout(kv_trace *t, kv_error *err)
{
    if (!t)
        return kverr_set(err, KV_ERR_INVALID, "NULL trace");
    if (!t->info.has_readout)
        return kverr_set(err, KV_ERR_INVALID, "%s: /readout: the trace has no read-out%s%s", t->info.path,
                         t->info.readout_unavailable[0] ? ": " : "", t->info.readout_unavailable);
    return KV_OK;
}

kv_status kv_trace_read_hidden(kv_trace *t, size_t s, float *dst, kv_error *err)
{
    return kv_trace_read_hidden_rows(t, s, 0, t ? t->info.n_tok : 0, dst, err);
}

kv_status kv_trace_read_hidden_rows(kv_trace *t, size_t s, size_t t0, size_t nt, float *dst, kv_error *err)
{
    kv_status st = need_readout(t, err);
    if (st != KV_OK)
        return st;
    if (nt == 0)
        return KV_OK;
    size_t a[3] = {s, t0, 0}, c[3] = {1, nt, t->info.d_model};
    return kv_trace_read_f32(t, "/readout/hidden", 3, a, c, dst, err);
}

kv_status kv_trace_read_w_o(kv_trace *t, size_t l, float *dst, kv_error *err)
{
    kv_status st = need_readout(t, err);
    if (st != KV_OK)
        return st;
    if (l >= t->info.n_layers)
        return kverr_set(err, KV_ERR_INVALID, "%s: /readout/w_o: layer %zu out of range", t->info.path, l);
    char p[64];
    snprintf(p, sizeof p, "/readout/w_o/%zu", l);
    size_t a[2] = {0, 0}, c[2] = {t->info.n_heads * t->info.head_dim, t->info.d_model};
    return kv_trace_read_f32(t, p, 2, a, c, dst, err);
}

kv_status kv_trace_read_w_u(kv_trace *t, float *dst, kv_error *err)
{
    kv_status st = need_readout(t, err);
    if (st != KV_OK)
        return st;
    size_t a[2] = {0, 0}, c[2] = {t->info.vocab, t->info.d_model};
    return kv_trace_read_f32(t, "/readout/w_u", 2, a, c, dst, err);
}

kv_status kv_trace_read_b_u(kv_trace *t, float *dst, kv_error *err)
{
    kv_status st = need_readout(t, err);
    if (st != KV_OK)
        return st;
    if (!t->info.has_b_u)
        return kverr_set(err, KV_ERR_INVALID, "%s: /readout/b_u: the trace has none", t->info.path);
    size_t a[1] = {0}, c[1] = {t->info.vocab};
    return kv_trace_read_f32(t, "/readout/b_u", 1, a, c, dst, err);
}

kv_status kv_trace_read_norm(kv_trace *t, float *weight, float *bias, kv_error *err)
{
    kv_status st = need_readout(t, err);
    if (st != KV_OK)
        return st;
    size_t a[1] = {0}, c[1] = {t->info.d_model};
    if ((st = kv_trace_read_f32(t, "/readout/norm_weight", 1, a, c, weight, err)) != KV_OK)
        return st;
    if (bias && t->info.has_norm_bias)
        return kv_trace_read_f32(t, "/readout/norm_bias", 1, a, c, bias, err);
    return KV_OK;
}

kv_status kv_trace_read_ref(kv_trace *t, size_t s, float *lse, int32_t *top_ids, float *top_logits,
                            kv_error *err)
{
    kv_status st = need_readout(t, err);
    if (st != KV_OK)
        return st;
    size_t a2[2] = {s, 0}, c2[2] = {1, t->info.n_tok};
    size_t a3[3] = {s, 0, 0}, c3[3] = {1, t->info.n_tok, KV_TOPK};
    if (lse && (st = kv_trace_read_f32(t, "/readout/ref_lse", 2, a2, c2, lse, err)) != KV_OK)
        return st;
    if (top_ids && (st = kv_trace_read_i32(t, "/readout/ref_top_ids", 3, a3, c3, top_ids, err)) != KV_OK)
        return st;
    if (top_logits && (st = kv_trace_read_f32(t, "/readout/ref_top_logits", 3, a3, c3, top_logits, err)) != KV_OK)
        return st;
    return KV_OK;
}

kv_status kv_trace_dataset_info(kv_trace *t, const char *dset, kv_dset_info *di, kv_error *err)
{
    if (!t || !dset || !di)
        return kverr_set(err, KV_ERR_INVALID, "kv_trace_dataset_info: NULL argument");
    memset(di, 0, sizeof *di);
    char buf[512];
    if (dset[0] != '/' || strlen(dset) >= sizeof buf)
        return kverr_set(err, KV_ERR_INVALID, "%s: %s: dataset path must be absolute", t->info.path, dset);
    snprintf(buf, sizeof buf, "%s", dset);
    for (size_t i = 1, n = strlen(buf); i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        htri_t e = H5Lexists(t->file, buf, H5P_DEFAULT);
        buf[i] = c;
        if (e <= 0)
            return kverr_set(err, KV_ERR_INVALID, "%s: %s: no such dataset", t->info.path, dset);
    }
    H5O_info_t oi;
    if (H5Oget_info_by_name2(t->file, dset, &oi, H5O_INFO_BASIC, H5P_DEFAULT) < 0 || oi.type != H5O_TYPE_DATASET)
        return kverr_set(err, KV_ERR_INVALID, "%s: %s: not a dataset", t->info.path, dset);
    hid_t d = H5Dopen2(t->file, dset, H5P_DEFAULT);
    if (d < 0)
        return kverr_set(err, KV_ERR_FORMAT, "%s: %s: cannot open the dataset", t->info.path, dset);
    kv_status st = KV_OK;
    hid_t ty = H5Dget_type(d), sp = H5Dget_space(d);
    int r = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    if (r < 0 || r > 4) {
        st = kverr_set(err, KV_ERR_INVALID, "%s: %s: rank %d not in [0, 4]", t->info.path, dset, r);
        goto done;
    }
    di->rank = r;
    hsize_t dims[4] = {0};
    if (r > 0)
        H5Sget_simple_extent_dims(sp, dims, NULL);
    for (int i = 0; i < r; i++)
        di->dims[i] = (size_t)dims[i];
    di->dtype = ty >= 0 ? (kv_dtype)kvh5_dtype_class(ty) : KV_DT_OTHER;
    if (kvh5_storage_facts(d, r, &di->chunked, di->chunk, &di->deflate, &di->shuffle, &di->fletcher32) < 0)
        st = kverr_set(err, KV_ERR_FORMAT, "%s: %s: cannot read the creation properties", t->info.path, dset);
    di->storage_bytes = H5Dget_storage_size(d);
done:
    if (ty >= 0)
        H5Tclose(ty);
    if (sp >= 0)
        H5Sclose(sp);
    H5Dclose(d);
    return st;
}
