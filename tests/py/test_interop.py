"""Interop between the C trace writer/reader and h5py / h5dump (issue 2).

(a) A trace written by the C writer (bin/tests/test_trace_roundtrip --write) read by h5py:
    documented objects, dtypes (<f2, <f4, <i4), chunking (1, 1, min(T,256), D), shuffle +
    gzip, attributes, and values bit-exact against the fixture's hash (mirrored here from
    tests/unit/test_trace_roundtrip.c); `h5dump -H -p` lists the documented objects.
(b) A trace written here by h5py read by the C reader: `kvreplay check` exits 0, `info`
    reports its dims, and slices dumped by the C reader equal numpy's f16 -> f32 exactly.
"""
import os
import shutil
import subprocess
import sys

try:
    import h5py
    import numpy as np
except ImportError as e:  # pragma: no cover
    print("skip: h5py/numpy not available (%s)" % e)
    sys.exit(77)

BIN = os.environ.get("BIN", "bin")
TMP = os.environ.get("KV_TMP") or "/tmp"
RT = os.path.join(BIN, "tests", "test_trace_roundtrip")
KVREPLAY = os.path.join(BIN, "kvreplay")
for p in (RT, KVREPLAY):
    if not os.access(p, os.X_OK):
        print("FAIL: %s not built" % p)
        sys.exit(1)
fails = []


def expect(cond, msg):
    if not cond:
        fails.append(msg)


# ---- (a) C writer -> h5py / h5dump --------------------------------------------------------
S, T, L, H, HKV, D, C, V = 2, 300, 2, 4, 2, 8, 16, 50
path = os.path.join(TMP, "c_written.h5")
subprocess.run([RT, "--write", path], check=True)


def fixture_bits(kind, s, l, h):
    t = np.arange(T, dtype=np.uint64)[:, None]
    d = np.arange(D, dtype=np.uint64)[None, :]
    x = (kind * 1000003 + s * 7919 + l * 104729 + h * 1299709 + t * 31 + d * 17) & 0xFFFFFFFF
    p = (((x * 2654435761) & 0xFFFFFFFF) >> 7) & 0xFFFF
    p = np.where(((p >> 10) & 31) == 31, p ^ 0x4000, p)
    return p.astype(np.uint16)


with h5py.File(path, "r") as f:
    a = f.attrs
    expect(int(a["kvtrace_version"]) == 1, "kvtrace_version")
    for k, v in dict(n_layers=L, n_heads=H, n_kv_heads=HKV, head_dim=D, d_model=C, vocab_size=V,
                     sliding_window=0, rotary_dim=D, bos_id=1).items():
        expect(int(a[k]) == v, "attr %s = %r, want %r" % (k, a[k], v))
    for k, v in dict(model="roundtrip-fixture", architecture="llama", positional="rope",
                     rope_layout="rotate_half").items():
        got = a[k].decode() if isinstance(a[k], bytes) else a[k]
        expect(got == v, "attr %s = %r" % (k, got))
    expect(abs(float(a["attn_scale"]) - 1 / np.sqrt(D)) < 1e-15, "attn_scale")
    expect(f["tokens"].dtype == np.dtype("<i4") and f["tokens"].shape == (S, T), "tokens dtype/shape")
    expect(list(f["seq_len"][...]) == [300, 250] and list(f["prefill_len"][...]) == [100, 200], "seq_len/prefill")
    expect(f["rope/cos"].dtype == np.dtype("<f4") and f["rope/cos"].shape == (T, D), "rope/cos")
    kinds = ("q", "k", "v", "attn_out")
    nbad = 0
    for l in range(L):
        g = f["layers/%d" % l]
        for ki, name in enumerate(kinds):
            ds = g[name]
            heads = HKV if name in ("k", "v") else H
            expect(ds.dtype == np.dtype("<f2"), "%s dtype %s" % (ds.name, ds.dtype))
            expect(ds.shape == (S, heads, T, D), "%s shape %s" % (ds.name, ds.shape))
            expect(ds.chunks == (1, 1, 256, D), "%s chunks %s" % (ds.name, ds.chunks))
            expect(ds.compression == "gzip" and ds.compression_opts == 4 and ds.shuffle,
                   "%s filters %s %s %s" % (ds.name, ds.compression, ds.compression_opts, ds.shuffle))
            arr = ds[...].view(np.uint16)
            for s in range(S):
                for h in range(heads):
                    nbad += int((arr[s, h] != fixture_bits(ki, s, l, h)).sum())
    expect(nbad == 0, "%d f16 values differ from the fixture" % nbad)
    expect(int(f["layers/1"].attrs["sliding_window"]) == 64, "layer 1 sliding_window")
    r = f["readout"]
    expect(r.attrs["norm_type"] in ("rmsnorm", b"rmsnorm") and float(r.attrs["final_logit_softcap"]) == 30.0,
           "readout attrs")
    expect(r["hidden"].dtype == np.dtype("<f2") and r["hidden"].shape == (S, T, C), "hidden")
    expect(r["w_u"].shape == (V, C) and r["w_o/1"].shape == (H * D, C), "w_u / w_o")
    expect(r["ref_top_ids"].dtype == np.dtype("<i4") and r["ref_top_ids"].shape == (S, T, 8), "ref_top_ids")
    wu = np.array([[((v * 3 + c) % 11 - 5) * 0.0625 for c in range(C)] for v in range(V)], np.float32)
    expect(np.array_equal(r["w_u"][...].astype(np.float32), wu), "w_u values")

if shutil.which("h5dump"):
    out = subprocess.run(["h5dump", "-H", "-p", path], capture_output=True, text=True).stdout
    for obj in ('DATASET "tokens"', 'DATASET "seq_len"', 'DATASET "prefill_len"', 'GROUP "rope"',
                'DATASET "cos"', 'GROUP "layers"', 'GROUP "0"', 'DATASET "q"', 'DATASET "attn_out"',
                'GROUP "readout"', 'DATASET "ref_top_logits"', 'ATTRIBUTE "kvtrace_version"',
                "CHUNKED ( 1, 1, 256, 8 )", "SHUFFLE", "COMPRESSION DEFLATE { LEVEL 4 }"):
        expect(obj in out, "h5dump -H -p lacks %r" % obj)
else:
    print("note: h5dump not installed, its check skipped")

# ---- (b) h5py writer -> C reader ----------------------------------------------------------
S2, T2, L2, H2, K2, D2, C2, V2 = 3, 40, 2, 6, 3, 16, 24, 100
rng = np.random.default_rng(1234)
path2 = os.path.join(TMP, "py_written.h5")
tensors = {}
with h5py.File(path2, "w") as f:
    for k, v in dict(kvtrace_version=1, model="h5py-interop", architecture="gpt2", n_layers=L2, n_heads=H2,
                     n_kv_heads=K2, head_dim=D2, d_model=C2, vocab_size=V2, attn_scale=0.25,
                     attn_softcap=0.0, sliding_window=0, positional="learned").items():
        f.attrs[k] = v
    f.create_dataset("tokens", data=rng.integers(0, V2, (S2, T2)).astype("<i4"))
    f.create_dataset("seq_len", data=np.array([40, 33, 1], "<i4"))
    for l in range(L2):
        for name, heads in (("q", H2), ("k", K2), ("v", K2)):
            a = (rng.standard_normal((S2, heads, T2, D2)) * 3).astype("<f2")
            a.flat[:4] = np.array([6.0e-8, -0.0, 65504, -1e-5], "<f2")   # subnormal, -0, max, small
            tensors[(l, name)] = a
            kw = dict(chunks=(1, 1, T2, D2), compression="gzip", shuffle=True, fletcher32=True) if l == 0 else {}
            f.create_dataset("layers/%d/%s" % (l, name), data=a, **kw)

p = subprocess.run([KVREPLAY, "check", path2], capture_output=True, text=True)
expect(p.returncode == 0, "check on the h5py trace: rc=%d %s" % (p.returncode, p.stderr))
expect("contiguous layout" in p.stderr, "check does not warn about contiguous layer tensors: %r" % p.stderr)
p = subprocess.run([KVREPLAY, "info", path2], capture_output=True, text=True)
expect(p.returncode == 0 and "S=3, T=40" in p.stdout and "74 valid" in p.stdout and "h5py-interop" in p.stdout,
       "info on the h5py trace: rc=%d %r" % (p.returncode, p.stdout + p.stderr))
worst = 0
for (l, name), a in tensors.items():
    for s, h in ((0, 0), (2, a.shape[1] - 1)):
        p = subprocess.run([RT, "--dump", path2, name, str(s), str(l), str(h)], capture_output=True, text=True)
        got = np.array(p.stdout.split(), dtype=np.float64).astype(np.float32)
        want = a[s, h].astype(np.float32).ravel()
        if p.returncode != 0 or got.shape != want.shape:
            fails.append("dump %s l=%d s=%d h=%d failed: %s" % (name, l, s, h, p.stderr))
            continue
        same = got.view(np.uint32) == want.view(np.uint32)
        worst = max(worst, int((~same).sum()))
expect(worst == 0, "C reader values differ from numpy f16->f32 (%d elements)" % worst)

for f in fails:
    print("FAIL", f)
print("interop: %d failures" % len(fails))
sys.exit(1 if fails else 0)
