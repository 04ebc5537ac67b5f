#!/usr/bin/env python3
"""Needle-in-a-haystack inputs for kvcapture --jsonl: held-out KJV prose contexts
of several lengths, each with one planted fact "[KEYS:1234]" at a given depth and three
distractor facts, then the question " [KEYS:" and the answer "1234]". Each record carries
the needle's byte offsets, which kvcapture writes to /needles (traces/SCHEMA.md).

    /usr/bin/python3 capture/make_needles.py --lengths 256,512,1024 --depths 0.1,0.5,0.9 -o needles.jsonl
    /usr/bin/python3 capture/kvcapture.py --model ref:MODEL.pt --jsonl needles.jsonl \\
        --tokens 1037 --sequences 9 -o traces/needles.h5

Records come in order length-major, depth-minor; --tokens must be at least the longest
context + 13 (BOS, the 7-byte question, the 5-byte answer). Seeded: the same arguments give the same file.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import synth  # noqa: E402


def records(lengths, depths, seed, filler):
    out = []
    for L in lengths:
        for d in depths:
            out.append(synth.needle_record(seed, len(out), L, d, filler))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="256,512,1024", help="context lengths in bytes")
    ap.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9", help="needle depths in [0, 1]")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--text", default=None, help="filler prose (default: the KJV held-out chapters)")
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    try:
        lengths = [int(x) for x in a.lengths.split(",")]
        depths = [float(x) for x in a.depths.split(",")]
    except ValueError:
        sys.exit("make_needles: --lengths and --depths are comma-separated numbers")
    if any(L < 64 for L in lengths) or any(not 0.0 <= d <= 1.0 for d in depths):
        sys.exit("make_needles: lengths must be >= 64 and depths in [0, 1]")
    if a.text:
        with open(a.text, "rb") as f:
            filler = np.frombuffer(f.read(), dtype=np.uint8)
    else:
        from corpus import split_text
        filler = np.frombuffer(split_text()[1].encode("ascii"), dtype=np.uint8)
    if len(filler) < max(lengths) + 64:
        sys.exit(f"make_needles: the filler text has {len(filler)} bytes, fewer than the longest context")
    recs = records(lengths, depths, a.seed, filler)
    tmp = a.output + ".tmp"
    with open(tmp, "w") as f:
        for r in recs:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    os.replace(tmp, a.output)
    print(f"make_needles: {len(recs)} records ({len(lengths)} lengths x {len(depths)} depths) -> "
          f"{a.output}; capture with --tokens {max(lengths) + 13} --sequences {len(recs)}")


if __name__ == "__main__":
    main()
