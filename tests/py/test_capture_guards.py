"""kvcapture's guards:
  1. -o EXISTING is refused (exit 1, one line, the file unchanged byte for byte); --force
     replaces it with the new trace; a --force capture that fails leaves the old file as it was;
  2. an interpreter without one of the Python modules (numpy, h5py, torch) gets one line naming
     the module, the interpreter and the Debian package (exit 1, no traceback), from every
     Python entry point a user runs: kvcapture.py, kvcapture.py validate, make_samples.py,
     bench/torch_ref.py and bench/torch_rows.py (make bench).
     The interpreter is simulated with a PYTHONPATH folder whose h5py / torch raise
     ModuleNotFoundError (not installed) or ImportError (installed but broken)."""
import hashlib
import os
import subprocess
import sys

import h5py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture_ref import CAPTURE, PY, ROOT, run_capture, tmpdir  # noqa: E402
from testhelp import check, failures  # noqa: E402

TMP = tmpdir()
MODEL = "ref-random:1:n_layers=2,d_model=32,n_heads=4,n_kv_heads=2,head_dim=8,d_ff=64"
TEXT = os.path.join(TMP, "text.txt")
with open(TEXT, "w") as f:
    f.write("and god said let there be light and there was light\n" * 40)


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def one_line(err):
    return [ln for ln in err.splitlines() if ln.strip()]


# ---- 1. -o EXISTING ---------------------------------------------------------------------------
base = ["--model", MODEL, "--text", TEXT, "--tokens", "32", "--sequences", "2"]
out = os.path.join(TMP, "t.h5")
run_capture(base + ["-o", out])
before = digest(out)
rc, err = run_capture(["--model", MODEL.replace(":1:", ":2:")] + base[2:] + ["-o", out], expect_ok=False)
lines = one_line(err)
check(rc == 1 and len(lines) == 1 and "exists" in lines[0] and "--force" in lines[0] and digest(out) == before
      and not [n for n in os.listdir(TMP) if ".tmp." in n],
      f"-o an existing trace: refused, file unchanged ({rc}: {lines})")

# --force on a capture that fails (too many sequences): the old trace stays as it was
rc, err = run_capture(base[:-1] + ["1000", "--force", "-o", out], expect_ok=False)
check(rc == 1 and digest(out) == before, f"--force with a failing capture: old trace kept ({rc}: {one_line(err)})")

rc, err = run_capture(["--model", MODEL.replace(":1:", ":2:")] + base[2:] + ["--force", "-o", out], expect_ok=False)
with h5py.File(out, "r") as f:
    model = f.attrs["model"]
check(rc == 0 and digest(out) != before and model == MODEL.replace(":1:", ":2:"),
      f"--force: the existing trace replaced by the new capture ({rc}: {err[-120:]})")

# a dangling symlink is an existing name too
link = os.path.join(TMP, "dangling.h5")
os.symlink(os.path.join(TMP, "nowhere", "x.h5"), link)
rc, err = run_capture(base + ["-o", link], expect_ok=False)
check(rc == 1 and "exists" in err and os.path.islink(link), f"-o a dangling symlink: refused ({rc}: {one_line(err)})")

# ---- 2. missing Python modules ----------------------------------------------------------------
shim = os.path.join(TMP, "shim")
for mod, how in (("h5py", "missing"), ("torch", "missing"), ("h5py", "broken")):
    d = os.path.join(shim, f"{mod}-{how}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{mod}.py"), "w") as f:
        if how == "missing":
            f.write(f"raise ModuleNotFoundError(\"No module named '{mod}'\", name={mod!r})\n")
        else:
            f.write("raise ImportError('libhdf5_serial.so.103: cannot open shared object file')\n")

MS = os.path.join(ROOT, "capture", "make_samples.py")
entry = {
    "kvcapture": [CAPTURE] + base + ["-o", os.path.join(TMP, "m.h5")],
    "kvcapture validate": [CAPTURE, "validate", "--model", MODEL, "--trace", out, "--export", out,
                           "-o", os.path.join(TMP, "m.h5")],
    "kvcapture --help": [CAPTURE, "--help"],
    "make_samples": [MS, "--out", os.path.join(TMP, "samples")],
    "torch_ref": [os.path.join(ROOT, "bench", "torch_ref.py"), "--help"],   # make bench
    "torch_rows": [os.path.join(ROOT, "bench", "torch_rows.py"), "--help"],  # make bench
}
for (mod, how) in (("h5py", "missing"), ("torch", "missing"), ("h5py", "broken")):
    env = dict(os.environ, PYTHONPATH=os.path.join(shim, f"{mod}-{how}"))
    pkg = "python3-" + mod
    for name, args in entry.items():
        prog = name.split()[0]
        r = subprocess.run([PY] + args, capture_output=True, text=True, env=env)
        lines = one_line(r.stderr)
        want = "is not installed" if how == "missing" else "cannot be imported (libhdf5_serial"
        ok = (r.returncode == 1 and len(lines) == 1 and r.stdout == ""
              and lines[0].startswith(f"{prog}: error: Python module '{mod}' {want}")
              and pkg in lines[0] and PY in lines[0] and "Traceback" not in r.stderr)
        check(ok, f"{name} with {mod} {how}: exit {r.returncode}, one line naming {mod} and {pkg}: {lines[:2]}")
check(not os.path.exists(os.path.join(TMP, "m.h5")) and not os.path.exists(os.path.join(TMP, "samples")),
      "nothing written by the refused runs")

if failures:
    sys.exit(f"{len(failures)} checks failed")
print("kvcapture guards: existing outputs and missing modules")
