"""Independent float64 numpy references of the decode-time presses (decoding, dms, cam), written
from their rules (the file headers of replay/strategies/decoding.c, dms.c, cam.c and decoding.h),
registered in ref_replay.DECODE_TIME. Importing this module registers them.

The cam reference draws its Bernoulli variables from the same splitmix64 stream the rule names:
its seed is recomputed here from the configuration's canonical string (params["_canon"], from
summary.csv), the sequence, the layer, the kv head and the step position.
"""
import math

import numpy as np

import ref_replay

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def sm_next(state):
    """splitmix64: (new state, output)."""
    state = (state + GOLDEN) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return state, z ^ (z >> 31)


def mix64(a, b):
    return sm_next(a ^ ((b * GOLDEN) & M64))[1]


def fnv1a(text):
    h = 0xcbf29ce484222325
    for ch in text.encode():
        h = ((h ^ ch) * 0x100000001b3) & M64
    return h


class Stream:
    """Uniforms in [0, 1) of the (configuration, sequence, layer, kv head, step) stream."""

    def __init__(self, canon, seq, layer, g, t):
        seed = mix64(mix64(fnv1a(canon), seq), layer)
        s1 = sm_next(seed ^ ((0xD1B54A32D192ED03 * (g + 1)) & M64))[1]
        self.s = sm_next(s1 ^ ((GOLDEN * (t + 1)) & M64))[1]

    def uniform(self):
        self.s, z = sm_next(self.s)
        return (z >> 11) * (1.0 / 9007199254740992.0)


# ---- scorers (higher kept) ---------------------------------------------------------------

def score(params, ctx, cache, probs, t):
    kind = params.get("scorer", "knorm")
    K = ctx["Kall"][cache]
    norms = np.linalg.norm(K, axis=-1)
    if kind == "knorm":
        return -norms
    if kind == "keydiff":
        a = (K / norms[:, None]).mean(0)
        return -(K @ a) / (norms * np.linalg.norm(a))
    if kind == "tova":
        sc = probs.mean(0)
        sc[-1] = sc.max()
        return sc
    # snapkv over the live cache
    w, ker = int(params.get("window", 64)), int(params.get("kernel", 5))
    n = len(cache)
    w = min(w, n)
    m = n - w
    if m == 0:
        return np.zeros(n)
    pos = np.array(cache)
    per_head = []
    for Qh in ctx["Qall"]:
        rows = []
        for r in range(max(0, t - int(params.get("window", 64)) + 1), t + 1):
            vis = pos <= r
            lg = ctx["scale"] * (K[vis] @ Qh[r])
            p = np.zeros(n)
            p[vis] = np.exp(lg - lg.max()) / np.exp(lg - lg.max()).sum()
            rows.append(p[:m])
        mean = np.mean(rows, axis=0)
        per_head.append(np.convolve(mean, np.ones(ker) / ker, mode="same"))
    sc = np.mean(per_head, axis=0)
    return np.concatenate([sc, np.full(w, sc.max())])


def top(sc, cache, k):
    """The k best positions of cache by score (ties: lower position), ascending."""
    return sorted(cache[i] for i in ref_replay._order(sc)[:k])


# ---- the presses -------------------------------------------------------------------------

def dt_decoding(params, state, ctx, cache, probs, t, V):
    interval, target = int(params.get("interval", 512)), int(params.get("target", 2048))
    state["steps"] = state.get("steps", 0) + 1
    if state["steps"] < interval:
        return cache, None
    state["steps"] = 0
    if len(cache) <= target:
        return cache, None
    return top(score(params, ctx, cache, probs, t), cache, target), None


def dt_dms(params, state, ctx, cache, probs, t, V):
    thr, sliding = float(params.get("threshold", 0)), int(params.get("sliding", 128))
    interval = int(params.get("interval", 1))
    params.setdefault("scorer", "tova")
    state["steps"] = state.get("steps", 0) + 1
    if state["steps"] < interval:
        return cache, None
    state["steps"] = 0
    limit = t + 1 - sliding
    judged = state.get("judged", 0)
    if limit <= judged:
        return cache, None
    sc = score(params, ctx, cache, probs, t)
    state["judged"] = limit
    return [p for p, x in zip(cache, sc) if not (judged <= p < limit and x < thr)], None


def dt_cam(params, state, ctx, cache, probs, t, V):
    interval, target = int(params.get("interval", 512)), int(params.get("target", 2048))
    mb = int(params.get("merge_budget", 32))
    A = state.setdefault("A", {})
    for p, x in zip(cache, probs.mean(0)):
        A[p] = A.get(p, 0.0) + x
    state["steps"] = state.get("steps", 0) + 1
    if state["steps"] < interval or len(cache) <= target:
        return cache, None
    k, state["steps"] = state["steps"], 0
    sc = score(params, ctx, cache, probs, t)
    s_of = dict(zip(cache, sc))
    kept = top(sc, cache, target)
    ev = [p for p in cache if p not in set(kept)]
    cand = sorted(sorted(ev, key=lambda p: (-s_of[p], -p))[:k])
    rng = Stream(params["_canon"], ctx["seq"], ctx["layer"], ctx["g"], t)
    Vn = np.array(V, dtype=np.float64)
    for m in cand:
        win = [p for p in kept if p > m][:mb]
        u = rng.uniform()
        if not win:
            continue
        mean = sum(A[p] for p in win) / len(win)
        with np.errstate(divide="ignore", invalid="ignore"):
            pr = np.float64(A[m]) / np.float64(mean)
        pr = 0.0 if math.isnan(pr) else min(1.0, max(0.0, float(pr)))
        if u < pr:
            for p in win:
                Vn[p] += V[m] / len(win)
    for p in ev:
        del A[p]
    return kept, Vn


ref_replay.DECODE_TIME.update(decoding=dt_decoding, dms=dt_dms, cam=dt_cam)
