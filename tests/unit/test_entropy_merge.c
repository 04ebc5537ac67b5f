/* replay/strategies/entropy_merge.c: entropy hand cases, the plan (sinks kept, spans, budget
 * met, threshold monotone), the proportional-attention identity (a merged entry of n
 * identical tokens attends exactly like the n originals, with the attn.h reference kernel),
 * and prefill through the interface with an in-memory prompt_attn. */
#include "enc_testhelp.h"
#include "strategies/entropy_merge.h"

extern const rp_strategy rp_strategy_entropy_merge;

enum { D = 4, P = 12 };
static float Q[P][D], K[P][D], V[P][D];

/* Uniform causal attention for rows >= 6, one-hot on key 0 before: entropies 0 | 1. */
static int fake_prompt_attn(const rp_layer_ctx *ctx, size_t h, size_t t0, size_t t1, float *out)
{
    for (size_t t = t0; t < t1; t++)
        for (size_t j = 0; j < ctx->P; j++)
            out[(t - t0) * ctx->P + j] = j > t ? 0.0f : t >= 6 ? 1.0f / (float)(t + 1) : (j == 0 ? 1.0f : 0.0f);
    return 0;
}

int main(void)
{
    float u[4] = { 0.25f, 0.25f, 0.25f, 0.25f }, one[3] = { 1, 0, 0 }, two[2] = { 0.5f, 0.5f };
    check_close("uniform entropy normalised = 1", emerge_entropy(u, 4), 1, 1e-12);
    check_close("one-hot entropy = 0", emerge_entropy(one, 3), 0, 0);
    check_close("single key = 0", emerge_entropy(one, 1), 0, 0);
    check_close("two halves = 1", emerge_entropy(two, 2), 1, 1e-12);

    /* plan: entropies, 2 sinks, budget 6 of 10 */
    float ent[10] = { 0.9f, 0.9f, 0.8f, 0.7f, 0.1f, 0.95f, 0.6f, 0.2f, 0.3f, 0.85f };
    uint8_t hi[10];
    size_t e = emerge_plan(ent, 10, 2, 6, hi);
    /* order: 5 (0.95), 9 (0.85), 2 (0.8), 3 (0.7), 6 (0.6) ... entries 10 -> 10 (5 alone)
     * -> 10 (9 alone) -> 10 (2 alone) -> 9 (3 joins 2) -> 8 (6 joins 5) -> 8 (8: 0.3 alone)
     * -> 6 (7 bridges 6..8 with... ) */
    check_true("sinks never merged", !hi[0] && !hi[1]);
    check_true("entries <= budget", e <= 6);
    size_t cnt = 0;
    for (size_t j = 0; j < 10; j++) {
        int run = hi[j] && (j == 0 || !hi[j - 1]);
        cnt += !hi[j] || run;
    }
    check_close("returned entries = kept + runs", (double)e, (double)cnt, 0);
    double thr = 1;
    for (size_t j = 2; j < 10; j++) if (hi[j] && ent[j] < thr) thr = ent[j];
    int ok = 1;
    for (size_t j = 2; j < 10; j++) if (!hi[j] && ent[j] > thr) ok = 0;
    check_true("merged set = entropies above a threshold", ok);
    check_true("token 4 (lowest entropy) kept", !hi[4]);
    check_close("budget >= P keeps everything", (double)emerge_plan(ent, 10, 2, 10, hi), 10, 0);
    check_close("budget 1: everything in one entry", (double)emerge_plan(ent, 10, 4, 1, hi), 1, 0);

    /* proportional attention: n identical tokens vs one merged entry with + log n */
    rp_rng r = { 5 };
    float q[D], kk[8][D], vv[8][D], kb[4][D], vb[4][D], bias[4];
    for (size_t d = 0; d < D; d++) q[d] = randn(&r);
    for (size_t i = 0; i < 8; i++) for (size_t d = 0; d < D; d++) { kk[i][d] = randn(&r); vv[i][d] = randn(&r); }
    for (size_t i = 3; i < 7; i++) { memcpy(kk[i], kk[2], sizeof kk[2]); memcpy(vv[i], vv[2], sizeof vv[2]); }  /* 2..6 identical */
    attn_params ap = { .scale = 0.5f, .softcap = 0, .window = 0 };
    /* merged cache: 0, 1, [2..6] (n = 5), 7 */
    memcpy(kb[0], kk[0], sizeof kb[0]); memcpy(kb[1], kk[1], sizeof kb[0]); memcpy(kb[2], kk[2], sizeof kb[0]); memcpy(kb[3], kk[7], sizeof kb[0]);
    memcpy(vb[0], vv[0], sizeof vb[0]); memcpy(vb[1], vv[1], sizeof vb[0]); memcpy(vb[2], vv[2], sizeof vb[0]); memcpy(vb[3], vv[7], sizeof vb[0]);
    bias[0] = bias[1] = bias[3] = 0; bias[2] = logf(5.0f);
    float lse_a, lse_b, oa[D], ob[D], la[8], lb[4];
    attn_entries_ref(q, &kk[0][0], &vv[0][0], NULL, NULL, 8, D, &ap, &lse_a, oa, la);
    attn_entries_ref(q, &kb[0][0], &vb[0][0], NULL, bias, 4, D, &ap, &lse_b, ob, lb);
    double w = 0;
    for (size_t d = 0; d < D; d++) w = fmax(w, fabs(oa[d] - ob[d]));
    check_close("merged n identical: same output (worst)", w, 0, 1e-6);
    check_close("merged n identical: same lse", lse_b, lse_a, 1e-6);
    double pm = exp(lb[2] - lse_b), po = 0;
    for (size_t i = 2; i < 7; i++) po += exp(la[i] - lse_a);
    check_close("merged entry mass = sum of the n originals' mass", pm, po, 1e-6);

    /* prefill through the interface: rows >= 6 uniform (entropy 1), earlier one-hot (0):
     * 2 sinks + 4 low-entropy tokens kept, tokens 6..11 one span -> 7 entries at B = 7 */
    for (size_t i = 0; i < P; i++) for (size_t d = 0; d < D; d++) { Q[i][d] = randn(&r); K[i][d] = randn(&r); V[i][d] = randn(&r); }
    void *cfg = NULL;
    char err[256] = "";
    const char *kv[] = { "sinks=2", NULL };
    check_true("configure", strat_configure(&rp_strategy_entropy_merge, kv, &cfg, err, sizeof err) == 0);
    rp_layer_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.D = D; ctx.n = P; ctx.P = P; ctx.Hkv = 1; ctx.H = 1; ctx.G = 1; ctx.q = &Q[0][0]; ctx.k = &K[0][0]; ctx.v = &V[0][0];
    ctx.prompt_attn = fake_prompt_attn;
    rp_cache c;
    memset(&c, 0, sizeof c);
    c.D = D;
    check_true("prefill ok", rp_strategy_entropy_merge.prefill(cfg, &ctx, 7, &c, err, sizeof err) == 0);
    check_close("entries", (double)c.n, 7, 0);
    check_true("last entry merges 6..11 (mult 6, pos 6)", c.n == 7 && c.mult[6] == 6 && c.pos[6] == 6 && c.mem_off &&
               c.mem_off[7] - c.mem_off[6] == 6);
    double wm = 0;
    for (size_t d = 0; d < D; d++) {
        double m = 0;
        for (size_t i = 6; i < P; i++) m += K[i][d];
        wm = fmax(wm, fabs(c.k[6 * D + d] - m / 6));
    }
    check_close("merged K = mean (worst)", wm, 0, 1e-6);
    check_true("kept entries are plain originals", c.mult[0] == 1 && !memcmp(c.k, K[0], 6 * D * sizeof(float)));
    rp_cache_free(&c);
    rp_strategy_entropy_merge.free_cfg(cfg);
    return report("test_entropy_merge");
}
