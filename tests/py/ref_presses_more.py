#!/usr/bin/python3
"""Independent numpy (float64) selections of duo, finch and per_layer, written from the rules in
the headers of replay/strategies/{duo,finch,per_layer}.c and the kvpress presses they cite
(DuoAttentionPress, FinchPress, PerLayerCompressionPress) — not ports of the C code. Importing
this module registers them in ref_replay.PREFILL_SELECT.

Ties go to the lower position (ref_evict.top).
"""
import math

import numpy as np

import ref_presses
import ref_replay
from ref_evict import keep_all, top


# ---- duo ------------------------------------------------------------------------------------
# DUO_STREAMING: the set of (layer, kv head) made streaming, set by the test from the
# calibration sequences (duo_split) before the replay.
DUO_STREAMING = set()


def duo_masses(Q, K, scale, sinks, recent, calib_q):
    """[Hkv]: mean over the group's query heads and the query positions t >= sinks + recent
    (the last calib_q of them) of the causal attention mass on [0, sinks) and [t - recent + 1, t].
    Q [H][n][D], K [Hkv][n][D] of one calibration sequence and layer; 1 without such positions."""
    H, n, _ = Q.shape
    Hkv = K.shape[0]
    G = H // Hkv
    first = sinks + recent
    if calib_q and n > calib_q:
        first = max(first, n - calib_q)
    out = []
    for g in range(Hkv):
        ms = []
        for h in range(g * G, (g + 1) * G):
            for t in range(first, n):
                s = scale * (K[g, :t + 1] @ Q[h, t])
                p = np.exp(s - s.max())
                p /= p.sum()
                j = np.arange(t + 1)
                ms.append(p[(j < sinks) | (j > t - recent)].sum())
        out.append(np.mean(ms) if ms else 1.0)
    return np.array(out)


def duo_split(mass, head_fraction, threshold):
    """mass [L][Hkv] -> the streaming (layer, kv head) pairs."""
    L, Hkv = mass.shape
    flat = mass.reshape(-1)
    if threshold > 0:
        pick = [i for i in range(flat.size) if flat[i] >= threshold]
    else:
        pick = top(flat, round(head_fraction * flat.size))      # Python's round: half to even
    return {(i // Hkv, i % Hkv) for i in pick}


def sel_duo(params, ctx, B):
    P = ctx["P"]
    if (ctx["layer"], ctx["g"]) not in DUO_STREAMING:
        return keep_all(P)
    s, r = int(params.get("sinks", 128)), int(params.get("recent", 256))
    return [j for j in range(P) if j < s or j >= P - r]


ref_replay.PREFILL_SELECT.update(duo=sel_duo)


# ---- finch ----------------------------------------------------------------------------------
# FINCH_QUESTION: the trace has /prefill_len (the window is the question after the prompt),
# set by the test for the trace it replays.
FINCH_QUESTION = False


def finch_scores(ctx, t0, t1, ncols, normalize, scale):
    """Mean over the group's query heads and window rows t in [t0, t1) of p(t, j) (times t with
    normalize) for keys j < ncols; p the causal softmax row of query t over keys [0, t]."""
    K = ctx["Kfull"]
    acc = np.zeros(ncols)
    for q in ctx["Qall"]:
        for t in range(t0, t1):
            s = scale * (K[:t + 1] @ q[t])
            p = np.exp(s - s.max())
            p /= p.sum()
            acc += p[:ncols] * (t if normalize else 1)
    return acc / ((t1 - t0) * len(ctx["Qall"]))


def finch_chunked(sc, chunk, share):
    """kvpress FinchPress with chunk_length: every chunk [a, a + chunk) of the score vector keeps
    its share(len) best entries (ties: lower position); the kept positions, ascending."""
    kept = []
    for a in range(0, len(sc), chunk):
        part = sc[a:a + chunk]
        kept += [a + i for i in top(part, share(len(part)))]
    return kept


def sel_finch(params, ctx, B):
    P, n = ctx["P"], ctx["n"]
    normalize = str(params.get("normalize", 1)) in ("1", "true")
    keep = params.get("_keep")
    kvpress = params.get("preset", "kvpress") == "kvpress" and keep is not None and 0 < keep < 1
    chunk = int(params.get("chunk", 0))
    if chunk and keep is not None and keep < 1:
        # chunk share: kvpress max(1, int(len (1 - compression_ratio))), kvtrace max(1, round(keep len))
        if params.get("preset", "kvpress") == "kvpress":
            share = lambda m: max(1, int(m * (1 - (1 - keep))))  # noqa: E731
        else:
            share = lambda m: max(1, math.floor(keep * m + 0.5))  # noqa: E731
    else:
        chunk = 0
    if FINCH_QUESTION:
        q = int(params.get("question", 0))
        w = min(q, n - P) if q else n - P
        sc = finch_scores(ctx, P, P + w, P, normalize, ctx["scale"])
        if chunk:
            # kvpress scores context + question, the question padded above every context score;
            # the question is seen exactly here, so only the context positions it kept count
            full = np.concatenate([sc, np.full(w, sc.max() + 1)]) if kvpress else sc
            kept = [j for j in finch_chunked(full, chunk, share) if j < P]
            return kept if kept else top(sc, 1)
        Bc = max(1, max(1, int((P + w) * (1 - (1 - keep)))) - w) if kvpress else B
        if Bc >= P:
            return keep_all(P)
        return top(sc, Bc)
    w = min(int(params.get("window", 16)), P)
    Bk = ref_presses.kvpress_budget(params, P, B)
    if Bk >= P and not chunk:
        return keep_all(P)
    sc = finch_scores(ctx, P - w, P, P - w, normalize, ctx["scale"])
    pad = sc.max() + 1 if P > w else 1.0
    full = np.concatenate([sc, np.full(w, pad)])
    if chunk:
        return finch_chunked(full, chunk, share)
    return top(full, Bk)


ref_replay.PREFILL_SELECT.update(finch=sel_finch)


# ---- per_layer ------------------------------------------------------------------------------

def per_layer_ratios(params):
    """The ratios of ratios=a/b/... or of file= (one per line, '#' comments, blank lines)."""
    if params.get("ratios", "none") != "none":
        return [float(x) for x in str(params["ratios"]).split("/")]
    out = []
    with open(params["file"]) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                out.append(float(line))
    return out


def per_layer_ratio(params, layer, L):
    r = per_layer_ratios(params)
    if params.get("fit", "exact") == "exact":
        assert len(r) == L
        return r[layer]
    if len(r) == 1 or L == 1:
        return r[0]
    x = layer * (len(r) - 1) / (L - 1)
    i = min(int(math.floor(x)), len(r) - 1)
    if i == len(r) - 1:
        return r[-1]
    return r[i] * (1 - (x - i)) + r[i + 1] * (x - i)


def sel_per_layer(params, ctx, B):
    """The inner press (its defaults) with keep = 1 - r_l: B_l = max(1, round((1 - r_l) P))."""
    P = ctx["P"]
    r = per_layer_ratio(params, ctx["layer"], ctx["n_layers"])
    Bl = min(P, max(1, int(math.floor((1 - r) * P + 0.5))))
    inner = {"_gqa": params.get("_gqa", "mean"), "_keep": 1 - r}
    return ref_replay.PREFILL_SELECT[params.get("press", "knorm")](inner, ctx, Bl)


ref_replay.PREFILL_SELECT.update(per_layer=sel_per_layer)
