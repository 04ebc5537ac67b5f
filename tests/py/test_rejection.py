"""`kvreplay check` / `info` on the rejection corpus (tests/py/make_rejection_corpus.py).

Every "reject" file: exit status 1 (never a signal), exactly one line on stderr naming the
file, the object and the reason, and no core file. NaN/Inf files: `info` exits 0, `check`
exits 1 naming the tensor and the index tuple of the first bad value. The valid file:
`check` exits 0.
"""
import json
import os
import subprocess
import sys

try:
    import h5py  # noqa: F401  (the corpus script needs it)
except ImportError as e:  # pragma: no cover
    print("skip: h5py not available (%s)" % e)
    sys.exit(77)

BIN = os.environ.get("BIN", "bin")
ROOT = os.environ.get("KV_ROOT", ".")
TMP = os.environ.get("KV_TMP") or "/tmp"
PY = os.environ.get("PYTHON", sys.executable)
KVREPLAY = os.path.join(BIN, "kvreplay")
if not os.access(KVREPLAY, os.X_OK):
    print("FAIL: %s not built" % KVREPLAY)
    sys.exit(1)

corpus = os.path.join(TMP, "corpus")
subprocess.run([PY, os.path.join(ROOT, "tests/py/make_rejection_corpus.py"), corpus], check=True)
man = json.load(open(os.path.join(corpus, "manifest.json")))
fails = []


def run(cmd, path):
    # cwd = scratch: a core dump would land here
    p = subprocess.run([KVREPLAY, cmd, path], cwd=TMP, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


need = {"dtype_f64", "dtype_int16", "dtype_compound", "wrong_rank", "dims_mismatch_layers",
        "h_not_divisible", "external_link", "soft_link", "virtual_dataset", "external_storage",
        "unknown_filter", "truncated", "zero_length", "not_hdf5", "huge_shape_tiny_storage",
        "unknown_version", "missing_required_dataset", "value_nan", "value_inf", "valid",
        "chunk_dims_bitflip", "chunk_filter_mask", "deep_groups", "attr_not_utf8", "attr_overlong_utf8",
        "attr_surrogate_utf8", "attr_nul_inside", "attr_utf8_ok", "wide_group"}
missing = need - set(man)
if missing:
    fails.append("corpus lacks cases: %s" % sorted(missing))

for name, c in sorted(man.items()):
    path = c["file"]
    if c["expect"] == "reject":
        for cmd in ("check", "info"):
            rc, out, err = run(cmd, path)
            lines = err.splitlines()
            ok = (rc == 1 and len(lines) == 1 and path in lines[0] and c["object"] in lines[0]
                  and c["reason"] in lines[0])
            print("%-28s %-5s rc=%d  %s" % (name, cmd, rc, lines[0] if lines else "(no stderr)"))
            if not ok:
                fails.append("%s %s: rc=%d, %d stderr lines, want 1 naming %r, %r, %r: %r"
                             % (cmd, name, rc, len(lines), path, c["object"], c["reason"], err))
    elif c["expect"] == "value":
        rc, out, err = run("info", path)
        if rc != 0:
            fails.append("info %s: rc=%d (a NaN/Inf file is still describable): %r" % (name, rc, err))
        rc, out, err = run("check", path)
        bad = [l for l in err.splitlines() if c["object"] in l and c["reason"] in l]
        print("%-28s check rc=%d  %s" % (name, rc, err.strip()))
        if rc != 1 or not bad or path not in bad[0]:
            fails.append("check %s: rc=%d, want 1 and a line naming %s at %s: %r"
                         % (name, rc, c["object"], c["reason"], err))
    else:
        rc, out, err = run("check", path)
        print("%-28s check rc=%d" % (name, rc))
        if rc != 0:
            fails.append("check %s: rc=%d on a valid file: %r" % (name, rc, err))
        rc, out, err = run("info", path)
        if rc != 0 or "S=2, T=16" not in out:
            fails.append("info %s: rc=%d: %r" % (name, rc, out + err))

cores = [f for f in os.listdir(TMP) if f.startswith("core")]
if cores:
    fails.append("core files left: %s" % cores)

# command-line errors: one line, exit 2
for args in (["check"], ["info", "a", "b"], ["check", "--bogus", "x"]):
    p = subprocess.run([KVREPLAY] + args, capture_output=True, text=True)
    if p.returncode != 2 or len(p.stderr.splitlines()) != 1:
        fails.append("kvreplay %s: rc=%d stderr=%r (want 2 and one line)" % (args, p.returncode, p.stderr))
for cmd in ("check", "info"):
    p = subprocess.run([KVREPLAY, cmd, "--help"], capture_output=True, text=True)
    if p.returncode != 0 or "usage: kvreplay " + cmd not in p.stdout:
        fails.append("kvreplay %s --help: rc=%d" % (cmd, p.returncode))
p = subprocess.run([KVREPLAY, "check", os.path.join(TMP, "no-such-file.h5")], capture_output=True, text=True)
if p.returncode != 1 or len(p.stderr.splitlines()) != 1 or "no-such-file.h5" not in p.stderr:
    fails.append("missing file: rc=%d stderr=%r" % (p.returncode, p.stderr))

for f in fails:
    print("FAIL", f)
print("%d corpus files, %d failures" % (len(man), len(fails)))
sys.exit(1 if fails else 0)
