"""Traces captured from Hugging Face models on the GPU machine (tests/fixtures/hf/, made by
tests/gpu/hf_cuda.py --fixtures: transformers 5.17, torch 2.11, an NVIDIA H200, cuda, float32
and bfloat16; test_capture_hf.py's tiny random-weight shapes, 2 sequences x 48 tokens), so
that the CPU suite, where transformers is absent, keeps checking what the HF path writes:
  - provenance: architecture, capture device cuda, transformers version, compute_dtype (from
    the root attribute, or for these kvcapture-1.0 files from `source`, as kvreplay reads it);
  - per-layer sliding windows as the families set them (mistral every layer, gemma2 alternate);
  - `kvreplay check` passes, with the compute dtype's tolerances (replay/verify.h), and the
    bfloat16 traces are in fact bfloat16 values (every stored q/k/v/attn_out value is exactly
    representable in bfloat16: the check's widened tolerance is the model's own rounding);
  - an independent float64 numpy attention over the stored q/k/v matches attn_out within the
    compute dtype's bound (float32: 2e-3 of max|v| as test_capture_hf.py; bfloat16: 2 u + f16
    storage 2^-11 ~ 8.3e-3 of max|v|, u = 2^-8), and the numpy read-out the model's logsumexp;
  - `kvreplay run` of full and streaming on each: full's output error and attention KL are 0
    (the replay's full cache is the trace's own), streaming's error is not.
A mutated trace (one attn_out value moved by 5% of max|v|) fails the numpy check and `kvreplay
check` (the checks can fail)."""
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture_ref import ROOT, attention_check, kvreplay_check, readout_check, tmpdir  # noqa: E402
from testhelp import check, failures  # noqa: E402

FIX = os.path.join(ROOT, "tests", "fixtures", "hf")
TMP = tmpdir()
KVREPLAY = os.path.join(os.environ.get("BIN", os.path.join(ROOT, "bin")), "kvreplay")
WINDOWS = {"llama": [0, 0], "mistral": [16, 16], "qwen2": [0, 0], "gemma2": [16, 0], "gpt2": [0, 0]}
U = {"float32": 0.0, "bfloat16": 2.0 ** -8}
ATTN_TOL = {"float32": 2e-3, "bfloat16": 2 * 2.0 ** -8 + 2.0 ** -11}
LSE_TOL = {"float32": 2e-3, "bfloat16": 2e-2}     # bf16 logits: |z| ~ 6 here, u |z| ~ 2.3e-2 at worst


def is_bf16(a):
    """Every value of float array a exactly representable in bfloat16 (low 16 bits of f32 zero)."""
    b = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return bool(np.all((b & 0xFFFF) == 0))


names = sorted(f for f in os.listdir(FIX) if f.endswith(".h5"))
check(len(names) == 10, f"10 fixture traces (5 architectures x float32, bfloat16): {len(names)}")
for name in names:
    arch, dtype = name[3:-3].split("_")
    path = os.path.join(FIX, name)
    with h5py.File(path, "r") as f:
        a = f.attrs
        check(a["architecture"] == arch and str(a["device"]).startswith("cuda")
              and a["transformers_version"] not in ("", "none")
              and str(a["source"]).endswith(f"compute dtype {dtype}"),
              f"{name}: provenance (architecture {a['architecture']}, device {a['device']}, "
              f"transformers {a['transformers_version']})")
        win = [int(f[f"layers/{l}"].attrs.get("sliding_window", 0)) for l in range(int(a["n_layers"]))]
        check(win == WINDOWS[arch], f"{name}: per-layer sliding windows {win}")
        if dtype == "bfloat16":
            vals = [f[f"layers/{l}/{x}"][:] for l in range(2) for x in ("q", "k", "v", "attn_out")]
            check(all(is_bf16(v) for v in vals), f"{name}: stored q/k/v/attn_out are bfloat16 values")
        has_readout = "readout" in f
    p = subprocess.run([KVREPLAY, "info", path], capture_output=True, text=True)
    check(p.returncode == 0 and f"compute dtype {dtype}" in p.stdout,
          f"{name}: kvreplay info reads the compute dtype from source")
    rc, msg = kvreplay_check(path)
    widened = "tolerances widened" in msg
    check(rc == 0 and widened == (dtype != "float32"),
          f"{name}: kvreplay check rc {rc}, tolerances widened: {widened}: {msg.splitlines()[-1]}")
    err, where = attention_check(path)
    check(err <= ATTN_TOL[dtype], f"{name}: numpy attention vs attn_out {err:.2e} <= {ATTN_TOL[dtype]:.2e} at {where}")
    if has_readout:
        lse, top, bad1, npos = readout_check(path)
        check(lse <= LSE_TOL[dtype] and bad1 == 0, f"{name}: numpy read-out lse {lse:.2e}, top-1 misses {bad1}/{npos}")
    else:
        check(arch == "gemma2", f"{name}: only gemma2 has no read-out")
    out = os.path.join(TMP, name + ".res")
    p = subprocess.run([KVREPLAY, "run", path, "--decode", "16", "--threads", "1", "-o", out, "--strategy", "full",
                        "--strategy", "streaming keep=0.5 sinks=2"], capture_output=True, text=True)
    check(p.returncode == 0, f"{name}: kvreplay run full + streaming rc {p.returncode} {p.stderr.strip()[-200:]}")
    if p.returncode == 0:
        import csv
        with open(os.path.join(out, "summary.csv")) as fh:
            rows = list(csv.DictReader(fh))
        by = {r["family"]: r for r in rows}
        check(float(by["full"]["out_rel_err"]) == 0.0 and float(by["full"]["attn_kl"]) == 0.0
              and float(by["streaming"]["out_rel_err"]) > 0.0,
              f"{name}: full's out_rel_err {by['full']['out_rel_err']} (0), streaming's "
              f"{by['streaming']['out_rel_err']} (> 0)")

# the checks can fail: one attn_out value of llama bfloat16 moved by 5% of its kv head's max|v|
bad = os.path.join(TMP, "bad.h5")
shutil.copy(os.path.join(FIX, "hf_llama_bfloat16.h5"), bad)
with h5py.File(bad, "r+") as f:
    o = f["layers/1/attn_out"]
    x = o[:]
    vmax = float(np.abs(f["layers/1/v"][0, 0].astype(np.float64)).max())
    x[0, 0, 30, 3] += np.float16(0.05 * vmax)
    o[...] = x
err, _ = attention_check(bad)
rc, msg = kvreplay_check(bad)
check(err > ATTN_TOL["bfloat16"] and rc != 0 and "attention check FAILED" in msg,
      f"mutated trace: numpy {err:.2e} > tolerance, kvreplay check rc {rc}")

if failures:
    sys.exit(f"{len(failures)} checks failed")
print("all Hugging Face fixture checks passed")
