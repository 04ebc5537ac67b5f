/* libFuzzer harness: the whole trace read path on arbitrary bytes.
 *
 * The input becomes a file (/dev/shm/fuzz_trace.<pid>.h5, rewritten per input), then what
 * the tools do after the trust boundary: kv_trace_open with the validation in this process
 * (skip_child_validation = 1 runs the child's full validation in-process, so that a defect
 * the validator misses shows up here as an ASan/UBSan report instead of a dead child),
 * then every read `info`, `check` and `run` make: dataset facts of every schema dataset,
 * tokens / seq_len / prefill_len, RoPE, every (sequence, layer, head) slice of q, k, v,
 * attn_out (f32 and raw f16; raw f16 also by the direct chunk path, which must give the
 * bytes H5Dread gives) and the read-out. Only libkvtrace is linked: the computations
 * info and check run on what they read (replay/verify.c) are not part of the read path, and
 * replay/attn.c uses GCC's __builtin_shuffle, which clang lacks.
 * A rejected input is fine; the harness only requires no crash, no sanitizer report and no
 * HDF5 handle left open. Built by `make fuzz` (clang-14, -fsanitize=fuzzer,address,
 * undefined) and, with fuzz/driver.c, by `make` as bin/fuzz/regress_trace.
 * HDF5 itself is not instrumented: a bad read inside libhdf5 is seen only when it faults.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hdf5.h>

#include "kvtrace.h"

/* reads larger than this many floats are skipped (the validator allows 2^40 elements) */
#define FUZZ_MAX_ELEMS ((size_t)1 << 22)

static void read_everything(kv_trace *t)
{
    const kv_info *in = kv_trace_info(t);
    size_t S = in->n_seq, T = in->n_tok, L = in->n_layers, H = in->n_heads, Hkv = in->n_kv_heads,
           D = in->head_dim, C = in->d_model, V = in->vocab;
    kv_error err;
    size_t big = S * T > T * D ? S * T : T * D;
    if (S * T * KV_TOPK > FUZZ_MAX_ELEMS || T * D > FUZZ_MAX_ELEMS || T * C > FUZZ_MAX_ELEMS ||
        V * C > FUZZ_MAX_ELEMS || H * D * C > FUZZ_MAX_ELEMS)
        return;
    big = big > T * C ? big : T * C;
    big = big > V * C ? big : V * C;
    big = big > H * D * C ? big : H * D * C;
    big = big > S * T * KV_TOPK ? big : S * T * KV_TOPK;
    float *f = malloc(big * sizeof *f), *g = malloc(big * sizeof *g);
    int32_t *ib = malloc(big * sizeof *ib);
    uint16_t *h16 = malloc(T * D * sizeof *h16), *d16 = malloc(T * D * sizeof *d16);
    if (!f || !g || !ib || !h16 || !d16)
        goto done;

    static const char *fixed[] = {"/tokens", "/seq_len", "/prefill_len", "/rope/cos", "/rope/sin",
                                  "/readout/hidden", "/readout/w_u", "/readout/b_u", "/readout/norm_weight",
                                  "/readout/norm_bias", "/readout/ref_lse", "/readout/ref_top_ids",
                                  "/readout/ref_top_logits", "/layers/0/q", "/nonexistent/x"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        kv_dset_info di;
        kv_trace_dataset_info(t, fixed[i], &di, &err);
    }
    kv_trace_read_tokens(t, ib, &err);
    kv_trace_read_seq_len(t, ib, &err);
    kv_trace_read_prefill_len(t, ib, &err);
    if (in->n_needles && in->n_needles <= FUZZ_MAX_ELEMS / KV_NEEDLE_NF) {
        int32_t *nd = malloc(KV_NEEDLE_NF * in->n_needles * sizeof *nd);
        if (nd && kv_trace_read_needles(t, nd, &err) == KV_OK)
            for (size_t i = 0; i < in->n_needles; i++)      /* what kvreplay run relies on */
                if (nd[i] < 0 || (size_t)nd[i] >= S || nd[KV_ND_START * in->n_needles + i] < 0 ||
                    nd[KV_ND_VALUE_START * in->n_needles + i] >= nd[KV_ND_VALUE_END * in->n_needles + i] ||
                    nd[KV_ND_ANSWER_START * in->n_needles + i] >= nd[KV_ND_ANSWER_END * in->n_needles + i])
                    abort();
        free(nd);
    }
    if (in->has_rope && T * (in->rotary_dim ? in->rotary_dim : D) <= big)
        kv_trace_read_rope(t, f, g, &err);
    static const kv_tensor which[4] = {KV_Q, KV_K, KV_V, KV_ATTN_OUT};
    for (size_t s = 0; s < S && s < 4; s++)
        for (size_t l = 0; l < L && l < 8; l++)
            for (int w = 0; w < 4; w++) {
                size_t nh = (which[w] == KV_K || which[w] == KV_V) ? Hkv : H;
                for (size_t h = 0; h < nh && h < 16; h++) {
                    kv_trace_read_head(t, which[w], s, l, h, f, &err);
                    kv_status sh = kv_trace_read_head_f16(t, which[w], s, l, h, h16, &err);
                    if (T > 2)
                        kv_trace_read_rows(t, which[w], s, l, h, 1, T - 2, f, &err);
                    /* the direct path (no libhdf5) reads the same bytes as H5Dread */
                    int ok = 0;
                    if (kv_trace_rows_direct_ok(t, which[w], l, &ok, &err) == KV_OK && ok &&
                        kv_trace_read_rows_f16_direct(t, which[w], s, l, h, 0, T, d16, &err) == KV_OK &&
                        sh == KV_OK && memcmp(h16, d16, T * D * sizeof *d16))
                        abort();
                    if (ok && T > 2)
                        kv_trace_read_rows_f16_direct(t, which[w], s, l, h, 1, T - 2, d16, &err);
                }
            }
    if (in->has_readout) {
        kv_trace_read_w_u(t, f, &err);
        if (in->has_b_u)
            kv_trace_read_b_u(t, f, &err);
        kv_trace_read_norm(t, f, g, &err);
        for (size_t l = 0; l < L && l < 8; l++)
            kv_trace_read_w_o(t, l, f, &err);
        for (size_t s = 0; s < S && s < 4; s++) {
            kv_trace_read_hidden(t, s, f, &err);
            kv_trace_read_ref(t, s, f, ib, g, &err);
        }
    }
done:
    free(f);
    free(g);
    free(ib);
    free(h16);
    free(d16);
}

/* As in the tools' validating child, where RLIMIT_AS makes such a malloc fail: libhdf5
 * sizes some allocations from the file (up to terabytes) and handles NULL. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}

/* libhdf5 1.10 leaks small blocks on some error paths of corrupt files: not ours, and not
 * instrumented; leaks allocated from any other frame are still reported. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:libhdf5_serial.so\n";
}

/* The sanitizer runtime's hook (NULL without a sanitizer runtime). */
extern void __sanitizer_set_death_callback(void (*cb)(void)) __attribute__((weak));

static char g_path[256];

static void remove_file(void)
{
    if (g_path[0])
        unlink(g_path);
}

/* Validation and reads, in this process. */
static void run_all(void)
{
    kv_open_opts o = {.skip_child_validation = 1};
    kv_trace *t = NULL;
    kv_error err;
    if (kv_trace_open(g_path, &o, &t, &err) == KV_OK) {     /* full validation, then open */
        read_everything(t);
        kv_trace_close(t);
    }
}

static void noop_death(void)
{
}

/* Where a crash report's first frame outside the C library and the sanitizer runtime lies:
 * 1 in libhdf5, 0 elsewhere (our code: a finding). UBSan reports are always ours. */
static int crash_in_hdf5(const char *rep)
{
    if (strstr(rep, "runtime error:"))
        return 0;
    for (const char *l = rep; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        const char *e = strchr(l, '\n');
        size_t n = e ? (size_t)(e - l) : strlen(l);
        char line[1024];
        snprintf(line, sizeof line, "%.*s", (int)(n < sizeof line ? n : sizeof line - 1), l);
        char *h = line;
        while (*h == ' ')
            h++;
        if (h[0] != '#' || !strstr(h, " 0x"))
            continue;
        if (strstr(h, "__interceptor_") || strstr(h, "sysdeps/") || strstr(h, "string/") ||
            strstr(h, "libc.so") || strstr(h, "compiler-rt") || strstr(h, "__asan") || strstr(h, "__sanitizer"))
            continue;
        /* a frame in this program without a source line: the sanitizer runtime's
         * interceptors (strdup, memcpy, ...) as symbolised in a release runtime */
        if (!strstr(h, ".c:") && !strstr(h, "libhdf5"))
            continue;
        return strstr(h, "libhdf5") != NULL;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_path[0]) {
        /* HDF5 resolves the name with realpath(): no memfd; tmpfs when there is one */
        const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(g_path, sizeof g_path, "%s/fuzz_trace.%ld.h5", dir, (long)getpid());
        atexit(remove_file);
    }
    int fd = open(g_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return 0;
    size_t off = 0;
    while (off < size) {
        ssize_t w = write(fd, data + off, size - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    close(fd);

    /* Containment mode (FUZZ_CHILD=1, set by fuzz/driver.c for the regression replays and
     * the triage of make fuzz's artifacts): first in a child, as the tools validate.
     * libhdf5 1.10 has memory errors of its own on crafted metadata, which the tools'
     * validating child contains. A child that dies in libhdf5 ends this input (contained);
     * one that dies in our code is a finding; one that exits normally (file accepted or
     * refused) is run again here. Without FUZZ_CHILD (libFuzzer, -fork mode) everything
     * runs in this process, fast, and make fuzz triages the crashes afterwards. */
    if (!getenv("FUZZ_CHILD") || strcmp(getenv("FUZZ_CHILD"), "1")) {
        run_all();
        goto after;
    }
    int pfd[2];
    if (pipe(pfd) != 0)
        return 0;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        return 0;
    }
    if (pid == 0) {
        close(pfd[0]);
        dup2(pfd[1], 2);
        if (__sanitizer_set_death_callback)
            __sanitizer_set_death_callback(noop_death);   /* no libFuzzer artifact from here */
        signal(SIGALRM, SIG_DFL);
        alarm(10);
        run_all();
        _exit(0);
    }
    close(pfd[1]);
    size_t cap = 1 << 16, got = 0;
    char *rep = malloc(cap + 1);
    for (;;) {
        if (!rep)
            break;
        if (got == cap) {
            char *nr = realloc(rep, 2 * cap + 1);
            if (!nr)
                break;
            rep = nr;
            cap *= 2;
        }
        ssize_t r = read(pfd[0], rep + got, cap - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(pfd[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (rep)
        rep[got] = '\0';
    int clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!clean) {
        int ours = rep && got && !crash_in_hdf5(rep);
        if (ours) {
            fprintf(stderr, "fuzz_trace: the validating child crashed outside libhdf5:\n%s\n", rep);
            abort();
        }
        free(rep);
        return 0;                       /* a libhdf5 crash or a timeout: contained */
    }
    free(rep);
    run_all();
after:;
    /* every HDF5 object the library opened must be closed again */
    ssize_t open_ids = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    if (open_ids != 0) {
        fprintf(stderr, "fuzz_trace: %zd HDF5 identifiers left open\n", open_ids);
        abort();
    }
    return 0;
}
