#!/usr/bin/env python3
"""kvcapture: run a causal LM over text and write a kvtrace trace (traces/SCHEMA.md, version 1).

    python3 capture/kvcapture.py --model M --text FILE [--jsonl FILE | --ids FILE] \\
        --tokens T --sequences S [--stride N] [--dtype float32|float16|bfloat16] \\
        [--device cpu|cuda] [--layers 0,1,..] [--batch B] [--no-readout | --no-readout-ok] \\
        [--no-attn-out] [--prompt-scores] [--deflate N] [--allow-beyond-training] [--force] -o OUT.h5

    python3 capture/kvcapture.py validate --model M --trace T --export E -o TRUTH.h5
        (the in-model re-run of `kvreplay run --export` cache states: capture/validate.py)

Models (M):
  ref:PATH                      a kvtrace reference checkpoint (capture/train_ref.py); sequences
                                longer than the context it was trained at (its train_ctx,
                                BOS included; 256 for checkpoints that predate the field) are
                                refused unless --allow-beyond-training
  ref-random:SEED[:k=v,...]     a randomly initialised reference model; k = a RefConfig field
                                (n_layers, d_model, n_heads, n_kv_heads, head_dim, d_ff,
                                tie_embeddings, post_norm, ...) or init_std
  hf-random:TYPE[:k=v,...]      a randomly initialised Hugging Face model built from
                                AutoConfig.for_model(TYPE, k=v, ...) (needs transformers)
  NAME or PATH                  a Hugging Face causal LM (needs transformers >= 4.48)

Inputs: --text (plain text, cut into windows of T-1 tokens after a BOS token, every --stride
tokens), --jsonl (one object per line with "text", or with "context" and "question" and
optionally "answer": /prefill_len is then the length of BOS + context; optionally "needles",
a list of {"start", "end", "value_start", "value_end"} byte offsets into the context, written
to /needles with the answer's token span, byte-level models only), --ids (pre-tokenised:
whitespace-separated ids, one sequence per line, used as given). The reference model and
hf-random models tokenise text as UTF-8 bytes; Hugging Face models use their tokenizer.

How it captures: the model's attention calls go through a named attention function
(transformers' attention-function interface; the reference model has the same contract).
kvcapture registers a function that delegates to the model's real attention, so the model's
outputs are unchanged, and records post-RoPE q, k, v (before GQA repetition) and the
attention output per head. Each layer's tensors for the current batch of sequences are
written to the file as soon as they are produced (memory: one layer of one batch). The file
is written under a temporary name in the output folder and renamed on success; on any error
the temporary file is removed and nothing appears under the final name. An existing output
file is refused (left as it is) unless --force.

--prompt-scores also writes /prompt_scores: per layer, sequence and query head, the column sums
of the causal attention over every query row and each row's normalised entropy, computed in
float64 from the stored (f16) q and k with the replay's attention parameters, in blocks of
query rows (memory bounded at any T; one T^2/2 pass per layer and head, done once), with
those parameters as the group's attributes (attn_scale, attn_softcap, layer_window [L]).
`kvreplay run` (--prompt-scores auto, its default, or trace) then serves H2O-style
whole-prompt scores from them in time linear in T.

Shapes: S sequences, T tokens, H q-heads, Hkv kv-heads, D head_dim, C d_model, V vocab.
"""
import argparse
import datetime
import errno
import gc
import hashlib
import json
import math
import os
import shlex
import signal
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from pydeps import require  # noqa: E402

require("kvcapture", ("numpy", "h5py", "torch"))   # one line naming a missing module, not a traceback
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import refmodel  # noqa: E402

CAPTURE_VERSION = "1.0"
TOPK = 8
CAPTURE_FN = "kvcapture"
_STATE = {"hdf5_unclean": False}


class CaptureError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


# ---------------------------------------------------------------------------------------------
# Model adapters. Each exposes the same small surface:
#   arch, name, meta (dict of root attributes), bos_id, n_model_layers, dtype
#   tokenize(text) -> [int]
#   install(record) / uninstall()     record(layer_idx, q, k, v, out, kwargs) per attention call
#   forward(ids [B,T]) -> logits [B,T,V]; final_hidden() -> [B,T,C] of the last forward
#   rope_tables(T) -> (cos, sin) [T, R] float32 numpy, or None
#   readout_refusal() -> str or None; readout_params(model_layers) -> dict
# ---------------------------------------------------------------------------------------------

def _parse_kv(spec, what):
    out = {}
    if not spec:
        return out
    for item in spec.split(","):
        if "=" not in item:
            raise CaptureError(f"{what}: expected key=value, got '{item}'")
        k, v = item.split("=", 1)
        v = v.strip()
        if v.lower() in ("true", "false"):
            out[k.strip()] = v.lower() == "true"
        else:
            try:
                out[k.strip()] = int(v)
            except ValueError:
                try:
                    out[k.strip()] = float(v)
                except ValueError:
                    out[k.strip()] = v
    return out


class RefAdapter:
    """The built-in reference model (capture/refmodel.py)."""

    arch = "kvtrace-ref"
    train_ctx = None    # ref:PATH: the context the checkpoint was trained at (refmodel.load_model)

    def __init__(self, spec, device, dtype):
        self.name = spec
        if spec.startswith("ref:"):
            path = spec[4:]
            if not os.path.isfile(path):
                raise CaptureError(f"model '{spec}': no such checkpoint file '{path}'")
            try:
                self.model = refmodel.load_model(path)
            except Exception as e:  # noqa: BLE001 - any load failure is a bad checkpoint
                raise CaptureError(f"model '{spec}': cannot load checkpoint: {_one_line(e)}")
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            self.train_ctx = int(self.model.train_ctx)
            how = (f"assumed {self.train_ctx}: the checkpoint records no train_ctx"
                   if self.model.train_ctx_assumed else f"{self.train_ctx}")
            self.desc = (f"kvtrace reference checkpoint {path} (sha256 {digest[:16]}), "
                         f"trained at {how} tokens")
        else:  # ref-random:SEED[:k=v,...]
            parts = spec.split(":", 2)
            try:
                seed = int(parts[1])
            except (IndexError, ValueError):
                raise CaptureError(f"model '{spec}': expected ref-random:SEED[:key=value,...]")
            kv = _parse_kv(parts[2] if len(parts) > 2 else "", f"model '{spec}'")
            init_std = float(kv.pop("init_std", 0.02))
            fields = refmodel.RefConfig.__dataclass_fields__
            bad = [k for k in kv if k not in fields]
            if bad:
                raise CaptureError(f"model '{spec}': unknown reference-model setting '{bad[0]}' "
                                   f"(known: {', '.join(sorted(fields))}, init_std)")
            try:
                cfg = refmodel.RefConfig(**kv)
            except TypeError as e:
                raise CaptureError(f"model '{spec}': {e}")
            if cfg.n_heads % cfg.n_kv_heads or cfg.head_dim % 2:
                raise CaptureError(f"model '{spec}': n_heads must be a multiple of n_kv_heads "
                                   "and head_dim even")
            torch.manual_seed(seed)
            self.model = refmodel.RefModel(cfg)
            if init_std != 0.02:
                with torch.no_grad():
                    for m in self.model.modules():
                        if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
                            m.weight.normal_(0.0, init_std)
            self.desc = f"random reference model, seed {seed}, init_std {init_std}"
        self.cfg = self.model.cfg
        self.desc += f", config {json.dumps(json.loads(self.cfg.to_json()), sort_keys=True)}"
        self.model.to(device=device, dtype=dtype).eval()
        self.device, self.dtype = device, dtype
        c = self.cfg
        self.bos_id = refmodel.BOS_ID
        self.n_model_layers = c.n_layers
        self.meta = dict(n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim,
                         d_model=c.d_model, vocab_size=c.vocab_size,
                         attn_scale=1.0 / math.sqrt(c.head_dim), attn_softcap=0.0,
                         sliding_window=0, positional="rope", rope_layout="rotate_half",
                         rotary_dim=c.head_dim, bos_id=refmodel.BOS_ID)
        self._hidden = None
        self.model.norm.register_forward_hook(self._hook_norm)

    def _hook_norm(self, module, inputs, output):
        self._hidden = inputs[0]

    def tokenize(self, text):
        return list(text.encode("utf-8"))

    def install(self, record, name=CAPTURE_FN):
        """Route every attention call through record(layer_idx, q, k, v, out, kwargs) under
        `name`; out is the real attention's [B,T,H,D]. A return value other than None replaces
        it (validate's planned attention); capture's record returns None."""
        def attn(module, q, k, v, mask, scale):
            out = refmodel.eager_attention(module, q, k, v, mask, scale)
            new = record(module.layer_idx, q, k, v, out, {"scaling": scale})
            return out if new is None else new
        refmodel.ATTENTION_FUNCTIONS[name] = attn
        self._installed = name
        self.model.set_attn_impl(name)

    def uninstall(self):
        self.model.set_attn_impl("eager")
        refmodel.ATTENTION_FUNCTIONS.pop(getattr(self, "_installed", CAPTURE_FN), None)

    def forward(self, ids):
        return self.model(ids)

    def final_hidden(self):
        return self._hidden

    def rope_tables(self, T):
        cos, sin = self.model.rope(T, "cpu")
        return cos.float().numpy(), sin.float().numpy()

    def readout_refusal(self):
        if self.cfg.post_norm:
            return ("architecture kvtrace-ref with post_norm: the attention output is normalised "
                    "before it enters the residual stream, so the direct-path read-out is not valid")
        return None

    def readout_params(self, model_layers):
        m = self.model
        return dict(norm_type="rmsnorm", norm_eps=float(self.cfg.norm_eps),
                    norm_weight=m.norm.weight, norm_bias=None, final_logit_softcap=0.0,
                    w_u=m.lm_head.weight, b_u=m.lm_head.bias,
                    w_o=[m.blocks[ml].attn.o_proj.weight.t() for ml in model_layers])


# Hugging Face architectures kvcapture knows. readout: None = supported, else why not.
HF_ARCHS = {
    "llama": None, "mistral": None, "qwen2": None, "qwen3": None, "gemma": None, "gpt2": None,
    "gemma2": "gemma2 normalises the attention output (post-attention RMSNorm) before it enters "
              "the residual stream, so the direct-path read-out is not valid",
}


class HFAdapter:
    """A Hugging Face causal LM (transformers >= 4.48), captured through its attention interface.

    Not exercised on machines without transformers (Debian has no package); tests/py/
    test_capture_hf.py checks it where transformers is importable."""

    train_ctx = None    # not known for Hugging Face models (max_position_embeddings is not it)

    def __init__(self, spec, device, dtype, base_impl):
        try:
            import transformers
            from transformers import AutoConfig, AutoModelForCausalLM
        except ImportError:
            raise CaptureError(f"unknown model '{spec}': not ref:PATH or ref-random:SEED, and "
                               "transformers is not installed (needed for Hugging Face models)")
        self.tf = transformers
        try:
            ver = tuple(int(x) for x in transformers.__version__.split(".")[:2])
        except ValueError:
            ver = (4, 48)
        if ver < (4, 48):
            raise CaptureError(f"transformers {transformers.__version__} is too old: kvcapture "
                               "needs >= 4.48 (the attention-function interface)")
        # the dtype keyword was renamed in 4.56 (torch_dtype -> dtype)
        dkw = {"dtype": dtype} if ver >= (4, 56) else {"torch_dtype": dtype}
        self.name = spec
        self.device, self.dtype = device, dtype
        self.tokenizer = None
        self.base_impl = base_impl
        if spec.startswith("hf-random:"):
            parts = spec.split(":", 2)
            kv = _parse_kv(parts[2] if len(parts) > 2 else "", f"model '{spec}'")
            seed = int(kv.pop("seed", 0))
            try:
                cfg = AutoConfig.for_model(parts[1], **kv)
            except Exception as e:  # noqa: BLE001
                raise CaptureError(f"model '{spec}': {_one_line(e)}")
            torch.manual_seed(seed)
            self.model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").to(dtype)
            self.desc = f"random Hugging Face {parts[1]} model from config, seed {seed}"
        else:
            try:
                self.model = AutoModelForCausalLM.from_pretrained(spec, attn_implementation="eager",
                                                                  **dkw)
            except Exception as e:  # noqa: BLE001 - unknown name, no network, bad files
                raise CaptureError(f"unknown model '{spec}': transformers cannot load it: "
                                   f"{_one_line(e)}")
            rev = getattr(self.model.config, "_commit_hash", None)
            self.desc = f"Hugging Face model {spec}" + (f" (revision {rev})" if rev else "")
            self.tokenizer = None  # loaded lazily: --ids needs none
        self.model.to(device).eval()
        cfg = self.model.config
        self.arch = cfg.model_type
        if self.arch not in HF_ARCHS:
            raise CaptureError(f"model '{spec}': unsupported architecture '{self.arch}' "
                               f"(supported: {', '.join(sorted(HF_ARCHS))})")
        # the real attention the capture delegates to: sdpa by default; eager where the model
        # needs it (gemma2's logit soft-capping is not in sdpa)
        self.base_impl = base_impl or ("eager" if self.arch == "gemma2" else "sdpa")
        # the model's own forward (no capture installed) runs the same attention the capture
        # delegates to, so that installing the capture changes no output bit (it was loaded
        # eager: a plain forward then differed from a captured one by eager-vs-sdpa rounding,
        # ~1e-7 in float32, seen with transformers 5.17 on the GPU machine)
        self._set_impl(self.base_impl)
        if self.arch == "gpt2":
            if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
                raise CaptureError("gpt2 with scale_attn_by_inverse_layer_idx: a per-layer "
                                   "attention scale is not representable in a kvtrace trace")
            H = cfg.n_head
            C = cfg.n_embd
            D = C // H
            Hkv = H
            scale = 1.0 / math.sqrt(D) if getattr(cfg, "scale_attn_weights", True) else 1.0
            self.layers = self.model.transformer.h
            self.final_norm = self.model.transformer.ln_f
            self.rotary = None
        else:
            H = cfg.num_attention_heads
            C = cfg.hidden_size
            D = getattr(cfg, "head_dim", None) or C // H
            Hkv = getattr(cfg, "num_key_value_heads", None) or H
            qpas = getattr(cfg, "query_pre_attn_scalar", None)
            scale = (qpas ** -0.5) if qpas else 1.0 / math.sqrt(D)
            self.layers = self.model.model.layers
            self.final_norm = self.model.model.norm
            self.rotary = getattr(self.model.model, "rotary_emb", None)
            if self.rotary is None:
                raise CaptureError(f"model '{spec}': cannot find the rotary embedding "
                                   "(model.model.rotary_emb)")
        self.n_model_layers = len(self.layers)
        bos = getattr(cfg, "bos_token_id", None)
        self.bos_id = bos if isinstance(bos, int) else None
        self.meta = dict(n_heads=H, n_kv_heads=Hkv, head_dim=D, d_model=C,
                         vocab_size=cfg.vocab_size, attn_scale=float(scale),
                         attn_softcap=float(getattr(cfg, "attn_logit_softcapping", None) or 0.0),
                         sliding_window=0,
                         positional="learned" if self.arch == "gpt2" else "rope")
        if self.rotary is not None:
            self.meta["rope_layout"] = "rotate_half"
        if self.bos_id is not None:
            self.meta["bos_id"] = self.bos_id
        self._hidden = None
        self.final_norm.register_forward_hook(self._hook_norm)

    def _hook_norm(self, module, inputs, output):
        self._hidden = inputs[0]

    def tokenize(self, text):
        if self.name.startswith("hf-random:"):
            return list(text.encode("utf-8"))   # no tokenizer: bytes (ids < 256 <= V)
        if self.tokenizer is None:
            try:
                self.tokenizer = self.tf.AutoTokenizer.from_pretrained(self.name)
            except Exception as e:  # noqa: BLE001
                raise CaptureError(f"model '{self.name}': cannot load its tokenizer: "
                                   f"{_one_line(e)} (use --ids for pre-tokenised input)")
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _interfaces(self):
        from transformers import modeling_utils
        attn = getattr(modeling_utils, "ALL_ATTENTION_FUNCTIONS")
        try:
            from transformers import masking_utils
            masks = getattr(masking_utils, "ALL_MASK_ATTENTION_FUNCTIONS", None)
        except ImportError:
            masks = None
        return attn, masks

    def install(self, record, name=CAPTURE_FN):
        """As RefAdapter.install: record(layer_idx, query, key, value, out [B,T,H,D], kwargs);
        a return value other than None replaces the attention output (weights then None)."""
        attn_fns, mask_fns = self._interfaces()
        if self.base_impl == "eager":
            # eager is module-level in each modeling file, not in the registry
            real = sys.modules[type(self.model).__module__].eager_attention_forward
        else:
            real = attn_fns[self.base_impl]

        def attn(module, query, key, value, attention_mask, *args, **kwargs):
            out = real(module, query, key, value, attention_mask, *args, **kwargs)
            o = out[0] if isinstance(out, tuple) else out
            new = record(module.layer_idx, query, key, value, o, kwargs)
            if new is None:
                return out
            return (new, None) if isinstance(out, tuple) else new

        if hasattr(attn_fns, "register"):
            attn_fns.register(name, attn)              # AttentionInterface (>= 4.50)
        else:
            attn_fns[name] = attn                      # plain dict (4.48, 4.49)
        if mask_fns is not None:                       # masks in the real implementation's format
            mask_fns.register(name, mask_fns[self.base_impl])
        self._set_impl(name)

    def _set_impl(self, name):
        if hasattr(self.model, "set_attn_implementation"):
            try:
                self.model.set_attn_implementation(name)
                return
            except Exception:  # noqa: BLE001 - older signature: set the config field below
                pass
        self.model.config._attn_implementation = name

    def uninstall(self):
        self._set_impl(self.base_impl)

    def forward(self, ids):
        return self.model(input_ids=ids, use_cache=False).logits

    def final_hidden(self):
        return self._hidden

    def rope_tables(self, T):
        if self.rotary is None:
            return None
        pos = torch.arange(T, device=self.device)[None]
        x = torch.zeros(1, device=self.device, dtype=self.dtype)
        cos, sin = self.rotary(x, pos)                 # [1, T, R] in the model's dtype
        return cos[0].float().cpu().numpy(), sin[0].float().cpu().numpy()

    def readout_refusal(self):
        return HF_ARCHS.get(self.arch)

    def readout_params(self, model_layers):
        cfg = self.model.config
        norm = self.final_norm
        if self.arch == "gpt2":
            norm_type, eps, w, b = "layernorm", norm.eps, norm.weight, norm.bias
            w_o = [self.layers[ml].attn.c_proj.weight for ml in model_layers]   # Conv1D: [in, out]
        else:
            norm_type = "rmsnorm"
            eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps")
            w, b = norm.weight, None
            if self.arch.startswith("gemma"):
                w = 1.0 + w.float()                    # Gemma's RMSNorm scales by (1 + w)
            w_o = [self.layers[ml].self_attn.o_proj.weight.t() for ml in model_layers]
        head = self.model.get_output_embeddings()
        return dict(norm_type=norm_type, norm_eps=float(eps), norm_weight=w, norm_bias=b,
                    final_logit_softcap=float(getattr(cfg, "final_logit_softcapping", None) or 0.0),
                    w_u=head.weight, b_u=getattr(head, "bias", None), w_o=w_o)


def load_adapter(spec, device, dtype, base_impl):
    if spec.startswith("ref:") or spec.startswith("ref-random:"):
        return RefAdapter(spec, device, dtype)
    return HFAdapter(spec, device, dtype, base_impl)


# ---------------------------------------------------------------------------------------------
# Inputs -> list of sequences (ids) and optional prefill lengths
# ---------------------------------------------------------------------------------------------

def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CaptureError(f"{what} '{path}': {e.strerror}")


def sequences_from_text(path, adapter, T, S, stride):
    raw = _read(path, "text file")
    if not raw.strip():
        raise CaptureError(f"text file '{path}': empty text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CaptureError(f"text file '{path}': not UTF-8 (byte {e.start})")
    ids = adapter.tokenize(text)
    bos = [adapter.bos_id] if adapter.bos_id is not None else []
    body = T - len(bos)
    if body < 1:
        raise CaptureError(f"--tokens {T} leaves no room for text after BOS")
    if stride is not None and stride < 1:
        raise CaptureError(f"--stride {stride}: must be >= 1")
    stride = stride or body
    if len(ids) < body:
        raise CaptureError(f"text file '{path}': text too short: {len(ids)} tokens, one "
                           f"sequence of --tokens {T} needs {body}")
    avail = 1 + (len(ids) - body) // stride
    if avail < S:
        raise CaptureError(f"text file '{path}': {len(ids)} tokens give {avail} sequences of "
                           f"{T} tokens at stride {stride}; --sequences asks for {S}")
    seqs = [bos + ids[i * stride:i * stride + body] for i in range(S)]
    src = (f"text file {os.path.basename(path)} ({len(raw)} bytes, sha256 "
           f"{hashlib.sha256(raw).hexdigest()[:16]}): {S} windows of {body} tokens"
           f"{' after BOS' if bos else ''}, stride {stride}")
    return seqs, None, src


def _needles_of(rec, where, ctx_start, n_ctx, ans0, ans1, seq_index, out):
    """Context byte offsets of the planted needles -> token positions (/needles rows)."""
    nd = rec.get("needles")
    if not isinstance(nd, list) or not nd:
        raise CaptureError(f"{where}: 'needles' must be a non-empty list")
    if n_ctx != len(rec["context"].encode("utf-8")):         # tokens are not the context's bytes
        raise CaptureError(f"{where}: 'needles' needs a byte-level model (reference or hf-random): "
                           "its offsets are bytes of the context")
    if ans1 <= ans0:
        raise CaptureError(f"{where}: 'needles' needs a non-empty 'answer'")
    for i, n in enumerate(nd):
        keys = ("start", "end", "value_start", "value_end")
        if not isinstance(n, dict) or any(type(n.get(k)) is not int for k in keys):
            raise CaptureError(f"{where}: needles[{i}] needs integer fields {', '.join(keys)}")
        if not (0 <= n["start"] <= n["value_start"] < n["value_end"] <= n["end"] <= n_ctx):
            raise CaptureError(f"{where}: needles[{i}]: need 0 <= start <= value_start < value_end "
                               f"<= end <= context bytes ({n_ctx})")
        out.append((seq_index, ctx_start + n["start"], ctx_start + n["end"], ctx_start + n["value_start"],
                    ctx_start + n["value_end"], ans0, ans1))


def sequences_from_jsonl(path, adapter, T, S, needles_out=None):
    raw = _read(path, "jsonl file")
    lines = [(i + 1, ln) for i, ln in enumerate(raw.decode("utf-8", "replace").splitlines())
             if ln.strip()]
    if not lines:
        raise CaptureError(f"jsonl file '{path}': empty")
    bos = [adapter.bos_id] if adapter.bos_id is not None else []
    seqs, prefill, has_qa = [], [], None
    for lineno, ln in lines[:S]:
        where = f"jsonl file '{path}' line {lineno}"
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError as e:
            raise CaptureError(f"{where}: invalid JSON ({e.msg})")
        if not isinstance(rec, dict):
            raise CaptureError(f"{where}: expected an object")
        qa = "context" in rec or "question" in rec
        if has_qa is None:
            has_qa = qa
        elif has_qa != qa:
            raise CaptureError(f"{where}: mixes 'text' records with 'context'/'question' records")
        if qa:
            if not isinstance(rec.get("context"), str) or not isinstance(rec.get("question"), str):
                raise CaptureError(f"{where}: needs string fields 'context' and 'question'")
            ctx = bos + adapter.tokenize(rec["context"])
            rest = adapter.tokenize(rec["question"])
            ans0 = len(ctx) + len(rest)
            if isinstance(rec.get("answer"), str):
                rest += adapter.tokenize(rec["answer"])
            if not rest:
                raise CaptureError(f"{where}: empty question")
            seq = ctx + rest
            if len(seq) > T:
                raise CaptureError(f"{where}: context + question is {len(seq)} tokens, more than "
                                   f"--tokens {T}")
            if "needles" in rec and needles_out is not None:
                _needles_of(rec, where, len(bos), len(ctx) - len(bos), ans0, len(seq),
                            len(seqs), needles_out)
            prefill.append(len(ctx))
        else:
            if not isinstance(rec.get("text"), str):
                raise CaptureError(f"{where}: needs a string field 'text' (or 'context'/'question')")
            seq = (bos + adapter.tokenize(rec["text"]))[:T]
            if len(seq) <= len(bos):
                raise CaptureError(f"{where}: empty text")
        seqs.append(seq)
    if len(seqs) < S:
        raise CaptureError(f"jsonl file '{path}': {len(seqs)} records; --sequences asks for {S}")
    src = (f"jsonl file {os.path.basename(path)} (sha256 {hashlib.sha256(raw).hexdigest()[:16]}): "
           f"first {S} records" + (", context/question pairs" if has_qa else ""))
    return seqs, (prefill if has_qa else None), src


def sequences_from_ids(path, adapter, T, S):
    raw = _read(path, "ids file")
    rows = [(i + 1, ln) for i, ln in enumerate(raw.decode("ascii", "replace").splitlines())
            if ln.strip()]
    if not rows:
        raise CaptureError(f"ids file '{path}': empty")
    V = adapter.meta["vocab_size"]
    seqs = []
    for lineno, ln in rows[:S]:
        try:
            seq = [int(x) for x in ln.split()]
        except ValueError:
            raise CaptureError(f"ids file '{path}' line {lineno}: not a list of integers")
        if len(seq) > T:
            raise CaptureError(f"ids file '{path}' line {lineno}: {len(seq)} ids, more than "
                               f"--tokens {T}")
        bad = [x for x in seq if not 0 <= x < V]
        if bad:
            raise CaptureError(f"ids file '{path}' line {lineno}: id {bad[0]} outside [0, {V})")
        seqs.append(seq)
    if len(seqs) < S:
        raise CaptureError(f"ids file '{path}': {len(seqs)} sequences; --sequences asks for {S}")
    src = (f"ids file {os.path.basename(path)} (sha256 {hashlib.sha256(raw).hexdigest()[:16]}): "
           f"first {S} lines")
    return seqs, None, src


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------

def _one_line(e):
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def _to_f16(x, what):
    """torch tensor -> float16 numpy, refusing values the f16 range cannot hold. Made contiguous
    where it is (on the GPU for a cuda capture): attn_out arrives transposed, and h5py copied
    it again on the host (1.45 of 9.5 s of a 16k-token capture on an H200, bench/gpu_capture.py)."""
    a = x.detach().to(torch.float16).contiguous()
    if not bool(torch.isfinite(a).all()):
        xf = x.detach().float()
        n_over = int((~torch.isfinite(a)).sum())
        raise CaptureError(f"{what}: {n_over} values are NaN/Inf or exceed the f16 range "
                           f"(max |x| = {float(xf.abs().max()):.4g}); not storable in a kvtrace trace")
    return a.cpu().numpy()


# float64 logits per block of query rows in prompt_scores: 16 MiB, below glibc's largest mmap
# threshold, so the block's temporaries are reused instead of mapped and faulted in afresh
# (blocks of 128 MiB: 8 of 14 s at 8k tokens, 8 heads, spent in the kernel's page faults)
PS_ELEMS = 1 << 21


def prompt_scores(q16, k16, scale, softcap, window):
    """/prompt_scores of one layer: q16 [B, H, n, D], k16 [B, Hkv, n, D], the values the trace
    stores (rounded to f16). Returns colsum, entropy [B, H, n] float64: colsum[j] = sum over
    every query row t < n of p(t, j), entropy[t] = -sum p log p / log nvis over row t's nvis
    visible keys (0 when nvis <= 1), where p(t, .) is the causal softmax of the replay's logits
    s = scale q.k, soft-capped (c tanh(s / c)) when softcap > 0, over the keys (t - window, t]
    (all j <= t when window = 0), scale and softcap rounded to f32 as the replay holds them.
    Everything in float64, log p as s - lse (the replay's formula); blocks of query rows, so
    memory is B H rows n, never n x n."""
    B, H, n, D = q16.shape
    G = H // k16.shape[1]
    scale = float(np.float32(scale))
    softcap = float(np.float32(softcap))
    qd = q16.double()
    kd = k16.double().repeat_interleave(G, dim=1)
    colsum = torch.zeros(B, H, n, dtype=torch.float64, device=q16.device)
    ent = torch.zeros(B, H, n, dtype=torch.float64, device=q16.device)
    rows = max(1, PS_ELEMS // max(1, B * H * n))
    j = torch.arange(n, device=q16.device)
    for t0 in range(0, n, rows):
        t1 = min(n, t0 + rows)
        t = torch.arange(t0, t1, device=q16.device)[:, None]
        vis = j[None, :t1] <= t
        if window > 0:
            vis = vis & (j[None, :t1] > t - window)
        s = torch.einsum("bhtd,bhjd->bhtj", qd[:, :, t0:t1], kd[:, :, :t1]) * scale
        if softcap > 0:
            s = softcap * torch.tanh(s / softcap)
        s = s.masked_fill(~vis, float("-inf"))
        lse = torch.logsumexp(s, dim=-1, keepdim=True)
        p = torch.exp(s - lse)                          # 0 on masked keys
        colsum[:, :, :t1] += p.sum(dim=2)
        h = torch.where(vis, p * (lse - s), torch.zeros((), dtype=torch.float64, device=q16.device)).sum(-1)
        nvis = vis.sum(-1).to(torch.float64)
        ent[:, :, t0:t1] = torch.where(nvis > 1, h / torch.log(nvis.clamp(min=2)), torch.zeros_like(h))
    return colsum, ent


class TraceWriter:
    def __init__(self, f, S, T, L, meta, attn_out, readout, deflate, scores=False):
        self.f, self.T = f, T
        H, Hkv, D, C = meta["n_heads"], meta["n_kv_heads"], meta["head_dim"], meta["d_model"]
        self.comp = dict(compression="gzip", compression_opts=deflate, shuffle=True) if deflate else {}
        tc = min(T, 256)
        self.layers = []
        for l in range(L):
            g = f.create_group(f"layers/{l}")
            d = {}
            for name, heads in (("q", H), ("k", Hkv), ("v", Hkv)) + ((("attn_out", H),) if attn_out else ()):
                d[name] = g.create_dataset(name, shape=(S, heads, T, D), dtype="<f2",
                                           chunks=(1, 1, tc, D), **self.comp)
            self.layers.append(d)
        self.scores = None
        if scores:      # /prompt_scores: one (layer, sequence, head) row per chunk
            self.scores = [f.create_dataset(f"prompt_scores/{name}", shape=(L, S, H, T), dtype="<f4",
                                            chunks=(1, 1, 1, T), **self.comp) for name in ("colsum", "entropy")]
            # the attention the scores are sums of, so that the replay can tell when the
            # trace's own parameters no longer are these (kvreplay run --prompt-scores auto)
            g = f["prompt_scores"]
            g.attrs["attn_scale"] = float(meta["attn_scale"])
            g.attrs["attn_softcap"] = float(meta["attn_softcap"])
            self.ps_window = np.full(L, int(meta["sliding_window"]), dtype="<i8")
            g.attrs["layer_window"] = self.ps_window
        if readout:
            self.hidden = f.create_dataset("readout/hidden", shape=(S, T, C), dtype="<f2",
                                           chunks=(1, tc, C), **self.comp)
            self.lse = f.create_dataset("readout/ref_lse", shape=(S, T), dtype="<f4")
            self.top_ids = f.create_dataset("readout/ref_top_ids", shape=(S, T, TOPK), dtype="<i4")
            self.top_logits = f.create_dataset("readout/ref_top_logits", shape=(S, T, TOPK), dtype="<f4")

    def _pad(self, a, axis):
        n = a.shape[axis]
        if n == self.T:
            return a
        pad = [(0, 0)] * a.ndim
        pad[axis] = (0, self.T - n)
        return np.pad(a, pad)

    def layer(self, l, name, s0, x):
        """x [B, heads, Tb, D] (torch) -> /layers/l/name[s0:s0+B]."""
        a = self._pad(_to_f16(x, f"layer {l} {name} (sequences {s0}..)"), 2)
        self.layers[l][name][s0:s0 + a.shape[0]] = a

    def prompt_scores(self, l, s0, colsum, ent, window):
        """colsum, ent [B, H, n] float64 (torch) -> /prompt_scores/*[l, s0:s0+B], clamped to
        their ranges (0 <= colsum <= n, 0 <= entropy <= 1: float64 rounding only) and padded;
        window: layer l's, recorded in the group's layer_window."""
        if self.ps_window[l] != window:
            self.ps_window[l] = window
            self.f["prompt_scores"].attrs["layer_window"] = self.ps_window
        n = colsum.shape[2]
        for d, x, hi in ((self.scores[0], colsum, float(n)), (self.scores[1], ent, 1.0)):
            a = self._pad(x.clamp(0.0, hi).cpu().numpy().astype("<f4"), 2)
            d[l, s0:s0 + a.shape[0]] = a

    def readout_batch(self, s0, hidden, logits):
        B = hidden.shape[0]
        self.hidden[s0:s0 + B] = self._pad(_to_f16(hidden, f"readout hidden (sequences {s0}..)"), 1)
        lf = logits.float()
        lse = torch.logsumexp(lf, dim=-1)
        top_v, top_i = torch.topk(lf, TOPK, dim=-1)        # sorted, descending
        self.lse[s0:s0 + B] = self._pad(lse.cpu().numpy(), 1)
        self.top_ids[s0:s0 + B] = self._pad(top_i.to(torch.int32).cpu().numpy(), 1)
        self.top_logits[s0:s0 + B] = self._pad(top_v.cpu().numpy(), 1)

    def _big(self, path, a):
        """A 2-D weight, chunked by rows (<= 32 MiB a chunk) when compressed."""
        if self.comp:
            rows = max(1, min(a.shape[0], (32 << 20) // max(1, a.shape[1] * a.itemsize)))
            self.f.create_dataset(path, data=a, chunks=(rows, a.shape[1]), **self.comp)
        else:
            self.f.create_dataset(path, data=a)

    def readout_static(self, p):
        g = self.f["readout"]
        g.attrs["norm_type"] = p["norm_type"]
        g.attrs["norm_eps"] = float(p["norm_eps"])
        g.attrs["final_logit_softcap"] = float(p["final_logit_softcap"])
        g.create_dataset("norm_weight", data=p["norm_weight"].detach().float().cpu().numpy().astype("<f4"))
        if p["norm_bias"] is not None:
            g.create_dataset("norm_bias", data=p["norm_bias"].detach().float().cpu().numpy().astype("<f4"))
        self._big("readout/w_u", _to_f16(p["w_u"], "readout w_u"))
        if p["b_u"] is not None:
            g.create_dataset("b_u", data=p["b_u"].detach().float().cpu().numpy().astype("<f4"))
        for l, w in enumerate(p["w_o"]):
            self._big(f"readout/w_o/{l}", np.ascontiguousarray(_to_f16(w, f"readout w_o {l}")))


def capture(a):
    """Run the capture described by argparse namespace `a`; returns the final path."""
    out = os.path.abspath(a.output)
    odir = os.path.dirname(out)
    if not os.path.isdir(odir):
        raise CaptureError(f"output '{a.output}': folder '{odir}' does not exist")
    if os.path.isdir(out):
        raise CaptureError(f"output '{a.output}': is a folder")
    if os.path.lexists(out) and not a.force:
        raise CaptureError(f"output '{a.output}' exists; not overwritten (--force replaces it)")
    tmp = f"{out}.tmp.{os.getpid()}"
    try:   # fail fast on an unwritable destination, before loading the model
        open(tmp, "wb").close()
    except OSError as e:
        raise CaptureError(f"output '{a.output}': cannot write in '{odir}': {e.strerror}")
    try:
        _capture_into(a, tmp)
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return out


def _capture_into(a, tmp):
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[a.dtype]
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise CaptureError("--device cuda: no CUDA device is available to torch")
    device = torch.device(a.device)
    T, S = a.tokens, a.sequences
    if T < 2 or S < 1:
        raise CaptureError("--tokens must be >= 2 and --sequences >= 1")
    if a.deflate is not None and not 0 <= a.deflate <= 9:
        raise CaptureError("--deflate must be 0..9")

    ad = load_adapter(a.model, device, dtype, a.attn_impl)
    meta = ad.meta
    if a.layers:
        try:
            model_layers = [int(x) for x in a.layers.split(",")]
        except ValueError:
            raise CaptureError(f"--layers '{a.layers}': expected comma-separated layer indices")
        bad = [x for x in model_layers if not 0 <= x < ad.n_model_layers]
        if bad or len(set(model_layers)) != len(model_layers):
            raise CaptureError(f"--layers '{a.layers}': indices must be distinct, in "
                               f"[0, {ad.n_model_layers})")
    else:
        model_layers = list(range(ad.n_model_layers))
    L = len(model_layers)
    slot = {ml: l for l, ml in enumerate(model_layers)}
    qsel = kvsel = None             # --heads: kv heads kept and the query heads of their groups
    if a.heads:
        Hm, Hkvm = meta["n_heads"], meta["n_kv_heads"]
        try:
            kvsel = [int(x) for x in a.heads.split(",")]
        except ValueError:
            raise CaptureError(f"--heads '{a.heads}': expected comma-separated kv-head indices")
        if any(not 0 <= x < Hkvm for x in kvsel) or len(set(kvsel)) != len(kvsel):
            raise CaptureError(f"--heads '{a.heads}': kv-head indices must be distinct, in [0, {Hkvm})")
        G = Hm // Hkvm
        qsel = [g * G + i for g in kvsel for i in range(G)]
        meta = dict(meta, n_heads=len(qsel), n_kv_heads=len(kvsel))

    want_readout = not a.no_readout
    refusal = ad.readout_refusal() if want_readout else None
    if refusal and not a.no_readout_ok:
        raise CaptureError(f"read-out unsupported: {refusal} (use --no-readout or --no-readout-ok)")
    readout = want_readout and refusal is None

    n_inputs = sum(x is not None for x in (a.text, a.jsonl, a.ids))
    if n_inputs != 1:
        raise CaptureError("give exactly one of --text, --jsonl, --ids")
    needles = []        # /needles rows: (seq, start, end, value_start, value_end, answer_start, answer_end)
    if a.text is not None:
        seqs, prefill, src = sequences_from_text(a.text, ad, T, S, a.stride)
    elif a.jsonl is not None:
        seqs, prefill, src = sequences_from_jsonl(a.jsonl, ad, T, S, needles)
    else:
        seqs, prefill, src = sequences_from_ids(a.ids, ad, T, S)
    V = meta["vocab_size"]
    for i, s in enumerate(seqs):
        if any(not 0 <= x < V for x in s):
            raise CaptureError(f"sequence {i}: token id outside [0, {V}) (tokenizer/vocab mismatch)")
    # positions past the context the checkpoint was trained at have untrained attention
    n_max = max(len(s) for s in seqs)
    beyond = ad.train_ctx is not None and n_max > ad.train_ctx
    beyond_note = (f"{n_max}-token sequences (BOS included) exceed the {ad.train_ctx} tokens model "
                   f"'{a.model}' was trained at") if beyond else ""
    if beyond and not a.allow_beyond_training:
        raise CaptureError(f"{beyond_note}: attention past position {ad.train_ctx - 1} is untrained and "
                           f"every metric of the trace would be meaningless; use --tokens <= "
                           f"{ad.train_ctx}, or --allow-beyond-training (the trace is then marked "
                           "beyond_training = 1)")
    if beyond:
        print(f"kvcapture: warning: {beyond_note} (--allow-beyond-training); the trace is marked "
              "beyond_training = 1", file=sys.stderr)

    if a.deflate is None:
        need = _estimate_bytes(S, T, L, meta, not a.no_attn_out, readout, a.prompt_scores)
        st = os.statvfs(os.path.dirname(tmp))
        free = st.f_bavail * st.f_frsize
        if free < need:
            raise CaptureError(f"output '{a.output}': the trace needs about {need / 2**20:.1f} MiB, "
                               f"only {free / 2**20:.1f} MiB free there")

    f = h5py.File(tmp, "w")
    try:
        r = f.attrs
        r["kvtrace_version"] = 1
        r["model"] = a.model
        r["architecture"] = ad.arch
        r["n_layers"] = L
        for k in ("n_heads", "n_kv_heads", "head_dim", "d_model", "vocab_size", "sliding_window"):
            r[k] = int(meta[k])
        r["attn_scale"] = float(meta["attn_scale"])
        r["attn_softcap"] = float(meta["attn_softcap"])
        r["positional"] = meta["positional"]
        for k in ("rope_layout",):
            if k in meta:
                r[k] = meta[k]
        if "bos_id" in meta:
            r["bos_id"] = int(meta["bos_id"])
        if kvsel is not None:
            r["model_kv_heads"] = np.array(kvsel, dtype="<i4")
        r["capture_tool"] = "kvcapture"
        r["capture_version"] = CAPTURE_VERSION
        r["device"] = (f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                       else "cpu")
        r["torch_version"] = str(torch.__version__)
        try:
            import transformers
            r["transformers_version"] = str(transformers.__version__)
        except ImportError:
            r["transformers_version"] = "none"
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        when = (datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch
                else datetime.datetime.now(datetime.timezone.utc))
        r["created"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        note = f"{a.source_note}; " if a.source_note else ""
        warn = f"BEYOND TRAINING: {beyond_note} (--allow-beyond-training); " if beyond else ""
        r["source"] = f"{warn}{note}{src}; model: {ad.desc}; compute dtype {a.dtype}"[:4000]
        r["compute_dtype"] = a.dtype        # kvreplay check's tolerances follow it (replay/verify.h)
        if ad.train_ctx is not None:
            r["model_train_ctx"] = int(ad.train_ctx)
            r["beyond_training"] = int(beyond)
        r["command"] = ("python3 capture/kvcapture.py " + shlex.join(sys.argv[1:]))[:4000]
        if not want_readout:
            r["readout_unavailable"] = "not captured (--no-readout)"
        elif refusal:
            r["readout_unavailable"] = refusal[:500]

        lens = np.array([len(s) for s in seqs], dtype=np.int32)
        tok = np.zeros((S, T), dtype=np.int32)
        for i, s in enumerate(seqs):
            tok[i, :len(s)] = s
        f.create_dataset("tokens", data=tok.astype("<i4"))
        f.create_dataset("seq_len", data=lens.astype("<i4"))
        if prefill is not None:
            f.create_dataset("prefill_len", data=np.array(prefill, dtype="<i4"))
        if needles:
            nd = np.array(needles, dtype=np.int64)
            for j, name in enumerate(("seq", "start", "end", "value_start", "value_end",
                                      "answer_start", "answer_end")):
                f.create_dataset(f"needles/{name}", data=nd[:, j].astype("<i4"))
        if meta["positional"] == "rope":
            cos, sin = ad.rope_tables(T)
            f.create_dataset("rope/cos", data=cos.astype("<f4"))
            f.create_dataset("rope/sin", data=sin.astype("<f4"))
            r["rotary_dim"] = int(cos.shape[1])

        w = TraceWriter(f, S, T, L, meta, not a.no_attn_out, readout, a.deflate, a.prompt_scores)
        for l, ml in enumerate(model_layers):
            if ml != l:
                f[f"layers/{l}"].attrs["model_layer"] = ml
        if readout:
            with torch.no_grad():
                rp = ad.readout_params(model_layers)
                if qsel is not None:        # o_proj rows of the captured query heads only
                    D = meta["head_dim"]
                    rows = torch.tensor([h * D + d for h in qsel for d in range(D)])
                    rp = dict(rp, w_o=[wo[rows] for wo in rp["w_o"]])
                w.readout_static(rp)

        state = {"s0": 0, "seen": set()}

        def record(layer_idx, q, k, v, o, kwargs):
            l = slot.get(layer_idx)
            if l is None:
                return
            state["seen"].add(layer_idx)
            sc = kwargs.get("scaling")
            if sc is not None and abs(float(sc) - meta["attn_scale"]) > 1e-6 * meta["attn_scale"]:
                raise CaptureError(f"layer {layer_idx}: attention scale {sc} differs from "
                                   f"{meta['attn_scale']}; per-layer scales are not representable")
            cap = kwargs.get("softcap")
            if cap is not None and abs(float(cap) - meta["attn_softcap"]) > 1e-6:
                raise CaptureError(f"layer {layer_idx}: attention softcap {cap} differs from "
                                   f"{meta['attn_softcap']}")
            sw = kwargs.get("sliding_window")
            if sw:
                f[f"layers/{l}"].attrs["sliding_window"] = int(sw)
            s0 = state["s0"]
            if qsel is not None:
                q, k, v, o = q[:, qsel], k[:, kvsel], v[:, kvsel], o[:, :, qsel]
            w.layer(l, "q", s0, q)
            w.layer(l, "k", s0, k)
            w.layer(l, "v", s0, v)
            if not a.no_attn_out:
                w.layer(l, "attn_out", s0, o.transpose(1, 2))   # [B,T,H,D] -> [B,H,T,D]
            if a.prompt_scores:     # from the stored (f16) values, with the replay's parameters
                win = int(sw) if sw else int(meta["sliding_window"])
                cs, en = prompt_scores(q.detach().to(torch.float16), k.detach().to(torch.float16),
                                       meta["attn_scale"], meta["attn_softcap"], win)
                w.prompt_scores(l, s0, cs, en, win)

        # batches of consecutive sequences of equal length (no padding inside a forward pass)
        batches, i = [], 0
        while i < S:
            j = i + 1
            while j < S and j - i < a.batch and lens[j] == lens[i]:
                j += 1
            batches.append((i, j))
            i = j
        show = sys.stderr.isatty()
        ad.install(record)
        try:
            with torch.no_grad():
                for bi, (i, j) in enumerate(batches):
                    state["s0"] = i
                    state["seen"] = set()
                    ids = torch.tensor(tok[i:j, :lens[i]], dtype=torch.long, device=device)
                    logits = ad.forward(ids)
                    missing = set(model_layers) - state["seen"]
                    if missing:
                        raise CaptureError(f"model '{a.model}': layer {min(missing)} did not call "
                                           "the attention interface; cannot capture it")
                    if readout:
                        w.readout_batch(i, ad.final_hidden(), logits)
                    if show:
                        print(f"\rkvcapture: {j}/{S} sequences", end="", file=sys.stderr, flush=True)
        finally:
            ad.uninstall()
        if show:
            print(file=sys.stderr)
        f.close()
    except BaseException as e:
        if isinstance(e, OSError):
            # A failed HDF5 write (disk full, I/O error) leaves buffers that HDF5 retries, and
            # can crash on, whenever an object is closed or finalised. Close nothing: keep
            # every reference alive; capture() removes the temporary file and main() leaves
            # with os._exit.
            _STATE["hdf5_unclean"] = True
            _STATE["keep"] = e
            raise
        traceback.clear_frames(e.__traceback__)
        w = record = state = None  # noqa: F841
        gc.collect()
        try:
            f.close()
        except OSError as e2:
            _STATE["hdf5_unclean"] = True
            _STATE["keep"] = e2
        raise


def _estimate_bytes(S, T, L, meta, attn_out, readout, scores=False):
    """Uncompressed size of the tensors a capture writes."""
    H, Hkv, D, C, V = (meta[k] for k in ("n_heads", "n_kv_heads", "head_dim", "d_model", "vocab_size"))
    n = L * S * T * D * (2 * H if attn_out else H) * 2 + L * S * T * D * 2 * Hkv * 2
    if scores:
        n += L * S * H * T * 8
    if readout:
        n += S * T * C * 2 + L * H * D * C * 2 + V * C * 2 + S * T * (4 + 8 * 8)
    return n + S * T * 4 + (1 << 20)


def build_parser():
    ap = argparse.ArgumentParser(prog="kvcapture", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="ref:PATH, ref-random:SEED[:k=v,..], "
                    "hf-random:TYPE[:k=v,..], or a Hugging Face model name/path")
    ap.add_argument("--text", help="plain text file")
    ap.add_argument("--jsonl", help="JSONL file: 'text', or 'context'+'question'[+'answer'] per line")
    ap.add_argument("--ids", help="pre-tokenised ids: one sequence per line")
    ap.add_argument("--tokens", type=int, required=True, help="T, tokens per sequence (incl. BOS)")
    ap.add_argument("--sequences", type=int, default=8, help="S, number of sequences (default 8)")
    ap.add_argument("--stride", type=int, default=None,
                    help="text windows start every N tokens (default: non-overlapping)")
    ap.add_argument("--batch", type=int, default=4, help="sequences per forward pass (default 4)")
    ap.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                    help="compute dtype of the model (the trace is f16 either way)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--layers", help="capture only these model layers (comma-separated)")
    ap.add_argument("--heads", help="capture only these kv heads (comma-separated kv-head indices) "
                    "and the query heads of their groups; the read-out keeps their o_proj rows")
    ap.add_argument("--attn-impl", default=None,
                    help="HF only: the real attention the capture delegates to (sdpa, eager, ...; "
                         "default sdpa, eager for gemma2 softcapping)")
    ap.add_argument("--no-readout", action="store_true", help="do not write /readout")
    ap.add_argument("--no-readout-ok", action="store_true",
                    help="where the architecture does not allow the read-out, write the trace "
                         "without it (attribute readout_unavailable) instead of failing")
    ap.add_argument("--no-attn-out", action="store_true", help="do not write attn_out")
    ap.add_argument("--prompt-scores", action="store_true",
                    help="also write /prompt_scores: per layer and query head, the causal attention's "
                         "column sums over all rows and each row's normalised entropy (kvreplay run "
                         "reuses them by default instead of a quadratic prompt pass)")
    ap.add_argument("--deflate", type=int, default=None, metavar="N",
                    help="compress tensors with shuffle + deflate level N (0..9)")
    ap.add_argument("--source-note", default=None,
                    help="a description of the input, put first in the 'source' attribute")
    ap.add_argument("-o", "--output", required=True, help="output trace (.h5); an existing file is "
                    "refused unless --force")
    ap.add_argument("--allow-beyond-training", action="store_true",
                    help="capture sequences longer than the context a reference checkpoint was "
                         "trained at (refused otherwise); warns, and marks the trace beyond_training = 1")
    ap.add_argument("--force", action="store_true",
                    help="replace an existing output file (atomically, once the new trace is complete)")
    return ap


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] == "validate":     # the in-model re-run of exported cache states
        import validate
        return validate.main(args[1:], load_adapter, CaptureError)
    a = build_parser().parse_args(argv)
    if a.batch < 1:
        print("kvcapture: error: --batch must be >= 1", file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    try:
        path = capture(a)
    except CaptureError as e:
        print(f"kvcapture: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kvcapture: interrupted; no trace written", file=sys.stderr)
        return 3
    except OSError as e:
        why = e.strerror or _one_line(e)
        if e.errno == errno.ENOSPC or "No space" in str(e) or "errno = 28" in str(e):
            why = "no space left on device"
        print(f"kvcapture: error: writing '{a.output}': {why}; no trace written", file=sys.stderr)
        return 1
    except (RuntimeError, ValueError) as e:
        print(f"kvcapture: error: {_one_line(e)}", file=sys.stderr)
        return 1
    print(f"kvcapture: wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    rc = main()
    if _STATE["hdf5_unclean"]:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)
