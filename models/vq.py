"""LlamaGen VQ tokenizer (`tokenizer/tokenizer_image/vq_model.py`), with the base width `ch`,
the number of residual blocks and the image channels configurable (official: 128, 2, 3).

Parameter names follow the official `VQModel` so official checkpoints load with no renaming.
Codes are looked up in the l2-normalised codebook when `codebook_l2_norm` is set, exactly as
the official quantizer and `get_codebook_entry` do.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class VQConfig:
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    encoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    decoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    z_channels: int = 256
    dropout_p: float = 0.0
    ch: int = 128
    num_res_blocks: int = 2
    in_channels: int = 3

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)

    @classmethod
    def from_dict(cls, d: dict) -> VQConfig:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown VQ config fields: {unknown}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


VQ_PRESETS: dict[str, dict] = {
    "VQ-16": dict(encoder_ch_mult=[1, 1, 2, 2, 4], decoder_ch_mult=[1, 1, 2, 2, 4]),
    "VQ-8": dict(encoder_ch_mult=[1, 2, 2, 4], decoder_ch_mult=[1, 2, 2, 4]),
    "VQ-tiny": dict(codebook_size=64, encoder_ch_mult=[1, 1], decoder_ch_mult=[1, 1], z_channels=32, ch=32),
}


def vq_config(preset: str, **overrides) -> VQConfig:
    if preset not in VQ_PRESETS:
        raise ValueError(f"unknown VQ preset {preset!r}; choose from {sorted(VQ_PRESETS)}")
    return VQConfig(**{**VQ_PRESETS[preset], **overrides})


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = group_norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(b, c, -1).transpose(1, 2)  # [B, HW, C]
        k = self.k(h).reshape(b, c, -1)  # [B, C, HW]
        v = self.v(h).reshape(b, c, -1)
        attn = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=2)  # [B, HWq, HWk]
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(res: list[nn.Module], attn: list[nn.Module]) -> nn.Module:
    level = nn.Module()
    level.res = nn.ModuleList(res)
    level.attn = nn.ModuleList(attn)
    return level


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult, nres = cfg.ch, cfg.encoder_ch_mult, cfg.num_res_blocks
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        for i, m in enumerate(mult):
            last = i == len(mult) - 1
            res, attn = [], []
            for _ in range(nres):
                res.append(ResnetBlock(block_in, ch * m, cfg.dropout_p))
                block_in = ch * m
                if last:
                    attn.append(AttnBlock(block_in))
            level = _level(res, attn)
            if not last:
                level.downsample = Downsample(block_in)
            self.conv_blocks.append(level)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, cfg.dropout_p), AttnBlock(block_in),
                                  ResnetBlock(block_in, block_in, cfg.dropout_p)])
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            for i, res in enumerate(level.res):
                h = res(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult, nres = cfg.ch, cfg.decoder_ch_mult, cfg.num_res_blocks
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, cfg.dropout_p), AttnBlock(block_in),
                                  ResnetBlock(block_in, block_in, cfg.dropout_p)])
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(len(mult))):
            res, attn = [], []
            for _ in range(nres + 1):
                res.append(ResnetBlock(block_in, ch * mult[i], cfg.dropout_p))
                block_in = ch * mult[i]
                if i == len(mult) - 1:
                    attn.append(AttnBlock(block_in))
            level = _level(res, attn)
            if i != 0:
                level.upsample = Upsample(block_in)
            self.conv_blocks.append(level)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            for i, res in enumerate(level.res):
                h = res(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


@torch.no_grad()
def nearest_codes(flat: torch.Tensor, emb: torch.Tensor, chunk_elements: int = 1 << 20) -> torch.Tensor:
    """argmin_j ||flat_i - emb_j||^2 for flat [N, D], emb [V, D] -> [N], the official expression
    (|z|^2 + |e|^2 - 2 z.e), in row chunks of about `chunk_elements` distances (64 rows for 16384
    codes: the chunk stays in cache, 10x faster on CPU than one [N, V] table), and no graph is kept
    for it (argmin has no gradient)."""
    e2 = emb.pow(2).sum(1)  # [V]
    rows = max(1, chunk_elements // max(1, len(emb)))
    out = [(f.pow(2).sum(1, keepdim=True) + e2 - 2 * f @ emb.t()).argmin(1) for f in flat.split(rows)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.n_e, self.e_dim, self.l2_norm = cfg.codebook_size, cfg.codebook_embed_dim, cfg.codebook_l2_norm
        self.beta = cfg.commit_loss_beta
        self.embedding = nn.Embedding(self.n_e, self.e_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / self.n_e, 1.0 / self.n_e)
        if self.l2_norm:
            self.embedding.weight.data = F.normalize(self.embedding.weight.data, dim=-1)
        if cfg.codebook_show_usage:  # kept only so official checkpoints load strictly
            self.register_buffer("codebook_used", torch.zeros(65536))

    def codebook(self) -> torch.Tensor:
        """[V, D] the vectors the decoder sees for each code."""
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def forward(self, z: torch.Tensor):
        """z: [B, D, H, W] -> (z_q straight-through [B, D, H, W], codes [B, H, W], (vq_loss, commit_loss))."""
        z = z.permute(0, 2, 3, 1)  # [B, H, W, D]
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        emb = self.codebook()
        flat = z.reshape(-1, self.e_dim)
        codes = nearest_codes(flat.detach(), emb.detach())  # [N]
        z_q = emb[codes].view(z.shape)
        vq_loss = (z_q - z.detach()).pow(2).mean()
        commit_loss = self.beta * (z_q.detach() - z).pow(2).mean()
        z_q = z + (z_q - z).detach()
        return z_q.permute(0, 3, 1, 2), codes.view(z.shape[:-1]), (vq_loss, commit_loss)


class VQModel(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)

    def encode(self, x: torch.Tensor):
        """x: [B, C, H, W] in [-1, 1] -> (quant [B, D, h, w], codes [B, h, w], losses)."""
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: [B, h, w] -> pixels [B, C, H, W] in about [-1, 1] (not clamped)."""
        quant = self.quantize.codebook()[codes].permute(0, 3, 1, 2)  # [B, D, h, w]
        return self.decode(quant)

    def forward(self, x: torch.Tensor):
        quant, codes, losses = self.encode(x)
        return self.decode(quant), codes, losses
