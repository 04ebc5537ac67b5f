/* Needle metrics (replay/RESULTS.md, needles.csv): for traces with /needles, what each
 * configuration does to the planted needle — is it still in the cache, does attention still
 * find it, does the read-out proxy still produce the answer.
 *
 * Needle k of sequence s (traces/SCHEMA.md): the needle at context positions [start, end),
 * the copied part at [vs, ve), the answer tokens at [as, ae); P the run's split. The queries:
 *   answer queries    t in [as - 1, ae - 1): the positions that predict the answer tokens
 *                     (teacher-forced), the first of them predicts the first answer token;
 *   question queries  t in [P, as - 1): the evaluated positions before them.
 * A needle is measured when as - 1 >= P (every answer query evaluated); others are left out.
 *
 * Per (needle, configuration, layer, query head) sums (NH_*):
 *   NH_RET  value positions j in [vs, ve) that the entries visible to the first answer query
 *           (t = as - 1) stand for (a merged entry stands for its members; positions outside
 *           the query's window are not held) — retained_frac = NH_RET / (ve - vs);
 *   NH_MQF, NH_MQC  sum over question queries of the attention mass on [start, end), full /
 *           compressed cache (a merged entry's probability split equally among its members,
 *           as for attn_cos: metric.h);
 *   NH_MAF, NH_MAC  the same over the answer queries.
 * Per (needle, configuration) with read-out (ND_*): answer tokens whose read-out top-1 equals
 * the true token, full and compressed (the direct-path proxy, teacher-forced).
 * Every sum lives in a slot of one (layer) work item or one configuration, reduced nowhere
 * else: results do not depend on the thread count.
 */
#ifndef KV_NEEDLE_H
#define KV_NEEDLE_H

#include <stddef.h>
#include <stdint.h>

#include "metric.h"
#include "readout.h"

enum { NH_RET, NH_MQF, NH_MQC, NH_MAF, NH_MAC, NH_NF };
enum { ND_TOP1_F, ND_TOP1_C, ND_NF };
/* Per needle, what the writer needs without the trace (kept in parts): its index in
 * /needles, the positions, the split P and the sequence's context length (/prefill_len). */
enum { NM_INDEX, NM_START, NM_END, NM_VS, NM_VE, NM_AS, NM_AE, NM_P, NM_CTX, NM_NF };

/* At most this many needles of one sequence are measured (a part's size bound). */
#define RP_MAX_NEEDLES_PER_SEQ 256

/* The measured needles of one sequence and their accumulators (owned by rp_seq_result). */
typedef struct rp_needles {
    size_t n;                   /* measured needles */
    double *meta;               /* [n][NM_NF] */
    double *nd;                 /* [n][NC][ND_NF] */
    double *nh;                 /* [n][NC][L][H][NH_NF] */
} rp_needles;

/* The measured needles of sequence s among the trace's (nd: int32 [KV_NEEDLE_NF][N_all], as
 * kv_trace_read_needles gives them), split P, context length ctx; accumulators zeroed.
 * 0, or -1 with err (out of memory, more than RP_MAX_NEEDLES_PER_SEQ). */
int rp_needles_init(rp_needles *ns, const int32_t *nd, size_t n_all, size_t s, size_t P, size_t ctx,
                    size_t NC, size_t L, size_t H, char *err, size_t errlen);
/* Allocate for n needles (parts); meta left zero. 0 or -1. */
int rp_needles_alloc(rp_needles *ns, size_t n, size_t NC, size_t L, size_t H);
void rp_needles_free(rp_needles *ns);

/* One query row t of configuration c, layer l, query head h: f the full cache's row (lo, t,
 * p), c_row the compressed row's visible entries, or NULL when the row sees the full cache
 * with its original K/V (the compressed numbers are then the full ones). */
void rp_needles_row(rp_needles *ns, size_t c, size_t l, size_t h, size_t NC, size_t L, size_t H,
                    const rp_row_full *f, const rp_row_comp *c_row);

/* The read-out at position t of configuration c (cmp from readout_compare with y the token at
 * t + 1): counts answer tokens whose top-1 is right. */
void rp_needles_readout(rp_needles *ns, size_t c, size_t NC, size_t t, const readout_cmp *cmp);

#endif /* KV_NEEDLE_H */
