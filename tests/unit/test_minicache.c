/* replay/strategies/minicache.c: SLERP hand cases, t=0 / t=1 reproduce one layer, retention
 * 1.0 reproduces both, magnitudes preserved, the most distant tokens retained, bytes, and
 * the strategy through the interface with an in-memory layer_kv callback. */
#include "enc_testhelp.h"
#include "strategies/minicache.h"

extern const rp_strategy rp_strategy_minicache;

enum { D = 6, M = 40, L = 4, HKV = 1 };
static float KL[L][M][D], VL[L][M][D];

static int fake_layer_kv(const rp_layer_ctx *ctx, size_t layer, const float **k, const float **v)
{
    if (layer >= L) return -1;
    *k = &KL[layer][0][0]; *v = &VL[layer][0][0];
    return 0;
}

static double nrm(const float *x) { double s = 0; for (size_t d = 0; d < D; d++) s += (double)x[d] * x[d]; return sqrt(s); }

int main(void)
{
    /* SLERP of orthogonal unit vectors at t = 0.5: (e1 + e2) / sqrt 2 */
    float a[D] = { 2, 0, 0, 0, 0, 0 }, b[D] = { 0, 3, 0, 0, 0, 0 }, o[D];
    minicache_slerp(a, b, D, 0.5, o);
    check_close("slerp midpoint x", o[0], 1 / sqrt(2.0), 1e-7);
    check_close("slerp midpoint y", o[1], 1 / sqrt(2.0), 1e-7);
    minicache_slerp(a, b, D, 1.0 / 3, o);       /* angle pi/2 * 1/3 = 30 degrees from a */
    check_close("slerp t=1/3 x = cos 30", o[0], cos(M_PI / 6), 1e-7);
    check_close("slerp t=1/3 y = sin 30", o[1], sin(M_PI / 6), 1e-7);

    rp_rng r = { 11 };
    for (size_t l = 0; l < L; l++)
        for (size_t i = 0; i < M; i++)
            for (size_t d = 0; d < D; d++) {
                KL[l][i][d] = (l ? 0.8f * KL[l - 1][i][d] : 0) + randn(&r) * (i % 7 == 3 ? 3.0f : 0.5f);
                VL[l][i][d] = randn(&r);
            }
    float oa[M * D], ob[M * D];
    uint8_t ret[M];
    double wa = 0, wb = 0, wm = 0;
    minicache_merge(&KL[2][0][0], &KL[3][0][0], M, D, 0.0, 0.0, oa, ob, ret);
    for (size_t i = 0; i < M * D; i++) wa = fmax(wa, fabs(oa[i] - (&KL[2][0][0])[i]));
    minicache_merge(&KL[2][0][0], &KL[3][0][0], M, D, 1.0, 0.0, oa, ob, ret);
    for (size_t i = 0; i < M * D; i++) wb = fmax(wb, fabs(ob[i] - (&KL[3][0][0])[i]));
    check_close("t=0 reproduces the lower layer (worst)", wa, 0, 1e-5);
    check_close("t=1 reproduces the upper layer (worst)", wb, 0, 1e-5);
    minicache_merge(&KL[2][0][0], &KL[3][0][0], M, D, 0.6, 0.0, oa, ob, ret);
    for (size_t i = 0; i < M; i++) {
        wm = fmax(wm, fabs(nrm(oa + i * D) - nrm(KL[2][i])) / nrm(KL[2][i]));
        wm = fmax(wm, fabs(nrm(ob + i * D) - nrm(KL[3][i])) / nrm(KL[3][i]));
        /* both layers share one direction */
        double c = 0;
        for (size_t d = 0; d < D; d++) c += (double)oa[i * D + d] * ob[i * D + d];
        if (fabs(c / (nrm(oa + i * D) * nrm(ob + i * D)) - 1) > 1e-6) wm = 1;
    }
    check_close("magnitudes preserved, one shared direction (worst rel)", wm, 0, 1e-6);
    size_t got = minicache_merge(&KL[2][0][0], &KL[3][0][0], M, D, 0.6, 1.0, oa, ob, ret);
    check_true("retention 1.0 reproduces both layers bit for bit",
               got == M && !memcmp(oa, KL[2], sizeof oa) && !memcmp(ob, KL[3], sizeof ob));
    /* retention 0.1 keeps the 4 lowest-cosine tokens */
    got = minicache_merge(&KL[2][0][0], &KL[3][0][0], M, D, 0.6, 0.1, oa, ob, ret);
    double cmax_ret = -2, cmin_mer = 2;
    for (size_t i = 0; i < M; i++) {
        double c = 0;
        for (size_t d = 0; d < D; d++) c += (double)KL[2][i][d] * KL[3][i][d];
        c /= nrm(KL[2][i]) * nrm(KL[3][i]);
        if (ret[i]) cmax_ret = fmax(cmax_ret, c); else cmin_mer = fmin(cmin_mer, c);
    }
    check_true("retention 0.1 keeps 4 tokens", got == 4);
    check_true("retained tokens are the most distant", cmax_ret <= cmin_mer);

    /* through the interface: layer 3 of L=4 (start L/2 = 2: pair (2, 3), upper side) */
    void *cfg = NULL;
    char err[256] = "";
    const char *kv[] = { "t=0.6", "retain=0.1", NULL };
    check_true("configure", strat_configure(&rp_strategy_minicache, kv, &cfg, err, sizeof err) == 0);
    rp_layer_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.D = D; ctx.n = M; ctx.P = M; ctx.Hkv = HKV; ctx.H = 1; ctx.G = 1; ctx.n_layers = L; ctx.layer_kv = fake_layer_kv;
    for (size_t l = 0; l < L; l++) {
        ctx.layer = l;
        rp_cache c;
        memset(&c, 0, sizeof c);
        c.D = D;
        for (size_t i = 0; i < M; i++) rp_cache_push(&c, (int32_t)i, KL[l][i], VL[l][i]);
        check_true("encode ok", rp_strategy_minicache.encode(cfg, &ctx, 0, M - 1, &c, err, sizeof err) == 0);
        if (l < 2) {
            check_true("layers below start untouched", !c.modified && !memcmp(c.k, KL[l], sizeof KL[l]) && c.bytes.payload == 0);
        } else {
            minicache_merge(&KL[2][0][0], &KL[3][0][0], M, D, 0.6, 0.1, oa, ob, ret);
            check_true("interface K == core merge", !memcmp(c.k, l == 2 ? oa : ob, sizeof oa));
            /* 36 merged (D + 2 bytes each), 4 retained (2D): per K and per V */
            check_close("bytes payload", c.bytes.payload, 2 * (36.0 * (D + 2) + 4.0 * 2 * D), 0);
            check_close("bytes indices", c.bytes.indices, 4.0 * 8, 0);
        }
        rp_cache_free(&c);
    }
    rp_strategy_minicache.free_cfg(cfg);
    return report("test_minicache");
}
