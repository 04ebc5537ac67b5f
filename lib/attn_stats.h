/* Attention structure of a trace (`kvreplay info`, `kvreport --trace`): per (layer, query
 * head), over valid query positions t >= 1 of the first max_seq sequences (at most max_pos
 * of them per sequence, evenly spaced from 1 to n - 1 both included, when a sequence has
 * more: each row costs O(t D), so a 16k-token sequence's every row is ~1000x the work of a
 * 512-token one), means over (sequence, position), all arrays [L][H]:
 *   entropy   -sum_j p_j log p_j (nats)
 *   uniform   log(number of visible keys) (= log(t+1) without a window): the entropy of
 *             uniform attention over the same positions
 *   sink      p_0, the mass on the first token (0 once a window hides it)
 *   prev      p_{t-1}, the mass on the previous token (0 when a window of 1 hides it)
 *
 * Attention as traces/SCHEMA.md defines it: logit s_j = scale q.k_j, soft-capped
 * c tanh(s/c) when softcap > 0, visible keys j <= t and, with a window W > 0, j > t - W.
 * Evaluated here in double precision from the stored values (a descriptive statistic: no
 * fast kernel is needed, and the trace library cannot use replay's). Heads run in parallel
 * (OpenMP), each writing only its own slots, so the result does not depend on the thread
 * count. Library code: status codes, no printing.
 */
#ifndef KV_ATTN_STATS_H
#define KV_ATTN_STATS_H

#include <stddef.h>

#include "kvtrace.h"

typedef struct attn_stats {
    size_t L, H, n_seq, n_pos;  /* n_pos: positions averaged per (l, h) */
    size_t n_all;               /* the valid positions t >= 1 of those sequences (n_pos < n_all:
                                   sampled under max_pos) */
    double *entropy, *uniform, *sink, *prev;
} attn_stats;

/* max_seq 0 = every sequence, max_pos 0 = every position. *out is allocated here;
 * attn_stats_free releases it. */
enum { ATTN_STATS_POS = 1024 };     /* the tools' max_pos: every row of traces up to 1025 tokens */
kv_status attn_stats_compute(kv_trace *t, size_t max_seq, size_t max_pos, attn_stats **out, kv_error *err);
void attn_stats_free(attn_stats *st);

/* The most specialised head of layer l: the highest of sink, prev and
 * focus = 1 - entropy/uniform over its heads. *kind is "sink", "prev" or "focus". */
void attn_stats_special(const attn_stats *st, size_t l, size_t *head, const char **kind,
                        double *score);

#endif /* KV_ATTN_STATS_H */
