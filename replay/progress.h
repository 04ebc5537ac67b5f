/* Progress of a long loop over work items, on stderr.
 *
 * On a terminal: one line rewritten in place ("\r") per item, erased at the end, as before.
 * Elsewhere (a log file, a batch job's stderr): a line every `every` seconds of wall clock
 *     kvreplay run: 12/40 sequences, elapsed 1m02s, eta 2m10s
 * (every = 0: after every item), so that logs stay short and show a run is alive. In both
 * cases a summary line once the run succeeded. quiet = 1 prints nothing.
 *
 * The ETA extrapolates the mean time of the items computed in this process (items loaded
 * by --resume are counted as done but not timed).
 */
#ifndef KV_PROGRESS_H
#define KV_PROGRESS_H

#include <stddef.h>

#define KV_PROGRESS_EVERY_DEFAULT 30.0

typedef struct kv_progress {
    const char *prog;              /* message prefix, e.g. "kvreplay run" */
    const char *unit;              /* plural noun, e.g. "sequences" */
    size_t total;
    size_t done;                   /* items finished (computed or loaded) */
    size_t computed;               /* items computed here (the ETA's sample) */
    double every;                  /* seconds between lines when not a terminal */
    double t0, last;               /* monotonic clock (s): start, last line */
    int tty, quiet;
} kv_progress;

void kv_progress_start(kv_progress *p, const char *prog, const char *unit, size_t total, double every, int quiet);
/* Before computing item i (0-based): the terminal line "i+1/total". */
void kv_progress_begin_item(kv_progress *p, size_t i, const char *detail);
/* An item finished; computed = 0 when it was loaded rather than computed. */
void kv_progress_item_done(kv_progress *p, int computed);
/* Erases the terminal line (call before other messages at the end of the loop). */
void kv_progress_clear(kv_progress *p);
/* The final line of a successful run: "N/total sequences done in 1m02s (...)"; a failed or
 * interrupted run has its own message instead. */
void kv_progress_summary(kv_progress *p);
/* "1h02m03s", "4m05s", "12s", "0.4s" */
void kv_progress_fmt_secs(double s, char *buf, size_t cap);

#endif
