"""Work items read only the query rows their configurations need (strategy.h q_rows).

Each configuration line of sweeps/default.sweep and bench/fused20.sweep, and the PyTorch
peer's four (bench/long.sh PEER1-4), is run with KVTRACE_DEBUG=q-poison (the Q rows an item
leaves unread are NaN, so any read of one reaches the results) and compared byte for byte,
every CSV, with KVTRACE_DEBUG=q-all (every row read, the behaviour before q_rows):
- on traces/sample.h5 (no /prompt_scores: the whole prompt's scores are recomputed from Q),
- on a trace captured here with --prompt-scores, under --prompt-scores trace (h2o's column
  sums from the capture: no prompt row needed) and, for the lines whose rows depend on the
  source (h2o), under --prompt-scores recompute.
A line whose every part declares q_rows gets its own run (so its own q_from is exercised).
The lines with a part that declares nothing run together in one sweep, which must read every
row (q_from = 0 in every item: KVTRACE_DEBUG=q-rows prints each item's range). Lines kvreplay
refuses on these traces (a window not below the budget) must be refused alike, same message.
The row counts themselves, from KVTRACE_DEBUG=q-rows: `full` reads [P, n) only; snapkv
window=32 reads [P - 32, n); h2o reads [P, n) with the trace's scores and [0, n) with
recomputed ones; a sweep of full and snapkv the union. Mutations that make this test fail
(checked by hand, CHANGELOG): snapkv declaring window - 1 rows; h2o not setting *whole; full
declaring 0 rows while its prefill reads row 0 of ctx->q.
"""
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture_ref import ROOT, run_capture, tmpdir  # noqa: E402
from testhelp import check, failures, write_ids  # noqa: E402

BIN = os.environ.get("BIN", os.path.join(ROOT, "bin"))
KV = os.path.join(BIN, "kvreplay")
TMP = tmpdir()
ENV = dict(os.environ)
ENV.pop("KVTRACE_DEBUG", None)
# the strategies that declare q_rows (every other one reads every row)
DECLARED = {"full", "streaming", "knorm", "random", "quant", "snapkv", "pyramidkv", "h2o"}
ROWS = re.compile(r"kvreplay: q rows seq (\d+) layer (\d+) kv heads \[(\d+), (\d+)\): \[(\d+), (\d+)\)")


def sweep_lines(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def peer_lines():
    with open(os.path.join(ROOT, "bench", "long.sh")) as f:
        txt = f.read()
    got = [re.search(r'^PEER%d="([^"]*)"' % i, txt, re.M) for i in range(1, 5)]
    check(all(got), "bench/long.sh defines PEER1..PEER4")
    return [g.group(1) for g in got if g]


def expect_rows(line, scores_from_trace):
    """The prompt rows [P - r, P) a line's configurations read, from the strategies' own rules
    (their files' headers), independently of their q_rows hooks: r, or None when a part
    declares nothing (every row). "all": every row (h2o's recomputed whole-prompt sums)."""
    r = 0
    for part in line.split("+"):
        words = part.split()
        name, kw = words[0], dict(w.split("=", 1) for w in words[1:] if "=" in w)
        if name in ("full", "streaming", "knorm", "random", "quant"):
            continue                        # K/V rows or the cache rows only
        if name == "h2o":                   # the whole prompt's column sums
            if not scores_from_trace:
                return "all"
            continue
        if name in ("snapkv", "pyramidkv"):     # the observation window
            if "window" in kw:
                w = int(kw["window"])
            elif name == "snapkv":
                w = {"snapkv": 32, "kvpress": 64, "factory": 8}[kw.get("preset", "snapkv")]
            else:
                w = {"factory": 8, "kvpress": 64}[kw.get("form", "factory")]
            r = max(r, w)
            continue
        return None
    return r


n_runs = 0


def kv(trace, sweep, debug, tag, extra):
    """(returncode, stderr, {csv name: bytes}, [q_from per item]) of one run."""
    global n_runs
    n_runs += 1
    out = os.path.join(TMP, "o%d" % n_runs)
    env = dict(ENV, KVTRACE_DEBUG=debug + ",q-rows")
    r = subprocess.run([KV, "run", trace, "--sweep", sweep, "--threads", "2", "-o", out] + extra,
                       capture_output=True, text=True, env=env)
    csv = {}
    if r.returncode == 0:
        for f in sorted(os.listdir(out)):
            if f.endswith(".csv"):
                with open(os.path.join(out, f), "rb") as fh:
                    csv[f] = fh.read()
        shutil.rmtree(out)
    rows = [(int(m.group(5)), int(m.group(6))) for m in ROWS.finditer(r.stderr)]
    err = "\n".join(x for x in r.stderr.splitlines() if not x.startswith("kvreplay: q rows"))
    return r.returncode, err, csv, rows


def write_sweep(lines, name):
    p = os.path.join(TMP, name)
    with open(p, "w") as f:
        f.write("\n".join(lines) + "\n")
    return p


def compare(trace, lines, tag, extra, want_from):
    """lines as one sweep under q-poison against q-all: every CSV the same bytes, and every
    poisoned item reading from want_from; a refused sweep is split in halves, down to single
    lines that both runs refuse with the same message."""
    sw = write_sweep(lines, "s.sweep")
    a = kv(trace, sw, "q-poison", tag, extra)
    if a[0] != 0:
        if len(lines) > 1:                  # halves, down to the refused lines
            h = len(lines) // 2
            for part in (lines[:h], lines[h:]):
                compare(trace, part, f"{tag} [{part[0]}]" if len(part) == 1 else tag, extra, want_from)
            return
        b = kv(trace, sw, "q-all", tag, extra)
        check(b[0] != 0 and a[1] == b[1], f"{tag}: refused alike ({a[1].strip()[:100]!r})")
        return
    froms = sorted({f for f, _ in a[3]})
    check(froms == [want_from], f"{tag}: every item reads Q rows from {want_from} (got {froms})")
    if froms == [0]:
        return                              # nothing poisoned: the run is the q-all run
    b = kv(trace, sw, "q-all", tag, extra)
    check(b[0] == 0 and sorted({f for f, _ in b[3]}) == [0], f"{tag}: q-all reads every row")
    bad = [f for f in a[2] if a[2].get(f) != b[2].get(f)]
    check(b[0] == 0 and a[2] == b[2] and len(a[2]) >= 3,
          f"{tag}: {len(lines)} lines, {len(a[2])} CSVs identical to q-all" + (f" (differ: {bad})" if bad else ""))


def run_trace(trace, P, extra, tag, from_trace, only=None, rest=True):
    """Every line grouped by the rows it reads (one sweep per group); the lines with an
    undeclared part in one sweep that must read every row. A refused sweep is split in halves."""
    groups = {}
    for x in dict.fromkeys(DEF + FUSED + PEER):
        if only and not only(x):
            continue
        groups.setdefault(expect_rows(x, from_trace), []).append(x)
    for r, lines in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if r is None:
            continue
        want = 0 if r == "all" or r >= P else P - r
        compare(trace, lines, f"{tag} rows {r}", extra, want)
    if rest and None in groups:
        rr = kv(trace, write_sweep(groups[None], "rest.sweep"), "q-poison", tag, extra)
        check(rr[0] == 0 and rr[3] and all(f == 0 for f, _ in rr[3]),
              f"{tag}: the {len(groups[None])} lines with an undeclared part read every row"
              + (f" (rc {rr[0]}: {rr[1].strip()[-200:]})" if rr[0] else ""))


DEF = sweep_lines(os.path.join(ROOT, "sweeps", "default.sweep"))
FUSED = sweep_lines(os.path.join(ROOT, "bench", "fused20.sweep"))
PEER = peer_lines()
shutil.copy(os.path.join(ROOT, "sweeps", "lukv_curve.ratios"), TMP)   # per_layer file= (sweep-relative)

# 1. traces/sample.h5: 256 tokens, --decode 64 -> P = 192; the whole prompt's scores recomputed
SAMPLE = os.path.join(ROOT, "traces", "sample.h5")
X1 = ["--decode", "64", "--seqs", "0-1"]
run_trace(SAMPLE, 192, X1, "sample", False)
compare(SAMPLE, ["full", "snapkv keep=0.25 window=32 kernel=7 pool=max"], "sample [full; snapkv w32]", X1, 160)

# 2. a trace with /prompt_scores (2 layers, 4 q heads, 2 kv heads, head_dim 32, 400 tokens, so
# that keep=0.1 of P = 336 is above window=32, which sample.h5 refuses)
MODEL = "ref-random:3:n_layers=2,d_model=64,n_heads=4,n_kv_heads=2,head_dim=32,d_ff=64,init_std=0.08"
IDS = write_ids(os.path.join(TMP, "ids.txt"), 3, 400, 7)
PS = os.path.join(TMP, "ps.h5")
run_capture(["--model", MODEL, "--ids", IDS, "--tokens", "400", "--sequences", "3", "--prompt-scores", "-o", PS])
X2 = ["--decode", "64", "--seqs", "0-1"]
run_trace(PS, 336, X2 + ["--prompt-scores", "trace"], "ps/trace", True)
run_trace(PS, 336, X2 + ["--prompt-scores", "recompute"], "ps/recompute", False, only=lambda x: "h2o" in x.split(),
          rest=False)
compare(PS, ["h2o keep=0.25"], "ps/trace [h2o]", X2 + ["--prompt-scores", "trace"], 336)
compare(PS, ["h2o keep=0.25"], "ps/recompute [h2o]", X2 + ["--prompt-scores", "recompute"], 0)
print(f"{n_runs} kvreplay runs")

if failures:
    sys.exit(f"{len(failures)} failure(s)")
