"""kvreport compare against independent numpy (float64) references, and the messages of the
single-report path when runs cannot be merged.

Runs (kvreplay on the shipped sample traces):
  A  traces/sample.h5, --decode 32: full, streaming 0.25 / 0.5, quant 4-bit, quant 2-bit
  B  traces/sample.h5, --decode 64 (same configurations)
  C  traces/sample_qa.h5 (another trace, its /prefill_len split)
  D  traces/sample.h5, --decode 32: full and lowrank (one sequence reserved for calibration)

Checked:
  - tables/pivot.csv: per metric, configuration and run, n, mean and the 95% t-interval
    against numpy over that run's per_seq.csv (the t quantile by bisection on the t CDF
    below);
  - tables/pairs.csv: paired t (t, p), Wilcoxon signed-rank (W+, W-, exact or normal p),
    d_z, r_rb and the Holm adjustment within each metric and test, all recomputed here:
    the t CDF through the regularised incomplete beta function (continued fraction), the
    exact Wilcoxon null by counting subsets, Holm step-down as Holm (1979) states it;
  - one figure per metric, a gnuplot multiplot with a panel per run, PNG and PDF rendered
    when gnuplot is installed;
  - refused runs: different --decode, two traces with --allow-mixed, an eviction run plus a
    lowrank run, each message naming the cause.
Tolerances: both sides read the same %.9g text; the C side prints %.9g (relative 5e-10) and
uses GSL's t distribution (relative error far below 1e-9); 1e-7 relative on p-values and
1e-8 on the rest leaves that margin and still fails on any wrong formula.
"""
import csv
import math
import os
import shutil
import subprocess
import sys

try:
    import numpy as np
except ImportError as e:  # pragma: no cover
    print("skip: numpy not available (%s)" % e)
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testhelp import avg_ranks  # noqa: E402

BIN = os.environ.get("BIN", "bin")
ROOT = os.environ.get("KV_ROOT", ".")
TMP = os.environ.get("KV_TMP") or "/tmp"
KVREPLAY = os.path.join(BIN, "kvreplay")
KVREPORT = os.path.join(BIN, "kvreport")
fails = []
n_checks = 0


def check(what, cond):
    global n_checks
    n_checks += 1
    if not cond:
        fails.append(what)


def close(what, got, want, rtol=1e-8, atol=1e-12):
    check("%s: got %r want %r" % (what, got, want),
          (math.isnan(got) and math.isnan(want)) or abs(got - want) <= atol + rtol * abs(want))


# ---- references (numpy / math only) --------------------------------------------------------

def betacf(a, b, x):
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        de = d * c
        h *= de
        if abs(de - 1.0) < 1e-16:
            break
    return h


def betainc(a, b, x):
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(lbt) * betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * betacf(b, a, 1 - x) / b


def t_two_sided_p(t, df):
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile_975(df):
    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_two_sided_p(mid, df) > 0.05:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def wilcoxon_ref(d):
    """(w_plus, w_minus, n_nonzero, exact, p) with zero differences dropped."""
    d = np.asarray(d, dtype=np.float64)
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return 0.0, 0.0, 0, True, 1.0
    a = np.abs(d)
    r = avg_ranks(a)
    wp, wm = float(r[d > 0].sum()), float(r[d < 0].sum())
    _, counts = np.unique(a, return_counts=True)
    ties = bool((counts > 1).any())
    if n <= 25 and not ties:
        # number of subsets of {1..n} with each rank sum: the exact null of W+
        cnt = np.zeros(n * (n + 1) // 2 + 1)
        cnt[0] = 1
        for k in range(1, n + 1):
            cnt[k:] = cnt[k:] + cnt[:-k].copy()
        tot = cnt.sum()
        w = int(round(wp))
        p = 2 * min(cnt[:w + 1].sum(), cnt[w:].sum()) / tot
        return wp, wm, n, True, min(1.0, p)
    mean = n * (n + 1) / 4.0
    var = n * (n + 1) * (2 * n + 1) / 24.0 - float(((counts ** 3) - counts).sum()) / 48.0
    z = (wp - mean) / math.sqrt(var)
    return wp, wm, n, False, min(1.0, math.erfc(abs(z) / math.sqrt(2)))


def holm(p):
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="mergesort")
    adj = np.empty(m)
    run = 0.0
    for i, j in enumerate(order):
        run = max(run, min(1.0, (m - i) * p[j]))
        adj[j] = run
    return adj


# ---- runs ---------------------------------------------------------------------------------

def sh(args, ok=True):
    p = subprocess.run(args, capture_output=True, text=True)
    if ok and p.returncode != 0:
        print("FAIL: %s\n%s%s" % (" ".join(args), p.stdout, p.stderr))
        sys.exit(1)
    return p


STRATS = ["full", "streaming keep=0.25 sinks=4", "streaming keep=0.5 sinks=4", "quant kbits=4 vbits=4",
          "quant kbits=2 vbits=2"]


def replay(name, trace, extra, strats=STRATS):
    out = os.path.join(TMP, name)
    args = [KVREPLAY, "run", os.path.join(ROOT, "traces", trace), "-o", out, "--threads", "1"] + extra
    for s in strats:
        args += ["--strategy", s]
    sh(args)
    return out


A = replay("A", "sample.h5", ["--decode", "32"])
B = replay("B", "sample.h5", ["--decode", "64"])
C = replay("C", "sample_qa.h5", [])
D = replay("D", "sample.h5", ["--decode", "32"], ["full", "lowrank rank_k=8 rank_v=8"])


def per_seq(d):
    """{config: {seq: {metric: value or nan}}} with nll_delta derived as kvreport does."""
    out = {}
    with open(os.path.join(d, "per_seq.csv")) as f:
        for row in csv.DictReader(f):
            v = {k: (float(x) if x != "" else float("nan")) for k, x in row.items()
                 if k not in ("config_id", "config", "family", "seq")}
            v["nll_delta"] = v["nll_comp"] - v["nll_full"]
            out.setdefault(row["config"], {})[int(row["seq"])] = v
    return out


def canon(d, prefix):
    with open(os.path.join(d, "configs.csv")) as f:
        hits = [r["config"] for r in csv.DictReader(f) if r["config"].startswith(prefix)]
    assert len(hits) == 1, (prefix, hits)
    return hits[0]


# ---- kvreport compare ----------------------------------------------------------------------

OUT = os.path.join(TMP, "cmp")
METRICS = ["out_cos", "attn_kl", "logit_kl", "nll_delta"]
Q4, Q2 = canon(A, "quant kbits=4"), canon(A, "quant kbits=2")
args = [KVREPORT, "compare", A, C, D, "-o", OUT, "--pair", Q4, Q2,
        "--pair", "streaming keep=0.25", "streaming keep=0.5"]
for m in METRICS:
    args += ["--metric", m]
p = sh(args)
print(p.stderr.strip())
runs = {"A": per_seq(A), "C": per_seq(C), "D": per_seq(D)}

# pivot.csv
with open(os.path.join(OUT, "tables", "pivot.csv")) as f:
    rows = list(csv.DictReader(f))
keys = []
for r in ("A", "C", "D"):
    for k in runs[r]:
        if k not in keys:
            keys.append(k)
check("pivot: one row per metric and configuration", len(rows) == len(METRICS) * len(keys))
tq = {}
cells = 0
for row in rows:
    m, k = row["metric"], row["config"]
    for r in ("A", "C", "D"):
        vals = np.array([v[m] for _, v in sorted(runs[r].get(k, {}).items()) if not math.isnan(v[m])], dtype=np.float64)
        if len(vals) == 0:
            check("pivot %s %s %s empty" % (m, k, r), row[r + "_n"] == "" and row[r + "_mean"] == "")
            continue
        cells += 1
        n = len(vals)
        check("pivot %s %s %s n" % (m, k, r), int(row[r + "_n"]) == n)
        mean = float(np.mean(vals))
        close("pivot %s %s %s mean" % (m, k, r), float(row[r + "_mean"]), mean)
        if n >= 2:
            if n - 1 not in tq:
                tq[n - 1] = t_quantile_975(n - 1)
            hw = tq[n - 1] * float(np.std(vals, ddof=1)) / math.sqrt(n)
            close("pivot %s %s %s t_lo" % (m, k, r), float(row[r + "_t_lo"]), mean - hw, atol=1e-10)
            close("pivot %s %s %s t_hi" % (m, k, r), float(row[r + "_t_hi"]), mean + hw, atol=1e-10)
print("pivot: %d rows, %d cells against numpy" % (len(rows), cells))

# pairs.csv
with open(os.path.join(OUT, "tables", "pairs.csv")) as f:
    prs = list(csv.DictReader(f))
S25, S50 = canon(A, "streaming keep=0.25"), canon(A, "streaming keep=0.5")
want = []
for a, b in ((Q4, Q2), (S25, S50)):
    for r in ("A", "C"):                     # D holds neither
        for m in METRICS:
            sa, sb = runs[r][a], runs[r][b]
            seqs = [s for s in sorted(sa) if s in sb and not math.isnan(sa[s][m]) and not math.isnan(sb[s][m])]
            if len(seqs) >= 2:
                want.append((r, m, a, b, np.array([sa[s][m] for s in seqs]), np.array([sb[s][m] for s in seqs])))
check("pairs: one row per (pair, run, metric) with two or more sequences (%d vs %d)" % (len(prs), len(want)),
      len(prs) == len(want))
got = {(x["run"], x["metric"], x["config_a"], x["config_b"]): x for x in prs}
ref = {}
for r, m, a, b, x, y in want:
    row = got.get((r, m, a, b))
    check("pairs row %s %s %s %s" % (r, m, a, b), row is not None)
    if row is None:
        continue
    d = x - y
    n = len(d)
    sd = float(np.std(d, ddof=1))
    what = "pairs %s %s %s-vs-%s" % (r, m, a.split()[0] + a.split()[1], b.split()[1])
    check(what + " n", int(row["n_pairs"]) == n)
    close(what + " mean_a", float(row["mean_a"]), float(np.mean(x)))
    close(what + " mean_b", float(row["mean_b"]), float(np.mean(y)))
    close(what + " mean_diff", float(row["mean_diff"]), float(np.mean(d)), atol=1e-15)
    close(what + " sd_diff", float(row["sd_diff"]), sd, atol=1e-15)
    if sd > 0:
        t = float(np.mean(d)) / (sd / math.sqrt(n))
        pt = t_two_sided_p(t, n - 1)
        close(what + " t", float(row["t"]), t)
        close(what + " p_t", float(row["p_t"]), pt, rtol=1e-7)
        close(what + " d_z", float(row["d_z"]), float(np.mean(d)) / sd)
    else:
        pt = 1.0 if np.all(d == 0) else 0.0
        close(what + " p_t (constant differences)", float(row["p_t"]), pt)
    wp, wm, nz, exact, pw = wilcoxon_ref(d)
    close(what + " w_plus", float(row["w_plus"]), wp)
    close(what + " w_minus", float(row["w_minus"]), wm)
    check(what + " n_nonzero", int(row["n_nonzero"]) == nz)
    check(what + " method", row["wilcoxon_method"] == ("none" if nz == 0 else "exact" if exact else "normal"))
    close(what + " p_w", float(row["p_w"]), pw, rtol=1e-7)
    close(what + " r_rb", float(row["r_rb"]), (wp - wm) / (wp + wm) if wp + wm > 0 else 0.0)
    ref[(r, m, a, b)] = (pt, pw)
for m in METRICS:                            # Holm within each metric and test
    ks = [k for k in ref if k[1] == m]
    for col, i in (("p_t_holm", 0), ("p_w_holm", 1)):
        adj = holm([ref[k][i] for k in ks])
        for k, v in zip(ks, adj):
            close("holm %s %s %s" % (col, m, k[0]), float(got[k][col]), float(v), rtol=1e-7)
print("pairs: %d tests against numpy (paired t, Wilcoxon, effect sizes, Holm per metric)" % len(ref))

# figures: one per metric, a panel per run
gnuplot = shutil.which("gnuplot")
for m in METRICS:
    stem = os.path.join(OUT, "figures", "compare_" + m)
    gp = open(stem + ".gp").read()
    check("figure %s: multiplot 3 x 1 (one column: panels stacked)" % m, gp.count("set multiplot layout 3,1") == 1)
    check("figure %s: a panel per run, PNG and PDF" % m, gp.count("set title 'A: ") == 1 and gp.count("set title 'D: ") == 1)
    dat = open(stem + ".dat").read()
    check("figure %s: one data block per run" % m, dat.count("# run ") == 3)
    if gnuplot:
        for ext in ("png", "pdf"):
            check("figure %s.%s rendered" % (m, ext), os.path.getsize(stem + "." + ext) > 1000)
tex = open(os.path.join(OUT, "tables", "pivot.tex")).read()
check("pivot.tex: one booktabs tabular per metric", tex.count("\\begin{tabular}") == len(METRICS) and
      tex.count("\\bottomrule") == len(METRICS))
check("pivot.tex: a row per configuration and metric", tex.count("\\texttt{") == len(METRICS) * len(keys))
md = open(os.path.join(OUT, "compare.md")).read()
check("compare.md notes the pair the run D lacks", "run D lacks" in md)
check("compare.md has a pivot table per metric", all(("### %s (" % m) in md for m in METRICS))

# the normal approximation with ties and zero differences: a synthetic run E of 30
# sequences (A's files, out_cos rounded to two decimals so that |d| ties and some d are 0)
E = os.path.join(TMP, "E")
os.makedirs(E)
shutil.copy(os.path.join(A, "provenance.json"), E)
rng = np.random.default_rng(7)
with open(os.path.join(A, "configs.csv")) as f:
    cfg_rows = [r for r in csv.reader(f)]
with open(os.path.join(E, "configs.csv"), "w") as f:
    f.write("\n".join(",".join(r) for r in cfg_rows if r[1] in ("config", S25, S50)) + "\n")
with open(os.path.join(A, "per_seq.csv")) as f:
    rd = csv.reader(f)
    hdr = next(rd)
    tmpl = {r[1]: r for r in rd if r[3] == "0"}
ci = hdr.index("out_cos")
lines = [",".join(hdr)]
for k in (S25, S50):
    for seq in range(30):
        r = list(tmpl[k])
        r[3] = str(seq)
        r[ci] = "%.2f" % (0.9 + 0.05 * rng.integers(0, 3) / 5 + (0.01 if k == S50 and seq % 3 else 0))
        lines.append(",".join(r))
with open(os.path.join(E, "per_seq.csv"), "w") as f:
    f.write("\n".join(lines) + "\n")
with open(os.path.join(A, "summary.csv")) as f:
    srows = [r for r in csv.reader(f)]
with open(os.path.join(E, "summary.csv"), "w") as f:
    f.write("\n".join(",".join(r) for r in srows if r[1] in ("config", S25, S50)) + "\n")
sh([KVREPORT, "compare", E, "-o", os.path.join(TMP, "cmpE"), "--pair", S25, S50, "--metric", "out_cos", "--no-figures"])
with open(os.path.join(TMP, "cmpE", "tables", "pairs.csv")) as f:
    (row,) = list(csv.DictReader(f))
e = per_seq(E)
d = np.array([e[S25][s]["out_cos"] - e[S50][s]["out_cos"] for s in range(30)])
wp, wm, nz, exact, pw = wilcoxon_ref(d)
check("synthetic run: zero differences and ties present (%d of 30 non-zero)" % nz, 0 < nz < 30 and not exact)
check("synthetic run: normal approximation", row["wilcoxon_method"] == "normal" and int(row["n_nonzero"]) == nz)
close("synthetic run w_plus", float(row["w_plus"]), wp)
close("synthetic run p_w (normal, tie-corrected)", float(row["p_w"]), pw, rtol=1e-7)
n_mean = (nz * (nz + 1) / 4.0)
close("synthetic run z", float(row["z"]), (wp - n_mean) / math.sqrt(
    nz * (nz + 1) * (2 * nz + 1) / 24.0 - float(((np.unique(np.abs(d[d != 0]), return_counts=True)[1] ** 3)
                                                  - np.unique(np.abs(d[d != 0]), return_counts=True)[1]).sum()) / 48.0))
sdv = float(np.std(d, ddof=1))
close("synthetic run p_t", float(row["p_t"]), t_two_sided_p(float(np.mean(d)) / (sdv / math.sqrt(30)), 29), rtol=1e-7)
close("synthetic run: one test, Holm = p", float(row["p_w_holm"]), float(row["p_w"]))
print("synthetic run: Wilcoxon normal approximation, %d non-zero of 30, p_w %s" % (nz, row["p_w"]))

# compare: refused pairs name the cause
p = sh([KVREPORT, "compare", A, C, "-o", os.path.join(TMP, "c2"), "--pair", "streaming", "full"], ok=False)
check("ambiguous --pair refused: " + p.stderr.strip(), p.returncode == 1 and "matches 2 configurations" in p.stderr)
p = sh([KVREPORT, "compare", A, C, "-o", os.path.join(TMP, "c2"), "--pair", "h2o keep=0.5", "full"], ok=False)
check("unknown --pair refused: " + p.stderr.strip(), p.returncode == 1 and "'h2o keep=0.5' is not a configuration" in p.stderr)
check("a refused compare leaves no output", not os.path.exists(os.path.join(TMP, "c2")))

# ---- the single-report path: messages that name the cause ---------------------------------
for dirs, extra, needles in (
        ([A, B], [], ["differs from the row an earlier directory gave", "decode 32 in", "but 64 in", "kvreport compare"]),
        ([A, C], [], ["trace_sha256", "kvreport compare"]),
        ([A, C], ["--allow-mixed"], ["different traces", "--allow-mixed cannot merge", "kvreport compare"]),
        ([A, D], [], ["overlapping but different sequence sets", ": 0-7;", ": 0-6)", "calibrate", "kvreport compare"])):
    p = sh([KVREPORT] + dirs + extra + ["-o", os.path.join(TMP, "rep"), "--no-figures"], ok=False)
    msg = p.stderr.strip()
    check("kvreport %s %s refused naming the cause: %s" % (" ".join(os.path.basename(d) for d in dirs), " ".join(extra), msg),
          p.returncode == 1 and all(n in msg for n in needles))

if fails:
    print("\n".join("FAIL " + f for f in fails))
    print("%d of %d checks failed" % (len(fails), n_checks))
    sys.exit(1)
print("%d checks passed" % n_checks)
