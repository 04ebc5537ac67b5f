"""The golden tests' shared harness: parse a `--strategy` spec the way ref_replay.replay wants
it, run `kvreplay run` on a trace and read its CSVs, and compare every summary.csv,
per_seq.csv and per_head.csv row of each configuration with ref_replay.replay's numpy
result using golden_cmp's tolerances.
"""
import csv
import os
import subprocess
import sys

import ref_replay
from golden_cmp import compare, fails

BIN = os.environ.get("BIN", "bin")
TMP = os.environ.get("KV_TMP", "/tmp")


def parse(spec, value=str):
    """'snapkv keep=0.3 preset=factory' -> (strategy, params, budget); 'A ... + B ...' ->
    ('A+B', A's params with B's under "_enc", A's budget). value converts each parameter."""
    if " + " in spec:
        a, b = spec.split(" + ")
        sa, pa, ba = parse(a, value)
        sb, pb, _ = parse(b, value)
        pa["_enc"] = pb
        return sa + "+" + sb, pa, ba
    parts = spec.split()
    params, budget = {}, None
    for p in parts[1:]:
        k, v = p.split("=")
        if k == "keep":
            budget = ("keep", float(v))
        elif k == "budget":
            budget = ("budget", int(v))
        else:
            params[k] = value(v)
    return parts[0], params, budget


def kvreplay_run(trace, out, mode, specs, extra=()):
    """`kvreplay run` of specs on trace into out; the CompletedProcess."""
    cmd = [f"{BIN}/kvreplay", "run", trace, "-o", out, "--mode", mode] + list(extra)
    for s in specs:
        cmd += ["--strategy", s]
    return subprocess.run(cmd, capture_output=True, text=True)


def exit_failed(r):
    print("FAIL: kvreplay run exited", r.returncode, r.stderr.strip())
    sys.exit(1)


def tables(out, names=("per_seq", "summary", "per_head")):
    """The rows of out/<name>.csv for each name, in that order."""
    res = []
    for n in names:
        with open(os.path.join(out, n + ".csv")) as f:
            res.append(list(csv.DictReader(f)))
    return res


def check_golden(tag, trace, out, mode, decode, specs, gqa="mean", set_params=None,
                 compressed_col=lambda spec: "mass_recall", canon=False):
    """Replay specs on trace with kvreplay (into out) and with ref_replay, compare every row.
    set_params(params, budget) adds reference-only parameters; compressed_col(spec) names the
    summary column that must be below 1 (the configuration compresses, so the test can fail);
    canon passes each configuration's canonical string (summary.csv's config) as
    params["_canon"] (strategies whose random stream starts from it, as cam). Returns summary.csv's
    rows (None when --gqa-reduce is not accepted)."""
    extra = (["--gqa-reduce", gqa] if gqa != "mean" else []) + (["--decode", str(decode)] if decode else [])
    r = kvreplay_run(trace, out, mode, specs, extra)
    if r.returncode != 0 and gqa != "mean" and "'--gqa-reduce'" in r.stderr:
        # cmd_run.c documents --gqa-reduce but (at the time of writing) does not parse it
        print(f"NOTE: {tag} not checked: kvreplay run does not accept --gqa-reduce ({r.stderr.strip()})")
        return
    if r.returncode != 0:
        exit_failed(r)
    rows, summ, heads = tables(out)
    configs = []
    for i, s in enumerate(specs):
        strat, params, budget = parse(s)
        params["_gqa"] = gqa
        if canon:
            params["_canon"] = summ[i]["config"]
        if set_params:
            set_params(params, budget)
        configs.append((s, strat, params, budget))
    ref = ref_replay.replay(trace, mode, configs, decode=decode)
    for i, s in enumerate(specs):
        srow = summ[i]
        if not srow["config"].startswith(s.split()[0]):
            fails.append(f"{tag}: config {i} is '{srow['config']}', expected {s}")
            continue
        compare(f"{tag} summary '{s}'", srow, ref[s]["summary"])
        for r2 in rows:
            if int(r2["config_id"]) == i:
                compare(f"{tag} seq {r2['seq']} '{s}'", r2, ref[s]["per_seq"][int(r2["seq"])])
        nh = 0
        for r2 in heads:
            if int(r2["config_id"]) == i:
                nh += 1
                compare(f"{tag} l{r2['layer']} h{r2['head']} '{s}'", r2,
                        ref[s]["per_head"][(int(r2["layer"]), int(r2["head"]))])
        if nh != len(ref[s]["per_head"]):
            fails.append(f"{tag} '{s}': {nh} per_head rows, {len(ref[s]['per_head'])} expected")
        col = compressed_col(s)
        if float(srow[col]) >= 1.0:
            fails.append(f"{tag} '{s}': {col} 1 — nothing was compressed (test would not discriminate)")
    return summ
