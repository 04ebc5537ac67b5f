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
