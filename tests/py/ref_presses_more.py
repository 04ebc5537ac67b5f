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
