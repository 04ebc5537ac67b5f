"""torch_rows: the PyTorch peer of `kvreplay run --mode prefill` that a fair competitor would
write: it computes attention for the evaluated query rows only, in blocks of rows, and
shares the full logits of a block between the configurations.

    python3 bench/torch_rows.py TRACE [--mode prefill] --decode N --strategy 'CONFIG'
        [--strategy ...] [--threads N] [--block R] -o SUMMARY.csv

Prefill protocol only (the evaluated positions are the last N of each sequence, P = n - N
the prompt). Strategies and their semantics are those of bench/torch_ref.py in prefill
mode: full, streaming, snapkv, quant (KIVI); the metrics and the output columns are the
same (bench/agree.py compares either with kvreplay's summary.csv).

What makes it a fair peer, against torch_ref.py's whole [H, T, T] matrices:
  - only the rows [P, n) are computed (and SnapKV's observation window, w rows over the
    prompt), in blocks of R rows: memory O(H R T), time O(H N T D);
  - GQA without copying keys: the group's query heads are stacked as rows of one matmul
    against their kv head's keys;
  - eviction reuses the block's full logits: a static prefill cache keeps the same prompt
    entries for every evaluated row, so the kept logits are a gather of columns of the full
    ones, and P.V runs over the kept entries only;
  - only the q rows it needs are read from the trace.
Quantisation changes the logits of the quantised keys, so it computes a second Q.K^T over
the block (and P.V split into the quantised and the full-precision values).
"""
import argparse
import csv
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "capture"))
from pydeps import require  # noqa: E402

require("torch_rows", ("numpy", "h5py", "torch"))
sys.path.insert(0, HERE)
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch_ref as ref  # noqa: E402  (configuration parsing, KIVI, read-out, ECE, columns)

SUPPORTED = ("full", "streaming", "snapkv", "quant")


def prompt_keep(name, kv, P, G, grp, q_win, k):
    """The prompt entries a static prefill cache keeps, per kv head: LongTensor [G, B]
    (sorted), or None when the whole prompt is kept. q_win [H, w_max, D] holds the queries
    of the last w_max prompt rows (SnapKV's observation window), k [G, >= P, D]."""
    if name == "full":
        return None
    B = ref.budget_of(kv, P)
    if B >= P:
        return None

    def window_probs(w):
        H, D = q_win.shape[0], q_win.shape[2]
        qw = q_win[:, q_win.shape[1] - w:]                                   # rows [P - w, P)
        s = (qw.reshape(G, grp * w, D) @ k[:, :P].transpose(1, 2)).view(H, w, P)
        s = q_scale(s)
        rows = torch.arange(P - w, P)
        s = s.masked_fill(torch.arange(P)[None, :] > rows[:, None], -math.inf)
        return torch.softmax(s, dim=-1)[:, :, :P - w].sum(1)           # [H, P - w]

    keep = ref.prompt_mask(name, kv, P, B, G, grp, P, window_probs, "here")
    return torch.stack([torch.nonzero(keep[g]).squeeze(1) for g in range(G)])


ATTN = {}       # scale and softcap of the trace, set in main()


def q_scale(z):
    z = ATTN["scale"] * z
    if ATTN["softcap"] > 0:
        z = ATTN["softcap"] * torch.tanh(z / ATTN["softcap"])
    return z


def block_logits(qb, k, G, grp):
    """qb [H, R, D], k [G, n, D] -> logits [G, grp * R, n] (rows: head-major within the group)."""
    H, R, D = qb.shape
    return q_scale(qb.reshape(G, grp * R, D) @ k.transpose(1, 2))


class Acc:
    """Per-configuration sums over evaluated (layer, head, position)."""

    def __init__(self):
        self.s = {m: 0.0 for m in ref.METRICS}
        self.att = 0
        self.keep = 0
        self.ro = 0
        self.mse = 0
        self.ece = ([], [], [], [])


def add_metrics(acc, cos, kl, recall, o, o_c, kf, H, R):
    """One block's rows of one configuration: cos(p~, p), KL(p~ || p) and the mass recall
    per row [G, grp*R]; o, o_c [G, grp*R, D]; kf [G, R] the kept fraction per kv head."""
    st = acc.s
    st["attn_cos"] += cos.double().sum().item()
    on, ocn = o.norm(dim=-1), o_c.norm(dim=-1)
    st["out_cos"] += ((o * o_c).sum(-1) / (on * ocn)).double().sum().item()
    st["out_rel_err"] += ((o - o_c).norm(dim=-1) / on).double().sum().item()
    st["attn_kl"] += kl.double().sum().item()
    st["mass_recall"] += recall.double().sum().item()
    st["keep_frac"] += kf.double().sum().item()
    acc.att += H * R
    acc.keep += kf.numel()


def main():
    ap = argparse.ArgumentParser(description="PyTorch peer of kvreplay run --mode prefill: "
                                 "evaluated rows only, blocked (bench only)")
    ap.add_argument("trace")
    ap.add_argument("--mode", choices=["prefill"], default="prefill",
                    help="prefill only (accepted for the command line of bench/torch_ref.py)")
    ap.add_argument("--decode", type=int, required=True)
    ap.add_argument("--strategy", action="append", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--block", type=int, default=64, help="query rows per block (default 64)")
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t_start = time.time()
    configs = [ref.parse_config(c) for c in a.strategy]
    for name, _ in configs:
        if name not in SUPPORTED:
            sys.exit(f"torch_rows: strategy '{name}' is not supported (only {', '.join(SUPPORTED)})")
    if a.block < 1:
        sys.exit("torch_rows: --block must be >= 1")

    f = h5py.File(a.trace, "r")
    at = f.attrs
    L, H, G, D = int(at["n_layers"]), int(at["n_heads"]), int(at["n_kv_heads"]), int(at["head_dim"])
    grp = H // G
    ATTN["scale"], ATTN["softcap"] = float(at["attn_scale"]), float(at["attn_softcap"])
    if int(at.get("sliding_window", 0)) != 0:
        sys.exit("torch_rows: sliding windows are not supported")
    tokens = f["tokens"][()]
    seq_len = f["seq_len"][()]
    S = tokens.shape[0]
    rd = None
    if "readout" in f:
        g = f["readout"]
        rd = {"rmsnorm": g.attrs["norm_type"] in ("rmsnorm", b"rmsnorm"), "eps": float(g.attrs["norm_eps"]),
              "softcap": float(g.attrs.get("final_logit_softcap", 0.0)),
              "w": torch.from_numpy(g["norm_weight"][()].astype(np.float32)),
              "b": torch.from_numpy(g["norm_bias"][()].astype(np.float32)) if "norm_bias" in g else None,
              "w_u": torch.from_numpy(g["w_u"][()].astype(np.float32)),
              "b_u": torch.from_numpy(g["b_u"][()].astype(np.float32)) if "b_u" in g else None,
              "w_o": [torch.from_numpy(g["w_o"][str(l)][()].astype(np.float32)) for l in range(L)]}
    wmax = max([int(kv.get("window", 32)) for name, kv in configs if name == "snapkv"] + [0])

    nc = len(configs)
    accs = [Acc() for _ in range(nc)]
    for s in range(S):
        n = int(seq_len[s])
        P = n - a.decode
        if a.decode <= 0 or P <= 0:
            sys.exit(f"torch_rows: --decode {a.decode} outside sequence {s} of length {n}")
        N = n - P
        w0 = max(0, P - wmax)
        delta = [torch.zeros(N, H * D) for _ in range(nc)]
        for l in range(L):
            lay = f["layers"][str(l)]
            qr = torch.from_numpy(lay["q"][s, :, w0:n].astype(np.float32))     # [H, n - w0, D]
            k = torch.from_numpy(lay["k"][s, :, :n].astype(np.float32))        # [G, n, D]
            v = torch.from_numpy(lay["v"][s, :, :n].astype(np.float32))
            q_win, q_ev = qr[:, :P - w0], qr[:, P - w0:]
            kept, kivi = [], []
            for ci, (name, kv) in enumerate(configs):
                if name == "quant":
                    kq, vq = ref.kivi(k, v, kv)
                    nk, nv = ref.quant_counts(n, kv)
                    kivi.append((kq, vq, nk, nv))
                    kept.append(None)
                    acc_quant_mse(accs[ci], k, v, kq, vq, int(nk[n - 1]), int(nv[n - 1]), G, n, D)
                else:
                    kivi.append(None)
                    kept.append(prompt_keep(name, kv, P, G, grp, q_win, k))
            for r0 in range(0, N, a.block):
                r1 = min(N, r0 + a.block)
                R = r1 - r0
                rows = torch.arange(P + r0, P + r1)                          # positions
                z = block_logits(q_ev[:, r0:r1], k, G, grp)                  # [G, grp*R, n]
                # causal: only the decode columns [P, n) can lie in a row's future
                fut = (torch.arange(P, n)[None, :] > rows[:, None]).repeat(grp, 1)  # [grp*R, N]
                z[:, :, P:].masked_fill_(fut, -math.inf)
                p = torch.softmax(z, -1)
                o = p @ v                                                    # [G, grp*R, D]
                pn = torch.linalg.vector_norm(p, dim=-1)
                for ci, (name, kv) in enumerate(configs):
                    if name == "quant":
                        o_c = quant_block(accs[ci], kivi[ci], q_ev[:, r0:r1], z, p, pn, v, rows, o,
                                          G, grp, H, R)
                    else:
                        # a static prompt selection: the kept logits are the full ones, so the
                        # compressed row is p restricted to the kept entries over their mass r:
                        # KL(p~ || p) = -log r, cos(p~, p) = |p restricted| / |p|
                        idx = kept[ci]
                        if idx is None:
                            p_g, v_c, kf = p, v, torch.ones(G, R)
                        else:
                            B = idx.shape[1]
                            cols = torch.cat([idx, torch.arange(P, n).expand(G, N)], 1)  # [G, B + N]
                            p_g = torch.gather(p, 2, cols[:, None, :].expand(G, grp * R, cols.shape[1]))
                            v_c = torch.gather(v, 1, cols[:, :, None].expand(G, cols.shape[1], D))
                            kf = ((B + rows - P + 1).double() / (rows + 1).double()).expand(G, R)
                        r = p_g.sum(-1)
                        o_c = o if idx is None else (p_g @ v_c) / r[..., None]
                        add_metrics(accs[ci], torch.linalg.vector_norm(p_g, dim=-1) / pn, -torch.log(r.double()), r,
                                    o, o_c, kf, H, R)
                    if rd is not None:
                        d = (o_c - o).view(G, grp, R, D).permute(2, 0, 1, 3).reshape(R, H * D)
                        delta[ci][r0:r1] += d @ rd["w_o"][l]
        if rd is not None:
            readout(accs, delta, rd, f, tokens, s, P, n)

    write_summary(a.output, a.strategy, configs, accs, L, H, rd is not None)
    print(f"torch_rows: {nc} configs, S={S}, L={L}, H={H}, T={tokens.shape[1]}, decode {a.decode}, "
          f"block {a.block}, {a.threads} threads, {time.time() - t_start:.2f}s", file=sys.stderr)


def lse_of(z, p):
    """logsumexp of the rows of z from their softmax p: at a row's largest logit,
    lse = z_max - log p_max (p_max >= 1/n, so the log is accurate); one pass over z instead
    of torch.logsumexp's several."""
    zmax, at = z.max(-1, keepdim=True)
    return zmax - torch.log(p.gather(-1, at))


def quant_block(acc, kivi, qb, z, p, pn, v, rows, o, G, grp, H, R):
    """One block's rows under KIVI: the keys [0, nk[t]) and values [0, nv[t]) that row t sees
    are the quantised ones (prefixes that grow with t, so within a block only a band of
    columns [lo, hi) differs between rows). Returns o_c."""
    kq, vq, nk, nv = kivi
    nk_lo, nk_hi = int(nk[rows].min()), int(nk[rows].max())
    nv_lo, nv_hi = int(nv[rows].min()), int(nv[rows].max())
    # z~ - z on the quantised key columns (the band's columns beyond a row's nk[t] may lie
    # in its future, where z = -inf: zeroed by where, not by a product)
    diff = block_logits(qb, kq[:, :nk_hi], G, grp) - z[:, :, :nk_hi]
    if nk_hi > nk_lo:
        band = (torch.arange(nk_lo, nk_hi)[None, :] < nk[rows][:, None]).repeat(grp, 1)
        diff[:, :, nk_lo:] = torch.where(band, diff[:, :, nk_lo:], 0.0)
    zc = z.clone()
    zc[:, :, :nk_hi] += diff
    p_c = torch.softmax(zc, -1)
    o_c = p_c[:, :, nv_hi:] @ v[:, nv_hi:] + p_c[:, :, :nv_lo] @ vq[:, :nv_lo]
    if nv_hi > nv_lo:
        band = (torch.arange(nv_lo, nv_hi)[None, :] < nv[rows][:, None]).repeat(grp, 1)[..., None]
        pb = p_c[:, :, nv_lo:nv_hi, None]               # [G, grp*R, band, 1]
        o_c += (pb * torch.where(band, vq[:, None, nv_lo:nv_hi], v[:, None, nv_lo:nv_hi])).sum(2)
    # KL(p~ || p) = sum p~ (z~ - z) - lse~ + lse
    kl = (p_c[:, :, :nk_hi] * diff).sum(-1) + (lse_of(z, p) - lse_of(zc, p_c)).squeeze(-1)
    cos = (p * p_c).sum(-1) / (pn * torch.linalg.vector_norm(p_c, dim=-1))
    add_metrics(acc, cos, kl, torch.ones_like(pn), o, o_c, torch.ones(G, R), H, R)
    return o_c


def acc_quant_mse(acc, k, v, kq, vq, last_k, last_v, G, n, D):
    """Reconstruction error of the cache the last position sees (as bench/torch_ref.py)."""
    st = acc.s
    st["kv_mse_k"] += ((kq[:, :last_k] - k[:, :last_k]).double() ** 2).sum().item()
    st["kv_mse_v"] += ((vq[:, :last_v] - v[:, :last_v]).double() ** 2).sum().item()
    st["kv_rel_mse_k"] += (k.double() ** 2).sum().item()
    st["kv_rel_mse_v"] += (v.double() ** 2).sum().item()
    acc.mse += G * n * D


def readout(accs, delta, rd, f, tokens, s, P, n):
    """The direct-path read-out at the evaluated positions (as bench/torch_ref.py)."""
    hv = torch.from_numpy(f["readout"]["hidden"][s, P:n].astype(np.float32))
    lf = ref.logits_of(hv, rd).double()
    lpf = torch.log_softmax(lf, -1)
    y = torch.tensor([int(tokens[s, t + 1]) if t + 1 < n else -1 for t in range(P, n)])
    known = y >= 0
    yk = y.clamp(min=0)
    cf = lpf.exp().max(-1)
    nf = -lpf.gather(1, yk[:, None]).squeeze(1)
    for ci, acc in enumerate(accs):
        lc = ref.logits_of(hv + delta[ci], rd).double()
        lpc = torch.log_softmax(lc, -1)
        st = acc.s
        st["logit_kl"] += (lpf.exp() * (lpf - lpc)).sum(-1).clamp(min=0).sum().item()
        st["top1_agree"] += (lf.argmax(-1) == lc.argmax(-1)).double().sum().item()
        st["nll_full"] += nf[known].sum().item()
        st["nll_comp"] += (-lpc.gather(1, yk[:, None]).squeeze(1))[known].sum().item()
        acc.ro += int(known.sum())
        cc = lpc.exp().max(-1)
        e = acc.ece
        e[0].extend(cf.values[known].tolist())
        e[1].extend((cf.indices == y)[known].tolist())
        e[2].extend(cc.values[known].tolist())
        e[3].extend((cc.indices == y)[known].tolist())


def write_summary(path, texts, configs, accs, L, H, has_ro):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fo:
        w = csv.writer(fo)
        w.writerow(["config_id", "config"] + ref.METRICS)
        for ci, (name, kv) in enumerate(configs):
            acc, row = accs[ci], []
            st = acc.s
            n_eval = acc.att // (L * H) if L * H else 0
            for m in ref.METRICS:
                if m in ("kv_mse_k", "kv_mse_v"):
                    val = st[m] / acc.mse if name == "quant" else None
                elif m in ("kv_rel_mse_k", "kv_rel_mse_v"):
                    val = st["kv_mse_" + m[-1]] / st[m] if name == "quant" else None
                elif m == "keep_frac":
                    val = st[m] / acc.keep
                elif m in ("logit_kl", "top1_agree"):
                    val = st[m] / n_eval if has_ro else None
                elif m in ("nll_full", "nll_comp"):
                    val = st[m] / acc.ro if has_ro and acc.ro else None
                elif m in ("ece_full", "ece_comp"):
                    e = acc.ece
                    val = (ref.ece(e[0], e[1]) if m == "ece_full" else ref.ece(e[2], e[3])) if has_ro else None
                else:
                    val = st[m] / acc.att
                row.append("" if val is None else f"{val:.9g}")
            w.writerow([ci, texts[ci]] + row)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
