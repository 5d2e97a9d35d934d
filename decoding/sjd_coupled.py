"""SJD with coupled drafts: Speculative Coupled Decoding, maximal coupling (arXiv 2510.24211, junhyukso/SCD).

Notation: p = target distribution (this pass), q = draft distribution (previous pass).

Verification is SJD's exact rule and commits the same way (accepted drafts up to the first
rejection, then a residual draw). The difference is the draft update for the next pass: instead
of fresh samples y ~ p at the later positions, every later position is passed through the
maximal coupling (`rules/coupling.py`): keep the old draft with probability min(1, p / q), else
draw from the residual norm(max(0, p - q)), without stopping at the first rejection. The new
draft is still distributed as p (so q = p next pass and the decoder stays lossless), but it
equals the old one with probability 1 - TV(p, q), so drafts stop flickering and get accepted.
The uniform of each position is the one its verification used, as in the SCD code (the loop
without `break`). The residual is not re-truncated with top-k (as in SCD).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from decoding.rules.coupling import maximal_coupling
from decoding.speculative_jacobi import Resolution, SpeculativeJacobi, Verdict


@dataclass
class SJDCoupledDecoder(SpeculativeJacobi):
    """SJD's `window` and `init` (SCD reports its best results with long windows, e.g. 32-64)."""

    name = "sjd-coupled"
    lossless = True
    summary = "SJD whose next drafts are maximally coupled to the old ones (SCD), so they stop flickering"
    paper = "Speculative Coupled Decoding (SCD / MC-SJD), ICML 2026 (arXiv 2510.24211)"
    paper_url = "https://arxiv.org/abs/2510.24211"

    def resolve(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, y: torch.Tensor, verdict: Verdict,
                r: int, gen: torch.Generator, ctx: Any) -> Resolution:
        n_drafts = len(drafts)
        coupled, _ = maximal_coupling(p[:n_drafts], q, drafts, verdict.uniform, gen)  # [D]
        if r < n_drafts:
            token, kind = coupled[r:r + 1], "resampled"
        elif len(p) > n_drafts:
            token, kind = y[n_drafts:n_drafts + 1], "bonus"
        else:
            token, kind = None, ""
        return Resolution(token, kind, torch.cat([coupled[r + 1:], y[max(r + 1, n_drafts):]]), p[r + 1:])
