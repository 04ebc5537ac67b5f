"""torch_ref: the replay of a small sweep written as a straightforward PyTorch CPU program,
the speed and agreement reference for `kvreplay run` in `make bench`.

    python3 bench/torch_ref.py TRACE --mode prefill --decode N | --mode online
        --strategy 'CONFIG' [--strategy ...] --threads N -o SUMMARY.csv

Strategies (a subset of replay/strategies/, docs/STRATEGIES.md; one config per --strategy):
  full
  streaming sinks=4 keep=F | budget=B     sinks + most recent (StreamingLLM)
  snapkv keep=F|budget=B window=32 kernel=5 pool=avg|max   (prefill only; SnapKV: the
          window's attention summed over its queries, pooled per query head (avg counts
          the zero padding, max ignores it), GQA mean, top B - w (ties: lower position)
          plus the window)
  h2o keep=F|budget=B [recent=F]          (online only; accumulated attention, heavy +
          recent, H2O real-drop: token t is appended, query t attends to the B kept
          entries + t, its probabilities are added to the scores, then the lowest score
          outside the recent r = floor(F * B + 0.5) tokens is evicted; F defaults to 0.5;
          ties keep the lower position)
  quant kbits=4 vbits=4 group=32 residual=128   (KIVI: keys per channel in groups of
          `group` tokens, flushed in blocks of `residual`; values per token in groups of
          `group` channels, the newest `residual` tokens in full precision; asymmetric
          min-max, round to nearest; constant groups exact)
Budgets: keep=F is a fraction of the prompt (prefill) or of the sequence (online),
B = max(1, round(F * n)).

Semantics follow docs/METHODS.md §3-§6: layer-local teacher-forced replay; GQA: one kept set per kv
head, scores reduced over the group's query heads by their mean; per query head and
evaluated position: attn_cos, out_cos, out_rel_err, attn_kl = KL(p~ || p) from logits,
mass_recall, kv_mse_k/v (quant only: the cache the last position sees, every entry
counted, pooled: sum of squared errors / (entries x D); relative: / sum of squares of the
originals) and the direct-path read-out (logit_kl, nll_full/comp, top1_agree, ECE with 15
bins). Evaluated positions: [P, n) in prefill mode, [0, n) online. Summary: means pooled
over every evaluated (layer, head, position) of every sequence (read-out: positions).

Written for clarity, with whole [H, T, T] attention matrices per layer: O(T^2) memory.
"""
import argparse
import csv
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "capture"))
from pydeps import require  # noqa: E402

require("torch_ref", ("numpy", "h5py", "torch"))
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

METRICS = ["keep_frac", "kv_mse_k", "kv_mse_v", "kv_rel_mse_k", "kv_rel_mse_v", "attn_cos",
           "out_cos", "out_rel_err", "attn_kl", "mass_recall", "logit_kl", "nll_full",
           "nll_comp", "top1_agree", "ece_full", "ece_comp"]


def parse_config(text):
    parts = text.split()
    if not parts:
        raise ValueError("empty configuration")
    name, kv = parts[0], {}
    for p in parts[1:]:
        k, eq, v = p.partition("=")
        if not eq:
            raise ValueError(f"'{text}': '{p}' is not key=value")
        kv[k] = v
    return name, kv


def budget_of(kv, n):
    if "budget" in kv:
        return int(kv["budget"])
    if "keep" in kv:
        return max(1, int(math.floor(float(kv["keep"]) * n + 0.5)))
    raise ValueError("needs keep= or budget=")


# ---- kept sets: keep [G, T, T] bool, key j held for query t (within the causal range) ----

def causal(T):
    return torch.ones(T, T, dtype=torch.bool).tril()


def prompt_mask(name, kv, P, B, G, grp, width, window_probs, where):
    """The prompt entries a static prefill cache of B < P entries keeps: bool [G, width]
    (width >= P). window_probs(w) gives SnapKV's attention of the last w prompt rows on the
    prefix, softmax summed over those rows: [H, P - w]. where ends the unsupported message."""
    mask = torch.zeros(G, width, dtype=torch.bool)
    if name == "streaming":
        sinks = min(int(kv.get("sinks", 4)), B)
        mask[:, :sinks] = True
        if B > sinks:
            mask[:, P - (B - sinks):P] = True
    elif name == "snapkv":
        w = min(int(kv.get("window", 32)), P)
        ker = int(kv.get("kernel", 5))
        pool = kv.get("pool", "avg")
        mask[:, P - w:P] = True
        if B > w and P - w > 0:
            p = window_probs(w)                                 # [H, P-w]
            if ker > 1:
                pad = ker // 2
                f = torch.nn.functional.max_pool1d if pool == "max" else torch.nn.functional.avg_pool1d
                p = f(p.unsqueeze(1), ker, 1, pad).squeeze(1)
            p = p.view(G, grp, -1).mean(1)                      # [G, P-w] (GQA mean)
            order = torch.sort(p, dim=-1, descending=True, stable=True).indices[:, :B - w]
            mask.scatter_(1, order, True)
    else:
        raise ValueError(f"strategy '{name}' is not supported {where}")
    return mask


def causal_keep(name, kv, s_full, grp, n):
    """The full cache's keep [G, T, T] and the budget over n entries, None when the
    configuration keeps all n (full, or a budget of at least n)."""
    H, T, _ = s_full.shape
    keep = causal(T).unsqueeze(0).repeat(H // grp, 1, 1)
    if name == "full":
        return keep, None
    B = budget_of(kv, n)
    return keep, (B if B < n else None)


def keep_prefill(name, kv, s_full, grp, P, n):
    """s_full [H, T, T] logits (masked -inf); returns keep [G, T, T]."""
    keep, B = causal_keep(name, kv, s_full, grp, P)
    if B is None:
        return keep
    H, T, _ = s_full.shape
    G = H // grp

    def window_probs(w):
        s = s_full[:, P - w:P, :]                               # [H, w, T]
        return torch.softmax(s, dim=-1)[:, :, :P - w].sum(1)

    prompt = prompt_mask(name, kv, P, B, G, grp, T, window_probs, "in prefill mode here")
    keep[:, P:, :P] = prompt[:, None, :P]
    return keep


def keep_online(name, kv, s_full, grp, n):
    keep, B = causal_keep(name, kv, s_full, grp, n)
    if B is None:
        return keep
    H, T, _ = s_full.shape
    G = H // grp
    if name == "streaming":
        sinks = min(int(kv.get("sinks", 4)), B)
        recent = B - sinks
        j = torch.arange(T)
        for t in range(B + 1, T):      # B kept entries + token t itself
            keep[:, t, :] = (j < sinks) | ((j >= t - recent) & (j <= t))
        return keep
    if name == "h2o":
        recent = min(B, int(math.floor(float(kv.get("recent", 0.5)) * B + 0.5)))
        member = torch.zeros(G, T, dtype=torch.bool)
        acc = torch.zeros(G, T, dtype=torch.float64)
        big = torch.finfo(torch.float64).max
        for t in range(n):
            member[:, t] = True                             # append t, attend, then evict
            keep[:, t, :] = member
            s = s_full[:, t, :].masked_fill(~member.repeat_interleave(grp, 0), -math.inf)
            p = torch.softmax(s, dim=-1)                    # [H, T]
            acc += p.view(G, grp, T).mean(1).double()
            if t + 1 > B:                                   # evict one, outside the recent window
                cand = member.clone()
                cand[:, max(0, t + 1 - recent):] = False
                score = torch.where(cand, acc, torch.full_like(acc, big))
                # ties: the lower position is kept, so the highest tied position goes
                victim = T - 1 - torch.argmin(torch.flip(score, [-1]), dim=-1)
                member[torch.arange(G), victim] = False
        return keep
    raise ValueError(f"strategy '{name}' is not supported in online mode here")


# ---- KIVI quantisation ------------------------------------------------------------------

def quant_minmax(x, bits, dim):
    mn = x.amin(dim=dim, keepdim=True)
    mx = x.amax(dim=dim, keepdim=True)
    scale = (mx - mn) / (2 ** bits - 1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round((x - mn) / safe), 0, 2 ** bits - 1)
    return torch.where(scale > 0, q * scale + mn, x)


def kivi(k, v, kv):
    """k, v [G, T, D] -> dequantised kq, vq (every token as if quantised)."""
    kb, vb = int(kv.get("kbits", 4)), int(kv.get("vbits", 4))
    g = int(kv.get("group", 32))
    G, T, D = k.shape
    Tp = (T + g - 1) // g * g
    kp = torch.nn.functional.pad(k, (0, 0, 0, Tp - T), value=0.0)
    kq = quant_minmax(kp.view(G, Tp // g, g, D), kb, 2).view(G, Tp, D)[:, :T]
    vq = quant_minmax(v.reshape(G, T, D // g, g), vb, 3).view(G, T, D)
    return kq, vq


def quant_counts(T, kv):
    """nk[t], nv[t]: tokens held quantised when query t has been inserted."""
    R = int(kv.get("residual", 128))
    n = torch.arange(1, T + 1)
    nk = (n // R) * R if R > 0 else n
    nv = torch.clamp(n - R, min=0)
    return nk, nv


# ---- the replay ---------------------------------------------------------------------------

def norm(x, rd):
    if rd["rmsnorm"]:
        y = x * torch.rsqrt((x.double() ** 2).mean(-1, keepdim=True) + rd["eps"]).float()
    else:
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + rd["eps"])
    y = y * rd["w"]
    if rd["b"] is not None:
        y = y + rd["b"]
    return y


def logits_of(h, rd):
    z = norm(h, rd) @ rd["w_u"].T
    if rd["b_u"] is not None:
        z = z + rd["b_u"]
    if rd["softcap"] > 0:
        z = rd["softcap"] * torch.tanh(z / rd["softcap"])
    return z


def ece(conf, correct):
    conf, correct = np.asarray(conf, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if conf.size == 0:
        return 0.0
    b = np.minimum((conf * 15).astype(int), 14)
    tot = 0.0
    for i in range(15):
        m = b == i
        if m.any():
            tot += abs(correct[m].sum() - conf[m].sum())
    return tot / conf.size


def main():
    ap = argparse.ArgumentParser(description="PyTorch reference replay (bench only)")
    ap.add_argument("trace")
    ap.add_argument("--mode", choices=["prefill", "online"], required=True)
    ap.add_argument("--decode", type=int, default=0)
    ap.add_argument("--strategy", action="append", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t_start = time.time()
    configs = [parse_config(c) for c in a.strategy]

    f = h5py.File(a.trace, "r")
    at = f.attrs
    L, H, G, D = int(at["n_layers"]), int(at["n_heads"]), int(at["n_kv_heads"]), int(at["head_dim"])
    grp = H // G
    scale, softcap = float(at["attn_scale"]), float(at["attn_softcap"])
    if int(at.get("sliding_window", 0)) != 0:
        sys.exit("torch_ref: sliding windows are not supported")
    tokens = f["tokens"][()]
    seq_len = f["seq_len"][()]
    S, T = tokens.shape
    has_ro = "readout" in f
    rd = None
    if has_ro:
        g = f["readout"]
        rd = {"rmsnorm": g.attrs["norm_type"] in ("rmsnorm", b"rmsnorm"), "eps": float(g.attrs["norm_eps"]),
              "softcap": float(g.attrs.get("final_logit_softcap", 0.0)),
              "w": torch.from_numpy(g["norm_weight"][()].astype(np.float32)),
              "b": torch.from_numpy(g["norm_bias"][()].astype(np.float32)) if "norm_bias" in g else None,
              "w_u": torch.from_numpy(g["w_u"][()].astype(np.float32)),
              "b_u": torch.from_numpy(g["b_u"][()].astype(np.float32)) if "b_u" in g else None,
              "w_o": [torch.from_numpy(g["w_o"][str(l)][()].astype(np.float32)) for l in range(L)]}

    nc = len(configs)
    sums = [{m: 0.0 for m in METRICS} for _ in range(nc)]
    cnt_att = [0] * nc          # (layer, head, position) count
    cnt_keep = [0] * nc         # (layer, kv head, position) count
    cnt_ro = [0] * nc           # positions with a known next token
    mse_cnt = [0] * nc          # (kv head, entry, channel) count of the last caches
    ece_acc = [([], [], [], []) for _ in range(nc)]
    causal_T = causal(T)

    for s in range(S):
        n = int(seq_len[s])
        if a.mode == "prefill":
            P = n - a.decode
            if a.decode <= 0 or P <= 0:
                sys.exit(f"torch_ref: --decode {a.decode} outside sequence {s} of length {n}")
            ev = torch.arange(P, n)
        else:
            P = 0
            ev = torch.arange(0, n)
        delta = [torch.zeros(n, H * D) for _ in range(nc)]
        for l in range(L):
            lay = f["layers"][str(l)]
            q = torch.from_numpy(lay["q"][s].astype(np.float32))[:, :n]   # [H, n, D]
            k = torch.from_numpy(lay["k"][s].astype(np.float32))[:, :n]   # [G, n, D]
            v = torch.from_numpy(lay["v"][s].astype(np.float32))[:, :n]
            kk, vv = k.repeat_interleave(grp, 0), v.repeat_interleave(grp, 0)
            cm = causal_T[:n, :n]

            def logits(kx):
                z = scale * (q @ kx.transpose(1, 2))
                if softcap > 0:
                    z = softcap * torch.tanh(z / softcap)
                return z
            s_full = logits(kk).masked_fill(~cm, -math.inf)          # [H, n, n]
            lse = torch.logsumexp(s_full, -1)                        # [H, n]
            p = torch.exp(s_full - lse[..., None])
            o = p @ vv                                               # [H, n, D]

            for ci, (name, kv) in enumerate(configs):
                if name == "quant":
                    keep = cm.unsqueeze(0).repeat(G, 1, 1)
                    kq, vq = kivi(k, v, kv)
                    nk, nv = quant_counts(n, kv)
                    jj = torch.arange(n)
                    mk = (jj[None, :] < nk[:, None])                  # [n, n] key j quantised at t
                    mv = (jj[None, :] < nv[:, None])
                    s_c = torch.where(mk, logits(kq.repeat_interleave(grp, 0)), s_full)
                    s_c = s_c.masked_fill(~cm, -math.inf)
                    lse_c = torch.logsumexp(s_c, -1)
                    p_c = torch.exp(s_c - lse_c[..., None])
                    o_c = (p_c * mv) @ vq.repeat_interleave(grp, 0) + (p_c * ~mv) @ vv
                    # reconstruction error of the cache the last position sees: every entry
                    # j < n (fp16 residual ones count with error 0), pooled sums
                    last_k, last_v = int(nk[n - 1]), int(nv[n - 1])
                    st = sums[ci]
                    st["kv_mse_k"] += ((kq[:, :last_k] - k[:, :last_k]).double() ** 2).sum().item()
                    st["kv_mse_v"] += ((vq[:, :last_v] - v[:, :last_v]).double() ** 2).sum().item()
                    st["kv_rel_mse_k"] += (k.double() ** 2).sum().item()    # denominators
                    st["kv_rel_mse_v"] += (v.double() ** 2).sum().item()
                    mse_cnt[ci] += G * n * D
                else:
                    if a.mode == "prefill":
                        keep = keep_prefill(name, kv, s_full, grp, P, n)
                    else:
                        keep = keep_online(name, kv, s_full, grp, n)
                    keep = keep[:, :n, :n]
                    kh = keep.repeat_interleave(grp, 0)
                    s_c = s_full.masked_fill(~kh, -math.inf)
                    lse_c = torch.logsumexp(s_c, -1)
                    p_c = torch.exp(s_c - lse_c[..., None])
                    o_c = p_c @ vv
                # metrics at the evaluated positions, per query head
                pe, pce, oe, oce = p[:, ev], p_c[:, ev], o[:, ev], o_c[:, ev]
                attn_cos = (pe * pce).sum(-1) / (pe.norm(dim=-1) * pce.norm(dim=-1))
                out_cos = (oe * oce).sum(-1) / (oe.norm(dim=-1) * oce.norm(dim=-1))
                out_rel = (oe - oce).norm(dim=-1) / oe.norm(dim=-1)
                logp_c = s_c[:, ev] - lse_c[:, ev, None]
                logp = s_full[:, ev] - lse[:, ev, None]
                kl = torch.where(pce > 0, pce * (logp_c - logp), torch.zeros_like(pce)).sum(-1)
                if name == "quant":
                    recall = torch.ones_like(kl)
                else:
                    recall = (pe * kh[:, ev]).sum(-1)
                kf = keep[:, ev].sum(-1).float() / (ev + 1).float()          # [G, |ev|]
                st = sums[ci]
                st["attn_cos"] += attn_cos.double().sum().item()
                st["out_cos"] += out_cos.double().sum().item()
                st["out_rel_err"] += out_rel.double().sum().item()
                st["attn_kl"] += kl.double().sum().item()
                st["mass_recall"] += recall.double().sum().item()
                st["keep_frac"] += kf.double().sum().item()
                cnt_att[ci] += H * len(ev)
                cnt_keep[ci] += G * len(ev)
                if has_ro:
                    d = (o_c - o).permute(1, 0, 2).reshape(n, H * D)
                    delta[ci] += d @ rd["w_o"][l]
        if has_ro:
            h = torch.from_numpy(f["readout"]["hidden"][s].astype(np.float32))[:n]
            hv = h[ev]
            lf = logits_of(hv, rd).double()
            lpf = torch.log_softmax(lf, -1)
            for ci in range(nc):
                lc = logits_of(hv + delta[ci][ev], rd).double()
                lpc = torch.log_softmax(lc, -1)
                klv = (lpf.exp() * (lpf - lpc)).sum(-1).clamp(min=0)
                top = (lf.argmax(-1) == lc.argmax(-1)).double()
                st = sums[ci]
                st["logit_kl"] += klv.sum().item()
                st["top1_agree"] += top.sum().item()
                y = torch.tensor([int(tokens[s, t + 1]) if t + 1 < n else -1 for t in ev.tolist()])
                known = y >= 0
                yk = y.clamp(min=0)
                nf = -lpf.gather(1, yk[:, None]).squeeze(1)
                ncmp = -lpc.gather(1, yk[:, None]).squeeze(1)
                st["nll_full"] += nf[known].sum().item()
                st["nll_comp"] += ncmp[known].sum().item()
                cnt_ro[ci] += int(known.sum())
                cf, cc = lpf.exp().max(-1), lpc.exp().max(-1)
                e = ece_acc[ci]
                e[0].extend(cf.values[known].tolist())
                e[1].extend((cf.indices == y)[known].tolist())
                e[2].extend(cc.values[known].tolist())
                e[3].extend((cc.indices == y)[known].tolist())

    n_eval = [cnt_att[ci] // (L * H) if L * H else 0 for ci in range(nc)]
    with open(a.output, "w", newline="") as fo:
        w = csv.writer(fo)
        w.writerow(["config_id", "config"] + METRICS)
        for ci, (name, kv) in enumerate(configs):
            st, row = sums[ci], []
            for m in METRICS:
                if m in ("kv_mse_k", "kv_mse_v"):
                    val = st[m] / mse_cnt[ci] if name == "quant" else None
                elif m in ("kv_rel_mse_k", "kv_rel_mse_v"):
                    val = st["kv_mse_" + m[-1]] / st[m] if name == "quant" else None
                elif m == "keep_frac":
                    val = st[m] / cnt_keep[ci]
                elif m in ("logit_kl", "top1_agree"):
                    val = st[m] / n_eval[ci] if has_ro else None
                elif m in ("nll_full", "nll_comp"):
                    val = st[m] / cnt_ro[ci] if has_ro and cnt_ro[ci] else None
                elif m in ("ece_full", "ece_comp"):
                    e = ece_acc[ci]
                    val = (ece(e[0], e[1]) if m == "ece_full" else ece(e[2], e[3])) if has_ro else None
                else:
                    val = st[m] / cnt_att[ci]
                row.append("" if val is None else f"{val:.9g}")
            w.writerow([ci, a.strategy[ci]] + row)
    print(f"torch_ref: {nc} configs, S={S}, L={L}, H={H}, T={T}, {a.threads} threads, "
          f"{time.time() - t_start:.2f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
