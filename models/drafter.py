"""Trained drafters for speculative decoding: an EAGLE drafter and Medusa heads, on a frozen LlamaGen GPT.

EAGLE (Li et al., ICML 2024; LANTERN's LlamaGen drafter `jadohu/LANTERN` `models/drafters/cnets_llamagen.py`):
the drafter node at image position i takes the target's last hidden state `h_{i-1}` (final-norm'd, the state
whose head output predicted token i) and token `x_i` through the target's (frozen) embedding table, fuses them
(`fc: 2*dim -> dim`, with bias), runs one Llama decoder layer (the LlamaGen block of `models/gpt.py`, without
the input norm, as EAGLE's layer 0), and predicts `h_i`; the target's own (frozen) output head turns that
into the draft distribution for token i+1. A draft node feeds its predicted state forward instead of
`h_{i-1}`. RoPE: the target's 2-D table at the node's position. CFG: the drafter runs both halves
([cond; uncond], each with its own half's hidden states), the caller guides `u + s (c - u)`.

Differences from the official drafter, on purpose or by necessity:
- The model interface's prefill returns no hidden state for the condition, so the drafter's sequence starts
  at image position 1 (node 1 = (h_0, x_1)); training uses the same range.
- In memory the parameters have SpecLens' LlamaGen names (`fc`, `layers.0.attention.wqkv`,
  `layers.0.attention.wo`, `layers.0.feed_forward.w1/w2/w3`, `layers.0.ffn_norm`); checkpoints are written in
  the official layout (HF Llama names: `self_attn.q_proj/k_proj/v_proj/o_proj`, `mlp.gate/up/down_proj`,
  `post_attention_layernorm`; `official_state_dict`) and either layout loads, an official LANTERN/EAGLE drafter
  file included (its `embed_tokens.weight`, a frozen copy of the target's table, is not used). The
  embedding and head are not stored (they are the target's).
- The drafter's KV cache is position-addressed like the target's: one canonical row per image position and
  scratch rows after them for tree nodes; EAGLE keeps a growing `stable_kv` plus a per-tree cache.

Medusa (Cai et al., ICML 2024): head k (k = 1..n) maps the target's last hidden state `h_i` through a
residual SiLU block and its own linear head (initialised from the target's) to token i+1+k.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import CheckpointError, atomic_torch_save, check_state_dict, load_into, read_state_dict
from models.gpt import GPT, Attention, FeedForward, GPTConfig, RMSNorm, linear

DRAFTER_KINDS = ("eagle", "medusa")
MAX_MEDUSA_HEADS = 8


@dataclass(frozen=True)
class DrafterConfig:
    kind: str  # "eagle" | "medusa"
    dim: int
    n_head: int
    vocab_size: int
    block_size: int  # image tokens N of the target
    n_heads: int = 0  # Medusa heads (0 for EAGLE)

    def __post_init__(self) -> None:
        if self.kind not in DRAFTER_KINDS:
            raise ValueError(f"drafter kind must be one of {DRAFTER_KINDS}, got {self.kind!r}")
        if self.kind == "medusa" and not 1 <= self.n_heads <= MAX_MEDUSA_HEADS:
            raise ValueError(f"Medusa n_heads must be in [1, {MAX_MEDUSA_HEADS}], got {self.n_heads}")
        for name in ("dim", "n_head", "vocab_size", "block_size"):
            if not isinstance(getattr(self, name), int) or not 1 <= getattr(self, name) <= 1 << 18:
                raise ValueError(f"drafter config {name} must be an integer in [1, {1 << 18}], got "
                                 f"{getattr(self, name)!r}")

    @classmethod
    def for_target(cls, gpt: GPT, kind: str, n_heads: int = 0) -> DrafterConfig:
        c = gpt.config
        return cls(kind, c.dim, c.n_head, c.vocab_size, c.block_size, n_heads if kind == "medusa" else 0)

    def to_dict(self) -> dict:
        return asdict(self)


def _layer_config(cfg: DrafterConfig) -> GPTConfig:
    return GPTConfig(dim=cfg.dim, n_head=cfg.n_head, vocab_size=cfg.vocab_size, block_size=cfg.block_size,
                     resid_dropout_p=0.0, ffn_dropout_p=0.0, token_dropout_p=0.0)


class DrafterLayer(nn.Module):
    """EAGLE's layer 0: attention without an input norm, then the norm'd feed-forward, both residual."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, freqs):  # training: causal over the whole sequence
        h = x + self.attention(x, freqs)
        return h + self.feed_forward(self.ffn_norm(h))

    def forward_inference(self, x, freqs, slots, mask):
        h = x + self.attention.forward_inference(x, freqs, slots, mask)
        return h + self.feed_forward.forward_inference(self.ffn_norm(h))


class EagleDrafter(nn.Module):
    """fc(embed(x_i), h_{i-1}) -> one decoder layer -> predicted h_i. Embedding, head and RoPE table are the
    target's (`attach`), frozen and not part of this module's state."""

    def __init__(self, cfg: DrafterConfig):
        super().__init__()
        self.config = cfg
        self.fc = nn.Linear(2 * cfg.dim, cfg.dim, bias=True)
        self.layers = nn.ModuleList([DrafterLayer(_layer_config(cfg))])
        self._target: tuple[GPT] | None = None  # a tuple so the GPT is not registered as a submodule

    def attach(self, gpt: GPT) -> EagleDrafter:
        check_target(self.config, gpt)
        self._target = (gpt,)
        return self

    @property
    def target(self) -> GPT:
        if self._target is None:
            raise RuntimeError("attach(gpt) the drafter to its target before using it")
        return self._target[0]

    def fuse(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """hidden [B, L, dim], tokens [B, L] -> fused input [B, L, dim]."""
        emb = F.embedding(tokens, self.target.tok_embeddings.weight).to(hidden.dtype)
        return self.fc(torch.cat([emb, hidden], dim=-1))

    def freqs(self, positions: torch.Tensor) -> torch.Tensor:
        """RoPE rows [L, Dh/2, 2] of image positions (the target's 2-D table)."""
        gpt = self.target
        return gpt.freqs_cis.to(positions.device)[positions + gpt.cls_token_num]

    def forward(self, hidden: torch.Tensor, tokens: torch.Tensor, start: int = 1) -> torch.Tensor:
        """Teacher-forced training path: nodes at positions start..start+L-1, causal. -> predicted states."""
        h = self.fuse(hidden, tokens)
        freqs = self.freqs(torch.arange(start, start + tokens.shape[1], device=tokens.device))
        for layer in self.layers:
            h = layer(h, freqs)
        return h

    def head(self, states: torch.Tensor) -> torch.Tensor:
        """Predicted states [..., dim] -> logits [..., V] through the target's frozen output head."""
        return linear(states, self.target.output).float()

    # -- position-addressed cache for drafting ------------------------------------------------------------
    def setup_cache(self, batch: int, scratch: int) -> None:
        """One cache row per image position 0..N-1 (row 0 unused), then `scratch` rows for tree nodes."""
        att = self.layers[0].attention
        w = self.fc.weight
        shape = (batch, att.n_kv_head, self.config.block_size + scratch, att.head_dim)
        att.cache = (torch.zeros(shape, dtype=w.dtype, device=w.device), torch.zeros(shape, dtype=w.dtype,
                                                                                      device=w.device))

    def forward_nodes(self, hidden: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor,
                      slots: torch.Tensor, sees: torch.Tensor) -> torch.Tensor:
        """Draft forward over K nodes. hidden [B, K, dim] (real or predicted h_{i-1}), tokens [K], positions
        [K], slots [K] (rows written), sees bool [K, R] (rows each node attends to, its own included).
        Returns the predicted states [B, K, dim]."""
        if self.layers[0].attention.cache is None:
            raise RuntimeError("call setup_cache(batch, scratch) before drafting")
        b = hidden.shape[0]
        h = self.fuse(hidden, tokens.view(1, -1).expand(b, -1))
        end = int(sees.any(0).nonzero().max()) + 1
        mask = torch.full((len(tokens), end), float("-inf"), dtype=h.dtype, device=h.device)
        mask.masked_fill_(sees[:, :end].to(h.device), 0.0)
        for layer in self.layers:
            h = layer.forward_inference(h, self.freqs(positions), slots.to(h.device), mask)
        return h


class ResBlock(nn.Module):
    """Medusa's residual block: x + SiLU(W x + b)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.linear(x))


class MedusaHeads(nn.Module):
    """n heads; head k-1 maps h_i to logits for token i+1+k (k = 1..n)."""

    def __init__(self, cfg: DrafterConfig):
        super().__init__()
        self.config = cfg
        self.heads = nn.ModuleList(nn.Sequential(ResBlock(cfg.dim), nn.Linear(cfg.dim, cfg.vocab_size, bias=False))
                                   for _ in range(cfg.n_heads))

    def attach(self, gpt: GPT) -> MedusaHeads:
        check_target(self.config, gpt)
        return self

    def init_from_target(self, gpt: GPT) -> None:
        with torch.no_grad():
            for head in self.heads:
                head[1].weight.copy_(gpt.output.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., dim] -> logits [n, ..., V]."""
        return torch.stack([head(hidden) for head in self.heads]).float()


def check_target(cfg: DrafterConfig, gpt: GPT) -> None:
    c = gpt.config
    if (cfg.dim, cfg.n_head, cfg.vocab_size, cfg.block_size) != (c.dim, c.n_head, c.vocab_size, c.block_size):
        raise ValueError(f"drafter (dim {cfg.dim}, heads {cfg.n_head}, vocab {cfg.vocab_size}, tokens "
                         f"{cfg.block_size}) does not fit the target (dim {c.dim}, heads {c.n_head}, vocab "
                         f"{c.vocab_size}, tokens {c.block_size})")


def build_drafter(cfg: DrafterConfig) -> EagleDrafter | MedusaHeads:
    return EagleDrafter(cfg) if cfg.kind == "eagle" else MedusaHeads(cfg)


def random_drafter(gpt: GPT, kind: str, seed: int = 0, n_heads: int = 3) -> EagleDrafter | MedusaHeads:
    """An untrained drafter for the target (seeded): drafts are poor, verification must stay exact."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        drafter = build_drafter(DrafterConfig.for_target(gpt, kind, n_heads))
        for p in drafter.parameters():
            nn.init.normal_(p, std=0.05)
    finally:
        torch.random.set_rng_state(gen_state)
    return drafter.eval().attach(gpt)


# -- the official checkpoint layouts -----------------------------------------------------------------------
# EAGLE / LANTERN's LlamaGen drafter (`jadohu/LANTERN` `models/drafters/cnets_llamagen.py` `Model`, HF Llama names;
# its rotary embedding is LlamaGen's pair formula, so q/k rows need no permutation) and Medusa's
# `medusa_lm_head.pt` (the state dict of its `medusa_head` ModuleList: `{k}.0.linear.*`, `{k}.1.weight`).
_EAGLE_OFFICIAL = {"fc.weight": "fc.weight", "fc.bias": "fc.bias",
                   "layers.0.attention.wo.weight": "layers.0.self_attn.o_proj.weight",
                   "layers.0.feed_forward.w1.weight": "layers.0.mlp.gate_proj.weight",
                   "layers.0.feed_forward.w3.weight": "layers.0.mlp.up_proj.weight",
                   "layers.0.feed_forward.w2.weight": "layers.0.mlp.down_proj.weight",
                   "layers.0.ffn_norm.weight": "layers.0.post_attention_layernorm.weight"}
_EAGLE_QKV = ("layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight",
              "layers.0.self_attn.v_proj.weight")
_OFFICIAL_EMBEDDING = "embed_tokens.weight"  # stored by the official drafter: a frozen copy of the target's


def official_state_dict(drafter: EagleDrafter | MedusaHeads) -> dict[str, torch.Tensor]:
    """The drafter's weights under the official names (EAGLE: q/k/v split out of `wqkv`; Medusa: the heads'
    list indices as keys); the embedding and head are the target's and are not written."""
    sd = drafter.state_dict()
    if drafter.config.kind == "medusa":
        return {k.removeprefix("heads."): v for k, v in sd.items()}
    out = {official: sd[ours] for ours, official in _EAGLE_OFFICIAL.items()}
    attention = drafter.layers[0].attention
    split = [attention.n_head * attention.head_dim] + [attention.n_kv_head * attention.head_dim] * 2
    out.update(zip(_EAGLE_QKV, sd["layers.0.attention.wqkv.weight"].split(split)))
    return out


def official_layout(sd: dict[str, torch.Tensor]) -> str | None:
    """"eagle" or "medusa" if `sd` uses the official names, else None."""
    if _EAGLE_QKV[0] in sd:
        return "eagle"
    if sd and all(k.split(".", 1)[0].isdigit() for k in sd):
        return "medusa"
    return None


def from_official(sd: dict[str, torch.Tensor], kind: str, path: str | Path) -> dict[str, torch.Tensor]:
    """An official-layout state dict under SpecLens' names; a missing key is a CheckpointError naming it.
    The official EAGLE file's `embed_tokens.weight` is dropped (the target's own table is used)."""
    if kind == "medusa":
        return {f"heads.{k}": v for k, v in sd.items()}
    missing = [k for k in (*_EAGLE_OFFICIAL.values(), *_EAGLE_QKV) if k not in sd]
    if missing:
        raise CheckpointError(f"{path}: official EAGLE drafter layout, but key {missing[0]!r} is missing")
    extra = sorted(set(sd) - set(_EAGLE_OFFICIAL.values()) - set(_EAGLE_QKV) - {_OFFICIAL_EMBEDDING})
    if extra:
        raise CheckpointError(f"{path}: unexpected key {extra[0]!r} for a one-layer EAGLE drafter")
    out = {ours: sd[official] for ours, official in _EAGLE_OFFICIAL.items()}
    out["layers.0.attention.wqkv.weight"] = torch.cat([sd[k] for k in _EAGLE_QKV])
    return out


def save_drafter(path: str | Path, drafter: EagleDrafter | MedusaHeads, meta: dict | None = None) -> None:
    """The drafter's own weights in fp16 under the official names (`official_state_dict`; embedding and head
    are the target's) plus its config in SpecLens' metadata, written atomically."""
    sd = {k: v.detach().half().cpu().clone() for k, v in official_state_dict(drafter).items()}
    meta = {"kind": "drafter", "layout": "official", "config": drafter.config.to_dict(), **(meta or {})}
    atomic_torch_save({"model": sd, "speclens": meta}, path)


def load_drafter(path: str | Path, gpt: GPT) -> EagleDrafter | MedusaHeads:
    """A drafter checkpoint for the target `gpt`: SpecLens' file (official names or its own) or an official
    EAGLE / LANTERN drafter or Medusa head file without SpecLens' metadata (its config then comes from the
    target); every failure a CheckpointError naming the file."""
    path = Path(path)
    sd, meta = read_state_dict(path, max_bytes=64 * 2**20)
    layout = official_layout(sd)
    raw = meta.get("config")
    if raw is None and layout is not None:  # a foreign official file: the target gives the shapes
        n_heads = len({k.split(".", 1)[0] for k in sd}) if layout == "medusa" else 0
        if layout == "medusa" and not 1 <= n_heads <= MAX_MEDUSA_HEADS:
            raise CheckpointError(f"{path}: {n_heads} Medusa heads, expected 1..{MAX_MEDUSA_HEADS}")
        raw = DrafterConfig.for_target(gpt, layout, n_heads).to_dict()
    if not isinstance(raw, dict) or set(raw) != set(DrafterConfig.__dataclass_fields__):
        raise CheckpointError(f"{path}: no drafter config stored (expected keys "
                              f"{sorted(DrafterConfig.__dataclass_fields__)})")
    try:
        cfg = DrafterConfig(**raw)
        with torch.device("meta"):
            skeleton = build_drafter(cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid drafter config: {e}") from e
    if layout is not None:
        if layout != cfg.kind:
            raise CheckpointError(f"{path}: weights in the official {layout} layout, config says {cfg.kind}")
        sd = from_official(sd, layout, path)
    check_state_dict(skeleton.state_dict(), sd, path)
    drafter = build_drafter(cfg)
    load_into(drafter, sd, path)
    try:
        return drafter.eval().attach(gpt)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e


@torch.no_grad()
def target_hidden(gpt: GPT, labels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forced final-norm'd hidden states [B, N, dim] of the target: row i is the state after the
    condition and tokens 0..i-1, the one whose head output predicts token i (inference: no dropout)."""
    cond = gpt.cls_embedding(labels, train=False)[:, : gpt.cls_token_num]
    h = torch.cat([cond, F.embedding(tokens[:, :-1], gpt.tok_embeddings.weight)], dim=1)
    freqs = gpt.freqs_cis.to(h.device)[: h.shape[1]]
    for layer in gpt.layers:
        h = h + layer.attention(layer.attention_norm(h), freqs)
        h = h + layer.feed_forward(layer.ffn_norm(h))
    return gpt.norm(h)[:, gpt.cls_token_num - 1:]


DRAFTER_SOURCES = ("auto", "trained", "random")
_LOADED: dict[tuple, tuple[GPT, nn.Module]] = {}


def drafter_for(model, kind: str, source: str = "auto") -> EagleDrafter | MedusaHeads:
    """The drafter of `kind` for an `ARImageModel`: "trained" its registered checkpoint
    (`models.registry.DRAFTERS`), "random" an untrained seeded one, "auto" trained if the model has one.
    Loaded once per target GPT and kind."""
    if kind not in DRAFTER_KINDS:
        raise ValueError(f"drafter kind must be one of {DRAFTER_KINDS}, got {kind!r}")
    if source not in DRAFTER_SOURCES:
        raise ValueError(f"drafter source must be one of {DRAFTER_SOURCES}, got {source!r}")
    from models.registry import ASSETS, DRAFTERS

    name = model.info.name
    filename = DRAFTERS.get(name, {}).get(kind)
    path = ASSETS / filename if filename else None
    available = path is not None and path.is_file()
    if source == "trained" and not available:
        raise ValueError(f"model {name!r} has no trained {kind} drafter"
                         + (f" ({path} is missing)" if path else "")
                         + "; train one with python -m models.train_drafter, or use drafter='random'")
    trained = source == "trained" or (source == "auto" and available)
    key = (id(model.gpt), kind, trained)
    cached = _LOADED.get(key)
    if cached is not None and cached[0] is model.gpt:
        return cached[1]
    drafter = load_drafter(path, model.gpt) if trained else random_drafter(model.gpt, kind)
    drafter = drafter.to(model.device).attach(model.gpt)
    _LOADED[key] = (model.gpt, drafter)
    return drafter
