"""replay/readout.c against an independent numpy (float64) implementation.

Writes random read-out problems (fixture format in tests/unit/test_readout.c), runs
`$BIN/tests/test_readout --fixture IN OUT`, and compares every output. Tolerances:
  logits    |x - ref| <= (C + 4) * 2^-24 * sum_c |W_vc| |x_c| + 1e-6  (float32 GEMM of
            length C plus the float32 norm: the standard gamma_C bound), ref in float64;
  h + dO W  the same bound with HD + 1 terms (|h| included);
  lse, KL, NLL, conf   from the C logits, in float64 on both sides: 1e-9 relative;
  top-8, top1, correct  exact (numpy stable sort on the C logits: ties by lower id);
  ECE       1e-12 (same bins: edges b/15 in double, last bin closed).
Each comparison prints its worst element. Exit 0 pass, 1 fail, 77 skip.
"""
import os
import struct
import subprocess
import sys

import numpy as np

BIN = os.environ.get("BIN", "bin")
TMP = os.environ.get("KV_TMP", "/tmp")
EXE = os.path.join(BIN, "tests", "test_readout")
U = 2.0 ** -24
fails = 0


def report(name, ok, detail):
    global fails
    print(("ok    " if ok else "FAIL  ") + name + ": " + detail)
    if not ok:
        fails += 1


def norm_ref(h, w, b, eps, rms):
    h = h.astype(np.float64)
    if rms:
        x = h / np.sqrt((h * h).mean(1, keepdims=True) + eps)
    else:
        m = h.mean(1, keepdims=True)
        x = (h - m) / np.sqrt(((h - m) ** 2).mean(1, keepdims=True) + eps)
    x = x * w
    if b is not None:
        x = x + b
    return x


def bound_cmp(name, got, ref, bound):
    err = np.abs(got.astype(np.float64) - ref)
    ratio = err / bound
    i = np.unravel_index(np.argmax(ratio), ratio.shape)
    report(name, bool(np.all(ratio <= 1)) and np.isfinite(got).all(),
           "worst at %s got %.9g want %.9g |err| %.3g (%.3g of tolerance)"
           % (tuple(int(a) for a in i), got[i], ref[i], err[i], ratio[i]))


def rel_cmp(name, got, ref, rtol=1e-9, atol=1e-12):
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    both_nan = np.isnan(got) & np.isnan(ref)
    err = np.where(both_nan, 0, np.abs(got - ref))
    tol = atol + rtol * np.abs(ref)
    ratio = np.where(both_nan, 0, err / tol)
    ratio = np.nan_to_num(ratio, nan=np.inf)
    i = int(np.argmax(ratio))
    report(name, bool(np.all(ratio <= 1)), "worst at %d got %.17g want %.17g (%.3g of tolerance)"
           % (i, got.flat[i], ref.flat[i], ratio.flat[i]))


def ece_ref(conf, correct):
    edges = np.arange(16) / 15.0
    b = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, 14)
    s = 0.0
    for k in range(15):
        m = b == k
        s += abs(correct[m].sum() - conf[m].sum())
    return s / len(conf) if len(conf) else 0.0


def lse_np(z):
    m = z.max(1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]


def run_case(tag, rng, N, C, V, L, HD, rms, has_nb, has_bu, layer, eps, cap):
    nw = (1 + 0.2 * rng.standard_normal(C)).astype(np.float32)
    nb = (0.1 * rng.standard_normal(C)).astype(np.float32) if has_nb else None
    wu = (rng.standard_normal((V, C)) / np.sqrt(C) * 3).astype(np.float32)
    bu = (0.5 * rng.standard_normal(V)).astype(np.float32) if has_bu else None
    wo = (rng.standard_normal((L, HD, C)) / np.sqrt(HD)).astype(np.float32)
    h = (2 * rng.standard_normal((N, C)) + 0.5).astype(np.float32)
    dO = (0.3 * rng.standard_normal((N, HD))).astype(np.float32)
    y = rng.integers(0, V, N).astype(np.int32)
    y[::7] = -1                                   # unknown next token: skipped by ECE/NLL
    inp = os.path.join(TMP, "ro_%s.in" % tag)
    out = os.path.join(TMP, "ro_%s.out" % tag)
    with open(inp, "wb") as f:
        f.write(b"KVRO" + struct.pack("<I", 1) + struct.pack("<5Q", N, C, V, L, HD))
        f.write(struct.pack("<4i", int(rms), int(has_nb), int(has_bu), layer))
        f.write(struct.pack("<2d", eps, cap))
        for a in (nw, nb, wu, bu, wo, h, dO):
            if a is not None:
                f.write(np.ascontiguousarray(a, "<f4").tobytes())
        f.write(y.astype("<i4").tobytes())
    r = subprocess.run([EXE, "--fixture", inp, out], capture_output=True, text=True)
    if r.returncode != 0:
        report(tag + " run", False, "exit %d: %s" % (r.returncode, r.stderr.strip()))
        return
    buf = open(out, "rb").read()
    assert buf[:4] == b"KVRR" and struct.unpack_from("<I", buf, 4)[0] == 1, "bad output header"
    off = 8

    def take(dt, n):
        nonlocal off
        a = np.frombuffer(buf, dt, n, off)
        off += a.nbytes
        return a
    lf = take("<f4", N * V).reshape(N, V)
    lc = take("<f4", N * V).reshape(N, V)
    h2 = take("<f4", N * C).reshape(N, C)
    rec = np.dtype([("d", "<f8", 7), ("k", "<i4", 3), ("ids", "<i4", 8), ("vals", "<f4", 8)])
    per = np.frombuffer(buf, rec, N, off)
    off += per.nbytes
    ece_c = take("<f8", 2)
    bl = struct.unpack_from("<I", buf, off)[0]
    blas = buf[off + 4:off + 4 + bl].decode()

    # logits, independent float64 path, with the gamma_C bound
    def logits_ref(hh):
        x = norm_ref(hh, nw, nb, eps, rms)
        z = x @ wu.astype(np.float64).T
        bnd = (C + 4) * U * (np.abs(x) @ np.abs(wu.astype(np.float64)).T)
        if bu is not None:
            z = z + bu
            bnd = bnd + U * np.abs(bu)
        if cap > 0:
            z = cap * np.tanh(z / cap)           # 1-Lipschitz: the bound carries over
        return z, bnd + 1e-6
    zf, bf = logits_ref(h)
    bound_cmp(tag + " logits_full", lf, zf, bf)
    h2r = h.astype(np.float64) + dO.astype(np.float64) @ wo[layer].astype(np.float64)
    bh = (HD + 1) * U * (np.abs(h) + np.abs(dO) @ np.abs(wo[layer]).astype(np.float64)) + 1e-7
    bound_cmp(tag + " h + dO W_O[%d]" % layer, h2, h2r, bh)
    zc, bc = logits_ref(h2)                      # from the C residual: isolates the logits path
    bound_cmp(tag + " logits_comp", lc, zc, bc)

    # statistics from the C logits, float64 on both sides
    Lf, Lc = lf.astype(np.float64), lc.astype(np.float64)
    lsef, lsec = lse_np(Lf), lse_np(Lc)
    rel_cmp(tag + " lse_full", per["d"][:, 0], lsef)
    rel_cmp(tag + " lse_comp", per["d"][:, 1], lsec)
    pf = np.exp(Lf - lsef[:, None])
    kl = np.maximum((pf * ((Lf - lsef[:, None]) - (Lc - lsec[:, None]))).sum(1), 0)
    rel_cmp(tag + " KL", per["d"][:, 2], kl, rtol=1e-9, atol=1e-13)
    known = y >= 0
    yi = np.where(known, y, 0)
    nllf = np.where(known, lsef - Lf[np.arange(N), yi], np.nan)
    nllc = np.where(known, lsec - Lc[np.arange(N), yi], np.nan)
    rel_cmp(tag + " nll_full", per["d"][:, 3], nllf)
    rel_cmp(tag + " nll_comp", per["d"][:, 4], nllc)
    af, ac = Lf.argmax(1), Lc.argmax(1)           # first maximum: lowest id
    conff = np.exp(Lf.max(1) - lsef)
    confc = np.exp(Lc.max(1) - lsec)
    rel_cmp(tag + " conf_full", per["d"][:, 5], conff)
    rel_cmp(tag + " conf_comp", per["d"][:, 6], confc)
    k = per["k"]
    report(tag + " top1_agree", bool(np.all(k[:, 0] == (af == ac))), "%d positions" % N)
    cf, cc = (af == y), (ac == y)
    report(tag + " correct_full/comp", bool(np.all(k[known, 1] == cf[known]) and np.all(k[known, 2] == cc[known])),
           "%d known positions" % known.sum())
    order = np.argsort(-lf, axis=1, kind="stable")[:, :8]
    bad = np.nonzero(np.any(per["ids"] != order, axis=1))[0]
    report(tag + " top-8 ids", len(bad) == 0, "first mismatch at %s" % (bad[:1].tolist()))
    vals_ok = np.all(per["vals"] == np.take_along_axis(lf, order, 1))
    report(tag + " top-8 values", bool(vals_ok), "exact")
    ef = ece_ref(conff[known], cf[known].astype(np.float64))
    ec = ece_ref(confc[known], cc[known].astype(np.float64))
    rel_cmp(tag + " ECE full/comp", ece_c, np.array([ef, ec]), rtol=1e-12, atol=1e-12)
    print("   (%s; mean conf %.3f, ECE full %.4f comp %.4f, mean KL %.4g)" % (blas, conff.mean(), ef, ec, kl.mean()))


def main():
    if not os.access(EXE, os.X_OK):
        print("skip: %s not built" % EXE)
        return 77
    rng = np.random.default_rng(20240607)
    run_case("rms", rng, N=70, C=64, V=301, L=3, HD=48, rms=True, has_nb=False, has_bu=False,
             layer=2, eps=1e-6, cap=0.0)
    run_case("ln_bias_cap", rng, N=33, C=40, V=129, L=2, HD=32, rms=False, has_nb=True, has_bu=True,
             layer=0, eps=1e-5, cap=30.0)
    run_case("tiny", rng, N=1, C=1, V=8, L=1, HD=1, rms=True, has_nb=False, has_bu=False,
             layer=0, eps=1e-6, cap=0.0)
    print("%s" % ("all passed" if fails == 0 else "%d failed" % fails))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
