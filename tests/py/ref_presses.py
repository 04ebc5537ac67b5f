#!/usr/bin/python3
"""Independent numpy (float64) selections of the kvpress-catalogue scorers (observed_attention,
keydiff, cur, lagkv, expected_attention, noncausal_attn, leverage, compactor, cap, qfilter), written from the rules in the headers of
replay/strategies/<name>.c and the kvpress presses they cite — not ports of the C code.
Importing this module registers them in ref_replay.PREFILL_SELECT.

Every one is "score the prompt's entries, keep the B best" (kvpress ScorerPress); ties go to
the lower position (ref_evict.top).
"""
import math

import numpy as np

import ref_replay
from ref_evict import causal_probs, keep_all, top


def _b(params, k, d):
    return str(params.get(k, d)) in ("1", "true")


def kvpress_budget(params, P, B):
    """kvpress keeps int(q_len * (1 - compression_ratio)) with compression_ratio = 1 - keep
    (preset=kvpress, the default, when the configuration gives keep=); otherwise B."""
    keep = params.get("_keep")
    if params.get("preset", "kvpress") != "kvpress" or keep is None or not 0 < keep < 1:
        return B
    return max(1, int(P * (1 - (1 - keep))))


# ---- observed_attention -------------------------------------------------------------------

def sel_observed_attention(params, ctx, B):
    P = ctx["P"]
    B = kvpress_budget(params, ctx["P"], B)
    if B >= P:
        return keep_all(P)
    seen = P - np.arange(P)          # queries t >= j see key j
    score = np.mean([causal_probs(q, ctx["K"], range(P), ctx["scale"]).sum(0) / seen for q in ctx["Q"]], 0)
    return top(score, B)


ref_replay.PREFILL_SELECT.update(observed_attention=sel_observed_attention)


# ---- keydiff ------------------------------------------------------------------------------

def _keydiff_scores(K):
    """-cos(k_j, mean of the unit keys) for the rows of K (zero vectors score 0)."""
    nk = np.linalg.norm(K, axis=1)
    unit = np.divide(K, nk[:, None], out=np.zeros_like(K), where=nk[:, None] > 0)
    a = unit.mean(0)
    na = np.linalg.norm(a)
    den = nk * na
    return np.divide(-(K @ a), den, out=np.zeros(len(K)), where=den > 0)


def sel_keydiff(params, ctx, B):
    P, K = ctx["P"], ctx["K"]
    B = kvpress_budget(params, ctx["P"], B)
    if B >= P:
        return keep_all(P)
    blk = int(params.get("block", 0))
    blk = P if blk == 0 or blk > P else blk
    kept = []
    for i in range(0, P, blk):
        cand = kept + list(range(i, min(i + blk, P)))
        if len(cand) <= B:
            kept = cand
            continue
        kept = [cand[j] for j in top(_keydiff_scores(K[cand]), B)]
    return kept


ref_replay.PREFILL_SELECT.update(keydiff=sel_keydiff)


# ---- cur ----------------------------------------------------------------------------------

def _local(x, w):
    if w == 0:
        return x
    out = np.zeros_like(x)
    for a in range(0, len(x), w):
        s = x[a:a + w].sum()
        out[a:a + w] = x[a:a + w] / s if s > 0 else 0.0
    return out


def sel_cur(params, ctx, B):
    P = ctx["P"]
    B = kvpress_budget(params, ctx["P"], B)
    if B >= P:
        return keep_all(P)
    w, sinks = int(params.get("window", 16)), int(params.get("sinks", 4))
    k2 = _local((ctx["K"] ** 2).sum(1), w)
    v2 = _local((ctx["V"] ** 2).sum(1), w)
    s = {"kv_product": k2 * v2, "key": k2, "value": v2, "kv_avg": (k2 + v2) / 2}[params.get("leverage", "kv_product")]
    s = s / s.sum()
    s[:sinks] = 1.0
    return top(s, B)


ref_replay.PREFILL_SELECT.update(cur=sel_cur)


# ---- lagkv --------------------------------------------------------------------------------

def _lag_states(X, lag):
    """[chunks - 1][lag] softmaxed std of each scored chunk's rows scaled by the next chunk."""
    ch = X.reshape(-1, lag, X.shape[1])
    out = []
    for c in range(len(ch) - 1):
        lo, hi = ch[c + 1].min(0), ch[c + 1].max(0)
        r = hi - lo
        y = np.divide(ch[c] - lo, r, out=np.zeros_like(ch[c]), where=r > 0)
        sd = y.std(1, ddof=1)
        e = np.exp(sd - sd.max())
        out.append(e / e.sum())
    return np.array(out)


def sel_lagkv(params, ctx, B):
    P = ctx["P"]
    B = kvpress_budget(params, ctx["P"], B)
    if B >= P:
        return keep_all(P)
    s, lag, cross = min(int(params.get("sinks", 4)), P), int(params.get("lag", 128)), _b(params, "cross", 0)
    if P < s + 2 * lag:
        score = np.array([1.0 if j < s else (j - s) / (P - s) for j in range(P)])
        return top(score, B)
    end = s + (P - s) // lag * lag
    sc = (_lag_states(ctx["K"][s:end], lag) + _lag_states(ctx["V"][s:end], lag)) / 2
    if not cross:
        sc = np.array([np.argsort(np.argsort(row, kind="stable"), kind="stable") / lag for row in sc])
    score = np.ones(P)
    score[s:end - lag] = sc.reshape(-1)
    return top(score, B)


ref_replay.PREFILL_SELECT.update(lagkv=sel_lagkv)


# ---- expected_attention -------------------------------------------------------------------

def _rot(c, s, pairs, D):
    """The D x D RoPE matrix of one position from per-pair cos / sin (identity elsewhere)."""
    M = np.eye(D)
    for i, (a, b) in enumerate(pairs):
        M[a, a], M[a, b], M[b, a], M[b, b] = c[i], -s[i], s[i], c[i]
    return M


def sel_expected_attention(params, ctx, B):
    P, D = ctx["P"], ctx["K"].shape[1]
    B = kvpress_budget(params, ctx["P"], B)
    if B >= P:
        return keep_all(P)
    s = min(int(params.get("sinks", 4)), P)
    F = int(params.get("future", 512))
    cov, vnorm = _b(params, "cov", 1), _b(params, "vnorm", 1)
    eps = float(params.get("epsilon", 0))
    cosT, sinT, n = ctx["rope_cos"], ctx["rope_sin"], ctx["n"]
    R = cosT.shape[1]
    pairs = [(2 * i, 2 * i + 1) for i in range(R // 2)] if ctx["rope_layout"] == "interleaved" else \
            [(i, i + R // 2) for i in range(R // 2)]
    cols = [a for a, _ in pairs]
    # per-pair frequency from the tables (row 1, refined on row n - 1), amplitude from row 0
    th = np.arctan2(sinT[1, cols], cosT[1, cols])
    m = n - 1
    ang = np.arctan2(sinT[m, cols], cosT[m, cols])
    th = (ang + 2 * np.pi * np.round((th * m - ang) / (2 * np.pi))) / m
    amp = cosT[0, cols]
    Rbar = np.mean([_rot(amp * np.cos(th * p), amp * np.sin(th * p), pairs, D) for p in range(P, P + F)], 0)
    Kk, V = ctx["K"][s:], ctx["V"][s:]
    per = []
    for q in ctx["Qall"]:
        pre = np.array([np.linalg.solve(_rot(cosT[t, cols], sinT[t, cols], pairs, D), q[t]) for t in range(s, P)])
        mu = pre.mean(0)
        z = Kk @ (Rbar @ mu) / math.sqrt(D)
        if cov:
            S = (pre - mu).T @ (pre - mu) / (P - s)
            S2 = Rbar @ S @ Rbar.T
            z = z + np.einsum("jd,de,je->j", Kk, S2, Kk) / (2 * D)
        e = np.exp(z - z.max())
        per.append(e / e.sum())
    sc = np.mean(per, 0)
    if vnorm:
        sc = (sc + eps) * np.linalg.norm(V, axis=1)
    score = np.concatenate([np.full(s, sc.max() + 1), sc])
    return top(score, B)


ref_replay.PREFILL_SELECT.update(expected_attention=sel_expected_attention)


# ---- kvpress's Compactor family: noncausal_attn, leverage, compactor -----------------------
# Their scores are z-normalised over every kv head and position together, so each selection
# scores all kv heads of the layer (ctx QA, KA, VA) and ranks its own head ctx["g"].

def _znorm(x):
    sd = x.std(ddof=1) if x.size > 1 else 0.0
    return (x - x.mean()) / max(sd, 1e-6)


def _noncausal_raw(QA, KA, VA, s0, s1, chunk):
    """[Hkv][s1 - s0]: chunk-local non-causal attention (unscaled) received, group mean, times
    ||v||, 3-wide moving average with zero padding."""
    Hkv = KA.shape[0]
    G = QA.shape[0] // Hkv
    S = s1 - s0
    out = np.zeros((Hkv, S))
    for g in range(Hkv):
        a = np.zeros(S)
        for h in range(g * G, (g + 1) * G):
            for c in range(s0, s1, chunk):
                e = min(c + chunk, s1)
                z = QA[h, c:e] @ KA[g, c:e].T
                p = np.exp(z - z.max(1, keepdims=True))
                a[c - s0:e - s0] += (p / p.sum(1, keepdims=True)).sum(0)
        x = np.pad(a / G * np.linalg.norm(VA[g, s0:s1], axis=1), 1)
        out[g] = (x[:-2] + x[1:-1] + x[2:]) / 3
    return out


def sel_noncausal_attn(params, ctx, B):
    P = ctx["P"]
    B = kvpress_budget(params, P, B)
    if B >= P:
        return keep_all(P)
    sc = _znorm(_noncausal_raw(ctx["QA"], ctx["KA"], ctx["VA"], 0, P, int(params.get("chunk", 256))))
    return top(sc[ctx["g"]], B)


ref_replay.PREFILL_SELECT.update(noncausal_attn=sel_noncausal_attn)


def _pairs(ctx, D):
    R = ctx["rope_cos"].shape[1]
    return [(2 * i, 2 * i + 1) for i in range(R // 2)] if ctx["rope_layout"] == "interleaved" else \
           [(i, i + R // 2) for i in range(R // 2)]


def _leverage_raw(ctx, s0, s1):
    """[Hkv][s1 - s0]: exact leverage of the centred pre-RoPE keys, jitter 0.01 (solve, not
    Cholesky: the same numbers up to rounding)."""
    KA = ctx["KA"]
    D = KA.shape[2]
    pairs = _pairs(ctx, D)
    cols = [a for a, _ in pairs]
    rots = [_rot(ctx["rope_cos"][t, cols], ctx["rope_sin"][t, cols], pairs, D) for t in range(s0, s1)]
    out = []
    for g in range(KA.shape[0]):
        X = np.array([np.linalg.solve(rots[t - s0], KA[g, t]) for t in range(s0, s1)])
        X = X - X.mean(0)
        A = X.T @ X + 1e-2 * np.eye(D)
        out.append(np.maximum(np.einsum("id,id->i", X, np.linalg.solve(A, X.T).T), 0))
    return np.array(out)


def sel_leverage(params, ctx, B):
    P = ctx["P"]
    B = kvpress_budget(params, P, B)
    if B >= P:
        return keep_all(P)
    return top(_znorm(_leverage_raw(ctx, 0, P))[ctx["g"]], B)


ref_replay.PREFILL_SELECT.update(leverage=sel_leverage)


def sel_compactor(params, ctx, B):
    P = ctx["P"]
    B0, B = B, kvpress_budget(params, P, B)
    if B >= P:
        return keep_all(P)
    s = min(int(params.get("sink_start", 8)), P)
    e = min(int(params.get("sink_end", 4)), P - s)
    b = float(params.get("blending", -1))
    if b < 0:
        b = 1 - params["_keep"] if params.get("_keep") else 1 - B0 / P
    lev = _znorm(_leverage_raw(ctx, s, P - e))
    att = _znorm(_noncausal_raw(ctx["QA"], ctx["KA"], ctx["VA"], s, P - e, int(params.get("chunk", 256))))
    x = b * lev + att
    sc = np.concatenate([np.full(s, x.max() + 1), x[ctx["g"]], np.full(e, x.max() + 1)])
    return top(sc, B)


ref_replay.PREFILL_SELECT.update(compactor=sel_compactor)


# ---- cap ----------------------------------------------------------------------------------

def _rbar(ctx, P, F, D):
    """The RoPE rotation averaged over positions [P, P + F) (expected_attention's), per-pair
    frequency and amplitude read from the tables."""
    cosT, sinT, n = ctx["rope_cos"], ctx["rope_sin"], ctx["n"]
    pairs = _pairs(ctx, D)
    cols = [a for a, _ in pairs]
    th = np.arctan2(sinT[1, cols], cosT[1, cols])
    ang = np.arctan2(sinT[n - 1, cols], cosT[n - 1, cols])
    th = (ang + 2 * np.pi * np.round((th * (n - 1) - ang) / (2 * np.pi))) / (n - 1)
    amp = cosT[0, cols]
    return np.mean([_rot(amp * np.cos(th * p), amp * np.sin(th * p), pairs, D) for p in range(P, P + F)], 0)


def sel_cap(params, ctx, B):
    P = ctx["P"]
    B = kvpress_budget(params, P, B)
    if B >= P:
        return keep_all(P)
    s = min(int(params.get("sinks", 4)), P)
    tau, eps = float(params.get("tau", 5)), float(params.get("epsilon", 1e-6))
    QA, KA, VA = ctx["QA"], ctx["KA"], ctx["VA"]
    Hkv, D = KA.shape[0], KA.shape[2]
    G = QA.shape[0] // Hkv
    Rb = _rbar(ctx, P, int(params.get("future", 512)), D)
    pairs = _pairs(ctx, D)
    cols = [a for a, _ in pairs]
    rots = [_rot(ctx["rope_cos"][t, cols], ctx["rope_sin"][t, cols], pairs, D) for t in range(P)]
    sc = np.zeros((Hkv, P - s))
    for g in range(Hkv):
        K, V = KA[g, s:], VA[g, s:]
        for h in range(g * G, (g + 1) * G):
            mu = Rb @ np.mean([np.linalg.solve(rots[t], QA[h, t]) for t in range(s, P)], 0)
            c = np.clip(K @ mu / np.linalg.norm(mu) / np.linalg.norm(K, axis=1), -1, 1)
            w = np.exp(tau * c - (tau * c).max())
            A = np.eye(D) + (V * (w + eps)[:, None]).T @ V
            sc[g] += w * np.einsum("jd,jd->j", V, np.linalg.solve(A, V.T).T) / G
    full = np.concatenate([np.full(s, sc.max() + 1), sc[ctx["g"]]])
    return top(full, B)


ref_replay.PREFILL_SELECT.update(cap=sel_cap)


# ---- qfilter ------------------------------------------------------------------------------
# QFILTER[(layer, kv head)] = the filter f, set by the test from the calibration sequences'
# queries (qfilter_filters) before the replay.
QFILTER = {}


def qfilter_filters(Q, G):
    """f = -u per kv head: u the leading right singular vector of the stacked queries Q
    [G heads][rows][D] of the group, signed so that the queries' mean projection is positive."""
    out = []
    for g in range(Q.shape[0] // G):
        X = Q[g * G:(g + 1) * G].reshape(-1, Q.shape[2])
        u = np.linalg.svd(X, full_matrices=False)[2][0]
        out.append(-u if (X @ u).sum() >= 0 else u)
    return out


def sel_qfilter(params, ctx, B):
    P = ctx["P"]
    B = kvpress_budget(params, P, B)
    if B >= P:
        return keep_all(P)
    return top(-(ctx["K"] @ QFILTER[(ctx["layer"], ctx["g"])]), B)


ref_replay.PREFILL_SELECT.update(qfilter=sel_qfilter)
