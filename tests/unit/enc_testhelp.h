/* Tiny shared test helpers for the encoding strategies' unit tests (test_quant.c,
 * test_lowrank.c, test_minicache.c, test_entropy_merge.c, test_asymkv.c). */
#ifndef KV_ENC_TESTHELP_H
#define KV_ENC_TESTHELP_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strategy.h"

static int fails = 0, checks = 0;

static inline void check_close(const char *what, double got, double want, double tol)
{
    checks++;
    if (!(got == want || fabs(got - want) <= tol)) {
        fails++;
        printf("FAIL %s: got %.17g want %.17g (|err| %.3g > tol %.3g)\n", what, got, want, fabs(got - want), tol);
    }
}

static inline void check_true(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

static inline int report(const char *name)
{
    printf("%s: %d/%d checks passed\n", name, checks - fails, checks);
    return fails ? 1 : 0;
}

/* Deterministic N(0,1)-ish numbers (sum of uniforms) from an rp_rng. */
static inline float randn(rp_rng *r)
{
    double s = 0;
    for (int i = 0; i < 12; i++) s += rp_rng_uniform(r);
    return (float)(s - 6.0);
}

/* Configure a strategy from a config-like list of values in declared order (defaults for
 * the rest, parsed as numbers or enum choice names). */
static inline const char *param_default(const rp_param_def *p) { return p->def; }

static inline double enum_index(const rp_param_def *p, const char *v)
{
    const char *c = p->choices;
    for (int i = 0; c && *c; i++) {
        size_t n = strcspn(c, "|");
        if (strlen(v) == n && !strncmp(c, v, n)) return i;
        c += n + (c[n] == '|');
    }
    return -1;
}

/* kv: "name=value" pairs, NULL-terminated. Returns configure's status; err filled. */
static inline int strat_configure(const rp_strategy *s, const char *const *kv, void **cfg, char *err, size_t errlen)
{
    double vals[RP_MAX_PARAMS];
    for (size_t i = 0; i < s->n_params; i++) {
        const rp_param_def *p = &s->params[i];
        const char *v = param_default(p);
        for (size_t j = 0; kv && kv[j]; j++) {
            size_t n = strlen(p->name);
            if (!strncmp(kv[j], p->name, n) && kv[j][n] == '=') v = kv[j] + n + 1;
        }
        vals[i] = p->type == RP_ENUM ? enum_index(p, v) : atof(v);
    }
    return s->configure(vals, cfg, err, errlen);
}

#endif /* KV_ENC_TESTHELP_H */
