/* Attention kernels for replay.
 *
 * T tokens, D head_dim, n entries of a compressed cache. One call = one query head over
 * the keys/values of its kv head (GQA mapping is the caller's: kv head g = h / (H/Hkv)).
 *
 * Semantics (traces/SCHEMA.md §6): logit s_j = scale * q.k_j, then soft-capped
 * s = c*tanh(s/c) when softcap > 0, then + bias_j (compressed caches only: log
 * multiplicity of merged entries); softmax in fp32 with the max subtracted; visible keys
 * of query t: j <= t and, with a window W > 0, j > t - W.
 * A row with no visible key (n == 0) is defined: lse = -INFINITY, o = 0, no probabilities.
 *
 * Each kernel has a naive reference twin (_ref: scalar, double accumulation, the oracle
 * in tests). Fast kernels are deterministic: results depend only on inputs, never on the
 * thread count (no kernel here spawns threads; callers parallelise over work items).
 */
#ifndef KV_ATTN_H
#define KV_ATTN_H

#include <stddef.h>

typedef struct attn_params {
    float scale;        /* > 0 */
    float softcap;      /* 0 = none */
    long long window;   /* 0 = unlimited */
} attn_params;

/* First visible key of query t. */
static inline size_t attn_lo(size_t t, long long window)
{
    return (window > 0 && t + 1 > (size_t)window) ? t + 1 - (size_t)window : 0;
}

/* Full causal attention of query rows [t0, t1) of one head.
 *   q [T][D] (rows t0..t1-1 are read), k, v [T][D]
 *   lse [t1-t0]          log-sum-exp of the (capped) logits over the visible keys
 *   o [t1-t0][D]         attention output
 *   logits NULL or [t1-t0][T]: the capped logits of visible keys; -INFINITY elsewhere
 * o may be NULL (then only lse/logits are computed: the P.V product is skipped); lse and o
 * both NULL: the logits only (no softmax at all).
 * Scratch is internal (stack/thread-local); safe to call from many threads at once.
 * A row's results depend only on the inputs and t, never on t0/t1: rows computed in
 * separate calls are bit-identical to one call, and the logits equal attn_logit() bit for
 * bit (attn_entries: the same, + bias). */
void attn_full_rows(const float *q, const float *k, const float *v, size_t T, size_t D,
                    size_t t0, size_t t1, const attn_params *p,
                    float *lse, float *o, float *logits);
void attn_full_rows_ref(const float *q, const float *k, const float *v, size_t T, size_t D,
                        size_t t0, size_t t1, const attn_params *p,
                        float *lse, float *o, float *logits);

/* The same rows from keys transposed once (attn_transpose_keys of at least the keys
 * [0, t1)): results bit-identical to attn_full_rows, without the per-block transpose that
 * repeats for every block of query rows (a whole-prompt pass transposes each key P / 64
 * times otherwise). kt [attn_keys_t_floats(T', D)] for T' >= t1 keys. */
size_t attn_keys_t_floats(size_t T, size_t D);
void attn_transpose_keys(const float *k, size_t T, size_t D, float *kt);
void attn_full_rows_kt(const float *q, const float *kt, const float *v, size_t T, size_t D,
                       size_t t0, size_t t1, const attn_params *p,
                       float *lse, float *o, float *logits);

/* attn_full_rows_kt for the G query heads of one kv head in one call: head i's queries at
 * q + i qhs (floats), its outputs at lse + i lhs, o + i lhs D, logits + i lhs T (lhs >= t1 -
 * t0). Every key block is used by all G heads while it is in cache (GQA: the keys and values
 * are read once per block of rows, not G times); bit-identical to G attn_full_rows_kt calls. */
void attn_full_rows_heads(const float *q, size_t qhs, size_t G, const float *kt, const float *v, size_t T,
                          size_t D, size_t t0, size_t t1, const attn_params *p, size_t lhs,
                          float *lse, float *o, float *logits);
/* The same from keys k [T][D] as they are: each key block is transposed once per block of rows
 * for all G heads (G attn_full_rows calls transpose it G times); bit-identical to them. */
void attn_full_rows_heads_k(const float *q, size_t qhs, size_t G, const float *k, const float *v, size_t T,
                            size_t D, size_t t0, size_t t1, const attn_params *p, size_t lhs,
                            float *lse, float *o, float *logits);

/* Attention of one query vector q [D] over n entries: keys kk [n][D], values vv [n][D]
 * (rows addressed through idx when idx != NULL: entry e uses row idx[e]), bias [n] or NULL.
 *   *lse, o [D], logits NULL or [n] (capped logits + bias).
 * n == 0 is the fully masked row. */
void attn_entries(const float *q, const float *kk, const float *vv, const size_t *idx,
                  const float *bias, size_t n, size_t D, const attn_params *p,
                  float *lse, float *o, float *logits);
/* The softmax and P.V part of attn_entries for a row whose logits are given: z [n] the capped
 * logits of its entries (bias included), in attn_entries' order. With z what attn_entries
 * would compute (a selection of unchanged keys: the full cache's logits gathered) the
 * results are bit-identical to it (the same blocks and arithmetic). */
void attn_entries_given(const float *z, const float *vv, const size_t *idx, size_t n, size_t D, float *lse,
                        float *o);
void attn_entries_ref(const float *q, const float *kk, const float *vv, const size_t *idx,
                      const float *bias, size_t n, size_t D, const attn_params *p,
                      float *lse, float *o, float *logits);

/* The softmax and P.V part of attn_full_rows for rows whose logits are given: row r's
 * capped logits z [r * ldz + e] over its entries e < nvis[r], values v [][D] (entry e: row
 * e). lse [nr], o NULL or [nr][D]. The same key blocks and arithmetic as attn_full_rows,
 * so with z the logits attn_full_rows would compute (an eviction's kept entries: the full
 * cache's logits gathered, attn_logit being one function of q and the key row) the results
 * are bit-identical to it, without recomputing a single logit. */
void attn_rows_given(const float *z, size_t ldz, const size_t *nvis, size_t nr, const float *v, size_t D,
                     float *lse, float *o);

/* Query rows whose caches share one entry list but differ in which entries are encoded:
 * row r's entry e has key ka[e] for e < kcut[r], else kb[e], and value va[e] for
 * e < vcut[r], else vb[e] (ka, kb, va, vb [>= max nvis][D]). An incremental encoder whose
 * rows change at most once (quant: KIVI's quantised groups, its fp16 residual) gives every
 * row of a block this form against the encoding of the block's last row. */
typedef struct attn_cut_src {
    const float *ka, *kb, *va, *vb;
    const size_t *kcut, *vcut;  /* [nr] */
} attn_cut_src;

/* attn_entries (idx and bias NULL) of nr query rows q [nr][D], row r over its nvis[r]
 * entries of src, computed as blocks of rows x 64 entries (every key and value row loaded
 * once per block of rows instead of once per row): lse [nr], o NULL or [nr][D], logits
 * NULL or [nr][ld] (entries [0, nvis[r]) written), each bit-identical to attn_entries of
 * row r over its own cache. 0 ok; -1 when D * 64 exceeds the kernel's key-block buffer
 * (D > 256): the caller evaluates the rows one by one (nr = 0 makes only that check;
 * src and the outputs are then not read). */
int attn_rows_cut(const float *q, size_t nr, size_t D, const attn_params *p, const attn_cut_src *src,
                  const size_t *nvis, size_t ld, float *lse, float *o, float *logits);

/* attn_rows_cut for the G query heads of one kv head in one call: head h's rows at q + h qhs
 * (floats), its outputs at lse + h lhs, o + h lhs D, logits + h lhs ld (lhs >= nr). Each
 * entry block is transposed once and its key and value rows serve every head while in
 * cache; bit-identical to G attn_rows_cut calls. The same -1 rule. */
int attn_rows_cut_heads(const float *q, size_t qhs, size_t G, size_t nr, size_t D, const attn_params *p,
                        const attn_cut_src *src, const size_t *nvis, size_t ld, size_t lhs, float *lse, float *o,
                        float *logits);

/* o_r [D] += sum_{e < n} w[r * ldw + e] * v[idx[e]] (idx NULL: v[e]) for the rows r < nr:
 * a P.V product with given weights (no softmax). Every element is summed in increasing e
 * (bit-reproducible; calls over consecutive ranges of e continue the same sum). */
void attn_pv_weighted(const float *w, size_t ldw, size_t nr, size_t n, const float *v, const size_t *idx, size_t D,
                      float *o);

/* pe [n] = exp(s[e] - m) for s[e] - m <= 0 with the kernels' exp (vectorised where the CPU
 * has AVX2; ~1 ulp of expf; -INFINITY and below -87 give 0). */
void attn_exp_shift(const float *s, size_t n, float m, float *pe);

/* A softmax row with one exp per entry: p [n] = exp(s[e] - m) / l with m = max s, l = their
 * sum (the kernels' exp and its double sum in four partial sums, e mod 4, added in a fixed
 * order; 1/l rounded to float, one product). Returns the log partition m + log l in double
 * (log p_e = s_e - that, up to p's rounding), -INFINITY when every s is -INFINITY (p = 0),
 * NaN when one is NaN (p unset). Relative error of p against exact softmax: the exp's
 * (within 8 ulp of exp of its float argument + the argument's rounding |s - m| 2^-24,
 * test_attn), + 2 2^-24 (1/l and the product); the sum's rounding is below 2^-40. */
double attn_probs_row(const float *s, size_t n, float *p);

/* The full cache's probabilities in double (the engine's shared row): out [n] = exp((double)s[e]
 * - c) with the kernels' double exp (within 2 ulp of exp; 0 below -708, the same bits on
 * every CPU); returns their sum in four partial sums over e mod 4, added as (l0 + l1) +
 * (l2 + l3). */
double attn_exp_sub_f64(const float *s, size_t n, double c, double *out);

/* attn_exp_sub_f64 on double input: out [n] = exp(x[e] - c), the same exp (within 2 ulp; 0
 * below -708; the same bits on every CPU), the same lane-ordered sum; out may be x. */
double attn_exp_sub_f64d(const double *x, size_t n, double c, double *out);

/* p [n] /= z; returns the sum of the new p^2 (four partial sums over e mod 4, as above). */
double attn_div_sumsq_f64(double *p, size_t n, double z);

/* Which vector path the kernels may take: the best the CPU has, at most the limit (default
 * ATTN_ISA_AVX512: no limit). Every path gives the same bits; the limit exists so that tests
 * and benchmarks can run each path on one machine without rebuilding. Set it before kernels
 * run (it is one process-wide int, read by every call; not for use while other threads are
 * inside a kernel). attn_set_isa_limit returns the previous limit; attn_isa the path that
 * now runs (min of the limit and what the CPU and the build support). */
enum { ATTN_ISA_GENERIC = 0, ATTN_ISA_AVX2 = 1, ATTN_ISA_AVX512 = 2 };
int attn_set_isa_limit(int limit);
int attn_isa(void);

/* Capped logit of one (q, k) pair; the single definition every kernel uses. */
float attn_logit(const float *q, const float *k, size_t D, const attn_params *p);

/* dot [ATTN_PANEL_ROWS][ATTN_PANEL_COLS] = x [ATTN_PANEL_ROWS][D] times one packed panel
 * [D][ATTN_PANEL_COLS], in doubles; each sum over d in order from 0, each product rounded
 * before its add. x and panel must hold float values (their products are then exact, and
 * the FMA path where the CPU has one gives the same bits as the separate multiply and add). */
enum { ATTN_PANEL_ROWS = 4, ATTN_PANEL_COLS = 16 };   /* COLS: a multiple of 8 */
void attn_panel_dot(const double *x, size_t D, const double *panel, double *dot);
/* The same for x [nrows][D] (nrows a multiple of ATTN_PANEL_ROWS) into dot [nrows][COLS]:
 * the bits of nrows / ATTN_PANEL_ROWS calls of attn_panel_dot, eight rows per kernel call
 * where the CPU has AVX-512F. */
void attn_panel_dot_rows(const double *x, size_t nrows, size_t D, const double *panel, double *dot);

/* Gram matrix of float rows: M [D][D] (doubles) += sum over the rows r of x [n][D], in
 * increasing r, of (double)x[r][a] * x[r][b] (exact products, one rounding per add: every
 * element the sum a loop over r computes, on every CPU). Only the upper triangle b >= a of
 * M is read (a running sum over several calls); the lower one is set from it on return.
 * 0 ok, -1 out of memory (M unchanged). */
int attn_gram_acc(const float *x, size_t n, size_t D, double *M);

#endif /* KV_ATTN_H */
