/* The unit tests' random inputs: splitmix64, uniforms in (0, 1) and Box-Muller normals.
 * A test defines RNG_SEED before including this header (its own stream; 0 otherwise) or
 * sets rng_state itself. */
#ifndef KVTRACE_RNG_TESTHELP_H
#define KVTRACE_RNG_TESTHELP_H

#include <math.h>
#include <stdint.h>

#ifndef RNG_SEED
#define RNG_SEED 0
#endif

static uint64_t rng_state = RNG_SEED;

static inline uint64_t rng_u64(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static inline double rng_unif(void) { return ((rng_u64() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
static inline float rng_normal(void) { return (float)(sqrt(-2 * log(rng_unif())) * cos(2 * M_PI * rng_unif())); }

#endif
