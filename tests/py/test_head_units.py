#!/usr/bin/python3
"""The engine's two work units give the same results, bit for bit. A prefill sweep whose every
configuration is head-separable (full, snapkv, knorm, h2o, pyramidkv, streaming, random) runs one
work item per (sequence, layer, kv head: random draws from the kv head's own stream, keyed by its
number in the layer, in either unit); adding one layer-coupled configuration last (adakv, which
moves budget across the kv heads of a layer) makes it run one item per (sequence, layer). The
configurations both sweeps share must get the same accumulators: the per-sequence parts (DIR/parts/seq_*.part, kept by a
sharded run) print every sum in hexadecimal floating point, so a different order of the
order-sensitive additions (per-position sums over kv and query heads, the read-out's layer
fold) shows there even when the CSVs' 9 digits hide it. Also the CSV rows of those
configurations as text. On 1 and 2 threads, with the per-layer read-out, on both shipped
traces (2 kv heads each, read-out), and a shorter sweep with evict_span on the needle trace.
The strategies helper h4 audited (AUDITED: cab, cap, cur, entropy_merge, evict_span,
expected_attention, keydiff, lagkv, observed_attention, tova, qfilter, duo) ride along.
"""
import csv
import os
import subprocess
import sys

from testhelp import check, failures

BIN = os.environ.get("BIN", "bin")
TMP = os.environ.get("KV_TMP", "/tmp")
ROOT = os.environ.get("KV_ROOT", ".")
KVR = f"{BIN}/kvreplay"
SEPARABLE = ["full", "snapkv keep=0.5 window=8", "snapkv keep=0.3 window=4 kernel=3 pool=max", "knorm keep=0.3",
             "h2o keep=0.4", "pyramidkv keep=0.5 window=8", "streaming sinks=4 keep=0.3", "random keep=0.3"]
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
COUPLED = "adakv keep=0.5 window=8"
CSVS = ("per_head.csv", "per_pos.csv", "per_seq.csv", "summary.csv")


def run(trace, strategies, threads, out, shard):
    args = [KVR, "run", trace, "--decode", "48", "--per-layer-readout", "--threads", str(threads),
            "--shard", shard, "-o", out]
    for s in strategies:
        args += ["--strategy", s]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        print(r.stderr)
        sys.exit(f"command failed: {' '.join(args)}")


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


for name, SWEEP in (("sample", SEPARABLE), ("sample_qa", SEPARABLE), ("ref4_needles", NEEDLES)):
    trace = os.path.join(ROOT, "traces", f"{name}.h5")
    for threads in (1, 2):
        for shard in ("0/2", "1/2"):
            tag = f"{name} t{threads} shard {shard}"
            sep = os.path.join(TMP, f"head_units_{name}_sep_t{threads}_{shard[0]}")
            mix = os.path.join(TMP, f"head_units_{name}_mix_t{threads}_{shard[0]}")
            run(trace, SWEEP, threads, sep, shard)
            run(trace, SWEEP + [COUPLED], threads, mix, shard)
            parts = sorted(f for f in os.listdir(os.path.join(sep, "parts")) if f.endswith(".part"))
            check(parts and parts == sorted(f for f in os.listdir(os.path.join(mix, "parts")) if f.endswith(".part")),
                  f"{tag}: both runs wrote the same sequences' parts")
            blocks_same = True
            for f in parts:
                a = part_blocks(os.path.join(sep, "parts", f), len(SWEEP))
                b = part_blocks(os.path.join(mix, "parts", f), len(SWEEP))
                blocks_same &= a == b and set(a) == {"cfg", "pl", "pp"} | ({"nd"} if SWEEP is NEEDLES else set())
            check(blocks_same, f"{tag}: kv-head work items = layer work items, every accumulator bit for bit")
            for f in CSVS:
                a = rows(os.path.join(sep, f))
                b = rows(os.path.join(mix, f))
                check(len(a) == len(SWEEP) and all(a[k] == b.get(k) for k in a),
                      f"{tag} {f}: the same rows for the shared configurations")
                if f == "per_head.csv":
                    snap = [k for k in a if k.startswith("snapkv")]
                    check(snap and all(float(r[4]) < 1.0 for k in snap for r in a[k]),
                          f"{tag}: snapkv keeps fewer entries than the full cache (keep_frac < 1)")
                    evicts = [k for k in a if k.split()[0] in AUDITED_NAMES and
                              (k.startswith("evict_span") == (SWEEP is NEEDLES))]
                    check(evicts and all(any(float(r[4]) < 1.0 for r in a[k]) for k in evicts),
                          f"{tag}: {len(evicts)} audited configurations each evict somewhere (keep_frac < 1)")

if failures:
    sys.exit(f"{len(failures)} check(s) failed")
