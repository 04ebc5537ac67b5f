/* Hand-computed cases for the decode-time presses (decoding, dms, cam) through the strategy
 * table, driven the way the engine drives them: the prompt whole, then per decode step token t
 * appended, online_step, the named entries dropped, online_rows. D = 1, one query head, knorm
 * scorer (score -|k|), so every expected value below is worked out by hand in the comments.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strategy.h"

static int fails = 0, checks = 0;

static void check(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

static void check_pos(const char *what, const rp_cache *c, const int32_t *want, size_t nw)
{
    int ok = c->n == nw;
    for (size_t i = 0; ok && i < nw; i++) ok = c->pos[i] == want[i];
    checks++;
    if (!ok) {
        fails++;
        printf("FAIL %s: got [", what);
        for (size_t i = 0; i < c->n; i++) printf("%s%d", i ? " " : "", c->pos[i]);
        printf("]\n");
    }
}

static void check_vals(const char *what, const rp_cache *c, const float *want, size_t nw)
{
    int ok = c->n == nw;
    for (size_t i = 0; ok && i < nw; i++) ok = fabsf(c->v[i] - want[i]) <= 1e-6f * fabsf(want[i]);
    checks++;
    if (!ok) {
        fails++;
        printf("FAIL %s: got [", what);
        for (size_t i = 0; i < c->n; i++) printf("%s%g", i ? " " : "", c->v[i]);
        printf("]\n");
    }
}

/* Run press `name` with parameter values v on keys/vals [n] (prompt [0, P)); probs[t][e]: query
 * t's attention over the cache's entries (in cache order). The final cache in *c. */
static void drive(const char *name, const double *v, const float *keys, const float *vals, size_t n, size_t P,
                  const float probs[][8], rp_cache *c)
{
    const rp_strategy *st = rp_strategy_find(name);
    check(name, st != NULL && st->decode_time);
    if (!st) return;
    void *cfg = NULL;
    char err[256] = "";
    check("configure", st->configure(v, &cfg, err, sizeof err) == 0);
    rp_layer_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.H = ctx.Hkv = ctx.G = 1; ctx.D = 1; ctx.n = ctx.P = n; ctx.n_layers = 1;
    ctx.gqa_reduce = RP_GQA_MEAN;
    ctx.seed = 12345;
    memset(c, 0, sizeof *c);
    c->D = 1;
    for (size_t t = 0; t < P; t++) rp_cache_push(c, (int32_t)t, keys + t, vals + t);
    void *state = st->online_new(cfg, &ctx, 0, n);
    check("online_new", state != NULL);
    size_t ev[8];
    for (size_t t = P; t < n && state; t++) {
        rp_cache_push(c, (int32_t)t, keys + t, vals + t);
        size_t ne = 0;
        kv_error ke;
        check("online_step", st->online_step(state, &ctx, 0, t, c, probs[t], n, ev, &ne, &ke) == KV_OK);
        uint8_t keep[8];
        memset(keep, 1, sizeof keep);
        for (size_t i = 0; i < ne; i++) keep[ev[i]] = 0;
        rp_cache_compact(c, keep);
        if (st->online_rows) check("online_rows", st->online_rows(state, &ctx, 0, t, c, err, sizeof err) == 0);
    }
    if (state) st->online_free(state);
    st->free_cfg(cfg);
}

static const float K4[5] = { 1, 5, 2, 3, 4 }, V4[5] = { 10, 20, 30, 40, 50 };

static void test_decoding(void)
{
    /* interval=2 target=2, prompt [0, 2). t=2: step 1 (nothing). t=3: step 2, cache [0 1 2 3]
     * scores -|k| = [-1 -5 -2 -3] -> keep 0, 2. t=4: step 1 -> [0 2 4]. */
    double v[] = { 2, 2, 0, 64, 5 };
    float probs[5][8] = { { 0 } };
    rp_cache c;
    drive("decoding", v, K4, V4, 5, 2, (const float (*)[8])probs, &c);
    int32_t want[] = { 0, 2, 4 };
    check_pos("decoding interval=2 target=2", &c, want, 3);
    rp_cache_free(&c);
    /* interval=3 target=2: t=2,3 nothing, t=4: step 3, [0 1 2 3 4] scores [-1 -5 -2 -3 -4] -> 0, 2 */
    double v2[] = { 3, 2, 0, 64, 5 };
    drive("decoding", v2, K4, V4, 5, 2, (const float (*)[8])probs, &c);
    int32_t want2[] = { 0, 2 };
    check_pos("decoding interval=3 target=2", &c, want2, 2);
    rp_cache_free(&c);
}

static void test_dms(void)
{
    /* threshold=-2.5 sliding=1 interval=1 scorer=knorm. t=2: judge positions [0, 2): -1 kept,
     * -5 evicted. t=3: judge 2: -2 kept. t=4: judge 3: -3 evicted. Final [0 2 4]. */
    double v[] = { -2.5, 1, 1, 0, 64, 5 };
    float probs[5][8] = { { 0 } };
    rp_cache c;
    drive("dms", v, K4, V4, 5, 2, (const float (*)[8])probs, &c);
    int32_t want[] = { 0, 2, 4 };
    check_pos("dms threshold=-2.5 sliding=1", &c, want, 3);
    rp_cache_free(&c);
    /* sliding=3: t=2: limit 0; t=3: judge 0 (kept); t=4: judge 1 (-5: evicted). Final [0 2 3 4]. */
    double v2[] = { -2.5, 3, 1, 0, 64, 5 };
    drive("dms", v2, K4, V4, 5, 2, (const float (*)[8])probs, &c);
    int32_t want2[] = { 0, 2, 3, 4 };
    check_pos("dms sliding=3", &c, want2, 4);
    rp_cache_free(&c);
}

static void test_cam(void)
{
    /* interval=2 target=3 merge_budget=2 scorer=knorm, prompt [0, 2), decode 2, 3.
     * A after t=2: [.2 .5 .3]; after t=3: [.3 .8 .5 .4]. Compression at t=3: scores
     * [-1 -5 -2 -3] keep 0, 2, 3; evict 1 (k = 2 candidates, only 1 evicted). Window of 1:
     * kept after it = [2 3], a = 2, mean A = .45, p = .8 / .45 > 1 -> 1 (certain, whatever the
     * draw): v_1 / 2 = 10 added to positions 2, 3: v = [10 40 50]. */
    double v[] = { 2, 3, 2, 0, 64, 5 };
    float probs[4][8] = { { 0 }, { 0 }, { .2f, .5f, .3f }, { .1f, .3f, .2f, .4f } };
    rp_cache c;
    drive("cam", v, K4, V4, 4, 2, (const float (*)[8])probs, &c);
    int32_t want[] = { 0, 2, 3 };
    float wv[] = { 10, 40, 50 };
    check_pos("cam p=1 positions", &c, want, 3);
    check_vals("cam p=1 values", &c, wv, 3);
    check("cam p=1 modified", c.modified == 1);
    rp_cache_free(&c);
    /* the evicted entry never attended to: A_1 = 0, p = 0 -> no merge, values unchanged */
    float probs0[4][8] = { { 0 }, { 0 }, { .5f, 0, .5f }, { .4f, 0, .3f, .3f } };
    drive("cam", v, K4, V4, 4, 2, (const float (*)[8])probs0, &c);
    float wv0[] = { 10, 30, 40 };
    check_pos("cam p=0 positions", &c, want, 3);
    check_vals("cam p=0 values", &c, wv0, 3);
    check("cam p=0 not modified", c.modified == 0);
    rp_cache_free(&c);
    /* merge_budget=1: only the next kept entry (position 2) gets v_1 / 1 = 20: [10 50 40] */
    double v1[] = { 2, 3, 1, 0, 64, 5 };
    drive("cam", v1, K4, V4, 4, 2, (const float (*)[8])probs, &c);
    float wv1[] = { 10, 50, 40 };
    check_vals("cam merge_budget=1 values", &c, wv1, 3);
    rp_cache_free(&c);
    /* an even kernel is refused */
    const rp_strategy *st = rp_strategy_find("cam");
    double bad[] = { 2, 3, 2, 3, 64, 4 };
    void *cfg = NULL;
    char err[256] = "";
    check("cam kernel=4 refused", st && st->configure(bad, &cfg, err, sizeof err) != 0 && strstr(err, "kernel=4"));
}

int main(void)
{
    test_decoding();
    test_dms();
    test_cam();
    printf("%d checks, %d failures\n", checks, fails);
    return fails != 0;
}
