/* minicache — cross-layer KV merging by SLERP of adjacent layers' directions.
 *
 * Rule: from the start layer S (default -1 = L/2, mid depth) the layers pair up as
 *   (S, S+1), (S+2, S+3), ...; a layer without a partner (the last one when L - S is odd)
 *   and layers below S are left untouched. For a pair (a, b) and each cached entry at
 *   position p of kv head g, separately for K and V: the rows x_a, x_b of the two layers
 *   share one direction e = SLERP(x_a/|x_a|, x_b/|x_b|; t) and each layer keeps its own
 *   magnitude: x_l ~ |x_l| e. The round(retain * m) entries whose cosine between the two
 *   layers is lowest (the most distant ones) are retained unmerged (exact).
 * Defaults: start=-1 (L/2), t=0.6, retain=0.05.
 * Bytes per layer (K and V alike): a merged entry stores half of the shared fp16 direction
 *   (D bytes: the pair stores it once) plus its fp16 magnitude (2 bytes); a retained entry
 *   stays fp16 (2D bytes) plus a 4-byte index (in `indices`).
 * Replay semantics: the partner layer's rows come from the trace at the same positions
 *   (ctx->layer_kv; teacher-forced, like every layer-local replay); in a composition the
 *   partner's rows are its ORIGINAL rows at this cache's positions (merged entries use
 *   their representative position), not the partner's own compressed cache. Kv head g
 *   merges with the partner's kv head g only, so it runs in kv-head work items
 *   (head_separable; layer_kv gives the context's kv heads).
 * Deviations: the retention set is chosen per kv head and separately for K and V by the
 *   token-wise cosine between the layers (the reference's angular distance); magnitudes
 *   are kept in f32 (counted as fp16).
 * Reference: Liu et al. 2024, "MiniCache: KV Cache Compression in Depth Dimension for
 *   Large Language Models" (NeurIPS 2024, arXiv 2405.14366), github.com/AkideLiu/MiniCache.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strategy.h"
#include "strategies/minicache.h"

/* ---- core ------------------------------------------------------------------------------ */

static double norm2(const float *x, size_t D)
{
    double s = 0;
    for (size_t d = 0; d < D; d++) s += (double)x[d] * x[d];
    return sqrt(s);
}

void minicache_slerp(const float *a, const float *b, size_t D, double t, float *out)
{
    double na = norm2(a, D), nb = norm2(b, D), dot = 0;
    if (na == 0 && nb == 0) { memset(out, 0, D * sizeof *out); return; }
    if (na == 0) { for (size_t d = 0; d < D; d++) out[d] = (float)(b[d] / nb); return; }
    if (nb == 0) { for (size_t d = 0; d < D; d++) out[d] = (float)(a[d] / na); return; }
    for (size_t d = 0; d < D; d++) dot += (double)a[d] * b[d];
    double c = dot / (na * nb);
    if (c > 1) c = 1;
    if (c < -1) c = -1;
    double th = acos(c), s = sin(th), wa, wb;
    if (t == 0) { wa = 1; wb = 0; }
    else if (t == 1) { wa = 0; wb = 1; }
    else if (s < 1e-6) { wa = 1 - t; wb = t; }
    else { wa = sin((1 - t) * th) / s; wb = sin(t * th) / s; }
    double tmp[4096], nn = 0;
    size_t Dm = D < 4096 ? D : 4096;
    for (size_t d = 0; d < Dm; d++) { tmp[d] = wa * a[d] / na + wb * b[d] / nb; nn += tmp[d] * tmp[d]; }
    nn = sqrt(nn);
    for (size_t d = 0; d < Dm; d++) out[d] = nn > 0 ? (float)(tmp[d] / nn) : 0.0f;
}

size_t minicache_merge(const float *xa, const float *xb, size_t m, size_t D, double t, double retain,
                       float *out_a, float *out_b, uint8_t *retained)
{
    double *score = calloc(m ? m : 1, sizeof *score);
    float *e = malloc(D * sizeof *e);
    int32_t *idx = malloc((m ? m : 1) * sizeof *idx);
    if (!score || !e || !idx) { free(score); free(e); free(idx); return (size_t)-1; }
    for (size_t i = 0; i < m; i++) {
        const float *a = xa + i * D, *b = xb + i * D;
        double na = norm2(a, D), nb = norm2(b, D), dot = 0;
        for (size_t d = 0; d < D; d++) dot += (double)a[d] * b[d];
        score[i] = na > 0 && nb > 0 ? (float)(-dot / (na * nb)) : 0.0f;   /* high = distant */
    }
    size_t r = (size_t)llround(retain * (double)m);
    if (r > m) r = m;
    memset(retained, 0, m);
    size_t got = rp_topk(score, m, r, idx);
    for (size_t i = 0; i < got; i++) retained[idx[i]] = 1;
    for (size_t i = 0; i < m; i++) {
        const float *a = xa + i * D, *b = xb + i * D;
        if (retained[i]) {
            if (out_a) memcpy(out_a + i * D, a, D * sizeof *a);
            if (out_b) memcpy(out_b + i * D, b, D * sizeof *b);
            continue;
        }
        minicache_slerp(a, b, D, t, e);
        double na = norm2(a, D), nb = norm2(b, D);
        for (size_t d = 0; d < D; d++) {
            if (out_a) out_a[i * D + d] = (float)(na * e[d]);
            if (out_b) out_b[i * D + d] = (float)(nb * e[d]);
        }
    }
    free(score); free(e); free(idx);
    return got;
}

/* ---- strategy ---------------------------------------------------------------------------- */

typedef struct minicache_cfg { long long start; double t, retain; } minicache_cfg;

static const rp_param_def minicache_params[] = {
    { "start", RP_INT, "-1", -1, 1 << 20, NULL, "first merged layer (-1 = L/2)" },
    { "t", RP_FLOAT, "0.6", 0, 1, NULL, "SLERP interpolation (0 = lower layer's direction)" },
    { "retain", RP_FLOAT, "0.05", 0, 1, NULL, "fraction of most distant tokens kept unmerged" },
};

static int minicache_configure(const double *values, void **cfg, char *err, size_t errlen)
{
    minicache_cfg *c = malloc(sizeof *c);
    if (!c) { snprintf(err, errlen, "out of memory"); return -1; }
    c->start = (long long)values[0]; c->t = values[1]; c->retain = values[2];
    *cfg = c;
    return 0;
}

static void minicache_free_cfg(void *cfg) { free(cfg); }

static int minicache_encode(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *c,
                            char *err, size_t errlen)
{
    const minicache_cfg *q = cfg;
    size_t L = ctx->n_layers, l = ctx->layer, D = c->D, m = c->n, n = ctx->n;
    size_t S = q->start < 0 ? L / 2 : (size_t)q->start;
    if (S >= L) { snprintf(err, errlen, "minicache: start=%lld is not below n_layers %zu", q->start, L); return -1; }
    if (l < S) return 0;
    int upper = (l - S) % 2 == 1;
    size_t partner = upper ? l - 1 : l + 1;
    if (partner >= L) return 0;                     /* unpaired last layer */
    const float *pk, *pv;
    if (!ctx->layer_kv || ctx->layer_kv(ctx, partner, &pk, &pv)) {
        snprintf(err, errlen, "minicache: cannot read layer %zu's K/V", partner);
        return -1;
    }
    float *ok = malloc(m * D * sizeof *ok), *ov = malloc(m * D * sizeof *ov), *out = malloc(m * D * sizeof *out);
    uint8_t *ret = malloc(m ? m : 1);
    if (!ok || !ov || !out || !ret) { free(ok); free(ov); free(out); free(ret); snprintf(err, errlen, "out of memory"); return -1; }
    for (size_t e = 0; e < m; e++) {
        size_t p = (size_t)c->pos[e];
        if (p >= n) p = n - 1;
        memcpy(ok + e * D, pk + (g * n + p) * D, D * sizeof *ok);
        memcpy(ov + e * D, pv + (g * n + p) * D, D * sizeof *ov);
    }
    size_t rk, rv;
    if (upper) rk = minicache_merge(ok, c->k, m, D, q->t, q->retain, NULL, out, ret);
    else rk = minicache_merge(c->k, ok, m, D, q->t, q->retain, out, NULL, ret);
    if (rk != (size_t)-1) memcpy(c->k, out, m * D * sizeof *out);
    if (upper) rv = minicache_merge(ov, c->v, m, D, q->t, q->retain, NULL, out, ret);
    else rv = minicache_merge(c->v, ov, m, D, q->t, q->retain, out, NULL, ret);
    if (rv != (size_t)-1) memcpy(c->v, out, m * D * sizeof *out);
    free(ok); free(ov); free(out); free(ret);
    if (rk == (size_t)-1 || rv == (size_t)-1) { snprintf(err, errlen, "out of memory"); return -1; }
    double dD = (double)D;
    c->bytes.payload = (double)(m - rk) * (dD + 2.0) + (double)rk * 2.0 * dD +
                       (double)(m - rv) * (dD + 2.0) + (double)rv * 2.0 * dD;
    c->bytes.indices += 4.0 * (double)(rk + rv);
    c->modified = rk < m || rv < m;
    return 0;
}

const rp_strategy rp_strategy_minicache = {
    .name = "minicache",
    .summary = "cross-layer SLERP merging of adjacent layers from mid depth, magnitudes kept",
    .reference = "Liu et al. 2024, MiniCache (arXiv 2405.14366); github.com/AkideLiu/MiniCache",
    .kind = RP_ENCODE,
    .protocols = RP_PREFILL | RP_ONLINE,
    .params = minicache_params,
    .n_params = sizeof minicache_params / sizeof minicache_params[0],
    .configure = minicache_configure,
    .free_cfg = minicache_free_cfg,
    .encode = minicache_encode,
    .head_separable = 1,     /* kv head g's merge reads the partner layer's rows of g only (layer_kv) */
};
