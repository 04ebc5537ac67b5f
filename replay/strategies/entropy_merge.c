/* entropy_merge — keep sinks and low-entropy tokens, merge contiguous high-entropy spans.
 *
 * Rule (prefill protocol): for every prompt token j, the entropy of ITS OWN attention row
 *   (query j over keys [0, j], causal), normalised by log(j + 1) so that early tokens,
 *   which see few keys, are comparable (token 0: 0), reduced over the G query heads of the
 *   kv head by --gqa-reduce (mean default; sum ranks like mean; max). High entropy means
 *   attention spread across many tokens (information diffuse, so the token can merge), read
 *   from the token's own query row; the attention a token RECEIVES is H2O's signal, not
 *   this one. The first `sinks` tokens are always kept; the remaining tokens join the
 *   merged set by decreasing entropy until the entries (kept tokens + one entry per maximal
 *   contiguous run of merged tokens) fit the budget B = keep * P: the entropy threshold is
 *   the smallest one that meets the requested keep fraction. Each run becomes one entry:
 *   mean K, mean V, multiplicity n, members its positions; the engine adds log n to its
 *   logit (proportional attention), so a run of n identical tokens attends exactly like
 *   the n originals.
 * Defaults: sinks=4 (the first 4 tokens, as StreamingLLM); a fixed entropy threshold is
 *   replaced by the budget-driven threshold so that configurations compare at equal keep.
 * Reference: kvtrace's own rule (docs/STRATEGIES.md, entropy_merge): entropy-guided KV
 *   cache merging; proportional attention as in ToMe (Bolya et al. 2023, arXiv 2210.09461).
 *   No published method or public repository: the rule above is this project's.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared.h"
#include "strategy.h"
#include "strategies/entropy_merge.h"

/* ---- core ------------------------------------------------------------------------------ */

double emerge_entropy(const float *p, size_t nvis) { return rp_entropy_norm(p, nvis); }

size_t emerge_plan(const float *ent, size_t P, size_t sinks, size_t B, uint8_t *high)
{
    memset(high, 0, P);
    if (B == 0) B = 1;
    size_t S = sinks < B - 1 ? sinks : B - 1, entries = P;
    if (S > P) S = P;
    if (entries <= B) return entries;
    size_t m = P - S;
    double *score = malloc((m ? m : 1) * sizeof *score);
    int32_t *order = malloc((m ? m : 1) * sizeof *order);
    if (!score || !order) { free(score); free(order); return (size_t)-1; }
    /* full descending order by entropy (ties: lower position first) through rp_topk */
    for (size_t i = 0; i < m; i++) score[i] = ent[S + i];     /* float -> double: exact */
    size_t got = rp_topk(score, m, m, order);     /* ascending index order: re-sort by score */
    for (size_t i = 1; i < got; i++) {            /* insertion sort, stable on index */
        int32_t x = order[i];
        size_t j = i;
        while (j > 0 && (score[order[j - 1]] < score[x] || (isnan(score[order[j - 1]]) && !isnan(score[x])))) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = x;
    }
    for (size_t i = 0; i < got && entries > B; i++) {
        size_t j = S + (size_t)order[i];
        int left = j > S && high[j - 1], right = j + 1 < P && high[j + 1];
        high[j] = 1;
        if (left && right) entries -= 2;
        else if (left || right) entries -= 1;
    }
    free(score);
    free(order);
    return entries;
}

/* ---- strategy ---------------------------------------------------------------------------- */

typedef struct emerge_cfg { size_t sinks; } emerge_cfg;

static const rp_param_def emerge_params[] = {
    { "sinks", RP_INT, "4", 0, 1 << 20, NULL, "first tokens always kept" },
};

static int emerge_configure(const double *values, void **cfg, char *err, size_t errlen)
{
    emerge_cfg *c = malloc(sizeof *c);
    if (!c) { snprintf(err, errlen, "out of memory"); return -1; }
    c->sinks = (size_t)values[0];
    *cfg = c;
    return 0;
}

static void emerge_free_cfg(void *cfg) { free(cfg); }

/* Build the cache of one kv head from the plan: kept tokens plain, runs merged (means). */
static int emerge_build(const float *k, const float *v, size_t P, size_t D, const uint8_t *high, rp_cache *out)
{
    double *mk = malloc(D * sizeof *mk), *mv = malloc(D * sizeof *mv);
    float *fk = malloc(D * sizeof *fk), *fv = malloc(D * sizeof *fv);
    int32_t *mem = malloc((P ? P : 1) * sizeof *mem);
    int rc = !mk || !mv || !fk || !fv || !mem ? -1 : 0;
    for (size_t j = 0; j < P && !rc;) {
        if (!high[j]) { rc = rp_cache_push(out, (int32_t)j, k + j * D, v + j * D); j++; continue; }
        size_t a = j;
        while (j < P && high[j]) j++;
        if (j - a == 1) { rc = rp_cache_push(out, (int32_t)a, k + a * D, v + a * D); continue; }
        memset(mk, 0, D * sizeof *mk); memset(mv, 0, D * sizeof *mv);
        for (size_t i = a; i < j; i++) {
            mem[i - a] = (int32_t)i;
            for (size_t d = 0; d < D; d++) { mk[d] += k[i * D + d]; mv[d] += v[i * D + d]; }
        }
        for (size_t d = 0; d < D; d++) { fk[d] = (float)(mk[d] / (double)(j - a)); fv[d] = (float)(mv[d] / (double)(j - a)); }
        rc = rp_cache_push_merged(out, mem, j - a, fk, fv);
    }
    free(mk); free(mv); free(fk); free(fv); free(mem);
    return rc;
}

#define EM_ROWS 64

static int emerge_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                          char *err, size_t errlen)
{
    const emerge_cfg *q = cfg;
    size_t P = ctx->P, D = ctx->D, G = ctx->G;
    float *ent = malloc((P ? P : 1) * sizeof *ent), *buf = malloc(EM_ROWS * (P ? P : 1) * sizeof *buf);
    uint8_t *high = malloc(P ? P : 1);
    if (!ent || !buf || !high) { free(ent); free(buf); free(high); snprintf(err, errlen, "out of memory"); return -1; }
    int rc = 0;
    for (size_t g = 0; g < ctx->Hkv && !rc; g++) {
        for (size_t j = 0; j < P; j++) ent[j] = ctx->gqa_reduce == RP_GQA_MAX ? -INFINITY : 0.0f;
        for (size_t i = 0; i < G && !rc && ctx->prompt_entropy; i++) {
            /* the engine's shared row entropies: the values below, computed once */
            const double *e = ctx->prompt_entropy(ctx, g * G + i);
            if (!e) { rc = -1; snprintf(err, errlen, "out of memory"); break; }
            for (size_t t = 0; t < P; t++) {
                float h = (float)e[t];
                if (ctx->gqa_reduce == RP_GQA_MAX) { if (h > ent[t]) ent[t] = h; }
                else ent[t] += h / (float)G;
            }
        }
        for (size_t i = 0; i < G && !rc && !ctx->prompt_entropy; i++)
            for (size_t t0 = 0; t0 < P && !rc; t0 += EM_ROWS) {
                size_t t1 = t0 + EM_ROWS < P ? t0 + EM_ROWS : P;
                if (ctx->prompt_attn(ctx, g * G + i, t0, t1, buf)) { rc = -1; snprintf(err, errlen, "out of memory"); break; }
                for (size_t t = t0; t < t1; t++) {
                    size_t lo = attn_lo(t, ctx->ap.window);
                    float h = (float)emerge_entropy(buf + (t - t0) * P + lo, t + 1 - lo);
                    if (ctx->gqa_reduce == RP_GQA_MAX) { if (h > ent[t]) ent[t] = h; }
                    else ent[t] += h / (float)G;
                }
            }
        if (rc) break;
        if (emerge_plan(ent, P, q->sinks, B, high) == (size_t)-1 ||
            emerge_build(ctx->k + g * ctx->n * D, ctx->v + g * ctx->n * D, P, D, high, &out[g])) {
            snprintf(err, errlen, "out of memory");
            rc = -1;
        }
    }
    free(ent); free(buf); free(high);
    return rc;
}

const rp_strategy rp_strategy_entropy_merge = {
    .name = "entropy_merge",
    .summary = "keep sinks and low-entropy tokens; merge contiguous high-entropy spans (mean K/V, multiplicity)",
    .reference = "kvtrace's own rule (docs/STRATEGIES.md, entropy_merge); proportional attention as ToMe (Bolya et al. 2023, arXiv 2210.09461)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = emerge_params,
    .n_params = sizeof emerge_params / sizeof emerge_params[0],
    .configure = emerge_configure,
    .free_cfg = emerge_free_cfg,
    .prefill = emerge_prefill,
    .uses_entropy = 1,
    .head_separable = 1,     /* each kv head's cache from its own rows and scores */
};
