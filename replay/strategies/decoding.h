/* What the decode-time presses (decoding, dms, cam) share: the scorers they rank the cache
 * with at decode time, the prefill hook that keeps the whole prompt, and a growable array.
 * Not a strategy: no entry in list.h.
 *
 * A decode-time scorer sees the live cache of one kv head after query t attended to it (t is
 * its last entry): the entries' key rows, their positions, the query's probabilities over
 * them, and the trace's queries. Higher scores are kept.
 *   knorm    -||k_e||                                     (kvpress KnormPress)
 *   keydiff  -cos(k_e, a), a = mean over the cache of k / ||k||   (kvpress KeyDiffPress)
 *   tova     query t's attention over the cache, reduced over the kv head's query group with
 *            --gqa-reduce; the last entry (t itself) gets the maximum   (kvpress TOVAPress)
 *   snapkv   the window queries r in [t - w + 1, t] attend to the cache entries they see
 *            (pos <= r, softmax in double); per query head the rows are averaged, the scores
 *            of the entries before the last w are average-pooled (kernel, zero padding
 *            counted) and reduced over the group with --gqa-reduce; the last w entries get the
 *            maximum of the others                            (kvpress SnapKVPress)
 */
#ifndef KV_STRAT_DECODING_H
#define KV_STRAT_DECODING_H

#include <stddef.h>
#include <stdint.h>

#include "strategy.h"

enum { DEC_KNORM = 0, DEC_KEYDIFF = 1, DEC_TOVA = 2, DEC_SNAPKV = 3 };

#define DEC_SCORER_CHOICES "knorm|keydiff|tova|snapkv"
/* The scorer parameters every decode-time press declares, in this order: scorer, window, kernel. */
#define DEC_SCORER_PARAMS(def)                                                                       \
    { "scorer", RP_ENUM, def, 0, 0, DEC_SCORER_CHOICES, "how the cache is ranked at decode time" }, \
    { "window", RP_INT, "64", 1, 1e9, NULL, "snapkv scorer: window queries w (kvpress SnapKVPress: 64)" }, \
    { "kernel", RP_INT, "5", 1, 1e9, NULL, "snapkv scorer: pooling kernel, odd (kvpress: 5)" }

/* The parameters of a periodic compression (decoding, cam), in this order: interval, target. */
#define DEC_PERIODIC_PARAMS                                                                          \
    { "interval", RP_INT, "512", 1, 1e9, NULL, "decode steps between compressions (kvpress compression_interval)" }, \
    { "target", RP_INT, "2048", 1, 1e9, NULL, "entries kept by a compression (kvpress target_size)" }

typedef struct dec_scorer { int kind; size_t window, kernel; } dec_scorer;

/* v[0..3): scorer, window, kernel. 0 ok, -1 with one line in err (an even kernel). */
int dec_scorer_resolve(const double *v, dec_scorer *s, const char *who, char *err, size_t errlen);

/* score[e] for the n = c->n entries of kv head g's cache after query t (probs [G][n]: its
 * attention over them). 0 ok, -1 out of memory. */
int dec_score(const dec_scorer *s, const rp_layer_ctx *ctx, size_t g, size_t t, const rp_cache *c,
              const float *probs, double *score);

/* The prefill hook of a decode-time press: every kv head keeps its whole prompt. 0 ok, -1 ENOMEM. */
int dec_prefill_all(const void *cfg, const rp_layer_ctx *ctx, size_t B, rp_cache *out, char *err, size_t errlen);

/* Grow *p (elements of size sz) to hold at least need elements (*cap updated). 0 ok, -1 ENOMEM. */
int dec_grow(void **p, size_t *cap, size_t need, size_t sz);

/* A press's configuration of size bytes (zeroed) whose first member is its dec_scorer, resolved
 * from sv (scorer, window, kernel; who names the press in err). NULL: out of memory, or a bad
 * scorer with one line in err; either way the configure hook returns -1. */
void *dec_cfg_new(size_t size, const double *sv, const char *who, char *err, size_t errlen);

/* The free_cfg hook of a decode-time press (its configuration holds no pointers). */
void dec_cfg_free(void *cfg);

/* The online state every decode-time press starts with (a press's own state puts it first). */
typedef struct dec_state {
    const void *cfg;
    size_t steps;           /* decode steps since the last check or compression */
    double *score;          /* the scorer's scores of the cache, cap entries */
    size_t cap;
} dec_state;

/* A state of size bytes (zeroed) that starts with a dec_state for cfg. NULL: out of memory. */
void *dec_state_new(const void *cfg, size_t size);

/* The online_new hook of a press whose state is a bare dec_state. */
void *dec_online_new(const void *cfg, const rp_layer_ctx *ctx, size_t g, size_t B);

/* The online_free hook of a press whose state holds no buffers beyond dec_state's. */
void dec_online_free(void *state);

/* Counts a decode step; 1 (the count restarted) when interval steps have passed, else 0. */
int dec_step_due(dec_state *s, size_t interval);

/* s->score [c->n]: the scorer's scores of the cache after query t. KV_OK or KV_ERR_NOMEM in err. */
kv_status dec_score_cache(dec_state *s, const dec_scorer *sc, const rp_layer_ctx *ctx, size_t g, size_t t,
                          const rp_cache *c, const float *probs, kv_error *err);

/* The strategy-table fields every decode-time press shares (the prompt kept whole, online
 * decode steps); a press adds its name, text, parameters and online hooks. */
#define DEC_PRESS_COMMON                      \
    .kind = RP_EVICT,                         \
    .protocols = RP_PREFILL | RP_ONLINE,      \
    .free_cfg = dec_cfg_free,                 \
    .prefill = dec_prefill_all,               \
    .decode_time = 1,                         \
    .head_separable = 1     /* per kv head: its own cache, scores and draws (g0 + g) */

#endif /* KV_STRAT_DECODING_H */
