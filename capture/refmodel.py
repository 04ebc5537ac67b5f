"""kvtrace reference model: a small pre-norm decoder in plain PyTorch.

Llama-shaped on purpose (RMSNorm, RoPE with the rotate_half layout, grouped-query
attention, SwiGLU MLP, optional tied unembedding) so that a trace of it exercises the
same code paths as a trace of a Hugging Face model, where transformers is not installed.

Byte-level: token ids 0..255 are bytes, BOS_ID = 256 starts every sequence.

Shapes: B batch, T tokens, C d_model, H q-heads, Hkv kv-heads, D head_dim, V vocab.

The attention call goes through `attention_fn(module, q, k, v, mask, scale)`, looked up in
ATTENTION_FUNCTIONS by name at call time, with the same contract as transformers'
attention-function interface: q [B,H,T,D] and k, v [B,Hkv,T,D] post-RoPE, before GQA
repetition; it returns the attention output [B,T,H,D] (before o_proj). The capture tool
registers its own function there and delegates to the eager one.
"""
import json
import math
import pickle
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

BOS_ID = 256
VOCAB = 257


@dataclass
class RefConfig:
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 32
    d_ff: int = 512
    vocab_size: int = VOCAB
    max_seq: int = 4096
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    # post_norm: normalise after each residual add (original-Transformer style) instead of
    # before each sub-layer. A variant for tests only: attention output then does not enter
    # the final residual stream directly, so the direct-path read-out is not valid for it.
    post_norm: bool = False

    def to_json(self):
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @staticmethod
    def from_dict(d):
        return RefConfig(**d)


def rope_tables(T, dim, theta, device=None, dtype=torch.float32):
    """cos, sin [T, dim] in the rotate_half layout (HF Llama convention)."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]   # [T, dim/2]
    ang = torch.cat([ang, ang], dim=-1)                                   # [T, dim]
    return ang.cos().to(device=device, dtype=dtype), ang.sin().to(device=device, dtype=dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rope(x, cos, sin):
    # x [B, H, T, D]; cos, sin [T, D]
    return x * cos + rotate_half(x) * sin


# Above this many tokens the model builds no [T, T] mask and attention runs in query blocks
# (memory O(block * T) instead of O(T^2)); at or below it the one-shot path, unchanged, so
# traces of short sequences stay byte-identical.
BLOCKED_FROM = 2048
BLOCK_BYTES = 256 << 20        # scores of one query block, all heads of the batch


def _repeat_kv(q, k, v):
    H, Hkv = q.shape[1], k.shape[1]
    if Hkv != H:
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
    return k, v


def blocked_causal_attention(q, k, v, scale, block=None):
    """Causal attention in query blocks: q [B,H,T,D], k/v [B,H,T,D] (GQA already repeated)
    -> [B,H,T,D]. Each query row's softmax still spans all its visible keys at once, so it is
    the one-shot computation row by row; only [B,H,block,T] scores are alive at a time."""
    B, H, T, D = q.shape
    if block is None:
        block = max(16, min(T, BLOCK_BYTES // max(1, 4 * B * H * T)))
    out = torch.empty_like(q)
    for a in range(0, T, block):
        b = min(T, a + block)
        s = torch.matmul(q[:, :, a:b], k[:, :, :b].transpose(-1, -2)) * scale     # [B,H,b-a,b]
        rows = torch.arange(a, b, device=q.device)[:, None]
        cols = torch.arange(b, device=q.device)[None, :]
        s = s.masked_fill(cols > rows, float("-inf"))
        p = torch.softmax(s.float(), dim=-1).to(q.dtype)
        out[:, :, a:b] = torch.matmul(p, v[:, :, :b])
    return out


def eager_attention(module, q, k, v, mask, scale):
    """Reference attention. q [B,H,T,D], k/v [B,Hkv,T,D]; returns [B,T,H,D].
    mask: additive [T, T] (-inf above the diagonal), or None for causal attention computed in
    query blocks (long sequences: RefModel passes None above BLOCKED_FROM tokens)."""
    k, v = _repeat_kv(q, k, v)
    if mask is None:
        return blocked_causal_attention(q, k, v, scale).transpose(1, 2).contiguous()
    s = torch.matmul(q, k.transpose(-1, -2)) * scale          # [B,H,T,T]
    s = s + mask                                              # additive, -inf above diagonal
    p = torch.softmax(s.float(), dim=-1).to(q.dtype)
    o = torch.matmul(p, v)                                    # [B,H,T,D]
    return o.transpose(1, 2).contiguous()


ATTENTION_FUNCTIONS = {"eager": eager_attention}


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg, layer_idx):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        C, H, Hkv, D = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(C, H * D, bias=False)
        self.k_proj = nn.Linear(C, Hkv * D, bias=False)
        self.v_proj = nn.Linear(C, Hkv * D, bias=False)
        self.o_proj = nn.Linear(H * D, C, bias=False)
        self.scale = 1.0 / math.sqrt(D)
        self.attn_impl = "eager"

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        H, Hkv, D = self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)
        k = self.k_proj(x).view(B, T, Hkv, D).transpose(1, 2)
        v = self.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        o = ATTENTION_FUNCTIONS[self.attn_impl](self, q, k, v, mask, self.scale)
        return self.o_proj(o.reshape(B, T, H * D))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg, i):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, i)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.post_norm = cfg.post_norm

    def forward(self, x, cos, sin, mask):
        if self.post_norm:
            x = self.attn_norm(x + self.attn(x, cos, sin, mask))
            return self.mlp_norm(x + self.mlp(x))
        x = x + self.attn(self.attn_norm(x), cos, sin, mask)
        return x + self.mlp(self.mlp_norm(x))


class RefModel(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def set_attn_impl(self, name):
        for b in self.blocks:
            b.attn.attn_impl = name

    def rope(self, T, device):
        return rope_tables(T, self.cfg.head_dim, self.cfg.rope_theta, device=device)

    def forward(self, ids, return_hidden=False):
        """ids [B,T] -> logits [B,T,V] (and the final residual before the norm)."""
        B, T = ids.shape
        cos, sin = self.rope(T, ids.device)
        mask = (torch.full((T, T), float("-inf"), device=ids.device).triu(1) if T <= BLOCKED_FROM
                else None)                                     # None: causal, in query blocks
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x, cos, sin, mask)
        logits = self.lm_head(self.norm(x))
        return (logits, x) if return_hidden else logits


# The context a checkpoint was trained at: tokens per training sequence, BOS included (train_ref.py
# --seq), saved as config["train_ctx"]. Checkpoints written before that field existed (version 1
# without it, e.g. the shipped capture/ref_model.pt: capture/train.log "seq 256") were all
# trained with train_ref.py's default --seq 256; load_model assumes LEGACY_TRAIN_CTX for them
# and says so (model.train_ctx_assumed). kvcapture refuses sequences longer than train_ctx
# unless --allow-beyond-training. max_seq is only the size of the RoPE table, not a trained length.
LEGACY_TRAIN_CTX = 256


def save_model(model, path, train_ctx=None):
    """train_ctx: tokens per training sequence, BOS included (default: model.train_ctx if set)."""
    cfg = json.loads(model.cfg.to_json())
    tc = train_ctx if train_ctx is not None else getattr(model, "train_ctx", None)
    if tc is not None:
        cfg["train_ctx"] = int(tc)
    torch.save({"format": "kvtrace-ref", "version": 1, "config": cfg,
                "state_dict": model.state_dict()}, path)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only what a kvtrace checkpoint holds: plain containers, numbers, strings and
    tensors. torch 1.13's own weights_only loader rejects pickled floats (BINFLOAT), which the
    config holds, and its torch.load ignores a custom pickle_module, so load_model falls back
    to reading the zip checkpoint itself through this allowlist."""
    _ALLOWED = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
                ("torch._utils", "_rebuild_parameter"), ("torch", "FloatStorage"),
                ("torch", "HalfStorage"), ("torch", "BFloat16Storage"), ("torch", "DoubleStorage"),
                ("torch", "LongStorage"), ("torch", "IntStorage"), ("torch", "BoolStorage"),
                ("torch", "ByteStorage"), ("torch", "float32"), ("torch.storage", "UntypedStorage"),
                ("torch", "UntypedStorage")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"checkpoint refers to {module}.{name}, which a kvtrace "
                                         "reference checkpoint never holds")
        return super().find_class(module, name)


def _load_checkpoint_zip(path):
    """torch's zip checkpoint format read through _SafeUnpickler: data.pkl names tensor
    storages by persistent id ('storage', storage_type, key, location, numel), stored raw
    (little-endian) as <archive>/data/<key>."""
    import io
    import zipfile
    with zipfile.ZipFile(path) as zf:
        prefix = zf.namelist()[0].split("/")[0]

        class Loader(_SafeUnpickler):
            def persistent_load(self, pid):
                if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
                    raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
                _, storage_type, key, _, numel = pid
                dtype = storage_type.dtype
                raw = bytearray(zf.read(f"{prefix}/data/{key}"))
                t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
                if t.numel() != numel:
                    raise pickle.UnpicklingError(f"storage {key}: {t.numel()} values, expected {numel}")
                return t.storage()
        return Loader(io.BytesIO(zf.read(f"{prefix}/data.pkl"))).load()


def load_model(path, map_location="cpu"):
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch < 2.0: its weights_only loader rejects pickled floats (the config has some)
        blob = _load_checkpoint_zip(path)
    if not isinstance(blob, dict) or blob.get("format") != "kvtrace-ref":
        raise ValueError(f"{path}: not a kvtrace reference model checkpoint")
    cfg = dict(blob["config"])
    tc = cfg.get("train_ctx", blob.get("train_ctx"))     # in the config; a top-level key accepted too
    if "train_ctx" not in RefConfig.__dataclass_fields__:
        cfg.pop("train_ctx", None)
    if tc is not None and (isinstance(tc, bool) or not isinstance(tc, int) or tc < 2):
        raise ValueError(f"{path}: train_ctx {tc!r} is not a context length (an integer >= 2)")
    model = RefModel(RefConfig.from_dict(cfg))
    model.load_state_dict(blob["state_dict"])
    model.train_ctx = LEGACY_TRAIN_CTX if tc is None else tc
    model.train_ctx_assumed = tc is None
    return model.to(map_location)
