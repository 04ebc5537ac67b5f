/* Scores shared by every configuration of a work item (shared.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "shared.h"

enum { CS_ROWS = 64 };          /* query rows per kernel call: logits buffer CS_ROWS x P */

double rp_entropy_norm(const float *p, size_t nvis)
{
    if (nvis <= 1) return 0.0;
    double h = 0;
    for (size_t j = 0; j < nvis; j++)
        if (p[j] > 0) h -= (double)p[j] * log((double)p[j]);
    return h / log((double)nvis);
}

/* Row t's probabilities pe [nvis] over its visible keys row [0, nvis) (logits), added into
 * out[0, nadd); returns the row's unnormalised entropy -sum p log p through log p = s - lz
 * with lz the row's log partition (no log per entry; shared.h). */
static double row_probs_add(const float *row, size_t nvis, float *pe, double *out, size_t nadd, int ent)
{
    double lz = attn_probs_row(row, nvis, pe);
    for (size_t j = 0; j < nadd; j++) out[j] += pe[j];
    if (!ent) return 0;
    double h = 0;
    for (size_t j = 0; j < nvis; j++) h += (double)pe[j] * (lz - (double)row[j]);
    return h;
}

/* rp_prompt_colsum with a scratch of ws_floats floats (NULL, 0: malloc'd here): the logits
 * [CS_ROWS][t1] and one row's probabilities [t1], written before they are read. */
static int prompt_colsum_ws(const float *q, const float *k, const float *kt, size_t P, size_t D, const attn_params *ap,
                            size_t t0, size_t t1, const uint8_t *want, size_t ncols, double *out, double *ent,
                            float *ws, size_t ws_floats)
{
    if (t0 > t1 || t1 > P || ncols > P) return -1;
    memset(out, 0, ncols * sizeof *out);
    if (ent) memset(ent, 0, (t1 - t0) * sizeof *ent);
    if (t0 == t1) return 0;
    size_t maxr = t1 - t0 < CS_ROWS ? t1 - t0 : CS_ROWS;
    int own = !ws || ws_floats < (maxr + 1) * t1;
    float *lg = own ? malloc(maxr * t1 * sizeof *lg) : ws, *pe = own ? malloc(t1 * sizeof *pe) : ws + maxr * t1;
    if (!lg || !pe) { if (own) { free(lg); free(pe); } return -1; }
    for (size_t a = t0; a < t1;) {
        if (want && !want[a]) { a++; continue; }
        size_t b = a + 1;                       /* a run of wanted rows, one kernel call */
        while (b < t1 && b - a < CS_ROWS && (!want || want[b])) b++;
        /* keys [0, b) cover every visible key of rows < b; the row stride is b */
        if (kt) attn_full_rows_kt(q, kt, k, b, D, a, b, ap, NULL, NULL, lg);     /* logits only */
        else attn_full_rows(q, k, k, b, D, a, b, ap, NULL, NULL, lg);
        for (size_t t = a; t < b; t++) {
            size_t lo = attn_lo(t, ap->window), nvis = t + 1 - lo, hi = t + 1 < ncols ? t + 1 : ncols;
            double h = row_probs_add(lg + (t - a) * b + lo, nvis, pe, out + lo, hi > lo ? hi - lo : 0, ent != NULL);
            if (ent) ent[t - t0] = nvis > 1 ? h / log((double)nvis) : 0.0;
        }
        a = b;
    }
    if (own) { free(lg); free(pe); }
    return 0;
}

int rp_prompt_colsum(const float *q, const float *k, const float *kt, size_t P, size_t D, const attn_params *ap,
                     size_t t0, size_t t1, const uint8_t *want, size_t ncols, double *out, double *ent)
{
    return prompt_colsum_ws(q, k, kt, P, D, ap, t0, t1, want, ncols, out, ent, NULL, 0);
}

void rp_page_minmax(const float *k, size_t D, size_t page, size_t p0, size_t p1, float *kmin, float *kmax)
{
    for (size_t p = p0; p < p1; p++) {
        float *mn = kmin + (p - p0) * D, *mx = kmax + (p - p0) * D;
        const float *r = k + p * page * D;
        memcpy(mn, r, D * sizeof *mn);
        memcpy(mx, r, D * sizeof *mx);
        for (size_t e = 1; e < page; e++)
            for (size_t d = 0; d < D; d++) {
                float x = r[e * D + d];
                mn[d] = x < mn[d] ? x : mn[d];
                mx[d] = x > mx[d] ? x : mx[d];
            }
    }
}

/* ---- the per-item object ------------------------------------------------------------------ */

enum { SH_RANGES = 4 };         /* unmasked row ranges kept per query head */

typedef struct sh_range { size_t t0, t1; double *sum; } sh_range;

typedef struct sh_pages {
    size_t g, page, np, cap;    /* pages [0, np) computed, room for cap */
    float *kmin, *kmax;         /* [cap][D] */
    size_t ntp;                 /* pages [0, ntp) transposed */
    float *tmin, *tmax;         /* [D][cap]: rp_shared_pages_t, NULL until asked */
} sh_pages;

struct rp_shared {
    const float *q, *k;
    size_t H, Hkv, G, n, P, D;
    attn_params ap;
    int want_ent;               /* the whole prompt's sums are computed with the entropies */
    sh_range *rg;               /* [H][SH_RANGES], t1 == 0: free */
    size_t *rg_next;            /* [H] slot replaced next when all are taken */
    double **ent;               /* [H] row entropies, NULL until asked */
    float **kt;                 /* [Hkv] the sequence's n keys transposed once (attn_transpose_keys):
                                 * the prompt's sums read keys [0, P), the captured sums' evaluated
                                 * rows all n */
    float *kt_buf;              /* rp_shared_scratch: room for every kv head's kt, or NULL: malloc */
    float *ws;                  /* rp_shared_scratch: prompt_colsum_ws's logits, or NULL: malloc */
    size_t ws_floats;
    sh_pages *pg;
    size_t n_pg;
    double **vn;                /* [Hkv] value norms (rp_shared_value_norms), NULL until asked */
    const float *cap_cs, *cap_ent;  /* [H][n] captured scores (rp_shared_use_captured), or NULL */
    rp_decode_share_fn dsh;         /* the evaluated rows' share from the caller, or NULL */
    void *dsh_arg;
};

rp_shared *rp_shared_new(const float *q, const float *k, size_t H, size_t Hkv, size_t n, size_t P, size_t D,
                         const attn_params *ap, int want_ent)
{
    rp_shared *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    *s = (rp_shared){ .q = q, .k = k, .H = H, .Hkv = Hkv, .G = H / Hkv, .n = n, .P = P, .D = D, .ap = *ap, .want_ent = want_ent };
    s->rg = calloc(H * SH_RANGES, sizeof *s->rg);
    s->rg_next = calloc(H, sizeof *s->rg_next);
    s->ent = calloc(H, sizeof *s->ent);
    s->kt = calloc(Hkv, sizeof *s->kt);
    s->vn = calloc(Hkv, sizeof *s->vn);
    if (!s->rg || !s->rg_next || !s->ent || !s->kt || !s->vn) { rp_shared_free(s); return NULL; }
    return s;
}

void rp_shared_free(rp_shared *s)
{
    if (!s) return;
    if (s->rg) for (size_t i = 0; i < s->H * SH_RANGES; i++) free(s->rg[i].sum);
    if (s->ent) for (size_t h = 0; h < s->H; h++) free(s->ent[h]);
    if (s->kt && !s->kt_buf) for (size_t g = 0; g < s->Hkv; g++) free(s->kt[g]);
    if (s->vn) for (size_t g = 0; g < s->Hkv; g++) free(s->vn[g]);
    for (size_t i = 0; i < s->n_pg; i++) {
        free(s->pg[i].kmin); free(s->pg[i].kmax); free(s->pg[i].tmin); free(s->pg[i].tmax);
    }
    free(s->rg); free(s->rg_next); free(s->ent); free(s->kt); free(s->vn); free(s->pg);
    free(s);
}

static const float *head_q(const rp_shared *s, size_t h) { return s->q + h * s->n * s->D; }
static const float *head_k(const rp_shared *s, size_t h) { return s->k + (h / s->G) * s->n * s->D; }

/* head_kt: the keys of query head h's kv head (rp_shared_keys_t; a kernel given keys [0, b)
 * of them reads no more: attn_full_rows_kt); NULL when out of memory (the caller then
 * transposes per block: same results). All n, not the prompt's P: captured_prompt_sum's rows
 * [P, n) see every key, and without it transposed the kernel transposed each key block again
 * per block of rows (h2o keep=0.25 at 8k tokens with the trace's scores: 440 of ~5000
 * samples, full_rows); the engine's full pass takes the same copy. */
const float *rp_shared_keys_t(rp_shared *s, size_t g)
{
    size_t nf = attn_keys_t_floats(s->n, s->D);
    if (g < s->Hkv && !s->kt[g] && s->n &&
        (s->kt[g] = s->kt_buf ? s->kt_buf + g * nf : malloc(nf * sizeof **s->kt)))
        attn_transpose_keys(s->k + g * s->n * s->D, s->n, s->D, s->kt[g]);
    return g < s->Hkv ? s->kt[g] : NULL;
}

static const float *head_kt(rp_shared *s, size_t h) { return rp_shared_keys_t(s, h / s->G); }

/* kt [Hkv][attn_keys_t_floats(n, D)], then prompt_colsum_ws's [CS_ROWS + 1][n] */
size_t rp_shared_scratch_floats(const rp_shared *s)
{
    return s->Hkv * attn_keys_t_floats(s->n, s->D) + (CS_ROWS + 1) * s->n;
}

void rp_shared_scratch(rp_shared *s, float *buf)
{
    if (s->kt_buf || !buf) return;
    for (size_t g = 0; g < s->Hkv; g++) if (s->kt[g]) return;      /* before any use only */
    s->kt_buf = buf;
    s->ws = buf + s->Hkv * attn_keys_t_floats(s->n, s->D);
    s->ws_floats = (CS_ROWS + 1) * s->n;
}

int rp_shared_use_captured(rp_shared *s, const float *colsum, const float *ent)
{
    if (!colsum || !ent) return -1;
    s->cap_cs = colsum;
    s->cap_ent = ent;
    return 0;
}

void rp_shared_use_decode_share(rp_shared *s, rp_decode_share_fn fn, void *arg)
{
    s->dsh = fn;
    s->dsh_arg = arg;
}

/* The whole prompt's column sums of head h from the captured ones (rp_shared_use_captured):
 * out[j] = max(0, colsum[j] - the sum over rows t in [P, n) of p(t, j)), those rows' share
 * from the caller (rp_shared_use_decode_share: the engine's full pass) or else by
 * rp_prompt_colsum over all n keys (each row normalised over its visible keys, like the
 * captured rows) restricted to the P prompt columns. 0 ok, -1 failure. */
static int captured_prompt_sum(rp_shared *s, size_t h, double *out)
{
    size_t P = s->P, n = s->n;
    const float *cap = s->cap_cs + h * n;
    if (s->dsh ? s->dsh(s->dsh_arg, h, out)
               : prompt_colsum_ws(head_q(s, h), head_k(s, h), head_kt(s, h), n, s->D, &s->ap, P, n, NULL, P, out, NULL,
                                  s->ws, s->ws_floats))
        return -1;
    for (size_t j = 0; j < P; j++) {
        double x = (double)cap[j] - out[j];
        out[j] = x > 0 ? x : 0.0;
    }
    return 0;
}

/* The kept column sums of rows [t0, t1) of head h, computed (with the row entropies when
 * ent is not NULL) into a new or recycled slot when absent. NULL: out of memory. */
static const double *range_sum(rp_shared *s, size_t h, size_t t0, size_t t1, double *ent)
{
    sh_range *r = s->rg + h * SH_RANGES, *slot = NULL;
    for (size_t i = 0; i < SH_RANGES; i++)
        if (r[i].sum && r[i].t0 == t0 && r[i].t1 == t1 && !ent) return r[i].sum;
    for (size_t i = 0; i < SH_RANGES && !slot; i++)
        if (r[i].sum && r[i].t0 == t0 && r[i].t1 == t1) slot = &r[i];         /* refreshed with ent */
    for (size_t i = 0; i < SH_RANGES && !slot; i++)
        if (!r[i].sum) slot = &r[i];
    if (!slot) { slot = &r[s->rg_next[h]]; s->rg_next[h] = (s->rg_next[h] + 1) % SH_RANGES; }
    if (!slot->sum && !(slot->sum = malloc((s->P ? s->P : 1) * sizeof *slot->sum))) return NULL;
    slot->t1 = 0;
    if (s->cap_cs && t0 == 0 && t1 == s->P) {       /* recorded at capture: linear in n */
        if (captured_prompt_sum(s, h, slot->sum)) return NULL;
    } else if (prompt_colsum_ws(head_q(s, h), head_k(s, h), head_kt(s, h), s->P, s->D, &s->ap, t0, t1, NULL, s->P, slot->sum,
                                ent, s->ws, s->ws_floats))
        return NULL;
    slot->t0 = t0; slot->t1 = t1;
    return slot->sum;
}

int rp_shared_colsum(rp_shared *s, size_t h, size_t t0, size_t t1, const uint8_t *want, double *out)
{
    if (h >= s->H || t0 > t1 || t1 > s->P) return -1;
    if (want)
        return prompt_colsum_ws(head_q(s, h), head_k(s, h), head_kt(s, h), s->P, s->D, &s->ap, t0, t1, want, s->P,
                                out, NULL, s->ws, s->ws_floats);
    if (t0 == t1) { memset(out, 0, s->P * sizeof *out); return 0; }
    if (s->want_ent && t0 == 0 && t1 == s->P && !rp_shared_entropy(s, h)) return -1;   /* fills the range */
    const double *sum = range_sum(s, h, t0, t1, NULL);
    if (!sum) return -1;
    memcpy(out, sum, s->P * sizeof *out);
    return 0;
}

const double *rp_shared_entropy(rp_shared *s, size_t h)
{
    if (h >= s->H) return NULL;
    if (s->ent[h]) return s->ent[h];
    double *e = malloc((s->P ? s->P : 1) * sizeof *e);
    if (!e) return NULL;
    if (s->cap_ent) {           /* recorded at capture: rows [0, P) as they are */
        for (size_t t = 0; t < s->P; t++) e[t] = s->cap_ent[h * s->n + t];
        return s->ent[h] = e;
    }
    /* one pass fills the whole prompt's column sums too (they cost nothing more) */
    if (!range_sum(s, h, 0, s->P, e)) { free(e); return NULL; }
    return s->ent[h] = e;
}

/* The page entry of (g, page) with pages [0, np) computed (created and extended as needed);
 * NULL when out of memory or np * page > n. */
static sh_pages *pages_get(rp_shared *s, size_t g, size_t page, size_t np)
{
    if (g >= s->Hkv || page == 0 || np > s->n / page) return NULL;
    sh_pages *pg = NULL;
    for (size_t i = 0; i < s->n_pg && !pg; i++)
        if (s->pg[i].g == g && s->pg[i].page == page) pg = &s->pg[i];
    if (!pg) {
        sh_pages *x = realloc(s->pg, (s->n_pg + 1) * sizeof *x);
        if (!x) return NULL;
        s->pg = x;
        pg = &s->pg[s->n_pg++];
        *pg = (sh_pages){ .g = g, .page = page };
    }
    if (np > pg->cap) {         /* room for every whole page of the sequence at once */
        size_t cap = s->n / page, D = s->D;
        float *a = realloc(pg->kmin, (cap ? cap : 1) * D * sizeof *a);
        if (!a) return NULL;
        pg->kmin = a;
        float *b = realloc(pg->kmax, (cap ? cap : 1) * D * sizeof *b);
        if (!b) return NULL;
        pg->kmax = b;
        pg->cap = cap;
    }
    if (np > pg->np) {          /* pages filled since the last request */
        rp_page_minmax(s->k + g * s->n * s->D, s->D, page, pg->np, np, pg->kmin + pg->np * s->D,
                       pg->kmax + pg->np * s->D);
        pg->np = np;
    }
    return pg;
}

int rp_shared_pages(rp_shared *s, size_t g, size_t page, size_t np, const float **kmin, const float **kmax)
{
    sh_pages *pg = pages_get(s, g, page, np);
    if (!pg) return -1;
    *kmin = pg->kmin;
    *kmax = pg->kmax;
    return 0;
}

int rp_shared_pages_t(rp_shared *s, size_t g, size_t page, size_t np, const float **tmin, const float **tmax,
                      size_t *ld)
{
    sh_pages *pg = pages_get(s, g, page, np);
    if (!pg) return -1;
    size_t cap = pg->cap, D = s->D;
    if (!pg->tmin) {            /* cap is every whole page of the sequence: allocated once */
        pg->tmin = malloc((cap * D > 0 ? cap * D : 1) * sizeof *pg->tmin);
        pg->tmax = malloc((cap * D > 0 ? cap * D : 1) * sizeof *pg->tmax);
        if (!pg->tmin || !pg->tmax) { free(pg->tmin); free(pg->tmax); pg->tmin = pg->tmax = NULL; return -1; }
        pg->ntp = 0;
    }
    for (size_t d = 0; d < D; d++)
        for (size_t p = pg->ntp; p < np; p++) {
            pg->tmin[d * cap + p] = pg->kmin[p * D + d];
            pg->tmax[d * cap + p] = pg->kmax[p * D + d];
        }
    if (np > pg->ntp) pg->ntp = np;
    *tmin = pg->tmin;
    *tmax = pg->tmax;
    *ld = cap;
    return 0;
}

/* ---- value norms (criticalkv) ------------------------------------------------------------- */

/* W_O of a query head ([D][C] floats, row stride C: 4 KiB apart at C = 1024, which maps the
 * d rows of a few columns onto one L1 set) is packed once into panels of VN_PC columns:
 * wp[cb][d][VN_PC] doubles, contiguous for the pass over d. A tile of VN_TILE value rows is
 * then multiplied by each panel while the panel stays in L1. */
enum { VN_PC = ATTN_PANEL_COLS };   /* columns per panel */
enum { VN_ROWS = ATTN_PANEL_ROWS };  /* value rows per kernel call */
enum { VN_TILE = 16 };   /* value rows per tile (a multiple of VN_ROWS) */

/* tot[r] += |dot[r][c]| for the panel's columns c in order, for nr rows (a multiple of
 * VN_ROWS, at most VN_TILE) at once. */
static void vn_panel(const double *x, size_t nr, size_t D, const double *wp, double *tot)
{
    double dot[VN_TILE * VN_PC];
    attn_panel_dot_rows(x, nr, D, wp, dot);
    for (size_t r = 0; r < nr; r++)
        for (size_t c = 0; c < VN_PC; c++) tot[r] += fabs(dot[r * VN_PC + c]);
}

int rp_value_norms(const float *v, size_t P, size_t D, const float *wo, size_t C, size_t G, double *u)
{
    size_t np = C / VN_PC, cr = np * VN_PC;   /* whole panels; columns [cr, C) one at a time */
    double *x = calloc(D ? VN_TILE * D : 1, sizeof *x), *wp = malloc((G * np * D * VN_PC + 1) * sizeof *wp);
    if (!x || !wp) { free(x); free(wp); return -1; }
    for (size_t i = 0; i < G; i++)
        for (size_t b = 0; b < np; b++)
            for (size_t d = 0; d < D; d++)
                for (size_t c = 0; c < VN_PC; c++)
                    wp[((i * np + b) * D + d) * VN_PC + c] = wo[(i * D + d) * C + b * VN_PC + c];
    for (size_t j0 = 0; j0 < P; j0 += VN_TILE) {
        /* rows past P (last tile) are computed from the previous tile's x and never read */
        size_t nr = P - j0 < VN_TILE ? P - j0 : VN_TILE;
        for (size_t r = 0; r < nr; r++)
            for (size_t d = 0; d < D; d++) x[r * D + d] = v[(j0 + r) * D + d];
        double tot[VN_TILE] = {0};
        for (size_t i = 0; i < G; i++) {        /* each row: heads in order, c ascending */
            for (size_t b = 0; b < np; b++)       /* nr rounded up to whole kernel rows */
                vn_panel(x, (nr + VN_ROWS - 1) / VN_ROWS * VN_ROWS, D, wp + (i * np + b) * D * VN_PC, tot);
            for (size_t c = cr; c < C; c++)
                for (size_t r = 0; r < nr; r++) {
                    double a = 0;
                    for (size_t d = 0; d < D; d++) a += x[r * D + d] * (double)wo[(i * D + d) * C + c];
                    tot[r] += fabs(a);
                }
        }
        for (size_t r = 0; r < nr; r++) u[j0 + r] = tot[r] / (double)G;
    }
    free(x); free(wp);
    return 0;
}

const double *rp_shared_value_norms(rp_shared *s, size_t g, const float *v, const float *wo, size_t C)
{
    if (g >= s->Hkv) return NULL;
    if (s->vn[g]) return s->vn[g];
    double *u = malloc((s->P ? s->P : 1) * sizeof *u);
    if (!u || rp_value_norms(v, s->P, s->D, wo + g * s->G * s->D * C, C, s->G, u)) { free(u); return NULL; }
    return s->vn[g] = u;
}
