/* Needle metrics (needle.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvtrace.h"
#include "needle.h"

int rp_needles_alloc(rp_needles *ns, size_t n, size_t NC, size_t L, size_t H)
{
    memset(ns, 0, sizeof *ns);
    if (!n) return 0;
    ns->meta = calloc(n * NM_NF, sizeof *ns->meta);
    ns->nd = calloc(n * NC * ND_NF, sizeof *ns->nd);
    ns->nh = calloc(n * NC * L * H * NH_NF, sizeof *ns->nh);
    if (!ns->meta || !ns->nd || !ns->nh) { rp_needles_free(ns); return -1; }
    ns->n = n;
    return 0;
}

void rp_needles_free(rp_needles *ns)
{
    if (!ns) return;
    free(ns->meta); free(ns->nd); free(ns->nh);
    memset(ns, 0, sizeof *ns);
}

int rp_needles_init(rp_needles *ns, const int32_t *nd, size_t n_all, size_t s, size_t P, size_t ctx,
                    size_t NC, size_t L, size_t H, char *err, size_t errlen)
{
    size_t k = 0;
    memset(ns, 0, sizeof *ns);
    for (size_t i = 0; i < n_all; i++)
        k += (size_t)nd[KV_ND_SEQ * n_all + i] == s && (size_t)nd[KV_ND_ANSWER_START * n_all + i] >= P + 1;
    if (k > RP_MAX_NEEDLES_PER_SEQ) {
        snprintf(err, errlen, "sequence %zu has %zu needles, more than the %d measured per sequence", s, k,
                 RP_MAX_NEEDLES_PER_SEQ);
        return -1;
    }
    if (rp_needles_alloc(ns, k, NC, L, H)) { snprintf(err, errlen, "out of memory (needles)"); return -1; }
    k = 0;
    for (size_t i = 0; i < n_all && k < ns->n; i++) {
        if ((size_t)nd[KV_ND_SEQ * n_all + i] != s || (size_t)nd[KV_ND_ANSWER_START * n_all + i] < P + 1) continue;
        double *m = ns->meta + k++ * NM_NF;
        m[NM_INDEX] = (double)i;
        m[NM_START] = nd[KV_ND_START * n_all + i]; m[NM_END] = nd[KV_ND_END * n_all + i];
        m[NM_VS] = nd[KV_ND_VALUE_START * n_all + i]; m[NM_VE] = nd[KV_ND_VALUE_END * n_all + i];
        m[NM_AS] = nd[KV_ND_ANSWER_START * n_all + i]; m[NM_AE] = nd[KV_ND_ANSWER_END * n_all + i];
        m[NM_P] = (double)P; m[NM_CTX] = (double)ctx;
    }
    return 0;
}

/* Positions [a, b) intersected with the window [lo, t]: a count, for the full cache. */
static size_t span_in(size_t a, size_t b, size_t lo, size_t t)
{
    size_t x = a > lo ? a : lo, y = b < t + 1 ? b : t + 1;
    return y > x ? y - x : 0;
}

void rp_needles_row(rp_needles *ns, size_t c, size_t l, size_t h, size_t NC, size_t L, size_t H,
                    const rp_row_full *f, const rp_row_comp *cr)
{
    size_t t = f->t, lo = f->lo;
    for (size_t k = 0; k < ns->n; k++) {
        const double *m = ns->meta + k * NM_NF;
        size_t P = (size_t)m[NM_P], as = (size_t)m[NM_AS], ae = (size_t)m[NM_AE];
        if (t < P || t + 1 >= ae) continue;         /* neither a question nor an answer query */
        size_t a = (size_t)m[NM_START], b = (size_t)m[NM_END], vs = (size_t)m[NM_VS], ve = (size_t)m[NM_VE];
        int first = t + 1 == as, ans = t + 1 >= as;
        double mf = 0, mc = 0, ret = 0;
        for (size_t j = a > lo ? a : lo; j < b && j <= t; j++) mf += f->p[j];
        if (!cr) {
            mc = mf;
            if (first) ret = (double)span_in(vs, ve, lo, t);
        } else {
            for (size_t r = 0; r < cr->cnt; r++) {
                size_t e = cr->ent ? cr->ent[r] : cr->first + r;
                double pe = exp((double)cr->z[r] - cr->lse);
                if (!cr->mem_off) {
                    size_t j = (size_t)cr->pos[e];
                    if (j < lo || j > t) continue;
                    if (j >= a && j < b) mc += pe;
                    if (first && j >= vs && j < ve) ret += 1;
                    continue;
                }
                double share = pe / (double)cr->mult[e];
                for (int32_t q = cr->mem_off[e]; q < cr->mem_off[e + 1]; q++) {
                    size_t j = (size_t)cr->members[q];
                    if (j < lo || j > t) continue;
                    if (j >= a && j < b) mc += share;
                    if (first && j >= vs && j < ve) ret += 1;
                }
            }
        }
        double *acc = ns->nh + ((((k * NC + c) * L + l) * H + h) * NH_NF);
        if (first) acc[NH_RET] += ret;
        acc[ans ? NH_MAF : NH_MQF] += mf;
        acc[ans ? NH_MAC : NH_MQC] += mc;
    }
}

void rp_needles_readout(rp_needles *ns, size_t c, size_t NC, size_t t, const readout_cmp *cmp)
{
    for (size_t k = 0; k < ns->n; k++) {
        const double *m = ns->meta + k * NM_NF;
        if (t + 1 < (size_t)m[NM_AS] || t + 1 >= (size_t)m[NM_AE]) continue;
        double *acc = ns->nd + (k * NC + c) * ND_NF;
        acc[ND_TOP1_F] += cmp->correct_full;
        acc[ND_TOP1_C] += cmp->correct_comp;
    }
}
