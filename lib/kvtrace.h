/* libkvtrace — read, validate and write kvtrace traces (traces/SCHEMA.md, version 1).
 *
 * Usage (reader):
 *
 *     kv_error err;
 *     kv_trace *t = NULL;
 *     if (kv_trace_open(path, NULL, &t, &err) != KV_OK) { fprintf(stderr, "%s\n", err.msg); return 1; }
 *     const kv_info *in = kv_trace_info(t);
 *     float *k = malloc(in->n_tok * in->head_dim * sizeof *k);          // [T, D]
 *     kv_trace_read_head(t, KV_K, s, l, g, k, &err);
 *     ...
 *     kv_trace_close(t);
 *
 * kv_trace_open() first validates the whole file against the schema in a child process
 * with memory/CPU limits and a wall-clock timeout (libhdf5 1.10 crashes or hangs on
 * crafted files; the caller survives and gets one line of error). The child reads every
 * chunk of every dataset (the chunk index, filter masks and stored sizes checked, each
 * chunk decoded) and hands back the file's description; this process then opens the file
 * read-only, refuses it when it is not the file the child read (inode, size, mtime; also
 * re-checked before every read), and reads only datasets the child read in full. Every read is a bounded hyperslab into a buffer sized from the validated
 * dimensions; float16 is read raw and converted by kv_f16_to_f32 (F16C when the CPU has it).
 * Tensor rows can also be read without libhdf5, from several threads at once
 * (kv_trace_read_rows_f16_direct: the library preads and decodes the chunks itself).
 *
 * Errors: every function returns a kv_status; on failure *err (when non-NULL) holds one
 * line "FILE: OBJECT: reason". Library code never prints and never exits.
 *
 * Ownership: kv_trace and kv_writer are opaque and owned by the caller from open/create to
 * close/finish/abort. Buffers passed in are owned by the caller; kv_info points into the
 * kv_trace and lives until kv_trace_close(). All close/free functions accept NULL.
 *
 * Shapes: S sequences, T tokens, L layers, H q-heads, Hkv kv-heads, D head_dim,
 * C d_model, V vocab, R rotary_dim. Sizes and offsets are size_t throughout.
 */
#ifndef KVTRACE_H
#define KVTRACE_H

#include <stddef.h>
#include <stdint.h>

#define KV_SCHEMA_VERSION 1
#define KV_VERSION_STRING "0.1.0"
#define KV_TOPK 8

typedef enum kv_status {
    KV_OK = 0,
    KV_ERR_IO,        /* missing file, unreadable, write failure, rename failure */
    KV_ERR_FORMAT,    /* not HDF5, or violates traces/SCHEMA.md */
    KV_ERR_VERSION,   /* kvtrace_version this library does not read */
    KV_ERR_NOMEM,
    KV_ERR_INVALID,   /* bad argument from the caller (index out of range, NULL, ...) */
    KV_ERR_VALIDATOR, /* the validating child crashed, hit a limit or timed out */
    KV_ERR_VALUE,     /* NaN/Inf or an out-of-range value in the data */
} kv_status;

typedef struct kv_error {
    kv_status code;
    char msg[1024];   /* one line, no trailing newline: "FILE: OBJECT: reason" */
} kv_error;

const char *kv_status_name(kv_status s);
/* Fill *err (when non-NULL) with code and a printf-formatted one-line message (control
 * characters replaced by spaces); returns code. For tools and libraries built on this one. */
kv_status kv_error_set(kv_error *err, kv_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- half precision ---------------------------------------------------------------- */

/* Exact for all 65,536 inputs (NaNs stay NaN; payload not guaranteed). Dispatches to F16C
 * when the CPU has it, else the scalar path. */
void kv_f16_to_f32(const uint16_t *src, float *dst, size_t n);
void kv_f16_to_f32_scalar(const uint16_t *src, float *dst, size_t n);
/* 1 if the F16C path is compiled in and the CPU supports it; then the function converts. */
int kv_f16_to_f32_f16c(const uint16_t *src, float *dst, size_t n);
/* Round to nearest even; overflow -> Inf; NaN -> quiet NaN. */
void kv_f32_to_f16(const float *src, uint16_t *dst, size_t n);
uint16_t kv_f32_to_f16_one(float x);
float kv_f16_to_f32_one(uint16_t h);

/* ---- reader ------------------------------------------------------------------------ */

typedef enum kv_tensor { KV_Q = 0, KV_K, KV_V, KV_ATTN_OUT } kv_tensor;

typedef struct kv_info {
    char path[4096];
    int version;
    char model[512], architecture[128], positional[32], rope_layout[32];
    char capture_tool[128], capture_version[64], device[128], torch_version[64];
    char transformers_version[64], created[64], source[1024], readout_unavailable[512];
    char compute_dtype[16];         /* float32, float16 or bfloat16: what the model computed in (root
                                     * attribute compute_dtype; kvcapture 1.0 traces state it only in
                                     * source as "compute dtype X", taken from there); "" = unknown */
    size_t n_seq, n_tok, n_layers, n_heads, n_kv_heads, head_dim, d_model, vocab;
    size_t rotary_dim;              /* 0 when positional != rope */
    double attn_scale, attn_softcap;
    long long sliding_window;       /* root value; see layer_window */
    long long *layer_window;        /* [L] effective window per layer (0 = unlimited) */
    long long *model_layer;         /* [L] model layer index (= l when absent) */
    long long bos_id;               /* -1 when absent */
    int has_prefill, has_rope, has_attn_out, has_readout;
    size_t n_needles;               /* rows of /needles (0 when absent; values validated) */
    int has_prompt_scores;          /* /prompt_scores (colsum, entropy [L, S, H, T]; values validated) */
    char prompt_scores_stale[256];  /* why /prompt_scores do not fit this trace: the attention parameters
                                       the capture recorded with them (group attributes attn_scale,
                                       attn_softcap, layer_window) differ from the trace's; "" when
                                       they fit or the group records none (kvreplay run falls back) */
    /* read-out (valid when has_readout) */
    char norm_type[16];             /* "layernorm" | "rmsnorm" */
    double norm_eps, final_logit_softcap;
    int has_norm_bias, has_b_u;
    /* storage facts for `info` */
    unsigned long long file_bytes;
    int q_chunked, q_deflate, q_shuffle, q_fletcher32;
    size_t q_chunk[4];              /* chunk dims of /layers/0/q (0 when contiguous) */
} kv_info;

typedef struct kv_open_opts {
    int skip_child_validation;      /* 1: trust the file (only for files this process wrote) */
    unsigned timeout_s;             /* validator wall clock (and CPU) limit; 0 = default
                                       60 s + 1 s per 32 MiB of file (every chunk is decoded) */
    unsigned long long mem_limit;   /* validator address-space limit in bytes (on top of what
                                       this process already maps); 0 = 4 GiB */
    int test_fault;                 /* tests only: 1 = the validator raises SIGSEGV,
                                       2 = it hangs (until the timeout kills it); 0 = normal */
    void (*test_after_validate)(const char *path); /* tests only: called by kv_trace_open
                                       between the child's verdict and this process's open
                                       (to change the file there); NULL = normal */
    const struct kv_file_digest *validated; /* NULL = normal. Else: the digest (with its file
                                       identity, have_id) of bytes that passed the full
                                       validation before (a record the caller keeps). The
                                       child then skips reading the chunks (every other rule
                                       still runs, in the child, with its limits), and the
                                       parent accepts that only when the file the child read
                                       has the digest's identity (inode, size, mtime, ctime);
                                       otherwise, or when the reduced validation fails, it
                                       validates fully as with NULL (the same verdict). */
} kv_open_opts;

typedef struct kv_trace kv_trace;

kv_status kv_trace_open(const char *path, const kv_open_opts *opts, kv_trace **out, kv_error *err);
void kv_trace_close(kv_trace *t);
const kv_info *kv_trace_info(const kv_trace *t);
/* How kv_trace_open validated t: 1 = fully (every chunk read), 2 = metadata only (opts
 * .validated accepted), 0 = in-process (skip_child_validation). */
int kv_trace_validation(const kv_trace *t);
/* 1 when the file the validating child read is the version digest d belongs to (d->have_id,
 * the same inode, size, mtime and ctime): a record of t's full validation may name d->hex. */
int kv_trace_is_version(const kv_trace *t, const struct kv_file_digest *d);

/* Validate only (the same child-process validation as open), no handle kept. */
kv_status kv_trace_validate(const char *path, const kv_open_opts *opts, kv_error *err);

/* int32 [S, T], [S], [S] (prefill: KV_ERR_INVALID when absent). */
kv_status kv_trace_read_tokens(kv_trace *t, int32_t *dst, kv_error *err);
kv_status kv_trace_read_seq_len(kv_trace *t, int32_t *dst, kv_error *err);
kv_status kv_trace_read_prefill_len(kv_trace *t, int32_t *dst, kv_error *err);
/* /needles as int32 [KV_NEEDLE_NF][n_needles], member order of kv_needle_field
 * (KV_ERR_INVALID when absent). */
enum kv_needle_field { KV_ND_SEQ, KV_ND_START, KV_ND_END, KV_ND_VALUE_START, KV_ND_VALUE_END,
                       KV_ND_ANSWER_START, KV_ND_ANSWER_END, KV_NEEDLE_NF };
extern const char *const kv_needle_names[KV_NEEDLE_NF];
kv_status kv_trace_read_needles(kv_trace *t, int32_t *dst, kv_error *err);

/* One (sequence s, layer l, head h) slice, rows [t0, t0+nt) of [T, D], as f32 into
 * dst [nt, D]. h indexes H for KV_Q/KV_ATTN_OUT and Hkv for KV_K/KV_V. */
kv_status kv_trace_read_rows(kv_trace *t, kv_tensor which, size_t s, size_t l, size_t h,
                             size_t t0, size_t nt, float *dst, kv_error *err);
/* The whole [T, D] slice: kv_trace_read_rows(t, which, s, l, h, 0, T, dst, err). */
kv_status kv_trace_read_head(kv_trace *t, kv_tensor which, size_t s, size_t l, size_t h,
                             float *dst, kv_error *err);
/* The same slice raw (f16 bits), for byte-exact round trips. */
kv_status kv_trace_read_head_f16(kv_trace *t, kv_tensor which, size_t s, size_t l, size_t h,
                                 uint16_t *dst, kv_error *err);
/* Rows [t0, t0+nt) raw (f16 bits) into dst [nt, D]: no conversion and no use of the reader's
 * shared scratch, so a caller that serialises the reads can convert or scan outside its lock. */
kv_status kv_trace_read_rows_f16(kv_trace *t, kv_tensor which, size_t s, size_t l, size_t h,
                                 size_t t0, size_t nt, uint16_t *dst, kv_error *err);

/* Direct reads of tensor rows, for callers that read from several threads. libhdf5 is not
 * thread-safe, so every other read here must be serialised by the caller (one lock), and
 * kv_trace_read_rows_f16 decompresses under that lock. The direct path reads the chunks
 * with pread on the library's own descriptor of the validated file and decodes them itself
 * (no filter, shuffle, deflate); lib/trace_read.c, "direct chunk reads", says why that is
 * safe on untrusted files.
 *   kv_trace_rows_direct_ok: under the caller's lock (it calls libhdf5: on first use of a
 * dataset it builds the table of its chunks). *ok = 1: rows of tensor `which` of layer l may
 * be read with kv_trace_read_rows_f16_direct; 0: this dataset's layout or filters are not
 * handled (contiguous, fletcher32, ...), read them with kv_trace_read_rows_f16 under the lock.
 * An error (a chunk index entry outside the file, ...) is one line naming file and dataset.
 *   kv_trace_read_rows_f16_direct: the bytes kv_trace_read_rows_f16 returns, without libhdf5
 * and without shared state: any number of threads at once, also while another thread holds
 * the lock inside another libkvtrace call on t (not kv_trace_close). The calling thread must
 * have had *ok = 1 from kv_trace_rows_direct_ok for (which, l) (KV_ERR_INVALID otherwise).
 * The file is re-checked before every read (changed since it was validated: KV_ERR_IO); a
 * chunk that does not decode to exactly its bytes is KV_ERR_FORMAT. */
kv_status kv_trace_rows_direct_ok(kv_trace *t, kv_tensor which, size_t l, int *ok, kv_error *err);
kv_status kv_trace_read_rows_f16_direct(const kv_trace *t, kv_tensor which, size_t s, size_t l, size_t h,
                                        size_t t0, size_t nt, uint16_t *dst, kv_error *err);

/* RoPE tables [T, R] each (KV_ERR_INVALID when absent). */
kv_status kv_trace_read_rope(kv_trace *t, float *cos, float *sin, kv_error *err);

/* Read-out (KV_ERR_INVALID when the trace has none). */
kv_status kv_trace_read_hidden(kv_trace *t, size_t s, float *dst /* [T, C] */, kv_error *err);
/* Rows [t0, t0+nt) of sequence s's hidden states into dst [nt, C]. */
kv_status kv_trace_read_hidden_rows(kv_trace *t, size_t s, size_t t0, size_t nt, float *dst, kv_error *err);
kv_status kv_trace_read_w_o(kv_trace *t, size_t l, float *dst /* [H*D, C] */, kv_error *err);
kv_status kv_trace_read_w_u(kv_trace *t, float *dst /* [V, C] */, kv_error *err);
kv_status kv_trace_read_b_u(kv_trace *t, float *dst /* [V] */, kv_error *err);
kv_status kv_trace_read_norm(kv_trace *t, float *weight /* [C] */, float *bias /* [C] or NULL */,
                             kv_error *err);
kv_status kv_trace_read_ref(kv_trace *t, size_t s, float *lse /* [T] */,
                            int32_t *top_ids /* [T, 8] */, float *top_logits /* [T, 8] */,
                            kv_error *err);

/* Generic bounded read of any float dataset (f16 or f32) / int32 dataset by path:
 * rank <= 4, start/count per dimension, dst holds prod(count) elements. */
kv_status kv_trace_read_f32(kv_trace *t, const char *dset, int rank, const size_t *start,
                            const size_t *count, float *dst, kv_error *err);
kv_status kv_trace_read_i32(kv_trace *t, const char *dset, int rank, const size_t *start,
                            const size_t *count, int32_t *dst, kv_error *err);

/* Shape, datatype and storage of any dataset of the (validated) trace, for `info`/`check`. */
typedef enum kv_dtype { KV_DT_OTHER = 0, KV_DT_F16, KV_DT_F32, KV_DT_I32 } kv_dtype;
typedef struct kv_dset_info {
    int rank;                       /* <= 4 for every schema dataset */
    size_t dims[4];
    kv_dtype dtype;
    int chunked;                    /* 0: contiguous */
    size_t chunk[4];                /* chunk dims (0 when contiguous) */
    int deflate, shuffle, fletcher32;
    unsigned long long storage_bytes; /* bytes on disk (after filters) */
} kv_dset_info;
/* KV_ERR_INVALID when dset does not exist or is not a dataset of rank <= 4. */
kv_status kv_trace_dataset_info(kv_trace *t, const char *dset, kv_dset_info *di, kv_error *err);

/* SHA-256 of the file's bytes as 64 hex chars + NUL (provenance of results). */
kv_status kv_file_sha256(const char *path, char hex[65], kv_error *err);
/* The same digest through a cache in cache_dir (lib/sha256.c says why and how): an entry
 * keyed by (device, inode, size, mtime ns, ctime ns) of the file, written atomically after a
 * fresh hash, trusted only when its key matches exactly. cache_dir NULL: no cache (a plain
 * kv_file_sha256). *hit (may be NULL): 1 when the digest came from the cache. A cache that
 * cannot be read or written is not an error. */
kv_status kv_file_sha256_cached(const char *path, const char *cache_dir, char hex[65], int *hit, kv_error *err);
/* A digest and the identity of the file version it is the digest of, to hand a digest
 * computed in one process to another that opens the same file (bin/kvreplay-mpi: rank 0 to
 * its workers), so that the other does not read the file again. The identity is the cache's
 * key without the device: (inode, size, mtime ns, ctime ns) from fstat of the descriptor
 * hashed, equal before and after hashing (have_id 0 when not: a file written while hashed,
 * or not a plain file). No device, because one file on a network file system can have
 * another st_dev on each node that mounts it; a node-local copy is another inode with
 * another ctime, and ctime cannot be set by a user. A plain struct: copy it as bytes. */
typedef struct kv_file_digest {
    char hex[65];                   /* 64 lowercase hex digits + NUL */
    int have_id;
    unsigned long long ino, size, mtime_ns, ctime_ns;  /* !have_id: only size, the bytes hashed */
} kv_file_digest;
enum { KV_SHA256_HASHED, KV_SHA256_CACHED, KV_SHA256_KNOWN };   /* *how */
/* kv_file_sha256_cached that also fills *d (the digest and the identity of the version it
 * belongs to) and takes a digest known from elsewhere: when known (may be NULL) has an
 * identity equal to the file's, its digest is the file's, taken without reading the file or
 * the cache. *how (may be NULL): KV_SHA256_KNOWN, _CACHED (the cache in cache_dir), or
 * _HASHED (the file's bytes were read and hashed). */
kv_status kv_file_sha256_known(const char *path, const char *cache_dir, const kv_file_digest *known,
                               kv_file_digest *d, int *how, kv_error *err);
/* The default cache directory into buf: $XDG_CACHE_HOME/kvtrace (absolute XDG only), else
 * $HOME/.cache/kvtrace; NULL when KVTRACE_HASH_CACHE=0 or neither is set. */
const char *kv_hash_cache_dir(char *buf, size_t len);
/* Small records in a cache directory (dir, e.g. kv_hash_cache_dir's): the file dir/name
 * holding exactly `line` (under 512 bytes). kv_cache_record_has: 1 when the file exists and
 * its bytes are exactly line (anything else, truncated, longer, another line: 0).
 * kv_cache_record_put: writes it as the digest cache writes its entries (temporary name and
 * rename, the directory private to the user); failing to write is not an error. name: one
 * file name (no '/', not starting with '.'). */
int kv_cache_record_has(const char *dir, const char *name, const char *line);
void kv_cache_record_put(const char *dir, const char *name, const char *line);

/* ---- writer ------------------------------------------------------------------------ */

/* Everything the root attributes need; strings may be NULL (written as absent). */
typedef struct kv_meta {
    const char *model, *architecture, *positional, *rope_layout;
    const char *capture_tool, *capture_version, *device, *torch_version;
    const char *transformers_version, *source, *command;
    size_t n_seq, n_tok, n_layers, n_heads, n_kv_heads, head_dim, d_model, vocab;
    size_t rotary_dim;              /* 0 = D when rope */
    double attn_scale, attn_softcap;
    long long sliding_window;
    long long bos_id;               /* < 0: absent */
    int deflate;                    /* 0 = none, 1..9 = zlib level (with shuffle) */
} kv_meta;

typedef struct kv_writer kv_writer;

/* Creates "<dir>/.<name>.tmp.XXXXXX" next to path; nothing appears under path until
 * kv_writer_finish() renames it there. */
kv_status kv_writer_create(const char *path, const kv_meta *meta, kv_writer **out, kv_error *err);
kv_status kv_writer_tokens(kv_writer *w, const int32_t *tokens /* [S,T] */,
                           const int32_t *seq_len /* [S] */, kv_error *err);
kv_status kv_writer_prefill_len(kv_writer *w, const int32_t *prefill_len /* [S] */, kv_error *err);
kv_status kv_writer_rope(kv_writer *w, const float *cos, const float *sin /* [T,R] */, kv_error *err);
/* One [T, D] slice, converted to f16 (or raw f16 bits with _f16). The datasets of a
 * tensor kind are created on first use; attn_out is optional but all-or-nothing. */
kv_status kv_writer_head(kv_writer *w, kv_tensor which, size_t s, size_t l, size_t h,
                         const float *src, kv_error *err);
kv_status kv_writer_head_f16(kv_writer *w, kv_tensor which, size_t s, size_t l, size_t h,
                             const uint16_t *src, kv_error *err);
kv_status kv_writer_layer_attr_int(kv_writer *w, size_t l, const char *name, long long v, kv_error *err);
/* Read-out: all of these or none. norm_bias and b_u may be NULL. */
kv_status kv_writer_readout(kv_writer *w, const char *norm_type, double norm_eps,
                            const float *norm_weight /* [C] */, const float *norm_bias,
                            const float *w_u /* [V,C] */, const float *b_u /* [V] */,
                            kv_error *err);
kv_status kv_writer_w_o(kv_writer *w, size_t l, const float *w_o /* [H*D, C] */, kv_error *err);
kv_status kv_writer_hidden(kv_writer *w, size_t s, const float *hidden /* [T, C] */, kv_error *err);
kv_status kv_writer_ref(kv_writer *w, size_t s, const float *lse /* [T] */,
                        const int32_t *top_ids /* [T,8] */, const float *top_logits /* [T,8] */,
                        kv_error *err);
kv_status kv_writer_attr_str(kv_writer *w, const char *name, const char *value, kv_error *err);
/* A numeric attribute on "/" or on a group written earlier ("/readout", "/layers/3"),
 * e.g. kv_writer_attr_float(w, "/readout", "final_logit_softcap", 30.0, &err). */
kv_status kv_writer_attr_float(kv_writer *w, const char *obj, const char *name, double value,
                               kv_error *err);
/* Checks completeness (every required dataset written), closes, fsyncs, renames. On
 * success the writer is freed. On failure nothing exists under path and the writer stays
 * allocated: an incomplete trace can still be completed and finished again; in every case
 * kv_writer_abort(w) releases it. */
kv_status kv_writer_finish(kv_writer *w, kv_error *err);
/* Closes and deletes the temporary file; NULL-safe. */
void kv_writer_abort(kv_writer *w);

/* ---- atomic small-file output (results, reports) ------------------------------------ */

/* fopen a temporary "<path>.tmp.<pid>" for writing; kv_atomic_commit fflush+fsync+fclose
 * and rename onto path; kv_atomic_discard closes and unlinks. */
typedef struct kv_atomic { void *fp; char tmp[4200]; char path[4096]; } kv_atomic;
kv_status kv_atomic_open(kv_atomic *a, const char *path, kv_error *err);
kv_status kv_atomic_commit(kv_atomic *a, kv_error *err);
void kv_atomic_discard(kv_atomic *a);

#endif /* KVTRACE_H */
