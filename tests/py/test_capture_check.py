"""`kvreplay check` on traces written by kvcapture: fresh captures of the reference model
(GQA, tied unembedding, JSONL context/question with deflate, a layer subset) and the shipped
samples must pass; copies with a corrupted attn_out or ref_lse must fail (the check really
verifies, within f16 tolerance, what SCHEMA.md §6 says)."""
import json
import os
import shutil
import sys

import h5py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture_ref import ROOT, kvreplay_check, run_capture, tmpdir  # noqa: E402

TMP = tmpdir()
TEXT = os.path.join(TMP, "text.txt")
with open(TEXT, "w") as f:
    f.write("the light shineth in darkness and the darkness comprehended it not\n" * 30)
M = "ref-random:5:n_layers=2,d_model=32,head_dim=8,d_ff=64,init_std=0.08,n_heads=4"
failures = []


def expect(path, want_ok, label):
    rc, msg = kvreplay_check(path)
    ok = (rc == 0) == want_ok and rc not in (127, 2)
    last = msg.splitlines()[-1] if msg else ""
    print(("ok    " if ok else "FAIL  ") + f"{label}: kvreplay check rc {rc}: {last}")
    if not ok:
        failures.append(label)
        print("      " + msg.replace("\n", "\n      ")[:3000])


traces = {}
for label, extra in (("gqa", ["--model", M + ",n_kv_heads=2"]),
                     ("tied", ["--model", M + ",n_kv_heads=1,tie_embeddings=true"]),
                     ("subset", ["--model", M + ",n_kv_heads=2", "--layers", "1"])):
    out = os.path.join(TMP, label + ".h5")
    run_capture(extra + ["--text", TEXT, "--tokens", "64", "--sequences", "3", "-o", out])
    traces[label] = out
jl = os.path.join(TMP, "qa.jsonl")
with open(jl, "w") as f:
    for i in range(3):
        f.write(json.dumps({"context": "in the beginning " * (2 + i), "question": " in the", "answer": " beginning"}) + "\n")
traces["qa"] = os.path.join(TMP, "qa.h5")
run_capture(["--model", M + ",n_kv_heads=2", "--jsonl", jl, "--tokens", "96", "--sequences", "3",
             "--deflate", "4", "-o", traces["qa"]])

for label, path in traces.items():
    expect(path, True, label)
for name in ("sample.h5", "sample_qa.h5"):
    p = os.path.join(ROOT, "traces", name)
    if os.path.exists(p):
        expect(p, True, "shipped " + name)
    else:
        print(f"FAIL  shipped traces/{name} is missing")
        failures.append(name)

# corrupted copies must fail
bad = os.path.join(TMP, "bad_attn.h5")
shutil.copy(traces["gqa"], bad)
with h5py.File(bad, "a") as f:
    d = f["layers/1/attn_out"]
    d[0, 1] = d[0, 1] * 1.2
expect(bad, False, "attn_out of layer 1 scaled by 1.2")
bad2 = os.path.join(TMP, "bad_lse.h5")
shutil.copy(traces["gqa"], bad2)
with h5py.File(bad2, "a") as f:
    d = f["readout/ref_lse"]
    d[1] = d[1] + 0.2
expect(bad2, False, "ref_lse shifted by 0.2 nats")

if failures:
    sys.exit(f"{len(failures)} checks failed: {failures}")
print("kvreplay check accepts captured traces and rejects corrupted ones")
