/* criticalkv — two-stage selection: half of the budget by the base score, the rest by the
 * base score weighted with how much each value moves the layer's output, ||v W_O_h||_1.
 *
 * Rule (prefill protocol, per kv head g with query heads h = gG .. gG + G - 1):
 *   1. s[j]: the base score — SnapKV's observation-window score, window padded with the
 *      layer's maximum (kvp_score.h; kvpress SnapKVPress.score).
 *   2. Stage 1: the n1 = floor(first_stage_ratio * B) best entries by s are kept.
 *   3. Stage 2: u[j] = mean over the G query heads h of ||v_j W_O[h]||_1, where W_O[h] is the
 *      [D][C] block of the trace's read-out W_O (rows hD .. hD + D - 1) of this layer;
 *      s2[j] = (s[j] + epsilon) * u[j], and the stage-1 entries rank first.
 *   4. Keep the B best by s2 (ties: lower position). B >= P keeps everything.
 * Needs a trace with a read-out (/readout/w_o); window < P.
 * Defaults: first_stage_ratio=0.5, epsilon=1e-4 (kvpress CriticalKVPress); base press SnapKV
 * with kvpress's defaults (preset=kvpress: window 64, kernel 5, avg pooling, window rows
 * averaged, group mean). kvpress's examples pair CriticalKV with SnapKV or
 * ExpectedAttention; SnapKV is the base here (shared window sums, replay/shared.h).
 * Reference: Feng et al. 2025, "Identify Critical KV Cache in LLM Inference from an Output
 * Perturbation Perspective" (arXiv 2502.03805; github.com/FFY0/AdaKV, CriticalKV); NVIDIA/kvpress
 * CriticalKVPress (presses/criticalkv_press.py).
 * Differences: stage 1 keeps floor(first_stage_ratio * B) with B = round(keep * P), kvpress
 * int((1 - compression_ratio) * P * first_stage_ratio): equal up to the rounding of the
 * budget. The norms are computed in double from the fp16-rounded trace values (the
 * reference: model dtype). Stage-1 entries get +inf instead of the dtype's maximum (the
 * same ranking).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "criticalkv.h"
#include "evict_util.h"
#include "kvp_score.h"
#include "strategy.h"

enum { CK_RATIO, CK_EPS };   /* kvp_cfg.own[] */

static const rp_param_def criticalkv_params[] = {
    { "first_stage_ratio", RP_FLOAT, "0.5", 0, 1, NULL, "fraction of the budget chosen by the base score alone" },
    { "epsilon", RP_FLOAT, "1e-4", 0, 1e9, NULL, "added to the base score before weighting by ||v W_O||_1" },
    KVP_SCORER_PARAMS,
};

static int criticalkv_configure(const double *v, void **cfg, char *err, size_t errlen)
{
    return kvp_configure(v, 2, "criticalkv", cfg, err, errlen);
}

enum { CK_ROWS = 4 };    /* value rows per pass over W_O */
enum { CK_COLS = 4 };    /* output columns held in registers per pass over d */

typedef double v2d __attribute__((vector_size(16)));    /* SSE2: every x86-64 */

/* row[r][c0 .. c0 + CK_COLS) = sum over d in order of x[r][d] * w[d][c], for the CK_ROWS
 * rows at once: the 8 partial sums stay in registers for the whole pass over d (an
 * accumulator array in memory made each product a load and a store), and every element
 * of W_O loaded serves all rows. Each sum still starts from 0 and adds d = 0, 1, ... in
 * order, with the same double products: the same bits as one element at a time. */
static void ck_block(const double *x, size_t D, const float *w, size_t C, size_t c0, double *row)
{
    v2d a00 = {0, 0}, a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    for (size_t d = 0; d < D; d++) {
        const float *wd = w + d * C + c0;
        const v2d w0 = {wd[0], wd[1]}, w1 = {wd[2], wd[3]};
        const v2d x0 = {x[d], x[d]}, x1 = {x[D + d], x[D + d]};
        const v2d x2 = {x[2 * D + d], x[2 * D + d]}, x3 = {x[3 * D + d], x[3 * D + d]};
        a00 += x0 * w0; a01 += x0 * w1;
        a10 += x1 * w0; a11 += x1 * w1;
        a20 += x2 * w0; a21 += x2 * w1;
        a30 += x3 * w0; a31 += x3 * w1;
    }
    memcpy(row + c0, &a00, sizeof a00);         memcpy(row + c0 + 2, &a01, sizeof a01);
    memcpy(row + C + c0, &a10, sizeof a10);     memcpy(row + C + c0 + 2, &a11, sizeof a11);
    memcpy(row + 2 * C + c0, &a20, sizeof a20); memcpy(row + 2 * C + c0 + 2, &a21, sizeof a21);
    memcpy(row + 3 * C + c0, &a30, sizeof a30); memcpy(row + 3 * C + c0 + 2, &a31, sizeof a31);
}

/* Step 3's u (criticalkv.h). The products v W_O of CK_ROWS value rows at a time (ck_block;
 * W_O of a query head is D x C, a few hundred KiB: one pass per row was bound by reading
 * it). Each element row[r][c] is summed over d in order from 0, and the |.| sums in c then
 * i order: the same bits as one row at a time. In a last pass of fewer rows, the rows past P
 * are computed from the previous pass's x and never read. */
int criticalkv_value_norms(const rp_layer_ctx *ctx, size_t g, const float *wo, size_t C, double *u)
{
    size_t D = ctx->D, G = ctx->G;
    double *row = malloc(CK_ROWS * C * sizeof *row), *x = calloc(CK_ROWS * D, sizeof *x);
    if (!row || !x) { free(row); free(x); return -1; }
    for (size_t j0 = 0; j0 < ctx->P; j0 += CK_ROWS) {
        size_t nr = ctx->P - j0 < CK_ROWS ? ctx->P - j0 : CK_ROWS;
        for (size_t r = 0; r < nr; r++)
            for (size_t d = 0; d < D; d++) x[r * D + d] = ctx->v[(g * ctx->n + j0 + r) * D + d];
        double tot[CK_ROWS] = {0};
        for (size_t i = 0; i < G; i++) {
            const float *w = wo + (g * G + i) * D * C;
            size_t c = 0;
            for (; c + CK_COLS <= C; c += CK_COLS) ck_block(x, D, w, C, c, row);
            for (; c < C; c++)                  /* the columns past the last whole block */
                for (size_t r = 0; r < nr; r++) {
                    double a = 0;
                    for (size_t d = 0; d < D; d++) a += x[r * D + d] * (double)w[d * C + c];
                    row[r * C + c] = a;
                }
            for (size_t r = 0; r < nr; r++)
                for (size_t c2 = 0; c2 < C; c2++) tot[r] += fabs(row[r * C + c2]);
        }
        for (size_t r = 0; r < nr; r++) u[j0 + r] = tot[r] / (double)G;
    }
    free(row); free(x);
    return 0;
}

int criticalkv_w_o(const rp_layer_ctx *ctx, const char *who, const float **wo, size_t *C, char *err, size_t errlen)
{
    int wr = ctx->w_o ? ctx->w_o(ctx, wo, C) : -1;
    if (wr == -1)
        return rp_failf(err, errlen, "%s: needs the trace's read-out W_O (/readout/w_o), which this trace lacks", who);
    if (wr) return rp_failf(err, errlen, "%s: cannot read the layer's W_O (out of memory or a read error)", who);
    return 0;
}

static int criticalkv_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                              char *err, size_t errlen)
{
    const kvp_cfg *c = cfg;
    size_t P = ctx->P, Hkv = ctx->Hkv;
    double *score = malloc(Hkv * P * sizeof *score), *u = malloc(P * sizeof *u);
    int32_t *kept = malloc(P * sizeof *kept);
    int rc = -1;
    if (!score || !u || !kept) { rp_failf(err, errlen, "out of memory"); goto done; }
    if (B >= P) {
        rc = kvp_keep_all(ctx, kept, out);
        goto done;
    }
    const float *wo = NULL;
    size_t C = 0;
    if (criticalkv_w_o(ctx, "criticalkv", &wo, &C, err, errlen)) goto done;
    if (kvp_check_window(&c->o, "criticalkv", P, err, errlen)) goto done;
    if (kvp_window_scores(&c->o, ctx, score)) goto done;
    size_t n1 = (size_t)floor(c->own[CK_RATIO] * (double)B);
    for (size_t g = 0; g < Hkv; g++) {
        double *s = score + g * P;
        size_t m1 = rp_topk(s, P, n1, kept);
        if (criticalkv_value_norms(ctx, g, wo, C, u)) goto done;
        for (size_t j = 0; j < P; j++) s[j] = (s[j] + c->own[CK_EPS]) * u[j];
        for (size_t i = 0; i < m1; i++) s[kept[i]] = INFINITY;
        size_t m = rp_topk(s, P, B, kept);
        if (ev_push_kept(ctx, g, kept, m, &out[g])) goto done;
    }
    rc = 0;
done:
    free(score); free(u); free(kept);
    return rc;
}

const rp_strategy rp_strategy_criticalkv = {
    .name = "criticalkv",
    .summary = "two stages: first_stage_ratio of the budget by SnapKV score, the rest by (score + eps) * ||v W_O||_1",
    .reference = "Feng et al. 2025 (arXiv 2502.03805); kvpress CriticalKVPress over SnapKVPress (first_stage_ratio=0.5, "
                 "epsilon=1e-4; stage 1 keeps floor(ratio * B), B per kv head)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 1,
    .params = criticalkv_params,
    .n_params = sizeof criticalkv_params / sizeof criticalkv_params[0],
    .configure = criticalkv_configure,
    .free_cfg = kvp_free,
    .check_budget = kvp_check_budget,
    .prefill = criticalkv_prefill,
};
