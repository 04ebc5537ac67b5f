/* rp_needles_row (replay/needle.h) on hand cases the numpy test cannot reach (it covers
 * plain caches only): a merged entry standing for a needle position and another, a member
 * outside the query's window, per-query selected entries, and which queries count as
 * question / answer queries. Every expected value is computed here by hand from the
 * definitions in replay/RESULTS.md (needles.csv). The compressed probabilities come from fp32
 * logits z = (float)log(x); the expectations use the same q(x) = exp((double)z), so both sides
 * compute the same few double operations: tolerance 1e-15.
 *
 * The needle: start 2, end 6, value [3, 5), answer [10, 12), split P = 8, context 8: question
 * queries t = 8; answer queries t = 9, 10 (t + 1 in [10, 12)); t = 11 is neither. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kvtrace.h"
#include "needle.h"

static int fails = 0, checks = 0;

static void near(const char *what, double got, double want)
{
    checks++;
    if (!(fabs(got - want) <= 1e-15)) {
        fails++;
        printf("FAIL %s: got %.17g want %.17g\n", what, got, want);
    }
}

static double q(double x) { return exp((double)(float)log(x)); }

int main(void)
{
    /* columns of /needles: seq start end value_start value_end answer_start answer_end; one needle */
    int32_t nd[KV_NEEDLE_NF] = { 0, 2, 6, 3, 5, 10, 12 };
    rp_needles ns;
    char err[256];
    if (rp_needles_init(&ns, nd, 1, 0, 8, 8, 1, 1, 1, err, sizeof err) || ns.n != 1) { printf("FAIL init: %s\n", err); return 1; }
    double p[12] = { 0 };
    /* the full row at t = 9 over [0, 9]: mass 0.25 on each of 2 and 4, 0.5 on 9 */
    p[2] = 0.25; p[4] = 0.25; p[9] = 0.5;
    rp_row_full f = { .lo = 0, .t = 9, .p = p };
    /* the compressed row: entry 0 merges positions {4, 7} (multiplicity 2, q = 0.5), entry 1 is
     * position 9 (q = 0.5): needle mass 0.5 / 2 = 0.25; value position 4 held, 3 not */
    int32_t pos[2] = { 4, 9 }, mult[2] = { 2, 1 }, off[3] = { 0, 2, 3 }, mem[3] = { 4, 7, 9 };
    float z[2] = { (float)log(0.5), (float)log(0.5) };
    rp_row_comp c = { .cnt = 2, .ent = NULL, .first = 0, .z = z, .lse = 0.0, .pos = pos, .mult = mult,
                      .mem_off = off, .members = mem };
    rp_needles_row(&ns, 0, 0, 0, 1, 1, 1, &f, &c);         /* t = 9: the first answer query */
    const double *a = ns.nh;
    near("first answer query: one of two value positions held", a[NH_RET], 1.0);
    near("answer mass, full", a[NH_MAF], 0.5);
    near("answer mass, merged entry split equally", a[NH_MAC], q(0.5) / 2);
    near("no question mass yet", a[NH_MQF] + a[NH_MQC], 0.0);

    /* t = 8, a question query, sliding window lo = 5: position 4 (merged member) is outside,
     * so its share is lost; the full row's mass on [5, 6) only */
    double p8[12] = { 0 };
    p8[5] = 0.5; p8[8] = 0.5;
    rp_row_full f8 = { .lo = 5, .t = 8, .p = p8 };
    rp_needles_row(&ns, 0, 0, 0, 1, 1, 1, &f8, &c);
    near("question mass, full (window)", a[NH_MQF], 0.5);
    near("question mass, member outside the window lost", a[NH_MQC], 0.0);
    near("retention counted at the first answer query only", a[NH_RET], 1.0);

    /* t = 10 (second answer query), full cache (c_row NULL): compressed = full */
    double p10[12] = { 0 };
    p10[3] = 0.125; p10[10] = 0.875;
    rp_row_full f10 = { .lo = 0, .t = 10, .p = p10 };
    rp_needles_row(&ns, 0, 0, 0, 1, 1, 1, &f10, NULL);
    near("full cache: answer mass adds up", a[NH_MAF], 0.625);
    near("full cache: compressed = full", a[NH_MAC], q(0.5) / 2 + 0.125);

    /* t = 11 predicts nothing of the answer: no change */
    rp_row_full f11 = { .lo = 0, .t = 11, .p = p10 };
    rp_needles_row(&ns, 0, 0, 0, 1, 1, 1, &f11, NULL);
    near("t = 11 is no needle query", a[NH_MAF], 0.625);

    /* a per-query selection (Quest-like) on a plain cache: entries 0..3 at positions 1, 3, 4, 9,
     * only entries 1 and 3 visible; retention 1 of 2 (position 3), mass on entry 1 */
    rp_needles ns2;
    rp_needles_init(&ns2, nd, 1, 0, 8, 8, 1, 1, 1, err, sizeof err);
    int32_t pos2[4] = { 1, 3, 4, 9 }, one[4] = { 1, 1, 1, 1 };
    size_t ent[2] = { 1, 3 };
    float z2[2] = { (float)log(0.75), (float)log(0.25) };
    rp_row_comp c2 = { .cnt = 2, .ent = ent, .first = 0, .z = z2, .lse = 0.0, .pos = pos2, .mult = one };
    rp_needles_row(&ns2, 0, 0, 0, 1, 1, 1, &f, &c2);
    near("selection: value position 3 held, 4 not selected", ns2.nh[NH_RET], 1.0);
    near("selection: needle mass of the selected entry", ns2.nh[NH_MAC], q(0.75));

    /* read-out: answer queries t = 9, 10 count; t = 8 and 11 do not */
    readout_cmp right = { .correct_full = 1, .correct_comp = 0 };
    for (size_t t = 8; t <= 11; t++) rp_needles_readout(&ns2, 0, 1, t, &right);
    near("answer top-1 counted at the two answer queries (full)", ns2.nd[ND_TOP1_F], 2.0);
    near("answer top-1 counted at the two answer queries (comp)", ns2.nd[ND_TOP1_C], 0.0);

    /* a needle whose first answer query precedes the split is not measured */
    rp_needles ns3;
    rp_needles_init(&ns3, nd, 1, 0, 10, 8, 1, 1, 1, err, sizeof err);
    checks++;
    if (ns3.n != 0) { fails++; printf("FAIL needle with answer_start - 1 < P measured\n"); }
    rp_needles_free(&ns); rp_needles_free(&ns2); rp_needles_free(&ns3);
    printf("%d checks, %d failed\n", checks, fails);
    return fails != 0;
}
