"""Exact speculative acceptance and the residual distribution: the lossless rule.

Notation: p = target distribution, q = draft distribution (rows [K, V], one per draft position),
x = draft token drawn from q.

Leviathan et al. 2023 (Alg. 1) / Chen et al. 2023 (Alg. 2): accept x with probability
min(1, p(x) / q(x)); on rejection draw from the residual norm(max(0, p - q)). The output is then
distributed exactly as p. SJD (Teng et al., ICLR 2025, eq. 4) applies the same test with q = the
distribution the draft was sampled from in the previous Jacobi iteration.

Where we differ from the official SJD code: the official code re-applies top-k to the residual
(`scheduler/jacobi_iteration_lumina_mgpt.py`), which makes it slightly lossy. We do not: the
residual is built from the already processed p and q and used as is (as junhyukso/SCD does).
"""
from __future__ import annotations

import torch

_TINY = 1e-30


def acceptance_ratio(p_draft: torch.Tensor, q_draft: torch.Tensor) -> torch.Tensor:
    """min(1, p(x) / q(x)) elementwise, [K] -> [K]. A draft with q(x) = 0 and p(x) = 0 gets 0."""
    return (p_draft / q_draft).nan_to_num(nan=0.0).clamp(max=1.0)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) per row, [..., V] -> [..., V].

    A row with no residual mass has p == q, so its draft is accepted with probability 1 and the
    residual is never drawn from; such rows fall back to p so that they stay a valid distribution.
    """
    r = (p - q).clamp_min(0.0)  # [..., V]
    mass = r.sum(-1, keepdim=True)  # [..., 1]
    return torch.where(mass > 0, r / mass.clamp_min(_TINY), p)


def first_rejection(accepted: torch.Tensor) -> int:
    """Number of leading True entries of a [K] bool mask: the index of the first rejection, or K."""
    flags = accepted.tolist()  # one conversion: cheaper than cumprod + sum + item for a window of drafts
    return flags.index(False) if False in flags else len(flags)


def output_distribution(p: torch.Tensor, q: torch.Tensor, accept_prob: torch.Tensor,
                        resample_from: torch.Tensor) -> torch.Tensor:
    """The distribution of the committed token when x ~ q is accepted with accept_prob(x) [V] and
    otherwise replaced by a draw from resample_from [V] (all [V]). Used by the tests to prove a rule
    lossless (result == p) or to measure how far a relaxed rule moves the output."""
    accepted_mass = q * accept_prob  # [V]
    return accepted_mass + (1.0 - accepted_mass.sum()) * resample_from
