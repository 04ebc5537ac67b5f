/* libFuzzer harness: the sweep parser (replay/sweep.c) and the budget rules on what it accepts.
 * The input is a sweep file; each line goes through sweep_add_line as kvreplay run reads it,
 * then every accepted configuration's budget is resolved against a few cache sizes and checked
 * by its strategy's check_budget hook (an error must come with a message). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sweep.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536) return 0;
    char *buf = malloc(size + 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = 0;
    rp_sweep sw = { 0 };
    char err[512];
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        if (sweep_add_line(&sw, line, "fuzz", err, sizeof err)) break;
    static const size_t fulls[] = { 1, 2, 7, 64, 1000, 131072 };
    for (size_t c = 0; c < sw.n; c++) {
        if (strlen(sw.cfg[c].canon) >= sizeof sw.cfg[c].canon) abort();
        for (size_t k = 0; k < sizeof fulls / sizeof fulls[0]; k++) {
            size_t B = 0;
            if (sweep_budget(&sw.cfg[c], fulls[k], &B)) continue;
            if (B < 1 || B > fulls[k]) abort();
            /* the feasibility hook kvreplay run calls before any work (1 and 32 layers) */
            const rp_config *cf = &sw.cfg[c];
            for (size_t L = 1; cf->evict->check_budget && L <= 32; L += 31) {
                err[0] = 0;
                if (cf->evict->check_budget(cf->evict_cfg, fulls[k], B, L, err, sizeof err) && !err[0]) abort();
            }
        }
        /* a canonical string parses back to itself (kvreplay merge relies on it) */
        rp_sweep again = { 0 };
        if (sweep_add_line(&again, sw.cfg[c].canon, "canon", err, sizeof err) || again.n != 1 ||
            strcmp(again.cfg[0].canon, sw.cfg[c].canon))
            abort();
        sweep_free(&again);
    }
    sweep_free(&sw);
    free(buf);
    return 0;
}
