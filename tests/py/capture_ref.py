"""Independent numpy reference for capture tests (imported by tests/py/test_capture*.py).

Recomputes, from what a trace stores and with nothing from the capture code or the model,
(a) causal attention of every layer from q, k, v, compared with /layers/<l>/attn_out, and
(b) the read-out logits from /readout/hidden, the final norm and w_u, compared with
/readout/ref_lse and ref_top_*. Both in float64. Tolerances are explicit; each check returns
the worst element so the test can print it.

Shapes: S sequences, T tokens, H q-heads, Hkv kv-heads, D head_dim, C d_model, V vocab.
"""
import os
import subprocess
import sys

import h5py
import numpy as np

ROOT = os.environ.get("KV_ROOT") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CAPTURE = os.path.join(ROOT, "capture", "kvcapture.py")
PY = os.environ.get("PYTHON", "/usr/bin/python3")


def tmpdir():
    d = os.environ.get("KV_TMP")
    if not d:
        import tempfile
        d = tempfile.mkdtemp(prefix="kvcap.")
    return d


def run_capture(args, expect_ok=True):
    """Run the CLI as a user would; returns (rc, stderr)."""
    p = subprocess.run([PY, CAPTURE] + args, capture_output=True, text=True)
    if expect_ok and p.returncode != 0:
        sys.exit(f"FAIL: kvcapture {' '.join(args)} -> rc {p.returncode}: {p.stderr.strip()}")
    return p.returncode, p.stderr.strip()


def attention_check(path):
    """Worst |o_ref - attn_out| / (max|v| of the kv head), over all layers, heads, positions."""
    worst = (0.0, None)
    with h5py.File(path, "r") as f:
        a = f.attrs
        H, Hkv = int(a["n_heads"]), int(a["n_kv_heads"])
        scale, cap = float(a["attn_scale"]), float(a["attn_softcap"])
        lens = f["seq_len"][:]
        for l in range(int(a["n_layers"])):
            g = f[f"layers/{l}"]
            W = int(g.attrs.get("sliding_window", a["sliding_window"]))
            q, k, v, o = (g[n][:].astype(np.float64) for n in ("q", "k", "v", "attn_out"))
            for s in range(q.shape[0]):
                n = int(lens[s])
                t = np.arange(n)
                vis = t[None, :] <= t[:, None]                     # [n, n] causal
                if W > 0:
                    vis &= t[None, :] > t[:, None] - W
                for h in range(H):
                    gkv = h // (H // Hkv)
                    sc = scale * (q[s, h, :n] @ k[s, gkv, :n].T)   # [n, n]
                    if cap > 0:
                        sc = cap * np.tanh(sc / cap)
                    sc = np.where(vis, sc, -np.inf)
                    p = np.exp(sc - sc.max(axis=1, keepdims=True))
                    p /= p.sum(axis=1, keepdims=True)
                    ref = p @ v[s, gkv, :n]                        # [n, D]
                    err = np.abs(ref - o[s, h, :n]).max() / max(np.abs(v[s, gkv, :n]).max(), 1e-6)
                    if err > worst[0]:
                        worst = (err, (l, s, h))
    return worst


def readout_logits(f, s):
    """logits [n, V] in float64 from /readout for sequence s (valid positions only)."""
    r = f["readout"]
    n = int(f["seq_len"][s])
    x = r["hidden"][s, :n].astype(np.float64)                       # [n, C]
    eps = float(r.attrs["norm_eps"])
    w = r["norm_weight"][:].astype(np.float64)
    if r.attrs["norm_type"] == "rmsnorm":
        y = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + eps) * w
    else:
        mu = x.mean(axis=1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=1, keepdims=True)
        y = (x - mu) / np.sqrt(var + eps) * w
        if "norm_bias" in r:
            y = y + r["norm_bias"][:].astype(np.float64)
    logits = y @ r["w_u"][:].astype(np.float64).T                   # [n, V]
    if "b_u" in r:
        logits = logits + r["b_u"][:].astype(np.float64)
    c = float(r.attrs.get("final_logit_softcap", 0.0))
    if c > 0:
        logits = c * np.tanh(logits / c)
    return logits


def readout_check(path):
    """(worst |lse - ref_lse|, worst |top-8 logit - ref|, number of top-1 disagreements that
    are not near-ties (gap > tie), positions checked)."""
    w_lse, w_top, bad_top1, npos = 0.0, 0.0, 0, 0
    with h5py.File(path, "r") as f:
        r = f["readout"]
        for s in range(f["tokens"].shape[0]):
            n = int(f["seq_len"][s])
            lg = readout_logits(f, s)
            m = lg.max(axis=1, keepdims=True)
            lse = (m[:, 0] + np.log(np.exp(lg - m).sum(axis=1)))
            w_lse = max(w_lse, float(np.abs(lse - r["ref_lse"][s, :n]).max()))
            ref_ids = r["ref_top_ids"][s, :n]
            ref_v = r["ref_top_logits"][s, :n].astype(np.float64)
            # the model's top-8 logits, looked up in our logits at the model's ids
            mine_at_ref = np.take_along_axis(lg, ref_ids.astype(np.int64), axis=1)
            w_top = max(w_top, float(np.abs(mine_at_ref - ref_v).max()))
            # our own top-8 values, sorted, against the model's
            ours = -np.sort(-lg, axis=1)[:, :8]
            w_top = max(w_top, float(np.abs(ours - ref_v).max()))
            top1 = lg.argmax(axis=1)
            gap = ref_v[:, 0] - ref_v[:, 1]
            bad_top1 += int(((top1 != ref_ids[:, 0]) & (gap > 0.05)).sum())
            npos += n
    return w_lse, w_top, bad_top1, npos


def kvreplay_check(path):
    """Run `$BIN/kvreplay check PATH`; returns (rc, output)."""
    exe = os.path.join(os.environ.get("BIN", os.path.join(ROOT, "bin")), "kvreplay")
    if not os.path.exists(exe):
        return 127, f"{exe}: not built"
    p = subprocess.run([exe, "check", path], capture_output=True, text=True)
    return p.returncode, (p.stdout + p.stderr).strip()
