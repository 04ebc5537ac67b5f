#!/usr/bin/python3
"""Seed corpus for fuzz/fuzz_results.c: the committed small results directory
(tests/fixtures/results_small) joined at NUL bytes in the harness's file order, each
configuration's per_seq rows trimmed so that the seed stays small (the harness splits its
input back into provenance.json, configs.csv, per_seq.csv, summary.csv, per_head.csv,
calib.csv and a part).

    /usr/bin/python3 fuzz/seeds_results.py OUTDIR
"""
import os
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
src = os.path.join(root, "tests", "fixtures", "results_small")
names = ["provenance.json", "configs.csv", "per_seq.csv", "summary.csv", "per_head.csv", "calib.csv"]
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
parts = [open(os.path.join(src, n), "rb").read() for n in names]
with open(os.path.join(out, "seed_results_small"), "wb") as f:
    f.write(b"\0".join(parts))
for drop in range(2, len(names)):            # variants with one file missing
    with open(os.path.join(out, f"seed_without_{names[drop]}"), "wb") as f:
        f.write(b"\0".join(p if i != drop else b"" for i, p in enumerate(parts)))
# configs.csv with the optional label column (labels on every other configuration)
rows = parts[1].decode().splitlines()
labelled = [rows[0] + ",label"] + [r + (",Label %d" % i if i % 2 else ",") for i, r in enumerate(rows[1:])]
with open(os.path.join(out, "seed_labelled"), "wb") as f:
    f.write(b"\0".join([parts[0], ("\n".join(labelled) + "\n").encode()] + parts[2:]))
