#!/usr/bin/python3
"""Golden test of the structural and two-stage presses (simlayerkv, chunkkv, chunk, criticalkv,
criticaladakv, merging, think) run by
`kvreplay run`, against the independent numpy selections of ref_evict.py plugged into
ref_replay.py's numpy replay: the pattern and tolerances of test_golden_evict.py (same trace,
same comparison of every per_seq.csv, per_head.csv and summary.csv row).

Configurations are chosen so that each one compresses (mass_recall < 1 is checked) and, for
simlayerkv, so that the sample trace has both lazy and non-lazy layers at the thresholds used
(checked on the numpy side: a threshold that makes every layer alike would not test the rule).
Exit 0 pass, 1 fail.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_replay  # noqa: E402
import ref_evict  # noqa: E402,F401
from golden_cmp import finish  # noqa: E402
from golden_harness import TMP, check_golden  # noqa: E402


def check(tag, mode, decode, specs, gqa="mean"):
    trace = os.path.join(TMP, "golden_structural.h5")
    if not os.path.exists(trace):
        ref_replay.make_trace(trace, seq_len=[96, 90, 80])
    # an encoder keeps every entry: think's configurations compress the keys, so attn_cos < 1
    check_golden(tag, trace, os.path.join(TMP, f"out_{tag}"), mode, decode, specs, gqa,
                 compressed_col=lambda s: "attn_cos" if s.startswith("think") else "mass_recall")


# simlayerkv: both kinds of layer must occur at the thresholds used, or the test says nothing
trace = os.path.join(TMP, "golden_structural.h5")
if not os.path.exists(trace):
    ref_replay.make_trace(trace, seq_len=[96, 90, 80])
check("simlayerkv", "prefill", 32, [
    "simlayerkv threshold=0.25 n_recent=8",
    "simlayerkv threshold=0.3 n_recent=16 n_last=4 n_initial=2",
])

# chunkkv: P = 64/58/48 -> 4/3/3 chunks of 20 (partial last chunks of 4, 18, 8 entries);
# chunk=7 leaves more chunks; chunk=70 > P falls back to the base press per kv head.
check("chunkkv", "prefill", 32, [
    "chunkkv keep=0.5 window=8",
    "chunkkv keep=0.3 chunk=7 window=4 preset=factory",
    "chunkkv keep=0.4 chunk=70 window=8",
])
# chunk: P = 64/58/48 in chunks of 16 or 20 (partial last chunks; with 20, ones of 4 and 8
# positions, not longer than the window 8: the short-chunk rule)
check("chunk", "prefill", 32, [
    "chunk keep=0.5 chunk=16 window=4",
    "chunk keep=0.3 chunk=20 window=8 preset=factory",
    "chunk budget=20 chunk=100 window=8",
])
# criticalkv: the read-out's W_O weighs the second stage (make_trace writes /readout)
check("criticalkv", "prefill", 32, [
    "criticalkv keep=0.3 window=8",
    "criticalkv keep=0.5 window=4 first_stage_ratio=0.25 epsilon=0.01",
    "criticalkv budget=20 preset=factory first_stage_ratio=0",
])
check("criticaladakv", "prefill", 32, [
    "criticaladakv keep=0.3 window=8",
    "criticaladakv keep=0.5 window=4 alpha=0.5 first_stage_ratio=0.25",
    "criticaladakv budget=20 preset=factory alpha=0 first_stage_ratio=0.8",
    "criticaladakv keep=0.4 window=4 alpha=0.9 first_stage_ratio=0",
])
# merging: the folded values change the compressed attention's output (not its weights)
check("merging", "prefill", 32, [
    "merging keep=0.3 window=8",
    "merging keep=0.5 window=4 preset=factory similarity_threshold=0.3",
])
# think: an encoder alone (every entry kept, key channels pruned) and after an eviction
check("think", "prefill", 32, [
    "think key_ratio=0.25 window=8",
    "think key_ratio=0.5",
    "snapkv keep=0.5 window=8 + think key_ratio=0.4 window=16",
])

finish("PASS: simlayerkv, chunkkv, chunk, criticalkv, criticaladakv, merging, think match numpy")
