#!/usr/bin/python3
"""Copy probe: the reference architecture (capture/refmodel.py) trained on documents that are
one random span of T/2 symbols written twice, logging the loss on each half.

    python3 capture/models/probes/offset_copy_probe.py ALPHABET LR LAYERS STEPS WEIGHT_DECAY
    e.g. OPENBLAS_CORETYPE=SkylakeX nice -n 19 python3 ... 26 3e-3 2 800 0.1

Used to tell an optimisation problem from a data problem: here the second half's loss falls
from ln(26) to ~0.005 within 150-200 steps (2 layers, d_model 128, 16 x 256 tokens a step, lr
1e-3 or 3e-3), while capture/synth.py's repeat documents (spans at random offsets) stay on
the ln(26) plateau for 1,100+ steps. The copy distance here is always T/2, so a head can
learn it as a fixed relative position through RoPE: this is positional copying, not an
induction head.
"""
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from refmodel import BOS_ID, RefConfig, RefModel  # noqa: E402

A, lr, L, steps, wd = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
torch.manual_seed(0)
torch.set_num_threads(1)
rng = np.random.default_rng(0)
T, B = 256, 16
alpha = np.arange(33, 33 + A, dtype=np.int64)


def doc():
    s = alpha[rng.integers(0, A, size=T // 2)]
    return np.concatenate([s, s])[:T]


m = RefModel(RefConfig(n_layers=L, d_model=128, n_heads=4, n_kv_heads=2, head_dim=32, d_ff=512))
dec = [p for p in m.parameters() if p.dim() >= 2]
nd = [p for p in m.parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": dec, "weight_decay": wd}, {"params": nd, "weight_decay": 0}], lr=lr, betas=(0.9, 0.95))
t0 = time.time()
for step in range(steps):
    for g in opt.param_groups:
        g["lr"] = lr * min(1, (step + 1) / 100)
    w = np.stack([doc() for _ in range(B)])
    x = torch.from_numpy(np.concatenate([np.full((B, 1), BOS_ID), w[:, :-1]], 1))
    lo = F.cross_entropy(m(x).reshape(-1, 257), torch.from_numpy(w).reshape(-1), reduction="none").view(B, T)
    opt.zero_grad()
    lo.mean().backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    if step % 50 == 0:
        print(step, f"first half {lo[:, :T // 2].mean().item():.3f}  second half {lo[:, T // 2 + 1:].mean().item():.3f}"
              f"  (ln A {math.log(A):.3f})  {time.time() - t0:.0f}s", flush=True)
