#!/usr/bin/python3
"""Golden test of the kvpress-catalogue scorers (observed_attention, keydiff, cur, lagkv,
expected_attention, noncausal_attn, leverage, compactor, cap, qfilter) run by `kvreplay run`, against the independent numpy selections of
ref_presses.py plugged into ref_replay.py's numpy replay (the pattern of test_golden_evict.py).

The trace is ref_replay.make_trace's small structured trace (S=3 sequences of 96/90/80
tokens, L=2, H=4, Hkv=2, D=16, RoPE tables of 96 positions), prefill with --decode 32 (prompts
of 64/58/48 tokens). Every per_seq.csv, per_head.csv and summary.csv row is compared with
golden_cmp's tolerances (fp32 engine vs float64 numpy from the same f16 data; a different
kept set changes mass_recall / attn_cos by far more than them, so the selections themselves
are checked). Each configuration must compress (mass_recall < 1). Exit 0 pass, 1 fail.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_replay  # noqa: E402
import ref_presses  # noqa: E402,F401  (registers the selections)
from golden_cmp import compare, fails, finish  # noqa: E402
from golden_harness import TMP, check_golden, exit_failed, kvreplay_run, parse, tables  # noqa: E402


def keep_param(params, budget):
    if budget[0] == "keep":
        params["_keep"] = budget[1]     # kvpress's own budget rule starts from keep=


def check(tag, specs, decode=32, seq_len=(96, 90, 80)):
    trace = os.path.join(TMP, f"golden_presses_{'_'.join(map(str, seq_len))}.h5")
    if not os.path.exists(trace):
        ref_replay.make_trace(trace, S=len(seq_len), T=max(seq_len), seq_len=list(seq_len))
    check_golden(tag, trace, os.path.join(TMP, f"out_presses_{tag}"), "prefill", decode, specs,
                 set_params=keep_param)


# one block per strategy (so that a strategy's lines are easy to find and merge)
SPECS = [
    "observed_attention keep=0.3",
    "observed_attention keep=0.45",
    "observed_attention keep=0.45 preset=kvtrace",
    "observed_attention budget=20",
    "keydiff keep=0.45",
    "keydiff budget=20 block=16",
    "keydiff keep=0.5 block=7",
    "cur keep=0.45",
    "cur budget=20 sinks=2 window=5 leverage=kv_avg",
    "cur keep=0.4 window=0 leverage=value",
    "cur keep=0.3 leverage=key",
    "lagkv keep=0.45 lag=8",
    "lagkv keep=0.45 lag=8 preset=kvtrace",
    "lagkv keep=0.5 lag=16 sinks=2",
    "lagkv budget=24 lag=6 cross=1",
    "lagkv keep=0.3",
    "expected_attention keep=0.45",
    "expected_attention budget=20 sinks=2 future=40",
    "expected_attention keep=0.4 cov=0 vnorm=0",
    "expected_attention keep=0.3 epsilon=0.05 future=7",
    # kvpress's Compactor family (chunks shorter than the prompts, so that they matter)
    "noncausal_attn keep=0.45",
    "noncausal_attn budget=20 chunk=16",
    "noncausal_attn keep=0.3 chunk=7 preset=kvtrace",
    "leverage keep=0.45",
    "leverage budget=20",
    "leverage keep=0.3 preset=kvtrace",
    "compactor keep=0.45",
    "compactor keep=0.3 chunk=16",
    "compactor budget=20 sink_start=2 sink_end=0 chunk=9",
    "compactor keep=0.5 blending=3 sink_end=6 preset=kvtrace",
    "cap keep=0.45",
    "cap budget=20 tau=1 future=40 sinks=2",
    "cap keep=0.3 epsilon=0.5 future=7",
]

check("prefill", SPECS)


def check_qfilter(specs, decode=32, seq_len=(96, 90, 80)):
    """qfilter calibrates on sequence 2 (--calib 2) and is evaluated on 0 and 1: its filters come
    from sequence 2's queries (every position, the G heads of each kv head), computed here with
    numpy's SVD; the per_seq rows of sequences 0 and 1 are compared (summary and per_head mix
    in only those two as well, but the numpy replay runs every sequence)."""
    import h5py
    trace = os.path.join(TMP, f"golden_presses_{'_'.join(map(str, seq_len))}.h5")
    if not os.path.exists(trace):
        ref_replay.make_trace(trace, S=len(seq_len), T=max(seq_len), seq_len=list(seq_len))
    out = os.path.join(TMP, "out_presses_qfilter")
    r = kvreplay_run(trace, out, "prefill", specs, ["--decode", str(decode), "--calib", "2", "--seqs", "0,1"])
    if r.returncode != 0:
        exit_failed(r)
    with h5py.File(trace, "r") as f:
        L, H, Hkv = (int(f.attrs[k]) for k in ("n_layers", "n_heads", "n_kv_heads"))
        n2 = int(f["seq_len"][2])
        for l in range(L):
            Q = f[f"layers/{l}/q"][2][:, :n2].astype(np.float64)
            for g, fl in enumerate(ref_presses.qfilter_filters(Q, H // Hkv)):
                ref_presses.QFILTER[(l, g)] = fl
    rows, = tables(out, ("per_seq",))
    configs = []
    for s in specs:
        strat, params, budget = parse(s)
        params["_gqa"] = "mean"
        if budget[0] == "keep":
            params["_keep"] = budget[1]
        configs.append((s, strat, params, budget))
    ref = ref_replay.replay(trace, "prefill", configs, decode=decode)
    for i, s in enumerate(specs):
        got = [r2 for r2 in rows if int(r2["config_id"]) == i]
        if sorted(int(r2["seq"]) for r2 in got) != [0, 1]:
            fails.append(f"qfilter '{s}': per_seq rows for sequences {[r2['seq'] for r2 in got]}, expected 0 and 1")
        for r2 in got:
            compare(f"qfilter seq {r2['seq']} '{s}'", r2, ref[s]["per_seq"][int(r2["seq"])])
            if float(r2["mass_recall"]) >= 1.0:
                fails.append(f"qfilter seq {r2['seq']} '{s}': mass_recall 1 — nothing was compressed")


check_qfilter(["qfilter keep=0.45", "qfilter budget=20", "qfilter keep=0.3 preset=kvtrace"])
# kvpress's budget rule where Python's float arithmetic matters: P = 190, keep=0.1 gives
# compression_ratio 0.9 and int(190 * (1 - 0.9)) = int(18.999999999999996) = 18 entries
# (round(0.1 * 190) = 19 under preset=kvtrace)
check("p190", ["observed_attention keep=0.1", "observed_attention keep=0.1 preset=kvtrace"], seq_len=(222,))
finish("PASS: kvpress scorers (" + ", ".join(sorted({s.split()[0] for s in SPECS})) + ") match numpy")
