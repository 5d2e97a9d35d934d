"""LlamaGen class-conditional GPT, re-implemented to compute what the official code computes.

Parameter names and shapes follow FoundationVision/LlamaGen `autoregressive/models/gpt.py`
so that official checkpoints load with no renaming, and our checkpoints load in the official
code. Two things differ on purpose:

- The KV cache is a plain tensor pair per layer (not registered buffers), addressed by
  sequence position, so a window of drafted tokens can be written and later overwritten.
- The cached forward attends only to cache entries up to the window's last position.

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


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


def apply_rotary_emb(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x: [B, S, H, Dh]; freqs: [S, Dh/2, 2] as (cos, sin)."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)  # [B, S, H, Dh/2, 2]
    f = freqs.view(1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack(
        [xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1], xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]],
        dim=-1,
    )
    return out.flatten(3).type_as(x)


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
    def setup_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> None:
        dtype = dtype or self.tok_embeddings.weight.dtype
        device = self.tok_embeddings.weight.device
        for layer in self.layers:
            att = layer.attention
            shape = (batch_size, att.n_kv_head, self.max_seq_length, att.head_dim)
            att.cache = (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        self._cache_batch = batch_size

    def clear_cache(self) -> None:
        for layer in self.layers:
            layer.attention.cache = None

    def forward_cached(self, input_pos: torch.Tensor, tokens: torch.Tensor | None = None,
                       labels: torch.Tensor | None = None) -> torch.Tensor:
        """Run positions `input_pos` (sequence positions, consecutive) through the cache.

        Either `labels` ([B], prefill of the condition) or `tokens` ([B, S] image tokens).
        Writes K/V at `input_pos` and attends causally by position to everything before.
        Returns logits [B, S, V].
        """
        if labels is not None:
            h = self.cls_embedding(labels, train=False)[:, : self.cls_token_num]
        else:
            h = self.tok_embeddings(tokens)
        end = int(input_pos[-1]) + 1
        if end > self.max_seq_length:
            raise ValueError(f"position {end - 1} is beyond the model's sequence length {self.max_seq_length}")
        keys = torch.arange(end, device=h.device)
        mask = (keys[None, :] <= input_pos[:, None])[None, None]  # [1, 1, S, end]
        self.freqs_cis = self.freqs_cis.to(h.device)
        freqs = self.freqs_cis[input_pos]
        for layer in self.layers:
            h = layer(h, freqs, input_pos, mask)
        return self.output(self.norm(h)).float()
