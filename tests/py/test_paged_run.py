"""Paged accounting end to end (issue 5, replay/paged.h): kv_bytes_paged and frag_bytes in
per_seq.csv / summary.csv against hand-computed page counts.

Independent reference: the number of entries of every (layer, kv head) cache comes from the
export (traces/EXPORT.md entry_off), the page arithmetic is done here:
    pages = ceil(m / page), allocated = pages * page * per_entry, frag = (pages*page - m) * per_entry
with per_entry = 2 * D * 2 (fp16 K and V) + 4 (int32 position: the cache is a subset).
"""
import csv
import os
import sys

import h5py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testhelp import check, failures, sh  # noqa: E402

BIN = os.environ.get("BIN", "bin")
ROOT = os.environ.get("KV_ROOT", ".")
TMP = os.environ.get("KV_TMP", "/tmp")
TRACE = os.path.join(ROOT, "traces", "sample.h5")
KV = os.path.join(BIN, "kvreplay")


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def run(tag, *args):
    out = os.path.join(TMP, tag)
    sh([KV, "run", TRACE, "--seqs", "0,1", "--decode", "32", "--no-readout", "-o", out, *args])
    return out


with h5py.File(TRACE, "r") as f:
    D = int(f.attrs["head_dim"])
PER = 2 * D * 2 + 4

# 1. streaming with a token budget: every cache holds exactly sinks + budget... = 20 prompt + 32 decode
for page in (16, 7, 1):
    out = run(f"stream{page}", "--page-size", str(page), "--strategy", "streaming sinks=4 budget=20",
              "--export", os.path.join(TMP, f"stream{page}.h5"))
    with h5py.File(os.path.join(TMP, f"stream{page}.h5"), "r") as x:
        for r in rows(os.path.join(out, "per_seq.csv")):
            g = x[f"configs/0/{r['seq']}"]
            eoff = g["entry_off"][()]
            alloc = frag = used = 0
            for i in range(len(eoff) - 1):
                m = int(eoff[i + 1] - eoff[i])
                pages = -(-m // page)
                alloc += pages * page * PER
                frag += (pages * page - m) * PER
                used += m * PER
            check(float(r["kv_bytes"]) == used, f"page {page} seq {r['seq']}: kv_bytes {r['kv_bytes']} == {used}")
            check(float(r["kv_bytes_paged"]) == alloc,
                  f"page {page} seq {r['seq']}: kv_bytes_paged {r['kv_bytes_paged']} == {alloc}")
            check(float(r["frag_bytes"]) == frag, f"page {page} seq {r['seq']}: frag_bytes {r['frag_bytes']} == {frag}")
            if page == 1:
                check(frag == 0 and alloc == used, "page 1: no fragmentation")

# 2. snapkv + quant composition: entry counts from the export, per-entry bytes from kv_bytes;
#    the full cache at a page size dividing n has no fragmentation; page 0 = unpaged
out = run("comp", "--page-size", "0", "--strategy", "full", "--strategy", "snapkv keep=0.3 + quant kbits=4 vbits=2")
for r in rows(os.path.join(out, "summary.csv")):
    check(r["kv_bytes_paged"] == r["kv_bytes"] and float(r["frag_bytes"]) == 0,
          f"page 0 ({r['config'][:30]}): paged == kv_bytes, frag 0")
out = run("full16", "--page-size", "16", "--strategy", "full")
r = rows(os.path.join(out, "summary.csv"))[0]
check(r["kv_bytes_paged"] == r["kv_bytes"] and float(r["frag_bytes"]) == 0,
      "full cache of 256 tokens in pages of 16: no fragmentation")
out = run("snap13", "--page-size", "13", "--strategy", "snapkv keep=0.3",
          "--export", os.path.join(TMP, "snap13.h5"))
with h5py.File(os.path.join(TMP, "snap13.h5"), "r") as x:
    for r in rows(os.path.join(out, "per_seq.csv")):
        eoff = x[f"configs/0/{r['seq']}"]["entry_off"][()]
        ms = [int(eoff[i + 1] - eoff[i]) for i in range(len(eoff) - 1)]
        want = sum(-(-m // 13) * 13 * PER for m in ms)
        check(float(r["kv_bytes_paged"]) == want, f"snapkv page 13 seq {r['seq']}: paged {r['kv_bytes_paged']} == {want}")
        check(float(r["kv_bytes_paged"]) - float(r["frag_bytes"]) == float(r["kv_bytes"]),
              f"snapkv page 13 seq {r['seq']}: paged - frag == kv_bytes")

# 3. bad input: one line, exit 2
for bad in ("-1", "x", "99999999999"):
    r = sh([KV, "run", TRACE, "--page-size", bad, "--strategy", "full", "-o", os.path.join(TMP, "bad")], ok=False)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    check(r.returncode != 0 and len(lines) == 1 and "--page-size" in lines[0],
          f"--page-size {bad}: one line, non-zero exit ({r.returncode}: {lines[:1]})")

if failures:
    sys.exit(f"{len(failures)} check(s) failed")
