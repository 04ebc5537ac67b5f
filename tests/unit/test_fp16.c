/* lib/fp16.c against an independent reference.
 *
 * f16 -> f32: all 65,536 bit patterns, scalar and F16C paths, against a value computed
 * with ldexp from the IEEE binary16 definition (sign, 5-bit exponent with bias 15, 10-bit
 * mantissa; subnormals m * 2^-24). NaN: both must be NaN (payload not compared).
 * f32 -> f16: round trip of every non-NaN half, every midpoint between adjacent halves
 * (ties to even), midpoints +- 1 ulp of f32, and 2^20 random f32 bit patterns against a
 * nearest-half search over the reference table.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvtrace.h"

static int fails = 0;
static long checks = 0;

static uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* The definition, in double. */
static double ref_half(uint16_t h)
{
    int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 0)
        v = ldexp((double)m, -24);
    else if (e == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexp((double)(1024 + m), e - 25);
    return sign ? -v : v;
}

static int check_path(const char *name, const float *got)
{
    int bad = 0;
    for (uint32_t i = 0; i < 65536; i++) {
        double r = ref_half((uint16_t)i);
        checks++;
        int ok = isnan(r) ? isnan(got[i]) : fbits(got[i]) == fbits((float)r);   /* +-0 by bits */
        if (!ok) {
            if (bad++ < 5)
                printf("FAIL %s: half 0x%04x -> %.9g (0x%08x), want %.9g\n", name, i, got[i], fbits(got[i]), r);
            fails++;
        }
    }
    printf("%s: 65536 patterns, %d mismatches\n", name, bad);
    return bad;
}

/* Nearest half to x (finite, or Inf), ties to even mantissa, by binary search over the
 * ordered non-negative halves 0x0000..0x7bff; >= 65520 -> Inf (the IEEE overflow rule). */
static uint16_t ref_round(float xf)
{
    double x = xf;
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    double a = fabs(x);
    if (a >= 65520.0)
        return sign | 0x7c00;
    uint32_t lo = 0, hi = 0x7bff;
    while (lo < hi) {                   /* largest h with ref_half(h) <= a */
        uint32_t mid = (lo + hi + 1) / 2;
        if (ref_half((uint16_t)mid) <= a)
            lo = mid;
        else
            hi = mid - 1;
    }
    uint32_t h = lo;
    if (h < 0x7bff) {
        double d0 = a - ref_half((uint16_t)h), d1 = ref_half((uint16_t)(h + 1)) - a;
        if (d1 < d0 || (d1 == d0 && (h & 1)))
            h++;
    } else if (a - 65504.0 >= 16.0) {
        return sign | 0x7c00;
    }
    return (uint16_t)(sign | h);
}

static void check_round(float x)
{
    checks++;
    uint16_t got = kv_f32_to_f16_one(x), want = ref_round(x);
    if (got != want) {
        if (fails < 20)
            printf("FAIL f32->f16: %.9g (0x%08x) -> 0x%04x, want 0x%04x\n", x, fbits(x), got, want);
        fails++;
    }
}

int main(void)
{
    uint16_t *h = malloc(65536 * sizeof *h);
    float *f = malloc(65536 * sizeof *f);
    if (!h || !f)
        return 1;
    for (uint32_t i = 0; i < 65536; i++)
        h[i] = (uint16_t)i;

    kv_f16_to_f32_scalar(h, f, 65536);
    check_path("scalar", f);
    for (uint32_t i = 0; i < 65536; i++) {     /* one-at-a-time entry point */
        checks++;
        float g = kv_f16_to_f32_one((uint16_t)i);
        if (!(isnan(g) ? isnan(f[i]) : fbits(g) == fbits(f[i])))
            fails++;
    }
    memset(f, 0, 65536 * sizeof *f);
    if (kv_f16_to_f32_f16c(h, f, 65536)) {
        check_path("f16c", f);
        /* odd lengths exercise the tail */
        for (size_t n = 1; n <= 17; n++) {
            float g[17];
            kv_f16_to_f32_f16c(h + 0x3c00, g, n);
            for (size_t i = 0; i < n; i++, checks++)
                if (fbits(g[i]) != fbits((float)ref_half((uint16_t)(0x3c00 + i))))
                    fails++;
        }
    } else {
        printf("f16c: not available on this CPU (scalar path only)\n");
    }
    memset(f, 0, 65536 * sizeof *f);
    kv_f16_to_f32(h, f, 65536);
    check_path("dispatch", f);

    /* round trips and midpoints */
    int rt_bad = 0;
    for (uint32_t i = 0; i < 65536; i++) {
        double r = ref_half((uint16_t)i);
        if (isnan(r)) {
            checks++;
            uint16_t o = kv_f32_to_f16_one((float)r);
            if (((o >> 10) & 31) != 31 || !(o & 1023))
                fails++, rt_bad++;
            continue;
        }
        checks++;
        if (kv_f32_to_f16_one((float)r) != i) {
            if (rt_bad++ < 5)
                printf("FAIL round trip 0x%04x -> 0x%04x\n", i, kv_f32_to_f16_one((float)r));
            fails++;
        }
        if ((i & 0x7fff) < 0x7c00) {
            uint16_t nx = (uint16_t)(i + 1);
            double r1 = (i & 0x7fff) == 0x7bff ? copysign(65536.0, r) : ref_half(nx);
            float mid = (float)((r + r1) / 2);          /* exact: 12 significant bits */
            check_round(mid);
            check_round(nextafterf(mid, 0.0f));
            check_round(nextafterf(mid, copysignf(INFINITY, mid)));
        }
    }
    /* random f32 bit patterns (fixed seed), plus specials */
    uint64_t s = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < (1 << 20); i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        uint32_t u = (uint32_t)(s >> 16);
        /* concentrate half of them on the half range (exponents 100..145) */
        if (i & 1)
            u = (u & 0x807fffffu) | ((100u + (uint32_t)(s % 46)) << 23);
        float x;
        memcpy(&x, &u, 4);
        if (isnan(x))
            continue;
        check_round(x);
    }
    float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, 65504.0f, 65519.99f, 65520.0f, -65520.0f,
                        5.9604645e-8f, 2.9802322e-8f, 2.9802326e-8f, 1e-30f, 1e30f, 6.1035156e-5f};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++)
        check_round(specials[i]);
    checks++;
    if (!isnan(kv_f16_to_f32_one(kv_f32_to_f16_one(NAN))))
        fails++;

    free(h);
    free(f);
    printf("%ld checks, %d failures\n", checks, fails);
    return fails ? 1 : 0;
}
