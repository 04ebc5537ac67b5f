#!/usr/bin/env python3
"""Train the kvtrace reference model (capture/refmodel.py) on the KJV corpus (capture/corpus.py).

Seeded and reproducible on CPU for a given torch build and thread count. Every training
sequence starts with BOS so that attention sinks can form. Logs the loss curve, the held-out
loss and the unigram baseline (held-out cross-entropy of the training byte distribution),
all in nats per byte.

    /usr/bin/python3 capture/train_ref.py --steps 3000 -o capture/ref_model.pt --log capture/train.log

Models with structure: a synthetic share (capture/synth.py: repeated random spans
and planted facts queried late) trains induction and retrieval; --seq-schedule trains short
first and at the full context last; --ckpt/--resume make a long run resumable; every
--probe-every steps the structure probes (probe_structure) are logged: best induction score,
best BOS mass in a layer above 0, best previous-token mass, and the model's own retrieval
accuracy on held-out planted facts at several distances.

    OPENBLAS_CORETYPE=SkylakeX nice -n 19 /usr/bin/python3 capture/train_ref.py \
        --layers 4 --synth-frac 0.3 --seq-schedule 256:1500,1024 --batch-tokens 8192 \
        --steps 4000 --ckpt capture/models/l4.ckpt -o capture/models/l4.pt --log capture/models/l4.log
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
import synth  # noqa: E402
from structure import model_bos_prev, model_induction, probe_structure  # noqa: E402


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


def parse_schedule(spec, default, kind=int):
    """'256:1500,1024' -> [(256, 1500), (1024, None)]: seq 256 for the first 1500 steps."""
    if not spec:
        return [(default, None)]
    out = []
    for part in spec.split(","):
        seq, _, until = part.partition(":")
        out.append((kind(seq), int(until) if until else None))
    return out


def seq_at(schedule, step):
    for seq, until in schedule:
        if until is None or step < until:
            return seq
    return schedule[-1][0]


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
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--d-ff", type=int, default=512)
    ap.add_argument("--synth-frac", type=float, default=0.0,
                    help="share of training windows from capture/synth.py (repeat and facts)")
    ap.add_argument("--repeat-share", default="0.5",
                    help="share of the synthetic windows that are repeated-span documents (rest: "
                         "facts); SHARE:UNTIL_STEP,...,SHARE changes it per phase")
    ap.add_argument("--fact-queries", default="2",
                    help="queries per facts document (at most its fact count); N:UNTIL_STEP,...,N "
                         "per phase (more queries: more retrieval targets per window)")
    ap.add_argument("--repeat-span", default="8:32",
                    help="MIN:MAX length of the random spans of repeat documents")
    ap.add_argument("--repeat-pool", type=int, default=6,
                    help="distinct spans per repeat document (each recurs until the window is full)")
    ap.add_argument("--repeat-alphabet", default="letters", choices=sorted(synth.ALPHABETS),
                    help="symbols of the repeated spans: letters (26) or wide (223 bytes; a single "
                         "matching token then names one earlier position, which is what lets "
                         "induction heads form early)")
    ap.add_argument("--synth-schedule", default="",
                    help="FRAC:UNTIL_STEP,...,FRAC: the synthetic share per phase, overriding "
                         "--synth-frac (e.g. 1.0:3000,0.4 trains on synthetic documents first)")
    ap.add_argument("--seq-schedule", default="",
                    help="SEQ:UNTIL_STEP,...,SEQ (default: --seq throughout)")
    ap.add_argument("--batch-tokens", type=int, default=0,
                    help="tokens per step; batch = batch_tokens // seq (default: --batch)")
    ap.add_argument("--stop-at", type=int, default=0,
                    help="end the run after this many steps, the learning-rate schedule still "
                         "computed over --steps (its cosine tail is nearly flat: stopping at 90%% "
                         "of it changes the final rate by under 20%%)")
    ap.add_argument("--probe-every", type=int, default=0, help="structure probes every N steps")
    ap.add_argument("--ckpt", default="", help="resumable checkpoint written every --eval-every steps")
    ap.add_argument("--resume", action="store_true", help="continue from --ckpt")
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

    schedule = parse_schedule(a.seq_schedule, a.seq)
    end = min(a.steps, a.stop_at) if a.stop_at > 0 else a.steps
    span_min, _, span_max = a.repeat_span.partition(":")
    repeat_kw = {"span_min": int(span_min), "span_max": int(span_max or span_min), "pool": a.repeat_pool,
                 "alphabet": a.repeat_alphabet}
    synth_schedule = parse_schedule(a.synth_schedule, a.synth_frac, float)
    share_schedule = parse_schedule(a.repeat_share, None, float)
    query_schedule = parse_schedule(a.fact_queries, None, int)
    train_ctx = max(sq for sq, _ in schedule)
    cfg = RefConfig(n_layers=a.layers, d_model=a.d_model, n_heads=a.heads, n_kv_heads=a.kv_heads,
                    head_dim=a.d_model // a.heads, d_ff=a.d_ff)
    model = RefModel(cfg)
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

    start, counter, ema = 0, 0, None
    if a.resume:
        ck = torch.load(a.ckpt)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        start, counter, ema = ck["step"], ck["counter"], ck["ema"]
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
    log = open(a.log + ".tmp", "a" if a.resume else "w")

    def say(s):
        print(s, flush=True)
        log.write(s + "\n")
        log.flush()

    if a.resume:
        say(f"# resumed at step {start} from {a.ckpt}")
    say(f"# kvtrace reference model training; corpus: KJV Bible (Debian bible-kjv), held-out = every {20}th chapter")
    say(f"# config {cfg.to_json().replace(chr(10), '')}")
    say(f"# params {n_params}  train_bytes {len(train)}  heldout_bytes {len(held)}  seed {a.seed}  "
        f"threads {a.threads}  torch {torch.__version__}  steps {a.steps}" + (f" (stop at {end})" if end < a.steps else "") + f" batch {a.batch} seq {a.seq}")
    if a.synth_frac or a.synth_schedule or a.seq_schedule or a.batch_tokens:
        say(f"# synth_frac {a.synth_frac}  synth_schedule {synth_schedule}  repeat_share {share_schedule}  fact_queries {query_schedule}  seq_schedule {schedule}  batch_tokens {a.batch_tokens}  "
            f"repeat {repeat_kw}  lr {a.lr}  warmup {a.warmup}  OPENBLAS_CORETYPE {os.environ.get('OPENBLAS_CORETYPE', '-')}")
    say(f"# unigram_baseline_heldout_nats {unigram:.4f}")
    say("step\tlr\ttrain_loss\theldout_loss\telapsed_s")
    t0 = time.time() - (ck["elapsed"] if a.resume else 0.0)
    distances = [d for d in (256, 512, 1000) if d + 24 <= train_ctx] or [train_ctx // 2]
    seq = a.seq
    for step in range(start, end):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        seq = seq_at(schedule, step)
        B = a.batch_tokens // seq if a.batch_tokens else a.batch
        frac = seq_at(synth_schedule, step)
        if frac > 0:
            win, counter = synth.mixed_batch(rng, train, B, seq + 1, frac, a.seed, counter,
                                             seq_at(share_schedule, step), repeat_kw,
                                             seq_at(query_schedule, step))
            win = win.astype(np.int64)
            x = torch.from_numpy(np.concatenate([np.full((B, 1), BOS_ID), win[:, :-1]], axis=1))
            y = torch.from_numpy(win)
        else:
            x, y = batches(train, rng, B, seq)
        loss = F.cross_entropy(model(x).reshape(-1, cfg.vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        last = step == end - 1
        if (step + 1) % a.eval_every == 0 or last:
            hl = evaluate(model, held, seq, max(1, 64 * 256 // seq) if not last else 512)
            say(f"{step + 1}\t{lr_at(step):.2e}\t{ema:.4f}\t{hl:.4f}\t{time.time() - t0:.0f}")
            if a.ckpt:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                            "counter": counter, "ema": ema, "rng": rng.bit_generator.state,
                            "torch_rng": torch.get_rng_state(), "elapsed": time.time() - t0},
                           a.ckpt + ".tmp")
                os.replace(a.ckpt + ".tmp", a.ckpt)
        if a.probe_every and ((step + 1) % a.probe_every == 0 or last):
            ind, bos, prev, acc = probe_structure(model, held, train_ctx, a.seed + 1, distances)
            wide = ""
            if a.repeat_alphabet != "letters":
                model.eval()
                with torch.no_grad():
                    iw = model_induction(model, a.seed + 1, alphabet=a.repeat_alphabet)
                model.train()
                lw, hw = np.unravel_index(iw.argmax(), iw.shape)
                wide = f"induction {a.repeat_alphabet} max {iw.max():.3f} (L{lw} H{hw})  "
            li, hi = np.unravel_index(ind.argmax(), ind.shape)
            up = bos[1:] if len(bos) > 1 else bos
            lb, hb = np.unravel_index(up.argmax(), up.shape)
            say(f"# probe step {step + 1}: induction max {ind.max():.3f} (L{li} H{hi})  "
                f"bos max above L0 {up.max():.3f} (L{lb + (len(bos) > 1)} H{hb})  prev max {prev.max():.3f}  "
                + wide + "  ".join(f"retrieval@{d} {v:.2f}" for d, v in acc.items()))
        elif (step + 1) % 50 == 0:
            say(f"{step + 1}\t{lr_at(step):.2e}\t{ema:.4f}\t\t{time.time() - t0:.0f}")
    final = evaluate(model, held, seq, 512 * 256 // seq)
    say(f"# final_heldout_nats {final:.4f}  unigram_baseline_nats {unigram:.4f}  "
        f"elapsed_s {time.time() - t0:.0f}")
    say("# attention structure on a held-out window: layer head mass_on_BOS mass_on_previous_token")
    model.eval()
    with torch.no_grad():
        bos, prev = model_bos_prev(model, held, seq)
    for l in range(bos.shape[0]):
        for h in range(bos.shape[1]):
            say(f"# attn L{l} H{h} bos {bos[l, h]:.3f} prev {prev[l, h]:.3f}")
    log.close()
    tmp = a.out + ".tmp"
    save_model(model, tmp, train_ctx=train_ctx)    # kvcapture refuses captures beyond it
    os.replace(tmp, a.out)
    os.replace(a.log + ".tmp", a.log)


if __name__ == "__main__":
    main()
