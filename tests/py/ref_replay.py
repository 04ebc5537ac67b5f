#!/usr/bin/python3
"""Independent numpy reference of `kvreplay run` (docs/METHODS.md: protocols and metrics), written
from the spec's definitions — not a port of replay/engine.c. Float64 throughout, from the
trace's f16 values.

    make_trace(path, ...)     a small structured trace (h5py, traces/SCHEMA.md): sink token,
                              varied key norms, optional /prefill_len and /readout
    replay(path, mode, configs, decode=None)
        -> {name: {"per_seq": {seq: row}, "summary": row, "per_head": {(layer, head): row},
                   "per_pos": {offset: row}}}
                                  rows keyed like the CSV columns

configs: list of (name, strategy, params, budget) with budget ("keep", F) | ("budget", N) | None.
params {"reindex": 1} re-indexes positions within the cache (StreamingLLM) for any strategy.
Extension points (for h2o, snapkv, ...):
    PREFILL_SELECT[strategy](params, ctx, B) -> sorted kept prompt positions of kv head ctx.g
        ctx: Q [G][P][D] (the group's query heads), K/V [P][D], P, scale, layer, n_layers
    ONLINE_EVICT[strategy](params, state, ctx, cache, probs, B) -> positions to keep
        cache: positions held after inserting t (ascending); probs [G][len(cache)]: the
        attention of the group's queries at t over the cache; state: a dict per (config,
        sequence, layer, kv head) that persists across t.
    DECODE_SELECT[strategy](params, ctx, cache, q, h, t, B) -> the entries of cache that
        query head h sees at decode position t (Quest); ctx as PREFILL_SELECT's.
    Added for the eviction strategies: prefill ctx also has QA [H][P][D], KA and VA [HKV][P][D]
    (every head: AdaKV allocates across kv heads), Kfull [n][D] (kv head g, decode keys
    included: Quest pages them) and seq; online ctx has Q [G][n][D]. Prefill ctx["WO"]: the
    layer's read-out W_O [H*D][C] (None without a read-out; criticalkv).
Ties are broken by lower position everywhere (stable sorts on (-score, position)).
"""
import math

import h5py
import numpy as np

ECE_BINS = 15


def make_trace(path, S=3, T=96, L=2, H=4, HKV=2, D=16, C=32, V=50, seq_len=None,
               prefill_len=None, readout=True, seed=1):
    """Random but structured: token 0 is an attention sink (queries share a direction with
    key 0), keys have per-token norms spread over 1x-3x, values are random."""
    rng = np.random.default_rng(seed)
    seq_len = seq_len or [T] * S
    with h5py.File(path, "w") as f:
        a = dict(kvtrace_version=1, model="ref-replay-golden", architecture="llama", n_layers=L,
                 n_heads=H, n_kv_heads=HKV, head_dim=D, d_model=C, vocab_size=V,
                 attn_scale=1 / math.sqrt(D), attn_softcap=0.0, sliding_window=0,
                 positional="rope", rope_layout="rotate_half")
        for k, v in a.items():
            f.attrs[k] = v
        f.create_dataset("tokens", data=rng.integers(0, V, (S, T)).astype("<i4"))
        f.create_dataset("seq_len", data=np.array(seq_len, dtype="<i4"))
        if prefill_len is not None:
            f.create_dataset("prefill_len", data=np.array(prefill_len, dtype="<i4"))
        inv = 1.0 / 10000 ** (np.arange(0, D, 2) / D)
        ang = np.arange(T)[:, None] * inv[None, :]
        ang = np.concatenate([ang, ang], 1)
        f.create_dataset("rope/cos", data=np.cos(ang).astype("<f4"))
        f.create_dataset("rope/sin", data=np.sin(ang).astype("<f4"))
        for l in range(L):
            u = rng.standard_normal(D)
            u /= np.linalg.norm(u)
            q = rng.standard_normal((S, H, T, D)) + 2.5 * u
            k = rng.standard_normal((S, HKV, T, D)) * (1 + 2 * rng.random((S, HKV, T, 1)))
            k[:, :, 0, :] += 3.0 * u
            v = rng.standard_normal((S, HKV, T, D))
            for name, x in (("q", q), ("k", k), ("v", v)):
                f.create_dataset(f"layers/{l}/{name}", data=x.astype("<f2"), chunks=(1, 1, T, D))
        if readout:
            g = f.create_group("readout")
            g.attrs["norm_type"] = "rmsnorm"
            g.attrs["norm_eps"] = 1e-5
            hid = rng.standard_normal((S, T, C)).astype("<f2")
            w_u = (rng.standard_normal((V, C)) * 0.5).astype("<f2")
            nw = (1 + 0.1 * rng.standard_normal(C)).astype("<f2")
            g.create_dataset("hidden", data=hid, chunks=(1, T, C))
            g.create_dataset("w_u", data=w_u)
            g.create_dataset("norm_weight", data=nw)
            for l in range(L):
                g.create_dataset(f"w_o/{l}", data=(rng.standard_normal((H * D, C)) * 0.3).astype("<f2"))
            lg = logits_of(hid.astype(np.float64), nw.astype(np.float64), 1e-5, w_u.astype(np.float64))
            lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
            top = np.argsort(-lg, axis=-1, kind="stable")[..., :8]
            g.create_dataset("ref_lse", data=lse.astype("<f4"))
            g.create_dataset("ref_top_ids", data=top.astype("<i4"))
            g.create_dataset("ref_top_logits", data=np.take_along_axis(lg, top, -1).astype("<f4"))


def logits_of(h, w, eps, w_u):
    x = h / np.sqrt((h * h).mean(-1, keepdims=True) + eps) * w
    return x @ w_u.T


# ---- selection rules ------------------------------------------------------------------

def _order(score):
    """Positions by descending score, ties by lower position."""
    idx = np.arange(len(score))
    return np.lexsort((idx, -np.asarray(score, dtype=np.float64)))


def sel_full(params, ctx, B):
    return list(range(ctx["P"]))


def sel_streaming(params, ctx, B):
    P, s = ctx["P"], min(params.get("sinks", 4), B)
    return sorted(set(range(s)) | set(range(max(0, P - (B - s)), P)))


def sel_knorm(params, ctx, B):
    norms = np.linalg.norm(ctx["K"], axis=-1)
    return sorted(_order(-norms)[:B].tolist())


PREFILL_SELECT = {"full": sel_full, "streaming": sel_streaming, "knorm": sel_knorm}


def ev_full(params, state, ctx, cache, probs, B):
    return cache


def ev_streaming(params, state, ctx, cache, probs, B):
    s = min(params.get("sinks", 4), B)
    return cache[:s] + cache[len(cache) - (B - s):] if B > s else cache[:s]


def ev_knorm(params, state, ctx, cache, probs, B):
    norms = np.linalg.norm(ctx["Kall"][cache], axis=-1)
    keep = _order(-norms)[:B]
    return [cache[i] for i in sorted(keep.tolist())]


ONLINE_EVICT = {"full": ev_full, "streaming": ev_streaming, "knorm": ev_knorm}

DECODE_SELECT = {}

# DECODE_TIME[strategy](params, state, ctx, cache, probs, t, V) -> (positions kept, value rows or
# None): decode-time presses (decoding, dms, cam). The prompt is kept whole; after every decode
# query t (in both modes) the press sees the cache (positions, t last), the group's attention
# probabilities at t over it and the value rows V [n][D] the cache holds now; it returns the
# positions to keep and, when it rewrote values (cam merges), the new value rows. ctx: Kall,
# Vall [n][D], Qall [G][n][D], P, g, layer, seq, scale, G, and params["_canon"] if the caller set it.
DECODE_TIME = {}

# PREFILL_VALUES[strategy](params, ctx, B, kept) -> [n][D] value rows of kv head ctx.g with the
# kept entries' values replaced (merging folds evicted values into kept ones; keys unchanged).
PREFILL_VALUES = {}
# PREFILL_ENCODE[strategy](params, ctx, B, kept) -> ([n][D] key rows of kv head ctx.g as the
# encoded cache holds them, its bytes without the position indices) (think prunes key channels).
PREFILL_ENCODE = {}


# ---- replay ---------------------------------------------------------------------------

def resolve_budget(budget, full):
    if budget is None:
        return full
    kind, val = budget
    if kind == "keep":
        return min(full, max(1, int(math.floor(val * full + 0.5))))
    return int(val)


def reindex_keys(K, pos, t, cos, sin):
    """StreamingLLM positions within the cache: the key at cache slot e of m (query t in the
    last slot) moves from its text position to t - (m - 1 - e); rotate_half RoPE tables."""
    m, half = len(pos), cos.shape[1] // 2
    rot = lambda x: np.concatenate([-x[..., half:], x[..., :half]], -1)  # noqa: E731
    out = np.array(K[pos], dtype=np.float64)
    R = cos.shape[1]
    for e, j in enumerate(pos):
        to = t - (m - 1 - e)
        x = out[e, :R]
        x0 = x * cos[j] - rot(x) * sin[j]             # back to no rotation
        out[e, :R] = x0 * cos[to] + rot(x0) * sin[to]
    return out


def attend(q, K, V, pos, scale, keys=None):
    """Softmax attention of q over the rows pos of K/V: (probabilities, log-probs, output).
    keys: replacement key rows for pos (re-indexed keys), else K[pos]."""
    s = scale * ((K[pos] if keys is None else keys) @ q)
    m = s.max()
    lse = m + math.log(np.exp(s - m).sum())
    lp = s - lse
    p = np.exp(lp)
    return p, lp, p @ V[pos]


def _ece(bins):
    cnt, conf, acc = bins
    tot = cnt.sum()
    return float(np.abs(acc - conf).sum() / tot) if tot > 0 else 0.0


def replay(path, mode, configs, decode=None):
    with h5py.File(path, "r") as f:
        A = dict(f.attrs)
        S, T = f["tokens"].shape
        L, H, HKV, D = int(A["n_layers"]), int(A["n_heads"]), int(A["n_kv_heads"]), int(A["head_dim"])
        G, scale = H // HKV, float(A["attn_scale"])
        tokens, seq_len = f["tokens"][...], f["seq_len"][...]
        pre = f["prefill_len"][...] if "prefill_len" in f else None
        rcos = f["rope/cos"][...].astype(np.float64) if "rope" in f else None
        rsin = f["rope/sin"][...].astype(np.float64) if "rope" in f else None
        lay = [{n: f[f"layers/{l}/{n}"][...].astype(np.float64) for n in ("q", "k", "v")} for l in range(L)]
        ro = None
        if "readout" in f:
            g = f["readout"]
            ro = dict(hidden=g["hidden"][...].astype(np.float64), w_u=g["w_u"][...].astype(np.float64),
                      nw=g["norm_weight"][...].astype(np.float64), eps=float(g.attrs["norm_eps"]),
                      w_o=[g[f"w_o/{l}"][...].astype(np.float64) for l in range(L)])
    out = {}
    for name, strat, params, budget in configs:
        rows, tot = {}, None
        ph = {(l, h): dict(n=0, cos=0.0, ocos=0.0, orel=0.0, kl=0.0, rec=0.0, keep=0.0, budget=0.0)
              for l in range(L) for h in range(H)}
        pos = {}    # decode offset t - P -> sums over sequences, layers and heads (per_pos.csv)
        for s in range(S):
            n = int(seq_len[s])
            P = n - decode if decode else (int(pre[s]) if pre is not None else (0 if mode == "online" else None))
            E0 = P
            acc = dict(n=0, cos=0.0, ocos=0.0, orel=0.0, kl=0.0, rec=0.0, keep=0.0)
            kvb = fullb = 0.0
            dO = np.zeros((L, n - E0, H * D))
            for l in range(L):
                Q, K, Vv = lay[l]["q"][s], lay[l]["k"][s], lay[l]["v"][s]
                for g in range(HKV):
                    heads = range(g * G, (g + 1) * G)
                    Vc = Vv[g]          # value rows the compressed cache holds (PREFILL_VALUES)
                    Kc, enc_bytes = K[g], None    # key rows and bytes of an encoder (PREFILL_ENCODE)
                    vals = None     # decode-time presses: value rows per query position
                    if strat in DECODE_TIME:
                        B = n
                        ctx = dict(Kall=K[g], Vall=Vv[g], Qall=Q[g * G:(g + 1) * G], P=P, g=g, layer=l,
                                   seq=s, scale=scale, G=G)
                        state, cache, caches, vals, Vcur = {}, list(range(P)), {}, {}, Vv[g]
                        for t in range(P, n):
                            cache = cache + [t]
                            caches[t], vals[t] = list(cache), Vcur
                            probs = np.array([attend(Q[h, t], K[g], Vcur, cache, scale)[0] for h in heads])
                            cache, Vnew = DECODE_TIME[strat](params, state, ctx, cache, probs, t, Vcur)
                            cache = list(cache)
                            if Vnew is not None:
                                Vcur = Vnew
                    elif mode == "prefill":
                        B = resolve_budget(budget, P)
                        ctx = dict(Q=Q[g * G:(g + 1) * G, :P], K=K[g, :P], V=Vv[g, :P], P=P, g=g, layer=l,
                                   QA=Q[:, :P], KA=K[:, :P], VA=Vv[:, :P], Kfull=K[g], seq=s,
                                   n_layers=L, scale=scale, n=n, Qall=Q[g * G:(g + 1) * G], rope_cos=rcos,
                                   rope_sin=rsin, rope_layout=str(A.get("rope_layout", "rotate_half")))
                        ctx["WO"] = ro["w_o"][l] if ro is not None else None  # [H*D][C] (criticalkv)
                        ctx["Vfull"] = Vv[g]  # rows [T][D] (merging)
                        kept = list(PREFILL_SELECT[strat](params, ctx, B))
                        if strat in PREFILL_VALUES:
                            Vc = PREFILL_VALUES[strat](params, ctx, B, kept)
                        if strat in PREFILL_ENCODE:
                            Kc, enc_bytes = PREFILL_ENCODE[strat](params, ctx, B, kept)
                        caches = {t: kept + list(range(P, t + 1)) for t in range(P, n)}
                    else:
                        B = resolve_budget(budget, n)
                        state, cache, caches = {}, [], {}
                        ctx = dict(Kall=K[g], Vall=Vv[g], g=g, layer=l, n_layers=L, scale=scale,
                                   Q=Q[g * G:(g + 1) * G])
                        for t in range(n):
                            cache = cache + [t]
                            caches[t] = list(cache)
                            if len(cache) > B:
                                kk = reindex_keys(K[g], cache, t, rcos, rsin) if params.get("reindex") else None
                                probs = np.array([attend(Q[h, t], K[g], Vv[g], cache, scale, kk)[0] for h in heads])
                                cache = list(ONLINE_EVICT[strat](params, state, ctx, cache, probs, B))
                                assert len(cache) <= B
                    for t in range(E0, n):
                        c0 = caches[t]
                        for h in heads:
                            c = DECODE_SELECT[strat](params, ctx, c0, Q[h, t], h, t, B) if strat in DECODE_SELECT else c0
                            p, lp, o = attend(Q[h, t], K[g], Vv[g], list(range(t + 1)), scale)
                            kk = reindex_keys(K[g], c, t, rcos, rsin) if params.get("reindex") else None
                            pc, lpc, oc = attend(Q[h, t], Kc, Vc if vals is None else vals[t], c, scale, kk)
                            pt = np.zeros(t + 1)
                            pt[c] = pc
                            no, nc = np.linalg.norm(o), np.linalg.norm(oc)
                            m = dict(cos=float(p @ pt / (np.linalg.norm(p) * np.linalg.norm(pt))),
                                     kl=max(0.0, float((pc * (lpc - lp[c])).sum())), rec=float(p[c].sum()),
                                     ocos=float(o @ oc / (no * nc)), orel=float(np.linalg.norm(o - oc) / no),
                                     keep=len(c) / (t + 1), n=1)
                            for k2, x in m.items():
                                acc[k2] += x
                                ph[(l, h)][k2] += x
                            pp = pos.setdefault(t - E0, dict(n=0, kl=0.0, ocos=0.0, seqs=set(), ro_kl=0.0))
                            pp["n"] += 1
                            pp["kl"] += m["kl"]
                            pp["ocos"] += m["ocos"]
                            pp["seqs"].add(s)
                            ph[(l, h)]["budget"] += len(c)
                            dO[l, t - E0, h * D:(h + 1) * D] = oc - o
                    last = caches[n - 1]
                    kvb += (len(last) * 4 * D if enc_bytes is None else enc_bytes) + (4 * len(last) if len(last) < n else 0)
                    fullb += n * 4 * D
            row = dict(n_query=n - E0, keep_frac=acc["keep"] / acc["n"], kv_bytes=kvb, full_bytes=fullb,
                       ratio=fullb / kvb, attn_cos=acc["cos"] / acc["n"], out_cos=acc["ocos"] / acc["n"],
                       out_rel_err=acc["orel"] / acc["n"], attn_kl=acc["kl"] / acc["n"],
                       mass_recall=acc["rec"] / acc["n"])
            rsum = None
            if ro is not None:
                hs = ro["hidden"][s, E0:n]
                hc = hs + sum(dO[l] @ ro["w_o"][l] for l in range(L))
                lf = logits_of(hs, ro["nw"], ro["eps"], ro["w_u"])
                lc = logits_of(hc, ro["nw"], ro["eps"], ro["w_u"])
                lpf = lf - (np.log(np.exp(lf - lf.max(-1, keepdims=True)).sum(-1)) + lf.max(-1))[:, None]
                lpc = lc - (np.log(np.exp(lc - lc.max(-1, keepdims=True)).sum(-1)) + lc.max(-1))[:, None]
                kl = np.maximum(0, (np.exp(lpf) * (lpf - lpc)).sum(-1))
                for i in range(n - E0):
                    pos[i]["ro_kl"] += float(kl[i])
                af, ac = lf.argmax(-1), lc.argmax(-1)
                ys = [int(tokens[s, t + 1]) if t + 1 < n else -1 for t in range(E0, n)]
                ny = [i for i, y in enumerate(ys) if y >= 0]
                bins = {w: (np.zeros(ECE_BINS), np.zeros(ECE_BINS), np.zeros(ECE_BINS)) for w in ("f", "c")}
                for w, lp_, am in (("f", lpf, af), ("c", lpc, ac)):
                    for i in ny:
                        conf = float(np.exp(lp_[i].max()))
                        b = min(ECE_BINS - 1, int(math.floor(conf * ECE_BINS)))
                        bins[w][0][b] += 1
                        bins[w][1][b] += conf
                        bins[w][2][b] += float(am[i] == ys[i])
                rsum = dict(ro_n=len(ys), kl=float(kl.sum()), top1=float((af == ac).sum()), ny=len(ny),
                            nll_f=float(sum(-lpf[i, ys[i]] for i in ny)),
                            nll_c=float(sum(-lpc[i, ys[i]] for i in ny)), bins=bins)
                row.update(logit_kl=rsum["kl"] / rsum["ro_n"], nll_full=rsum["nll_f"] / len(ny),
                           nll_comp=rsum["nll_c"] / len(ny), top1_agree=rsum["top1"] / rsum["ro_n"],
                           ece_full=_ece(bins["f"]), ece_comp=_ece(bins["c"]))
            rows[s] = row
            # pooled sums
            if tot is None:
                tot = dict(acc=dict.fromkeys(acc, 0.0), kvb=0.0, fullb=0.0, nq=0, ro=None)
            for k2 in acc:
                tot["acc"][k2] += acc[k2]
            tot["kvb"] += kvb
            tot["fullb"] += fullb
            tot["nq"] += n - E0
            if rsum is not None:
                if tot["ro"] is None:
                    tot["ro"] = dict(ro_n=0, kl=0.0, top1=0.0, ny=0, nll_f=0.0, nll_c=0.0,
                                     bins={w: tuple(np.zeros(ECE_BINS) for _ in range(3)) for w in ("f", "c")})
                for k2 in ("ro_n", "kl", "top1", "ny", "nll_f", "nll_c"):
                    tot["ro"][k2] += rsum[k2]
                for w in ("f", "c"):
                    for i in range(3):
                        tot["ro"]["bins"][w][i][:] += rsum["bins"][w][i]
        a = tot["acc"]
        summ = dict(n_seq=S, n_query=tot["nq"], keep_frac=a["keep"] / a["n"], kv_bytes=tot["kvb"] / S,
                    full_bytes=tot["fullb"] / S, ratio=tot["fullb"] / tot["kvb"], attn_cos=a["cos"] / a["n"],
                    out_cos=a["ocos"] / a["n"], out_rel_err=a["orel"] / a["n"], attn_kl=a["kl"] / a["n"],
                    mass_recall=a["rec"] / a["n"])
        r = tot["ro"]
        if r is not None:
            summ.update(logit_kl=r["kl"] / r["ro_n"], nll_full=r["nll_f"] / r["ny"], nll_comp=r["nll_c"] / r["ny"],
                        ppl_full=math.exp(r["nll_f"] / r["ny"]), ppl_comp=math.exp(r["nll_c"] / r["ny"]),
                        top1_agree=r["top1"] / r["ro_n"], ece_full=_ece(r["bins"]["f"]), ece_comp=_ece(r["bins"]["c"]))
        per_head = {}
        for (l, h), a2 in ph.items():
            N = a2["n"]
            per_head[(l, h)] = dict(n_query=N, keep_frac=a2["keep"] / N, budget=a2["budget"] / N,
                                    attn_cos=a2["cos"] / N, out_cos=a2["ocos"] / N, out_rel_err=a2["orel"] / N,
                                    attn_kl=a2["kl"] / N, mass_recall=a2["rec"] / N)
        per_pos = {}
        for d, pp in pos.items():
            ns = len(pp["seqs"])
            per_pos[d] = dict(n_seq=ns, attn_kl=pp["kl"] / pp["n"], out_cos=pp["ocos"] / pp["n"])
            if ro is not None:
                per_pos[d]["logit_kl"] = pp["ro_kl"] / ns
        out[name] = dict(per_seq=rows, summary=summ, per_head=per_head, per_pos=per_pos)
    return out
