#!/usr/bin/python3
"""Golden test of duo, finch and per_layer run by `kvreplay run`, against the independent numpy
selections of ref_presses_more.py plugged into ref_replay.py's numpy replay (the pattern of
test_golden_presses.py: ref_replay.make_trace's small structured trace, L=2, H=4, Hkv=2, D=16,
RoPE tables; every compared per_seq.csv (and, without calibration, summary.csv and
per_head.csv) row within golden_cmp's tolerances; each configuration must compress).

duo calibrates on sequence 2 (--calib 2) and is evaluated on 0 and 1; its masses are computed
here in float64 and a threshold is placed between two of them, far from both, so that the
split is not decided by rounding. Exit 0 pass, 1 fail.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_replay  # noqa: E402
import ref_presses_more  # noqa: E402
from golden_cmp import compare, fails, finish  # noqa: E402
from golden_harness import TMP, check_golden, exit_failed, kvreplay_run, parse, tables  # noqa: E402

SEQ_LEN = (96, 90, 80)


def trace_path(tag, **kw):
    path = os.path.join(TMP, f"golden_more_{tag}.h5")
    if not os.path.exists(path):
        ref_replay.make_trace(path, S=len(SEQ_LEN), T=max(SEQ_LEN), seq_len=list(SEQ_LEN), **kw)
    return path


def keep_param(params, budget):
    if budget and budget[0] == "keep":
        params["_keep"] = budget[1]


# ---- duo --------------------------------------------------------------------------------------

def duo_masses(trace, sinks, recent, calib_q, seq=2):
    import h5py
    with h5py.File(trace, "r") as f:
        L, scale = int(f.attrs["n_layers"]), float(f.attrs["attn_scale"])
        n = int(f["seq_len"][seq])
        return np.array([ref_presses_more.duo_masses(f[f"layers/{l}/q"][seq][:, :n].astype(np.float64),
                                                     f[f"layers/{l}/k"][seq][:, :n].astype(np.float64),
                                                     scale, sinks, recent, calib_q) for l in range(L)])


DUO_RUNS = []


def check_duo(spec, trace, decode=32):
    """One duo configuration, calibrated on sequence 2, compared on sequences 0 and 1."""
    strat, params, budget = parse(spec)
    mass = duo_masses(trace, int(params.get("sinks", 128)), int(params.get("recent", 256)),
                      int(params.get("calib_q", 64)))
    ref_presses_more.DUO_STREAMING = ref_presses_more.duo_split(
        mass, float(params.get("head_fraction", 0.5)), float(params.get("threshold", 0)))
    if not 0 < len(ref_presses_more.DUO_STREAMING) < mass.size:
        fails.append(f"duo '{spec}': {len(ref_presses_more.DUO_STREAMING)} of {mass.size} heads streaming "
                     "(the split would not be tested)")
    out = os.path.join(TMP, f"out_more_duo{len(DUO_RUNS)}")
    DUO_RUNS.append(spec)
    r = kvreplay_run(trace, out, "prefill", [spec], ["--decode", str(decode), "--calib", "2", "--seqs", "0,1"])
    if r.returncode != 0:
        exit_failed(r)
    rows, = tables(out, ("per_seq",))
    params["_gqa"] = "mean"
    ref = ref_replay.replay(trace, "prefill", [(spec, strat, params, budget)], decode=decode)
    if sorted(int(r2["seq"]) for r2 in rows) != [0, 1]:
        fails.append(f"duo '{spec}': per_seq rows for sequences {[r2['seq'] for r2 in rows]}, expected 0 and 1")
    for r2 in rows:
        compare(f"duo seq {r2['seq']} '{spec}'", r2, ref[spec]["per_seq"][int(r2["seq"])])
        if float(r2["mass_recall"]) >= 1.0:
            fails.append(f"duo seq {r2['seq']} '{spec}': mass_recall 1 — nothing was compressed")


def duo_threshold(trace, sinks, recent, calib_q):
    """A threshold halfway across the widest gap between the sorted masses (4 decimals)."""
    m = np.sort(duo_masses(trace, sinks, recent, calib_q).reshape(-1))
    i = int(np.argmax(np.diff(m)))
    return f"{(m[i] + m[i + 1]) / 2:.4f}"


tr = trace_path("plain")
check_duo("duo sinks=2 recent=8 calib_q=0", tr)
check_duo("duo sinks=1 recent=12 head_fraction=0.25 calib_q=16", tr)
check_duo("duo sinks=4 recent=6 head_fraction=0.75", tr)
check_duo(f"duo sinks=2 recent=8 calib_q=0 threshold={duo_threshold(tr, 2, 8, 0)}", tr)



# ---- finch --------------------------------------------------------------------------------------

def finch_params(params, budget):
    keep_param(params, budget)
    params["reindex"] = int(params.get("rerotate", 1))      # ref_replay's positions within the cache


# a question trace: contexts of 64/58/48 tokens, then 32 question tokens each (the window)
ref_presses_more.FINCH_QUESTION = True
check_golden("finch_question", trace_path("qa", prefill_len=[64, 58, 48]), os.path.join(TMP, "out_more_finch_q"),
             "prefill", None, [
                 "finch keep=0.5",
                 "finch keep=0.6 rerotate=0",
                 "finch keep=0.4 preset=kvtrace question=8",
                 "finch budget=20 normalize=0",
                 # chunked (kvpress chunk_length): contexts 64/58/48 + 8 question tokens in chunks
                 # of 24 (shares 12, the last chunk's taken by the question first), and chunks of
                 # the context alone under preset=kvtrace (round(0.5 * 25) = 13, half away from 0)
                 "finch keep=0.5 question=8 chunk=24",
                 "finch keep=0.5 preset=kvtrace chunk=25",
             ], set_params=finch_params)
# no /prefill_len: the last window= prompt tokens, padded with the maximum + 1 (--decode 32)
ref_presses_more.FINCH_QUESTION = False
check_golden("finch_prompt", trace_path("plain"), os.path.join(TMP, "out_more_finch_p"), "prefill", 32, [
    "finch keep=0.45",
    "finch keep=0.3 window=8 rerotate=0",
    "finch budget=20 window=4 preset=kvtrace normalize=0",
    # chunked: prompts of 64/58/48 in chunks of 24 (share int(0.45 * 24) = 10; the window's 8
    # entries fill the first 8 of the last chunk's share) and of 15 (round(0.3 * 15) = 5 > 4)
    "finch keep=0.45 window=8 chunk=24",
    "finch keep=0.3 window=4 preset=kvtrace chunk=15 normalize=0",
], set_params=finch_params)

# ---- per_layer ----------------------------------------------------------------------------------

def per_layer_params(params, budget):
    if params.get("press") == "finch":
        params["reindex"] = 1       # finch's default re-rotation, through per_layer's view


# three layers, so that fit=interp has a layer between two ratios
tr3 = trace_path("l3", L=3)
curve = os.path.join(TMP, "golden_more.ratios")
with open(curve, "w") as f:
    f.write("# a budget curve: one compression ratio per layer\n0.2\n\n0.7   # middle layer\n0.45\n")
check_golden("per_layer", tr3, os.path.join(TMP, "out_more_per_layer"), "prefill", 32, [
    "per_layer ratios=0.2/0.6/0.8",
    f"per_layer file={curve} press=observed_attention",
    "per_layer ratios=0.1/0.9 fit=interp press=keydiff",
    "per_layer ratios=0/0.5/1 press=finch",
    "per_layer ratios=0.4 fit=interp press=observed_attention",
], set_params=per_layer_params)

finish("PASS: duo, finch, per_layer match numpy")
