"""Chunk-level defects of a real trace (issue 13): traces/sample_qa.h5 with one bit flipped in
a dataset's chunk dimensions (32 -> 8224; before the fix info/check/run died of SIGSEGV in
H5Dread) and with a chunk's B-tree filter mask saying "filters skipped" over deflate bytes
(before: info exited 0 on garbage, check/run overflowed under ASan). Each of info, check
and run must exit 1 with exactly one stderr line naming the file, the dataset and the
chunk, leave no core file and (run) no results. The byte edits are the corpus script's
(tests/py/make_rejection_corpus.py: flip_chunk_dim, skip_filters).
"""
import os
import shutil
import subprocess
import sys

try:
    import h5py  # noqa: F401
except ImportError as e:  # pragma: no cover
    print("skip: h5py not available (%s)" % e)
    sys.exit(77)

BIN = os.environ.get("BIN", "bin")
ROOT = os.environ.get("KV_ROOT", ".")
TMP = os.environ.get("KV_TMP") or "/tmp"
sys.path.insert(0, os.path.join(ROOT, "tests/py"))
from make_rejection_corpus import flip_chunk_dim, skip_filters  # noqa: E402

KVREPLAY = os.path.join(BIN, "kvreplay")
src = os.path.join(ROOT, "traces/sample_qa.h5")
fails = []

cases = []
p = os.path.join(TMP, "qa_chunk_dims.h5")
shutil.copy(src, p)
# /layers/0/q and its siblings share the chunk shape (1, 1, 256, 32): give q its own first
with h5py.File(p, "a") as f:
    a = f["layers/2/v"][...]
    del f["layers/2/v"]
    f.create_dataset("layers/2/v", data=a, chunks=(1, 2, 256, 32), compression="gzip", shuffle=True)
v = flip_chunk_dim(p, "layers/2/v")
assert v == 8224, v
cases.append((p, "/layers/2/v", "chunk at [0, 0, 0, 0]: deflate data of the wrong size"))

p = os.path.join(TMP, "qa_filter_mask.h5")
shutil.copy(src, p)
skip_filters(p, "layers/0/q", mask=0x3)
cases.append((p, "/layers/0/q", "chunk at [0, 0, 0, 0]: filter mask 0x3 says filters were skipped"))

for path, obj, reason in cases:
    for cmd in (["info", path], ["check", path],
                ["run", path, "--strategy", "full", "-o", path + ".out"]):
        r = subprocess.run([KVREPLAY] + cmd, cwd=TMP, capture_output=True, text=True, timeout=300)
        lines = r.stderr.splitlines()
        print("%-22s %-5s rc=%d  %s" % (os.path.basename(path), cmd[0], r.returncode, lines[0] if lines else ""))
        if r.returncode != 1 or len(lines) != 1 or path not in lines[0] or obj not in lines[0] or reason not in lines[0]:
            fails.append("%s %s: rc=%d, want 1 and one line naming %s, %s: %r"
                         % (cmd[0], path, r.returncode, obj, reason, r.stderr))
        if cmd[0] == "run" and os.path.exists(path + ".out"):
            fails.append("run %s: wrote %s" % (path, os.listdir(path + ".out")))
cores = [f for f in os.listdir(TMP) if f.startswith("core")]
if cores:
    fails.append("core files: %s" % cores)
for f in fails:
    print("FAIL", f)
sys.exit(1 if fails else 0)
