"""Shared evaluation of eviction-only configurations (prefill; replay/engine.c, "shared
evaluation") against the direct path (--no-share), on traces/sample.h5 and a small
ref-random trace.

The shared path gives configuration c's row the full row's probabilities p_j (double)
renormalised over what c keeps (q_j = p_j / R_c), closed-form attention metrics
(mass_recall = R_c, attn_kl = -log R_c, attn_cos = sqrt(S_c / p2)) and the output U_c / R_c
with U_c summed in fp32 in chain order (nested kept sets continue each other's sums).
The direct path computes q_j with fp32 exps relative to c's fp32 log-sum-exp. Both are fp32
evaluations of the same float64 quantities, each within the golden tests' tolerances of the
float64 reference (golden_cmp.py: attention metrics 2e-6 absolute, KLs 1e-7 + 1e-4 relative,
NLLs 2e-5 relative, top-1/ECE 0.03); the shared path is the closer one (its q_j are double,
its KL exact up to log's rounding), so the two differ by at most those tolerances: every
metric of every row of summary, per_seq, per_head and per_pos is compared with them.
Tighter where the sums are the same: keep_frac, budget and the byte counts are the same
numbers (compared as strings), mass_recall is the same double sum in another order
(|d| <= 1e-9 relative: n * 2^-53 for n < 10^4, below the CSV's 9 digits).

Also: 1 and 2 threads byte-identical with sharing on; the nested path is taken (the keep=0.5
member of a streaming chain gives other bits than the configuration alone; same trace, same
kernels: deterministic); and families whose kept sets do not nest (random's draws,
pyramidkv's per-layer budgets beside snapkv) are in every sweep, so a chain built without
the subset check (a smaller member not contained in the larger) fails the comparison.
The guard: a trace whose evaluated queries put ~1000 (layer 0) and ~100 (layer 1) nats more
on one evicted key than on any kept one (R = 0 in double, fp32 weights subnormal): the rows
take the direct path, the run succeeds and agrees with --no-share (without the guard it
stops on NaN).
"""
import csv
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture_ref import ROOT, run_capture, tmpdir  # noqa: E402
from golden_cmp import tol  # noqa: E402
from testhelp import check, failures, write_ids  # noqa: E402

BIN = os.environ.get("BIN", os.path.join(ROOT, "bin"))
KV = os.path.join(BIN, "kvreplay")
TMP = tmpdir()
MODEL = "ref-random:5:n_layers=2,d_model=64,n_heads=4,n_kv_heads=2,head_dim=16,d_ff=64,init_std=0.3"
TABLES = ("summary", "per_seq", "per_head", "per_pos")
SAME = ("keep_frac", "budget", "kv_bytes", "full_bytes", "ratio", "n_query", "kv_bytes_paged", "frag_bytes")

SWEEP = """full
streaming sinks=4 keep=0.1,0.25,0.5
snapkv keep=0.1,0.25,0.5 window=8 kernel=7 pool=max
pyramidkv keep=0.1,0.25,0.5 window=8
knorm keep=0.1,0.25,0.5
random keep=0.1,0.25,0.5
h2o keep=0.25
quant kbits=4 vbits=4 group=16
"""


def run(args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run([KV, "run"] + args + ["--quiet"], capture_output=True, text=True, env=e)
    if r.returncode != 0:
        raise SystemExit(f"kvreplay run {' '.join(args)} -> rc {r.returncode}: {r.stderr.strip()}")


def rows(d, t):
    with open(os.path.join(d, t + ".csv")) as f:
        return list(csv.DictReader(f))


def compare(name, a, b):
    """a: sharing on, b: --no-share."""
    n = bad = 0
    worst = {}
    for t in TABLES:
        ra, rb = rows(a, t), rows(b, t)
        check(len(ra) == len(rb), f"{name} {t}.csv: {len(ra)} rows with sharing, {len(rb)} without")
        for x, y in zip(ra, rb):
            for col, vy in y.items():
                vx = x.get(col, "")
                if col in SAME or vy == "" or vx == "":     # the same numbers, or both empty
                    n += 1
                    if vx != vy:
                        bad += 1
                        if bad <= 5:
                            print(f"  {name} {t} {x['config']} {col}: '{vx}' vs '{vy}'")
                    continue
                if col != "mass_recall" and tol(col, 0.0) is None:  # labels, indices
                    continue
                tt = 1e-9 * max(1.0, abs(float(vy))) if col == "mass_recall" else tol(col, float(vy))
                n += 1
                d = abs(float(vx) - float(vy))
                if d / tt > worst.get(col, (0.0,))[0]:
                    worst[col] = (d / tt, f"{t} {x['config'][:30]}")
                if not d <= tt:
                    bad += 1
                    if bad <= 5:
                        print(f"  {name} {t} {x['config']} {col}: {vx} vs {vy} (|d| {d:.3g} > {tt:.3g})")
    for col, (r, where) in sorted(worst.items()):
        print(f"  {name}: worst {col} {r:.3f} of tolerance ({where})")
    check(bad == 0 and n > 0, f"{name}: {n} values with sharing on and off agree within tolerance ({bad} outside)")


def same_bytes(name, a, b):
    diff = [t for t in TABLES + ("configs",) if open(os.path.join(a, t + ".csv"), "rb").read() !=
            open(os.path.join(b, t + ".csv"), "rb").read()]
    check(not diff, f"{name}: byte-identical CSVs" + (f" (differ: {diff})" if diff else ""))


sweep = os.path.join(TMP, "share.sweep")
with open(sweep, "w") as f:
    f.write(SWEEP)

# ---- traces/sample.h5 ----------------------------------------------------------------------
SAMPLE = os.path.join(ROOT, "traces", "sample.h5")
out = {}
for tag, extra, th in (("on1", [], "1"), ("off", ["--no-share"], "1"), ("on2", [], "2")):
    out[tag] = os.path.join(TMP, "sample_" + tag)
    run([SAMPLE, "--sweep", sweep, "--decode", "32", "--threads", th, "-o", out[tag]] + extra,
        env={"OMP_NUM_THREADS": th})
compare("sample.h5", out["on1"], out["off"])
same_bytes("sample.h5 sharing on, 1 vs 2 threads", out["on1"], out["on2"])
off_bits = [r for r in rows(out["on1"], "per_head") if r["config"].startswith("knorm")] != \
    [r for r in rows(out["off"], "per_head") if r["config"].startswith("knorm")]
check(off_bits, "sample.h5: sharing changes the bits (the shared path ran, not the direct one)")
for tag, want in (("on1", "shared"), ("off", "separate")):
    with open(os.path.join(out[tag], "provenance.json")) as f:
        ev = json.load(f).get("evaluation")
    check(ev == want, f"sample.h5 {tag}: provenance evaluation = {ev!r} (want {want!r})")

# the nested path: streaming keep=0.5 after keep=0.1 and 0.25 in one chain vs alone
nest = os.path.join(TMP, "sample_nest")
alone = os.path.join(TMP, "sample_alone")
run([SAMPLE, "--strategy", "streaming sinks=4 keep=0.1,0.25,0.5", "--decode", "32", "-o", nest])
run([SAMPLE, "--strategy", "streaming sinks=4 keep=0.5", "--decode", "32", "-o", alone])
big = [r for r in rows(nest, "per_head") if "keep=0.5" in r["config"]]
one = rows(alone, "per_head")
check(len(big) == len(one) and [r["keep_frac"] for r in big] == [r["keep_frac"] for r in one],
      "streaming keep=0.5 in a chain and alone: the same kept sets")
check(any(x["out_cos"] != y["out_cos"] or x["out_rel_err"] != y["out_rel_err"] for x, y in zip(big, one)),
      "streaming keep=0.5 in a chain: its sums continue keep=0.1's and 0.25's (other bits than alone)")
for col in ("out_cos", "out_rel_err", "attn_cos", "mass_recall", "attn_kl"):
    d = max(abs(float(x[col]) - float(y[col])) for x, y in zip(big, one))
    check(d <= 2e-6, f"streaming keep=0.5 chained vs alone: {col} within 2e-6 (|d| {d:.2g})")

# ---- a small ref-random trace (larger logits: init_std 0.3) ---------------------------------
IDS = write_ids(os.path.join(TMP, "share_ids.txt"), 2, 160, 11)
TR = os.path.join(TMP, "share_rr.h5")
run_capture(["--model", MODEL, "--ids", IDS, "--tokens", "160", "--sequences", "2", "-o", TR])
ro = {}
for tag, extra, th in (("on1", [], "1"), ("off", ["--no-share"], "1"), ("on2", [], "2")):
    ro[tag] = os.path.join(TMP, "rr_" + tag)
    run([TR, "--sweep", sweep, "--decode", "48", "--threads", th, "-o", ro[tag]] + extra,
        env={"OMP_NUM_THREADS": th})
compare("ref-random", ro["on1"], ro["off"])
same_bytes("ref-random sharing on, 1 vs 2 threads", ro["on1"], ro["on2"])

# ---- the guard: kept sets whose mass is far below the full row's maximum --------------------
# A key at position 5 that every evaluated query of layer 0 (1) meets with a logit ~1000 (~100)
# above the others: a recent-window cache without it keeps R ~ e^-1000 = 0 in double (e^-100:
# its fp32 weights subnormal). The rows go to the direct path; the run succeeds and agrees.
import h5py  # noqa: E402
import ref_replay  # noqa: E402
GT = os.path.join(TMP, "share_guard.h5")
ref_replay.make_trace(GT, S=1, T=96, readout=False)
with h5py.File(GT, "r+") as f:
    for layer, big in ((0, 20.0), (1, 2.0)):
        q = f[f"layers/{layer}/q"][...].astype(np.float64)
        k = f[f"layers/{layer}/k"][...].astype(np.float64)
        u = np.ones(16) / 4.0                       # unit vector
        q[:, :, 72:, :] = big * u                   # evaluated rows (P = 96 - 24)
        k[:, :, 5, :] = 200.0 * u                   # logit 200 * big / 4 = 1000 (100)
        f[f"layers/{layer}/q"][...] = q.astype("<f2")
        f[f"layers/{layer}/k"][...] = k.astype("<f2")
gs = os.path.join(TMP, "guard.sweep")
with open(gs, "w") as f:
    f.write("full\nstreaming sinks=0 keep=0.1,0.25,0.5\n")
go = {}
for tag, extra in (("on", []), ("off", ["--no-share"])):
    go[tag] = os.path.join(TMP, "guard_" + tag)
    run([GT, "--sweep", gs, "--decode", "24", "-o", go[tag]] + extra)
kls = [float(r["attn_kl"]) for r in rows(go["off"], "per_head") if r["config"].startswith("streaming")]
check(max(kls) > 500, f"guard trace: kept sets far below the full row's maximum (attn_kl up to {max(kls):.0f})")
compare("guard trace", go["on"], go["off"])

if failures:
    sys.exit(1)
print("test_share: ok")
