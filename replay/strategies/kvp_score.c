/* kvpress's SnapKVPress score with the padded window (kvp_score.h). */
#include <math.h>
#include <stdlib.h>

#include "kvp_score.h"

int kvp_window_scores(const snapkv_opts *o, const rp_layer_ctx *ctx, double *score)
{
    size_t P = ctx->P, w = o->window;
    double mx = -INFINITY;
    for (size_t g = 0; g < ctx->Hkv; g++) {
        if (snapkv_head_score(o, ctx, g, score + g * P)) return -1;
        for (size_t j = 0; j < P - w; j++) mx = score[g * P + j] > mx ? score[g * P + j] : mx;
    }
    for (size_t g = 0; g < ctx->Hkv; g++)
        for (size_t j = P - w; j < P; j++) score[g * P + j] = mx;
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
