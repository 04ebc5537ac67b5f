#!/usr/bin/python3
"""Seed corpus for fuzz/fuzz_sweep.c: every committed sweep file (sweeps/, bench/).

    /usr/bin/python3 fuzz/seeds_sweep.py OUTDIR
"""
import glob
import os
import shutil
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for p in sorted(glob.glob(os.path.join(root, "sweeps", "*.sweep")) + glob.glob(os.path.join(root, "bench", "*.sweep"))):
    shutil.copyfile(p, os.path.join(out, "seed_" + os.path.basename(p)))
# labels: quoted, with {KEY} placeholders, shared across budgets, on a repeated configuration
with open(os.path.join(out, "seed_labels"), "w") as f:
    f.write('full label=Full\nquant kbits=2,4 vbits=2 residual=32 label="KIVI {kbits}bit"  # c\n'
            'snapkv keep=0.25,0.5 preset=factory label=SnapKV\nfull label=Full\n')
