"""The one interface decoders use: condition prefill, position-addressed windowed forward,
the two embedding tables of latent proximity, and tokens -> pixels.

Positions are image-token positions 0..N-1 in raster order (N = grid_h * grid_w).
`forward_window(tokens, start)` feeds `tokens[i]` as the image token at position `start + i`,
writes its K/V into the static cache at that position, and returns the guided logits for
position `start + i + 1`. Anything cached at later positions is masked by position, so
rejected drafts never need to be removed: the next window overwrites them.

Classifier-free guidance happens here, once: the model runs a batch of 2 ([cond; uncond],
uncond = the null class `num_classes`), and returns `u + s * (c - u)` (LlamaGen's order).
With `cfg_scale == 1` it runs the conditional half only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from models.gpt import GPT
from models.vq import VQModel


@dataclass(frozen=True)
class ModelInfo:
    name: str
    grid_shape: tuple[int, int]
    vocab_size: int
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def num_tokens(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]


class ARImageModel:
    """A class-conditional LlamaGen GPT with its VQ tokenizer, batch size 1 (x2 for CFG)."""

    def __init__(self, gpt: GPT, vq: VQModel, name: str, class_names: tuple[str, ...] | None = None):
        cfg = gpt.config
        grid = int(round(cfg.block_size**0.5))
        if vq.config.codebook_size != cfg.vocab_size:
            raise ValueError(f"VQ codebook size {vq.config.codebook_size} != GPT vocab_size {cfg.vocab_size}")
        self.gpt, self.vq = gpt.eval(), vq.eval()
        names = tuple(class_names) if class_names else tuple(str(i) for i in range(cfg.num_classes))
        if len(names) != cfg.num_classes:
            raise ValueError(f"{len(names)} class names for a model with {cfg.num_classes} classes")
        self.info = ModelInfo(name, (grid, grid), cfg.vocab_size, cfg.num_classes, names)
        self.cfg_scale = 1.0
        self._batch = 0

    @property
    def device(self) -> torch.device:
        return self.gpt.tok_embeddings.weight.device

    # -- conditioning -----------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, label: int, cfg_scale: float) -> torch.Tensor:
        """Reset the cache, run the condition; return guided logits [V] for position 0."""
        if not 0 <= int(label) < self.info.num_classes:
            raise ValueError(f"class label must be in [0, {self.info.num_classes - 1}], got {label}")
        if cfg_scale < 1.0:
            raise ValueError(f"cfg_scale must be >= 1, got {cfg_scale}")
        self.cfg_scale = float(cfg_scale)
        batch = 2 if self.cfg_scale > 1.0 else 1
        if batch != self._batch:
            self.gpt.setup_cache(batch)
            self._batch = batch
        labels = torch.tensor([int(label), self.info.num_classes][:batch], device=self.device)
        logits = self.gpt.forward_at(0, labels=labels)[:, -1:]  # [B, 1, V]
        return self._guide(logits)[0]

    def _guide(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, L, V] -> [L, V]: u + s (c - u)."""
        if logits.shape[0] == 1:
            return logits[0]
        cond, uncond = logits[0], logits[1]
        return uncond + (cond - uncond) * self.cfg_scale

    # -- windowed forward ---------------------------------------------------------------
    @torch.inference_mode()
    def forward_window(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """tokens: [L] image tokens at positions start..start+L-1 -> guided logits [L, V]
        for positions start+1..start+L (the last row is unused when start+L == N)."""
        if self._batch == 0:
            raise RuntimeError("call prefill(label, cfg_scale) before forward_window")
        if tokens.dim() != 1:
            raise ValueError(f"forward_window takes a 1-D window of tokens (batch size 1; CFG doubles it "
                             f"internally), got shape {list(tokens.shape)}")
        n = self.info.num_tokens
        if start < 0 or start + len(tokens) > n:
            raise ValueError(f"window [{start}, {start + len(tokens)}) is outside the token grid [0, {n})")
        batch_tokens = tokens.to(self.device).view(1, -1).expand(self._batch, -1)
        return self._guide(self.gpt.forward_at(start + self.gpt.cls_token_num, tokens=batch_tokens))

    # -- latent proximity -------------------------------------------------------------------
    def codebook_embeddings(self) -> torch.Tensor:
        """[V, D]: the VQ codebook as the image decoder uses it (l2-normalised in LlamaGen)."""
        return self.vq.quantize.codebook().detach().float().cpu()

    def raw_codebook_embeddings(self) -> torch.Tensor:
        """[V, D]: the VQ embedding weights before l2-normalisation (what LANTERN's code reads)."""
        return self.vq.quantize.embedding.weight.detach().float().cpu()

    def token_embeddings(self) -> torch.Tensor:
        """[V, dim]: the GPT's input token embeddings (GSD's space)."""
        return self.gpt.tok_embeddings.weight.detach().float().cpu()

    # -- pixels -------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        """[N] tokens -> uint8 image [H, W, 3]."""
        tokens = torch.as_tensor(tokens).long().flatten()
        if tokens.numel() != self.info.num_tokens:
            raise ValueError(f"expected {self.info.num_tokens} tokens, got {tokens.numel()}")
        if tokens.min() < 0 or tokens.max() >= self.info.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.info.vocab_size - 1}]")
        h, w = self.info.grid_shape
        pixels = self.vq.decode_code(tokens.view(1, h, w).to(self.device))[0]  # [C, H, W]
        pixels = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels

    def decode_image(self, tokens: torch.Tensor) -> Image.Image:
        return Image.fromarray(self.decode_tokens(tokens))
