"""Issue 14 item 4: capture at long context and of head subsets.

- refmodel.blocked_causal_attention equals the one-shot masked attention (refmodel's own
  eager path, and a naive float64 softmax) within 64 float32 ulp of the output scale: both
  paths take the softmax in float32, so float32 rounding of the logits, the softmax and two
  length-T dot products bounds the difference; at several block sizes, including blocks
  that do not divide T.
- A sequence longer than refmodel.BLOCKED_FROM is captured through the blocked path, and
  `kvreplay check` recomputes every layer's attention from q, k, v against the model's own
  output (the same check as for short traces).
- --heads g: the trace holds kv head g and the query heads of its group, equal (f16 bytes) to
  those heads of an all-head capture; /readout/w_o holds their o_proj rows; `kvreplay check`
  passes; validate refuses such a trace with one line; bad --heads values are refused.
"""
import os
import subprocess
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture_ref import PY, ROOT, run_capture, tmpdir  # noqa: E402
from testhelp import check, failures  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "capture"))
import refmodel  # noqa: E402

BIN = os.environ.get("BIN", os.path.join(ROOT, "bin"))
TMP = tmpdir()

# ---- blocked == one-shot ---------------------------------------------------------------
torch.manual_seed(0)
tol = 64 * 2.0 ** -23
for dtype in (torch.float64, torch.float32):
    B, H, T, D = 2, 3, 301, 16
    q, k, v = (torch.randn(B, H, T, D, dtype=dtype) for _ in range(3))
    mask = torch.full((T, T), float("-inf"), dtype=dtype).triu(1)
    s = torch.matmul(q.double(), k.double().transpose(-1, -2)) * 0.25 + mask.double()
    naive = torch.matmul(torch.softmax(s, dim=-1), v.double())
    eager = refmodel.eager_attention(None, q, k, v, mask, 0.25).transpose(1, 2)
    worst_e = worst_n = 0.0
    for block in (1, 7, 64, 300, 301, 1000):
        out = refmodel.blocked_causal_attention(q, k, v, 0.25, block=block)
        worst_e = max(worst_e, float((out - eager).abs().max() / v.abs().max()))
        worst_n = max(worst_n, float((out.double() - naive).abs().max() / v.abs().max()))
    check(worst_e <= tol and worst_n <= tol,
          f"blocked == one-shot attention, {dtype}: worst {worst_e:.2e} (eager), {worst_n:.2e} "
          f"(float64 naive) <= {tol:.1e}")

# ---- a long sequence through the blocked path -------------------------------------------
MODEL = "ref-random:3:n_layers=2,d_model=32,n_heads=4,n_kv_heads=2,head_dim=8,d_ff=64,init_std=0.08"
TEXT = os.path.join(TMP, "text.txt")
with open(TEXT, "w") as f:
    f.write("in the beginning was the word, and the word was with god. " * 200)
T_LONG = refmodel.BLOCKED_FROM + 300
LONG = os.path.join(TMP, "long.h5")
run_capture(["--model", MODEL, "--text", TEXT, "--tokens", str(T_LONG), "--sequences", "1",
             "--allow-beyond-training", "-o", LONG] if "--allow-beyond-training" in
            subprocess.run([PY, os.path.join(ROOT, "capture", "kvcapture.py"), "--help"],
                           capture_output=True, text=True).stdout
            else ["--model", MODEL, "--text", TEXT, "--tokens", str(T_LONG), "--sequences", "1", "-o", LONG])
r = subprocess.run([os.path.join(BIN, "kvreplay"), "check", LONG], capture_output=True, text=True)
check(r.returncode == 0, f"kvreplay check on a {T_LONG}-token capture (blocked path): rc {r.returncode} "
      f"{(r.stderr or r.stdout).strip().splitlines()[-1:] }")

# ---- --heads ---------------------------------------------------------------------------
ALL, SUB = os.path.join(TMP, "all.h5"), os.path.join(TMP, "sub.h5")
base = ["--model", MODEL, "--text", TEXT, "--tokens", "128", "--sequences", "2"]
run_capture(base + ["-o", ALL])
run_capture(base + ["--heads", "1", "-o", SUB])
with h5py.File(ALL, "r") as fa, h5py.File(SUB, "r") as fs:
    same = True
    for l in range(2):
        same &= np.array_equal(fs[f"layers/{l}/q"][()], fa[f"layers/{l}/q"][:, 2:4])
        same &= np.array_equal(fs[f"layers/{l}/attn_out"][()], fa[f"layers/{l}/attn_out"][:, 2:4])
        same &= np.array_equal(fs[f"layers/{l}/k"][()], fa[f"layers/{l}/k"][:, 1:2])
        same &= np.array_equal(fs[f"layers/{l}/v"][()], fa[f"layers/{l}/v"][:, 1:2])
        same &= np.array_equal(fs[f"readout/w_o/{l}"][()], fa[f"readout/w_o/{l}"][16:32])
    check(bool(same), "--heads 1: q/attn_out = query heads 2,3; k/v = kv head 1; w_o rows 16..31")
    check(int(fs.attrs["n_heads"]) == 2 and int(fs.attrs["n_kv_heads"]) == 1
          and list(fs.attrs["model_kv_heads"]) == [1],
          f"--heads 1: n_heads 2, n_kv_heads 1, model_kv_heads [1] ({fs.attrs.get('model_kv_heads')})")
r = subprocess.run([os.path.join(BIN, "kvreplay"), "check", SUB], capture_output=True, text=True)
check(r.returncode == 0, f"kvreplay check on a --heads trace: rc {r.returncode}")
for bad in ("2", "0,0", "x"):
    rc, err = run_capture(base + ["--heads", bad, "-o", os.path.join(TMP, "bad.h5")], expect_ok=False)
    lines = [x for x in err.splitlines() if x.strip()]
    check(rc != 0 and len(lines) == 1 and "--heads" in lines[0] and not os.path.exists(os.path.join(TMP, "bad.h5")),
          f"--heads {bad} refused: {lines[-1] if lines else ''}")
EXP = os.path.join(TMP, "exp.h5")
r = subprocess.run([os.path.join(BIN, "kvreplay"), "run", SUB, "--strategy", "full", "--decode", "16",
                    "-o", os.path.join(TMP, "res"), "--export", EXP], capture_output=True, text=True)
if r.returncode == 0:
    p = subprocess.run([PY, os.path.join(ROOT, "capture", "kvcapture.py"), "validate", "--model", MODEL,
                        "--trace", SUB, "--export", EXP, "-o", os.path.join(TMP, "truth.h5")],
                       capture_output=True, text=True)
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    check(p.returncode != 0 and len(lines) == 1 and "--heads" in lines[0],
          f"validate refuses a --heads trace: {lines[-1] if lines else ''}")
else:
    check(False, f"kvreplay run --export on the --heads trace: {r.stderr.strip()}")

sys.exit(1 if failures else 0)
