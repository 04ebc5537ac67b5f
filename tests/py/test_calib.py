"""Calibrated proxy (issue 8, item 4): per_layer.csv and kvreport's leave-one-strategy-out fit.

  1. NNLS (analysis/calib.c, via bin/tests/test_calib --cli) = scipy.optimize.nnls on random
     problems;
  2. kvreplay --per-layer-readout on a 1-layer model: the per-layer read-out is the whole
     read-out (logit_kl_layer = per_seq logit_kl, nll_delta_layer = nll_comp - nll_full);
     on a 2-layer model: one row per (config, seq, layer), the full cache all zero, and no
     per_layer.csv without the flag;
  3. kvreport --truth: the cross-validated calibrated Spearman of tables/truth_calib.csv equals
     an independent scipy recomputation (nnls per held-out family on per_layer.csv means,
     scipy.stats.spearmanr on the held-out predictions), and the full-data gains equal
     scipy.optimize.nnls on all configurations.
"""
import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import scipy.optimize
import scipy.stats

ROOT = os.environ.get("KV_ROOT") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("BIN") or os.path.join(ROOT, "bin")
TMP = os.environ.get("KV_TMP") or "/tmp/kv-calib/test"
os.makedirs(TMP, exist_ok=True)
PY = sys.executable
KVREPLAY, TCAL = os.path.join(BIN, "kvreplay"), os.path.join(BIN, "tests", "test_calib")
for p in (KVREPLAY, TCAL, os.path.join(BIN, "kvreport")):
    if not os.access(p, os.X_OK):
        print(f"skip: {p} not built")
        sys.exit(77)
from testhelp import check, failures, sh  # noqa: E402


# ---- 1. NNLS = scipy ---------------------------------------------------------------------------
rng = np.random.default_rng(7)
probs, lines = [], []
for t in range(60):
    n, L = int(rng.integers(2, 15)), int(rng.integers(1, 8))
    A, b = rng.normal(size=(n, L)) * rng.uniform(0.01, 100), rng.normal(size=n)
    if t % 3 == 0:
        A = np.abs(A)               # non-negative features, like per-layer KLs
    probs.append((A, b))
    lines.append(" ".join(["nnls", str(n), str(L)] + [repr(float(v)) for v in A.ravel()] + [repr(float(v)) for v in b]))
out = subprocess.run([TCAL, "--cli"], input="\n".join(lines) + "\n",
                                                                  capture_output=True, text=True)
got = out.stdout.strip().split("\n")
check(out.returncode == 0 and len(got) == len(probs), f"test_calib --cli answered {len(got)} of {len(probs)} problems")
worst = 0.0
for (A, b), g in zip(probs, got):
    g = np.array([float(v) for v in g.split()])
    x, _ = scipy.optimize.nnls(A, b)
    # compare objective values (ties in degenerate problems) and solutions
    fo, fs = np.sum((A @ g - b) ** 2), np.sum((A @ x - b) ** 2)
    worst = max(worst, abs(fo - fs) / max(1.0, fs), np.max(np.abs(g - x)) / max(1.0, np.max(np.abs(x))))
    if np.any(g < 0):
        worst = np.inf
check(worst < 1e-8, f"NNLS = scipy.optimize.nnls on {len(probs)} random problems (worst rel {worst:.2e})")

# ---- 2. per_layer.csv --------------------------------------------------------------------------
text = os.path.join(TMP, "text.txt")
words = "the cat sat on a mat while some dog ran far away from the old red barn".split()
with open(text, "w") as f:
    f.write(" ".join(words[i] for i in rng.integers(0, len(words), 300)) + "\n")
CONFIGS = ["full", "knorm keep=0.25", "knorm keep=0.5", "random keep=0.25", "random keep=0.5",
           "streaming keep=0.25 sinks=2", "streaming keep=0.5 sinks=2", "h2o keep=0.3"]


def model(nl):
    return f"ref-random:5:n_layers={nl},d_model=32,n_heads=4,n_kv_heads=2,head_dim=8,d_ff=64,init_std=0.08"


def read_csv(p):
    with open(p) as f:
        return list(csv.DictReader(f))


traces = {}
for nl in (1, 2):
    traces[nl] = os.path.join(TMP, f"t{nl}.h5")
    sh([PY, os.path.join(ROOT, "capture", "kvcapture.py"), "--model", model(nl), "--text", text, "--tokens", "64",
        "--sequences", "2", "-o", traces[nl]])


def replay(nl, out, extra):
    args = [KVREPLAY, "run", traces[nl], "--decode", "16", "-o", out, "--threads", "1"] + extra
    for c in CONFIGS:
        args += ["--strategy", c]
    sh(args)


r1 = os.path.join(TMP, "r1")
replay(1, r1, ["--per-layer-readout"])
ps = {(r["config_id"], r["seq"]): r for r in read_csv(os.path.join(r1, "per_seq.csv"))}
pl = read_csv(os.path.join(r1, "per_layer.csv"))
check(len(pl) == len(CONFIGS) * 2, f"1 layer: {len(pl)} per_layer rows = configs x seqs")
wk = wn = 0.0
for r in pl:
    q = ps[r["config_id"], r["seq"]]
    wk = max(wk, abs(float(r["logit_kl_layer"]) - float(q["logit_kl"])) / max(1e-6, float(q["logit_kl"])))
    wn = max(wn, abs(float(r["nll_delta_layer"]) - (float(q["nll_comp"]) - float(q["nll_full"]))))
check(wk < 1e-6, f"1 layer: logit_kl_layer = per_seq logit_kl (worst rel {wk:.2e})")
check(wn < 1e-6, f"1 layer: nll_delta_layer = nll_comp - nll_full (worst abs {wn:.2e})")

r2, r2n = os.path.join(TMP, "r2"), os.path.join(TMP, "r2n")
exp = os.path.join(TMP, "exp.h5")
replay(2, r2, ["--per-layer-readout", "--export", exp])
replay(2, r2n, [])
check(not os.path.exists(os.path.join(r2n, "per_layer.csv")), "no per_layer.csv without --per-layer-readout")
pl2 = read_csv(os.path.join(r2, "per_layer.csv"))
keys = {(r["config_id"], r["seq"], r["layer"]) for r in pl2}
check(len(pl2) == len(CONFIGS) * 2 * 2 and len(keys) == len(pl2), f"2 layers: {len(pl2)} distinct rows = configs x seqs x layers")
# exact by design: a configuration that changes nothing has no dH (replay/engine.c SA_DIFFERS) and its
# read-out reuses the full logits buffer; summary.csv takes the same C path with or without per-layer
full = [r for r in pl2 if r["config"] == "full"]
check(all(float(r["logit_kl_layer"]) == 0 and float(r["nll_delta_layer"]) == 0 for r in full), "full cache: per-layer rows 0")
check(any(float(r["logit_kl_layer"]) > 0 for r in pl2), "compressed configurations: some per-layer KL > 0")
same = read_csv(os.path.join(r2, "summary.csv")) == read_csv(os.path.join(r2n, "summary.csv"))
check(same, "summary.csv identical with and without --per-layer-readout")

# ---- 3. kvreport --truth calibration against scipy ---------------------------------------------
truth = os.path.join(TMP, "truth.h5")
sh([PY, os.path.join(ROOT, "capture", "kvcapture.py"), "validate", "--model", model(2), "--trace", traces[2],
    "--export", exp, "-o", truth])
rep = os.path.join(TMP, "rep")
sh([os.path.join(BIN, "kvreport"), r2, "-o", rep, "--truth", truth, "--no-figures", "--bootstrap", "50"])
pairs = read_csv(os.path.join(rep, "tables", "truth_pairs.csv"))
cal = {r["calibration"]: r for r in read_csv(os.path.join(rep, "tables", "truth_calib.csv"))}
check(set(cal) == {"kl_nnls", "nll_ols", "nll_from_kl"}, f"truth_calib.csv rows {sorted(cal)}")
L = 2
feat = {}
for r in pl2:
    feat.setdefault(r["config"], {}).setdefault(int(r["layer"]), []).append(float(r["logit_kl_layer"]))
X = np.array([[np.mean(feat[p["config"]][l]) for l in range(L)] for p in pairs])
y = np.array([float(p["true_logit_kl"]) for p in pairs])
fam = [p["family"] for p in pairs]
pred = np.full(len(pairs), np.nan)
for f in sorted(set(fam)):
    te = np.array([x == f for x in fam])
    g, _ = scipy.optimize.nnls(X[~te], y[~te])
    pred[te] = X[te] @ g
rho = scipy.stats.spearmanr(pred, y).correlation
got_rho = float(cal["kl_nnls"]["spearman"])
check(abs(got_rho - rho) < 1e-6, f"kl_nnls: held-out Spearman {got_rho:.4f} = scipy leave-one-family-out {rho:.4f}")
gall, _ = scipy.optimize.nnls(X, y)
gg = np.array([float(cal["kl_nnls"][f"gain_{l}"]) for l in range(L)])
check(np.max(np.abs(gg - gall)) <= 1e-6 * max(1.0, np.max(np.abs(gall))), f"kl_nnls gains {gg} = scipy nnls {gall}")
ts = {r["metric"]: r for r in read_csv(os.path.join(rep, "tables", "truth.csv"))}
check(ts["logit_kl"]["cal_method"] == "kl_nnls" and abs(float(ts["logit_kl"]["cal_spearman"]) - got_rho) < 1e-9,
      "truth.csv shows the calibrated Spearman beside the raw one")
md = open(os.path.join(rep, "report.md")).read()
check("Calibrated proxy (per-layer gains, leave-one-strategy-out)" in md, "report.md has the calibrated section")

# held out by family AND sequence: for each family f and sequence s, gains fitted on the other
# families with features and truth averaged over the other sequences predict f on s
import h5py  # noqa: E402
with h5py.File(truth, "r") as fh:
    tr_rows = {(c.decode(), int(q)): float(k) for c, q, k in zip(fh["rows/config"][:], fh["rows/seq"][:], fh["rows/logit_kl"][:])}
fs = {}
for r in pl2:
    fs[(r["config"], int(r["seq"]), int(r["layer"]))] = float(r["logit_kl_layer"])
seqs = sorted({int(r["seq"]) for r in pl2 if (r["config"], int(r["seq"])) in tr_rows})
names = [p["config"] for p in pairs]
pred_fs = np.zeros(len(pairs))
for fam_name in dict.fromkeys(fam):
    for s_out in seqs:
        others = [q for q in seqs if q != s_out]
        tr = [i for i, f in enumerate(fam) if f != fam_name]
        Xa = np.array([[np.mean([fs[(names[i], q, l)] for q in others]) for l in range(L)] for i in tr])
        ya = np.array([np.mean([tr_rows[(names[i], q)] for q in others]) for i in tr])
        g, _ = scipy.optimize.nnls(Xa, ya)
        for i, f in enumerate(fam):
            if f == fam_name:
                pred_fs[i] += np.array([fs[(names[i], s_out, l)] for l in range(L)]) @ g / len(seqs)
got_fs = np.array([float(p["kl_nnls_family_seq_logit_kl"]) for p in pairs])
worst = np.max(np.abs(got_fs - pred_fs) / np.maximum(np.abs(pred_fs), 1e-12))
check(len(seqs) >= 2 and worst <= 1e-6,
      f"kl_nnls held out by family and sequence = scipy per (family, sequence) fold ({len(seqs)} sequences; worst rel {worst:.1e})")

# the gains record what they were fitted on (issue 13): --gains accepts them for these results,
# refuses them for results of another model
prov2 = json.load(open(os.path.join(r2, "provenance.json")))
def unpct(v):   # %XX-encoded in truth_calib.csv (model names hold commas)
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), v)


check(all((unpct(c["trace_model"]), c["trace_sha256"], c["mode"]) == (prov2["trace_model"], prov2["trace_sha256"], prov2["mode"])
          for c in cal.values()), "truth_calib.csv records trace_model, trace_sha256 and mode of the fitted results")
gfile = os.path.join(rep, "tables", "truth_calib.csv")
rg = subprocess.run([os.path.join(BIN, "kvreport"), r2, "-o", os.path.join(TMP, "rep_g"), "--gains", gfile, "--no-figures",
                     "--bootstrap", "0"], capture_output=True, text=True)
check(rg.returncode == 0, f"--gains of these results' own truth run accepted ({rg.stderr.strip()!r})")
rg = subprocess.run([os.path.join(BIN, "kvreport"), r1, "-o", os.path.join(TMP, "rep_g1"), "--gains", gfile, "--no-figures",
                     "--bootstrap", "0"], capture_output=True, text=True)
check(rg.returncode == 1 and "fitted on model" in rg.stderr, f"--gains refused for another model's results ({rg.stderr.strip()!r})")

if failures:
    print(f"{len(failures)} check(s) failed")
    sys.exit(1)
print("all calibration checks passed")
