"""GSD: Grouped Speculative Decoding on SJD's Jacobi drafts (So et al., ICCV 2025, arXiv 2508.07747).

Notation: p = target distribution, q = draft distribution.

The rule is `rules/gsd.py`: accept the draft with probability min(1, p(G) / q(G)) over its
dynamic group G (the tokens ranked around it in the current target, filtered by probability
similarity and by embedding distance); a rejected draft is replaced from SJD's exact residual.

Settings and where they differ from the official code (junhyukso/GSD):
- group_size: the official code hard-codes 14; the paper's main runs use 25 (COCO) and 50 (Parti);
- prob_filter: |p(x') - p(x)| < 0.15 (official); None switches it off;
- the distance filter: `distance_threshold` is the official absolute squared-L2 threshold (0.5);
  on a small model it can admit every pair (a no-op), so `distance_quantile` instead sets the
  threshold to that quantile of the table's own pairwise squared distances (e.g. 0.05: only the
  closest 5% of pairs pass). Set at most one; both None switches the filter off;
- embedding_space: 'gpt' (the GPT's input token embeddings, as the official code) or 'vq' (the
  VQ codebook as the decoder uses it);
- the ranking is computed once per window and truncated at its ends (see `rules/gsd.py`).
With group_size = 1, or filters that admit only the draft, it is `sjd` token for token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from decoding.base import ModelLike
from decoding.neighbours import distance_quantile, embedding_table, sq_distance_table
from decoding.params import param
from decoding.rules.gsd import group_member_ids, grouped_acceptance, gsd_group
from decoding.speculative_jacobi import SpeculativeJacobi

EMBEDDING_SPACES = ("gpt", "vq")


@dataclass
class GSDDecoder(SpeculativeJacobi):
    """SJD's `window` and `init`, plus the group's parameters below."""

    name = "gsd"
    lossless = False
    summary = "Grouped Speculative Decoding on SJD drafts: accept by the mass of the draft's group of similar tokens"
    paper = "So et al., ICCV 2025 (arXiv 2508.07747)"
    paper_url = "https://arxiv.org/abs/2508.07747"
    group_noun = "group"
    group_size: int = param(14, "G: tokens of the rank window around the draft, the draft included (official "
                            "code 14, the paper's runs 25 and 50; 1: exactly sjd)",
                            low=1, integer=True, model_bound="vocab_size")
    prob_filter: float | None = param(0.15, "keep a token only if |p(x') - p(x)| is below this (official 0.15; "
                                      "none: off, 0: exactly sjd)", low=0.0, high=1.0, optional=True)
    distance_threshold: float | None = param(0.5, "keep a token only if its squared L2 embedding distance to the "
                                             "draft is below this (official 0.5; none: off)",
                                             low=0.0, optional=True)
    distance_quantile: float | None = param(None, "instead of distance_threshold: the threshold as this quantile "
                                            "of the pairwise squared distances (e.g. 0.05; none: off)",
                                            low=0.0, high=1.0, low_open=True, optional=True, advanced=True)
    embedding_space: str = param("gpt", "embeddings of the distance filter: 'gpt' the GPT's input token "
                                 "embeddings (official), 'vq' the VQ codebook", choices=EMBEDDING_SPACES,
                                 advanced=True, sweepable=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.distance_threshold is not None and self.distance_quantile is not None:
            raise ValueError("set distance_threshold (absolute) or distance_quantile (relative), not both; "
                             "e.g. distance_threshold=None, distance_quantile=0.05")

    def prepare(self, model: ModelLike) -> tuple[torch.Tensor | None, float | None, torch.Tensor | None]:
        """(embedding table [V, D] or None, squared-L2 threshold or None, [V, V] squared distances or
        None: small vocabularies only), from the per-model cache."""
        if self.distance_quantile is not None:
            threshold = distance_quantile(model, self.embedding_space, self.distance_quantile)
        else:
            threshold = self.distance_threshold
        if threshold is None:
            return None, None, None
        space = self.embedding_space
        return embedding_table(model, space), threshold, sq_distance_table(model, space)

    def acceptance(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor,
                   ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings, threshold, sq_distances = ctx
        members, in_group = gsd_group(p, drafts, self.group_size, self.prob_filter, embeddings, threshold,
                                      sq_distances)
        ratio, _ = grouped_acceptance(p, q, members, in_group)
        return ratio, group_member_ids(members, in_group)
