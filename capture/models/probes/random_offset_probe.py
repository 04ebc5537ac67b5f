#!/usr/bin/python3
"""Random-offset copy probe: the reference architecture (capture/refmodel.py) trained only on
documents of `POOL` random spans (SPAN_MIN..SPAN_MAX symbols) that recur at random offsets,
separated by spaces; logs the loss on first occurrences ("new") and on repeats.

    python3 capture/models/probes/random_offset_probe.py ALPHABET LAYERS STEPS LR POOL SPAN_MIN SPAN_MAX T
    e.g. OPENBLAS_CORETYPE=SkylakeX nice -n 19 python3 ... 200 2 1500 1e-3 3 16 64 256

ALPHABET 26 draws lowercase letters, larger values the top ALPHABET byte values; 4096 tokens
a step (4096 // T windows). Copying at a random offset needs an induction head: a repeat's
loss falls below ln(ALPHABET) only once one has formed.
"""
import os, sys, time, math, numpy as np, torch, torch.nn.functional as F
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from refmodel import RefConfig, RefModel, BOS_ID
A = int(sys.argv[1]); L = int(sys.argv[2]); steps = int(sys.argv[3]); lr = float(sys.argv[4]); pool=int(sys.argv[5]); smin=int(sys.argv[6]) if len(sys.argv)>6 else 16; smax=int(sys.argv[7]) if len(sys.argv)>7 else 64
torch.manual_seed(0); torch.set_num_threads(1)
T = int(sys.argv[8]) if len(sys.argv)>8 else 256; B = 4096 // T
alph = np.arange(256 - A, 256, dtype=np.uint8) if A > 26 else np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)
cfg = RefConfig(n_layers=L, d_model=128, n_heads=4, n_kv_heads=2, head_dim=32, d_ff=512)
m = RefModel(cfg)
dec = [p for p in m.parameters() if p.dim() >= 2]; nd = [p for p in m.parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": dec, "weight_decay": 0.1}, {"params": nd, "weight_decay": 0}], lr=lr, betas=(0.9, 0.95))
rng = np.random.default_rng(5)
def doc():
    spans = [alph[rng.integers(0, len(alph), size=int(rng.integers(smin, smax+1)))] for _ in range(pool)]
    out = []; seen = []; n = 0; mask = []
    while n < T:
        j = int(rng.integers(0, pool)); s = spans[j]
        out.append(s); mask.append(np.full(len(s), j in seen)); seen.append(j)
        out.append(np.array([32], np.uint8)); mask.append(np.zeros(1, bool)); n += len(s) + 1
    return np.concatenate(out)[:T], np.concatenate(mask)[:T]
t0 = time.time()
for step in range(steps):
    for g in opt.param_groups: g["lr"] = lr * min(1, (step + 1) / 100)
    d = [doc() for _ in range(B)]; w = np.stack([a for a, _ in d]).astype(np.int64); mk = torch.from_numpy(np.stack([b for _, b in d]))
    x = torch.from_numpy(np.concatenate([np.full((B, 1), BOS_ID), w[:, :-1]], 1)); y = torch.from_numpy(w)
    lo = F.cross_entropy(m(x).reshape(-1, 257), y.reshape(-1), reduction="none").view(B, T)
    loss = lo.mean(); opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step()
    if step % 50 == 0:
        print(step, f"new {lo[~mk].mean().item():.3f} repeat {lo[mk].mean().item():.3f} (lnA {math.log(len(alph)):.3f}) {time.time()-t0:.0f}s", flush=True)
