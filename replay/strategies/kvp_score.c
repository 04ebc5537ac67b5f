/* kvpress's SnapKVPress score with the padded window (kvp_score.h). */
#include <math.h>
#include <stdlib.h>

#include "evict_util.h"
#include "kvp_score.h"

void kvp_pad_window(const snapkv_opts *o, double *score, size_t Hkv, size_t P)
{
    size_t w = o->window;
    double mx = -INFINITY;
    for (size_t g = 0; g < Hkv; g++)
        for (size_t j = 0; j < P - w; j++) mx = score[g * P + j] > mx ? score[g * P + j] : mx;
    for (size_t g = 0; g < Hkv; g++)
        for (size_t j = P - w; j < P; j++) score[g * P + j] = mx;
}

size_t kvp_plan_size(const void *cfg, size_t P, size_t G, size_t B)
{
    (void)cfg; (void)G;
    return B < P ? P : 0;
}

int kvp_plan_score(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B, double *out, char *err,
                   size_t errlen)
{
    const kvp_cfg *c = cfg;
    (void)B;
    if (kvp_check_window(&c->o, c->who, ctx->P, err, errlen)) return -1;
    if (snapkv_head_score(&c->o, ctx, g, out)) return rp_failf(err, errlen, "%s: out of memory", c->who);
    return 0;
}

int kvp_plan_layer(const void *cfg, size_t Hkv, size_t G, size_t P, size_t B, double *plan, char *err,
                   size_t errlen)
{
    const kvp_cfg *c = cfg;
    (void)G; (void)B; (void)err; (void)errlen;
    kvp_pad_window(&c->o, plan, Hkv, P);
    return 0;
}

int kvp_scorer_resolve(const double *v, snapkv_opts *o, const char *who, char *err, size_t errlen)
{
    return snapkv_resolve((int)v[0], (long)v[1], (long)v[2], -1, -1, -2, 0, o, who, err, errlen);
}

int kvp_check_window(const snapkv_opts *o, const char *who, size_t P, char *err, size_t errlen)
{
    if (o->window < P) return 0;
    return rp_failf(err, errlen, "%s: window=%zu is not shorter than the prompt (%zu tokens); lower window=",
                    who, o->window, P);
}

int kvp_configure(const double *v, size_t n_own, const char *who, void **cfg, char *err, size_t errlen)
{
    kvp_cfg *c = malloc(sizeof *c);
    if (!c) return -1;
    c->who = who;
    for (size_t i = 0; i < n_own; i++) c->own[i] = v[i];
    if (kvp_scorer_resolve(v + n_own, &c->o, who, err, errlen)) { free(c); return -1; }
    *cfg = c;
    return 0;
}

void kvp_free(void *cfg) { free(cfg); }

int kvp_check_budget(const void *cfg, size_t P, size_t B, size_t n_layers, char *err, size_t errlen)
{
    const kvp_cfg *c = cfg;
    (void)n_layers;
    return B < P ? kvp_check_window(&c->o, c->who, P, err, errlen) : 0;
}

int kvp_keep_all(const rp_layer_ctx *ctx, int32_t *kept, rp_cache *out)
{
    for (size_t j = 0; j < ctx->P; j++) kept[j] = (int32_t)j;
    for (size_t g = 0; g < ctx->Hkv; g++)
        if (ev_push_kept(ctx, g, kept, ctx->P, &out[g])) return -1;
    return 0;
}
