#!/usr/bin/python3
"""Independent numpy (float64) selections of the attention-scored eviction strategies, written
from the rules in the headers of replay/strategies/{h2o,tova,snapkv,pyramidkv,adakv,quest,cab}.c
and the references they cite — not ports of the C code. Importing this module registers them
in ref_replay's extension points (PREFILL_SELECT, ONLINE_EVICT, DECODE_SELECT).

params: the strategy's parameters as in a config string (numbers / names), plus "_gqa"
(mean | max | sum: the run's --gqa-reduce, default mean).
Ties: a stable order on (-score, index) everywhere (lower index kept).
"""
import math

import numpy as np

import ref_replay


def order(score):
    """Indices by descending score, ties by lower index."""
    score = np.asarray(score, dtype=np.float64)
    return np.lexsort((np.arange(len(score)), -score))


def top(score, k):
    """The k best indices, ascending."""
    return sorted(order(score)[:k].tolist()) if k > 0 else []


def gqa(x, how):
    x = np.asarray(x, dtype=np.float64)
    return {"mean": x.mean(0), "max": x.max(0), "sum": x.sum(0)}[how]


def causal_probs(q, K, rows, scale):
    """Softmax rows of queries q[r] (r in rows) over keys [0, r] of K; zeros after r.
    Returns [len(rows)][len(K)]."""
    out = np.zeros((len(rows), len(K)))
    for i, r in enumerate(rows):
        s = scale * (K[:r + 1] @ q[r])
        e = np.exp(s - s.max())
        out[i, :r + 1] = e / e.sum()
    return out


def half_up(x):
    return int(math.floor(x + 0.5))


def keep_all(P):
    return list(range(P))


# ---- H2O --------------------------------------------------------------------------------

def h2o_recent(params, B):
    return min(B, half_up(float(params.get("recent", 0.5)) * B))


def sel_h2o(params, ctx, B):
    P = ctx["P"]
    if B >= P:
        return keep_all(P)
    acc = [causal_probs(q, ctx["K"], range(P), ctx["scale"]).sum(0) for q in ctx["Q"]]
    score = gqa(acc, params.get("_gqa", "mean"))
    r = h2o_recent(params, B)
    return top(score[:P - r], B - r) + list(range(P - r, P))


def ev_h2o(params, state, ctx, cache, probs, B):
    t = cache[-1]
    G = len(ctx["Q"])
    if "acc" not in state:
        # nothing evicted before the first call: queries [0, t) saw their full prefix
        state["acc"] = {}
        full = [causal_probs(ctx["Q"][i], ctx["Kall"], range(t), ctx["scale"]).sum(0) if t else
                np.zeros(len(ctx["Kall"])) for i in range(G)]
        for j in cache:
            state["acc"][j] = np.array([full[i][j] for i in range(G)])
    acc = state["acc"]
    acc.setdefault(t, np.zeros(G))
    for e, j in enumerate(cache):
        acc[j] = acc[j] + probs[:, e]
    score = gqa(np.array([acc[j] for j in cache]).T, params.get("_gqa", "mean"))
    n, r = len(cache), h2o_recent(params, B)
    keep = [cache[i] for i in top(score[:n - r], B - r)] + cache[n - r:]
    for j in cache:
        if j not in keep:
            del acc[j]
    return keep


# ---- TOVA -------------------------------------------------------------------------------

def sel_tova(params, ctx, B):
    P = ctx["P"]
    if B >= P:
        return keep_all(P)
    rows = [causal_probs(q, ctx["K"], [P - 1], ctx["scale"])[0] for q in ctx["Q"]]
    score = gqa(rows, params.get("_gqa", "mean"))
    score[P - 1] = score.max()
    return top(score, B)


def ev_tova(params, state, ctx, cache, probs, B):
    score = gqa(probs, params.get("_gqa", "mean"))
    return [cache[i] for i in top(score, B)]


# ---- SnapKV -----------------------------------------------------------------------------

PRESETS = {
    "snapkv": dict(window=32, kernel=5, pool="avg", reduce="sum", gqa="run"),
    "kvpress": dict(window=64, kernel=5, pool="avg", reduce="mean", gqa="mean"),
    "factory": dict(window=8, kernel=7, pool="max", reduce="sum", gqa="run"),
}


def snap_opts(params, preset):
    o = dict(PRESETS[params.get("preset", preset)])
    for k in ("window", "kernel"):
        if int(params.get(k, -1)) >= 0:
            o[k] = int(params[k])
    for k in ("pool", "reduce", "gqa"):
        if params.get(k, "preset") != "preset":
            o[k] = params[k]
    if o["gqa"] == "run":
        o["gqa"] = params.get("_gqa", "mean")
    o["before"] = params.get("gqa_at", "after") == "before"
    return o


def pool1d(x, k, how):
    """torch avg_pool1d(count_include_pad) / max_pool1d, stride 1, padding k // 2."""
    h = k // 2
    if how == "avg":
        xp = np.concatenate([np.zeros(h), x, np.zeros(h)])
        return np.array([xp[j:j + k].sum() / k for j in range(len(x))])
    xp = np.concatenate([np.full(h, -np.inf), x, np.full(h, -np.inf)])
    return np.array([xp[j:j + k].max() for j in range(len(x))])


def snap_prefix_scores(o, Q, K, P, scale):
    """Scores of the keys [0, P - w) of one kv head (Q: the group's queries)."""
    w = o["window"]
    per = []
    for q in Q:
        a = causal_probs(q, K, range(P - w, P), scale)[:, :P - w]
        per.append(a.sum(0) if o["reduce"] == "sum" else a.mean(0))
    if o["before"]:
        return pool1d(gqa(per, o["gqa"]), o["kernel"], o["pool"])
    return gqa([pool1d(s, o["kernel"], o["pool"]) for s in per], o["gqa"])


def snap_keep(o, Q, K, P, scale, B):
    if B >= P:
        return keep_all(P)
    w = o["window"]
    assert w <= B, "window larger than the layer budget"
    return top(snap_prefix_scores(o, Q, K, P, scale), B - w) + list(range(P - w, P))


def sel_snapkv(params, ctx, B):
    return snap_keep(snap_opts(params, "snapkv"), ctx["Q"], ctx["K"], ctx["P"], ctx["scale"], B)


# ---- PyramidKV --------------------------------------------------------------------------

def pyramid_factory(C, w, beta, N, l, P):
    """KVCache-Factory PyramidKVCluster (integer arithmetic); entries kept incl. the window."""
    if P < C:
        return P
    if P < (C - w) * 2:
        return C
    min_num = (C - w) // beta
    max_num = (C - w) * 2 - min_num
    if max_num >= P - w:
        max_num = P - w
        min_num = (C - w) * 2 - max_num
    steps = (max_num - min_num) // (N - 1) if N > 1 else 0
    return max_num - l * steps + w


def pyramid_kvpress(B, w, beta, N, l, P):
    """kvpress PyramidKVPress.get_layer_budget (floats, Python's round)."""
    min_num = B / beta
    max_num = B * 2 - min_num
    if max_num >= P - w:
        max_num = P - w
        min_num = B * 2 - max_num
    if not (P >= max_num >= min_num >= w):
        return round(B)
    steps = (max_num - min_num) / (N - 1) if N > 1 else 0
    return round(max_num - l * steps)


def sel_pyramidkv(params, ctx, B):
    form = params.get("form", "factory")
    o = snap_opts(dict(params, preset=form), form)
    P, w, beta = ctx["P"], o["window"], int(params.get("beta", 20))
    if B >= P:
        return keep_all(P)
    assert w < B
    f = pyramid_kvpress if form == "kvpress" else pyramid_factory
    Bl = min(P, f(B, w, beta, ctx["n_layers"], ctx["layer"], P))
    return snap_keep(o, ctx["Q"], ctx["K"], P, ctx["scale"], Bl)


# ---- AdaKV ------------------------------------------------------------------------------

def sel_adakv(params, ctx, B):
    o = snap_opts(params, "kvpress")
    P, w = ctx["P"], o["window"]
    if B >= P:
        return keep_all(P)
    assert w < B
    QA, KA = ctx["QA"], ctx["KA"]
    Hkv, G = len(KA), len(QA) // len(KA)
    pre = np.array([snap_prefix_scores(o, QA[g * G:(g + 1) * G], KA[g], P, ctx["scale"]) for g in range(Hkv)])
    scores = np.concatenate([pre, np.full((Hkv, w), pre.max())], 1)
    n_safe = int(B * float(params.get("alpha", 0.2)))
    s = scores.copy()
    for g in range(Hkv):
        s[g, top(scores[g], n_safe)] = np.inf
    flat = top(s.reshape(-1), Hkv * B)
    g0 = ctx["g"]
    return [i - g0 * P for i in flat if g0 * P <= i < (g0 + 1) * P]


# ---- Quest ------------------------------------------------------------------------------

def sel_quest(params, ctx, B):
    return keep_all(ctx["P"])


def dsel_quest(params, ctx, cache, q, h, t, B):
    page, minp = int(params.get("page", 16)), int(params.get("min_pages", 1))
    K = ctx["Kfull"][cache]
    npg = (len(cache) + page - 1) // page
    bounds = []
    for p in range(npg):
        kp = K[p * page:(p + 1) * page]
        bounds.append(float(np.maximum(q * kp.min(0), q * kp.max(0)).sum()))
    keep = top(bounds, min(npg, max(minp, B // page)))
    return [cache[e] for p in keep for e in range(p * page, min(len(cache), (p + 1) * page))]


# ---- CAB --------------------------------------------------------------------------------

def sel_cab(params, ctx, B):
    P = ctx["P"]
    if B >= P:
        return keep_all(P)
    sinks, lf, bf = int(params.get("sinks", 4)), float(params.get("local", 0.3)), float(params.get("bridges", 0.2))
    s = min(sinks, B)
    R = B - s
    nl = min(R, half_up(lf * R))
    nb = min(half_up(bf * R), R - nl)
    ni = R - nl - nb
    how = params.get("_gqa", "mean")
    probs = [causal_probs(q, ctx["K"], range(P), ctx["scale"]) for q in ctx["Q"]]
    taken = set(range(s)) | set(range(P - nl, P))
    free = [j for j in range(P) if j not in taken]
    imp_score = gqa([p.sum(0) for p in probs], how)
    imp = [free[i] for i in top(imp_score[free], ni)]
    taken |= set(imp)
    free = [j for j in range(P) if j not in taken]
    br_score = gqa([p[imp].sum(0) for p in probs], how)
    br = [free[i] for i in top(br_score[free], nb)]
    return sorted(taken | set(br))


ref_replay.PREFILL_SELECT.update(h2o=sel_h2o, tova=sel_tova, snapkv=sel_snapkv, pyramidkv=sel_pyramidkv,
                                 adakv=sel_adakv, quest=sel_quest, cab=sel_cab)
ref_replay.ONLINE_EVICT.update(h2o=ev_h2o, tova=ev_tova)
ref_replay.DECODE_SELECT.update(quest=dsel_quest)


# ---- structural and two-stage presses (simlayerkv, chunkkv, criticalkv) -------------------
# Written from the rules in the headers of replay/strategies/{simlayerkv,chunkkv,criticalkv}.c
# and kvpress's presses (SimLayerKVPress, ChunkKVPress, CriticalKVPress).

def _layer_lazy(params, ctx):
    """SimLayerKV: mean attention of the last n_last queries (all heads) on initial + recent."""
    P, QA, KA = ctx["P"], ctx["QA"], ctx["KA"]
    nl, nr, ni = int(params.get("n_last", 1)), int(params.get("n_recent", 1024)), int(params.get("n_initial", 4))
    if P < ni + nr or P <= nl:
        return False
    H, G = len(QA), len(QA) // len(KA)
    a = np.mean([causal_probs(QA[h], KA[h // G], range(P - nl, P), ctx["scale"]) for h in range(H)], axis=(0, 1))
    return a[:ni].sum() + a[P - nr:].sum() > float(params.get("threshold", 0.9))


def sel_simlayerkv(params, ctx, B):
    P = ctx["P"]
    if not _layer_lazy(params, ctx):
        return keep_all(P)
    nl, nr, ni = int(params.get("n_last", 1)), int(params.get("n_recent", 1024)), int(params.get("n_initial", 4))
    return sorted(set(range(ni)) | set(range(P - (nr - nl), P)))


ref_replay.PREFILL_SELECT.update(simlayerkv=sel_simlayerkv)


def _kvp_scores(params, ctx):
    """kvpress SnapKVPress.score: prefix scores per kv head, window padded with their maximum."""
    o = snap_opts(params, "kvpress")
    P, w, QA, KA = ctx["P"], o["window"], ctx["QA"], ctx["KA"]
    Hkv, G = len(KA), len(QA) // len(KA)
    pre = np.array([snap_prefix_scores(o, QA[g * G:(g + 1) * G], KA[g], P, ctx["scale"]) for g in range(Hkv)])
    return np.concatenate([pre, np.full((Hkv, w), pre.max())], 1)


def sel_chunkkv(params, ctx, B):
    P, L = ctx["P"], int(params.get("chunk", 20))
    if B >= P:
        return keep_all(P)
    s = _kvp_scores(params, ctx)
    if P < L:
        return top(s[ctx["g"]], B)
    tot = s.sum(0)
    bounds = [(a, min(a + L, P)) for a in range(0, P, L)]
    cs = [tot[a:b].mean() for a, b in bounds]
    n = max(1, (len(bounds) * B) // P)
    return [j for c in top(cs, n) for j in range(*bounds[c])]


def sel_criticalkv(params, ctx, B):
    P = ctx["P"]
    if B >= P:
        return keep_all(P)
    g, D = ctx["g"], ctx["K"].shape[1]
    G = len(ctx["QA"]) // len(ctx["KA"])
    s = _kvp_scores(params, ctx)[g]
    first = top(s, int(math.floor(float(params.get("first_stage_ratio", 0.5)) * B)))
    WO = ctx["WO"]
    u = np.mean([np.abs(ctx["V"] @ WO[h * D:(h + 1) * D]).sum(1) for h in range(g * G, (g + 1) * G)], 0)
    s2 = (s + float(params.get("epsilon", 1e-4))) * u
    s2[first] = np.inf
    return top(s2, B)


ref_replay.PREFILL_SELECT.update(chunkkv=sel_chunkkv, criticalkv=sel_criticalkv)


def sel_merging(params, ctx, B):
    P = ctx["P"]
    return keep_all(P) if B >= P else top(_kvp_scores(params, ctx)[ctx["g"]], B)


def val_merging(params, ctx, B, kept):
    """kvpress MergingPress: each evicted value folds into its most key-cosine-similar kept entry."""
    K, V = ctx["Kfull"], np.array(ctx["Vfull"])
    P, eps, thr = ctx["P"], 1e-6, float(params.get("similarity_threshold", 0))
    if B >= P:
        return V
    unit = lambda x: x / max(np.linalg.norm(x), eps)  # noqa: E731
    acc, wsum = {t: np.zeros(V.shape[1]) for t in kept}, dict.fromkeys(kept, 0.0)
    for e in range(P):
        if e in wsum:
            continue
        sims = [float(unit(K[e]) @ unit(K[t])) for t in kept]
        i = int(np.argmax(sims))                      # first maximum: the lower position
        if sims[i] < thr:
            continue
        t = kept[i]
        ne, nt = np.linalg.norm(ctx["Vfull"][e]), np.linalg.norm(ctx["Vfull"][t])
        w = max(sims[i], 0.0) * ne / (ne + nt + eps)
        acc[t] += w * ctx["Vfull"][e]
        wsum[t] += w
    for t in kept:
        if wsum[t] > 0:
            V[t] = (ctx["Vfull"][t] + acc[t]) / (1 + wsum[t])
    return V


ref_replay.PREFILL_SELECT.update(merging=sel_merging)
ref_replay.PREFILL_VALUES.update(merging=val_merging)


def enc_think(params, ctx, B, kept):
    """ThinK: zero the floor(key_ratio * D) key channels of the kept prompt entries with the
    lowest mean_window(q^2) * mean_entries(k^2); bytes of a channel-pruned store + its mask."""
    K = np.array(ctx["Kfull"])
    n, D = ctx["n"], K.shape[1]
    P, g = ctx["P"], ctx["g"]
    G = len(ctx["QA"]) // len(ctx["KA"])
    w, npr = int(params.get("window", 32)), int(math.floor(float(params.get("key_ratio", 0)) * D))
    full = (len(kept) + n - P) * 4 * D
    if npr == 0 or not kept:
        return K, full
    qn = np.mean([ctx["QA"][h][P - w:P] ** 2 for h in range(g * G, (g + 1) * G)], axis=(0, 1))
    kn = (K[kept] ** 2).mean(0)
    low = order(-(qn * kn))[:npr]         # lowest scores, ties: lower channel
    for j in kept:
        K[j, low] = 0.0
    return K, full - len(kept) * 2 * npr + math.ceil(D / 8)


def _compose(sel, enc):
    """'EVICT + think': the eviction's kept entries, then the encoder on them (params["_enc"])."""
    return (lambda params, ctx, B: sel(params, ctx, B),
            lambda params, ctx, B, kept: enc(params["_enc"], ctx, B, kept))


ref_replay.PREFILL_SELECT.update(think=lambda params, ctx, B: keep_all(ctx["P"]))
ref_replay.PREFILL_ENCODE.update(think=enc_think)
_s, _e = _compose(sel_snapkv, enc_think)
ref_replay.PREFILL_SELECT["snapkv+think"] = _s
ref_replay.PREFILL_ENCODE["snapkv+think"] = _e


def sel_criticaladakv(params, ctx, B):
    """kvpress CriticalAdaKVPress, as the reference marks entries: the dtype's maximum."""
    P = ctx["P"]
    if B >= P:
        return keep_all(P)
    MAX = np.finfo(np.float64).max
    s = _kvp_scores(params, ctx)
    Hkv, G, D = len(ctx["KA"]), len(ctx["QA"]) // len(ctx["KA"]), ctx["K"].shape[1]
    alpha, fsr, eps = (float(params.get(k, d)) for k, d in (("alpha", 0.2), ("first_stage_ratio", 0.5), ("epsilon", 1e-4)))
    n_safe = int(B * alpha)
    for g in range(Hkv):
        s[g, top(s[g], n_safe)] = MAX
    flat = top(s.reshape(-1), Hkv * B)
    budgets = [sum(1 for i in flat if i // P == g) for g in range(Hkv)]
    g = ctx["g"]
    sg = s[g].copy()
    sg[top(sg, int(budgets[g] * fsr))] = MAX
    WO, V = ctx["WO"], ctx["Vfull"][:P]
    u = np.mean([np.abs(V @ WO[h * D:(h + 1) * D]).sum(1) for h in range(g * G, (g + 1) * G)], 0)
    with np.errstate(over="ignore"):
        s2 = (sg + eps) * u
    return top(s2, budgets[g])


ref_replay.PREFILL_SELECT.update(criticaladakv=sel_criticaladakv)


def sel_chunk(params, ctx, B):
    """kvpress ChunkPress over SnapKVPress: each chunk scored on its own keys and window."""
    P, L = ctx["P"], int(params.get("chunk", 1024))
    o = snap_opts(params, "kvpress")
    w, QA, KA, g = o["window"], ctx["QA"], ctx["KA"], ctx["g"]
    Hkv, G = len(KA), len(QA) // len(KA)
    kept = []
    for a in range(0, P, L):
        Lc = min(L, P - a)
        nk = Lc if B >= P else max(1, (Lc * B) // P)
        if nk >= Lc:
            kept += list(range(a, a + Lc))
            continue
        if Lc <= w:
            kept += list(range(a + Lc - nk, a + Lc))
            continue
        pre = np.array([snap_prefix_scores(o, [q[a:a + Lc] for q in QA[h * G:(h + 1) * G]], KA[h][a:a + Lc], Lc,
                                           ctx["scale"]) for h in range(Hkv)])
        s = np.concatenate([pre[g], np.full(w, pre.max())])
        kept += [a + j for j in top(s, nk)]
    return sorted(kept)


ref_replay.PREFILL_SELECT.update(chunk=sel_chunk)
