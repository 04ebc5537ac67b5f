#!/usr/bin/python3
"""Golden test of the attention-scored eviction strategies (h2o, tova, snapkv with each preset,
pyramidkv in both forms, adakv, quest, cab) run by `kvreplay run`, against the independent
numpy selections of ref_evict.py plugged into ref_replay.py's numpy replay.

The trace is ref_replay.make_trace's small structured trace (S=3 sequences of 96/90/80
tokens, L=2, H=4, Hkv=2, D=16, read-out C=32, V=50). Prefill with --decode 32 (prompts of
64/58/48 tokens) and online over every position; once more with --gqa-reduce max.
Every per_seq.csv, per_head.csv and summary.csv row is compared. A different kept set changes
mass_recall / attn_cos / the per-head mean budget by far more than these tolerances, so the
comparison checks the selections themselves.

Tolerances (as test_golden_replay.py: fp32 engine vs float64 numpy from the same f16 data):
  attention metrics (attn_cos, out_cos, out_rel_err, mass_recall, keep_frac): |d| <= 2e-6
  attn_kl, logit_kl: |d| <= 1e-7 + 1e-4 |ref|      nll_*, ppl_*: |d| <= 2e-5 (1 + |ref|)
  top1_agree, ece_*: |d| <= 0.03 (an fp32 near-tie may flip one position's argmax or bin)
  n_query, kv_bytes, full_bytes, ratio, budget: relative 1e-8 (the CSV's 9 digits)
Prints the worst element per column. Exit 0 pass, 1 fail.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_replay  # noqa: E402
import ref_evict  # noqa: E402,F401  (registers the selections)

from golden_cmp import finish  # noqa: E402
from golden_harness import TMP, check_golden  # noqa: E402


def check(tag, mode, decode, specs, gqa="mean"):
    trace = os.path.join(TMP, "golden.h5")
    if not os.path.exists(trace):
        ref_replay.make_trace(trace, seq_len=[96, 90, 80])
    check_golden(tag, trace, os.path.join(TMP, f"out_{tag}"), mode, decode, specs, gqa)


check("prefill", "prefill", 32, [
    "h2o keep=0.3",
    "h2o budget=20 recent=0.25",
    "tova keep=0.3",
    "snapkv keep=0.75",
    "snapkv keep=0.3 preset=kvpress window=8",
    "snapkv keep=0.3 preset=factory",
    "snapkv keep=0.4 preset=factory pool=avg reduce=mean gqa=max gqa_at=before kernel=3",
    "snapkv keep=0.4 preset=snapkv window=6 pool=max gqa=sum",
    "pyramidkv budget=20",
    "pyramidkv keep=0.4 form=kvpress window=4 beta=2",
    "adakv keep=0.3 window=8",
    "adakv keep=0.3 preset=factory alpha=0.5",
    "quest keep=0.25 page=4",
    "quest budget=16 page=8 min_pages=3",
    "cab keep=0.3",
    "cab budget=20 sinks=2 local=0.2 bridges=0.4",
])
check("online", "online", None, [
    "h2o keep=0.3",
    "h2o budget=30 recent=0.2",
    "tova keep=0.3",
    "tova budget=25",
])
check("prefill_max", "prefill", 32, ["h2o keep=0.3", "snapkv keep=0.3 preset=factory", "cab keep=0.3",
                                    "adakv keep=0.3 preset=factory"], gqa="max")
check("online_sum", "online", None, ["h2o keep=0.3", "tova keep=0.3"], gqa="sum")

finish("PASS: h2o, tova, snapkv (3 presets + knobs), pyramidkv (2 forms), adakv, quest, cab match numpy")
