/* replay/strategies/quant.c: hand cases, properties, the strategy interface, and a fixture
 * mode for tests/py/test_quant_numpy.py.
 *
 *   test_quant                   hand cases + properties (error <= scale/2, 8 << 4 << 2 bits,
 *                                constant groups exact, residual exact, bad parameters)
 *   test_quant --fixture IN OUT  encode a cache written by the Python test through the
 *                                strategy's encode hook; the Python test compares with numpy.
 *
 * m entries, D head_dim. IN (little-endian): "KVQT" u32 1; u64 m D; i32 mode kbits vbits
 * group residual; f32 k[m][D] v[m][D]. OUT: "KVQR" u32 1; f32 k[m][D] v[m][D]; f64 payload
 * scales.
 */
#include "enc_testhelp.h"
#include "strategies/quant.h"

extern const rp_strategy rp_strategy_quant;

static const char *const MODES[] = { "kivi", "sym8", "sym4" };

/* Encode m rows through the interface. Returns encode's status. */
static int encode_rows(const char *const *kv, const float *k, const float *v, size_t m, size_t D,
                       float *ko, float *vo, rp_bytes *b, char *err, size_t errlen)
{
    void *cfg = NULL;
    if (strat_configure(&rp_strategy_quant, kv, &cfg, err, errlen)) return -1;
    rp_cache c;
    memset(&c, 0, sizeof c);
    c.D = D;
    for (size_t e = 0; e < m; e++) rp_cache_push(&c, (int32_t)e, k + e * D, v + e * D);
    rp_layer_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.D = D; ctx.n = m; ctx.P = m; ctx.Hkv = 1; ctx.H = 1; ctx.G = 1;
    int rc = rp_strategy_quant.encode(cfg, &ctx, 0, m - 1, &c, err, errlen);
    if (!rc) {
        memcpy(ko, c.k, m * D * sizeof *ko);
        memcpy(vo, c.v, m * D * sizeof *vo);
        *b = c.bytes;
    }
    rp_cache_free(&c);
    rp_strategy_quant.free_cfg(cfg);
    return rc;
}

static void hand_cases(void)
{
    float a[4] = { 0, 1, 2, 3 };
    check_close("asym exact grid scale", quant_asym_group(a, 4, 1, 2), 1.0, 0);
    check_true("asym exact grid", a[0] == 0 && a[1] == 1 && a[2] == 2 && a[3] == 3);
    float b[4] = { 0, 0.4f, 0.6f, 3 };
    quant_asym_group(b, 4, 1, 2);
    check_true("asym rounding 0.4->0, 0.6->1", b[1] == 0 && b[2] == 1 && b[3] == 3);
    float c[4] = { 0, 0.5f, 1.5f, 3 };
    quant_asym_group(c, 4, 1, 2);
    check_true("asym half to even (0.5->0, 1.5->2)", c[1] == 0 && c[2] == 2);
    float d[3] = { 5, 5, 5 };
    check_close("constant group scale 0", quant_asym_group(d, 3, 1, 2), 0, 0);
    check_true("constant group exact", d[0] == 5 && d[1] == 5 && d[2] == 5);
    /* strided: channel 1 of a [3][2] block */
    float s[6] = { 9, 0, 9, 1.4f, 9, 3 };
    quant_asym_group(s + 1, 3, 2, 2);
    check_true("strided group touches only its channel", s[0] == 9 && s[2] == 9 && s[4] == 9 && s[3] == 1);
    float y[4] = { 0.5f, -1.75f, 0.375f, 0.625f };   /* 4 bits: scale 0.25; 1.5->2, 2.5->2 */
    check_close("sym scale", quant_sym_row(y, 4, 4), 0.25, 0);
    check_true("sym values", y[0] == 0.5f && y[1] == -1.75f && y[2] == 0.5f && y[3] == 0.5f);
    /* KIVI stream counts and bytes, m=300 D=32 G=32 R=128, 2 bits each:
     * keys 256 quantised (2048 B) + 44 fp16 (2816 B); values 172 quantised (1376 B) + 128
     * fp16 (8192 B); scales: 8 key groups x 32 channels x 4 B + 172 rows x 1 group x 4 B */
    check_close("nq keys", (double)quant_kivi_nq_keys(300, 32, 128), 256, 0);
    check_close("nq values", (double)quant_kivi_nq_values(300, 128), 172, 0);
    check_close("nq keys R=0", (double)quant_kivi_nq_keys(70, 32, 0), 64, 0);
    check_close("nq values short", (double)quant_kivi_nq_values(100, 128), 0, 0);
    double pl, sc;
    quant_kivi_bytes(300, 32, 2, 2, 32, 128, &pl, &sc);
    check_close("kivi payload bytes", pl, 14432, 0);
    check_close("kivi scale bytes", sc, 1712, 0);
    quant_sym_bytes(10, 32, 8, &pl, &sc);
    check_close("sym8 payload bytes", pl, 640, 0);
    check_close("sym8 scale bytes", sc, 40, 0);
}

/* Properties on random data with outlier channels, through the interface. */
static void properties(void)
{
    size_t m = 200, D = 32, G = 16, R = 32;
    float *k = malloc(m * D * sizeof *k), *v = malloc(m * D * sizeof *v);
    float *ko = malloc(m * D * sizeof *ko), *vo = malloc(m * D * sizeof *vo);
    rp_rng r = { 42 };
    for (size_t i = 0; i < m * D; i++) { k[i] = randn(&r) * ((i % D) == 3 ? 20.0f : 1.0f); v[i] = randn(&r); }
    for (size_t e = 0; e < 32; e++) k[e * D + 5] = 1.25f;   /* a constant key group (entries 0..15, 16..31) */
    for (size_t d = 0; d < 16; d++) v[7 * D + d] = -0.5f;   /* a constant value group */
    double mse[3][2];
    int bits[3] = { 2, 4, 8 };
    char err[256];
    for (int bi = 0; bi < 3; bi++) {
        char kb[32], vb[32];
        snprintf(kb, sizeof kb, "kbits=%d", bits[bi]);
        snprintf(vb, sizeof vb, "vbits=%d", bits[bi]);
        const char *kv[] = { kb, vb, "group=16", "residual=32", NULL };
        rp_bytes by;
        check_true("encode ok", encode_rows(kv, k, v, m, D, ko, vo, &by, err, sizeof err) == 0);
        size_t nk = quant_kivi_nq_keys(m, G, R), nv = quant_kivi_nq_values(m, R);
        double worst = 0, ek = 0, ev = 0;
        for (size_t a = 0; a < nk; a += G)
            for (size_t d = 0; d < D; d++) {
                float mn = k[a * D + d], mx = mn;
                for (size_t e = a; e < a + G; e++) { float x = k[e * D + d]; if (x < mn) mn = x; if (x > mx) mx = x; }
                double half = (mx - mn) / ((1 << bits[bi]) - 1) / 2;
                for (size_t e = a; e < a + G; e++) {
                    double dd = fabs((double)ko[e * D + d] - k[e * D + d]);
                    double ex = dd - half * (1 + 1e-5) - 1e-6 * fabs(k[e * D + d]);
                    if (ex > worst) worst = ex;
                    ek += dd * dd;
                }
            }
        for (size_t e = 0; e < nv; e++)
            for (size_t c = 0; c < D; c += G) {
                float mn = v[e * D + c], mx = mn;
                for (size_t d = c; d < c + G; d++) { float x = v[e * D + d]; if (x < mn) mn = x; if (x > mx) mx = x; }
                double half = (mx - mn) / ((1 << bits[bi]) - 1) / 2;
                for (size_t d = c; d < c + G; d++) {
                    double dd = fabs((double)vo[e * D + d] - v[e * D + d]);
                    double ex = dd - half * (1 + 1e-5) - 1e-6 * fabs(v[e * D + d]);
                    if (ex > worst) worst = ex;
                    ev += dd * dd;
                }
            }
        char what[96];
        snprintf(what, sizeof what, "%d-bit error <= scale/2 (worst excess)", bits[bi]);
        check_close(what, worst, 0, 0);
        mse[bi][0] = ek; mse[bi][1] = ev;
        int exact_res = 1, exact_const = 1;
        for (size_t e = nk; e < m; e++) for (size_t d = 0; d < D; d++) exact_res &= ko[e * D + d] == k[e * D + d];
        for (size_t e = nv; e < m; e++) for (size_t d = 0; d < D; d++) exact_res &= vo[e * D + d] == v[e * D + d];
        for (size_t e = 0; e < 32; e++) exact_const &= ko[e * D + 5] == 1.25f;
        for (size_t d = 0; d < 16; d++) exact_const &= vo[7 * D + d] == -0.5f;
        snprintf(what, sizeof what, "%d-bit residual entries bit-exact", bits[bi]);
        check_true(what, exact_res);
        snprintf(what, sizeof what, "%d-bit constant groups exact", bits[bi]);
        check_true(what, exact_const);
        double pl, sc;
        quant_kivi_bytes(m, D, bits[bi], bits[bi], G, R, &pl, &sc);
        check_close("interface bytes payload", by.payload, pl, 0);
        check_close("interface bytes scales", by.scales, sc, 0);
    }
    /* 2 -> 4 bits: scale / 5, MSE ~ / 25; 4 -> 8: scale / 17, MSE ~ / 289. Demand >= 10x. */
    for (int kvi = 0; kvi < 2; kvi++) {
        printf("  %s sq err: 2-bit %.4g  4-bit %.4g  8-bit %.4g\n", kvi ? "V" : "K", mse[0][kvi], mse[1][kvi], mse[2][kvi]);
        check_true("4-bit error < 2-bit / 10", mse[1][kvi] * 10 < mse[0][kvi]);
        check_true("8-bit error < 4-bit / 10", mse[2][kvi] * 10 < mse[1][kvi]);
    }
    /* bad parameters and shapes: one clear line each */
    rp_bytes by;
    const char *bad1[] = { "kbits=3", NULL }, *bad2[] = { "vbits=16", NULL }, *bad3[] = { "group=32", "residual=48", NULL };
    const char *bad4[] = { "group=64", "residual=128", NULL };
    err[0] = 0;
    check_true("kbits=3 refused", encode_rows(bad1, k, v, m, D, ko, vo, &by, err, sizeof err) != 0 && strstr(err, "2, 4 or 8"));
    printf("  refused: %s\n", err);
    err[0] = 0;
    check_true("vbits=16 refused", encode_rows(bad2, k, v, m, D, ko, vo, &by, err, sizeof err) != 0 && strstr(err, "2, 4 or 8"));
    err[0] = 0;
    check_true("residual not a multiple of group refused",
               encode_rows(bad3, k, v, m, D, ko, vo, &by, err, sizeof err) != 0 && strstr(err, "multiple"));
    printf("  refused: %s\n", err);
    err[0] = 0;
    check_true("group not dividing head_dim refused",
               encode_rows(bad4, k, v, m, D, ko, vo, &by, err, sizeof err) != 0 && strstr(err, "does not divide head_dim"));
    printf("  refused: %s\n", err);
    free(k); free(v); free(ko); free(vo);
}

static int fixture(const char *in, const char *out)
{
    FILE *f = fopen(in, "rb");
    if (!f) { fprintf(stderr, "test_quant: cannot open %s\n", in); return 2; }
    char magic[4];
    uint32_t ver;
    uint64_t m, D;
    int32_t hdr[5];
    if (fread(magic, 1, 4, f) != 4 || memcmp(magic, "KVQT", 4) || fread(&ver, 4, 1, f) != 1 || ver != 1 ||
        fread(&m, 8, 1, f) != 1 || fread(&D, 8, 1, f) != 1 || fread(hdr, 4, 5, f) != 5 || m == 0 || D == 0 ||
        m > (1u << 24) || D > 4096 || hdr[0] < 0 || hdr[0] > 2) {
        fprintf(stderr, "test_quant: %s: bad fixture header\n", in);
        fclose(f);
        return 2;
    }
    float *k = malloc(m * D * sizeof *k), *v = malloc(m * D * sizeof *v);
    float *ko = malloc(m * D * sizeof *ko), *vo = malloc(m * D * sizeof *vo);
    if (!k || !v || !ko || !vo || fread(k, 4, m * D, f) != m * D || fread(v, 4, m * D, f) != m * D) {
        fprintf(stderr, "test_quant: %s: truncated fixture\n", in);
        fclose(f);
        return 2;
    }
    fclose(f);
    char kb[32], vb[32], gb[32], rb[32], mb[32], err[256] = "";
    snprintf(kb, sizeof kb, "kbits=%d", hdr[1]);
    snprintf(vb, sizeof vb, "vbits=%d", hdr[2]);
    snprintf(gb, sizeof gb, "group=%d", hdr[3]);
    snprintf(rb, sizeof rb, "residual=%d", hdr[4]);
    snprintf(mb, sizeof mb, "mode=%s", MODES[hdr[0]]);
    const char *kv[] = { kb, vb, gb, rb, mb, NULL };
    rp_bytes by;
    if (encode_rows(kv, k, v, m, D, ko, vo, &by, err, sizeof err)) {
        fprintf(stderr, "test_quant: %s\n", err);
        return 2;
    }
    FILE *o = fopen(out, "wb");
    uint32_t one = 1;
    if (!o || fwrite("KVQR", 1, 4, o) != 4 || fwrite(&one, 4, 1, o) != 1 || fwrite(ko, 4, m * D, o) != m * D ||
        fwrite(vo, 4, m * D, o) != m * D || fwrite(&by.payload, 8, 1, o) != 1 || fwrite(&by.scales, 8, 1, o) != 1 ||
        fclose(o)) {
        fprintf(stderr, "test_quant: cannot write %s\n", out);
        return 2;
    }
    free(k); free(v); free(ko); free(vo);
    return 0;
}

/* k, v [n]: uniform in [-2, 2) and [-0.5, 0.5), an LCG from seed (k and v drawn in turn). */
static void fill_kv(float *k, float *v, size_t n, uint64_t seed)
{
    uint64_t x = seed;
    for (size_t i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        k[i] = (float)((double)(x >> 11) / 9007199254740992.0 - 0.5) * 4.0f;
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        v[i] = (float)((double)(x >> 11) / 9007199254740992.0 - 0.5);
    }
}

/* encode_extend (the engine's incremental path): growing a cache one entry at a time (and in
 * jumps) must give, at every size m, exactly the rows and bytes that the core quantisers
 * (quant_kivi_keys/values, quant_sym_row) give on the first m entries in one go. */
static void extend_equals_encode(void)
{
    const size_t D = 16, N = 150;
    const char *cfgs[][5] = {
        { "mode=kivi", "kbits=2", "vbits=4", "group=8", "residual=32" },
        { "mode=kivi", "kbits=4", "vbits=2", "group=4", "residual=0" },
        { "mode=kivi", "kbits=8", "vbits=8", "group=16", "residual=16" },
        { "mode=sym4", NULL, NULL, NULL, NULL },
    };
    float *k = malloc(N * D * sizeof *k), *v = malloc(N * D * sizeof *v);
    float *ko = malloc(N * D * sizeof *ko), *vo = malloc(N * D * sizeof *vo);
    fill_kv(k, v, N * D, 12345);
    for (size_t ci = 0; ci < sizeof cfgs / sizeof cfgs[0]; ci++) {
        const char *kv[6] = { cfgs[ci][0], cfgs[ci][1], cfgs[ci][2], cfgs[ci][3], cfgs[ci][4], NULL };
        for (size_t step = 1; step <= 7; step += 6) {      /* one entry at a time, and jumps of 7 */
            char err[256] = "", what[160];
            void *cfg = NULL;
            check_true("configure", strat_configure(&rp_strategy_quant, kv, &cfg, err, sizeof err) == 0);
            rp_cache c;
            memset(&c, 0, sizeof c);
            c.D = D;
            rp_layer_ctx ctx;
            memset(&ctx, 0, sizeof ctx);
            ctx.D = D; ctx.n = N; ctx.P = N; ctx.Hkv = 1; ctx.H = 1; ctx.G = 1;
            size_t m_prev = 0;
            int bad = 0;
            for (size_t m = step; m <= N && !bad; m += step) {
                for (size_t e = m_prev; e < m; e++) rp_cache_push(&c, (int32_t)e, k + e * D, v + e * D);
                if (rp_strategy_quant.encode_extend(cfg, &ctx, 0, m - 1, &c, m_prev, err, sizeof err)) { bad = 1; break; }
                /* reference: the core functions on the first m rows in one go */
                rp_bytes b = { 0, 0, 0, 0 };
                memcpy(ko, k, m * D * sizeof *ko);
                memcpy(vo, v, m * D * sizeof *vo);
                if (ci < 3) {
                    int kb = atoi(kv[1] + 6), vb = atoi(kv[2] + 6);
                    size_t G = (size_t)atoi(kv[3] + 6), R = (size_t)atoi(kv[4] + 9);
                    quant_kivi_keys(ko, m, D, kb, G, R);
                    quant_kivi_values(vo, m, D, vb, G, R);
                    quant_kivi_bytes(m, D, kb, vb, G, R, &b.payload, &b.scales);
                } else {
                    for (size_t e = 0; e < m; e++) { quant_sym_row(ko + e * D, D, 4); quant_sym_row(vo + e * D, D, 4); }
                    quant_sym_bytes(m, D, 4, &b.payload, &b.scales);
                }
                int same = !memcmp(c.k, ko, m * D * sizeof *ko) && !memcmp(c.v, vo, m * D * sizeof *vo) &&
                           c.bytes.payload == b.payload && c.bytes.scales == b.scales;
                if (!same) {
                    snprintf(what, sizeof what, "encode_extend == encode (%s %s, step %zu, m %zu)", kv[0],
                             kv[1] ? kv[1] : "", step, m);
                    check_true(what, 0);
                    bad = 1;
                }
                m_prev = m;
            }
            snprintf(what, sizeof what, "encode_extend == encode at every size (%s %s, step %zu)", kv[0], kv[1] ? kv[1] : "", step);
            check_true(what, !bad);
            rp_cache_free(&c);
            rp_strategy_quant.free_cfg(cfg);
        }
    }
    free(k); free(v); free(ko); free(vo);
}

/* encode_from (the engine's first prefix of an incremental encoding, without the copy): the
 * rows written into a cache of undefined rows from another cache's rows are, bit for bit,
 * what copying those rows and encode give, with the same bytes and modified flag, the
 * source unchanged; with constant groups and rows (left exact: copied) at every size m. */
static void from_equals_copy_encode(void)
{
    const size_t D = 16, N = 150;
    const char *cfgs[][5] = {
        { "mode=kivi", "kbits=2", "vbits=4", "group=8", "residual=32" },
        { "mode=kivi", "kbits=4", "vbits=2", "group=4", "residual=0" },
        { "mode=kivi", "kbits=8", "vbits=8", "group=16", "residual=16" },
        { "mode=sym4", NULL, NULL, NULL, NULL },
        { "mode=sym8", NULL, NULL, NULL, NULL },
    };
    float *k = malloc(N * D * sizeof *k), *v = malloc(N * D * sizeof *v);
    float *k0 = malloc(N * D * sizeof *k0), *v0 = malloc(N * D * sizeof *v0);
    fill_kv(k, v, N * D, 777);
    for (size_t e = 40; e < 56; e++)            /* constant key groups (every channel), zero rows */
        for (size_t d = 0; d < D; d++) { k[e * D + d] = 0.25f * (float)d; v[e * D + d] = 0.0f; }
    memcpy(k0, k, N * D * sizeof *k0);
    memcpy(v0, v, N * D * sizeof *v0);
    check_true("quant has encode_from", rp_strategy_quant.encode_from != NULL);
    if (!rp_strategy_quant.encode_from) return;
    for (size_t ci = 0; ci < sizeof cfgs / sizeof cfgs[0]; ci++) {
        const char *kv[6] = { cfgs[ci][0], cfgs[ci][1], cfgs[ci][2], cfgs[ci][3], cfgs[ci][4], NULL };
        char err[256] = "", what[160];
        void *cfg = NULL;
        check_true("configure", strat_configure(&rp_strategy_quant, kv, &cfg, err, sizeof err) == 0);
        rp_layer_ctx ctx;
        memset(&ctx, 0, sizeof ctx);
        ctx.D = D; ctx.n = N; ctx.P = N; ctx.Hkv = 1; ctx.H = 1; ctx.G = 1;
        int bad = 0;
        for (size_t m = 1; m <= N && !bad; m += (m < 40 ? 1 : 13)) {
            rp_cache a, b;                      /* a: copy + encode; b: encode_from into NaN rows */
            memset(&a, 0, sizeof a);
            memset(&b, 0, sizeof b);
            a.D = b.D = D;
            for (size_t e = 0; e < m; e++) {
                rp_cache_push(&a, (int32_t)e, k + e * D, v + e * D);
                rp_cache_push(&b, (int32_t)e, k + e * D, v + e * D);
            }
            for (size_t i = 0; i < m * D; i++) b.k[i] = b.v[i] = NAN;
            int ra = rp_strategy_quant.encode(cfg, &ctx, 0, m - 1, &a, err, sizeof err);
            int rb = rp_strategy_quant.encode_from(cfg, &ctx, 0, m - 1, k, v, &b, err, sizeof err);
            int same = !ra && !rb && !memcmp(a.k, b.k, m * D * sizeof *a.k) && !memcmp(a.v, b.v, m * D * sizeof *a.v) &&
                       a.bytes.payload == b.bytes.payload && a.bytes.scales == b.bytes.scales &&
                       a.modified == b.modified && !memcmp(k, k0, N * D * sizeof *k) && !memcmp(v, v0, N * D * sizeof *v);
            if (!same) {
                snprintf(what, sizeof what, "encode_from == copy + encode (%s %s, m %zu)", kv[0], kv[1] ? kv[1] : "", m);
                check_true(what, 0);
                bad = 1;
            }
            rp_cache_free(&a);
            rp_cache_free(&b);
        }
        snprintf(what, sizeof what, "encode_from == copy + encode at every size (%s %s)", kv[0], kv[1] ? kv[1] : "");
        check_true(what, !bad);
        rp_strategy_quant.free_cfg(cfg);
    }
    free(k); free(v); free(k0); free(v0);
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "--fixture")) return fixture(argv[2], argv[3]);
    hand_cases();
    properties();
    extend_equals_encode();
    from_equals_copy_encode();
    return report("test_quant");
}
