/* IEEE binary16 <-> binary32 conversion.
 *
 * f16 -> f32 is exact (every half is a float). Two paths: a scalar bit-level one (the
 * reference, and the fallback) and F16C (VCVTPH2PS, 8 values per instruction), chosen at
 * run time with __builtin_cpu_supports so the build needs no -mf16c. f32 -> f16 rounds to
 * nearest, ties to even, overflow -> Inf, NaN -> quiet NaN (scalar; the writer's only user).
 * tests/unit/test_fp16.c checks both directions against an ldexp-based reference.
 */
#include <string.h>

#include "kvtrace.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#if defined(__clang__)
#include <cpuid.h>
#endif
#define KV_HAVE_F16C_BUILD 1
#endif

static inline float bits_to_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t float_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

float kv_f16_to_f32_one(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;                               /* +-0 */
        } else {                                       /* subnormal: normalise */
            uint32_t e = 127 - 15 + 1;
            while (!(mant & 0x400u)) {
                mant <<= 1;
                e--;
            }
            bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);      /* Inf, or NaN keeping its payload */
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    return bits_to_float(bits);
}

void kv_f16_to_f32_scalar(const uint16_t *src, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = kv_f16_to_f32_one(src[i]);
}

#ifdef KV_HAVE_F16C_BUILD
__attribute__((target("f16c,avx")))
static void f16_to_f32_f16c(const uint16_t *src, float *dst, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(src + i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    if (i < n) {                                       /* tail through a padded vector */
        uint16_t tmp[8] = {0};
        float out[8];
        memcpy(tmp, src + i, (n - i) * sizeof *tmp);
        _mm256_storeu_ps(out, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)tmp)));
        memcpy(dst + i, out, (n - i) * sizeof *out);
    }
}
#endif

static int have_f16c(void)
{
#ifdef KV_HAVE_F16C_BUILD
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
#if defined(__clang__)
        /* clang's __builtin_cpu_supports does not know "f16c": CPUID.1:ECX bit 29 */
        unsigned a = 0, b = 0, c = 0, d = 0;
        cached = __builtin_cpu_supports("avx") && __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1);
#else
        cached = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
#endif
    }
    return cached;
#else
    return 0;
#endif
}

int kv_f16_to_f32_f16c(const uint16_t *src, float *dst, size_t n)
{
#ifdef KV_HAVE_F16C_BUILD
    if (have_f16c()) {
        f16_to_f32_f16c(src, dst, n);
        return 1;
    }
#endif
    (void)src; (void)dst; (void)n;
    return 0;
}

void kv_f16_to_f32(const uint16_t *src, float *dst, size_t n)
{
    if (!kv_f16_to_f32_f16c(src, dst, n))
        kv_f16_to_f32_scalar(src, dst, n);
}

uint16_t kv_f32_to_f16_one(float x)
{
    uint32_t u = float_to_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t ax = u & 0x7fffffffu;
    if (ax > 0x7f800000u)                              /* NaN: quiet, keep top payload bits */
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u)                             /* >= 65520 rounds to Inf (or is Inf) */
        return (uint16_t)(sign | 0x7c00u);
    uint32_t e = ax >> 23;
    if (ax < 0x38800000u) {                            /* below 2^-14: half subnormal or 0 */
        uint32_t mant = (ax & 0x7fffffu) | (e ? 0x800000u : 0);
        uint32_t shift = 126 - e;                      /* value * 2^24 = mant * 2^-shift */
        if (e == 0 || shift > 24)
            return sign;                               /* < 2^-25: rounds to zero */
        uint32_t r = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1)))
            r++;
        return (uint16_t)(sign | r);                   /* r == 0x400 is the smallest normal */
    }
    uint32_t m = ax & 0x7fffffu;
    uint32_t r = ((e - 112) << 10) | (m >> 13);
    uint32_t rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1)))
        r++;                                           /* a carry moves into the exponent */
    return (uint16_t)(sign | r);
}

void kv_f32_to_f16(const float *src, uint16_t *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = kv_f32_to_f16_one(src[i]);
}
