"""kvcapture and the context a reference checkpoint was trained at (issue 16):
  - a checkpoint's config["train_ctx"] (tokens per training sequence, BOS included) bounds the
    sequences kvcapture captures: longer ones are refused in one line before any forward, and
    nothing is written; exactly train_ctx tokens are accepted;
  - --allow-beyond-training captures anyway: one warning line on stderr, root attributes
    model_train_ctx and beyond_training = 1, `source` starting with "BEYOND TRAINING", and the
    trace still passes `kvreplay check` (which prints the source in `info`);
  - the bound is the longest sequence actually captured (--ids shorter than --tokens pass);
  - a top-level "train_ctx" key is read too; a non-integer train_ctx is refused;
  - checkpoints without the field (the shipped capture/ref_model.pt, trained at seq 256 per
    capture/train.log) are taken as trained at 256 and say so in `source`."""
import os
import subprocess
import sys

import h5py
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture_ref import ROOT, run_capture, tmpdir  # noqa: E402
from testhelp import check, failures  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "capture"))
import refmodel  # noqa: E402

TMP = tmpdir()
BIN = os.environ.get("BIN", os.path.join(ROOT, "bin"))
TEXT = os.path.join(TMP, "text.txt")
with open(TEXT, "w") as f:
    f.write("and god said let there be light and there was light\n" * 40)

torch.manual_seed(3)
model = refmodel.RefModel(refmodel.RefConfig(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64))
ck32 = os.path.join(TMP, "ck32.pt")
refmodel.save_model(model, ck32, train_ctx=32)
legacy = os.path.join(TMP, "legacy.pt")
refmodel.save_model(model, legacy)                      # no train_ctx: a checkpoint from before the field
top = os.path.join(TMP, "top.pt")
torch.save({"format": "kvtrace-ref", "version": 1, "config": refmodel.RefConfig(
    n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64).__dict__,
    "train_ctx": 40, "state_dict": model.state_dict()}, top)


def cap(ck, tokens, extra=(), name="t.h5", inp=("--text", TEXT)):
    out = os.path.join(TMP, name)
    rc, err = run_capture(["--model", "ref:" + ck, *inp, "--tokens", str(tokens), "--sequences", "2",
                           *extra, "-o", out], expect_ok=False)
    return rc, [ln for ln in err.splitlines() if ln.strip()], out


def attrs(path):
    with h5py.File(path, "r") as f:
        a = f.attrs
        return {k: (a[k].decode() if isinstance(a[k], bytes) else a[k]) for k in a}


# refused past train_ctx, nothing written
rc, lines, out = cap(ck32, 33, name="r33.h5")
check(rc == 1 and len(lines) == 1 and "33-token sequences" in lines[0] and "trained at" in lines[0]
      and "32" in lines[0] and "--allow-beyond-training" in lines[0] and not os.path.exists(out),
      f"--tokens 33 > train_ctx 32: refused in one line, no trace ({rc}: {lines})")

# exactly train_ctx: accepted, marked within training
rc, lines, out = cap(ck32, 32, name="ok32.h5")
a = attrs(out) if rc == 0 else {}
check(rc == 0 and a.get("model_train_ctx") == 32 and a.get("beyond_training") == 0
      and "trained at 32 tokens" in a.get("source", "") and not a.get("source", "").startswith("BEYOND"),
      f"--tokens 32 = train_ctx: captured, model_train_ctx 32, beyond_training 0 ({rc}: {lines[-1:]})")

# --allow-beyond-training: warned, recorded
rc, lines, out = cap(ck32, 48, ("--allow-beyond-training",), name="beyond.h5")
a = attrs(out) if rc == 0 else {}
warn = [ln for ln in lines if ln.startswith("kvcapture: warning:")]
check(rc == 0 and len(warn) == 1 and "48-token sequences" in warn[0] and "beyond_training" in warn[0],
      f"--allow-beyond-training: one warning line ({rc}: {lines})")
check(a.get("beyond_training") == 1 and a.get("model_train_ctx") == 32
      and a.get("source", "").startswith("BEYOND TRAINING: 48-token sequences"),
      f"beyond the training context: attributes beyond_training=1, model_train_ctx=32, source says so "
      f"({ {k: a.get(k) for k in ('beyond_training', 'model_train_ctx')} })")
exe = os.path.join(BIN, "kvreplay")
if os.path.exists(exe) and rc == 0:
    r = subprocess.run([exe, "check", out], capture_output=True, text=True)
    i = subprocess.run([exe, "info", out], capture_output=True, text=True)
    check(r.returncode == 0 and i.returncode == 0 and "BEYOND TRAINING" in i.stdout,
          f"kvreplay check accepts the marked trace, info shows the mark (rc {r.returncode}, {i.returncode})")

# the longest captured sequence is what counts: ids of <= 32 tokens under --tokens 64
ids = os.path.join(TMP, "ids.txt")
with open(ids, "w") as f:
    f.write("256 " + " ".join(["97"] * 31) + "\n256 98 99\n")
rc, lines, out = cap(ck32, 64, name="ids.h5", inp=("--ids", ids))
check(rc == 0 and attrs(out).get("beyond_training") == 0,
      f"--ids of at most 32 tokens with --tokens 64: within training, captured ({rc}: {lines[-1:]})")

# a top-level train_ctx key
rc, lines, out = cap(top, 41, name="top.h5")
check(rc == 1 and len(lines) == 1 and "the 40 tokens" in lines[0], f"top-level train_ctx 40: --tokens 41 refused ({lines})")

# a checkpoint whose train_ctx is not an integer
bad = os.path.join(TMP, "bad.pt")
torch.save({"format": "kvtrace-ref", "version": 1, "config": dict(refmodel.RefConfig(
    n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64).__dict__, train_ctx="long"),
    "state_dict": model.state_dict()}, bad)
rc, lines, out = cap(bad, 16, name="bad.h5")
check(rc == 1 and len(lines) == 1 and "train_ctx" in lines[0] and not os.path.exists(out),
      f"train_ctx 'long': refused in one line ({lines})")

# legacy checkpoints: trained at 256 (train_ref.py's default --seq before train_ctx was recorded)
rc, lines, out = cap(legacy, 257, name="legacy.h5")
check(rc == 1 and len(lines) == 1 and "the 256 tokens" in lines[0], f"legacy checkpoint, --tokens 257: refused ({lines})")
rc, lines, out = cap(legacy, 64, name="legacy64.h5")
a = attrs(out) if rc == 0 else {}
check(rc == 0 and a.get("model_train_ctx") == 256 and "assumed 256: the checkpoint records no train_ctx" in a.get("source", ""),
      f"legacy checkpoint, --tokens 64: captured, model_train_ctx 256, assumption stated ({rc}: {lines[-1:]})")
shipped = refmodel.load_model(os.path.join(ROOT, "capture", "ref_model.pt"))
check(shipped.train_ctx == 256 and shipped.train_ctx_assumed, "the shipped capture/ref_model.pt: train_ctx 256 (assumed)")
rc, lines, out = cap(os.path.join(ROOT, "capture", "ref_model.pt"), 512, name="shipped.h5")
check(rc == 1 and len(lines) == 1 and "512-token sequences (BOS included) exceed the 256 tokens" in lines[0],
      f"the shipped model at --tokens 512 (issue 16's case): refused ({lines})")

if failures:
    sys.exit(f"{len(failures)} checks failed")
print("train_ctx: refused past it, allowed and marked with --allow-beyond-training")
