/* The strategy interface: one small table of hooks per compression strategy.
 *
 * Adding a strategy = one file replay/strategies/<name>.c defining
 *     const rp_strategy rp_strategy_<name> = { ... };
 * plus one line RP_STRATEGY(<name>) in replay/strategies/list.h. The file opens with the
 * rule, the defaults and the reference (paper + repository) it reproduces.
 *
 * Shapes: H q-heads, Hkv kv-heads, G = H/Hkv query heads per kv head, n valid tokens of
 * the sequence, P prompt length (prefill protocol), D head_dim, B budget (entries kept per
 * kv head), L layers. Query head h belongs to kv head g = h / G.
 *
 * How the engine drives a strategy (docs/METHODS.md §3):
 *
 *   configure  once per configuration: parameter values (declared order) -> opaque cfg.
 *   calibrate  optional, once per configuration before replay, on sequences that are NOT
 *              evaluated (lowrank): the engine excludes them from evaluation.
 *   prefill    protocol "prefill": once per (sequence, layer), all kv heads at once (AdaKV
 *              allocates across heads, PyramidKV varies budgets by layer); strategies with
 *              head_separable may get one call per kv head instead (a context of that kv
 *              head alone, ctx->Hkv = 1). Planned strategies (plan_score / plan_layer
 *              below) put what crosses the kv heads into a plan made first: plan_score of
 *              each kv head, plan_layer once per layer, then prefill per kv head with
 *              ctx->plan. Sees only the
 *              prompt [0, P). Fills one rp_cache per kv head. Decode query t in [P, n)
 *              then attends to that cache plus the exact entries [P, t].
 *   online_*   protocol "online": one state per (sequence, layer, kv head). Token t is
 *              appended to the cache as the last entry, query t attends to the cache
 *              (at most B + 1 entries: the B kept ones and t itself), then online_step
 *              sees those attention probabilities and names the entries to evict so that
 *              at most B remain (H2O real-drop, TOVA, StreamingLLM).
 *   select     optional, decode time: restricts which cache entries query head h sees at
 *              position t (Quest page selection); no eviction.
 *   encode     RP_ENCODE strategies: change how entries are stored (quantise, project,
 *              merge across layers). Given a cache whose k/v rows hold the current
 *              representation (originals or merged means), rewrite them in place with the
 *              reconstruction and account the bytes. A composition "EVICT + ENCODE" runs the
 *              eviction strategy first, then encode on its output. In a sweep whose every part
 *              is head_separable, select, encode and the views get a context of one kv head
 *              too (g = 0, ctx->g0 its number in the layer).
 *
 * Which hook gets what (all through rp_layer_ctx; computed by the engine, never per
 * configuration where it can be shared):
 *   plan_score  q/k/v of one kv head, prompt_attn and the shared scores below; its
 *               row of the plan. plan_layer: every kv head's rows of a layer, nothing else.
 *   prefill     q/k/v of the layer; the plan (ctx->plan, planned strategies); prompt_attn
 *               (rows of the prompt's attention, cached
 *               per head while contiguous); the shared scores prompt_colsum (accumulated
 *               attention: whole prompt, observation windows, masked row sets),
 *               prompt_entropy (per-row entropy) and value_norms (||v W_O||_1 per kv head
 *               and prompt token); layer_kv (another layer's K/V of the context's kv heads).
 *   online_*    the probabilities of the query over the cache (probs): taken from the
 *               full-cache attention the engine computes once per (query head, position)
 *               whenever the configuration sees the full cache; prompt_colsum for the
 *               queries before the cache first fills (H2O).
 *   select      q of the query; key_pages (page min/max of the original keys, per kv head,
 *               shared by every configuration with the same page size).
 *   encode      the cache rows; q/k/v and prompt_attn for encoders that score (asymkv).
 * prefill may also read this layer's W_O (w_o).
 * Key norms are O(P D) per kv head and are computed by the strategy itself (knorm).
 *
 * Ownership: the engine owns every rp_cache and rp_layer_ctx; strategies own their cfg
 * (free_cfg) and online state (online_free). Pointers in rp_layer_ctx are valid only for
 * the duration of the call. Hooks are called concurrently from several threads for
 * different (sequence, layer, kv head) items: no global mutable state; cfg is read-only
 * after configure/calibrate.
 *
 * Determinism: ties are broken by lower position (rp_topk); randomness only through
 * rp_rng seeded from rp_layer_ctx.seed, which the engine derives from (config, sequence,
 * layer); mix in the kv head yourself, as the layer numbers it (ctx->g0 + g).
 */
#ifndef KV_STRATEGY_H
#define KV_STRATEGY_H

#include <stddef.h>
#include <stdint.h>

#include "attn.h"
#include "kvtrace.h"

/* ---- parameters ----------------------------------------------------------------------- */

/* RP_LIST: numbers joined by '/' ("0.2/0.5/0.8"), each within [min, max], at most
 * RP_LIST_MAX of them; RP_PATH: a readable regular file (no ',', whitespace or quotes in the
 * name; in a sweep file a relative path is relative to the sweep file's directory). For both,
 * "none" is the empty value (the usual default), values[i] holds the count of numbers (LIST)
 * or 0 / 1 (PATH: none / a file), and the text reaches the strategy through configure_text. */
typedef enum rp_ptype { RP_INT, RP_FLOAT, RP_ENUM, RP_BOOL, RP_LIST, RP_PATH } rp_ptype;
#define RP_LIST_MAX 1024

typedef struct rp_param_def {
    const char *name;
    rp_ptype type;
    const char *def;        /* default as written in a config string ("0.5", "max", "1") */
    double min, max;        /* inclusive range for INT/FLOAT */
    const char *choices;    /* ENUM: "avg|max" (value = index of the choice) */
    const char *help;
} rp_param_def;

#define RP_MAX_PARAMS 24

/* Budgets: strategies with needs_budget take `keep=F` (fraction in (0, 1]) or `budget=N`
 * (entries); the engine parses both, puts the one given first in the canonical string,
 * and resolves it per sequence: prefill B = max(1, round(keep * P)); online
 * B = max(1, round(keep * n)). A `budget=` larger than what the cache would hold is an
 * error ("budget larger than the sequence"); equal to it, and keep=1, mean "keep all". */
typedef enum rp_budget_kind { RP_BUDGET_NONE = 0, RP_BUDGET_KEEP, RP_BUDGET_COUNT } rp_budget_kind;

/* ---- the cache of one kv head --------------------------------------------------------- */

/* Bytes the compressed cache occupies (K and V together), by kind (docs/METHODS.md §8). */
typedef struct rp_bytes {
    double payload;         /* stored K/V values (fp16 entries: 2 * D * 2 bytes each) */
    double scales;          /* quantisation scales and zero-points */
    double bases;           /* low-rank bases amortised over the tokens they serve */
    double indices;         /* positions / page tables kept to address entries */
} rp_bytes;

typedef struct rp_cache {
    size_t n, cap;          /* entries held, capacity */
    size_t D;               /* set by the engine before any hook sees the cache */
    int32_t *pos;           /* [cap] representative original position (ascending order) */
    int32_t *mult;          /* [cap] multiplicity n_e (1 = a plain token); logit + log n_e */
    int32_t *mem_off;       /* [cap+1] member list offsets, or NULL when every mult is 1 */
    int32_t *members;       /* original positions each entry stands for (mem_off ranges) */
    size_t n_members, members_cap;
    float *k, *v;           /* [cap][D] current representation of each entry */
    int modified;           /* 1 when k/v differ from the originals (merge/encode): the
                               engine then computes kv_mse_k/v over represented members */
    rp_bytes bytes;         /* filled by encode; the engine fills fp16 defaults otherwise */
    /* Positions-only mode: src_k, src_v [src_n][D] are the kv head's source rows (the item's
     * K and V, stride D); while src_k != NULL the cache holds no rows (k = v = NULL) and
     * entry e's rows are src_k/src_v + pos[e] * D. The engine sets it on every prefill
     * output cache (out[g]: ctx->k/v + g * ctx->n * D, src_n = ctx->n) so a prefill that
     * keeps rows unmodified copies none of them; rp_cache_rows leaves it (rows gathered). */
    const float *src_k, *src_v;
    size_t src_n;
} rp_cache;

/* Engine-provided helpers for strategies (replay/strategy.c).
 *
 * Who may touch rows when: a prefill hook fills out[g] through these helpers only, and
 * must call rp_cache_rows(&out[g]) before it reads or writes out[g].k / .v itself (merging's
 * folded values); k and v are NULL until then. rp_cache_push of exactly the source row of
 * t (k == src_k + t * D and v == src_v + t * D: ctx->k + (g * ctx->n + t) * D, what
 * ev_push_kept gives) records the position only; any other row, and rp_cache_push_merged,
 * gathers the rows first (rp_cache_rows) and then copies as usual. rp_cache_reserve and
 * rp_cache_compact work in either mode. Every other hook (online_*, select, encode,
 * online_view, online_rows) gets caches with rows (the engine gathers them where it reads
 * them), and a cache the hook did not get from the engine's prefill (src_k NULL: unit tests,
 * the engine's own copies) always has rows. */
int rp_cache_reserve(rp_cache *c, size_t cap, size_t members_cap);   /* 0 ok, -1 ENOMEM */
void rp_cache_clear(rp_cache *c);
/* Positions-only mode off: k/v allocated at the capacity and the n entries' source rows
 * gathered by position. A no-op (0) for a cache with rows. 0 ok, -1 out of memory (the
 * cache unchanged). */
int rp_cache_rows(rp_cache *c);
/* Append a plain token t with its original k/v rows. */
int rp_cache_push(rp_cache *c, int32_t t, const float *k, const float *v);
/* Append a merged entry of positions mem[0..m) with the given k/v rows (e.g. means). */
int rp_cache_push_merged(rp_cache *c, const int32_t *mem, size_t m, const float *k, const float *v);
/* Keep only entries whose flag is non-zero, preserving order. */
void rp_cache_compact(rp_cache *c, const uint8_t *keep);
void rp_cache_free(rp_cache *c);

/* The one top-k of the replay (every strategy ranks through it): the indices of the k
 * highest scores among score[0..n), written to out[0..min(k, n)) in ascending index order.
 * Ranking: higher score first; NaN ranks below every number; ties (and NaNs among
 * themselves) go to the lower index. k > n is clamped to n (every index is kept); k == 0
 * returns 0 and leaves out untouched. Returns min(k, n). Needs no memory beyond out: it
 * cannot fail. Float scores convert to double exactly, which keeps their ranking. */
size_t rp_topk(const double *score, size_t n, size_t k, int32_t *out);

/* The one error helper of the replay (engine, export, strategies): formats one line into
 * err (truncated to errlen) and returns -1, so `return rp_failf(err, errlen, "...", ...)`.
 * Library-level calls report through kv_error (kv_error_set) instead; the engine copies
 * their msg with rp_failf(err, errlen, "%s", ke.msg). */
int rp_failf(char *err, size_t errlen, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* splitmix64 stream. */
typedef struct rp_rng { uint64_t s; } rp_rng;
uint64_t rp_rng_next(rp_rng *r);
double rp_rng_uniform(rp_rng *r);   /* [0, 1) */

/* ---- what a hook sees ------------------------------------------------------------------ */

typedef struct rp_layer_ctx {
    size_t seq, layer, n_layers;
    size_t H, Hkv, G, D;
    size_t n;               /* valid tokens of this sequence */
    size_t P;               /* prompt length (prefill protocol; n in online mode) */
    const float *q;         /* [H][n][D]   post-RoPE queries of this (sequence, layer) */
    const float *k, *v;     /* [Hkv][n][D] post-RoPE keys, values */
    attn_params ap;         /* scale, softcap, window of this layer */
    const kv_info *info;
    /* RoPE tables [n][rotary_dim] (NULL when the trace has none, or when no configuration of
     * the run declares uses_rope) and the layout. */
    const float *rope_cos, *rope_sin;
    size_t rotary_dim;
    int rope_interleaved;
    uint64_t seed;          /* from (config, sequence, layer) */
    /* Attention probabilities of query rows [t0, t1) of head h over keys [0, P), with the
     * causal mask (and window); rows normalised over their visible keys:
     * out [t1 - t0][P]. Computed with the engine's kernels. 0 ok, -1 ENOMEM. */
    int (*prompt_attn)(const struct rp_layer_ctx *ctx, size_t h, size_t t0, size_t t1, float *out);
    /* K/V [ctx->Hkv][n][D] of another layer of the same sequence (MiniCache): that layer's kv
     * heads [ctx->g0, ctx->g0 + ctx->Hkv), the context's own (all of them in a context of the
     * whole layer, one in a kv-head item), so kv head g's rows are at g * n * D. 0 ok. */
    int (*layer_kv)(const struct rp_layer_ctx *ctx, size_t layer, const float **k, const float **v);
    void *engine;           /* private to the engine */
    /* Added by the engine (after the fields above): the run's --gqa-reduce choice
     * (RP_GQA_MEAN default), for strategies whose reference leaves the GQA reduction open. */
    int gqa_reduce;
    /* Shared scores (replay/shared.h): computed once per (sequence, layer) on the first
     * request of any configuration and reused by every other one of the sweep, so a
     * score-based strategy costs its own scoring only. Each is exactly what summing
     * prompt_attn rows gives (same fp32 probabilities, added in double in ascending row
     * order from 0). NULL when the context was built without the engine (unit tests): use
     * prompt_attn then (evict_util.h's ev_accum_rows does both).
     *   prompt_colsum   out [P] (overwritten): out[j] = sum over query rows t in [t0, t1)
     *                   with want == NULL or want[t] of p_h(t, j) (accumulated attention: the
     *                   whole prompt for H2O/CAB importance, the last w rows for the
     *                   SnapKV-family observation window, CAB's bridges with a mask).
     *                   Unmasked ranges are kept; masked ones computed per call, wanted rows
     *                   only. 0 ok, -1 out of memory.
     *   prompt_entropy  [P] normalised entropy of each prompt row t's own attention over its
     *                   visible keys (entropy_merge), NULL when out of memory.
     *   key_pages       min/max of the ORIGINAL keys of kv head g over the whole pages
     *                   [0, np) of `page` positions (np * page <= n), d-major: page p's
     *                   dimension d at kmin[d * *ld + p] (so that vector lanes are pages:
     *                   quest_bounds_t), valid until the next call (Quest's page bounds;
     *                   extended as pages fill). Only for caches whose entry e is the
     *                   original position e. */
    int (*prompt_colsum)(const struct rp_layer_ctx *ctx, size_t h, size_t t0, size_t t1, const uint8_t *want,
                         double *out);
    const double *(*prompt_entropy)(const struct rp_layer_ctx *ctx, size_t h);
    int (*key_pages)(const struct rp_layer_ctx *ctx, size_t g, size_t page, size_t np, const float **kmin,
                     const float **kmax, size_t *ld);
    /* Set by the engine before each configuration's prefill call: the keep=F the configuration
     * was given (0 with budget=N), for strategies whose reference has its own budget rule
     * (kvpress keeps int(P (1 - compression_ratio)): replay/strategies/kvpress_budget.h). */
    double keep;
    /* The read-out's W_O of this layer (criticalkv weighs entries by ||v W_O_h||_1): *w
     * [H*D][C] (row h*D + d: head h's output dimension d), *C = d_model; read once per
     * (sequence, layer), valid for the call. 0 ok; -1 the trace has no /readout; -2 out of
     * memory or a read error. NULL when the context was built without the engine. */
    int (*w_o)(const struct rp_layer_ctx *ctx, const float **w, size_t *C);
    /* The trace's /needles (every sequence's; kvtrace.h kv_needle_field order):
     * needles[f * n_needles + i] is field f of needle i; NULL and 0 when the trace has none
     * (evict_span, a diagnostic, evicts the needle spans of ctx->seq). */
    const int32_t *needles;
    size_t n_needles;
    /* Shared (replay/shared.h, rp_shared_value_norms): *u [P] = mean over the G query heads h
     * of kv head g of ||v_j W_O[h]||_1 for the prompt tokens j (criticalkv, criticaladakv),
     * computed once per (sequence, layer, kv head) on the first request and reused by every
     * configuration and budget; valid for the call. Returns as w_o: 0 ok, -1 no /readout, -2
     * out of memory or a read error. NULL when the context was built without the engine
     * (compute it with rp_value_norms from w_o then). */
    int (*value_norms)(const struct rp_layer_ctx *ctx, size_t g, const double **u);
    /* The layer's number of this context's kv head 0: 0 for a context of the whole layer, the
     * kv head for a one-kv-head context (head_separable). Hooks that tie something to the kv
     * head itself (a random stream per head, a calibrated basis per head) use g0 + g, so they
     * do not depend on the work unit. */
    size_t g0;
    /* The layer's number of kv heads (ctx->Hkv for a context of the whole layer); 0 in contexts
     * built without the engine, which are whole layers: read it with rp_ctx_layer_hkv. */
    size_t Hkv_layer;
    /* Planned strategies (plan_score below): the plan of this context's kv heads for the
     * configuration being prefilled, [ctx->Hkv][plan_size] doubles (kv head g's row at
     * plan + g * plan_size), as plan_layer left it for the whole layer. Set by the engine in a
     * one-kv-head context (kv-head work items); NULL in a context of the whole layer, where the
     * strategy computes it itself through the same hooks (rp_plan_get). */
    const double *plan;
} rp_layer_ctx;

enum { RP_GQA_MEAN = 0, RP_GQA_MAX = 1, RP_GQA_SUM = 2 };

/* Calibration data (lowrank, qfilter, duo): the Q/K/V of layer `layer` for the calibration sequences. */
typedef struct rp_calib_ctx {
    size_t layer, n_layers, Hkv, D, n_seq;
    const size_t *n;        /* [n_seq] valid tokens per calibration sequence */
    const float *const *k, *const *v;   /* [n_seq] -> [Hkv][n[i]][D] */
    const float *rope_cos, *rope_sin;   /* [T][rotary_dim] or NULL (none, or no part uses_rope) */
    size_t rotary_dim;
    int rope_interleaved;
    size_t H;                           /* q-heads */
    const float *const *q;              /* [n_seq] -> [H][n[i]][D] post-RoPE queries (qfilter) */
    attn_params ap;                     /* scale, softcap, window of this layer (duo) */
} rp_calib_ctx;

/* ---- the strategy table ---------------------------------------------------------------- */

enum { RP_EVICT = 1, RP_ENCODE = 2 };            /* kind */
#define RP_CALIB_NONE ((size_t)-1)                /* calib_seqs: this configuration does not calibrate */
enum { RP_PREFILL = 1, RP_ONLINE = 2 };          /* protocols supported */

typedef struct rp_strategy {
    const char *name;
    const char *summary;        /* one line for --help */
    const char *reference;      /* paper + repository */
    unsigned kind;
    unsigned protocols;
    int needs_budget;           /* takes keep= / budget= */
    int time_dependent;         /* encode's output depends on the query position t */
    const rp_param_def *params; /* declared order = canonical order */
    size_t n_params;

    /* values[i] for params[i] (ENUM: choice index, BOOL: 0/1). Cross-parameter checks
     * here; on error write one line into err and return -1. */
    int (*configure)(const double *values, void **cfg, char *err, size_t errlen);
    void (*free_cfg)(void *cfg);
    /* Optional: layers of calibration data, called once per layer before replay. The
     * number of calibration sequences the strategy wants: calib_seqs(cfg); RP_CALIB_NONE
     * when this configuration does not calibrate (asymkv without ranks): no sequence is
     * reserved for it and calibrate is not called. */
    size_t (*calib_seqs)(const void *cfg);
    int (*calibrate)(void *cfg, const rp_calib_ctx *cc, char *err, size_t errlen);
    /* calibrate reads cc->k and cc->v only: the engine reads no query and passes q = NULL
     * (0: q is given) */
    int calib_kv_only;

    /* RP_EVICT, prefill protocol: out[g] for g < Hkv, empty on entry. B = budget per kv
     * head (the strategy may redistribute: PyramidKV per layer, AdaKV across heads). */
    int (*prefill)(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out,
                   char *err, size_t errlen);

    /* RP_EVICT, online protocol. probs [G][c->n]: attention of the G query heads of kv
     * head g at position t over the cache c (t is its last entry). Write the indices (into
     * c) of entries to evict to evict[] (room for c->n), their count to *n_evict; afterwards
     * c->n - count <= B. Returns KV_OK, or a status with a one-line message in err
     * (kv_error_set; KV_ERR_NOMEM for "out of memory"): the engine names the configuration,
     * sequence, layer, kv head and position around that message. */
    void *(*online_new)(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B);
    kv_status (*online_step)(void *state, const rp_layer_ctx *ctx, size_t g, size_t t,
                             const rp_cache *c, const float *probs, size_t B, size_t *evict,
                             size_t *n_evict, kv_error *err);
    void (*online_free)(void *state);

    /* Optional: rewrite the k/v rows of a working copy `view` of the kept cache just before
     * query t attends to it (StreamingLLM's in-cache re-indexing of positions, finch's key
     * re-rotation; both protocols: in prefill the view holds the prompt cache and the exact
     * entries [P, t]); the kept cache itself is unchanged. Called after token t is appended and
     * before any encode. Not a reconstruction: kv_mse ignores it. 0 ok, -1 with err. */
    int (*online_view)(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t,
                       rp_cache *view, char *err, size_t errlen);
    /* Optional: 0 when this configuration's online_view leaves every row alone (e.g.
     * streaming reindex=0), so the engine skips the per-query working copy. NULL = active. */
    int (*view_active)(const void *cfg);

    /* Optional, decode time: visible[e] = 1 for the entries query head h sees at t. */
    void (*select)(const void *cfg, const rp_layer_ctx *ctx, size_t h, size_t t,
                   const float *q, const rp_cache *c, size_t B, uint8_t *visible);

    /* RP_ENCODE: rewrite c->k/v of kv head g in place (position t: the query position
     * when time_dependent, else the last position), set c->modified and c->bytes. */
    int (*encode)(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *c,
                  char *err, size_t errlen);
    /* Optional, time_dependent encoders: the incremental form of encode for a cache that only
     * grows at its end. Entries [0, m_prev) of c hold what encode gave for the first m_prev
     * entries; [m_prev, c->n) are exact rows just appended. Must leave c exactly as encode
     * would for all c->n entries (rows, bytes, modified). The engine uses it whenever the
     * cache a query sees only grew since the previous query (prefill: a prefix of one fixed
     * entry list; online: until an eviction), so a query costs the new entries instead of a
     * re-encode of the whole cache. */
    int (*encode_extend)(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *c,
                         size_t m_prev, char *err, size_t errlen);
    /* Optional, with encode_extend: for encoders that rewrite a row at most once and never
     * change it afterwards. c: the exact entries, of which the encoding covers the first m
     * (prefill: a prefix of one fixed list). Returns 0 when, after encode of those m entries,
     * keys [0, *kcut) and values [0, *vcut) hold their final rows (what any larger m gives
     * them) and every other row is exact, with c->modified = (*kcut + *vcut > 0), both cuts
     * nondecreasing in m; -1 when the encoding of m entries is not of this form. The
     * engine then evaluates a block of prefill query rows at once against the encoding of
     * the block's last row (attn_rows_cut), bit for bit what each row's own encoding gives. */
    int (*encode_cuts)(const void *cfg, const rp_layer_ctx *ctx, const rp_cache *c, size_t m, size_t *kcut,
                       size_t *vcut);
    /* Optional: encode of a copy without the copy. c holds the copy's entries (positions,
     * multiplicities, members, modified and bytes of the source) and room for its c->n rows,
     * whose contents are undefined; sk, sv [c->n][D] are the rows the copy would hold (another
     * cache's, read only). Must write every row of c and leave c exactly as copying sk, sv
     * into it and then encode would (rows, bytes, modified). The engine calls it where it
     * makes a copy of a cache to encode it (the first prefix of an incremental encoding,
     * inc) and nothing rewrites the copy before this encoder (no view, no eviction encode):
     * the copy then costs no pass over the rows that the encoder rewrites (quant: every row
     * outside the fp16 residual). */
    int (*encode_from)(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t t, const float *sk,
                       const float *sv, rp_cache *c, char *err, size_t errlen);
    /* Optional, RP_ENCODE: the protocols this configuration supports when narrower than
     * .protocols (asymkv's value budget needs a prompt); checked before the run starts. */
    unsigned (*cfg_protocols)(const void *cfg);
    /* Optional, RP_EVICT prefill protocol: 0 when this configuration runs on a prompt of P
     * entries with budget B < P per kv head in a model of n_layers layers, else -1 with one
     * line in err (SnapKV's window must be smaller than the budget). The engine calls it for
     * every (configuration, sequence) before any work, so an infeasible sweep stops at once. */
    int (*check_budget)(const void *cfg, size_t P, size_t B, size_t n_layers, char *err, size_t errlen);
    /* Strategies with RP_LIST or RP_PATH parameters: called instead of configure, with
     * text[i] the canonical text of parameter i for those types ("0.2/0.5", "none", the
     * resolved path) and NULL for the others. */
    int (*configure_text)(const double *values, const char *const *text, void **cfg, char *err, size_t errlen);
    /* Optional, RP_EVICT: a decode-time press (kvpress DecodingPress, DMSPress, CAMPress). Its
     * prefill hook keeps the whole prompt; online_step is called after every decode query t >= P
     * (P: the trace's prompt length), whatever the cache size, and never before, so the press
     * decides when to compress. Under --mode prefill the engine runs those decode steps exactly
     * as under --mode online (token t appended, query t attends, online_step), so the two modes
     * give the same results. */
    int decode_time;
    /* Optional, online steps: called after each online_step once the engine has dropped the
     * named entries: rewrite the v rows of the kept entries c[0, c->n) in place (CaM merges
     * evicted values into kept neighbours) and set c->modified when a row changed. 0 ok, -1 with
     * one line in err. */
    int (*online_rows)(void *state, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *c, char *err,
                       size_t errlen);
    /* Optional: 1 when every hook of the strategy that the prefill or the online protocol calls
     * works on a context of one kv head alone, with the results it gives that kv head in a
     * context of the whole layer. Each hook's output for kv head g then depends only on kv head
     * g's rows (ctx->q of its G query heads, ctx->k/v of g, the probabilities the engine passes
     * for g's query heads, the shared scores of those heads: prompt_attn, prompt_colsum,
     * prompt_entropy, key_pages; another layer's K/V of g through layer_kv) and on nothing
     * indexed by the head number itself except through ctx->g0 + g (random's stream of kv head
     * g, CaM's draws, lowrank's calibrated basis of kv head g; the layer's kv head count is
     * rp_ctx_layer_hkv): no budget moved across the kv heads of a layer (AdaKV), no layer-wide
     * maximum, no random stream walked over the heads, no ctx->w_o (layer_kv gives the
     * context's kv heads only). What it covers:
     *   RP_EVICT   prefill, and the per-query hooks it has: online_view (streaming's
     *              re-indexing, finch's re-rotation), select (quest), the decode-time press's
     *              online_new / online_step / online_rows (decoding, dms, cam); with
     *              RP_ONLINE in .protocols also the online protocol's online_new /
     *              online_step / online_rows / online_view;
     *   RP_ENCODE  encode, encode_extend, encode_cuts, encode_from for kv head g, in either protocol (quant,
     *              asymkv, think, lowrank; calibration stays per layer, its per-head state
     *              looked up by g0 + g; minicache: kv head g of the partner layer, through
     *              layer_kv).
     * Online audit (every strategy with RP_ONLINE): full, knorm (the cache's own key rows),
     * streaming (positions only; its view re-rotates g's rows), tova (probs of g's query group),
     * h2o (probs and, before the cache first fills, prompt_colsum of g's query heads g G + i,
     * local like every shared score), random (online_new seeds its stream by g0 + g), decoding
     * and dms (their scorers: probs, g's key rows, ctx->q of g's query heads), cam (draws by
     * g0 + g, merges among g's own rows), quant, asymkv, lowrank (basis g0 + g), minicache
     * (kv head g of the partner layer): head-separable.
     * When every configuration of a sweep (either protocol; online: no planned strategy) has it
     * on every part (rp_head_separable), the
     * engine's work unit is one (sequence, layer, kv head) instead of a (sequence, layer): the
     * hooks then see a context of one kv head (ctx->Hkv = 1, ctx->H = G, q/k/v that head's
     * rows, out[0], g = 0, ctx->g0 its number in the layer), so a thread holds one kv head's
     * working set; exports get the layer's kv head number (g0 + g) as before. A strategy that
     * does combine the kv heads of a layer can still set it when everything that crosses heads
     * is in its plan (plan_score / plan_layer below: adakv, criticaladakv, simlayerkv,
     * criticalkv, chunkkv, chunk, merging, noncausal_attn, leverage, compactor; prefill only).
     * 0 (the default) keeps the whole layer together, which is always correct. */
    int head_separable;
    /* Optional: head_separable for one configuration, when it depends on the parameters
     * (per_layer: its inner press's). NULL = head_separable. */
    int (*cfg_head_separable)(const void *cfg);
    /* Optional, with online_view: 1 when, under the prefill protocol, the view query t gets is
     * the first entries of the view the last query gets (no row depends on t: finch's re-rotated
     * context keys go to P - c .. P - 1 for every query, the exact entries stay where they are).
     * The engine then makes the view once per (sequence, layer, kv head) and evaluates blocks of
     * query rows against it (attn_rows_cut), bit for bit the per-query views' results. */
    int view_static;
    /* Optional: 1 when prefill reads ctx->prompt_entropy. The shared pass over the whole
     * prompt then fills the entropies the first time any configuration asks for the prompt's
     * column sums, so a sweep with h2o before this strategy pays the pass once, not twice. */
    int uses_entropy;
    /* Optional: the last late_params parameters (INT/FLOAT/ENUM/BOOL) were added after results
     * of the strategy existed: the canonical string names them only off their default, so those
     * results' canonical strings, and the hashes and random streams derived from them, stay. */
    size_t late_params;
    /* Optional, RP_EVICT prefill, with head_separable: a two-step prefill for strategies that
     * combine something across the kv heads of a layer (AdaKV's joint top-k, SimLayerKV's one
     * decision per layer, kvpress's window padded with the layer's maximum score, scores
     * z-normalised over the layer's kv heads). Their kv head's part is a score vector of fixed size; everything that
     * crosses heads is plan_layer's, so the prefill of kv head g needs only g's rows, scores and
     * plan, and such a strategy runs in kv-head work items like a head-separable one:
     *   plan_size   doubles per kv head of the plan for a prompt of P tokens, G query heads per
     *               kv head and budget B (0: this (P, B) needs no plan; prefill then gets
     *               ctx->plan == NULL and must not ask rp_plan_get).
     *   plan_score  writes kv head g's row out [plan_size] from what a prefill context of g gives
     *               (ctx->q of its query heads, ctx->k, ctx->v, the shared scores prompt_colsum,
     *               prompt_entropy, prompt_attn; ctx->keep, ctx->seed): never w_o, value_norms
     *               or layer_kv (the engine's plan contexts have none). 0 ok, -1 with one line
     *               in err.
     *   plan_layer  once per (sequence, layer, configuration), after every kv head's
     *               plan_score: rewrites plan [Hkv][plan_size] (row g = kv head g's scores, in
     *               head order) in place into each kv head's plan (budgets, keep flags, the lazy
     *               flag). Runs in a fixed order whatever the work unit and thread count.
     *   prefill     reads kv head g's plan at ctx->plan + g * plan_size (rp_plan_get).
     * The engine (kv-head items) runs plan_score in "plan items" (one per (layer, kv head),
     * reading that kv head's Q, K and V), then plan_layer per layer, then the kv-head items
     * with ctx->plan set; a context of the whole layer runs the same three steps inside the
     * strategy's prefill (rp_plan_get), so both work units give the same bits. */
    size_t (*plan_size)(const void *cfg, size_t P, size_t G, size_t B);
    int (*plan_score)(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B, double *out, char *err,
                      size_t errlen);
    int (*plan_layer)(const void *cfg, size_t Hkv, size_t G, size_t P, size_t B, double *plan, char *err,
                      size_t errlen);
    /* Optional, prefill protocol: which prompt query rows this configuration part reads. Returns
     * r such that every hook the part has under --mode prefill (prefill, plan_score, online_view,
     * select, encode, encode_extend, encode_cuts, encode_from, a decode-time press's online_*) reads, of the
     * prompt's query rows ctx->q[h][t], t < P, only rows t in [P - r, P): directly, or through
     * the engine's callbacks that compute from Q, which read
     *     prompt_attn(h, t0, t1)           Q rows [t0, t1) of head h;
     *     prompt_colsum(h, t0, t1, want)   Q rows [t0, t1) (with want: the wanted ones);
     *     prompt_entropy(h)                Q rows [0, P).
     * Except the whole prompt's scores: a part whose hooks call prompt_colsum(h, 0, P, NULL) or
     * prompt_entropy does not count their rows in r but sets *whole = 1 (*whole is 0 on entry):
     * the engine serves those from the trace's /prompt_scores under --prompt-scores trace
     * (reading only rows [P, n), shared.h rp_shared_use_captured) and computes them from rows
     * [0, P) otherwise, and adds what it needs. P: the sequence's prompt length, B: the budget
     * the prefill hook gets (B >= P: nothing evicted). r >= P means every row. Rows [P, n)
     * (the evaluated queries) are always read; ctx->q rows below P - r hold unspecified values
     * (KVTRACE_DEBUG=q-poison makes them NaN: tests/py/test_q_rows.py runs every declaring
     * strategy so). Not consulted under --mode online (every row is read: online_step's
     * strategies walk the prompt's queries) nor by calibration (its own read, calib_kv_only).
     * Declare it only for what the code provably reads (a part of a composition counts for
     * itself: an encoder's r is what encode / encode_extend / encode_cuts / encode_from read); NULL (the
     * default) = every row, always correct. */
    size_t (*q_rows)(const void *cfg, size_t P, size_t B, int *whole);
    /* 1 when a hook of the strategy (calibrate included) reads the RoPE tables or tests whether
     * the trace has them: rp_layer_ctx / rp_calib_ctx rope_cos, rope_sin (expected_attention,
     * cap and leverage / compactor through expected_attention.h's ea_* helpers; lowrank; the
     * re-rotating views of streaming reindex=1 and finch rerotate=1, evict_util.h
     * ev_reindex_view; asymkv with a rank, through lowrank; per_layer, its inner press's). The
     * engine reads /rope (T * rotary_dim floats each of cos and sin, and their value scan) only
     * when some part of some configuration of the run sets it: in every other run rope_cos and
     * rope_sin are NULL even when the trace has the tables, so a hook that reads them or
     * tests them (!ctx->rope_cos: "the trace has no /rope tables") must declare it, or it sees
     * a trace without tables. cfg_uses_rope, when set, decides per configuration (NULL:
     * uses_rope). tests/py/test_rope_lazy.py checks that every strategy's default
     * configuration gives the same results with the tables read as without. */
    int uses_rope;
    int (*cfg_uses_rope)(const void *cfg);
} rp_strategy;

/* The plan a planned strategy s's prefill reads (rows of ctx's kv heads, plan_size(cfg, ctx->P,
 * ctx->G, B) doubles each): ctx->plan when the engine set it, else computed here for ctx's
 * Hkv kv heads (plan_score of each in order, then plan_layer) into *own, which the caller
 * frees (NULL when ctx->plan is used). 0 ok, -1 with one line in err. */
int rp_plan_get(const rp_strategy *s, const void *cfg, const rp_layer_ctx *ctx, size_t B, const double **plan,
                double **own, char *err, size_t errlen);

/* Calibration work per kv head, in parallel: fn(arg, g) for g in [0, n) on the run's OpenMP
 * threads (calibrate is called outside the replay's parallel region; one thread without
 * OpenMP). fn must write only kv head g's slots and its own scratch. Returns 0 when every
 * call returned 0, else the return value of the lowest failing g (*gfail = that g), so the
 * message a caller builds does not depend on the thread count. */
int rp_calib_heads(size_t n, int (*fn)(void *arg, size_t g), void *arg, size_t *gfail);

/* The registry (replay/strategies/registry.c over replay/strategies/list.h). */
const rp_strategy *rp_strategy_find(const char *name);
size_t rp_strategy_count(void);
const rp_strategy *rp_strategy_at(size_t i);

/* Default fp16 bytes of a cache of plain entries (payload only; the engine adds 4 bytes
 * of index per entry for eviction strategies that keep a subset). */
static inline double rp_fp16_bytes(size_t entries, size_t D) { return (double)entries * 2.0 * (double)D * 2.0; }

/* The configuration part (strategy s, cfg) reads the RoPE tables (uses_rope). */
static inline int rp_uses_rope(const rp_strategy *s, const void *cfg)
{
    return s->cfg_uses_rope ? s->cfg_uses_rope(cfg) : s->uses_rope;
}

/* The configuration part (strategy s, cfg) is head-separable (head_separable). */
static inline int rp_head_separable(const rp_strategy *s, const void *cfg)
{
    return s->cfg_head_separable ? s->cfg_head_separable(cfg) : s->head_separable;
}

/* The layer's number of kv heads of a hook's context (rp_layer_ctx.Hkv_layer). */
static inline size_t rp_ctx_layer_hkv(const rp_layer_ctx *ctx) { return ctx->Hkv_layer ? ctx->Hkv_layer : ctx->Hkv; }

/* The configuration part (strategy s, cfg) has an active per-query view. */
static inline int rp_view_active(const rp_strategy *s, const void *cfg)
{
    return s->online_view != NULL && (s->view_active == NULL || s->view_active(cfg));
}

#endif /* KV_STRATEGY_H */
