/* What kvreport reads from a trace (--trace): the fp16 bytes per token of the full cache
 * (figure d) and the attention-entropy distribution per layer (figure f).
 *
 * L layers, H q-heads, Hkv kv-heads, D head_dim.
 * Entropy comes from lib/attn_stats.h's attn_stats_compute (the statistics `kvreplay info`
 * prints): per (layer, head), the mean over sequences and valid positions t >= 1 of
 * -sum_j p_j log p_j, and the uniform bound log(visible keys). The distribution drawn per
 * layer is over its query heads; the first TS_MAX_SEQ sequences are used, at most
 * ATTN_STATS_POS evenly spaced positions of each.
 */
#include "trace_stats.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_sort.h>
#include <gsl/gsl_statistics_double.h>

#include "attn_stats.h"

#define TS_MAX_SEQ 8

void ts_entropy_free(rp_entropy *e)
{
    if (!e) return;
    free(e->q); free(e->mean); free(e->max_entropy); free(e->head);
    free(e);
}

kv_status ts_load(const char *path, double *bytes_per_token, rp_entropy **entropy,
                  char *note, size_t note_cap, kv_error *err)
{
    *bytes_per_token = 0;
    *entropy = NULL;
    if (note_cap) note[0] = 0;
    kv_trace *t = NULL;
    attn_stats *as = NULL;
    rp_entropy *e = NULL;
    double *v = NULL;
    kv_status st = kv_trace_open(path, NULL, &t, err);
    if (st != KV_OK) return st;
    const kv_info *in = kv_trace_info(t);
    size_t S = in->n_seq, L = in->n_layers, Hkv = in->n_kv_heads, D = in->head_dim;
    *bytes_per_token = 2.0 * 2.0 * (double)L * (double)Hkv * (double)D;   /* K and V, fp16 */

    size_t Sn = S < TS_MAX_SEQ ? S : TS_MAX_SEQ;
    if ((st = attn_stats_compute(t, Sn, ATTN_STATS_POS, &as, err)) != KV_OK) goto done;
    size_t H = as->H;
    e = calloc(1, sizeof *e);
    v = malloc((H ? H : 1) * sizeof *v);
    if (!e || !v || !H) { st = KV_ERR_NOMEM; snprintf(err->msg, sizeof err->msg, "%s: out of memory for entropy", path); goto done; }
    e->n_layers = as->L;
    e->q = calloc(as->L * 5, sizeof *e->q);
    e->mean = calloc(as->L, sizeof *e->mean);
    e->max_entropy = calloc(as->L, sizeof *e->max_entropy);
    e->n_heads = H;
    e->head = calloc(as->L * H, sizeof *e->head);
    if (!e->q || !e->mean || !e->max_entropy || !e->head) { st = KV_ERR_NOMEM; snprintf(err->msg, sizeof err->msg, "%s: out of memory", path); goto done; }
    for (size_t l = 0; l < as->L; l++) {
        double u = 0;
        for (size_t h = 0; h < H; h++) {
            v[h] = as->entropy[l * H + h];
            e->head[l * H + h] = v[h];
            u += as->uniform[l * H + h];
            if (!isfinite(v[h]) || !isfinite(u)) {
                st = KV_ERR_VALUE;
                snprintf(err->msg, sizeof err->msg, "%s: /layers/%zu: non-finite attention entropy (head %zu)", path, l, h);
                goto done;
            }
        }
        gsl_sort(v, 1, H);
        static const double qs[5] = { 0.05, 0.25, 0.5, 0.75, 0.95 };
        for (int i = 0; i < 5; i++) e->q[l * 5 + i] = gsl_stats_quantile_from_sorted_data(v, 1, H, qs[i]);
        e->mean[l] = gsl_stats_mean(v, 1, H);
        e->max_entropy[l] = u / (double)H;
    }
    if (note_cap)
        snprintf(note, note_cap, "attention entropy: per-head means over %zu of %zu sequences (%zu %s per head), distribution over the %zu query heads of each layer",
                 as->n_seq, S, as->n_pos, as->n_pos < as->n_all ? "evenly spaced positions" : "positions", H);
done:
    free(v);
    attn_stats_free(as);
    kv_trace_close(t);
    if (st != KV_OK) { ts_entropy_free(e); return st; }
    *entropy = e;
    return KV_OK;
}
