"""Synthetic cache-state exports (traces/EXPORT.md, version 1) written in numpy, for the
validate tests (tests/py/test_validate_*.py): no kvreplay involved, so the masks are known
exactly and the tests run where the C tools are not built.

write_export(path, trace, mode, configs): configs = {config_id: (canonical string, {seq: state})}
  mode "online":  state = (P, evict_at int [L*Hkv, n])
  mode "prefill": state = (P, heads) with heads[(l, g)] = dict(pos, mult[, members][, k, v]);
                  rows (k, v [NE, D]) are written when any head has them (has_rows = 1)
Also an independent float64 forward of the reference model (forward64) that takes, per
(model layer, kv head), an additive bias [n, n] and optional K/V rows used from a row on.
"""
import hashlib

import h5py
import numpy as np
import torch


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def write_export(path, trace, mode, configs):
    with h5py.File(trace, "r") as tf:
        a = tf.attrs
        L, H, Hkv, D = (int(a[k]) for k in ("n_layers", "n_heads", "n_kv_heads", "head_dim"))
        model = a["model"]
    with h5py.File(path, "w") as f:
        r = f.attrs
        r["kvtrace_export_version"] = 1
        r["trace"] = trace
        r["trace_sha256"] = sha256(trace)
        r["model"] = model
        r["mode"] = mode
        r["decode"] = 0
        r["eval_from"] = 0
        r["n_layers"], r["n_heads"], r["n_kv_heads"], r["head_dim"] = L, H, Hkv, D
        r["rows_dtype"] = "float32"
        r["tool"] = "synth_export.py"
        r["tool_version"] = "test"
        for c, (canon, seqs) in configs.items():
            cg = f.create_group(f"configs/{c}")
            cg.attrs["config"] = canon
            cg.attrs["family"] = canon.split()[0]
            cg.attrs["config_id"] = c
            cg.attrs["time_dependent"] = 0
            for s, (P, st) in seqs.items():
                g = cg.create_group(str(s))
                g.attrs["seq"] = s
                g.attrs["split"] = P
                if mode == "online":
                    ev = np.asarray(st, dtype=np.int32)
                    g.attrs["seq_len"] = ev.shape[1]
                    g.attrs["has_rows"] = 0
                    g.create_dataset("evict_at", data=ev)
                    continue
                n = st["n"]
                g.attrs["seq_len"] = n
                off, pos, mult, moff, mem, ks, vs, mod = [0], [], [], [0], [], [], [], []
                rows = any("k" in st[l, kh] for l in range(L) for kh in range(Hkv))
                for l in range(L):
                    for kh in range(Hkv):
                        e = st[l, kh]
                        p = np.asarray(e["pos"], dtype=np.int32)
                        m = np.asarray(e.get("mult", np.ones(len(p))), dtype=np.int32)
                        members = e.get("members") or [np.array([x], dtype=np.int32) for x in p]
                        pos.append(p)
                        mult.append(m)
                        for mm in members:
                            mem.append(np.asarray(mm, dtype=np.int32))
                            moff.append(moff[-1] + len(mm))
                        off.append(off[-1] + len(p))
                        mod.append(int((m > 1).any() or "k" in e))
                        if rows:
                            ks.append(np.asarray(e["k"], dtype=np.float32))
                            vs.append(np.asarray(e["v"], dtype=np.float32))
                g.attrs["has_rows"] = int(rows)
                g.create_dataset("entry_off", data=np.array(off, dtype=np.int64))
                g.create_dataset("modified", data=np.array(mod, dtype=np.uint8))
                g.create_dataset("pos", data=np.concatenate(pos))
                g.create_dataset("mult", data=np.concatenate(mult))
                g.create_dataset("member_off", data=np.array(moff, dtype=np.int64))
                g.create_dataset("members", data=np.concatenate(mem))
                if rows:
                    g.create_dataset("k", data=np.concatenate(ks))
                    g.create_dataset("v", data=np.concatenate(vs))


def rms(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def forward64(model, ids, bias=None, rows=None, step_rows=None, P=None):
    """Float64 forward of a refmodel.RefModel written out here (not the model's forward and not
    validate.py's attention). bias(ml, kh, n) -> [n, n] additive (0 / log(mult) / -inf) or None
    for plain causal; rows(ml, kh) -> (P, pos, k, v[, "add"]) or None: rows t >= P use k, v
    [len(pos), D] at positions pos in place of the model's own ("add": added to them).
    step_rows(ml, kh, t) -> (pos, dk, dv): query row t >= P adds dk, dv [len(pos), D] to the
    model's own rows at pos (a per-position state, e.g. a time-dependent encoder)."""
    cfg = model.cfg
    H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    G = H // Hkv
    n = len(ids)
    ang = torch.arange(n, dtype=torch.float64)[:, None] * (
        1.0 / cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))[None, :]
    ang = torch.cat([ang, ang], -1)
    cos, sin = ang.cos(), ang.sin()

    def rope(x):
        h = D // 2
        return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin

    causal = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    x = model.embed.weight.double()[torch.as_tensor(np.asarray(ids, dtype=np.int64))]
    eps = cfg.norm_eps
    for ml, b in enumerate(model.blocks):
        a = b.attn
        h = rms(x, b.attn_norm.weight.double(), eps)
        q = rope((h @ a.q_proj.weight.double().T).view(n, H, D).transpose(0, 1))
        k = rope((h @ a.k_proj.weight.double().T).view(n, Hkv, D).transpose(0, 1))
        v = (h @ a.v_proj.weight.double().T).view(n, Hkv, D).transpose(0, 1)
        o = torch.zeros(n, H, D, dtype=torch.float64)
        for hh in range(H):
            kh = hh // G
            m = bias(ml, kh, n) if bias else None
            m = causal if m is None else torch.as_tensor(m, dtype=torch.float64)
            p = torch.softmax(q[hh] @ k[kh].T * (1.0 / np.sqrt(D)) + m, -1)
            o[:, hh] = p @ v[kh]
            rr = rows(ml, kh) if rows else None
            if rr is not None:
                P, pos, kr, vr = rr[:4]
                kk, vv = k[kh].clone(), v[kh].clone()
                idx = torch.as_tensor(np.asarray(pos, dtype=np.int64))
                if rr[4:] == ("add",):
                    kk[idx] += torch.as_tensor(kr, dtype=torch.float64)
                    vv[idx] += torch.as_tensor(vr, dtype=torch.float64)
                else:
                    kk[idx] = torch.as_tensor(kr, dtype=torch.float64)
                    vv[idx] = torch.as_tensor(vr, dtype=torch.float64)
                p2 = torch.softmax(q[hh, P:] @ kk.T * (1.0 / np.sqrt(D)) + m[P:], -1)
                o[P:, hh] = p2 @ vv
            if step_rows is not None:
                for t in range(P, n):
                    pos, dk, dv = step_rows(ml, kh, t)
                    idx = torch.as_tensor(np.asarray(pos, dtype=np.int64))
                    kk, vv = k[kh].clone(), v[kh].clone()
                    kk[idx] += torch.as_tensor(dk, dtype=torch.float64)
                    vv[idx] += torch.as_tensor(dv, dtype=torch.float64)
                    p2 = torch.softmax(q[hh, t] @ kk.T * (1.0 / np.sqrt(D)) + m[t], -1)
                    o[t, hh] = p2 @ vv
        x = x + o.reshape(n, H * D) @ a.o_proj.weight.double().T
        hm = rms(x, b.mlp_norm.weight.double(), eps)
        x = x + (torch.nn.functional.silu(hm @ b.mlp.gate.weight.double().T) * (hm @ b.mlp.up.weight.double().T)) \
            @ b.mlp.down.weight.double().T
    return rms(x, model.norm.weight.double(), eps) @ model.lm_head.weight.double().T


def ref_random_model(seed, **cfg):
    """The weights kvcapture's ref-random:SEED:... adapter builds (normal(0, 0.08) on every
    Linear and Embedding after torch.manual_seed(SEED)), float64, eval mode."""
    import refmodel     # capture/ is on sys.path in the tests that import this module
    torch.manual_seed(seed)
    model = refmodel.RefModel(refmodel.RefConfig(**cfg))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
                m.weight.normal_(0.0, 0.08)
    return model.double().eval()


def ece15(conf, corr):
    tot = 0.0
    for i in range(15):
        lo, hi = i / 15, (i + 1) / 15
        m = (conf >= lo) & ((conf < hi) if i < 14 else (conf <= hi))
        tot += abs(corr[m].sum() - conf[m].sum())
    return tot / len(conf)


def true_metrics(lf, lc, y):
    """lf, lc [NE, V] float64 torch logits over the evaluated rows; y [NE-1] next tokens."""
    lpf = torch.log_softmax(lf, -1).numpy()
    lpc = torch.log_softmax(lc, -1).numpy()
    k = len(y)
    i = np.arange(k)
    return dict(logit_kl=(np.exp(lpf) * (lpf - lpc)).sum(1).clip(min=0).mean(),
                nll_full=-lpf[i, y].mean(), nll_comp=-lpc[i, y].mean(),
                top1_agree=(lpf.argmax(1) == lpc.argmax(1)).mean(),
                ece_full=ece15(np.exp(lpf[:k].max(1)), (lpf[:k].argmax(1) == y).astype(float)),
                ece_comp=ece15(np.exp(lpc[:k].max(1)), (lpc[:k].argmax(1) == y).astype(float)))
