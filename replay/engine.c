/* The replay engine (engine.h): protocols, shared full attention, per-configuration metrics.
 *
 * L layers, H q-heads, Hkv kv-heads, G = H/Hkv, D head_dim, n valid tokens, P split,
 * NC configurations, NE = n - P evaluated positions, HD = H*D, C d_model, V vocab.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#ifdef _OPENMP
#include <omp.h>
static int max_threads(void) { return omp_get_max_threads(); }
static int thread_num(void) { return omp_get_thread_num(); }
#else   /* built without OpenMP: one thread */
static int max_threads(void) { return 1; }
static int thread_num(void) { return 0; }
#endif

#include "attn.h"
#include "engine.h"
#include "gemm.h"
#include "metric.h"
#include "paged.h"
#include "shared.h"

#define BLK 32              /* query rows per full-attention call */
#define RO_BLK 64           /* positions per read-out block */

struct rp_engine {
    kv_trace *t;
    const kv_info *in;
    const rp_sweep *sw;
    rp_run_opts o;
    size_t S, T, L, H, Hkv, G, D;
    int32_t *tokens, *seq_len, *prefill_len;   /* [S][T], [S], [S] or NULL */
    float *rope_cos, *rope_sin;                /* [T][R] or NULL (none, or no configuration uses_rope) */
    size_t R;
    int interleaved;
    readout *ro;
    attn_params *ap;                           /* [L] */
    const rp_strategy *full;
    int per_head;                              /* work items are (sequence, layer, kv head) */
    int32_t *needles;                          /* [KV_NEEDLE_NF][n_needles] (/needles) or NULL */
    size_t n_needles;
    int want_ent;                              /* a configuration reads the prompt entropies */
    int rope_unread;                           /* the trace has /rope, no configuration uses it: not read */
};

/* A thread's large buffers (the work slab, Q, K, V), kept from one item to the next of a
 * sequence: every item of a sequence needs the same sizes, and a fresh allocation of tens of
 * MiB is mmapped and faulted in again for every item. Their contents are never reused (each
 * item overwrites what it reads; Q rows below item_q_from are neither read nor written, so
 * their pages stay untouched), so this is malloc without the page faults. */
enum { TB_SLAB, TB_Q, TB_K, TB_V, TB_F16, TB_KT, TB_SHW, TB_SHKT, TB_WO, TB_GEMM, TB_DEC, TB_N };
typedef struct thread_bufs {
    void *p[TB_N];
    size_t cap[TB_N];
    /* The engine's own copies of a kv head's cache (a configuration's st->enc, the item's
     * qcopy), given back when the kv head or item ends (cache_give) and taken again by the
     * next one (cache_take) with their pos, mult, k and v at the capacity reached: NC + 1
     * spare caches ([NC]: qcopy), NULL = none yet. Contents never reused either: a copy is
     * made by cache_copy_prefix, which writes every entry it holds, and grows by
     * cache_append. */
    rp_cache *spare;
    size_t n_spare;
} thread_bufs;

/* malloc for buffers of megabytes: 2 MiB-aligned and marked for transparent huge pages where
 * the kernel offers them (madvise mode), so that a 32 MiB buffer faults in 16 times instead of
 * 8192 (page faults were 10% of a 2-thread 16k run's samples). free() releases it. */
static void *big_alloc(size_t bytes)
{
#ifdef MADV_HUGEPAGE
    const size_t huge = (size_t)2 << 20;
    if (bytes >= huge) {
        size_t r = (bytes + huge - 1) / huge * huge;
        void *p = aligned_alloc(huge, r);
        if (p) madvise(p, r, MADV_HUGEPAGE);
        return p;
    }
#endif
    return malloc(bytes);
}

/* calloc for buffers of megabytes whose untouched pages must cost nothing until written (the
 * read-out's folded sum, a pool's first zeroed buffer): calloc, then the transparent
 * huge page hint on its whole pages before anything touches them (calloc does not write
 * fresh mmapped memory), so that the first write to a 2 MiB range faults once, not 512
 * times (the fused sweep's per-layer dO was a third of its page faults at 16k). free()
 * releases it. */
static void *big_calloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
#ifdef MADV_HUGEPAGE
    const size_t huge = (size_t)2 << 20, pg = 4096;
    if (p && n * size >= huge) {       /* calloc checked n * size for overflow */
        uintptr_t a = ((uintptr_t)p + pg - 1) & ~(uintptr_t)(pg - 1), e = ((uintptr_t)p + n * size) & ~(uintptr_t)(pg - 1);
        if (e > a) madvise((void *)a, e - a, MADV_HUGEPAGE);
    }
#endif
    return p;
}

/* A sequence's per-layer buffers of megabytes (the read-out's dO and dH): given back when
 * their layer is done and taken again by a later layer, instead of freed and allocated
 * afresh. free() returns them to the kernel (munmap) and the next layer faults every page in
 * again, zeroed by the kernel: in the fused 20-configuration sweep at 8k that was 0.4 s of
 * system time against 0.1 s without the read-out, and with two threads each munmap is a TLB
 * shootdown across them. The pool holds at most what was in flight at once (a buffer is given
 * back only when its layer no longer needs it), so the peak does not grow; contents are never
 * reused: a zeroed take clears the bytes asked for, as calloc did. */
enum { POOL_MAX = 16 };
typedef struct buf_pool {
    void *p[POOL_MAX];
    size_t cap[POOL_MAX];
    size_t n;
} buf_pool;

/* A buffer of at least `bytes` (the smallest held that fits, else a new one), zeroed when
 * `zero`; NULL when out of memory. */
static void *pool_take(buf_pool *bp, size_t bytes, int zero)
{
    void *p = NULL;
#pragma omp critical(kvtrace_pool)
    if (bp) {
        size_t best = bp->n;
        for (size_t i = 0; i < bp->n; i++)
            if (bp->cap[i] >= bytes && (best == bp->n || bp->cap[i] < bp->cap[best])) best = i;
        if (best < bp->n) {
            p = bp->p[best];
            bp->n--;
            bp->p[best] = bp->p[bp->n];
            bp->cap[best] = bp->cap[bp->n];
        }
    }
    if (p) {
        if (zero) memset(p, 0, bytes);
        return p;
    }
    return zero ? big_calloc(bytes ? bytes : 1, 1) : big_alloc(bytes ? bytes : 1);
}

/* p (taken for `bytes`, or NULL) back into the pool; freed when the pool is full (or bp is
 * NULL: no pool, as pool_take without one is big_alloc / big_calloc). */
static void pool_give(buf_pool *bp, void *p, size_t bytes)
{
    if (!p) return;
    int kept = 0;
#pragma omp critical(kvtrace_pool)
    if (bp && bp->n < POOL_MAX) {
        bp->p[bp->n] = p;
        bp->cap[bp->n] = bytes;
        bp->n++;
        kept = 1;
    }
    if (!kept) free(p);
}

static void pool_free(buf_pool *bp)
{
    for (size_t i = 0; i < bp->n; i++) free(bp->p[i]);
    bp->n = 0;
}

/* b->p[i] with at least `bytes`, or NULL when out of memory (owned by b). */
static void *tb_take(thread_bufs *b, int i, size_t bytes)
{
    if (b->cap[i] < bytes) {
        free(b->p[i]);
        b->p[i] = big_alloc(bytes);
        b->cap[i] = b->p[i] ? bytes : 0;
    }
    return b->p[i];
}

/* Per (sequence, layer) work item. */
typedef struct item {
    rp_engine *E;
    size_t s, l, n, P;
    /* the kv heads [g0, g0 + nkv) of the layer: all of them (nkv = Hkv, g0 = 0), or one when the
     * sweep is head-separable (E->per_head); nh = nkv * G query heads. Arrays of the item are
     * indexed by local heads; result slots, needles, dO and messages by global ones. */
    size_t g0, nkv, nh;
    float *q, *k, *v;            /* [nh][n][D], [nkv][n][D], [nkv][n][D] the item's tensors (ctx.q/k/v) */
    const float *kt;             /* [attn_keys_t_floats(n, D)] the current kv head's keys transposed
                                    once (item_head; the shared scores' copy) for every
                                    full-attention call of the head */
    float **pa;                  /* [H] cached prompt probabilities rows [pa0, pa1) x P */
    size_t *pa0, *pa1;
    float *ok, *ov;              /* another layer's K/V of the item's kv heads [nkv][n][D] (layer_kv) */
    float *wo;                   /* this layer's W_O [H*D][C] (w_o), read on first request */
    rp_shared *sh;               /* scores shared by the configurations (shared.h), lazily filled */
    float *ps_cs, *ps_ent;       /* [nh][n] the trace's /prompt_scores of the item's query heads (RP_PS_TRACE) */
    /* item_decode_share: the evaluated rows' share of the captured prompt sums per local query
     * head, [nh][P] (dsh_done [nkv]: kv head computed), and the full pass's blocks kept by it
     * for item_full_attn ([NB][G * BLK * (1 + D + n)]: lse, of, lg per block; the thread's
     * TB_DEC; only in items of one kv head) or NULL; dsh_failed: it->err holds the pass's
     * message */
    double *dsh;
    uint8_t *dsh_done;
    float *dst;
    int dsh_failed;
    long long o_layer;
    double *ha;                  /* result slots of this layer: [NC][L][H][HA_NF] (shared array) */
    double *ia;                  /* [NC][SA_NF] item-level sums (bytes, guards) */
    float *dO;                   /* [NC][NE][nh * D] the output perturbation of the item's query heads
                                    (read-out; zeroed) */
    uint8_t *dO_set;             /* [NC][nkv] rows of configuration c were written for local kv head g */
    float *dH;                   /* [NC][NE][C] dO @ W_O over the item's kv heads (item_deltas) */
    buf_pool *pool;              /* the sequence's pool that dO and dH come from */
    uint8_t *dh_set;             /* [NC] dH of c holds a perturbation */
    const float *hid;            /* [n][C] the sequence's final residuals (read-out; rows [P, n) only) */
    double *pl;                  /* [NC][L][PL_NF] per-layer read-out sums, NULL = off */
    double *pp;                  /* [NC][NE][PP_ATT] this layer's per-position sums, folded in layer order;
                                    per_head: [NC][NE][G][PP_ATT] the item's terms, added in the
                                    fold in the order one layer item would add them */
    rp_needles *nd;              /* the sequence's needles (this layer's slots), NULL = none */
    /* while item_run runs: */
    char *slab;                  /* the one allocation behind sc (item_alloc) */
    thread_bufs *tb;             /* the running thread's buffers: slab, q, k, v live there */
    struct item_scratch *sc;     /* views into slab */
    rp_cache qcopy;              /* the per-query encoded copy of a cache (grows; not in slab) */
    float *shw;                  /* shared evaluation: [G][BLK][sum of the chains' top entries] weights (it->tb's TB_SHW) */
    size_t shw_cap;
    rp_layer_ctx ctx;            /* what the strategies' hooks see */
    const struct seq_plans *sp;  /* per_head: the planned configurations' plans (ctx.plan), NULL = none */
    int rc;
    char err[1024];
} item;

static size_t split_of(const rp_engine *E, size_t s)
{
    size_t n = (size_t)E->seq_len[s];
    if (E->o.eval_from) return E->o.eval_from;
    if (E->o.decode) return n - E->o.decode;
    if (E->prefill_len) return (size_t)E->prefill_len[s];
    return 0;
}

int rp_engine_has_readout(const rp_engine *e) { return e->ro != NULL; }
int rp_engine_per_head(const rp_engine *e) { return e->per_head; }

/* Every configuration against every evaluated sequence's prompt (or token) count, before any
 * work: the budget fits, and the eviction strategy's check_budget hook accepts it (SnapKV's
 * window below the budget). All failures are named, one line per configuration (its first
 * reason and the sequences it fails on), then a summary line when there are several; -1
 * with them in err. */
static int check_feasible(const rp_engine *E, const rp_sweep *sw, const rp_run_opts *o, const size_t *seqs,
                          size_t n_seqs, char *err, size_t errlen)
{
    size_t n_bad = 0, used = 0, left_out = 0;
    char summary[256];
    err[0] = 0;
    for (size_t c = 0; c < sw->n; c++) {
        const rp_config *cf = &sw->cfg[c];
        size_t bad = 0;
        char why[512] = "", list[256] = "";
        size_t ll = 0;
        for (size_t i = 0; i < n_seqs; i++) {
            size_t s = seqs[i], n = (size_t)E->seq_len[s];
            size_t full = o->mode == RP_PREFILL ? split_of(E, s) : n, B = 0;
            char e2[512] = "";
            if (sweep_budget(cf, full, &B))
                snprintf(e2, sizeof e2, "budget=%.0f larger than the sequence (%zu %s entries)", cf->budget_value, full,
                         o->mode == RP_PREFILL ? "prompt" : "token");
            else if (o->mode == RP_PREFILL && cf->evict->check_budget &&
                     cf->evict->check_budget(cf->evict_cfg, full, B, E->L, e2, sizeof e2) && !e2[0])
                snprintf(e2, sizeof e2, "%s refuses budget %zu on %zu prompt entries", cf->evict->name, B, full);
            if (!e2[0]) continue;
            if (!bad++) snprintf(why, sizeof why, "%s", e2);
            if (ll < sizeof list - 48)
                ll += (size_t)snprintf(list + ll, sizeof list - ll, "%s%zu (%zu entries)", bad > 1 ? ", " : "", s, full);
            else if (ll < sizeof list - 4)
                ll += (size_t)snprintf(list + ll, sizeof list - ll, ", ...");
        }
        if (!bad) continue;
        n_bad++;
        int k = snprintf(err + used, used < errlen ? errlen - used : 0,
                         "%sconfig '%s': infeasible on %zu of %zu sequence(s): %s; sequence(s) %s", used ? "\n" : "",
                         cf->canon, bad, n_seqs, why, list);
        if (k > 0 && used + (size_t)k + 200 < errlen) used += (size_t)k;
        else { left_out++; if (used < errlen) err[used] = 0; }
    }
    if (n_bad == 1 && !left_out) return -1;        /* one configuration: its line says it all */
    if (!n_bad) return 0;
    snprintf(summary, sizeof summary, "%s%zu of %zu configuration(s) cannot run on every evaluated sequence%s; nothing was run",
             used ? "\n" : "", n_bad, sw->n, left_out ? " (the first ones listed)" : "");
    if (used + strlen(summary) + 1 <= errlen) memcpy(err + used, summary, strlen(summary) + 1);
    return -1;
}

int rp_seq_result_alloc(rp_seq_result *r, size_t n_cfg, size_t L, size_t H)
{
    r->sa = calloc(n_cfg * SA_NF, sizeof *r->sa);
    r->ha = calloc(n_cfg * L * H * HA_NF, sizeof *r->ha);
    r->pl = NULL;
    r->pp = NULL;
    r->n_pos = 0;
    memset(&r->nd, 0, sizeof r->nd);
    return r->sa && r->ha ? 0 : -1;
}

void rp_seq_result_free(rp_seq_result *r)
{
    if (!r) return;
    free(r->sa); free(r->ha); free(r->pl); free(r->pp);
    r->sa = r->ha = r->pl = r->pp = NULL;
    r->n_pos = 0;
    rp_needles_free(&r->nd);
}

void rp_engine_free(rp_engine *e)
{
    if (!e) return;
    free(e->tokens); free(e->seq_len); free(e->prefill_len);
    free(e->rope_cos); free(e->rope_sin); free(e->ap); free(e->needles);
    readout_free(e->ro);
    free(e);
}

/* ---- callbacks of rp_layer_ctx ----------------------------------------------------------- */

/* Prompt rows [a, b) x P of head h: probabilities (attn_probs_row of the visible logits, the
 * shared scores' own, so their sums equal the shared ones bit for bit; 0 where masked). */
static int prompt_rows(item *it, size_t P, size_t h, size_t a, size_t b, float *buf)
{
    rp_engine *E = it->E;
    size_t D = E->D, n = it->n, g = h / E->G;
    if (a == b) return 0;
    attn_full_rows(it->q + h * n * D, it->k + g * n * D, it->v + g * n * D, P, D, a, b, &E->ap[it->l], NULL,
                   NULL, buf);
    for (size_t r = 0; r < b - a; r++) {
        size_t t = a + r, lo = attn_lo(t, E->ap[it->l].window);
        float *row = buf + r * P;
        attn_probs_row(row + lo, t + 1 - lo, row + lo);
        for (size_t j = 0; j < lo; j++) row[j] = 0.0f;
        for (size_t j = t + 1; j < P; j++) row[j] = 0.0f;
    }
    return 0;
}

/* Cached per head: one contiguous row range, extended (only the new rows computed) while
 * requests are contiguous (strategies walk the prompt in blocks; several configurations of
 * one strategy walk it again), at most PA_CACHE_FLOATS per head: beyond that the rows are
 * computed into the caller's buffer uncached, so the cache never grows to P x P per head.
 * Rows are independent of the call range (attn.h): caching changes no result. */
#define PA_CACHE_FLOATS ((size_t)1 << 21)

static int cb_prompt_attn(const rp_layer_ctx *ctx, size_t h, size_t t0, size_t t1, float *out)
{
    item *it = ctx->engine;
    size_t P = ctx->P;
    if (h >= it->nh || t0 > t1 || t1 > P) return -1;
    if (t0 == t1) return 0;
    float *c = it->pa[h];
    size_t c0 = it->pa0[h], c1 = it->pa1[h];
    if (!(c && t0 >= c0 && t1 <= c1)) {
        int joins = c && t0 <= c1 && t1 >= c0;
        size_t a = joins && c0 < t0 ? c0 : t0, b = joins && c1 > t1 ? c1 : t1;
        if ((b - a) * P > PA_CACHE_FLOATS) {          /* too large to keep: uncached */
            if ((t1 - t0) * P > PA_CACHE_FLOATS) return prompt_rows(it, P, h, t0, t1, out);
            joins = 0; a = t0; b = t1;
        }
        float *buf = malloc((b - a) * P * sizeof *buf);
        if (!buf) return -1;
        int bad;
        if (joins) {
            memcpy(buf + (c0 - a) * P, c, (c1 - c0) * P * sizeof *buf);
            bad = prompt_rows(it, P, h, a, c0, buf) || prompt_rows(it, P, h, c1, b, buf + (c1 - a) * P);
        } else {
            bad = prompt_rows(it, P, h, a, b, buf);
        }
        if (bad) { free(buf); return -1; }
        free(c);
        it->pa[h] = buf; it->pa0[h] = a; it->pa1[h] = b;
    }
    memcpy(out, it->pa[h] + (t0 - it->pa0[h]) * P, (t1 - t0) * P * sizeof *out);
    return 0;
}

/* The shared scores (shared.h): computed on the first request of any configuration of this
 * work item, reused by the others. */
static int cb_prompt_colsum(const rp_layer_ctx *ctx, size_t h, size_t t0, size_t t1, const uint8_t *want, double *out)
{
    item *it = ctx->engine;
    return it->sh ? rp_shared_colsum(it->sh, h, t0, t1, want, out) : -1;
}

static const double *cb_prompt_entropy(const rp_layer_ctx *ctx, size_t h)
{
    item *it = ctx->engine;
    return it->sh ? rp_shared_entropy(it->sh, h) : NULL;
}

static int cb_key_pages(const rp_layer_ctx *ctx, size_t g, size_t page, size_t np, const float **kmin,
                        const float **kmax, size_t *ld)
{
    item *it = ctx->engine;
    return it->sh ? rp_shared_pages_t(it->sh, g, page, np, kmin, kmax, ld) : -1;
}

/* Rows [t0, t0 + nt) of tensor w of (s, l, h) as raw f16 into raw [nt][D]: 0, or -1 with *ke
 * set. The HDF5 library is not thread-safe, so its reads are serialised (kvtrace_io); the
 * direct path (lib/kvtrace.h kv_trace_read_rows_f16_direct: pread and decode without HDF5)
 * runs outside that lock when the dataset allows it, and only its per-dataset check takes
 * the lock. The same bytes either way. */
static int read_rows_f16(rp_engine *E, kv_tensor w, size_t s, size_t l, size_t h, size_t t0, size_t nt, uint16_t *raw,
                         kv_error *ke)
{
    int ok = 0, bad;
#pragma omp critical(kvtrace_io)
    {
        bad = kv_trace_rows_direct_ok(E->t, w, l, &ok, ke) != KV_OK;
        if (!bad && !ok) bad = kv_trace_read_rows_f16(E->t, w, s, l, h, t0, nt, raw, ke) != KV_OK;
    }
    if (!bad && ok) bad = kv_trace_read_rows_f16_direct(E->t, w, s, l, h, t0, nt, raw, ke) != KV_OK;
    return bad ? -1 : 0;
}

/* Rows [0, n) of tensor w, heads [h0, h0 + nh) of (s, l), as f32 into dst [nh][n][D]. */
static int read_heads_f32(rp_engine *E, kv_tensor w, size_t s, size_t l, size_t h0, size_t nh, size_t n, float *dst,
                          kv_error *ke)
{
    uint16_t *raw = malloc((n ? n : 1) * E->D * sizeof *raw);
    if (!raw) { kv_error_set(ke, KV_ERR_NOMEM, "%s: out of memory", E->in->path); return -1; }
    int rc = 0;
    for (size_t h = 0; h < nh && !rc; h++) {
        rc = read_rows_f16(E, w, s, l, h0 + h, 0, n, raw, ke);
        if (!rc) kv_f16_to_f32(raw, dst + h * n * E->D, n * E->D);
    }
    free(raw);
    return rc;
}

/* The K/V [nkv][n][D] of kv heads [g0, g0 + nkv) of sequence s, layer l. */
static int read_kv_heads(rp_engine *E, size_t s, size_t l, size_t n, size_t g0, size_t nkv, float *k, float *v,
                         kv_error *ke)
{
    return read_heads_f32(E, KV_K, s, l, g0, nkv, n, k, ke) || read_heads_f32(E, KV_V, s, l, g0, nkv, n, v, ke) ? -1 : 0;
}

static int read_kv(rp_engine *E, size_t s, size_t l, size_t n, float *k, float *v, kv_error *ke)
{
    return read_kv_heads(E, s, l, n, 0, E->Hkv, k, v, ke);
}

/* The queries [H][n][D] of sequence s, layer l (calibration: qfilter). */
static int read_q(rp_engine *E, size_t s, size_t l, size_t n, float *q, kv_error *ke)
{
    return read_heads_f32(E, KV_Q, s, l, 0, E->H, n, q, ke);
}

static int cb_layer_kv(const rp_layer_ctx *ctx, size_t layer, const float **k, const float **v)
{
    item *it = ctx->engine;
    rp_engine *E = it->E;
    if (layer >= E->L) return -1;
    if (layer == it->l) { *k = it->k; *v = it->v; return 0; }
    if (it->o_layer != (long long)layer) {      /* the item's kv heads [g0, g0 + nkv) only */
        size_t sz = it->nkv * it->n * E->D;
        if (!it->ok) it->ok = malloc(sz * sizeof *it->ok);
        if (!it->ov) it->ov = malloc(sz * sizeof *it->ov);
        if (!it->ok || !it->ov) return -1;
        kv_error ke;
        it->o_layer = -1;
        if (read_kv_heads(E, it->s, layer, it->n, it->g0, it->nkv, it->ok, it->ov, &ke)) return -1;
        it->o_layer = (long long)layer;
    }
    *k = it->ok; *v = it->ov;
    return 0;
}

/* This layer's W_O (criticalkv): read once per work item on the first request, under the
 * lock every trace read takes. -1 when the trace has no read-out, -2 out of memory or a read
 * error. */
static int cb_w_o(const rp_layer_ctx *ctx, const float **w, size_t *C)
{
    item *it = ctx->engine;
    rp_engine *E = it->E;
    *C = 0;
    if (!E->in->has_readout) return -1;
    size_t c = (size_t)E->in->d_model, HD = E->H * E->D;
    if (!it->wo) {
        float *buf = big_alloc(HD * c * sizeof *buf);
        if (!buf) return -2;
        kv_error ke;
        int bad;
#pragma omp critical(kvtrace_io)
        bad = kv_trace_read_w_o(E->t, it->l, buf, &ke) != KV_OK;
        if (bad) { free(buf); return -2; }
        it->wo = buf;
    }
    *w = it->wo;
    *C = c;
    return 0;
}

/* criticalkv's value norms of kv head g (shared.h): W_O read once per work item (cb_w_o), the
 * norms computed on the first request of any configuration and kept for the others. W_O is the
 * layer's (every query head): its rows start at the item's first kv head g0, g counts from there. */
static int cb_value_norms(const rp_layer_ctx *ctx, size_t g, const double **u)
{
    item *it = ctx->engine;
    const float *wo;
    size_t C;
    int wr = cb_w_o(ctx, &wo, &C);
    if (wr) return wr;
    if (!it->sh || g >= it->nkv) return -2;
    *u = rp_shared_value_norms(it->sh, g, it->v + g * it->n * it->E->D, wo + it->g0 * it->E->G * it->E->D * C, C);
    return *u ? 0 : -2;
}

/* ---- finite values (SCHEMA.md: run refuses a tensor that holds NaN/Inf) ------------------- */

/* Index of the first non-finite value of x[0..n), or n. */
static size_t first_nonfinite(const float *x, size_t n)
{
    size_t bad = n;
    for (size_t i0 = 0; i0 < n && bad == n; i0 += 4096) {
        size_t i1 = n - i0 < 4096 ? n : i0 + 4096;
        int any = 0;
        for (size_t i = i0; i < i1; i++) any |= !isfinite(x[i]);     /* vectorises */
        if (any)
            for (size_t i = i0; i < i1 && bad == n; i++) if (!isfinite(x[i])) bad = i;
    }
    return bad;
}

static int nonfinite_fail(const rp_engine *E, char *err, size_t errlen, const char *what, float x)
{
    return rp_failf(err, errlen, "%s: %s is %s; run 'kvreplay check %s' for a full scan", E->in->path, what,
                 isnan(x) ? "NaN" : x > 0 ? "+Inf" : "-Inf", E->in->path);
}

/* Index of the first non-finite value of the f16 bits x[0..n), or n: all-ones exponent (Inf,
 * NaN), exactly the values that convert to a non-finite float. */
static size_t first_nonfinite_f16(const uint16_t *x, size_t n)
{
    size_t bad = n;
    for (size_t i0 = 0; i0 < n && bad == n; i0 += 4096) {
        size_t i1 = n - i0 < 4096 ? n : i0 + 4096;
        /* exponent 0x7C00 + 0x0400 carries into bit 15, no other exponent does; four values
         * per 64-bit word (a lane's sum is at most 0x8000: no carry into the next lane) */
        uint64_t any = 0;
        size_t i = i0;
        for (; i + 4 <= i1; i += 4) {
            uint64_t w;
            memcpy(&w, x + i, sizeof w);
            any |= (w & 0x7C007C007C007C00ull) + 0x0400040004000400ull;
        }
        for (; i < i1; i++) any |= (uint16_t)((x[i] & 0x7C00u) + 0x0400u);
        if (any & 0x8000800080008000ull)
            for (size_t i = i0; i < i1 && bad == n; i++) if ((x[i] & 0x7C00u) == 0x7C00u) bad = i;
    }
    return bad;
}

/* One read-and-check of the value scan, in the order the scan names its first bad value. */
typedef enum { SC_HEAD, SC_HIDDEN, SC_REF, SC_ROPE, SC_WEIGHT, SC_WO } scan_kind;
typedef struct scan_task { scan_kind kind; size_t s, l, h, w; } scan_task;

/* A thread's scan buffers, allocated on its first task that needs each. */
typedef struct scan_bufs { uint16_t *h16; float *f; size_t fcap; } scan_bufs;

/* Task k of the scan: 0 when its values are finite; else -1 with the run's message in err
 * (a read error's, or nonfinite_fail's naming the first bad value of the task). The read is
 * serialised unless direct (read_rows_f16), the check is not. */
static int scan_one(rp_engine *E, const scan_task *tk, scan_bufs *sb, char *err, size_t errlen)
{
    static const kv_tensor kinds[4] = {KV_Q, KV_K, KV_V, KV_ATTN_OUT};
    static const char *names[4] = {"q", "k", "v", "attn_out"};
    size_t D = E->D, C = E->ro ? E->ro->C : 0, s = tk->s, n = tk->kind <= SC_REF ? (size_t)E->seq_len[s] : 0;
    char what[256];
    kv_error ke;
    int rd = 0;
    if (tk->kind == SC_HEAD) {
        if (!sb->h16 && !(sb->h16 = malloc((E->T ? E->T : 1) * D * sizeof *sb->h16)))
            return rp_failf(err, errlen, "out of memory (value scan)");
        rd = read_rows_f16(E, kinds[tk->w], s, tk->l, tk->h, 0, n, sb->h16, &ke);
        if (rd) return rp_failf(err, errlen, "%s", ke.msg);
        size_t b = first_nonfinite_f16(sb->h16, n * D);
        if (b == n * D) return 0;
        snprintf(what, sizeof what, "/layers/%zu/%s[seq %zu, head %zu, pos %zu, dim %zu]", tk->l, names[tk->w], s,
                 tk->h, b / D, b % D);
        return nonfinite_fail(E, err, errlen, what, kv_f16_to_f32_one(sb->h16[b]));
    }
    if (tk->kind == SC_ROPE) {
        const float *x = tk->w ? E->rope_sin : E->rope_cos;
        size_t m = tk->h * E->R, b = first_nonfinite(x, m);       /* h: the longest sequence */
        if (b == m) return 0;
        snprintf(what, sizeof what, "/rope/%s[pos %zu, %zu]", tk->w ? "sin" : "cos", b / E->R, b % E->R);
        return nonfinite_fail(E, err, errlen, what, x[b]);
    }
    if (tk->kind == SC_WEIGHT) {
        const readout *ro = E->ro;
        struct { const char *name; const float *x; size_t n, cols; } w[4] = {
            {"/readout/w_u", ro->w_u, ro->V * ro->C, ro->C}, {"/readout/b_u", ro->b_u, ro->b_u ? ro->V : 0, 1},
            {"/readout/norm_weight", ro->norm_w, ro->C, 1}, {"/readout/norm_bias", ro->norm_b, ro->norm_b ? ro->C : 0, 1}};
        size_t k = tk->w, b = w[k].x ? first_nonfinite(w[k].x, w[k].n) : w[k].n;
        if (b == w[k].n) return 0;
        if (w[k].cols > 1) snprintf(what, sizeof what, "%s[%zu, %zu]", w[k].name, b / w[k].cols, b % w[k].cols);
        else snprintf(what, sizeof what, "%s[%zu]", w[k].name, b);
        return nonfinite_fail(E, err, errlen, what, w[k].x[b]);
    }
    /* float reads: hidden rows [0, n), ref_lse, a layer's W_O */
    size_t m = tk->kind == SC_HIDDEN ? n * C : tk->kind == SC_REF ? E->T : E->ro->HD * C;
    if (sb->fcap < m) {
        free(sb->f);
        if (!(sb->f = malloc(m * sizeof *sb->f))) { sb->fcap = 0; return rp_failf(err, errlen, "out of memory (value scan)"); }
        sb->fcap = m;
    }
#pragma omp critical(kvtrace_io)
    rd = (tk->kind == SC_HIDDEN ? kv_trace_read_hidden_rows(E->t, s, 0, n, sb->f, &ke)
          : tk->kind == SC_REF ? kv_trace_read_ref(E->t, s, sb->f, NULL, NULL, &ke)
          : kv_trace_read_w_o(E->t, tk->l, sb->f, &ke)) != KV_OK;
    if (rd) return rp_failf(err, errlen, "%s", ke.msg);
    if (tk->kind == SC_REF) m = n;
    size_t b = first_nonfinite(sb->f, m);
    if (b == m) return 0;
    if (tk->kind == SC_HIDDEN) snprintf(what, sizeof what, "/readout/hidden[seq %zu, pos %zu, dim %zu]", s, b / C, b % C);
    else if (tk->kind == SC_REF) snprintf(what, sizeof what, "/readout/ref_lse[seq %zu, pos %zu]", s, b);
    else snprintf(what, sizeof what, "/readout/w_o/%zu[%zu, %zu]", tk->l, b / C, b % C);
    return nonfinite_fail(E, err, errlen, what, sb->f[b]);
}

/* Before any computation, every value the run will use: for each evaluated and calibration
 * sequence s (n = seq_len[s] positions), q, k, v and attn_out rows [0, n) of every layer
 * and head; the RoPE rows [0, max n); with the read-out, hidden and ref_lse rows [0, n),
 * W_U, b_u, the norm and W_O of every layer. One extra read of those rows (the replay reads
 * them again per work item). The checks run on every thread (HDF5 reads one at a time, direct
 * reads at once: read_rows_f16), the q/k/v/attn_out ones on the f16 bits without a
 * conversion; the message names the first bad value in the task order above, whatever the
 * thread count: a task after a known bad one may be skipped, one before it never is.
 * Records (o.scan_cache_dir and o.trace_sha256 set): the scan is a function of the trace's
 * bytes, so a part that passed once for a digest passes again. Parts: each sequence (its
 * q/k/v/attn_out, with the read-out its hidden and ref_lse: "-ro") and the global one (RoPE
 * rows [0, max n), with the read-out the weights and W_O). A part whose record
 * (scan_record) exists is not scanned; after the whole scan passed, each part scanned is
 * recorded (never after a failure). The first bad value named is the same: a recorded part
 * has none. */
#define GLOBAL_NOROPE ((size_t)-1 - 1)     /* scan_record's part: the global one without /rope */
static int scan_record(const rp_engine *E, size_t s, size_t maxn, int ro, char *name, size_t nlen, char *line,
                       size_t llen)
{
    const char *d = E->o.trace_sha256;
    char what[64];
    if (s == GLOBAL_NOROPE) snprintf(what, sizeof what, "global-norope%s", ro ? "-ro" : "");
    else if (s == (size_t)-1) snprintf(what, sizeof what, "global-n%zu%s", maxn, ro ? "-ro" : "");
    else snprintf(what, sizeof what, "s%zu%s", s, ro ? "-ro" : "");
    int a = snprintf(name, nlen, "scan-%s-%s", d, what), b = snprintf(line, llen, "kvtrace-scan-cache 1 %s %s\n", d, what);
    return a > 0 && (size_t)a < nlen && b > 0 && (size_t)b < llen ? 0 : -1;
}

/* 1 when the part's record (or, without the read-out, the read-out run's, which covers more) exists.
 * The global part of a run that leaves the trace's /rope unread (no configuration uses_rope) is
 * "global-norope": the read-out's weights alone; a "global-n<maxn>" record, which also covers
 * the RoPE rows, covers it too (never the other way round). */
static int scan_recorded(const rp_engine *E, size_t s, size_t maxn)
{
    char name[160], line[192];
    for (int ro = E->ro ? 1 : 0; ro < 2; ro++)
        for (int k = 0; k < (s == GLOBAL_NOROPE ? 2 : 1); k++)
            if (!scan_record(E, k ? (size_t)-1 : s, maxn, ro, name, sizeof name, line, sizeof line) &&
                kv_cache_record_has(E->o.scan_cache_dir, name, line))
                return 1;
    return 0;
}

static int scan_finite(rp_engine *E, const size_t *seqs, size_t n_seqs, char *err, size_t errlen)
{
    size_t L = E->L, nall = n_seqs + E->o.n_calib, maxn = 0, nw = E->in->has_attn_out ? 4 : 3;
    size_t cap = nall * (L * (2 * E->H + 2 * E->Hkv) + 2) + 2 + 4 + L, nt = 0, skipped = 0, g0;
    int rec = E->o.scan_cache_dir && E->o.trace_sha256 && strlen(E->o.trace_sha256) == 64;
    scan_task *tk = malloc(cap * sizeof *tk);
    unsigned char *ran = calloc(nall + 1, 1);          /* parts scanned: [nall] the global one */
    if (!tk || !ran) { free(tk); free(ran); return rp_failf(err, errlen, "out of memory (value scan)"); }
    static const int kv_head[4] = {0, 1, 1, 0};     /* q, k, v, attn_out: over Hkv or H heads */
    for (size_t i = 0; i < nall; i++) {
        size_t s = i < n_seqs ? seqs[i] : E->o.calib[i - n_seqs], n = (size_t)E->seq_len[s];
        if (n > maxn) maxn = n;
    }
    for (size_t i = 0; i < nall; i++) {
        size_t s = i < n_seqs ? seqs[i] : E->o.calib[i - n_seqs];
        g0 = nt;
        for (size_t l = 0; l < L; l++)
            for (size_t w = 0; w < nw; w++)
                for (size_t h = 0; h < (kv_head[w] ? E->Hkv : E->H); h++)
                    tk[nt++] = (scan_task){SC_HEAD, s, l, h, w};
        if (E->ro) {
            tk[nt++] = (scan_task){SC_HIDDEN, s, 0, 0, 0};
            tk[nt++] = (scan_task){SC_REF, s, 0, 0, 0};
        }
        if (rec && scan_recorded(E, s, maxn)) { skipped += nt - g0; nt = g0; }
        else ran[i] = 1;
    }
    g0 = nt;
    if (E->rope_cos)
        for (size_t k = 0; k < 2; k++) tk[nt++] = (scan_task){SC_ROPE, 0, 0, maxn, k};
    if (E->ro) {
        for (size_t k = 0; k < 4; k++) tk[nt++] = (scan_task){SC_WEIGHT, 0, 0, 0, k};
        for (size_t l = 0; l < L; l++) tk[nt++] = (scan_task){SC_WO, 0, l, 0, 0};
    }
    /* the global part's record: with /rope unread (no configuration uses_rope) its own name */
    size_t gpart = E->rope_unread ? GLOBAL_NOROPE : (size_t)-1;
    if (nt > g0 && rec && scan_recorded(E, gpart, maxn)) { skipped += nt - g0; nt = g0; }
    else ran[nall] = nt > g0;
    size_t first = nt;                 /* the lowest failed task so far */
    long long kk;
#pragma omp parallel
    {
        scan_bufs sb = {0};
        char e2[512];
#pragma omp for schedule(dynamic, 1)
        for (kk = 0; kk < (long long)nt; kk++) {
            size_t k = (size_t)kk, f;
#pragma omp atomic read
            f = first;
            if (k > f) continue;       /* a lower task failed: its message wins */
            if (scan_one(E, &tk[k], &sb, e2, sizeof e2) == 0) continue;
#pragma omp critical(kvtrace_scan_fail)
            if (k < first) {
                snprintf(err, errlen, "%s", e2);
#pragma omp atomic write
                first = k;
            }
        }
        free(sb.h16);
        free(sb.f);
    }
    free(tk);
    if (E->o.scan_stats) { E->o.scan_stats[0] = nt; E->o.scan_stats[1] = skipped; }
    if (first == nt && rec) {          /* passed: record each part scanned */
        char name[160], line[192];
        for (size_t i = 0; i <= nall; i++)
            if (ran[i] && !scan_record(E, i < nall ? (i < n_seqs ? seqs[i] : E->o.calib[i - n_seqs]) : gpart, maxn,
                                       E->ro != NULL, name, sizeof name, line, sizeof line))
                kv_cache_record_put(E->o.scan_cache_dir, name, line);
    }
    free(ran);
    return first < nt ? -1 : 0;
}

/* ---- engine setup ---------------------------------------------------------------------- */

/* The work unit can be one (sequence, layer, kv head): a sweep whose every configuration has
 * head-separable parts only (strategy.h head_separable: the eviction's prefill and its
 * per-query hooks (view, selection, decode-time steps), under --mode online its online_new /
 * online_step / online_rows / online_view, the encoder's encode). Then a thread holds one kv
 * head's Q/K/V and scratch instead of the layer's. Every per-query path of the item, prefill
 * and online alike (item_head_online, item_online_evict, item_head_end's eviction times),
 * works on its kv heads [g0, g0 + nkv) with local indices into the item's arrays, its states
 * and the shared scores (rp_shared over the item's heads) and global ones into the result
 * slots, needles, messages and exports (g0 + g), so nothing else changes with the unit. The
 * online protocol has no plans (item_prefill stops before them): a planned strategy there
 * keeps the layer items. */
static int sweep_head_separable(const rp_engine *E, const rp_sweep *sw, const rp_run_opts *o)
{
    if (E->Hkv < 2 || o->layer_items) return 0;
    for (size_t c = 0; c < sw->n; c++) {
        const rp_config *cf = &sw->cfg[c];
        if (!rp_head_separable(cf->evict, cf->evict_cfg) || (cf->enc && !rp_head_separable(cf->enc, cf->enc_cfg)))
            return 0;
        if (o->mode == RP_ONLINE && cf->evict->plan_score) return 0;
    }
    return 1;
}

/* Calibration, before any replay: every configuration part with a calibrate hook gets each
 * layer's data of its calibration sequences (the first calib_seqs(cfg) of --calib, all when
 * 0). Layer by layer, the Q/K/V of the sequences any part wants are read once and handed to
 * every calibrating part in order (Q only when a part reads it: calib_kv_only parts get
 * q = NULL). A part's state depends on its own calls only, so the result is the one of a
 * part-by-part calibration; so is the message: the first failing part in configuration
 * order with its first failure (too few sequences, or the earliest failing layer; a read
 * error fails every part not yet failed). */
typedef struct calib_part {
    const rp_strategy *st;
    void *cfg;
    const char *canon;
    size_t nc;
    char *msg;                  /* NULL while it has not failed */
} calib_part;

static int calibrate_parts(rp_engine *E, const rp_sweep *sw, const rp_run_opts *o, char *err, size_t errlen)
{
    size_t np = 0, nmax = 0, L = E->L;
    int need_q = 0, rc = 0, oom = 0;
    for (size_t c = 0; c < sw->n; c++)
        for (size_t p = 0; p < sw->cfg[c].n_parts; p++) np += sw->cfg[c].part[p].s->calibrate != NULL;
    if (np == 0) return 0;
    calib_part *cp = calloc(np, sizeof *cp);
    float **kk = calloc(o->n_calib + 1, sizeof *kk), **vv = calloc(o->n_calib + 1, sizeof *vv);
    float **qq = calloc(o->n_calib + 1, sizeof *qq);
    size_t *nn = calloc(o->n_calib + 1, sizeof *nn);
    if (!cp || !kk || !vv || !qq || !nn) { oom = 1; goto done; }
    np = 0;
    for (size_t c = 0; c < sw->n; c++) {
        const rp_config *cf = &sw->cfg[c];
        for (size_t p = 0; p < cf->n_parts; p++) {
            const rp_strategy *st = cf->part[p].s;
            if (!st->calibrate) continue;
            size_t want = st->calib_seqs ? st->calib_seqs(cf->part[p].cfg) : o->n_calib;
            if (want == RP_CALIB_NONE) continue;
            calib_part *x = &cp[np++];
            *x = (calib_part){ st, cf->part[p].cfg, cf->canon, want ? want : o->n_calib, NULL };
            if (want > o->n_calib || o->n_calib == 0) {
                char e2[2048];
                snprintf(e2, sizeof e2, "config '%s': %s needs %zu calibration sequences, %zu given (--calib LIST)",
                         cf->canon, st->name, want ? want : 1, o->n_calib);
                if (!(x->msg = strdup(e2))) { oom = 1; goto done; }
                break;          /* the parts after it are never reached */
            }
            if (x->nc > nmax) nmax = x->nc;
            need_q |= !st->calib_kv_only;
        }
        if (np && cp[np - 1].msg) break;
    }
    for (size_t i = 0; i < nmax; i++) {
        size_t s = o->calib[i];
        nn[i] = (size_t)E->seq_len[s];
        kk[i] = malloc((E->Hkv * nn[i] * E->D + 1) * sizeof **kk);
        vv[i] = malloc((E->Hkv * nn[i] * E->D + 1) * sizeof **vv);
        if (need_q) qq[i] = malloc((E->H * nn[i] * E->D + 1) * sizeof **qq);
        if (!kk[i] || !vv[i] || (need_q && !qq[i])) { oom = 1; goto done; }
    }
    for (size_t l = 0; l < L; l++) {
        size_t live = 0;
        for (size_t j = 0; j < np; j++) live += !cp[j].msg;
        if (!live) break;
        kv_error ke;
        for (size_t i = 0; i < nmax; i++)
            if (read_kv(E, o->calib[i], l, nn[i], kk[i], vv[i], &ke) ||
                (need_q && read_q(E, o->calib[i], l, nn[i], qq[i], &ke))) {
                char e2[2048];
                snprintf(e2, sizeof e2, "calibration: %s", ke.msg);
                for (size_t j = 0; j < np; j++)
                    if (!cp[j].msg && !(cp[j].msg = strdup(e2))) { oom = 1; goto done; }
                break;
            }
        for (size_t j = 0; j < np; j++) {
            calib_part *x = &cp[j];
            if (x->msg) continue;
            rp_calib_ctx cc = { .layer = l, .n_layers = L, .Hkv = E->Hkv, .D = E->D, .n_seq = x->nc,
                                .n = nn, .k = (const float *const *)kk, .v = (const float *const *)vv,
                                .rope_cos = E->rope_cos, .rope_sin = E->rope_sin, .rotary_dim = E->R,
                                .rope_interleaved = E->interleaved, .H = E->H,
                                .q = x->st->calib_kv_only ? NULL : (const float *const *)qq, .ap = E->ap[l] };
            char e2[512] = "", e3[2048];
            if (x->st->calibrate(x->cfg, &cc, e2, sizeof e2)) {
                snprintf(e3, sizeof e3, "config '%s': calibration of layer %zu: %s", x->canon, l, e2);
                if (!(x->msg = strdup(e3))) { oom = 1; goto done; }
            }
        }
    }
done:
    if (oom) rc = rp_failf(err, errlen, "calibration: out of memory");
    for (size_t j = 0; cp && j < np && !rc; j++)
        if (cp[j].msg) rc = rp_failf(err, errlen, "%s", cp[j].msg);
    for (size_t j = 0; cp && j < np; j++) free(cp[j].msg);
    for (size_t i = 0; i < nmax && kk && vv && qq; i++) { free(kk[i]); free(vv[i]); free(qq[i]); }
    free(cp); free(kk); free(vv); free(qq); free(nn);
    return rc;
}

/* glibc gives the memory above an arena's top back to the kernel once more than the trim
 * threshold is free there (128 KiB, or twice the dynamic mmap threshold), and the next
 * allocation of the same size faults every page in again, zeroed by the kernel. The
 * strategies' per-call scratch (a few hundred KiB per (layer, kv head, configuration)) hit
 * this in every call: half the page faults of the fused 20-configuration sweep at 8k. Freed
 * memory is kept for the next item instead (the peak is unchanged: what is kept was in use
 * at once), and buffers up to 32 MiB come from the arenas. Process-wide (and idempotent);
 * not where the user set the thresholds (MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES). */
static void malloc_keep_freed(void)
{
#ifdef __GLIBC__
    const char *tun = getenv("GLIBC_TUNABLES");
    if (getenv("MALLOC_TRIM_THRESHOLD_") || getenv("MALLOC_MMAP_THRESHOLD_") || (tun && strstr(tun, "glibc.malloc.")))
        return;
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

int rp_engine_new(kv_trace *t, const rp_sweep *sw, const rp_run_opts *o, const size_t *seqs,
                  size_t n_seqs, rp_engine **out, char *err, size_t errlen)
{
    kv_error ke;
    malloc_keep_freed();
    rp_engine *E = calloc(1, sizeof *E);
    if (!E) return rp_failf(err, errlen, "out of memory");
    E->t = t; E->in = kv_trace_info(t); E->sw = sw; E->o = *o;
    const kv_info *in = E->in;
    E->S = in->n_seq; E->T = in->n_tok; E->L = in->n_layers; E->H = in->n_heads;
    E->Hkv = in->n_kv_heads; E->G = E->H / E->Hkv; E->D = in->head_dim;
    E->full = rp_strategy_find("full");
    for (size_t c = 0; c < sw->n; c++) E->want_ent |= sw->cfg[c].evict->uses_entropy;
    E->tokens = malloc(E->S * E->T * sizeof *E->tokens);
    E->seq_len = malloc(E->S * sizeof *E->seq_len);
    E->ap = malloc(E->L * sizeof *E->ap);
    if (!E->tokens || !E->seq_len || !E->ap) goto nomem;
    if (kv_trace_read_tokens(t, E->tokens, &ke) || kv_trace_read_seq_len(t, E->seq_len, &ke)) goto kverr;
    if (in->has_prefill) {
        if (!(E->prefill_len = malloc(E->S * sizeof *E->prefill_len))) goto nomem;
        if (kv_trace_read_prefill_len(t, E->prefill_len, &ke)) goto kverr;
    }
    for (size_t l = 0; l < E->L; l++) {
        E->ap[l].scale = (float)in->attn_scale;
        E->ap[l].softcap = (float)in->attn_softcap;
        E->ap[l].window = in->layer_window ? in->layer_window[l] : in->sliding_window;
    }
    /* the RoPE tables (2 T R floats, and their value scan) only for a run that uses them
     * (strategy.h uses_rope): a 16k-token trace's are 16 MiB, read before any work starts */
    int need_rope = o->read_rope;
    for (size_t c = 0; c < sw->n; c++) {
        const rp_config *cf = &sw->cfg[c];
        for (size_t p = 0; p < cf->n_parts; p++) need_rope |= rp_uses_rope(cf->part[p].s, cf->part[p].cfg);
        need_rope |= rp_uses_rope(cf->evict, cf->evict_cfg) || (cf->enc && rp_uses_rope(cf->enc, cf->enc_cfg));
    }
    E->rope_unread = in->has_rope && in->rotary_dim && !need_rope;
    if (in->has_rope && in->rotary_dim && need_rope) {
        E->R = in->rotary_dim;
        E->interleaved = !strcmp(in->rope_layout, "interleaved");
        E->rope_cos = big_alloc(E->T * E->R * sizeof *E->rope_cos);      /* 8 MiB each at 16k x 128 */
        E->rope_sin = big_alloc(E->T * E->R * sizeof *E->rope_sin);
        if (!E->rope_cos || !E->rope_sin) goto nomem;
        if (kv_trace_read_rope(t, E->rope_cos, E->rope_sin, &ke)) goto kverr;
    }
    if (in->n_needles) {        /* needle metrics (needle.h); the validator checked every row */
        if (!(E->needles = malloc(KV_NEEDLE_NF * in->n_needles * sizeof *E->needles))) goto nomem;
        if (kv_trace_read_needles(t, E->needles, &ke)) goto kverr;
        E->n_needles = in->n_needles;
    }
    if (o->readout && in->has_readout) {
        if (readout_load_no_wo(t, &E->ro, &ke) != KV_OK) goto kverr;   /* W_O: per layer item */
    }
    /* splits */
    for (size_t i = 0; i < n_seqs; i++) {
        size_t s = seqs[i], n = (size_t)E->seq_len[s];
        if (o->eval_from) {
            if (o->eval_from >= n) {
                rp_failf(err, errlen, "prefill split outside the sequence: --eval-from %zu >= seq_len %zu of sequence %zu",
                      o->eval_from, n, s);
                goto fail;
            }
        } else if (o->decode) {
            if (o->decode >= n) {
                rp_failf(err, errlen, "prefill split outside the sequence: --decode %zu leaves no prompt in "
                      "sequence %zu (seq_len %zu)", o->decode, s, n);
                goto fail;
            }
        } else if (E->prefill_len) {
            long long P = E->prefill_len[s];
            if (P < 1 || (size_t)P >= n) {
                rp_failf(err, errlen, "prefill split outside the sequence: /prefill_len[%zu] = %lld not in "
                      "[1, seq_len %zu)", s, P, n);
                goto fail;
            }
        } else if (o->mode == RP_PREFILL) {
            rp_failf(err, errlen, "%s has no /prefill_len: give the prefill split with --decode N", in->path);
            goto fail;
        }
    }
    if (o->prompt_scores != RP_PS_TRACE && o->prompt_scores != RP_PS_RECOMPUTE) {
        rp_failf(err, errlen, "prompt scores: source %d is neither trace nor recompute (auto is resolved by the caller)",
                 o->prompt_scores);
        goto fail;
    }
    if (o->prompt_scores == RP_PS_TRACE && !in->has_prompt_scores) {
        rp_failf(err, errlen, "--prompt-scores trace: %s has no /prompt_scores (capture it with kvcapture "
                 "--prompt-scores, or use --prompt-scores recompute)", in->path);
        goto fail;
    }
    if (o->prompt_scores == RP_PS_TRACE && in->prompt_scores_stale[0]) {
        rp_failf(err, errlen, "--prompt-scores trace: %s: /prompt_scores do not apply: %s (use --prompt-scores "
                 "recompute)", in->path, in->prompt_scores_stale);
        goto fail;
    }
    if ((o->export_hook && o->mode != RP_PREFILL) || (o->export_evict_hook && o->mode != RP_ONLINE)) {
        rp_failf(err, errlen, "export: the prefill hook needs --mode prefill, the eviction-time hook --mode online");
        goto fail;
    }
    /* protocols and budgets */
    for (size_t c = 0; c < sw->n; c++) {
        const rp_config *cf = &sw->cfg[c];
        if (!(cf->evict->protocols & o->mode) || (o->mode == RP_PREFILL && !cf->evict->prefill) ||
            (o->mode == RP_ONLINE && (!cf->evict->online_new || !cf->evict->online_step))) {
            rp_failf(err, errlen, "config '%s': %s does not support the %s protocol", cf->canon, cf->evict->name,
                  o->mode == RP_PREFILL ? "prefill" : "online");
            goto fail;
        }
        if (cf->evict->decode_time && o->mode == RP_PREFILL && (o->export_hook || o->export_step_hook)) {
            rp_failf(err, errlen, "config '%s': %s compresses during decoding: --export covers it under --mode online (evictions only)",
                     cf->canon, cf->evict->name);
            goto fail;
        }
        if (cf->enc && cf->enc->cfg_protocols && !(cf->enc->cfg_protocols(cf->enc_cfg) & o->mode)) {
            rp_failf(err, errlen, "config '%s': %s with these parameters does not support the %s protocol", cf->canon,
                  cf->enc->name, o->mode == RP_PREFILL ? "prefill" : "online");
            goto fail;
        }
    }
    if (check_feasible(E, sw, o, seqs, n_seqs, err, errlen)) goto fail;
    E->per_head = sweep_head_separable(E, sw, o);
    if (scan_finite(E, seqs, n_seqs, err, errlen)) goto fail;
    if (calibrate_parts(E, sw, o, err, errlen)) goto fail;
    *out = E;
    return 0;
nomem:
    rp_failf(err, errlen, "out of memory");
    goto fail;
kverr:
    rp_failf(err, errlen, "%s", ke.msg);
fail:
    rp_engine_free(E);
    return -1;
}

/* ---- caches ------------------------------------------------------------------------------ */

/* dst = the first nv entries of src, with room for src->cap entries (and src's members):
 * the size the kv head's cache reaches, so a copy that grows with the cache afterwards
 * (cache_append) or is made again for each query row (a longer prefix each time) is
 * allocated once instead of grown by realloc. */
static int cache_copy_prefix_rows(rp_cache *dst, const rp_cache *src, size_t nv, int rows)
{
    size_t D = src->D;
    dst->D = D;
    size_t nm = src->mem_off ? (size_t)src->mem_off[nv] : 0;
    size_t cap = src->cap > nv ? src->cap : nv, capm = src->mem_off && src->n_members > nm ? src->n_members : nm;
    if (src->mem_off && !dst->mem_off) {
        dst->mem_off = malloc(((cap > dst->cap ? cap : dst->cap) + 1) * sizeof *dst->mem_off);
        if (!dst->mem_off) return -1;
    }
    if (!dst->pos && !dst->mult && !dst->k && !dst->v && !dst->src_k && cap * D * sizeof *dst->k >= ((size_t)2 << 20)) {
        /* a first copy of megabytes (later ones reuse it: cache_take): rows in huge pages */
        dst->pos = malloc(cap * sizeof *dst->pos);
        dst->mult = malloc(cap * sizeof *dst->mult);
        dst->k = big_alloc(cap * D * sizeof *dst->k);
        dst->v = big_alloc(cap * D * sizeof *dst->v);
        if (!dst->pos || !dst->mult || !dst->k || !dst->v) return -1;      /* the caller frees dst */
        dst->cap = cap;
    }
    if (rp_cache_reserve(dst, cap ? cap : 1, capm)) return -1;
    rp_cache_clear(dst);
    memcpy(dst->pos, src->pos, nv * sizeof *dst->pos);
    memcpy(dst->mult, src->mult, nv * sizeof *dst->mult);
    if (rows) {
        memcpy(dst->k, src->k, nv * D * sizeof *dst->k);
        memcpy(dst->v, src->v, nv * D * sizeof *dst->v);
    }
    if (src->mem_off) {
        memcpy(dst->mem_off, src->mem_off, (nv + 1) * sizeof *dst->mem_off);
        memcpy(dst->members, src->members, nm * sizeof *dst->members);
        dst->n_members = nm;
    } else if (dst->mem_off) {
        for (size_t e = 0; e <= nv; e++) dst->mem_off[e] = (int32_t)e;
        if (rp_cache_reserve(dst, nv ? nv : 1, nv)) return -1;
        memcpy(dst->members, src->pos, nv * sizeof *dst->members);
        dst->n_members = nv;
    }
    dst->n = nv;
    dst->modified = src->modified;
    dst->bytes = src->bytes;
    return 0;
}

static int cache_copy_prefix(rp_cache *dst, const rp_cache *src, size_t nv)
{
    return cache_copy_prefix_rows(dst, src, nv, 1);
}

/* An engine copy dst not yet allocated takes the thread's spare cache i (thread_bufs.spare),
 * if any: pos, mult, k and v at its capacity, no member lists (cache_copy_prefix makes them
 * when its source has them). */
static void cache_take(thread_bufs *b, size_t i, rp_cache *dst)
{
    if (dst->pos || !b || i >= b->n_spare || !b->spare[i].pos) return;
    *dst = b->spare[i];
    memset(&b->spare[i], 0, sizeof b->spare[i]);
}

/* An engine copy c ends: its pos, mult, k and v become the thread's spare cache i when that
 * slot is free (nspare slots, allocated on first use), else it is freed; c is empty after. */
static void cache_give(thread_bufs *b, size_t i, size_t nspare, rp_cache *c)
{
    if (b && !b->spare && (b->spare = calloc(nspare, sizeof *b->spare))) b->n_spare = nspare;
    if (!b || i >= b->n_spare || b->spare[i].pos || !c->pos || !c->mult || !c->k || !c->v || c->src_k) {
        rp_cache_free(c);
        return;
    }
    free(c->mem_off); free(c->members);
    b->spare[i] = (rp_cache){ .cap = c->cap, .D = c->D, .pos = c->pos, .mult = c->mult, .k = c->k, .v = c->v };
    memset(c, 0, sizeof *c);
}

/* Append entry e of src (position, multiplicity, members, rows) to dst. */
static int cache_append(rp_cache *dst, const rp_cache *src, size_t e)
{
    size_t D = src->D, a = src->mem_off ? (size_t)src->mem_off[e] : 0;
    size_t mm = src->mem_off ? (size_t)src->mem_off[e + 1] - a : 0, need = dst->n + 1, needm = dst->n_members + mm;
    if (rp_cache_reserve(dst, need > dst->cap ? 2 * need : dst->cap, needm > dst->members_cap ? 2 * needm : dst->members_cap))
        return -1;
    size_t n = dst->n;
    dst->pos[n] = src->pos[e];
    dst->mult[n] = src->mult[e];
    memcpy(dst->k + n * D, src->k + e * D, D * sizeof *dst->k);
    memcpy(dst->v + n * D, src->v + e * D, D * sizeof *dst->v);
    if (dst->mem_off) {
        memcpy(dst->members + dst->n_members, src->members + a, mm * sizeof *dst->members);
        dst->n_members += mm;
        dst->mem_off[n + 1] = (int32_t)dst->n_members;
    }
    dst->n = n + 1;
    return 0;
}

static int cache_merged(const rp_cache *c)
{
    if (!c->mem_off) return 0;
    for (size_t e = 0; e < c->n; e++) if (c->mult[e] != 1) return 1;
    return 0;
}

/* Positions ascending, in [0, lim), members inside [0, lim), multiplicities matching. */
static int cache_check(const rp_cache *c, size_t lim, char *why, size_t len)
{
    for (size_t e = 0; e < c->n; e++) {
        if (c->pos[e] < 0 || (size_t)c->pos[e] >= lim)
            return rp_failf(why, len, "entry %zu has position %d outside [0, %zu)", e, c->pos[e], lim);
        if (e && c->pos[e] <= c->pos[e - 1])
            return rp_failf(why, len, "entries not in ascending position order at entry %zu", e);
        if (c->mult[e] < 1) return rp_failf(why, len, "entry %zu has multiplicity %d", e, c->mult[e]);
        if (c->mem_off) {
            int32_t a = c->mem_off[e], b = c->mem_off[e + 1];
            if (b - a != c->mult[e]) return rp_failf(why, len, "entry %zu: %d members, multiplicity %d", e, b - a, c->mult[e]);
            for (int32_t m = a; m < b; m++)
                if (c->members[m] < 0 || (size_t)c->members[m] >= lim)
                    return rp_failf(why, len, "entry %zu has member %d outside [0, %zu)", e, c->members[m], lim);
        } else if (c->mult[e] != 1) {
            return rp_failf(why, len, "entry %zu has multiplicity %d but no member list", e, c->mult[e]);
        }
    }
    return 0;
}

/* ---- the work item ----------------------------------------------------------------------- */

/* Per-configuration state of one kv head. */
typedef struct cstate {
    rp_cache cache;         /* prefill: prompt cache + exact [P, n); online: the live cache */
    void *ost;              /* online state */
    size_t B;
    int32_t *evat;          /* online export: [n] first query position that no longer sees j */
    int td;                 /* encoders run per query position */
    int dt;                 /* a decode-time press: the decode steps follow the online protocol
                               in either mode (prefill: after the whole prompt) */
    int dry;                /* prefill: rows dropped after the prefill (plain entries, K/V of
                               the trace; k = v = NULL, positions kept), gathered again
                               (cache_fill) only where a path reads them: the shared
                               evaluation reads the trace's rows by position */
    int alias;              /* prefill: cache.k/v are the item's own K/V rows (a cache of every
                               position in order, unmodified: item_head_prefill), not owned */
    int static_enc;         /* prefill: cache already encoded once */
    int korig;              /* prefill, static encoding: every key row is still the trace's row
                               of its position (values-only encoders: lowrank rank_k=0) */
    int sview;              /* prefill, view_static: enc holds the last query's view */
    size_t sview_diff;      /* its first entry whose rows differ from the cache's */
    int inc;                /* time-dependent encoder with encode_extend: enc grows with the
                               cache (prefill: a prefix of a fixed list; online: until an
                               eviction, after which enc_n = 0 re-encodes once) */
    rp_cache enc;           /* inc: the encoding of the first enc_n entries of cache */
    size_t enc_n;
    uint64_t seed;
    /* prefill, shared evaluation (item_share_plan): this kv head's rows are evaluated by
     * item_share_block; sh_np prompt entries (cache entries [0, sh_np), then [P, n)), the
     * next larger member of its chain (SIZE_MAX: none) */
    int sh;
    size_t sh_np, sh_next;
} cstate;

static int cfg_has_encoder(const rp_config *cf)
{
    return cf->enc != NULL || cf->evict->encode != NULL || rp_view_active(cf->evict, cf->evict_cfg);
}

static int run_encoders(const rp_config *cf, const rp_layer_ctx *ctx, size_t g, size_t t, rp_cache *c,
                        char *err, size_t errlen)
{
    char e2[512] = "";      /* messages name the layer's kv head g0 + g (g: the context's) */
    size_t n0 = c->n;
    if (rp_view_active(cf->evict, cf->evict_cfg)) {
        if (cf->evict->online_view(cf->evict_cfg, ctx, g, t, c, e2, sizeof e2))
            return rp_failf(err, errlen, "config '%s': %s view at seq %zu layer %zu kv head %zu: %s", cf->canon,
                         cf->evict->name, ctx->seq, ctx->layer, ctx->g0 + g, e2);
        c->modified = 0;    /* re-indexing is not a reconstruction (the caller compares rows) */
    }
    if (cf->evict->encode && cf->evict->encode(cf->evict_cfg, ctx, g, t, c, e2, sizeof e2))
        return rp_failf(err, errlen, "config '%s': %s encode at seq %zu layer %zu kv head %zu: %s", cf->canon,
                     cf->evict->name, ctx->seq, ctx->layer, ctx->g0 + g, e2);
    if (cf->enc && cf->enc->encode(cf->enc_cfg, ctx, g, t, c, e2, sizeof e2))
        return rp_failf(err, errlen, "config '%s': %s encode at seq %zu layer %zu kv head %zu: %s", cf->canon,
                     cf->enc->name, ctx->seq, ctx->layer, ctx->g0 + g, e2);
    if (c->n != n0)
        return rp_failf(err, errlen, "config '%s': encode changed the number of entries (seq %zu layer %zu kv head %zu)",
                     cf->canon, ctx->seq, ctx->layer, ctx->g0 + g);
    return 0;
}

static uint64_t mix64(uint64_t a, uint64_t b)
{
    rp_rng r = { a ^ (b * 0x9E3779B97F4A7C15ull) };
    return rp_rng_next(&r);
}

/* Bytes and reconstruction error of the cache the last position sees. */
static void account_last(item *it, const rp_config *cf, size_t c, size_t g, const rp_cache *view)
{
    rp_engine *E = it->E;
    size_t D = E->D, n = it->n;
    double *ia = it->ia + c * SA_NF;
    rp_bytes b = view->bytes;
    if (b.payload == 0) b.payload = rp_fp16_bytes(view->n, D);
    size_t lo = attn_lo(n - 1, E->ap[it->l].window);
    if (view->n < n - lo) {         /* a subset (or merges): positions must be stored */
        b.indices += 4.0 * (double)view->n;
        if (cache_merged(view)) b.indices += 4.0 * (double)view->n;
    }
    ia[SA_PAYLOAD] += b.payload; ia[SA_SCALES] += b.scales; ia[SA_BASES] += b.bases; ia[SA_INDICES] += b.indices;
    ia[SA_KVB] += b.payload + b.scales + b.bases + b.indices;
    rp_paged pg;
    rp_paged_account(view->n, view->n ? (b.payload + b.scales + b.indices) / (double)view->n : 0.0, b.bases,
                     E->o.page_size, &pg);
    ia[SA_PAGED] += pg.allocated; ia[SA_FRAG] += pg.fragmentation;
    ia[SA_FULLB] += rp_fp16_bytes(n - lo, D);
    if (!view->modified) return;
    ia[SA_MODIFIED] = 1;
    ia[SA_DIFFERS] = 1;
    const float *K = it->k + g * n * D, *Vv = it->v + g * n * D;
    double ke = 0, ve = 0, ks = 0, vs = 0, cnt = 0;
    for (size_t e = 0; e < view->n; e++) {
        size_t a = view->mem_off ? (size_t)view->mem_off[e] : e, bnd = view->mem_off ? (size_t)view->mem_off[e + 1] : e + 1;
        for (size_t m = a; m < bnd; m++) {
            size_t j = view->mem_off ? (size_t)view->members[m] : (size_t)view->pos[e];
            for (size_t d = 0; d < D; d++) {
                double dk = (double)view->k[e * D + d] - K[j * D + d], dv = (double)view->v[e * D + d] - Vv[j * D + d];
                ke += dk * dk; ve += dv * dv;
                ks += (double)K[j * D + d] * K[j * D + d]; vs += (double)Vv[j * D + d] * Vv[j * D + d];
            }
            cnt += (double)D;
        }
    }
    for (size_t i = 0; i < E->G; i++) {
        double *ha = it->ha + ((c * E->L + it->l) * E->H + (it->g0 + g) * E->G + i) * HA_NF;
        ha[HA_KERR] += ke; ha[HA_VERR] += ve; ha[HA_KSQ] += ks; ha[HA_VSQ] += vs; ha[HA_MCNT] += cnt;
    }
}

/* d [n] += x [n], element by element: every sum of read-out terms (one rounding per add, in
 * the order the callers fix). */
static void add_into(float *restrict d, const float *restrict x, size_t n)
{
    for (size_t i = 0; i < n; i++) d[i] += x[i];
}

/* The read-out perturbation of the item's kv heads (docs/METHODS.md §10), after its attention:
 * for every configuration c, dH_c = sum over the local kv heads g (in order) whose rows c
 * wrote of dO_c[:, g's G*D columns] @ W_O_l[g's G*D rows, :], each term one sgemm into a
 * zeroed buffer and the terms added in g order. A kv-head item (per_head) thus holds its kv
 * head's term and rp_engine_seq adds the layer's terms in the same order (layer_sum_add), so
 * both ways of splitting a layer give the same bits; each kv-head item multiplies its own
 * term in its own thread (a layer's whole product in the thread that finished the layer
 * left the other thread idle: a fifth of the fused 20-configuration sweep's wall at 8k). */
static int item_deltas(item *it, char *err, size_t errlen)
{
    rp_engine *E = it->E;
    const readout *ro = E->ro;
    size_t NC = E->sw->n, NE = it->n - it->P, C = ro->C, HD = E->H * E->D, GD = E->G * E->D, nkv = it->nkv,
           ldo = it->nh * E->D, l = it->l;
    it->dH = pool_take(it->pool, NC * NE * C * sizeof *it->dH, 0);    /* given back by the fold */
    it->dh_set = calloc(NC, 1);
    if (!it->dH || !it->dh_set) return rp_failf(err, errlen, "out of memory (read-out, seq %zu layer %zu)", it->s, l);
    int any = 0;
    for (size_t i = 0; i < NC * nkv; i++) any |= it->dO_set[i];
    if (!any) return 0;
    float *w = tb_take(it->tb, TB_WO, HD * C * sizeof *w);    /* overwritten by the read */
    kv_error ke;
    int bad = !w, nomem = 0;
    if (w) {
#pragma omp critical(kvtrace_io)
        bad = kv_trace_read_w_o(E->t, l, w, &ke) != KV_OK;
    }
    if (bad) return rp_failf(err, errlen, "%s", w ? ke.msg : "out of memory (read-out W_O)");
    /* each kv head's rows of W_O packed once for every configuration, into the thread's
     * buffer (gemm.h; nf 0: no AVX-512F path, cblas_sgemm instead) */
    size_t nf = gemm_b_floats(GD, C);
    gemm_b *pk = nf ? malloc(nkv * sizeof *pk) : NULL;      /* not a VLA: GCC 12's -fsanitize build
                                                              * crashed on one shared by a task */
    float *pbuf = nf ? tb_take(it->tb, TB_GEMM, nkv * nf * sizeof *pbuf) : NULL;
    if (nf && (!pk || !pbuf)) {
        free(pk);
        return rp_failf(err, errlen, "out of memory (read-out W_O, seq %zu layer %zu)", it->s, l);
    }
    for (size_t g = 0; nf && g < nkv; g++) gemm_pack_b(w + (it->g0 + g) * GD * C, GD, C, C, pbuf + g * nf, &pk[g]);
    /* one task per configuration (an idle thread may take some); each writes its own dH_c
     * with the same products, so the bits do not depend on who runs it */
    for (size_t c = 0; c < NC; c++) {
        const uint8_t *set = it->dO_set + c * nkv;
        size_t nset = 0;
        for (size_t g = 0; g < nkv; g++) nset += set[g];
        if (!nset) continue;
        it->dh_set[c] = 1;
        float *dh = it->dH + c * NE * C;
        const float *dOc = it->dO + c * NE * ldo;
#pragma omp task firstprivate(dh, dOc, set, nset, pk, nf) shared(nomem)
        {
            float *tmp = nset > 1 ? malloc(NE * C * sizeof *tmp) : NULL;
            if (nset > 1 && !tmp) {
#pragma omp atomic write
                nomem = 1;
            } else {
                int first = 1;
                for (size_t g = 0; g < nkv; g++) {
                    if (!set[g]) continue;
                    float *dst = first ? dh : tmp;
                    memset(dst, 0, NE * C * sizeof *dst);
                    if (nf) gemm_add(&pk[g], dOc + g * GD, ldo, NE, dst, C);
                    else readout_add_delta_part(ro, w + (it->g0 + g) * GD * C, GD, dOc + g * GD, ldo, NE, dst);
                    if (!first) add_into(dh, tmp, NE * C);
                    first = 0;
                }
            }
            free(tmp);
        }
    }
#pragma omp taskwait
    free(pk);
    if (nomem) return rp_failf(err, errlen, "out of memory (read-out, seq %zu layer %zu)", it->s, l);
    return 0;
}

/* --per-layer-readout: the read-out of h + dH_c (layer l's perturbation alone, every kv head's
 * term in) against the full logits, into pl [NC][L][PL_NF]. */
static int layer_readout_pl(rp_engine *E, size_t s, size_t l, size_t n, size_t P, const float *hid, const float *dH,
                            const uint8_t *dh_set, double *pl, char *err, size_t errlen)
{
    const readout *ro = E->ro;
    size_t NC = E->sw->n, NE = n - P, C = ro->C, V = ro->V;
    float *lf = malloc(RO_BLK * V * sizeof *lf), *lc = malloc(RO_BLK * V * sizeof *lc), *hc = malloc(RO_BLK * C * sizeof *hc);
    int rc = -1;
    if (!lf || !lc || !hc) { rp_failf(err, errlen, "out of memory (per-layer read-out)"); goto done; }
    for (size_t r0 = 0; r0 < NE; r0 += RO_BLK) {
        size_t nb = NE - r0 < RO_BLK ? NE - r0 : RO_BLK;
        const float *hs = hid + (P + r0) * C;
        if (readout_logits_checked(ro, hs, nb, lf) != KV_OK) { rp_failf(err, errlen, "out of memory (read-out)"); goto done; }
        for (size_t c = 0; c < NC; c++) {
            double *b = pl + (c * E->L + l) * PL_NF;
            const float *lcp = lf;
            if (dh_set[c]) {
                const float *dh = dH + (c * NE + r0) * C;
                for (size_t i = 0; i < nb * C; i++) hc[i] = hs[i] + dh[i];
                if (readout_logits_checked(ro, hc, nb, lc) != KV_OK) { rp_failf(err, errlen, "out of memory (read-out)"); goto done; }
                lcp = lc;
            }
            for (size_t r = 0; r < nb; r++) {
                size_t t = P + r0 + r;
                int32_t y = t + 1 < n ? E->tokens[s * E->T + t + 1] : -1;
                readout_cmp cmp;
                readout_compare(lf + r * V, lcp + r * V, V, y, &cmp);
                if (!isfinite(cmp.logit_kl) || (y >= 0 && (size_t)y < V && !isfinite(cmp.nll_comp))) {
                    rp_failf(err, errlen, "config '%s': NaN/Inf in per-layer read-out metrics at seq %zu layer %zu position %zu",
                          E->sw->cfg[c].canon, s, l, t);
                    goto done;
                }
                b[PL_KL] += cmp.logit_kl;
                if (y >= 0 && (size_t)y < V) b[PL_NLL_C] += cmp.nll_comp;
            }
        }
    }
    rc = 0;
done:
    free(lf); free(lc); free(hc);
    return rc;
}

/* ---- the work item, in stages ------------------------------------------------------------
 *
 * item_run(it) = item_alloc -> item_read -> item_prefill -> for each kv head g:
 *     item_head_begin (prefill: the caches get their rows back, the decode entries and the
 *                      static encodings; online: the strategies' states)
 *     for each block of BLK query rows: item_full_attn (the full cache's attention, shared
 *         by every configuration), then per configuration item_block_cfg -> per row:
 *         item_cache_view (the cache this query sees: three cases), item_metrics (per query
 *         head, through the pure metric functions of metric.h), item_export at t = n - 1,
 *         item_online_evict
 *     item_head_end (online export, caches freed)
 * -> item_deltas. Every stage returns 0 or -1 with it->err set. */

/* A chain of configurations whose kept prompt sets are nested (item_share_plan): members
 * from the smallest (head) to the largest (top); idx lists the top's prompt positions, the
 * head's first, then those each next member adds. */
typedef struct share_chain {
    size_t head, top;
    size_t *idx;            /* [top's sh_np] */
    size_t np;              /* the top's prompt entries */
    size_t m0, nm;          /* members: sc->shcfg, sc->shend [m0, m0 + nm) */
    size_t woff;            /* its weights: it->shw + woff, [G][BLK][np] (rows i * nb + r) */
} share_chain;

/* The scratch of one work item: ONE allocation (item_alloc: the thread's slab, thread_bufs),
 * views into it that never own. Nothing in it is resized while the item runs. */
typedef struct item_scratch {
    cstate *cs;             /* [NC][Hkv]   per (configuration, kv head) state, zeroed */
    rp_cache *pout;         /* [Hkv]       the prefill hook's out[] (copies of cs[c][*].cache) */
    /* the full cache's attention of one block: G query heads x BLK rows */
    float *lse;             /* [G][BLK]    log-sum-exp of the kernel (fp32) */
    float *of;              /* [G][BLK][D] outputs */
    float *lg;              /* [G][BLK][n] logits */
    float *lse_s, *of_s, *lg_s;     /* the slab's own three (lse, of, lg may point into it->dst) */
    double *pf;             /* [BLK][G][n] probabilities in double, renormalised, on [lo, t] */
    double *pf2;            /* [BLK][G]    sum of p^2 */
    double *lz;             /* [BLK][G]    log partition: log p = logit - lz */
    /* the blocked kernel over one configuration's fixed entry list (bm <= n entries) */
    float *bz;              /* [G][BLK][bm] logits */
    float *blse;            /* [G][BLK]    log-sum-exp */
    float *bout;            /* [G][BLK][D] outputs */
    /* one query row over one configuration's visible entries */
    float *z;               /* [n]         logits */
    float *oc;              /* [D]         output */
    float *logm;            /* [n]         log multiplicity of each entry (merged caches) */
    float *bias;            /* [n]         log multiplicity of each selected entry */
    float *probs;           /* online: [G][n + 1] q over the cache for online_step;
                               prefill: [n] the row's fp32 probabilities */
    size_t *idx;            /* [n]         selected entries (select hook) */
    size_t *evict;          /* [n + 1]     entries online_step evicts */
    uint8_t *vis;           /* [n + 1]     select's flags */
    uint8_t *keep;          /* [n + 1]     compaction flags */
    /* shared evaluation (item_share_plan, item_share_block) */
    struct share_chain *chains; /* [NC]    chains of nested kept sets of the kv head */
    size_t n_chains;
    size_t *shidx;          /* [NC * n]    each chain's prompt positions in chain order */
    int32_t *lev;           /* [n]         the first chain member keeping each position */
    size_t *shcfg, *shend;  /* [NC]        chain members in order, their prompt entries */
    float *ud;              /* [G][BLK][D] sum over the decode entries of p_j v_j (rows i * nb + r) */
    double *rd, *sd;        /* [G][BLK]    sums over the decode entries of p_j, p_j^2 */
    double *rm, *sm;        /* [NC][G][BLK] the same over a chain's prompt entries up to each member */
} item_scratch;

#define IT_FAIL(it, ...) rp_failf((it)->err, sizeof (it)->err, __VA_ARGS__)

static size_t slab_take(size_t *total, size_t bytes)
{
    size_t off = (*total + 63) & ~(size_t)63;       /* every view 64-byte aligned */
    *total = off + bytes;
    return off;
}

static int item_alloc(item *it, item_scratch *sc)
{
    rp_engine *E = it->E;
    size_t n = it->n, D = E->D, H = it->nh, Hkv = it->nkv, G = E->G, NC = E->sw->n, NE = n - it->P;
    size_t tot = 0, fz = sizeof(float), dz = sizeof(double), sz = sizeof(size_t);
    size_t o_cs = slab_take(&tot, NC * Hkv * sizeof(cstate)),
           o_pout = slab_take(&tot, Hkv * sizeof(rp_cache));
    size_t o_lse = slab_take(&tot, G * BLK * fz), o_of = slab_take(&tot, G * BLK * D * fz),
           o_lg = slab_take(&tot, G * BLK * n * fz), o_pf = slab_take(&tot, BLK * G * n * dz),
           o_pf2 = slab_take(&tot, BLK * G * dz), o_lz = slab_take(&tot, BLK * G * dz),
           o_bz = slab_take(&tot, G * BLK * n * fz), o_blse = slab_take(&tot, G * BLK * fz),
           o_bout = slab_take(&tot, G * BLK * D * fz), o_z = slab_take(&tot, n * fz),
           o_oc = slab_take(&tot, D * fz), o_logm = slab_take(&tot, n * fz), o_bias = slab_take(&tot, n * fz),
           o_probs = slab_take(&tot, G * (n + 1) * fz), o_idx = slab_take(&tot, n * sz),
           o_ev = slab_take(&tot, (n + 1) * sz), o_vis = slab_take(&tot, n + 1), o_keep = slab_take(&tot, n + 1);
    size_t o_ch = slab_take(&tot, NC * sizeof(struct share_chain)), o_shidx = slab_take(&tot, NC * n * sz),
           o_lev = slab_take(&tot, n * sizeof(int32_t)), o_ud = slab_take(&tot, G * BLK * D * fz),
           o_rd = slab_take(&tot, G * BLK * dz), o_sd = slab_take(&tot, G * BLK * dz),
           o_rm = slab_take(&tot, NC * G * BLK * dz), o_sm = slab_take(&tot, NC * G * BLK * dz),
           o_shcfg = slab_take(&tot, NC * sz), o_shend = slab_take(&tot, NC * sz);
    char *b = tb_take(it->tb, TB_SLAB, tot);
    if (!b) return IT_FAIL(it, "out of memory (seq %zu layer %zu)", it->s, it->l);
    it->slab = b;
    /* the layer's tensors are separate allocations, not slab views: with them inside, the
     * slab passes glibc's largest dynamic mmap threshold (32 MiB) at a few thousand tokens,
     * and every large buffer the strategies allocate afterwards is mmapped and faulted in
     * afresh (measured: twice the page faults of the fused 20-configuration sweep at 4k) */
    it->q = tb_take(it->tb, TB_Q, H * n * D * fz);
    it->k = tb_take(it->tb, TB_K, Hkv * n * D * fz);
    it->v = tb_take(it->tb, TB_V, Hkv * n * D * fz);
    if (!it->q || !it->k || !it->v) return IT_FAIL(it, "out of memory (seq %zu layer %zu)", it->s, it->l);
    /* the read-out deltas [NC][NE][nh * D] stay outside the slab, in the sequence's pool (zeroed:
     * rows of configurations that do not differ are read as zero) */
    if (E->ro && NE && (!(it->dO = pool_take(it->pool, NC * NE * it->nh * D * fz, 1)) ||
                        !(it->dO_set = calloc(NC * Hkv, 1))))      /* item_free_scratch frees the rest */
        return IT_FAIL(it, "out of memory (read-out deltas, seq %zu layer %zu)", it->s, it->l);
    sc->cs = (cstate *)(b + o_cs);
    memset(sc->cs, 0, NC * Hkv * sizeof *sc->cs);
    sc->pout = (rp_cache *)(b + o_pout);
    sc->lse = sc->lse_s = (float *)(b + o_lse); sc->of = sc->of_s = (float *)(b + o_of);
    sc->lg = sc->lg_s = (float *)(b + o_lg);
    sc->pf = (double *)(b + o_pf); sc->pf2 = (double *)(b + o_pf2); sc->lz = (double *)(b + o_lz);
    sc->bz = (float *)(b + o_bz); sc->blse = (float *)(b + o_blse); sc->bout = (float *)(b + o_bout);
    sc->z = (float *)(b + o_z); sc->oc = (float *)(b + o_oc); sc->logm = (float *)(b + o_logm);
    sc->bias = (float *)(b + o_bias); sc->probs = (float *)(b + o_probs); sc->idx = (size_t *)(b + o_idx);
    sc->evict = (size_t *)(b + o_ev); sc->vis = (uint8_t *)(b + o_vis); sc->keep = (uint8_t *)(b + o_keep);
    sc->chains = (struct share_chain *)(b + o_ch); sc->n_chains = 0;
    sc->shidx = (size_t *)(b + o_shidx); sc->lev = (int32_t *)(b + o_lev); sc->ud = (float *)(b + o_ud);
    sc->rd = (double *)(b + o_rd); sc->sd = (double *)(b + o_sd);
    sc->rm = (double *)(b + o_rm); sc->sm = (double *)(b + o_sm);
    sc->shcfg = (size_t *)(b + o_shcfg); sc->shend = (size_t *)(b + o_shend);
    it->sc = sc;
    memset(&it->qcopy, 0, sizeof it->qcopy);
    it->qcopy.D = D;
    return 0;
}

/* --prompt-scores trace: the item's query heads' rows [0, n) of /prompt_scores/colsum and
 * entropy (validated when the trace was opened: finite, in range). */
static int item_read_scores(item *it)
{
    rp_engine *E = it->E;
    if (E->o.prompt_scores != RP_PS_TRACE) return 0;
    size_t n = it->n;
    it->ps_cs = malloc(it->nh * n * sizeof *it->ps_cs);
    it->ps_ent = malloc(it->nh * n * sizeof *it->ps_ent);
    if (!it->ps_cs || !it->ps_ent) return IT_FAIL(it, "out of memory (seq %zu layer %zu)", it->s, it->l);
    size_t st[4] = { it->l, it->s, it->g0 * E->G, 0 }, ct[4] = { 1, 1, it->nh, n };
    kv_error ke;
    int bad;
#pragma omp critical(kvtrace_io)
    bad = kv_trace_read_f32(E->t, "/prompt_scores/colsum", 4, st, ct, it->ps_cs, &ke) != KV_OK ||
          kv_trace_read_f32(E->t, "/prompt_scores/entropy", 4, st, ct, it->ps_ent, &ke) != KV_OK;
    if (bad) return IT_FAIL(it, "%s", ke.msg);
    return 0;
}

/* The first query row the item reads (strategy.h q_rows): the evaluated rows [P, n) always; of
 * the prompt, the last r rows of the part declaring the most, and every row when a part has no
 * q_rows, or asks for the whole prompt's scores (*whole) that this run computes from Q (not
 * --prompt-scores trace). 0 under --mode online and with KVTRACE_DEBUG=q-all. The same for a
 * work item and a plan item of the sequence (both run every configuration's hooks that read Q). */
static size_t item_q_from(const item *it)
{
    const rp_engine *E = it->E;
    const rp_sweep *sw = E->sw;
    size_t P = it->P, from = P;
    if (E->o.mode == RP_ONLINE || (E->o.q_debug & RP_QDEBUG_ALL)) return 0;
    for (size_t c = 0; c < sw->n; c++) {
        const rp_config *cf = &sw->cfg[c];
        size_t B;
        sweep_budget(cf, cf->evict->decode_time ? it->n : P, &B);      /* as item_prefill */
        for (int part = 0; part < 2; part++) {
            const rp_strategy *st = part ? cf->enc : cf->evict;
            const void *cfg = part ? cf->enc_cfg : cf->evict_cfg;
            if (!st) continue;
            if (!st->q_rows) return 0;
            int whole = 0;
            size_t r = st->q_rows(cfg, P, B, &whole);
            if ((whole && E->o.prompt_scores != RP_PS_TRACE) || r >= P) return 0;
            if (P - r < from) from = P - r;
        }
    }
    return from;
}

/* The item's Q rows [q_from, n) (item_q_from; rows below are not read) and K, V rows [0, n),
 * one head at a time: the raw f16 read (read_rows_f16: the direct path outside the trace
 * lock, else H5Dread under it), the conversion outside the lock. */
static int item_read(item *it)
{
    rp_engine *E = it->E;
    size_t n = it->n, D = E->D, nr = it->nh + 2 * it->nkv, q0 = item_q_from(it);
    uint16_t *raw = tb_take(it->tb, TB_F16, n * D * sizeof *raw);
    kv_error ke;
    if (!raw) return IT_FAIL(it, "out of memory (seq %zu layer %zu)", it->s, it->l);
    if (E->o.q_debug & RP_QDEBUG_ROWS)
        fprintf(stderr, "kvreplay: q rows seq %zu layer %zu kv heads [%zu, %zu): [%zu, %zu)\n", it->s, it->l, it->g0,
                it->g0 + it->nkv, q0, n);
    for (size_t r = 0; r < nr; r++) {
        /* q heads of the item, then k and v of each of its kv heads */
        size_t g = r < it->nh ? 0 : (r - it->nh) / 2;
        kv_tensor w = r < it->nh ? KV_Q : (r - it->nh) % 2 ? KV_V : KV_K;
        size_t h = r < it->nh ? it->g0 * E->G + r : it->g0 + g, t0 = w == KV_Q ? q0 : 0;
        float *dst = r < it->nh ? it->q + r * n * D : (w == KV_K ? it->k : it->v) + g * n * D;
        if (read_rows_f16(E, w, it->s, it->l, h, t0, n - t0, raw, &ke)) return IT_FAIL(it, "%s", ke.msg);
        kv_f16_to_f32(raw, dst + t0 * D, (n - t0) * D);
        if (t0 && (E->o.q_debug & RP_QDEBUG_POISON))
            for (size_t i = 0; i < t0 * D; i++) dst[i] = NAN;
    }
    return item_read_scores(it);
}

/* ---- plans (strategy.h plan_score / plan_layer) ------------------------------------------ */

/* per_head: the plans of a sequence's planned configurations (strategies with plan_score whose
 * plan_size is not 0 for this sequence's prompt and budget), made before its kv-head items:
 * configuration c's block [L][Hkv][S[c]] doubles at buf + off[c]. Memory: the sum over those
 * configurations of L * Hkv * S[c] doubles, for the whole sequence (S = P for most: 0.5 MiB
 * per configuration at 8k tokens, 4 layers, 2 kv heads; P + 1 for criticaladakv; max(P, 2 S + 1),
 * S the unprotected slice, for compactor; G (n_initial + n_recent) for simlayerkv). */
typedef struct seq_plans {
    double *buf;
    size_t *off, *S;            /* [NC]; S[c] = 0: configuration c has no plan */
    size_t n_planned;           /* configurations with S[c] > 0 */
} seq_plans;

/* The plan row(s) of the item's kv heads for configuration c, or NULL (ctx.plan). */
static const double *item_plan(const item *it, size_t c)
{
    const seq_plans *sp = it->sp;
    if (!sp || !sp->S[c]) return NULL;
    return sp->buf + sp->off[c] + (it->l * it->E->Hkv + it->g0) * sp->S[c];
}

/* Budgets and flags of every (configuration, kv head); prefill: the strategies' prompt caches. */
static int item_prefill(item *it)
{
    rp_engine *E = it->E;
    const rp_sweep *sw = E->sw;
    size_t n = it->n, P = it->P, Hkv = it->nkv, s = it->s, l = it->l;
    int online = E->o.mode == RP_ONLINE;
    cstate *cs = it->sc->cs;
    for (size_t c = 0; c < sw->n; c++) {
        const rp_config *cf = &sw->cfg[c];
        uint64_t seed = mix64(mix64(cf->hash, s), l);
        size_t B;
        int dt = cf->evict->decode_time != 0;
        sweep_budget(cf, online || dt ? n : P, &B);  /* checked in rp_engine_new */
        int td = online || dt || rp_view_active(cf->evict, cf->evict_cfg) || (cf->evict->encode && cf->evict->time_dependent) ||
                 (cf->enc && cf->enc->time_dependent);
        for (size_t g = 0; g < Hkv; g++) {
            cstate *st = &cs[c * Hkv + g];
            st->B = B;
            st->seed = seed;
            st->dt = dt;
            st->td = td && cfg_has_encoder(cf);
            st->inc = st->td && cf->enc && cf->enc->encode_extend && !cf->evict->encode &&
                      !rp_view_active(cf->evict, cf->evict_cfg);
            st->cache.D = E->D;
        }
        if (online) continue;
        rp_cache *out = it->sc->pout;
        for (size_t g = 0; g < Hkv; g++) {     /* positions-only (strategy.h): rows stay the item's */
            rp_cache *pc = &cs[c * Hkv + g].cache;
            if (!pc->k && !pc->v) {             /* (empty caches: item_head_end freed them) */
                pc->src_k = it->ctx.k + g * it->ctx.n * E->D;
                pc->src_v = it->ctx.v + g * it->ctx.n * E->D;
                pc->src_n = it->ctx.n;
            }
            out[g] = *pc;
        }
        it->ctx.seed = seed;
        it->ctx.keep = cf->budget_kind == RP_BUDGET_KEEP ? cf->budget_value : 0;
        it->ctx.plan = item_plan(it, c);
        char e2[512] = "";
        int prc = cf->evict->prefill(cf->evict_cfg, &it->ctx, B, out, e2, sizeof e2);
        for (size_t g = 0; g < Hkv; g++) {
            cs[c * Hkv + g].cache = out[g];
            /* a cache still positions-only has k = v = NULL: dry below; one with rows keeps them */
            cs[c * Hkv + g].cache.src_k = cs[c * Hkv + g].cache.src_v = NULL;
            cs[c * Hkv + g].cache.src_n = 0;
        }
        if (prc && it->dsh_failed) return -1;      /* it->err: item_decode_pass's message */
        if (prc)
            return IT_FAIL(it, "config '%s': %s prefill failed at seq %zu layer %zu: %s", cf->canon, cf->evict->name,
                           s, l, e2[0] ? e2 : "error");
        for (size_t g = 0; g < Hkv; g++) {
            rp_cache *cc = &cs[c * Hkv + g].cache;
            char why[256];
            if (cache_check(cc, P, why, sizeof why))
                return IT_FAIL(it, "config '%s': %s prefill at seq %zu layer %zu kv head %zu: %s", cf->canon,
                               cf->evict->name, s, l, it->g0 + g, why);
            /* memory: plain unmodified entries are rows of the trace; keep their
             * positions only (cache_fill gives the rows back where they are read). A prefill
             * that pushed the source rows only (rp_cache_push in positions-only mode) copied
             * none: k = v = NULL already */
            if (!cc->modified && !cache_merged(cc)) {
                free(cc->k); free(cc->v);
                cc->k = cc->v = NULL;
                cs[c * Hkv + g].dry = 1;
            }
        }
    }
    for (size_t h = 0; h < it->nh; h++) {   /* prompt rows served the prefills; encoders re-fetch */
        free(it->pa[h]);
        it->pa[h] = NULL;
    }
    return 0;
}

/* A dry cache (plain entries whose rows are the trace's: positions only, k = v = NULL) gets
 * its rows back, room for cap entries (allocated once at the size the kv head needs). */
static int cache_fill(item *it, cstate *st, size_t g, size_t cap)
{
    rp_cache *cc = &st->cache;
    size_t n = it->n, D = it->E->D;
    const float *K = it->k + g * n * D, *Vv = it->v + g * n * D;
    if (rp_cache_reserve(cc, cap, cc->n_members)) return IT_FAIL(it, "out of memory");  /* k, v from NULL */
    size_t nk = cc->cap ? cc->cap : 1;
    if ((!cc->k && !(cc->k = malloc(nk * D * sizeof *cc->k))) || (!cc->v && !(cc->v = malloc(nk * D * sizeof *cc->v))))
        return IT_FAIL(it, "out of memory");
    for (size_t e = 0; e < cc->n; e++) {
        memcpy(cc->k + e * D, K + (size_t)cc->pos[e] * D, D * sizeof *cc->k);
        memcpy(cc->v + e * D, Vv + (size_t)cc->pos[e] * D, D * sizeof *cc->v);
    }
    st->dry = 0;
    return 0;
}

/* Whether a dry cache holds every prompt position [0, P) in order (it will hold [0, n)). */
static int cache_all_positions(const rp_cache *cc, size_t P)
{
    if (cc->n != P || cc->mem_off || cc->modified) return 0;
    for (size_t e = 0; e < P; e++)
        if ((size_t)cc->pos[e] != e) return 0;
    return 1;
}

/* Whether every entry of a cache with rows is a plain token whose key row is, bit for bit, the
 * kv head's row K [n][D] at its position (an encoder that changed the values only). */
static int keys_original(const rp_cache *cc, const float *K, size_t D)
{
    if (!cc->k || cc->mem_off) return 0;
    for (size_t e = 0; e < cc->n; e++)
        if (cc->mult[e] != 1 || memcmp(cc->k + e * D, K + (size_t)cc->pos[e] * D, D * sizeof *K)) return 0;
    return 1;
}

/* An aliased cache gives its borrowed rows back (before rp_cache_free). */
static void cache_unalias(cstate *st)
{
    if (!st->alias) return;
    st->cache.k = st->cache.v = NULL;
    st->alias = 0;
}

/* Prefill: configuration c's cache of kv head g gets the exact decode entries [P, n) and its
 * static encoding (freed after the head), and its rows back. A plain dry cache without
 * encoder or decode-time press takes the decode positions only and stays dry: the shared
 * evaluation reads the trace's rows by position (item_share_plan gives the rows back to the
 * configurations it does not take). */
static int item_head_prefill(item *it, size_t c, size_t g)
{
    rp_engine *E = it->E;
    size_t n = it->n, P = it->P, D = E->D;
    const rp_config *cf = &E->sw->cfg[c];
    cstate *st = &it->sc->cs[c * it->nkv + g];
    rp_cache *cc = &st->cache;
    const float *K = it->k + g * n * D, *Vv = it->v + g * n * D;
    /* a dry cache of every position, which nothing resizes or writes while the kv head is
     * evaluated (no decode-time press; no static encoding, which encodes in place: per-query
     * and incremental encoders encode copies), borrows the item's rows instead of a copy of
     * them: [n][2][D] floats less for each configuration that keeps everything */
    int alias = st->dry && !st->dt && !(cfg_has_encoder(cf) && !st->td) && cache_all_positions(cc, P);
    if (alias || (st->dry && !st->dt && !cfg_has_encoder(cf) && !cc->mem_off)) {
        size_t cap = cc->n + (n - P);
        if (cap > cc->cap) {
            if (!(cc->pos = realloc(cc->pos, cap * sizeof *cc->pos)) ||
                !(cc->mult = realloc(cc->mult, cap * sizeof *cc->mult)))
                return IT_FAIL(it, "out of memory");
            cc->cap = cap;
        }
        for (size_t t = P; t < n; t++) {
            cc->pos[cc->n] = (int32_t)t;
            cc->mult[cc->n++] = 1;
        }
        if (alias) {
            cc->k = (float *)K;
            cc->v = (float *)Vv;
            st->dry = 0;
            st->alias = 1;
        }
        it->ctx.seed = st->seed;
        return 0;
    }
    if (st->dry && cache_fill(it, st, g, cc->n + (n - P))) return -1;
    if (rp_cache_reserve(cc, cc->n + (n - P), cc->n_members)) return IT_FAIL(it, "out of memory");
    if (st->dt) {                       /* decode entries arrive one by one (item_block_cfg) */
        it->ctx.seed = st->seed;
        st->ost = cf->evict->online_new(cf->evict_cfg, &it->ctx, g, st->B);
        if (!st->ost) return IT_FAIL(it, "config '%s': %s online state: out of memory", cf->canon, cf->evict->name);
        return 0;
    }
    for (size_t t = P; t < n; t++)
        if (rp_cache_push(cc, (int32_t)t, K + t * D, Vv + t * D)) return IT_FAIL(it, "out of memory");
    it->ctx.seed = st->seed;
    if (cfg_has_encoder(cf) && !st->td) {
        if (run_encoders(cf, &it->ctx, g, n - 1, cc, it->err, sizeof it->err)) return -1;
        st->static_enc = 1;
        st->korig = keys_original(cc, K, D);
    }
    return 0;
}

/* Online: configuration c's eviction state of kv head g (and its eviction times). */
static int item_head_online(item *it, size_t c, size_t g)
{
    rp_engine *E = it->E;
    const rp_config *cf = &E->sw->cfg[c];
    cstate *st = &it->sc->cs[c * it->nkv + g];
    it->ctx.seed = st->seed;
    st->ost = cf->evict->online_new(cf->evict_cfg, &it->ctx, g, st->B);
    if (!st->ost) return IT_FAIL(it, "config '%s': %s online state: out of memory", cf->canon, cf->evict->name);
    if (E->o.export_evict_hook) {
        if (!st->evat && !(st->evat = malloc(it->n * sizeof *st->evat))) return IT_FAIL(it, "out of memory (export)");
        for (size_t j = 0; j < it->n; j++) st->evat[j] = (int32_t)it->n;
    }
    return 0;
}

/* Row t of query head i of kv head g from the full pass's logits row and fp32 log-sum-exp L0:
 * p [lo, t] = exp(row - L0) / Z in double (the shared row every metric reads); sum p^2 into
 * *p2 and log Z + L0 into *lz when they are not NULL. 0, or -1 (it->err) when L0 is not
 * finite. */
static int full_row_probs(item *it, size_t g, size_t i, size_t t, size_t lo, double L0, const float *row, double *p,
                          double *p2, double *lz)
{
    if (!isfinite(L0))
        return IT_FAIL(it, "non-finite full attention (NaN/Inf in the trace?) at seq %zu layer %zu head %zu position %zu",
                       it->s, it->l, (it->g0 + g) * it->E->G + i, t);
    double Z = attn_exp_sub_f64(row + lo, t + 1 - lo, L0, p + lo);
    double s2 = attn_div_sumsq_f64(p + lo, t + 1 - lo, Z);
    if (p2) *p2 = s2;
    if (lz) *lz = L0 + log(Z);
    return 0;
}

/* Floats of one block of the full pass kept by item_decode_pass: lse [G][BLK], of [G][BLK][D],
 * lg [G][BLK][n]. */
static size_t dec_block_floats(const rp_engine *E, size_t n)
{
    return E->G * BLK * (1 + E->D + n);
}

/* The largest set of kept blocks (bytes per thread). A kv head's blocks at 16k tokens with
 * --decode 256 and 4 query heads per kv head are 64.5 MiB, kept; at 32k (129 MiB, about
 * an item's own tensors again) the full pass over those rows runs again in item_head (the
 * same bits). */
#define DEC_KEEP_MAX ((size_t)96 << 20)

/* The full pass over the evaluated rows [P, n) of kv head g (the blocks item_head will ask
 * item_full_attn for) and, from its probabilities (the double p item_full_attn computes), the
 * evaluated rows' share of the captured prompt sums of the kv head's G query heads, in row
 * order: it->dsh. With trace prompt scores a configuration scoring the whole prompt needs the
 * share before the blocks are evaluated; rp_shared would otherwise run that pass itself.
 * Prefill items of one kv head (per_head) keep the blocks (it->dst, at most DEC_KEEP_MAX) for
 * item_full_attn, so the pass runs once. 0, or -1 with it->err set (dsh_failed). */
static int item_decode_pass(item *it, size_t g)
{
    rp_engine *E = it->E;
    size_t n = it->n, P = it->ctx.P, D = E->D, G = E->G, NB = (n - P + BLK - 1) / BLK, bf = dec_block_floats(E, n);
    const attn_params *ap = &E->ap[it->l];
    double *sh = it->dsh + g * G * P;
    memset(sh, 0, G * P * sizeof *sh);
    it->dsh_failed = 1;
    if (!NB) return it->dsh_failed = 0;
    const float *kt = rp_shared_keys_t(it->sh, g);      /* NULL: transposed per block */
    float *keep = NULL, *own = NULL;
    double *prow = malloc(n * sizeof *prow);
    if (it->sc && E->o.mode != RP_ONLINE && it->nkv == 1 && NB * bf * sizeof(float) <= DEC_KEEP_MAX)
        keep = tb_take(it->tb, TB_DEC, NB * bf * sizeof *keep);
    if (!keep) own = malloc(bf * sizeof *own);
    if (!prow || (!keep && !own)) {
        free(prow); free(own);
        return IT_FAIL(it, "out of memory (seq %zu layer %zu)", it->s, it->l);
    }
    for (size_t b = 0; b < NB; b++) {
        size_t tb = P + b * BLK, te = tb + BLK < n ? tb + BLK : n;
        float *lse = keep ? keep + b * bf : own, *of = lse + G * BLK, *lg = of + G * BLK * D;
        attn_full_rows_heads(it->q + g * G * n * D, n * D, G, kt, it->v + g * n * D, n, D, tb, te, ap, BLK, lse, of,
                             lg);
        for (size_t t = tb; t < te; t++) {
            size_t r = t - tb, lo = attn_lo(t, ap->window);
            for (size_t i = 0; i < G; i++) {
                if (full_row_probs(it, g, i, t, lo, lse[i * BLK + r], lg + (i * BLK + r) * n, prow, NULL, NULL)) {
                    free(prow); free(own);
                    return -1;
                }
                for (size_t j = lo; j < P; j++) sh[i * P + j] += prow[j];
            }
        }
    }
    free(prow); free(own);
    it->dst = keep;                     /* keep: nkv == 1, so g == 0 */
    it->dsh_done[g] = 1;
    return it->dsh_failed = 0;
}

/* rp_decode_share_fn for the item's shared scores (local query head h). */
static int item_decode_share(void *arg, size_t h, double *out)
{
    item *it = arg;
    size_t G = it->E->G, g = h / G, P = it->ctx.P;
    if (!it->dsh) {
        it->dsh = malloc((it->nh * P > 0 ? it->nh * P : 1) * sizeof *it->dsh);
        it->dsh_done = calloc(it->nkv, 1);
        if (!it->dsh || !it->dsh_done) {
            it->dsh_failed = 1;
            return IT_FAIL(it, "out of memory (seq %zu layer %zu)", it->s, it->l);
        }
    }
    if (!it->dsh_done[g] && item_decode_pass(it, g)) return -1;
    memcpy(out, it->dsh + h * P, P * sizeof *out);
    return 0;
}

/* The full cache's attention of rows [tb, te) of kv head g's query heads, and their
 * probabilities in double (renormalised: the kernel's lse is fp32), shared by every
 * configuration (the blocks item_decode_pass kept: its lse, outputs and logits). */
static int item_full_attn(item *it, size_t g, size_t tb, size_t te)
{
    rp_engine *E = it->E;
    item_scratch *sc = it->sc;
    size_t n = it->n, D = E->D, G = E->G;
    const attn_params *ap = &E->ap[it->l];
    if (it->dst && tb >= it->P && (tb - it->P) % BLK == 0) {
        /* kept by item_decode_pass: the same kernel call's lse, outputs and logits */
        float *blk = it->dst + (tb - it->P) / BLK * dec_block_floats(E, n);
        sc->lse = blk; sc->of = blk + G * BLK; sc->lg = sc->of + G * BLK * D;
    } else {
        sc->lse = sc->lse_s; sc->of = sc->of_s; sc->lg = sc->lg_s;
        attn_full_rows_heads(it->q + g * G * n * D, n * D, G, it->kt, it->v + g * n * D, n, D, tb, te, ap, BLK,
                             sc->lse, sc->of, sc->lg);
    }
    for (size_t t = tb; t < te; t++) {
        size_t r = t - tb, lo = attn_lo(t, ap->window);
        double *pft = sc->pf + r * G * n;
        for (size_t i = 0; i < G; i++)
            if (full_row_probs(it, g, i, t, lo, sc->lse[i * BLK + r], sc->lg + (i * BLK + r) * n, pft + i * n,
                               &sc->pf2[r * G + i], &sc->lz[r * G + i]))
                return -1;
    }
    return 0;
}

/* What one query row of one configuration sees. */
typedef struct row_view {
    rp_cache view;          /* the visible cache (a view: owns nothing) */
    size_t nv;              /* its entries */
    size_t elo;             /* first entry inside the window */
    int reindexed;          /* a re-indexing view changed rows without reconstruction */
    int merged;             /* entries of multiplicity > 1 */
} row_view;

/* The cache query t of configuration c sees, in one of three cases: the incremental encoding
 * of a growing prefix (inc), a per-query encoded copy (td), or a prefix view of the cache. */
static int item_cache_view(item *it, size_t c, size_t g, size_t t, row_view *rv)
{
    rp_engine *E = it->E;
    const rp_config *cf = &E->sw->cfg[c];
    cstate *st = &it->sc->cs[c * it->nkv + g];
    rp_cache *cache = &st->cache;
    int online = E->o.mode == RP_ONLINE || st->dt;
    size_t n = it->n, D = E->D;
    size_t nv = online ? cache->n : cache->n - (n - 1 - t);   /* prefill: prefix up to t */
    rv->reindexed = 0;
    if (st->inc) {                      /* the encoding of the previous prefix, extended */
        if (!st->enc_n || nv < st->enc_n) {
            /* inc: no view or eviction encode before the encoder (item_prefill), so
             * run_encoders would run cf->enc->encode alone: with encode_from the encoder
             * writes the copy's rows from the cache's instead */
            int from = cf->enc->encode_from != NULL;
            cache_take(it->tb, c, &st->enc);
            if (cache_copy_prefix_rows(&st->enc, cache, nv, !from)) return IT_FAIL(it, "out of memory");
            if (from) {
                char e2[512] = "";
                if (cf->enc->encode_from(cf->enc_cfg, &it->ctx, g, t, cache->k, cache->v, &st->enc, e2, sizeof e2))
                    return IT_FAIL(it, "config '%s': %s encode at seq %zu layer %zu kv head %zu: %s", cf->canon,
                                   cf->enc->name, it->s, it->l, it->g0 + g, e2);
                if (st->enc.n != nv)        /* run_encoders' check, for the encode_from path */
                    return IT_FAIL(it, "config '%s': encode changed the number of entries (seq %zu layer %zu kv head %zu)",
                                   cf->canon, it->s, it->l, it->g0 + g);
            } else if (run_encoders(cf, &it->ctx, g, t, &st->enc, it->err, sizeof it->err)) {
                return -1;
            }
        } else {
            size_t m0 = st->enc_n;
            char e2[512] = "";
            for (size_t e = m0; e < nv; e++)
                if (cache_append(&st->enc, cache, e)) return IT_FAIL(it, "out of memory");
            if (cf->enc->encode_extend(cf->enc_cfg, &it->ctx, g, t, &st->enc, m0, e2, sizeof e2))
                return IT_FAIL(it, "config '%s': %s encode at seq %zu layer %zu kv head %zu: %s", cf->canon,
                               cf->enc->name, it->s, it->l, it->g0 + g, e2);
        }
        st->enc_n = nv;
        rv->view = st->enc;
    } else if (st->td) {                /* a copy encoded for this query */
        rp_cache *qc = &it->qcopy;
        cache_take(it->tb, E->sw->n, qc);
        if (cache_copy_prefix(qc, cache, nv)) return IT_FAIL(it, "out of memory");
        if (run_encoders(cf, &it->ctx, g, t, qc, it->err, sizeof it->err)) return -1;
        if (rp_view_active(cf->evict, cf->evict_cfg) && !qc->modified)
            rv->reindexed = memcmp(qc->k, cache->k, nv * D * sizeof *qc->k) ||
                            memcmp(qc->v, cache->v, nv * D * sizeof *qc->v);
        rv->view = *qc;
    } else {                            /* the cache itself, up to t */
        rv->view = *cache;
        rv->view.n = nv;
        if (rv->view.mem_off) rv->view.n_members = (size_t)rv->view.mem_off[nv];
    }
    if (st->evat && (rv->reindexed || rv->view.modified))
        return IT_FAIL(it, "config '%s': --export under --mode online: its rows change with the query "
                       "position (a re-indexing view, or values merged while decoding); only eviction can be exported online",
                       cf->canon);
    rv->nv = nv;
    rv->merged = cache_merged(&rv->view);
    if (rv->merged)
        for (size_t e = 0; e < nv; e++) it->sc->logm[e] = logf((float)rv->view.mult[e]);
    size_t lo = attn_lo(t, E->ap[it->l].window), a = 0, b = nv;
    while (lo && a < b) {               /* first entry inside the window */
        size_t m = (a + b) / 2;
        if ((size_t)rv->view.pos[m] < lo) a = m + 1; else b = m;
    }
    rv->elo = lo ? a : 0;
    return 0;
}

/* Whether configuration c's rows of the block come from one blocked kernel call (on), over
 * its bm entries; otherwise each row is computed alone. */
typedef struct blocked_rows { int on; size_t bm; } blocked_rows;

/* An evaluated row's metrics (query head i of the kv head, hg global) into the layer's sums. */
/* The read-out perturbation of global query head hg at evaluated position t >= P under
 * configuration c: its row of dO (the item's columns) = oc - o, and its kv head marked. */
static void item_delta_row(item *it, size_t c, size_t hg, size_t t, const float *o, const float *oc)
{
    if (!it->dO) return;
    size_t D = it->E->D, G = it->E->G, hl = hg - it->g0 * G;     /* the item's local query head */
    float *dst = it->dO + (c * (it->n - it->P) + (t - it->P)) * it->nh * D + hl * D;
    for (size_t d = 0; d < D; d++) dst[d] = oc[d] - o[d];
    it->dO_set[c * it->nkv + hl / G] = 1;
}

static void item_row_sums(item *it, size_t c, size_t i, size_t hg, size_t t, const rp_row_metrics *rm, double ocos,
                          double orel, size_t cnt, size_t nfull)
{
    rp_engine *E = it->E;
    size_t P = it->P, NE = it->n - P, G = E->G, H = E->H;
    double *ha = it->ha + ((c * E->L + it->l) * H + hg) * HA_NF;
    ha[HA_N] += 1; ha[HA_COS] += rm->attn_cos; ha[HA_OCOS] += ocos; ha[HA_OREL] += orel;
    ha[HA_KL] += rm->attn_kl; ha[HA_REC] += rm->mass_recall;
    ha[HA_KEEP] += (double)cnt / (double)nfull; ha[HA_BUDGET] += (double)cnt;
    if (E->per_head) {          /* one term per (row, query head): the fold adds them */
        double *pp = it->pp + ((c * NE + (t - P)) * G + i) * PP_ATT;
        pp[PP_ATTN_KL] = rm->attn_kl; pp[PP_OUT_COS] = ocos;
    } else {
        double *pp = it->pp + (c * NE + (t - P)) * PP_ATT;
        pp[PP_ATTN_KL] += rm->attn_kl; pp[PP_OUT_COS] += ocos;
    }
}

/* Metrics of query row t (block row r) for every query head of kv head g, configuration c. */
static int item_metrics(item *it, size_t c, size_t g, size_t t, size_t r, const row_view *rv, blocked_rows br)
{
    rp_engine *E = it->E;
    item_scratch *sc = it->sc;
    const rp_config *cf = &E->sw->cfg[c];
    cstate *st = &sc->cs[c * it->nkv + g];
    const attn_params *ap = &E->ap[it->l];
    int online = E->o.mode == RP_ONLINE || st->dt;     /* probabilities for online_step */
    size_t n = it->n, P = it->P, D = E->D, G = E->G, H = E->H, nv = rv->nv, elo = rv->elo;
    size_t lo = attn_lo(t, ap->window), nfull = t + 1 - lo;
    const rp_cache *view = &rv->view;
    const double *pft = sc->pf + r * G * n;
    if (online) memset(sc->probs, 0, G * nv * sizeof *sc->probs);
    for (size_t i = 0; i < G; i++) {
        size_t h = g * G + i, hg = it->g0 * G + h, cnt = 0;    /* local (the item's arrays, hooks), global */
        const float *qt = it->q + (h * n + t) * D, *o = sc->of + (i * BLK + r) * D;
        const size_t *ix = NULL;
        if (cf->evict->select) {
            memset(sc->vis, 0, nv);
            cf->evict->select(cf->evict_cfg, &it->ctx, h, t, qt, view, st->B, sc->vis);
            for (size_t e = elo; e < nv; e++) if (sc->vis[e]) sc->idx[cnt++] = e;
            ix = sc->idx;
        } else {
            cnt = nv - elo;
        }
        rp_row_metrics rm = { 1.0, 0.0, 1.0 };
        double ocos = 1.0, orel = 0.0;
        int orig = !view->modified && !rv->reindexed && !rv->merged;    /* the trace's own rows */
        if (cnt == nfull && orig) {
            /* the full cache's entries with original rows: its results, bit for bit */
            if (online)
                for (size_t r2 = 0; r2 < cnt; r2++) {
                    size_t e = ix ? ix[r2] : elo + r2;
                    sc->probs[i * nv + e] = (float)pft[i * n + view->pos[e]];
                }
            if (it->nd && t >= P) {
                rp_row_full rf = { .lo = lo, .t = t, .p = pft + i * n };
                rp_needles_row(it->nd, c, it->l, hg, E->sw->n, E->L, H, &rf, NULL);
            }
        } else {
            if (cnt == 0)
                return IT_FAIL(it, "config '%s': no visible cache entry for seq %zu layer %zu head %zu position %zu",
                               cf->canon, it->s, it->l, hg, t);
            float lc;
            const float *bb = NULL, *zr = sc->z, *ocr = sc->oc;
            if (rv->merged) {
                if (ix) { for (size_t r2 = 0; r2 < cnt; r2++) sc->bias[r2] = sc->logm[ix[r2]]; bb = sc->bias; }
                else bb = sc->logm + elo;
            }
            if (br.on) {                /* rows of this block, computed at once */
                lc = sc->blse[i * BLK + r];
                zr = sc->bz + (i * BLK + r) * br.bm;
                ocr = sc->bout + (i * BLK + r) * D;
            } else if (orig && ap->window <= 0) {
                /* original rows (a selection: quest; an online or time-dependent cache): their
                 * logits are the full cache's, gathered instead of recomputed; the same
                 * results bit for bit */
                const float *full = sc->lg + (i * BLK + r) * n;
                for (size_t r2 = 0; r2 < cnt; r2++) sc->z[r2] = full[view->pos[ix ? ix[r2] : elo + r2]];
                attn_entries_given(sc->z, ix ? view->v : view->v + elo * D, ix, cnt, D, &lc, sc->oc);
            } else if (ix) {
                attn_entries(qt, view->k, view->v, ix, bb, cnt, D, ap, &lc, sc->oc, sc->z);
            } else {
                attn_entries(qt, view->k + elo * D, view->v + elo * D, NULL, bb, cnt, D, ap, &lc, sc->oc, sc->z);
            }
            /* prefill, plain entries: q with the kernels' vectorised exp (fp32, ~1 ulp; they
             * weight the cosine and KL terms, whose log-ratios stay double); online keeps
             * double exp: its probabilities drive eviction decisions */
            int q32 = !online && !view->mem_off;
            if (q32) attn_exp_shift(zr, cnt, lc, sc->probs);
            rp_row_full rf = { .lo = lo, .t = t, .p = pft + i * n, .logit = sc->lg + (i * BLK + r) * n,
                               .lz = sc->lz[r * G + i], .p2 = sc->pf2[r * G + i] };
            rp_row_comp cp = { .cnt = cnt, .ent = ix, .first = elo, .z = zr, .lse = lc,
                               .q32 = q32 ? sc->probs : NULL, .pos = view->pos, .mult = view->mult,
                               .mem_off = view->mem_off, .members = view->members };
            rp_attn_row_metrics(&rf, &cp, online ? sc->probs + i * nv : NULL, &rm);
            if (it->nd && t >= P) rp_needles_row(it->nd, c, it->l, hg, E->sw->n, E->L, H, &rf, &cp);
            rp_out_row_metrics(o, ocr, D, &ocos, &orel);
            if (!isfinite(rm.attn_cos) || !isfinite(ocos) || !isfinite(orel) || !isfinite(rm.attn_kl) ||
                !isfinite(rm.mass_recall) || !isfinite(lc))
                return IT_FAIL(it, "config '%s': NaN/Inf in metrics at seq %zu layer %zu head %zu position %zu",
                               cf->canon, it->s, it->l, hg, t);
            it->ia[c * SA_NF + SA_DIFFERS] = 1;
            if (t >= P) item_delta_row(it, c, hg, t, o, ocr);
        }
        if (t >= P) item_row_sums(it, c, i, hg, t, &rm, ocos, orel, cnt, nfull);
    }
    return 0;
}

/* The cache the last position sees: bytes, reconstruction error, the export hook. */
static int item_export(item *it, size_t c, size_t g, const rp_cache *view)
{
    rp_engine *E = it->E;
    account_last(it, &E->sw->cfg[c], c, g, view);
    if (E->o.export_hook && E->o.export_hook(E->o.export_ud, c, it->s, it->l, it->g0 + g, it->n, it->P, view))
        return IT_FAIL(it, "out of memory (export)");
    return 0;
}

/* Prefill, time-dependent configurations: the cache query t sees, to the exporter (which
 * records when each entry's row changes from the one before encoding). */
static int item_export_step(item *it, size_t c, size_t g, size_t t, const rp_cache *view)
{
    rp_engine *E = it->E;
    const cstate *st = &it->sc->cs[c * it->nkv + g];
    int rc = E->o.export_step_hook(E->o.export_ud, c, it->s, it->l, it->g0 + g, t, it->n, it->P, view, &st->cache);
    if (rc < 0) return IT_FAIL(it, "out of memory (export)");
    if (rc > 0)
        return IT_FAIL(it, "config '%s': --export: at seq %zu layer %zu kv head %zu position %zu a row changed a "
                       "second time (the export describes one change per row): its per-position cache state is not "
                       "exportable (leave it out with --export-configs)", E->sw->cfg[c].canon, it->s, it->l, it->g0 + g, t);
    return 0;
}

/* Online: after query t, the strategy names the entries to evict down to the budget. */
static int item_online_evict(item *it, size_t c, size_t g, size_t t)
{
    rp_engine *E = it->E;
    item_scratch *sc = it->sc;
    const rp_config *cf = &E->sw->cfg[c];
    cstate *st = &sc->cs[c * it->nkv + g];
    rp_cache *cache = &st->cache;
    size_t s = it->s, l = it->l, ne = 0, dropped = 0;
    if (st->dt ? t < it->P : cache->n <= st->B) return 0;
    kv_error se = { 0 };
    if (cf->evict->online_step(st->ost, &it->ctx, g, t, cache, sc->probs, st->B, sc->evict, &ne, &se) != KV_OK)
        return IT_FAIL(it, "config '%s': %s online step at seq %zu layer %zu kv head %zu position %zu: %s",
                       cf->canon, cf->evict->name, s, l, it->g0 + g, t, se.msg[0] ? se.msg : kv_status_name(se.code));
    memset(sc->keep, 1, cache->n);
    for (size_t q = 0; q < ne; q++) {
        size_t e = sc->evict[q];
        if (e >= cache->n || !sc->keep[e])
            return IT_FAIL(it, "config '%s': %s named an invalid entry to evict at seq %zu layer %zu kv head %zu position %zu",
                           cf->canon, cf->evict->name, s, l, it->g0 + g, t);
        sc->keep[e] = 0;
        if (st->evat) st->evat[cache->pos[e]] = (int32_t)(t + 1);
        dropped++;
    }
    if (cache->n - dropped > st->B)
        return IT_FAIL(it, "config '%s': %s kept %zu entries, budget %zu (seq %zu layer %zu kv head %zu position %zu)",
                       cf->canon, cf->evict->name, cache->n - dropped, st->B, s, l, it->g0 + g, t);
    rp_cache_compact(cache, sc->keep);
    if (cf->evict->online_rows) {
        char e2[512] = "";
        int m0 = cache->modified;
        if (cf->evict->online_rows(st->ost, &it->ctx, g, t, cache, e2, sizeof e2))
            return IT_FAIL(it, "config '%s': %s online rows at seq %zu layer %zu kv head %zu position %zu: %s",
                           cf->canon, cf->evict->name, s, l, it->g0 + g, t, e2[0] ? e2 : "error");
        if (cache->modified && !m0) st->enc_n = 0;
    }
    if (dropped) st->enc_n = 0;         /* the cache is no longer a grown prefix */
    return 0;
}

/* A block of prefill rows of an incremental encoder with encode_cuts: every row's cache is
 * the encoding of the block's last row (st->enc) with the entries at and above the row's
 * cuts taken back from the exact cache. */
typedef struct cut_rows {
    int on;
    size_t nv[BLK], kcut[BLK], vcut[BLK];   /* per block row: entries, the encoder's cuts */
    int sview;                              /* a static view (item_static_view_block) */
    size_t sview_diff;                      /* its first re-indexed entry */
} cut_rows;

/* Whether prefill rows [tb, te) of a configuration can be evaluated as one block by
 * attn_rows_cut at all: the prefill protocol, no per-query selection or window, no merged
 * entries, no per-row export, a block that fits and a head_dim the kernel takes. */
static int rows_blockable(const item *it, const rp_config *cf, const rp_cache *cc, size_t tb, size_t te)
{
    const rp_engine *E = it->E;
    const attn_params *ap = &E->ap[it->l];
    return E->o.mode != RP_ONLINE && !cf->evict->select && !(ap->window > 0) && !cache_merged(cc) &&
           !E->o.export_step_hook && te - tb <= BLK &&
           !attn_rows_cut(NULL, 0, E->D, ap, NULL, NULL, 0, NULL, NULL, NULL);    /* no rows: whether D fits */
}

/* Whether configuration c's rows [tb, te) go through attn_rows_cut, and if so, their
 * results into the blocked buffers (sc->blse, bout, bz with row stride nv of the last row)
 * and st->enc extended to the last row. The per-row path stays for what the kernel does
 * not cover: online, per-query selection, windows, merged entries, per-row export. */
static int item_cut_block(item *it, size_t c, size_t g, size_t tb, size_t te, cut_rows *cr)
{
    rp_engine *E = it->E;
    item_scratch *sc = it->sc;
    const rp_config *cf = &E->sw->cfg[c];
    cstate *st = &sc->cs[c * it->nkv + g];
    const attn_params *ap = &E->ap[it->l];
    size_t n = it->n, D = E->D, G = E->G;
    rp_cache *cc = &st->cache;
    cr->on = 0;
    if (!rows_blockable(it, cf, cc, tb, te) || !st->inc || !cf->enc->encode_cuts) return 0;
    for (size_t t = tb; t < te; t++) {
        size_t r = t - tb, m = cc->n - (n - 1 - t);
        cr->nv[r] = m;
        if (cf->enc->encode_cuts(cf->enc_cfg, &it->ctx, cc, m, &cr->kcut[r], &cr->vcut[r])) return 0;
    }
    row_view last;
    if (item_cache_view(it, c, g, te - 1, &last)) return -1;    /* st->enc: the last row's cache */
    size_t ld = cr->nv[te - 1 - tb];
    attn_cut_src src = { st->enc.k, cc->k, st->enc.v, cc->v, cr->kcut, cr->vcut };
    if (attn_rows_cut_heads(it->q + (g * G * n + tb) * D, n * D, G, te - tb, D, ap, &src, cr->nv, ld, BLK, sc->blse,
                            sc->bout, sc->bz))
        return IT_FAIL(it, "internal: attn_rows_cut refused head_dim %zu", D);
    cr->on = 1;
    return 0;
}

/* Prefill rows of a configuration whose view is static (strategy view_static): the view of
 * the last query is made once per kv head into st->enc (run_encoders at t = n - 1 on the whole
 * cache) and every row of a block sees its first nv entries, evaluated at once by
 * attn_rows_cut without cuts: bit for bit attn_entries over each row's own view, which is
 * what the per-row path computes. The per-row path stays for what this does not cover
 * (encoders after the view, selection, windows, merged entries, per-row export). */
static int item_static_view_block(item *it, size_t c, size_t g, size_t tb, size_t te, cut_rows *cr)
{
    rp_engine *E = it->E;
    item_scratch *sc = it->sc;
    const rp_config *cf = &E->sw->cfg[c];
    cstate *st = &sc->cs[c * it->nkv + g];
    const attn_params *ap = &E->ap[it->l];
    size_t n = it->n, D = E->D, G = E->G;
    rp_cache *cc = &st->cache;
    cr->on = 0;
    if (!rows_blockable(it, cf, cc, tb, te) || st->dt || !st->td || !cf->evict->view_static ||
        !rp_view_active(cf->evict, cf->evict_cfg) || cf->enc || cf->evict->encode)
        return 0;
    if (!st->sview) {
        cache_take(it->tb, c, &st->enc);
        if (cache_copy_prefix(&st->enc, cc, cc->n)) return IT_FAIL(it, "out of memory");
        if (run_encoders(cf, &it->ctx, g, n - 1, &st->enc, it->err, sizeof it->err)) return -1;
        size_t fd = 0;
        while (fd < cc->n && !memcmp(st->enc.k + fd * D, cc->k + fd * D, D * sizeof *cc->k) &&
               !memcmp(st->enc.v + fd * D, cc->v + fd * D, D * sizeof *cc->v))
            fd++;
        st->sview_diff = fd;
        st->sview = 1;
    }
    for (size_t t = tb; t < te; t++) {
        size_t r = t - tb;
        cr->nv[r] = cc->n - (n - 1 - t);
        cr->kcut[r] = cr->vcut[r] = 0;
    }
    size_t ld = cr->nv[te - 1 - tb];
    attn_cut_src src = { st->enc.k, st->enc.k, st->enc.v, st->enc.v, cr->kcut, cr->vcut };
    if (attn_rows_cut_heads(it->q + (g * G * n + tb) * D, n * D, G, te - tb, D, ap, &src, cr->nv, ld, BLK, sc->blse,
                            sc->bout, sc->bz))
        return IT_FAIL(it, "internal: attn_rows_cut refused head_dim %zu", D);
    cr->on = 1;
    cr->sview = 1;
    cr->sview_diff = st->sview_diff;
    return 0;
}

/* Block row r's view under item_cut_block or item_static_view_block: the entry list of
 * st->enc cut to the row's entries (pos, bytes; rows are not read: the block's kernel
 * results stand for them). A static view is re-indexed for the row when it reaches an entry
 * whose rows differ from the cache's (what the per-row path finds by comparing them). */
static void cut_row_view(const cut_rows *cr, const cstate *st, size_t r, row_view *rv)
{
    *rv = (row_view){ .view = st->enc, .nv = cr->nv[r] };
    rv->view.n = cr->nv[r];
    rv->view.modified = cr->kcut[r] + cr->vcut[r] > 0;
    if (cr->sview) rv->reindexed = cr->nv[r] > cr->sview_diff;
}

/* Configuration c on the block [tb, te) of kv head g. */
static int item_block_cfg(item *it, size_t c, size_t g, size_t tb, size_t te)
{
    rp_engine *E = it->E;
    item_scratch *sc = it->sc;
    const rp_config *cf = &E->sw->cfg[c];
    cstate *st = &sc->cs[c * it->nkv + g];
    const attn_params *ap = &E->ap[it->l];
    int online = E->o.mode == RP_ONLINE || st->dt;     /* decode-time presses: online steps */
    size_t n = it->n, D = E->D, G = E->G;
    const rp_cache *cc = &st->cache;
    /* prefill, static cache, no per-query selection, no window: the block's rows attend over a
     * prefix of one fixed entry list (row t sees entries [0, t + 1 - shift)), so one blocked
     * kernel call serves the block */
    int merged = cache_merged(cc);
    blocked_rows br = { !online && !st->td && !cf->evict->select && ap->window <= 0 && (!merged || cc->k) &&
                        !(cc->n == n && !cc->modified), cc->n };
    if (br.on) {
        size_t shift = n - br.bm, nvis[BLK];
        const float *qg = it->q + g * G * n * D + shift * D;
        int given = merged || !cc->modified || st->korig;      /* logits in sc->bz, then P.V */
        for (size_t t = tb; t < te; t++) nvis[t - tb] = t + 1 - shift;
        if (merged) {
            /* merged entries (entropy_merge's runs: mean rows): the block's logits against the
             * cache's rows, each entry's log multiplicity added (as item_cache_view's bias):
             * for head_dim <= 256 (key blocks of 64, as attn_entries') the per-row path's
             * results bit for bit, else within rounding */
            for (size_t e = 0; e < br.bm; e++) sc->logm[e] = logf((float)cc->mult[e]);
            attn_full_rows_heads_k(qg, n * D, G, cc->k, NULL, br.bm, D, tb - shift, te - shift, ap, BLK, NULL,
                                   NULL, sc->bz);
            for (size_t i = 0; i < G; i++)
                for (size_t t = tb; t < te; t++) {
                    float *z = sc->bz + (i * BLK + (t - tb)) * br.bm;
                    for (size_t e = 0; e < nvis[t - tb]; e++) z[e] += sc->logm[e];
                }
        } else if (given) {
            /* original keys (rows, or values encoded alone): the kept entries' logits are the
             * full cache's (item_full_attn), gathered instead of recomputed; the same results
             * bit for bit (attn_rows_given) */
            for (size_t i = 0; i < G; i++)
                for (size_t t = tb; t < te; t++) {
                    const float *full = sc->lg + (i * BLK + (t - tb)) * n;
                    float *z = sc->bz + (i * BLK + (t - tb)) * br.bm;
                    for (size_t e = 0; e < nvis[t - tb]; e++) z[e] = full[cc->pos[e]];
                }
        } else {
            /* the G heads in one call: each block of the changed keys transposed once, not G
             * times (think key_ratio=0.25 at 8k tokens: 873 of ~6500 samples were transposes) */
            attn_full_rows_heads_k(qg, n * D, G, cc->k, cc->v, br.bm, D, tb - shift, te - shift, ap, BLK, sc->blse,
                                   sc->bout, sc->bz);
        }
        for (size_t i = 0; given && i < G; i++)
            attn_rows_given(sc->bz + i * BLK * br.bm, br.bm, nvis, te - tb, cc->v, D, sc->blse + i * BLK,
                            sc->bout + i * BLK * D);
    }
    cut_rows cr = { 0 };
    if (!br.on && item_cut_block(it, c, g, tb, te, &cr)) return -1;
    if (!br.on && !cr.on && item_static_view_block(it, c, g, tb, te, &cr)) return -1;
    if (cr.on) br = (blocked_rows){ 1, cr.nv[te - 1 - tb] };
    for (size_t t = tb; t < te; t++) {
        it->ctx.seed = st->seed;
        if (online && rp_cache_push(&st->cache, (int32_t)t, it->k + (g * n + t) * D, it->v + (g * n + t) * D))
            return IT_FAIL(it, "out of memory");
        row_view rv;
        if (cr.on) cut_row_view(&cr, st, t - tb, &rv);
        else if (item_cache_view(it, c, g, t, &rv)) return -1;
        if (item_metrics(it, c, g, t, t - tb, &rv, br)) return -1;
        if (st->td && !online && E->o.export_step_hook && item_export_step(it, c, g, t, &rv.view)) return -1;
        if (t == n - 1 && item_export(it, c, g, &rv.view)) return -1;
        if (online && item_online_evict(it, c, g, t)) return -1;
    }
    return 0;
}

/* Online: the states of kv head g end (eviction times to the exporter); every configuration's
 * caches of this head are freed. */
static int item_head_end(item *it, size_t g)
{
    rp_engine *E = it->E;
    const rp_sweep *sw = E->sw;
    for (size_t c = 0; c < sw->n; c++) {
        cstate *st = &it->sc->cs[c * it->nkv + g];
        if (st->ost) sw->cfg[c].evict->online_free(st->ost);
        st->ost = NULL;
        if (st->evat && E->o.export_evict_hook(E->o.export_ud, c, it->s, it->l, it->g0 + g, it->n, it->P, st->evat))
            return IT_FAIL(it, "out of memory (export)");
        cache_unalias(st);
        rp_cache_free(&st->cache);
        cache_give(it->tb, c, sw->n + 1, &st->enc);
    }
    return 0;
}

/* ---- shared evaluation of eviction-only configurations (prefill) ---------------------------
 *
 * A configuration that only evicts (original rows: no encoder, merge, per-query selection or
 * window) sees, at evaluated row t, its kept prompt entries K_c and the exact entries [P, t].
 * Its logits there are the full row's, so its probabilities are the full row's p_j (double,
 * item_full_attn) renormalised over what it sees: q_j = p_j / R_c with R_c = sum p_j. Then
 *     mass_recall = R_c,  attn_kl = sum q_j log(q_j / p_j) = -log R_c,
 *     attn_cos = (S_c / R_c) / sqrt(p2 S_c / R_c^2) = sqrt(S_c / p2)   (S_c = sum p_j^2),
 *     output = U_c / R_c                                                 (U_c = sum p_j v_j):
 * no exp and no per-entry metric terms per configuration. The decode entries [P, t] are
 * common to all of them (their sums once per row); and when kept sets are nested (a family
 * differing only in keep, checked per (sequence, layer, kv head) on the index lists), U, R, S
 * of the larger set continue the smaller's sums: one pass over the largest set of a chain.
 *
 * Rounding against the direct path (--no-share): the direct path's q_j come from fp32 exps
 * relative to the configuration's own fp32 log-sum-exp, each within ~2^-22 (1 + |lse|)
 * relative; here q_j is p_j (double, ~1e-16) times 1/R_c, and U_c is an fp32 sum over the same
 * entries in another order (chain order, decode entries apart): both outputs are within
 * gamma_cnt sum q_j |v_j| (fp32) of the exact one. So attn_cos, mass_recall, out_cos and
 * out_rel_err agree to ~1e-6 relative and attn_kl to ~2^-22 (1 + |lse|) absolute (the direct
 * path's KL carries its fp32 lse), the bound tests/py/test_share.py checks. Guard: p_j of a
 * kept set far below the full row's maximum lose precision (fp32 weights underflow below
 * 2^-126); a row whose R_c < 2^-60 is evaluated by the direct path (the weights it loses are
 * below 2^-66 of its mass). */

/* Whether configuration c's kv head g takes the shared evaluation; its prompt entries. */
static int share_eligible(const item *it, size_t c, size_t g, size_t *np)
{
    const rp_engine *E = it->E;
    const rp_config *cf = &E->sw->cfg[c];
    const cstate *st = &it->sc->cs[c * it->nkv + g];
    const rp_cache *cc = &st->cache;
    size_t n = it->n, P = it->P;
    if (E->o.no_share || E->o.mode == RP_ONLINE || it->nd || n == P) return 0;
    if (st->dt || st->td || st->inc || st->static_enc || cfg_has_encoder(cf) || cf->evict->select ||
        E->ap[it->l].window > 0)
        return 0;
    if (cache_merged(cc) || cc->modified || cc->n >= n || cc->n < n - P) return 0;
    size_t m = cc->n - (n - P);
    for (size_t e = 0; e < m; e++)      /* the prompt part: increasing positions below P */
        if (cc->pos[e] < 0 || (size_t)cc->pos[e] >= P || (e && cc->pos[e] <= cc->pos[e - 1])) return 0;
    for (size_t k = 0; k < n - P; k++)  /* then every decode position */
        if ((size_t)cc->pos[m + k] != P + k) return 0;
    *np = m;
    return 1;
}

/* Whether configurations a and b differ at most in their budget (keep=, budget=): one family
 * at several sizes, whose kept sets may nest. Chains form only inside a family, so a
 * configuration's sums never depend on the other families in the sweep. */
static int share_family(const char *a, const char *b)
{
    for (;;) {
        while (*a == ' ') a++;
        while (*b == ' ') b++;
        const char *ea = a, *eb = b;
        while (*ea && *ea != ' ') ea++;
        while (*eb && *eb != ' ') eb++;
        int ka = !strncmp(a, "keep=", 5) || !strncmp(a, "budget=", 7);
        int kb = !strncmp(b, "keep=", 5) || !strncmp(b, "budget=", 7);
        if (ka || kb) {                 /* a budget token on either side: skip it there */
            if (ka) a = ea;
            if (kb) b = eb;
            continue;
        }
        if (ea - a != eb - b || memcmp(a, b, (size_t)(ea - a))) return 0;
        if (!*a) return 1;
        a = ea; b = eb;
    }
}

/* Whether the increasing positions a [na] are a subset of b [nb]. */
static int share_subset(const int32_t *a, size_t na, const int32_t *b, size_t nb)
{
    size_t j = 0;
    for (size_t i = 0; i < na; i++) {
        while (j < nb && b[j] < a[i]) j++;
        if (j == nb || b[j] != a[i]) return 0;
        j++;
    }
    return 1;
}

/* The chains of kv head g: the eligible configurations in order of (prompt entries, index),
 * each appended to the first chain of its family whose top it contains, else a new chain.
 * The sweep's configurations and the data decide it: the same on any thread count, shard or
 * rank. */
static int item_share_plan(item *it, size_t g)
{
    rp_engine *E = it->E;
    item_scratch *sc = it->sc;
    size_t NC = E->sw->n, *ord = sc->shidx;   /* [NC]: free until the chains' positions are written */
    cstate *cs = sc->cs;
    sc->n_chains = 0;
    size_t nord = 0;
    for (size_t c = 0; c < NC; c++) {
        cstate *st = &cs[c * it->nkv + g];
        st->sh = 0;
        st->sh_next = SIZE_MAX;
        size_t np;
        if (!share_eligible(it, c, g, &np)) {
            if (st->dry && cache_fill(it, st, g, 0)) return -1;   /* item_block_cfg reads its rows */
            continue;
        }
        st->sh = 1;
        st->sh_np = np;
        size_t k = nord++;              /* insertion by (np, c) */
        while (k > 0 && cs[ord[k - 1] * it->nkv + g].sh_np > np) { ord[k] = ord[k - 1]; k--; }
        ord[k] = c;
    }
    size_t used = 0;
    for (size_t k = 0; k < nord; k++) {
        size_t c = ord[k];
        cstate *st = &cs[c * it->nkv + g];
        share_chain *ch = NULL;
        for (size_t q = 0; q < sc->n_chains && !ch; q++) {
            const cstate *tp = &cs[sc->chains[q].top * it->nkv + g];
            if (share_family(E->sw->cfg[sc->chains[q].top].canon, E->sw->cfg[c].canon) &&
                share_subset(tp->cache.pos, tp->sh_np, st->cache.pos, st->sh_np))
                ch = &sc->chains[q];
        }
        if (ch) {
            cs[ch->top * it->nkv + g].sh_next = c;
            ch->top = c;
        } else {
            ch = &sc->chains[sc->n_chains++];
            ch->head = ch->top = c;
        }
    }
    /* each chain's positions: the head's, then what each next member adds (lev: the first
     * member, by rank along the chain, that keeps the position) */
    for (size_t q = 0; q < sc->n_chains; q++) {
        share_chain *ch = &sc->chains[q];
        const cstate *tp = &cs[ch->top * it->nkv + g];
        ch->idx = sc->shidx + used;
        used += tp->sh_np;
        for (size_t e = 0; e < tp->sh_np; e++) sc->lev[tp->cache.pos[e]] = -1;
        int32_t rank = 0;
        for (size_t c = ch->head; c != SIZE_MAX; c = cs[c * it->nkv + g].sh_next, rank++) {
            const cstate *st = &cs[c * it->nkv + g];
            for (size_t e = 0; e < st->sh_np; e++)
                if (sc->lev[st->cache.pos[e]] < 0) sc->lev[st->cache.pos[e]] = rank;
        }
        size_t w = 0;
        for (int32_t r = 0; r < rank; r++)
            for (size_t e = 0; e < tp->sh_np; e++)
                if (sc->lev[tp->cache.pos[e]] == r) ch->idx[w++] = (size_t)tp->cache.pos[e];
    }
    size_t nmem = 0, nw = 0;                /* members in order, weight regions */
    for (size_t q = 0; q < sc->n_chains; q++) {
        share_chain *ch = &sc->chains[q];
        ch->m0 = nmem;
        for (size_t c = ch->head; c != SIZE_MAX; c = cs[c * it->nkv + g].sh_next) {
            sc->shcfg[nmem] = c;
            sc->shend[nmem++] = cs[c * it->nkv + g].sh_np;
        }
        ch->nm = nmem - ch->m0;
        ch->np = cs[ch->top * it->nkv + g].sh_np;
        ch->woff = nw;
        nw += E->G * BLK * ch->np;
    }
    if (nw > it->shw_cap) {             /* the thread's buffer: no page faults from one item to the next */
        if (!(it->shw = tb_take(it->tb, TB_SHW, nw * sizeof *it->shw)))
            return IT_FAIL(it, "out of memory (seq %zu layer %zu)", it->s, it->l);
        it->shw_cap = nw;
    }
    return 0;
}

/* Configuration c's row t, query head i, by the direct path (a kept set whose mass is too
 * small for the shared weights): its entries' own softmax, as item_metrics computes it. */
static int share_row_direct(item *it, size_t c, size_t g, size_t i, size_t t, size_t r, rp_row_metrics *rm,
                            float *oc)
{
    rp_engine *E = it->E;
    item_scratch *sc = it->sc;
    cstate *st = &sc->cs[c * it->nkv + g];
    const rp_cache *cc = &st->cache;
    size_t n = it->n, D = E->D, G = E->G, cnt = cc->n - (n - 1 - t);
    float lc;
    if (st->dry && cache_fill(it, st, g, 0)) return -1;
    attn_entries(it->q + ((g * G + i) * n + t) * D, cc->k, cc->v, NULL, NULL, cnt, D, &E->ap[it->l], &lc, oc, sc->z);
    attn_exp_shift(sc->z, cnt, lc, sc->probs);
    rp_row_full rf = { .lo = 0, .t = t, .p = sc->pf + (r * G + i) * n, .logit = sc->lg + (i * BLK + r) * n,
                       .lz = sc->lz[r * G + i], .p2 = sc->pf2[r * G + i] };
    rp_row_comp cp = { .cnt = cnt, .ent = NULL, .first = 0, .z = sc->z, .lse = lc, .q32 = sc->probs,
                       .pos = cc->pos, .mult = cc->mult, .mem_off = NULL, .members = NULL };
    rp_attn_row_metrics(&rf, &cp, NULL, rm);
    return isfinite(lc) ? 0 : -1;
}

/* Configuration c's row t (block row r), query head i, from its sums: u [D] = sum p_j v_j over
 * its kept prompt entries, ud over the decode entries; R, S the sums of p_j and p_j^2 over all. */
static int share_row(item *it, size_t c, size_t g, size_t i, size_t t, size_t r, const float *u, const float *ud,
                     double R, double S)
{
    rp_engine *E = it->E;
    item_scratch *sc = it->sc;
    const rp_config *cf = &E->sw->cfg[c];
    const cstate *st = &sc->cs[c * it->nkv + g];
    size_t n = it->n, D = E->D, G = E->G;
    size_t h = g * G + i, hg = it->g0 * G + h, cnt = st->cache.n - (n - 1 - t);
    const float *o = sc->of + (i * BLK + r) * D;
    float *oc = sc->oc;
    rp_row_metrics rm;
    double ocos, orel, p2 = sc->pf2[r * G + i];
    int bad = 0;
    if (R < 0x1p-60) {
        bad = share_row_direct(it, c, g, i, t, r, &rm, oc);
    } else {
        float inv = (float)(1.0 / R);
        for (size_t d = 0; d < D; d++) oc[d] = (u[d] + ud[d]) * inv;
        double kl = -log(R);
        rm.attn_kl = kl < 0 ? 0 : kl;
        rm.mass_recall = R;
        rm.attn_cos = (p2 > 0 && S > 0) ? sqrt(S / p2) : 0.0;
    }
    rp_out_row_metrics(o, oc, D, &ocos, &orel);
    if (bad || !isfinite(rm.attn_cos) || !isfinite(ocos) || !isfinite(orel) || !isfinite(rm.attn_kl) ||
        !isfinite(rm.mass_recall))
        return IT_FAIL(it, "config '%s': NaN/Inf in metrics at seq %zu layer %zu head %zu position %zu",
                       cf->canon, it->s, it->l, hg, t);
    it->ia[c * SA_NF + SA_DIFFERS] = 1;
    item_delta_row(it, c, hg, t, o, oc);
    item_row_sums(it, c, i, hg, t, &rm, ocos, orel, cnt, t + 1);
    return 0;
}

/* One row of a chain: its weights w [np] = (float)p over the chain's positions, and the sums
 * of p and p^2 at each member's end (rm, sm [nm], stride ms), in four lanes (entry k in lane
 * k mod 4, a fixed order; the lanes added at each end). The lanes are four named doubles
 * (registers; a vector of four spilled to the stack on every entry): each lane's sum is the
 * same sequence of adds as in a four-wide vector, whose lanes outside a member's range
 * added +0 (no change: the sums start at +0 and p >= 0). */
static void share_gather(const double *pr, const size_t *idx, const size_t *ends, size_t nm, float *w, double *rm,
                         double *sm, size_t ms)
{
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
    size_t k = 0;
    for (size_t m = 0; m < nm; m++) {
        size_t k1 = ends[m];
        for (; k < k1 && (k & 3); k++) {            /* up to a multiple of 4 */
            double x = pr[idx[k]];
            w[k] = (float)x;
            switch (k & 3) {
            case 1: a1 += x; b1 += x * x; break;
            case 2: a2 += x; b2 += x * x; break;
            default: a3 += x; b3 += x * x; break;
            }
        }
        for (; k + 4 <= k1; k += 4) {
            double x0 = pr[idx[k]], x1 = pr[idx[k + 1]], x2 = pr[idx[k + 2]], x3 = pr[idx[k + 3]];
            w[k] = (float)x0; w[k + 1] = (float)x1; w[k + 2] = (float)x2; w[k + 3] = (float)x3;
            a0 += x0; a1 += x1; a2 += x2; a3 += x3;
            b0 += x0 * x0; b1 += x1 * x1; b2 += x2 * x2; b3 += x3 * x3;
        }
        for (; k < k1; k++) {                       /* the member's last entries (lanes 0-2) */
            double x = pr[idx[k]];
            w[k] = (float)x;
            switch (k & 3) {
            case 0: a0 += x; b0 += x * x; break;
            case 1: a1 += x; b1 += x * x; break;
            default: a2 += x; b2 += x * x; break;
            }
        }
        rm[m * ms] = (a0 + a1) + (a2 + a3);
        sm[m * ms] = (b0 + b1) + (b2 + b3);
    }
}

/* Every shared configuration of kv head g on the block [tb, tb + nb) (after item_full_attn):
 * per query head, the decode entries' sums once, then one pass per chain over its top's
 * prompt entries in chain order, each member's rows at its checkpoint. */
static int item_share_block(item *it, size_t g, size_t tb, size_t te)
{
    rp_engine *E = it->E;
    item_scratch *sc = it->sc;
    size_t n = it->n, P = it->P, D = E->D, G = E->G, nb = te - tb, nd = te - P, GB = G * nb;
    if (!sc->n_chains) return 0;
    const float *V = it->v + g * n * D;
    float *w = sc->bz, *acc = sc->bout;              /* free: shared configurations use no kernel */
    /* the G query heads' rows together (row i * nb + r): every value row a kernel call loads
     * serves all of them (each row's sums are those of a call of its own) */
    for (size_t i = 0; i < G; i++)
        for (size_t r = 0; r < nb; r++) {
            const double *pr = sc->pf + ((r * G) + i) * n;
            size_t vis = tb + r - P;    /* decode entries [0, vis] visible to row tb + r */
            float *wr = w + (i * nb + r) * nd;
            double a = 0, b = 0;
            for (size_t j = 0; j < nd; j++) {
                double p = j <= vis ? pr[P + j] : 0.0;
                wr[j] = (float)p;
                a += p; b += p * p;
            }
            sc->rd[i * BLK + r] = a; sc->sd[i * BLK + r] = b;
        }
    memset(sc->ud, 0, GB * D * sizeof *sc->ud);
    attn_pv_weighted(w, nd, GB, nd, V + P * D, NULL, D, sc->ud);
    /* every chain's weights of a row while the row's probabilities are in cache */
    for (size_t i = 0; i < G; i++)
        for (size_t r = 0; r < nb; r++) {
            const double *pr = sc->pf + ((r * G) + i) * n;
            for (size_t q = 0; q < sc->n_chains; q++) {
                const share_chain *ch = &sc->chains[q];
                share_gather(pr, ch->idx, sc->shend + ch->m0, ch->nm, it->shw + ch->woff + (i * nb + r) * ch->np,
                             sc->rm + (ch->m0 * G + i) * BLK + r, sc->sm + (ch->m0 * G + i) * BLK + r, G * BLK);
            }
        }
    for (size_t q = 0; q < sc->n_chains; q++) {
        const share_chain *ch = &sc->chains[q];
        const float *wc = it->shw + ch->woff;
        size_t k0 = 0;
        memset(acc, 0, GB * D * sizeof *acc);
        for (size_t m = ch->m0; m < ch->m0 + ch->nm; m++) {
            size_t c = sc->shcfg[m], k1 = sc->shend[m];
            attn_pv_weighted(wc + k0, ch->np, GB, k1 - k0, V, ch->idx + k0, D, acc);
            k0 = k1;
            /* configuration c's rows in the order of a head at a time (its accumulators
             * see the same sequence as before the heads were stacked) */
            for (size_t i = 0; i < G; i++)
                for (size_t r = 0; r < nb; r++) {
                    size_t x = (m * G + i) * BLK + r;
                    if (share_row(it, c, g, i, tb + r, r, acc + (i * nb + r) * D, sc->ud + (i * nb + r) * D,
                                  sc->rm[x] + sc->rd[i * BLK + r], sc->sm[x] + sc->sd[i * BLK + r]))
                        return -1;
                }
        }
    }
    return 0;
}

static int item_head(item *it, size_t g)
{
    rp_engine *E = it->E;
    size_t NC = E->sw->n, n = it->n;
    int online = E->o.mode == RP_ONLINE;
    for (size_t c = 0; c < NC; c++)
        if (online ? item_head_online(it, c, g) : item_head_prefill(it, c, g)) return -1;
    if (!online && item_share_plan(it, g)) return -1;
    /* the kernel would otherwise transpose every key block again for each block of BLK rows
     * and each query head (same logits: attn_full_rows_kt); the shared scores' copy (made
     * here, or already by a configuration's scores), a copy of our own only without it */
    if (!(it->kt = rp_shared_keys_t(it->sh, g))) {
        float *kt = tb_take(it->tb, TB_KT, attn_keys_t_floats(n, E->D) * sizeof *kt);
        if (!kt) return IT_FAIL(it, "out of memory (seq %zu layer %zu)", it->s, it->l);
        attn_transpose_keys(it->k + g * n * E->D, n, E->D, kt);
        it->kt = kt;
    }
    for (size_t tb = online ? 0 : it->P; tb < n; tb += BLK) {
        size_t te = tb + BLK < n ? tb + BLK : n;
        if (item_full_attn(it, g, tb, te)) return -1;
        if (!online && item_share_block(it, g, tb, te)) return -1;
        for (size_t c = 0; c < NC; c++) {
            if (online || !it->sc->cs[c * it->nkv + g].sh) {
                if (item_block_cfg(it, c, g, tb, te)) return -1;
            } else if (te == n) {       /* shared: the cache the last position sees, to the accounting */
                row_view rv;
                if (E->o.export_hook && it->sc->cs[c * it->nkv + g].dry && cache_fill(it, &it->sc->cs[c * it->nkv + g], g, 0))
                    return -1;          /* the exporter reads the rows */
                if (item_cache_view(it, c, g, n - 1, &rv) || item_export(it, c, g, &rv.view)) return -1;
            }
        }
    }
    return item_head_end(it, g);
}

/* The item's shared scores and what feeds them: the trace's prompt scores, the evaluated
 * rows' share and the kept full-pass blocks (the thread's: only forgotten). */
static void item_scores_free(item *it)
{
    rp_shared_free(it->sh);
    it->sh = NULL;
    free(it->ps_cs); free(it->ps_ent);
    it->ps_cs = it->ps_ent = NULL;
    free(it->dsh); free(it->dsh_done);
    it->dsh = NULL; it->dsh_done = NULL;
    it->dst = NULL;
    it->dsh_failed = 0;
}

static void item_free_scratch(item *it)
{
    rp_engine *E = it->E;
    if (it->sc) {
        cstate *cs = it->sc->cs;
        for (size_t i = 0; i < E->sw->n * it->nkv; i++) {
            if (cs[i].ost) E->sw->cfg[i / it->nkv].evict->online_free(cs[i].ost);
            free(cs[i].evat);
            cache_unalias(&cs[i]);
            rp_cache_free(&cs[i].cache);
            cache_give(it->tb, i / it->nkv, E->sw->n + 1, &cs[i].enc);
        }
        cache_give(it->tb, E->sw->n, E->sw->n + 1, &it->qcopy);
    }
    /* slab, q, k, v belong to it->tb */
    pool_give(it->pool, it->dO, it->E->sw->n * (it->n - it->P) * it->nh * it->E->D * sizeof *it->dO);
    free(it->dO_set);
    it->dO_set = NULL;
    free(it->ok); free(it->ov); free(it->wo);
    item_scores_free(it);
    it->shw = NULL;                         /* it->tb's */
    it->shw_cap = 0;
    it->slab = NULL; it->sc = NULL;
    it->q = it->k = it->v = it->ok = it->ov = it->dO = it->wo = NULL;
    if (it->pa) for (size_t h = 0; h < it->nh; h++) { free(it->pa[h]); it->pa[h] = NULL; }
}

/* What the hooks of the item's kv heads see (it->ctx) and the shared scores over them
 * (it->sh, the trace's captured prompt scores when read): after item_read, for a work item and
 * for a plan item alike. -1 (it->err) when out of memory. */
static int item_ctx_open(item *it)
{
    rp_engine *E = it->E;
    it->ctx = (rp_layer_ctx){
        .seq = it->s, .layer = it->l, .n_layers = E->L, .H = it->nh, .Hkv = it->nkv, .G = E->G, .D = E->D,
        .n = it->n, .P = E->o.mode == RP_ONLINE ? it->n : it->P, .q = it->q, .k = it->k, .v = it->v,
        .ap = E->ap[it->l], .info = E->in, .rope_cos = E->rope_cos, .rope_sin = E->rope_sin,
        .rotary_dim = E->R, .rope_interleaved = E->interleaved, .prompt_attn = cb_prompt_attn,
        .layer_kv = cb_layer_kv, .engine = it, .gqa_reduce = E->o.gqa_reduce,
        .prompt_colsum = cb_prompt_colsum, .prompt_entropy = cb_prompt_entropy, .key_pages = cb_key_pages,
        .w_o = cb_w_o, .needles = E->needles, .n_needles = E->n_needles, .value_norms = cb_value_norms,
        .g0 = it->g0, .Hkv_layer = E->Hkv,
    };
    if (!(it->sh = rp_shared_new(it->q, it->k, it->nh, it->nkv, it->n, it->ctx.P, E->D, &E->ap[it->l], E->want_ent))) {
        IT_FAIL(it, "out of memory (seq %zu layer %zu)", it->s, it->l);
        return -1;
    }
    if (it->ps_cs) {
        rp_shared_use_captured(it->sh, it->ps_cs, it->ps_ent);
        rp_shared_use_decode_share(it->sh, item_decode_share, it);
    }
    /* the shared scores' scratch (transposed prompt keys, logits rows): the thread's buffer,
     * virtual memory until a configuration asks for scores (then as large for every item of
     * the sequence); without it (out of memory) the object mallocs its own */
    rp_shared_scratch(it->sh, tb_take(it->tb, TB_SHKT, rp_shared_scratch_floats(it->sh) * sizeof(float)));
    return 0;
}

static int item_run(item *it)
{
    rp_engine *E = it->E;
    item_scratch sc;
    int rc = -1;
    it->sc = NULL;
    it->shw = NULL;
    it->shw_cap = 0;
    if (item_alloc(it, &sc) || item_read(it) || item_ctx_open(it)) goto done;
    if (item_prefill(it)) goto done;
    for (size_t g = 0; g < it->nkv; g++)
        if (item_head(it, g)) goto done;
    if (E->ro && it->n > it->P) {
        if (item_deltas(it, it->err, sizeof it->err)) goto done;
        /* per_head: a layer's per-layer read-out needs every kv head's term (rp_engine_seq) */
        if (!E->per_head && it->pl &&
            layer_readout_pl(E, it->s, it->l, it->n, it->P, it->hid, it->dH, it->dh_set, it->pl, it->err, sizeof it->err))
            goto done;
    }
    rc = 0;
done:
    item_free_scratch(it);
    it->rc = rc;
    return rc;
}

/* ---- one sequence ------------------------------------------------------------------------ */

static int readout_seq(rp_engine *E, size_t s, size_t n, size_t P, const float *hid, const float *acc,
                       double *sa, double *pp, rp_needles *nd, char *err, size_t errlen)
{
    const readout *ro = E->ro;
    size_t C = ro->C, V = ro->V, NC = E->sw->n, NE = n - P;
    float *lf = malloc(RO_BLK * V * sizeof *lf);
    ece_acc *ef = calloc(NC, sizeof *ef), *ec = calloc(NC, sizeof *ec);
    int *cfail = calloc(NC, sizeof *cfail);
    int rc = -1;
    if (!lf || !ef || !ec || !cfail) { rp_failf(err, errlen, "out of memory (read-out)"); goto done; }
    for (size_t r0 = 0; r0 < NE; r0 += RO_BLK) {
        size_t nb = NE - r0 < RO_BLK ? NE - r0 : RO_BLK;
        const float *hs = hid + (P + r0) * C;
        if (readout_logits_checked(ro, hs, nb, lf) != KV_OK) { rp_failf(err, errlen, "out of memory (read-out)"); goto done; }
        for (size_t i = 0; i < nb * V; i++)
            if (!isfinite(lf[i])) { rp_failf(err, errlen, "non-finite full-cache logits at seq %zu position %zu", s, P + r0 + i / V); goto done; }
        long long cc;
#pragma omp parallel for schedule(dynamic, 1)
        for (cc = 0; cc < (long long)NC; cc++) {
            size_t c = (size_t)cc;
            double *a = sa + c * SA_NF;
            float *hc = NULL, *lc = NULL;
            const float *lcp = lf;
            if (a[SA_DIFFERS] != 0) {       /* h + sum_l dO_l W_O_l (the sum folded in layer order) */
                hc = malloc(nb * C * sizeof *hc);
                lc = malloc(nb * V * sizeof *lc);
                if (!hc || !lc) { cfail[c] = 1; free(hc); free(lc); continue; }
                const float *d = acc + (c * NE + r0) * C;
                for (size_t i = 0; i < nb * C; i++) hc[i] = hs[i] + d[i];
                if (readout_logits_checked(ro, hc, nb, lc) != KV_OK) { cfail[c] = 1; free(hc); free(lc); continue; }
                lcp = lc;
            }
            for (size_t r = 0; r < nb; r++) {
                size_t t = P + r0 + r;
                int32_t y = t + 1 < n ? E->tokens[s * E->T + t + 1] : -1;
                readout_cmp cmp;
                readout_compare(lf + r * V, lcp + r * V, V, y, &cmp);
                if (!isfinite(cmp.logit_kl) || (y >= 0 && (size_t)y < V && (!isfinite(cmp.nll_full) || !isfinite(cmp.nll_comp)))) {
                    cfail[c] = 2 + (int)r;
                    break;
                }
                a[SA_RO_N] += 1; a[SA_RO_KL] += cmp.logit_kl; a[SA_RO_TOP1] += cmp.top1_agree;
                pp[(c * NE + (t - P)) * PP_NF + PP_LOGIT_KL] = cmp.logit_kl;    /* slot of (c, t) alone */
                if (y >= 0 && (size_t)y < V) {
                    if (nd->n) rp_needles_readout(nd, c, NC, t, &cmp);     /* slots of configuration c */
                    a[SA_NY] += 1; a[SA_NLL_F] += cmp.nll_full; a[SA_NLL_C] += cmp.nll_comp;
                    ece_add(&ef[c], cmp.conf_full, cmp.correct_full);
                    ece_add(&ec[c], cmp.conf_comp, cmp.correct_comp);
                }
            }
            free(hc); free(lc);
        }
        for (size_t c = 0; c < NC; c++)
            if (cfail[c]) {
                if (cfail[c] == 1) rp_failf(err, errlen, "out of memory (read-out)");
                else rp_failf(err, errlen, "config '%s': NaN/Inf in read-out metrics at seq %zu position %zu",
                           E->sw->cfg[c].canon, s, P + r0 + (size_t)(cfail[c] - 2));
                goto done;
            }
    }
    for (size_t c = 0; c < NC; c++) {
        memcpy(sa + c * SA_NF + SA_ECE_F, &ef[c], sizeof ef[c]);
        memcpy(sa + c * SA_NF + SA_ECE_C, &ec[c], sizeof ec[c]);
    }
    rc = 0;
done:
    free(lf); free(ef); free(ec); free(cfail);
    return rc;
}

/* Memory: per sequence, the work items in flight (one (sequence, layer) or (sequence, layer,
 * kv head) working set per thread: Q/K/V, the configurations' caches, the item's read-out
 * deltas dO and dH) plus, with the read-out, the sequence's final residuals [n][C] and the
 * folded perturbation [NC][NE][C], and per_head the open layer's sum of kv-head terms
 * [NC][NE][C]; nothing grows with the number of layers or sequences.
 * Each item's deltas are folded in item order (the `ordered` region): a layer item's into the
 * sequence's sum; per_head, a kv-head item's into its layer's sum (layer_sum_add), which joins
 * the sequence's sum after the layer's last kv head. Results do not depend on the thread
 * count, and both splits add the same terms in the same order (item_deltas). */

/* acc_c += dH_c for the configurations c set (acc, dH [NC][NE][C]). */
static void deltas_into(float *acc, const float *dH, const uint8_t *set, size_t NC, size_t NE, size_t C)
{
    for (size_t c = 0; c < NC; c++) {
        if (!set[c]) continue;
        add_into(acc + c * NE * C, dH + c * NE * C, NE * C);
    }
}

/* An item's dH and dh_set released (dH back to the pool). */
static void item_deltas_free(item *it, size_t bytes)
{
    pool_give(it->pool, it->dH, bytes);
    free(it->dh_set);
    it->dH = NULL; it->dh_set = NULL;
}

/* A layer item's read-out deltas into the sequence's sum (the caller keeps item order). */
static void fold_deltas(item *lr, float *acc, size_t NC, size_t NE, size_t C)
{
    if (lr->rc == 0 && lr->dH) deltas_into(acc, lr->dH, lr->dh_set, NC, NE, C);
    item_deltas_free(lr, NC * NE * C * sizeof *lr->dH);
}

/* per_head: the sum of the open layer's kv-head terms, in kv-head order. */
typedef struct layer_sum {
    float *dH;                  /* [NC][NE][C] (the layer's first item's dH, taken over) */
    uint8_t *set;               /* [NC] dH_c holds a term */
    int bad;                    /* an item of the layer failed: the layer is not folded */
} layer_sum;

/* A kv-head item's term into its layer's sum: the first term of c is copied, the next ones
 * added, as item_deltas adds a layer item's kv heads. */
static void layer_sum_add(layer_sum *ls, item *it, size_t NC, size_t NE, size_t C)
{
    size_t bytes = NC * NE * C * sizeof *it->dH;
    if (it->rc) ls->bad = 1;
    if (it->rc || !it->dH) { item_deltas_free(it, bytes); return; }
    if (!ls->dH) {
        ls->dH = it->dH;
        memcpy(ls->set, it->dh_set, NC);
        it->dH = NULL;
    } else
        for (size_t c = 0; c < NC; c++) {
            if (!it->dh_set[c]) continue;
            float *d = ls->dH + c * NE * C;
            const float *x = it->dH + c * NE * C;
            if (ls->set[c]) add_into(d, x, NE * C);
            else memcpy(d, x, NE * C * sizeof *d);
            ls->set[c] = 1;
        }
    item_deltas_free(it, bytes);
}

/* per_head: whether every kv-head item of layer l ran without error. */
static int layer_items_ok(const item *its, size_t l, size_t Hkv)
{
    for (size_t g = 0; g < Hkv; g++)
        if (its[l * Hkv + g].rc) return 0;
    return 1;
}

/* A plan item (per_head, planned configurations): kv head it->g0 of layer it->l. Reads the kv
 * head's Q, K and V rows (item_read), makes the shared scores of that kv head (replay/shared.h,
 * as its kv-head item will again) and writes every planned configuration's plan_score row. Its
 * buffers are the thread's (it->tb), the sizes of a kv-head item's. */
static int plan_item_run(item *it)
{
    rp_engine *E = it->E;
    const seq_plans *sp = it->sp;
    size_t n = it->n, D = E->D, G = E->G;
    int rc = -1;
    it->q = tb_take(it->tb, TB_Q, G * n * D * sizeof *it->q);
    it->k = tb_take(it->tb, TB_K, n * D * sizeof *it->k);
    it->v = tb_take(it->tb, TB_V, n * D * sizeof *it->v);
    if (!it->q || !it->k || !it->v) { IT_FAIL(it, "out of memory (seq %zu layer %zu)", it->s, it->l); goto done; }
    if (item_read(it) || item_ctx_open(it)) goto done;     /* a kv-head item's context (prefill) */
    for (size_t c = 0; c < E->sw->n; c++) {
        const rp_config *cf = &E->sw->cfg[c];
        if (!sp->S[c]) continue;
        size_t B;
        sweep_budget(cf, it->P, &B);        /* as item_prefill */
        it->ctx.seed = mix64(mix64(cf->hash, it->s), it->l);
        it->ctx.keep = cf->budget_kind == RP_BUDGET_KEEP ? cf->budget_value : 0;
        char e2[512] = "";
        if (cf->evict->plan_score(cf->evict_cfg, &it->ctx, 0, B, (double *)item_plan(it, c), e2, sizeof e2)) {
            if (!it->dsh_failed)        /* else it->err: item_decode_pass's message */
                IT_FAIL(it, "config '%s': %s plan failed at seq %zu layer %zu kv head %zu: %s", cf->canon,
                        cf->evict->name, it->s, it->l, it->g0, e2[0] ? e2 : "error");
            goto done;
        }
    }
    rc = 0;
done:
    item_scores_free(it);
    for (size_t h = 0; h < it->nh; h++) { free(it->pa[h]); it->pa[h] = NULL; }
    it->q = it->k = it->v = NULL;       /* the thread's buffers */
    it->rc = rc;
    return rc;
}

/* per_head: the plans of sequence s (seq_plans) before its kv-head items: plan items over
 * (layer, kv head) in parallel, each writing only its own rows, then plan_layer once per (layer,
 * configuration) over its Hkv rows in head order; the same plans for any thread count. sp->buf
 * stays NULL when no configuration needs a plan. 0 ok, -1 with one line in err. */
static int seq_plans_make(rp_engine *E, size_t s, size_t n, size_t P, thread_bufs *tbs, seq_plans *sp, char *err,
                          size_t errlen)
{
    const rp_sweep *sw = E->sw;
    size_t NC = sw->n, L = E->L, Hkv = E->Hkv, G = E->G, tot = 0, NU = L * Hkv;
    memset(sp, 0, sizeof *sp);
    sp->off = calloc(NC, sizeof *sp->off);
    sp->S = calloc(NC, sizeof *sp->S);
    if (!sp->off || !sp->S) return rp_failf(err, errlen, "out of memory");
    for (size_t c = 0; c < NC; c++) {
        const rp_config *cf = &sw->cfg[c];
        size_t B;
        if (!cf->evict->plan_score) continue;
        sweep_budget(cf, P, &B);
        sp->S[c] = cf->evict->plan_size(cf->evict_cfg, P, G, B);
        sp->off[c] = tot;
        tot += L * Hkv * sp->S[c];
        sp->n_planned += sp->S[c] != 0;
    }
    if (!sp->n_planned) return 0;
    item *its = calloc(NU, sizeof *its);
    if (!its || !(sp->buf = malloc(tot * sizeof *sp->buf))) { free(its); return rp_failf(err, errlen, "out of memory"); }
    int rc = 0;
    for (size_t u = 0; u < NU && !rc; u++) {
        item *it = &its[u];
        it->E = E; it->s = s; it->l = u / Hkv; it->n = n; it->P = P; it->o_layer = -1;
        it->g0 = u % Hkv; it->nkv = 1; it->nh = G; it->sp = sp;
        it->pa = calloc(G, sizeof *it->pa);
        it->pa0 = calloc(G, sizeof *it->pa0);
        it->pa1 = calloc(G, sizeof *it->pa1);
        if (!it->pa || !it->pa0 || !it->pa1) rc = rp_failf(err, errlen, "out of memory");
    }
    long long uu, bad = -1;
    if (!rc) {
#pragma omp parallel for schedule(dynamic, 1)
        for (uu = 0; uu < (long long)NU; uu++) {
            its[uu].tb = &tbs[thread_num()];
            plan_item_run(&its[uu]);
        }
        for (size_t u = 0; u < NU && !rc; u++)
            if (its[u].rc) rc = rp_failf(err, errlen, "%s", its[u].err);
    }
    /* plan_layer per (layer, configuration); the first failure in that order is reported */
    if (!rc) {
#pragma omp parallel for schedule(dynamic, 1)
        for (uu = 0; uu < (long long)(L * NC); uu++) {
            size_t l = (size_t)uu / NC, c = (size_t)uu % NC;
            const rp_config *cf = &sw->cfg[c];
            if (!sp->S[c]) continue;
            size_t B;
            sweep_budget(cf, P, &B);
            char e2[512] = "";
            if (cf->evict->plan_layer(cf->evict_cfg, Hkv, G, P, B, sp->buf + sp->off[c] + l * Hkv * sp->S[c], e2,
                                      sizeof e2)) {
#pragma omp critical(kvtrace_plan_err)
                if (bad < 0 || uu < bad) {
                    bad = uu;
                    rp_failf(err, errlen, "config '%s': %s plan failed at seq %zu layer %zu: %s", cf->canon,
                             cf->evict->name, s, l, e2[0] ? e2 : "error");
                }
            }
        }
        if (bad >= 0) rc = -1;
    }
    for (size_t u = 0; u < NU; u++) { free(its[u].pa); free(its[u].pa0); free(its[u].pa1); }
    free(its);
    return rc;
}

static void seq_plans_free(seq_plans *sp)
{
    free(sp->buf); free(sp->off); free(sp->S);
    memset(sp, 0, sizeof *sp);
}

int rp_engine_seq(rp_engine *E, size_t s, rp_seq_result *res, char *err, size_t errlen)
{
    size_t L = E->L, H = E->H, Hkv = E->Hkv, G = E->G, NC = E->sw->n, n = (size_t)E->seq_len[s], P = split_of(E, s);
    size_t NE = n - P, C = E->ro ? E->ro->C : 0;
    int ph = E->per_head;
    size_t NU = ph ? L * Hkv : L;       /* work items: (layer) or (layer, kv head), in that order */
    kv_error ke;
    res->seq = s;
    res->has_readout = E->ro != NULL;
    if (rp_seq_result_alloc(res, NC, L, H)) return rp_failf(err, errlen, "out of memory");
    item *its = calloc(NU, sizeof *its);
    double *ia = calloc(L * NC * SA_NF, sizeof *ia);
    double *uia = ph ? calloc(NU * NC * SA_NF, sizeof *uia) : NULL;     /* per_head: each item's own */
    double *lp = ph && NE ? calloc(NC * NE * PP_ATT, sizeof *lp) : NULL; /* per_head: the layer's pp */
    int nthr = max_threads();
    thread_bufs *tbs = calloc(nthr > 0 ? (size_t)nthr : 1, sizeof *tbs);
    int ro = E->ro && NE;
    seq_plans sp = { 0 };
    float *hid = ro ? malloc(E->T * C * sizeof *hid) : NULL;
    float *acc = ro ? big_calloc(NC * NE * C, sizeof *acc) : NULL;   /* 2 MiB pages: see big_calloc */
    buf_pool pool = { 0 };              /* dO and dH of the items in flight (buf_pool) */
    layer_sum ls = { 0 };               /* per_head: the open layer's kv-head terms */
    if (ph && ro) ls.set = calloc(NC, 1);
    int rc = -1;
    if (!its || !ia || !tbs || (ph && (!uia || (NE && !lp) || (ro && !ls.set))) || (ro && (!hid || !acc))) {
        rp_failf(err, errlen, "out of memory");
        goto done;
    }
    /* only the evaluated rows [P, n) of the final residuals are used (item_deltas, readout_seq):
     * the rest of hid is never read, and never touched, so it costs neither a read nor a page */
    if (ro && kv_trace_read_hidden_rows(E->t, s, P, NE, hid + P * C, &ke) != KV_OK) {
        rp_failf(err, errlen, "%s", ke.msg);
        goto done;
    }
    if (E->needles && rp_needles_init(&res->nd, E->needles, E->n_needles, s, P, (size_t)E->prefill_len[s], NC, L, H,
                                      err, errlen))
        goto done;
    if (NE && !(res->pp = calloc(NC * NE * PP_NF, sizeof *res->pp))) { rp_failf(err, errlen, "out of memory"); goto done; }
    res->n_pos = res->pp ? NE : 0;
    if (ro && E->o.per_layer_readout && !(res->pl = calloc(NC * L * PL_NF, sizeof *res->pl))) {
        rp_failf(err, errlen, "out of memory (per-layer read-out)");
        goto done;
    }
    for (size_t u = 0; u < NU; u++) {
        item *it = &its[u];
        size_t l = ph ? u / Hkv : u;
        it->E = E; it->s = s; it->l = l; it->n = n; it->P = P; it->o_layer = -1;
        it->g0 = ph ? u % Hkv : 0; it->nkv = ph ? 1 : Hkv; it->nh = it->nkv * G;
        it->ha = res->ha; it->ia = ph ? uia + u * NC * SA_NF : ia + l * NC * SA_NF; it->hid = hid; it->pl = res->pl;
        it->pool = &pool;
        it->nd = res->nd.n ? &res->nd : NULL;      /* an item writes only its own (layer, head) slots */
        it->pa = calloc(it->nh, sizeof *it->pa);
        it->pa0 = calloc(it->nh, sizeof *it->pa0);
        it->pa1 = calloc(it->nh, sizeof *it->pa1);
        if (!it->pa || !it->pa0 || !it->pa1) { rp_failf(err, errlen, "out of memory"); goto done; }
    }
    /* per_head: the planned configurations' plans first (strategy.h plan_score, plan_layer) */
    if (ph) {
        if (seq_plans_make(E, s, n, P, tbs, &sp, err, errlen)) goto done;
        for (size_t u = 0; sp.n_planned && u < NU; u++) its[u].sp = &sp;
    }
    long long uu;
#pragma omp parallel for ordered schedule(dynamic, 1)
    for (uu = 0; uu < (long long)NU; uu++) {
        item *it = &its[uu];
        size_t l = it->l;
        it->tb = &tbs[thread_num()];
        /* this item's per-position sums (per_head: its terms): a buffer per item in flight,
         * folded in item order */
        if (NE && !(it->pp = calloc(NC * NE * (ph ? G : 1) * PP_ATT, sizeof *it->pp))) {
            IT_FAIL(it, "out of memory (seq %zu layer %zu)", it->s, it->l);
            it->rc = -1;
        } else item_run(it);
#pragma omp ordered
        {
            if (!ph) {
                if (it->rc == 0 && it->pp)
                    for (size_t j = 0; j < NC * NE; j++)
                        for (size_t f = 0; f < PP_ATT; f++) res->pp[j * PP_NF + f] += it->pp[j * PP_ATT + f];
            } else {
                /* the terms in the order one layer item adds them (kv head, then query head),
                 * into one running sum per layer, which then joins the sequence's as before */
                if (it->rc == 0 && it->pp)
                    for (size_t j = 0; j < NC * NE; j++)
                        for (size_t i = 0; i < G; i++)
                            for (size_t f = 0; f < PP_ATT; f++) lp[j * PP_ATT + f] += it->pp[(j * G + i) * PP_ATT + f];
                double *la = ia + l * NC * SA_NF;      /* one term per field per (config, kv head) */
                for (size_t c = 0; c < NC; c++)
                    for (size_t f = 0; f < SA_NF; f++) {
                        double x = it->ia[c * SA_NF + f];
                        if (f == SA_MODIFIED || f == SA_DIFFERS) { if (x != 0) la[c * SA_NF + f] = 1; }
                        else la[c * SA_NF + f] += x;
                    }
            }
            free(it->pp);
            it->pp = NULL;
            if (ph && it->g0 + 1 == Hkv) {            /* the layer's per-position terms are all in */
                if (layer_items_ok(its, l, Hkv) && lp)
                    for (size_t j = 0; j < NC * NE; j++)
                        for (size_t f = 0; f < PP_ATT; f++) res->pp[j * PP_NF + f] += lp[j * PP_ATT + f];
                if (lp) memset(lp, 0, NC * NE * PP_ATT * sizeof *lp);
            }
            if (!ph) fold_deltas(it, acc, NC, NE, C);   /* the layer item's deltas (item_deltas) */
            else if (ro) {
                layer_sum_add(&ls, it, NC, NE, C);
                if (it->g0 + 1 == Hkv) {              /* the layer's terms are all in */
                    if (!ls.bad && ls.dH) {
                        if (res->pl && layer_readout_pl(E, s, l, n, P, hid, ls.dH, ls.set, res->pl, it->err,
                                                        sizeof it->err))
                            it->rc = -1;
                        else deltas_into(acc, ls.dH, ls.set, NC, NE, C);
                    }
                    pool_give(&pool, ls.dH, NC * NE * C * sizeof *ls.dH);
                    ls.dH = NULL;
                    ls.bad = 0;
                    memset(ls.set, 0, NC);
                }
            }
        }
    }
    for (size_t u = 0; u < NU; u++)
        if (its[u].rc) { rp_failf(err, errlen, "%s", its[u].err); goto done; }
    /* fixed-order reduction of the item slots */
    for (size_t c = 0; c < NC; c++) {
        double *a = res->sa + c * SA_NF;
        a[SA_NQ] = (double)NE;
        for (size_t l = 0; l < L; l++) {
            const double *b = ia + (l * NC + c) * SA_NF;
            for (int f = SA_KVB; f <= SA_FRAG; f++) a[f] += b[f];
            if (b[SA_MODIFIED] != 0) a[SA_MODIFIED] = 1;
            if (b[SA_DIFFERS] != 0) a[SA_DIFFERS] = 1;
        }
    }
    if (ro && readout_seq(E, s, n, P, hid, acc, res->sa, res->pp, &res->nd, err, errlen)) goto done;
    rc = 0;
done:
    if (its)
        for (size_t u = 0; u < NU; u++) {
            free(its[u].pa); free(its[u].pa0); free(its[u].pa1); free(its[u].dH); free(its[u].dh_set); free(its[u].pp);
        }
    if (tbs)
        for (int i = 0; i < nthr; i++) {
            for (int j = 0; j < TB_N; j++) free(tbs[i].p[j]);
            for (size_t j = 0; j < tbs[i].n_spare; j++) rp_cache_free(&tbs[i].spare[j]);
            free(tbs[i].spare);
        }
    free(tbs);
    free(its); free(ia); free(uia); free(lp); free(hid); free(acc);
    free(ls.dH); free(ls.set);
    pool_free(&pool);
    seq_plans_free(&sp);
    if (rc) rp_seq_result_free(res);
    return rc;
}
