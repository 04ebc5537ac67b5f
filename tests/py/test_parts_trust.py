#!/usr/bin/python3
"""Parts and run directories are checked, not trusted (issue 13 §3).

- Every part carries a checksum line; `kvreplay merge` and `--resume` verify it: 40 seeded
  random one-byte edits of shard parts are each refused (before: 8 of 40 merged silently
  into results that differ from the unsharded run), with one stderr line naming the part.
- A part whose values include nan/inf (with a correct checksum, so the value check itself is
  what refuses it) is refused by merge and by --resume; no per_seq.csv/summary.csv written.
- `--resume` with other options than the interrupted run (--decode, --page-size, the sweep)
  is refused naming the option; with the same options it completes to the unsharded bytes.
- A second run on a directory another run holds (flock on DIR/parts/lock) gets one line
  "DIR is in use by another run (pid N)".
"""
import fcntl
import os
import random
import re
import shutil
import subprocess
import sys

BIN = os.environ.get("BIN", "bin")
TMP = os.environ.get("KV_TMP", "/tmp")
ROOT = os.environ.get("KV_ROOT", ".")
KVR = f"{BIN}/kvreplay"
TRACE = os.path.join(ROOT, "traces", "sample.h5")
CSVS = ("configs.csv", "per_seq.csv", "per_head.csv", "summary.csv", "calib.csv", "per_pos.csv")
fails = []


def expect(cond, msg):
    print(("ok    " if cond else "FAIL  ") + msg)
    if not cond:
        fails.append(msg)


def kv(args):
    e = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.run([KVR] + args, capture_output=True, text=True, env=e)


def fnv1a64(b):
    """FNV-1a 64, written from the published constants (not from the C source)."""
    h = 0xcbf29ce484222325
    for x in b:
        h = ((h ^ x) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def resum(path):
    """Rewrite a part's checksum line after an edit of its content."""
    data = open(path, "rb").read()
    body = data[:data.rindex(b"sum ")]
    open(path, "wb").write(body + b"sum %016x\n" % fnv1a64(body))


def one_line_refusal(r, pat, what):
    lines = r.stderr.strip().splitlines()
    expect(r.returncode != 0 and len(lines) == 1 and re.search(pat, r.stderr) is not None,
           f"{what}: exit {r.returncode}, stderr {r.stderr.strip()!r}")


if not os.path.exists(TRACE):
    print(f"traces/sample.h5 not found under {ROOT}")
    sys.exit(77)
sweep = os.path.join(TMP, "small.sweep")
with open(sweep, "w") as f:
    f.write("full\nstreaming keep=0.25 sinks=4\nknorm keep=0.25,0.5\n")
base = [TRACE, "--sweep", sweep, "--decode", "32", "--threads", "1"]

one = os.path.join(TMP, "unsharded")
r = kv(["run"] + base + ["-o", one])
if r.returncode != 0:
    print(f"FAIL: unsharded run: exit {r.returncode}: {r.stderr.strip()}")
    sys.exit(1)
sh = [os.path.join(TMP, f"shard_{i}") for i in range(2)]
for i in range(2):
    r = kv(["run"] + base + ["-o", sh[i], "--shard", f"{i}/2"])
    if r.returncode != 0:
        print(f"FAIL: shard {i}/2: exit {r.returncode}: {r.stderr.strip()}")
        sys.exit(1)
part = os.path.join(sh[1], "parts", "seq_1.part")
expect(open(part, "rb").read().splitlines()[-1].startswith(b"sum "), "a part ends with its checksum line")
expect(int(open(part, "rb").read().splitlines()[-1][4:], 16) == fnv1a64(open(part, "rb").read()[:open(part, "rb").read().rindex(b"sum ")]),
       "the checksum is FNV-1a 64 of the content before it")

# ---- intact shards merge to the unsharded bytes ------------------------------------------
m = os.path.join(TMP, "m_ok")
r = kv(["merge", "-o", m, sh[0], sh[1]])
expect(r.returncode == 0, f"merge of intact shards: exit {r.returncode} {r.stderr.strip()}")
if r.returncode == 0:
    for name in CSVS:
        expect(open(os.path.join(m, name), "rb").read() == open(os.path.join(one, name), "rb").read(),
               f"merge: {name} identical to the unsharded run")

# ---- 40 random one-byte edits: each refused -------------------------------------------------
rng = random.Random(1313)
orig = open(part, "rb").read()
refused = silent_same = silent_diff = 0
for trial in range(40):
    data = bytearray(orig)
    pos = rng.randrange(len(data))
    new = rng.choice(b"0123456789abcdefpx.+- \nn")
    if data[pos] == new:
        new = ord("7") if new != ord("7") else ord("8")
    data[pos] = new
    open(part, "wb").write(bytes(data))
    m = os.path.join(TMP, f"m_{trial}")
    r = kv(["merge", "-o", m, sh[0], sh[1]])
    if r.returncode != 0:
        refused += 1
        ok = len(r.stderr.strip().splitlines()) == 1 and "seq_1.part" in r.stderr and not os.path.exists(os.path.join(m, "per_seq.csv"))
        if not ok:
            expect(False, f"edit {trial} at byte {pos}: refusal is not one line naming the part: {r.stderr.strip()!r}")
    elif all(open(os.path.join(m, n), "rb").read() == open(os.path.join(one, n), "rb").read() for n in CSVS):
        silent_same += 1
    else:
        silent_diff += 1
open(part, "wb").write(orig)
expect(refused == 40, f"40 one-byte edits of a part: {refused} refused, {silent_same} merged identical, "
       f"{silent_diff} merged with different results")

# ---- non-finite values, checksum correct: refused by the value check ---------------------
text = orig.decode()
for bad in ("nan", "inf", "-inf"):
    lines = text.split("\n")
    vals = lines[1].split(" ")
    vals[3] = bad
    lines[1] = " ".join(vals)
    open(part, "w").write("\n".join(lines))
    resum(part)
    m = os.path.join(TMP, f"m_{bad}")
    r = kv(["merge", "-o", m, sh[0], sh[1]])
    one_line_refusal(r, r"seq_1\.part: value 4 is not finite", f"merge of a part holding {bad}")
    expect(not os.path.exists(os.path.join(m, "per_seq.csv")) and not os.path.exists(os.path.join(m, "summary.csv")),
           f"{bad}: no per_seq.csv/summary.csv written")
open(part, "wb").write(orig)

# ---- the per-position block: a count other than the evaluated positions, a non-finite
# value, both with a correct checksum: refused; a part without the block (an older
# kvreplay) merges, without per_pos.csv ----
ppi = text.index("\npp ") + 1
ppn = int(text[ppi + 3:text.index("\n", ppi)])
for edit, pat in ((text[:ppi] + "pp %d" % (ppn + 1) + text[text.index("\n", ppi):], r"seq_1\.part: bad per-position block"),
                  (text[:ppi] + text[ppi:].replace("\n", "\nnan ", 1), r"seq_1\.part: per-position value 1")):
    open(part, "w").write(edit)
    resum(part)
    r = kv(["merge", "-o", os.path.join(TMP, "m_pp"), sh[0], sh[1]])
    one_line_refusal(r, pat, "merge of a part with a bad per-position block")
nd = text.find("\nnd ", ppi)
open(part, "w").write(text[:ppi] + (text[nd + 1:] if nd >= 0 else text[text.index("\nend\n", ppi) + 1:]))
resum(part)
m = os.path.join(TMP, "m_nopp")
r = kv(["merge", "-o", m, sh[0], sh[1]])
expect(r.returncode == 0 and not os.path.exists(os.path.join(m, "per_pos.csv")) and
       open(os.path.join(m, "per_seq.csv"), "rb").read() == open(os.path.join(one, "per_seq.csv"), "rb").read(),
       f"a part without the per-position block: merged without per_pos.csv ({r.stderr.strip()})")
open(part, "wb").write(orig)

# ---- --resume: an interrupted shard (CSVs gone, parts kept) ----------------------------------
res = os.path.join(TMP, "resume")
shutil.copytree(sh[1], res)
for name in os.listdir(res):
    if name != "parts":
        os.unlink(os.path.join(res, name))
os.unlink(os.path.join(res, "parts", "seq_3.part"))         # one sequence still to do
rpart = os.path.join(res, "parts", "seq_1.part")
data = bytearray(orig)
data[len(data) // 2] = ord("9") if data[len(data) // 2] != ord("9") else ord("8")
open(rpart, "wb").write(bytes(data))
r = kv(["run"] + base + ["-o", res, "--shard", "1/2", "--resume"])
one_line_refusal(r, r"seq_1\.part: checksum mismatch", "--resume over an edited part")
open(rpart, "w").write(text.replace(text.split("\n")[1].split(" ")[0], "nan", 1))
resum(rpart)
r = kv(["run"] + base + ["-o", res, "--shard", "1/2", "--resume"])
one_line_refusal(r, r"seq_1\.part: value 1 is not finite", "--resume over a part holding nan")
open(rpart, "wb").write(orig)
dec16 = list(base)
dec16[dec16.index("--decode") + 1] = "16"
for opt, args, pat in (("decode", dec16 + ["--shard", "1/2"], r"used decode = '32', this run '16'"),
                       ("page-size", base + ["--shard", "1/2", "--page-size", "8"], r"used page-size = '16', this run '8'"),
                       ("shard", base + ["--shard", "0/2"], r"used shard = '1/2', this run '0/2'")):
    r = kv(["run"] + args + ["-o", res, "--resume"])
    one_line_refusal(r, pat, f"--resume with another {opt}")
sw2 = os.path.join(TMP, "other.sweep")
open(sw2, "w").write("full\nstreaming keep=0.5 sinks=4\nknorm keep=0.25,0.5\n")
a = list(base)
a[a.index("--sweep") + 1] = sw2
r = kv(["run"] + a + ["-o", res, "--shard", "1/2", "--resume"])
one_line_refusal(r, r"used config 1 = 'streaming keep=0.25 sinks=4[^']*', this run 'streaming keep=0.5 sinks=4[^']*'",
                 "--resume with another sweep")

# ---- a directory in use: flock held by another process ---------------------------------------
lk = open(os.path.join(res, "parts", "lock"), "r+")
fcntl.flock(lk, fcntl.LOCK_EX | fcntl.LOCK_NB)
lk.seek(0); lk.truncate(); lk.write("4242\n"); lk.flush()
r = kv(["run"] + base + ["-o", res, "--shard", "1/2", "--resume"])
one_line_refusal(r, re.escape(res) + r" is in use by another run \(pid 4242\)", "--resume while another run holds the directory")
fcntl.flock(lk, fcntl.LOCK_UN)
lk.close()

r = kv(["run"] + base + ["-o", res, "--shard", "1/2", "--resume"])
expect(r.returncode == 0 and "resumed: 3 sequence(s)" in r.stderr, f"--resume with the same options: exit {r.returncode} {r.stderr.strip()!r}")
if r.returncode == 0:
    m = os.path.join(TMP, "m_resumed")
    r = kv(["merge", "-o", m, sh[0], res])
    expect(r.returncode == 0 and all(open(os.path.join(m, n), "rb").read() == open(os.path.join(one, n), "rb").read() for n in CSVS),
           f"resumed shard merges to the unsharded bytes ({r.stderr.strip()})")

if fails:
    print(f"{len(fails)} check(s) failed")
    sys.exit(1)
print("PASS")
