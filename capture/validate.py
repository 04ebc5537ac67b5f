"""kvcapture validate: the in-model re-run ("truth") of exported cache states (traces/EXPORT.md).

    python3 capture/kvcapture.py validate --model M --trace T --export E -o truth.h5
        [--apply substitute|delta] [--configs LIST] [--device cpu] [--tol X]

The C replay is the single source of what a strategy does: `kvreplay run --export` writes, per
(configuration, sequence, layer, kv head), the cache the last evaluated position sees. This
module re-runs the model teacher-forced on the trace's own tokens and, at every captured layer,
applies that state through the model's attention-function interface (refmodel's
ATTENTION_FUNCTIONS), under the prefill protocol:
  - prompt queries t < P: ordinary causal attention (the prefill itself is exact);
  - decode queries t in [P, n): attention over the exported entries only — prompt entries
    (mask), a merged entry's logit + log(mult) (proportional attention), and the decode keys
    [P, t] — with K/V rows replaced for configurations that export rows (encoders, merges,
    views):  substitute: the exported rows as they are;  delta: the model's own row plus
    (exported row - the trace's row), i.e. the encoding error carried onto the re-run's
    perturbed K/V.
No strategy is re-implemented here: only masks, biases and rows read from the export.

Per (configuration, sequence), over evaluated positions t in [P, n) (as kvreplay does):
logit_kl = mean KL(P_full || P_comp) against the full-cache re-run, top1_agree, nll_full and
nll_comp (positions with a next token), ece_full / ece_comp (15 equal-width bins, pooled over
the sequence's positions). Before anything else the full re-run is compared with the trace's
captured logits (/readout/ref_lse, ref_top_logits): a mismatch means model and trace differ,
and validate stops (--tol).

Online exports (mode "online", eviction only): per (layer, kv head) `evict_at[j]`, the first
query position that no longer sees token j; the compressed cache is in effect for every query,
so at every row t of the planned layers key j is visible iff j <= t < evict_at[j]; metrics over
[P, n) as above.

Shapes: n tokens, P split, NE = n - P, L layers, H q-heads, Hkv kv-heads, G = H / Hkv, D
head_dim, V vocab. Limits: time-dependent encoders (quant's fp16 residual window) are applied
with the state the last position saw, at every decode position; no sliding-window layers; the
Hugging Face path is not implemented (reference model only).
"""
import argparse
import hashlib
import math
import os
import sys

import h5py
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import refmodel  # noqa: E402

TRUTH_VERSION = 1
TRUTH_FN = "kvtruth"
ECE_BINS = 15
METRICS = ("logit_kl", "nll_full", "nll_comp", "top1_agree", "ece_full", "ece_comp")


class ValidateError(Exception):
    """A user-facing error: one line, exit status 1."""


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def _attr(obj, name, default=None):
    v = obj.attrs.get(name, default)
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v.item()
    return v


# ---------------------------------------------------------------------------------------------
# Export reading: one (configuration, sequence) group -> per layer, per kv head entry lists
# ---------------------------------------------------------------------------------------------

def read_state(grp, L, Hkv):
    """-> dict(n, P, has_rows, heads[l][g] = dict(pos, mult, members(list of arrays), k, v))."""
    eoff = grp["entry_off"][()]
    pos, mult = grp["pos"][()], grp["mult"][()]
    moff, mem = grp["member_off"][()], grp["members"][()]
    has_rows = int(_attr(grp, "has_rows", 0))
    k = grp["k"][()].astype(np.float32) if has_rows else None
    v = grp["v"][()].astype(np.float32) if has_rows else None
    if eoff.shape != (L * Hkv + 1,):
        raise ValidateError(f"export {grp.name}: entry_off has {eoff.shape[0]} values, expected {L * Hkv + 1}")
    heads = []
    for l in range(L):
        row = []
        for g in range(Hkv):
            a, b = int(eoff[l * Hkv + g]), int(eoff[l * Hkv + g + 1])
            row.append(dict(pos=pos[a:b].astype(np.int64), mult=mult[a:b].astype(np.int64),
                            members=[mem[moff[e]:moff[e + 1]] for e in range(a, b)],
                            k=None if k is None else k[a:b], v=None if v is None else v[a:b]))
        heads.append(row)
    return dict(n=int(_attr(grp, "seq_len")), P=int(_attr(grp, "split")), has_rows=has_rows, heads=heads)


def layer_plan(st, l, Hkv, D, trace_k=None, trace_v=None, apply="substitute"):
    """Additive bias [Hkv, NE, n] for decode queries and replacement rows (or None) of layer l.

    bias[g, t-P, j] = log(mult) for an exported entry at position j visible to t (prompt
    entries: always; decode entries j in [P, t]), -inf elsewhere. ksub/vsub [Hkv, n, D]: the
    rows to use at entry positions (NaN where the model's own row stays)."""
    n, P = st["n"], st["P"]
    NE = n - P
    bias = np.full((Hkv, NE, n), -np.inf, dtype=np.float32)
    tri = np.arange(P, n)[:, None] >= np.arange(n)[None, :]          # [NE, n] causal
    ksub = vsub = None
    if st["has_rows"]:
        ksub = np.full((Hkv, n, D), np.nan, dtype=np.float32)
        vsub = np.full((Hkv, n, D), np.nan, dtype=np.float32)
    for g in range(Hkv):
        h = st["heads"][l][g]
        pos, mult = h["pos"], h["mult"]
        if len(pos) and (pos.min() < 0 or pos.max() >= n or np.any(np.diff(pos) <= 0)):
            raise ValidateError(f"export layer {l} kv head {g}: entry positions not ascending in [0, {n})")
        dec = pos[pos >= P]
        if not np.array_equal(dec, np.arange(P, n)):
            raise ValidateError(f"export layer {l} kv head {g}: decode entries are not exactly [{P}, {n}) "
                                "(prefill protocol expected)")
        lb = np.log(mult.astype(np.float64)).astype(np.float32)
        for e, j in enumerate(pos):
            bias[g, :, j] = np.where(tri[:, j], lb[e], -np.inf)
        if ksub is not None:
            if apply == "delta":
                ksub[g, pos] = h["k"] - trace_k[g, pos]
                vsub[g, pos] = h["v"] - trace_v[g, pos]
            else:
                ksub[g, pos] = h["k"]
                vsub[g, pos] = h["v"]
    return bias, ksub, vsub


def read_online(grp, L, Hkv):
    """Online export group -> dict(n, P, evict_at [L*Hkv, n]) (traces/EXPORT.md, mode online)."""
    n, P = int(_attr(grp, "seq_len")), int(_attr(grp, "split"))
    if "evict_at" not in grp:
        raise ValidateError(f"export {grp.name}: no evict_at dataset (mode online)")
    ev = grp["evict_at"][()].astype(np.int64)
    if ev.shape != (L * Hkv, n):
        raise ValidateError(f"export {grp.name}: evict_at has shape {ev.shape}, expected {(L * Hkv, n)}")
    j = np.arange(n)
    for i in range(L * Hkv):
        bad = np.nonzero((ev[i] <= j) | (ev[i] > n))[0]
        if len(bad):
            raise ValidateError(f"export {grp.name}: layer {i // Hkv} kv head {i % Hkv}: evict_at[{bad[0]}] = "
                                f"{ev[i, bad[0]]} not in ({bad[0]}, {n}]")
    return dict(n=n, P=P, evict_at=ev)


def online_plan(st, l, Hkv):
    """Additive bias [Hkv, n, n] for EVERY query of layer l under the online protocol: query t
    sees key j iff j <= t < evict_at[j] (the compressed cache is in effect from the start)."""
    n = st["n"]
    t = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    bias = np.full((Hkv, n, n), -np.inf, dtype=np.float32)
    for g in range(Hkv):
        ev = st["evict_at"][l * Hkv + g][None, :]
        bias[g][(j <= t) & (t < ev)] = 0.0
    return bias


class Applier:
    """The attention function registered as ATTENTION_FUNCTIONS['kvtruth']: eager attention,
    except at layers with a plan (set per forward in self.plans[model_layer])."""

    def __init__(self, apply):
        self.plans = {}
        self.apply = apply

    def __call__(self, module, q, k, v, mask, scale):
        plan = self.plans.get(module.layer_idx)
        out = refmodel.eager_attention(module, q, k, v, mask, scale)       # [B,T,H,D]
        if plan is None:
            return out
        P, bias, ksub, vsub = plan
        B, H, T, D = q.shape
        Hkv = k.shape[1]
        G = H // Hkv
        kk, vv = k, v
        if ksub is not None:
            ks = torch.as_tensor(ksub, dtype=k.dtype, device=k.device)[None]
            vs = torch.as_tensor(vsub, dtype=v.dtype, device=v.device)[None]
            if self.apply == "delta":
                kk = k + torch.nan_to_num(ks, nan=0.0)
                vv = v + torch.nan_to_num(vs, nan=0.0)
            else:
                kk = torch.where(torch.isnan(ks), k, ks)
                vv = torch.where(torch.isnan(vs), v, vs)
        kk = kk.repeat_interleave(G, dim=1)
        vv = vv.repeat_interleave(G, dim=1)
        bb = torch.as_tensor(bias, dtype=torch.float32, device=q.device).repeat_interleave(G, dim=0)[None]
        s = torch.matmul(q[:, :, P:], kk.transpose(-1, -2)).float() * scale + bb      # [B,H,NE,T]
        p = torch.softmax(s, dim=-1).to(q.dtype)
        od = torch.matmul(p, vv).transpose(1, 2)                                       # [B,NE,H,D]
        out = out.clone()
        out[:, P:] = od
        return out


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def ece(conf, correct):
    """15 equal-width bins, the last closed (Guo et al. 2017)."""
    if len(conf) == 0:
        return 0.0
    b = np.minimum((conf * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    tot = 0.0
    for i in range(ECE_BINS):
        m = b == i
        if m.any():
            tot += abs(float(correct[m].sum()) - float(conf[m].sum()))
    return tot / len(conf)


def compare(lf, lc, y):
    """lf, lc [NE, V] float64 logits; y [NE] next token or -1. -> dict of METRICS."""
    lpf = lf - np.logaddexp.reduce(lf, axis=1, keepdims=True)
    lpc = lc - np.logaddexp.reduce(lc, axis=1, keepdims=True)
    kl = np.maximum((np.exp(lpf) * (lpf - lpc)).sum(1), 0.0)
    af, ac = lf.argmax(1), lc.argmax(1)
    has = y >= 0
    yy = y[has]
    r = dict(logit_kl=float(kl.mean()), top1_agree=float((af == ac).mean()), n_query=len(y), n_y=int(has.sum()))
    if has.any():
        idx = np.nonzero(has)[0]
        r["nll_full"] = float(-lpf[idx, yy].mean())
        r["nll_comp"] = float(-lpc[idx, yy].mean())
        r["ece_full"] = ece(np.exp(lpf[idx].max(1)), (af[idx] == yy).astype(np.float64))
        r["ece_comp"] = ece(np.exp(lpc[idx].max(1)), (ac[idx] == yy).astype(np.float64))
    else:
        r.update(nll_full=0.0, nll_comp=0.0, ece_full=0.0, ece_comp=0.0)
    return r


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def parse_list(s, what):
    out = set()
    for part in s.split(","):
        try:
            if "-" in part:
                a, b = part.split("-")
                out.update(range(int(a), int(b) + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ValidateError(f"{what} {s}: expected a list like 0,2,5-7")
    return out


def run(a, load_adapter):
    if os.path.isdir(a.export):     # `kvreplay run --export DIR` writes DIR/export.h5
        a.export = os.path.join(a.export, "export.h5")
    for p, what in ((a.trace, "trace"), (a.export, "export")):
        if not os.path.isfile(p):
            raise ValidateError(f"{what} '{p}': no such file")
    ex = h5py.File(a.export, "r")
    tr = h5py.File(a.trace, "r")
    if int(_attr(ex, "kvtrace_export_version", 0)) != 1:
        raise ValidateError(f"{a.export}: not a kvtrace export (version 1)")
    mode = _attr(ex, "mode")
    if mode not in ("prefill", "online"):
        raise ValidateError(f"{a.export}: mode {mode!r}: expected prefill or online")
    sha = _sha256(a.trace)
    if _attr(ex, "trace_sha256") != sha:
        raise ValidateError(f"{a.export} was exported from a different trace than {a.trace} (sha256 differs)")
    if int(_attr(tr, "sliding_window", 0) or 0) != 0:
        raise ValidateError(f"{a.trace}: sliding-window attention is not supported by validate")
    if "readout" not in tr or "ref_lse" not in tr["readout"]:
        raise ValidateError(f"{a.trace}: no /readout/ref_lse: cannot check that the model reproduces the trace")
    ad = load_adapter(a.model, a.device, torch.float32, None)
    if not hasattr(ad, "cfg"):
        raise ValidateError("validate supports the reference model only (ref:PATH, ref-random:...); the Hugging "
                            "Face path is not implemented")
    model = ad.model
    L, Hkv, D = int(_attr(ex, "n_layers")), int(_attr(ex, "n_kv_heads")), int(_attr(ex, "head_dim"))
    mlayer = [int(_attr(tr["layers"][str(l)], "model_layer", l)) for l in range(L)]
    if Hkv != model.cfg.n_kv_heads or D != model.cfg.head_dim:
        raise ValidateError(f"model {a.model} has {model.cfg.n_kv_heads} kv heads of {model.cfg.head_dim}, the "
                            f"export {Hkv} of {D}: not the model of this trace")
    tokens, seq_len = tr["tokens"][()], tr["seq_len"][()]
    ref_lse, ref_top = tr["readout/ref_lse"][()], tr["readout/ref_top_logits"][()]
    ref_ids = tr["readout/ref_top_ids"][()]
    ap = Applier(a.apply)
    refmodel.ATTENTION_FUNCTIONS[TRUTH_FN] = ap
    model.set_attn_impl(TRUTH_FN)
    cfg_ids = sorted(int(c) for c in ex["configs"].keys())
    if a.configs:
        want = parse_list(a.configs, "--configs")
        missing = sorted(want - set(cfg_ids))
        if missing:
            raise ValidateError(f"--configs: config {missing[0]} is not in {a.export}")
        cfg_ids = [c for c in cfg_ids if c in want]
    rows = []
    full_cache = {}
    check = dict(max_lse_err=0.0, max_top_err=0.0)
    try:
        with torch.no_grad():
            for c in cfg_ids:
                cg = ex["configs"][str(c)]
                canon = _attr(cg, "config")
                for sname in sorted(cg.keys(), key=int):
                    s = int(sname)
                    online = mode == "online"
                    st = read_online(cg[sname], L, Hkv) if online else read_state(cg[sname], L, Hkv)
                    n, P = st["n"], st["P"]
                    if n != int(seq_len[s]) or not (0 <= P < n if online else 0 < P < n):
                        raise ValidateError(f"export {cg[sname].name}: seq_len {n} / split {P} do not fit the trace")
                    ids = torch.as_tensor(tokens[s, :n].astype(np.int64))[None]
                    if s not in full_cache:
                        ap.plans = {}
                        lf = model(ids)[0].double()
                        lse = torch.logsumexp(lf, -1).numpy()
                        top = np.take_along_axis(lf.numpy(), ref_ids[s, :n].astype(np.int64), 1)
                        e1 = float(np.abs(lse - ref_lse[s, :n]).max())
                        e2 = float(np.abs(top - ref_top[s, :n]).max())
                        tol = a.tol * max(1.0, float(np.abs(ref_top[s, :n]).max()))
                        if e1 > tol or e2 > tol:
                            raise ValidateError(f"the full-cache re-run of sequence {s} does not reproduce the "
                                                f"trace's logits (max |lse error| {e1:.3g}, top-8 {e2:.3g} > {tol:.3g}): "
                                                f"model {a.model} is not the model of {a.trace}")
                        check["max_lse_err"] = max(check["max_lse_err"], e1)
                        check["max_top_err"] = max(check["max_top_err"], e2)
                        full_cache[s] = lf.numpy()
                    plans = {}
                    for l in range(L):
                        if online:      # every query row, masks only
                            plans[mlayer[l]] = (0, online_plan(st, l, Hkv), None, None)
                            continue
                        tk = tv = None
                        if st["has_rows"] and a.apply == "delta":
                            tk = tr[f"layers/{l}/k"][s, :, :n].astype(np.float32)
                            tv = tr[f"layers/{l}/v"][s, :, :n].astype(np.float32)
                        bias, ks, vs = layer_plan(st, l, Hkv, D, tk, tv, a.apply)
                        plans[mlayer[l]] = (P, bias, ks, vs)
                    ap.plans = plans
                    lc = model(ids)[0].double().numpy()
                    ap.plans = {}
                    y = np.full(n - P, -1, dtype=np.int64)
                    y[:n - P - 1] = tokens[s, P + 1:n]
                    r = compare(full_cache[s][P:n], lc[P:n], y)
                    for m in METRICS:
                        if not math.isfinite(r[m]):
                            raise ValidateError(f"config {c} '{canon}' sequence {s}: non-finite {m}")
                    r.update(config_id=c, config=canon, seq=s)
                    rows.append(r)
    finally:
        model.set_attn_impl("eager")
        refmodel.ATTENTION_FUNCTIONS.pop(TRUTH_FN, None)
    write_truth(a, rows, check, sha, _attr(ex, "model") or "")
    return rows, check


def write_truth(a, rows, check, sha, model_attr):
    out = a.output
    tmp = f"{out}.tmp.{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["kvtrace_truth_version"] = TRUTH_VERSION
            f.attrs["trace"] = a.trace
            f.attrs["trace_sha256"] = sha
            f.attrs["export"] = a.export
            f.attrs["model"] = a.model
            f.attrs["trace_model"] = model_attr
            f.attrs["apply"] = a.apply
            f.attrs["full_max_lse_err"] = check["max_lse_err"]
            f.attrs["full_max_top_err"] = check["max_top_err"]
            N = len(rows)
            g = f.create_group("rows")
            g.create_dataset("config_id", data=np.array([r["config_id"] for r in rows], dtype="<i4").reshape(N))
            g.create_dataset("seq", data=np.array([r["seq"] for r in rows], dtype="<i4").reshape(N))
            g.create_dataset("n_query", data=np.array([r["n_query"] for r in rows], dtype="<i4").reshape(N))
            g.create_dataset("n_y", data=np.array([r["n_y"] for r in rows], dtype="<i4").reshape(N))
            width = max([len(r["config"].encode()) for r in rows] + [1]) + 1
            g.create_dataset("config", data=np.array([r["config"].encode() for r in rows], dtype=f"S{width}").reshape(N))
            for m in METRICS:
                g.create_dataset(m, data=np.array([r[m] for r in rows], dtype="<f8").reshape(N))
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build_parser():
    ap = argparse.ArgumentParser(prog="kvcapture validate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="ref:PATH or ref-random:SEED[:k=v,..] (the trace's model)")
    ap.add_argument("--trace", required=True, help="the trace the export was replayed from")
    ap.add_argument("--export", required=True, help="kvreplay run --export file (traces/EXPORT.md)")
    ap.add_argument("--apply", choices=("substitute", "delta"), default="substitute",
                    help="how exported K/V rows are applied (default substitute)")
    ap.add_argument("--configs", default=None, help="config ids to validate (default: all exported)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tol", type=float, default=2e-2,
                    help="full re-run vs captured logits: max abs error, relative to max(1, |logit|)")
    ap.add_argument("-o", "--output", required=True, help="truth file (.h5)")
    return ap


def main(argv, load_adapter, capture_error):
    a = build_parser().parse_args(argv)
    try:
        rows, check = run(a, load_adapter)
    except (ValidateError, capture_error) as e:
        print(f"kvcapture validate: error: {e}", file=sys.stderr)
        return 1
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        msg = " ".join(str(e).split())
        print(f"kvcapture validate: error: {msg}", file=sys.stderr)
        return 1
    print(f"kvcapture validate: wrote {a.output} ({len(rows)} rows; full re-run vs trace: max |lse err| "
          f"{check['max_lse_err']:.3g})", file=sys.stderr)
    return 0
