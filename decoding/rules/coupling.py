"""Maximal coupling of a new draft to the old one (SCD / MC-SJD, junhyukso/SCD).

Notation: p = the target distribution of this pass at a position, q = the distribution the old
draft x_old was drawn from.

Speculative Coupled Decoding (arXiv 2510.24211, the maximal-coupling policy pi_MC): run the
speculative test at every window position, without stopping at the first rejection; keep x_old
with probability min(1, p(x_old) / q(x_old)), otherwise draw from the residual norm(max(0, p - q)).
The new draft is then distributed exactly as p (the same identity that makes speculative sampling
lossless), and P[x_new = x_old] = 1 - TV(p, q), the largest possible: drafts stop flickering
between Jacobi iterations. Like the SCD code, the residual is not re-truncated with top-k.
"""
from __future__ import annotations

import torch

from decoding.rules.exact import acceptance_ratio, residual
from decoding.sampling import sample


def maximal_coupling(p: torch.Tensor, q: torch.Tensor, x_old: torch.Tensor, u: torch.Tensor,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """p, q: [K, V]; x_old: [K] drawn from q; u: [K] uniforms -> (x_new [K], kept [K] bool).

    One sampling call draws the residual for every row; rows that keep x_old ignore it.
    """
    ratio = acceptance_ratio(p.gather(1, x_old[:, None])[:, 0], q.gather(1, x_old[:, None])[:, 0])  # [K]
    kept = u < ratio  # [K]
    redrawn = sample(residual(p, q), generator)  # [K]
    return torch.where(kept, x_old, redrawn), kept
