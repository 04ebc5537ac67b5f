"""asymkv's value budget (replay/strategies/asymkv.c, issue 5 "separate K and V budgets"),
end to end on traces/sample.h5 through `kvreplay run --export`, against numpy written here
from the rule in asymkv.c's header:

  of the cache's prompt entries (pos < P) keep = max(1, round(vkeep * count)) keep their value
  row: the last vwindow prompt positions first (latest first), then the highest scores,
  score = sum over the G query heads of the kv head and the window's query rows [P-w, P) of
  their causal attention to the entry (merged entries: summed over prompt members); every
  other value row becomes one fill row, fp16(mean of the rows it replaces) or zeros; the V
  encoding (KIVI per token, residual = last R kept rows) applies to the kept rows; keys are
  untouched by the budget. Bytes: K side over all m entries, V side over the kept rows, + the
  fill row (mean) + 4 B per kept value row (+ 4 B per entry when an eviction kept a subset).

Checks per (config, sequence, layer, kv head): the kept count and the window rule exactly,
the kept set = the numpy top set (or differs only at a float32 near-tie, reported), fill row,
kept/decode value rows and key rows against the numpy encodings, per_seq.csv kv_bytes = the
hand formula; then bad input refused in one line.
"""
import csv
import math
import os
import subprocess
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testhelp import check, failures, sh  # noqa: E402

BIN = os.environ.get("BIN", "bin")
ROOT = os.environ.get("KV_ROOT", ".")
TMP = os.environ.get("KV_TMP", "/tmp/kv-asymkv")
os.makedirs(TMP, exist_ok=True)
TRACE = os.path.join(ROOT, "traces", "sample.h5")
KV = os.path.join(BIN, "kvreplay")
DEC = 32
ROW_TOL = 1e-6          # float32 C rows vs float32/float64 numpy rows of O(1)
TIE_TOL = 1e-5          # relative score gap under which float32 vs float64 order may differ

CONFIGS = [
    # (config string, vkeep, vwindow, vfill, kbits, vbits, G, R, evicts)
    ("asymkv kbits=0 vbits=0 vkeep=0.25 vwindow=8", 0.25, 8, "mean", 0, 0, 32, 128, False),
    ("asymkv kbits=0 vbits=0 vkeep=0.3 vfill=zero", 0.3, 32, "zero", 0, 0, 32, 128, False),
    ("asymkv kbits=4 vbits=2 group=8 residual=16 vkeep=0.5 vwindow=4", 0.5, 4, "mean", 4, 2, 8, 16, False),
    ("snapkv keep=0.5 + asymkv kbits=0 vbits=4 group=8 residual=16 vkeep=0.5 vwindow=8",
     0.5, 8, "mean", 0, 4, 8, 16, True),
    ("entropy_merge keep=0.4 sinks=2 + asymkv kbits=0 vbits=0 vkeep=0.5 vwindow=8",
     0.5, 8, "mean", 0, 0, 32, 128, True),
]


def f16(x):
    return np.asarray(x, dtype=np.float64).astype(np.float16).astype(np.float64)


def asym(x, bits, axis):
    """KIVI min-max (as test_quant_numpy): reconstruction of each group along `axis`."""
    x = x.astype(np.float32)
    mn, mx = x.min(axis=axis, keepdims=True), x.max(axis=axis, keepdims=True)
    qmax = np.float32(2 ** bits - 1)
    scale = (mx - mn) / qmax
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.round((x - mn) / safe), 0, qmax).astype(np.float32)
    return np.where(scale > 0, q * safe + mn, x).astype(np.float32)


def kivi_values(v, bits, G, R):
    v = v.astype(np.float32).copy()
    nv = max(0, len(v) - R)
    if nv:
        D = v.shape[1]
        v[:nv] = asym(v[:nv].reshape(nv, D // G, G), bits, 2).reshape(nv, D)
    return v


def kivi_keys(k, bits, G, R):
    k = k.astype(np.float32).copy()
    m, D = k.shape
    nk = m - m % R if R else m - m % G
    if nk:
        k[:nk] = asym(k[:nk].reshape(nk // G, G, D), bits, 1).reshape(nk, D)
    return k, nk


def window_probs(q, K, P, w, scale):
    """[G*w, P]: causal softmax of query rows [P-w, P) of each head in q [G, n, D] over K[:P]."""
    out = []
    for h in range(q.shape[0]):
        for r in range(P - w, P):
            s = scale * (K[:r + 1] @ q[h, r])
            e = np.exp(s - s.max())
            row = np.zeros(P)
            row[:r + 1] = e / e.sum()
            out.append(row)
    return np.array(out)


res = os.path.join(TMP, "res")
exp = os.path.join(TMP, "exp.h5")
args = [KV, "run", TRACE, "--seqs", "0,1", "--decode", str(DEC), "--no-readout", "--threads", "1",
        "-o", res, "--export", exp]
for c in CONFIGS:
    args += ["--strategy", c[0]]
sh(args)

tf, ef = h5py.File(TRACE, "r"), h5py.File(exp, "r")
L, H, Hkv, D = (int(tf.attrs[k]) for k in ("n_layers", "n_heads", "n_kv_heads", "head_dim"))
G = H // Hkv
scale = float(tf.attrs["attn_scale"])
with open(os.path.join(res, "per_seq.csv")) as f:
    per_seq = {(int(r["config_id"]), int(r["seq"])): r for r in csv.DictReader(f)}

worst = dict(k=0.0, v=0.0, fill=0.0)
ties = 0
for c, (spec, vkeep, vw, vfill, kb, vb, QG, R, evicts) in enumerate(CONFIGS):
    for s in (0, 1):
        grp = ef[f"configs/{c}/{s}"]
        n, P = int(grp.attrs["seq_len"]), int(grp.attrs["split"])
        eoff, pos = grp["entry_off"][()], grp["pos"][()]
        moff, mem = grp["member_off"][()], grp["members"][()]
        Kx, Vx = grp["k"][()], grp["v"][()]
        bytes_sum = 0.0
        for l in range(L):
            Kt = tf[f"layers/{l}/k"][s, :, :n].astype(np.float64)
            Vt = tf[f"layers/{l}/v"][s, :, :n].astype(np.float64)
            Qt = tf[f"layers/{l}/q"][s, :, :n].astype(np.float64)
            for g in range(Hkv):
                a, b = int(eoff[l * Hkv + g]), int(eoff[l * Hkv + g + 1])
                m, p = b - a, pos[a:b]
                where = f"'{spec}' seq {s} layer {l} kv head {g}"
                members = [mem[moff[a + e]:moff[a + e + 1]] for e in range(m)]
                # rows before the encoding: originals, merged entries the mean of their members
                Vin = np.array([Vt[g, mm].mean(0) for mm in members])
                Kin = np.array([Kt[g, mm].mean(0) for mm in members])
                prompt = np.flatnonzero(p < P)
                w = min(vw, P)
                keep = max(1, int(math.floor(vkeep * len(prompt) + 0.5)))
                # what C kept: a prompt row that is not the fill row
                fillx = Vx[a + prompt[0]] if len(prompt) else None
                if vb:      # prompt rows are outside the residual (DEC >= R): quantised per token
                    enc_prompt = kivi_values(np.vstack([Vin, np.zeros((R, D))]), vb, QG, R)[:m]
                else:
                    enc_prompt = Vin.astype(np.float32)
                ckept = np.array([e for e in prompt if np.abs(Vx[a + e] - enc_prompt[e]).max() <= ROW_TOL])
                cdrop = np.array([e for e in prompt if e not in set(ckept.tolist())])
                check(len(ckept) == min(keep, len(prompt)), f"{where}: {len(ckept)} value rows kept, want {keep}")
                if keep >= len(prompt):
                    continue
                # the window rule, then the scores
                win = [e for e in prompt if p[e] >= P - w][::-1][:keep]
                check(set(win) <= set(ckept.tolist()), f"{where}: the last {w} prompt positions keep their rows")
                probs = window_probs(Qt[g * G:(g + 1) * G], Kt[g], P, w, scale).sum(0)
                score = np.array([sum(probs[j] for j in members[e] if j < P) for e in range(m)])
                rest = [e for e in prompt if e not in set(win)]
                order = sorted(rest, key=lambda e: (-score[e], p[e]))
                want = set(win) | set(order[:keep - len(win)])
                if want != set(ckept.tolist()):
                    lo = min(score[e] for e in ckept if e not in set(win))
                    hi = max(score[e] for e in cdrop)
                    near = hi - lo <= TIE_TOL * max(1e-30, abs(hi))
                    ties += near
                    check(near, f"{where}: kept set differs from numpy beyond a near-tie (kept min {lo:.6g}, "
                          f"dropped max {hi:.6g})")
                # fill row and every dropped row
                fill = np.zeros(D) if vfill == "zero" else f16(Vin[cdrop].mean(0))
                err = max(float(np.abs(Vx[a + e] - fill).max()) for e in cdrop)
                check(err <= 1e-3 * max(1.0, float(np.abs(fill).max())), f"{where}: dropped rows = fill (err {err:.2e})")
                worst["fill"] = max(worst["fill"], err)
                # kept value rows (prompt and decode): the V encoding of the gathered kept rows
                kept_all = sorted(set(ckept.tolist()) | set(np.flatnonzero(p >= P).tolist()))
                venc = kivi_values(Vin[kept_all], vb, QG, R) if vb else Vin[kept_all]
                err = float(np.abs(Vx[a + np.array(kept_all)] - venc).max())
                check(err <= ROW_TOL, f"{where}: kept value rows = numpy encoding (err {err:.2e})")
                worst["v"] = max(worst["v"], err)
                kenc, nk = kivi_keys(Kin, kb, QG, R) if kb else (Kin, 0)
                err = float(np.abs(Kx[a:b] - kenc).max())
                check(err <= ROW_TOL, f"{where}: key rows untouched by the value budget (err {err:.2e})")
                worst["k"] = max(worst["k"], err)
                # bytes of this cache
                mv = len(kept_all)
                kp = nk * D * kb / 8 + (m - nk) * D * 2
                ks = nk / QG * D * 4
                nv = max(0, mv - R) if vb else 0
                vp = nv * D * vb / 8 + (mv - nv) * D * 2 + (D * 2 if vfill == "mean" else 0)
                vs = nv * (D / QG) * 4
                bytes_sum += kp + ks + vp + vs + 4 * mv + (4 * m if evicts else 0)
        if not spec.startswith("entropy_merge"):     # merges have their own index accounting
            got = float(per_seq[(c, s)]["kv_bytes"])
            check(got == bytes_sum, f"'{spec}' seq {s}: kv_bytes {got:.0f} = hand formula {bytes_sum:.0f}")
print(f"worst row errors: k {worst['k']:.2e} v {worst['v']:.2e} fill {worst['fill']:.2e}; "
      f"kept sets at float32 near-ties: {ties}")


def refused(tag, extra, want):
    out = os.path.join(TMP, tag)
    r = subprocess.run([KV, "run", TRACE, "--seqs", "0", "--decode", str(DEC), "--no-readout", "-o", out] + extra,
                       capture_output=True, text=True)
    lines = [x for x in r.stderr.splitlines() if x.strip() and ": note: " not in x]
    check(r.returncode != 0 and len(lines) == 1 and want in lines[0],
          f"{tag}: refused in one line naming '{want}': {lines}")


# a configuration without ranks calibrates nothing: no sequence is taken from evaluation
out = os.path.join(TMP, "nocalib")
r = sh([KV, "run", TRACE, "--decode", str(DEC), "--no-readout", "-o", out, "--strategy", "asymkv kbits=4 vbits=2"])
with open(os.path.join(out, "summary.csv")) as f:
    nseq = int(next(csv.DictReader(f))["n_seq"])
with h5py.File(TRACE, "r") as f:
    S = int(f["tokens"].shape[0])
check(nseq == S and "calibrat" not in r.stderr, f"asymkv without ranks evaluates all {S} sequences ({nseq})")

refused("vkeep0", ["--strategy", "asymkv vkeep=0"], "vkeep")
refused("vkeep2", ["--strategy", "asymkv vkeep=1.5"], "vkeep")
refused("vfill", ["--strategy", "asymkv vkeep=0.5 vfill=median"], "vfill")
refused("nothing", ["--strategy", "asymkv kbits=0 vbits=0"], "nothing to compress")
refused("online", ["--mode", "online", "--strategy", "asymkv kbits=0 vbits=0 vkeep=0.5"], "does not support the online protocol")

if failures:
    sys.exit(f"{len(failures)} checks failed")
print("all asymkv value-budget checks passed")
