/* replay/strategies/lowrank.c (and asymkv.c's delegation): RoPE inverse, the GSL basis on a
 * hand case, full rank reproduces the input, error non-increasing in rank, V-only leaves K
 * bit-exact, latent quantisation, bytes, refusals (rank > head_dim, rope without tables,
 * bad latent_bits, uncalibrated layer), asymkv = quant on quantised sides bit for bit, and
 * asymkv's incremental encoding (encode_extend, with and without a value budget) = one
 * encode of the whole cache at every size. */
#include "enc_testhelp.h"
#include "strategies/lowrank.h"

extern const rp_strategy rp_strategy_lowrank, rp_strategy_asymkv, rp_strategy_quant;

enum { D = 8, N = 120, HKV = 2, R = 8 };

static float K[HKV][N][D], V[HKV][N][D], COS[N][R], SIN[N][R];

static void make_data(void)
{
    rp_rng r = { 3 };
    /* de-rotated keys live mostly in a 3-dim subspace (decaying spectrum), then RoPE */
    for (size_t g = 0; g < HKV; g++)
        for (size_t t = 0; t < N; t++) {
            float a = randn(&r) * 3, b = randn(&r) * 2, c = randn(&r);
            for (size_t d = 0; d < D; d++) {
                K[g][t][d] = a * (float)cos(0.3 * d + g) + b * (float)sin(0.7 * d) + c * (d % 3 == 0) + 0.05f * randn(&r);
                V[g][t][d] = randn(&r) * (float)(D - d) / D;
            }
        }
    for (size_t t = 0; t < N; t++)
        for (size_t i = 0; i < R / 2; i++) {
            double th = t * pow(10000.0, -2.0 * i / R);
            COS[t][i] = COS[t][i + R / 2] = (float)cos(th);
            SIN[t][i] = SIN[t][i + R / 2] = (float)sin(th);
        }
    for (size_t g = 0; g < HKV; g++)
        for (size_t t = 0; t < N; t++) lowrank_rope(K[g][t], R, COS[t], SIN[t], 0, +1);
}

/* Calibrate cfg of s on tokens [0, 60) (sequence "A"); 0 ok (or nothing to calibrate). */
static int calibrate_on_a(const rp_strategy *s, void *cfg, int with_rope, char *err, size_t errlen)
{
    static float ck[HKV][60][D], cv[HKV][60][D];
    for (size_t g = 0; g < HKV; g++) { memcpy(ck[g], K[g], sizeof ck[g]); memcpy(cv[g], V[g], sizeof cv[g]); }
    size_t n60 = 60;
    const float *kp = &ck[0][0][0], *vp = &cv[0][0][0];
    rp_calib_ctx cc = { .layer = 0, .n_layers = 1, .Hkv = HKV, .D = D, .n_seq = 1, .n = &n60, .k = &kp, .v = &vp,
                        .rope_cos = with_rope ? &COS[0][0] : NULL, .rope_sin = with_rope ? &SIN[0][0] : NULL,
                        .rotary_dim = R };
    return s->calibrate ? s->calibrate(cfg, &cc, err, errlen) : 0;
}

/* The layer context of sequence "B" (n = N tokens, prompt length P) on a rope trace. */
static void layer_ctx(rp_layer_ctx *ctx, kv_info *info, int with_rope, size_t P)
{
    memset(info, 0, sizeof *info);
    strcpy(info->positional, "rope");
    memset(ctx, 0, sizeof *ctx);
    ctx->D = D; ctx->n = N; ctx->P = P; ctx->Hkv = HKV; ctx->H = HKV; ctx->G = 1; ctx->n_layers = 1; ctx->info = info;
    ctx->rope_cos = with_rope ? &COS[0][0] : NULL; ctx->rope_sin = with_rope ? &SIN[0][0] : NULL; ctx->rotary_dim = R;
}

/* Calibrate on tokens [0, 60) (sequence "A"), encode tokens [60, 120) ("B"). */
static int run(const rp_strategy *s, const char *const *kv, int with_rope, float *ko, float *vo, rp_bytes *b,
               char *err, size_t errlen)
{
    void *cfg = NULL;
    if (strat_configure(s, kv, &cfg, err, errlen)) return -1;
    int rc = calibrate_on_a(s, cfg, with_rope, err, errlen);
    kv_info info;
    rp_layer_ctx ctx;
    layer_ctx(&ctx, &info, with_rope, N);
    for (size_t g = 0; g < HKV && !rc; g++) {
        rp_cache c;
        memset(&c, 0, sizeof c);
        c.D = D;
        for (size_t t = 60; t < N; t++) rp_cache_push(&c, (int32_t)t, K[g][t], V[g][t]);
        rc = s->encode(cfg, &ctx, g, N - 1, &c, err, errlen);
        if (!rc) {
            memcpy(ko + g * 60 * D, c.k, 60 * D * sizeof *ko);
            memcpy(vo + g * 60 * D, c.v, 60 * D * sizeof *vo);
            if (g == 0) *b = c.bytes;
        }
        rp_cache_free(&c);
    }
    s->free_cfg(cfg);
    return rc;
}

static double sqerr(const float *a, int isk)
{
    double s = 0;
    for (size_t g = 0; g < HKV; g++)
        for (size_t t = 0; t < 60; t++)
            for (size_t d = 0; d < D; d++) {
                double x = isk ? K[g][60 + t][d] : V[g][60 + t][d], e = a[(g * 60 + t) * D + d] - x;
                s += e * e;
            }
    return s;
}

/* A deterministic stand-in for the engine's prompt attention (rows [t0, t1) of head h over
 * keys [0, P)): distinct positive values, so the value budget's ranking has no ties. */
static int fake_prompt_attn(const rp_layer_ctx *ctx, size_t h, size_t t0, size_t t1, float *out)
{
    for (size_t r = t0; r < t1; r++)
        for (size_t j = 0; j < ctx->P; j++)
            out[(r - t0) * ctx->P + j] = j <= r ? (float)(1.0 + ((h * 31 + r * 17 + j * 13) % 97)) / 97.0f : 0.0f;
    return 0;
}

/* asymkv's encode_extend: growing a prefill cache one decode entry at a time (as the engine
 * does) leaves exactly what one encode of the whole cache gives, rows, bytes and modified, at
 * every size; the prompt part is every other position below PP (a composition's kept set). */
static void extend_matches_encode(const char *const *kv, const char *tag)
{
    enum { PP = 48 };
    char err[256] = "";
    void *cfg = NULL;
    check_true(tag, strat_configure(&rp_strategy_asymkv, kv, &cfg, err, sizeof err) == 0);
    if (!cfg) { printf("  %s: %s\n", tag, err); return; }
    check_true("asymkv calibrate", calibrate_on_a(&rp_strategy_asymkv, cfg, 1, err, sizeof err) == 0);
    kv_info info;
    rp_layer_ctx ctx;
    layer_ctx(&ctx, &info, 1, PP);
    ctx.prompt_attn = fake_prompt_attn;
    int same = 1, ok = 1;
    for (size_t g = 0; g < HKV; g++) {
        rp_cache inc;
        memset(&inc, 0, sizeof inc);
        inc.D = D;
        for (size_t t = 0; t < PP; t += 2) rp_cache_push(&inc, (int32_t)t, K[g][t], V[g][t]);
        size_t m_prev = 0;
        for (size_t t = PP; t < N; t++) {
            rp_cache_push(&inc, (int32_t)t, K[g][t], V[g][t]);
            ok &= rp_strategy_asymkv.encode_extend(cfg, &ctx, g, t, &inc, m_prev, err, sizeof err) == 0;
            m_prev = inc.n;
            rp_cache one;
            memset(&one, 0, sizeof one);
            one.D = D;
            for (size_t u = 0; u < PP; u += 2) rp_cache_push(&one, (int32_t)u, K[g][u], V[g][u]);
            for (size_t u = PP; u <= t; u++) rp_cache_push(&one, (int32_t)u, K[g][u], V[g][u]);
            ok &= rp_strategy_asymkv.encode(cfg, &ctx, g, t, &one, err, sizeof err) == 0;
            int eq = one.n == inc.n && !memcmp(one.k, inc.k, one.n * D * sizeof *one.k) &&
                     !memcmp(one.v, inc.v, one.n * D * sizeof *one.v) && one.modified == inc.modified &&
                     !memcmp(&one.bytes, &inc.bytes, sizeof one.bytes);
            if (!eq && same) printf("  %s: kv head %zu differs at %zu entries\n", tag, g, one.n);
            same &= eq;
            rp_cache_free(&one);
        }
        rp_cache_free(&inc);
    }
    if (!ok) printf("  %s: %s\n", tag, err);
    check_true(tag, ok && same);
    rp_strategy_asymkv.free_cfg(cfg);
}

int main(void)
{
    make_data();
    /* RoPE: inverse undoes forward (rotate_half and interleaved) */
    float x[D] = { 1, -2, 3, 0.5f, -1, 2, 0.25f, 4 }, y[D];
    double worst = 0;
    float ci[R], si[R];         /* interleaved tables repeat each angle per pair */
    for (size_t i = 0; i < R / 2; i++) { ci[2 * i] = ci[2 * i + 1] = COS[37][i]; si[2 * i] = si[2 * i + 1] = SIN[37][i]; }
    for (int il = 0; il < 2; il++) {
        memcpy(y, x, sizeof y);
        lowrank_rope(y, R, il ? ci : COS[37], il ? si : SIN[37], il, +1);
        lowrank_rope(y, R, il ? ci : COS[37], il ? si : SIN[37], il, -1);
        for (size_t d = 0; d < D; d++) if (fabs(y[d] - x[d]) > worst) worst = fabs(y[d] - x[d]);
    }
    check_close("rope inverse round trip (worst)", worst, 0, 1e-5);
    /* hand rotation: rotate_half pair (0, 4) at angle th: (x0 c - x4 s, x4 c + x0 s) */
    memcpy(y, x, sizeof y);
    lowrank_rope(y, R, COS[1], SIN[1], 0, +1);
    check_close("rope rotate_half pair (0,4)", y[0], x[0] * COS[1][0] - x[4] * SIN[1][0], 1e-6);
    /* GSL basis: diag(1, 5, 3) -> e2, e3, e1 with eigenvalues 5, 3, 1 */
    double cov[9] = { 1, 0, 0, 0, 5, 0, 0, 0, 3 }, U[9], ev[3];
    check_true("basis ok", lowrank_basis(cov, 3, U, ev) == 0);
    check_close("eigenvalue 0", ev[0], 5, 1e-12);
    check_close("eigenvalue 2", ev[2], 1, 1e-12);
    check_close("eigvec 0 = +-e2", fabs(U[1 * 3 + 0]), 1, 1e-12);
    check_close("eigvec 1 = +-e3", fabs(U[2 * 3 + 1]), 1, 1e-12);

    float ko[HKV * 60 * D], vo[HKV * 60 * D];
    rp_bytes b;
    char err[256] = "";
    /* full rank reproduces the input to f32 precision */
    const char *full[] = { "rank_k=7", "rank_v=7", NULL };
    (void)full;
    double prev_k = INFINITY, prev_v = INFINITY, ek_prev = 0;
    int mono = 1;
    for (int r = 1; r <= D; r++) {
        char a[32], c2[32];
        snprintf(a, sizeof a, "rank_k=%d", r);
        snprintf(c2, sizeof c2, "rank_v=%d", r);
        const char *kv[] = { a, c2, NULL };
        check_true("encode ok", run(&rp_strategy_lowrank, kv, 1, ko, vo, &b, err, sizeof err) == 0);
        double ek = sqerr(ko, 1), evv = sqerr(vo, 0);
        printf("  rank %d: K sq err %.6g  V sq err %.6g\n", r, ek, evv);
        if (ek > prev_k * (1 + 1e-6) + 1e-9 || evv > prev_v * (1 + 1e-6) + 1e-9) mono = 0;
        prev_k = ek; prev_v = evv; ek_prev = ek;
        if (r == D - 1) {
            check_close("bytes payload rank 7 (60 x (7 + 7) x 2)", b.payload, 60.0 * 14 * 2, 0);
            check_close("bytes bases rank 7 (8 x 7 x 2 x 2)", b.bases, 8.0 * 7 * 2 * 2, 0);
        }
    }
    (void)ek_prev;
    check_true("error non-increasing with rank (K and V)", mono);
    /* rank = D is untouched: bit-exact; force a real full-rank projection through the core */
    double Ufull[D * D];
    {
        double cv[D * D];
        memset(cv, 0, sizeof cv);
        for (size_t t = 0; t < N; t++) for (size_t a = 0; a < D; a++) for (size_t c = 0; c < D; c++) cv[a * D + c] += V[0][t][a] * V[0][t][c];
        lowrank_basis(cv, D, Ufull, NULL);
        double w = 0, sc = 0;
        for (size_t t = 0; t < N; t++) {
            float z[D];
            memcpy(z, V[0][t], sizeof z);
            lowrank_project(z, D, Ufull, D, 0);
            for (size_t d = 0; d < D; d++) { if (fabs(z[d] - V[0][t][d]) > w) w = fabs(z[d] - V[0][t][d]); if (fabs(V[0][t][d]) > sc) sc = fabs(V[0][t][d]); }
        }
        check_close("full-rank projection reproduces input (worst / max|x|)", w / sc, 0, 4e-7 * D);
    }
    /* V-only leaves K bit-exact */
    const char *vonly[] = { "rank_v=3", NULL };
    check_true("V-only ok", run(&rp_strategy_lowrank, vonly, 1, ko, vo, &b, err, sizeof err) == 0);
    int kexact = 1;
    for (size_t g = 0; g < HKV; g++) for (size_t t = 0; t < 60; t++) for (size_t d = 0; d < D; d++) kexact &= ko[(g * 60 + t) * D + d] == K[g][60 + t][d];
    check_true("V-only: K bit-exact", kexact);
    check_true("V-only: V changed", sqerr(vo, 0) > 0);
    check_close("V-only bytes payload (K fp16 + V latent 3)", b.payload, 60.0 * (8 * 2 + 3 * 2), 0);
    /* latent int8 / int4: bytes and error ordering */
    const char *l8[] = { "rank_k=4", "rank_v=4", "latent_bits=8", NULL }, *l4[] = { "rank_k=4", "rank_v=4", "latent_bits=4", NULL };
    const char *l0[] = { "rank_k=4", "rank_v=4", NULL };
    run(&rp_strategy_lowrank, l0, 1, ko, vo, &b, err, sizeof err);
    double e0 = sqerr(vo, 0);
    check_true("latent int8 ok", run(&rp_strategy_lowrank, l8, 1, ko, vo, &b, err, sizeof err) == 0);
    double e8 = sqerr(vo, 0);
    check_close("int8 latent payload (60 x 2 x 4 B)", b.payload, 60.0 * 2 * 4, 0);
    check_close("int8 latent scales (60 x 2 x 2 B)", b.scales, 60.0 * 2 * 2, 0);
    run(&rp_strategy_lowrank, l4, 1, ko, vo, &b, err, sizeof err);
    double e4 = sqerr(vo, 0);
    printf("  latent fp16 %.6g int8 %.6g int4 %.6g\n", e0, e8, e4);
    check_true("latent error fp16 <= int8 < int4", e0 <= e8 * (1 + 1e-9) && e8 < e4);
    /* de-rotation matters: with the tables the K basis fits better than without */
    const char *k3[] = { "rank_k=3", NULL };
    run(&rp_strategy_lowrank, k3, 1, ko, vo, &b, err, sizeof err);
    double with = sqerr(ko, 1);
    check_true("rope trace without tables refused",
               run(&rp_strategy_lowrank, k3, 0, ko, vo, &b, err, sizeof err) != 0 && strstr(err, "de-rotated"));
    printf("  refused: %s\n  K rank 3 sq err with de-rotation %.6g\n", err, with);
    const char *big[] = { "rank_k=9", NULL }, *lb[] = { "rank_k=2", "latent_bits=3", NULL };
    err[0] = 0;
    check_true("rank > head_dim refused", run(&rp_strategy_lowrank, big, 1, ko, vo, &b, err, sizeof err) != 0 && strstr(err, "exceeds head_dim"));
    printf("  refused: %s\n", err);
    err[0] = 0;
    check_true("latent_bits=3 refused", run(&rp_strategy_lowrank, lb, 1, ko, vo, &b, err, sizeof err) != 0 && strstr(err, "latent_bits"));
    /* asymkv: quantised sides equal quant bit for bit; rank side equals lowrank */
    const char *aq[] = { "kbits=4", "vbits=2", "group=4", "residual=8", NULL };
    const char *qq[] = { "kbits=4", "vbits=2", "group=4", "residual=8", NULL };
    float ko2[HKV * 60 * D], vo2[HKV * 60 * D];
    rp_bytes b2;
    check_true("asymkv ok", run(&rp_strategy_asymkv, aq, 1, ko, vo, &b, err, sizeof err) == 0);
    check_true("quant ok", run(&rp_strategy_quant, qq, 1, ko2, vo2, &b2, err, sizeof err) == 0);
    check_true("asymkv kbits/vbits == quant (bit for bit)", !memcmp(ko, ko2, sizeof ko) && !memcmp(vo, vo2, sizeof vo));
    check_close("asymkv bytes == quant bytes", b.payload + b.scales, b2.payload + b2.scales, 0);
    const char *ar[] = { "kbits=4", "vbits=0", "rank_v=3", "group=4", "residual=8", NULL };
    check_true("asymkv K bits + V rank ok", run(&rp_strategy_asymkv, ar, 1, ko, vo, &b, err, sizeof err) == 0);
    run(&rp_strategy_lowrank, vonly, 1, ko2, vo2, &b2, err, sizeof err);
    check_true("asymkv V rank == lowrank V-only (bit for bit)", !memcmp(vo, vo2, sizeof vo));
    const char *both[] = { "kbits=4", "rank_k=3", NULL }, *bb[] = { "kbits=3", NULL };
    err[0] = 0;
    check_true("asymkv kbits + rank_k refused", run(&rp_strategy_asymkv, both, 1, ko, vo, &b, err, sizeof err) != 0 && strstr(err, "not both"));
    err[0] = 0;
    check_true("asymkv kbits=3 refused", run(&rp_strategy_asymkv, bb, 1, ko, vo, &b, err, sizeof err) != 0 && strstr(err, "2, 4 or 8"));
    /* asymkv's incremental encoding equals one encode at every size */
    const char *x1[] = { "kbits=4", "vbits=2", "group=4", "residual=8", "vkeep=0.5", "vwindow=4", NULL };
    const char *x2[] = { "kbits=0", "vbits=4", "group=4", "residual=8", "vkeep=0.3", "vfill=zero", NULL };
    const char *x3[] = { "kbits=4", "vbits=0", "rank_v=3", "group=4", "residual=8", "vkeep=0.5", NULL };
    const char *x4[] = { "kbits=2", "vbits=2", "group=4", "residual=16", NULL };
    const char *x5[] = { "kbits=0", "vbits=0", "rank_k=3", "rank_v=5", "latent_bits=4", NULL };
    extend_matches_encode(x1, "asymkv extend == encode: kbits=4 vbits=2 vkeep=0.5");
    extend_matches_encode(x2, "asymkv extend == encode: vbits=4 vkeep=0.3 vfill=zero");
    extend_matches_encode(x3, "asymkv extend == encode: kbits=4 rank_v=3 vkeep=0.5");
    extend_matches_encode(x4, "asymkv extend == encode: kbits=2 vbits=2 (no value budget)");
    extend_matches_encode(x5, "asymkv extend == encode: rank_k=3 rank_v=5 latent int4");
    return report("test_lowrank");
}
