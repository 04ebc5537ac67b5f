/* Direct-path read-out (replay/readout.h): final norm, unembedding, comparisons, ECE.
 *
 * C d_model, V vocab, L layers, HD = H*D, N positions of a batch; NB rows per chunk.
 *
 *   logits [N][V] = norm(h) [N][C] @ W_U^T [C][V] (+ b_u, then final softcap)
 *   h [N][C]     += dO [N][HD] @ W_O[l] [HD][C]
 * Both products are one cblas_sgemm each (OpenBLAS); the engine's per-layer products of a
 * sweep use replay/gemm.h instead where the CPU has AVX-512F. The norm is computed per row in
 * double (mean / mean square), like the models do in fp32 or better. Scalar statistics
 * (lse, KL, NLL) accumulate in double in index order, so they are deterministic.
 */
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "readout.h"

#define NB 64   /* rows normalised per chunk */

/* OpenBLAS extras: weak, so another CBLAS links too ("CBLAS (unknown)"). */
extern char *openblas_get_config(void) __attribute__((weak));
extern char *openblas_get_corename(void) __attribute__((weak));
extern void openblas_set_num_threads(int) __attribute__((weak));
extern int blas_thread_shutdown_(void) __attribute__((weak));

static void set_err(kv_error *err, kv_status code, const char *path, const char *what,
                    const char *reason)
{
    if (!err) return;
    err->code = code;
    snprintf(err->msg, sizeof err->msg, "%.600s: %.100s: %.300s", path, what, reason);
}

/* a * b with overflow check (0 on overflow) */
static size_t mul_ok(size_t a, size_t b)
{
    if (a && b > (size_t)-1 / a) return 0;
    return a * b;
}

void readout_free(readout *r)
{
    if (!r) return;
    free(r->norm_w); free(r->norm_b); free(r->w_u); free(r->b_u); free(r->w_o);
    free(r);
}

static kv_status load(kv_trace *t, int with_wo, readout **out, kv_error *err);

kv_status readout_load(kv_trace *t, readout **out, kv_error *err) { return load(t, 1, out, err); }
kv_status readout_load_no_wo(kv_trace *t, readout **out, kv_error *err) { return load(t, 0, out, err); }

static kv_status load(kv_trace *t, int with_wo, readout **out, kv_error *err)
{
    *out = NULL;
    const kv_info *in = kv_trace_info(t);
    if (!in->has_readout) {
        set_err(err, KV_ERR_INVALID, in->path, "/readout",
                in->readout_unavailable[0] ? in->readout_unavailable : "the trace has no read-out");
        return KV_ERR_INVALID;
    }
    readout *r = calloc(1, sizeof *r);
    if (!r) goto nomem;
    r->C = in->d_model; r->V = in->vocab; r->L = in->n_layers;
    r->HD = mul_ok(in->n_heads, in->head_dim);
    r->rmsnorm = !strcmp(in->norm_type, "rmsnorm");
    r->eps = in->norm_eps;
    r->final_softcap = in->final_logit_softcap;
    size_t nvc = mul_ok(r->V, r->C), nwo = mul_ok(mul_ok(r->L, r->HD), r->C);
    if (!r->HD || !nvc || !nwo || nvc > (size_t)-1 / sizeof(float) || nwo > (size_t)-1 / sizeof(float)) {
        set_err(err, KV_ERR_FORMAT, in->path, "/readout", "read-out sizes overflow");
        readout_free(r);
        return KV_ERR_FORMAT;
    }
    r->norm_w = malloc(r->C * sizeof(float));
    r->w_u = malloc(nvc * sizeof(float));
    if (with_wo) r->w_o = malloc(nwo * sizeof(float));
    if (in->has_norm_bias) r->norm_b = malloc(r->C * sizeof(float));
    if (in->has_b_u) r->b_u = malloc(r->V * sizeof(float));
    if (!r->norm_w || !r->w_u || (with_wo && !r->w_o) || (in->has_norm_bias && !r->norm_b) ||
        (in->has_b_u && !r->b_u))
        goto nomem;
    kv_status st;
    if ((st = kv_trace_read_norm(t, r->norm_w, r->norm_b, err)) != KV_OK) goto fail;
    if ((st = kv_trace_read_w_u(t, r->w_u, err)) != KV_OK) goto fail;
    if (r->b_u && (st = kv_trace_read_b_u(t, r->b_u, err)) != KV_OK) goto fail;
    for (size_t l = 0; with_wo && l < r->L; l++)
        if ((st = kv_trace_read_w_o(t, l, r->w_o + l * r->HD * r->C, err)) != KV_OK) goto fail;
    *out = r;
    return KV_OK;
nomem:
    set_err(err, KV_ERR_NOMEM, in->path, "/readout", "out of memory loading the read-out weights");
    readout_free(r);
    return KV_ERR_NOMEM;
fail:
    readout_free(r);
    return st;
}

/* y [C] = norm(x [C]) */
static void norm_row(const readout *r, const float *x, float *y)
{
    size_t C = r->C;
    double mean = 0, ms = 0;
    if (!r->rmsnorm) {
        for (size_t c = 0; c < C; c++) mean += x[c];
        mean /= (double)C;
    }
    for (size_t c = 0; c < C; c++) { double d = x[c] - mean; ms += d * d; }
    double inv = 1.0 / sqrt(ms / (double)C + r->eps);
    for (size_t c = 0; c < C; c++) {
        double v = (x[c] - mean) * inv * r->norm_w[c];
        if (r->norm_b) v += r->norm_b[c];
        y[c] = (float)v;
    }
}

void readout_norm(const readout *r, const float *h, size_t N, float *xn)
{
    for (size_t i = 0; i < N; i++) norm_row(r, h + i * r->C, xn + i * r->C);
}

kv_status readout_logits_checked(const readout *r, const float *h, size_t N, float *logits)
{
    size_t C = r->C, V = r->V, nb = N < NB ? N : NB;
    float *xn = malloc((nb ? nb : 1) * C * sizeof *xn);          /* [nb][C] */
    if (!xn) return KV_ERR_NOMEM;
    for (size_t n0 = 0; n0 < N; n0 += NB) {
        size_t m = N - n0 < NB ? N - n0 : NB;
        for (size_t i = 0; i < m; i++) norm_row(r, h + (n0 + i) * C, xn + i * C);
        float *lg = logits + n0 * V;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)V, (int)C,
                    1.0f, xn, (int)C, r->w_u, (int)C, 0.0f, lg, (int)V);
        for (size_t i = 0; i < m; i++) {
            float *row = lg + i * V;
            if (r->b_u) for (size_t v = 0; v < V; v++) row[v] += r->b_u[v];
            if (r->final_softcap > 0) {
                double c = r->final_softcap;
                for (size_t v = 0; v < V; v++) row[v] = (float)(c * tanh(row[v] / c));
            }
        }
    }
    free(xn);
    return KV_OK;
}

void readout_logits(const readout *r, const float *h, size_t N, float *logits)
{
    if (readout_logits_checked(r, h, N, logits) != KV_OK)
        for (size_t i = 0; i < N * r->V; i++) logits[i] = NAN;   /* the caller's NaN guard fires */
}

void readout_add_delta_part(const readout *r, const float *w_rows, size_t K, const float *dO, size_t ldo, size_t N,
                            float *h)
{
    if (!N || !K) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)r->C, (int)K,
                1.0f, dO, (int)ldo, w_rows, (int)r->C, 1.0f, h, (int)r->C);
}

void readout_add_delta(const readout *r, size_t l, const float *dO, size_t N, float *h)
{
    readout_add_delta_part(r, r->w_o + l * r->HD * r->C, r->HD, dO, r->HD, N, h);
}

double readout_lse(const float *x, size_t V)
{
    double m = -INFINITY;
    for (size_t v = 0; v < V; v++) {
        if (x[v] != x[v]) return NAN;
        if (x[v] > m) m = x[v];
    }
    if (m == -INFINITY) return -INFINITY;
    if (m == INFINITY) return INFINITY;
    double s = 0;
    for (size_t v = 0; v < V; v++) s += exp(x[v] - m);
    return m + log(s);
}

static size_t argmax(const float *x, size_t V)
{
    size_t a = 0;
    for (size_t v = 1; v < V; v++) if (x[v] > x[a]) a = v;   /* ties: lowest id */
    return a;
}

void readout_topk(const float *x, size_t V, size_t k, int32_t *ids, float *vals)
{
    size_t have = 0;
    if (!k) return;
    for (size_t v = 0; v < V; v++) {
        float y = x[v];
        if (have == k && !(y > vals[k - 1])) continue;       /* equal: the lower id stays */
        size_t i = have < k ? have : k - 1;
        while (i > 0 && y > vals[i - 1]) {                   /* shift smaller ones down */
            vals[i] = vals[i - 1]; ids[i] = ids[i - 1]; i--;
        }
        vals[i] = y; ids[i] = (int32_t)v;
        if (have < k) have++;
    }
    for (; have < k; have++) { ids[have] = -1; vals[have] = -INFINITY; }
}

void readout_compare(const float *lf, const float *lc, size_t V, int32_t y, readout_cmp *out)
{
    double zf = readout_lse(lf, V), zc = readout_lse(lc, V);
    size_t af = argmax(lf, V), ac = argmax(lc, V);
    double kl = 0;
    for (size_t v = 0; v < V; v++) {
        double lpf = lf[v] - zf;
        double pf = exp(lpf);
        if (pf > 0) kl += pf * (lpf - (lc[v] - zc));
        else if (pf != pf) kl = NAN;
    }
    if (kl < 0) kl = 0;                      /* rounding below the true minimum 0 */
    out->logit_kl = kl;
    out->top1_agree = af == ac;
    out->conf_full = exp(lf[af] - zf);
    out->conf_comp = exp(lc[ac] - zc);
    if (y >= 0 && (size_t)y < V) {
        out->nll_full = zf - lf[y];
        out->nll_comp = zc - lc[y];
        out->correct_full = (size_t)y == af;
        out->correct_comp = (size_t)y == ac;
    }
}

/* bin b holds conf in [b/15, (b+1)/15) with the edges computed as b / 15.0; the last bin
 * is closed (conf = 1 -> bin 14); conf < 0 -> bin 0. NaN is not counted. */
static int ece_bin(double conf)
{
    int b = (int)floor(conf * ECE_BINS);
    if (b < 0) b = 0;
    if (b > ECE_BINS - 1) b = ECE_BINS - 1;
    if (b + 1 < ECE_BINS && conf >= (b + 1) / (double)ECE_BINS) b++;
    if (b > 0 && conf < b / (double)ECE_BINS) b--;
    return b;
}

void ece_add(ece_acc *e, double conf, int correct)
{
    if (conf != conf) return;
    int b = ece_bin(conf);
    e->count[b] += 1;
    e->conf[b] += conf;
    e->acc[b] += correct ? 1 : 0;
}

double ece_value(const ece_acc *e)
{
    double n = 0, s = 0;
    for (int b = 0; b < ECE_BINS; b++) { n += e->count[b]; s += fabs(e->acc[b] - e->conf[b]); }
    return n > 0 ? s / n : 0;
}

static char blas_info[256] = "CBLAS (unknown)";
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

static void blas_info_init(void)
{
    if (!openblas_get_config) return;
    const char *cfg = openblas_get_config(), *core = openblas_get_corename ? openblas_get_corename() : NULL;
    /* config starts "OpenBLAS 0.3.21 ..." : keep the first two words */
    char ver[64] = "";
    if (cfg) sscanf(cfg, "OpenBLAS %63s", ver);
    snprintf(blas_info, sizeof blas_info, "OpenBLAS %s %s", ver[0] ? ver : "?", core ? core : "?");
}

const char *rs_blas_info(void)
{
    pthread_once(&blas_once, blas_info_init);
    return blas_info;
}

const char *rs_blas_config(void)
{
    return openblas_get_config ? openblas_get_config() : "CBLAS (unknown)";
}

void rs_blas_set_threads(int n)
{
    if (openblas_set_num_threads) openblas_set_num_threads(n);
    /* OpenBLAS's pthread build starts its worker threads when the library loads, and each one
     * spins (sched_yield) for about 2^28 cycles before it sleeps: a core taken from the
     * OpenMP threads for the first ~0.15 s of every run. With one BLAS thread they are never
     * used, so they are stopped here (OpenBLAS starts them again if a later call asks for
     * more threads). */
    if (n == 1 && blas_thread_shutdown_) blas_thread_shutdown_();
}
