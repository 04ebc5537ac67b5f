#!/usr/bin/env python3
"""Capture cost on a CUDA device: kvcapture against a plain forward pass of the same model.

    python3 bench/gpu_capture.py OUTDIR [--tokens 1024,4096,16384,32768] [--deadline SECONDS] [--profile]

A random-weight 1B-class Llama shape (hidden 2048, 16 layers, 32 q-heads / 8 kv-heads, head
dim 64, MLP 8192, vocab 32000) in bfloat16 with sdpa attention, one sequence of T tokens.
Per T: the plain forward (model(ids), no capture) best of 3 after a warm-up, and kvcapture's
capture of the same sequence (kvcapture.capture: the attention interface installed, every
layer's q, k, v, attn_out and the read-out written to an HDF5 trace in OUTDIR's file system),
wall time, peak GPU memory (torch.cuda.max_memory_allocated) and the trace's size. The model is
built once, on the GPU (random weights: this measures cost, not a trace anyone validates), and
handed to kvcapture, so model construction is in neither time. Also the capture with
--no-attn-out --no-readout (q, k, v only). One JSON line per measurement in OUTDIR/cost.jsonl.
Not part of `make bench` (no GPU there): tests/gpu/run.sh runs it on the GPU machine."""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "capture"))
import kvcapture  # noqa: E402

SPEC = ("hf-random:llama:hidden_size=2048,intermediate_size=8192,num_hidden_layers=16,"
        "num_attention_heads=32,num_key_value_heads=8,vocab_size=32000,"
        "max_position_embeddings=32768,bos_token_id=1,seed=1")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tokens", default="1024,4096,16384,32768")
    ap.add_argument("--profile", action="store_true", help="cProfile the first full capture (top 25 by own time)")
    ap.add_argument("--deadline", type=float, default=1e9, help="stop starting new T after this many s")
    a = ap.parse_args()
    t_start = time.time()
    os.makedirs(a.out, exist_ok=True)
    dev = torch.device("cuda")
    with torch.device(dev):         # build on the GPU: seconds, not a minute of CPU init
        ad = kvcapture.HFAdapter(SPEC, dev, torch.bfloat16, None)
    kvcapture.load_adapter = lambda spec, device, dtype, base: ad      # capture() takes this model
    nparam = sum(p.numel() for p in ad.model.parameters())
    log = open(os.path.join(a.out, "cost.jsonl"), "a")

    def emit(r):
        r.update(params=nparam, gpu=torch.cuda.get_device_name(dev))
        print(json.dumps(r), flush=True)
        log.write(json.dumps(r) + "\n")
        log.flush()

    rng = np.random.default_rng(0)
    for T in (int(x) for x in a.tokens.split(",")):
        if time.time() - t_start > a.deadline:
            emit(dict(T=T, skipped="deadline"))
            continue
        ids = os.path.join(a.out, f"ids{T}.txt")
        row = [1] + rng.integers(2, 32000, T - 1).tolist()
        with open(ids, "w") as f:
            f.write(" ".join(map(str, row)) + "\n")
        x = torch.tensor([row], device=dev)
        ad._set_impl("sdpa")            # the plain forward: the model's own sdpa attention
        times = []
        torch.cuda.reset_peak_memory_stats(dev)
        with torch.no_grad():
            for i in range(4):
                torch.cuda.synchronize()
                t0 = time.time()
                logits = ad.forward(x)
                torch.cuda.synchronize()
                times.append(time.time() - t0)
                del logits
        plain = min(times[1:])
        plain_mem = torch.cuda.max_memory_allocated(dev)
        for name, extra in (("capture", []), ("capture_qkv", ["--no-attn-out", "--no-readout"])):
            trace = os.path.join(a.out, f"cost{T}.h5")
            args = kvcapture.build_parser().parse_args(
                ["--model", SPEC, "--ids", ids, "--tokens", str(T), "--sequences", "1", "--batch", "1",
                 "--device", "cuda", "--dtype", "bfloat16", "-o", trace, "--force"] + extra)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
            torch.cuda.synchronize()
            prof = None
            if a.profile and name == "capture":
                import cProfile
                prof = cProfile.Profile()
                prof.enable()
            t0 = time.time()
            kvcapture.capture(args)
            if prof is not None:
                torch.cuda.synchronize()
                prof.disable()
                import pstats
                pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(25)
                a.profile = False
            torch.cuda.synchronize()
            wall = time.time() - t0
            size = os.path.getsize(trace)
            os.unlink(trace)
            emit(dict(T=T, what=name, plain_s=round(plain, 4), capture_s=round(wall, 3),
                      ratio=round(wall / plain, 2), trace_mib=round(size / 2**20, 1),
                      plain_peak_gib=round(plain_mem / 2**30, 2),
                      capture_peak_gib=round(torch.cuda.max_memory_allocated(dev) / 2**30, 2),
                      write_gb_s=round(size / 1e9 / wall, 2)))
    log.close()


if __name__ == "__main__":
    main()
