/* per_layer — kvpress PerLayerCompressionPress: an inner scorer run in each layer with that
 * layer's own compression ratio; the ratios come from the sweep line or from a file (budget
 * curves as LU-KV's, per layer).
 *
 * Rule (prefill protocol; no keep=/budget=: the ratios are the budget):
 *   r_l = the compression ratio of layer l: ratios=R0/R1/... (RP_LIST) or file=PATH (one ratio
 *   per line; '#' starts a comment, blank lines are skipped). fit=exact: exactly one ratio per
 *   layer, else an error before any work; fit=interp: the N ratios placed evenly over the
 *   layers (ratio i at layer i (L - 1) / (N - 1)) and linearly interpolated (one ratio: every
 *   layer), so a curve written for one depth runs on any model.
 *   Layer l then runs the inner press (press=, with that press's own defaults) as if the
 *   configuration were keep = 1 - r_l: B_l = max(1, round((1 - r_l) P)) entries per kv head,
 *   and the keep the inner press's budget rule sees is 1 - r_l, so a kvpress-preset inner press
 *   keeps kvpress's int(P (1 - r_l)) (kvpress sets press.compression_ratio = r_l per layer).
 *   r_l = 0 keeps the layer whole (kvpress: a press at ratio 0 does nothing); r_l = 1 keeps 1.
 *   The inner press's budget checks, calibration (qfilter: --calib) and per-query view
 *   (finch's re-rotation, streaming's reindex) apply as they do alone.
 * Defaults: press=knorm (kvpress's examples wrap KnormPress), ratios=none, file=none (give
 * exactly one), fit=exact.
 * Budget: none of its own; the mean of r_l is kvpress's reported compression_ratio.
 * Reference: kvpress PerLayerCompressionPress (github.com/NVIDIA/kvpress,
 * presses/per_layer_compression_press.py); ratio files as LU-KV's budget curves (kvpress
 * LUKVPress; Predicting Future Utility, arXiv 2602.08585).
 * Differences: LU-KV's curves are [99 global ratios][layers][kv heads] of .npy, per kv head
 * and indexed by the global ratio; a file here holds one ratio per layer for one
 * configuration (one file per global budget), and the kv heads of a layer share it. The inner
 * press runs with its defaults (no inner parameters on the line). The ratio file is read when
 * the sweep is parsed; its path, not its content, enters the configuration string.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strategy.h"
#include "sweep.h"

/* Inner presses: prefill eviction strategies with a budget (not pyramidkv: its own layer budgets). */
#define PL_PRESSES "knorm|random|streaming|snapkv|tova|h2o|cab|observed_attention|keydiff|cur|lagkv|" \
                   "expected_attention|noncausal_attn|leverage|compactor|cap|qfilter|chunkkv|chunk|criticalkv|" \
                   "merging|adakv|finch"
#define PL_MAX_LAYERS RP_LIST_MAX

typedef struct pl_cfg {
    const rp_strategy *inner;
    void *inner_cfg;
    double *ratio;              /* [n] */
    size_t n;
    int interp;
    char src[600];              /* "ratios=..." or the file, for messages */
} pl_cfg;

enum { PL_PRESS, PL_RATIOS, PL_FILE, PL_FIT };

static const rp_param_def pl_params[] = {
    { "press", RP_ENUM, "knorm", 0, 0, PL_PRESSES, "inner press, run with its own defaults" },
    { "ratios", RP_LIST, "none", 0, 1, NULL, "compression ratio per layer, R0/R1/... (kvpress compression_ratios)" },
    { "file", RP_PATH, "none", 0, 0, NULL, "file of per-layer ratios, one per line ('#' comments), instead of ratios=" },
    { "fit", RP_ENUM, "exact", 0, 0, "exact|interp", "exact: one ratio per layer; interp: spread linearly over the layers" },
};

static void pl_free(void *cfg)
{
    pl_cfg *c = cfg;
    if (!c) return;
    if (c->inner_cfg && c->inner->free_cfg) c->inner->free_cfg(c->inner_cfg);
    free(c->ratio);
    free(c);
}

/* The inner press named by choice i of PL_PRESSES. */
static const rp_strategy *pl_inner(int i)
{
    const char *p = PL_PRESSES;
    for (int k = 0; k < i && p; k++) {
        p = strchr(p, '|');
        if (p) p++;
    }
    if (!p) return NULL;
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)strcspn(p, "|"), p);
    return rp_strategy_find(name);
}

/* "0.2/0.5" (already checked by the parser) -> ratios. */
static int pl_parse_list(pl_cfg *c, const char *text)
{
    for (const char *p = text; *p;) {
        char *end;
        double x = strtod(p, &end);
        double *r = realloc(c->ratio, (c->n + 1) * sizeof *r);
        if (!r) return -1;
        c->ratio = r;
        c->ratio[c->n++] = x;
        p = *end == '/' ? end + 1 : end;
    }
    return 0;
}

/* One ratio per line of path. 0 ok, -1 with "FILE:LINE: reason" in err. */
static int pl_read_file(pl_cfg *c, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) return rp_failf(err, errlen, "per_layer: %s: cannot open: %s", path, strerror(errno));
    char line[512];
    size_t lineno = 0;
    int rc = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) { rc = rp_failf(err, errlen, "per_layer: %s:%zu: line too long", path, lineno); break; }
        line[strcspn(line, "#\r\n")] = 0;
        char *p = line;
        while (isspace((unsigned char)*p)) p++;
        if (!*p) continue;
        char *end;
        errno = 0;
        double x = strtod(p, &end);
        char *rest = end;
        while (isspace((unsigned char)*rest)) rest++;
        if (end == p || errno || !isfinite(x) || *rest) {
            rc = rp_failf(err, errlen, "per_layer: %s:%zu: '%s' is not one number (one compression ratio per line)", path,
                          lineno, p);
        } else if (x < 0 || x > 1) {
            rc = rp_failf(err, errlen, "per_layer: %s:%zu: ratio %s out of range [0, 1]", path, lineno, p);
        } else if (c->n == PL_MAX_LAYERS) {
            rc = rp_failf(err, errlen, "per_layer: %s:%zu: more than %d ratios", path, lineno, PL_MAX_LAYERS);
        } else {
            double *r = realloc(c->ratio, (c->n + 1) * sizeof *r);
            if (!r) rc = rp_failf(err, errlen, "out of memory");
            else { c->ratio = r; c->ratio[c->n++] = x; }
        }
    }
    if (!rc && ferror(f)) rc = rp_failf(err, errlen, "per_layer: %s: read error", path);
    fclose(f);
    if (!rc && c->n == 0) rc = rp_failf(err, errlen, "per_layer: %s: no ratio (one compression ratio per line)", path);
    return rc;
}

static int pl_configure(const double *v, const char *const *text, void **cfg, char *err, size_t errlen)
{
    pl_cfg *c = calloc(1, sizeof *c);
    if (!c) return -1;
    c->inner = pl_inner((int)v[PL_PRESS]);
    c->interp = (int)v[PL_FIT] == 1;
    int has_list = v[PL_RATIOS] > 0, has_file = v[PL_FILE] > 0;
    double iv[RP_MAX_PARAMS];
    if (!c->inner) { free(c); return rp_failf(err, errlen, "per_layer: internal: unknown inner press"); }
    if (has_list == has_file) {
        pl_free(c);
        return rp_failf(err, errlen, "per_layer: give one of ratios=R0/R1/... or file=PATH (one compression ratio per layer)");
    }
    if (has_list) {
        snprintf(c->src, sizeof c->src, "ratios=%.580s", text[PL_RATIOS]);
        if (pl_parse_list(c, text[PL_RATIOS])) { pl_free(c); return rp_failf(err, errlen, "out of memory"); }
    } else {
        snprintf(c->src, sizeof c->src, "%.590s", text[PL_FILE]);
        if (pl_read_file(c, text[PL_FILE], err, errlen)) { pl_free(c); return -1; }
    }
    char e2[400] = "";
    if (sweep_param_defaults(c->inner, iv, e2, sizeof e2) ||
        (c->inner->configure && c->inner->configure(iv, &c->inner_cfg, e2, sizeof e2))) {
        c->inner_cfg = NULL;
        pl_free(c);
        return rp_failf(err, errlen, "per_layer: press=%s: %s", c->inner->name, e2[0] ? e2 : "invalid parameters");
    }
    *cfg = c;
    return 0;
}

/* r_l of layer l of L; -1 when fit=exact and the count differs (err written). */
static double pl_ratio(const pl_cfg *c, size_t l, size_t L, char *err, size_t errlen)
{
    if (!c->interp) {
        if (c->n != L) {
            rp_failf(err, errlen, "per_layer: %s gives %zu ratios, the trace has %zu layers (one per layer, or fit=interp)",
                     c->src, c->n, L);
            return -1;
        }
        return c->ratio[l];
    }
    if (c->n == 1 || L == 1) return c->ratio[0];
    double x = (double)l * (double)(c->n - 1) / (double)(L - 1);
    size_t i = (size_t)floor(x);
    if (i >= c->n - 1) return c->ratio[c->n - 1];
    double f = x - (double)i;
    return c->ratio[i] * (1 - f) + c->ratio[i + 1] * f;
}

/* B_l = max(1, round((1 - r) P)), the engine's rule for keep = 1 - r. */
static size_t pl_budget(double r, size_t P)
{
    double b = round((1.0 - r) * (double)P);
    size_t B = b < 1 ? 1 : (size_t)b;
    return B > P ? P : B;
}

static int pl_check_budget(const void *cfg, size_t P, size_t B, size_t n_layers, char *err, size_t errlen)
{
    const pl_cfg *c = cfg;
    (void)B;
    for (size_t l = 0; l < n_layers; l++) {
        double r = pl_ratio(c, l, n_layers, err, errlen);
        if (r < 0) return -1;
        size_t Bl = pl_budget(r, P);
        char e2[400] = "";
        if (Bl < P && c->inner->check_budget && c->inner->check_budget(c->inner_cfg, P, Bl, n_layers, e2, sizeof e2))
            return rp_failf(err, errlen, "per_layer press=%s, layer %zu (ratio %g, %zu of %zu entries): %s", c->inner->name,
                            l, r, Bl, P, e2);
    }
    return 0;
}

static int pl_prefill(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out, char *err, size_t errlen)
{
    const pl_cfg *c = cfg;
    (void)B;
    double r = pl_ratio(c, ctx->layer, ctx->n_layers, err, errlen);
    if (r < 0) return -1;
    rp_layer_ctx lc = *ctx;     /* the same engine callbacks; only the budget the press sees differs */
    lc.keep = 1.0 - r;
    return c->inner->prefill(c->inner_cfg, &lc, pl_budget(r, ctx->P), out, err, errlen);
}

static size_t pl_calib_seqs(const void *cfg)
{
    const pl_cfg *c = cfg;
    if (!c->inner->calibrate) return RP_CALIB_NONE;
    return c->inner->calib_seqs ? c->inner->calib_seqs(c->inner_cfg) : 1;
}

static int pl_calibrate(void *cfg, const rp_calib_ctx *cc, char *err, size_t errlen)
{
    pl_cfg *c = cfg;
    return c->inner->calibrate ? c->inner->calibrate(c->inner_cfg, cc, err, errlen) : 0;
}

static int pl_view_active(const void *cfg)
{
    const pl_cfg *c = cfg;
    return rp_view_active(c->inner, c->inner_cfg);
}

static int pl_view(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *view, char *err,
                   size_t errlen)
{
    const pl_cfg *c = cfg;
    return rp_view_active(c->inner, c->inner_cfg) ? c->inner->online_view(c->inner_cfg, ctx, g, t, view, err, errlen) : 0;
}

/* The layer's budget is the same for its kv heads: separable when the inner press is, unless
 * the inner press needs a plan (strategy.h plan_score): per_layer passes no plan hooks on (the
 * inner budget depends on the layer, which plan_size does not see), so it keeps layer items. */
static int pl_head_separable(const void *cfg)
{
    const pl_cfg *c = cfg;
    return !c->inner->plan_score && rp_head_separable(c->inner, c->inner_cfg);
}

static int pl_uses_rope(const void *cfg)
{
    const pl_cfg *c = cfg;
    return rp_uses_rope(c->inner, c->inner_cfg);
}

const rp_strategy rp_strategy_per_layer = {
    .name = "per_layer",
    .summary = "an inner press (press=) with its own compression ratio per layer, ratios=R0/R1/... or file=PATH "
               "(kvpress PerLayerCompressionPress; no budget: layer l keeps as keep = 1 - r_l)",
    .reference = "kvpress PerLayerCompressionPress (github.com/NVIDIA/kvpress); ratio files as LU-KV's per-layer budget "
                 "curves (arXiv 2602.08585, kvpress LUKVPress)",
    .kind = RP_EVICT,
    .protocols = RP_PREFILL,
    .needs_budget = 0,
    .params = pl_params,
    .n_params = sizeof pl_params / sizeof pl_params[0],
    .configure_text = pl_configure,
    .free_cfg = pl_free,
    .calib_seqs = pl_calib_seqs,
    .calibrate = pl_calibrate,
    .prefill = pl_prefill,
    .check_budget = pl_check_budget,
    .online_view = pl_view,
    .view_active = pl_view_active,
    .cfg_head_separable = pl_head_separable,
    .cfg_uses_rope = pl_uses_rope,
};
