#!/usr/bin/env python3
"""Structure report of a kvtrace reference model: the attention structure that KV-cache
compression strategies exist for, measured on held-out data.

Per head:
  bos        mean attention on BOS (position 0), query rows t >= 8 of a held-out prose window;
             a head with bos >= 0.3 in a layer above 0 is an attention sink.
  prev       mean attention on the previous token (rows t >= 8).
  induction  a random span S (lowercase letters, or --alphabet wide: bytes '!'..255) of
             length `span` followed by S again: mean attention
             from each token of the second copy to the token after its match in the first
             copy (the induction target). 1/(t+1) for uniform attention; 1.0 for a perfect
             induction head.
Per model:
  held-out loss (nats per byte) against the unigram baseline, and retrieval accuracy: the
  model's own greedy, teacher-forced prediction of all four digits of a planted fact
  " [KEYS:1234] " (capture/synth.py) queried `distance` bytes later, with 3 distractors.

The score functions take attention maps ([H, T, T] per layer), so tests check them on
hand-made patterns; the model functions run the reference model to get the maps.

    /usr/bin/python3 capture/structure.py --model capture/models/l4.pt [--ctx 1024]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import synth  # noqa: E402


# ---- scores over attention maps (numpy or torch [H, T, T] per layer) -------------------

def induction_targets(span):
    """Query rows and target columns of the induction score for [BOS, S, S] (|S| = span)."""
    j = np.arange(span - 1)
    return span + 1 + j, 2 + j


def induction_score(maps, span):
    """[L, H]: mean attention from the second copy to the induction targets."""
    q, t = induction_targets(span)
    return np.stack([np.asarray(m)[:, q, t].mean(-1) for m in maps])


def bos_prev_mass(maps, first_row=8):
    """([L, H], [L, H]): mean attention on position 0 and on t-1, rows t >= first_row."""
    T = np.asarray(maps[0]).shape[-1]
    t = np.arange(first_row, T)
    bos = np.stack([np.asarray(m)[:, t, 0].mean(-1) for m in maps])
    prev = np.stack([np.asarray(m)[:, t, t - 1].mean(-1) for m in maps])
    return bos, prev


# ---- the model side --------------------------------------------------------------------

def attention_maps(model, ids):
    """Run the reference model on ids [1, T]: ([H, T, T] per layer as numpy, logits)."""
    import torch
    from refmodel import ATTENTION_FUNCTIONS, eager_attention
    maps = {}

    def probe(module, q, k, v, mask, scale):
        H, Hkv = q.shape[1], k.shape[1]
        kk = k.repeat_interleave(H // Hkv, dim=1)
        maps[module.layer_idx] = torch.softmax(torch.matmul(q, kk.transpose(-1, -2)) * scale + mask,
                                               dim=-1)[0].numpy()
        return eager_attention(module, q, k, v, mask, scale)

    ATTENTION_FUNCTIONS["probe"] = probe
    model.set_attn_impl("probe")
    try:
        logits = model(ids)
    finally:
        model.set_attn_impl("eager")
    return [maps[i] for i in range(len(maps))], logits


def model_induction(model, seed, span=64, n=4, alphabet="letters"):
    import torch
    from refmodel import BOS_ID
    acc = 0.0
    alph = synth.ALPHABETS[alphabet]
    for i in range(n):
        r = np.random.default_rng([seed, 7, i])
        s = alph[r.integers(0, len(alph), size=span)].astype(np.int64)
        ids = torch.from_numpy(np.concatenate([[BOS_ID], s, s]))[None]
        maps, _ = attention_maps(model, ids)
        acc = acc + induction_score(maps, span)
    return acc / n


def model_bos_prev(model, held, T):
    import torch
    from refmodel import BOS_ID
    win = torch.from_numpy(held[:T - 1].astype(np.int64))[None]
    maps, _ = attention_maps(model, torch.cat([torch.tensor([[BOS_ID]]), win], dim=1))
    return bos_prev_mass(maps)


def retrieval_accuracy(model, held, seed, distance, n=16):
    """Fraction of n held-out planted facts whose 4 digits the model predicts (greedy,
    teacher-forced) when the query starts `distance` bytes after the fact."""
    import torch
    from refmodel import BOS_ID
    ok = 0
    for i in range(n):
        # fact '[' at byte 9 (fact_at 8 + the leading space); query '[' = 9 + distance
        L = distance + 9 + 12 + 2
        doc, planted = synth.facts_doc(seed, 100000 + i, L, held, n_facts=4, n_queries=1,
                                       depths=[8])
        ids = torch.from_numpy(np.concatenate([[BOS_ID], doc.astype(np.int64)]))[None]
        logits = model(ids)[0]
        a = planted[0]["answer_pos"]                 # byte offset in doc = token index - 1
        pred = logits[a:a + 4].argmax(-1).numpy()    # logits at token a predict token a + 1
        ok += int(np.array_equal(pred, doc[a:a + 4].astype(np.int64)))
    return ok / n


def probe_structure(model, held, T, seed, distances, n_facts=16, alphabet="letters"):
    import torch
    was = model.training
    model.eval()
    with torch.no_grad():
        ind = model_induction(model, seed, alphabet=alphabet)
        bos, prev = model_bos_prev(model, held, T)
        acc = {d: retrieval_accuracy(model, held, seed, d, n_facts) for d in distances}
    model.train(was)
    return ind, bos, prev, acc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a kvtrace reference checkpoint (.pt)")
    ap.add_argument("--ctx", type=int, default=0, help="window for bos/prev (default: train_ctx)")
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--facts", type=int, default=64, help="planted facts per distance")
    ap.add_argument("--alphabet", default="letters", choices=sorted(synth.ALPHABETS),
                    help="symbols of the induction probe's random span")
    a = ap.parse_args()
    import torch
    from corpus import split_text
    from refmodel import load_model
    torch.set_num_threads(2)
    model = load_model(a.model)
    ctx = a.ctx or getattr(model, "train_ctx", 0) or 256
    train_txt, held_txt = split_text()
    held = np.frombuffer(held_txt.encode("ascii"), dtype=np.uint8)
    distances = [d for d in (256, 512, 1000) if d + 25 <= max(ctx, 1025)]
    ind, bos, prev, acc = probe_structure(model, held, ctx, a.seed, distances, a.facts, a.alphabet)
    print(f"# structure of {a.model} (window {ctx}; induction span 64 over {a.alphabet}; "
          f"{a.facts} facts per distance)")
    print("layer\thead\tbos\tprev\tinduction")
    for l in range(bos.shape[0]):
        for h in range(bos.shape[1]):
            print(f"{l}\t{h}\t{bos[l, h]:.3f}\t{prev[l, h]:.3f}\t{ind[l, h]:.3f}")
    for d, v in acc.items():
        print(f"# retrieval accuracy at distance {d}: {v:.3f}")


if __name__ == "__main__":
    main()
