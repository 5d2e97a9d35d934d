"""LANTERN's relaxed acceptance (latent proximity), with the LANTERN++ ratio bound.

Notation: p = target distribution [K, V], q = draft distribution, x = draft token [K].

LANTERN (Jang et al., ICLR 2025, arXiv 2410.03355, Sec. 4, eq. 5-7): B_k(x) = the k codes nearest
to x in the VQ codebook. A_{k,delta}(x) = the largest prefix of B_k(x) \\ {x}, in proximity order,
whose target mass is at most delta. The relaxed target moves that mass onto x:
    p~(x) = p(x) + sum_{x' in A} p(x'),   p~(x') = 0 for x' in A,
so TV(p, p~) = sum_{x' in A} p(x') <= delta. Accept x with probability min(1, p~(x) / q(x)).
LANTERN++ (arXiv 2502.06352) bounds the moved mass by (lambda - 1) p(x) instead, i.e.
p~(x) <= lambda p(x); here `ratio_bound` = lambda is its own parameter and both bounds apply when
both are set (delta = 1 disables the TV bound, ratio_bound = None disables the ratio bound).

Differences from the official code (jadohu/LANTERN, `evaluate_posterior`), stated on purpose:
- k counts x itself (B_k(x) includes x), so k = 1 switches the relaxation off; the official
  `--lantern_k` counts neighbours excluding x (official k = ours - 1).
- The official code overloads one flag (delta <= 1: TV bound; > 1: lambda). We keep two parameters.
- On rejection we resample from norm(max(0, p~ - q)), the residual of the relaxed target, which
  zeroes A(x) as the paper says; with A empty this is exactly SJD's residual.
"""
from __future__ import annotations

import torch


def lantern_relaxed_probability(p: torch.Tensor, drafts: torch.Tensor, neighbours: torch.Tensor, delta: float,
                                ratio_bound: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """p: [K, V]; drafts: [K]; neighbours: [K, k-1] codes nearest each draft, proximity order, x excluded.

    Returns (p~(x) [K], number of neighbours moved |A| [K], moved mass TV(p, p~) [K]).
    """
    p_x = p.gather(1, drafts[:, None])[:, 0]  # [K]
    if neighbours.shape[1] == 0:
        zero = torch.zeros_like(p_x)
        return p_x, zero.long(), zero
    # p >= 0, so cum is non-decreasing and each bound below admits a prefix: its length is a count
    cum = p.gather(1, neighbours).cumsum(1)  # [K, k-1]
    admissible = cum <= delta
    if ratio_bound is not None:
        admissible &= cum <= (ratio_bound - 1.0) * p_x[:, None]
    n_moved = admissible.sum(1)  # [K] the largest admissible prefix
    moved = torch.nn.functional.pad(cum, (1, 0)).gather(1, n_moved[:, None])[:, 0]  # [K] cum[n - 1], 0 if n = 0
    return p_x + moved, n_moved, moved


def lantern_relaxed_probability_reference(p: torch.Tensor, drafts: torch.Tensor, neighbours: torch.Tensor,
                                          delta: float, ratio_bound: float | None) -> tuple[torch.Tensor, ...]:
    """The plain version of `lantern_relaxed_probability`, which must equal it: the largest prefix of
    admissible neighbours by a running product of the flags, without relying on cum being monotone."""
    p_x = p.gather(1, drafts[:, None])[:, 0]  # [K]
    cum = p.gather(1, neighbours).cumsum(1)  # [K, k-1]
    admissible = cum <= delta
    if ratio_bound is not None:
        admissible &= cum <= (ratio_bound - 1.0) * p_x[:, None]
    n_moved = admissible.long().cumprod(1).sum(1)  # [K]
    last = (n_moved - 1).clamp_min(0)[:, None]
    moved = torch.where(n_moved > 0, cum.gather(1, last)[:, 0], torch.zeros_like(p_x))  # [K]
    return p_x + moved, n_moved, moved


def lantern_target(p: torch.Tensor, drafts: torch.Tensor, neighbours: torch.Tensor,
                   n_moved: torch.Tensor) -> torch.Tensor:
    """The relaxed target p~ [K, V]: the mass of the first n_moved neighbours moved onto the draft."""
    if neighbours.shape[1] == 0:
        return p
    in_a = torch.arange(neighbours.shape[1], device=p.device)[None, :] < n_moved[:, None]  # [K, k-1]
    nb_p = p.gather(1, neighbours)  # [K, k-1]
    moved = (nb_p * in_a).sum(1, keepdim=True)  # [K, 1]
    target = p.scatter(1, neighbours, nb_p.masked_fill_(in_a, 0.0))  # A's mass taken away (nb_p is not used again)
    return target.scatter_add_(1, drafts[:, None], moved)


def lantern_members(drafts: torch.Tensor, neighbours: torch.Tensor, n_moved: torch.Tensor) -> torch.Tensor:
    """[K, k] the draft, then the n_moved neighbours whose mass moved onto it (A), then -1 padding:
    {x} + A(x) as token ids, what a trace records."""
    ids = torch.cat([drafts[:, None], neighbours], dim=1)  # [K, k]
    kept = torch.arange(ids.shape[1], device=ids.device)[None, :] <= n_moved[:, None]  # [K, k]
    return torch.where(kept, ids, -1)
