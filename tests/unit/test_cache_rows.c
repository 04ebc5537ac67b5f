/* The positions-only prefill cache (strategy.h: src_k / src_v, rp_cache_rows): pushing the
 * source row of a position records the position only (no rows allocated); any other row,
 * a merged entry, or rp_cache_rows gathers the kept positions' rows first. Hand-computed
 * expectations over a source of n = 6 rows of D = 2: K[t] = (10 t, 10 t + 1),
 * V[t] = (100 + 10 t, 101 + 10 t). Exact comparisons.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "strategy.h"

static int fails = 0, checks = 0;

static void check(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

enum { N = 6, D = 2 };
static float K[N * D], V[N * D];

static void check_pos(const char *what, const rp_cache *c, const int32_t *want, size_t nw)
{
    int ok = c->n == nw;
    for (size_t e = 0; ok && e < nw; e++) ok = c->pos[e] == want[e] && c->mult[e] == 1;
    check(what, ok);
    if (!ok) {
        printf("  got n=%zu [", c->n);
        for (size_t e = 0; e < c->n; e++) printf("%s%d", e ? " " : "", c->pos[e]);
        printf("]\n");
    }
}

/* rows k/v of c equal want_k / want_v [nw][D] */
static void check_rows(const char *what, const rp_cache *c, const float *want_k, const float *want_v, size_t nw)
{
    int ok = c->k && c->v && c->n == nw && !memcmp(c->k, want_k, nw * D * sizeof *want_k) &&
             !memcmp(c->v, want_v, nw * D * sizeof *want_v);
    check(what, ok);
    if (!ok && c->k && c->v)
        for (size_t e = 0; e < c->n; e++)
            printf("  entry %zu: k (%g %g) v (%g %g)\n", e, c->k[e * D], c->k[e * D + 1], c->v[e * D], c->v[e * D + 1]);
}

static void positions_only(rp_cache *c)
{
    memset(c, 0, sizeof *c);
    c->D = D;
    c->src_k = K;
    c->src_v = V;
    c->src_n = 5;           /* row 5 exists in the buffer but is not a source row */
}

static void test_source_rows(void)
{
    rp_cache c;
    positions_only(&c);
    check("reserve: ok", rp_cache_reserve(&c, 2, 0) == 0);
    check("reserve: no rows", c.k == NULL && c.v == NULL && c.cap == 2);
    int rc = 0;
    for (int32_t t = 0; t < 5; t += 2) rc |= rp_cache_push(&c, t, K + t * D, V + t * D);   /* grows past cap 2 */
    check("push source rows: ok", rc == 0);
    int32_t w1[] = { 0, 2, 4 };
    check_pos("push source rows: positions", &c, w1, 3);
    check("push source rows: no rows allocated", c.k == NULL && c.v == NULL && c.src_k == K && !c.modified);
    uint8_t keep[] = { 1, 0, 1 };
    rp_cache_compact(&c, keep);
    int32_t w2[] = { 0, 4 };
    check_pos("compact positions-only", &c, w2, 2);
    check("compact positions-only: still no rows", c.k == NULL && c.v == NULL && c.src_k == K);
    /* rp_cache_rows gathers by position: rows of 0 and 4 */
    check("rp_cache_rows: ok", rp_cache_rows(&c) == 0);
    float k2[] = { 0, 1, 40, 41 }, v2[] = { 100, 101, 140, 141 };
    check_rows("rp_cache_rows: rows of positions 0, 4", &c, k2, v2, 2);
    check("rp_cache_rows: mode left", c.src_k == NULL && c.src_v == NULL && c.cap >= 2);
    float *k0 = c.k;
    check("rp_cache_rows again: no-op", rp_cache_rows(&c) == 0 && c.k == k0);
    rp_cache_free(&c);
}

static void test_other_row(void)
{
    rp_cache c;
    positions_only(&c);
    int rc = rp_cache_push(&c, 1, K + 1 * D, V + 1 * D) | rp_cache_push(&c, 3, K + 3 * D, V + 3 * D);
    float kx[] = { 7, 8 }, vx[] = { 9, 10 };
    rc |= rp_cache_push(&c, 4, kx, vx);       /* not the source row of 4: materialised */
    check("push other row: ok", rc == 0 && c.k != NULL && c.src_k == NULL);
    int32_t w[] = { 1, 3, 4 };
    check_pos("push other row: positions", &c, w, 3);
    float k1[] = { 10, 11, 30, 31, 7, 8 }, v1[] = { 110, 111, 130, 131, 9, 10 };
    check_rows("push other row: gathered rows, then the pushed one", &c, k1, v1, 3);
    /* after materialisation a source row is copied like any row */
    rc = rp_cache_push(&c, 5, K + 0 * D, V + 0 * D);
    float k2[] = { 10, 11, 30, 31, 7, 8, 0, 1 }, v2[] = { 110, 111, 130, 131, 9, 10, 100, 101 };
    int32_t w2[] = { 1, 3, 4, 5 };
    check_pos("push after rows: positions", &c, w2, 4);
    check_rows("push after rows: copied", &c, k2, v2, 4);
    uint8_t keep[] = { 0, 1, 1, 0 };
    rp_cache_compact(&c, keep);
    float k3[] = { 30, 31, 7, 8 }, v3[] = { 130, 131, 9, 10 };
    int32_t w3[] = { 3, 4 };
    check_pos("compact with rows: positions", &c, w3, 2);
    check_rows("compact with rows: rows moved", &c, k3, v3, 2);
    rp_cache_free(&c);

    /* the source row of another position, and a row past src_n, are not position t's */
    positions_only(&c);
    rc = rp_cache_push(&c, 0, K + 0 * D, V + 0 * D) | rp_cache_push(&c, 2, K + 1 * D, V + 1 * D);
    float k4[] = { 0, 1, 10, 11 }, v4[] = { 100, 101, 110, 111 };
    check("push row of 1 as 2: materialised", rc == 0 && c.src_k == NULL);
    check_rows("push row of 1 as 2: rows", &c, k4, v4, 2);
    rp_cache_free(&c);
    positions_only(&c);
    rc = rp_cache_push(&c, 5, K + 5 * D, V + 5 * D);
    float k5[] = { 50, 51 }, v5[] = { 150, 151 };
    check("push t = src_n: materialised", rc == 0 && c.src_k == NULL);
    check_rows("push t = src_n: rows", &c, k5, v5, 1);
    rp_cache_free(&c);
    /* k the source row, v not */
    positions_only(&c);
    rc = rp_cache_push(&c, 2, K + 2 * D, vx);
    float k6[] = { 20, 21 };
    check("push source k, other v: materialised", rc == 0 && c.src_k == NULL);
    check_rows("push source k, other v: rows", &c, k6, vx, 1);
    rp_cache_free(&c);
}

static void test_merged(void)
{
    rp_cache c;
    positions_only(&c);
    int rc = rp_cache_push(&c, 0, K, V) | rp_cache_push(&c, 1, K + 1 * D, V + 1 * D);
    check("merged: positions-only before", rc == 0 && c.k == NULL);
    int32_t mem[] = { 3, 4 };
    float km[] = { 35, 36 }, vm[] = { 135, 136 };
    rc = rp_cache_push_merged(&c, mem, 2, km, vm);
    check("merged: ok, materialised", rc == 0 && c.k != NULL && c.src_k == NULL && c.modified == 1);
    float k1[] = { 0, 1, 10, 11, 35, 36 }, v1[] = { 100, 101, 110, 111, 135, 136 };
    check_rows("merged: rows", &c, k1, v1, 3);
    int ok = c.n == 3 && c.pos[2] == 3 && c.mult[2] == 2 && c.mem_off && c.n_members == 4 && c.mem_off[0] == 0 &&
             c.mem_off[1] == 1 && c.mem_off[2] == 2 && c.mem_off[3] == 4 && c.members[0] == 0 && c.members[1] == 1 &&
             c.members[2] == 3 && c.members[3] == 4;
    check("merged: members", ok);
    uint8_t keep[] = { 1, 0, 1 };
    rp_cache_compact(&c, keep);
    float k2[] = { 0, 1, 35, 36 }, v2[] = { 100, 101, 135, 136 };
    check_rows("merged, compacted: rows", &c, k2, v2, 2);
    ok = c.n == 2 && c.pos[1] == 3 && c.mult[1] == 2 && c.n_members == 3 && c.mem_off[1] == 1 && c.mem_off[2] == 3 &&
         c.members[1] == 3 && c.members[2] == 4;
    check("merged, compacted: members", ok);
    rp_cache_free(&c);
}

/* The strategy table's prefill through positions-only outputs: full keeps every prompt
 * position of each kv head without a row. */
static void test_prefill(void)
{
    const rp_strategy *full = rp_strategy_find("full");
    check("full found", full != NULL);
    if (!full) return;
    float k2[2 * N * D], v2[2 * N * D];      /* two kv heads: head 1's rows = head 0's + 1000 */
    for (size_t i = 0; i < N * D; i++) {
        k2[i] = K[i]; v2[i] = V[i];
        k2[N * D + i] = K[i] + 1000; v2[N * D + i] = V[i] + 1000;
    }
    rp_layer_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.H = ctx.Hkv = 2; ctx.G = 1; ctx.D = D; ctx.n = N; ctx.P = 4; ctx.n_layers = 1;
    ctx.k = k2; ctx.v = v2;
    rp_cache out[2];
    for (size_t g = 0; g < 2; g++) {
        memset(&out[g], 0, sizeof out[g]);
        out[g].D = D;
        out[g].src_k = k2 + g * N * D; out[g].src_v = v2 + g * N * D; out[g].src_n = N;
    }
    char err[256] = "";
    check("full prefill: ok", full->prefill(NULL, &ctx, 4, out, err, sizeof err) == 0);
    int32_t w[] = { 0, 1, 2, 3 };
    for (size_t g = 0; g < 2; g++) {
        check_pos("full prefill: positions", &out[g], w, 4);
        check("full prefill: no rows", out[g].k == NULL && out[g].v == NULL);
    }
    check("full prefill head 1: rows on demand", rp_cache_rows(&out[1]) == 0);
    float kk[] = { 1000, 1001, 1010, 1011, 1020, 1021, 1030, 1031 };
    float vv[] = { 1100, 1101, 1110, 1111, 1120, 1121, 1130, 1131 };
    check_rows("full prefill head 1: rows", &out[1], kk, vv, 4);
    rp_cache_free(&out[0]); rp_cache_free(&out[1]);
}

int main(void)
{
    for (size_t t = 0; t < N; t++) {
        K[t * D] = (float)(10 * t); K[t * D + 1] = (float)(10 * t + 1);
        V[t * D] = (float)(100 + 10 * t); V[t * D + 1] = (float)(101 + 10 * t);
    }
    test_source_rows();
    test_other_row();
    test_merged();
    test_prefill();
    printf("%d/%d checks passed\n", checks - fails, checks);
    return fails ? 1 : 0;
}
