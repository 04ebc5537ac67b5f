/* asymkv — separate K and V settings as one named configuration.
 *
 * Rule: each side is stored one way: keys with kbits (KIVI per-channel, see quant.c) OR
 *   rank_k (Palu-like projection of de-rotated keys, see lowrank.c) OR fp16 (both 0);
 *   values with vbits (KIVI per-token) OR rank_v OR fp16. Setting bits and a rank on the
 *   same side is refused. The work is delegated to the quant core (quant.h) and to the
 *   lowrank strategy (its calibration and encode), so asymkv kbits=4 vbits=2 equals
 *   quant kbits=4 vbits=2 on the quantised sides bit for bit.
 * Value budget (vkeep < 1, prefill protocol): of the cache's prompt entries (pos < P) only
 *   round(vkeep * their count) (at least 1) keep their own value row; every key stays. The
 *   kept value rows are the last vwindow prompt positions (the observation window, latest
 *   first) and then the highest scores, score = attention the window's queries (rows
 *   [P - vwindow, P) of the G query heads of the kv head, summed; merged entries: summed
 *   over their prompt members) pay to the entry — SnapKV's observation-window score
 *   (snapkv.c; no pooling), applied to values only; ties: lower position. Every other
 *   prompt entry's value row is replaced by ONE shared fill row: vfill=mean the mean of the
 *   rows it replaces (stored fp16, counted once), vfill=zero zeros (not stored). The
 *   selection and the fill come from the rows before any encoding; the V encoding (vbits or
 *   rank_v) then applies to the kept rows (KIVI's fp16 residual = the last `residual` KEPT
 *   rows). Bytes: V payload of the kept rows + the fill row + 4 B index per kept value row.
 *   Key budgets are eviction: compose (`snapkv keep=0.5 + asymkv vkeep=0.25 ...`; the value
 *   budget then counts the entries the eviction kept). Online protocol: refused before the
 *   run (no prompt to choose from; cfg_protocols). The value-budget rule is this project's
 *   (a K/V-asymmetric budget in the spirit of the K/V-asymmetry literature), not a
 *   reproduction of one paper.
 * Defaults: kbits=4 vbits=2 (more bits for keys than values, the asymmetric setting the
 *   K/V-asymmetry literature recommends), group=32 residual=128, ranks 0, latent_bits=0,
 *   calib_n=1 (calibration sequences for the ranks; without a rank nothing is reserved),
 *   vkeep=1 vwindow=32 vfill=mean.
 * Not implemented: the merge form of "Homogeneous Keys, Heterogeneous Values" (Cui et al.
 *   2025, AsymKV, arXiv 2506.05410): its adjacent-key merging criterion and the lossless
 *   value representation could not be reproduced from the paper with certainty, so no
 *   guess is shipped under its name (entropy_merge provides merging with multiplicities
 *   and proportional attention).
 * Reference: KIVI (arXiv 2402.02750, github.com/jy-yuan/KIVI) for the quantised sides;
 *   Palu (arXiv 2407.21118, github.com/shadowpa0327/Palu) for the projected sides; SnapKV
 *   (arXiv 2404.14469, github.com/FasterDecoding/SnapKV) for the value-budget score.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvtrace.h"
#include "strategy.h"
#include "strategies/lowrank.h"
#include "strategies/quant.h"

extern const rp_strategy rp_strategy_lowrank;

enum { VFILL_MEAN = 0, VFILL_ZERO = 1 };

typedef struct asymkv_cfg {
    int kbits, vbits, lbits;
    size_t group, residual, rank_k, rank_v;
    double vkeep;
    size_t vwindow;
    int vfill;
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
    { "vkeep", RP_FLOAT, "1", 0, 1, NULL, "fraction of prompt entries keeping their value row (1 = all)" },
    { "vwindow", RP_INT, "32", 1, 1 << 20, NULL, "value budget: observation window (last prompt queries)" },
    { "vfill", RP_ENUM, "mean", 0, 0, "mean|zero", "value row of the others: mean of the dropped rows, or zeros" },
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
    c->vkeep = values[8]; c->vwindow = (size_t)values[9]; c->vfill = (int)values[10];
    int bk = c->kbits == 0 || c->kbits == 2 || c->kbits == 4 || c->kbits == 8;
    int bv = c->vbits == 0 || c->vbits == 2 || c->vbits == 4 || c->vbits == 8;
    const char *why = NULL;
    char buf[160];
    if (!bk || !bv) { snprintf(buf, sizeof buf, "kbits=%d vbits=%d: bits must be 2, 4 or 8 (0 = none)", c->kbits, c->vbits); why = buf; }
    else if (c->kbits && c->rank_k) why = "keys get kbits or rank_k, not both";
    else if (c->vbits && c->rank_v) why = "values get vbits or rank_v, not both";
    else if ((c->kbits || c->vbits) && c->residual % c->group) {
        snprintf(buf, sizeof buf, "residual=%zu is not a multiple of group=%zu", c->residual, c->group); why = buf;
    } else if (!(c->vkeep > 0.0 && c->vkeep <= 1.0)) {
        snprintf(buf, sizeof buf, "vkeep=%g: expected a fraction in (0, 1]", c->vkeep); why = buf;
    } else if (!c->kbits && !c->vbits && !c->rank_k && !c->rank_v && c->vkeep >= 1.0)
        why = "nothing to compress (set kbits/vbits, rank_k/rank_v or vkeep < 1)";
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
    return c->lr ? rp_strategy_lowrank.calib_seqs(c->lr) : RP_CALIB_NONE;
}

static int asymkv_calibrate(void *cfg, const rp_calib_ctx *cc, char *err, size_t errlen)
{
    asymkv_cfg *c = cfg;
    return c->lr ? rp_strategy_lowrank.calibrate(c->lr, cc, err, errlen) : 0;
}

/* Value budget: of np prompt entries, how many keep their own value row. */
static size_t vb_keep(const asymkv_cfg *q, size_t np)
{
    size_t keep = (size_t)llround(q->vkeep * (double)np);
    return keep < 1 ? 1 : keep > np ? np : keep;
}

/* The value budget's selection for kv head g: vk[e] = 1 for the entries of c that keep their
 * own value row (decode entries always). Depends on the prompt entries' positions and
 * ctx->prompt_attn only, so it is the same at every query position. 0 ok, -1 with err. */
static int vb_select(const asymkv_cfg *q, const rp_layer_ctx *ctx, size_t g, const rp_cache *c, uint8_t *vk,
                     char *err, size_t errlen)
{
    size_t m = c->n, P = ctx->P, G = ctx->G;
    if (P >= ctx->n) {
        snprintf(err, errlen, "asymkv: vkeep=%g needs the prefill protocol (the value budget is chosen from "
                 "the prompt)", q->vkeep);
        return -1;
    }
    size_t np = 0, w = q->vwindow < P ? q->vwindow : P;
    for (size_t e = 0; e < m; e++) {
        vk[e] = (size_t)c->pos[e] >= P;
        np += !vk[e];
    }
    size_t keep = vb_keep(q, np);
    if (keep >= np) { memset(vk, 1, m); return 0; }
    /* the observation window first, latest positions first (pos ascending: from the end) */
    size_t got = 0;
    for (size_t e = m; e-- > 0 && got < keep;)
        if ((size_t)c->pos[e] < P && (size_t)c->pos[e] >= P - w) { vk[e] = 1; got++; }
    if (got == keep) return 0;
    float *attn = malloc(G * w * P * sizeof *attn);
    double *score = malloc(m * sizeof *score);
    int32_t *idx = malloc(m * sizeof *idx), *top = malloc((keep - got) * sizeof *top);
    int rc = !attn || !score || !idx || !top;
    for (size_t i = 0; i < G && !rc; i++)
        rc = ctx->prompt_attn(ctx, g * G + i, P - w, P, attn + i * w * P);
    if (!rc) {
        size_t ns = 0;
        for (size_t e = 0; e < m; e++) {
            if (vk[e] || (size_t)c->pos[e] >= P) continue;
            size_t a = c->mem_off ? (size_t)c->mem_off[e] : 0, b = c->mem_off ? (size_t)c->mem_off[e + 1] : 1;
            double sc = 0;
            for (size_t u = a; u < b; u++) {
                size_t j = c->mem_off ? (size_t)c->members[u] : (size_t)c->pos[e];
                if (j >= P) continue;
                for (size_t i = 0; i < G * w; i++) sc += attn[i * P + j];
            }
            score[ns] = (float)sc;      /* the fp32 ranking of the reference */
            idx[ns++] = (int32_t)e;
        }
        size_t k = rp_topk(score, ns, keep - got, top);
        for (size_t i = 0; i < k; i++) vk[idx[top[i]]] = 1;
    }
    free(attn); free(score); free(idx); free(top);
    if (rc) snprintf(err, errlen, "out of memory");
    return rc ? -1 : 0;
}

/* Incremental encoding (the engine's prefill path: the cache a query sees only grows by
 * decode entries): entries [0, m_prev) hold this function's output for the first m_prev
 * entries, [m_prev, c->n) are exact rows just appended. m_prev = 0 encodes everything.
 * Equal bit for bit to encoding all c->n entries at once (tests/unit/test_lowrank.c): every
 * operation is per row (the V side: per token; lowrank: per row) or per whole group of G
 * key rows below quant_kivi_nq_keys (which only grows), the value selection does not depend
 * on the decode entries, and the fill row is written once. */
static int asymkv_encode_extend(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *c,
                                size_t m_prev, char *err, size_t errlen)
{
    const asymkv_cfg *q = cfg;
    size_t m = c->n, D = c->D, P = ctx->P;
    if ((q->kbits || q->vbits) && D % q->group) {
        snprintf(err, errlen, "asymkv: group=%zu does not divide head_dim %zu", q->group, D);
        return -1;
    }
    if (m_prev > m) { snprintf(err, errlen, "asymkv: encode_extend from %zu to %zu entries", m_prev, m); return -1; }
    size_t np = 0, nd = 0;          /* prompt entries, dropped value rows */
    if (q->vkeep < 1.0) {
        for (size_t e = 0; e < m; e++) np += (size_t)c->pos[e] < P;
        for (size_t e = m_prev; m_prev > 0 && e < m; e++)
            if ((size_t)c->pos[e] < P) {
                snprintf(err, errlen, "asymkv: vkeep < 1: the cache grew by a prompt entry (position %d)", (int)c->pos[e]);
                return -1;
            }
        nd = np - vb_keep(q, np);
    }
    size_t mv_prev = m_prev ? m_prev - nd : 0, mv = m - nd, kp = np - nd;
    size_t G = q->group, R = q->residual;
    size_t v0 = q->vbits ? quant_kivi_nq_values(mv_prev, R) : 0, v1 = q->vbits ? quant_kivi_nq_values(mv, R) : 0;
    uint8_t *vk = NULL;
    size_t *kept = NULL;            /* kept[i]: the entry of the i-th kept prompt row */
    float *fill = NULL;
    int rc = -1;
    /* the selection: to write the fill (first call) and, with vbits, to find kept prompt rows
     * entering the quantised range (v0 < kp: the first R decode steps) */
    if (nd && (m_prev == 0 || (q->vbits && v0 < kp))) {
        vk = malloc(m);
        kept = malloc((kp ? kp : 1) * sizeof *kept);
        if (!vk || !kept) { snprintf(err, errlen, "out of memory"); goto done; }
        if (vb_select(q, ctx, g, c, vk, err, errlen)) goto done;
        for (size_t e = 0, i = 0; e < m; e++)
            if (vk[e] && (size_t)c->pos[e] < P && i < kp) kept[i++] = e;
    }
    if (nd && m_prev == 0) {        /* the shared row, from the rows before any encoding */
        double *acc = calloc(D, sizeof *acc);
        fill = malloc(D * sizeof *fill);
        if (!acc || !fill) { free(acc); snprintf(err, errlen, "out of memory"); goto done; }
        for (size_t e = 0; e < m; e++)
            if (!vk[e]) for (size_t d = 0; d < D; d++) acc[d] += c->v[e * D + d];
        for (size_t d = 0; d < D; d++)
            fill[d] = q->vfill == VFILL_ZERO ? 0.0f : kv_f16_to_f32_one(kv_f32_to_f16_one((float)(acc[d] / (double)nd)));
        free(acc);
    }
    double bases = 0;
    int mod = 0;
    if (q->lr) {        /* projects the new rows of the ranked sides (rows are independent) */
        double idx0 = c->bytes.indices;
        if (rp_strategy_lowrank.encode_extend(q->lr, ctx, g, t, c, m_prev, err, errlen)) goto done;
        c->bytes.indices = idx0;
        bases = c->bytes.bases;
        mod = c->modified;
    }
    double dD = (double)D, kpay, ks, vpay, vs;
    if (q->kbits) {     /* whole groups of G key rows, per channel, below nq_keys (only grows) */
        quant_kivi_keys_grow(c->k, m_prev, m, D, q->kbits, G, R);
        quant_kivi_side_bytes(m, D, q->kbits, G, R, 1, &kpay, &ks);
        mod |= quant_kivi_nq_keys(m, G, R) > 0;
    } else {
        kpay = lowrank_side_bytes(m, D, q->rank_k, q->lbits);
        ks = lowrank_side_scales(m, D, q->rank_k, q->lbits);
    }
    if (q->vbits) {     /* per token over the kept rows: the residual is the last R kept rows */
        for (size_t i = v0; i < v1; i++) {
            size_t e = !nd ? i : i < kp ? kept[i] : np + (i - kp);  /* decode entries follow the prompt */
            quant_kivi_value_row(c->v + e * D, D, q->vbits, G);
        }
        quant_kivi_side_bytes(mv, D, q->vbits, G, R, 0, &vpay, &vs);
        mod |= v1 > 0;
    } else {
        vpay = lowrank_side_bytes(mv, D, q->rank_v, q->lbits);
        vs = lowrank_side_scales(mv, D, q->rank_v, q->lbits);
    }
    /* indices: this function adds 4 B per kept value row to what it was given */
    double idx = c->bytes.indices - (m_prev && nd ? 4.0 * (double)mv_prev : 0.0);
    if (nd) {
        if (fill)
            for (size_t e = 0; e < m; e++)
                if (!vk[e]) memcpy(c->v + e * D, fill, D * sizeof *fill);
        if (q->vfill == VFILL_MEAN) vpay += dD * 2.0;
        idx += (double)mv * 4.0;
        mod = 1;
    }
    c->bytes = (rp_bytes){ kpay + vpay, ks + vs, bases, idx };
    c->modified = mod;
    rc = 0;
done:
    free(vk);
    free(kept);
    free(fill);
    return rc;
}

/* encode_cuts: each side is rewritten once, KIVI groups and rows as in quant.c (over the
 * stream of kept value rows), projected rows on arrival, the fill row at the first encode.
 * With a value budget (nd dropped rows) and vbits, the quantised kept rows are a prefix of
 * the entries only once every kept prompt row is quantised (m >= np + R); before that the
 * form does not hold (-1: the engine evaluates those rows one by one). */
static int asymkv_encode_cuts(const void *cfg, const rp_layer_ctx *ctx, const rp_cache *c, size_t m, size_t *kcut,
                              size_t *vcut)
{
    const asymkv_cfg *q = cfg;
    size_t D = ctx->D, np = 0, nd = 0, R = q->residual;
    if (q->vkeep < 1.0) {
        while (np < m && (size_t)c->pos[np] < ctx->P) np++;     /* ascending: prompt entries first */
        nd = np - vb_keep(q, np);
    }
    *kcut = q->kbits ? quant_kivi_nq_keys(m, q->group, R) : q->rank_k && q->rank_k < D ? m : 0;
    if (q->vbits) {
        size_t v1 = quant_kivi_nq_values(m - nd, R);
        if (nd && v1 < np - nd) return -1;      /* kept prompt rows still partly in the residual */
        *vcut = nd + v1;
    } else {
        *vcut = nd || (q->rank_v && q->rank_v < D) ? m : 0;
    }
    return 0;
}

static int asymkv_encode(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *c,
                         char *err, size_t errlen)
{
    return asymkv_encode_extend(cfg, ctx, g, t, c, 0, err, errlen);
}

static unsigned asymkv_protocols(const void *cfg)
{
    const asymkv_cfg *q = cfg;
    return q->vkeep < 1.0 ? RP_PREFILL : RP_PREFILL | RP_ONLINE;
}

/* uses_rope: a rank is lowrank's calibration and projection, which de-rotate keys */
static int asymkv_uses_rope(const void *cfg) { return ((const asymkv_cfg *)cfg)->lr != NULL; }

const rp_strategy rp_strategy_asymkv = {
    .name = "asymkv",
    .summary = "separate K and V settings: KIVI bits or low rank per side, a value budget",
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
    .calib_kv_only = 1,
    .encode = asymkv_encode,
    .encode_extend = asymkv_encode_extend,
    .encode_cuts = asymkv_encode_cuts,
    .cfg_protocols = asymkv_protocols,
    .cfg_uses_rope = asymkv_uses_rope,
    .head_separable = 1,     /* one kv head's cache and prompt attention; lowrank's basis by g0 + g */
};
