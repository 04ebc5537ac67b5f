/* The replay engine: one pass over a trace evaluates every configuration of a sweep
 * (docs/METHODS.md §3-§9). Library code: status codes and one-line errors, no printing.
 *
 * S sequences, T tokens, L layers, H q-heads, Hkv kv-heads, G = H/Hkv, D head_dim,
 * C d_model, V vocab, NC configurations, n valid tokens of a sequence, P its split.
 *
 * Usage:
 *     rp_engine *e;  rp_engine_new(trace, &sweep, &opts, &e, err, sizeof err);
 *     for each evaluated s:  rp_engine_seq(e, s, &res, ...)   -> per-sequence accumulators
 *     rp_engine_free(e);
 *
 * Protocols (evaluated positions t in [P, n) in both):
 *   prefill  P = n - decode when opts.decode > 0, else /prefill_len[s]. The strategy's
 *            prefill hook compresses [0, P) once; query t attends to that cache plus the
 *            exact entries [P, t].
 *   online   tokens 0..n-1 stream into a cache of at most B entries; query t attends to
 *            the cache after token t is inserted (B + 1 entries at most), then the
 *            strategy evicts. P as above, or 0 (every position) when neither is given.
 * Views and encoders (the eviction strategy's online_view — streaming's re-indexing, used in
 * both protocols, not counted as reconstruction —, its own encode hook, then the encoding
 * part's) run in that order on the cache each query sees: once on the whole cache
 * (t = n - 1) when none is time_dependent and the protocol is prefill, else on a copy per
 * query position.
 *
 * Work items: (sequence, layer), in parallel (OpenMP); the trace is read in a critical
 * section; every accumulator lives in a per-item slot and is reduced in a fixed order, so
 * results are identical for any thread count. When every part of every configuration of a
 * sweep is head-separable (strategy.h head_separable, rp_head_separable: evictions with
 * their views, selection and decode-time steps, and encoders; exports allowed; under --mode
 * online the online hooks, every online strategy but minicache) an item is one
 * (sequence, layer, kv head) instead, with the same results bit for bit: its hooks see a
 * context of that kv head alone (g = 0, ctx->g0 its number in the layer), the exports get the
 * layer's kv head number g0 + g, the per-position sums keep one term per query head and are
 * added in the layer item's order, and the layer's read-out runs once all its kv heads are
 * done. Planned strategies (strategy.h plan_score / plan_layer: adakv, criticaladakv,
 * simlayerkv, criticalkv, chunkkv, merging, noncausal_attn, leverage, compactor, whose prefill
 * combines something across the kv heads of a layer) count as head-separable: before a
 * sequence's kv-head items, "plan items" over (layer, kv head), in parallel, read that kv
 * head's Q/K/V, make its shared scores and write each planned configuration's score row;
 * plan_layer then turns a layer's rows, in head order, into each kv head's plan (the same
 * plans for any thread count), and the kv-head item hands its row to prefill as ctx->plan.
 * The shared scores the plan items need are computed again by the kv-head items (a window's
 * column sums: w rows per query head). The full-cache attention of each (query
 * head, position) is computed once and shared by all configurations; configurations whose
 * visible cache is the full one with original K/V take its results bit for bit. Likewise the
 * scores several configurations' hooks need (prompt attention column sums, row entropies,
 * key page min/max: replay/shared.h) are computed once per work item, on first request.
 *
 * Metrics (docs/METHODS.md §6-§7), per (config, layer, query head, evaluated position):
 *   attn_cos   cos(p, p~), p~ expanded to positions (a merged entry's mass split equally)
 *   out_cos    cos(o, o~) (both zero: 1, one zero: 0); out_rel_err ||o - o~|| / ||o||
 *              (||o|| = 0: 0 when o~ = 0, else 1)
 *   attn_kl    sum_j p~_j (log p~_j - log p_j) from logits in double, clamped at 0
 *   mass_recall sum of p over the positions the visible entries stand for
 *   keep       visible entries / visible positions of the full cache; budget = entries
 * Members of a merged entry outside the query's window are not counted (their mass is lost).
 * The per-row formulas are the pure functions of metric.h (tested against the naive ones).
 * p is computed in double from the kernel's logits and renormalised to sum to 1.
 * Per (config, layer, kv head), on the cache the last position n-1 sees: bytes (payload,
 * scales, bases; indices: 4 bytes per entry when the cache holds fewer entries than the
 * full cache's positions, +4 per entry for multiplicities when it has merged entries) and, when entries are modified, squared errors of
 * represented members against the original K/V.
 * Read-out: logits_comp = W_U norm(h + sum_l (o~ - o)_l W_O_l), layers summed in order.
 * Needles (needle.h, traces with /needles): item_metrics adds each question/answer query row
 * to the slots of its (needle, config, layer, head); readout_seq counts the answer tokens'
 * top-1 in the slots of its configuration -> rp_seq_result.nd.
 * Memory per sequence: the (o~ - o) rows of every configuration, NC * L * NE * H * D floats
 * (the layer sum must wait for every layer to keep a fixed order), plus per work item the
 * layer's Q/K/V (kv-head items: that kv head's) and one cache per (configuration, kv head);
 * with planned configurations in kv-head items, their plans: L * Hkv * plan_size doubles per
 * planned configuration (plan_size P for most, P + 1 for criticaladakv, up to 2 P + 1 for
 * compactor, G (n_initial + n_recent) for simlayerkv; 8k tokens, 32 layers, 8 kv heads: 16 MiB per configuration of
 * plan_size P), the only layer-level state; a plan item holds one kv head's Q/K/V and shared
 * scores, like a kv-head item.
 */
#ifndef KV_ENGINE_H
#define KV_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "kvtrace.h"
#include "needle.h"
#include "readout.h"
#include "sweep.h"

typedef struct rp_run_opts {
    unsigned mode;              /* RP_PREFILL or RP_ONLINE */
    size_t decode;              /* > 0: P = n - decode for every sequence */
    size_t eval_from;           /* > 0: P = eval_from for every sequence (overrides decode) */
    int readout;                /* compute read-out metrics (needs /readout) */
    int gqa_reduce;             /* RP_GQA_MEAN (default) | RP_GQA_MAX | RP_GQA_SUM -> ctx.gqa_reduce */
    const size_t *calib;        /* calibration sequences (never evaluated) */
    size_t n_calib;
    /* Export hook (replay/export.h), NULL = none; prefill protocol. Called from
     * the worker threads with the cache the last position n-1 sees (the view after encoders),
     * once per (config, sequence, layer, kv head); must be safe for distinct (c, l, g).
     * Non-zero return: the sequence fails with "out of memory (export)". */
    int (*export_hook)(void *ud, size_t c, size_t s, size_t l, size_t g, size_t n, size_t P,
                       const rp_cache *view);
    /* Online protocol: once per (config, sequence, layer, kv head) after the last
     * position, evict_at [n]: the first query position that no longer sees token j (n = never
     * evicted). Same threading and return convention as export_hook. */
    int (*export_evict_hook)(void *ud, size_t c, size_t s, size_t l, size_t g, size_t n, size_t P,
                             const int32_t *evict_at);
    /* Prefill, configurations whose rows may change with the query position (time-dependent
     * encoders, re-indexing views): called for every evaluated query t with the cache t sees
     * (view, after encoders; its entries are the first view->n of base) and the cache before
     * encoding (base). Same threading as export_hook. Returns 0, -1 out of memory, 1 the
     * per-position state is not exportable (a row changed a second time). */
    int (*export_step_hook)(void *ud, size_t c, size_t s, size_t l, size_t g, size_t t, size_t n, size_t P,
                            const rp_cache *view, const rp_cache *base);
    void *export_ud;
    /* Per-layer direct-path read-out (--per-layer-readout): also the read-out of
     * h + dO_l W_O_l for each layer l alone -> rp_seq_result.pl. Costs L extra read-outs per
     * (config, position); off by default. */
    int per_layer_readout;
    /* Paged accounting (replay/paged.h): entries per page; 0 = unpaged. Fills
     * SA_PAGED (bytes allocated in whole pages) and SA_FRAG (their unused slots). */
    size_t page_size;
    /* Source of the whole prompt's attention scores (column sums over the prompt rows, row
     * entropies: H2O, CAB, ObservedAttention, entropy_merge): RP_PS_RECOMPUTE a pass over
     * every prompt row; RP_PS_TRACE the trace's /prompt_scores (kvcapture --prompt-scores)
     * less the evaluated rows' share (shared.h rp_shared_use_captured): linear in n instead
     * of quadratic. A trace without the group, or whose group records other attention
     * parameters than the trace's (kv_info.prompt_scores_stale), is refused rather than
     * silently recomputed: the run would cost and record something other than asked. The
     * engine takes only these two: kvreplay run's default, auto, is resolved to one of them
     * before (cmd_run.c), so that everything keyed on the mode sees the concrete one. */
    int prompt_scores;
    /* Prefill evaluation of eviction-only configurations (original rows, no per-query
     * selection, window, merge or encoder): 0 (default) shares the work between them
     * (engine.c, "shared evaluation": the full row's probabilities renormalised over each
     * kept set, nested kept sets summed once); 1 evaluates each one alone (the bits of
     * earlier versions; the two agree to rounding). */
    int no_share;
    /* Debug (kvreplay: KVTRACE_DEBUG=layer-items): keep the (sequence, layer) work items even
     * when the sweep could run in kv-head items; the same results, bit for bit (the tests'
     * reference for the kv-head items). */
    int layer_items;
    /* Debug (kvreplay: KVTRACE_DEBUG=q-poison,q-all,q-rows): the prompt query rows a work
     * item leaves unread (strategy.h q_rows) are NaN (RP_QDEBUG_POISON), every row is read
     * (RP_QDEBUG_ALL), one stderr line per item names its rows (RP_QDEBUG_ROWS). Results never
     * depend on them (tests/py/test_q_rows.py compares q-poison with q-all). */
    int q_debug;
    /* Debug (kvreplay: KVTRACE_DEBUG=rope): read and scan the trace's /rope tables even when no
     * configuration part uses them (strategy.h uses_rope); hooks then see them. Results never
     * depend on it (tests/py/test_rope_lazy.py). */
    int read_rope;
    /* Records of passed value scans (engine.c scan_finite): with both set, a (sequence) or
     * global part of the scan whose record for this digest is in scan_cache_dir is skipped,
     * and each part that passes is recorded there (lib kv_cache_record_put). trace_sha256:
     * the SHA-256 (64 lowercase hex) of the trace's bytes; NULL either: scan all, record
     * nothing. scan_stats (may be NULL): [0] scan tasks run, [1] skipped from the records. */
    const char *scan_cache_dir;
    const char *trace_sha256;
    size_t *scan_stats;
} rp_run_opts;
enum { RP_QDEBUG_POISON = 1, RP_QDEBUG_ALL = 2, RP_QDEBUG_ROWS = 4 };

enum { RP_PS_RECOMPUTE = 0, RP_PS_TRACE = 1,
       RP_PS_AUTO = 2 /* kvreplay run's option only, never an engine's (rp_engine_new refuses it) */ };

/* Per (config, layer, query head) sums; HA_N counts evaluated positions. */
enum { HA_N, HA_COS, HA_OCOS, HA_OREL, HA_KL, HA_REC, HA_KEEP, HA_BUDGET,
       HA_KERR, HA_VERR, HA_KSQ, HA_VSQ, HA_MCNT, HA_NF };
/* Per (config, sequence): bytes at the last position, guards, read-out sums, ECE bins. */
enum { SA_NQ, SA_KVB, SA_FULLB, SA_PAYLOAD, SA_SCALES, SA_BASES, SA_INDICES, SA_PAGED, SA_FRAG, SA_MODIFIED,
       SA_DIFFERS, SA_RO_N, SA_RO_KL, SA_RO_TOP1, SA_NY, SA_NLL_F, SA_NLL_C,
       SA_ECE_F, SA_ECE_C = SA_ECE_F + 3 * ECE_BINS, SA_NF = SA_ECE_C + 3 * ECE_BINS };
/* Per (config, sequence, layer) with per_layer_readout: sums over evaluated positions of the
 * logit KL and (positions with a known next token) nll_comp when only layer l's perturbation
 * is applied; the counts are SA_RO_N and SA_NY of the same (config, sequence). */
enum { PL_KL, PL_NLL_C, PL_NF };
/* Per (config, sequence, decode offset d = t - P) for d in [0, n_pos): sums at evaluated
 * position t of the attention KL and output cosine over layers and query heads (L * H terms
 * each), and the read-out's logit KL (one term; 0 without read-out). -> per_pos.csv */
enum { PP_ATTN_KL, PP_OUT_COS, PP_LOGIT_KL, PP_NF };
#define PP_ATT 2                /* the first PP_ATT fields are the attention sums */

typedef struct rp_seq_result {
    size_t seq;
    int has_readout;
    double *sa;                 /* [NC][SA_NF] */
    double *ha;                 /* [NC][L][H][HA_NF] */
    double *pl;                 /* [NC][L][PL_NF], NULL without per_layer_readout */
    double *pp;                 /* [NC][n_pos][PP_NF], NULL when n_pos = 0 */
    size_t n_pos;               /* evaluated positions of the sequence (n - P) */
    rp_needles nd;              /* the sequence's measured needles (needle.h); n = 0 without */
} rp_seq_result;

typedef struct rp_engine rp_engine;

/* Loads tokens, splits, the RoPE tables (when a configuration part uses_rope, strategy.h, or
 * o.read_rope) and read-out; checks every evaluated sequence's split
 * and every configuration's budget and protocol; runs calibration hooks. */
int rp_engine_new(kv_trace *t, const rp_sweep *sw, const rp_run_opts *o, const size_t *seqs,
                  size_t n_seqs, rp_engine **out, char *err, size_t errlen);
/* Evaluate sequence s; res->sa/ha are allocated here (rp_seq_result_free). */
int rp_engine_seq(rp_engine *e, size_t s, rp_seq_result *res, char *err, size_t errlen);
void rp_engine_free(rp_engine *e);
int rp_engine_has_readout(const rp_engine *e);
/* 1 when the work items are (sequence, layer, kv head), 0 when (sequence, layer). */
int rp_engine_per_head(const rp_engine *e);

int rp_seq_result_alloc(rp_seq_result *r, size_t n_cfg, size_t L, size_t H);
void rp_seq_result_free(rp_seq_result *r);

#endif /* KV_ENGINE_H */
