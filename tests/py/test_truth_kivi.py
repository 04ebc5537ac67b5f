"""Per-position truth of time-dependent encoders: KIVI (quant) through kvreplay --export and
kvcapture validate, against a float64 forward written here with the per-position rule.

KIVI's state after m cache entries (quant.c; Liu et al. 2024): keys per channel in groups of G
consecutive entries, the first m - m % R quantised (R = 0: m - m % G); values per entry in
groups of G channels, the first max(0, m - R) quantised; the rest exact. Query t of the
prefill protocol sees the prompt entries the eviction kept and the decode entries [P, t], so
m changes with t and so does which rows are quantised. Here, for several n (two traces), R
and a composition with eviction (knorm keeps the lowest-norm half of the prompt):
  1. the export: its rows are numpy KIVI of the last position's entries (float32 arithmetic
     as the C does: min-max, round half to even), and encoded_from is the first query position
     whose state quantises each key / value (0 when already at its first query, or when the
     quantised row equals the exact one);
  2. the truth (default apply delta): validate's metrics equal a float64 forward of the
     reference model in which every decode query t attends to its own row of each visible
     entry plus (KIVI row at t's state - the trace's row), computed here from the trace with
     numpy KIVI per query position, with no use of the export's rows or of validate.py;
     the same export with encoded_from zeroed (the last position's state at every position)
     misses that forward by far more than the tolerance; as a version-1 file it is refused.
Tolerances: MET_TOL as tests/py/test_truth.py (validate runs the model in float32), KL_TOL for
logit_kl (below).
"""
import os
import sys

import h5py
import numpy as np
import torch

ROOT = os.environ.get("KV_ROOT") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("BIN") or os.path.join(ROOT, "bin")
TMP = os.environ.get("KV_TMP") or "/tmp/kv-truth/kivi"
os.makedirs(TMP, exist_ok=True)
PY = sys.executable
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "capture"))
from synth_export import forward64, ref_random_model, true_metrics  # noqa: E402
from testhelp import check, failures, sh  # noqa: E402

torch.set_num_threads(1)
KVREPLAY = os.path.join(BIN, "kvreplay")
if not os.access(KVREPLAY, os.X_OK):
    print(f"skip: {KVREPLAY} not built")
    sys.exit(77)

MODEL = "ref-random:5:n_layers=2,d_model=32,n_heads=4,n_kv_heads=2,head_dim=8,d_ff=64,init_std=0.08"
S, DEC, GRP = 2, 21, 4                          # decode not a multiple of the group: partial flushes
CONFIGS = [  # (spec, kbits, vbits, R, knorm keep)
    (f"quant kbits=2 vbits=2 group={GRP} residual={GRP}", 2, 2, GRP, None),
    (f"quant kbits=2 vbits=4 group={GRP} residual={4 * GRP}", 2, 4, 4 * GRP, None),
    (f"quant kbits=4 vbits=2 group={GRP} residual=0", 4, 2, 0, None),
    (f"knorm keep=0.5 + quant kbits=2 vbits=2 group={GRP} residual={2 * GRP}", 2, 2, 2 * GRP, 0.5),
]
MET_TOL = 2e-4          # NLL, ECE, top-1 (as tests/py/test_truth.py)
# logit_kl, tighter: validate's float32 logits differ from float64 by eps ~ 1e-5 here (2 layers,
# |logit| < 10, gamma_64 * 10 * 2), which moves KL(P_f || P_c) by about eps * sqrt(2 KL) +
# eps^2 ~ 3e-7 at KL ~ 4e-4 (the quant states' KL here), so 1e-6 holds with margin while the
# last-state-everywhere error (below) is ~5e-5.
KL_TOL = 1e-6
ROW_TOL = 1e-6          # the export's rows vs numpy KIVI in the same float32 arithmetic


def kivi_group(x, bits):
    """x [cnt] float32 -> dequantised: asymmetric min-max, round half to even; scale 0: exact."""
    mn, mx = x.min(), x.max()
    qmax = np.float32(2 ** bits - 1)
    scale = np.float32((mx - mn) / qmax)
    if not scale > 0:
        return x.copy()
    q = np.clip(np.rint((x - mn) / scale), 0, qmax).astype(np.float32)
    return (q * scale + mn).astype(np.float32)


def kivi(K, V, kbits, vbits, R):
    """KIVI state of m = len(K) entries: K, V [m, D] float32 -> (Kq, Vq, nq_k, nq_v)."""
    m, Dh = K.shape
    Kq, Vq = K.copy(), V.copy()
    nqk = m - m % R if R else m - m % GRP
    nqv = max(0, m - R)
    for a in range(0, nqk, GRP):
        for d in range(Dh):
            Kq[a:a + GRP, d] = kivi_group(K[a:a + GRP, d], kbits)
    for e in range(nqv):
        for c in range(0, Dh, GRP):
            Vq[e, c:c + GRP] = kivi_group(V[e, c:c + GRP], vbits)
    return Kq, Vq, nqk, nqv


def kept_prompt(K, P, keep):
    """Prompt positions an eviction keeps: all, or knorm's lowest-norm round(keep * P)."""
    if keep is None:
        return np.arange(P)
    B = max(1, int(np.floor(keep * P + 0.5)))
    nrm = np.sqrt((K[:P].astype(np.float64) ** 2).sum(-1))
    return np.sort(np.argsort(nrm, kind="stable")[:B])


model = ref_random_model(5, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64)
text = os.path.join(TMP, "text.txt")
rng = np.random.default_rng(11)
words = "a stream of plain words for the tiny reference model to read and predict again".split()
with open(text, "w") as f:
    f.write(" ".join(words[i] for i in rng.integers(0, len(words), 400)) + "\n")

for T in (48, 64):                                              # several n
    trace = os.path.join(TMP, f"t{T}.h5")
    sh([PY, os.path.join(ROOT, "capture", "kvcapture.py"), "--model", MODEL, "--text", text, "--tokens", str(T),
        "--sequences", str(S), "-o", trace])
    res, exp, truth = (os.path.join(TMP, f"{x}{T}{ext}") for x, ext in (("res", ""), ("exp", ".h5"), ("truth", ".h5")))
    args = [KVREPLAY, "run", trace, "--decode", str(DEC), "-o", res, "--export", exp, "--threads", "1"]
    for c in CONFIGS:
        args += ["--strategy", c[0]]
    sh(args)
    sh([PY, os.path.join(ROOT, "capture", "kvcapture.py"), "validate", "--model", MODEL, "--trace", trace,
        "--export", exp, "-o", truth])
    tf, ef = h5py.File(trace, "r"), h5py.File(exp, "r")
    check(int(ef.attrs["kvtrace_export_version"]) == 2, f"n={T}: export version 2")
    L, H, Hkv, D = (int(tf.attrs[k]) for k in ("n_layers", "n_heads", "n_kv_heads", "head_dim"))
    rows = h5py.File(truth, "r")["rows"]
    got = {(int(rows["config_id"][i]), int(rows["seq"][i])): {m: float(rows[m][i]) for m in rows
           if m not in ("config", "config_id", "seq", "n_query", "n_y")} for i in range(len(rows["seq"]))}
    tokens, seq_len = tf["tokens"][()], tf["seq_len"][()]
    for c, (spec, kb, vb, R, keep) in enumerate(CONFIGS):
        worst, row_err, bad_from = {}, 0.0, 0
        for s in range(S):
            n = int(seq_len[s])
            P = n - DEC
            # per (layer, kv head): visible positions and KIVI rows for every query t
            state = {}
            for l in range(L):
                Kt = tf[f"layers/{l}/k"][s, :, :n].astype(np.float32)
                Vt = tf[f"layers/{l}/v"][s, :, :n].astype(np.float32)
                g5 = ef[f"configs/{c}/{s}"]
                eoff = g5["entry_off"][()]
                for g in range(Hkv):
                    kp = kept_prompt(Kt[g], P, keep)
                    per_t = {}
                    kfrom, vfrom = {}, {}
                    for t in range(P, n):
                        vis = np.r_[kp, np.arange(P, t + 1)].astype(np.int64)
                        Kq, Vq, nqk, nqv = kivi(Kt[g, vis], Vt[g, vis], kb, vb, R)
                        per_t[t] = (vis, Kq - Kt[g, vis], Vq - Vt[g, vis])
                        for i, j in enumerate(vis):
                            first = max(int(j), P)
                            if i < nqk and j not in kfrom:
                                kfrom[j] = 0 if t == first else t
                            if i < nqv and j not in vfrom:
                                vfrom[j] = 0 if t == first else t
                    state[l, g] = per_t
                    # 1. the export: last position's rows and the switch times
                    a, b = int(eoff[l * Hkv + g]), int(eoff[l * Hkv + g + 1])
                    pos = g5["pos"][a:b]
                    vis, dk, dv = per_t[n - 1]
                    if not np.array_equal(pos, vis):
                        check(False, f"n={T} '{spec}' seq {s} l{l} g{g}: exported positions = kept prompt + decode")
                        continue
                    row_err = max(row_err, float(np.abs(g5["k"][a:b] - (Kt[g, vis] + dk)).max()),
                                  float(np.abs(g5["v"][a:b] - (Vt[g, vis] + dv)).max()))
                    ef_got = g5["encoded_from"][a:b]
                    # a quantised row that happens to equal the exact one (every value on
                    # the grid) never changes: 0, as for rows never quantised
                    same_k, same_v = ~dk.any(1), ~dv.any(1)
                    want = np.array([[0 if sk else kfrom.get(j, 0), 0 if sv else vfrom.get(j, 0)]
                                     for j, sk, sv in zip(vis, same_k, same_v)])
                    bad_from += int((ef_got != want).any(1).sum())

            # 2. the truth: float64 forward, each decode query with its own KIVI state
            def bias(ml, g, nn, P=P, s=s):
                m = np.where(np.arange(nn)[None, :] <= np.arange(nn)[:, None], 0.0, -np.inf)
                if keep is not None:
                    kp = state[ml, g][P][0]
                    drop = np.setdiff1d(np.arange(P), kp)
                    m[P:, drop] = -np.inf
                return m

            def step_rows(ml, g, t):
                vis, dk, dv = state[ml, g][t]
                return vis, dk, dv

            with torch.no_grad():
                lf = forward64(model, tokens[s, :n])
                lc = forward64(model, tokens[s, :n], bias=bias, step_rows=step_rows, P=P)
            ref = true_metrics(lf[P:], lc[P:], tokens[s, P + 1:n].astype(np.int64))
            for m, want in ref.items():
                d = abs(got[c, s][m] - want) * (MET_TOL / KL_TOL if m == "logit_kl" else 1.0)
                if m.startswith("ece") or m == "top1_agree":
                    d = d if d > 1.5 / (n - P - 1) else 0.0     # one position flipping at f32 vs f64
                worst[m] = max(worst.get(m, 0.0), d)
            if s == 0:
                check(got[c, s]["logit_kl"] > 1e-6, f"n={T} '{spec}': true logit_kl {got[c, s]['logit_kl']:.3g} > 0")
        if T == 64 and c == 0:      # the checks can fail: the last position's state at every position
            mut = os.path.join(TMP, "exp_last_state.h5")
            with h5py.File(exp, "r") as src, h5py.File(mut, "w") as dst:
                for k in src.attrs:
                    dst.attrs[k] = src.attrs[k]
                src.copy("configs", dst)
                for s in range(S):
                    dst[f"configs/0/{s}/encoded_from"][...] = 0
            r = sh([PY, os.path.join(ROOT, "capture", "kvcapture.py"), "validate", "--model", MODEL, "--trace", trace,
                    "--export", mut, "--configs", "0", "-o", os.path.join(TMP, "truth_last.h5")])
            with h5py.File(os.path.join(TMP, "truth_last.h5"), "r") as f:
                kl_last = float(f["rows/logit_kl"][0])
            d = abs(kl_last - got[0, 0]["logit_kl"])
            check(d > 10 * KL_TOL, f"n={T} '{spec}': the last state at every position differs from the per-position "
                  f"truth by {d:.2e} > 10 x KL_TOL (logit_kl {kl_last:.3g} vs {got[0, 0]['logit_kl']:.3g})")
            with h5py.File(mut, "r+") as f:
                f.attrs["kvtrace_export_version"] = 1
            r = sh([PY, os.path.join(ROOT, "capture", "kvcapture.py"), "validate", "--model", MODEL, "--trace", trace,
                    "--export", mut, "-o", os.path.join(TMP, "truth_v1.h5")], ok=False)
            lines = [x for x in r.stderr.splitlines() if x.strip()]
            check(r.returncode == 1 and len(lines) == 1 and "version-1" in lines[0] and "time-dependent" in lines[0]
                  and not os.path.exists(os.path.join(TMP, "truth_v1.h5")),
                  f"a version-1 export of a time-dependent configuration is refused in one line: {lines[:1]}")
        check(row_err < ROW_TOL, f"n={T} '{spec}': exported rows = numpy KIVI of the last state (worst {row_err:.1e})")
        check(bad_from == 0, f"n={T} '{spec}': encoded_from = the first query whose state quantises the row "
              f"({bad_from} entries differ)")
        for m, w in sorted(worst.items()):
            check(w < MET_TOL, f"n={T} '{spec}': true {m} = float64 forward with per-position KIVI (worst "
                  f"{w * (KL_TOL / MET_TOL if m == 'logit_kl' else 1.0):.2e} < {KL_TOL if m == 'logit_kl' else MET_TOL})")

if failures:
    print(f"{len(failures)} check(s) failed")
    sys.exit(1)
print("all per-position KIVI truth checks passed")
