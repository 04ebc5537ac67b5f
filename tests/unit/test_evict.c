/* Hand-computed cases for the attention-scored eviction strategies (replay/strategies/
 * h2o, tova, snapkv, pyramidkv, adakv, quest, cab) through their pure cores and, for the
 * online H2O state and bad parameters, through the strategy table (rp_strategy_find).
 * Every expected value below was worked out by hand; comments show the arithmetic.
 * Exact comparisons except where a tolerance is given.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strategies/adakv.h"
#include "strategies/cab.h"
#include "strategies/evict_util.h"
#include "strategies/h2o.h"
#include "strategies/pyramidkv.h"
#include "strategies/quest.h"
#include "strategies/snapkv.h"
#include "strategies/tova.h"
#include "strategy.h"

static int fails = 0, checks = 0;

static void check(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

static void check_eq(const char *what, long got, long want)
{
    checks++;
    if (got != want) { fails++; printf("FAIL %s: got %ld want %ld\n", what, got, want); }
}

static void check_ints(const char *what, const int32_t *got, size_t n, const int32_t *want, size_t nw)
{
    int ok = n == nw;
    for (size_t i = 0; ok && i < n; i++) ok = got[i] == want[i];
    checks++;
    if (!ok) {
        fails++;
        printf("FAIL %s: got [", what);
        for (size_t i = 0; i < n; i++) printf("%s%d", i ? " " : "", got[i]);
        printf("] want [");
        for (size_t i = 0; i < nw; i++) printf("%s%d", i ? " " : "", want[i]);
        printf("]\n");
    }
}

static void check_close(const char *what, double got, double want, double tol)
{
    checks++;
    if (!(fabs(got - want) <= tol)) { fails++; printf("FAIL %s: got %.17g want %.17g\n", what, got, want); }
}

/* ---- PyramidKV budgets ------------------------------------------------------------------- */

static void test_pyramidkv(void)
{
    /* Factory, w=8, C=128, beta=20, N=32, long prompt (P=1000): min = 120 // 20 = 6,
     * max = 240 - 6 = 234 (< P - w), steps = 228 // 31 = 7: B_0 = 234 + 8 = 242,
     * B_31 = 234 - 217 + 8 = 25. */
    check_eq("factory layer 0", (long)pyramidkv_budget_factory(128, 8, 20, 32, 0, 1000), 242);
    check_eq("factory layer 31", (long)pyramidkv_budget_factory(128, 8, 20, 32, 31, 1000), 25);
    check_eq("factory layer 1", (long)pyramidkv_budget_factory(128, 8, 20, 32, 1, 1000), 235);
    /* P < C: no compression; P < 2 (C - w) = 240: plain SnapKV budget C */
    check_eq("factory P < C", (long)pyramidkv_budget_factory(128, 8, 20, 32, 5, 100), 100);
    check_eq("factory P < 2(C-w)", (long)pyramidkv_budget_factory(128, 8, 20, 32, 5, 200), 128);
    /* cap: P = 240: max = 234 >= P - w = 232 -> max = 232, min = 240 - 232 = 8,
     * steps = 224 // 31 = 7: B_0 = 240, B_31 = 232 - 217 + 8 = 23 */
    check_eq("factory capped layer 0", (long)pyramidkv_budget_factory(128, 8, 20, 32, 0, 240), 240);
    check_eq("factory capped layer 31", (long)pyramidkv_budget_factory(128, 8, 20, 32, 31, 240), 23);
    /* average over layers ~ C (integer floor of steps: slightly above) */
    long sum = 0;
    for (size_t l = 0; l < 32; l++) sum += (long)pyramidkv_budget_factory(128, 8, 20, 32, l, 1000);
    check("factory mean >= C", sum >= 32 * 128 && sum <= 32 * 128 + 32 * 16);

    /* kvpress: B=200, w=8, beta=20, N=5, P=1000: min = 10, max = 390, 1000 >= 390 >= 10 >= 8,
     * steps = 95: B_0 = 390, B_2 = 200, B_4 = 10 */
    check_eq("kvpress layer 0", (long)pyramidkv_budget_kvpress(200, 8, 20, 5, 0, 1000), 390);
    check_eq("kvpress layer 2", (long)pyramidkv_budget_kvpress(200, 8, 20, 5, 2, 1000), 200);
    check_eq("kvpress layer 4", (long)pyramidkv_budget_kvpress(200, 8, 20, 5, 4, 1000), 10);
    /* half to even: N=9, steps = 380 / 8 = 47.5: 342.5 -> 342, 247.5 -> 248 */
    check_eq("kvpress half-even down", (long)pyramidkv_budget_kvpress(200, 8, 20, 9, 1, 1000), 342);
    check_eq("kvpress half-even up", (long)pyramidkv_budget_kvpress(200, 8, 20, 9, 3, 1000), 248);
    /* fallback: B=100: min = 5 < w = 8 -> round(B) */
    check_eq("kvpress fallback", (long)pyramidkv_budget_kvpress(100, 8, 20, 32, 0, 1000), 100);
    check_close("round half even 2.5", ev_round_half_even(2.5), 2, 0);
    check_close("round half even 3.5", ev_round_half_even(3.5), 4, 0);
    check_close("round half even 2.4999", ev_round_half_even(2.4999), 2, 0);
}

/* ---- H2O ----------------------------------------------------------------------------------- */

/* Hand-made causal attention rows for the online test (6 tokens, one query head). */
static const float A6[6][6] = {
    { 1.0f },
    { 0.6f, 0.4f },
    { 0.5f, 0.1f, 0.4f },
    { 0.4f, 0.1f, 0.3f, 0.2f },
    { 0.3f, 0.0f, 0.1f, 0.5f, 0.1f },
    { 0.2f, 0.0f, 0.1f, 0.0f, 0.6f, 0.1f },
};

static int fake_prompt_attn(const rp_layer_ctx *ctx, size_t h, size_t t0, size_t t1, float *out)
{
    for (size_t r = t0; r < t1; r++)
        for (size_t j = 0; j < ctx->P; j++) out[(r - t0) * ctx->P + j] = A6[r][j];
    return 0;
}

static void test_h2o(void)
{
    /* one-shot keep: scores [5 1 3 3 .5 2], B=4, r=2: recent {4,5}; heavy top 2 of [0,4):
     * 5 (0), then 3 tie at 1? no: [5 1 3 3] -> 0 and the lower of the tied 3s (2) */
    double s[6] = { 5, 1, 3, 3, 0.5, 2 };
    int32_t kept[6];
    size_t m = h2o_keep(s, 6, 4, 2, kept);
    int32_t want[] = { 0, 2, 4, 5 };
    check_ints("h2o_keep", kept, m, want, 4);
    check_eq("h2o_recent 0.5 of 5", (long)h2o_recent(0.5, 5), 3);   /* floor(2.5 + .5) */
    check_eq("h2o_recent 1/3 of 3", (long)h2o_recent(1.0 / 3, 3), 1);

    /* online through the table: B=3, recent = 1/3 -> 1 recent + 2 heavy.
     * t=3 (first call): acc from rows 0..2 = [2.1 .5 .4 0] + row 3 [.4 .1 .3 .2]
     *   = [2.5 .6 .7 .2]; keep pos 3 (recent) + 0, 2 -> evict entry 1 (pos 1).
     * t=4: cache [0 2 3 4] += [.3 .1 .5 .1] -> [2.8 .8 .7 .1]; recent pos 4; heavy 0, 2
     *   -> evict entry 2 (pos 3, despite its .5 now).
     * t=5: cache [0 2 4 5] += [.2 .1 .6 .1] -> [3.0 .9 .7 .1]; heavy 0, 2 -> evict entry 2
     *   (pos 4, the largest single attention of this step). Final cache [0 2 5]. */
    const rp_strategy *st = rp_strategy_find("h2o");
    check("h2o registered", st != NULL);
    if (!st) return;
    double vals[1] = { 1.0 / 3 };
    void *cfg = NULL;
    char err[256];
    check("h2o configure", st->configure(vals, &cfg, err, sizeof err) == 0);
    rp_layer_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.H = ctx.Hkv = ctx.G = 1; ctx.D = 1; ctx.n = ctx.P = 6; ctx.n_layers = 1;
    ctx.prompt_attn = fake_prompt_attn;
    ctx.gqa_reduce = RP_GQA_MEAN;
    void *state = st->online_new(cfg, &ctx, 0, 3);
    check("h2o online_new", state != NULL);
    rp_cache c;
    memset(&c, 0, sizeof c);
    c.D = 1;
    float zero = 0;
    size_t ev[8];
    size_t want_evict[6] = { 0, 0, 0, 1, 2, 2 };
    for (size_t t = 0; t < 6 && state; t++) {
        rp_cache_push(&c, (int32_t)t, &zero, &zero);
        if (c.n <= 3) continue;
        float probs[8];
        for (size_t e = 0; e < c.n; e++) probs[e] = A6[t][c.pos[e]];
        size_t ne = 0;
        kv_error ke;
        check_eq("h2o online_step status", (long)st->online_step(state, &ctx, 0, t, &c, probs, 3, ev, &ne, &ke), KV_OK);
        char what[64];
        snprintf(what, sizeof what, "h2o online t=%zu evicts one", t);
        check_eq(what, (long)ne, 1);
        snprintf(what, sizeof what, "h2o online t=%zu evicted entry", t);
        check_eq(what, ne ? (long)ev[0] : -1, (long)want_evict[t]);
        uint8_t keep[8];
        memset(keep, 1, sizeof keep);
        for (size_t i = 0; i < ne; i++) keep[ev[i]] = 0;
        rp_cache_compact(&c, keep);
    }
    int32_t want_final[] = { 0, 2, 5 };
    check_ints("h2o online final cache", c.pos, c.n, want_final, 3);
    if (state) st->online_free(state);
    rp_cache_free(&c);
    st->free_cfg(cfg);
}

/* ---- TOVA ---------------------------------------------------------------------------------- */

static void test_tova(void)
{
    /* mean of [.1 .4 .2 .3] and [.3 .2 .1 .4] = [.2 .3 .15 .35]: evict entry 2 */
    float p[8] = { 0.1f, 0.4f, 0.2f, 0.3f, 0.3f, 0.2f, 0.1f, 0.4f };
    double sc[4];
    size_t ev[4];
    size_t ne = tova_evict(p, 2, 4, 3, RP_GQA_MEAN, sc, ev);
    check_eq("tova mean evicts one", (long)ne, 1);
    check_eq("tova mean evicts entry 2", (long)ev[0], 2);
    /* max: [.3 .4 .2 .4] -> evict 2 as well; sum over head 0 only (G=1): evict 0 */
    ne = tova_evict(p, 1, 4, 3, RP_GQA_SUM, sc, ev);
    check_eq("tova G=1 evicts entry 0", ne ? (long)ev[0] : -1, 0);
    /* ties: all equal -> the highest index goes (lower index kept) */
    float q[4] = { 0.25f, 0.25f, 0.25f, 0.25f };
    ne = tova_evict(q, 1, 4, 2, RP_GQA_MEAN, sc, ev);
    check_eq("tova tie evicts two", (long)ne, 2);
    check("tova tie evicts 2 and 3", ne == 2 && ev[0] == 2 && ev[1] == 3);
}

/* ---- SnapKV -------------------------------------------------------------------------------- */

static void test_snapkv(void)
{
    double x[5] = { 1, 2, 3, 4, 5 }, y[5];
    snapkv_pool(x, 5, 3, SNAPKV_POOL_AVG, y);     /* zero padding counted: (0+1+2)/3, ..., (4+5+0)/3 */
    double wa[5] = { 1, 2, 3, 4, 3 };
    for (int i = 0; i < 5; i++) check_close("avg pool", y[i], wa[i], 1e-15);
    snapkv_pool(x, 5, 3, SNAPKV_POOL_MAX, y);
    double wm[5] = { 2, 3, 4, 5, 5 };
    for (int i = 0; i < 5; i++) check_close("max pool", y[i], wm[i], 0);
    snapkv_pool(x, 5, 1, SNAPKV_POOL_AVG, y);
    for (int i = 0; i < 5; i++) check_close("kernel 1 is identity", y[i], x[i], 0);

    /* G=2, w=1, P=4: rows (query 3) h0 [.1 .2 .3 .4], h1 [.4 .3 .2 .1]; prefix [0, 3) */
    float attn[8] = { 0.1f, 0.2f, 0.3f, 0.4f, 0.4f, 0.3f, 0.2f, 0.1f };
    snapkv_opts o = { .window = 1, .kernel = 1, .pool = SNAPKV_POOL_AVG, .reduce = SNAPKV_REDUCE_SUM, .gqa = RP_GQA_MAX };
    double sc[3];
    check("snapkv_score", snapkv_score(&o, RP_GQA_MAX, attn, 2, 4, sc) == 0);
    check_close("score max 0", sc[0], 0.4f, 1e-7);
    check_close("score max 1", sc[1], 0.3f, 1e-7);
    check_close("score max 2", sc[2], 0.3f, 1e-7);
    int32_t kept[4];
    size_t m = snapkv_keep(sc, 4, 1, 3, kept);   /* top 2 of [.4 .3 .3] = 0, 1 (tie: lower); + window 3 */
    int32_t want[] = { 0, 1, 3 };
    check_ints("snapkv_keep", kept, m, want, 3);
    snapkv_score(&o, RP_GQA_MEAN, attn, 2, 4, sc);
    check_close("score mean 0", sc[0], 0.25, 1e-7);
    /* gqa before vs after with max pooling, k=3: after = max over heads of pooled rows:
     * pooled h0 [.2 .3 .3], h1 [.4 .4 .3] -> sum [.6 .7 .6]; before: sum [.5 .5 .5] pooled
     * = [.5 .5 .5]. Sum commutes with avg pooling only. */
    o.kernel = 3; o.pool = SNAPKV_POOL_MAX;
    snapkv_score(&o, RP_GQA_SUM, attn, 2, 4, sc);
    check_close("after pooling 0", sc[0], 0.6, 1e-7);
    check_close("after pooling 1", sc[1], 0.7, 1e-7);
    o.gqa_before = 1;
    snapkv_score(&o, RP_GQA_SUM, attn, 2, 4, sc);
    check_close("before pooling 1", sc[1], 0.5, 1e-7);
    /* window rows reduced: w=2 rows (G=1, P=3, prefix [0]) [.5 .5 0] and [.2 .3 .5]:
     * sum .7, mean .35 */
    float a2[6] = { 0.5f, 0.5f, 0.0f, 0.2f, 0.3f, 0.5f };
    snapkv_opts o2 = { .window = 2, .kernel = 1, .pool = SNAPKV_POOL_AVG, .reduce = SNAPKV_REDUCE_MEAN };
    snapkv_score(&o2, RP_GQA_MEAN, a2, 1, 3, sc);
    check_close("window mean", sc[0], 0.35, 1e-7);
    o2.reduce = SNAPKV_REDUCE_SUM;
    snapkv_score(&o2, RP_GQA_MEAN, a2, 1, 3, sc);
    check_close("window sum", sc[0], 0.7, 1e-7);

    /* presets */
    snapkv_opts p;
    snapkv_preset(SNAPKV_PRESET_SNAPKV, &p);
    check("preset snapkv 32/5/avg/sum", p.window == 32 && p.kernel == 5 && p.pool == SNAPKV_POOL_AVG && p.reduce == SNAPKV_REDUCE_SUM);
    snapkv_preset(SNAPKV_PRESET_KVPRESS, &p);
    check("preset kvpress 64/5/avg/mean/gqa mean", p.window == 64 && p.kernel == 5 && p.pool == SNAPKV_POOL_AVG &&
          p.reduce == SNAPKV_REDUCE_MEAN && p.gqa == RP_GQA_MEAN);
    snapkv_preset(SNAPKV_PRESET_FACTORY, &p);
    check("preset factory 8/7/max/sum", p.window == 8 && p.kernel == 7 && p.pool == SNAPKV_POOL_MAX && p.reduce == SNAPKV_REDUCE_SUM);
}

/* ---- AdaKV --------------------------------------------------------------------------------- */

static void test_adakv(void)
{
    /* Hkv=2, n=4, B=2: h0 [9 8 7 6], h1 [1 2 0 0] */
    double s[8] = { 9, 8, 7, 6, 1, 2, 0, 0 };
    uint8_t keep[8];
    /* alpha 0: the 4 best of the layer are all h0's */
    check_eq("adakv alpha 0 total", (long)adakv_allocate(s, 2, 4, 2, 0.0, keep), 4);
    uint8_t w0[8] = { 1, 1, 1, 1, 0, 0, 0, 0 };
    check("adakv alpha 0 keeps h0", !memcmp(keep, w0, 8));
    /* alpha 0.5: n_safe = 1 per head: h0's 9 and h1's 2 reserved; then 8 and 7 */
    adakv_allocate(s, 2, 4, 2, 0.5, keep);
    uint8_t w1[8] = { 1, 1, 1, 0, 0, 1, 0, 0 };
    check("adakv alpha 0.5 safeguard", !memcmp(keep, w1, 8));
    /* alpha 1: uniform (each head its own top B) */
    adakv_allocate(s, 2, 4, 2, 1.0, keep);
    uint8_t w2[8] = { 1, 1, 0, 0, 1, 1, 0, 0 };
    check("adakv alpha 1 uniform", !memcmp(keep, w2, 8));
}

/* ---- Quest --------------------------------------------------------------------------------- */

static void test_quest(void)
{
    /* q = [1 -2], page keys [1 0] [3 1] [-1 2]: min [-1 0], max [3 2];
     * bound = max(-1, 3) + max(0, -4) = 3 >= true max q.k = max(1, 1, -5) = 1 */
    float q[2] = { 1, -2 }, kmin[2] = { -1, 0 }, kmax[2] = { 3, 2 };
    check_close("quest bound hand", quest_bound(q, kmin, kmax, 2), 3, 0);
    /* bound >= true max over random pages; equality for single-key pages */
    rp_rng r = { 12345 };
    enum { N = 37, D = 8 };
    float k[N * D], qq[D], mn[D], mx[D];
    double bound[N];
    uint8_t vis[N];
    double worst = INFINITY;
    for (int trial = 0; trial < 200; trial++) {
        for (size_t i = 0; i < N * D; i++) k[i] = (float)(rp_rng_uniform(&r) * 4 - 2);
        for (size_t d = 0; d < D; d++) qq[d] = (float)(rp_rng_uniform(&r) * 4 - 2);
        size_t page = 1 + trial % 9;
        quest_select_pages(qq, k, N, D, page, N, bound, mn, mx, vis);
        for (size_t p = 0; p * page < N; p++) {
            double tmax = -INFINITY;
            for (size_t e = p * page; e < (p + 1) * page && e < N; e++) {
                double dot = 0;
                for (size_t d = 0; d < D; d++) dot += (double)qq[d] * k[e * D + d];
                tmax = dot > tmax ? dot : tmax;
            }
            double slack = bound[p] - tmax;
            worst = slack < worst ? slack : worst;
            if (page == 1) check_close("quest single-key page is exact", bound[p], tmax, 1e-12);
        }
    }
    printf("quest: smallest bound - true max over 200 random cases: %.3g\n", worst);
    /* quest_bounds_t (d-major tables, lanes are pages) = quest_bound per page, bit for bit,
     * on every vector path: np covering 32- and 8-page passes and the 4-page and 1-page tails */
    {
        enum { NP = 77, DD = 128, LD = 80 };
        float *tn = malloc(DD * LD * sizeof *tn), *tx = malloc(DD * LD * sizeof *tx), qv[DD], pn[DD], px[DD];
        double got[NP];
        int same = 1, prev = attn_set_isa_limit(ATTN_ISA_AVX512);
        for (int trial = 0; trial < 4 && tn && tx; trial++) {
            for (size_t i = 0; i < DD * LD; i++) {
                float a = (float)(rp_rng_uniform(&r) * 6 - 3), b = (float)(rp_rng_uniform(&r) * 6 - 3);
                tn[i] = a < b ? a : b;
                tx[i] = a < b ? b : a;
            }
            for (size_t d = 0; d < DD; d++) qv[d] = (float)(rp_rng_uniform(&r) * 4 - 2);
            for (int isa = ATTN_ISA_GENERIC; isa <= ATTN_ISA_AVX512; isa++) {
                attn_set_isa_limit(isa);
                quest_bounds_t(qv, tn, tx, LD, DD, NP, got);
                for (size_t p = 0; p < NP; p++) {
                    for (size_t d = 0; d < DD; d++) { pn[d] = tn[d * LD + p]; px[d] = tx[d * LD + p]; }
                    double want = quest_bound(qv, pn, px, DD);
                    same &= memcmp(&want, &got[p], sizeof want) == 0;
                }
            }
        }
        attn_set_isa_limit(prev);
        check("quest_bounds_t = quest_bound per page, bit for bit, on every path (77 pages, D = 128)", same && tn && tx);
        free(tn); free(tx);
    }
    check("quest bound >= true max", worst >= -1e-12);
    /* selection: 5 keys (D=1), page 2 -> pages {0,1} {2,3} {4}; q = [1]: bounds are the
     * pages' max key; keys [0 1 5 -1 3] -> bounds [1 5 3]; 2 pages -> pages 1 and 2 */
    float k5[5] = { 0, 1, 5, -1, 3 }, one = 1, a, b;
    double bd[3];
    uint8_t v5[5];
    size_t cnt = quest_select_pages(&one, k5, 5, 1, 2, 2, bd, &a, &b, v5);
    uint8_t wv[5] = { 0, 0, 1, 1, 1 };
    check_eq("quest visible count", (long)cnt, 3);
    check("quest visible pages", !memcmp(v5, wv, 5));
}

/* ---- CAB ----------------------------------------------------------------------------------- */

static void test_cab(void)
{
    size_t s, nl, ni, nb;
    cab_split(24, 4, 0.3, 0.2, &s, &nl, &ni, &nb);   /* R = 20: 6 local, 4 bridges, 10 important */
    check("cab split 24", s == 4 && nl == 6 && nb == 4 && ni == 10);
    cab_split(3, 4, 0.3, 0.2, &s, &nl, &ni, &nb);    /* budget below the sinks */
    check("cab split 3", s == 3 && nl == 0 && nb == 0 && ni == 0);
    cab_split(5, 1, 0.5, 0.5, &s, &nl, &ni, &nb);    /* R = 4: 2 local, 2 bridges, 0 important */
    check("cab split 5", s == 1 && nl == 2 && nb == 2 && ni == 0);
    /* pick skips taken positions: scores [9 8 7 6 5], taken {0, 2}: top 2 -> 1, 3 */
    double sc[5] = { 9, 8, 7, 6, 5 };
    uint8_t role[5] = { CAB_SINK, 0, CAB_LOCAL, 0, 0 };
    check_eq("cab_pick count", (long)cab_pick(sc, 5, 2, CAB_IMPORTANT, role), 2);
    check("cab_pick roles", role[1] == CAB_IMPORTANT && role[3] == CAB_IMPORTANT && role[4] == 0);
}

/* ---- bad parameters through the strategy tables --------------------------------------------- */

static void test_bad_params(void)
{
    char err[256];
    void *cfg = NULL;
    const rp_strategy *sk = rp_strategy_find("snapkv"), *cab = rp_strategy_find("cab");
    check("snapkv, cab registered", sk && cab);
    if (!sk || !cab) return;
    /* preset snapkv, window -1, kernel 4 (even), pool/reduce/gqa preset, after */
    double v[7] = { 0, -1, 4, 0, 0, 0, 0 };
    err[0] = 0;
    check("snapkv kernel=4 refused", sk->configure(v, &cfg, err, sizeof err) != 0 && strstr(err, "kernel=4"));
    printf("message: %s\n", err);
    v[2] = 0;
    check("snapkv kernel=0 refused", sk->configure(v, &cfg, err, sizeof err) != 0);
    v[2] = -1; v[1] = 0;
    check("snapkv window=0 refused", sk->configure(v, &cfg, err, sizeof err) != 0);
    v[1] = -1;
    check("snapkv defaults accepted", sk->configure(v, &cfg, err, sizeof err) == 0);
    if (cfg) sk->free_cfg(cfg);
    double c[3] = { 4, 0.8, 0.3 };
    check("cab local+bridges > 1 refused", cab->configure(c, &cfg, err, sizeof err) != 0);
    printf("message: %s\n", err);
    char e2[256];
    check("window >= budget refused", snapkv_check_window("snapkv", 32, 20, NULL, e2, sizeof e2) != 0);
    check("window < budget accepted", snapkv_check_window("snapkv", 8, 20, NULL, e2, sizeof e2) == 0);
}

int main(void)
{
    test_pyramidkv();
    test_h2o();
    test_tova();
    test_snapkv();
    test_adakv();
    test_quest();
    test_cab();
    test_bad_params();
    printf("test_evict: %d/%d checks passed\n", checks - fails, checks);
    return fails ? 1 : 0;
}
