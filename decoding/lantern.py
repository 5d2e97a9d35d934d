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
from decoding.params import param
from decoding.rules.exact import acceptance_ratio
from decoding.rules.lantern import lantern_members, lantern_relaxed_probability, lantern_target
from decoding.speculative_jacobi import SpeculativeJacobi

CODEBOOK_SPACES = ("vq", "raw")


@dataclass
class LanternDecoder(SpeculativeJacobi):
    """SJD's `window` and `init`, plus the relaxation's parameters below."""

    name = "lantern"
    lossless = False
    summary = "LANTERN's relaxed acceptance on SJD drafts: a draft takes the mass of its nearest codes, within delta"
    paper = "Jang et al., ICLR 2025 (arXiv 2410.03355); LANTERN++: arXiv 2502.06352"
    paper_url = "https://arxiv.org/abs/2410.03355"
    group_noun = "neighbourhood"
    neighbourhood_k: int = param(10, "size of B_k(x), the codes nearest the draft, the draft included (1: no "
                                 "relaxation; the official --lantern_k counts one fewer)",
                                 low=1, integer=True, model_bound="vocab_size")
    delta: float = param(0.1, "total-variation budget per token: the most target mass moved onto the draft "
                         "(official default 0.1, 'aggressive' 0.4; 0: exactly sjd)", low=0.0, high=1.0)
    ratio_bound: float | None = param(None, "LANTERN++'s lambda: p~(x) <= lambda p(x) (official runs 5-20; "
                                      "none: off, 1: exactly sjd)", low=1.0, optional=True, advanced=True)
    codebook_space: str = param("vq", "where nearness is measured: 'vq' the codebook as the image decoder uses it "
                                "(l2-normalised), 'raw' the un-normalised weights (the official code)",
                                choices=CODEBOOK_SPACES, advanced=True, sweepable=False)
    l2_normalise: bool = param(False, "re-normalise the codebook before measuring distances", advanced=True,
                               sweepable=False)

    def prepare(self, model: ModelLike) -> torch.Tensor:
        """[V, k - 1] int64 nearest codes of every code, from the per-model cache (int32 there; widened
        once per call here, not once per pass)."""
        return neighbour_lists(model, self.codebook_space, self.neighbourhood_k - 1, self.l2_normalise).long()

    def acceptance(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor,
                   ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        neighbours = ctx[drafts]  # [D, k - 1]
        p_relaxed, n_moved, _ = lantern_relaxed_probability(p, drafts, neighbours, self.delta, self.ratio_bound)
        ratio = acceptance_ratio(p_relaxed, q.gather(1, drafts[:, None])[:, 0])  # [D]
        return ratio, lantern_members(drafts, neighbours, n_moved)  # [D], [D, k]: {x} + A(x), -1 padding

    def residual_target(self, p: torch.Tensor, drafts: torch.Tensor, ctx: Any) -> torch.Tensor:
        neighbours = ctx[drafts]  # [1, k - 1]
        _, n_moved, _ = lantern_relaxed_probability(p, drafts, neighbours, self.delta, self.ratio_bound)
        return lantern_target(p, drafts, neighbours, n_moved)
