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
