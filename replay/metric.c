/* Per-query-row metrics (metric.h). */
#include <math.h>
#include <string.h>

#include "attn.h"
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

/* Rows of plain entries sum in ML lanes: lane k adds the entries r = k mod ML in increasing r,
 * and the lanes are added as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)). The order
 * depends on the row alone, so the vector path below (one lane per vector element) and the
 * scalar one give the same bits. */
enum { ML = 8 };
typedef double mv8d __attribute__((vector_size(ML * sizeof(double))));
typedef float mv8f __attribute__((vector_size(ML * sizeof(float))));

static double lanes_sum(const double *l)
{
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* One entry into lane k of the four sums l[0..3] (dot, sq, rec, kl: metric_acc's terms). */
static inline void lane_acc(double l[4][ML], size_t k, double pe, double lq, double pj, double lp)
{
    l[0][k] += pe * pj; l[1][k] += pe * pe; l[2][k] += pj; l[3][k] += pe * (lq - lp);
}

static void lanes_finish(const double l[4][ML], metric_sums *m)
{
    m->dot = lanes_sum(l[0]); m->sq = lanes_sum(l[1]); m->rec = lanes_sum(l[2]); m->kl = lanes_sum(l[3]);
}

/* A row whose n entries are positions j0 .. j0 + n - 1, all inside the window, with fp32 q:
 * q, z [n] the entries', p, lg the full row's from j0. Whole lane groups as vectors. */
#define CONTIG_ROW_BODY                                                                            \
    mv8d dot = {0}, sq = {0}, rec = {0}, kl = {0};                                                 \
    size_t r = 0;                                                                                  \
    for (; r + ML <= n; r += ML) {                                                                 \
        mv8f qf, zf, lf;                                                                           \
        mv8d pj;                                                                                   \
        memcpy(&qf, q + r, sizeof qf); memcpy(&zf, z + r, sizeof zf);                              \
        memcpy(&lf, lg + r, sizeof lf); memcpy(&pj, p + r, sizeof pj);                             \
        const mv8d pe = __builtin_convertvector(qf, mv8d);                                         \
        const mv8d lq = __builtin_convertvector(zf, mv8d) - lc;                                    \
        const mv8d lp = __builtin_convertvector(lf, mv8d) - L0;                                    \
        dot += pe * pj; sq += pe * pe; rec += pj; kl += pe * (lq - lp);                            \
    }                                                                                              \
    double l[4][ML];                                                                               \
    memcpy(l[0], &dot, sizeof dot); memcpy(l[1], &sq, sizeof sq);                                  \
    memcpy(l[2], &rec, sizeof rec); memcpy(l[3], &kl, sizeof kl);                                  \
    for (; r < n; r++) lane_acc(l, r % ML, q[r], (double)z[r] - lc, p[r], (double)lg[r] - L0);     \
    lanes_finish(l, m);

static void contig_row(const float *q, const float *z, const double *p, const float *lg, size_t n, double lc,
                       double L0, metric_sums *m)
{
    CONTIG_ROW_BODY
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(ATTN_NO_AVX2)
__attribute__((target("avx512f")))
static void contig_row_avx512(const float *q, const float *z, const double *p, const float *lg, size_t n,
                              double lc, double L0, metric_sums *m)
{
    CONTIG_ROW_BODY
}
#define METRIC_AVX512 1
#endif

void rp_attn_row_metrics(const rp_row_full *f, const rp_row_comp *c, float *q_out, rp_row_metrics *m)
{
    metric_sums ma = { 0, 0, 0, 0 };
    size_t lo = f->lo, t = f->t, n = c->cnt;
    double lc = c->lse, L0 = f->lz;
    if (!c->mem_off && !c->ent && c->q32 && n && (size_t)c->pos[c->first] >= lo &&
        (size_t)c->pos[c->first + n - 1] <= t && (size_t)(c->pos[c->first + n - 1] - c->pos[c->first]) == n - 1) {
        /* plain entries at consecutive positions (ascending, so n positions spanning n - 1),
         * all inside the window: the full row's values are a slice */
        size_t j0 = (size_t)c->pos[c->first];
        if (q_out) memcpy(q_out + c->first, c->q32, n * sizeof *q_out);
#ifdef METRIC_AVX512
        if (attn_isa() == ATTN_ISA_AVX512)
            contig_row_avx512(c->q32, c->z, f->p + j0, f->logit + j0, n, lc, L0, &ma);
        else
#endif
            contig_row(c->q32, c->z, f->p + j0, f->logit + j0, n, lc, L0, &ma);
    } else if (!c->mem_off) {       /* plain entries: one member each, multiplicity 1 */
        double l[4][ML] = {{0}};
        for (size_t r = 0; r < n; r++) {
            size_t e = c->ent ? c->ent[r] : c->first + r, j = (size_t)c->pos[e];
            double lq = (double)c->z[r] - lc, pe = c->q32 ? (double)c->q32[r] : exp(lq);
            if (q_out) q_out[e] = (float)pe;
            if (j < lo || j > t) continue;
            lane_acc(l, r % ML, pe, lq, f->p[j], (double)f->logit[j] - L0);
        }
        lanes_finish(l, &ma);
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
