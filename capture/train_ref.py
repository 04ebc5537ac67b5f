#!/usr/bin/env python3
"""Train the kvtrace reference model (capture/refmodel.py) on the KJV corpus (capture/corpus.py).

Seeded and reproducible on CPU for a given torch build and thread count. Every training
sequence starts with BOS so that attention sinks can form. Logs the loss curve, the held-out
loss and the unigram baseline (held-out cross-entropy of the training byte distribution),
all in nats per byte.

    /usr/bin/python3 capture/train_ref.py --steps 3000 -o capture/ref_model.pt --log capture/train.log
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corpus import split_text  # noqa: E402
from refmodel import BOS_ID, RefConfig, RefModel, save_model  # noqa: E402


def batches(data, rng, B, T):
    """B windows of T-1 bytes each, BOS prepended: x [B,T], y [B,T]."""
    starts = rng.integers(0, len(data) - T, size=B)
    win = np.stack([data[s:s + T] for s in starts]).astype(np.int64)   # [B, T]
    x = np.concatenate([np.full((B, 1), BOS_ID), win[:, :-1]], axis=1)
    return torch.from_numpy(x), torch.from_numpy(win)


@torch.no_grad()
def evaluate(model, data, T, n_windows):
    """Mean next-byte NLL over fixed, non-overlapping held-out windows."""
    model.eval()
    tot, cnt = 0.0, 0
    for i in range(n_windows):
        s = i * T
        if s + T > len(data):
            break
        win = torch.from_numpy(data[s:s + T].astype(np.int64))[None]
        x = torch.cat([torch.tensor([[BOS_ID]]), win[:, :-1]], dim=1)
        logits = model(x)
        tot += F.cross_entropy(logits[0], win[0], reduction="sum").item()
        cnt += T
    model.train()
    return tot / cnt


@torch.no_grad()
def attention_report(model, data, T):
    """Per layer and head: mean attention on BOS, on the previous token (rows t >= 8)."""
    from refmodel import ATTENTION_FUNCTIONS, eager_attention
    rows = []

    def probe(module, q, k, v, mask, scale):
        H, Hkv = q.shape[1], k.shape[1]
        kk = k.repeat_interleave(H // Hkv, dim=1)
        p = torch.softmax(torch.matmul(q, kk.transpose(-1, -2)) * scale + mask, dim=-1)[0]
        t = torch.arange(8, p.shape[-1])
        for h in range(H):
            rows.append((module.layer_idx, h, p[h, t, 0].mean().item(), p[h, t, t - 1].mean().item()))
        return eager_attention(module, q, k, v, mask, scale)

    ATTENTION_FUNCTIONS["probe"] = probe
    model.set_attn_impl("probe")
    win = torch.from_numpy(data[:T - 1].astype(np.int64))[None]
    model(torch.cat([torch.tensor([[BOS_ID]]), win], dim=1))
    model.set_attn_impl("eager")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("-o", "--out", default="capture/ref_model.pt")
    ap.add_argument("--log", default="capture/train.log")
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)
    train_txt, held_txt = split_text()
    train = np.frombuffer(train_txt.encode("ascii"), dtype=np.uint8)
    held = np.frombuffer(held_txt.encode("ascii"), dtype=np.uint8)

    counts = np.bincount(train, minlength=256).astype(np.float64) + 1.0   # add-one smoothing
    logp = np.log(counts / counts.sum())
    unigram = float(-logp[held].mean())

    model = RefModel(RefConfig())
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95))

    def lr_at(step):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        f = (step - a.warmup) / max(1, a.steps - a.warmup)
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * f)))

    log = open(a.log + ".tmp", "w")

    def say(s):
        print(s, flush=True)
        log.write(s + "\n")
        log.flush()

    say(f"# kvtrace reference model training; corpus: KJV Bible (Debian bible-kjv), held-out = every {20}th chapter")
    say(f"# config {RefConfig().to_json().replace(chr(10), '')}")
    say(f"# params {n_params}  train_bytes {len(train)}  heldout_bytes {len(held)}  seed {a.seed}  "
        f"threads {a.threads}  torch {torch.__version__}  steps {a.steps} batch {a.batch} seq {a.seq}")
    say(f"# unigram_baseline_heldout_nats {unigram:.4f}")
    say("step\tlr\ttrain_loss\theldout_loss\telapsed_s")
    t0 = time.time()
    ema = None
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x, y = batches(train, rng, a.batch, a.seq)
        loss = F.cross_entropy(model(x).reshape(-1, RefConfig().vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        last = step == a.steps - 1
        if (step + 1) % a.eval_every == 0 or last:
            hl = evaluate(model, held, a.seq, 64 if not last else 512)
            say(f"{step + 1}\t{lr_at(step):.2e}\t{ema:.4f}\t{hl:.4f}\t{time.time() - t0:.0f}")
        elif (step + 1) % 50 == 0:
            say(f"{step + 1}\t{lr_at(step):.2e}\t{ema:.4f}\t\t{time.time() - t0:.0f}")
    final = evaluate(model, held, a.seq, 512)
    say(f"# final_heldout_nats {final:.4f}  unigram_baseline_nats {unigram:.4f}  "
        f"elapsed_s {time.time() - t0:.0f}")
    say("# attention structure on a held-out window: layer head mass_on_BOS mass_on_previous_token")
    for l, h, bos, prev in attention_report(model, held, a.seq):
        say(f"# attn L{l} H{h} bos {bos:.3f} prev {prev:.3f}")
    log.close()
    tmp = a.out + ".tmp"
    save_model(model, tmp)
    os.replace(tmp, a.out)
    os.replace(a.log + ".tmp", a.log)


if __name__ == "__main__":
    main()
