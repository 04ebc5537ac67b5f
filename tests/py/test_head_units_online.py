#!/usr/bin/python3
"""--mode online runs in kv-head work items, with the results of layer items bit for bit.

An online sweep whose every configuration is head-separable (strategy.h head_separable: under
--mode online each kv head's online_new / online_step / online_rows / online_view and encoders
see that kv head's rows, probabilities and shared scores only, and key anything per head by
ctx->g0 + g) runs one work item per (sequence, layer, kv head); KVTRACE_DEBUG=layer-items makes
the same sweep run one item per (sequence, layer), the reference. Both runs must write the same
bytes: every per-sequence part (DIR/parts/seq_*.part: every sum in hexadecimal floating point,
so a different order of the per-position sums over kv and query heads or of the read-out's layer
fold shows there), every CSV, and with --export the eviction times, dataset by dataset.
KVTRACE_DEBUG=units names the work item each run used, so the comparison is not of a unit with
itself. Every online-capable eviction strategy off its defaults (random's stream and cam's draws
keyed by the kv head's number in the layer; h2o's prompt column sums before the cache fills;
decode-time presses; streaming's re-indexing view), compositions with every online-capable
separable encoder (quant, asymkv, lowrank with --calib), on 1 and 2 threads and both shards,
with the per-layer read-out, on sample.h5 and ref4_needles.h5 (needle block: answers and
questions evaluated from /prefill_len on), --gqa-reduce max, and an online export.
minicache (kv head g of the partner layer) online in kv-head items too.
"""
import os
import sys

from testhelp import check, failures, run_units

BIN = os.environ.get("BIN", "bin")
TMP = os.environ.get("KV_TMP", "/tmp")
ROOT = os.environ.get("KV_ROOT", ".")
KVR = f"{BIN}/kvreplay"
KV_HEAD, LAYER = "(sequence, layer, kv head)", "(sequence, layer)"

ONLINE = ["full", "h2o keep=0.4 recent=0.25", "h2o budget=40", "tova keep=0.3", "knorm keep=0.3",
          "random keep=0.3", "streaming sinks=4 keep=0.3", "streaming sinks=2 keep=0.4 reindex=1",
          "decoding interval=8 target=64 scorer=snapkv window=16 kernel=3",
          "decoding interval=4 target=48 scorer=keydiff", "dms threshold=0.002 sliding=32 scorer=tova",
          "cam interval=8 target=64 merge_budget=8 scorer=tova",
          "quant kbits=2 vbits=2 group=32 residual=32", "knorm keep=0.5 + quant kbits=4 vbits=2 residual=32",
          "tova keep=0.4 + quant mode=sym4", "h2o keep=0.5 + asymkv kbits=4 vbits=2 residual=32 group=16",
          "random keep=0.5 + asymkv kbits=2 vbits=4 residual=32"]
CALIBRATED = ["lowrank rank_k=16 rank_v=16", "tova keep=0.4 + lowrank rank_k=8 rank_v=16 share=group latent_bits=8",
              "h2o keep=0.5 + lowrank rank_k=16 rank_v=8"]
NEEDLES = ["full", "h2o keep=0.3", "tova keep=0.3", "random keep=0.4", "streaming sinks=4 keep=0.25",
           "knorm keep=0.4 + quant kbits=2 vbits=2 group=16 residual=16"]
EXPORTED = ["h2o keep=0.4", "tova keep=0.3", "random keep=0.3", "streaming sinks=4 keep=0.3",
            "decoding interval=8 target=64 scorer=knorm"]
CSVS = ("per_head.csv", "per_pos.csv", "per_seq.csv", "summary.csv")


def run(trace, strategies, threads, out, shard, extra=(), layer=False, want=None):
    """One online run; want: the work item KVTRACE_DEBUG=units must name (None: no check)."""
    args = [KVR, "run", trace, "--mode", "online", "--per-layer-readout", "--threads", str(threads),
            "--shard", shard, "-o", out] + list(extra)
    for s in strategies:
        args += ["--strategy", s]
    units = run_units(args, threads, layer)
    if want is not None:
        check(units == [want], f"{out}: work items ({want}), got {units}")
    return units


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def compare(tag, head, layer, needles=False):
    parts = sorted(f for f in os.listdir(os.path.join(head, "parts")) if f.endswith(".part"))
    check(parts and parts == sorted(f for f in os.listdir(os.path.join(layer, "parts")) if f.endswith(".part")),
          f"{tag}: both runs wrote the same sequences' parts")
    check(all(same_bytes(os.path.join(head, "parts", f), os.path.join(layer, "parts", f)) for f in parts),
          f"{tag}: kv-head items = layer items, every part byte for byte ({len(parts)} parts)")
    text = open(os.path.join(head, "parts", parts[0])).read()
    check("\npp " in text and "\npl" in text and (("\nnd " in text) == needles),
          f"{tag}: the parts hold per-position and per-layer read-out blocks" + (" and needles" if needles else ""))
    for f in CSVS:
        check(same_bytes(os.path.join(head, f), os.path.join(layer, f)), f"{tag} {f}: the same bytes")


def evicts(out, names):
    """Each configuration whose text starts with one of names keeps fewer entries somewhere."""
    import csv
    with open(os.path.join(out, "per_head.csv"), newline="") as f:
        rd = csv.DictReader(f)
        keep = {}
        for r in rd:
            keep.setdefault(r["config"], []).append(float(r["keep_frac"]))
    hit = [c for c in keep if c.split()[0] in names]
    return hit and all(min(keep[c]) < 1.0 for c in hit)


def pair(tag, trace, strategies, threads, shard, extra=(), needles=False):
    a = os.path.join(TMP, f"hu_online_{tag}_head")
    b = os.path.join(TMP, f"hu_online_{tag}_layer")
    run(trace, strategies, threads, a, shard, extra, want=KV_HEAD)
    run(trace, strategies, threads, b, shard, extra, layer=True, want=LAYER)
    compare(tag, a, b, needles)
    return a, b


sample = os.path.join(ROOT, "traces", "sample.h5")
needles = os.path.join(ROOT, "traces", "ref4_needles.h5")
for threads in (1, 2):
    for shard in ("0/2", "1/2"):
        tag = f"sample_t{threads}_s{shard[0]}"
        a, _ = pair(tag, sample, ONLINE, threads, shard, ["--decode", "96", "--seqs", "0-3"])
        if threads == 1 and shard == "0/2":
            check(evicts(a, {"h2o", "tova", "knorm", "random", "streaming", "decoding", "dms", "cam"}),
                  f"{tag}: every eviction configuration evicts somewhere (keep_frac < 1)")
    tag = f"needles_t{threads}"
    a, _ = pair(tag, needles, NEEDLES, threads, f"{threads - 1}/2", needles=True)
    check(evicts(a, {"h2o", "tova", "random", "streaming", "knorm"}), f"{tag}: the configurations evict")
    pair(f"calib_t{threads}", sample, CALIBRATED, threads, "0/2", ["--decode", "64", "--calib", "7", "--seqs", "0-2"])
    pair(f"gqa_max_t{threads}", sample, ["h2o keep=0.4", "tova keep=0.3", "decoding interval=8 target=64 scorer=tova"],
         threads, "1/2", ["--decode", "64", "--gqa-reduce", "max", "--seqs", "0-3"])

# the online export (eviction times per (config, sequence, layer, kv head)): the same datasets
for threads in (1, 2):
    a, b = (os.path.join(TMP, f"hu_online_export_t{threads}_{u}") for u in ("head", "layer"))
    run(sample, EXPORTED, threads, a, "1/2", ["--decode", "64", "--export", a + ".h5"], want=KV_HEAD)
    run(sample, EXPORTED, threads, b, "1/2", ["--decode", "64", "--export", b + ".h5"], layer=True, want=LAYER)
    compare(f"export_t{threads}", a, b)
    import h5py
    items = []
    for path in (a + ".h5", b + ".h5"):
        out = {}
        with h5py.File(path, "r") as f:
            def visit(name, obj, out=out):
                if isinstance(obj, h5py.Dataset) and name.startswith("configs/"):
                    x = obj[()]
                    out[name] = (str(x.dtype), x.shape, x.tobytes())
            f.visititems(visit)
        items.append(out)
    check(len(items[0]) >= len(EXPORTED) and items[0] == items[1],
          f"export_t{threads}: the exported eviction times are identical ({len(items[0])} datasets)")

# minicache merges kv head g with kv head g of the partner layer (layer_kv gives the item's kv
# heads): kv-head items online too, the same bits as layer items
for threads in (1, 2):
    pair(f"minicache_t{threads}", sample, ["knorm keep=0.5 + minicache start=1 t=0.3 retain=0.2", "minicache"],
         threads, "0/2", ["--decode", "64"])

if failures:
    sys.exit(f"{len(failures)} check(s) failed")
