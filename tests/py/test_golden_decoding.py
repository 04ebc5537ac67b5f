#!/usr/bin/python3
"""Golden test of the decode-time presses (decoding, dms, cam) run by `kvreplay run`, against the
independent float64 numpy references of ref_decoding.py plugged into ref_replay.py's numpy replay.

The trace is ref_replay.make_trace's small structured trace (S=3 sequences of 96/90/80 tokens,
L=2, H=4, Hkv=2, D=16), --decode 32 (prompts of 64/58/48 tokens), replayed under --mode online
and --mode prefill (a decode-time press gives the same results in both). Every per_seq.csv,
per_head.csv and summary.csv row is compared with golden_cmp's tolerances (fp32 engine vs
float64 numpy from the same f16 data; a different kept set, or a merge drawn differently,
changes mass_recall / out_cos by far more than them). Each configuration must compress
(mass_recall < 1); each cam configuration must merge (out_cos differs from the same eviction
without merges). The cam and dms CSVs are byte-identical under --threads 1 and 2 and as two
merged shards. Exit 0 pass, 1 fail.
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_decoding  # noqa: E402,F401  (registers the presses)
import ref_replay  # noqa: E402
from golden_cmp import fails, finish  # noqa: E402
from golden_harness import BIN, TMP, check_golden, exit_failed, kvreplay_run  # noqa: E402

SPECS = [
    "decoding interval=8 target=40",
    "decoding interval=5 target=60 scorer=keydiff",
    "decoding interval=8 target=40 scorer=tova",
    "decoding interval=6 target=44 scorer=snapkv window=8 kernel=3",
    "dms threshold=0.01 sliding=16",
    "dms threshold=-3.2 sliding=8 scorer=knorm interval=4",
    "dms threshold=0.005 sliding=12 scorer=snapkv window=8 interval=3",
    "cam interval=8 target=40 merge_budget=4",
    "cam interval=5 target=50 scorer=tova",
    "cam interval=1 target=56 merge_budget=8 scorer=snapkv window=6 kernel=3",
    # the same evictions without merges (decoding), for the "cam merges" check
    "decoding interval=5 target=50 scorer=tova",
]


def check(mode, decode=32, seq_len=(96, 90, 80)):
    trace = os.path.join(TMP, f"golden_decoding_{'_'.join(map(str, seq_len))}.h5")
    if not os.path.exists(trace):
        ref_replay.make_trace(trace, S=len(seq_len), T=max(seq_len), seq_len=list(seq_len))
    summ = check_golden(mode, trace, os.path.join(TMP, f"out_decoding_{mode}"), mode, decode, SPECS, canon=True)
    cam, dec = summ[SPECS.index("cam interval=5 target=50 scorer=tova")], summ[-1]
    if cam["mass_recall"] != dec["mass_recall"] or cam["out_cos"] == dec["out_cos"]:
        fails.append(f"{mode}: cam and decoding with the same evictions: mass_recall {cam['mass_recall']} vs "
                     f"{dec['mass_recall']} (must be equal), out_cos {cam['out_cos']} vs {dec['out_cos']} (must differ)")
    return summ


online = check("online")
prefill = check("prefill")
for a, b in zip(online, prefill):
    if a != b:
        fails.append(f"summary row of '{a['config']}' differs between --mode online and --mode prefill")
        break


def byte_identity(decode=32):
    """cam's draws and every press's evictions: the CSVs of --threads 1, --threads 2 and of the
    shards 0/2 + 1/2 merged are byte-identical."""
    trace = os.path.join(TMP, "golden_decoding_96_90_80.h5")
    specs = [s for s in SPECS if s.startswith(("cam", "dms"))]
    outs = {}
    for tag, extra in (("t1", ["--threads", "1"]), ("t2", ["--threads", "2"]),
                       ("s0", ["--threads", "2", "--shard", "0/2"]), ("s1", ["--threads", "1", "--shard", "1/2"])):
        outs[tag] = os.path.join(TMP, f"out_decoding_{tag}")
        r = kvreplay_run(trace, outs[tag], "online", specs, ["--decode", str(decode)] + extra)
        if r.returncode != 0:
            exit_failed(r)
    outs["merged"] = os.path.join(TMP, "out_decoding_merged")
    r = subprocess.run([f"{BIN}/kvreplay", "merge", "-o", outs["merged"], outs["s1"], outs["s0"]],
                       capture_output=True, text=True)
    if r.returncode != 0:
        exit_failed(r)
    for name in ("per_seq.csv", "per_head.csv", "summary.csv"):
        ref = open(os.path.join(outs["t1"], name), "rb").read()
        for tag in ("t2", "merged"):
            if open(os.path.join(outs[tag], name), "rb").read() != ref:
                fails.append(f"{name} of the {tag} run differs from --threads 1")


byte_identity()
finish("PASS: decode-time presses (decoding, dms, cam) match numpy, the same under both modes")
