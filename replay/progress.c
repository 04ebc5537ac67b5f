/* Progress lines on stderr (progress.h). */
#include "progress.h"

#include <math.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void kv_progress_fmt_secs(double s, char *buf, size_t cap)
{
    if (!(s >= 0) || !isfinite(s)) { snprintf(buf, cap, "?"); return; }
    if (s < 10) { snprintf(buf, cap, "%.1fs", s); return; }
    long t = lround(s);
    if (t < 60) snprintf(buf, cap, "%lds", t);
    else if (t < 3600) snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, cap, "%ldh%02ldm%02lds", t / 3600, t / 60 % 60, t % 60);
}

void kv_progress_start(kv_progress *p, const char *prog, const char *unit, size_t total, double every, int quiet)
{
    *p = (kv_progress){ .prog = prog, .unit = unit, .total = total, .every = every, .quiet = quiet,
                        .tty = isatty(2) };
    p->t0 = p->last = now_s();
}

void kv_progress_begin_item(kv_progress *p, size_t i, const char *detail)
{
    if (p->quiet || !p->tty) return;
    fprintf(stderr, "\r%s: sequence %zu/%zu%s   ", p->prog, i + 1, p->total, detail ? detail : "");
}

static void line(kv_progress *p, double t)
{
    char el[32], eta[32];
    kv_progress_fmt_secs(t - p->t0, el, sizeof el);
    size_t left = p->total - p->done;
    if (!left) snprintf(eta, sizeof eta, "0s");
    else if (!p->computed) snprintf(eta, sizeof eta, "?");
    else kv_progress_fmt_secs((t - p->t0) / (double)p->computed * (double)left, eta, sizeof eta);
    fprintf(stderr, "%s: %zu/%zu %s, elapsed %s, eta %s\n", p->prog, p->done, p->total, p->unit, el, eta);
    p->last = t;
}

void kv_progress_item_done(kv_progress *p, int computed)
{
    p->done++;
    p->computed += computed != 0;
    if (p->quiet || p->tty) return;
    double t = now_s();
    if (t - p->last >= p->every) line(p, t);
}

void kv_progress_clear(kv_progress *p)
{
    if (!p->quiet && p->tty) fprintf(stderr, "\r%70s\r", "");
}

void kv_progress_summary(kv_progress *p)
{
    if (p->quiet) return;
    char el[32];
    kv_progress_fmt_secs(now_s() - p->t0, el, sizeof el);
    fprintf(stderr, "%s: %zu/%zu %s done in %s (%zu computed, %zu resumed)\n", p->prog, p->done, p->total, p->unit, el,
            p->computed, p->done - p->computed);
}
