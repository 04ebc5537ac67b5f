#!/usr/bin/python3
"""The engine's two work units give the same results, bit for bit. A prefill sweep whose every
configuration is head-separable (full, snapkv, knorm, h2o, pyramidkv, streaming, random, minicache)
or planned (adakv, criticaladakv, simlayerkv, criticalkv, chunkkv, chunk, merging, noncausal_attn,
leverage, compactor: strategy.h plan_score / plan_layer, what crosses the kv heads of a layer made
from every kv head's scores before the kv-head items) runs one work item per (sequence, layer, kv
head: random draws from the kv head's own stream, keyed by its number in the layer, in either
unit; the planned ones get their kv head's plan; minicache reads the partner layer's K/V of its
kv head only); the same sweep under KVTRACE_DEBUG=layer-items runs one item per (sequence,
layer), where the planned strategies make their plans themselves. Each run says which unit it
used (KVTRACE_DEBUG=units: one stderr line), and the default sweep must run kv-head items. The
planned configurations move budget across heads (adakv's heads keep different
numbers of entries) and decide per layer (simlayerkv: lazy layers and full ones both occur), so a
plan combined in another order or from another head's scores changes the bits; chunk's chunks
keep fewer entries than the window (keep=0.1), so the window padded with the maximum over the
kv heads decides which of them stay. The
configurations both runs must get the same accumulators: the per-sequence parts (DIR/parts/seq_*.part, kept by a
sharded run) print every sum in hexadecimal floating point, so a different order of the
order-sensitive additions (per-position sums over kv and query heads, the read-out's layer
fold) shows there even when the CSVs' 9 digits hide it. Also the CSV rows of those
configurations as text. On 1 and 2 threads, with the per-layer read-out, on both shipped
traces (2 kv heads each, read-out). Also encoders, per-query views, selection and decode-time
presses (below), calibrated encoders (--calib) and --export (the exported cache states, dataset
by dataset).
A shorter sweep with evict_span on the needle trace.
The other head-separable evictions (AUDITED: cab, cap, cur, entropy_merge, evict_span,
expected_attention, keydiff, lagkv, observed_attention, tova, qfilter, duo) ride along.
"""
import csv
import os
import sys

from testhelp import check, failures, run_units

BIN = os.environ.get("BIN", "bin")
TMP = os.environ.get("KV_TMP", "/tmp")
ROOT = os.environ.get("KV_ROOT", ".")
KVR = f"{BIN}/kvreplay"
SEPARABLE = ["full", "snapkv keep=0.5 window=8", "snapkv keep=0.3 window=4 kernel=3 pool=max", "knorm keep=0.3",
             "h2o keep=0.4", "pyramidkv keep=0.5 window=8", "streaming sinks=4 keep=0.3", "random keep=0.3"]
# adakv budget=5 window=4 kernel=7 pool=max alpha=0: the layer's cut falls among entries of equal
# score (the window, padded with the layer's maximum, and the max-pooled neighbours of that maximum),
# which the joint top-k gives to the lower kv head first: a plan made over the heads in another
# order keeps other entries
PLANNED = ["adakv keep=0.5 window=8", "adakv keep=0.3 window=4 alpha=0.5",
           "adakv budget=5 window=4 kernel=7 pool=max alpha=0", "criticaladakv keep=0.4 window=8",
           "simlayerkv threshold=0.3 n_recent=16 n_initial=4", "simlayerkv threshold=0.9 n_recent=16 n_last=2",
           "criticalkv keep=0.4 window=8", "chunkkv keep=0.3 window=8 chunk=8", "chunkkv keep=0.3 window=4 chunk=100000",
           "merging keep=0.4 window=8", "noncausal_attn keep=0.4 chunk=16", "leverage keep=0.5",
           "compactor keep=0.4 chunk=16", "compactor budget=20 chunk=8 sink_start=4 sink_end=2"]
# chunk (P = 208 on sample.h5 with --decode 48): chunk=24 leaves a last chunk of 16 entries;
# keep=0.1 keeps 2 of a chunk of 24 with a window of 8 (the padding decides); chunk=50 leaves a last
# chunk of 8 entries, not longer than the window 8 (the short-chunk rule)
PLANNED += ["chunk keep=0.5 window=4 chunk=24", "chunk keep=0.1 window=8 kernel=3 chunk=24",
            "chunk keep=0.3 window=8 chunk=50 preset=factory"]
SEPARABLE += PLANNED
# minicache off its defaults (start=1: the pair (1, 2), layer 3 unpaired; start=0: (0, 1), (2, 3)),
# alone and after an eviction: kv head g merges with the partner layer's kv head g (layer_kv)
SEPARABLE += ["minicache start=1 t=0.3 retain=0.2", "snapkv keep=0.5 window=8 + minicache start=0 t=0.7 retain=0.1"]
# h4's audit of the other eviction strategies: each off its defaults where that reaches more of its
# code (qfilter and duo calibrate on the trace's last sequence, --calib's default, in both sweeps:
# their state is per (layer, kv head) and read at ctx->g0 + g).
AUDITED = ["cab keep=0.4 sinks=2 local=0.2 bridges=0.3", "cap keep=0.4 tau=2 future=64 sinks=2",
           "cur keep=0.4 sinks=2 leverage=kv_avg window=8", "entropy_merge keep=0.5 sinks=2",
           "evict_span span=value", "expected_attention keep=0.4 sinks=2 future=64 epsilon=0.01",
           "keydiff keep=0.4 block=16", "lagkv keep=0.4 sinks=2 lag=16 cross=1",
           "observed_attention keep=0.4 preset=kvtrace", "tova keep=0.4", "qfilter keep=0.4 preset=kvtrace",
           "duo sinks=4 recent=16 head_fraction=0.5 calib_q=0"]
SEPARABLE += AUDITED
AUDITED_NAMES = {c.split()[0] for c in AUDITED}
# evict_span evicts only on a trace with /needles: its own, shorter sweep there.
NEEDLES = ["full", "snapkv keep=0.5 window=8", "evict_span", "evict_span span=value"]
CSVS = ("per_head.csv", "per_pos.csv", "per_seq.csv", "summary.csv")


# KVTRACE_DEBUG=units: the engine's one line naming the work unit
UNIT = {"heads": "(sequence, layer, kv head)", "layers": "(sequence, layer)"}


def run(trace, strategies, threads, out, shard, extra=(), unit="heads", force_layers=False, decode=True):
    """kvreplay run; unit: the work unit it must report ("heads" or "layers"); force_layers: under
    KVTRACE_DEBUG=layer-items."""
    args = [KVR, "run", trace, "--threads", str(threads), "-o", out] + \
        (["--decode", "48", "--per-layer-readout", "--shard", shard] if decode else []) + list(extra)
    for s in strategies:
        args += ["--strategy", s]
    got = run_units(args, threads, force_layers)
    check(got == [UNIT[unit]], f"{out}: {unit} work items (stderr says {got})")


def part_blocks(path, n_shared):
    """The exact accumulators of the first n_shared configurations of one part: per configuration
    its sequence line and its (layer, head) lines; per-layer read-out and per-position lines."""
    lines = open(path).read().split("\n")
    head = lines[0].split()
    n_cfg, L, H = int(head[4]), int(head[5]), int(head[6])
    per = 1 + L * H
    out = {"cfg": lines[1:1 + n_shared * per]}
    k = 1 + n_cfg * per
    while not lines[k].startswith("end"):
        tag = lines[k].split()
        if tag[0] == "pl":
            out["pl"] = lines[k + 1:k + 1 + n_shared * L]
            k += 1 + n_cfg * L
        elif tag[0] == "pp":
            npos = int(tag[1])
            out["pp"] = lines[k + 1:k + 1 + n_shared * npos]
            k += 1 + n_cfg * npos
        elif tag[0] == "nd":        # per needle: its meta line, NC lines, NC*L*H lines (output.c)
            nd = []
            k += 1
            for _ in range(int(tag[1])):
                nd += lines[k:k + 1] + lines[k + 1:k + 1 + n_shared] + \
                    lines[k + 1 + n_cfg:k + 1 + n_cfg + n_shared * L * H]
                k += 1 + n_cfg + n_cfg * L * H
            out["nd"] = nd
        else:
            raise SystemExit(f"{path}: unexpected block '{tag[0]}'")
    return out


def rows(path):
    """Rows keyed by configuration text (config_id dropped: it differs between the sweeps)."""
    with open(path, newline="") as f:
        rd = csv.reader(f)
        head = next(rd)
        ci = head.index("config")
        out = {}
        for r in rd:
            out.setdefault(r[ci], []).append(tuple(v for i, v in enumerate(r) if head[i] != "config_id"))
        return out


# Encoders, per-query views, selection and decode-time presses are head-separable too (issue
# #14 item 3): quant, asymkv (value budget from the kv head's prompt attention), think, streaming
# reindex=1 and finch (re-rotation views; finch's static view), quest (pages of the kv head's own
# keys), per_layer over a separable press, decoding / dms / cam (decode-time steps; cam's draws
# keyed by the kv head's number in the layer).
SEPARABLE += ["quant kbits=2 vbits=2 group=32 residual=32", "quant mode=sym4",
              "knorm keep=0.5 + quant kbits=4 vbits=2 residual=32", "asymkv kbits=4 vbits=4 residual=32 vkeep=0.5",
              "snapkv keep=0.5 window=8 + asymkv kbits=0 vbits=0 vkeep=0.5",
              "think key_ratio=0.5 window=8", "snapkv keep=0.5 window=8 + think key_ratio=0.5 window=8",
              "streaming sinks=4 keep=0.3 reindex=1", "finch keep=0.5", "finch keep=0.4 preset=kvtrace rerotate=0",
              "quest keep=0.25 page=16", "per_layer ratios=0.2/0.5/0.7/0.8 fit=interp",
              "decoding interval=16 target=128 scorer=snapkv window=16", "dms threshold=0.002 sliding=32",
              "cam interval=16 target=128 merge_budget=8 scorer=tova"]
# lowrank (and asymkv's ranks) need calibration sequences: their basis of kv head g0 + g
CALIBRATED = ["lowrank rank_k=16 rank_v=16", "lowrank rank_k=8 rank_v=16 share=group latent_bits=8",
              "asymkv kbits=4 vbits=0 rank_v=16 latent_bits=8 residual=32", "knorm keep=0.5 + lowrank rank_k=16 rank_v=16"]
# --export: the same file from either unit (the configurations' groups, dataset by dataset)
EXPORTED = ["snapkv keep=0.5 window=8", "knorm keep=0.5 + quant kbits=4 vbits=2 residual=32",
            "asymkv kbits=4 vbits=4 residual=32 vkeep=0.5", "streaming sinks=4 keep=0.3 reindex=1", "finch keep=0.5",
            "think key_ratio=0.5 window=8"]


def h5_items(path, n_cfg):
    """Every dataset and attribute under /configs/<c> for c < n_cfg: name -> (dtype, shape, bytes)."""
    import h5py
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            for k, v in obj.attrs.items():
                out[f"{name}@{k}"] = repr(v)
            if isinstance(obj, h5py.Dataset):
                a = obj[()]
                out[name] = (str(a.dtype), a.shape, a.tobytes())
        for c in range(n_cfg):
            g = f[f"configs/{c}"]
            visit(f"configs/{c}", g)
            g.visititems(lambda n, o, c=c: visit(f"configs/{c}/{n}", o))
    return out


def compare_runs(tag, sep, mix, shared, blocks=("cfg", "pl", "pp")):
    """sep (kv-head items) and mix (the same configurations in layer items): every accumulator (the
    part files' blocks, all of which must be there) and the CSV rows."""
    parts = sorted(f for f in os.listdir(os.path.join(sep, "parts")) if f.endswith(".part"))
    check(parts and parts == sorted(f for f in os.listdir(os.path.join(mix, "parts")) if f.endswith(".part")),
          f"{tag}: both runs wrote the same sequences' parts")
    same = True
    for f in parts:
        a = part_blocks(os.path.join(sep, "parts", f), len(shared))
        b = part_blocks(os.path.join(mix, "parts", f), len(shared))
        same &= a == b and set(a) == set(blocks)
    check(same, f"{tag}: kv-head work items = layer work items, every accumulator bit for bit")
    for f in CSVS:
        a = rows(os.path.join(sep, f))
        b = rows(os.path.join(mix, f))
        check(len(a) == len(shared) and all(a[k] == b.get(k) for k in a),
              f"{tag} {f}: the same rows for the shared configurations")


sample = os.path.join(ROOT, "traces", "sample.h5")
for threads in (1, 2):
    tag = f"calibrated t{threads}"
    sep = os.path.join(TMP, f"head_units_calib_sep_t{threads}")
    mix = os.path.join(TMP, f"head_units_calib_mix_t{threads}")
    run(sample, CALIBRATED, threads, sep, "0/2", ["--calib", "7"])
    run(sample, CALIBRATED, threads, mix, "0/2", ["--calib", "7"], unit="layers", force_layers=True)
    compare_runs(tag, sep, mix, CALIBRATED)
    rk = rows(os.path.join(sep, "per_head.csv"))
    check(any(float(r[4]) < 1.0 for k in rk if k.startswith("knorm") for r in rk[k]),
          f"{tag}: knorm + lowrank keeps fewer entries than the full cache")
    tag = f"export t{threads}"
    sep = os.path.join(TMP, f"head_units_export_sep_t{threads}")
    mix = os.path.join(TMP, f"head_units_export_mix_t{threads}")
    run(sample, EXPORTED, threads, sep, "1/2", ["--export", sep + ".h5"])
    run(sample, EXPORTED, threads, mix, "1/2", ["--export", mix + ".h5"], unit="layers", force_layers=True)
    compare_runs(tag, sep, mix, EXPORTED)
    a, b = h5_items(sep + ".h5", len(EXPORTED)), h5_items(mix + ".h5", len(EXPORTED))
    check(len(a) > 10 * len(EXPORTED) and a == b,
          f"{tag}: the exported cache states of the shared configurations are identical ({len(a)} items)")
    check(any(k.endswith("/k") for k in a), f"{tag}: the export holds reconstructed K rows (encoders)")

for name, SWEEP in (("sample", SEPARABLE), ("sample_qa", SEPARABLE), ("ref4_needles", NEEDLES)):
    trace = os.path.join(ROOT, "traces", f"{name}.h5")
    for threads in (1, 2):
        for shard in ("0/2", "1/2"):
            tag = f"{name} t{threads} shard {shard}"
            sep = os.path.join(TMP, f"head_units_{name}_sep_t{threads}_{shard[0]}")
            mix = os.path.join(TMP, f"head_units_{name}_mix_t{threads}_{shard[0]}")
            run(trace, SWEEP, threads, sep, shard)
            run(trace, SWEEP, threads, mix, shard, unit="layers", force_layers=True)
            compare_runs(tag, sep, mix, SWEEP, ("cfg", "pl", "pp", "nd") if SWEEP is NEEDLES else ("cfg", "pl", "pp"))
            a = rows(os.path.join(sep, "per_head.csv"))
            snap = [k for k in a if k.startswith("snapkv")]
            check(snap and all(float(r[4]) < 1.0 for k in snap for r in a[k]),
                  f"{tag}: snapkv keeps fewer entries than the full cache (keep_frac < 1)")
            evicts = [k for k in a if k.split()[0] in AUDITED_NAMES and
                      (k.startswith("evict_span") == (SWEEP is NEEDLES))]
            check(evicts and all(any(float(r[4]) < 1.0 for r in a[k]) for k in evicts),
                  f"{tag}: {len(evicts)} audited configurations each evict somewhere (keep_frac < 1)")
            if SWEEP is NEEDLES:
                continue
            # the plans matter: adakv's kv heads of a layer keep different numbers of
            # entries; simlayerkv has lazy layers (keep_frac < 1) and full ones
            ada = [r for k in a if k.startswith("adakv") for r in a[k]]
            by_layer = {}
            for r in ada:
                by_layer.setdefault((r[0], r[1]), set()).add(r[4])
            check(ada and any(len(v) > 1 for v in by_layer.values()),
                  f"{tag}: adakv moves budget across the kv heads of a layer")
            sim = [float(r[4]) for k in a if k.startswith("simlayerkv") for r in a[k]]
            check(sim and min(sim) < 1.0 and max(sim) == 1.0,
                  f"{tag}: simlayerkv has lazy and full layers")
            # minicache start=1 merges the pair (1, 2) (kv_mse_k > 0) and leaves the layers without
            # a partner alone (no kv_mse); the per_head.csv columns by name, less config_id as rows()
            hd = [h for h in next(csv.reader(open(os.path.join(sep, "per_head.csv")))) if h != "config_id"]
            li, mk = hd.index("layer"), hd.index("kv_mse_k")
            mc = [r for k in a if k.startswith("minicache") for r in a[k]]
            check(mc and all((r[mk] != "" and float(r[mk]) > 0) == (r[li] in ("1", "2")) for r in mc),
                  f"{tag}: minicache start=1 merges the pair (1, 2) only")

# per_layer over a planned press (adakv) passes no plan on, so it must keep layer items: in a
# kv-head item its inner prefill would stop at rp_plan_get's "no plan in a context of 1 of the
# layer's 2 kv heads" (run() exits on a failed command)
pl = os.path.join(TMP, "head_units_per_layer_planned")
run(os.path.join(ROOT, "traces", "sample.h5"), ["snapkv keep=0.5 window=8", "per_layer press=adakv ratios=0.5/0.3/0.6/0.4"],
    2, pl, "0/2", unit="layers")
check(os.path.exists(os.path.join(pl, "summary.csv")), "per_layer press=adakv runs (layer items)")

# the default sweep runs kv-head items: every line of it is head-separable or planned (chunk and
# minicache included); one sequence is enough to see the unit
dflt = os.path.join(TMP, "head_units_default_sweep")
run(os.path.join(ROOT, "traces", "sample.h5"), [], 2, dflt, "", ["--sweep", os.path.join(ROOT, "sweeps", "default.sweep"),
    "--seqs", "0"], decode=False)
check(os.path.exists(os.path.join(dflt, "summary.csv")), "the default sweep runs")

if failures:
    sys.exit(f"{len(failures)} check(s) failed")
