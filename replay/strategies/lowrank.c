/* lowrank — Palu-like low-rank K/V: project each entry onto a data-calibrated basis.
 *
 * Rule: per layer and kv head (share=head) or per layer pooled over its kv heads
 *   (share=group), the basis is the eigenvectors (descending eigenvalues, GSL
 *   gsl_eigen_symmv) of the uncentred second moment sum_j x_j x_j^T of the calibration
 *   sequences' rows: keys DE-ROTATED first (x = RoPE(pos)^-1 k, from the trace's /rope
 *   tables), values as stored. Each cached entry at position p is stored as its latent
 *   z = U_r^T x (r = rank_k for keys, rank_v for values) and reconstructed as U_r z; keys
 *   are projected in de-rotated space and re-rotated with RoPE(p) for attention.
 *   rank = 0 (default) or rank = head_dim leaves that side untouched (bit-exact): rank_k=0
 *   with rank_v>0 is the V-only form. latent_bits=8|4 quantises each token's latent,
 *   symmetric per token (one fp16 scale): an orthogonal projection with an int8 / int4
 *   latent; latent_bits=0 keeps it in fp16 (the plain orthogonal projection).
 * Calibration: the engine hands the K/V of calib_n sequences (--calib LIST, default the last
 *   sequences of the trace) and never evaluates them; rp_engine refuses --seqs/--calib
 *   overlaps. calib_n=0 uses every --calib sequence.
 * Bytes per entry: latent (r*2, or r*bits/8 + 2 for the scale), untouched sides D*2;
 *   bases: D*r*2 per projected side for the cache of one (sequence, kv head), divided by
 *   Hkv when shared by the layer's heads (the basis is amortised over the entries of that
 *   cache; a deployment that serves many sequences with one basis pays less).
 * Refuses: rank > head_dim; a trace with positional=rope but no /rope tables (the keys
 *   cannot be de-rotated).
 * Deviations from Palu: Palu decomposes the projection weights (SVD of W_k/W_v, optionally
 *   Fisher-weighted) and groups heads by concatenation (G-LRD); the trace has activations,
 *   not weights, so this is the data-PCA form (the "data SVD"); share=group pools
 *   the covariance instead of concatenating heads (per-head eviction can give heads
 *   different kept sets, so a joint latent would be ill-defined).
 * Reference: Chang et al. 2024, "Palu: Compressing KV-Cache with Low-Rank Projection"
 *   (arXiv 2407.21118), github.com/shadowpa0327/Palu.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_eigen.h>
#include <gsl/gsl_errno.h>
#include <gsl/gsl_matrix.h>

#include "attn.h"
#include "strategy.h"
#include "strategies/lowrank.h"

/* ---- core ------------------------------------------------------------------------------ */

void lowrank_rope(float *x, size_t R, const float *cos, const float *sin, int interleaved, int sign)
{
    float s = sign < 0 ? -1.0f : 1.0f;
    if (interleaved) {
        for (size_t i = 0; i + 1 < R; i += 2) {
            float a = x[i], b = x[i + 1];
            x[i] = a * cos[i] - s * b * sin[i];
            x[i + 1] = b * cos[i + 1] + s * a * sin[i + 1];
        }
    } else {
        size_t h = R / 2;
        for (size_t i = 0; i < h; i++) {
            float a = x[i], b = x[i + h];
            x[i] = a * cos[i] - s * b * sin[i];
            x[i + h] = b * cos[i + h] + s * a * sin[i + h];
        }
    }
}

int lowrank_basis(const double *cov, size_t D, double *U, double *eval)
{
    gsl_set_error_handler_off();
    gsl_matrix *A = gsl_matrix_alloc(D, D), *V = gsl_matrix_alloc(D, D);
    gsl_vector *w = gsl_vector_alloc(D);
    gsl_eigen_symmv_workspace *ws = gsl_eigen_symmv_alloc(D);
    int rc = -1;
    if (!A || !V || !w || !ws) goto done;
    for (size_t i = 0; i < D; i++)
        for (size_t j = 0; j < D; j++) gsl_matrix_set(A, i, j, cov[i * D + j]);
    if (gsl_eigen_symmv(A, w, V, ws) != GSL_SUCCESS) goto done;
    if (gsl_eigen_symmv_sort(w, V, GSL_EIGEN_SORT_VAL_DESC) != GSL_SUCCESS) goto done;
    for (size_t i = 0; i < D; i++) {
        if (eval) eval[i] = gsl_vector_get(w, i);
        for (size_t j = 0; j < D; j++) U[i * D + j] = gsl_matrix_get(V, i, j);
    }
    rc = 0;
done:
    if (ws) gsl_eigen_symmv_free(ws);
    if (w) gsl_vector_free(w);
    if (V) gsl_matrix_free(V);
    if (A) gsl_matrix_free(A);
    return rc;
}

void lowrank_project(float *x, size_t D, const double *U, size_t r, int bits)
{
    double z[4096];
    if (r > 4096) return;
    /* z[c] = sum over d in order of U[d][c] x[d]: d outer, so that the r sums advance
     * together over U's contiguous rows (each still one sum in d order) */
    for (size_t c = 0; c < r; c++) z[c] = 0;
    for (size_t d = 0; d < D; d++) {
        const double xd = x[d], *u = U + d * D;
        for (size_t c = 0; c < r; c++) z[c] += u[c] * xd;
    }
    for (size_t c = 0; c < r; c++) z[c] = (float)z[c];     /* the latent is stored (f32 here) */
    if (bits) {
        double amax = 0, qmax = (double)((1u << (bits - 1)) - 1u);
        for (size_t c = 0; c < r; c++) if (fabs(z[c]) > amax) amax = fabs(z[c]);
        float scale = (float)(amax / qmax);
        if (scale > 0)
            for (size_t c = 0; c < r; c++) {
                float q = nearbyintf((float)z[c] / scale);
                if (q > qmax) q = (float)qmax;
                if (q < -qmax) q = (float)-qmax;
                z[c] = q * scale;
            }
    }
    size_t d = 0;
    for (; d + 4 <= D; d += 4) {        /* four independent sums over c in order */
        const double *u0 = U + d * D, *u1 = u0 + D, *u2 = u1 + D, *u3 = u2 + D;
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (size_t c = 0; c < r; c++) {
            s0 += u0[c] * z[c]; s1 += u1[c] * z[c]; s2 += u2[c] * z[c]; s3 += u3[c] * z[c];
        }
        x[d] = (float)s0; x[d + 1] = (float)s1; x[d + 2] = (float)s2; x[d + 3] = (float)s3;
    }
    for (; d < D; d++) {
        double s = 0;
        for (size_t c = 0; c < r; c++) s += U[d * D + c] * z[c];
        x[d] = (float)s;
    }
}

/* ---- strategy ---------------------------------------------------------------------------- */

enum { SH_HEAD = 0, SH_GROUP = 1 };

typedef struct lowrank_cfg {
    size_t rank_k, rank_v, calib_n;
    int share, bits;
    size_t L, Hkv, D;           /* set by calibrate */
    double *Uk, *Uv;            /* [L][Hkv][D][D] (share=group: every head a copy) */
    unsigned char *done;        /* [L] calibrated */
} lowrank_cfg;

static const rp_param_def lowrank_params[] = {
    { "rank_k", RP_INT, "0", 0, 65536, NULL, "key rank (0 = keys untouched: V-only)" },
    { "rank_v", RP_INT, "0", 0, 65536, NULL, "value rank (0 = values untouched)" },
    { "share", RP_ENUM, "head", 0, 0, "head|group", "one basis per kv head, or pooled per layer" },
    { "latent_bits", RP_INT, "0", 0, 8, NULL, "0 (fp16 latent), 8 or 4" },
    { "calib_n", RP_INT, "1", 0, 1 << 20, NULL, "calibration sequences (0 = all of --calib)" },
};

static int lowrank_configure(const double *values, void **cfg, char *err, size_t errlen)
{
    *cfg = NULL;
    int bits = (int)values[3];
    if (bits != 0 && bits != 4 && bits != 8) {
        snprintf(err, errlen, "lowrank: latent_bits=%d must be 0, 4 or 8", bits);
        return -1;
    }
    if (values[0] == 0 && values[1] == 0) {
        snprintf(err, errlen, "lowrank: rank_k=0 and rank_v=0 compress nothing (give rank_k and/or rank_v)");
        return -1;
    }
    lowrank_cfg *c = calloc(1, sizeof *c);
    if (!c) { snprintf(err, errlen, "out of memory"); return -1; }
    c->rank_k = (size_t)values[0]; c->rank_v = (size_t)values[1];
    c->share = (int)values[2]; c->bits = bits; c->calib_n = (size_t)values[4];
    *cfg = c;
    return 0;
}

static void lowrank_free_cfg(void *cfg)
{
    lowrank_cfg *c = cfg;
    if (!c) return;
    free(c->Uk); free(c->Uv); free(c->done); free(c);
}

static size_t lowrank_calib_seqs(const void *cfg) { return ((const lowrank_cfg *)cfg)->calib_n; }

/* The basis of slot g of the calibrated layer (rp_calib_heads): the second moments of kv head g
 * (share=head) or of every kv head (share=group, g = 0), rows in (head, sequence, position)
 * order (attn_gram_acc); a side left untouched (rank 0 or head_dim) never reads its basis and
 * is not computed. 0 ok, -1 out of memory, -2 the eigen-decomposition failed. */
typedef struct lr_calib_arg { lowrank_cfg *c; const rp_calib_ctx *cc; int pk, pv; } lr_calib_arg;

static int lr_calib_head(void *arg, size_t g)
{
    const lr_calib_arg *a = arg;
    lowrank_cfg *c = a->c;
    const rp_calib_ctx *cc = a->cc;
    size_t D = cc->D, Hkv = cc->Hkv, nmax = 1;
    size_t h0 = c->share == SH_HEAD ? g : 0, h1 = c->share == SH_HEAD ? g + 1 : Hkv;
    for (size_t i = 0; i < cc->n_seq; i++) nmax = cc->n[i] > nmax ? cc->n[i] : nmax;
    double *ck = calloc(D * D, sizeof *ck), *cv = calloc(D * D, sizeof *cv);
    float *x = a->pk ? malloc(nmax * D * sizeof *x) : NULL;
    int rc = -1;
    if (!ck || !cv || (a->pk && !x)) goto done;
    for (size_t hh = h0; hh < h1; hh++)
        for (size_t i = 0; i < cc->n_seq; i++) {
            size_t n = cc->n[i];
            if (a->pk) {
                memcpy(x, cc->k[i] + hh * n * D, n * D * sizeof *x);
                if (cc->rope_cos)
                    for (size_t j = 0; j < n; j++)
                        lowrank_rope(x + j * D, cc->rotary_dim, cc->rope_cos + j * cc->rotary_dim,
                                     cc->rope_sin + j * cc->rotary_dim, cc->rope_interleaved, -1);
                if (attn_gram_acc(x, n, D, ck)) goto done;
            }
            if (a->pv && attn_gram_acc(cc->v[i] + hh * n * D, n, D, cv)) goto done;
        }
    rc = (a->pk && lowrank_basis(ck, D, c->Uk + (cc->layer * Hkv + g) * D * D, NULL)) ||
         (a->pv && lowrank_basis(cv, D, c->Uv + (cc->layer * Hkv + g) * D * D, NULL)) ? -2 : 0;
done:
    free(ck); free(cv); free(x);
    return rc;
}

static int lowrank_calibrate(void *cfg, const rp_calib_ctx *cc, char *err, size_t errlen)
{
    lowrank_cfg *c = cfg;
    size_t D = cc->D, Hkv = cc->Hkv, L = cc->n_layers;
    if (c->rank_k > D || c->rank_v > D) {
        snprintf(err, errlen, "lowrank: rank_k=%zu rank_v=%zu: a rank exceeds head_dim %zu", c->rank_k, c->rank_v, D);
        return -1;
    }
    if (!c->Uk) {
        c->L = L; c->Hkv = Hkv; c->D = D;
        c->Uk = calloc(L * Hkv * D * D, sizeof *c->Uk);
        c->Uv = calloc(L * Hkv * D * D, sizeof *c->Uv);
        c->done = calloc(L, 1);
        if (!c->Uk || !c->Uv || !c->done) { snprintf(err, errlen, "out of memory"); return -1; }
    }
    if (cc->layer >= c->L || c->Hkv != Hkv || c->D != D) { snprintf(err, errlen, "lowrank: calibration shape mismatch"); return -1; }
    lr_calib_arg a = { c, cc, c->rank_k && c->rank_k < D, c->rank_v && c->rank_v < D };
    size_t gf = 0;
    /* share=head: a basis per kv head, in parallel; share=group: one over every kv head, copied */
    int rc = rp_calib_heads(c->share == SH_HEAD ? Hkv : 1, lr_calib_head, &a, &gf);
    if (rc == -2)
        snprintf(err, errlen, "lowrank: GSL eigen-decomposition failed (layer %zu kv head %zu)", cc->layer, gf);
    else if (rc)
        snprintf(err, errlen, "out of memory");
    for (size_t g = 1; g < Hkv && !rc && c->share == SH_GROUP; g++) {
        memcpy(c->Uk + (cc->layer * Hkv + g) * D * D, c->Uk + cc->layer * Hkv * D * D, D * D * sizeof *c->Uk);
        memcpy(c->Uv + (cc->layer * Hkv + g) * D * D, c->Uv + cc->layer * Hkv * D * D, D * D * sizeof *c->Uv);
    }
    if (!rc) c->done[cc->layer] = 1;
    return rc;
}

double lowrank_side_bytes(size_t m, size_t D, size_t r, int bits)
{
    if (r == 0 || r == D) return (double)m * (double)D * 2.0;
    return bits ? (double)m * ((double)r * bits / 8.0) : (double)m * (double)r * 2.0;
}

double lowrank_side_scales(size_t m, size_t D, size_t r, int bits)
{
    return bits && r && r < D ? (double)m * 2.0 : 0.0;
}

/* Rows are projected one by one, so extending the cache from m_prev entries projects the new
 * rows only; encode = extend from 0. (lowrank is not time-dependent: the engine encodes each
 * cache once; asymkv's incremental encoding calls this for its ranked sides.) */
static int lowrank_encode_extend(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *c,
                                 size_t m_prev, char *err, size_t errlen)
{
    const lowrank_cfg *q = cfg;
    size_t D = c->D, m = c->n;
    (void)t;
    if (q->rank_k > D || q->rank_v > D) {
        snprintf(err, errlen, "lowrank: rank_k=%zu rank_v=%zu: a rank exceeds head_dim %zu", q->rank_k, q->rank_v, D);
        return -1;
    }
    size_t Hl = rp_ctx_layer_hkv(ctx), gl = ctx->g0 + g;   /* the layer's kv heads, g's number in it */
    if (!q->Uk || ctx->layer >= q->L || !q->done[ctx->layer] || q->D != D || q->Hkv != Hl || gl >= Hl) {
        snprintf(err, errlen, "lowrank: layer %zu was not calibrated (needs --calib sequences)", ctx->layer);
        return -1;
    }
    int rope = ctx->info && !strcmp(ctx->info->positional, "rope");
    if (rope && !ctx->rope_cos && q->rank_k && q->rank_k < D) {
        snprintf(err, errlen, "lowrank: the trace is positional=rope but has no /rope tables: keys cannot be de-rotated");
        return -1;
    }
    const double *Uk = q->Uk + (ctx->layer * q->Hkv + gl) * D * D, *Uv = q->Uv + (ctx->layer * q->Hkv + gl) * D * D;
    size_t R = ctx->rotary_dim ? ctx->rotary_dim : D;
    for (size_t e = m_prev; e < m; e++) {
        size_t p = (size_t)c->pos[e];
        if (q->rank_k && q->rank_k < D) {
            float *x = c->k + e * D;
            if (rope && ctx->rope_cos) lowrank_rope(x, R, ctx->rope_cos + p * R, ctx->rope_sin + p * R, ctx->rope_interleaved, -1);
            lowrank_project(x, D, Uk, q->rank_k, q->bits);
            if (rope && ctx->rope_cos) lowrank_rope(x, R, ctx->rope_cos + p * R, ctx->rope_sin + p * R, ctx->rope_interleaved, +1);
        }
        if (q->rank_v && q->rank_v < D) lowrank_project(c->v + e * D, D, Uv, q->rank_v, q->bits);
    }
    int pk = q->rank_k && q->rank_k < D, pv = q->rank_v && q->rank_v < D;
    c->bytes.payload = lowrank_side_bytes(m, D, q->rank_k, q->bits) + lowrank_side_bytes(m, D, q->rank_v, q->bits);
    c->bytes.scales = lowrank_side_scales(m, D, q->rank_k, q->bits) + lowrank_side_scales(m, D, q->rank_v, q->bits);
    c->bytes.bases = ((pk ? (double)D * q->rank_k * 2.0 : 0) + (pv ? (double)D * q->rank_v * 2.0 : 0)) /
                     (q->share == SH_GROUP ? (double)Hl : 1.0);
    c->modified = pk || pv;
    return 0;
}

static int lowrank_encode(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *c,
                          char *err, size_t errlen)
{
    return lowrank_encode_extend(cfg, ctx, g, t, c, 0, err, errlen);
}

const rp_strategy rp_strategy_lowrank = {
    .name = "lowrank",
    .summary = "Palu-like low-rank K (de-rotated) / V on a calibrated PCA basis, optional int8/int4 latent",
    .reference = "Chang et al. 2024, Palu (arXiv 2407.21118); github.com/shadowpa0327/Palu",
    .kind = RP_ENCODE,
    .protocols = RP_PREFILL | RP_ONLINE,
    .params = lowrank_params,
    .n_params = sizeof lowrank_params / sizeof lowrank_params[0],
    .configure = lowrank_configure,
    .free_cfg = lowrank_free_cfg,
    .calib_seqs = lowrank_calib_seqs,
    .calibrate = lowrank_calibrate,
    .calib_kv_only = 1,
    .encode = lowrank_encode,
    .encode_extend = lowrank_encode_extend,
    .head_separable = 1,     /* rows projected one by one on the basis of kv head g0 + g */
    .uses_rope = 1,          /* keys de-rotated for the basis (calibrate) and the projection (encode) */
};
