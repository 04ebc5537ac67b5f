"""Accumulated prompt attention recorded at capture (/prompt_scores) and reused at replay.

- kvcapture --prompt-scores: /prompt_scores/colsum and entropy [L, S, H, T] against a numpy
  float64 reference computed from the trace's own stored (f16) q and k: colsum[j] = sum over
  every row t < seq_len of the causal softmax p(t, j), entropy[t] = -sum p log p / log nvis
  (0 for nvis <= 1), zero past seq_len. The capture computes in float64 from the same f16
  values and stores f32: |x - ref| <= 2^-24 |ref| (the f32 rounding) + 1e-12 (float64
  evaluation order on both sides, sums of at most 10^3 terms <= 1).
- capture's prompt_scores() itself with a sliding window and a soft cap (which the
  reference model does not use), against the same reference: the same tolerance before
  the f32 rounding (1e-12).
- kvreplay run --prompt-scores trace vs recompute on h2o, cab, observed_attention and
  entropy_merge: the exported caches (every kept position and row) are identical, hence so
  is every metric (a pure function of the cache the queries see and the stored K/V): the
  CSVs are compared byte for byte apart from provenance. The served sums differ from the
  recomputed ones by about 1e-6 relative (replay/shared.h), so only a near tie between two
  scores could flip a kept set; none occurs on these traces (and test_shared bounds the sums
  themselves). An error of the evaluated rows' share (what dropping the subtraction makes)
  changes the kept sets: checked with a trace whose colsum is replaced by the prompt-only
  sums. With the subtraction removed from replay/shared.c the trace-vs-recompute checks
  fail (and test_shared by 10^4 of its bound).
- kvreplay check recomputes /prompt_scores (replay/verify.h tolerances) and fails when two
  heads' sums are swapped, naming the place.
- provenance.json records prompt_scores = trace, or recompute (whose CSVs, parts and run key
  are those of earlier versions).
- the default, --prompt-scores auto: on a trace with /prompt_scores the CSVs, exports,
  parts/options and part files (run key) of --prompt-scores trace, provenance trace, no note;
  likewise with --mode online, over 2 shards merged, on 1 thread, under kvreplay-mpi -np 3
  (when Open MPI is installed), and on a group without the recorded attention parameters
  (earlier captures); --resume continues a default run and refuses recompute. On a trace
  without the group: recompute's bytes (CSVs, exports, parts/options, run key), no note. On
  a trace whose attn_scale or a layer's window was edited after capture: recompute's CSVs,
  provenance recompute, exactly one note line naming the parameter (one under MPI too);
  --prompt-scores trace refused in one line; kvreplay info says so.
- corrupted groups (NaN, negative, above seq_len, entropy > 1, nonzero past seq_len, wrong
  shape, wrong dtype, a layer_window attribute of the wrong length, a non-numeric
  attn_scale attribute) are refused by kvreplay with one line naming the dataset and the index;
  --prompt-scores trace on a trace without the group is one line, non-zero exit.
"""
import glob
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture_ref import ROOT, run_capture, tmpdir  # noqa: E402
from testhelp import check, failures  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "capture"))
import kvcapture  # noqa: E402

BIN = os.environ.get("BIN", os.path.join(ROOT, "bin"))
KV = os.path.join(BIN, "kvreplay")
TMP = tmpdir()
MODEL = "ref-random:3:n_layers=2,d_model=32,n_heads=4,n_kv_heads=2,head_dim=8,d_ff=64,init_std=0.08"
F32 = 2.0 ** -24


def ref_scores(q, k, scale, softcap, window, n):
    """float64 colsum [H, n], entropy [H, n] of one (layer, sequence): q [H, n, D], k [Hkv, n, D]."""
    H, Hkv = q.shape[0], k.shape[0]
    t = np.arange(n)
    vis = t[None, :] <= t[:, None]
    if window > 0:
        vis &= t[None, :] > t[:, None] - window
    nvis = vis.sum(1)
    cs, en = np.zeros((H, n)), np.zeros((H, n))
    for h in range(H):
        s = scale * (q[h, :n] @ k[h // (H // Hkv), :n].T)
        if softcap > 0:
            s = softcap * np.tanh(s / softcap)
        s = np.where(vis, s, -np.inf)
        m = s.max(1, keepdims=True)
        lse = m + np.log(np.exp(s - m).sum(1, keepdims=True))
        p = np.exp(s - lse)
        cs[h] = p.sum(0)
        with np.errstate(invalid="ignore"):     # masked keys: 0 * inf, replaced by 0
            hh = np.where(vis, p * (lse - s), 0.0).sum(1)
        en[h] = np.where(nvis > 1, hh / np.log(np.maximum(nvis, 2)), 0.0)
    return cs, en


def worst_rel(x, ref, atol):
    """Largest |x - ref| / (2^-24 |ref| + atol)."""
    return float((np.abs(x - ref) / (F32 * np.abs(ref) + atol)).max())


def ids_file(path, S, T, seed):
    r = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(S):
            f.write(" ".join(["256"] + [str(int(x)) for x in r.integers(0, 256, T - 1)]) + "\n")


def run(args, ok=True):
    r = subprocess.run([KV] + args, capture_output=True, text=True)
    if ok and r.returncode != 0:
        raise SystemExit(f"kvreplay {' '.join(args)} -> rc {r.returncode}: {r.stderr.strip()}")
    return r


# ---- capture against numpy -----------------------------------------------------------------
IDS = os.path.join(TMP, "ids.txt")
ids_file(IDS, 3, 192, 1)
TR = os.path.join(TMP, "ps.h5")
run_capture(["--model", MODEL, "--ids", IDS, "--tokens", "192", "--sequences", "3", "--prompt-scores",
             "--no-readout", "-o", TR])
with open(IDS) as f:        # a shorter last sequence: padding past seq_len
    lines = f.read().split("\n")
SHORT = os.path.join(TMP, "ids_short.txt")
with open(SHORT, "w") as f:
    f.write("\n".join(lines[:2] + [" ".join(lines[2].split()[:150])]) + "\n")
TRS = os.path.join(TMP, "ps_short.h5")
run_capture(["--model", MODEL, "--ids", SHORT, "--tokens", "192", "--sequences", "3", "--prompt-scores",
             "--no-readout", "-o", TRS])
for path in (TR, TRS):
    wc = we = 0.0
    pad_zero = True
    with h5py.File(path, "r") as f:
        a = f.attrs
        scale, cap = float(np.float32(a["attn_scale"])), float(a["attn_softcap"])
        lens = f["seq_len"][:]
        CS, EN = f["prompt_scores/colsum"], f["prompt_scores/entropy"]
        check(CS.shape == (2, 3, 4, 192) and CS.dtype == np.float32 and EN.shape == CS.shape
              and EN.dtype == np.float32, f"{os.path.basename(path)}: /prompt_scores f32 [L, S, H, T] = {CS.shape}")
        for l in range(2):
            q = f[f"layers/{l}/q"][()].astype(np.float64)
            k = f[f"layers/{l}/k"][()].astype(np.float64)
            W = int(f[f"layers/{l}"].attrs.get("sliding_window", a["sliding_window"]))
            for s in range(3):
                n = int(lens[s])
                cs, en = ref_scores(q[s], k[s], scale, cap, W, n)
                wc = max(wc, worst_rel(CS[l, s, :, :n].astype(np.float64), cs, 1e-12))
                we = max(we, worst_rel(EN[l, s, :, :n].astype(np.float64), en, 1e-12))
                pad_zero &= not CS[l, s, :, n:].any() and not EN[l, s, :, n:].any()
    name = os.path.basename(path)
    check(wc <= 1, f"{name}: colsum within 2^-24 |ref| + 1e-12 of numpy float64 from the stored q, k "
          f"(worst {wc:.3f} of it)")
    check(we <= 1, f"{name}: entropies within 2^-24 |ref| + 1e-12 (worst {we:.3f} of it)")
    check(pad_zero, f"{name}: zero past seq_len")

# the function with a window and a soft cap (GQA 6 query heads over 2 kv heads, 2 sequences)
torch.manual_seed(0)
q16 = (1.5 * torch.randn(2, 6, 77, 16)).to(torch.float16)
k16 = torch.randn(2, 2, 77, 16).to(torch.float16)
for W, cap in ((0, 0.0), (13, 0.0), (0, 5.0), (9, 3.0)):
    old = kvcapture.PS_ELEMS
    kvcapture.PS_ELEMS = 2 * 6 * 77 * 10      # blocks of 10 rows: 8 blocks, the last partial
    cs, en = kvcapture.prompt_scores(q16, k16, 0.3, cap, W)
    kvcapture.PS_ELEMS = old
    wc = we = 0.0
    for b in range(2):
        rc, re = ref_scores(q16[b].double().numpy(), k16[b].double().numpy(), float(np.float32(0.3)), cap, W, 77)
        wc = max(wc, float(np.abs(cs[b].numpy() - rc).max()) / 1e-12)
        we = max(we, float(np.abs(en[b].numpy() - re).max()) / 1e-12)
    check(wc <= 1 and we <= 1, f"prompt_scores(window {W}, softcap {cap}) in row blocks: within 1e-12 of numpy "
          f"float64 (worst {max(wc, we):.3f} of it)")

# ---- replay: trace vs recompute --------------------------------------------------------------
CFGS = ["h2o keep=0.25", "h2o keep=0.5 recent=0.1", "cab keep=0.25", "observed_attention keep=0.3",
        "entropy_merge keep=0.25"]


def replay(trace, src, tag, export=True, cfgs=CFGS, extra=(), threads=2):
    """kvreplay run with --prompt-scores src (None: the default); -> the results directory
    (its stderr in run.last)."""
    out = os.path.join(TMP, f"r_{tag}")
    shutil.rmtree(out, ignore_errors=True)
    args = ["run", trace, "--decode", "96", "--no-readout", "--quiet", "--no-hash-cache", "--threads", str(threads),
            "-o", out] + (["--prompt-scores", src] if src else []) + (["--export", out + "_x.h5"] if export else [])
    args += list(extra)
    for c in cfgs:
        args += ["--strategy", c]
    run.last = run(args).stderr
    return out


def exported(path):
    """Every dataset of an export file, by name."""
    d = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, o: d.__setitem__(name, o[()]) if isinstance(o, h5py.Dataset) else None)
    return d


def same_exports(a, b):
    ea, eb = exported(a + "_x.h5"), exported(b + "_x.h5")
    return ea.keys() == eb.keys() and all(np.array_equal(ea[k], eb[k]) for k in ea), len(ea)


def same_csvs(a, b):
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(a, "*.csv")))
    return names and all(open(os.path.join(a, x), "rb").read() == open(os.path.join(b, x), "rb").read()
                          for x in names), names


rr, rt = replay(TRS, "recompute", "rec"), replay(TRS, "trace", "trace")
eq, nd = same_exports(rr, rt)
check(eq and nd > 0, f"--prompt-scores trace vs recompute: exported caches identical ({nd} datasets, "
      f"{len(CFGS)} configurations)")
eq, names = same_csvs(rr, rt)
check(eq, f"--prompt-scores trace vs recompute: {', '.join(names)} byte-identical")
# without --export a sweep of head-separable configurations (h2o) runs (sequence, layer, kv
# head) items: each reads its own query heads' rows of /prompt_scores
H2O = CFGS[:2]
eq, names = same_csvs(replay(TRS, "recompute", "rec_ph", False, H2O), replay(TRS, "trace", "trace_ph", False, H2O))
check(eq, f"--prompt-scores trace vs recompute without --export (kv-head work items): {', '.join(names)} "
      "byte-identical")
with open(os.path.join(rt, "provenance.json")) as f:
    pt = f.read()
with open(os.path.join(rr, "provenance.json")) as f:
    pr = f.read()
check('"prompt_scores": "trace"' in pt and '"prompt_scores": "recompute"' in pr,
      "provenance: prompt_scores = trace recorded, recompute for the default")

# An error of the size of the evaluated rows' share is visible to this comparison: a trace
# whose colsum holds the prompt rows' sums only (the replay then subtracts the evaluated rows
# from a value that lacks them, an error of exactly that share, as dropping the subtraction
# would make with the opposite sign) must change the kept sets.
MUT = os.path.join(TMP, "mut.h5")
shutil.copy(TRS, MUT)
with h5py.File(MUT, "r+") as f:
    lens = f["seq_len"][:]
    scale = float(np.float32(f.attrs["attn_scale"]))
    cs = f["prompt_scores/colsum"][()]
    for l in range(2):
        q = f[f"layers/{l}/q"][()].astype(np.float64)
        k = f[f"layers/{l}/k"][()].astype(np.float64)
        for s in range(3):
            P = int(lens[s]) - 96
            cs[l, s, :, :P], _ = ref_scores(q[s, :, :P], k[s, :, :P], scale, 0.0, 0, P)
    f["prompt_scores/colsum"][...] = cs
rm = replay(MUT, "trace", "mut")
eq, _ = same_exports(rr, rm)
check(not eq, "colsum off by the evaluated rows' share changes the exported caches (the comparison "
      "detects a missing or doubled subtraction)")
check(run(["info", TR]).returncode == 0, "kvreplay info accepts a trace with /prompt_scores")
r = run(["check", TRS], ok=False)
check(r.returncode == 0 and "/prompt_scores vs recomputed" in r.stdout,
      f"kvreplay check recomputes /prompt_scores and passes: rc {r.returncode}")
# scores of another head (valid values, wrong numbers) fail the check, naming where
SWAP = os.path.join(TMP, "swap.h5")
shutil.copy(TRS, SWAP)
with h5py.File(SWAP, "r+") as f:
    cs = f["prompt_scores/colsum"][()]
    cs[1, 0, [0, 1]] = cs[1, 0, [1, 0]]
    f["prompt_scores/colsum"][...] = cs
r = run(["check", SWAP], ok=False)
check(r.returncode != 0 and "prompt-scores check FAILED" in r.stderr and "colsum[layer 1, seq 0, head" in r.stderr,
      f"kvreplay check: colsum of two heads swapped fails, naming the place: rc {r.returncode} "
      f"{r.stderr.strip().splitlines()[-1:]}")

# ---- refusals ----------------------------------------------------------------------------
PLAIN = os.path.join(TMP, "plain.h5")
run_capture(["--model", MODEL, "--ids", IDS, "--tokens", "192", "--sequences", "3", "--no-readout", "-o", PLAIN])
out = os.path.join(TMP, "r_plain")
r = run(["run", PLAIN, "--decode", "96", "--strategy", "h2o keep=0.25", "--prompt-scores", "trace", "--no-hash-cache",
         "-o", out], ok=False)
lines = r.stderr.strip().splitlines()
check(r.returncode != 0 and len(lines) == 1 and "has no /prompt_scores" in lines[0] and "--prompt-scores" in lines[0],
      f"--prompt-scores trace without the group: one line, rc {r.returncode}: {lines}")
r = run(["run", PLAIN, "--decode", "96", "--strategy", "h2o keep=0.25", "--prompt-scores", "bogus", "-o", out], ok=False)
check(r.returncode != 0 and "expected auto, trace or recompute" in r.stderr, "--prompt-scores bogus refused")


def corrupt(tag, fn, want):
    path = os.path.join(TMP, f"bad_{tag}.h5")
    shutil.copy(TRS, path)
    with h5py.File(path, "r+") as f:
        fn(f)
    od = os.path.join(TMP, f"r_bad_{tag}")
    shutil.rmtree(od, ignore_errors=True)
    r = run(["run", path, "--decode", "96", "--strategy", "h2o keep=0.25", "--prompt-scores", "trace",
             "--no-hash-cache", "-o", od], ok=False)
    lines = r.stderr.strip().splitlines()
    check(r.returncode != 0 and len(lines) == 1 and all(w in lines[0] for w in want),
          f"corrupted /prompt_scores ({tag}) refused in one line naming {want}: rc {r.returncode}: {lines}")


def setv(name, idx, v):
    def fn(f):
        a = f[name][()]
        a[idx] = v
        f[name][...] = a
    return fn


def reshape(f):
    a = f["prompt_scores/colsum"][()]
    del f["prompt_scores/colsum"]
    f.create_dataset("prompt_scores/colsum", data=a[:, :, :3])


def retype(f):
    a = f["prompt_scores/entropy"][()]
    del f["prompt_scores/entropy"]
    f.create_dataset("prompt_scores/entropy", data=a.astype(np.float64))


corrupt("nan", setv("prompt_scores/colsum", (1, 2, 3, 40), np.nan),
        ["/prompt_scores/colsum[layer 1, seq 2, head 3, pos 40]", "not finite"])
corrupt("negative", setv("prompt_scores/colsum", (0, 1, 2, 5), -1e-3),
        ["/prompt_scores/colsum[layer 0, seq 1, head 2, pos 5]", "outside [0, seq_len]"])
corrupt("above", setv("prompt_scores/colsum", (0, 0, 0, 0), 193.0),
        ["/prompt_scores/colsum[layer 0, seq 0, head 0, pos 0]", "outside [0, seq_len]"])
corrupt("entropy", setv("prompt_scores/entropy", (1, 0, 1, 100), 1.5),
        ["/prompt_scores/entropy[layer 1, seq 0, head 1, pos 100]", "outside [0, 1]"])
corrupt("padding", setv("prompt_scores/entropy", (0, 2, 0, 170), 0.5),
        ["/prompt_scores/entropy[layer 0, seq 2, head 0, pos 170]", "past seq_len"])
corrupt("shape", reshape, ["/prompt_scores/colsum", "shape", "[L, S, H, T]"])
corrupt("dtype", retype, ["/prompt_scores/entropy", "datatype"])
corrupt("layer_window", lambda f: f["prompt_scores"].attrs.__setitem__("layer_window", np.zeros(3, dtype="<i8")),
        ["/prompt_scores attribute layer_window", "expected 2 values (one per layer), found 3"])
corrupt("attn_scale", lambda f: f["prompt_scores"].attrs.__setitem__("attn_scale", "x"),
        ["/prompt_scores attribute attn_scale", "expected a number"])

# ---- the default, --prompt-scores auto ---------------------------------------------------------
def prov_field(d, name):
    with open(os.path.join(d, "provenance.json")) as f:
        return json.load(f).get(name)


def parts(d):
    """DIR/parts/options and every part file (run key, values) of a shard, by name."""
    return {os.path.basename(p): open(p, "rb").read() for p in sorted(glob.glob(os.path.join(d, "parts", "*")))
            if not p.endswith("lock")}


with h5py.File(TRS, "r") as f:
    g, a = f["prompt_scores"].attrs, f.attrs
    ok = (float(g["attn_scale"]) == float(a["attn_scale"]) and float(g["attn_softcap"]) == float(a["attn_softcap"])
          and list(g["layer_window"]) == [0, 0])
check(ok, "kvcapture --prompt-scores records the attention parameters of the scores (attn_scale, attn_softcap, "
      "layer_window [L]) equal to the trace's")
# a layer's own window (HF models pass it to the attention of that layer) is what the writer
# records for that layer
meta = dict(n_heads=2, n_kv_heads=1, head_dim=4, d_model=8, attn_scale=0.5, attn_softcap=0.0, sliding_window=0)
with h5py.File(os.path.join(TMP, "writer.h5"), "w") as f:
    w = kvcapture.TraceWriter(f, 1, 6, 3, meta, False, False, None, scores=True)
    z = torch.zeros(1, 2, 6, dtype=torch.float64)
    for l, win in ((0, 0), (1, 4), (2, 0)):
        w.prompt_scores(l, 0, z, z, win)
    lw = list(f["prompt_scores"].attrs["layer_window"])
check(lw == [0, 4, 0], f"TraceWriter records each layer's window in layer_window: {lw}")

# a trace with the group: the default serves the trace's scores (CSVs and exports those of
# --prompt-scores trace, provenance "trace", no note)
rd = replay(TRS, None, "auto")
eq, names = same_csvs(rd, rt)
eqx, _ = same_exports(rd, rt)
check(eq and eqx and prov_field(rd, "prompt_scores") == "trace" and "note" not in run.last,
      f"default on a trace with /prompt_scores = --prompt-scores trace: {', '.join(names)} and exports identical, "
      f"provenance trace, stderr {run.last.strip()!r}")
# the run key and DIR/parts/options of the resolved mode (a shard keeps its parts): equal
# byte for byte to the explicit run's, and different from recompute's
kd, kt, kr = (parts(replay(TRS, src, f"auto_sh_{src}", False, H2O, ["--shard", "0/2"]))
              for src in (None, "trace", "recompute"))
check(kd == kt and len(kd) >= 2 and kd != kr and b"prompt-scores=trace" in kd["options"],
      f"default on a trace with /prompt_scores: parts/options and parts (run key) = --prompt-scores trace's "
      f"({len(kd)} files), not recompute's")
# --resume: the default resolves again to trace and continues the run; recompute is another
# run (its options differ at prompt-scores)
res = os.path.join(TMP, "r_auto_sh_None")
rr_ = run(["run", TRS, "--decode", "96", "--no-readout", "--no-hash-cache", "--shard", "0/2", "--resume", "-o", res]
          + sum((["--strategy", c] for c in H2O), []), ok=False)
rx = run(["run", TRS, "--decode", "96", "--no-readout", "--no-hash-cache", "--shard", "0/2", "--resume", "-o", res,
          "--prompt-scores", "recompute"] + sum((["--strategy", c] for c in H2O), []), ok=False)
check(rr_.returncode == 0 and "resumed: 2 sequence(s)" in rr_.stderr and rx.returncode != 0
      and "prompt-scores=trace" in rx.stderr,
      f"--resume of a default run: the default continues it ({rr_.stderr.strip().splitlines()[:1]}), "
      f"--prompt-scores recompute is refused: {rx.stderr.strip()!r}")
# shards and threads: the shards of the default merge into the unsharded default's CSVs;
# one thread gives the same bits as two
sh = [replay(TRS, None, f"auto_shard{i}", False, H2O, ["--shard", f"{i}/2"]) for i in range(2)]
merged = os.path.join(TMP, "r_auto_merged")
shutil.rmtree(merged, ignore_errors=True)
run(["merge", "-o", merged] + sh)
eq, names = same_csvs(merged, replay(TRS, None, "auto_ph", False, H2O))
eq1, _ = same_csvs(replay(TRS, None, "auto_t1", False, H2O, threads=1), os.path.join(TMP, "r_auto_ph"))
check(eq and eq1 and prov_field(merged, "prompt_scores") == "trace",
      f"default: 2 shards merged and 1 thread = the unsharded 2-thread run ({', '.join(names)}), merged "
      "provenance trace")
# --mode online (the whole sequence is the prompt the scores cover): served too, the same
# caches as recomputing (h2o's online protocol)
ron, rtn = (replay(TRS, src, f"online_{src}", False, ["h2o keep=0.25"], ["--mode", "online"])
            for src in (None, "recompute"))
eq, names = same_csvs(ron, rtn)
check(eq and prov_field(ron, "prompt_scores") == "trace",
      f"--mode online: the default serves the trace's scores, CSVs = recompute's ({', '.join(names)})")

# a trace without the group: the default is recompute, byte for byte (CSVs, exports, run key,
# parts/options: those of earlier versions), silently
rp_d, rp_r = replay(PLAIN, None, "plain_auto"), replay(PLAIN, "recompute", "plain_rec")
eq, names = same_csvs(rp_d, rp_r)
eqx, _ = same_exports(rp_d, rp_r)
kd, kr = (parts(replay(PLAIN, src, f"plain_sh_{src}", False, H2O, ["--shard", "0/2"])) for src in (None, "recompute"))
check(eq and eqx and kd == kr and b"prompt-scores" not in kd["options"] and prov_field(rp_d, "prompt_scores") == "recompute"
      and "note" not in run.last, f"default on a trace without /prompt_scores = --prompt-scores recompute: "
      f"{', '.join(names)}, exports, parts/options and run key identical, no note")


def edited(tag, fn):
    path = os.path.join(TMP, f"edit_{tag}.h5")
    shutil.copy(TRS, path)
    with h5py.File(path, "r+") as f:
        fn(f)
    return path


# the group was captured with other attention parameters than the trace now has: the
# default recomputes (= --prompt-scores recompute on that trace) with one note line naming
# why; --prompt-scores trace refuses in one line
for tag, fn, want in (("scale", lambda f: f.attrs.__setitem__("attn_scale", 0.5 * float(f.attrs["attn_scale"])),
                       "attn_scale"),
                      ("window", lambda f: f["layers/1"].attrs.__setitem__("sliding_window", 64),
                       "window of 0 on layer 1, the trace's is 64")):
    path = edited(tag, fn)
    rd = replay(path, None, f"stale_{tag}", False, H2O)
    note = run.last.strip().splitlines()
    eq, names = same_csvs(rd, replay(path, "recompute", f"stale_rec_{tag}", False, H2O))
    check(eq and prov_field(rd, "prompt_scores") == "recompute" and len(note) == 1 and "note:" in note[0]
          and "/prompt_scores do not apply" in note[0] and want in note[0],
          f"group of other attention parameters ({tag}): the default recomputes ({', '.join(names)} = recompute's), "
          f"one note line: {note}")
    r = run(["run", path, "--decode", "96", "--strategy", "h2o keep=0.25", "--prompt-scores", "trace",
             "--no-hash-cache", "-o", os.path.join(TMP, f"r_stale_tr_{tag}")], ok=False)
    lines = r.stderr.strip().splitlines()
    check(r.returncode != 0 and len(lines) == 1 and "do not apply" in lines[0] and want in lines[0],
          f"--prompt-scores trace on that trace ({tag}): refused in one line, rc {r.returncode}: {lines}")
    r = run(["info", path])
    check("not applicable" in r.stdout and want in r.stdout, f"kvreplay info on that trace ({tag}) says the "
          "scores do not apply")
# a trace captured before the parameters were recorded (no group attributes): the scores
# were computed from the trace's own parameters, so the default serves them
path = edited("old", lambda f: [f["prompt_scores"].attrs.__delitem__(k)
                                for k in ("attn_scale", "attn_softcap", "layer_window")])
rd = replay(path, None, "old_auto", False, H2O)
eq, _ = same_csvs(rd, os.path.join(TMP, "r_trace_ph"))
check(eq and prov_field(rd, "prompt_scores") == "trace" and not run.last.strip(),
      "group without recorded parameters (earlier captures): the default serves it (= --prompt-scores trace)")

# kvreplay-mpi: every rank opens the trace and resolves the default alike (rank 0 alone
# prints the note); the CSVs are the single-process default's (when Open MPI is installed)
MPI = os.path.join(BIN, "kvreplay-mpi")
if shutil.which("mpirun") and os.access(MPI, os.X_OK):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_btl="self,vader",
               OMPI_MCA_btl_vader_single_copy_mechanism="none", OMPI_MCA_rmaps_base_oversubscribe="1")
    env["ASAN_OPTIONS"] = ":".join(x for x in (os.environ.get("ASAN_OPTIONS", ""), "detect_leaks=0") if x)
    for trace, ref, src, tag in ((TRS, os.path.join(TMP, "r_auto_ph"), "trace", "mpi_auto"),
                                 (edited("scale_mpi", lambda f: f.attrs.__setitem__("attn_scale", 0.25)),
                                  None, "recompute", "mpi_stale")):
        out = os.path.join(TMP, f"r_{tag}")
        shutil.rmtree(out, ignore_errors=True)
        args = ["run", trace, "--decode", "96", "--no-readout", "--quiet", "--no-hash-cache", "-o", out]
        for c in H2O:
            args += ["--strategy", c]
        r = subprocess.run(["mpirun", "-np", "3", "--oversubscribe", MPI] + args, capture_output=True, text=True,
                           env=env, timeout=300)
        if ref is None:
            ref = replay(trace, "recompute", "mpi_stale_ref", False, H2O)
        notes = [x for x in r.stderr.splitlines() if "note:" in x]
        eq, names = same_csvs(out, ref) if r.returncode == 0 else (False, [])
        check(r.returncode == 0 and eq and prov_field(out, "prompt_scores") == src
              and len(notes) == (src == "recompute"),
              f"kvreplay-mpi -np 3, the default on a trace whose scores {'apply' if src == 'trace' else 'do not'}: "
              f"{src}, CSVs = the single-process run's ({', '.join(names)}), {len(notes)} note line(s); "
              f"rc {r.returncode} {r.stderr.strip()[-300:]!r}")
else:
    print("skip  kvreplay-mpi: mpirun or bin/kvreplay-mpi absent")

if failures:
    sys.exit(1)
