#!/usr/bin/python3
"""Seed corpus for fuzz/fuzz_trace.c: small traces cut from the committed sample traces.

    /usr/bin/python3 fuzz/seeds_trace.py OUTDIR

Each sample trace is cut to 1-2 sequences x 16 tokens, 2 layers, head_dim 8 and a 32-token
vocabulary (values are copied, not recomputed: the seeds are schema-valid, which is all
the fuzzer needs), keeping each source's storage (chunking, shuffle + deflate) and
optional groups (/prefill_len, /rope, /readout; /needles in one seed), plus variants: contiguous, fletcher32,
no read-out, the newest HDF5 file format (other chunk indexes). Small seeds keep libFuzzer fast; -max_len follows the largest seed.
"""
import os
import sys

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S, T, L, D, C, V = 2, 16, 2, 8, 16, 32


def cut(src, dst, chunked=True, fletcher=False, readout=True, S=S, libver="earliest", L=L, T=T, needles=False):
    with h5py.File(src, "r") as f, h5py.File(dst, "w", libver=(libver, "latest")) as g:
        H, HKV = int(f.attrs["n_heads"]), int(f.attrs["n_kv_heads"])
        for k, v in f.attrs.items():
            g.attrs[k] = v
        g.attrs.update(dict(n_layers=L, head_dim=D, d_model=C, vocab_size=V, attn_scale=1 / np.sqrt(D)))
        if "bos_id" in g.attrs:
            g.attrs["bos_id"] = int(g.attrs["bos_id"]) % V
        if "rotary_dim" in g.attrs:
            g.attrs["rotary_dim"] = D
        if "command" in g.attrs:
            del g.attrs["command"]
        kw = dict(compression="gzip", shuffle=True, fletcher32=fletcher) if chunked else {}

        def put(name, data, chunks=None):
            if chunked and chunks:
                g.create_dataset(name, data=data, chunks=chunks, **kw)
            else:
                g.create_dataset(name, data=data)

        g.create_dataset("tokens", data=(f["tokens"][:S, :T] % V).astype("<i4"))
        sl = np.minimum(f["seq_len"][:S], T).astype("<i4")
        g.create_dataset("seq_len", data=sl)
        if "prefill_len" in f:
            g.create_dataset("prefill_len", data=np.minimum(f["prefill_len"][:S], sl - 1).astype("<i4"))
        if needles and "prefill_len" in g:
            # one needle per sequence inside its context, the answer after the split (/needles)
            P, rows = g["prefill_len"][...], []
            for s in range(len(sl)):
                if P[s] >= 2 and sl[s] >= P[s] + 1:
                    rows.append((s, 0, int(P[s]), 0, 1, int(P[s]), int(sl[s])))
            if rows:
                a = np.array(rows, dtype="<i4")
                for j, k in enumerate(("seq", "start", "end", "value_start", "value_end", "answer_start", "answer_end")):
                    g.create_dataset("needles/" + k, data=a[:, j])
        if "rope" in f:
            g.create_dataset("rope/cos", data=f["rope/cos"][:T, :D])
            g.create_dataset("rope/sin", data=f["rope/sin"][:T, :D])
        for l in range(L):
            g.require_group("layers/%d" % l)
            for name in ("q", "k", "v", "attn_out"):
                p = "layers/%d/%s" % (l, name)
                if p in f:
                    a = f[p][:S, :, :T, :D]
                    put(p, a, (1, 1, T, D))
        if readout and "readout" in f:
            r = f["readout"]
            gr = g.require_group("readout")
            for k, v in r.attrs.items():
                gr.attrs[k] = v
            put("readout/hidden", r["hidden"][:S, :T, :C], (1, T, C))
            put("readout/w_u", r["w_u"][:V, :C], (V, C))
            if "b_u" in r:
                g.create_dataset("readout/b_u", data=r["b_u"][:V])
            g.create_dataset("readout/norm_weight", data=r["norm_weight"][:C])
            if "norm_bias" in r:
                g.create_dataset("readout/norm_bias", data=r["norm_bias"][:C])
            g.create_dataset("readout/ref_lse", data=r["ref_lse"][:S, :T])
            g.create_dataset("readout/ref_top_ids", data=(r["ref_top_ids"][:S, :T] % V).astype("<i4"))
            g.create_dataset("readout/ref_top_logits", data=r["ref_top_logits"][:S, :T])
            for l in range(L):
                put("readout/w_o/%d" % l, r["w_o/%d" % l][:H * D, :C], (H * D, C))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: seeds_trace.py OUTDIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    n = 0
    for name in ("sample", "sample_qa"):
        src = os.path.join(ROOT, "traces", name + ".h5")
        for tag, kw in (("deflate", {}), ("contig", dict(chunked=False)), ("fletcher", dict(fletcher=True)),
                        ("noreadout", dict(readout=False, S=1)), ("latest", dict(libver="latest")),
                        ("tiny", dict(S=1, L=1, T=8)), ("tiny_latest", dict(S=1, L=1, T=8, libver="latest"))):
            cut(src, os.path.join(out, "seed_%s_%s.h5" % (name, tag)), **kw)
            n += 1
    cut(os.path.join(ROOT, "traces", "sample_qa.h5"), os.path.join(out, "seed_sample_qa_needles.h5"), needles=True)
    n += 1
    print("%d seeds in %s" % (n, out))


if __name__ == "__main__":
    main()
