#!/usr/bin/python3
"""`kvreplay run --shard` and `kvreplay merge` (issue 7): shards 0/3, 1/3, 2/3 of the sample
trace merged give every CSV of the unsharded run byte for byte; the Slurm job-array forms
of --shard pick the same shard as the explicit i/N; merge refuses a missing shard, a shard
given twice, a shard that lost a part, and shards of different sequence lists, each with
one stderr line and no results written.
Byte for byte on purpose: kvreplay's own arithmetic is fixed-order C (its attention kernels are
bit-identical on every x86-64, replay/attn.c), and its BLAS calls (read-out sgemm, GSL's
eigensolver of lowrank calibration) get the same shapes and the same OpenBLAS kernel and thread
count (from the environment, not --threads) in every run compared here, so on one machine the
bytes cannot depend on --threads, shards or ranks. Across machines/kernels results differ by
rounding: the golden tests compare with numpy under tolerances (issue 13 audit).
"""
import csv
import json
import os
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
    if not cond:
        fails.append(msg)


def kv(args, env=None):
    e = dict(os.environ)
    for k in list(e):
        if k.startswith("SLURM_"):
            del e[k]
    e.update(env or {})
    return subprocess.run([KVR] + args, capture_output=True, text=True, env=e)


def same_csvs(a, b, what):
    for name in CSVS:
        x = open(os.path.join(a, name), "rb").read()
        y = open(os.path.join(b, name), "rb").read()
        expect(x == y, f"{what}: {name} differs from the unsharded run")


if not os.path.exists(TRACE):
    print(f"traces/sample.h5 not found under {ROOT}")
    sys.exit(77)
sweep = os.path.join(TMP, "small.sweep")
with open(sweep, "w") as f:
    f.write("full\nstreaming keep=0.25 sinks=4\nknorm keep=0.25,0.5\nquant kbits=4 vbits=4 group=32 residual=32\n")
base = [TRACE, "--sweep", sweep, "--decode", "32", "--threads", "1"]

one = os.path.join(TMP, "unsharded")
r = kv(["run"] + base + ["-o", one])
if r.returncode != 0:
    print(f"FAIL: unsharded run: exit {r.returncode}: {r.stderr.strip()}")
    sys.exit(1)

# ---- 0/3, 1/3, 2/3 merged == unsharded -------------------------------------------------
sh = [os.path.join(TMP, f"shard_{i}") for i in range(3)]
for i in range(3):
    r = kv(["run"] + base + ["-o", sh[i], "--shard", f"{i}/3"])
    expect(r.returncode == 0, f"shard {i}/3: exit {r.returncode}: {r.stderr.strip()}")
if not fails:
    seqs = [sorted({int(x["seq"]) for x in csv.DictReader(open(os.path.join(d, "per_seq.csv")))}) for d in sh]
    expect(seqs == [[0, 3, 6], [1, 4, 7], [2, 5]], f"shards hold sequences {seqs}, expected round-robin [0,3,6] [1,4,7] [2,5]")
    merged = os.path.join(TMP, "merged")
    r = kv(["merge", "-o", merged, sh[2], sh[0], sh[1]])      # any order
    expect(r.returncode == 0, f"merge: exit {r.returncode}: {r.stderr.strip()}")
    if r.returncode == 0:
        same_csvs(one, merged, "merge of 3 shards")
        pv = json.load(open(os.path.join(merged, "provenance.json")))
        expect(pv["shard"] == "0/1" and pv["n_seq"] == 8, f"merged provenance shard {pv['shard']} n_seq {pv['n_seq']}")
        expect(not os.path.exists(os.path.join(merged, "parts")), "merged directory has parts/")
        print("shards 0/3 + 1/3 + 2/3 merged: every CSV byte-identical to the unsharded run")

# ---- Slurm job arrays: --shard N (task id) and --shard slurm (id - min, count) ----------
if not fails:
    d = os.path.join(TMP, "slurm_a")
    r = kv(["run"] + base + ["-o", d, "--shard", "slurm"],
           {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "3"})
    expect(r.returncode == 0, f"--shard slurm: exit {r.returncode}: {r.stderr.strip()}")
    if r.returncode == 0:
        expect(json.load(open(os.path.join(d, "provenance.json")))["shard"] == "1/3", "--shard slurm (id 5, min 4, count 3) is not 1/3")
        same = open(os.path.join(d, "per_seq.csv"), "rb").read() == open(os.path.join(sh[1], "per_seq.csv"), "rb").read()
        expect(same, "--shard slurm: per_seq.csv differs from --shard 1/3")
    d = os.path.join(TMP, "slurm_b")
    r = kv(["run"] + base + ["-o", d, "--shard", "3"], {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"})
    expect(r.returncode == 0, f"--shard 3 with SLURM_ARRAY_TASK_ID=2: exit {r.returncode}: {r.stderr.strip()}")
    if r.returncode == 0:
        expect(json.load(open(os.path.join(d, "provenance.json")))["shard"] == "2/3", "--shard 3 (task id 2) is not 2/3")
    for name, args, env, needle in (
            ("slurm outside an array", ["--shard", "slurm"], {}, "SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are not set"),
            ("slurm id beyond count", ["--shard", "slurm"], {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3"}, "--shard slurm"),
            ("i >= N", ["--shard", "3/3"], {}, "0 <= i < N")):
        r = kv(["run"] + base + ["-o", os.path.join(TMP, "bad_" + name.replace(" ", "_"))] + args, env)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        expect(r.returncode == 2 and len(lines) == 1 and needle in r.stderr,
               f"{name}: exit {r.returncode}, stderr {r.stderr.strip()!r} (one line with '{needle}' expected)")
    print("Slurm: --shard slurm and --shard N pick the shard of the job-array task")

# ---- merge refuses gaps and overlaps: one line, non-zero exit, nothing written ----------
if not fails:
    lost = os.path.join(TMP, "shard_1_lost")
    shutil.copytree(sh[1], lost)
    os.unlink(os.path.join(lost, "parts", "seq_4.part"))
    copy0 = os.path.join(TMP, "shard_0_copy")
    shutil.copytree(sh[0], copy0)
    other = os.path.join(TMP, "shard_1_other_list")
    r = kv(["run"] + base + ["-o", other, "--shard", "1/3", "--seqs", "0-6"])
    expect(r.returncode == 0, f"shard 1/3 of --seqs 0-6: exit {r.returncode}: {r.stderr.strip()}")
    cases = [
        ("missing shard", [sh[0], sh[2]], "shard 1/3 is missing"),
        ("same shard twice", [sh[0], sh[1], sh[2], sh[1]], "given twice"),
        ("duplicated shard directory", [sh[0], sh[1], sh[2], copy0], "given twice"),
        ("shard that lost a part", [sh[0], lost, sh[2]], "2 part(s) in parts/"),
        ("different sequence lists", [sh[0], other, sh[2]], "from a different run"),
        ("unfinished shard", [sh[0], sh[1], os.path.join(TMP, "nosuch")], "not a finished shard"),
    ]
    for name, dirs, needle in cases:
        out = os.path.join(TMP, "m_" + name.replace(" ", "_"))
        r = kv(["merge", "-o", out] + dirs)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        expect(r.returncode != 0 and len(lines) == 1 and needle in r.stderr,
               f"merge with a {name}: exit {r.returncode}, stderr {r.stderr.strip()!r} (one line with '{needle}' expected)")
        expect(not os.path.exists(os.path.join(out, "per_seq.csv")), f"merge with a {name}: results written")
        print(f"merge refuses a {name}: {lines[0] if lines else ''}")

if fails:
    print(f"FAIL: {len(fails)} problems:")
    for m in fails:
        print("  " + m)
    sys.exit(1)
print("PASS")
