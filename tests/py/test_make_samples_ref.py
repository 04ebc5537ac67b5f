"""`make samples` for new reference models: capture/make_samples.py --kind plain / needles and
the Makefile's loop over SAMPLES_MODELS, on a tiny random checkpoint written here in the format
capture/train_ref.py writes (refmodel.save_model with train_ctx).

  - the plain trace: --sequences windows, then the shorter calibration window (--calib-length);
  - determinism: the same command twice, into two different folders, with SOURCE_DATE_EPOCH
    set, gives the same bytes (single-threaded capture; the trace's `command` attribute names
    no scratch path); `make samples` gives the bytes of a direct make_samples.py run;
  - the needle trace is what was asked, checked on its own /tokens: one sequence per (length,
    depth) of the asked lengths, /prefill_len, one /needles row per sequence whose value tokens
    are the first four answer tokens, at the depth asked, then one needle of the shortest length
    at depth 0.5 (the calibration sequence); no attn_out unless --attn-out;
  - sequences past the checkpoint's train_ctx are refused in one line, leaving no trace and no
    scratch folder (--allow-beyond-training captures them and marks beyond_training = 1);
  - a model missing from SAMPLES_MODEL_DIR is skipped with one line per model.
"""
import os
import subprocess
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture_ref import PY, ROOT, tmpdir  # noqa: E402
from testhelp import check, failures  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "capture"))
import refmodel  # noqa: E402

TMP = tmpdir()
MODELS = os.path.join(TMP, "models")
os.makedirs(MODELS, exist_ok=True)
CK = os.path.join(MODELS, "ref4.pt")
TRAIN_CTX = 200
torch.manual_seed(7)
cfg = refmodel.RefConfig(vocab_size=257, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
                         max_seq=512)
refmodel.save_model(refmodel.RefModel(cfg), CK, train_ctx=TRAIN_CTX)
MS = os.path.join(ROOT, "capture", "make_samples.py")
ENV = dict(os.environ, SOURCE_DATE_EPOCH="0")
LENGTHS, DEPTHS = [100, 200], [0.2, 0.8]


def make(kind, out, *extra):
    os.makedirs(os.path.dirname(out), exist_ok=True)
    return subprocess.run([PY, MS, "--model", CK, "--kind", kind, "-o", out] + list(extra), capture_output=True,
                          text=True, env=ENV, cwd=ROOT)


def same_bytes(a, b):
    with open(a, "rb") as x, open(b, "rb") as y:
        return x.read() == y.read()


NEEDLE_ARGS = ["--lengths", ",".join(map(str, LENGTHS)), "--depths", ",".join(map(str, DEPTHS))]
na, nb = os.path.join(TMP, "a", "ref4_needles.h5"), os.path.join(TMP, "b", "ref4_needles.h5")
for out in (na, nb):
    r = make("needles", out, *NEEDLE_ARGS)
    check(r.returncode == 0, f"make_samples --kind needles -> {out}: exit {r.returncode} {r.stderr.strip()[-300:]}")
    if r.returncode:
        sys.exit(1)
check(same_bytes(na, nb), "needle trace: two runs into different folders give the same bytes")
ta, tb = os.path.join(TMP, "a", "ref4_text.h5"), os.path.join(TMP, "b", "ref4_text.h5")
for out in (ta, tb):
    r = make("plain", out, "--tokens", str(TRAIN_CTX), "--sequences", "2")
    check(r.returncode == 0, f"make_samples --kind plain -> {out}: exit {r.returncode} {r.stderr.strip()[-300:]}")
check(same_bytes(ta, tb), "plain trace: two runs into different folders give the same bytes")
check(not [x for x in os.listdir(os.path.join(TMP, "a")) if x.startswith(".kvsamples")], "no scratch folder left")
with h5py.File(ta, "r") as f:
    check(list(f["seq_len"][()]) == [TRAIN_CTX] * 3 and "prefill_len" not in f,
          f"plain trace: 2 windows, then the calibration window (min(256, --tokens)) {list(f['seq_len'][()])}")
tc = os.path.join(TMP, "a", "calib.h5")
r = make("plain", tc, "--tokens", str(TRAIN_CTX), "--sequences", "2", "--calib-length", "64")
with h5py.File(tc, "r") as f:
    tk, ln = f["tokens"][()], list(f["seq_len"][()])
check(r.returncode == 0 and ln == [TRAIN_CTX, TRAIN_CTX, 64] and all(tk[:, 0] == refmodel.BOS_ID),
      f"plain --calib-length 64: the last sequence has 64 tokens {ln}")
# consecutive windows of the held-out text from its start, as kvcapture --text cuts them
from corpus import split_text  # noqa: E402
body = b"".join(bytes(tk[i, 1:n].astype(np.uint8)) for i, n in enumerate(ln))
check(split_text()[1].encode("ascii").startswith(body), "plain: the windows are the held-out text from its start, "
      "one after another, the calibration window last")

with h5py.File(na, "r") as f:
    tok, sl, P = f["tokens"][()], f["seq_len"][()], f["prefill_len"][()]
    nd = {k: f["needles"][k][()] for k in f["needles"]}
    cmd = str(f.attrs["command"])
    check("layers/0/attn_out" not in f and "readout/hidden" in f, "needle trace: read-out, no attn_out by default")
    check(int(f.attrs["beyond_training"]) == 0 and int(f.attrs["model_train_ctx"]) == TRAIN_CTX,
          "needle trace: within the checkpoint's train_ctx (beyond_training = 0)")
check(TMP not in cmd and "-o ref4_needles.h5" in cmd, f"command attribute names no scratch or output path: {cmd[-60:]}")
want_len = [L for L in LENGTHS for _ in DEPTHS] + [min(LENGTHS)]
check(list(sl) == want_len, f"one sequence per (length, depth), lengths in tokens, then the calibration "
      f"sequence: {list(sl)} vs {want_len}")
check(list(nd["seq"]) == list(range(len(want_len))), f"one needle per sequence: {list(nd['seq'])}")
bad = []
for i, s in enumerate(nd["seq"]):
    t = tok[s]
    vs, ve, a0, a1 = (int(nd[k][i]) for k in ("value_start", "value_end", "answer_start", "answer_end"))
    st, en = int(nd["start"][i]), int(nd["end"][i])
    if not (bytes(t[vs:ve].astype(np.uint8)) == bytes(t[a0:a0 + 4].astype(np.uint8)) and a1 == sl[s] and
            P[s] == a0 - 7 and chr(t[st]) == "[" and chr(t[en - 1]) == "]"):
        bad.append(i)
    depth = st / (P[s] - (en - st))          # replay/RESULTS.md needles.csv `depth`
    if abs(depth - (DEPTHS + [0.5])[i % len(DEPTHS) if i < len(DEPTHS) * len(LENGTHS) else -1]) > 0.02:
        bad.append((i, depth))
check(not bad, f"needles: value = answer tokens, question of 7 bytes before it, at the depth asked {bad[:3]}")

# past train_ctx: refused in one line, nothing left; allowed and marked with the flag
over = os.path.join(TMP, "c", "over.h5")
r = make("needles", over, "--lengths", "300", "--depths", "0.5")
lines = [x for x in r.stderr.splitlines() if x.strip()]
check(r.returncode != 0 and len(lines) == 1 and "trained at" in lines[0] and not os.path.exists(over)
      and not os.listdir(os.path.dirname(over)), f"a length past train_ctx is refused in one line: {lines[-1:]}")
r = make("needles", over, "--lengths", "300", "--depths", "0.5", "--allow-beyond-training")
ok = r.returncode == 0 and int(h5py.File(over, "r").attrs["beyond_training"]) == 1
check(ok, f"--allow-beyond-training captures it, marked beyond_training = 1 {r.stderr.strip()[-200:]}")

# the Makefile: the model present is captured (the bytes of a direct run), the missing one skipped
MO = os.path.join(TMP, "make")
r = subprocess.run(["make", "--no-print-directory", "-C", ROOT, "samples", "SAMPLES_BASE=0", f"SAMPLES_OUT={MO}",
                    f"SAMPLES_MODEL_DIR={MODELS}", "SAMPLES_MODELS=ref4 ref8", f"SAMPLES_TEXT_TOKENS={TRAIN_CTX}",
                    "SAMPLES_TEXT_SEQS=2", "SAMPLES_NEEDLE_LENGTHS=100,200", "SAMPLES_NEEDLE_DEPTHS=0.2,0.8",
                    f"PYTHON={PY}"], capture_output=True, text=True, env=ENV)
skip = [x for x in r.stdout.splitlines() if "skipped" in x]
check(r.returncode == 0 and len(skip) == 1 and "ref8.pt not present" in skip[0],
      f"make samples: ref8 missing, skipped with one line {skip} {r.stderr.strip()[-200:]}")
check(sorted(os.listdir(MO)) == ["ref4_needles.h5", "ref4_text.h5"], f"make samples wrote {sorted(os.listdir(MO))}")
if r.returncode == 0:
    check(same_bytes(os.path.join(MO, "ref4_needles.h5"), na) and same_bytes(os.path.join(MO, "ref4_text.h5"), ta),
          "make samples writes the bytes of the direct make_samples.py runs (same output names)")

if failures:
    sys.exit(f"{len(failures)} checks failed")
print("make_samples: deterministic plain and needle traces of a reference checkpoint")
