"""kvreport golden outputs on tests/fixtures/results_small (see make_results_small.py).

- tables (Markdown, CSV, LaTeX, stats.csv, comparisons.csv) compared with
  tests/fixtures/report_small/tables/ token by token: numbers with a relative tolerance of
  1e-9 (absolute 1e-12), everything else exactly; the worst numeric difference is reported;
- generated gnuplot scripts compared byte for byte with tests/fixtures/report_small/figures/;
- report.md carries the guards planted in the fixture (not applied, impossible interval,
  the loud NLL warning).
KV_UPDATE_GOLDEN=1 rewrites the golden copies instead (review the diff before committing).
Runs with --no-render semantics: PATH without gnuplot, so no rendering cost here.
"""
import os
import re
import shutil
import subprocess
import sys

BIN = os.environ.get("BIN", "bin")
ROOT = os.environ.get("KV_ROOT", os.getcwd())
TMP = os.environ.get("KV_TMP") or "/tmp/kvreport_golden"
os.makedirs(TMP, exist_ok=True)
PROG = os.path.join(BIN, "kvreport")
FIX = os.path.join(ROOT, "tests", "fixtures", "results_small")
GOLD = os.path.join(ROOT, "tests", "fixtures", "report_small")
if not os.access(PROG, os.X_OK):
    print("FAIL: %s not built" % PROG)
    sys.exit(1)

out = os.path.join(TMP, "report")
shutil.rmtree(out, ignore_errors=True)
env = dict(os.environ, PATH="/nonexistent")  # no gnuplot: scripts written, nothing rendered
r = subprocess.run([PROG, FIX, "-o", out, "--plots", os.path.join(ROOT, "plots"), "--seed", "12345",
                    "--bootstrap", "2000"], capture_output=True, text=True, env=env)
print(r.stderr.strip())
if r.returncode != 0:
    print("FAIL: kvreport exited %d" % r.returncode)
    sys.exit(1)

TABLES = ["summary.md", "summary.csv", "summary.tex", "pivot.md", "pivot.csv", "pivot.tex", "stats.csv", "comparisons.csv"]
SCRIPTS = sorted(f for f in os.listdir(os.path.join(out, "figures")) if f.endswith(".gp"))
WANT_SCRIPTS = ["heatmap.gp", "layer_budget.gp", "layer_profile.gp", "pareto_logit_kl.gp",
                "pareto_nll_delta.gp", "pareto_out_cos.gp", "per_seq.gp", "ranked.gp", "reliability.gp"]

if os.environ.get("KV_UPDATE_GOLDEN") == "1":
    for sub, names in (("tables", TABLES), ("figures", SCRIPTS)):
        os.makedirs(os.path.join(GOLD, sub), exist_ok=True)
        for n in names:
            shutil.copy(os.path.join(out, sub, n), os.path.join(GOLD, sub, n))
    print("golden files rewritten under", GOLD)
    sys.exit(0)

fails = []
worst = (0.0, "")
NUM = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def tokens(text):
    """Split into alternating non-number text and numbers."""
    out, pos = [], 0
    for m in NUM.finditer(text):
        out.append(("s", text[pos:m.start()]))
        out.append(("n", m.group()))
        pos = m.end()
    out.append(("s", text[pos:]))
    return out


def compare_text(name, got, want):
    global worst
    gl, wl = got.splitlines(), want.splitlines()
    if len(gl) != len(wl):
        fails.append("%s: %d lines, golden has %d" % (name, len(gl), len(wl)))
        return
    for i, (g, w) in enumerate(zip(gl, wl)):
        tg, tw = tokens(g), tokens(w)
        if len(tg) != len(tw) or any(a[0] != b[0] for a, b in zip(tg, tw)):
            fails.append("%s:%d: structure differs:\n  got  %s\n  want %s" % (name, i + 1, g, w))
            continue
        for (k, a), (_, b) in zip(tg, tw):
            if k == "s":
                if a != b:
                    fails.append("%s:%d: text differs: %r vs %r" % (name, i + 1, a, b))
                continue
            x, y = float(a), float(b)
            err = abs(x - y)
            tol = 1e-12 + 1e-9 * abs(y)
            if err / tol > worst[0]:
                worst = (err / tol, "%s:%d %s vs %s" % (name, i + 1, a, b))
            if err > tol:
                fails.append("%s:%d: %s vs golden %s" % (name, i + 1, a, b))


for n in TABLES:
    g = os.path.join(out, "tables", n)
    w = os.path.join(GOLD, "tables", n)
    if not os.path.exists(w):
        fails.append("golden %s missing (KV_UPDATE_GOLDEN=1 to create)" % w)
        continue
    compare_text(n, open(g).read(), open(w).read())

if SCRIPTS != WANT_SCRIPTS:
    fails.append("scripts written: %s, expected %s" % (SCRIPTS, WANT_SCRIPTS))
for n in SCRIPTS:
    g, w = os.path.join(out, "figures", n), os.path.join(GOLD, "figures", n)
    if not os.path.exists(w):
        fails.append("golden %s missing" % w)
    elif open(g, "rb").read() != open(w, "rb").read():
        fails.append("%s differs from the golden script byte for byte (diff %s %s)" % (n, g, w))

# the .dat files exist beside the scripts, and no script names an absolute path
for n in SCRIPTS:
    stem = n[:-3]
    if not os.path.getsize(os.path.join(out, "figures", stem + ".dat")):
        fails.append("%s.dat is empty" % stem)
    if "/" + "tmp" in open(os.path.join(out, "figures", n)).read():
        fails.append("%s names a temporary path" % n)

rep = open(os.path.join(out, "report.md")).read()
for want in ["NLL BELOW THE FULL CACHE", "must be explained, not celebrated",
             "quant kbits=8 vbits=8 group=32 residual=0", "**Compression not applied**",
             "random keep=1 seed=0", "Interval includes impossible values", "out_cos",
             "gnuplot was not found on PATH", "trace_sha256", "3f3f3f", "tables/summary.tex",
             "figures/pareto_logit_kl.gp", "Skipped: the token count needs the trace"]:
    if want not in rep:
        fails.append("report.md lacks %r" % want)
if "NaN" in rep or "nan" in rep.split():
    fails.append("report.md prints NaN")
if not os.path.exists(os.path.join(out, ".kvreport")):
    fails.append("report marker missing")

# ---- the pipeline against scipy: summary.csv recomputed from the fixture's per_seq.csv ----
try:
    import csv
    import numpy as np
    from scipy import stats
    rows = list(csv.DictReader(open(os.path.join(FIX, "per_seq.csv"))))
    summ = list(csv.DictReader(open(os.path.join(out, "tables", "summary.csv"))))
    configs = [r["config"] for r in summ]

    def series(cfg, col):
        return np.array([float(r[col]) for r in rows if r["config"] == cfg])
    worst_ref = 0.0
    for metric in ("logit_kl", "out_cos", "top1_agree"):
        raw = []
        for cfg in configs:
            x = series(cfg, metric)
            lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x)) if x.std() > 0 else (x.mean(), x.mean())
            row = summ[configs.index(cfg)]
            for got, want in ((row[metric + "_mean"], x.mean()), (row[metric + "_lo"], lo), (row[metric + "_hi"], hi)):
                err = abs(float(got) - want)
                worst_ref = max(worst_ref, err / (1e-12 + 1e-7 * abs(want)))
                if err > 1e-12 + 1e-7 * abs(want):
                    fails.append("summary.csv %s %s: %s vs scipy %.9g" % (cfg, metric, got, want))
            if cfg != "full":
                d = x - series("full", metric)
                if d.std() > 0:
                    raw.append((cfg, stats.ttest_rel(x, series("full", metric)).pvalue))
                elif d.mean() != 0:
                    raw.append((cfg, 0.0))
                else:
                    raw.append((cfg, 1.0))
        # Holm by hand over the configurations compared
        order = sorted(range(len(raw)), key=lambda i: raw[i][1])
        run_max, adj = 0.0, {}
        for j, i in enumerate(order):
            run_max = max(run_max, min(1.0, (len(raw) - j) * raw[i][1]))
            adj[raw[i][0]] = run_max
        for cfg, p in adj.items():
            got = float(summ[configs.index(cfg)][metric + "_p_holm"])
            if abs(got - p) > 1e-12 + 1e-6 * p:
                fails.append("summary.csv %s %s p_holm %.9g vs scipy+Holm %.9g" % (cfg, metric, got, p))
    print("summary.csv vs scipy: worst |err|/tol %.3g" % worst_ref)
except ImportError:
    print("scipy not available: pipeline cross-check skipped")

print("worst numeric difference / tolerance: %.3g (%s)" % worst)
if fails:
    print("\n".join(fails))
    print("FAIL: %d mismatches" % len(fails))
    sys.exit(1)
print("tables match the golden copies numerically; %d scripts byte for byte" % len(SCRIPTS))
