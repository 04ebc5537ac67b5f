/* libkvtrace internals shared by the lib/ sources (not installed, not for tools). */
#ifndef KV_INTERNAL_H
#define KV_INTERNAL_H

#include <hdf5.h>

#include "kvtrace.h"

/* The library's own name for kv_error_set (kvtrace.h). */
#define kverr_set kv_error_set

/* HDF5 process-wide settings every entry point applies first: no error-stack printing,
 * no dynamic filter plugins. Idempotent. */
void kvh5_quiet(void);

/* The kvtrace f16 file type (IEEE binary16 little-endian); caller closes it. */
hid_t kvh5_f16_type(void);

/* Element type classes the schema allows for datasets. */
enum { KVDT_OTHER = 0, KVDT_F16, KVDT_F32, KVDT_I32 };
int kvh5_dtype_class(hid_t type);
/* A short human name of a datatype for messages ("64-bit float", "compound", ...). */
void kvh5_type_name(hid_t type, char *buf, size_t cap);

/* Validation and description of an open file (lib/trace_validate.c).
 * full = 1: every rule of traces/SCHEMA.md and every chunk read (the validating child, or
 * in-process for files this process wrote); full = 0: only what fills *info (no caller
 * today: the parent takes *info from the child's verdict); full = KV_INSPECT_NO_CHUNKS: every
 * rule of full = 1 except reading the chunk index and the chunks of chunked datasets (the
 * stored-chunk count, H5Dget_num_chunks; check_chunks: their index, stored sizes and decoded
 * bytes; the values of /prompt_scores), for bytes that passed full = 1 before (kv_open_opts
 * .validated; the small value checks of /seq_len, /tokens, ... still run).
 * info->layer_window / model_layer are malloc'ed here; the caller frees them. */
enum { KV_INSPECT_NO_CHUNKS = 2 };
kv_status trace_inspect(const char *path, hid_t file, int full, kv_info *info, kv_error *err);

/* Storage facts of an open dataset (chunk dims 0 when contiguous). */
int kvh5_storage_facts(hid_t dset, int rank, int *chunked, size_t *chunk, int *deflate, int *shuffle,
                       int *fletcher32);

/* Checked size product: 0 on overflow or when the product exceeds cap, else 1. */
int kv_mul_ok(size_t a, size_t b, size_t cap, size_t *out);

#endif
