/* The parameter parser's list and path values (RP_LIST, RP_PATH; replay/sweep.c) through
 * per_layer, their only user: canonical text, round trip, grid expansion, and one clear error
 * line for each bad input (list syntax and range, missing or unusable files, bad ratio files
 * naming file and line). Hand-written cases. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "strategy.h"
#include "sweep.h"

static int fails = 0, checks = 0;

static void check(const char *what, int cond)
{
    checks++;
    if (!cond) { fails++; printf("FAIL %s\n", what); }
}

/* The line parses into one configuration whose canonical string is want (and parses back). */
static void check_canon(const char *line, const char *want)
{
    rp_sweep sw = { 0 }, again = { 0 };
    char err[1024] = "";
    checks++;
    if (sweep_add_line(&sw, line, "t", err, sizeof err) || sw.n != 1 || strcmp(sw.cfg[0].canon, want)) {
        fails++;
        printf("FAIL '%s': err '%s', canon '%s' (want '%s')\n", line, err, sw.n ? sw.cfg[0].canon : "", want);
    } else if (sweep_add_line(&again, sw.cfg[0].canon, "canon", err, sizeof err) || again.n != 1 ||
               strcmp(again.cfg[0].canon, want)) {
        fails++;
        printf("FAIL '%s' does not parse back to itself: %s\n", want, err);
    }
    sweep_free(&sw);
    sweep_free(&again);
}

static void check_err(const char *line, const char *needle)
{
    rp_sweep sw = { 0 };
    char err[1024] = "";
    int rc = sweep_add_line(&sw, line, "t", err, sizeof err);
    checks++;
    if (rc == 0 || !strstr(err, needle) || strchr(err, '\n')) {
        fails++;
        printf("FAIL '%s': rc %d, err '%s' (want one line with '%s')\n", line, rc, err, needle);
    }
    sweep_free(&sw);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) { perror(path); exit(1); }
    fputs(text, f);
    fclose(f);
}

int main(void)
{
    char dir[] = "/tmp/kv_param_text_XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    char path[512], line[1200], want[1200];

    /* lists: canonical numbers, '/' joins, commas still expand the grid */
    check_canon("per_layer ratios=.20/0.5/1e-1/0", "per_layer press=knorm ratios=0.2/0.5/0.1/0 file=none fit=exact");
    check_canon("per_layer ratios=1 fit=interp press=snapkv", "per_layer press=snapkv ratios=1 file=none fit=interp");
    {
        rp_sweep sw = { 0 };
        char err[1024] = "";
        check("a comma list of lists expands",
              sweep_add_line(&sw, "per_layer ratios=0.1/0.2,0.3/0.4 fit=interp", "t", err, sizeof err) == 0 && sw.n == 2 &&
              strstr(sw.cfg[1].canon, "ratios=0.3/0.4 ") != NULL);
        check("the count reaches configure as the value", sw.n == 2 && sw.cfg[0].part[0].values[1] == 2);
        sweep_free(&sw);
    }
    check_err("per_layer ratios=0.2//0.5", "ratios=0.2//0.5: number 2 is empty");
    check_err("per_layer ratios=/0.5", "number 1 is empty");
    check_err("per_layer ratios=0.5/", "number 2 is empty");
    check_err("per_layer ratios=0.2/x/0.5", "number 2 'x' is not a finite number");
    check_err("per_layer ratios=0.2/nan", "number 2 'nan' is not a finite number");
    check_err("per_layer ratios=0.2/1.5", "number 2 (1.5) out of range [0, 1]");
    check_err("per_layer ratios=-0.1", "number 1 (-0.1) out of range [0, 1]");
    {
        char *big = malloc(1100 * 2 + 32);
        size_t n = (size_t)sprintf(big, "per_layer ratios=0");
        for (int i = 0; i < 1024; i++) n += (size_t)sprintf(big + n, "/0");
        check_err(big, "ratios=: 1025 numbers, more than 1024");
        free(big);
    }
    check_err("per_layer", "give one of ratios=R0/R1/... or file=PATH");

    /* paths: the file must exist and be a regular file; relative to a sweep file's directory */
    snprintf(path, sizeof path, "%s/curve.ratios", dir);
    write_file(path, "# curve\n0.25\n\n  0.5  # middle\n0.75\n");
    snprintf(line, sizeof line, "per_layer file=%s", path);
    snprintf(want, sizeof want, "per_layer press=knorm ratios=none file=%s fit=exact", path);
    check_canon(line, want);
    snprintf(line, sizeof line, "per_layer file=%s/missing", dir);
    check_err(line, "missing: No such file or directory");
    snprintf(line, sizeof line, "per_layer file=%s", dir);
    check_err(line, "is not a regular file");
    snprintf(line, sizeof line, "per_layer file=%s ratios=0.1", path);
    check_err(line, "give one of ratios=R0/R1/... or file=PATH");
    {
        char sweep[600];
        snprintf(sweep, sizeof sweep, "%s/a.sweep", dir);
        write_file(sweep, "per_layer file=curve.ratios press=random\n");
        rp_sweep sw = { 0 };
        char err[1024] = "";
        snprintf(want, sizeof want, "per_layer press=random ratios=none file=%s fit=exact", path);
        check("a relative path in a sweep file is relative to its directory",
              sweep_add_file(&sw, sweep, err, sizeof err) == 0 && sw.n == 1 && !strcmp(sw.cfg[0].canon, want));
        if (err[0]) printf("  (%s)\n", err);
        sweep_free(&sw);
    }
    /* bad ratio files: one line naming the file and the line */
    struct { const char *text, *needle; } bad[] = {
        { "0.2\nabc\n", "bad.ratios:2: 'abc' is not one number" },
        { "0.2\n0.3 0.4\n", "bad.ratios:2: '0.3 0.4' is not one number" },
        { "# c\n\n1.5\n", "bad.ratios:3: ratio 1.5 out of range [0, 1]" },
        { "# only comments\n\n", "bad.ratios: no ratio" },
        { "", "bad.ratios: no ratio" },
    };
    snprintf(path, sizeof path, "%s/bad.ratios", dir);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(path, bad[i].text);
        snprintf(line, sizeof line, "per_layer file=%s", path);
        check_err(line, bad[i].needle);
    }

    /* every inner press per_layer offers exists and configures with its defaults */
    {
        const rp_strategy *pl = rp_strategy_find("per_layer");
        const char *ch = pl ? pl->params[0].choices : "";
        for (const char *p = ch; *p;) {
            size_t k = strcspn(p, "|");
            rp_sweep sw = { 0 };
            char err[1024] = "", l2[256];
            snprintf(l2, sizeof l2, "per_layer press=%.*s ratios=0.5 fit=interp", (int)k, p);
            checks++;
            if (sweep_add_line(&sw, l2, "t", err, sizeof err) || sw.n != 1) { fails++; printf("FAIL '%s': %s\n", l2, err); }
            sweep_free(&sw);
            p += k + (p[k] == '|');
        }
        check("per_layer offers inner presses", pl && strlen(ch) > 0);
    }

    /* the defaults of a wrapped press, as the parser reads them */
    {
        double v[RP_MAX_PARAMS];
        char err[256] = "";
        const rp_strategy *s = rp_strategy_find("snapkv");
        check("sweep_param_defaults(snapkv)", s && sweep_param_defaults(s, v, err, sizeof err) == 0 && v[0] == 0 &&
                                                  v[1] == -1 && v[6] == 0);
    }

    remove(path);
    snprintf(path, sizeof path, "%s/curve.ratios", dir);
    remove(path);
    snprintf(path, sizeof path, "%s/a.sweep", dir);
    remove(path);
    rmdir(dir);
    printf("%d checks, %d failures\n", checks, fails);
    return fails ? 1 : 0;
}
