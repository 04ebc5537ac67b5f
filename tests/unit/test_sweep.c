/* replay/sweep.c and the strategy helpers: grid expansion order, canonical strings,
 * validation messages, budget resolution, rp_topk ties, online eviction rules of the
 * engine's own strategies on hand-made caches. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strategy.h"
#include "sweep.h"

static int fails = 0, checks = 0;

static void check(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

static void check_str(const char *what, const char *got, const char *want)
{
    checks++;
    if (strcmp(got, want)) { fails++; printf("FAIL %s: got '%s' want '%s'\n", what, got, want); }
}

static void check_err(const char *line, const char *needle)
{
    rp_sweep sw = { 0 };
    char err[1024] = "";
    int rc = sweep_add_line(&sw, line, "t", err, sizeof err);
    checks++;
    if (rc == 0 || !strstr(err, needle)) {
        fails++;
        printf("FAIL '%s': rc %d, err '%s' (want '%s')\n", line, rc, err, needle);
    }
    sweep_free(&sw);
}

int main(void)
{
    rp_sweep sw = { 0 };
    char err[1024] = "";
    check("grid line parses", sweep_add_line(&sw, "streaming keep=0.1,0.25 sinks=0,4  # comment", "t", err, sizeof err) == 0);
    check("4 configurations", sw.n == 4);
    if (sw.n == 4) {
        /* first list outermost, the last varies fastest */
        check_str("cfg 0", sw.cfg[0].canon, "streaming keep=0.1 sinks=0 reindex=0");
        check_str("cfg 1", sw.cfg[1].canon, "streaming keep=0.1 sinks=4 reindex=0");
        check_str("cfg 2", sw.cfg[2].canon, "streaming keep=0.25 sinks=0 reindex=0");
        check_str("family", sw.cfg[3].family, "streaming");
        check("budget kind", sw.cfg[3].budget_kind == RP_BUDGET_KEEP && sw.cfg[3].budget_value == 0.25);
    }
    check("full", sweep_add_line(&sw, "full", "t", err, sizeof err) == 0 && !strcmp(sw.cfg[sw.n - 1].canon, "full"));
    size_t n0 = sw.n;
    check("duplicate dropped", sweep_add_line(&sw, "streaming sinks=4 reindex=0 keep=0.1", "t", err, sizeof err) == 0 && sw.n == n0);
    check("blank and comment lines", sweep_add_line(&sw, "   # only a comment", "t", err, sizeof err) == 0 && sw.n == n0);
    check("budget=", sweep_add_line(&sw, "knorm budget=16", "t", err, sizeof err) == 0 &&
          !strcmp(sw.cfg[sw.n - 1].canon, "knorm budget=16"));
    check("float canonical form", sweep_add_line(&sw, "knorm keep=.30", "t", err, sizeof err) == 0 &&
          !strcmp(sw.cfg[sw.n - 1].canon, "knorm keep=0.3"));
    check("bool canonical form", sweep_add_line(&sw, "streaming keep=0.5 reindex=true", "t", err, sizeof err) == 0 &&
          !strcmp(sw.cfg[sw.n - 1].canon, "streaming keep=0.5 sinks=4 reindex=1"));
    for (size_t i = 0; i < sw.n; i++) check("ids in order", sw.cfg[i].id == i);

    /* budgets */
    size_t B = 0;
    rp_config c = { 0 };
    c.budget_kind = RP_BUDGET_KEEP; c.budget_value = 0.25;
    check("keep 0.25 of 10 -> 3 (round half away)", sweep_budget(&c, 10, &B) == 0 && B == 3);
    c.budget_value = 0.01;
    check("keep floor is 1", sweep_budget(&c, 10, &B) == 0 && B == 1);
    c.budget_kind = RP_BUDGET_COUNT; c.budget_value = 11;
    check("budget > full fails", sweep_budget(&c, 10, &B) != 0);
    c.budget_value = 10;
    check("budget == full keeps all", sweep_budget(&c, 10, &B) == 0 && B == 10);
    c.budget_kind = RP_BUDGET_NONE;
    check("no budget -> full", sweep_budget(&c, 10, &B) == 0 && B == 10);

    check_err("nosuch keep=1", "unknown strategy");
    check_err("streaming keep=0.5 foo=1", "unknown parameter 'foo'");
    check_err("streaming keep=0.5 sinks=x", "not an integer");
    check_err("streaming keep=0", "out of range (0, 1]");
    check_err("streaming keep=0.5 keep=0.2", "once");
    check_err("streaming", "needs a budget");
    check_err("full keep=0.5", "takes no budget");
    check_err("knorm keep=0.5 + streaming keep=0.2", "eviction strategy followed by an encoding");
    check_err("streaming keep=0.5 sinks=", "expected key=value");
    check_err("knorm keep=0.5 +", "'+' at the end");
    check_err("streaming keep=0.5 sinks=1,,2", "empty value");
    sweep_free(&sw);

    /* rp_topk: ties by lower index, NaN lowest, output ascending */
    double sc[6] = { 1, 3, 3, NAN, 3, 0 };
    int32_t out[6];
    size_t m = rp_topk(sc, 6, 2, out);
    check("topk ties lower index", m == 2 && out[0] == 1 && out[1] == 2);
    m = rp_topk(sc, 6, 5, out);
    check("topk NaN last", m == 5 && out[0] == 0 && out[1] == 1 && out[2] == 2 && out[3] == 4 && out[4] == 5);
    check("topk k > n clamps to n", rp_topk(sc, 6, 9, out) == 6 && out[0] == 0 && out[5] == 5);
    out[0] = 77;
    check("topk k = 0 leaves out alone", rp_topk(sc, 6, 0, out) == 0 && out[0] == 77);
    /* random scores from a few values (many ties) and NaNs, every k: the set a naive rank count
     * gives (index i is kept iff fewer than k indices rank above it), ascending */
    {
        enum { N = 41 };
        double rs[N];
        int32_t got[N];
        unsigned x = 7;
        int ok = 1;
        for (int trial = 0; trial < 50; trial++) {
            for (size_t i = 0; i < N; i++) {
                x = x * 1103515245u + 12345u;
                unsigned v = (x >> 16) % 7;
                rs[i] = v == 6 ? NAN : (double)v - 2.5;
            }
            for (size_t k = 1; k <= N; k++) {
                size_t got_n = rp_topk(rs, N, k, got), j = 0;
                ok &= got_n == k;
                for (size_t i = 0; i < N; i++) {
                    size_t above = 0;
                    for (size_t o = 0; o < N; o++) {
                        int on = isnan(rs[o]), in = isnan(rs[i]);
                        above += on != in ? in : (!on && rs[o] != rs[i]) ? rs[o] > rs[i] : o < i;
                    }
                    if (above < k) ok &= j < got_n && got[j++] == (int32_t)i;
                }
                ok &= j == got_n;
            }
        }
        check("topk = the naive rank count on 50 random tie- and NaN-rich score sets, every k", ok);
    }
    /* against a naive reference: a full stable selection by (score desc, NaN last, index asc),
     * on random scores drawn from a few values (many ties) and NaNs, every k */
    {
        unsigned x = 2024;
        int bad = 0;
        for (int rep = 0; rep < 200 && !bad; rep++) {
            size_t n = 1 + (size_t)(rep % 37);
            double v[40];
            for (size_t i = 0; i < n; i++) {
                x = x * 1103515245u + 12345u;
                unsigned r = (x >> 16) % 7;
                v[i] = r == 6 ? NAN : (double)r - 2.5;
            }
            for (size_t k = 0; k <= n + 1 && !bad; k++) {
                int32_t got[40], want[40];
                uint8_t taken[40] = { 0 };
                size_t kk = k < n ? k : n;
                for (size_t j = 0; j < kk; j++) {       /* pick the best remaining, lowest index on ties */
                    long best = -1;
                    for (size_t i = 0; i < n; i++) {
                        if (taken[i]) continue;
                        if (best < 0) { best = (long)i; continue; }
                        double a = v[i], bb = v[best];
                        if (isnan(bb) && !isnan(a)) best = (long)i;
                        else if (!isnan(a) && !isnan(bb) && a > bb) best = (long)i;
                    }
                    taken[best] = 1;
                }
                size_t w = 0;
                for (size_t i = 0; i < n; i++) if (taken[i]) want[w++] = (int32_t)i;
                size_t m2 = rp_topk(v, n, k, got);
                if (m2 != kk || memcmp(got, want, kk * sizeof *got)) bad = 1;
            }
        }
        check("topk = naive selection on 200 random tie-heavy vectors, every k", !bad);
    }

    /* online rules on a hand cache of 6 entries, B = 4 */
    rp_cache cache = { 0 };
    cache.D = 2;
    float kv[2];
    for (int t = 0; t < 6; t++) {
        kv[0] = (float)(t == 2 ? 10 : t + 1); kv[1] = 0;    /* key norms 1 2 10 4 5 6 */
        rp_cache_push(&cache, t, kv, kv);
    }
    size_t ev[8];
    const rp_strategy *st = rp_strategy_find("streaming");
    double vals[2] = { 1, 0 };
    void *cfg = NULL;
    check("streaming configure", st && st->configure(vals, &cfg, err, sizeof err) == 0);
    rp_layer_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    void *state = st->online_new(cfg, &ctx, 0, 4);
    kv_error ke;
    check("streaming online_step ok", st->online_step(state, &ctx, 0, 5, &cache, NULL, 4, ev, &m, &ke) == KV_OK);
    check("streaming sinks=1 B=4 evicts entries 1, 2", m == 2 && ev[0] == 1 && ev[1] == 2);
    st->online_free(state);
    st->free_cfg(cfg);
    const rp_strategy *kn = rp_strategy_find("knorm");
    state = kn->online_new(NULL, &ctx, 0, 4);
    check("knorm online_step ok", kn->online_step(state, &ctx, 0, 5, &cache, NULL, 4, ev, &m, &ke) == KV_OK);
    check("knorm evicts the two largest norms (entries 2 and 5)", m == 2 && ev[0] == 2 && ev[1] == 5);
    kn->online_free(state);
#if !defined(__SANITIZE_ADDRESS__)
    /* knorm's allocation failure, injected by a cache too large for any allocation (2^59
     * entries: its score array needs 2^62 bytes, beyond the address space; the hook fails
     * before it touches a row): "out of memory", not "0 evictions" (which the engine then
     * misreported as a budget breach). Not under ASan, whose allocator aborts on such a
     * request instead of returning NULL. */
    {
        rp_cache huge = cache;
        huge.n = (size_t)1 << 59;
        size_t ne = 12345;
        kv_error ke2 = { 0 };
        state = kn->online_new(NULL, &ctx, 0, 4);
        kv_status st2 = kn->online_step(state, &ctx, 0, 5, &huge, NULL, 4, ev, &ne, &ke2);
        check("knorm online_step OOM: KV_ERR_NOMEM with 'out of memory', nothing evicted",
              st2 == KV_ERR_NOMEM && strstr(ke2.msg, "out of memory") && ne == 0);
        kn->online_free(state);
    }
#endif
    rp_cache_free(&cache);

    /* labels: display names, not part of the canonical string */
    {
        rp_sweep ls = { 0 };
        check("quoted label with a space", sweep_add_line(&ls, "quant kbits=2 vbits=2 label=\"KIVI 2bit\"  # c", "t", err, sizeof err) == 0 &&
              ls.n == 1 && !strcmp(ls.cfg[0].label, "KIVI 2bit") && !strstr(ls.cfg[0].canon, "label"));
        check("placeholders expand per configuration",
              sweep_add_line(&ls, "quant kbits=4,8 vbits=4 label=Q{kbits}v{vbits}", "t", err, sizeof err) == 0 && ls.n == 3 &&
              !strcmp(ls.cfg[1].label, "Q4v4") && !strcmp(ls.cfg[2].label, "Q8v4"));
        check("a label shared across budgets", sweep_add_line(&ls, "snapkv keep=0.25,0.5 label=SnapKV", "t", err, sizeof err) == 0 &&
              ls.n == 5 && !strcmp(ls.cfg[3].label, "SnapKV") && !strcmp(ls.cfg[4].label, "SnapKV"));
        check("a repeated configuration takes a label it lacked",
              sweep_add_line(&ls, "full", "t", err, sizeof err) == 0 && sweep_add_line(&ls, "full label=Full", "t", err, sizeof err) == 0 &&
              ls.n == 6 && !strcmp(ls.cfg[5].label, "Full"));
        check("an unlabelled line has no label", sweep_add_line(&ls, "knorm keep=0.5", "t", err, sizeof err) == 0 && ls.cfg[6].label[0] == 0);
        char stripped[256];
        sweep_strip_budget("snapkv keep=0.25 window=8 + quant kbits=4", stripped, sizeof stripped);
        check_str("strip budget", stripped, "snapkv window=8 + quant kbits=4");
        sweep_free(&ls);
    }
    check_err("quant kbits=2,4 label=KIVI", "differs from");
    check_err("quant kbits=2 label=\"KIVI", "closing");
    check_err("quant kbits=2 label=a,b", "','");
    check_err("quant kbits=2 label={nosuch}", "{nosuch} names no parameter");
    check_err("quant kbits=2 label=x label=y", "given twice");
    check_err("quant kbits=\"2\"", "quotes are only for label");
    check_err("label=x", "without a configuration");
    check_err("quant kbits=2 label=it's", "not allowed in a label");
    check_err("quant kbits=2 label=a\\b", "not allowed in a label");
    check_err("quant kbits=2 label=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "longer than 63");
    {
        rp_sweep ls = { 0 };
        check("first label", sweep_add_line(&ls, "full label=A", "t", err, sizeof err) == 0);
        check("a second label for the same configuration is refused",
              sweep_add_line(&ls, "full label=B", "t", err, sizeof err) != 0 && strstr(err, "already labelled"));
        sweep_free(&ls);
    }

    printf("%d checks, %d failures\n", checks, fails);
    return fails ? 1 : 0;
}
