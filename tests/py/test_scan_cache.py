"""Records of passed value scans (replay/engine.c scan_finite, lib/sha256.c kv_cache_record_*):
`kvreplay run` scans every value it uses for NaN/Inf before any replay; a part of that scan
(one sequence, or the global RoPE/weights part) that passed is recorded in the digest cache's
directory under the trace's SHA-256, and a later run of the same bytes skips it.

KVTRACE_DEBUG=scan prints "N tasks run, M skipped". Checked here: the task counts against
an independent count from the trace's shapes (h5py); a second run skips everything and
writes identical CSVs; --no-hash-cache scans all; a copy with a NaN planted in one q value
(another digest) fails with the usual one-line error, also with the clean trace's records
present, and again after its failure (a failed scan is never recorded); a passed scan of
sequence 0 of that copy does not let sequence 1 skip; corrupt, extended, truncated or
foreign files under the exact record name never make a run skip; control: the exact line
under that name does (so the record's name and line are what is trusted)."""
import hashlib
import os
import shutil
import sys

try:
    import h5py
    import numpy as np
except ImportError as e:  # pragma: no cover
    print("skip: h5py/numpy not available (%s)" % e)
    sys.exit(77)

from testhelp import check, csv_bytes, failures, run_debug

BIN, ROOT, TMP = os.environ["BIN"], os.environ["KV_ROOT"], os.environ["KV_TMP"]
xdg = os.path.join(TMP, "xdg")
cdir = os.path.join(xdg, "kvtrace")
clean = os.path.join(TMP, "clean.h5")
shutil.copyfile(os.path.join(ROOT, "traces", "sample.h5"), clean)
bad = os.path.join(TMP, "sub", "bad.h5")
os.makedirs(os.path.dirname(bad))
shutil.copyfile(clean, bad)
with h5py.File(bad, "a") as f:      # one NaN in a used q value of sequence 1 only
    ds = f["layers/2/q"]
    a = ds[...]
    a[1, 3, 17, 5] = np.nan
    ds[...] = a
    L = len(f["layers"])
    H, Hkv = f["layers/0/q"].shape[1], f["layers/0/k"].shape[1]
    nw = 4 if "attn_out" in f["layers/0"] else 3
dig = {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (clean, bad)}
assert dig[clean] != dig[bad]
PER_SEQ = L * (2 * H + 2 * Hkv if nw == 4 else H + 2 * Hkv) + 2     # q, k, v, attn_out; hidden, ref_lse
GLOBAL = 2 + 4 + L                                                     # rope cos/sin, 4 weights, W_O
# a configuration that uses the RoPE tables, so that the global part scans them (strategy.h
# uses_rope; a run without them: tests/py/test_rope_lazy.py)
STRATEGY = "streaming keep=0.5 reindex=1"
runs = [0]


def run(trace, seqs="0", extra=()):
    """(returncode, stderr lines without the scan line, (run, skipped) or None, out dir)"""
    runs[0] += 1
    out = os.path.join(TMP, f"out{runs[0]}")
    rc, dbg, rest = run_debug([f"{BIN}/kvreplay", "run", trace, "--strategy", STRATEGY, "--seqs", seqs, "--decode", "8",
                               "-o", out, "--threads", "2", *extra], "scan", "kvtrace: value scan: ", xdg)
    counts = None
    for x in dbg:
        w = x.split()
        counts = (int(w[3]), int(w[6]))
    return rc, rest, counts, out


def nan_fail(rc, rest):
    return rc == 1 and len(rest) == 1 and "/layers/2/q[seq 1, head 3, pos 17, dim 5] is NaN" in rest[0] \
        and bad in rest[0]


def read(p):
    return open(p).read() if os.path.exists(p) else None


def name(d, what):
    return os.path.join(cdir, f"scan-{d}-{what}")


def line(d, what):
    return f"kvtrace-scan-cache 1 {d} {what}\n"


# a first run scans everything and records each part; a second skips everything
rc, rest, c1, o1 = run(clean)
check(rc == 0 and c1 == (PER_SEQ + GLOBAL, 0), f"first run: all {PER_SEQ + GLOBAL} tasks run, none skipped ({c1})")
check(read(name(dig[clean], "s0-ro")) == line(dig[clean], "s0-ro")
      and read(name(dig[clean], "global-n256-ro")) == line(dig[clean], "global-n256-ro"),
      "records: one per part, named by the hashlib digest, one line naming it")
rc, rest, c2, o2 = run(clean)
check(rc == 0 and c2 == (0, PER_SEQ + GLOBAL), f"second run: every task skipped ({c2})")
check(csv_bytes(o1) and csv_bytes(o1) == csv_bytes(o2), "CSVs of the skipping run identical to the scanning run's")
rc, rest, c3, o3 = run(clean, extra=["--no-hash-cache"])
check(rc == 0 and c3 == (PER_SEQ + GLOBAL, 0) and csv_bytes(o3) == csv_bytes(o1), f"--no-hash-cache: everything scanned ({c3})")
rc, rest, c4, _ = run(clean, seqs="0,2")
check(rc == 0 and c4 == (PER_SEQ, PER_SEQ + GLOBAL), f"seqs 0,2: only sequence 2 scanned ({c4})")

# the NaN copy (another path, another digest): the usual one-line error, with the clean
# trace's records present, and again (a failure records nothing)
n_before = sorted(os.listdir(cdir))
rc, rest, c, _ = run(bad, seqs="1")
check(nan_fail(rc, rest), "NaN copy, seq 1: exit 1, one line naming the value: " + repr(rest))
check(not [x for x in os.listdir(cdir) if x.startswith(f"scan-{dig[bad]}")], "a failed scan records nothing")
rc, rest, c, _ = run(bad, seqs="1")
check(nan_fail(rc, rest), "NaN copy, seq 1 again: still fails")
rc, rest, c, _ = run(bad, seqs="0")
check(rc == 0 and c == (PER_SEQ + GLOBAL, 0), f"NaN copy, seq 0 (clean values): passes, scanned ({c})")
check(os.path.exists(name(dig[bad], "s0-ro")), "... and recorded for its own digest")
rc, rest, c, _ = run(bad, seqs="0,1")
check(nan_fail(rc, rest), "NaN copy, seqs 0,1 with seq 0 recorded: seq 1 is scanned and fails")
rc, rest, c, _ = run(bad, seqs="1")
check(nan_fail(rc, rest), "NaN copy, seq 1 with seq 0 and the global part recorded: fails")

# files under seq 1's record name that are not its exact line never skip
rec = name(dig[bad], "s1-ro")
good = line(dig[bad], "s1-ro")
for label, text in [("the clean digest's line", line(dig[clean], "s1-ro")), ("another sequence's line", line(dig[bad], "s0-ro")),
                    ("truncated", good[:-1]), ("extended", good + "x"), ("empty", ""), ("garbage", "\0" * 300),
                    ("without the read-out part", line(dig[bad], "s1"))]:
    open(rec, "w").write(text)
    rc, rest, c, _ = run(bad, seqs="1")
    check(nan_fail(rc, rest), f"record file {label}: no skip, the NaN is found")
open(name(dig[bad], "s1"), "w").write(line(dig[bad], "s1"))      # what a --no-readout run records
rc, rest, c, _ = run(bad, seqs="1")
check(nan_fail(rc, rest), "a record without the read-out part does not cover a run with it")
os.unlink(name(dig[bad], "s1"))
rc, rest, c, _ = run(clean, seqs="0", extra=["--no-readout"])  # q/k/v/attn_out; rope
check(rc == 0 and c == (0, (PER_SEQ - 2) + 2), f"--no-readout: the read-out run's records cover it ({c})")
for d in (dig[clean], "0" * 64):    # foreign digests' records for sequence 1
    open(name(d, "s1-ro"), "w").write(line(d, "s1-ro"))
os.unlink(rec)
rc, rest, c, _ = run(bad, seqs="1")
check(nan_fail(rc, rest), "records of other digests for seq 1: no skip")
# control: the exact record is trusted (what makes the checks above able to fail)
open(rec, "w").write(good)
rc, rest, c, _ = run(bad, seqs="1")
check(rc == 0 and c == (0, PER_SEQ + GLOBAL), f"control: a forged exact record skips the scan ({c})")
os.unlink(rec)

if failures:
    sys.exit(1)
