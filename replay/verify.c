/* Trace verifications and attention statistics (replay/verify.h; tolerances argued there).
 *
 * S sequences, L layers, H q-heads, Hkv kv-heads, T tokens, n = seq_len[s] valid tokens,
 * D head_dim, C d_model, V vocab. (The attention-structure statistics are lib/attn_stats.c.)
 *
 * Work is read per (s, l) — q/attn_out [H][n][D], k/v [Hkv][n][D] — then the heads run in
 * parallel (OpenMP), each writing only its own slots; results are reduced serially in head
 * order, so they do not depend on the thread count. HDF5 reads stay on one thread.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "readout.h"
#include "shared.h"
#include "verify.h"

static kv_status fail_nomem(const kv_info *in, kv_error *err, const char *what)
{
    if (err) {
        err->code = KV_ERR_NOMEM;
        snprintf(err->msg, sizeof err->msg, "%.600s: %.200s: out of memory", in->path, what);
    }
    return KV_ERR_NOMEM;
}

static attn_params layer_params(const kv_info *in, size_t l)
{
    attn_params p;
    p.scale = (float)in->attn_scale;
    p.softcap = (float)in->attn_softcap;
    p.window = in->layer_window ? in->layer_window[l] : in->sliding_window;
    return p;
}

/* Reads rows [0, n) of every head of one tensor of (s, l) into dst [nh][n][D]. */
static kv_status read_heads(kv_trace *t, kv_tensor which, size_t s, size_t l, size_t nh,
                            size_t n, size_t D, float *dst, kv_error *err)
{
    for (size_t h = 0; h < nh; h++) {
        kv_status st = kv_trace_read_rows(t, which, s, l, h, 0, n, dst + h * n * D, err);
        if (st != KV_OK) return st;
    }
    return KV_OK;
}

/* ---- attn_out ------------------------------------------------------------------------- */

typedef struct head_cmp {
    size_t n_bad;
    double max_abs, worst;
    size_t wt, wd;
    float wx, wref;
} head_cmp;

/* The part of the attn_out tolerance that f16 storage of q, k and v explains, per
 * element d of row t (first order). The model computed from unrounded q, k, v; we
 * recompute from their f16 roundings (relative error u = 2^-11 each), so each logit moves
 * by at most |ds_j| <= 2u * scale * sum_d |q_d k_jd| =: delta_j (softcapping only shrinks
 * it), the probabilities by dp_j = p_j (ds_j - sum_k p_k ds_k), and the output by
 * |do_d| <= 2 max_j delta_j * sum_j p_j |v_jd - o_d| + u * sum_j p_j |v_jd|.
 * A factor 2 covers second-order terms. Trained models have sharp rows with large
 * |q||k|, where this term, not the fixed rtol, dominates. pr [n], ext [D] are scratch. */
static void row_extra_tol(const float *q, const float *k, const float *v, const float *o,
                          float lse, size_t t, size_t D, const attn_params *p,
                          double *pr, double *ext)
{
    const double u = 1.0 / 2048.0;
    const float *qt = q + t * D;
    size_t lo = attn_lo(t, p->window);
    double dmax = 0;
    for (size_t j = lo; j <= t; j++) {
        double a = 0;
        for (size_t d = 0; d < D; d++) a += fabs((double)qt[d] * k[j * D + d]);
        a *= 2 * u * p->scale;
        if (a > dmax) dmax = a;
        pr[j] = exp((double)attn_logit(qt, k + j * D, D, p) - lse);
    }
    for (size_t d = 0; d < D; d++) {
        double spread = 0, mag = 0;
        for (size_t j = lo; j <= t; j++) {
            spread += pr[j] * fabs((double)v[j * D + d] - o[t * D + d]);
            mag += pr[j] * fabs((double)v[j * D + d]);
        }
        ext[d] = 2 * (2 * dmax * spread + u * mag);
    }
}

kv_status verify_attn_out(kv_trace *t, double atol, double rtol, size_t max_seq,
                          verify_attn_result *res, kv_error *err)
{
    const kv_info *in = kv_trace_info(t);
    memset(res, 0, sizeof *res);
    res->atol = atol; res->rtol = rtol;
    res->present = in->has_attn_out;
    if (!in->has_attn_out) return KV_OK;
    size_t S = in->n_seq, T = in->n_tok, L = in->n_layers, H = in->n_heads, Hkv = in->n_kv_heads;
    size_t D = in->head_dim, G = H / Hkv;
    if (max_seq && max_seq < S) S = max_seq;
    kv_status st = KV_OK;
    int32_t *seq_len = malloc(in->n_seq * sizeof *seq_len);
    float *q = malloc(H * T * D * sizeof *q), *ao = malloc(H * T * D * sizeof *ao);
    float *o = malloc(H * T * D * sizeof *o), *lse = malloc(H * T * sizeof *lse);
    float *k = malloc(Hkv * T * D * sizeof *k), *v = malloc(Hkv * T * D * sizeof *v);
    head_cmp *hc = malloc(H * sizeof *hc);
    if (!seq_len || !q || !ao || !o || !lse || !k || !v || !hc) { st = fail_nomem(in, err, "verify attn_out"); goto done; }
    if ((st = kv_trace_read_seq_len(t, seq_len, err)) != KV_OK) goto done;

    res->worst_ratio = 0;
    for (size_t s = 0; s < S; s++) {
        size_t n = (size_t)seq_len[s];
        for (size_t l = 0; l < L; l++) {
            if ((st = read_heads(t, KV_Q, s, l, H, n, D, q, err)) != KV_OK) goto done;
            if ((st = read_heads(t, KV_K, s, l, Hkv, n, D, k, err)) != KV_OK) goto done;
            if ((st = read_heads(t, KV_V, s, l, Hkv, n, D, v, err)) != KV_OK) goto done;
            if ((st = read_heads(t, KV_ATTN_OUT, s, l, H, n, D, ao, err)) != KV_OK) goto done;
            attn_params p = layer_params(in, l);
#ifdef _OPENMP
            #pragma omp parallel for schedule(dynamic, 1)
#endif
            for (size_t h = 0; h < H; h++) {
                size_t g = h / G, off = h * n * D;
                attn_full_rows(q + off, k + g * n * D, v + g * n * D, n, D, 0, n, &p,
                               lse + h * n, o + off, NULL);
                head_cmp c = {0, 0, -1, 0, 0, 0, 0};
                double *pr = malloc(n * sizeof *pr), *ext = malloc(D * sizeof *ext);
                if (!pr || !ext) { free(pr); free(ext); c.n_bad = SIZE_MAX; hc[h] = c; continue; }
                for (size_t i = 0; i < n * D; i++) {
                    if (i % D == 0) row_extra_tol(q + off, k + g * n * D, v + g * n * D, o + off,
                                                  lse[h * n + i / D], i / D, D, &p, pr, ext);
                    double x = o[off + i], r = ao[off + i], e = fabs(x - r);
                    double ratio = e / (atol + rtol * fabs(r) + ext[i % D]);
                    if (!(ratio == ratio)) ratio = INFINITY;        /* NaN on either side */
                    if (ratio > 1) c.n_bad++;
                    if (e > c.max_abs) c.max_abs = e;
                    if (ratio > c.worst) {
                        c.worst = ratio; c.wt = i / D; c.wd = i % D;
                        c.wx = o[off + i]; c.wref = ao[off + i];
                    }
                }
                free(pr); free(ext);
                hc[h] = c;
            }
            for (size_t h = 0; h < H; h++) {
                if (hc[h].n_bad == SIZE_MAX) { st = fail_nomem(in, err, "verify attn_out"); goto done; }
                res->n_slices++;
                res->n_elems += n * D;
                res->n_bad += hc[h].n_bad;
                if (hc[h].max_abs > res->max_abs_err) res->max_abs_err = hc[h].max_abs;
                if (hc[h].worst > res->worst_ratio || (res->n_slices == 1)) {
                    res->worst_ratio = hc[h].worst;
                    res->w_s = s; res->w_l = l; res->w_h = h; res->w_t = hc[h].wt; res->w_d = hc[h].wd;
                    res->w_x = hc[h].wx; res->w_ref = hc[h].wref;
                }
            }
        }
        res->n_seq++;
    }
    res->pass = res->n_bad == 0;
done:
    free(seq_len); free(q); free(ao); free(o); free(lse); free(k); free(v); free(hc);
    return st;
}

double verify_compute_u(const kv_info *in)
{
    if (!strcmp(in->compute_dtype, "bfloat16")) return ldexp(1.0, -8);
    if (!strcmp(in->compute_dtype, "float16")) return ldexp(1.0, -11);
    return 0;
}

/* ---- read-out ------------------------------------------------------------------------- */

#define NBL 32      /* positions per logits batch */

kv_status verify_readout(kv_trace *t, double atol, double rtol, size_t max_seq,
                         verify_readout_result *res, kv_error *err)
{
    const kv_info *in = kv_trace_info(t);
    memset(res, 0, sizeof *res);
    res->atol = atol; res->rtol = rtol;
    res->present = in->has_readout;
    if (!in->has_readout) return KV_OK;
    size_t S = in->n_seq, T = in->n_tok, C = in->d_model, V = in->vocab;
    if (max_seq && max_seq < S) S = max_seq;
    kv_status st;
    readout *r = NULL;
    int32_t *seq_len = NULL, *ref_ids = NULL;
    float *hid = NULL, *xn = NULL, *lg = NULL, *ref_lse = NULL, *ref_top = NULL;
    double *wnorm = NULL;
    if ((st = readout_load(t, &r, err)) != KV_OK) return st;
    seq_len = malloc(in->n_seq * sizeof *seq_len);
    hid = malloc(T * C * sizeof *hid);
    xn = malloc(NBL * C * sizeof *xn);
    lg = malloc(NBL * V * sizeof *lg);
    ref_lse = malloc(T * sizeof *ref_lse);
    ref_ids = malloc(T * KV_TOPK * sizeof *ref_ids);
    ref_top = malloc(T * KV_TOPK * sizeof *ref_top);
    wnorm = malloc(V * sizeof *wnorm);
    if (!seq_len || !hid || !xn || !lg || !ref_lse || !ref_ids || !ref_top || !wnorm) {
        st = fail_nomem(in, err, "verify read-out");
        goto done;
    }
    if ((st = kv_trace_read_seq_len(t, seq_len, err)) != KV_OK) goto done;
    for (size_t v = 0; v < V; v++) {                 /* ||W_U[v]||_2 */
        double a = 0;
        for (size_t c = 0; c < C; c++) a += (double)r->w_u[v * C + c] * r->w_u[v * C + c];
        wnorm[v] = sqrt(a);
    }
    res->worst_lse_ratio = res->worst_top_ratio = -1;
    for (size_t s = 0; s < S; s++) {
        size_t n = (size_t)seq_len[s];
        if ((st = kv_trace_read_hidden(t, s, hid, err)) != KV_OK) goto done;
        if ((st = kv_trace_read_ref(t, s, ref_lse, ref_ids, ref_top, err)) != KV_OK) goto done;
        for (size_t t0 = 0; t0 < n; t0 += NBL) {
            size_t m = n - t0 < NBL ? n - t0 : NBL;
            readout_norm(r, hid + t0 * C, m, xn);
            if ((st = readout_logits_checked(r, hid + t0 * C, m, lg)) != KV_OK) {
                st = fail_nomem(in, err, "verify read-out");
                goto done;
            }
            for (size_t i = 0; i < m; i++) {
                size_t tt = t0 + i;
                const float *z = lg + i * V;
                double xnorm = 0;
                for (size_t c = 0; c < C; c++) xnorm += (double)xn[i * C + c] * xn[i * C + c];
                xnorm = sqrt(xnorm);
#define TOL(v) (atol + rtol * (wnorm[v] * xnorm + (r->b_u ? fabs(r->b_u[v]) : 0)))
                /* lse, tolerance p-weighted */
                double lse = readout_lse(z, V), tl = 0;
                for (size_t v = 0; v < V; v++) tl += exp(z[v] - lse) * TOL(v);
                double e = fabs(lse - ref_lse[tt]), ratio = e / tl;
                if (!(ratio == ratio)) ratio = INFINITY;
                if (ratio > 1) res->n_lse_bad++;
                if (e > res->max_lse_err) res->max_lse_err = e;
                if (ratio > res->worst_lse_ratio) {
                    res->worst_lse_ratio = ratio; res->lse_s = s; res->lse_t = tt;
                    res->lse_x = lse; res->lse_ref = ref_lse[tt];
                }
                /* top-8: the logit of each reference id, and the value at each rank */
                int32_t ids[KV_TOPK];
                float vals[KV_TOPK];
                readout_topk(z, V, KV_TOPK, ids, vals);
                int bad = 0;
                for (size_t k = 0; k < KV_TOPK; k++) {
                    int32_t rid = ref_ids[tt * KV_TOPK + k];
                    double rv = ref_top[tt * KV_TOPK + k];
                    double worst_here = 0, err_here = 0, x_here = 0;
                    if (rid < 0 || (size_t)rid >= V) {
                        worst_here = INFINITY;
                    } else {
                        double e1 = fabs(z[rid] - rv), r1 = e1 / TOL(rid);
                        double t2 = ids[k] >= 0 ? fmax(TOL(rid), TOL(ids[k])) : TOL(rid);
                        double e2 = fabs(vals[k] - rv), r2 = e2 / t2;
                        if (!(r1 == r1)) r1 = INFINITY;
                        if (!(r2 == r2)) r2 = INFINITY;
                        worst_here = r1 > r2 ? r1 : r2;
                        err_here = e1 > e2 ? e1 : e2;
                        x_here = r1 >= r2 ? z[rid] : vals[k];
                        if (ids[k] != rid) res->n_swaps++;
                    }
                    if (worst_here > 1) bad = 1;
                    if (err_here > res->max_top_err) res->max_top_err = err_here;
                    if (worst_here > res->worst_top_ratio) {
                        res->worst_top_ratio = worst_here; res->top_s = s; res->top_t = tt;
                        res->top_rank = k; res->top_id_x = ids[k]; res->top_id_ref = rid;
                        res->top_x = x_here; res->top_ref = rv;
                    }
                }
#undef TOL
                res->n_top_bad += (size_t)bad;
                res->n_pos++;
            }
        }
        res->n_seq++;
    }
    if (res->worst_lse_ratio < 0) res->worst_lse_ratio = 0;
    if (res->worst_top_ratio < 0) res->worst_top_ratio = 0;
    res->pass = res->n_lse_bad == 0 && res->n_top_bad == 0;
    st = KV_OK;
done:
    readout_free(r);
    free(seq_len); free(hid); free(xn); free(lg); free(ref_lse); free(ref_ids); free(ref_top);
    free(wnorm);
    return st;
}

/* ---- /prompt_scores --------------------------------------------------------------------- */

typedef struct ps_cmp { size_t n_bad; double worst; int ent; size_t wt; double wx, wref; int nomem; } ps_cmp;

/* One head: the replay's column sums over rows [0, n) and row entropies against the stored. */
static ps_cmp ps_head(const float *q, const float *k, size_t n, size_t D, const attn_params *p, const float *cs,
                      const float *en)
{
    ps_cmp c = {0};
    double *x = malloc((n ? n : 1) * sizeof *x), *e = malloc((n ? n : 1) * sizeof *e);
    if (!x || !e || rp_prompt_colsum(q, k, NULL, n, D, p, 0, n, NULL, n, x, e)) {
        free(x); free(e);
        c.nomem = 1;
        return c;
    }
    for (size_t i = 0; i < 2 * n; i++) {
        int ent = i >= n;
        size_t t = ent ? i - n : i;
        double a = ent ? e[t] : x[t], r = ent ? en[t] : cs[t];
        double tol = ent ? VERIFY_PS_ENT_ATOL : VERIFY_PS_ATOL + VERIFY_PS_RTOL * fabs(r);
        double ratio = fabs(a - r) / tol;
        if (!(ratio == ratio)) ratio = INFINITY;
        if (ratio > 1) c.n_bad++;
        if (ratio > c.worst) { c.worst = ratio; c.ent = ent; c.wt = t; c.wx = a; c.wref = r; }
    }
    free(x); free(e);
    return c;
}

kv_status verify_prompt_scores(kv_trace *t, size_t max_seq, verify_ps_result *res, kv_error *err)
{
    const kv_info *in = kv_trace_info(t);
    memset(res, 0, sizeof *res);
    res->present = in->has_prompt_scores;
    if (!in->has_prompt_scores) return KV_OK;
    size_t S = in->n_seq, T = in->n_tok, L = in->n_layers, H = in->n_heads, Hkv = in->n_kv_heads;
    size_t D = in->head_dim, G = H / Hkv;
    if (max_seq && max_seq < S) S = max_seq;
    kv_status st = KV_OK;
    int32_t *seq_len = malloc(in->n_seq * sizeof *seq_len);
    float *q = malloc(H * T * D * sizeof *q), *k = malloc(Hkv * T * D * sizeof *k);
    float *cs = malloc(H * T * sizeof *cs), *en = malloc(H * T * sizeof *en);
    ps_cmp *hc = malloc(H * sizeof *hc);
    if (!seq_len || !q || !k || !cs || !en || !hc) { st = fail_nomem(in, err, "verify prompt_scores"); goto done; }
    if ((st = kv_trace_read_seq_len(t, seq_len, err)) != KV_OK) goto done;
    for (size_t s = 0; s < S; s++) {
        size_t n = (size_t)seq_len[s];
        for (size_t l = 0; l < L; l++) {
            size_t a[4] = { l, s, 0, 0 }, c4[4] = { 1, 1, H, n };    /* every head: [H][n] */
            if ((st = read_heads(t, KV_Q, s, l, H, n, D, q, err)) != KV_OK) goto done;
            if ((st = read_heads(t, KV_K, s, l, Hkv, n, D, k, err)) != KV_OK) goto done;
            if ((st = kv_trace_read_f32(t, "/prompt_scores/colsum", 4, a, c4, cs, err)) != KV_OK ||
                (st = kv_trace_read_f32(t, "/prompt_scores/entropy", 4, a, c4, en, err)) != KV_OK)
                goto done;
            attn_params p = layer_params(in, l);
#ifdef _OPENMP
            #pragma omp parallel for schedule(dynamic, 1)
#endif
            for (size_t h = 0; h < H; h++)
                hc[h] = ps_head(q + h * n * D, k + (h / G) * n * D, n, D, &p, cs + h * n, en + h * n);
            for (size_t h = 0; h < H; h++) {        /* head order: independent of the threads */
                if (hc[h].nomem) { st = fail_nomem(in, err, "verify prompt_scores"); goto done; }
                res->n_slices++;
                res->n_elems += 2 * n;
                res->n_bad += hc[h].n_bad;
                if (hc[h].worst > res->worst_ratio) {
                    res->worst_ratio = hc[h].worst; res->w_ent = hc[h].ent;
                    res->w_s = s; res->w_l = l; res->w_h = h; res->w_t = hc[h].wt;
                    res->w_x = hc[h].wx; res->w_ref = hc[h].wref;
                }
            }
        }
    }
    res->pass = res->n_bad == 0;
done:
    free(seq_len); free(q); free(k); free(cs); free(en); free(hc);
    return st;
}
