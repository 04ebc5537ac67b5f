"""kvcapture validate: the in-model re-run ("truth") of exported cache states (traces/EXPORT.md).

    python3 capture/kvcapture.py validate --model M --trace T --export E -o truth.h5
        [--apply delta|substitute] [--configs LIST] [--device cpu|cuda[:N]]
        [--dtype float32|float16|bfloat16] [--attn-impl IMPL] [--tol X]

The C replay is the single source of what a strategy does: `kvreplay run --export` writes, per
(configuration, sequence, layer, kv head), the cache the last evaluated position sees and, for
time-dependent encoders (KIVI's residual window), the first query position that sees each
encoded K / V row (encoded_from; before it the row before encoding). This
module re-runs the model teacher-forced on the trace's own tokens and, at every captured layer,
applies that state through the model's attention-function interface, installed by the same
adapter capture uses (kvcapture's RefAdapter / HFAdapter .install(record, name)): the real
attention runs, then at planned layers rows [P, n) of its output are replaced by
planned_attention (the ONE computation for both adapters: scale, logit soft-cap and the
layer's sliding window as the trace recorded them, GQA, float32 softmax). Trace layer l is
model layer layers/<l>.model_layer (capture --layers). Under the prefill protocol:
  - prompt queries t < P: ordinary causal attention (the prefill itself is exact);
  - decode queries t in [P, n): attention over the exported entries only — prompt entries
    (mask), a merged entry's logit + log(mult) (proportional attention), and the decode keys
    [P, t] — with K/V rows replaced for configurations that export rows (encoders, merges,
    views), each as query t saw it (encoded_from):  delta (default): the model's own row plus
    (exported row - the trace's row), i.e. the compression's change carried onto the re-run's
    K/V, which already hold the error of earlier layers (as eviction's do);  substitute: the
    exported rows as they are (a layer-wise measure that drops the carried-in error).
No strategy is re-implemented here: only masks, biases and rows read from the export.

Per (configuration, sequence), over evaluated positions t in [P, n) (as kvreplay does):
logit_kl = mean KL(P_full || P_comp) against the full-cache re-run, top1_agree, nll_full and
nll_comp (positions with a next token), ece_full / ece_comp (15 equal-width bins, pooled over
the sequence's positions). Before anything else the full re-run is compared with the trace's
captured logits (/readout/ref_lse, ref_top_logits) or, for traces without a read-out
(post-norm and soft-capped models), the re-run's K/V at the captured layers against the
trace's rows: a mismatch means model and trace differ, and validate stops (--tol).
A state that keeps everything (every position once, mult 1, no exported rows; online: nothing
evicted) is the full cache: its metrics are computed from the full re-run itself (logit_kl
exactly 0, nll_comp = nll_full), not from a second forward through planned_attention, whose
float32 rounding differs from the real attention's by BLAS kernel (OPENBLAS_CORETYPE).

Needle traces (/needles, traces/SCHEMA.md): per (configuration, measured needle) the TRUE answer
accuracy, beside the read-out proxy's (kvreplay's needles.csv answer_top1_*): the share of the
needle's answer tokens whose top-1 under the re-run's logits is the true token, teacher-forced
(answer query t in [answer_start - 1, answer_end - 1) predicts token t + 1), for the full re-run
and under the configuration's cache state. A needle is measured as kvreplay measures it: when
answer_start - 1 >= P (every answer query evaluated).

Online exports (mode "online", eviction only): per (layer, kv head) `evict_at[j]`, the first
query position that no longer sees token j; the compressed cache is in effect for every query,
so at every row t of the planned layers key j is visible iff j <= t < evict_at[j]; metrics over
[P, n) as above.

Shapes: n tokens, P split, NE = n - P, L layers, H q-heads, Hkv kv-heads, G = H / Hkv, D
head_dim, V vocab. Version-1 exports are read except for time-dependent configurations (they
held only the last position's state). The Hugging Face path is
exercised by tests/py/test_capture_hf.py only where transformers is installed (not on the
Debian build machine: that test is skipped there, visibly).
"""
import argparse
import hashlib
import math
import os
import sys

import h5py
import numpy as np
import torch

TRUTH_VERSION = 1
EXPORT_VERSIONS = (1, 2)    # 1: no encoded_from (time-dependent configurations refused)
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
    """-> dict(n, P, has_rows, heads[l][g] = dict(pos, mult, members(list of arrays), k, v,
    efrom [NE, 2] (query t sees the exported K row iff t >= efrom[e, 0], V: efrom[e, 1]; before,
    the row before encoding), pre_k, pre_v (rows before encoding, NaN = the trace's row; None:
    the trace's rows))). Version-1 exports have no encoded_from: 0 (their rows for every query)."""
    eoff = grp["entry_off"][()]
    pos, mult = grp["pos"][()], grp["mult"][()]
    moff, mem = grp["member_off"][()], grp["members"][()]
    has_rows = int(_attr(grp, "has_rows", 0))
    k = grp["k"][()].astype(np.float32) if has_rows else None
    v = grp["v"][()].astype(np.float32) if has_rows else None
    if eoff.shape != (L * Hkv + 1,):
        raise ValidateError(f"export {grp.name}: entry_off has {eoff.shape[0]} values, expected {L * Hkv + 1}")
    NE = len(pos)
    efrom = np.zeros((NE, 2), dtype=np.int64)
    if has_rows and "encoded_from" in grp:
        efrom = grp["encoded_from"][()].astype(np.int64)
        if efrom.shape != (NE, 2):
            raise ValidateError(f"export {grp.name}: encoded_from has shape {efrom.shape}, expected {(NE, 2)}")
    pre_k = pre_v = None
    if int(_attr(grp, "has_pre_rows", 0)):
        pre_k, pre_v = grp["pre_k"][()].astype(np.float32), grp["pre_v"][()].astype(np.float32)
        if pre_k.shape != (NE, k.shape[1]) or pre_v.shape != pre_k.shape:
            raise ValidateError(f"export {grp.name}: pre_k/pre_v have shape {pre_k.shape}, expected {(NE, k.shape[1])}")
    heads = []
    for l in range(L):
        row = []
        for g in range(Hkv):
            a, b = int(eoff[l * Hkv + g]), int(eoff[l * Hkv + g + 1])
            row.append(dict(pos=pos[a:b].astype(np.int64), mult=mult[a:b].astype(np.int64),
                            members=[mem[moff[e]:moff[e + 1]] for e in range(a, b)],
                            k=None if k is None else k[a:b], v=None if v is None else v[a:b],
                            efrom=efrom[a:b], pre_k=None if pre_k is None else pre_k[a:b],
                            pre_v=None if pre_v is None else pre_v[a:b]))
        heads.append(row)
    return dict(n=int(_attr(grp, "seq_len")), P=int(_attr(grp, "split")), has_rows=has_rows, heads=heads)


def _sub(rows, trace, apply):
    """Rows as planned_attention takes them: substitute: the rows; delta: rows - trace."""
    return rows - trace if apply == "delta" else rows


def layer_plan(st, l, Hkv, D, trace_k=None, trace_v=None, apply="delta"):
    """Plan of layer l under the prefill protocol (rows [P, n) follow the export).

    keybias [Hkv, n]: log(mult) at the exported entries' positions, -inf elsewhere; with the
    causal rule (key j visible to t iff j <= t) this is the export's cache: prompt entries
    always, decode entries j in [P, t]. ksub/vsub [Hkv, n, D]: the rows to use at entry
    positions (NaN where the model's own row stays), or None. Time-dependent states
    (encoded_from > 0 somewhere): kfrom/vfrom [Hkv, n] (query t uses ksub's row of key j iff
    t >= kfrom[j], else ksub0's) and ksub0/vsub0, the rows before encoding (the trace's rows
    unless pre rows were exported) in the same form; else those are None. trace_k/trace_v
    [Hkv, n, D]: the trace's rows (needed whenever the export has rows)."""
    n, P = st["n"], st["P"]
    keybias = np.full((Hkv, n), -np.inf, dtype=np.float32)
    ksub = vsub = ksub0 = vsub0 = kfrom = vfrom = None
    if st["has_rows"]:
        ksub = np.full((Hkv, n, D), np.nan, dtype=np.float32)
        vsub = np.full((Hkv, n, D), np.nan, dtype=np.float32)
        timed = any(bool(np.any(st["heads"][l][g]["efrom"] > 0)) for g in range(Hkv))
        if timed:
            ksub0 = np.full((Hkv, n, D), np.nan, dtype=np.float32)
            vsub0 = np.full((Hkv, n, D), np.nan, dtype=np.float32)
            kfrom = np.zeros((Hkv, n), dtype=np.int64)
            vfrom = np.zeros((Hkv, n), dtype=np.int64)
    for g in range(Hkv):
        h = st["heads"][l][g]
        pos, mult = h["pos"], h["mult"]
        if len(pos) and (pos.min() < 0 or pos.max() >= n or np.any(np.diff(pos) <= 0)):
            raise ValidateError(f"export layer {l} kv head {g}: entry positions not ascending in [0, {n})")
        dec = pos[pos >= P]
        if not np.array_equal(dec, np.arange(P, n)):
            raise ValidateError(f"export layer {l} kv head {g}: decode entries are not exactly [{P}, {n}) "
                                "(prefill protocol expected)")
        keybias[g, pos] = np.log(mult.astype(np.float64)).astype(np.float32)
        if ksub is not None:
            tk, tv = trace_k[g, pos], trace_v[g, pos]
            ksub[g, pos] = _sub(h["k"], tk, apply)
            vsub[g, pos] = _sub(h["v"], tv, apply)
            if kfrom is not None:
                kfrom[g, pos], vfrom[g, pos] = h["efrom"][:, 0], h["efrom"][:, 1]
                pk, pv = tk, tv
                if h["pre_k"] is not None:      # NaN: the trace's row
                    pk = np.where(np.isnan(h["pre_k"]), tk, h["pre_k"])
                    pv = np.where(np.isnan(h["pre_v"]), tv, h["pre_v"])
                ksub0[g, pos] = _sub(pk, tk, apply)
                vsub0[g, pos] = _sub(pv, tv, apply)
    return dict(P=P, keybias=keybias, evict_at=None, ksub=ksub, vsub=vsub, ksub0=ksub0, vsub0=vsub0,
                kfrom=kfrom, vfrom=vfrom)


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
    """Plan of layer l under the online protocol: EVERY query row t sees key j iff
    j <= t < evict_at[j] (the compressed cache is in effect from the start); masks only."""
    n = st["n"]
    return dict(P=0, keybias=np.zeros((Hkv, n), dtype=np.float32),
                evict_at=st["evict_at"][l * Hkv:(l + 1) * Hkv], ksub=None, vsub=None)


def plan_to(plan, device):
    """The plan's arrays as torch tensors on the model's device (once per forward, not per call)."""
    out = dict(plan)
    for key in ("keybias", "ksub", "vsub", "ksub0", "vsub0"):
        if plan.get(key) is not None:
            out[key] = torch.as_tensor(plan[key], dtype=torch.float32).to(device)
    for key in ("evict_at", "kfrom", "vfrom"):
        if plan.get(key) is not None:
            out[key] = torch.as_tensor(plan[key], dtype=torch.int64).to(device)
    return out


CHUNK = 1 << 26     # score elements (B*H*rows*T) computed at once; bounds the memory of long rows


def _rows(x, sub, apply, G):
    """The model's rows x [B,Hkv,T,D] with sub [Hkv,T,D] applied (substitute: sub where not
    NaN; delta: x + sub, NaN = 0), repeated for the G query heads of each kv head."""
    if sub is not None:
        s = sub.to(x.dtype)[None]
        x = x + torch.nan_to_num(s, nan=0.0) if apply == "delta" else torch.where(torch.isnan(s), x, s)
    return x.repeat_interleave(G, dim=1)


def planned_attention(q, k, v, scale, softcap, window, plan, apply):
    """The attention of query rows [P, T) under an exported cache state: the ONE computation
    both adapters use (the reference model and Hugging Face models).

    q [B,H,T,D]; k, v [B,Hkv,T,D] post-RoPE, before GQA repetition (the attention-function
    interface). plan (plan_to): P; keybias [Hkv,T] additive per key (log(mult); -inf: not in
    the cache); evict_at [Hkv,T] or None (key j visible to t iff j <= t < evict_at[j]; None:
    iff j <= t); ksub/vsub [Hkv,T,D] or None (substitute: rows replacing the model's where not
    NaN; delta: added to them); kfrom/vfrom [Hkv,T] or None: query t uses ksub's row of key j
    iff t >= kfrom[j] and ksub0's before (values: vfrom, vsub/vsub0) — the per-position state
    of a time-dependent encoder; both versions' scores are computed and selected per (t, j).
    window W > 0 additionally requires t - j < W; softcap c > 0 caps the scaled logits as
    c tanh(s / c) before the bias. Softmax in float32.
    Returns [B, T-P, H, D] (the rows of the interface's [B,T,H,D] output from P on)."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    P = plan["P"]
    kk, vv = _rows(k, plan["ksub"], apply, G), _rows(v, plan["vsub"], apply, G)
    kf, vf = plan.get("kfrom"), plan.get("vfrom")
    if kf is not None:
        kk0, vv0 = _rows(k, plan["ksub0"], apply, G), _rows(v, plan["vsub0"], apply, G)
    kb, ev = plan["keybias"], plan["evict_at"]
    ninf = torch.full((), float("-inf"), dtype=torch.float32, device=q.device)
    j = torch.arange(T, device=q.device)[None, :]
    rows = max(1, CHUNK // max(1, B * H * T))
    outs = []
    for r0 in range(P, T, rows):
        r1 = min(T, r0 + rows)
        R = r1 - r0
        t = torch.arange(r0, r1, device=q.device)[:, None]
        vis = (j <= t)[None]                                                   # [1|Hkv,R,T]
        if ev is not None:
            vis = vis & (t[None] < ev[:, None, :])
        if window and window > 0:
            vis = vis & (t - j < window)[None]
        bias = torch.where(vis, kb[:, None, :], ninf)                          # [Hkv,R,T]
        s = torch.matmul(q[:, :, r0:r1], kk.transpose(-1, -2)).float() * scale  # [B,H,R,T]
        if kf is not None:      # keys not yet encoded for these queries: the rows before
            s0 = torch.matmul(q[:, :, r0:r1], kk0.transpose(-1, -2)).float() * scale
            enc = (t >= kf[:, None, :])[None, :, None]                          # [1,Hkv,1,R,T]
            s = torch.where(enc, s.view(B, Hkv, G, R, T), s0.view(B, Hkv, G, R, T)).view(B, H, R, T)
        if softcap and softcap > 0:
            s = softcap * torch.tanh(s / softcap)
        s = (s.view(B, Hkv, G, R, T) + bias[None, :, None]).view(B, H, R, T)
        p = torch.softmax(s, dim=-1).to(q.dtype)
        if kf is None:
            outs.append(torch.matmul(p, vv))                                   # [B,H,R,D]
            continue
        enc = (t >= vf[:, None, :])[None, :, None]                              # [1,Hkv,1,R,T]
        p5 = p.view(B, Hkv, G, R, T)
        p1 = torch.where(enc, p5, torch.zeros((), dtype=p.dtype, device=p.device)).view(B, H, R, T)
        outs.append(torch.matmul(p1, vv) + torch.matmul(p - p1, vv0))
    od = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return od.transpose(1, 2)


class Applier:
    """The function validate installs through the adapter (adapter.install(record, name)): it
    sees every attention call after the model's real attention ran; at model layers with a
    plan (self.plans[model_layer], set per forward) it replaces rows [P, T) of the output by
    planned_attention, elsewhere it returns None (the real output stays)."""

    def __init__(self, apply, scale, softcap, windows):
        self.plans = {}
        self.seen = set()
        self.kv = None          # a dict: record K/V [Hkv,T,D] of the layers in `windows` (full check)
        self.apply = apply
        self.scale, self.softcap, self.windows = scale, softcap, windows

    def __call__(self, layer_idx, q, k, v, out, kwargs):
        plan = self.plans.get(layer_idx)
        if plan is None:
            if self.kv is not None and layer_idx in self.windows:
                self.kv[layer_idx] = (k[0].double().cpu().numpy(), v[0].double().cpu().numpy())
            return None
        self.seen.add(layer_idx)
        scale = kwargs.get("scaling")
        scale = self.scale if scale is None else float(scale)
        softcap = float(kwargs.get("softcap", self.softcap) or 0.0)
        window = int((kwargs["sliding_window"] if "sliding_window" in kwargs
                      else self.windows.get(layer_idx, 0)) or 0)
        od = planned_attention(q, k, v, scale, softcap, window, plan, self.apply)
        out = out.clone()
        out[:, plan["P"]:] = od.to(out.dtype)
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


def _trace_layers(tr, L, n_model_layers):
    """Trace layer l -> model layer (layers/<l> attribute model_layer, written by capture
    --layers; default l) and that model layer's sliding window (0 = none)."""
    root_w = int(_attr(tr, "sliding_window", 0) or 0)
    mlayer, windows = [], {}
    for l in range(L):
        if str(l) not in tr["layers"]:
            raise ValidateError(f"trace has no /layers/{l}")
        g = tr["layers"][str(l)]
        ml = int(_attr(g, "model_layer", l))
        if not 0 <= ml < n_model_layers or ml in windows:
            raise ValidateError(f"trace layer {l}: model layer {ml} is not a distinct layer of the model "
                                f"(it has {n_model_layers})")
        mlayer.append(ml)
        windows[ml] = int(_attr(g, "sliding_window", root_w) or 0)
    return mlayer, windows


def _full_check_kv(kv, tr, s, n, mlayer, tol):
    """No read-out in the trace: the full re-run's K/V at the captured layers against the
    trace's (f16) -> max abs error relative to the layer's max |trace value| (K/V scales vary
    widely between models, so no floor at 1); ValidateError past tol."""
    worst = 0.0
    for l, ml in enumerate(mlayer):
        for name, got in zip(("k", "v"), kv[ml]):
            want = tr[f"layers/{l}/{name}"][s, :, :n].astype(np.float64)
            err = float(np.abs(got - want).max()) / max(1e-30, float(np.abs(want).max()))
            if err > tol:
                raise ValidateError(f"the full-cache re-run of sequence {s} does not reproduce the trace's "
                                    f"layer {l} {name.upper()} rows (max relative error {err:.3g} > {tol:.3g}): "
                                    "not the model of this trace")
            worst = max(worst, err)
    return worst


def _keeps_everything(st, online):
    """True when a state is the full cache: online, nothing is ever evicted (evict_at = n);
    prefill, every (layer, kv head) keeps every position [0, n) once (mult 1) and no K/V
    rows are exported (the model's own rows stay)."""
    n = st["n"]
    if online:
        return bool(np.all(st["evict_at"] == n))
    if st["has_rows"]:
        return False
    return all(np.array_equal(h["pos"], np.arange(n)) and bool(np.all(h["mult"] == 1))
               for row in st["heads"] for h in row)


def _next_tokens(tokens, s, n, P):
    """y [n - P]: the next token of evaluated position t in [P, n), -1 at the last one."""
    y = np.full(n - P, -1, dtype=np.int64)
    y[:n - P - 1] = tokens[s, P + 1:n]
    return y


NEEDLE_FIELDS = ("seq", "start", "end", "value_start", "value_end", "answer_start", "answer_end")


def _read_needles(tr):
    """The trace's /needles as int64 arrays by field, and /prefill_len; None without /needles."""
    if "needles" not in tr:
        return None
    g = tr["needles"]
    nd = {}
    for k in NEEDLE_FIELDS:
        if k not in g:
            raise ValidateError(f"trace /needles has no '{k}' (traces/SCHEMA.md)")
        nd[k] = g[k][()].astype(np.int64).reshape(-1)
    if len({len(v) for v in nd.values()}) != 1 or "prefill_len" not in tr:
        raise ValidateError("trace /needles: members of different lengths, or no /prefill_len")
    nd["prefill_len"] = tr["prefill_len"][()].astype(np.int64)
    return nd


def needle_answers(nd, s, P, n, tokens, lf, lc):
    """Per measured needle of sequence s (answer_start - 1 >= P, inside [0, n)): the share of its
    answer tokens that the full logits lf [n, V] and the compressed lc [n, V] (rows >= P under the
    cache state) predict as top-1, teacher-forced; its context length (/prefill_len) and depth
    (start / (ctx_len - needle_len), as kvreplay's needles.csv)."""
    out = []
    for i in np.nonzero(nd["seq"] == s)[0]:
        a0, a1 = int(nd["answer_start"][i]), int(nd["answer_end"][i])
        if a0 - 1 < P or a1 > n or a1 <= a0:
            continue
        t = np.arange(a0 - 1, a1 - 1)
        y = tokens[s, a0:a1].astype(np.int64)
        ctx, st = int(nd["prefill_len"][s]), int(nd["start"][i])
        nlen = int(nd["end"][i]) - st
        depth = min(1.0, st / (ctx - nlen)) if ctx > nlen else 0.0
        out.append(dict(needle=int(i), seq=int(s), ctx_len=ctx, depth=depth, answer_len=a1 - a0,
                        top1_full=float((lf[t].argmax(1) == y).mean()),
                        top1_comp=float((lc[t].argmax(1) == y).mean())))
    return out


def run(a, load_adapter):
    if os.path.isdir(a.export):     # `kvreplay run --export DIR` writes DIR/export.h5
        a.export = os.path.join(a.export, "export.h5")
    for p, what in ((a.trace, "trace"), (a.export, "export")):
        if not os.path.isfile(p):
            raise ValidateError(f"{what} '{p}': no such file")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValidateError(f"--device {a.device}: no CUDA device is available to torch")
    try:
        device = torch.device(a.device)
    except RuntimeError:
        raise ValidateError(f"--device {a.device}: expected cpu, cuda or cuda:N")
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[a.dtype]
    ex = h5py.File(a.export, "r")
    tr = h5py.File(a.trace, "r")
    xver = int(_attr(ex, "kvtrace_export_version", 0))
    if xver not in EXPORT_VERSIONS:
        raise ValidateError(f"{a.export}: not a kvtrace export (kvtrace_export_version {xver}; this validate "
                            f"reads versions {', '.join(map(str, EXPORT_VERSIONS))})")
    mode = _attr(ex, "mode")
    if mode not in ("prefill", "online"):
        raise ValidateError(f"{a.export}: mode {mode!r}: expected prefill or online")
    online = mode == "online"
    sha = _sha256(a.trace)
    if _attr(ex, "trace_sha256") != sha:
        raise ValidateError(f"{a.export} was exported from a different trace than {a.trace} (sha256 differs)")
    has_readout = "readout" in tr and "ref_lse" in tr["readout"]
    L, Hkv, D = int(_attr(ex, "n_layers")), int(_attr(ex, "n_kv_heads")), int(_attr(ex, "head_dim"))
    if L != int(_attr(tr, "n_layers")):
        raise ValidateError(f"export has {L} layers, the trace {int(_attr(tr, 'n_layers'))}")
    if "model_kv_heads" in tr.attrs:
        raise ValidateError(f"trace {a.trace} holds a subset of the model's kv heads (captured with "
                            "--heads): a re-run needs the cache state of every head; capture "
                            "without --heads to validate")
    ad = load_adapter(a.model, device, dtype, a.attn_impl)
    meta = ad.meta
    for key, want in (("n_heads", None), ("n_kv_heads", Hkv), ("head_dim", D), ("vocab_size", None)):
        want = int(_attr(tr, key)) if want is None else want
        if int(meta[key]) != want:
            raise ValidateError(f"model {a.model} has {key} {meta[key]}, the trace/export {want}: "
                                "not the model of this trace")
    mlayer, windows = _trace_layers(tr, L, ad.n_model_layers)
    tokens, seq_len = tr["tokens"][()], tr["seq_len"][()]
    nd = _read_needles(tr)
    nrows = []          # needle answers per (configuration, needle)
    if has_readout:
        ref_lse, ref_top = tr["readout/ref_lse"][()], tr["readout/ref_top_logits"][()]
        ref_ids = tr["readout/ref_top_ids"][()]
    ap = Applier(a.apply, float(_attr(tr, "attn_scale")), float(_attr(tr, "attn_softcap", 0.0) or 0.0), windows)
    cfg_ids = sorted(int(c) for c in ex["configs"].keys())
    if a.configs:
        want = parse_list(a.configs, "--configs")
        missing = sorted(want - set(cfg_ids))
        if missing:
            raise ValidateError(f"--configs: config {missing[0]} is not in {a.export}")
        cfg_ids = [c for c in cfg_ids if c in want]
    rows = []
    full_cache = {}
    check = dict(max_lse_err=0.0, max_top_err=0.0) if has_readout else dict(max_kv_err=0.0)
    ad.install(ap, TRUTH_FN)
    try:
        with torch.no_grad():
            for c in cfg_ids:
                cg = ex["configs"][str(c)]
                canon = _attr(cg, "config")
                if xver < 2 and not online and int(_attr(cg, "time_dependent", 0)):
                    raise ValidateError(f"{a.export}: config {c} '{canon}' is time-dependent and this version-1 "
                                        "export holds only the last position's state; export it again with "
                                        "this kvreplay (version 2: the state each position saw)")
                for sname in sorted(cg.keys(), key=int):
                    s = int(sname)
                    st = read_online(cg[sname], L, Hkv) if online else read_state(cg[sname], L, Hkv)
                    n, P = st["n"], st["P"]
                    if not 0 <= s < len(seq_len) or n != int(seq_len[s]) or not (0 <= P < n if online else 0 < P < n):
                        raise ValidateError(f"export {cg[sname].name}: seq_len {n} / split {P} do not fit the trace")
                    ids = torch.as_tensor(tokens[s, :n].astype(np.int64))[None].to(device)
                    if s not in full_cache:
                        ap.plans = {}
                        ap.kv = None if has_readout else {}
                        lf = ad.forward(ids)[0].double().cpu()
                        if has_readout:
                            lse = torch.logsumexp(lf, -1).numpy()
                            top = np.take_along_axis(lf.numpy(), ref_ids[s, :n].astype(np.int64), 1)
                            e1 = float(np.abs(lse - ref_lse[s, :n]).max())
                            e2 = float(np.abs(top - ref_top[s, :n]).max())
                            tol = a.tol * max(1.0, float(np.abs(ref_top[s, :n]).max()))
                            if e1 > tol or e2 > tol:
                                raise ValidateError(f"the full-cache re-run of sequence {s} does not reproduce the "
                                                    f"trace's logits (max |lse error| {e1:.3g}, top-8 {e2:.3g} > "
                                                    f"{tol:.3g}): model {a.model} is not the model of {a.trace}")
                            check["max_lse_err"] = max(check["max_lse_err"], e1)
                            check["max_top_err"] = max(check["max_top_err"], e2)
                        else:
                            e = _full_check_kv(ap.kv, tr, s, n, mlayer, a.tol)
                            check["max_kv_err"] = max(check["max_kv_err"], e)
                        ap.kv = None
                        full_cache[s] = lf.numpy()
                    if _keeps_everything(st, online):
                        # the exported cache IS the full cache: its logits are the full re-run's
                        # by definition (logit_kl exactly 0), not a second forward whose float32
                        # rounding depends on the BLAS kernel
                        r = compare(full_cache[s][P:n], full_cache[s][P:n], _next_tokens(tokens, s, n, P))
                        r.update(config_id=c, config=canon, seq=s)
                        rows.append(r)
                        if nd is not None:
                            for x in needle_answers(nd, s, P, n, tokens, full_cache[s], full_cache[s]):
                                nrows.append(dict(x, config_id=c, config=canon))
                        continue
                    plans = {}
                    for l in range(L):
                        if online:      # every query row, masks only
                            plans[mlayer[l]] = plan_to(online_plan(st, l, Hkv), device)
                            continue
                        tk = tv = None
                        if st["has_rows"]:
                            tk = tr[f"layers/{l}/k"][s, :, :n].astype(np.float32)
                            tv = tr[f"layers/{l}/v"][s, :, :n].astype(np.float32)
                        plans[mlayer[l]] = plan_to(layer_plan(st, l, Hkv, D, tk, tv, a.apply), device)
                    ap.plans, ap.seen = plans, set()
                    lc = ad.forward(ids)[0].double().cpu().numpy()
                    ap.plans = {}
                    if ap.seen != set(plans):
                        raise ValidateError(f"model {a.model}: layer {min(set(plans) - ap.seen)} did not call the "
                                            "attention interface; its cache state was not applied")
                    r = compare(full_cache[s][P:n], lc[P:n], _next_tokens(tokens, s, n, P))
                    for m in METRICS:
                        if not math.isfinite(r[m]):
                            raise ValidateError(f"config {c} '{canon}' sequence {s}: non-finite {m}")
                    r.update(config_id=c, config=canon, seq=s)
                    rows.append(r)
                    if nd is not None:
                        for x in needle_answers(nd, s, P, n, tokens, full_cache[s], lc):
                            nrows.append(dict(x, config_id=c, config=canon))
    finally:
        ad.uninstall()
    write_truth(a, rows, check, sha, _attr(ex, "model") or "", nrows if nd is not None else None)
    return rows, check, len(nrows)


def _config_dataset(g, rows):
    """g/config: each row's configuration string, fixed width (one byte more than the longest)."""
    width = max([len(r["config"].encode()) for r in rows] + [1]) + 1
    g.create_dataset("config", data=np.array([r["config"].encode() for r in rows], dtype=f"S{width}").reshape(len(rows)))


def _write_needles(f, nrows):
    """/needles of the truth file: one row per (configuration, measured needle) (traces/EXPORT.md)."""
    N = len(nrows)
    g = f.create_group("needles")
    for k in ("config_id", "seq", "needle", "ctx_len", "answer_len"):
        g.create_dataset(k, data=np.array([r[k] for r in nrows], dtype="<i4").reshape(N))
    _config_dataset(g, nrows)
    for k in ("depth", "top1_full", "top1_comp"):
        g.create_dataset("answer_" + k if k.startswith("top1") else k,
                         data=np.array([r[k] for r in nrows], dtype="<f8").reshape(N))


def write_truth(a, rows, check, sha, model_attr, nrows=None):
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
            f.attrs["full_max_lse_err"] = check.get("max_lse_err", float("nan"))
            f.attrs["full_max_top_err"] = check.get("max_top_err", float("nan"))
            if "max_kv_err" in check:       # the trace has no read-out: K/V rows were compared
                f.attrs["full_check"] = "kv"
                f.attrs["full_max_kv_err"] = check["max_kv_err"]
            N = len(rows)
            g = f.create_group("rows")
            g.create_dataset("config_id", data=np.array([r["config_id"] for r in rows], dtype="<i4").reshape(N))
            g.create_dataset("seq", data=np.array([r["seq"] for r in rows], dtype="<i4").reshape(N))
            g.create_dataset("n_query", data=np.array([r["n_query"] for r in rows], dtype="<i4").reshape(N))
            g.create_dataset("n_y", data=np.array([r["n_y"] for r in rows], dtype="<i4").reshape(N))
            _config_dataset(g, rows)
            for m in METRICS:
                g.create_dataset(m, data=np.array([r[m] for r in rows], dtype="<f8").reshape(N))
            if nrows is not None:
                _write_needles(f, nrows)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build_parser():
    ap = argparse.ArgumentParser(prog="kvcapture validate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the trace's model, as kvcapture takes it: ref:PATH, "
                    "ref-random:SEED[:k=v,..], hf-random:TYPE[:k=v,..], or a Hugging Face name/path")
    ap.add_argument("--trace", required=True, help="the trace the export was replayed from")
    ap.add_argument("--export", required=True, help="kvreplay run --export file (traces/EXPORT.md)")
    ap.add_argument("--apply", choices=("delta", "substitute"), default="delta",
                    help="how exported K/V rows are applied: delta (default) adds the compression's "
                         "change of the trace's row to the re-run's own row, so error from earlier layers "
                         "propagates as for eviction; substitute uses the exported rows as they are "
                         "(traces/EXPORT.md)")
    ap.add_argument("--configs", default=None, help="config ids to validate (default: all exported)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                    help="compute dtype of the model (default float32; softmax is float32 either way)")
    ap.add_argument("--attn-impl", default=None,
                    help="HF only: the real attention at layers without a plan and for rows before P "
                         "(default as kvcapture: sdpa, eager for gemma2)")
    ap.add_argument("--tol", type=float, default=2e-2,
                    help="full re-run vs captured logits: max abs error, relative to max(1, |logit|)")
    ap.add_argument("-o", "--output", required=True, help="truth file (.h5)")
    return ap


def main(argv, load_adapter, capture_error):
    a = build_parser().parse_args(argv)
    try:
        rows, check, n_needle = run(a, load_adapter)
    except (ValidateError, capture_error) as e:
        print(f"kvcapture validate: error: {e}", file=sys.stderr)
        return 1
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        msg = " ".join(str(e).split())
        print(f"kvcapture validate: error: {msg}", file=sys.stderr)
        return 1
    how = (f"max |lse err| {check['max_lse_err']:.3g}" if "max_lse_err" in check
           else f"no read-out in the trace, max relative K/V err {check['max_kv_err']:.3g}")
    nd = f"; {n_needle} needle answer rows" if n_needle else ""
    print(f"kvcapture validate: wrote {a.output} ({len(rows)} rows{nd}; full re-run vs trace: {how})", file=sys.stderr)
    return 0
