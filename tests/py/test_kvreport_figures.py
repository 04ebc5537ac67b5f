#!/usr/bin/python3
"""kvreport figure data against the results, recomputed here from configs.csv, per_seq.csv,
calib.csv and tables/stats.csv (no gnuplot needed: PATH without it, scripts and data only).

A real sweep on traces/sample.h5 (quant over kbits x vbits x residual, several eviction
families at three budgets): 
- pareto_* with --pareto-all: every line is one family whose configurations differ in exactly
  one parameter; at most 8 lines per panel, every line in one panel; y on a log scale exactly
  when the drawn values (1 - value for cosines) are positive and span more than two decades,
  on a symmetric log scale when they have both signs and their magnitudes span more than two
  decades, linear otherwise; the bars are the bootstrap interval of tables/stats.csv; the
  ringed set is the Pareto set under "differences count only when the 95% intervals are
  disjoint";
- pareto_* by default: one panel, at most 8 lines, each a line of the --pareto-all figure, one
  per family: the families whose best line has the fewest dominators at its best point
  (recomputed here), the rest named in the caption; at most 4.5 in tall;
- ranked / per_seq: every configuration's ratio within 15% of the target (the median ratio
  of the compressed configurations); per_seq's points are exactly per_seq.csv's values;
- position: the ranked figure's configurations (at most 8) with their per_pos.csv logit KL,
  averaged in 16 bins of equal width when there are more offsets (weighted by n_seq); and
  per_pos.csv's n_seq-weighted mean over offsets equals per_seq.csv's n_query-weighted mean;
- reliability: by default no configuration whose calib.csv rows equal the full cache's;
  --reliability-config picks the configurations; layer_budget: no two lines identical.
Values in .dat files are printed with %.9g: compared with a relative tolerance of 1e-8.
"""
import csv
import math
import os
import re
import subprocess
import sys
from collections import defaultdict

BIN = os.environ.get("BIN", "bin")
ROOT = os.environ.get("KV_ROOT", os.getcwd())
TMP = os.environ.get("KV_TMP", "/tmp")
fails = []
RES = os.path.join(TMP, "fig_results")
STRATS = ["full", "quant kbits=2,4,8 vbits=2,4,8 residual=32,128", "knorm keep=0.1,0.25,0.5",
          "streaming keep=0.1,0.25,0.5 sinks=4", "tova keep=0.1,0.25,0.5", "h2o keep=0.1,0.25,0.5",
          "random keep=0.25,0.5", "snapkv keep=0.25,0.5 preset=factory", "pyramidkv keep=0.25,0.5"]
args = [os.path.join(BIN, "kvreplay"), "run", os.path.join(ROOT, "traces", "sample.h5"), "--quiet", "-o", RES]
for s in STRATS:
    args += ["--strategy", s]
r = subprocess.run(args, capture_output=True, text=True)
if r.returncode != 0:
    print("FAIL: kvreplay run: %s" % r.stderr)
    sys.exit(1)


def report(tag, extra=()):
    out = os.path.join(TMP, "fig_report_" + tag)
    env = dict(os.environ, PATH="/nonexistent")
    r = subprocess.run([os.path.join(BIN, "kvreport"), RES, "-o", out, "--plots", os.path.join(ROOT, "plots")] + list(extra),
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        print("FAIL: kvreport %s: %s" % (tag, r.stderr))
        sys.exit(1)
    return out


def blocks(path):
    """Data blocks of a .dat file (separated by two blank lines): lists of rows (lists of strings)."""
    out, cur, blank = [], [], 0
    for line in open(path):
        line = line.rstrip("\n")
        if not line.strip():
            blank += 1
            if blank == 2:
                out.append(cur)
                cur = []
            continue
        blank = 0
        if line.startswith("#"):
            continue
        cur.append(line.split())
    if cur:
        out.append(cur)
    return out


def close(a, b, absolute=1e-15):
    return abs(a - b) <= 1e-8 * max(abs(a), abs(b)) + absolute


def gp_array(gp, name):
    m = re.search(r"^array %s\[\d+\] = \[(.*)\]$" % name, gp, re.M)
    return [x.strip() for x in m.group(1).split(",")] if m else None


def params(config):
    """{stage:key -> value} of a config string (compositions: stage 1, 2, ... by ' + ')."""
    out = {}
    for st, part in enumerate(config.split(" + ")):
        for tok in part.split()[1:]:
            k, v = tok.split("=", 1)
            out["%d:%s" % (st, k)] = v
    return out


out = report("one")
cfg = {int(r["config_id"]): r for r in csv.DictReader(open(os.path.join(RES, "configs.csv")))}
stats = {}
for r in csv.DictReader(open(os.path.join(out, "tables", "stats.csv"))):
    stats[(int(r["config_id"]), r["metric"])] = {k: float(r[k]) if r[k] else None for k in ("mean", "boot_lo", "boot_hi")}
ratio = {i: stats[(i, "ratio")]["mean"] for i in cfg}
not_applied = {int(r["config_id"]) for r in csv.DictReader(open(os.path.join(RES, "summary.csv"))) if r["not_applied"] == "1"}
fig = os.path.join(out, "figures")

# ---- Pareto figures ----
n_log = n_symlog = 0
out_all = report("all", ["--pareto-all"])
fig_all = os.path.join(out_all, "figures")
all_lines = {}      # metric -> list of lines (config id lists) of the --pareto-all figure
fronts = {}
for metric, deficit_ok in (("logit_kl", False), ("nll_delta", False), ("out_cos", True)):
    stem = "pareto_" + metric
    gp = open(os.path.join(fig_all, stem + ".gp")).read()
    bl = blocks(os.path.join(fig_all, stem + ".dat"))
    ns = int(re.search(r"index @?(\d+)@? using 1:\(\$4", gp).group(1))
    series, front = bl[:ns], bl[ns]
    pf = [int(x) for x in gp_array(gp, "pfirst")]
    pl = [int(x) for x in gp_array(gp, "plast")]
    # panels: contiguous, cover every series once, at most 8 each
    if pf[0] != 1 or pl[-1] != ns or any(pf[i + 1] != pl[i] + 1 for i in range(len(pf) - 1)):
        fails.append("%s: panels %s..%s do not cover series 1..%d once" % (stem, pf, pl, ns))
    if any(b - a + 1 > 8 for a, b in zip(pf, pl)):
        fails.append("%s: a panel with more than 8 series: %s" % (stem, list(zip(pf, pl))))
    if ns <= 8:
        fails.append("%s: only %d series: the sweep should need several panels" % (stem, ns))
    # lines along one parameter
    for b in series:
        ids = [int(row[4]) for row in b]
        fams = {cfg[i]["family"] for i in ids}
        if len(fams) != 1:
            fails.append("%s: a line mixes families %s" % (stem, fams))
        if len(ids) > 1:
            ps = [params(cfg[i]["config"]) for i in ids]
            keys = set().union(*ps)
            varied = {k for k in keys if len({p.get(k) for p in ps}) > 1}
            if len(varied) != 1:
                fails.append("%s: line %s varies %s, want exactly one parameter" % (stem, [cfg[i]["config"] for i in ids], sorted(varied)))
            if [float(row[0]) for row in b] != sorted(float(row[0]) for row in b):
                fails.append("%s: line not sorted by ratio" % stem)
    # the axis: deficit for cosines, log over two decades of positive values
    drawn_ids = {int(row[4]) for b in series for row in b}
    # the rule: 1 - value for a cosine when those are >= 0 and their positive values span more
    # than 100x, else log when the values themselves do, else linear (not-applied excluded)
    vals = [stats[(i, metric)]["mean"] for i in cfg if (i, metric) in stats and i not in not_applied]

    def spans(xs):
        pos = [x for x in xs if x > 0]
        return min(xs) >= 0 and bool(pos) and max(pos) / min(pos) > 100
    deficit = deficit_ok and spans([1 - v for v in vals])
    want_log = deficit or spans(vals)
    is_log = "set logscale y 10" in gp
    n_log += is_log
    if is_log != bool(want_log):
        fails.append("%s: log y %s, want %s (means %.3g..%.3g)" % (stem, is_log, want_log, min(vals), max(vals)))
    mags = [abs(v) for v in vals if v != 0]
    want_symlog = not want_log and min(vals) < 0 and max(mags) / min(mags) > 100
    is_symlog = "set nonlinear y via" in gp
    n_symlog += is_symlog
    if is_symlog != want_symlog:
        fails.append("%s: symmetric log y %s, want %s" % (stem, is_symlog, want_symlog))
    if is_symlog:
        lin = float(re.search(r"^KV_LIN = (\S+)$", gp, re.M).group(1))
        want_lin = 10 ** math.floor(math.log10(max(min(mags), max(mags) * 1e-4)))
        if not close(lin, want_lin):
            fails.append("%s: symmetric log linear within %g, want %g" % (stem, lin, want_lin))
    if ("1 − " in gp) != deficit:
        fails.append("%s: drawn as 1 - value: %s, want %s" % (stem, "1 − " in gp, deficit))
    # values and bootstrap bars
    for b in series:
        for row in b:
            i = int(row[4])
            s = stats[(i, metric)]
            v, lo, hi = s["mean"], s["boot_lo"], s["boot_hi"]
            if deficit:
                v, lo, hi = 1 - v, 1 - hi, 1 - lo
            if is_log and not v > 0:
                fails.append("%s: %s drawn at %g on a log axis" % (stem, cfg[i]["config"], v))
            got = [float(x) for x in row[1:4]]
            # 1 - x of a value near 1 printed with 9 digits keeps its absolute error (5e-10)
            tol = 1e-9 if deficit else 1e-15
            if not (close(got[0], v, tol) and close(got[1], lo, tol) and close(got[2], hi, tol)) or not close(float(row[0]), ratio[i]):
                fails.append("%s: %s row %s, want ratio %.9g value %.9g [%.9g, %.9g]" % (stem, cfg[i]["config"], row, ratio[i], v, lo, hi))
    # Pareto set with disjoint-interval significance
    cand = [i for i in cfg if (i, metric) in stats and i not in not_applied and (not is_log or i in drawn_ids)]
    # dominance among the configurations drawn (on a log axis, exact zeros are not)
    allc = cand
    lower = metric != "out_cos"

    def dom(b, a):
        if ratio[b] < ratio[a]:
            return False
        sa, sb = stats[(a, metric)], stats[(b, metric)]
        if lower:
            a_better, b_better = sa["boot_hi"] < sb["boot_lo"], sb["boot_hi"] < sa["boot_lo"]
        else:
            a_better, b_better = sa["boot_lo"] > sb["boot_hi"], sb["boot_lo"] > sa["boot_hi"]
        if a_better:
            return False
        return ratio[b] > ratio[a] or b_better
    want_front = {a for a in cand if not any(dom(b, a) for b in allc if b != a)}
    got_front = {int(row[2]) for row in front if row[0] != "NaN"}
    if got_front != want_front:
        fails.append("%s: Pareto-optimal %s, want %s" % (stem, sorted(cfg[i]["config"] for i in got_front),
                                                         sorted(cfg[i]["config"] for i in want_front)))
    all_lines[metric] = [[int(row[4]) for row in b] for b in series]
    fronts[metric] = want_front
    # the default figure: the leading families' best lines
    ndom = {a: sum(1 for b in allc if b != a and dom(b, a)) for a in allc}
    best = {}       # family -> (key, line); the first line wins ties (results' order)
    order = []
    for ids in all_lines[metric]:
        f = cfg[ids[0]]["family"]
        d = [ndom[i] for i in ids]
        key = (-sum(x == 0 for x in d), min(d), sum(d) / len(d), -len(d))
        if f not in best:
            order.append(f)
        if f not in best or key < best[f][0]:
            best[f] = (key, ids)
    ranked = sorted(order, key=lambda f: (best[f][0][1], best[f][0][0], order.index(f)))
    dgp = open(os.path.join(fig, stem + ".gp")).read()
    dbl = blocks(os.path.join(fig, stem + ".dat"))
    dns = int(re.search(r"index @?(\d+)@? using 1:\(\$4", dgp).group(1))
    got_lines = [[int(row[4]) for row in b] for b in dbl[:dns]]
    want_lines = [best[f][1] for f in ranked[:8]]
    if got_lines != want_lines:
        fails.append("%s: default lines %s, want %s" % (stem, [[cfg[i]["config"] for i in l] for l in got_lines],
                                                        [[cfg[i]["config"] for i in l] for l in want_lines]))
    if gp_array(dgp, "pfirst") != ["1"] or gp_array(dgp, "plast") != [str(dns)]:
        fails.append("%s: default figure has panels %s..%s, want one" % (stem, gp_array(dgp, "pfirst"), gp_array(dgp, "plast")))
    h_in = float(re.search(r"^KV_H = ([0-9.]+)$", dgp, re.M).group(1))
    if h_in > 4.5:
        fails.append("%s: default figure %.3g in tall at one column, want <= 4.5" % (stem, h_in))
    rep = open(os.path.join(out, "report.md")).read()
    if len(ranked) > 8 and "Not drawn (%d of %d families): %s." % (len(ranked) - 8, len(ranked), ", ".join(ranked[8:])) not in rep:
        fails.append("%s: the caption does not list the families not drawn %s" % (stem, ranked[8:]))
    dfront = {int(row[2]) for row in dbl[dns] if row[0] != "NaN"}
    if dfront != want_front:
        fails.append("%s: default figure's Pareto-optimal set differs from --pareto-all's" % stem)
if not n_log:
    fails.append("no Pareto figure on a log axis: the sweep's logit KL spans decades")
if not n_symlog:
    fails.append("no Pareto figure on a symmetric log axis: the sweep's ΔNLL has both signs over decades")

# ---- matched compression ----
comp = sorted(ratio[i] for i in cfg if ratio[i] > 1.0001 and (i, "logit_kl") in stats)
n = len(comp)
target = comp[n // 2] if n % 2 else math.sqrt(comp[n // 2 - 1] * comp[n // 2])
rk = blocks(os.path.join(fig, "ranked.dat"))[0]
for row in rk:
    if abs(math.log(float(row[4]) / target)) > math.log(1.15) + 1e-12:
        fails.append("ranked: %s at %s× is not within 15%% of %.4g×" % (cfg[int(row[5])]["config"], row[4], target))
fams = [cfg[int(row[5])]["family"] for row in rk]
if len(set(fams)) != len(fams):
    fails.append("ranked: a family twice: %s" % fams)
ps = blocks(os.path.join(fig, "per_seq.dat"))
rows_cfg = {int(row[0]): int(row[5]) for row in ps[0]}
per_seq = defaultdict(list)
for r in csv.DictReader(open(os.path.join(RES, "per_seq.csv"))):
    per_seq[int(r["config_id"])].append(float(r["logit_kl"]))
got = defaultdict(list)
for row in ps[1]:
    got[rows_cfg[int(round(float(row[0])))]].append(float(row[1]))
for i, vals in got.items():
    want = sorted(v for v in per_seq[i] if not ("set logscale x 10" in open(os.path.join(fig, "per_seq.gp")).read() and v <= 0))
    if len(vals) != len(want) or any(not close(a, b) for a, b in zip(sorted(vals), want)):
        fails.append("per_seq: %s points %s, want per_seq.csv %s" % (cfg[i]["config"], sorted(vals), want))
if set(got) != set(rows_cfg.values()):
    fails.append("per_seq: rows without points")

# ---- reliability: no curve that repeats the full cache ----
calib = defaultdict(dict)
for r in csv.DictReader(open(os.path.join(RES, "calib.csv"))):
    calib[int(r["config_id"])][(r["which"], r["bin"])] = (r["count"], r["conf_sum"], r["acc_sum"])


def rel_configs(report_dir):
    return re.findall(r"^# (.*): bin mean_confidence", open(os.path.join(report_dir, "figures", "reliability.dat")).read(), re.M)


names = rel_configs(out)
# figures name configurations by their display names (tables/summary.csv: name -> config)
id_of = {cfg[i]["config"]: i for i in cfg}
byname = {r["name"]: id_of[r["config"]] for r in csv.DictReader(open(os.path.join(out, "tables", "summary.csv")))}
if names[0] != "full cache" or len(names) < 2:
    fails.append("reliability: series %s" % names)
for nm in names[1:]:
    c = calib[byname[nm]]
    if all(c[("comp", b)] == c[("full", b)] for (w, b) in c if w == "comp"):
        fails.append("reliability: %s repeats the full cache's curve" % nm)
pick = ["knorm keep=0.1", "tova keep=0.5"]
out2 = report("rel", ["--reliability-config", pick[0], "--reliability-config", pick[1]])
if rel_configs(out2) != ["full cache"] + pick:
    fails.append("--reliability-config: series %s, want %s" % (rel_configs(out2), pick))

# ---- per-layer lines: identical ones drawn once ----
lb = blocks(os.path.join(fig, "layer_budget.dat"))
keys = [tuple(tuple(r) for r in b) for b in lb if b]
if len(set(keys)) != len(keys):
    fails.append("layer_budget: identical lines drawn twice")
if len(keys) > 8:
    fails.append("layer_budget: %d lines" % len(keys))

# ---- quality vs decode position (per_pos.csv) ----
pos = defaultdict(list)
for r in csv.DictReader(open(os.path.join(RES, "per_pos.csv"))):
    pos[int(r["config_id"])].append(r)
# per_pos pools the same terms as per_seq: its n_seq-weighted mean over offsets is the
# n_query-weighted mean of per_seq (9-digit prints of both: relative 1e-7)
seqrows = defaultdict(list)
for r in csv.DictReader(open(os.path.join(RES, "per_seq.csv"))):
    seqrows[int(r["config_id"])].append(r)
for i, rows in pos.items():
    for col in ("attn_kl", "out_cos", "logit_kl"):
        a = sum(int(r["n_seq"]) * float(r[col]) for r in rows) / sum(int(r["n_seq"]) for r in rows)
        b = sum(float(r["n_query"]) * float(r[col]) for r in seqrows[i]) / sum(float(r["n_query"]) for r in seqrows[i])
        if abs(a - b) > 1e-7 * max(abs(a), abs(b)) + 1e-12:
            fails.append("per_pos %s: mean %s over offsets %.9g, per_seq's %.9g" % (cfg[i]["config"], col, a, b))
ranked_ids = [int(row[5]) for row in sorted(rk, key=lambda row: int(row[0]))]
sel = [i for i in ranked_ids if pos.get(i)][:8]
if not sel:
    fails.append("per_pos.csv has no rows for the ranked figure's configurations")
pgp = open(os.path.join(fig, "position.gp")).read()
pb = blocks(os.path.join(fig, "position.dat"))
if len(pb) != len(sel) or gp_array(pgp, "series") is None or len(gp_array(pgp, "series")) != len(sel):
    fails.append("position: %d lines, want %d (the ranked figure's configurations with per_pos rows)" % (len(pb), len(sel)))
else:
    maxoff = max(int(r["offset"]) for i in sel for r in pos[i])
    width = (maxoff + 16) // 16 if maxoff + 1 > 16 else 1
    plog = "set logscale y 10" in pgp
    for b, i in zip(pb, sel):
        want = []
        for k in range(maxoff // width + 1):
            rs_ = [r for r in pos[i] if int(r["offset"]) // width == k]
            w = sum(int(r["n_seq"]) for r in rs_)
            if not w:
                continue
            y = sum(int(r["n_seq"]) * float(r["logit_kl"]) for r in rs_) / w
            x = sum(int(r["n_seq"]) * int(r["offset"]) for r in rs_) / w
            if plog and not y > 0:
                continue
            want.append((x, y))
        got = [(float(r[0]), float(r[1])) for r in b]
        if len(got) != len(want) or any(not (close(g[0], w_[0]) and close(g[1], w_[1])) for g, w_ in zip(got, want)):
            fails.append("position: %s points %s..., want %s..." % (cfg[i]["config"], got[:3], want[:3]))

if fails:
    print("\n".join(fails))
    print("FAIL: %d" % len(fails))
    sys.exit(1)
print("figures: lines along one parameter, <= 8 per panel, log axes where the values span decades, "
      "bootstrap bars, Pareto set with interval significance, matched compression within 15%, "
      "per-sequence points, reliability choices, no duplicate lines, quality by decode position from per_pos.csv")
