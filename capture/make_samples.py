#!/usr/bin/env python3
"""Regenerate the shipped sample traces from the trained reference model.

    /usr/bin/python3 capture/make_samples.py [--model capture/ref_model.pt] [--out traces]

traces/sample.h5     8 sequences x 256 tokens of HELD-OUT KJV text (capture/corpus.py: every
                     20th chapter, never trained on), read-out and attn_out, deflate 6.
traces/sample_qa.h5  6 (context, question) pairs from held-out verses, /prefill_len = BOS +
                     context: the context is a run of consecutive verses; the question repeats
                     the first half of the FIRST verse (after a newline) and the answer is its
                     second half, so decoding needs the earliest part of the prompt (a cloze
                     of an early sentence).

Deterministic on one machine: the capture runs single-threaded (OMP_NUM_THREADS=1) from a fixed
checkpoint and fixed text; only the `created` attribute changes (set SOURCE_DATE_EPOCH to pin
it). Across machines the float32 forward goes through OpenBLAS kernels chosen by CPU (and by
OPENBLAS_CORETYPE), whose summation orders differ: tokens, shapes and attributes are identical,
tensor values agree to float32/f16 rounding, not necessarily byte for byte
(tests/py/test_make_samples.py compares a re-capture that way). The traces are replaced
(kvcapture --force) only once each new one is complete.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from pydeps import require  # noqa: E402

require("make_samples", ("numpy", "h5py", "torch"))   # kvcapture's, checked before any work
from corpus import split_text  # noqa: E402

T = 256


def qa_records(held, n=6):
    """(context, question, answer) built from consecutive held-out verses."""
    verses = held.strip("\n").split("\n")
    recs, i = [], 0
    while len(recs) < n and i < len(verses) - 8:
        v1 = verses[i]
        if not 40 <= len(v1) <= 60:
            i += 1
            continue
        ctx, j = v1, i + 1
        while j < len(verses) and len(ctx) + 1 + len(verses[j]) <= 190:
            ctx += "\n" + verses[j]
            j += 1
        if j - i < 2:            # the first verse must be followed by at least one other
            i += 1
            continue
        words = v1.split(" ")
        cut = len(" ".join(words[:max(2, len(words) // 2)]))
        recs.append({"context": ctx, "question": "\n" + v1[:cut], "answer": v1[cut:]})
        i = j + 40               # spread the pairs over the held-out text
    if len(recs) < n:
        raise SystemExit(f"make_samples: only {len(recs)} question pairs found in held-out text")
    return recs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(HERE, "ref_model.pt"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "traces"))
    a = ap.parse_args()
    if not os.path.isfile(a.model):
        raise SystemExit(f"make_samples: no checkpoint '{a.model}' (train it with capture/train_ref.py)")
    _, held = split_text()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cap = [sys.executable, os.path.join(HERE, "kvcapture.py"), "--model", "ref:" + os.path.relpath(a.model)]
    with tempfile.TemporaryDirectory(prefix="kvsamples.") as d:
        text = os.path.join(d, "kjv-heldout.txt")
        with open(text, "w") as f:
            f.write(held)
        jl = os.path.join(d, "kjv-heldout-qa.jsonl")
        with open(jl, "w") as f:
            for r in qa_records(held):
                f.write(json.dumps(r) + "\n")
        runs = [
            cap + ["--source-note", "KJV Bible held-out chapters (capture/corpus.py split_text()[1], "
                   "every 20th chapter, never trained on)", "--text", text, "--tokens", str(T), "--sequences", "8", "--batch", "8",
                   "--deflate", "6", "--force", "-o", os.path.join(a.out, "sample.h5")],
            cap + ["--source-note", "cloze pairs from KJV held-out verses (capture/make_samples.py "
                   "qa_records: context = consecutive verses, question = first half of the first "
                   "verse, answer = its second half)", "--jsonl", jl, "--tokens", str(T), "--sequences", "6", "--batch", "1",
                   "--deflate", "6", "--force", "-o", os.path.join(a.out, "sample_qa.h5")],
        ]
        for cmd in runs:
            print("+ " + " ".join(cmd), flush=True)
            rc = subprocess.run(cmd, env=env).returncode
            if rc:       # kvcapture printed why, in one line
                raise SystemExit(rc)


if __name__ == "__main__":
    main()
