/* Per-query-row metrics (metric.h). */
#include <math.h>

#include "metric.h"

/* Sums over the full-cache members a compressed row covers: share = the compressed
 * probability per member, lq its log, pj and lp the full probability and log-probability. */
typedef struct metric_sums { double dot, sq, rec, kl; } metric_sums;

static inline void metric_acc(metric_sums *m, double share, double lq, double pj, double lp)
{
    m->dot += share * pj;
    m->sq += share * share;
    m->rec += pj;
    m->kl += share * (lq - lp);
}

void rp_attn_row_metrics(const rp_row_full *f, const rp_row_comp *c, float *q_out, rp_row_metrics *m)
{
    metric_sums ma = { 0, 0, 0, 0 };
    size_t lo = f->lo, t = f->t;
    double lc = c->lse, L0 = f->lz;
    if (!c->mem_off) {              /* plain entries: one member each, multiplicity 1 */
        for (size_t r = 0; r < c->cnt; r++) {
            size_t e = c->ent ? c->ent[r] : c->first + r, j = (size_t)c->pos[e];
            double lq = (double)c->z[r] - lc, pe = c->q32 ? (double)c->q32[r] : exp(lq);
            if (q_out) q_out[e] = (float)pe;
            if (j < lo || j > t) continue;
            metric_acc(&ma, pe, lq, f->p[j], (double)f->logit[j] - L0);
        }
    } else {
        for (size_t r = 0; r < c->cnt; r++) {
            size_t e = c->ent ? c->ent[r] : c->first + r;
            double pe = exp((double)c->z[r] - lc);
            if (q_out) q_out[e] = (float)pe;
            double mu = c->mult[e], share = pe / mu, lq = (double)c->z[r] - lc - log(mu);
            size_t a = (size_t)c->mem_off[e];
            for (size_t k = 0; k < (size_t)c->mult[e]; k++) {
                size_t j = (size_t)c->members[a + k];
                if (j < lo || j > t) continue;
                metric_acc(&ma, share, lq, f->p[j], (double)f->logit[j] - L0);
            }
        }
    }
    m->attn_kl = ma.kl < 0 ? 0 : ma.kl;
    m->mass_recall = ma.rec;
    m->attn_cos = (f->p2 > 0 && ma.sq > 0) ? ma.dot / sqrt(f->p2 * ma.sq) : 0.0;
}

void rp_out_row_metrics(const float *o, const float *oc, size_t D, double *out_cos, double *out_rel_err)
{
    double oo = 0, cc = 0, oc2 = 0, dd = 0;
    for (size_t d = 0; d < D; d++) {
        double a = o[d], b = oc[d];
        oo += a * a; cc += b * b; oc2 += a * b; dd += (a - b) * (a - b);
    }
    if (oo == 0 && cc == 0) *out_cos = 1;
    else if (oo == 0 || cc == 0) *out_cos = 0;
    else *out_cos = oc2 / sqrt(oo * cc);
    *out_rel_err = oo > 0 ? sqrt(dd / oo) : (cc == 0 ? 0 : 1);
}
