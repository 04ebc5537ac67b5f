"""Records of passed full validations (lib/trace_read.c kv_open_opts.validated, replay/cmd_run.c):
`kvreplay run` validates the trace in a child that reads every chunk (docs: trust boundary);
after that full validation passes, the digest cache's directory gets `valid-<sha256>`
(exact line "kvtrace-validated 1 <sha256>"), and a later run of the same bytes (the same
file version: the digest's identity) has the child run every rule except reading the chunks.

KVTRACE_DEBUG=validate prints one line: full or metadata-only. Checked here: the first run
is full and writes the record, the second is metadata-only with identical CSVs;
--no-hash-cache is full and writes nothing; a copy with one chunk's data changed by h5py
(another digest) is full; a copy with a chunk's filter mask corrupted (its full validation
fails) fails with its one-line error and no record is written, also with the clean
trace's record present, and again on a second run; corrupt, extended or foreign content
under the exact record name is not trusted; control: the exact line under a clean copy's
name, written by hand, is, also for a new version (mtime, ctime) of the same bytes (a forged record in the user's private cache is
the user's own doing, as a forged digest-cache entry is: test_hash_cache.py)."""
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
sys.path.insert(0, os.path.join(ROOT, "tests/py"))
from make_rejection_corpus import skip_filters  # noqa: E402

xdg = os.path.join(TMP, "xdg")
cdir = os.path.join(xdg, "kvtrace")
src = os.path.join(ROOT, "traces", "sample_qa.h5")
clean = os.path.join(TMP, "clean.h5")
shutil.copyfile(src, clean)
changed = os.path.join(TMP, "changed.h5")
shutil.copyfile(src, changed)
with h5py.File(changed, "a") as f:          # one value of one chunk, a valid trace still
    ds = f["layers/1/k"]
    a = ds[...]
    a[0, 0, 3, 2] = np.float16(a[0, 0, 3, 2]) + np.float16(0.5)
    ds[...] = a
bad = os.path.join(TMP, "bad.h5")
shutil.copyfile(src, bad)
skip_filters(bad, "layers/0/q", mask=0x3)
BAD_WHY = "chunk at [0, 0, 0, 0]: filter mask 0x3 says filters were skipped"
dig = {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (clean, changed, bad)}
assert len(set(dig.values())) == 3
runs = [0]


def rec(p):
    return os.path.join(cdir, "valid-" + dig[p])


def line(p):
    return "kvtrace-validated 1 %s\n" % dig[p]


def run(trace, extra=()):
    """(returncode, stderr lines without the debug line, 'full' / 'metadata' / None, out dir)"""
    runs[0] += 1
    out = os.path.join(TMP, f"out{runs[0]}")
    rc, dbg, rest = run_debug([f"{BIN}/kvreplay", "run", trace, "--strategy", "full", "--seqs", "0", "--decode", "8",
                               "-o", out, "--threads", "2", *extra], "validate", "kvtrace: validated ", xdg, timeout=300)
    how = None
    for x in dbg:
        how = "metadata" if ": metadata only" in x else "full" if ": full" in x else "?"
    return rc, rest, how, out


def read(p):
    return open(p).read() if os.path.exists(p) else None


rc, rest, how, o1 = run(clean)
check(rc == 0 and how == "full", f"first run: full validation (rc {rc}, {how}, {rest})")
check(read(rec(clean)) == line(clean), "the record of the passed full validation is written, exact line")
rc, rest, how, o2 = run(clean)
check(rc == 0 and how == "metadata", f"second run: metadata-only validation (rc {rc}, {how})")
check(csv_bytes(o1) == csv_bytes(o2) and len(csv_bytes(o1)) > 0, "CSVs identical between the full and the metadata-only run")
rc, rest, how, _ = run(clean, ["--no-hash-cache"])
check(rc == 0 and how == "full", f"--no-hash-cache: full ({how})")

rc, rest, how, o3 = run(changed)
check(rc == 0 and how == "full", f"a copy with one chunk changed (another digest): full ({how})")
check(read(rec(changed)) == line(changed), "its own record written after its full validation")

for i in range(2):
    rc, rest, how, o4 = run(bad)
    check(rc == 1 and len(rest) == 1 and bad in rest[0] and "/layers/0/q" in rest[0] and BAD_WHY in rest[0],
          f"corrupt chunk (clean records present, run {i + 1}): its one-line error ({rc}, {rest})")
    check(not os.path.exists(rec(bad)), f"no record after the failed validation (run {i + 1})")
    check(not os.path.exists(o4) or not csv_bytes(o4), "no results from the failed run")

# records under the clean copy's exact name that are not the exact line: never trusted
clean2 = os.path.join(TMP, "sub", "clean2.h5")
os.makedirs(os.path.dirname(clean2))
shutil.copyfile(src, clean2)
with h5py.File(clean2, "a") as f:           # another digest, a valid trace
    f.attrs["kvtrace_test_note"] = "clean2"
dig[clean2] = hashlib.sha256(open(clean2, "rb").read()).hexdigest()
for what, content in (("truncated", line(clean2)[:-2]), ("extended", line(clean2) + "x\n"),
                      ("foreign", line(clean)), ("empty", "")):
    with open(rec(clean2), "w") as f:
        f.write(content)
    rc, rest, how, _ = run(clean2)
    check(rc == 0 and how == "full", f"{what} content under the record name: full ({how})")
    check(read(rec(clean2)) == line(clean2), f"{what}: rewritten with the exact line after the full validation")
    os.unlink(rec(clean2))
with open(rec(clean2), "w") as f:
    f.write(line(clean2))
os.utime(clean2)                            # a new version (mtime, ctime), the same bytes: the same digest
rc, rest, how, _ = run(clean2)
check(rc == 0 and how == "metadata", f"control: the exact line under the name is trusted ({how})")

if failures:
    sys.exit(1)
