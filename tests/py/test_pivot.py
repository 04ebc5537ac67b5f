"""kvreport table --pivot, sweep labels and display names, configuration look-up.

1. The pivot of tests/fixtures/results_small against an independent reference: per
   configuration the mean of per_seq.csv over sequences and its 95% t-interval (numpy, scipy's
   t quantile), cells placed by nominal keep (configs.csv) or by nearest measured ratio within
   the tolerance (computed here from per_seq.csv), best per column = extreme mean by the
   metric's direction among applied cells, none in a column of one cell. Tolerance: values are
   printed with %.9g (relative rounding 5e-10) from double sums of a few terms: 1e-8 relative.
2. Labels end to end on traces/sample.h5: label=, {KEY}, a label shared by budgets; configs.csv's
   label column; kvreport names and pivot rows; a sharded run merged keeps the labels; results
   without the column still read (the fixture).
3. Look-up and suggestions: --baseline by another spelling, by label; near misses named.
"""
import csv
import math
import os
import subprocess
import sys

import numpy as np
from scipy import stats

from testhelp import check, failures, sh

BIN = os.environ.get("BIN", "bin")
ROOT = os.environ.get("KV_ROOT", os.getcwd())
TMP = os.environ.get("KV_TMP") or "/tmp/kv_pivot"
os.makedirs(TMP, exist_ok=True)
K = os.path.join(BIN, "kvreport")
R = os.path.join(BIN, "kvreplay")
FIX = os.path.join(ROOT, "tests", "fixtures", "results_small")
TRACE = os.path.join(ROOT, "traces", "sample.h5")
REL = 1e-8


def close(a, b):
    return abs(a - b) <= REL * max(abs(a), abs(b)) + 1e-15


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def table(dirs, *opts, ok=True):
    return sh([K, "table", *dirs, "--pivot", *opts], ok=ok)


# ---- 1. pivot contents against numpy -----------------------------------------------------------
configs = read_csv(os.path.join(FIX, "configs.csv"))
per_seq = read_csv(os.path.join(FIX, "per_seq.csv"))
summary = {r["config"]: r for r in read_csv(os.path.join(FIX, "summary.csv"))}


def ref_stat(config, metric):
    x = np.array([float(r[metric]) for r in per_seq if r["config"] == config and r[metric] != ""])
    n = len(x)
    mean = x.mean()
    hw = stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n) if n > 1 else 0.0
    return n, mean, mean - hw, mean + hw


def row_key(config):
    return " ".join(w for w in config.split(" ") if not w.startswith(("keep=", "budget=")))


def check_cells(rows, want, what, lower_better):
    """rows: pivot CSV rows; want: {(rowkey, column): config}."""
    got = {(row_key(r["config"]), float(r["column"])): r for r in rows}
    check(set(got) == set(want), "%s: cells %s (want %s)" % (what, sorted(got), sorted(want)))
    for key, cfg in want.items():
        r = got.get(key)
        if r is None:
            continue
        check(r["config"] == cfg, "%s %s: config %s" % (what, key, r["config"]))
        n, mean, lo, hi = ref_stat(cfg, "logit_kl")
        check(int(r["n"]) == n and close(float(r["mean"]), mean) and close(float(r["t_lo"]), lo)
              and close(float(r["t_hi"]), hi),
              "%s %s: mean %s [%s, %s] vs numpy %.9g [%.9g, %.9g]" % (what, key, r["mean"], r["t_lo"], r["t_hi"], mean, lo, hi))
    # best per column, from the reference means
    for col in sorted({k[1] for k in want}):
        cells = [(k, c) for k, c in want.items() if k[1] == col and summary[c]["not_applied"] == "0"]
        means = {k: ref_stat(c, "logit_kl")[1] for k, c in cells}
        best = set()
        if len(means) >= 2:
            b = min(means.values()) if lower_better else max(means.values())
            best = {k for k, m in means.items() if m == b}
        got_best = {k for k in want if k[1] == col and k in got and got[k]["best"] == "1"}
        check(got_best == best, "%s column %g: best %s (want %s)" % (what, col, sorted(got_best), sorted(best)))


# keep columns: every keep budget of the fixture
want = {}
for c in configs:
    if c["budget_kind"] == "keep":
        want[(row_key(c["config"]), float(c["budget_value"]))] = c["config"]
r = table([FIX], "--metric", "logit_kl", "--format", "csv")
check_cells(list(csv.DictReader(r.stdout.splitlines())), want, "keep pivot", True)
rows = list(csv.DictReader(r.stdout.splitlines()))
check(any(x["not_applied"] == "1" and x["best"] == "0" for x in rows), "the not-applied cell is marked and not best")

# --cols selects columns
r = table([FIX], "--metric", "logit_kl", "--format", "csv", "--cols", "0.5")
sel = {k: v for k, v in want.items() if k[1] == 0.5}
check_cells(list(csv.DictReader(r.stdout.splitlines())), sel, "--cols 0.5", True)

# ratio columns: nearest target within the tolerance, by measured mean ratio
ratio = {c["config"]: np.mean([float(p["ratio"]) for p in per_seq if p["config"] == c["config"]]) for c in configs}
for tol in (1.1, 1.3):
    targets = [2.0, 4.0]
    want = {}
    for c in configs:
        x = ratio[c["config"]]
        d = [abs(math.log(x / t)) for t in targets]
        k = int(np.argmin(d))
        if d[k] <= math.log(tol):
            want[(row_key(c["config"]), targets[k])] = c["config"]
    r = table([FIX], "--metric", "logit_kl", "--format", "csv", "--columns", "ratio", "--cols", "2,4", "--tol", str(tol))
    check_cells(list(csv.DictReader(r.stdout.splitlines())), want, "ratio pivot tol %g" % tol, True)
check(any(k[0].startswith("quant") for k in want), "tol 1.3 takes quant (ratio 1.6) into the 2x column")

# direction: out_cos is higher-better (arrow up, best = largest mean)
r = table([FIX], "--metric", "out_cos")
check("↑" in r.stdout.splitlines()[0], "out_cos header arrow up")
snap = [l for l in r.stdout.splitlines() if l.startswith("| snapkv")]
check(len(snap) == 1 and snap[0].count("**") == 4, "snapkv best in both budget columns in bold: %s" % snap)
r = table([FIX], "--metric", "logit_kl", "--format", "tex")
check("\\textbf{" in r.stdout and "\\label{tab:kvtrace-pivot-logit-kl-keep}" in r.stdout and "$\\downarrow$" in r.stdout,
      "LaTeX: bold best, a label naming metric and columns, the arrow")
check("longtable" not in r.stdout, "3 rows: a table float, not a longtable")
check("$^\\dagger$" in r.stdout and "compression not applied" in r.stdout, "the dagger is defined where a cell uses it")
r = table([FIX], "--metric", "logit_kl", "--format", "tex", "--cols", "0.25,0.5")
check("dagger" not in r.stdout, "no dagger defined when no cell uses it")

# errors: a column no configuration has, bad options
r = table([FIX], "--cols", "0.3", ok=False)
check(r.returncode == 1 and "keep columns: 0.25, 0.5, 1" in r.stderr, "absent column named with the available ones: " + r.stderr.strip())
r = table([FIX], "--metric", "logit_k", ok=False)
check(r.returncode == 2 and "did you mean 'logit_kl'" in r.stderr, "metric near miss: " + r.stderr.strip().split("\n")[0])
r = table([FIX], "--colums", "keep", ok=False)
check(r.returncode == 2 and "did you mean '--columns'" in r.stderr, "option near miss: " + r.stderr.strip().split("\n")[0])
r = table([FIX], "--columns", "ratios", ok=False)
check(r.returncode == 2 and "did you mean 'ratio'" in r.stderr, "choice near miss: " + r.stderr.strip().split("\n")[0])
out = os.path.join(TMP, "p.md")
table([FIX], "-o", out)
check(os.path.exists(out) and open(out).read().startswith("| strategy"), "-o writes the file")

# ---- 2. labels end to end ------------------------------------------------------------------------
sweep = os.path.join(TMP, "labels.sweep")
with open(sweep, "w") as f:
    f.write("full label=Full\n"
            "quant kbits=2,4 vbits=2 residual=32 label=\"KIVI {kbits}bit\"   # placeholders\n"
            "snapkv keep=0.25,0.5 preset=factory label=SnapKV\n"
            "streaming keep=0.25,0.5\n"
            "streaming keep=0.25 reindex=1\n")
run = os.path.join(TMP, "run")
sh([R, "run", TRACE, "--sweep", sweep, "--seqs", "0,1,2,3", "-o", run])
cfg = read_csv(os.path.join(run, "configs.csv"))
labels = {c["config"]: c["label"] for c in cfg}
check([c["label"] for c in cfg] == ["Full", "KIVI 2bit", "KIVI 4bit", "SnapKV", "SnapKV", "", "", ""],
      "configs.csv labels: %s" % [c["label"] for c in cfg])
check(all("label" not in c["config"] for c in cfg), "labels are not part of the canonical strings")
# shards merged keep the labels (configs.csv byte-identical to the unsharded run's)
for i in range(2):
    sh([R, "run", TRACE, "--sweep", sweep, "--seqs", "0,1,2,3", "--shard", "%d/2" % i, "-o", os.path.join(TMP, "s%d" % i)])
sh([R, "merge", "-o", os.path.join(TMP, "merged"), os.path.join(TMP, "s0"), os.path.join(TMP, "s1")])
check(open(os.path.join(TMP, "merged", "configs.csv")).read() == open(os.path.join(run, "configs.csv")).read(),
      "kvreplay merge keeps the label column")

rep = os.path.join(TMP, "rep")
env = dict(os.environ, PATH="/nonexistent")
r = subprocess.run([K, run, "-o", rep, "--no-figures", "--baseline", "streaming keep=0.25"], capture_output=True, text=True, env=env)
check(r.returncode == 0, "--baseline 'streaming keep=0.25' (not canonical) is accepted: " + r.stderr.strip().split("\n")[-1])
names = {x["config"]: x["name"] for x in read_csv(os.path.join(rep, "tables", "summary.csv"))}
want_names = {"Full", "KIVI 2bit", "KIVI 4bit", "SnapKV keep=0.25", "SnapKV keep=0.5", "streaming keep=0.25",
              "streaming keep=0.5", "streaming keep=0.25 reindex=1"}
check(set(names.values()) == want_names, "display names: %s" % sorted(names.values()))
md = open(os.path.join(rep, "report.md")).read()
check("against the baseline `streaming keep=0.25 sinks=4 reindex=0`" in open(os.path.join(rep, "tables", "summary.md")).read(),
      "the baseline resolved to its canonical string")
check("| SnapKV |" in open(os.path.join(rep, "tables", "pivot.md")).read(), "the pivot row of a shared label is the label")
check("### By strategy and budget" in md, "report.md includes the pivot")
pv = list(csv.DictReader(table([run], "--format", "csv").stdout.splitlines()))
check(sorted({x["row"] for x in pv}) == ["SnapKV", "streaming", "streaming reindex=1"], "pivot rows: %s" % sorted({x["row"] for x in pv}))
r = subprocess.run([K, run, "-o", os.path.join(TMP, "rep2"), "--no-figures", "--baseline", "KIVI 4bit"], capture_output=True, text=True, env=env)
check(r.returncode == 0, "--baseline by label")
r = subprocess.run([K, run, "-o", os.path.join(TMP, "rep3"), "--baseline", "streaming keep=0.26"], capture_output=True, text=True, env=env)
check(r.returncode == 1 and ("did you mean 'streaming keep=0.25 sinks=4 reindex=0'" in r.stderr
                            or "did you mean 'streaming keep=0.25'" in r.stderr),
      "near miss of a configuration: " + r.stderr.strip())
r = subprocess.run([K, run, "-o", os.path.join(TMP, "rep3"), "--heatmap-config", "snapvk keep=0.5"], capture_output=True, text=True, env=env)
check(r.returncode == 1 and "did you mean" in r.stderr, "misspelt strategy in a configuration: " + r.stderr.strip())
r = subprocess.run([K, run, "-o", os.path.join(TMP, "rep3"), "--bootstap", "10"], capture_output=True, text=True, env=env)
check(r.returncode == 2 and "did you mean '--bootstrap'" in r.stderr, "option near miss: " + r.stderr.strip().split("\n")[0])

# results: a label column is read when present and checked like the sweep's labels
import shutil
lab = os.path.join(TMP, "labelled")
shutil.copytree(FIX, lab)
rows = read_csv(os.path.join(lab, "configs.csv"))
with open(os.path.join(lab, "configs.csv"), "w") as f:
    f.write("config_id,config,family,budget_kind,budget_value,label\n")
    for x in rows:
        f.write("%s,%s,%s,%s,%s,%s\n" % (x["config_id"], x["config"], x["family"], x["budget_kind"], x["budget_value"],
                                         "Stream" if x["family"] == "streaming" else ""))
pv = list(csv.DictReader(table([lab], "--format", "csv").stdout.splitlines()))
check({x["row"] for x in pv} == {"Stream", "snapkv", "random"} and
      {x["name"] for x in pv if x["row"] == "Stream"} == {"Stream keep=0.25", "Stream keep=0.5"},
      "a label column in results: rows %s" % sorted({x["row"] for x in pv}))
with open(os.path.join(lab, "configs.csv")) as f:
    text = f.read()
with open(os.path.join(lab, "configs.csv"), "w") as f:
    f.write(text.replace(",Stream\n", ",it's\n", 1))
r = table([lab], ok=False)
check(r.returncode == 1 and "configs.csv:3: column label" in r.stderr, "a label with a quote refused with file:line: " + r.stderr.strip())

# sweep errors name the line
bad = os.path.join(TMP, "bad.sweep")
with open(bad, "w") as f:
    f.write("full\nquant kbits=2,4 label=KIVI\n")
r = sh([R, "run", TRACE, "--sweep", bad, "-o", os.path.join(TMP, "bad")], ok=False)
check(r.returncode != 0 and "bad.sweep:2:" in r.stderr and "already names" in r.stderr, "a label naming two configurations: " + r.stderr.strip())
with open(bad, "w") as f:
    f.write("snapkv keep=0.5 windw=8\n")
r = sh([R, "run", TRACE, "--sweep", bad, "-o", os.path.join(TMP, "bad")], ok=False)
check(r.returncode != 0 and "did you mean 'window'" in r.stderr, "parameter near miss: " + r.stderr.strip())

if failures:
    print("%d failure(s)" % len(failures))
    sys.exit(1)
print("all pivot/label checks passed")
