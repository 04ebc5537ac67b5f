/* Sweep files and configuration strings (sweeps/README.md, replay/RESULTS.md configs.csv).
 *
 * Grammar, one configuration line:
 *     line   := part (" + " part)*          at most RP_MAX_PARTS parts; '#' starts a comment
 *     part   := NAME (" " KEY "=" VALUES)*
 *     VALUES := VALUE ("," VALUE)*          a comma list expands the line: Cartesian product
 *                                           over every list of the line, the first list
 *                                           outermost (the last varies fastest)
 * Budgets: a strategy with needs_budget takes exactly one of keep=F (0 < F <= 1) or
 * budget=N (N >= 1), written first in the canonical string. Compositions: an eviction
 * strategy followed by one encoding strategy ("snapkv keep=0.25 + quant kbits=4").
 *
 * Labels: a line may name its configurations for tables and legends with label=NAME or
 * label="NAME WITH SPACES" anywhere on the line (not part of the canonical string). {KEY}
 * in a label is replaced by the value KEY takes on the line ("KIVI-{kbits}bit"). A label
 * holds at most RP_LABEL_MAX - 1 bytes of printable text without , " ' ` \ { } #;
 * two configurations may share a label only when they differ in their budget alone (a
 * row of a strategy x budget table).
 *
 * Canonical string: NAME, the budget, then every declared parameter in declared order with
 * defaults filled ("key=value", single spaces; floats in their shortest round-trip form,
 * enums by name, bools 0/1); parts joined by " + ". Equal strings = equal configurations;
 * a repeated configuration is dropped (the first occurrence keeps its id).
 *
 * Ownership: sweep_* allocate the rp_config array and every strategy cfg; sweep_free
 * releases both. Errors: -1 with one line in err ("sweep.txt:3: unknown parameter ...").
 */
#ifndef KV_SWEEP_H
#define KV_SWEEP_H

#include <stddef.h>
#include <stdint.h>

#include "strategy.h"

#define RP_MAX_PARTS 2
#define RP_MAX_CONFIGS 16384      /* configurations of one sweep (after expansion) */
#define RP_LABEL_MAX 64           /* display name of a configuration, NUL included */

typedef struct rp_part {
    const rp_strategy *s;
    double values[RP_MAX_PARAMS];   /* declared order; ENUM: choice index, BOOL: 0/1 */
    char *text[RP_MAX_PARAMS];      /* LIST / PATH: canonical text (owned), else NULL */
    void *cfg;                      /* from s->configure, owned */
} rp_part;

typedef struct rp_config {
    size_t id;                      /* 0-based, sweep order after expansion */
    char canon[1024];               /* canonical configuration string */
    char family[128];               /* names joined by '+' */
    char label[RP_LABEL_MAX];       /* display name from the sweep's label=, "" when none */
    rp_part part[RP_MAX_PARTS];
    size_t n_parts;
    const rp_strategy *evict;       /* the eviction part (full when the config only encodes) */
    const void *evict_cfg;
    const rp_strategy *enc;         /* the encoding part, or NULL */
    const void *enc_cfg;
    rp_budget_kind budget_kind;
    double budget_value;            /* keep fraction or entry count, as given */
    uint64_t hash;                  /* FNV-1a of canon (seeds, run keys) */
} rp_config;

typedef struct rp_sweep {
    rp_config *cfg;
    size_t n, cap;
} rp_sweep;

/* Parse one line (comments allowed; a blank line adds nothing) and append its expansion.
 * where: prefix of error messages ("FILE:LINE" or "--strategy"). */
int sweep_add_line(rp_sweep *sw, const char *line, const char *where, char *err, size_t errlen);
/* Every line of a file (relative RP_PATH values are resolved against the file's directory). */
int sweep_add_file(rp_sweep *sw, const char *path, char *err, size_t errlen);
/* Parameter values of strategy s with every parameter at its default (LIST / PATH: their
 * count as the parser gives it; their text is the default text). 0 ok, -1 with err. */
int sweep_param_defaults(const rp_strategy *s, double *values, char *err, size_t errlen);
void sweep_free(rp_sweep *sw);

/* Budget of a configuration for a cache that would hold `full` entries (prefill: P;
 * online: n). Returns 0 when the budget does not fit (budget= N >= full, with N > full
 * reported as an error by the caller), else writes *B. Configurations without a budget
 * get *B = full. */
int sweep_budget(const rp_config *c, size_t full, size_t *B);

/* The canonical string without its budget (" keep=F" / " budget=N"): configurations with
 * equal stripped strings differ in their budget alone. */
void sweep_strip_budget(const char *canon, char *out, size_t cap);
/* 0 when s is acceptable as a label (the rules above), else -1 with the reason in why. */
int sweep_label_check(const char *s, char *why, size_t cap);

uint64_t rp_hash64(const void *data, size_t n, uint64_t h);   /* FNV-1a, h = 0 to start */

#endif /* KV_SWEEP_H */
