"""Capture of tiny random-initialised Hugging Face models (built from configs, no download),
one per supported architecture, checked like the reference model: independent numpy
attention (with the recorded scale, soft-cap and per-layer sliding window) against attn_out,
numpy read-out against the model's own logsumexp/top-8, logits unchanged by the capture,
and `kvreplay check`; then the ground-truth loop through the same adapter: `kvreplay run
--export` of full / streaming / quant and `kvcapture validate --model hf-random:...`: the full
configuration re-run through validate's planned attention (scale, soft-cap, sliding window
as the trace recorded them) reproduces the model's own logits (true logit_kl ~ 0, top-1 all
agree), a streaming configuration is applied (true logit_kl > 0, finite). Skipped (exit 77)
where transformers is not importable (Debian has no transformers package)."""
import os
import sys

try:
    import transformers  # noqa: F401
except ImportError:
    print("SKIP: transformers is not importable here (not a Debian package); the Hugging Face "
          "capture path is tested only where it is installed")
    sys.exit(77)

import subprocess

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture_ref import (ROOT, attention_check, kvreplay_check, readout_check,  # noqa: E402
                         run_capture, tmpdir)

sys.path.insert(0, os.path.join(ROOT, "capture"))
import kvcapture  # noqa: E402

torch.set_num_threads(1)
TMP = tmpdir()
T = 48
V = 300
COMMON = f"vocab_size={V},num_hidden_layers=2,max_position_embeddings=128,bos_token_id=1,seed=3"
LLAMA = f"hidden_size=32,intermediate_size=64,num_attention_heads=4,num_key_value_heads=2,{COMMON}"
ARCHS = {
    "llama": LLAMA,
    "mistral": LLAMA + ",sliding_window=16",
    "qwen2": LLAMA,
    "gemma2": (f"hidden_size=32,intermediate_size=64,num_attention_heads=4,num_key_value_heads=2,"
               f"head_dim=8,query_pre_attn_scalar=8,attn_logit_softcapping=50.0,"
               f"final_logit_softcapping=30.0,sliding_window=16,{COMMON}"),
    "gpt2": f"n_embd=32,n_head=4,n_layer=2,n_positions=128,vocab_size={V},bos_token_id=1,seed=3",
}
ATTN_TOL, LSE_TOL, TOP_TOL = 2e-3, 2e-3, 5e-3
FULL_KL_TOL = 1e-5      # validate's planned attention (float32) vs the model's own, full cache
VAL_CONFIGS = ["full", "streaming keep=0.5 sinks=2", "quant kbits=4 vbits=4 group=8 residual=8"]
from testhelp import check, failures  # noqa: E402


def validate_check(arch, spec, trace):
    """kvreplay run --export, then kvcapture validate through the HF adapter."""
    exe = os.path.join(os.environ.get("BIN", os.path.join(ROOT, "bin")), "kvreplay")
    res, exp, truth = (os.path.join(TMP, f"{arch}-{x}") for x in ("res", "exp.h5", "truth.h5"))
    args = [exe, "run", trace, "--decode", "16", "-o", res, "--export", exp, "--threads", "1"]
    for c in VAL_CONFIGS:
        args += ["--strategy", c]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        check(False, f"{arch}: kvreplay run --export rc {p.returncode}: {p.stderr.strip()[-200:]}")
        return
    p = subprocess.run([sys.executable, os.path.join(ROOT, "capture", "kvcapture.py"), "validate", "--model",
                        spec, "--trace", trace, "--export", exp, "-o", truth], capture_output=True, text=True)
    if p.returncode != 0:
        check(False, f"{arch}: kvcapture validate rc {p.returncode}: {p.stderr.strip()[-300:]}")
        return
    with h5py.File(truth, "r") as f:
        cfg = [c.decode() for c in f["rows/config"][()]]
        kl, top1 = f["rows/logit_kl"][()], f["rows/top1_agree"][()]
    full = [i for i, c in enumerate(cfg) if c == "full"]
    evict = [i for i, c in enumerate(cfg) if c.startswith("streaming")]
    check(len(full) == 3 and float(np.abs(kl[full]).max()) <= FULL_KL_TOL and float(top1[full].min()) == 1.0,
          f"{arch}: validate full cache reproduces the model (true logit_kl max {float(np.abs(kl[full]).max()):.1e}, "
          f"top-1 agree min {float(top1[full].min())})")
    check(len(evict) == 3 and np.all(np.isfinite(kl)) and float(kl[evict].min()) > 0,
          f"{arch}: validate applies streaming (true logit_kl {', '.join(f'{x:.2e}' for x in kl[evict])})")


ids = os.path.join(TMP, "ids.txt")
rng = np.random.default_rng(11)
with open(ids, "w") as f:
    for _ in range(3):
        f.write("1 " + " ".join(str(x) for x in rng.integers(2, V, T - 1)) + "\n")

for arch, kv in ARCHS.items():
    spec = f"hf-random:{arch}:{kv}"
    out = os.path.join(TMP, f"{arch}.h5")
    extra = ["--no-readout-ok"] if kvcapture.HF_ARCHS[arch] else []
    run_capture(["--model", spec, "--ids", ids, "--tokens", str(T), "--sequences", "3",
                 "--batch", "2", "-o", out] + extra)
    with h5py.File(out, "r") as f:
        check(f.attrs["architecture"] == arch and f.attrs["transformers_version"] != "none",
              f"{arch}: architecture and provenance attributes")
        has_readout = "readout" in f
        windows = [int(f[f"layers/{l}"].attrs.get("sliding_window", 0)) for l in range(2)]
    err, where = attention_check(out)
    check(err <= ATTN_TOL, f"{arch}: numpy attention vs attn_out worst {err:.2e} at {where}; "
          f"per-layer sliding windows {windows}")
    if has_readout:
        lse, top, bad1, npos = readout_check(out)
        check(lse <= LSE_TOL and top <= TOP_TOL and bad1 == 0,
              f"{arch}: numpy read-out lse {lse:.2e} top-8 {top:.2e} top-1 misses {bad1}/{npos}")
    else:
        check(kvcapture.HF_ARCHS[arch] is not None, f"{arch}: read-out refused as expected")
    rc, msg = kvreplay_check(out)
    check(rc == 0, f"{arch}: kvreplay check rc {rc}: {msg.splitlines()[-1] if msg else ''}")

    validate_check(arch, spec, out)

    ad = kvcapture.HFAdapter(spec, torch.device("cpu"), torch.float32, None)
    x = torch.tensor(np.loadtxt(ids, dtype=np.int64)[:2])
    with torch.no_grad():
        plain = ad.forward(x)
        seen = []
        ad.install(lambda l, q, k, v, o, kw: seen.append(l))
        cap = ad.forward(x)
        ad.uninstall()
    check(torch.equal(plain, cap) and seen == [0, 1],
          f"{arch}: logits with capture == without (max diff {float((plain - cap).abs().max()):.1e}); layers seen {seen}")

# a saved model directory, loaded by path (from_pretrained), no tokenizer: --ids input
mdir = os.path.join(TMP, "llama-dir")
ad = kvcapture.HFAdapter(f"hf-random:llama:{LLAMA}", torch.device("cpu"), torch.float32, None)
ad.model.save_pretrained(mdir)
out = os.path.join(TMP, "llama-dir.h5")
run_capture(["--model", mdir, "--ids", ids, "--tokens", str(T), "--sequences", "3", "-o", out])
err, _ = attention_check(out)
lse, top, bad1, _ = readout_check(out)
check(err <= ATTN_TOL and lse <= LSE_TOL and bad1 == 0, f"llama from a saved folder: attention {err:.2e}, lse {lse:.2e}")

if failures:
    sys.exit(f"{len(failures)} checks failed")
print("all Hugging Face capture checks passed")
