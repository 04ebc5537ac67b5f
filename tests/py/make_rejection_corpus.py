#!/usr/bin/python3
"""Generate the trace rejection corpus (issue 2, traces/SCHEMA.md) into a directory.

    /usr/bin/python3 tests/py/make_rejection_corpus.py OUTDIR

Writes one small file per case, built with h5py (and byte-level edits for the truncated /
empty / not-HDF5 cases), plus OUTDIR/manifest.json:
    {name: {"file": ..., "expect": "reject" | "value" | "valid",
            "object": substring naming the object, "reason": substring of the reason}}
"reject": kvreplay check and info must exit 1 with exactly one stderr line naming the file,
the object and the reason. "value": a valid file holding NaN/Inf (info exits 0, check exits
1 and names the location). "valid": check exits 0. Nothing is downloaded.
"""
import json
import os
import struct
import sys

import h5py
import numpy as np

S, T, L, H, HKV, D, C, V = 2, 16, 2, 4, 2, 8, 16, 32


def base_attrs(f, **over):
    a = dict(kvtrace_version=1, model="corpus", architecture="llama", n_layers=L, n_heads=H,
             n_kv_heads=HKV, head_dim=D, d_model=C, vocab_size=V, attn_scale=1 / np.sqrt(D),
             attn_softcap=0.0, sliding_window=0, positional="rope", rope_layout="rotate_half")
    a.update(over)
    for k, v in a.items():
        if v is not None:
            f.attrs[k] = v


def rng_f16(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype("<f2")


def write_trace(path, attrs=None, skip=(), override=None, post=None):
    """A valid trace unless modified: attrs overrides root attributes, skip lists dataset
    paths not to create, override maps path -> callable(f, path) that creates it instead,
    post(f) runs last."""
    override = override or {}
    with h5py.File(path, "w") as f:
        base_attrs(f, **(attrs or {}))
        items = {
            "tokens": lambda: np.arange(S * T, dtype="<i4").reshape(S, T) % V,
            "seq_len": lambda: np.array([T, T - 3], dtype="<i4"),
            "rope/cos": lambda: np.cos(np.arange(T * D, dtype="<f4").reshape(T, D) * 0.01),
            "rope/sin": lambda: np.sin(np.arange(T * D, dtype="<f4").reshape(T, D) * 0.01),
        }
        for l in range(L):
            for name, heads in (("q", H), ("k", HKV), ("v", HKV)):
                items[f"layers/{l}/{name}"] = (lambda heads=heads, seed=l * 10 + len(name) + heads:
                                               ("chunk", rng_f16((S, heads, T, D), seed)))
        for p, make in items.items():
            if p in skip:
                continue
            if p in override:
                override[p](f, p)
                continue
            val = make()
            if isinstance(val, tuple):
                arr = val[1]
                f.create_dataset(p, data=arr, chunks=(1, 1, T, D))
            else:
                f.create_dataset(p, data=val)
        for l in range(L):
            f.require_group(f"layers/{l}")
        if post:
            post(f)


def flip_chunk_dim(path, dset, bit=13):
    """Flips one bit of the last chunk dimension in dset's layout message (issue 13: one bit
    in traces/sample_qa.h5 made 32 -> 8224 and crashed H5Dread). The pattern (chunk dims,
    element size) must be unique in the file; returns the new value."""
    with h5py.File(path, "r") as f:
        ds = f[dset]
        ch, es = ds.chunks, ds.dtype.itemsize
    blob = bytearray(open(path, "rb").read())
    pat = struct.pack("<%dI" % (len(ch) + 1), *ch, es)
    assert blob.count(pat) == 1, "chunk pattern of %s not unique" % dset
    j = blob.find(pat) + 4 * (len(ch) - 1)
    v = struct.unpack_from("<I", blob, j)[0] ^ (1 << bit)
    struct.pack_into("<I", blob, j, v)
    open(path, "wb").write(blob)
    return v


def skip_filters(path, dset, mask=0x1):
    """Sets the filter mask of chunk 0 of dset in its v1 B-tree key (chunk size u32, filter
    mask u32, offsets u64 x (rank + 1), then the chunk address u64) to "filters skipped"."""
    with h5py.File(path, "r") as f:
        ds = f[dset]
        rank = ds.ndim
        ci = ds.id.get_chunk_info(0)
    blob = bytearray(open(path, "rb").read())
    key, addr = struct.pack("<II", ci.size, 0), struct.pack("<Q", ci.byte_offset)
    n, pos = 0, 0
    while True:
        k = blob.find(key, pos)
        if k < 0:
            break
        a = k + 8 + 8 * (rank + 1)
        if blob[a:a + 8] == addr:
            struct.pack_into("<I", blob, k + 4, mask)
            n += 1
        pos = k + 1
    assert n == 1, "B-tree key of %s chunk 0 found %d times" % (dset, n)
    open(path, "wb").write(blob)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_rejection_corpus.py OUTDIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    man = {}

    def case(name, expect, obj, reason, **kw):
        path = os.path.join(out, name + ".h5")
        write_trace(path, **kw)
        man[name] = dict(file=path, expect=expect, object=obj, reason=reason)
        return path

    case("valid", "valid", "", "")

    def as_dtype(dt):
        return lambda f, p: f.create_dataset(p, data=rng_f16((S, H if p.endswith("q") else HKV, T, D), 1).astype(dt))

    case("dtype_f64", "reject", "/layers/0/q", "64-bit float", override={"layers/0/q": as_dtype("<f8")})
    case("dtype_int16", "reject", "/layers/1/k", "16-bit signed integer",
         override={"layers/1/k": as_dtype("<i2")})
    case("dtype_f16_bigendian", "reject", "/layers/0/v", "big-endian",
         override={"layers/0/v": as_dtype(">f2")})
    cmp_t = np.dtype([("a", "<f2"), ("b", "<f2")])
    case("dtype_compound", "reject", "/layers/0/v", "compound",
         override={"layers/0/v": lambda f, p: f.create_dataset(p, shape=(S, HKV, T, D), dtype=cmp_t,
                                                               data=np.zeros((S, HKV, T, D), cmp_t))})
    case("wrong_rank", "reject", "/layers/0/q", "rank 3",
         override={"layers/0/q": lambda f, p: f.create_dataset(p, data=rng_f16((S, H, T * D), 2))})
    case("dims_mismatch_layers", "reject", "/layers/1/q", "shape",
         override={"layers/1/q": lambda f, p: f.create_dataset(p, data=rng_f16((S, H, T, D // 2), 3))})
    # H = 4, Hkv = 3: k/v stored with 3 heads so only divisibility is wrong
    case("h_not_divisible", "reject", "n_kv_heads", "not divisible", attrs={"n_kv_heads": 3})
    case("compute_dtype_unknown", "reject", "compute_dtype", "not float32, float16 or bfloat16",
         attrs={"compute_dtype": "float8"})

    other = os.path.join(out, "external_target.dat")
    with h5py.File(os.path.join(out, "external_target.h5.part"), "w") as g:
        g.create_dataset("v", data=rng_f16((S, HKV, T, D), 4))
    case("external_link", "reject", "/layers/1/v", "external link",
         override={"layers/1/v": lambda f, p: f.__setitem__(p, h5py.ExternalLink("external_target.h5.part", "v"))})
    case("soft_link", "reject", "/layers/1/v", "soft link",
         override={"layers/1/v": lambda f, p: f.__setitem__(p, h5py.SoftLink("/layers/0/v"))})

    def vds(f, p):
        src = f.create_dataset("aux/src", data=rng_f16((S, H, T, D), 5))
        lay = h5py.VirtualLayout(shape=(S, H, T, D), dtype="<f2")
        lay[:] = h5py.VirtualSource(src)
        f.create_virtual_dataset(p, lay)
    case("virtual_dataset", "reject", "/layers/0/q", "virtual", override={"layers/0/q": vds})

    def ext_storage(f, p):
        n = S * HKV * T * D * 2
        with open(other, "wb") as fh:
            fh.write(rng_f16((S, HKV, T, D), 6).tobytes())
        f.create_dataset(p, shape=(S, HKV, T, D), dtype="<f2", external=[("external_target.dat", 0, n)])
    case("external_storage", "reject", "/layers/0/k", "external raw data", override={"layers/0/k": ext_storage})

    def unknown_filter(f, p):
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((1, 1, T, D))
        dcpl.set_filter(32001, h5py.h5z.FLAG_OPTIONAL, ())
        sp = h5py.h5s.create_simple((S, HKV, T, D))
        tid = h5py.h5t.py_create(np.dtype("<f2"))
        dsid = h5py.h5d.create(f.id, p.encode(), tid, sp, dcpl=dcpl)
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, rng_f16((S, HKV, T, D), 7))
    case("unknown_filter", "reject", "/layers/1/k", "filter id 32001", override={"layers/1/k": unknown_filter})

    def compact(f, p):
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        sp = h5py.h5s.create_simple((S, HKV, T, D))
        dsid = h5py.h5d.create(f.id, p.encode(), h5py.h5t.py_create(np.dtype("<f2")), sp, dcpl=dcpl)
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, rng_f16((S, HKV, T, D), 8))
    case("compact_layout", "reject", "/layers/0/v", "compact", override={"layers/0/v": compact})

    def huge(f, p):
        ds = f.create_dataset(p, shape=(S, H, 1 << 20, D), dtype="<f2", chunks=(1, 1, 256, D))
        ds[0, 0, :256] = rng_f16((256, D), 9)      # one chunk stored out of 2 * 4 * 4096
    case("huge_shape_tiny_storage", "reject", "/layers/0/q", "not fully allocated",
         override={"layers/0/q": huge})
    case("unknown_version", "reject", "kvtrace_version", "unsupported kvtrace_version 2 (this reader reads version 1)",
         attrs={"kvtrace_version": 2})
    case("missing_required_dataset", "reject", "/layers/1/v", "missing", skip=("layers/1/v",))
    case("missing_required_attribute", "reject", "head_dim", "missing", attrs={"head_dim": None})
    case("token_out_of_range", "reject", "/tokens[0, 5]", "outside",
         override={"tokens": lambda f, p: f.create_dataset(
             p, data=np.where(np.arange(S * T).reshape(S, T) == 5, V + 7, 1).astype("<i4"))})
    case("seq_len_too_long", "reject", "/seq_len[1]", "outside",
         override={"seq_len": lambda f, p: f.create_dataset(p, data=np.array([T, T + 1], "<i4"))})
    case("group_instead_of_dataset", "reject", "/layers/0/k", "expected a dataset",
         override={"layers/0/k": lambda f, p: f.create_group(p)})

    # chunk-level defects (issue 13): the index says one thing, the bytes another
    def deflated(chunks):
        return lambda f, p: f.create_dataset(p, data=rng_f16((S, H if p.endswith("q") else HKV, T, D), 11),
                                             chunks=chunks, compression="gzip", shuffle=True)
    p = case("chunk_dims_bitflip", "reject", "/layers/0/q", "deflate data of the wrong size",
             override={"layers/0/q": deflated((1, 2, T, D))})
    flip_chunk_dim(p, "layers/0/q")
    p = case("chunk_filter_mask", "reject", "/layers/1/k", "filters were skipped",
             override={"layers/1/k": deflated((1, 1, T, D))})
    skip_filters(p, "layers/1/k")

    # object trees: 2000 nested groups (H5Lvisit took 60 s), every level counted
    def deep(f):
        g = f
        for i in range(2000):
            g = g.create_group("g")
    case("deep_groups", "reject", "/aux/g/g/g/g/g/g/g", "nested deeper than 8 levels",
         post=lambda f: deep(f.create_group("aux")))

    # 100,001 hard links in one group (the cap is 100,000 in the file): refused before listing
    def wide(f):
        g = f.create_group("aux/wide")
        d = f.create_dataset("aux/x", data=np.zeros(1, "<f4"))
        for i in range(100001):
            g["l%d" % i] = d
    case("wide_group", "reject", "/aux/wide", "more than 100000 links", post=wide)

    # attribute strings: strict UTF-8, no NUL inside (provenance.json must stay JSON)
    def raw_attr(name, raw, fixed=True):
        def post(f):
            if fixed:
                f.attrs.create(name, np.array(raw, dtype="S%d" % max(len(raw), 1)))
            else:
                f.attrs.create(name, raw.decode("latin-1"), dtype=h5py.string_dtype("utf-8"))
        return post
    case("attr_not_utf8", "reject", "/ attribute model", "not valid UTF-8 (byte 0xff at offset 3)",
         post=raw_attr("model", b"abc\xff\xfe"))
    case("attr_overlong_utf8", "reject", "/ attribute architecture", "not valid UTF-8 (byte 0xc0 at offset 0)",
         post=raw_attr("architecture", b"\xc0\xafllama"))
    case("attr_surrogate_utf8", "reject", "/ attribute source", "not valid UTF-8 (byte 0xed at offset 1)",
         post=raw_attr("source", b"x\xed\xa0\x80y"))
    case("attr_nul_inside", "reject", "/ attribute device", "NUL byte inside the string (offset 3)",
         post=raw_attr("device", b"cpu\x00gpu"))
    case("attr_utf8_ok", "valid", "", "", post=raw_attr("model", "mod\u00e8le \u6a21\u578b \U0001f600".encode()))

    # byte-level cases
    valid = man["valid"]["file"]
    blob = open(valid, "rb").read()
    for name, data, reason in (("truncated", blob[: len(blob) // 2], "truncated"),
                               ("zero_length", b"", "empty file"),
                               ("not_hdf5", b"this is a plain text file, not HDF5\n" * 20, "not an HDF5 file")):
        path = os.path.join(out, name + ".h5")
        with open(path, "wb") as fh:
            fh.write(data)
        man[name] = dict(file=path, expect="reject", object="file", reason=reason)

    # NaN / Inf: valid files whose values are bad
    def with_value(loc, val):
        def post(f):
            ds = f[loc[0]]
            a = ds[...]
            a[loc[1]] = val
            ds[...] = a
        return post
    case("value_nan", "value", "/layers/0/q", "[0, 1, 5, 3]", post=with_value(("layers/0/q", (0, 1, 5, 3)), np.nan))
    case("value_inf", "value", "/layers/1/v", "[1, 0, 7, 2]", post=with_value(("layers/1/v", (1, 0, 7, 2)), np.inf))

    with open(os.path.join(out, "manifest.json"), "w") as fh:
        json.dump(man, fh, indent=1, sort_keys=True)
    print(f"{len(man)} files in {out}")


if __name__ == "__main__":
    main()
