/* Trace verifications (`kvreplay check`); the attention statistics of `kvreplay info` are
 * lib/attn_stats.h.
 *
 * S sequences, L layers, H q-heads, Hkv kv-heads, T tokens, D head_dim, C d_model, V vocab.
 * Only valid positions t < seq_len[s] are used. Library code: status codes, no printing;
 * the caller prints the worst errors from the result structs.
 *
 * Tolerances (the defaults below; callers may pass their own):
 *  attn_out   |x - ref| <= atol + rtol |ref|, x = recomputed (fp32, attn_full_rows over
 *             the stored f16 q/k/v), ref = stored f16 attn_out. The stored output carries
 *             its own f16 rounding (2^-11 relative), and the model computed it from q, k
 *             unrounded: a logit error of |s| 2^-10 moves probabilities by about 1% when
 *             logits are O(10), and the output by that fraction of the value spread.
 *             VERIFY_ATTN_RTOL 1e-2 covers that for fp32 captures, VERIFY_ATTN_ATOL 2e-3
 *             covers outputs near 0 (cancellation of O(1) values). A model computing in
 *             bf16/fp16 (the trace's compute_dtype, unit roundoff u: 2^-8 / 2^-11) rounds its
 *             probabilities before p.v and its output after: |dx| <= 2 u max|v| on top, so
 *             `kvreplay check` passes atol + 2u, rtol + 2u (verify_compute_u; bf16: 9.8e-3,
 *             1.8e-2). The stored q, k, v are then the model's own values (bf16 and f16
 *             values within f16's range are exact in f16). To both, each row adds the
 *             first-order bound of what f16 storage of q, k, v explains (row_extra_tol in
 *             verify.c): trained models have sharp rows with large |q||k| where a fixed
 *             rtol is too tight (traces/sample.h5 failed 24 of 1M values without it).
 *  read-out   per logit v: |z - ref| <= atol + rtol * ||W_U[v]||_2 * ||norm(h)||_2
 *             (+ rtol |b_u[v]|). W_U, h and the norm weight are stored in f16 (relative
 *             rounding 2^-11 each; the norm adds one more through the mean square), so
 *             |dz| <= 4 * 2^-11 * sum_c |W_vc x_c| <= 2^-9 ||W_v|| ||x|| (Cauchy-Schwarz):
 *             VERIFY_READOUT_RTOL 2e-3 is that bound, VERIFY_READOUT_ATOL 1e-4 the fp32
 *             arithmetic on both sides. A bf16/fp16 model rounds norm(h) and W_U to u and its
 *             logit z to u |z| <= u (||W_v|| ||x|| + |b_v|) (Cauchy-Schwarz): rtol + 3u
 *             (bf16: 1.4e-2). Seen on the GPU machine: tiny bf16 llama/mistral captures
 *             failed the fp32 read-out tolerance at 1.05-1.08 of it (top-8 logits stored as
 *             bf16 values, 0.2753906 against 0.2767142 recomputed). The lse tolerance is the p-weighted mean of the
 *             per-logit ones (lse is 1-Lipschitz in each logit with weight p_v). Top-8: the
 *             logit of each reference id must match, and the value at each rank must match;
 *             a different id at a rank is accepted as a swap among near-ties when both hold.
 *  prompt scores  /prompt_scores (kvcapture --prompt-scores) against the replay's own column
 *             sums over every row and row entropies (rp_prompt_colsum over [0, seq_len), fp32
 *             probabilities of the stored f16 q, k). The capture computed the same quantity
 *             in float64 from the same values and stored f32 (2^-24 relative); the replay's
 *             probabilities carry relative error eps <= (D + 1) 2^-24 |s|max + ~2e-6 (1 +
 *             |lse|) + 10 2^-24 (shared.h, test_shared): ~8e-4 at D = 256 and logits of 50.
 *             Column sums: |x - stored| <= VERIFY_PS_ATOL + VERIFY_PS_RTOL stored with rtol
 *             1e-3 (that eps) and atol 1e-5 (columns of tiny mass). Entropies: a relative
 *             error eps in each p moves -sum p log p / log nvis by at most eps (1 + H_raw) /
 *             log nvis <= eps (1 + 1/log 2) ~ 2.5 eps: VERIFY_PS_ENT_ATOL 3e-3. What this
 *             catches: scores of other Q/K, another scale or window, a transposed head or
 *             layer; what it cannot: errors below these tolerances (the replay's own bound
 *             on what it serves is shared.h's).
 */
#ifndef KV_VERIFY_H
#define KV_VERIFY_H

#include <stddef.h>
#include <stdint.h>

#include "kvtrace.h"

#define VERIFY_ATTN_ATOL 2e-3
#define VERIFY_ATTN_RTOL 1e-2
#define VERIFY_READOUT_ATOL 1e-4
#define VERIFY_READOUT_RTOL 2e-3
#define VERIFY_PS_ATOL 1e-5
#define VERIFY_PS_RTOL 1e-3
#define VERIFY_PS_ENT_ATOL 3e-3

/* The unit roundoff of the trace's compute dtype beyond float32's: 2^-8 (bfloat16), 2^-11
 * (float16), 0 (float32 or unknown: the defaults above are for float32 compute). */
double verify_compute_u(const kv_info *in);

typedef struct verify_attn_result {
    int present;                /* the trace has attn_out (else nothing was compared) */
    int pass;                   /* present and every element within tolerance */
    double atol, rtol;
    size_t n_seq, n_slices;     /* sequences / (s, l, h) slices compared */
    size_t n_elems, n_bad;      /* elements compared / outside tolerance (NaN counts bad) */
    double max_abs_err;         /* largest |x - ref| */
    double worst_ratio;         /* largest |x - ref| / (atol + rtol |ref|); Inf for NaN */
    size_t w_s, w_l, w_h, w_t, w_d;   /* where worst_ratio is */
    float w_x, w_ref;           /* recomputed and stored values there */
} verify_attn_result;

/* Recompute attention of every (s, l, h) of the first max_seq sequences (0 = all) and
 * compare with the stored attn_out. Parallel over heads (OpenMP); the result does not
 * depend on the thread count. Not having attn_out is not an error (present = 0). */
kv_status verify_attn_out(kv_trace *t, double atol, double rtol, size_t max_seq,
                          verify_attn_result *res, kv_error *err);

typedef struct verify_readout_result {
    int present, pass;
    double atol, rtol;
    size_t n_seq, n_pos;        /* positions compared */
    size_t n_lse_bad, n_top_bad;/* positions whose lse / top-8 fail */
    size_t n_swaps;             /* ranks whose id differs within tolerance (near ties) */
    double max_lse_err, worst_lse_ratio;  size_t lse_s, lse_t;
    double lse_x, lse_ref;
    double max_top_err, worst_top_ratio;  size_t top_s, top_t, top_rank;
    int32_t top_id_x, top_id_ref;         /* ids at that rank (ours, reference) */
    double top_x, top_ref;                /* values compared there */
} verify_readout_result;

/* Read-out from /readout/hidden vs /readout/ref_* for the first max_seq sequences
 * (0 = all). No read-out in the trace: present = 0, KV_OK. */
kv_status verify_readout(kv_trace *t, double atol, double rtol, size_t max_seq,
                         verify_readout_result *res, kv_error *err);

typedef struct verify_ps_result {
    int present, pass;
    size_t n_slices, n_elems, n_bad;    /* (s, l, h) slices; colsum and entropy values compared */
    double worst_ratio;                 /* largest |x - stored| / tolerance; Inf for NaN */
    int w_ent;                          /* the worst is an entropy (else a column sum) */
    size_t w_s, w_l, w_h, w_t;
    double w_x, w_ref;                  /* recomputed and stored there */
} verify_ps_result;

/* /prompt_scores of the first max_seq sequences (0 = all) against the replay's recomputation
 * (tolerances above). Parallel over heads; the result does not depend on the thread count.
 * No /prompt_scores: present = 0, KV_OK. */
kv_status verify_prompt_scores(kv_trace *t, size_t max_seq, verify_ps_result *res, kv_error *err);

#endif /* KV_VERIFY_H */
