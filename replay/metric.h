/* Per-query-row metrics (docs/METHODS.md §6) as pure functions of plain arrays: the engine calls them
 * for every (configuration, query head, evaluated position) whose visible cache differs from
 * the full one; tests/unit/test_metric.c checks them against the naive formulas.
 *
 * n positions of the full cache, N entries of the compressed cache, cnt of them visible to
 * the query, D head_dim. A merged entry e of multiplicity m_e stands for its members; its
 * probability q_e is split equally among them: q~_j = q_e / m_e.
 *
 *   attn_cos    sum_j p_j q~_j / sqrt(sum_j p_j^2 * sum_j q~_j^2)  (0 when either is 0)
 *   attn_kl     sum_j q~_j (log q~_j - log p_j), clamped at 0
 *   mass_recall sum of p_j over the members j of the visible entries
 *   out_cos     cos(o, o~) (both zero: 1, one zero: 0)
 *   out_rel_err ||o - o~|| / ||o|| (||o|| = 0: 0 when o~ = 0, else 1)
 * Sums over j cover only members inside the query's window [lo, t] (a member outside it
 * has no full probability: its share of the mass is lost). Accumulation in double, in
 * entry order then member order (fixed: results are bit-reproducible).
 */
#ifndef KV_METRIC_H
#define KV_METRIC_H

#include <stddef.h>
#include <stdint.h>

/* The full cache's row for query position t. */
typedef struct rp_row_full {
    size_t lo, t;           /* the window: positions [lo, t] */
    const double *p;        /* [n] probabilities, read on [lo, t] (they sum to 1 there) */
    const float *logit;     /* [n] the kernel's logits: log p_j = logit[j] - lz */
    double lz;              /* log partition of the row */
    double p2;              /* sum of p_j^2 over [lo, t] */
} rp_row_full;

/* The compressed cache's row: its visible entries and their logits. */
typedef struct rp_row_comp {
    size_t cnt;             /* visible entries */
    const size_t *ent;      /* [cnt] entry index of visible r, or NULL: entry first + r */
    size_t first;
    const float *z;         /* [cnt] logits of the visible entries (merge bias log m_e included) */
    double lse;             /* their log-sum-exp: q_e = exp(z_r - lse), log q_e = z_r - lse */
    const float *q32;       /* [cnt] fp32 q_e (the kernels' vectorised exp, plain entries
                               only), or NULL: q_e = exp in double */
    const int32_t *pos;     /* [N] representative position of each entry */
    const int32_t *mult;    /* [N] multiplicities (read only with member lists) */
    const int32_t *mem_off; /* [N + 1] member list offsets, or NULL: entry e is position pos[e] */
    const int32_t *members;
} rp_row_comp;

typedef struct rp_row_metrics { double attn_cos, attn_kl, mass_recall; } rp_row_metrics;

/* Attention metrics of one row. q_out: NULL, or [N] receiving (float)q_e at each visible
 * entry's index (online eviction reads them). */
void rp_attn_row_metrics(const rp_row_full *f, const rp_row_comp *c, float *q_out, rp_row_metrics *m);

/* Output metrics of one row: o [D] with the full cache, oc [D] with the compressed one. */
void rp_out_row_metrics(const float *o, const float *oc, size_t D, double *out_cos, double *out_rel_err);

#endif /* KV_METRIC_H */
