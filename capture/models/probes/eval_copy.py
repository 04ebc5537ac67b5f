#!/usr/bin/python3
"""Copying and induction of a 4-layer training checkpoint (train_ref.py --ckpt): the loss on
repeated spans after their first token (repeat_doc, 3 spans of 6-16 symbols) at T 64 and 256,
for both alphabets, and structure.py's induction score at spans 24 and 64.

    python3 capture/models/probes/eval_copy.py CHECKPOINT.ckpt
"""
import os, sys, numpy as np, torch, torch.nn.functional as F
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from refmodel import RefConfig, RefModel, BOS_ID
import synth, structure
torch.set_num_threads(1)
ck = torch.load(sys.argv[1])
cfg = RefConfig(n_layers=4, d_model=128, n_heads=4, n_kv_heads=2, head_dim=32, d_ff=512)
m = RefModel(cfg); m.load_state_dict(ck["model"]); m.eval()
print("step", ck["step"])
for alph in ("wide", "letters"):
  for T in (64, 256):
    first, later = [], []
    for i in range(16):
        d, marks = synth.repeat_doc(999, 100000 + i, T - 1, 6, 16, 3, alph)
        x = torch.from_numpy(np.concatenate([[BOS_ID], d[:-1]]).astype(np.int64))[None]
        with torch.no_grad():
            lo = F.cross_entropy(m(x)[0], torch.from_numpy(d.astype(np.int64)), reduction="none").numpy()
        rep = np.zeros(len(d), bool)
        for f0, l0, n in marks: rep[l0 + 1:l0 + n] = True
        later.append(lo[rep]); first.append(lo[~rep])
    print(alph, "T", T, "non-repeat", np.concatenate(first).mean().round(3), "repeat (after 1st token)", np.concatenate(later).mean().round(3))
  with torch.no_grad():
    for span in (24, 64):
        ind = structure.model_induction(m, 5, span=span, alphabet=alph)
        print(alph, "induction span", span, "max", ind.max().round(3), np.unravel_index(ind.argmax(), ind.shape))
