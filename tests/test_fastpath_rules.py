"""The fast LANTERN rule equals its plain versions (the decoders' own outputs are held to a recorded run in
test_fastpath_decoders.py). Notation: p = target, x = draft."""
from __future__ import annotations

import pytest
import torch

from decoding.rules.lantern import (
    lantern_relaxed_probability,
    lantern_relaxed_probability_reference,
    lantern_target,
)


def lantern_case(seed: int, rows: int = 24, vocab: int = 50, k: int = 15, zeros: int = 6):
    """p with exact zeros and ties (top-k'd, rounded), drafts, and k - 1 distinct neighbours per draft."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, vocab, generator=g) * 2).round()  # ties
    logits[:, :zeros] = float("-inf")
    p = torch.softmax(logits, -1)
    drafts = torch.randint(vocab, (rows,), generator=g)
    order = torch.stack([torch.randperm(vocab, generator=g) for _ in range(rows)])
    neighbours = torch.stack([row[row != x][:k - 1] for row, x in zip(order, drafts)])  # [rows, k - 1]
    return p, drafts, neighbours


@pytest.mark.parametrize("delta,ratio_bound", [(0.0, None), (0.05, None), (0.4, None), (1.0, None), (1.0, 1.0),
                                               (0.3, 2.0), (1.0, 20.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lantern_relaxed_probability_equals_the_reference(seed, delta, ratio_bound):
    p, drafts, neighbours = lantern_case(seed)
    fast = lantern_relaxed_probability(p, drafts, neighbours, delta, ratio_bound)
    plain = lantern_relaxed_probability_reference(p, drafts, neighbours, delta, ratio_bound)
    for got, want in zip(fast, plain):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_the_comparison_sees_a_different_prefix():
    """The reference is not the fast path under another name: a non-monotone running sum (impossible
    for a distribution, which is why the fast path may count) is cut at its first inadmissible entry."""
    p = torch.tensor([[0.1, 0.5, -0.45, 0.05]])  # not a distribution: cum = 0.5, 0.05, 0.1
    drafts, neighbours = torch.tensor([0]), torch.tensor([[1, 2, 3]])
    assert lantern_relaxed_probability_reference(p, drafts, neighbours, 0.2, None)[1].item() == 0
    assert lantern_relaxed_probability(p, drafts, neighbours, 0.2, None)[1].item() == 2


@pytest.mark.parametrize("delta", [0.0, 0.1, 0.5, 1.0])
def test_lantern_target_moves_the_prefix_onto_the_draft(delta):
    """p~ row by row: A's entries zeroed, their mass added to x, everything else as in p."""
    p, drafts, neighbours = lantern_case(3)
    _, n_moved, _ = lantern_relaxed_probability(p, drafts, neighbours, delta, None)
    target = lantern_target(p, drafts, neighbours, n_moved)
    for i, (x, n) in enumerate(zip(drafts.tolist(), n_moved.tolist())):
        a = neighbours[i, :n]
        want = p[i].clone()
        want[a] = 0.0
        want[x] += p[i, a].sum()
        torch.testing.assert_close(target[i], want, rtol=0, atol=1e-7)
    assert torch.equal(lantern_target(p, drafts, neighbours, torch.zeros_like(n_moved)), p)
