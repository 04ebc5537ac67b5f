/* The engine's handling of the hooks no strategy of its own uses yet: merged entries
 * (proportional attention), encoders (kv_mse accounting), compositions, decode-time select.
 *
 * This test links its OWN registry (rp_strategy_find/count/at defined here, so the
 * archive's registry.o is never pulled in) with three test strategies, writes a small trace
 * with the C writer and runs `kvreplay run` through kvcmd_run():
 *   pairmerge  prefill: prompt tokens (2j, 2j+1) merged into one entry (mean K/V, n = 2).
 *              The trace makes each pair identical, so proportional attention must give
 *              exactly the full attention: attn_cos = out_cos = mass_recall = 1, attn_kl = 0
 *              (to fp32 rounding), kv_mse = 0, keep_frac < 1.
 *   scalek     encoding: K <- 1.5 K (V untouched): kv_rel_mse_k = 0.25, kv_mse_v = 0.
 *   evenselect decode-time select: each query sees the even positions and itself.
 *   probe      = full, whose prefill also checks the context callbacks: prompt_attn rows sum
 *              to 1, are causal, and are bit-identical whether computed alone or inside a
 *              larger cached block; layer_kv returns this layer's arrays for its own index and
 *              the other layer's (different values, same pair structure) otherwise.
 *   calibtest  encoding with a calibrate hook asking for 1 sequence: without --calib the engine
 *              must calibrate on the LAST sequence (seq 1, values shifted by +64 so the test
 *              can tell), once per layer, and evaluate only seq 0 (for every configuration).
 * S=2, L=2, H=2, Hkv=1, D=4, T=24, decode 8. Tolerance 1e-6.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "strategy.h"

enum { S = 2, T = 24, L = 2, H = 2, HKV = 1, D = 4, C = 8, V = 16 };
static int fails = 0, checks = 0;

static void check(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

/* ---- test strategies -------------------------------------------------------------------- */

static int noop_configure(const double *v, void **cfg, char *err, size_t errlen) { *cfg = NULL; return 0; }

static int pairmerge_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out, char *err, size_t errlen)
{
    for (size_t g = 0; g < ctx->Hkv; g++) {
        const float *k = ctx->k + g * ctx->n * ctx->D, *v = ctx->v + g * ctx->n * ctx->D;
        for (size_t t = 0; t < ctx->P; t += 2) {
            int32_t mem[2] = { (int32_t)t, (int32_t)t + 1 };
            float km[D], vm[D];
            size_t m = t + 1 < ctx->P ? 2 : 1;
            for (size_t d = 0; d < ctx->D; d++) {
                km[d] = m == 2 ? 0.5f * (k[t * D + d] + k[(t + 1) * D + d]) : k[t * D + d];
                vm[d] = m == 2 ? 0.5f * (v[t * D + d] + v[(t + 1) * D + d]) : v[t * D + d];
            }
            if (rp_cache_push_merged(&out[g], mem, m, km, vm)) return -1;
        }
    }
    return 0;
}

static const rp_strategy pairmerge = {
    .name = "pairmerge", .summary = "test", .reference = "test", .kind = RP_EVICT, .protocols = RP_PREFILL,
    .configure = noop_configure, .prefill = pairmerge_prefill,
};

static int scalek_encode(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *c, char *err, size_t errlen)
{
    for (size_t i = 0; i < c->n * c->D; i++) c->k[i] *= 1.5f;
    c->modified = 1;
    c->bytes.payload = (double)c->n * c->D * 2 * 2;
    c->bytes.scales = 8;
    return 0;
}

static const rp_strategy scalek = {
    .name = "scalek", .summary = "test", .reference = "test", .kind = RP_ENCODE, .protocols = RP_PREFILL | RP_ONLINE,
    .configure = noop_configure, .encode = scalek_encode,
};

static void evenselect_select(const void *cfg, const rp_layer_ctx *ctx, size_t h, size_t t, const float *q,
                              const rp_cache *c, size_t B, uint8_t *visible)
{
    for (size_t e = 0; e < c->n; e++) visible[e] = (c->pos[e] % 2 == 0) || (size_t)c->pos[e] == t;
}

extern const rp_strategy rp_strategy_full;
static rp_strategy evenselect, probe;
static int probe_calls = 0, probe_bad = 0;

static int probe_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out, char *err, size_t errlen)
{
    size_t P = ctx->P;
    float *a = malloc(4 * P * sizeof *a), *b = malloc(P * P * sizeof *b);
    if (!a || !b) { free(a); free(b); return -1; }
    for (size_t h = 0; h < ctx->H; h++) {
        if (ctx->prompt_attn(ctx, h, P - 4, P, a) || ctx->prompt_attn(ctx, h, 0, P, b)) probe_bad++;
        if (memcmp(a, b + (P - 4) * P, 4 * P * sizeof *a)) probe_bad++;        /* alone == in a block */
        for (size_t t = 0; t < P; t++) {
            double sum = 0;
            for (size_t j = 0; j < P; j++) {
                sum += b[t * P + j];
                if (j > t && b[t * P + j] != 0) probe_bad++;                    /* causal */
            }
            if (fabs(sum - 1) > 1e-5) probe_bad++;
        }
    }
    if (ctx->prompt_attn(ctx, 0, 0, P + 1, a) == 0) probe_bad++;                  /* rows beyond P refused */
    const float *k0, *v0, *k1, *v1;
    size_t other = ctx->layer == 0 ? 1 : 0;
    if (ctx->layer_kv(ctx, ctx->layer, &k0, &v0) || k0 != ctx->k || v0 != ctx->v) probe_bad++;
    if (ctx->layer_kv(ctx, other, &k1, &v1) || k1 == ctx->k) probe_bad++;
    else {
        if (!memcmp(k1, ctx->k, ctx->n * ctx->D * sizeof *k1)) probe_bad++;         /* another layer */
        if (memcmp(k1 + 3 * ctx->D, k1 + 2 * ctx->D, ctx->D * sizeof *k1)) probe_bad++; /* pair structure */
    }
    if (ctx->layer_kv(ctx, ctx->n_layers, &k1, &v1) == 0) probe_bad++;            /* no such layer */
    free(a); free(b);
    #pragma omp atomic
    probe_calls++;
    return rp_strategy_full.prefill(cfg, ctx, B, out, err, errlen);
}

static int calib_calls = 0, calib_bad = 0;
typedef struct calib_cfg { int layers_seen; } calib_cfg;
static int calibtest_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    *cfg = calloc(1, sizeof(calib_cfg));
    return *cfg ? 0 : -1;
}
static void calibtest_free(void *cfg) { free(cfg); }
static size_t calibtest_seqs(const void *cfg) { return 1; }
static int calibtest_calibrate(void *cfg, const rp_calib_ctx *cc, char *err, size_t errlen)
{
    calib_calls++;
    if (cc->n_seq != 1 || cc->n[0] != T || cc->Hkv != HKV || cc->D != D || cc->layer >= L) calib_bad++;
    else if (!(cc->k[0][0] > 50 && cc->v[0][0] > 50)) calib_bad++;      /* seq 1's marker */
    ((calib_cfg *)cfg)->layers_seen++;
    return 0;
}
static int calibtest_encode(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *c, char *err, size_t errlen)
{
    if (((const calib_cfg *)cfg)->layers_seen != L) { snprintf(err, errlen, "not calibrated"); return -1; }
    return 0;
}
static const rp_strategy calibtest = {
    .name = "calibtest", .summary = "test", .reference = "test", .kind = RP_ENCODE, .protocols = RP_PREFILL,
    .configure = calibtest_configure, .free_cfg = calibtest_free, .calib_seqs = calibtest_seqs,
    .calibrate = calibtest_calibrate, .encode = calibtest_encode,
};

/* oomstep: online eviction whose step fails as an allocation failure would (the status
 * convention of online_step): the run must stop with the strategy's "out of memory", named
 * with the configuration and place, not with a budget breach. */
static void *oomstep_new(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B)
{
    static char token;
    return &token;
}
static kv_status oomstep_step(void *state, const rp_layer_ctx *ctx, size_t g, size_t t, const rp_cache *c,
                              const float *probs, size_t B, size_t *evict, size_t *n_evict, kv_error *err)
{
    *n_evict = 0;
    return kv_error_set(err, KV_ERR_NOMEM, "out of memory");
}
static void oomstep_free(void *state) {}
static rp_strategy oomstep;

enum { NREG = 7 };
static const rp_strategy *reg[NREG];
static void reg_init(void)
{
    evenselect = rp_strategy_full;
    evenselect.name = "evenselect";
    evenselect.select = evenselect_select;
    probe = rp_strategy_full;
    probe.name = "probe";
    probe.prefill = probe_prefill;
    reg[0] = &rp_strategy_full; reg[1] = &pairmerge; reg[2] = &scalek; reg[3] = &evenselect; reg[4] = &probe;
    reg[5] = &calibtest;
    oomstep = rp_strategy_full;
    oomstep.name = "oomstep";
    oomstep.protocols = RP_ONLINE;
    oomstep.needs_budget = 1;
    oomstep.online_new = oomstep_new;
    oomstep.online_step = oomstep_step;
    oomstep.online_free = oomstep_free;
    reg[6] = &oomstep;
}
size_t rp_strategy_count(void) { return NREG; }
const rp_strategy *rp_strategy_at(size_t i) { return i < NREG ? reg[i] : NULL; }
const rp_strategy *rp_strategy_find(const char *name)
{
    for (size_t i = 0; i < NREG; i++) if (!strcmp(reg[i]->name, name)) return reg[i];
    return NULL;
}

/* ---- trace and results ------------------------------------------------------------------ */

static int write_trace(const char *path)
{
    kv_meta m = { 0 };
    m.model = "hooks"; m.architecture = "llama"; m.positional = "learned";
    m.n_seq = S; m.n_tok = T; m.n_layers = L; m.n_heads = H; m.n_kv_heads = HKV; m.head_dim = D;
    m.d_model = C; m.vocab = V; m.attn_scale = 0.5; m.bos_id = -1;
    kv_writer *w = NULL;
    kv_error err;
    static int32_t tok[S * T], sl[S] = { T, T };
    static float buf[T * D];
    for (size_t t = 0; t < S * T; t++) tok[t] = (int32_t)(t % V);
    if (kv_writer_create(path, &m, &w, &err) || kv_writer_tokens(w, tok, sl, &err)) goto fail;
    unsigned x = 12345;
    for (size_t sq = 0; sq < S; sq++)
    for (int kind = 0; kind < 3; kind++)
        for (size_t h = 0; h < (kind == KV_Q ? (size_t)H : (size_t)HKV); h++) {
            for (size_t t = 0; t < T; t++)
                for (size_t d = 0; d < D; d++) {
                    x = x * 1103515245u + 12345u;
                    float r = (float)((x >> 16) % 64) / 16.0f - 2.0f;    /* exact in f16 */
                    /* K and V: odd prompt positions repeat the even one before them */
                    buf[t * D + d] = (kind != KV_Q && (t % 2) && t < T - 8) ? buf[(t - 1) * D + d] : r + (sq ? 64.0f : 0.0f);
                }
            for (size_t l = 0; l < L; l++) {
                for (size_t i = 0; i < T * D; i++) buf[i] += (float)l;          /* layers differ */
                if (kv_writer_head(w, (kv_tensor)kind, sq, l, h, buf, &err)) goto fail;
            }
        }
    if (kv_writer_finish(w, &err)) goto fail;
    return 0;
fail:
    printf("FAIL writing the trace: %s\n", err.msg);
    kv_writer_abort(w);
    return -1;
}

/* Column `col` of per_seq.csv row `row` (1-based data rows) into buf. */
static int field(const char *dir, int row, const char *col, char *buf, size_t len)
{
    char path[4200], line[4096], hdr[4096];
    snprintf(path, sizeof path, "%s/per_seq.csv", dir);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(hdr, sizeof hdr, f)) { if (f) fclose(f); return -1; }
    int ci = -1, i = 0;
    for (char *p = strtok(hdr, ",\n"); p; p = strtok(NULL, ",\n"), i++) if (!strcmp(p, col)) ci = i;
    int r = 0;
    while (r < row && fgets(line, sizeof line, f)) r++;
    fclose(f);
    if (r < row) return -1;
    i = 0;
    char *p = line;
    while (i < ci && p) { p = strchr(p, ','); if (p) p++; i++; }
    if (!p) return -1;
    size_t n = strcspn(p, ",\n");
    snprintf(buf, len, "%.*s", (int)n, p);
    return 0;
}

static double num(const char *dir, int row, const char *col)
{
    char b[64];
    if (field(dir, row, col, b, sizeof b) || !b[0]) return NAN;
    return strtod(b, NULL);
}

static void near(const char *what, double got, double want, double tol)
{
    checks++;
    if (!(fabs(got - want) <= tol)) { fails++; printf("FAIL %s: got %.9g want %.9g (tol %g)\n", what, got, want, tol); }
}

int main(void)
{
    reg_init();
    const char *tmp = getenv("KV_TMP") ? getenv("KV_TMP") : "/tmp";
    char trace[4096], out[4096];
    snprintf(trace, sizeof trace, "%s/hooks.h5", tmp);
    snprintf(out, sizeof out, "%s/hooks_out.%d", tmp, (int)getpid());
    if (write_trace(trace)) return 1;
    char *argv[] = { "run", trace, "--decode", "8", "-o", out, "--strategy", "full", "--strategy", "pairmerge",
                     "--strategy", "scalek", "--strategy", "pairmerge + scalek", "--strategy", "evenselect", "--strategy", "probe",
                     "--strategy", "calibtest", NULL };
    int rc = kvcmd_run((int)(sizeof argv / sizeof argv[0]) - 1, argv);
    check("kvcmd_run exit 0", rc == 0);
    if (rc) return 1;
    /* row 2: pairmerge — identical members: the full attention, to fp32 rounding */
    near("pairmerge attn_cos", num(out, 2, "attn_cos"), 1, 1e-6);
    near("pairmerge out_cos", num(out, 2, "out_cos"), 1, 1e-6);
    near("pairmerge mass_recall", num(out, 2, "mass_recall"), 1, 1e-6);
    near("pairmerge attn_kl", num(out, 2, "attn_kl"), 0, 1e-6);
    near("pairmerge kv_mse_k", num(out, 2, "kv_mse_k"), 0, 1e-12);
    check("pairmerge keep_frac < 1", num(out, 2, "keep_frac") < 0.8);
    /* row 3: scalek — K * 1.5 */
    near("scalek kv_rel_mse_k", num(out, 3, "kv_rel_mse_k"), 0.25, 1e-6);
    near("scalek kv_mse_v", num(out, 3, "kv_mse_v"), 0, 1e-12);
    near("scalek keep_frac", num(out, 3, "keep_frac"), 1, 0);
    check("scalek changes attention", num(out, 3, "attn_kl") > 1e-3);
    near("scalek kv_bytes = payload + 8 scales per layer", num(out, 3, "kv_bytes"), L * (T * D * 4 + 8), 0);
    /* row 4: composition: the merged mean of identical pairs, then K * 1.5 */
    near("pairmerge+scalek kv_rel_mse_k", num(out, 4, "kv_rel_mse_k"), 0.25, 1e-6);
    near("pairmerge+scalek attn_kl = scalek's", num(out, 4, "attn_kl"), num(out, 3, "attn_kl"), 1e-5);
    /* row 5: select */
    check("evenselect keep_frac < 1", num(out, 5, "keep_frac") < 0.7);
    check("evenselect mass_recall < 1", num(out, 5, "mass_recall") < 0.999);
    check("probe ran once per layer (seq 0 only)", probe_calls == L);
    check("calibrate called once per layer", calib_calls == L);
    check("calibration data is sequence 1", calib_bad == 0);
    char sq[16] = "";
    field(out, 7, "seq", sq, sizeof sq);
    check("calibtest evaluated on seq 0 only", !strcmp(sq, "0") && field(out, 8, "seq", sq, sizeof sq) != 0);
    check("prompt_attn / layer_kv behave as documented", probe_bad == 0);
    if (probe_bad) printf("  %d probe failures\n", probe_bad);
    near("probe = full", num(out, 6, "attn_kl"), 0, 0);
    char fam[64] = "";
    field(out, 4, "family", fam, sizeof fam);
    check("composition family", !strcmp(fam, "pairmerge+scalek"));

    /* online_step's status: the engine reports the strategy's message with its place */
    char out2[4200], errpath[4200], msg[2048] = "";
    snprintf(out2, sizeof out2, "%s.oom", out);
    snprintf(errpath, sizeof errpath, "%s.stderr", out);
    char *argv2[] = { "run", trace, "--mode", "online", "--decode", "8", "-o", out2, "--threads", "1",
                      "--strategy", "oomstep keep=0.5", NULL };
    fflush(stderr);
    int saved = dup(2);
    FILE *ef = fopen(errpath, "w+");
    if (saved < 0 || !ef) { printf("FAIL cannot redirect stderr\n"); return 1; }
    dup2(fileno(ef), 2);
    rc = kvcmd_run((int)(sizeof argv2 / sizeof argv2[0]) - 1, argv2);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(ef);
    size_t got = fread(msg, 1, sizeof msg - 1, ef);
    msg[got] = 0;
    fclose(ef);
    remove(errpath);
    check("online_step failure: non-zero exit", rc != 0);
    check("online_step failure: the strategy's 'out of memory' with config and place",
          strstr(msg, "config 'oomstep keep=0.5': oomstep online step at seq 0 layer ") &&
          strstr(msg, "kv head 0 position ") && strstr(msg, ": out of memory"));
    check("online_step failure: not reported as a budget breach", !strstr(msg, "budget"));
    if (fails) printf("  stderr was: %s\n", msg);
    printf("%d checks, %d failures\n", checks, fails);
    return fails ? 1 : 0;
}
