#!/usr/bin/python3
"""evict_span (a diagnostic: evict exactly the needles' prompt entries) against an independent
numpy selection plugged into ref_replay.py's replay, on ref_replay.make_trace's small trace with
/prefill_len and a hand-written /needles (two needles in sequence 0, one in sequence 1, none in
sequence 2). Every per_seq.csv, per_head.csv and summary.csv row is compared with golden_cmp's
tolerances; needles.csv must show every measured needle's value gone (retained_frac 0) under
both spans and kept (1) under full. Hand values: sequence 0 (prompt 70) loses 10 + 4 entries
under span=needle, 3 + 2 under span=value; sequence 2 has no needle and keeps its prompt
(keep_frac 1). A trace without /needles keeps everything. Exit 0 pass, 1 fail.
"""
import csv
import os
import subprocess
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_replay  # noqa: E402
from golden_cmp import fails, finish  # noqa: E402
from golden_harness import BIN, TMP, check_golden, kvreplay_run  # noqa: E402

SEQ_LEN, PRE = [96, 90, 80], [70, 60, 50]
# seq, start, end, value_start, value_end, answer_start, answer_end
NEEDLES = [(0, 10, 20, 12, 15, 72, 74), (0, 30, 34, 31, 33, 75, 76), (1, 5, 9, 6, 8, 62, 64)]
FIELDS = ("seq", "start", "end", "value_start", "value_end", "answer_start", "answer_end")

trace = os.path.join(TMP, "evict_span.h5")
ref_replay.make_trace(trace, S=3, T=96, seq_len=SEQ_LEN, prefill_len=PRE)
with h5py.File(trace, "r+") as f:
    for k, name in enumerate(FIELDS):
        f.create_dataset(f"needles/{name}", data=np.array([nd[k] for nd in NEEDLES], dtype="<i4"))


def sel_evict_span(params, ctx, B):
    lo, hi = (3, 4) if params.get("span") == "value" else (1, 2)
    drop = {j for nd in NEEDLES if nd[0] == ctx["seq"] for j in range(nd[lo], nd[hi])}
    kept = [j for j in range(ctx["P"]) if j not in drop]
    return kept or [ctx["P"] - 1]


ref_replay.PREFILL_SELECT["evict_span"] = sel_evict_span
SPECS = ["evict_span", "evict_span span=value"]
out = os.path.join(TMP, "out_evict_span")
check_golden("evict_span", trace, out, "prefill", None, SPECS)

# needles.csv: the value of every measured needle is gone under both spans
r = kvreplay_run(trace, os.path.join(TMP, "out_evict_span_full"), "prefill", ["full"] + SPECS)
if r.returncode != 0:
    fails.append(f"kvreplay run with full: exit {r.returncode}: {r.stderr.strip()}")
else:
    rows = list(csv.DictReader(open(os.path.join(TMP, "out_evict_span_full", "needles.csv"))))
    if len(rows) != 3 * len(NEEDLES):
        fails.append(f"needles.csv: {len(rows)} rows, expected {3 * len(NEEDLES)}")
    for row in rows:
        want = 1.0 if row["config"] == "full" else 0.0
        if float(row["retained_frac"]) != want:
            fails.append(f"needles.csv {row['config']} needle {row['needle']}: retained_frac {row['retained_frac']}, want {want}")
    per_seq = {(row["config"].split()[0] + (" value" if "span=value" in row["config"] else ""), int(row["seq"])): row
               for row in csv.DictReader(open(os.path.join(TMP, "out_evict_span_full", "per_seq.csv")))}
    # keep_frac by hand: the query at t sees (P - dropped) + (t - P + 1) of t + 1 entries
    for tag, dropped in (("evict_span", (14, 4, 0)), ("evict_span value", (5, 2, 0))):
        for s in range(3):
            P, n = PRE[s], SEQ_LEN[s]
            kf = np.mean([(t + 1 - dropped[s]) / (t + 1) for t in range(P, n)])
            got = float(per_seq[(tag, s)]["keep_frac"])
            if abs(got - kf) > 1e-8:
                fails.append(f"{tag} seq {s}: keep_frac {got}, by hand {kf:.9g}")

# a trace without /needles: everything kept
plain = os.path.join(TMP, "evict_span_plain.h5")
ref_replay.make_trace(plain, S=2, T=64, prefill_len=[40, 40])
r = subprocess.run([f"{BIN}/kvreplay", "run", plain, "--strategy", "evict_span", "-o", os.path.join(TMP, "out_plain")],
                   capture_output=True, text=True)
if r.returncode != 0:
    fails.append(f"evict_span on a trace without /needles: exit {r.returncode}: {r.stderr.strip()}")
else:
    for row in csv.DictReader(open(os.path.join(TMP, "out_plain", "per_seq.csv"))):
        if float(row["keep_frac"]) != 1.0:
            fails.append(f"no /needles: seq {row['seq']} keep_frac {row['keep_frac']}, want 1")
finish("PASS: evict_span evicts exactly the needles' prompt entries (numpy, needles.csv, by hand)")
