"""Bad input to kvcapture: each case must exit non-zero with one clear line naming the
problem and leave no file under the final name (and no temporary file behind).
Cases: unknown model, empty text, too-short text, unwritable output path (missing folder,
read-only filesystem), read-out on an architecture that does not allow it (the reference
model's post-norm variant; accepted with --no-readout-ok), disk full (a 64 KiB tmpfs when
mounting is permitted, and always a simulated ENOSPC raised from h5py's dataset writes)."""
import os
import subprocess
import sys

import h5py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture_ref import CAPTURE, PY, run_capture, tmpdir  # noqa: E402

TMP = tmpdir()
MODEL = "ref-random:1:n_layers=2,d_model=32,n_heads=4,n_kv_heads=2,head_dim=8,d_ff=64"
TEXT = os.path.join(TMP, "text.txt")
with open(TEXT, "w") as f:
    f.write("and god said let there be light and there was light\n" * 40)
failures = []


def expect_error(label, args, want, out):
    rc, err = run_capture(args + ["-o", out], expect_ok=False)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    d = os.path.dirname(out)
    leftovers = [n for n in os.listdir(d) if ".tmp." in n] if os.path.isdir(d) else []
    ok = (rc != 0 and len(lines) == 1 and want in lines[0] and lines[0].startswith("kvcapture: error:")
          and not os.path.exists(out) and not leftovers)
    print(("ok    " if ok else "FAIL  ") + f"{label}: rc {rc}: {err!r}"
          + (f" leftovers {leftovers}" if leftovers else "") + (" OUTPUT EXISTS" if os.path.exists(out) else ""))
    if not ok:
        failures.append(label)


base = ["--model", MODEL, "--text", TEXT, "--tokens", "64", "--sequences", "2"]
out = os.path.join(TMP, "out.h5")
empty = os.path.join(TMP, "empty.txt")
open(empty, "w").close()
short = os.path.join(TMP, "short.txt")
with open(short, "w") as f:
    f.write("in the beginning\n")

expect_error("unknown model", ["--model", "no-such-org/no-such-model-xyz"] + base[2:], "unknown model", out)
expect_error("missing checkpoint", ["--model", "ref:" + os.path.join(TMP, "nope.pt")] + base[2:],
             "no such checkpoint", out)
expect_error("empty text", ["--model", MODEL, "--text", empty, "--tokens", "64"], "empty text", out)
expect_error("text shorter than one sequence", ["--model", MODEL, "--text", short, "--tokens", "64"],
             "text too short", out)
expect_error("too few sequences", base[:-1] + ["1000"], "--sequences asks for 1000", out)
expect_error("output folder missing", base, "does not exist", os.path.join(TMP, "no", "dir", "out.h5"))
expect_error("output on a read-only filesystem", base, "cannot write", "/proc/kvtrace-test-out.h5")
expect_error("read-out unsupported (post-norm)", ["--model", MODEL + ",post_norm=true"] + base[2:],
             "read-out unsupported", out)

# --no-readout-ok: the trace is written, without /readout, saying why
ok_out = os.path.join(TMP, "postnorm.h5")
run_capture(["--model", MODEL + ",post_norm=true"] + base[2:] + ["--no-readout-ok", "-o", ok_out])
with h5py.File(ok_out, "r") as f:
    ok = "readout" not in f and "post_norm" in f.attrs["readout_unavailable"] and "layers/1/q" in f
print(("ok    " if ok else "FAIL  ") + "--no-readout-ok: trace without /readout, readout_unavailable set")
if not ok:
    failures.append("--no-readout-ok")

# disk full, simulated: h5py dataset writes raise ENOSPC after a few succeed
sim = os.path.join(TMP, "sim.py")
with open(sim, "w") as f:
    f.write(f"""import errno, os, sys
sys.path.insert(0, {os.path.dirname(CAPTURE)!r})
import h5py, kvcapture
real = h5py.Dataset.__setitem__
n = [0]
def failing(self, key, val):
    n[0] += 1
    if n[0] > 5:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(self, key, val)
h5py.Dataset.__setitem__ = failing
sys.argv = ["kvcapture.py"] + sys.argv[1:]
rc = kvcapture.main()
sys.stderr.flush()
os._exit(rc)
""")
p = subprocess.run([PY, sim] + base + ["-o", out], capture_output=True, text=True)
ok = (p.returncode == 1 and "no space left on device" in p.stderr and len(p.stderr.strip().splitlines()) == 1
      and not os.path.exists(out) and not [n for n in os.listdir(TMP) if ".tmp." in n])
print(("ok    " if ok else "FAIL  ") + f"disk full (simulated ENOSPC in h5py writes): rc {p.returncode}: {p.stderr.strip()!r}")
if not ok:
    failures.append("disk full simulated")

# disk full, real: a 64 KiB tmpfs, when this process may mount one
mnt = os.path.join(TMP, "tiny")
os.makedirs(mnt, exist_ok=True)
m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt], capture_output=True, text=True)
if m.returncode == 0:
    try:
        # without compression the free-space preflight refuses; with it, the write hits ENOSPC
        expect_error("disk full (64 KiB tmpfs, preflight)", base, "MiB free", os.path.join(mnt, "out.h5"))
        expect_error("disk full (64 KiB tmpfs, during the write)", base + ["--deflate", "1"],
                     "no space left on device", os.path.join(mnt, "out.h5"))
    finally:
        subprocess.run(["umount", mnt])
else:
    print(f"note  tmpfs disk-full case not run (mount not permitted: {m.stderr.strip()})")

if failures:
    sys.exit(f"{len(failures)} cases failed: {failures}")
print("all bad-input cases give one clear line and leave no file")
