/* C writer -> C reader round trip, writer abort/incomplete behaviour, and survival of a
 * crashing / hanging validator child.
 *
 *   test_trace_roundtrip                      run every check (exit 0 = pass)
 *   test_trace_roundtrip --write PATH         write the fixture trace to PATH (for h5py/h5dump
 *                                             in tests/py/test_interop.py)
 *   test_trace_roundtrip --dump PATH KIND S L H   print the [T, D] slice read as f32 (%.9g,
 *                                             one value a line; KIND q|k|v|attn_out)
 *   test_trace_roundtrip --dump-f32 PATH DSET print a whole float dataset (rank <= 4) as f32
 *
 * The fixture's f16 values are a hash of (kind, s, l, h, t, d) (fixture_bits, mirrored in
 * tests/py/test_interop.py), Inf/NaN patterns excluded, so the round trip is bit-exact.
 * Shapes: S=2, T=300 (two token chunks of 256), L=2, H=4, Hkv=2, D=8, C=16, V=50.
 */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvtrace.h"
#include "trace_testhelp.h"

enum { S = 2, T = 300, L = 2, H = 4, HKV = 2, D = 8, C = 16, V = 50 };

static uint16_t fixture_bits(int kind, size_t s, size_t l, size_t h, size_t t, size_t d)
{
    uint32_t x = (uint32_t)(kind * 1000003u + s * 7919u + l * 104729u + h * 1299709u + t * 31u + d * 17u);
    uint32_t p = ((x * 2654435761u) >> 7) & 0xffffu;
    if (((p >> 10) & 31u) == 31u)
        p ^= 0x4000u;                 /* no Inf/NaN: exponent 31 -> 15 */
    return (uint16_t)p;
}

static void fill_slice(int kind, size_t s, size_t l, size_t h, uint16_t *dst)
{
    for (size_t t = 0; t < T; t++)
        for (size_t d = 0; d < D; d++)
            dst[t * D + d] = fixture_bits(kind, s, l, h, t, d);
}

static const int32_t seq_len[S] = {300, 250};
static const int32_t prefill[S] = {100, 200};

static kv_meta fixture_meta(void)
{
    kv_meta m = {0};
    m.model = "roundtrip-fixture";
    m.architecture = "llama";
    m.positional = "rope";
    m.rope_layout = "rotate_half";
    m.capture_tool = "test_trace_roundtrip";
    m.capture_version = "1";
    m.device = "cpu";
    m.source = "synthetic hash values";
    m.n_seq = S; m.n_tok = T; m.n_layers = L; m.n_heads = H; m.n_kv_heads = HKV;
    m.head_dim = D; m.d_model = C; m.vocab = V;
    m.attn_scale = 1.0 / sqrt((double)D);
    m.bos_id = 1;
    m.deflate = 4;
    return m;
}

static int write_fixture(const char *path, kv_error *err)
{
    kv_meta m = fixture_meta();
    kv_writer *w = NULL;
    static int32_t tok[S * T];
    static uint16_t slice[T * D];
    static float fslice[T * D], cosv[T * D], sinv[T * D], hid[T * C], wo[H * D * C], wu[V * C], nw[C];
    static float lse[T], topl[T * KV_TOPK];
    static int32_t topi[T * KV_TOPK];
    if (kv_writer_create(path, &m, &w, err) != KV_OK)
        return -1;
    for (size_t s = 0; s < S; s++)
        for (size_t t = 0; t < T; t++)
            tok[s * T + t] = (int32_t)((s * 13 + t * 7) % V);
    for (size_t t = 0; t < T; t++)
        for (size_t r = 0; r < D; r++) {
            cosv[t * D + r] = cosf((float)t * 0.01f * (float)(r + 1));
            sinv[t * D + r] = sinf((float)t * 0.01f * (float)(r + 1));
        }
    if (kv_writer_tokens(w, tok, seq_len, err) || kv_writer_prefill_len(w, prefill, err) ||
        kv_writer_rope(w, cosv, sinv, err) || kv_writer_layer_attr_int(w, 1, "sliding_window", 64, err))
        goto fail;
    for (int k = 0; k < 4; k++)
        for (size_t l = 0; l < L; l++)
            for (size_t s = 0; s < S; s++)
                for (size_t h = 0; h < ((k == KV_K || k == KV_V) ? HKV : H); h++) {
                    fill_slice(k, s, l, h, slice);
                    kv_status st;
                    if ((h + s) % 2) {          /* half through the f32 entry point */
                        kv_f16_to_f32(slice, fslice, T * D);
                        st = kv_writer_head(w, (kv_tensor)k, s, l, h, fslice, err);
                    } else {
                        st = kv_writer_head_f16(w, (kv_tensor)k, s, l, h, slice, err);
                    }
                    if (st != KV_OK)
                        goto fail;
                }
    for (size_t c = 0; c < C; c++)
        nw[c] = 1.0f + 0.01f * (float)c;
    for (size_t v = 0; v < V; v++)
        for (size_t c = 0; c < C; c++)
            wu[v * C + c] = (float)((int)((v * 3 + c) % 11) - 5) * 0.0625f;
    if (kv_writer_readout(w, "rmsnorm", 1e-5, nw, NULL, wu, NULL, err) ||
        kv_writer_attr_float(w, "/readout", "final_logit_softcap", 30.0, err))
        goto fail;
    for (size_t l = 0; l < L; l++) {
        for (size_t i = 0; i < H * D; i++)
            for (size_t c = 0; c < C; c++)
                wo[i * C + c] = (float)((int)((i + c + l) % 7) - 3) * 0.125f;
        if (kv_writer_w_o(w, l, wo, err))
            goto fail;
    }
    for (size_t s = 0; s < S; s++) {
        for (size_t t = 0; t < T; t++) {
            for (size_t c = 0; c < C; c++)
                hid[t * C + c] = (float)((int)((t + c + s) % 13) - 6) * 0.25f;
            lse[t] = (float)t * 0.5f;
            for (int k = 0; k < KV_TOPK; k++) {
                topi[t * KV_TOPK + k] = (int32_t)((t + (size_t)k + s) % V);
                topl[t * KV_TOPK + k] = 10.0f - (float)k;
            }
        }
        if (kv_writer_hidden(w, s, hid, err) || kv_writer_ref(w, s, lse, topi, topl, err))
            goto fail;
    }
    if (kv_writer_finish(w, err) != KV_OK)
        goto fail;
    return 0;
fail:
    kv_writer_abort(w);
    return -1;
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static int exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

static void test_roundtrip(const char *dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/fixture.h5", dir);
    kv_error err = {0};
    CHECK(write_fixture(path, &err) == 0, "write_fixture: %s", err.msg);
    CHECK(count_entries(dir) == 1, "directory holds %d entries after finish, want 1 (no temp left)",
          count_entries(dir));

    kv_trace *t = NULL;
    if (kv_trace_open(path, NULL, &t, &err) != KV_OK) {
        CHECK(0, "open: %s", err.msg);
        return;
    }
    const kv_info *in = kv_trace_info(t);
    CHECK(in->version == 1 && !strcmp(in->model, "roundtrip-fixture") && !strcmp(in->architecture, "llama"),
          "version/model/architecture: %d %s %s", in->version, in->model, in->architecture);
    CHECK(in->n_seq == S && in->n_tok == T && in->n_layers == L && in->n_heads == H && in->n_kv_heads == HKV &&
          in->head_dim == D && in->d_model == C && in->vocab == V, "dims");
    CHECK(in->rotary_dim == D && !strcmp(in->rope_layout, "rotate_half") && !strcmp(in->positional, "rope"), "rope meta");
    CHECK(fabs(in->attn_scale - 1.0 / sqrt(8.0)) < 1e-15 && in->attn_softcap == 0 && in->sliding_window == 0, "attn meta");
    CHECK(in->layer_window[0] == 0 && in->layer_window[1] == 64, "layer windows %lld %lld", in->layer_window[0],
          in->layer_window[1]);
    CHECK(in->model_layer[0] == 0 && in->model_layer[1] == 1, "model_layer");
    CHECK(in->bos_id == 1, "bos_id %lld", in->bos_id);
    CHECK(in->has_prefill && in->has_rope && in->has_attn_out && in->has_readout, "optional groups");
    CHECK(!strcmp(in->norm_type, "rmsnorm") && fabs(in->norm_eps - 1e-5) < 1e-20 && in->final_logit_softcap == 30.0,
          "readout attrs");
    CHECK(!in->has_norm_bias && !in->has_b_u, "no bias");
    CHECK(in->q_chunked && in->q_chunk[0] == 1 && in->q_chunk[1] == 1 && in->q_chunk[2] == 256 && in->q_chunk[3] == D,
          "chunk shape (%zu, %zu, %zu, %zu)", in->q_chunk[0], in->q_chunk[1], in->q_chunk[2], in->q_chunk[3]);
    CHECK(in->q_deflate && in->q_shuffle && !in->q_fletcher32, "filters");
    CHECK(!strcmp(in->capture_tool, "test_trace_roundtrip") && in->created[0], "provenance");
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && (unsigned long long)sb.st_size == in->file_bytes, "file_bytes");

    /* every slice, raw and as f32, plus a partial row range */
    static uint16_t want[T * D], got[T * D];
    static float f[T * D], rows[T * D];
    size_t bad_bits = 0, bad_f = 0, bad_rows = 0;
    for (int k = 0; k < 4; k++)
        for (size_t l = 0; l < L; l++)
            for (size_t s = 0; s < S; s++)
                for (size_t h = 0; h < ((k == KV_K || k == KV_V) ? HKV : H); h++) {
                    fill_slice(k, s, l, h, want);
                    if (kv_trace_read_head_f16(t, (kv_tensor)k, s, l, h, got, &err) != KV_OK ||
                        kv_trace_read_head(t, (kv_tensor)k, s, l, h, f, &err) != KV_OK ||
                        kv_trace_read_rows(t, (kv_tensor)k, s, l, h, 37, 250, rows, &err) != KV_OK) {
                        CHECK(0, "read k=%d s=%zu l=%zu h=%zu: %s", k, s, l, h, err.msg);
                        continue;
                    }
                    for (size_t i = 0; i < T * D; i++) {
                        bad_bits += got[i] != want[i];
                        bad_f += memcmp(&f[i], &(float){kv_f16_to_f32_one(want[i])}, 4) != 0;
                    }
                    for (size_t i = 0; i < 250 * D; i++)
                        bad_rows += memcmp(&rows[i], &f[37 * D + i], 4) != 0;
                }
    CHECK(bad_bits == 0 && bad_f == 0 && bad_rows == 0, "slice mismatches: raw %zu, f32 %zu, rows %zu", bad_bits,
          bad_f, bad_rows);

    static int32_t tok[S * T], sl[S], pl[S], topi[T * KV_TOPK];
    CHECK(kv_trace_read_tokens(t, tok, &err) == KV_OK && kv_trace_read_seq_len(t, sl, &err) == KV_OK &&
          kv_trace_read_prefill_len(t, pl, &err) == KV_OK, "read ints: %s", err.msg);
    size_t bad_tok = 0;
    for (size_t s = 0; s < S; s++)
        for (size_t i = 0; i < T; i++)
            bad_tok += tok[s * T + i] != (int32_t)((s * 13 + i * 7) % V);
    CHECK(bad_tok == 0 && sl[0] == 300 && sl[1] == 250 && pl[0] == 100 && pl[1] == 200, "tokens/seq_len/prefill");

    static float cosv[T * D], sinv[T * D];
    CHECK(kv_trace_read_rope(t, cosv, sinv, &err) == KV_OK, "rope: %s", err.msg);
    size_t bad_rope = 0;
    for (size_t i = 0; i < T; i++)
        for (size_t r = 0; r < D; r++)
            bad_rope += cosv[i * D + r] != cosf((float)i * 0.01f * (float)(r + 1)) ||
                        sinv[i * D + r] != sinf((float)i * 0.01f * (float)(r + 1));
    CHECK(bad_rope == 0, "rope mismatches %zu", bad_rope);

    static float hid[T * C], wo[H * D * C], wu[V * C], nw[C], lse[T], topl[T * KV_TOPK];
    size_t bad_ro = 0;
    CHECK(kv_trace_read_w_u(t, wu, &err) == KV_OK && kv_trace_read_norm(t, nw, NULL, &err) == KV_OK, "%s", err.msg);
    for (size_t v = 0; v < V; v++)
        for (size_t c = 0; c < C; c++)
            bad_ro += wu[v * C + c] != (float)((int)((v * 3 + c) % 11) - 5) * 0.0625f;
    for (size_t c = 0; c < C; c++)
        bad_ro += nw[c] != 1.0f + 0.01f * (float)c;
    for (size_t l = 0; l < L; l++) {
        CHECK(kv_trace_read_w_o(t, l, wo, &err) == KV_OK, "%s", err.msg);
        for (size_t i = 0; i < H * D; i++)
            for (size_t c = 0; c < C; c++)
                bad_ro += wo[i * C + c] != (float)((int)((i + c + l) % 7) - 3) * 0.125f;
    }
    for (size_t s = 0; s < S; s++) {
        CHECK(kv_trace_read_hidden(t, s, hid, &err) == KV_OK && kv_trace_read_ref(t, s, lse, topi, topl, &err) == KV_OK,
              "%s", err.msg);
        for (size_t i = 0; i < T; i++) {
            for (size_t c = 0; c < C; c++)
                bad_ro += hid[i * C + c] != (float)((int)((i + c + s) % 13) - 6) * 0.25f;
            bad_ro += lse[i] != (float)i * 0.5f;
            for (int k = 0; k < KV_TOPK; k++)
                bad_ro += topi[i * KV_TOPK + k] != (int32_t)((i + (size_t)k + s) % V) ||
                          topl[i * KV_TOPK + k] != 10.0f - (float)k;
        }
    }
    CHECK(bad_ro == 0, "read-out mismatches %zu", bad_ro);

    /* bounds are enforced */
    CHECK(kv_trace_read_head(t, KV_K, 0, 0, HKV, f, &err) == KV_ERR_INVALID, "kv head out of range accepted");
    CHECK(kv_trace_read_head(t, KV_Q, S, 0, 0, f, &err) == KV_ERR_INVALID, "sequence out of range accepted");
    CHECK(kv_trace_read_rows(t, KV_Q, 0, 0, 0, 200, 101, f, &err) == KV_ERR_INVALID, "rows past T accepted");
    CHECK(kv_trace_read_rows(t, KV_Q, 0, L, 0, 0, 1, f, &err) == KV_ERR_INVALID, "layer out of range accepted");
    size_t st[2] = {0, 0}, ct[2] = {V, C + 1};
    CHECK(kv_trace_read_f32(t, "/readout/w_u", 2, st, ct, wu, &err) == KV_ERR_INVALID, "generic read past dims");
    CHECK(kv_trace_read_f32(t, "/nope/x", 2, st, ct, wu, &err) == KV_ERR_INVALID, "missing dataset");
    kv_dset_info di;
    CHECK(kv_trace_dataset_info(t, "/layers/1/v", &di, &err) == KV_OK && di.rank == 4 && di.dims[1] == HKV &&
          di.dtype == KV_DT_F16 && di.chunked && di.deflate && di.storage_bytes > 0, "dataset_info");
    kv_trace_close(t);

    /* trusted in-process open gives the same info */
    kv_open_opts o = {0};
    o.skip_child_validation = 1;
    CHECK(kv_trace_open(path, &o, &t, &err) == KV_OK && kv_trace_info(t)->n_tok == T, "skip-child open: %s", err.msg);
    kv_trace_close(t);
}

static void test_abort_and_incomplete(const char *dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/partial.h5", dir);
    int before = count_entries(dir);
    kv_meta m = fixture_meta();
    kv_error err = {0};
    kv_writer *w = NULL;
    static uint16_t slice[T * D];
    static int32_t tok[S * T];

    /* abort leaves nothing */
    CHECK(kv_writer_create(path, &m, &w, &err) == KV_OK, "create: %s", err.msg);
    fill_slice(0, 0, 0, 0, slice);
    CHECK(kv_writer_head_f16(w, KV_Q, 0, 0, 0, slice, &err) == KV_OK, "head: %s", err.msg);
    CHECK(count_entries(dir) == before + 1, "temp file not in the target directory");
    kv_writer_abort(w);
    CHECK(count_entries(dir) == before && !exists(path), "abort left %d entries", count_entries(dir) - before);

    /* finishing an incomplete trace fails and leaves nothing under the final name */
    CHECK(kv_writer_create(path, &m, &w, &err) == KV_OK, "create: %s", err.msg);
    CHECK(kv_writer_finish(w, &err) == KV_ERR_INVALID && strstr(err.msg, "/tokens"), "finish without tokens: %s",
          err.msg);
    CHECK(kv_writer_tokens(w, tok, seq_len, &err) == KV_OK, "tokens: %s", err.msg);
    for (size_t l = 0; l < L; l++)
        for (size_t s = 0; s < S; s++) {
            for (size_t h = 0; h < H; h++)
                kv_writer_head_f16(w, KV_Q, s, l, h, slice, &err);
            for (size_t h = 0; h < HKV; h++) {
                kv_writer_head_f16(w, KV_K, s, l, h, slice, &err);
                if (!(l == 1 && s == 1 && h == 1))   /* one V slice missing */
                    kv_writer_head_f16(w, KV_V, s, l, h, slice, &err);
            }
        }
    kv_status st = kv_writer_finish(w, &err);
    CHECK(st == KV_ERR_INVALID && strstr(err.msg, "/layers/1/v") && strstr(err.msg, "s=1, h=1"),
          "incomplete finish: %s (%s)", kv_status_name(st), err.msg);
    CHECK(!exists(path), "final name exists after a failed finish");
    /* one attn_out slice makes attn_out required in full */
    CHECK(kv_writer_head_f16(w, KV_V, 1, 1, 1, slice, &err) == KV_OK, "complete v: %s", err.msg);
    CHECK(kv_writer_head_f16(w, KV_ATTN_OUT, 0, 0, 0, slice, &err) == KV_OK, "attn_out: %s", err.msg);
    CHECK(kv_writer_finish(w, &err) == KV_ERR_INVALID && strstr(err.msg, "attn_out"), "partial attn_out accepted: %s",
          err.msg);
    CHECK(!exists(path), "final name exists after a failed finish");
    kv_writer_abort(w);
    CHECK(count_entries(dir) == before, "failed finish + abort left %d entries", count_entries(dir) - before);

    /* bad meta is refused before anything is created */
    m.n_kv_heads = 3;
    CHECK(kv_writer_create(path, &m, &w, &err) == KV_ERR_INVALID && count_entries(dir) == before,
          "H %% Hkv != 0 accepted: %s", err.msg);
}

static void test_validator_survival(const char *dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/fixture.h5", dir);
    kv_error err = {0};
    kv_trace *t = NULL;
    kv_open_opts o = {0};
    o.test_fault = 1;
    kv_status st = kv_trace_open(path, &o, &t, &err);
    CHECK(st == KV_ERR_VALIDATOR && t == NULL && strstr(err.msg, path) && strstr(err.msg, "signal 11") &&
          !strchr(err.msg, '\n'), "SIGSEGV in the validator: %s: %s", kv_status_name(st), err.msg);
    printf("crash:   %s\n", err.msg);
    o.test_fault = 2;
    o.timeout_s = 1;
    st = kv_trace_validate(path, &o, &err);
    CHECK(st == KV_ERR_VALIDATOR && strstr(err.msg, path) && strstr(err.msg, "timed out"),
          "hanging validator: %s: %s", kv_status_name(st), err.msg);
    printf("timeout: %s\n", err.msg);
    /* a normal validation still works afterwards (no zombie, no stale state) */
    CHECK(kv_trace_validate(path, NULL, &err) == KV_OK, "validate after faults: %s", err.msg);
    char missing[4300];
    snprintf(missing, sizeof missing, "%s/does-not-exist.h5", dir);
    CHECK(kv_trace_validate(missing, NULL, &err) == KV_ERR_IO && strstr(err.msg, missing), "missing file: %s",
          err.msg);
}

static int dump(int argc, char **argv)
{
    kv_error err = {0};
    kv_trace *t = NULL;
    if (kv_trace_open(argv[2], NULL, &t, &err) != KV_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const kv_info *in = kv_trace_info(t);
    int rc = 1;
    if (!strcmp(argv[1], "--dump") && argc == 7) {
        static const char *kinds[4] = {"q", "k", "v", "attn_out"};
        int k = 0;
        while (k < 4 && strcmp(kinds[k], argv[3]))
            k++;
        float *f = malloc(in->n_tok * in->head_dim * sizeof *f);
        if (k < 4 && f &&
            kv_trace_read_head(t, (kv_tensor)k, strtoul(argv[4], NULL, 10), strtoul(argv[5], NULL, 10),
                               strtoul(argv[6], NULL, 10), f, &err) == KV_OK) {
            for (size_t i = 0; i < in->n_tok * in->head_dim; i++)
                printf("%.9g\n", f[i]);
            rc = 0;
        } else {
            fprintf(stderr, "%s\n", k < 4 ? err.msg : "bad kind");
        }
        free(f);
    } else if (!strcmp(argv[1], "--dump-f32") && argc == 4) {
        kv_dset_info di;
        if (kv_trace_dataset_info(t, argv[3], &di, &err) == KV_OK) {
            size_t n = 1, st[4] = {0, 0, 0, 0};
            for (int i = 0; i < di.rank; i++)
                n *= di.dims[i];
            float *f = malloc(n * sizeof *f);
            if (f && kv_trace_read_f32(t, argv[3], di.rank, st, di.dims, f, &err) == KV_OK) {
                for (size_t i = 0; i < n; i++)
                    printf("%.9g\n", f[i]);
                rc = 0;
            } else {
                fprintf(stderr, "%s\n", err.msg);
            }
            free(f);
        } else {
            fprintf(stderr, "%s\n", err.msg);
        }
    }
    kv_trace_close(t);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--write")) {
        kv_error err = {0};
        if (write_fixture(argv[2], &err) != 0) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        return 0;
    }
    if (argc >= 2 && !strncmp(argv[1], "--dump", 6))
        return dump(argc, argv);

    char tmpl[4096];
    const char *base = getenv("KV_TMP");
    snprintf(tmpl, sizeof tmpl, "%s/rt.XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpl)) {
        perror("mkdtemp");
        return 1;
    }
    test_roundtrip(tmpl);
    test_abort_and_incomplete(tmpl);
    test_validator_survival(tmpl);
    char p[4200];
    snprintf(p, sizeof p, "%s/fixture.h5", tmpl);
    unlink(p);
    rmdir(tmpl);
    printf("%d checks, %d failures\n", checks, fails);
    return fails ? 1 : 0;
}
