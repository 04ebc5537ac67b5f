/* cab — sinks + local window + bridges + importance (this project's definition, docs/STRATEGIES.md;
 * cite it as kvtrace's CAB, not as an external method).
 *
 * Rule (prefill protocol, per kv head, budget B over the prompt [0, P); B >= P keeps all):
 *   sinks       the first s = min(sinks, B) positions;
 *   local       the last nl prompt positions;
 *   importance  the ni positions (not sinks/local) with the highest accumulated attention
 *               from all prompt queries: imp_j = sum_{q < P} p_q(j) (H2O's prefill score);
 *   bridges     the nb positions (none of the above) with the highest attention received
 *               from the importance set's own queries: br_j = sum_{q in importance} p_q(j)
 *               (a 2-hop importance: what the important tokens read).
 *   With R = B - s: nl = floor(local R + 1/2), nb = min(floor(bridges R + 1/2), R - nl),
 *   ni = R - nl - nb. Scores are per query head, reduced over the kv head's group with the
 *   run's --gqa-reduce (mean by default). Ties: lower position.
 * Defaults: sinks=4, local=0.3, bridges=0.2 (importance 0.5) — the split of the project's
 * default split 30% local, 20% bridges, 50% importance; sinks as StreamingLLM's 4.
 * local + bridges must not exceed 1. Prefill only: bridges need the attention rows of past
 * queries, which an online cache does not keep.
 * Reference: kvtrace's own definition (docs/STRATEGIES.md); importance as H2O (Zhang et al. 2023).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cab.h"
#include "evict_util.h"
#include "strategy.h"

typedef struct cab_cfg { size_t sinks; double local, bridges; } cab_cfg;

static const rp_param_def cab_params[] = {
    { "sinks", RP_INT, "4", 0, 1e9, NULL, "attention-sink tokens kept at the start" },
    { "local", RP_FLOAT, "0.3", 0, 1, NULL, "fraction of the budget beyond sinks for the local window" },
    { "bridges", RP_FLOAT, "0.2", 0, 1, NULL, "fraction of the budget beyond sinks for bridge tokens" },
};

void cab_split(size_t B, size_t sinks, double local_frac, double bridge_frac,
               size_t *s, size_t *nl, size_t *ni, size_t *nb)
{
    *s = sinks < B ? sinks : B;
    size_t R = B - *s;
    size_t l = (size_t)floor(local_frac * (double)R + 0.5), b;
    if (l > R) l = R;
    b = (size_t)floor(bridge_frac * (double)R + 0.5);
    if (b > R - l) b = R - l;
    *nl = l;
    *nb = b;
    *ni = R - l - b;
}

size_t cab_pick(const double *score, size_t P, size_t k, uint8_t mark, uint8_t *role)
{
    if (!k) return 0;
    double *s = malloc(P * sizeof *s);
    int32_t *idx = malloc(P * sizeof *idx);
    size_t m = (size_t)-1, free_n = 0;
    if (!s || !idx) goto done;
    for (size_t j = 0; j < P; j++) {
        s[j] = role[j] ? NAN : score[j];     /* taken positions rank last */
        free_n += !role[j];
    }
    m = rp_topk(s, P, k < free_n ? k : free_n, idx);
    for (size_t i = 0; i < m; i++) role[idx[i]] = mark;
done:
    free(s); free(idx);
    return m;
}

static int cab_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    if (v[1] + v[2] > 1.0 + 1e-12) {
        snprintf(err, errlen, "cab: local=%g + bridges=%g exceeds 1 (importance gets the rest of the budget)", v[1], v[2]);
        return -1;
    }
    cab_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->sinks = (size_t)v[0];
    c->local = v[1];
    c->bridges = v[2];
    *cfg = c;
    return 0;
}

static void cab_free(void *cfg) { free(cfg); }

static int cab_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                       char *err, size_t errlen)
{
    const cab_cfg *c = cfg;
    size_t P = ctx->P, G = ctx->G, s, nl, ni, nb;
    cab_split(B < P ? B : P, c->sinks, c->local, c->bridges, &s, &nl, &ni, &nb);
    double *acc = calloc(G * P, sizeof *acc), *score = malloc(P * sizeof *score);
    uint8_t *role = malloc(P), *imp = malloc(P);
    int32_t *kept = malloc(P * sizeof *kept);
    int rc = -1;
    if (!acc || !score || !role || !imp || !kept) goto done;
    for (size_t g = 0; g < ctx->Hkv; g++) {
        size_t m = 0;
        if (B >= P) {
            for (size_t j = 0; j < P; j++) kept[m++] = (int32_t)j;
        } else {
            memset(role, 0, P);
            for (size_t j = 0; j < s; j++) role[j] = CAB_SINK;
            for (size_t j = P - nl; j < P; j++) role[j] = CAB_LOCAL;
            memset(acc, 0, G * P * sizeof *acc);
            for (size_t i = 0; i < G; i++)
                if (ev_accum_rows(ctx, g * G + i, 0, P, NULL, P, acc + i * P)) goto done;
            ev_reduce(acc, G, P, ctx->gqa_reduce, score);
            if (cab_pick(score, P, ni, CAB_IMPORTANT, role) == (size_t)-1) goto done;
            for (size_t j = 0; j < P; j++) imp[j] = role[j] == CAB_IMPORTANT;
            memset(acc, 0, G * P * sizeof *acc);
            for (size_t i = 0; i < G; i++)
                if (ev_accum_rows(ctx, g * G + i, 0, P, imp, P, acc + i * P)) goto done;
            ev_reduce(acc, G, P, ctx->gqa_reduce, score);
            if (cab_pick(score, P, nb, CAB_BRIDGE, role) == (size_t)-1) goto done;
            for (size_t j = 0; j < P; j++) if (role[j]) kept[m++] = (int32_t)j;
        }
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
    }
    rc = 0;
done:
    free(acc); free(score); free(role); free(imp); free(kept);
    return rc;
}

const rp_strategy rp_strategy_cab = {
    .name = "cab",
    .summary = "sinks + local window + importance (accumulated attention) + bridges (2-hop importance)",
    .reference = "kvtrace's own definition (docs/STRATEGIES.md, cab); importance as H2O (Zhang et al. 2023)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = cab_params,
    .n_params = 3,
    .configure = cab_configure,
    .free_cfg = cab_free,
    .prefill = cab_prefill,
    .head_separable = 1,     /* each kv head's cache from its own rows and scores */
};
