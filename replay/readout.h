/* Direct-path read-out (docs/METHODS.md §7, §10): next-token distributions without the model.
 *
 *   logits_full = W_U norm(h) + b_u            (then final_logit_softcap when set)
 *   logits_comp = W_U norm(h + sum_l dO_l W_O_l) + b_u,   dO_l = (o~ - o) of layer l [H*D]
 *
 * C d_model, V vocab, H q-heads, D head_dim, L layers, N positions of a batch.
 * Matrix products go through CBLAS (OpenBLAS); rs_blas_info() says which kernel it chose.
 */
#ifndef KV_READOUT_H
#define KV_READOUT_H

#include <stddef.h>
#include <stdint.h>
#include "kvtrace.h"

typedef struct readout {
    size_t C, V, L, HD;        /* HD = H*D */
    int rmsnorm;               /* 1 rmsnorm, 0 layernorm */
    double eps, final_softcap;
    float *norm_w, *norm_b;    /* [C], [C] or NULL */
    float *w_u;                /* [V][C] */
    float *b_u;                /* [V] or NULL */
    float *w_o;                /* [L][HD][C], NULL from readout_load_no_wo */
} readout;

/* Loads everything above from a trace with /readout (KV_ERR_INVALID when it has none). */
kv_status readout_load(kv_trace *t, readout **out, kv_error *err);
/* The same without W_O (w_o = NULL): callers that work one layer at a time read W_O[l] with
 * kv_trace_read_w_o and use readout_add_delta_part, so memory does not grow with the layers. */
kv_status readout_load_no_wo(kv_trace *t, readout **out, kv_error *err);
void readout_free(readout *r);

/* logits [N][V] from residuals h [N][C] (norm, unembed, bias, softcap). */
void readout_logits(const readout *r, const float *h, size_t N, float *logits);

/* xn [N][C] = norm(h [N][C]) (the first step of readout_logits; for error bounds). */
void readout_norm(const readout *r, const float *h, size_t N, float *xn);

/* The same as readout_logits, returning KV_ERR_NOMEM when its [min(N,64)][C] scratch cannot be allocated
 * (readout_logits then fills logits with NaN, which the callers' NaN guard reports). */
kv_status readout_logits_checked(const readout *r, const float *h, size_t N, float *logits);

/* h [N][C] += dO [N][HD] @ W_O[l] — the residual perturbation of layer l. */
void readout_add_delta(const readout *r, size_t l, const float *dO, size_t N, float *h);
/* h [N][C] += dO [N][K] (row stride ldo) @ w_rows [K][C]: K consecutive rows of a layer's W_O
 * (held by the caller) against the same columns of the perturbation (the replay engine: one kv
 * head's query heads; K = HD, ldo = HD: the whole layer). */
void readout_add_delta_part(const readout *r, const float *w_rows, size_t K, const float *dO, size_t ldo, size_t N,
                            float *h);

/* Per-position comparison of a full and a compressed logits row with the true next
 * token y (y < 0 or y >= V: unknown; then nll_* and correct_* are left untouched — the
 * caller skips ECE for that position; conf_* are always set). KL in double, clamped at 0
 * (identical rows give exactly 0). */
typedef struct readout_cmp {
    double logit_kl;           /* KL(P_full || P_comp), nats */
    double nll_full, nll_comp; /* -log P(y) */
    int top1_agree;            /* argmax equal (ties: lowest id) */
    double conf_full, conf_comp;   /* max probability */
    int correct_full, correct_comp;/* argmax == y */
} readout_cmp;
void readout_compare(const float *lf, const float *lc, size_t V, int32_t y, readout_cmp *out);

/* logsumexp (double; -INFINITY for an all -inf row, NaN if any NaN) and top-k
 * (descending, ties by lower id; when k > V the tail is id -1, value -INFINITY). */
double readout_lse(const float *logits, size_t V);
void readout_topk(const float *logits, size_t V, size_t k, int32_t *ids, float *vals);

/* ECE with 15 equal-width bins (Guo et al. 2017): bin b holds conf in [b/15, (b+1)/15)
 * (edges b/15.0 in double), the last bin closed; NaN confidences are not counted.
 * ECE = sum_b |acc_b - conf_b| / sum_b count_b. */
#define ECE_BINS 15
typedef struct ece_acc { double count[ECE_BINS], conf[ECE_BINS], acc[ECE_BINS]; } ece_acc;
void ece_add(ece_acc *e, double conf, int correct);
double ece_value(const ece_acc *e);   /* 0 when empty */

/* "OpenBLAS <version> <core>" or "CBLAS (unknown)"; static string. */
const char *rs_blas_info(void);
/* openblas_get_config() verbatim (for provenance), or "CBLAS (unknown)". */
const char *rs_blas_config(void);
/* openblas_set_num_threads(n) when linked against OpenBLAS, else nothing. Callers that run
 * their own OpenMP threads should set 1: Debian's pthread OpenBLAS called from inside an
 * OpenMP region otherwise oversubscribes (and warns). With n = 1 it also stops the pthread
 * build's worker threads, which spin for their first ~0.1 s (blas_thread_shutdown_; OpenBLAS
 * starts them again if a later call asks for more threads). */
void rs_blas_set_threads(int n);

#endif /* KV_READOUT_H */
