"""The RoPE tables are read only by runs that use them (strategy.h uses_rope / cfg_uses_rope).

`kvreplay run` reads the trace's /rope (cos and sin, T x rotary_dim floats each) and scans them
for NaN/Inf only when some part of some configuration declares that it reads them; every other
run leaves them unread. Checked on traces/sample.h5 (positional=rope, with /rope):
A. sweeps/default.sweep (every strategy but evict_span, which is added) gives byte-identical
   CSVs run as it is and with the tables read whatever the configurations (KVTRACE_DEBUG=rope).
B. a copy with one NaN in /rope/cos: each configuration line of A alone fails with the value
   scan's one line (/rope/cos[pos 12, 3] is NaN, exit 1, no CSV) exactly when the line uses
   the tables by the rule below, written from the strategies' own code (expected_attention.h's
   ea_* in expected_attention, cap, leverage, compactor; lowrank and asymkv's ranks; the
   re-rotating views of streaming reindex=1 and finch rerotate=1 (its default); per_layer's
   inner press), and passes otherwise. A declaration missing or added fails it.
C. every line that does not use the tables, in one sweep on the NaN copy (none of its
   configurations sees the tables): the same CSV bytes as on the clean trace with the tables
   read (KVTRACE_DEBUG=rope). A strategy that reads or tests them without declaring it (and
   outside the rule of B) fails here ("no /rope tables") or changes its results.
D. records of passed value scans (replay/RESULTS.md): a run without the tables on the NaN copy
   records its global part as global-norope-ro; a run that uses the tables is not covered by it
   and still finds the NaN.
Mutations that fail this test (checked by hand, CHANGELOG): cap without uses_rope (B); snapkv
with uses_rope (B); the norope record named global-n<M>-ro (D).
"""
import os
import re
import shutil
import subprocess
import sys

try:
    import h5py
    import numpy as np
except ImportError as e:  # pragma: no cover
    print("skip: h5py/numpy not available (%s)" % e)
    sys.exit(77)

from testhelp import check, csv_bytes, failures, run_debug

BIN, ROOT, TMP = os.environ["BIN"], os.environ["KV_ROOT"], os.environ["KV_TMP"]
KV = os.path.join(BIN, "kvreplay")
ENV = dict(os.environ)
ENV.pop("KVTRACE_DEBUG", None)
clean = os.path.join(TMP, "clean.h5")
shutil.copyfile(os.path.join(ROOT, "traces", "sample.h5"), clean)
with h5py.File(clean, "r") as f:
    assert "rope" in f and f.attrs["positional"] in ("rope", b"rope"), "traces/sample.h5: a RoPE trace with /rope"
bad = os.path.join(TMP, "badrope.h5")
shutil.copyfile(clean, bad)
with h5py.File(bad, "a") as f:
    ds = f["rope/cos"]
    a = ds[...]
    a[12, 3] = np.nan
    ds[...] = a
WANT = "/rope/cos[pos 12, 3] is NaN"
sweep = os.path.join(ROOT, "sweeps", "default.sweep")
shutil.copyfile(os.path.join(ROOT, "sweeps", "lukv_curve.ratios"), os.path.join(TMP, "lukv_curve.ratios"))
lines = [x.strip() for x in open(sweep) if x.strip() and not x.lstrip().startswith("#")] + ["evict_span span=needle"]
runs = [0]


def run(trace, spec, debug=None):
    """spec: sweep lines, run as one sweep file in TMP (next to a copy of the ratio file the
    default sweep names). (returncode, stderr, out dir)"""
    runs[0] += 1
    out = os.path.join(TMP, "out%d" % runs[0])
    sw = os.path.join(TMP, "s%d.sweep" % runs[0])
    with open(sw, "w") as f:
        f.write("\n".join(spec) + "\n")
    env = dict(ENV, KVTRACE_DEBUG=debug) if debug else ENV
    r = subprocess.run([KV, "run", trace, "--threads", "2", "--sweep", sw, "-o", out], capture_output=True, text=True,
                       env=env, cwd=TMP, timeout=600)
    return r.returncode, r.stderr, out


def uses_rope(line):
    """The rule, from the strategies' code: does this sweep line read the RoPE tables?"""
    parts = [p.split() for p in line.split("+")]
    for p in parts:
        name, kv = p[0], dict(x.split("=", 1) for x in p[1:] if "=" in x)
        if name in ("expected_attention", "cap", "leverage", "compactor", "lowrank"):
            return True
        if name == "asymkv" and (kv.get("rank_k", "0") != "0" or kv.get("rank_v", "0") != "0"):
            return True
        if name == "streaming" and kv.get("reindex", "0") == "1":
            return True
        if name == "finch" and kv.get("rerotate", "1") == "1":
            return True
        if name == "per_layer" and kv.get("press", "knorm") in ("expected_attention", "cap", "leverage", "compactor", "finch"):
            return True
    return False


def results(out):
    return {k: v for k, v in csv_bytes(out).items() if k != "calib.csv"} if os.path.isdir(out) else {}


# A. the tables read where declared vs read for every run
rc1, e1, o1 = run(clean, lines)
rc2, e2, o2 = run(clean, lines, debug="rope")
check(rc1 == 0 and rc2 == 0, "A: the default sweep (+ evict_span) runs with and without KVTRACE_DEBUG=rope"
      + ("" if rc1 == 0 and rc2 == 0 else ": %r" % (e1 + e2)[-400:]))
check(results(o1) and csv_bytes(o1) == csv_bytes(o2), "A: CSVs byte-identical with the tables read only where declared "
      "and read for every configuration (%d files)" % len(csv_bytes(o1)))

# B. each line alone on the NaN copy
users = [x for x in lines if uses_rope(x)]
check(len(users) >= 10, "B: the sweep holds RoPE users (%d lines)" % len(users))
for x in lines:
    rc, err, out = run(bad, [x])
    errl = [y for y in err.splitlines() if y and "note:" not in y]
    if uses_rope(x):
        ok = rc == 1 and len(errl) == 1 and WANT in errl[0] and bad in errl[0] and not results(out)
        check(ok, "B: %-60s uses /rope: exit 1, one line naming the NaN (rc=%d %r)" % (x, rc, errl))
    else:
        check(rc == 0 and results(out), "B: %-60s does not read /rope: runs (rc=%d %r)" % (x, rc, errl[-1:]))

# C. the lines that do not use the tables, together: NaN copy without reading vs clean with reading
rest = [x for x in lines if not uses_rope(x)]
rc1, e1, o1 = run(bad, rest)
rc2, e2, o2 = run(clean, rest, debug="rope")
check(rc1 == 0 and rc2 == 0 and results(o1) and csv_bytes(o1) == csv_bytes(o2),
      "C: %d lines without /rope: the NaN copy's CSVs equal the clean trace's with the tables read" % len(rest))

# D. scan records: a run without /rope does not vouch for it
xdg = os.path.join(TMP, "xdg")
cdir = os.path.join(xdg, "kvtrace")


def drun(strategy):
    runs[0] += 1
    out = os.path.join(TMP, "out%d" % runs[0])
    return run_debug([KV, "run", bad, "--strategy", strategy, "--seqs", "0", "--decode", "8", "-o", out,
                      "--threads", "2"], "scan", "kvtrace: value scan: ", xdg)


rc, dbg, rest_l = drun("snapkv keep=0.5 window=4")
recs = sorted(os.listdir(cdir)) if os.path.isdir(cdir) else []
check(rc == 0 and any(r.endswith("-global-norope-ro") for r in recs) and not any(re.search(r"-global-n\d+", r) for r in recs),
      "D: snapkv on the NaN copy passes and records global-norope-ro only (%s)" % recs)
rc, dbg, rest_l = drun("expected_attention keep=0.5")
check(rc == 1 and len(rest_l) == 1 and WANT in rest_l[0], "D: expected_attention afterwards still scans /rope: %r" % rest_l)
rc, dbg, rest_l = drun("snapkv keep=0.5 window=4")
check(rc == 0 and dbg and dbg[0].split()[3] == "0", "D: snapkv again: everything skipped (%s)" % dbg)

if failures:
    sys.exit(1)
