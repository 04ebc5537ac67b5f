"""Capture of the built-in reference model (random weights, tiny shapes, CPU), checked
against independent numpy computations of attention and read-out, the model's own tensors,
and traces/SCHEMA.md (types, shapes, chunks, attributes). Variants: MHA untied, GQA, tied
unembedding; layer subset; JSONL context/question; pre-tokenised ids; deflate."""
import json
import os
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture_ref import (ROOT, attention_check, readout_check, run_capture,  # noqa: E402
                         tmpdir)

sys.path.insert(0, os.path.join(ROOT, "capture"))
import kvcapture  # noqa: E402
import refmodel  # noqa: E402

torch.set_num_threads(1)
TMP = tmpdir()
T, S = 64, 3
TEXT = os.path.join(TMP, "text.txt")
WORDS = ("in the beginning was the word and the word was with god and the light shineth in "
         "darkness and the darkness comprehended it not there was a man sent from god").split()
rng = np.random.default_rng(7)
with open(TEXT, "w") as f:
    f.write(" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), 400)) + "\n")

ATTN_TOL = 2e-3     # |o_ref - o| / max|v|: f16 rounding of q, k (rel 2^-11) through the softmax
LSE_TOL = 2e-3      # nats: f16 hidden and w_u vs the model's fp32 logits
TOP_TOL = 5e-3
from testhelp import check, failures  # noqa: E402


def spec(extra):
    return ("ref-random:3:n_layers=2,d_model=32,head_dim=8,d_ff=64,init_std=0.08," + extra)


def verify_trace(path, model_spec, label):
    with h5py.File(path, "r") as f:
        a = f.attrs
        for key in ("kvtrace_version", "model", "architecture", "n_layers", "n_heads", "n_kv_heads",
                    "head_dim", "d_model", "vocab_size", "attn_scale", "attn_softcap",
                    "sliding_window", "positional", "rope_layout", "capture_tool",
                    "capture_version", "device", "torch_version", "transformers_version",
                    "created", "source", "command"):
            if key not in a:
                check(False, f"{label}: root attribute {key} missing")
        check(int(a["kvtrace_version"]) == 1 and a["architecture"] == "kvtrace-ref"
              and a["model"] == model_spec and a["positional"] == "rope"
              and a["rope_layout"] == "rotate_half", f"{label}: attribute values")
        H, Hkv, D = int(a["n_heads"]), int(a["n_kv_heads"]), int(a["head_dim"])
        check(f["tokens"].dtype == np.dtype("<i4") and f["tokens"].shape == (S, T), f"{label}: /tokens i32 [S,T]")
        check(np.all(f["tokens"][:, 0] == refmodel.BOS_ID), f"{label}: every sequence starts with BOS")
        check(np.all(f["seq_len"][:] == T), f"{label}: seq_len")
        for l in range(int(a["n_layers"])):
            for n, h in (("q", H), ("k", Hkv), ("v", Hkv), ("attn_out", H)):
                d = f[f"layers/{l}/{n}"]
                check(d.dtype == np.dtype("<f2") and d.shape == (S, h, T, D)
                      and d.chunks == (1, 1, min(T, 256), D), f"{label}: layer {l} {n} f16 {d.shape} chunks {d.chunks}")
        # exact: the same float64 torch function on the same T x D/2 angles, rounded once to
        # float32, in the same environment (elementwise, below torch's parallel grain: no BLAS,
        # no thread split)
        cos, sin = refmodel.rope_tables(T, D, 10000.0)
        check(np.array_equal(f["rope/cos"][:], cos.numpy()) and np.array_equal(f["rope/sin"][:], sin.numpy())
              and f["rope/cos"].dtype == np.dtype("<f4"), f"{label}: /rope tables are the model's")
        r = f["readout"]
        check(r.attrs["norm_type"] == "rmsnorm" and r["w_u"].shape == (257, int(a["d_model"]))
              and r["ref_top_ids"].shape == (S, T, 8) and r["ref_lse"].dtype == np.dtype("<f4"),
              f"{label}: readout shapes and attributes")
    err, where = attention_check(path)
    check(err <= ATTN_TOL, f"{label}: numpy attention vs attn_out: worst {err:.2e} at (layer, seq, head) {where} (tol {ATTN_TOL})")
    lse, top, bad1, npos = readout_check(path)
    check(lse <= LSE_TOL and top <= TOP_TOL and bad1 == 0,
          f"{label}: numpy read-out vs model: worst lse {lse:.2e}, top-8 {top:.2e}, top-1 misses {bad1}/{npos}")


def model_tensors(model_spec, ids):
    """q, k, v per layer from the model itself (a probe attention function, not kvcapture)."""
    ad = kvcapture.RefAdapter(model_spec, torch.device("cpu"), torch.float32)
    got = {}

    def probe(module, q, k, v, mask, scale):
        got[module.layer_idx] = (q.clone(), k.clone(), v.clone())
        return refmodel.eager_attention(module, q, k, v, mask, scale)
    refmodel.ATTENTION_FUNCTIONS["probe"] = probe
    ad.model.set_attn_impl("probe")
    with torch.no_grad():
        ad.model(ids)
    ad.model.set_attn_impl("eager")
    return got


# 1. variants: MHA untied, GQA, tied unembedding
for label, extra in (("mha", "n_heads=4,n_kv_heads=4"), ("gqa", "n_heads=4,n_kv_heads=2"),
                     ("tied", "n_heads=4,n_kv_heads=1,tie_embeddings=true")):
    out = os.path.join(TMP, f"{label}.h5")
    run_capture(["--model", spec(extra), "--text", TEXT, "--tokens", str(T), "--sequences", str(S),
                 "--batch", "2", "-o", out])
    verify_trace(out, spec(extra), label)
    # stored q, k, v are the model's own (f16-rounded)
    with h5py.File(out, "r") as f:
        ids = torch.from_numpy(f["tokens"][:].astype(np.int64))
        got = model_tensors(spec(extra), ids)
        worst = 0.0
        for l, (q, k, v) in got.items():
            for n, x in (("q", q), ("k", k), ("v", v)):
                ref = x.to(torch.float16).float().numpy()
                st = f[f"layers/{l}/{n}"][:].astype(np.float32)
                worst = max(worst, float((np.abs(st - ref) / (np.abs(ref) + 1e-3)).max()))
        check(worst <= 2e-3, f"{label}: stored q/k/v equal the model's own (worst rel {worst:.1e})")

# 2. capture leaves the model's logits unchanged (bit for bit): one process, one thread, the same
# ops on the same shapes twice (the recording function only copies), so exact by design
ad = kvcapture.RefAdapter(spec("n_heads=4,n_kv_heads=2"), torch.device("cpu"), torch.float32)
ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(5))
with torch.no_grad():
    plain = ad.forward(ids)
    calls = []
    ad.install(lambda l, q, k, v, o, kw: calls.append(l))
    captured = ad.forward(ids)
    ad.uninstall()
check(torch.equal(plain, captured) and calls == [0, 1],
      f"logits with capture == without (max diff {float((plain - captured).abs().max()):.1e}), "
      f"capture saw layers {calls}")

# 3. layer subset: n_layers 1, model_layer attribute, same tensors as the full capture (exact: two
# captures of one forward, same batches, same environment; only what is recorded differs)
sub = os.path.join(TMP, "sub.h5")
run_capture(["--model", spec("n_heads=4,n_kv_heads=2"), "--text", TEXT, "--tokens", str(T),
             "--sequences", str(S), "--batch", "2", "--layers", "1", "-o", sub])
with h5py.File(sub, "r") as f, h5py.File(os.path.join(TMP, "gqa.h5"), "r") as g:
    check(int(f.attrs["n_layers"]) == 1 and int(f["layers/0"].attrs["model_layer"]) == 1
          and np.array_equal(f["layers/0/k"][:], g["layers/1/k"][:])
          and np.array_equal(f["readout/w_o/0"][:], g["readout/w_o/1"][:]),
          "--layers 1: one layer group, model_layer=1, tensors equal layer 1 of the full capture")
err, _ = attention_check(sub)
check(err <= ATTN_TOL, f"--layers 1: attention check {err:.2e}")

# 4. JSONL context/question: /prefill_len = len(BOS + context); variable lengths padded
jl = os.path.join(TMP, "qa.jsonl")
recs = [{"context": "the word was with god. " * (2 + i), "question": " who was with god?", "answer": " the word"}
        for i in range(3)]
with open(jl, "w") as f:
    f.write("\n".join(json.dumps(r) for r in recs) + "\n")
qa = os.path.join(TMP, "qa.h5")
run_capture(["--model", spec("n_heads=4,n_kv_heads=2"), "--jsonl", jl, "--tokens", "128",
             "--sequences", "3", "--deflate", "4", "-o", qa])
with h5py.File(qa, "r") as f:
    want_p = [1 + len(r["context"]) for r in recs]
    want_n = [1 + len(r["context"]) + len(r["question"]) + len(r["answer"]) for r in recs]
    check(list(f["prefill_len"][:]) == want_p and list(f["seq_len"][:]) == want_n,
          f"jsonl: prefill_len {list(f['prefill_len'][:])} seq_len {list(f['seq_len'][:])}")
    row = f["tokens"][1, :want_n[1]]
    check(bytes(row[1:want_p[1]].astype(np.uint8)) == recs[1]["context"].encode(), "jsonl: tokens are BOS + context bytes + ...")
    filt = set()
    f.visititems(lambda n, o: filt.update(o._filters.keys()) if isinstance(o, h5py.Dataset) else None)
    check(filt <= {"gzip", "shuffle"} and "gzip" in filt, f"deflate: filters {sorted(filt)}")
    check(np.all(f["layers/0/q"][0, :, want_n[0]:, :] == 0), "padding positions are zero")
err, where = attention_check(qa)
check(err <= ATTN_TOL, f"jsonl: attention check on variable-length sequences {err:.2e} at {where}")
lse, top, bad1, npos = readout_check(qa)
check(lse <= LSE_TOL and bad1 == 0, f"jsonl: read-out check lse {lse:.2e} top-1 misses {bad1}")

# 5. pre-tokenised ids, used as given (no BOS added)
idf = os.path.join(TMP, "ids.txt")
with open(idf, "w") as f:
    f.write("256 1 2 3 4 5 6 7\n256 9 8 7 6\n")
ido = os.path.join(TMP, "ids.h5")
run_capture(["--model", spec("n_heads=4,n_kv_heads=2"), "--ids", idf, "--tokens", "16",
             "--sequences", "2", "--no-readout", "-o", ido])
with h5py.File(ido, "r") as f:
    check(list(f["seq_len"][:]) == [8, 5] and list(f["tokens"][1, :5]) == [256, 9, 8, 7, 6]
          and "readout" not in f and "readout_unavailable" in f.attrs,
          "ids input: tokens as given, --no-readout marks readout_unavailable")

# 6. ref:PATH: a saved checkpoint (floats in its config; safe loader) captures the same tensors
# (exact: float32 weights round-trip bit for bit, then the same forward as the gqa capture)
ck = os.path.join(TMP, "ck.pt")
refmodel.save_model(kvcapture.RefAdapter(spec("n_heads=4,n_kv_heads=2"), torch.device("cpu"), torch.float32).model, ck)
cko = os.path.join(TMP, "ck.h5")
run_capture(["--model", "ref:" + ck, "--text", TEXT, "--tokens", str(T), "--sequences", str(S),
             "--batch", "2", "-o", cko])
with h5py.File(cko, "r") as f, h5py.File(os.path.join(TMP, "gqa.h5"), "r") as g:
    same = all(np.array_equal(f[n][:], g[n][:]) for n in ("layers/0/q", "layers/1/v", "readout/ref_lse"))
    check(same and "sha256" in f.attrs["source"], "ref:PATH checkpoint: same tensors as the in-memory model, sha256 in source")

if failures:
    sys.exit(f"{len(failures)} checks failed")
print("all capture checks passed")
