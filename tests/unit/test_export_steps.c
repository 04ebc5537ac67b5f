/* The exporter's per-position states (replay/export.c, traces/EXPORT.md version 2), driven by
 * hand, without the engine: one layer, one kv head, D = 2, n = 8, split P = 4, base rows
 * k[e] = (e + 1, 10 e), v[e] = (-e, e + 0.5). Each query t in [P, n) sees the first t + 1
 * entries of the base with some rows changed, as an encoder would:
 *   entry 0: K doubled from t = 5 on                -> encoded_from [5, 0]
 *   entry 1: V negated from t = 4 (its first query)  -> [0, 0]
 *   entry 2: K + 1 from t = 6, V + 1 from t = 7      -> [6, 7] (separate schedules)
 *   entry 5: K - 1 from t = 6 (first seen at t = 5)  -> [6, 0]
 *   entry 6: K - 1 from t = 6 (its own position)     -> [0, 0]
 *   others unchanged                                 -> [0, 0]
 * Checked from the written file: encoded_from, the rows (as the last position saw them),
 * has_pre_rows = 0; a base whose rows were modified (merges) -> pre_k/pre_v = the base rows;
 * a row that changes a second time -> the hook answers 1 (not exportable); a configuration
 * that is not time-dependent -> encoded_from all 0, the hook never needed.
 */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "export.h"

enum { N = 8, P = 4, D = 2 };
static int fails = 0, checks = 0;

static void check(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

static void base_cache(rp_cache *c, int modified)
{
    static int32_t pos[N], mult[N];
    static float k[N * D], v[N * D];
    for (int e = 0; e < N; e++) {
        pos[e] = e; mult[e] = 1;
        k[e * D] = (float)(e + 1); k[e * D + 1] = 10.0f * (float)e;
        v[e * D] = (float)-e; v[e * D + 1] = (float)e + 0.5f;
    }
    memset(c, 0, sizeof *c);
    c->n = c->cap = N; c->D = D; c->pos = pos; c->mult = mult; c->k = k; c->v = v;
    c->modified = modified;
}

/* The rows query t sees (the schedule of the header); twice: entry 3's K changes at t = 5
 * and again at t = 6. */
static void view_at(const rp_cache *b, size_t t, int twice, rp_cache *w, float *k, float *v)
{
    *w = *b;
    w->n = t + 1;
    memcpy(k, b->k, sizeof(float) * N * D);
    memcpy(v, b->v, sizeof(float) * N * D);
    w->k = k; w->v = v;
    if (t >= 5) k[0] *= 2.0f;
    v[1 * D] = -v[1 * D];
    if (t >= 6) k[2 * D] += 1.0f;
    if (t >= 7) v[2 * D + 1] += 1.0f;
    if (t >= 6) { k[5 * D] -= 1.0f; k[6 * D] -= 1.0f; }
    if (twice && t >= 5) k[3 * D] += t >= 6 ? 2.0f : 1.0f;
}

static int read_ds(hid_t f, const char *name, hid_t type, void *buf)
{
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) return -1;
    int rc = H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0 ? -1 : 0;
    H5Dclose(d);
    return rc;
}

static long long read_attr(hid_t f, const char *obj, const char *name)
{
    long long v = -1;
    hid_t a = H5Aopen_by_name(f, obj, name, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0) return -1;
    if (H5Aread(a, H5T_NATIVE_LLONG, &v) < 0) v = -1;
    H5Aclose(a);
    return v;
}

/* One sequence of configuration 0 ("quant ...", time-dependent) and 1 ("full"). Returns the
 * step hook's first non-zero answer, 0 when the file was written. */
static int run_export(const char *path, int modified, int twice)
{
    rp_sweep sw = { 0 };
    char err[512];
    int rc = -1;
    if (sweep_add_line(&sw, "quant kbits=2 vbits=2 group=2 residual=2", "t", err, sizeof err) ||
        sweep_add_line(&sw, "full", "t", err, sizeof err)) {
        printf("sweep: %s\n", err);
        return -1;
    }
    kv_info in;
    memset(&in, 0, sizeof in);
    in.n_layers = 1; in.n_heads = 1; in.n_kv_heads = 1; in.head_dim = D;
    rp_export_prov pv = { .trace = "t.h5", .trace_sha256 = "0", .model = "m", .mode = "prefill",
                          .decode = N - P, .eval_from = 0 };
    rp_export *x = NULL;
    if (rp_export_open(path, &sw, NULL, &in, &pv, &x, err, sizeof err)) {
        printf("open: %s\n", err);
        sweep_free(&sw);
        return -1;
    }
    rp_cache b, w;
    float k[N * D], v[N * D];
    base_cache(&b, modified);
    for (size_t t = P; t < N; t++) {
        view_at(&b, t, twice, &w, k, v);
        int r = rp_export_step_hook(x, 0, 0, 0, 0, t, N, P, &w, &b);
        if (r) { rc = r; goto done; }
    }
    if (rp_export_hook(x, 0, 0, 0, 0, N, P, &w) || rp_export_hook(x, 1, 0, 0, 0, N, P, &b) ||
        rp_export_write_seq(x, 0, err, sizeof err) || rp_export_close(x, err, sizeof err)) {
        printf("write: %s\n", err);
        goto done;
    }
    rc = 0;
done:
    rp_export_free(x);
    sweep_free(&sw);
    return rc;
}

int main(void)
{
    char dir[] = "/tmp/kv-export-steps-XXXXXX", path[256];
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    snprintf(path, sizeof path, "%s/e.h5", dir);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);

    check("export with per-position states written", run_export(path, 0, 0) == 0);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    check("export file opens", f >= 0);
    if (f >= 0) {
        int32_t ef[N * 2];
        float k[N * D], v[N * D];
        static const int32_t want[N * 2] = { 5, 0, 0, 0, 6, 7, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0 };
        check("version 2", read_attr(f, "/", "kvtrace_export_version") == 2);
        check("config 0 time_dependent", read_attr(f, "/configs/0", "time_dependent") == 1);
        check("config 1 not time_dependent", read_attr(f, "/configs/1", "time_dependent") == 0);
        check("encoded_from read", read_ds(f, "/configs/0/0/encoded_from", H5T_NATIVE_INT32, ef) == 0);
        check("encoded_from = the first query seeing each changed K / V row (0: at its first query or never)",
              !memcmp(ef, want, sizeof want));
        for (int i = 0; i < N * 2; i++)
            if (ef[i] != want[i]) printf("  entry %d side %d: %d, want %d\n", i / 2, i % 2, ef[i], want[i]);
        check("rows read", read_ds(f, "/configs/0/0/k", H5T_NATIVE_FLOAT, k) == 0 &&
                           read_ds(f, "/configs/0/0/v", H5T_NATIVE_FLOAT, v) == 0);
        check("rows as the last position saw them", k[0] == 2.0f && k[2 * D] == 4.0f && v[2 * D + 1] == 3.5f &&
                                                    v[1 * D] == 1.0f && k[5 * D] == 5.0f && k[7 * D] == 8.0f);
        check("no pre rows without a modified base", read_attr(f, "/configs/0/0", "has_pre_rows") == 0 &&
                                                     !H5Lexists(f, "/configs/0/0/pre_k", H5P_DEFAULT));
        check("config 1 (full): no rows, no encoded_from", read_attr(f, "/configs/1/0", "has_rows") == 0 &&
                                                          !H5Lexists(f, "/configs/1/0/encoded_from", H5P_DEFAULT));
        H5Fclose(f);
    }
    unlink(path);

    check("modified base: written", run_export(path, 1, 0) == 0);
    f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f >= 0) {
        float pk[N * D], pv[N * D];
        rp_cache b;
        base_cache(&b, 1);
        check("modified base: has_pre_rows", read_attr(f, "/configs/0/0", "has_pre_rows") == 1);
        check("modified base: pre rows read", read_ds(f, "/configs/0/0/pre_k", H5T_NATIVE_FLOAT, pk) == 0 &&
                                              read_ds(f, "/configs/0/0/pre_v", H5T_NATIVE_FLOAT, pv) == 0);
        check("modified base: pre_k/pre_v = the rows before encoding",
              !memcmp(pk, b.k, sizeof pk) && !memcmp(pv, b.v, sizeof pv));
        H5Fclose(f);
    } else {
        check("modified base: file opens", 0);
    }
    unlink(path);

    check("a row that changes a second time: not exportable (1)", run_export(path, 0, 1) == 1);
    check("... and no file left", access(path, F_OK) != 0);
    rmdir(dir);
    printf("%d/%d checks passed\n", checks - fails, checks);
    return fails != 0;
}
