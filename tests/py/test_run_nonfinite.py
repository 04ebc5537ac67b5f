"""`kvreplay run` refuses NaN/Inf in every value it uses, before any metric (issue 13;
traces/SCHEMA.md "Values"). Before the fix a NaN in a prompt position's q (or attn_out,
ref_lse, rope/cos, hidden) gave exit 0 and normal-looking CSVs.

For each dataset run reads, one NaN or Inf is planted at a prompt position of
traces/sample_qa.h5; `run` must exit 1 with exactly one stderr line naming the file, the
dataset, the index and suggesting `kvreplay check`, and write no results (the /rope cases with
a configuration that uses the tables: other runs do not read them). Control: a NaN in a
padding position (t >= seq_len, never used) does not stop the run.
"""
import os
import shutil
import subprocess
import sys

try:
    import h5py
    import numpy as np
except ImportError as e:  # pragma: no cover
    print("skip: h5py/numpy not available (%s)" % e)
    sys.exit(77)

BIN = os.environ.get("BIN", "bin")
ROOT = os.environ.get("KV_ROOT", ".")
TMP = os.environ.get("KV_TMP") or "/tmp"
KVREPLAY = os.path.join(BIN, "kvreplay")
src = os.path.join(ROOT, "traces/sample_qa.h5")
with h5py.File(src, "r") as f:
    P0 = int(f["prefill_len"][0])
    SL0 = int(f["seq_len"][0])
    T = f["tokens"].shape[1]
assert P0 > 20 and SL0 < T

# (dataset, index, value, expected text in the message)
cases = [
    ("layers/1/q", (0, 2, 17, 5), np.nan, "/layers/1/q[seq 0, head 2, pos 17, dim 5] is NaN"),
    ("layers/0/k", (0, 1, 3, 0), np.inf, "/layers/0/k[seq 0, head 1, pos 3, dim 0] is +Inf"),
    ("layers/3/v", (0, 0, P0 - 1, 7), -np.inf, "/layers/3/v[seq 0, head 0, pos %d, dim 7] is -Inf" % (P0 - 1)),
    ("layers/2/attn_out", (0, 3, 9, 1), np.nan, "/layers/2/attn_out[seq 0, head 3, pos 9, dim 1] is NaN"),
    ("layers/0/q", (0, 0, SL0 - 1, 2), np.nan, "/layers/0/q[seq 0, head 0, pos %d, dim 2] is NaN" % (SL0 - 1)),
    ("readout/ref_lse", (0, 11), np.nan, "/readout/ref_lse[seq 0, pos 11] is NaN"),
    ("readout/hidden", (0, 5, 40), np.inf, "/readout/hidden[seq 0, pos 5, dim 40] is +Inf"),
    ("rope/cos", (12, 3), np.nan, "/rope/cos[pos 12, 3] is NaN"),
    ("rope/sin", (7, 30), np.inf, "/rope/sin[pos 7, 30] is +Inf"),
    ("readout/w_u", (100, 6), np.nan, "/readout/w_u[100, 6] is NaN"),
    ("readout/w_o/1", (64, 2), np.nan, "/readout/w_o/1[64, 2] is NaN"),
    ("readout/norm_weight", (9,), np.inf, "/readout/norm_weight[9] is +Inf"),
]
fails = []


def plant(path, dset, idx, val):
    with h5py.File(path, "a") as f:
        ds = f[dset]
        a = ds[...]
        a[idx] = val
        ds[...] = a


def run(path, out, strategy="full"):
    return subprocess.run([KVREPLAY, "run", path, "--strategy", strategy, "-o", out], cwd=TMP,
                          capture_output=True, text=True, timeout=300)


# /rope is read (and scanned) only by runs whose configurations use the tables (strategy.h
# uses_rope): its cases run one that does; tests/py/test_rope_lazy.py covers the others
ROPE_USER = "streaming keep=0.5 reindex=1"


for i, (dset, idx, val, want) in enumerate(cases):
    path = os.path.join(TMP, "nf%d.h5" % i)
    out = os.path.join(TMP, "nf%d.out" % i)
    shutil.copy(src, path)
    plant(path, dset, idx, val)
    r = run(path, out, ROPE_USER if dset.startswith("rope/") else "full")
    lines = r.stderr.splitlines()
    print("%-22s rc=%d  %s" % (dset, r.returncode, lines[0] if lines else ""))
    ok = (r.returncode == 1 and len(lines) == 1 and path in lines[0] and want in lines[0]
          and "run 'kvreplay check %s'" % path in lines[0])
    if not ok:
        fails.append("%s %s: rc=%d, want 1 and one line with %r: %r" % (dset, idx, r.returncode, want, r.stderr))
    if os.path.isdir(out):
        csv = [f for f in os.listdir(out) if f.endswith(".csv")]
        if csv:
            fails.append("%s: results written although the trace holds NaN/Inf: %s" % (dset, csv))
    os.remove(path)

# several bad values: the scan checks on every thread, but names the first one in its order
# (sequence, layer, q/k/v/attn_out, head, position, dim; then hidden, ref_lse, rope, W_U, W_O)
# on any thread count: here q head 1 of layer 1, before q head 3 (a lower position), k of the
# same layer, a later layer, a later sequence and the read-out weights.
path = os.path.join(TMP, "nf_many.h5")
shutil.copy(src, path)
for dset, idx, val in [("layers/1/q", (0, 3, 2, 0), np.nan), ("layers/1/q", (0, 1, 100, 4), np.inf),
                       ("layers/1/k", (0, 0, 0, 0), np.nan), ("layers/2/q", (0, 0, 0, 0), np.nan),
                       ("layers/0/q", (1, 0, 0, 0), np.nan), ("readout/w_u", (3, 3), np.nan),
                       ("readout/w_o/0", (0, 0), np.nan)]:
    plant(path, dset, idx, val)
want = "/layers/1/q[seq 0, head 1, pos 100, dim 4] is +Inf"
for threads in (1, 2):
    out = path + ".t%d.out" % threads
    r = subprocess.run([KVREPLAY, "run", path, "--strategy", "full", "--threads", str(threads), "-o", out], cwd=TMP,
                       capture_output=True, text=True, timeout=300)
    lines = r.stderr.splitlines()
    print("many bad, %d thread(s)  rc=%d  %s" % (threads, r.returncode, lines[0] if lines else ""))
    if r.returncode != 1 or len(lines) != 1 or want not in lines[0]:
        fails.append("several bad values, %d thread(s): rc=%d, want 1 and one line with %r: %r"
                     % (threads, r.returncode, want, r.stderr))
os.remove(path)

# control: padding positions (t >= seq_len) are never used
path = os.path.join(TMP, "nf_pad.h5")
shutil.copy(src, path)
plant(path, "layers/1/q", (0, 2, SL0, 5), np.nan)
plant(path, "readout/hidden", (0, T - 1, 3), np.nan)
r = run(path, path + ".out")
print("padding NaN            rc=%d  %s" % (r.returncode, r.stderr.strip()))
if r.returncode != 0 or not os.path.exists(os.path.join(path + ".out", "per_seq.csv")):
    fails.append("NaN in padding positions: rc=%d (want 0: those rows are not used): %r" % (r.returncode, r.stderr))

for f in fails:
    print("FAIL", f)
print("%d cases, %d failures" % (len(cases) + 3, len(fails)))
sys.exit(1 if fails else 0)
