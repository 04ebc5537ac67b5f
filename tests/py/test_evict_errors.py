#!/usr/bin/python3
"""Bad parameters of the eviction strategies (h2o, tova, snapkv, pyramidkv, adakv, quest, cab)
through `kvreplay run`: each must exit non-zero with one clear line on stderr naming the
strategy and the offending value, and leave no result files behind.
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_replay  # noqa: E402

BIN = os.environ.get("BIN", "bin")
TMP = os.environ.get("KV_TMP", "/tmp")
trace = os.path.join(TMP, "err.h5")
ref_replay.make_trace(trace, S=2, T=64, readout=False)

CASES = [   # (spec, mode, words the message must contain)
    ("snapkv keep=0.5 kernel=4", "prefill", ["snapkv", "kernel=4", "odd"]),
    ("snapkv keep=0.5 kernel=0", "prefill", ["snapkv", "kernel=0"]),
    ("snapkv keep=0.5 window=0", "prefill", ["snapkv", "window=0"]),
    ("snapkv keep=0.25", "prefill", ["snapkv", "window=32", "budget 12"]),      # P = 48: B = 12 < w
    ("pyramidkv budget=8", "prefill", ["pyramidkv", "window=8", "budget 8"]),
    ("adakv keep=0.5 alpha=1.5", "prefill", ["adakv", "alpha", "1.5"]),
    ("adakv keep=0.5 alpha=-0.1", "prefill", ["adakv", "alpha"]),
    ("adakv keep=0.5 kernel=2 window=4", "prefill", ["adakv", "kernel=2"]),
    ("quest keep=0.5 page=0", "prefill", ["quest", "page", "0"]),
    ("quest keep=0.5", "online", ["quest", "online"]),
    ("cab keep=0.5 local=0.8 bridges=0.3", "prefill", ["cab", "local=0.8", "bridges=0.3"]),
    ("h2o keep=0.5 recent=2", "prefill", ["h2o", "recent"]),
    ("pyramidkv keep=0.5 beta=0", "prefill", ["pyramidkv", "beta"]),
    ("snapkv keep=0.5 preset=nope", "prefill", ["snapkv", "nope"]),
]

fails = 0
for i, (spec, mode, words) in enumerate(CASES):
    out = os.path.join(TMP, f"o{i}")
    r = subprocess.run([f"{BIN}/kvreplay", "run", trace, "-o", out, "--mode", mode, "--decode", "16",
                        "--strategy", spec], capture_output=True, text=True)
    lines = [x for x in r.stderr.strip().split("\n") if x and "note:" not in x]
    msg = lines[0] if lines else ""
    ok = r.returncode != 0 and len(lines) == 1 and all(w in msg for w in words)
    leftovers = [f for f in os.listdir(out) if f.endswith(".csv")] if os.path.isdir(out) else []
    if leftovers:
        ok = False
    print(("ok    " if ok else "FAIL  ") + f"'{spec}' ({mode}): exit {r.returncode}: {r.stderr.strip()}"
          + (f" leftovers {leftovers}" if leftovers else ""))
    fails += not ok
if fails:
    print(f"FAIL: {fails} of {len(CASES)} cases")
    sys.exit(1)
print(f"PASS: {len(CASES)} bad-parameter cases refused with one clear line")
