/* asymkv — separate K and V settings as one named configuration.
 *
 * Rule: each side is stored one way: keys with kbits (KIVI per-channel, see quant.c) OR
 *   rank_k (Palu-like projection of de-rotated keys, see lowrank.c) OR fp16 (both 0);
 *   values with vbits (KIVI per-token) OR rank_v OR fp16. Setting bits and a rank on the
 *   same side is refused. The work is delegated to the quant core (quant.h) and to the
 *   lowrank strategy (its calibration and encode), so asymkv kbits=4 vbits=2 equals
 *   quant kbits=4 vbits=2 on the quantised sides bit for bit.
 * Defaults: kbits=4 vbits=2 (more bits for keys than values, the asymmetric setting the
 *   K/V-asymmetry literature recommends), group=32 residual=128, ranks 0, latent_bits=0,
 *   calib_n=1 (a calibration sequence is reserved by the run whenever asymkv is in it,
 *   even with no rank: the engine calls every calibrate hook).
 * Budgets: separate K and V budgets cannot be expressed in this interface (one entry set
 *   per kv head holds K and V together); compose an eviction strategy instead
 *   (`snapkv keep=0.25 + asymkv ...`).
 * Not implemented: the merge form of "Homogeneous Keys, Heterogeneous Values" (Cui et al.
 *   2025, AsymKV, arXiv 2506.05410): its adjacent-key merging criterion and the lossless
 *   value representation could not be reproduced from the paper with certainty in this
 *   session, so no guess is shipped under its name (entropy_merge provides merging with
 *   multiplicities and proportional attention).
 * Reference: KIVI (arXiv 2402.02750, github.com/jy-yuan/KIVI) for the quantised sides;
 *   Palu (arXiv 2407.21118, github.com/shadowpa0327/Palu) for the projected sides.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strategy.h"
#include "strategies/quant.h"

extern const rp_strategy rp_strategy_lowrank;

typedef struct asymkv_cfg {
    int kbits, vbits, lbits;
    size_t group, residual, rank_k, rank_v;
    void *lr;                   /* lowrank cfg when a rank is set */
} asymkv_cfg;

static const rp_param_def asymkv_params[] = {
    { "kbits", RP_INT, "4", 0, 8, NULL, "key bits 2, 4, 8 (0 = not quantised)" },
    { "vbits", RP_INT, "2", 0, 8, NULL, "value bits 2, 4, 8 (0 = not quantised)" },
    { "group", RP_INT, "32", 1, 65536, NULL, "KIVI group G" },
    { "residual", RP_INT, "128", 0, 1 << 30, NULL, "KIVI residual R (multiple of G)" },
    { "rank_k", RP_INT, "0", 0, 65536, NULL, "key rank (0 = none)" },
    { "rank_v", RP_INT, "0", 0, 65536, NULL, "value rank (0 = none)" },
    { "latent_bits", RP_INT, "0", 0, 8, NULL, "low-rank latent 0 (fp16), 8 or 4" },
    { "calib_n", RP_INT, "1", 0, 1 << 20, NULL, "calibration sequences for the ranks" },
};

static void asymkv_free_cfg(void *cfg)
{
    asymkv_cfg *c = cfg;
    if (!c) return;
    if (c->lr) rp_strategy_lowrank.free_cfg(c->lr);
    free(c);
}

static int asymkv_configure(const double *values, void **cfg, char *err, size_t errlen)
{
    *cfg = NULL;
    asymkv_cfg *c = calloc(1, sizeof *c);
    if (!c) { snprintf(err, errlen, "out of memory"); return -1; }
    c->kbits = (int)values[0]; c->vbits = (int)values[1];
    c->group = (size_t)values[2]; c->residual = (size_t)values[3];
    c->rank_k = (size_t)values[4]; c->rank_v = (size_t)values[5]; c->lbits = (int)values[6];
    int bk = c->kbits == 0 || c->kbits == 2 || c->kbits == 4 || c->kbits == 8;
    int bv = c->vbits == 0 || c->vbits == 2 || c->vbits == 4 || c->vbits == 8;
    const char *why = NULL;
    char buf[160];
    if (!bk || !bv) { snprintf(buf, sizeof buf, "kbits=%d vbits=%d: bits must be 2, 4 or 8 (0 = none)", c->kbits, c->vbits); why = buf; }
    else if (c->kbits && c->rank_k) why = "keys get kbits or rank_k, not both";
    else if (c->vbits && c->rank_v) why = "values get vbits or rank_v, not both";
    else if ((c->kbits || c->vbits) && c->residual % c->group) {
        snprintf(buf, sizeof buf, "residual=%zu is not a multiple of group=%zu", c->residual, c->group); why = buf;
    } else if (!c->kbits && !c->vbits && !c->rank_k && !c->rank_v) why = "nothing to compress (set kbits/vbits or rank_k/rank_v)";
    if (why) { snprintf(err, errlen, "asymkv: %s", why); asymkv_free_cfg(c); return -1; }
    if (c->rank_k || c->rank_v) {
        double lv[5] = { (double)c->rank_k, (double)c->rank_v, 0, (double)c->lbits, values[7] };
        if (rp_strategy_lowrank.configure(lv, &c->lr, err, errlen)) { asymkv_free_cfg(c); return -1; }
    }
    *cfg = c;
    return 0;
}

static size_t asymkv_calib_seqs(const void *cfg)
{
    const asymkv_cfg *c = cfg;
    return c->lr ? rp_strategy_lowrank.calib_seqs(c->lr) : 1;
}

static int asymkv_calibrate(void *cfg, const rp_calib_ctx *cc, char *err, size_t errlen)
{
    asymkv_cfg *c = cfg;
    return c->lr ? rp_strategy_lowrank.calibrate(c->lr, cc, err, errlen) : 0;
}

static int asymkv_encode(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *c,
                         char *err, size_t errlen)
{
    const asymkv_cfg *q = cfg;
    size_t m = c->n, D = c->D;
    if ((q->kbits || q->vbits) && D % q->group) {
        snprintf(err, errlen, "asymkv: group=%zu does not divide head_dim %zu", q->group, D);
        return -1;
    }
    rp_bytes b = { 0, 0, 0, c->bytes.indices };
    int mod = 0;
    if (q->lr) {
        if (rp_strategy_lowrank.encode(q->lr, ctx, g, t, c, err, errlen)) return -1;
        b = c->bytes;                   /* fp16 on the sides it leaves alone */
        mod = c->modified;
    } else {
        b.payload = 2.0 * (double)m * (double)D * 2.0;
    }
    size_t G = q->group, R = q->residual;
    double dD = (double)D;
    if (q->kbits) {
        quant_kivi_keys(c->k, m, D, q->kbits, G, R);
        double nk = (double)quant_kivi_nq_keys(m, G, R);
        b.payload += nk * dD * q->kbits / 8.0 - nk * dD * 2.0;
        b.scales += nk / (double)G * dD * 4.0;
        mod |= nk > 0;
    }
    if (q->vbits) {
        quant_kivi_values(c->v, m, D, q->vbits, G, R);
        double nv = (double)quant_kivi_nq_values(m, R);
        b.payload += nv * dD * q->vbits / 8.0 - nv * dD * 2.0;
        b.scales += nv * (dD / (double)G) * 4.0;
        mod |= nv > 0;
    }
    c->bytes = b;
    c->modified = mod;
    return 0;
}

const rp_strategy rp_strategy_asymkv = {
    .name = "asymkv",
    .summary = "separate K and V settings: KIVI bits or low rank per side",
    .reference = "KIVI (arXiv 2402.02750) + Palu (arXiv 2407.21118) per side; AsymKV merge form not implemented",
    .kind = RP_ENCODE,
    .protocols = RP_PREFILL | RP_ONLINE,
    .time_dependent = 1,
    .params = asymkv_params,
    .n_params = sizeof asymkv_params / sizeof asymkv_params[0],
    .configure = asymkv_configure,
    .free_cfg = asymkv_free_cfg,
    .calib_seqs = asymkv_calib_seqs,
    .calibrate = asymkv_calibrate,
    .encode = asymkv_encode,
};
