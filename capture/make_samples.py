#!/usr/bin/env python3
"""Regenerate the shipped sample traces from a trained reference model (`make samples` runs it
for every shipped trace; see the Makefile and traces/SCHEMA.md "Shipped traces").

    /usr/bin/python3 capture/make_samples.py [--model capture/ref_model.pt] [--out traces]
    /usr/bin/python3 capture/make_samples.py --model capture/models/ref4.pt --kind plain -o traces/ref4_text.h5
    /usr/bin/python3 capture/make_samples.py --model capture/models/ref4.pt --kind needles -o traces/ref4_needles.h5

--kind samples (default) writes the two traces of capture/ref_model.pt into --out:
traces/sample.h5     8 sequences x 256 tokens of HELD-OUT KJV text (capture/corpus.py: every
                     20th chapter, never trained on), read-out and attn_out, deflate 6.
traces/sample_qa.h5  6 (context, question) pairs from held-out verses, /prefill_len = BOS +
                     context: the context is a run of consecutive verses; the question repeats
                     the first half of the FIRST verse (after a newline) and the answer is its
                     second half, so decoding needs the earliest part of the prompt (a cloze
                     of an early sentence).
One trace of --model into -o:
--kind plain         --sequences windows of --tokens tokens (BOS included; default 1 x 1024)
                     of the held-out text, then the next --calib-length tokens (default 256)
                     as the last sequence, which kvreplay's calibrating strategies take by
                     default (without it a 1-sequence trace leaves them nothing to evaluate);
                     read-out, no attn_out unless --attn-out.
--kind qa            the 6 cloze pairs above at --tokens (default 256).
--kind needles       needle-in-a-haystack inputs of capture/make_needles.py over the held-out
                     text: one sequence per (length, depth), --lengths in tokens of the whole
                     sequence (BOS + context + the 7-byte question + the 5-byte answer; default
                     256,1024), --depths (default 0.1,0.9), then one sequence of --calib-length
                     tokens (default the shortest length, depth 0.5): the last sequence, which
                     kvreplay's calibrating strategies take by default, so that no needle of the
                     grid is lost to calibration; /prefill_len and /needles recorded.
The capture refuses sequences longer than the checkpoint's train_ctx unless
--allow-beyond-training (for development with a shorter-trained checkpoint only).

Deterministic on one machine: the capture runs single-threaded (OMP_NUM_THREADS=1) from a fixed
checkpoint and fixed text, in a scratch folder beside the output with fixed relative names (the
trace's `command` attribute names no temporary path), so with SOURCE_DATE_EPOCH set (it pins
`created`) two runs write the same bytes. Across machines the float32 forward goes through
OpenBLAS kernels chosen by CPU (and by OPENBLAS_CORETYPE), whose summation orders differ: tokens,
shapes and attributes are identical, tensor values agree to float32/f16 rounding, not
necessarily byte for byte (tests/py/test_make_samples.py compares a re-capture that way). Each
trace replaces its predecessor only once it is complete.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from pydeps import require  # noqa: E402

require("make_samples", ("numpy", "h5py", "torch"))   # kvcapture's, checked before any work
from corpus import split_text  # noqa: E402

T = 256
NEEDLE_EXTRA = 13       # BOS, the question " [KEYS:" (7 bytes) and the answer "1234]" (5 bytes)
NEEDLE_STREAM = 2026    # make_needles.py's default --seed: the same records as its command line
HELD_NOTE = "KJV Bible held-out chapters (capture/corpus.py split_text()[1], every 20th chapter, never trained on)"
QA_NOTE = ("cloze pairs from KJV held-out verses (capture/make_samples.py qa_records: context = consecutive "
           "verses, question = first half of the first verse, answer = its second half)")


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


def model_name(path):
    """The checkpoint's name as the trace records it: relative to the repository when inside it
    (capture/ref_model.pt), else its file name; the same wherever the checkout lies."""
    p = os.path.abspath(path)
    rel = os.path.relpath(p, ROOT)
    return os.path.basename(p) if rel.startswith("..") else rel


def parse_numbers(s, what, conv):
    try:
        return [conv(x) for x in s.split(",")]
    except ValueError:
        raise SystemExit(f"make_samples: {what} '{s}': expected comma-separated numbers")


def capture_runs(a, held, work):
    """[(kvcapture arguments, output name)] for --kind, inputs written into `work`; every path
    relative to it."""
    cap = ["--model", "ref:" + model_name(a.model)]
    if a.allow_beyond_training:
        cap.append("--allow-beyond-training")
    if a.kind != "samples" and not a.attn_out:
        cap.append("--no-attn-out")
    if a.kind in ("samples", "plain"):
        with open(os.path.join(work, "kjv-heldout.txt"), "w") as f:
            f.write(held)
    if a.kind in ("samples", "qa"):
        with open(os.path.join(work, "kjv-heldout-qa.jsonl"), "w") as f:
            for r in qa_records(held):
                f.write(json.dumps(r) + "\n")
    if a.kind == "samples":
        return [(cap + ["--source-note", HELD_NOTE, "--text", "kjv-heldout.txt", "--tokens", str(T), "--sequences",
                        "8", "--batch", "8", "--deflate", "6", "--force", "-o", "sample.h5"], "sample.h5"),
                (cap + ["--source-note", QA_NOTE, "--jsonl", "kjv-heldout-qa.jsonl", "--tokens", str(T),
                        "--sequences", "6", "--batch", "1", "--deflate", "6", "--force", "-o", "sample_qa.h5"],
                 "sample_qa.h5")]
    name = os.path.basename(a.output)
    if a.kind == "plain":
        tokens = a.tokens or 1024
        calib = min(256, tokens) if a.calib_length is None else a.calib_length
        if tokens < 2 or a.sequences < 1 or (calib and not 2 <= calib <= tokens):
            raise SystemExit(f"make_samples: --tokens {tokens}, --sequences {a.sequences}, --calib-length {calib}: "
                             "need --sequences >= 1 and 2 <= --calib-length <= --tokens")
        if a.sequences * (tokens - 1) + calib > len(held):
            raise SystemExit(f"make_samples: the held-out text has {len(held)} bytes, too few for --sequences "
                             f"{a.sequences} x --tokens {tokens}")
        if not calib:
            return [(cap + ["--source-note", HELD_NOTE, "--text", "kjv-heldout.txt", "--tokens", str(tokens),
                            "--sequences", str(a.sequences), "--batch", "1", "--deflate", "6", "--force", "-o", name],
                     name)]
        # consecutive windows of the held-out text (as kvcapture --text cuts them: tokens - 1 bytes
        # after BOS), then a shorter one: the calibration sequence (see --calib-length)
        body = tokens - 1
        wins = [held[i * body:(i + 1) * body] for i in range(a.sequences)]
        wins.append(held[a.sequences * body:a.sequences * body + calib - 1])
        with open(os.path.join(work, "kjv-heldout-windows.jsonl"), "w") as f:
            for w in wins:
                f.write(json.dumps({"text": w}) + "\n")
        note = (f"{HELD_NOTE}: {a.sequences} consecutive windows of {body} bytes after BOS, then one of {calib - 1} "
                "(the last sequence: the calibration sequence of strategies that calibrate)")
        return [(cap + ["--source-note", note, "--jsonl", "kjv-heldout-windows.jsonl", "--tokens", str(tokens),
                        "--sequences", str(len(wins)), "--batch", "1", "--deflate", "6", "--force", "-o", name], name)]
    if a.kind == "qa":
        return [(cap + ["--source-note", QA_NOTE, "--jsonl", "kjv-heldout-qa.jsonl", "--tokens", str(a.tokens or T),
                        "--sequences", "6", "--batch", "1", "--deflate", "6", "--force", "-o", name], name)]
    lengths = parse_numbers(a.lengths, "--lengths", int)
    depths = parse_numbers(a.depths, "--depths", float)
    if any(L - NEEDLE_EXTRA < 64 for L in lengths):
        raise SystemExit(f"make_samples: --lengths must be >= {64 + NEEDLE_EXTRA} tokens (a context of 64 bytes)")
    if a.calib_length is None:
        a.calib_length = min(lengths)
    if a.calib_length and a.calib_length - NEEDLE_EXTRA < 64:
        raise SystemExit(f"make_samples: --calib-length must be 0 or >= {64 + NEEDLE_EXTRA} tokens")
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise SystemExit("make_samples: --depths must lie in [0, 1]")
    # make_needles' records (its defaults; the held-out text as filler), then the extra last one
    import numpy as np
    import make_needles
    import synth
    filler = np.frombuffer(held.encode("ascii"), dtype=np.uint8)
    recs = make_needles.records([L - NEEDLE_EXTRA for L in lengths], depths, NEEDLE_STREAM, filler)
    if a.calib_length:
        recs.append(synth.needle_record(NEEDLE_STREAM, len(recs), a.calib_length - NEEDLE_EXTRA, 0.5, filler))
    with open(os.path.join(work, "needles.jsonl"), "w") as f:
        for r in recs:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    ctx = ",".join(str(L - NEEDLE_EXTRA) for L in lengths)
    note = (f"needle-in-a-haystack inputs of capture/make_needles.py over {HELD_NOTE}: sequence lengths "
            f"{a.lengths} tokens (contexts of {ctx} bytes) x depths {a.depths}"
            + (f", then one of {a.calib_length} tokens at depth 0.5 (the last sequence: the calibration sequence "
               "of strategies that calibrate)" if a.calib_length else "")
            + "; one planted fact and 3 distractors per context, then the question and its answer")
    return [(cap + ["--source-note", note, "--jsonl", "needles.jsonl", "--tokens", str(max(lengths + [a.calib_length])),
                    "--sequences", str(len(recs)), "--batch", "1", "--deflate", "6", "--force", "-o", name], name)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(HERE, "ref_model.pt"), help="reference checkpoint "
                    "(capture/train_ref.py -o); default capture/ref_model.pt")
    ap.add_argument("--kind", choices=("samples", "plain", "qa", "needles"), default="samples",
                    help="samples (default): traces/sample.h5 and sample_qa.h5 into --out; the others: one trace, -o")
    ap.add_argument("--out", default=os.path.join(ROOT, "traces"), help="folder of --kind samples (default traces)")
    ap.add_argument("-o", "--output", help="the trace of --kind plain, qa or needles")
    ap.add_argument("--tokens", type=int, default=None, help="plain: tokens per sequence, BOS included (default "
                    "1024); qa: --tokens of the capture (default 256)")
    ap.add_argument("--sequences", type=int, default=1, help="plain: number of windows (default 1)")
    ap.add_argument("--lengths", default="256,1024", help="needles: sequence lengths in tokens (default 256,1024)")
    ap.add_argument("--depths", default="0.1,0.9", help="needles: needle depths in [0, 1] (default 0.1,0.9)")
    ap.add_argument("--calib-length", type=int, default=None, help="plain and needles: one more sequence of "
                    "this many tokens at the end, which strategies that calibrate take as their calibration sequence "
                    "(kvreplay run --calib's default) instead of an evaluated one; 0: none. plain: the next window "
                    "of the text (default 256, at most --tokens); needles: a needle at depth 0.5 (default the "
                    "shortest of --lengths, so that every budget feasible on the grid is feasible on it)")
    ap.add_argument("--attn-out", action="store_true", help="plain, qa, needles: also store attn_out (the "
                    "model's attention output, which `kvreplay check` compares; about 1.4x the size)")
    ap.add_argument("--allow-beyond-training", action="store_true", help="pass kvcapture --allow-beyond-training "
                    "(development with a checkpoint trained at a shorter context; the trace is marked)")
    a = ap.parse_args()
    if not os.path.isfile(a.model):
        raise SystemExit(f"make_samples: no checkpoint '{a.model}' (train it with capture/train_ref.py)")
    if a.kind == "samples":
        if a.output:
            raise SystemExit("make_samples: --kind samples writes into --out; -o is for plain, qa and needles")
        dest = os.path.abspath(a.out)
    else:
        if not a.output:
            raise SystemExit(f"make_samples: --kind {a.kind} needs -o TRACE")
        dest = os.path.dirname(os.path.abspath(a.output))
    if not os.path.isdir(dest):
        raise SystemExit(f"make_samples: output folder '{dest}' does not exist")
    _, held = split_text()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # the scratch folder beside the outputs (same file system: the finished trace is renamed into
    # place); the checkpoint appears in it under the name the trace records
    with tempfile.TemporaryDirectory(prefix=".kvsamples.", dir=dest) as work:
        link = os.path.join(work, model_name(a.model))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.abspath(a.model), link)
        for args, name in capture_runs(a, held, work):
            cmd = [sys.executable, os.path.join(HERE, "kvcapture.py")] + args
            print("+ " + " ".join(cmd), flush=True)
            t0 = time.monotonic()
            rc = subprocess.run(cmd, env=env, cwd=work).returncode
            if rc:       # kvcapture printed why, in one line
                raise SystemExit(rc)
            final = os.path.join(dest, name) if a.kind == "samples" else os.path.abspath(a.output)
            os.replace(os.path.join(work, name), final)
            print(f"make_samples: {os.path.relpath(final)} ({os.path.getsize(final) / 1e6:.2f} MB) in "
                  f"{time.monotonic() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
