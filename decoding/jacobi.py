"""Deterministic Jacobi decoding: the weak baseline of the SJD paper (Song et al. 2021; Santilli et al. 2023).

Notation: p = target distribution, q = draft distribution (recorded only).

A draft is accepted iff it equals the token sampled at its position in this very pass (the
official `prefix_token_sampler_scheme='jacobi'`: `input_ids[i] == next_tokens[i - 1]`). At the
first mismatch the pass's own sample is committed. Every committed token is therefore a sample
of p given the committed prefix: the decoder is lossless, and with temperature 0 it is greedy
AR. Under sampling it rarely accepts anything (the SJD paper: about 1.0x), which is the point of
including it. The recorded acceptance probability of a draft x is p(x), the chance that the
pass's sample equals it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from decoding.speculative_jacobi import SpeculativeJacobi, Verdict


@dataclass
class JacobiDecoder(SpeculativeJacobi):
    """Jacobi iteration with the deterministic 'token unchanged' test; `window` and `init` as SJD."""

    name = "jacobi"
    lossless = True
    summary = "deterministic Jacobi decoding: a draft is kept iff it equals this pass's own sample"
    paper = "Song et al., ICML 2021 (arXiv 2002.03629); Santilli et al., ACL 2023 (arXiv 2305.10427)"
    paper_url = "https://arxiv.org/abs/2305.10427"

    def verify(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, y: torch.Tensor,
               gen: torch.Generator, ctx: Any) -> Verdict:
        index = drafts[:, None]
        accepted = y == drafts  # [D]
        return Verdict(p.gather(1, index)[:, 0], accepted, torch.zeros_like(accepted),
                       torch.zeros(len(drafts), dtype=torch.long), q.gather(1, index)[:, 0])

    def replacement(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, y: torch.Tensor, r: int,
                    gen: torch.Generator, ctx: Any) -> torch.Tensor:
        return y[r:r + 1]
