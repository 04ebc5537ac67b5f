"""kvreport --gains (issue 8, item 4: gains fitted on a small truth set applied to other
offline configurations): tables/calibrated.csv against numpy on the run's per_layer.csv.

  logit_kl_cal = sum_l g_l * mean over the configuration's sequences of logit_kl_layer_l
  ranks: 1-based ascending, ties averaged
Gains are read from a file in the format `kvreport --truth` writes (tables/truth_calib.csv);
here hand-made, with distinct gains per layer so that a layer mix-up changes the values.
Bad input, one line and exit 1 each: a layer-count mismatch, results without per_layer.csv,
no kl_nnls row, a non-numeric gain, a missing file.
Identity (issue 13 §3): the file records trace_model, trace_sha256 and mode it was fitted on
(as kvreport --truth writes them); gains of another model or protocol are refused, of another
trace refused unless --force-trace (then report.md says so), a file without them refused
unless --force-trace.
"""
import json
import csv
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testhelp import avg_ranks, check, failures, sh  # noqa: E402

BIN = os.environ.get("BIN", "bin")
ROOT = os.environ.get("KV_ROOT", ".")
TMP = os.environ.get("KV_TMP", "/tmp/kv-gains")
os.makedirs(TMP, exist_ok=True)
TRACE = os.path.join(ROOT, "traces", "sample.h5")
KVR, KVP = os.path.join(BIN, "kvreplay"), os.path.join(BIN, "kvreport")
CONFIGS = ["full", "streaming keep=0.25 sinks=4", "knorm keep=0.5", "random keep=0.25", "h2o keep=0.5"]
GAINS = [7.5, 0.25, 3.0, 1.125]                 # sample.h5 has 4 layers
NLL_GAINS = [0.5, 2.0, 0.0, 4.0]

res = os.path.join(TMP, "res")
args = [KVR, "run", TRACE, "--seqs", "0,1,2", "--decode", "32", "--per-layer-readout", "--threads", "1", "-o", res]
for c in CONFIGS:
    args += ["--strategy", c]
sh(args)


PROV = json.load(open(os.path.join(res, "provenance.json")))
IDENT = [PROV["trace_model"], PROV["trace_sha256"], PROV["mode"]]


def write_gains(path, rows, n_layers, ident=IDENT):
    hdr = ["calibration", "metric", "features", "fit", "n_configs", "n_families", "spearman"] + \
          [f"gain_{i}" for i in range(n_layers)] + (["trace_model", "trace_sha256", "mode"] if ident else [])
    with open(path, "w") as f:
        f.write(",".join(hdr) + "\n")
        for name, g in rows:
            f.write(",".join([name, "logit_kl", "per-layer logit_kl", "NNLS", "9", "3", "0.9"] + [str(x) for x in g] +
                             [x.replace("%", "%25").replace(",", "%2C") for x in (ident or [])]) + "\n")


gains = os.path.join(TMP, "gains.csv")
write_gains(gains, [("nll_ols", [9, 9, 9, 9]), ("kl_nnls", GAINS), ("nll_from_kl", NLL_GAINS)], 4)
rep = os.path.join(TMP, "rep")
sh([KVP, res, "-o", rep, "--gains", gains, "--no-figures", "--bootstrap", "0"])

# numpy reference from the run's own per_layer.csv and per_seq.csv
layer = {}
with open(os.path.join(res, "per_layer.csv")) as f:
    for r in csv.DictReader(f):
        layer.setdefault(r["config"], {}).setdefault(int(r["seq"]), {})[int(r["layer"])] = float(r["logit_kl_layer"])
raw = {}
with open(os.path.join(res, "per_seq.csv")) as f:
    for r in csv.DictReader(f):
        raw.setdefault(r["config"], []).append(float(r["logit_kl"]))
with open(os.path.join(rep, "tables", "calibrated.csv")) as f:
    got = list(csv.DictReader(f))
check(len(got) == len(CONFIGS), f"calibrated.csv has {len(got)} configurations")
want_cal, want_raw = {}, {}
for r in got:
    seqs = layer[r["config"]]
    F = np.array([[seqs[s][l] for l in range(4)] for s in sorted(seqs)]).mean(0)
    want_cal[r["config"]] = float(np.dot(GAINS, F))
    want_raw[r["config"]] = float(np.mean(raw[r["config"]]))
    cal, nll = float(r["logit_kl_cal"]), float(r["nll_delta_cal"])
    wn = float(np.dot(NLL_GAINS, F))
    check(abs(cal - want_cal[r["config"]]) <= 1e-8 * max(1e-12, abs(want_cal[r["config"]])) + 1e-15,
          f"'{r['config']}': logit_kl_cal {cal:.9g} = numpy {want_cal[r['config']]:.9g}")
    check(abs(nll - wn) <= 1e-8 * max(1e-12, abs(wn)) + 1e-15, f"'{r['config']}': nll_delta_cal {nll:.9g} = numpy {wn:.9g}")
    check(int(r["n_seq"]) == 3 and abs(float(r["logit_kl"]) - want_raw[r["config"]]) <= 1e-8 * max(1e-12, want_raw[r["config"]]) + 1e-15,
          f"'{r['config']}': raw logit_kl = mean of per_seq.csv over 3 sequences")


def ranks(d):
    return dict(zip(d, avg_ranks([d[k] for k in d])))


rc_want, rr_want = ranks(want_cal), ranks(want_raw)
check(all(float(r["rank_cal"]) == rc_want[r["config"]] and float(r["rank_raw"]) == rr_want[r["config"]] for r in got),
      "ranks (1 = least damage, ties averaged) = numpy")
md = open(os.path.join(rep, "report.md")).read()
sec = md[md.index("## Calibrated proxy (gains from"):]
order = [ln.split(" | ")[0].lstrip("| ") for ln in sec.splitlines() if ln.startswith("| ") and not ln.startswith("| configuration")]
check(len(order) == len(CONFIGS) and [want_cal[k] for k in order] == sorted(want_cal.values()),
      f"report.md lists every configuration by calibrated KL: {order}")


def refused(tag, extra, want, results=res):
    out = os.path.join(TMP, tag)
    r = subprocess.run([KVP, results, "-o", out, "--no-figures", "--bootstrap", "0"] + extra, capture_output=True, text=True)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    check(r.returncode == 1 and len(lines) == 1 and want in lines[0] and not os.path.exists(out),
          f"{tag}: refused in one line naming '{want}', no report left: {lines}")


g3 = os.path.join(TMP, "g3.csv")
write_gains(g3, [("kl_nnls", GAINS[:3])], 3)
refused("layers", ["--gains", g3], "3 layer gains, but the results' per_layer.csv has 4 layers")
nopl = os.path.join(TMP, "nopl")
sh([KVR, "run", TRACE, "--seqs", "0", "--decode", "32", "--strategy", "full", "--strategy", "knorm keep=0.5", "-o", nopl])
refused("no_per_layer", ["--gains", gains], "--per-layer-readout", results=nopl)
g_norow = os.path.join(TMP, "norow.csv")
write_gains(g_norow, [("nll_ols", GAINS)], 4)
refused("no_row", ["--gains", g_norow], "no row 'kl_nnls'")
g_bad = os.path.join(TMP, "bad.csv")
write_gains(g_bad, [("kl_nnls", [1, "x", 2, 3])], 4)
refused("not_a_number", ["--gains", g_bad], "gain_1 'x' is not a finite number")
refused("missing", ["--gains", os.path.join(TMP, "nope.csv")], "cannot open")

# identity of what the gains were fitted on
g_model = os.path.join(TMP, "g_model.csv")
write_gains(g_model, [("kl_nnls", GAINS)], 4, ["other-model", IDENT[1], IDENT[2]])
refused("other_model", ["--gains", g_model], "fitted on model 'other-model', but")
refused("other_model_forced", ["--gains", g_model, "--force-trace"], "fitted on model 'other-model', but")
g_mode = os.path.join(TMP, "g_mode.csv")
write_gains(g_mode, [("kl_nnls", GAINS)], 4, [IDENT[0], IDENT[1], "online"])
refused("other_mode", ["--gains", g_mode], "fitted under the online protocol")
g_trace = os.path.join(TMP, "g_trace.csv")
write_gains(g_trace, [("kl_nnls", GAINS)], 4, [IDENT[0], "ab" * 32, IDENT[2]])
refused("other_trace", ["--gains", g_trace], "fitted on trace sha256 abababababababab..., but")
g_anon = os.path.join(TMP, "g_anon.csv")
write_gains(g_anon, [("kl_nnls", GAINS)], 4, None)
refused("no_identity", ["--gains", g_anon], "no trace_model/trace_sha256/mode columns")
for tag, g in (("other_trace", g_trace), ("no_identity", g_anon)):
    out = os.path.join(TMP, f"forced_{tag}")
    r = subprocess.run([KVP, res, "-o", out, "--no-figures", "--bootstrap", "0", "--gains", g, "--force-trace"],
                       capture_output=True, text=True)
    md = open(os.path.join(out, "report.md")).read() if r.returncode == 0 else ""
    check(r.returncode == 0 and "--force-trace" in md[md.find("## Calibrated proxy"):],
          f"{tag} with --force-trace: applied, and report.md's calibrated section says so ({r.stderr.strip()!r})")

if failures:
    sys.exit(f"{len(failures)} checks failed")
print("all --gains checks passed")
