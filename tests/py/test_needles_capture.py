"""Issue 16: needle traces. capture/make_needles.py writes needle-in-a-haystack inputs and
kvcapture --jsonl turns their byte offsets into /needles token positions. Checked against the
trace's own /tokens (independently of the capture code): every needle's tokens are
"[KEYS:1234]", its value tokens equal the first four answer tokens, the needle lies in the
context (< /prefill_len) and the answer after it, at the depth asked. Bad needle offsets are
refused with one line and no trace left behind; make_needles is reproducible byte for byte.
"""
import json
import os
import subprocess
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture_ref import PY, ROOT, run_capture, tmpdir  # noqa: E402
from testhelp import check, failures  # noqa: E402

TMP = tmpdir()
MODEL = "ref-random:1:n_layers=2,d_model=32,n_heads=4,n_kv_heads=2,head_dim=8,d_ff=64"
MAKE = os.path.join(ROOT, "capture", "make_needles.py")
TEXT = os.path.join(TMP, "filler.txt")
with open(TEXT, "w") as f:
    f.write("and it came to pass in those days that the people went up to the city. " * 60)

J1, J2 = os.path.join(TMP, "a.jsonl"), os.path.join(TMP, "b.jsonl")
for j in (J1, J2):
    subprocess.run([PY, MAKE, "--lengths", "100,300", "--depths", "0,0.5,1", "--text", TEXT, "-o", j],
                   check=True, capture_output=True)
check(open(J1, "rb").read() == open(J2, "rb").read(), "make_needles: same arguments, same bytes")
recs = [json.loads(x) for x in open(J1)]
check(len(recs) == 6, f"make_needles: 2 lengths x 3 depths = 6 records ({len(recs)})")

OUT = os.path.join(TMP, "n.h5")
run_capture(["--model", MODEL, "--jsonl", J1, "--tokens", "313", "--sequences", "6", "-o", OUT])
with h5py.File(OUT, "r") as f:
    tok = f["tokens"][...]
    sl = f["seq_len"][...]
    P = f["prefill_len"][...]
    nd = {k: f["needles"][k][...] for k in f["needles"]}
check(sorted(nd) == ["answer_end", "answer_start", "end", "seq", "start", "value_end", "value_start"],
      f"/needles members {sorted(nd)}")
check(list(nd["seq"]) == list(range(6)), f"/needles/seq one needle per sequence {list(nd['seq'])}")
bad = []
for i in range(len(nd["seq"])):
    s = int(nd["seq"][i])
    t = tok[s]
    a, b = int(nd["start"][i]), int(nd["end"][i])
    va, vb = int(nd["value_start"][i]), int(nd["value_end"][i])
    aa, ab = int(nd["answer_start"][i]), int(nd["answer_end"][i])
    r = recs[s]
    needle = bytes(t[a:b].astype(np.uint8))
    want = ("[" + r["key"] + ":" + r["value"] + "]").encode()
    if needle != want:
        bad.append((s, "needle", needle, want))
    if bytes(t[va:vb].astype(np.uint8)) != r["value"].encode():
        bad.append((s, "value"))
    if bytes(t[aa:ab].astype(np.uint8)) != (r["value"] + "]").encode() or ab != sl[s]:
        bad.append((s, "answer"))
    if not (1 <= a and b <= P[s] <= aa):
        bad.append((s, "context/answer split", a, b, P[s], aa))
    ctx = len(r["context"])
    if abs((a - 1) - r["depth"] * (ctx - 12)) > 1.0:
        bad.append((s, "depth", a, r["depth"], ctx))
    # the question is " [KEY:": the key appears in the context only at the needle
    if bytes(t[:P[s]].astype(np.uint8)).count(("[" + r["key"] + ":").encode()) != 1:
        bad.append((s, "key unique"))
check(not bad, f"/needles positions match the trace's tokens {bad[:2]}")

# bad offsets: refused with one line, no trace left behind
rec = dict(recs[0])
for label, nd_bad in (("end past the context", [{"start": 0, "end": 10**6, "value_start": 1, "value_end": 2}]),
                      ("non-integer", [{"start": "0", "end": 5, "value_start": 1, "value_end": 2}]),
                      ("empty list", [])):
    rec["needles"] = nd_bad
    jb = os.path.join(TMP, "bad.jsonl")
    with open(jb, "w") as f:
        f.write(json.dumps(rec) + "\n")
    ob = os.path.join(TMP, "bad.h5")
    rc, err = run_capture(["--model", MODEL, "--jsonl", jb, "--tokens", "313", "--sequences", "1", "-o", ob],
                          expect_ok=False)
    lines = [x for x in err.splitlines() if x.strip()]
    check(rc != 0 and len(lines) == 1 and "needles" in lines[0] and not os.path.exists(ob),
          f"bad needles ({label}) refused: {lines[-1] if lines else ''}")

sys.exit(1 if failures else 0)
