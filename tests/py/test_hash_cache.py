"""The trace digest cache of `kvreplay run` (issue 14; lib/sha256.c): provenance.json names the
trace's SHA-256 (compared with Python's hashlib, an independent implementation) whether the
digest was computed or taken from the cache; the cache is keyed by (st_dev, st_ino, st_size,
st_mtime_ns, st_ctime_ns), which Python's os.stat reports identically, so a forged entry under
the file's key shows that a run reuses it, and a changed file, --no-hash-cache,
KVTRACE_HASH_CACHE=0 and a corrupt entry all give the real digest. A read-only cache directory
and CI=true runs still work. KVTRACE_DEBUG=hash prints one stderr line per hash of the trace's
bytes (a miss, --no-hash-cache), none for a cache hit, and nothing without it."""
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys

from testhelp import check, failures

BIN, ROOT, TMP = os.environ["BIN"], os.environ["KV_ROOT"], os.environ["KV_TMP"]
trace = os.path.join(TMP, "t.h5")
shutil.copyfile(os.path.join(ROOT, "traces", "sample.h5"), trace)
real = hashlib.sha256(open(trace, "rb").read()).hexdigest()
xdg = os.path.join(TMP, "xdg")
runs = [0]


def run(extra=(), env_extra=None, xdg_home=xdg, stderr=None):
    runs[0] += 1
    out = os.path.join(TMP, f"out{runs[0]}")
    env = dict(os.environ)
    env.pop("KVTRACE_HASH_CACHE", None)
    env.pop("KVTRACE_DEBUG", None)
    env["XDG_CACHE_HOME"] = xdg_home
    env.update(env_extra or {})
    r = subprocess.run([f"{BIN}/kvreplay", "run", trace, "--strategy", "full", "--seqs", "0", "--decode", "8",
                        "-o", out, "--threads", "1", *extra], capture_output=True, text=True, env=env)
    if stderr is not None:
        stderr.append(r.stderr)
    if r.returncode != 0:
        print(r.stderr)
        return None
    return json.load(open(os.path.join(out, "provenance.json")))["trace_sha256"]


def entry_path():
    st = os.stat(trace)
    return os.path.join(xdg, "kvtrace", f"sha256-{st.st_dev}-{st.st_ino}")


def entry_line(digest):
    st = os.stat(trace)
    return f"kvtrace-sha256-cache 1 {st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {digest}\n"


check(run() == real, "first run: provenance = hashlib SHA-256 (computed, then cached)")
check(os.path.exists(entry_path()) and open(entry_path()).read() == entry_line(real),
      "the entry is one line keyed by (dev, ino, size, mtime_ns, ctime_ns) as os.stat reports them")
check(run() == real, "second run: the same digest (from the cache)")

fake = "ab" * 32
open(entry_path(), "w").write(entry_line(fake))
check(run() == fake, "a run reuses the entry of the file's key (forged digest shows through)")
check(run(["--no-hash-cache"]) == real, "--no-hash-cache: hashed again")
check(run(env_extra={"KVTRACE_HASH_CACHE": "0"}) == real, "KVTRACE_HASH_CACHE=0: hashed again")

open(entry_path(), "w").write(entry_line(fake)[:40] + "\n")
check(run() == real, "a corrupt entry is ignored")
check(open(entry_path()).read() == entry_line(real), "... and rewritten")

open(entry_path(), "w").write(entry_line(fake))
st = os.stat(trace)
os.utime(trace, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
check(run() == real, "mtime changed: the stale entry is not used")

ro = os.path.join(TMP, "ro")
os.makedirs(os.path.join(ro, "kvtrace"))
os.chmod(os.path.join(ro, "kvtrace"), stat.S_IRUSR | stat.S_IXUSR)
os.chmod(ro, stat.S_IRUSR | stat.S_IXUSR)
check(run(xdg_home=ro) == real, "read-only cache directory: the run works, digest computed")
os.chmod(ro, stat.S_IRWXU)
os.chmod(os.path.join(ro, "kvtrace"), stat.S_IRWXU)
check(run(env_extra={"CI": "true"}) == real, "CI=true: the run works")
check(run(xdg_home=os.path.join(TMP, "missing", "deeper")) == real, "absent cache directory: created or skipped, digest right")

# KVTRACE_DEBUG=hash: one line per hash of the trace's bytes, none from the cache
dbg = {"KVTRACE_DEBUG": "hash"}
line = f"kvtrace: sha256 of {trace}: hashed {os.path.getsize(trace)} bytes"
xdg2 = os.path.join(TMP, "xdg2")
for what, kw, want in (("KVTRACE_DEBUG=hash, a miss (empty cache)", {"xdg_home": xdg2}, [line]),
                       ("KVTRACE_DEBUG=hash, a cache hit", {"xdg_home": xdg2}, []),
                       ("KVTRACE_DEBUG=hash, --no-hash-cache", {"xdg_home": xdg2, "extra": ["--no-hash-cache"]}, [line]),
                       ("no KVTRACE_DEBUG, a cache hit", {"xdg_home": xdg2, "dbg": False}, []),
                       ("no KVTRACE_DEBUG, --no-hash-cache", {"xdg_home": xdg2, "extra": ["--no-hash-cache"], "dbg": False}, [])):
    err = []
    use_dbg = kw.pop("dbg", True)
    got = run(env_extra=dbg if use_dbg else None, stderr=err, **kw)
    lines = [x for x in err[0].splitlines() if x.startswith("kvtrace: sha256")] if err else None
    check(got == real and lines == want, f"{what}: {lines!r}, expected {want!r}")

sys.exit(1 if failures else 0)
