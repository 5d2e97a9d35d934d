"""LANTERN's relaxed acceptance on SJD's Jacobi drafts (training-free), with LANTERN++'s ratio bound.

Notation: p = target distribution, q = draft distribution.

The rule is `rules/lantern.py` (LANTERN, ICLR 2025, Sec. 4; LANTERN++, arXiv 2502.06352): the
draft is accepted with probability min(1, p~(x) / q(x)), where p~ moves onto x the target mass of
its nearest codes in the VQ codebook, as long as the moved mass (= TV(p, p~)) is at most `delta`
and, if `ratio_bound` (lambda) is set, p~(x) <= lambda p(x).

Where we knowingly differ from the papers' code (jadohu/LANTERN):
- drafts are SJD's Jacobi drafts, not a trained EAGLE drafter (the relaxation is training-free;
  the authors did not pair it with Jacobi drafts);
- `neighbourhood_k` counts the draft itself (k = 1: no relaxation; official k = ours - 1);
- delta and lambda are two parameters (the official `--lantern_delta` carries either);
- neighbour lists come from the codebook as the decoder uses it (l2-normalised in LlamaGen,
  `codebook_space='vq'`), optionally re-normalised; the official code uses the raw embedding
  weights (`codebook_space='raw'`, when the model exposes `raw_codebook_embeddings()`);
- only top-k neighbour lists are kept ([V, k - 1] int32), never the full V x V sorted table.
With delta = 0 (or k = 1, or ratio_bound = 1) it is `sjd`, token for token for the same seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from decoding.base import ModelLike
from decoding.neighbours import neighbour_lists
from decoding.rules.exact import acceptance_ratio
from decoding.rules.lantern import lantern_members, lantern_relaxed_probability, lantern_target
from decoding.speculative_jacobi import SpeculativeJacobi

CODEBOOK_SPACES = ("vq", "raw")


@dataclass
class LanternDecoder(SpeculativeJacobi):
    """neighbourhood_k: size of B_k(x), the draft included; delta: TV budget per token (0.1 in the
    official defaults, 0.4 'aggressive'); ratio_bound: LANTERN++'s lambda (None = off; the official
    runs use 5-20); codebook_space: 'vq' | 'raw'; l2_normalise: re-normalise the codebook first."""

    name = "lantern"
    lossless = False
    neighbourhood_k: int = 10
    delta: float = 0.1
    ratio_bound: float | None = None
    codebook_space: str = "vq"
    l2_normalise: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.neighbourhood_k) != self.neighbourhood_k or self.neighbourhood_k < 1:
            raise ValueError(f"neighbourhood_k must be an integer >= 1 (the draft included), "
                             f"got {self.neighbourhood_k}")
        if not 0.0 <= self.delta <= 1.0:
            raise ValueError(f"delta (a total-variation budget) must be in [0, 1], got {self.delta}")
        if self.ratio_bound is not None and not self.ratio_bound >= 1.0:
            raise ValueError(f"ratio_bound (lambda) must be >= 1 or None, got {self.ratio_bound}")
        if self.codebook_space not in CODEBOOK_SPACES:
            raise ValueError(f"codebook_space must be one of {CODEBOOK_SPACES}, got {self.codebook_space!r}")

    def prepare(self, model: ModelLike) -> torch.Tensor:
        """[V, k - 1] int32 nearest codes of every code, from the per-model cache."""
        if self.neighbourhood_k > model.info.vocab_size:
            raise ValueError(f"neighbourhood_k={self.neighbourhood_k} exceeds the vocabulary size "
                             f"{model.info.vocab_size}")
        return neighbour_lists(model, self.codebook_space, self.neighbourhood_k - 1, self.l2_normalise)

    def acceptance(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor,
                   ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        neighbours = ctx[drafts].long()  # [D, k - 1]
        p_relaxed, n_moved, _ = lantern_relaxed_probability(p, drafts, neighbours, self.delta, self.ratio_bound)
        ratio = acceptance_ratio(p_relaxed, q.gather(1, drafts[:, None])[:, 0])  # [D]
        return ratio, lantern_members(drafts, neighbours, n_moved)  # [D], [D, k]: {x} + A(x), -1 padding

    def residual_target(self, p: torch.Tensor, drafts: torch.Tensor, ctx: Any) -> torch.Tensor:
        neighbours = ctx[drafts].long()  # [1, k - 1]
        _, n_moved, _ = lantern_relaxed_probability(p, drafts, neighbours, self.delta, self.ratio_bound)
        return lantern_target(p, drafts, neighbours, n_moved)
