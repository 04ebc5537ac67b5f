/* libFuzzer harness: the results reader of kvreport (analysis/results.c) and the parts reader
 * of kvreplay merge / --resume (replay/output.c).
 * The input is split at NUL bytes into up to 7 sections, written to a scratch directory as
 * provenance.json, configs.csv, per_seq.csv, summary.csv, per_head.csv, calib.csv and
 * parts/seq_0.part (a missing section: the file is absent; NUL never occurs inside a valid
 * file, so splitting at it loses no input the readers accept). Then res_load reads the
 * directory, and the part goes through out_part_header and out_part_read. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "output.h"
#include "results.h"

static const char *const names[] = { "provenance.json", "configs.csv", "per_seq.csv", "summary.csv", "per_head.csv",
                                     "calib.csv", "parts/seq_0.part" };
#define NF (sizeof names / sizeof names[0])

static char dir[256];

/* replay/engine.c's two allocation helpers, copied: engine.c needs replay/attn.c, whose GCC
 * vector builtins clang-14 does not build (the generic `make fuzz` links the real ones). */
#ifndef FUZZ_LINK_ENGINE
int rp_seq_result_alloc(rp_seq_result *r, size_t n_cfg, size_t L, size_t H)
{
    r->sa = calloc(n_cfg * SA_NF, sizeof *r->sa);
    r->ha = calloc(n_cfg * L * H * HA_NF, sizeof *r->ha);
    r->pl = NULL;
    memset(&r->nd, 0, sizeof r->nd);
    return r->sa && r->ha ? 0 : -1;
}

void rp_seq_result_free(rp_seq_result *r)
{
    if (!r) return;
    free(r->sa); free(r->ha); free(r->pl);
    r->sa = r->ha = r->pl = NULL;
    rp_needles_free(&r->nd);
}
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "%s/kvfuzz_results.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        if (!mkdtemp(dir)) abort();
        char p[512];
        snprintf(p, sizeof p, "%s/parts", dir);
        if (mkdir(p, 0700)) abort();
    }
    if (size > (1 << 20)) return 0;
    size_t at = 0;
    for (size_t i = 0; i < NF; i++) {
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        if (at > size) { unlink(p); continue; }
        const uint8_t *z = memchr(data + at, 0, size - at);
        size_t n = z ? (size_t)(z - (data + at)) : size - at;
        FILE *f = fopen(p, "wb");
        if (!f) abort();
        if (n && fwrite(data + at, 1, n, f) != n) abort();
        fclose(f);
        at += n + 1;
    }
    const char *dirs[1] = { dir };
    res_set *rs = NULL;
    kv_error e;
    if (res_load(dirs, 1, 0, &rs, &e) == KV_OK) {
        /* what kvreport then relies on */
        for (size_t c = 0; c < rs->n_configs; c++) {
            const res_config *g = &rs->configs[c];
            for (size_t i = 0; i + 1 < g->n_seqs; i++) if (g->seqs[i].seq >= g->seqs[i + 1].seq) abort();
            for (int m = 0; m < RM_COUNT; m++) res_values(g, m, NULL, NULL);
        }
        res_free(rs);
    }
    char p[512], err[4600] = "";
    snprintf(p, sizeof p, "%s/parts/seq_0.part", dir);
    out_part_hdr h;
    if (!out_part_header(p, &h, err, sizeof err)) {
        rp_seq_result r;
        memset(&r, 0, sizeof r);
        if (out_part_read(dir, h.key, 0, &r, h.n_cfg, h.L, h.H, err, sizeof err) == 1) rp_seq_result_free(&r);
    }
    return 0;
}
