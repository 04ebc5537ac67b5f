#!/usr/bin/python3
"""`kvreplay run` progress on stderr: when stderr is not a terminal, one line per interval
("kvreplay run: i/N sequences, elapsed ..., eta ...") and a final summary line; --quiet
silences both; on a terminal one line rewritten in place ("\\r"), no interval lines.

No wall-clock assertion: --progress-every 0 prints after every sequence (exactly N lines,
i = 1..N in order), --progress-every 1e9 never within a test run (only the summary), and the
results directory is byte-identical whatever the progress options.
"""
import os
import pty
import re
import subprocess
import sys

BIN = os.environ.get("BIN", "bin")
ROOT = os.environ.get("KV_ROOT", os.getcwd())
TMP = os.environ.get("KV_TMP", "/tmp")
KVR = os.path.join(BIN, "kvreplay")
TRACE = os.path.join(ROOT, "traces", "sample.h5")
BASE = ["run", TRACE, "--strategy", "full", "--strategy", "knorm keep=0.25", "--decode", "16"]
N = 8          # sequences of sample.h5, none reserved for calibration by these strategies
fails = []
LINE = re.compile(r"^kvreplay run: (\d+)/(\d+) sequences, elapsed (\S+), eta (\S+)$")
DUR = re.compile(r"^(\d+\.\ds|\d+s|\d+m\d\ds|\d+h\d\dm\d\ds|\?)$")


def run(tag, extra):
    out = os.path.join(TMP, "progress_" + tag)
    r = subprocess.run([KVR] + BASE + ["-o", out] + extra, capture_output=True, text=True)
    if r.returncode != 0:
        fails.append("%s: exit %d: %s" % (tag, r.returncode, r.stderr.strip()[-300:]))
    return out, [l for l in r.stderr.splitlines() if "note:" not in l]


def results(d):
    return {f: open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d))
            if f.endswith(".csv")}


# every item: exactly N interval lines in order, then the summary
d0, lines = run("every", ["--progress-every", "0"])
prog = [LINE.match(l) for l in lines if LINE.match(l)]
if [int(m.group(1)) for m in prog] != list(range(1, N + 1)):
    fails.append("--progress-every 0: want lines 1..%d, got %s" % (N, lines))
for m in prog:
    if int(m.group(2)) != N or not DUR.match(m.group(3)) or not DUR.match(m.group(4)):
        fails.append("malformed progress line: %r" % m.group(0))
if prog and prog[-1].group(4) != "0s":
    fails.append("last line's eta is %r, want 0s" % prog[-1].group(4))
summary = [l for l in lines if re.match(r"^kvreplay run: %d/%d sequences done in \S+ \(%d computed, 0 resumed\)$" % (N, N, N), l)]
if len(summary) != 1 or lines[-1] != summary[0]:
    fails.append("want one final summary line last, got %s" % lines)
if any("\r" in l for l in lines):
    fails.append("carriage return written to a non-terminal stderr")

# a long interval: only the summary
d1, lines = run("rare", ["--progress-every", "1e9"])
if any(LINE.match(l) for l in lines) or len(lines) != 1 or "sequences done in" not in lines[0]:
    fails.append("--progress-every 1e9: want only the summary, got %s" % lines)

# --quiet: nothing but notes
d2, lines = run("quiet", ["--quiet"])
if lines:
    fails.append("--quiet printed %s" % lines)

if results(d0) != results(d1) or results(d0) != results(d2):
    fails.append("results differ with the progress options")

# bad values: one line, usage exit status
for bad in ("-1", "abc", "nan"):
    r = subprocess.run([KVR] + BASE + ["-o", os.path.join(TMP, "progress_bad"), "--progress-every", bad],
                       capture_output=True, text=True)
    if r.returncode != 2 or len(r.stderr.strip().splitlines()) != 1 or "--progress-every" not in r.stderr:
        fails.append("--progress-every %s: exit %d, %r" % (bad, r.returncode, r.stderr))

# a terminal: the line rewritten in place, no interval lines even with --progress-every 0
master, slave = pty.openpty()
p = subprocess.Popen([KVR] + BASE + ["-o", os.path.join(TMP, "progress_tty"), "--progress-every", "0"],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
os.close(slave)
buf = b""
while True:
    try:
        chunk = os.read(master, 4096)
    except OSError:            # EIO once the child closed its end
        break
    if not chunk:
        break
    buf += chunk
p.wait()
os.close(master)
tty = buf.decode("utf-8", "replace")
if p.returncode != 0:
    fails.append("tty run exit %d" % p.returncode)
if "\rkvreplay run: sequence %d/%d (2 configs)" % (N, N) not in tty:
    fails.append("tty: no in-place line for sequence %d: %r" % (N, tty[-400:]))
if re.search(r"sequences, elapsed", tty):
    fails.append("tty: interval lines printed on a terminal")
if "%d/%d sequences done in" % (N, N) not in tty:
    fails.append("tty: no summary line")

if fails:
    print("\n".join(fails))
    sys.exit(1)
print("progress: %d interval lines with --progress-every 0, summary only at 1e9, silent with --quiet, "
      "in-place on a terminal; results identical" % N)
