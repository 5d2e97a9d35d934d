"""LlamaGen class-conditional GPT, re-implemented to compute what the official code computes.

Parameter names and shapes follow FoundationVision/LlamaGen `autoregressive/models/gpt.py`
so that official checkpoints load with no renaming, and our checkpoints load in the official
code. Two things differ on purpose:

- The KV cache is a plain tensor pair per layer (not registered buffers), addressed by
  sequence position, so a window of drafted tokens can be written and later overwritten; after the
  sequence positions it may have scratch rows. `forward_nodes` writes K/V to any rows and attends
  under an explicit [K, rows] mask (trees, several row windows), `copy_slots` moves rows.
- The cached forward (`forward_at`) is an inference-only path that computes the same thing with
  fewer and faster operations, because a small model on a CPU is bound by per-operation cost and by
  streaming the weights, not by arithmetic: it attends only to cache entries up to the window's last
  position, writes the cache by slice, takes its causal mask as a slice of one precomputed table
  (no mask at all for a single token, which sees every cached position), rotates queries and keys
  together as complex numbers, calls no dropout modules, and picks a matrix-product kernel by row
  count (`linear`). Its logits agree with the official code's to float32 rounding.

Quirk kept from the official code: the 2-D RoPE table is prefixed with `cls_token_num` rows of
zeros, so queries and keys at condition positions are exactly zero.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


@dataclass
class GPTConfig:
    """Fields and defaults of the official `ModelArgs` (c2i only)."""

    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0
    num_classes: int = 1000
    caption_dim: int = 2048
    class_dropout_prob: float = 0.1
    model_type: str = "c2i"
    vocab_size: int = 16384
    cls_token_num: int = 1
    block_size: int = 256
    max_batch_size: int = 32
    max_seq_len: int = 2048
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model_type != "c2i":
            raise ValueError(f"only model_type='c2i' is supported, got {self.model_type!r}")
        if self.dim % self.n_head:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_head ({self.n_head})")
        grid = int(round(self.block_size**0.5))
        if grid * grid != self.block_size:
            raise ValueError(f"block_size must be a square (token grid), got {self.block_size}")
        if self.drop_path_rate:
            raise ValueError("drop_path_rate > 0 is not supported (inference library)")

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPT config fields: {unknown}")
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


# Official class-conditional sizes (layers, heads, dim).
GPT_PRESETS: dict[str, dict] = {
    "GPT-B": dict(n_layer=12, n_head=12, dim=768),
    "GPT-L": dict(n_layer=24, n_head=16, dim=1024),
    "GPT-XL": dict(n_layer=36, n_head=20, dim=1280),
    "GPT-XXL": dict(n_layer=48, n_head=24, dim=1536),
    "GPT-XXXL": dict(n_layer=48, n_head=40, dim=2560),
    "GPT-tiny": dict(n_layer=2, n_head=4, dim=64, vocab_size=64, num_classes=10, block_size=16),
}


def gpt_config(preset: str, **overrides) -> GPTConfig:
    if preset not in GPT_PRESETS:
        raise ValueError(f"unknown GPT preset {preset!r}; choose from {sorted(GPT_PRESETS)}")
    return GPTConfig(**{**GPT_PRESETS[preset], **overrides})


# Set "onednn_windows" to False to spare the prepacked weight copies (see `linear`).
CPU_KERNELS = {"onednn_windows": torch.backends.mkldnn.is_available()}


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """`layer(x)` (no bias) for the cached, inference-only forward, with the faster float32 CPU
    kernel for the row count (measured on an AMD EPYC, torch 2.13, weights not in cache):
    - at most 4 rows (one token, or two with CFG): (W x^T)^T; MKL then streams the weight once,
      about 2x faster than x W^T;
    - more rows (a window): oneDNN with the weight prepacked once, 1.2-1.8x faster than MKL's x W^T.
      The packed copy (as large as the weight) stays on the layer and is rebuilt when the weight is
      replaced or modified in place; `CPU_KERNELS["onednn_windows"] = False` turns this off.
    Anything else (GPU, other dtypes, autograd) is `F.linear`. Results agree to float32 rounding."""
    weight = layer.weight
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32 or torch.is_grad_enabled():
        return F.linear(x, weight)
    rows = x.numel() // x.shape[-1]
    if rows <= 4:
        out = torch.mm(weight, x.reshape(rows, -1).t()).t()  # [rows, out]
        return out.contiguous().view(*x.shape[:-1], weight.shape[0])
    packed = _onednn_weight(layer) if CPU_KERNELS["onednn_windows"] else None
    if packed is None:
        return F.linear(x, weight)
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def _onednn_weight(layer: nn.Linear) -> torch.Tensor | None:
    """The layer's weight prepacked for oneDNN, repacked when the weight was replaced or modified."""
    key = (layer.weight.data_ptr(), layer.weight._version)
    cached = layer.__dict__.get("_onednn_packed")
    if cached is None or cached[0] != key:
        try:
            cached = (key, torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach()))
        except (RuntimeError, AttributeError):  # a torch without these oneDNN ops: MKL from now on
            CPU_KERNELS["onednn_windows"] = False
            return None
        layer.__dict__["_onednn_packed"] = cached
    return cached[1]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:  # one op, the same formula
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        hidden = int(2 * (4 * cfg.dim) / 3)
        if cfg.ffn_dim_multiplier is not None:
            hidden = int(cfg.ffn_dim_multiplier * hidden)
        hidden = find_multiple(hidden, cfg.multiple_of)
        self.w1 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, cfg.dim, bias=False)
        self.ffn_dropout = nn.Dropout(cfg.ffn_dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))

    def forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        return linear(F.silu(linear(x, self.w1)) * linear(x, self.w3), self.w2)


def apply_rotary_emb(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x: [B, S, H, Dh]; freqs: [S, Dh/2, 2] as (cos, sin). Each pair (x0, x1) becomes
    (x0 cos - x1 sin, x1 cos + x0 sin), the official formula, as one complex product."""
    xs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # [B, S, H, Dh/2]
    f = torch.view_as_complex(freqs).view(1, xs.size(1), 1, xs.size(3))
    return torch.view_as_real(xs * f).flatten(3).type_as(x)


def rope_2d_table(grid: int, head_dim: int, base: float, cls_token_num: int) -> torch.Tensor:
    """[cls + grid*grid, head_dim/2, 2]: first half of the pairs encode the row, second the column."""
    half = head_dim // 2
    inv = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    angles = torch.outer(torch.arange(grid), inv)  # [grid, half/2]
    table = torch.cat(
        [angles[:, None, :].expand(-1, grid, -1), angles[None, :, :].expand(grid, -1, -1)], dim=-1
    )  # [grid, grid, half]
    table = torch.stack([torch.cos(table), torch.sin(table)], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(cls_token_num, half, 2), table])


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.dim = cfg.dim
        self.n_head = cfg.n_head
        self.n_kv_head = cfg.n_kv_head or cfg.n_head
        self.head_dim = cfg.dim // cfg.n_head
        self.wqkv = nn.Linear(cfg.dim, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.attn_dropout_p = cfg.attn_dropout_p
        self.resid_dropout = nn.Dropout(cfg.resid_dropout_p)
        self.cache: tuple[torch.Tensor, torch.Tensor] | None = None  # ([B, Hkv, S, Dh], same)

    def forward(self, x, freqs, input_pos=None, mask=None):
        bsz, seqlen, _ = x.shape
        kv = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([self.dim, kv, kv], dim=-1)
        q = apply_rotary_emb(q.view(bsz, seqlen, self.n_head, self.head_dim), freqs).transpose(1, 2)
        k = apply_rotary_emb(k.view(bsz, seqlen, self.n_kv_head, self.head_dim), freqs).transpose(1, 2)
        v = v.view(bsz, seqlen, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.cache is not None and input_pos is not None:
            k_cache, v_cache = self.cache
            k_cache[:bsz, :, input_pos] = k
            v_cache[:bsz, :, input_pos] = v
            end = mask.shape[-1]  # attend only up to the window's last position
            k, v = k_cache[:bsz, :, :end], v_cache[:bsz, :, :end]
        if self.n_kv_head != self.n_head:
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None,
            dropout_p=self.attn_dropout_p if self.training else 0.0,
        )  # [B, H, S, Dh]
        out = out.transpose(1, 2).contiguous().view(bsz, seqlen, self.dim)
        return self.resid_dropout(self.wo(out))

    def forward_inference(self, x: torch.Tensor, freqs: torch.Tensor, slots: slice | torch.Tensor,
                          mask: torch.Tensor | None) -> torch.Tensor:
        """x: [B, S, dim] with its rotary table `freqs` [S, Dh/2, 2]; writes their K/V into the cache rows
        `slots` (a slice start:start+S for a chain, or a LongTensor [S]) and attends to cache rows
        0..end-1 under `mask` ([S, end] additive), or, with no mask, to rows 0..slots.stop-1 (every one)."""
        bsz, seqlen, _ = x.shape
        n_qk = self.n_head + self.n_kv_head
        qkv = linear(x, self.wqkv)  # [B, S, (H + 2 Hkv) Dh]
        qk = apply_rotary_emb(qkv[..., :n_qk * self.head_dim].view(bsz, seqlen, n_qk, self.head_dim), freqs)
        q, k = qk.transpose(1, 2).split([self.n_head, self.n_kv_head], dim=1)  # [B, H, S, Dh], [B, Hkv, S, Dh]
        v = qkv[..., n_qk * self.head_dim:].view(bsz, seqlen, self.n_kv_head, self.head_dim).transpose(1, 2)
        k_cache, v_cache = self.cache
        if isinstance(slots, slice):
            k_cache[:bsz, :, slots] = k
            v_cache[:bsz, :, slots] = v
        else:  # scattered rows (tree nodes, several row windows)
            k_cache[:bsz].index_copy_(2, slots, k.to(k_cache.dtype))
            v_cache[:bsz].index_copy_(2, slots, v.to(v_cache.dtype))
        end = mask.shape[-1] if mask is not None else slots.stop
        k, v = k_cache[:bsz, :, :end], v_cache[:bsz, :, :end]  # [B, Hkv, end, Dh]
        if self.n_kv_head != self.n_head:
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, S, Dh]
        return linear(out.transpose(1, 2).reshape(bsz, seqlen, self.dim), self.wo)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, freqs, input_pos=None, mask=None):
        h = x + self.attention(self.attention_norm(x), freqs, input_pos, mask)
        return h + self.feed_forward(self.ffn_norm(h))

    def forward_inference(self, x, freqs, slots, mask):
        h = x + self.attention.forward_inference(self.attention_norm(x), freqs, slots, mask)
        return h + self.feed_forward.forward_inference(self.ffn_norm(h))


class LabelEmbedder(nn.Module):
    """Class embedding with one extra row (index num_classes) for the CFG null class."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels).unsqueeze(1)  # [B, 1, D]


class GPT(nn.Module):
    """The official `Transformer` (c2i). Sequence = [condition tokens; image tokens]."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.cls_token_num = cfg.cls_token_num
        self.cls_embedding = LabelEmbedder(cfg.num_classes, cfg.dim, cfg.class_dropout_prob)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.tok_dropout = nn.Dropout(cfg.token_dropout_p)
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        grid = int(round(cfg.block_size**0.5))
        self.freqs_cis = rope_2d_table(grid, cfg.dim // cfg.n_head, cfg.rope_base, cfg.cls_token_num)
        self.max_seq_length = cfg.cls_token_num + cfg.block_size
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=self.config.initializer_range)
        nn.init.zeros_(self.output.weight)

    # -- teacher forcing --------------------------------------------------------------
    def forward(self, labels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits.

        labels: [B]; tokens: [B, T] image tokens fed as input (T <= block_size - 1).
        Returns [B, T + 1, V]: row i predicts image token i.
        """
        cond = self.cls_embedding(labels, train=self.training)[:, : self.cls_token_num]
        h = self.tok_dropout(torch.cat([cond, self.tok_embeddings(tokens)], dim=1))
        self.freqs_cis = self.freqs_cis.to(h.device)
        freqs = self.freqs_cis[: h.shape[1]]
        for layer in self.layers:
            h = layer(h, freqs)
        logits = self.output(self.norm(h)).float()
        return logits[:, self.cls_token_num - 1 :]

    # -- cached, position-addressed decoding -----------------------------------------
    def setup_cache(self, batch_size: int, dtype: torch.dtype | None = None, scratch_slots: int = 0) -> None:
        """Allocate the static KV cache: one row per sequence position (condition tokens, then the image
        tokens in raster order), then `scratch_slots` rows for nodes that must not overwrite a position's
        row (tree siblings, see `forward_nodes`)."""
        if not isinstance(scratch_slots, int) or scratch_slots < 0:
            raise ValueError(f"scratch_slots must be an integer >= 0, got {scratch_slots!r}")
        dtype = dtype or self.tok_embeddings.weight.dtype
        device = self.tok_embeddings.weight.device
        for layer in self.layers:
            att = layer.attention
            shape = (batch_size, att.n_kv_head, self.max_seq_length + scratch_slots, att.head_dim)
            att.cache = (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        self._cache_batch = batch_size
        # additive causal mask (0 where position i sees position j, else -inf); a window's mask is a slice.
        # Additive rather than bool: attention would otherwise convert a bool mask in every layer. Rows
        # padded to a multiple of 16 so that GPU attention kernels take the slice without a copy.
        n = self.max_seq_length
        sees = torch.ones(n, find_multiple(n, 16), dtype=torch.bool, device=device).tril()
        self._causal = torch.zeros(sees.shape, dtype=dtype, device=device).masked_fill(~sees, float("-inf"))
        self.freqs_cis = self.freqs_cis.to(device)

    def cache_layout(self) -> tuple[int, int] | None:
        """(batch size, scratch rows) of the allocated cache; None before `setup_cache`."""
        cache = self.layers[0].attention.cache
        return None if cache is None else (cache[0].shape[0], cache[0].shape[2] - self.max_seq_length)

    def clear_cache(self) -> None:
        for layer in self.layers:
            layer.attention.cache = None

    def _require_cache(self) -> None:
        if self.layers[0].attention.cache is None:
            raise RuntimeError("call setup_cache(batch_size) before the cached forward")

    def forward_cached(self, input_pos: torch.Tensor, tokens: torch.Tensor | None = None,
                       labels: torch.Tensor | None = None) -> torch.Tensor:
        """Run positions `input_pos` (consecutive sequence positions) through the cache.

        Either `labels` ([B], prefill of the condition) or `tokens` ([B, S] image tokens).
        Writes K/V at `input_pos` and attends causally by position to everything before.
        Returns logits [B, S, V].
        """
        positions = input_pos.tolist()
        start = positions[0]
        if positions != list(range(start, start + len(positions))):
            raise ValueError(f"input_pos must be consecutive positions, got {positions}")
        return self.forward_at(start, tokens=tokens, labels=labels)

    def forward_at(self, start: int, tokens: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                   return_hidden: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """`forward_cached` for the positions start, start+1, ... (as many as tokens, or the
        condition tokens for `labels`). Inference only: no dropout. Returns logits [B, S, V], or with
        `return_hidden` (logits, hidden [B, S, dim]), hidden being the final-norm'd input of the head."""
        self._require_cache()
        if labels is not None:
            h = self.cls_embedding(labels, train=False)[:, : self.cls_token_num]
        else:
            h = F.embedding(tokens, self.tok_embeddings.weight)
        end = start + h.shape[1]
        if end > self.max_seq_length:
            raise ValueError(f"position {end - 1} is beyond the model's sequence length {self.max_seq_length}")
        mask = None if h.shape[1] == 1 else self._causal[start:end, :end]  # one token sees the whole prefix
        return self._run_cached(h, self.freqs_cis[start:end], slice(start, end), mask, return_hidden)

    def forward_nodes(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, sees: torch.Tensor,
                      return_hidden: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The cached forward over K nodes that need not form a chain (a tree, several row windows).

        tokens: [B, K] image tokens; positions: [K] their sequence positions (the RoPE rows; several nodes
        may share one); slots: [K] distinct cache rows their K/V are written to; sees: bool [K, R]
        (R <= cache rows), node i attends to cache row j where sees[i, j] (its own slot included).
        Checking that these make sense is the caller's job (`ARImageModel.forward_nodes`).
        Returns logits [B, K, V], or with `return_hidden` (logits, hidden [B, K, dim])."""
        self._require_cache()
        device = self.tok_embeddings.weight.device
        seen = sees.any(0).nonzero()
        end = int(seen.max()) + 1 if len(seen) else 1  # attend to cache rows 0..end-1 only
        width = find_multiple(end, 16)  # rows aligned for GPU attention kernels (the same code on CPU)
        dtype = self.layers[0].attention.cache[0].dtype
        mask = torch.full((sees.shape[0], width), float("-inf"), dtype=dtype, device=device)
        mask[:, :end].masked_fill_(sees[:, :end].to(device), 0.0)  # additive [K, end]
        h = F.embedding(tokens.to(device), self.tok_embeddings.weight)  # [B, K, dim]
        freqs = self.freqs_cis[positions.to(device)]  # [K, Dh/2, 2]
        return self._run_cached(h, freqs, slots.to(device), mask[:, :end], return_hidden)

    def _run_cached(self, h, freqs, slots, mask, return_hidden):
        for layer in self.layers:
            h = layer.forward_inference(h, freqs, slots, mask)
        hidden = self.norm(h)  # [B, S, dim]
        logits = linear(hidden, self.output).float()  # [B, S, V]
        return (logits, hidden) if return_hidden else logits

    def copy_slots(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy the K/V of cache rows `src` [M] to rows `dst` [M] in every layer (both CFG halves)."""
        self._require_cache()
        device = self.tok_embeddings.weight.device
        src, dst = src.to(device), dst.to(device)
        for layer in self.layers:
            for cache in layer.attention.cache:
                cache.index_copy_(2, dst, cache.index_select(2, src))  # gathered first: overlaps are safe
