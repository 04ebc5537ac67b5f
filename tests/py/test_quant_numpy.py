"""replay/strategies/quant.c (KIVI and per-token symmetric) against an independent numpy
implementation of KIVI's formulas, on random data (with outlier channels and constant
groups) and on real K/V rows of traces/sample.h5 (skipped cases when it is absent).

Writes fixtures (format in tests/unit/test_quant.c), runs
`$BIN/tests/test_quant --fixture IN OUT` (the strategy's encode hook) and compares:
  reconstruction  |c - ref| <= 4 ulp of max(|x|) of the row (both sides float32, the same
                  formula; in practice bit-identical), worst element reported;
  error bound     |ref - x| <= scale/2 (1 + 1e-5) per quantised element;
  bytes           exact (payload codes + fp16 residual; fp16 scale + zero-point per group).
Exit 0 pass, 1 fail.
"""
import os
import struct
import subprocess
import sys

import numpy as np

BIN = os.environ.get("BIN", "bin")
TMP = os.environ.get("KV_TMP", "/tmp")
ROOT = os.environ.get("KV_ROOT", ".")
EXE = os.path.join(BIN, "tests", "test_quant")
MODES = {"kivi": 0, "sym8": 1, "sym4": 2}
fails = 0


def report(name, ok, detail):
    global fails
    print(("ok    " if ok else "FAIL  ") + name + ": " + detail)
    if not ok:
        fails += 1


def asym(x, bits, axis):
    """KIVI min-max along `axis` of each group; returns (reconstruction, scale per element)."""
    x = x.astype(np.float32)
    mn = x.min(axis=axis, keepdims=True)
    mx = x.max(axis=axis, keepdims=True)
    qmax = np.float32(2 ** bits - 1)
    scale = (mx - mn) / qmax
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.round((x - mn) / safe), 0, qmax).astype(np.float32)
    y = np.where(scale > 0, q * safe + mn, x).astype(np.float32)
    return y, np.broadcast_to(scale, x.shape)


def kivi_ref(k, v, kb, vb, G, R):
    m, D = k.shape
    ko, vo = k.copy(), v.copy()
    ks, vs = np.zeros_like(k), np.zeros_like(v)
    nk = m - m % R if R else m - m % G
    nv = max(0, m - R)
    if nk:
        blk = k[:nk].reshape(nk // G, G, D)          # groups of G tokens, per channel
        y, s = asym(blk, kb, axis=1)
        ko[:nk] = y.reshape(nk, D)
        ks[:nk] = s.reshape(nk, D)
    if nv:
        blk = v[:nv].reshape(nv, D // G, G)          # groups of G channels, per token
        y, s = asym(blk, vb, axis=2)
        vo[:nv] = y.reshape(nv, D)
        vs[:nv] = s.reshape(nv, D)
    payload = nk * D * kb / 8 + (m - nk) * D * 2 + nv * D * vb / 8 + (m - nv) * D * 2
    scales = (nk / G) * D * 4 + nv * (D / G) * 4
    return ko, vo, ks, vs, payload, scales


def sym_ref(x, bits):
    qmax = np.float32(2 ** (bits - 1) - 1)
    amax = np.abs(x).max(axis=1, keepdims=True)
    scale = amax / qmax
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.round(x / safe), -qmax, qmax).astype(np.float32)
    return np.where(scale > 0, q * safe, x).astype(np.float32), np.broadcast_to(scale, x.shape)


def run_c(tag, k, v, mode, kb, vb, G, R):
    m, D = k.shape
    inp = os.path.join(TMP, "q_%s.in" % tag)
    out = os.path.join(TMP, "q_%s.out" % tag)
    with open(inp, "wb") as f:
        f.write(b"KVQT" + struct.pack("<I", 1) + struct.pack("<QQ", m, D))
        f.write(struct.pack("<5i", MODES[mode], kb, vb, G, R))
        f.write(k.astype("<f4").tobytes() + v.astype("<f4").tobytes())
    r = subprocess.run([EXE, "--fixture", inp, out], capture_output=True, text=True)
    if r.returncode != 0:
        report(tag + " run", False, r.stderr.strip())
        return None
    b = open(out, "rb").read()
    assert b[:4] == b"KVQR" and struct.unpack("<I", b[4:8])[0] == 1, "bad output magic"
    n = m * D * 4
    ko = np.frombuffer(b[8:8 + n], "<f4").reshape(m, D)
    vo = np.frombuffer(b[8 + n:8 + 2 * n], "<f4").reshape(m, D)
    pl, sc = struct.unpack("<dd", b[8 + 2 * n:8 + 2 * n + 16])
    return ko, vo, pl, sc


def case(tag, k, v, mode="kivi", kb=2, vb=2, G=32, R=128):
    k = k.astype(np.float32)
    v = v.astype(np.float32)
    got = run_c(tag, k, v, mode, kb, vb, G, R)
    if got is None:
        return None
    ko, vo, pl, sc = got
    m, D = k.shape
    if mode == "kivi":
        rk, rv, ks, vs, rpl, rsc = kivi_ref(k, v, kb, vb, G, R)
    else:
        bits = 8 if mode == "sym8" else 4
        rk, ks = sym_ref(k, bits)
        rv, vs = sym_ref(v, bits)
        rpl, rsc = 2 * m * D * bits / 8, 2 * m * 2.0
    for nm, c, r, x, s in (("K", ko, rk, k, ks), ("V", vo, rv, v, vs)):
        tol = 4 * np.spacing(np.abs(x).max(axis=1, keepdims=True).astype(np.float32))
        d = np.abs(c.astype(np.float64) - r)
        ex = d - tol
        i = np.unravel_index(np.argmax(ex), ex.shape)
        report("%s %s vs numpy" % (tag, nm), ex[i] <= 0,
               "worst |c-ref| %.3g at %s (tol %.3g); bit-identical %d/%d" % (d[i], i, tol[i[0], 0], (d == 0).sum(), d.size))
        e = np.abs(r.astype(np.float64) - x) - s.astype(np.float64) / 2 * (1 + 1e-5) - 1e-7 * np.abs(x)
        j = np.unravel_index(np.argmax(e), e.shape)
        report("%s %s |err| <= scale/2" % (tag, nm), e[j] <= 0, "worst excess %.3g at %s" % (e[j], j))
    report("%s bytes" % tag, pl == rpl and sc == rsc, "payload %g (ref %g), scales %g (ref %g)" % (pl, rpl, sc, rsc))
    return float(((rk - k) ** 2).mean()), float(((rv - v) ** 2).mean())


def main():
    rng = np.random.default_rng(7)
    m, D = 300, 32
    k = rng.standard_normal((m, D)).astype(np.float32)
    k[:, 3] *= 30                                     # an outlier channel (KIVI's motivation)
    v = rng.standard_normal((m, D)).astype(np.float32)
    k[:32, 5] = 0.75                                  # constant key group
    v[10, :16] = -2.0                                 # constant value group
    errs = {}
    for kb in (2, 4, 8):
        errs[kb] = case("rand%d" % kb, k, v, "kivi", kb, kb, 32, 128)
    case("rand_g16_r0", k, v, "kivi", 4, 2, 16, 0)
    case("rand_g8_r64_m_odd", k[:277], v[:277], "kivi", 2, 4, 8, 64)
    case("rand_sym8", k, v, "sym8")
    case("rand_sym4", k, v, "sym4")
    if all(errs.values()):
        for i in (0, 1):
            ok = errs[8][i] * 10 < errs[4][i] and errs[4][i] * 10 < errs[2][i]
            report("mse 8-bit << 4-bit << 2-bit (%s)" % "KV"[i], ok,
                   "%.3g < %.3g < %.3g" % (errs[8][i], errs[4][i], errs[2][i]))
    path = os.path.join(ROOT, "traces", "sample.h5")
    try:
        import h5py
        with h5py.File(path, "r") as f:
            n = int(f["seq_len"][0])
            kr = f["layers/1/k"][0, 0, :n, :].astype(np.float32)
            vr = f["layers/1/v"][0, 0, :n, :].astype(np.float32)
        real = True
    except (ImportError, OSError, KeyError):
        print("note: traces/sample.h5 unavailable; real-data cases skipped")
        real = False
    if real:
        G = 32 if kr.shape[1] % 32 == 0 else kr.shape[1]
        for kb, vb in ((2, 2), (4, 4), (8, 8), (4, 2)):
            case("real_k%dv%d" % (kb, vb), kr, vr, "kivi", kb, vb, G, 2 * G)
        case("real_sym8", kr, vr, "sym8")
        case("real_sym4", kr, vr, "sym4")
    print("test_quant_numpy: %s" % ("FAIL (%d)" % fails if fails else "all passed"))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
