/* kvreplay info TRACE — describe a trace: model, dimensions, sequences and tokens,
 * optional groups, provenance, storage on disk and the size of the f16 K/V cache.
 * The trace is validated first (child process, lib/trace_read.c).
 *
 * S sequences, T tokens, L layers, H q-heads, Hkv kv-heads, D head_dim, C d_model, V vocab.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "kvtrace.h"
#include "attn_stats.h"
#include "verify.h"

static const char info_usage[] =
    "usage: kvreplay info TRACE\n"
    "\n"
    "Validates TRACE (traces/SCHEMA.md) and describes it: model, architecture, dimensions,\n"
    "sequences and token counts, prefill split, RoPE tables, attn_out, read-out, provenance,\n"
    "file size, storage (layout, chunk shape, filters) and the bytes of the f16 K/V cache.\n"
    "Exit status: 0 described, 1 invalid or unreadable trace, 2 bad command line.\n";

static void human_bytes(char *buf, size_t cap, double b)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (b >= 1024 && i < 4) {
        b /= 1024;
        i++;
    }
    snprintf(buf, cap, i ? "%.2f %s" : "%.0f %s", b, u[i]);
}

static const char *or_dash(const char *s)
{
    return s && *s ? s : "-";
}

int kvcmd_one_trace(const char *name, const char *usage, int argc, char **argv, int *quiet, const char **path)
{
    *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage, stdout);
            return KV_EXIT_OK;
        }
        if (quiet && (!strcmp(argv[i], "--quiet") || !strcmp(argv[i], "-q"))) {
            *quiet = 1;
            continue;
        }
        if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "kvreplay %s: unknown option '%s' (try kvreplay %s --help)\n", name, argv[i], name);
            return KV_EXIT_USAGE;
        }
        if (*path) {
            fprintf(stderr, "kvreplay %s: one TRACE expected, got '%s' and '%s'\n", name, *path, argv[i]);
            return KV_EXIT_USAGE;
        }
        *path = argv[i];
    }
    if (!*path) {
        fprintf(stderr, "kvreplay %s: missing TRACE (try kvreplay %s --help)\n", name, name);
        return KV_EXIT_USAGE;
    }
    return -1;
}

int kvcmd_info(int argc, char **argv)
{
    const char *path;
    int ec = kvcmd_one_trace("info", info_usage, argc, argv, NULL, &path);
    if (ec >= 0) return ec;

    kv_error err = {0};
    kv_trace *t = NULL;
    if (kv_trace_open(path, NULL, &t, &err) != KV_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return KV_EXIT_FAIL;
    }
    const kv_info *in = kv_trace_info(t);
    int rc = KV_EXIT_FAIL;
    int32_t *sl = malloc(in->n_seq * sizeof *sl);
    int32_t *pl = in->has_prefill ? malloc(in->n_seq * sizeof *pl) : NULL;
    if (!sl || (in->has_prefill && !pl)) {
        fprintf(stderr, "%s: out of memory\n", path);
        goto done;
    }
    if (kv_trace_read_seq_len(t, sl, &err) != KV_OK || (pl && kv_trace_read_prefill_len(t, pl, &err) != KV_OK)) {
        fprintf(stderr, "%s\n", err.msg);
        goto done;
    }
    size_t S = in->n_seq, T = in->n_tok, L = in->n_layers;
    unsigned long long tok = 0;
    int mn = sl[0], mx = sl[0];
    for (size_t s = 0; s < S; s++) {
        tok += (unsigned long long)sl[s];
        mn = sl[s] < mn ? sl[s] : mn;
        mx = sl[s] > mx ? sl[s] : mx;
    }
    char b1[32], b2[32], b3[32];
    human_bytes(b1, sizeof b1, (double)in->file_bytes);
    printf("trace         %s\n", in->path);
    printf("file          %s (%llu bytes), kvtrace_version %d\n", b1, in->file_bytes, in->version);
    printf("model         %s\n", in->model);
    printf("architecture  %s\n", in->architecture);
    printf("dims          L=%zu layers, H=%zu q-heads, Hkv=%zu kv-heads (group %zu), D=%zu head_dim, "
           "C=%zu d_model, V=%zu vocab\n", L, in->n_heads, in->n_kv_heads, in->n_heads / in->n_kv_heads,
           in->head_dim, in->d_model, in->vocab);
    printf("sequences     S=%zu, T=%zu (padded)\n", S, T);
    printf("tokens        %llu valid (sum of seq_len; per sequence min %d, mean %.1f, max %d)\n", tok, mn,
           (double)tok / (double)S, mx);
    if (pl) {
        int pmn = pl[0], pmx = pl[0];
        unsigned long long ps = 0;
        for (size_t s = 0; s < S; s++) {
            ps += (unsigned long long)pl[s];
            pmn = pl[s] < pmn ? pl[s] : pmn;
            pmx = pl[s] > pmx ? pl[s] : pmx;
        }
        printf("prefill       yes (/prefill_len: min %d, mean %.1f, max %d)\n", pmn, (double)ps / (double)S, pmx);
    } else {
        printf("prefill       no (no /prefill_len: prefill split is a run parameter)\n");
    }
    if (in->n_needles)
        printf("needles       %zu (/needles: needle metrics in kvreplay run -> needles.csv)\n", in->n_needles);
    if (in->has_prompt_scores && in->prompt_scores_stale[0])
        printf("prompt scores /prompt_scores: recorded column sums and row entropies, not applicable: %s "
               "(kvreplay run recomputes them)\n", in->prompt_scores_stale);
    else if (in->has_prompt_scores)
        printf("prompt scores /prompt_scores: recorded column sums and row entropies (served by kvreplay run: "
               "--prompt-scores auto, the default)\n");
    printf("attention     scale %.9g, softcap %s", in->attn_scale, in->attn_softcap > 0 ? "" : "none");
    if (in->attn_softcap > 0)
        printf("%.9g", in->attn_softcap);
    if (in->sliding_window > 0)
        printf(", sliding window %lld", in->sliding_window);
    else
        printf(", no sliding window");
    size_t nover = 0;
    for (size_t l = 0; l < L; l++)
        nover += in->layer_window[l] != in->sliding_window;
    if (nover) {
        printf(" (per-layer windows:");
        for (size_t l = 0; l < L; l++)
            printf(" %lld", in->layer_window[l]);
        printf(")");
    }
    printf("\n");
    if (!strcmp(in->positional, "rope"))
        printf("positional    rope (%s, rotary_dim %zu), tables /rope: %s\n", in->rope_layout, in->rotary_dim,
               in->has_rope ? "yes" : "no");
    else
        printf("positional    %s, tables /rope: %s\n", in->positional, in->has_rope ? "yes" : "no");
    printf("attn_out      %s\n", in->has_attn_out ? "yes (the model's own attention output, for verification)" : "no");
    if (in->has_readout) {
        printf("readout       yes (%s, eps %g, final logit softcap ", in->norm_type, in->norm_eps);
        if (in->final_logit_softcap > 0)
            printf("%g", in->final_logit_softcap);
        else
            printf("none");
        printf(", norm bias %s, unembedding bias %s)\n", in->has_norm_bias ? "yes" : "no", in->has_b_u ? "yes" : "no");
    } else {
        printf("readout       no%s%s\n", in->readout_unavailable[0] ? ": " : "", in->readout_unavailable);
    }
    int same_model_layers = 1;
    for (size_t l = 0; l < L; l++)
        same_model_layers &= in->model_layer[l] == (long long)l;
    if (!same_model_layers) {
        printf("model layers ");
        for (size_t l = 0; l < L; l++)
            printf(" %lld", in->model_layer[l]);
        printf("\n");
    }
    if (in->bos_id >= 0)
        printf("bos_id        %lld\n", in->bos_id);
    printf("capture       %s %s on %s; torch %s, transformers %s; created %s\n", or_dash(in->capture_tool),
           or_dash(in->capture_version), or_dash(in->device), or_dash(in->torch_version),
           or_dash(in->transformers_version), or_dash(in->created));
    printf("source        %s\n", or_dash(in->source));
    printf("compute dtype %s\n", in->compute_dtype[0] ? in->compute_dtype : "- (unknown: float32 assumed by check)");

    /* storage of the rank-4 tensors */
    unsigned long long disk = 0;
    static const char *names[4] = {"q", "k", "v", "attn_out"};
    for (size_t l = 0; l < L; l++)
        for (int k = 0; k < (in->has_attn_out ? 4 : 3); k++) {
            char p[64];
            kv_dset_info di;
            snprintf(p, sizeof p, "/layers/%zu/%s", l, names[k]);
            if (kv_trace_dataset_info(t, p, &di, &err) != KV_OK) {
                fprintf(stderr, "%s\n", err.msg);
                goto done;
            }
            disk += di.storage_bytes;
        }
    /* q + k + v (+ attn_out), 2 bytes per element */
    double heads_total = (double)in->n_heads * (in->has_attn_out ? 2.0 : 1.0) + 2.0 * (double)in->n_kv_heads;
    double raw = 2.0 * (double)L * (double)S * (double)T * (double)in->head_dim * heads_total;
    human_bytes(b1, sizeof b1, (double)disk);
    human_bytes(b2, sizeof b2, raw);
    char filt[64] = "";
    if (in->q_shuffle)
        strcat(filt, "shuffle");
    if (in->q_deflate)
        strcat(filt, filt[0] ? "+deflate" : "deflate");
    if (in->q_fletcher32)
        strcat(filt, filt[0] ? "+fletcher32" : "fletcher32");
    if (in->q_chunked)
        printf("storage       chunked (%zu, %zu, %zu, %zu), filters: %s; layer tensors %s on disk, %s raw\n",
               in->q_chunk[0], in->q_chunk[1], in->q_chunk[2], in->q_chunk[3], filt[0] ? filt : "none", b1, b2);
    else
        printf("storage       contiguous, no filters; layer tensors %s on disk, %s raw\n", b1, b2);
    /* f16 K/V cache: K and V, every layer and kv head, 2 bytes per element */
    double per_tok = 2.0 * 2.0 * (double)L * (double)in->n_kv_heads * (double)in->head_dim;
    human_bytes(b1, sizeof b1, per_tok * (double)tok);
    human_bytes(b2, sizeof b2, per_tok * (double)S * (double)T);
    human_bytes(b3, sizeof b3, per_tok);
    printf("kv cache      f16 K+V: %s for the valid tokens, %s padded (S x T), %s per token\n", b1, b2, b3);

    /* ==== KERNELS HOOK: per-layer attention statistics ==================================
     * attn_stats_compute() over the first INFO_STATS_SEQ sequences and at most ATTN_STATS_POS
     * positions of each (keeps info fast on long traces):
     * one line per layer with the means over heads, and the most specialised head.
     * ===================================================================================== */
    {
        enum { INFO_STATS_SEQ = 4 };
        attn_stats *as = NULL;
        if (attn_stats_compute(t, INFO_STATS_SEQ, ATTN_STATS_POS, &as, &err) != KV_OK) {
            fprintf(stderr, "%s\n", err.msg);
            goto done;
        }
        char npos[160];
        if (as->n_pos < as->n_all)
            snprintf(npos, sizeof npos, "%zu of %zu query positions t >= 1 (at most %d per sequence, evenly spaced)",
                     as->n_pos, as->n_all, (int)ATTN_STATS_POS);
        else
            snprintf(npos, sizeof npos, "%zu query positions t >= 1", as->n_pos);
        printf("attention structure (first %zu of %zu sequences, %s per head;\n"
               "  entropy in nats vs the uniform entropy log(visible keys); sink = mass on token 0,\n"
               "  prev = mass on token t-1; means over heads; focus = 1 - entropy/uniform)\n",
               as->n_seq, S, npos);
        printf("  layer  entropy  uniform  ratio   sink    prev   most specialised head\n");
        for (size_t l = 0; l < L; l++) {
            double e = 0, u = 0, sk = 0, pv = 0;
            for (size_t h = 0; h < as->H; h++) {
                e += as->entropy[l * as->H + h];
                u += as->uniform[l * as->H + h];
                sk += as->sink[l * as->H + h];
                pv += as->prev[l * as->H + h];
            }
            size_t hb;
            const char *kind;
            double score;
            attn_stats_special(as, l, &hb, &kind, &score);
            double nh = (double)as->H;
            printf("  %5zu  %7.3f  %7.3f  %5.2f  %5.3f  %5.3f   h%zu %s %.3f\n", l, e / nh, u / nh,
                   u > 0 ? e / u : 0, sk / nh, pv / nh, hb, kind, score);
        }
        attn_stats_free(as);
    }

    rc = KV_EXIT_OK;
done:
    free(sl);
    free(pl);
    kv_trace_close(t);
    return rc;
}
