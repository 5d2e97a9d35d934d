"""The acceptance rules on their own: exact identities for the lossless ones, stated bounds for the
relaxed ones. Notation: p = target, q = draft."""
from __future__ import annotations

import pytest
import torch

from decoding.rules.coupling import maximal_coupling
from decoding.rules.exact import acceptance_ratio, first_rejection, output_distribution, residual
from decoding.rules.gsd import group_member_ids, grouped_acceptance, gsd_group, gsd_group_reference
from decoding.rules.lantern import lantern_relaxed_probability, lantern_target
from decoding.sampling import (
    SamplingSettings,
    inverse_cdf,
    inverse_cdf_reference,
    logits_to_probs,
    logits_to_probs_reference,
)


def random_dist(*shape: int, seed: int, zeros: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=g) * 2
    if zeros:
        logits[..., :zeros] = float("-inf")  # a top-k'd distribution
    return torch.softmax(logits, -1)


def q_cases(vocab: int) -> list[torch.Tensor]:
    return [random_dist(vocab, seed=1), random_dist(vocab, seed=2, zeros=3), torch.eye(vocab)[2],
            random_dist(vocab, seed=0)]


@pytest.mark.parametrize("p_zeros", [0, 4])
def test_exact_rule_output_is_the_target(p_zeros):
    p = random_dist(10, seed=0, zeros=p_zeros)
    for q in q_cases(10):
        out = output_distribution(p, q, acceptance_ratio(p, q), residual(p, q))
        torch.testing.assert_close(out, p, atol=1e-6, rtol=0)


def test_residual_is_a_distribution_and_supported_where_p_exceeds_q():
    p, q = random_dist(3, 12, seed=3), random_dist(3, 12, seed=4)
    r = residual(p, q)
    torch.testing.assert_close(r.sum(-1), torch.ones(3))
    assert (r[p <= q] == 0).all()
    torch.testing.assert_close(residual(p, p), p)  # no residual mass: falls back to p (never drawn from)


def test_first_rejection():
    assert first_rejection(torch.tensor([True, True, False, True])) == 2
    assert first_rejection(torch.tensor([False, True])) == 0
    assert first_rejection(torch.tensor([True, True])) == 2
    assert first_rejection(torch.zeros(0, dtype=torch.bool)) == 0


def test_maximal_coupling_keeps_the_target_and_maximises_agreement():
    """Monte Carlo over 40000 rows: marginal of x_new = p, P[x_new = x_old] = 1 - TV(p, q) (5 sigma)."""
    vocab, n = 6, 40000
    p, q = random_dist(vocab, seed=5), random_dist(vocab, seed=6)
    g = torch.Generator().manual_seed(0)
    x_old = torch.multinomial(q, n, replacement=True, generator=g)  # [n]
    u = torch.rand(n, generator=g)
    x_new, kept = maximal_coupling(p.expand(n, -1), q.expand(n, -1), x_old, u, g)
    freq = torch.bincount(x_new, minlength=vocab).float() / n
    assert (freq - p).abs().max() < 5 * (0.25 / n) ** 0.5
    same = (x_new == x_old).float().mean()
    tv = 0.5 * (p - q).abs().sum()
    assert abs(same - (1 - tv)) < 5 * (0.25 / n) ** 0.5
    assert (kept <= (x_new == x_old)).all()


def test_maximal_coupling_output_identity_is_exact():
    """The coupling's output distribution = the exact rule's = p, for every q (no sampling)."""
    p = random_dist(8, seed=7, zeros=2)
    for q in q_cases(8):
        torch.testing.assert_close(output_distribution(p, q, acceptance_ratio(p, q), residual(p, q)), p,
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize("delta,ratio_bound", [(0.1, None), (0.3, None), (1.0, 3.0), (0.2, 1.5), (0.0, None)])
def test_lantern_moves_at_most_delta_and_respects_lambda(delta, ratio_bound):
    vocab, k = 40, 12
    p = random_dist(30, vocab, seed=8, zeros=5)
    g = torch.Generator().manual_seed(1)
    drafts = torch.randint(vocab, (30,), generator=g)
    neighbours = torch.stack([torch.randperm(vocab, generator=g) for _ in range(30)])
    neighbours = torch.stack([row[row != d][:k - 1] for row, d in zip(neighbours, drafts)])  # [30, k-1]
    p_tilde_x, n_moved, moved = lantern_relaxed_probability(p, drafts, neighbours, delta, ratio_bound)
    p_x = p.gather(1, drafts[:, None])[:, 0]
    assert (moved <= delta + 1e-7).all()
    if ratio_bound is not None:
        assert (p_tilde_x <= ratio_bound * p_x + 1e-7).all()
    # the largest admissible prefix: one more neighbour would break a bound
    cum = p.gather(1, neighbours).cumsum(1)
    nxt = cum.gather(1, n_moved.clamp(max=k - 2)[:, None])[:, 0]
    limit = torch.full_like(p_x, delta) if ratio_bound is None else torch.minimum(
        torch.full_like(p_x, delta), (ratio_bound - 1) * p_x)
    assert ((n_moved == k - 1) | (nxt > limit)).all()
    # the relaxed target: a distribution, TV(p, p~) = moved mass, p~(x) as returned
    target = lantern_target(p, drafts, neighbours, n_moved)
    torch.testing.assert_close(target.sum(1), torch.ones(30))
    torch.testing.assert_close(0.5 * (target - p).abs().sum(1), moved, atol=1e-6, rtol=0)
    torch.testing.assert_close(target.gather(1, drafts[:, None])[:, 0], p_tilde_x)


def test_lantern_with_nothing_admitted_is_the_exact_target():
    p = random_dist(5, 20, seed=9)
    drafts = torch.arange(5)
    neighbours = torch.stack([torch.arange(5, 15)] * 5)
    p_tilde_x, n_moved, moved = lantern_relaxed_probability(p, drafts, neighbours, 0.0, None)
    assert (n_moved == 0).all() and (moved == 0).all()
    assert torch.equal(p_tilde_x, p.gather(1, drafts[:, None])[:, 0])
    assert torch.equal(lantern_target(p, drafts, neighbours, n_moved), p)


@pytest.mark.parametrize("group_size", [1, 2, 5, 14, 40])
def test_gsd_group_holds_the_draft_and_only_tokens_passing_both_filters(group_size):
    vocab, prob_filter, threshold = 40, 0.03, 1.0
    p, q = random_dist(25, vocab, seed=10, zeros=6), random_dist(25, vocab, seed=11)
    g = torch.Generator().manual_seed(2)
    drafts = torch.randint(vocab, (25,), generator=g)
    emb = torch.randn(vocab, 4, generator=g)
    members, in_group = gsd_group(p, drafts, group_size, prob_filter, emb, threshold)
    assert members.shape == (25, group_size)
    center = group_size - 1 - group_size // 2
    assert torch.equal(members[:, center], drafts) and in_group[:, center].all()
    order = torch.sort(p, dim=1, descending=True, stable=True).indices
    rank = torch.argsort(order, dim=1)  # rank[i, token]
    for i in range(25):
        x = drafts[i]
        for m in members[i][in_group[i]].tolist():
            if m == x:
                continue
            assert abs(p[i, m] - p[i, x]) < prob_filter
            assert (emb[m] - emb[x]).pow(2).sum() < threshold
            assert abs(int(rank[i, m]) - int(rank[i, x])) <= group_size // 2
        assert len(set(members[i][in_group[i]].tolist())) == int(in_group[i].sum())  # no duplicates
    ratio, size = grouped_acceptance(p, q, members, in_group)
    assert (size >= 1).all() and (size <= group_size).all()
    p_group = torch.stack([p[i, members[i][in_group[i]]].sum() for i in range(25)])
    q_group = torch.stack([q[i, members[i][in_group[i]]].sum() for i in range(25)])
    torch.testing.assert_close(ratio, (p_group / q_group).clamp(max=1))


def test_gsd_group_of_one_is_the_exact_rule():
    p, q = random_dist(9, 30, seed=12), random_dist(9, 30, seed=13)
    drafts = torch.arange(9) * 3
    for members, in_group in (gsd_group(p, drafts, 1, None, None, None),
                              gsd_group(p, drafts, 14, 0.0, None, None)):
        ratio, size = grouped_acceptance(p, q, members, in_group)
        assert torch.equal(ratio, acceptance_ratio(p.gather(1, drafts[:, None])[:, 0],
                                                   q.gather(1, drafts[:, None])[:, 0]))
        assert (size == 1).all()


def test_gsd_group_without_filters_is_the_rank_window():
    p = random_dist(1, 30, seed=14)
    order = torch.sort(p, dim=1, descending=True, stable=True).indices[0]
    draft = order[10:11]
    members, in_group = gsd_group(p, draft, 14, None, None, None)
    assert members[0].tolist() == order[4:18].tolist() and in_group.all()  # 6 above, the draft, 7 below
    members, in_group = gsd_group(p, order[:1], 14, None, None, None)  # top-ranked: truncated window
    assert int(in_group.sum()) == 8 and members[0][in_group[0]].tolist() == order[:8].tolist()


def test_gsd_group_with_the_cached_distance_table_is_the_same_group():
    from decoding_helpers import random_tiny_model

    from decoding import neighbours as nb
    model = random_tiny_model(vocab=40, grid=2)
    emb, table = nb.embedding_table(model, "gpt"), nb.sq_distance_table(model, "gpt")
    assert table.shape == (40, 40) and torch.equal(table.diagonal(), torch.zeros(40))
    p = random_dist(25, 40, seed=15, zeros=6)
    drafts = torch.randint(40, (25,), generator=torch.Generator().manual_seed(3))
    threshold = float(table.median())  # admits about half of the pairs: the filter does something
    members, in_group = gsd_group(p, drafts, 14, 0.2, emb, threshold)
    cached = gsd_group(p, drafts, 14, 0.2, None, threshold, table)
    assert torch.equal(members, cached[0]) and torch.equal(in_group, cached[1])
    assert 25 < int(in_group.sum()) < 25 * 14


# -- fast paths equal their plain reference ------------------------------------------------------

@pytest.mark.parametrize("group_size", [1, 2, 5, 14, 40])
@pytest.mark.parametrize("prob_filter,threshold", [(None, None), (0.03, None), (None, 1.0), (0.05, 2.0)])
def test_gsd_group_equals_its_plain_reference(group_size, prob_filter, threshold):
    """Rank keys + modular distance + two top-k (+ the cached [V, V] table) == sort, slice, filter."""
    from decoding_helpers import random_tiny_model

    from decoding import neighbours as nb
    model = random_tiny_model(vocab=40, grid=2, seed=4)
    emb, table = nb.embedding_table(model, "gpt"), nb.sq_distance_table(model, "gpt")
    threshold = None if threshold is None else threshold * float(table.median())
    for seed in range(3):
        p = random_dist(20, 40, seed=20 + seed, zeros=6 * seed)  # ties among the zeros
        p[0, :5] = p[0, 5]  # ties among non-zero probabilities too
        p = p / p.sum(1, keepdim=True)
        drafts = torch.randint(40, (20,), generator=torch.Generator().manual_seed(seed))
        expected = gsd_group_reference(p, drafts, group_size, prob_filter, emb, threshold)
        for cached in (None, table):
            got = group_member_ids(*gsd_group(p, drafts, group_size, prob_filter, emb, threshold, cached))
            assert torch.equal(got, expected), f"seed {seed}, table {cached is not None}"


def test_cached_distance_table_equals_the_plain_pairwise_distances():
    from decoding_helpers import random_tiny_model

    from decoding import neighbours as nb
    model = random_tiny_model(vocab=24, grid=2, seed=5)
    emb, table = nb.embedding_table(model, "gpt"), nb.sq_distance_table(model, "gpt")
    plain = torch.tensor([[float((emb[m] - emb[x]).square().sum()) for m in range(24)] for x in range(24)])
    torch.testing.assert_close(table, plain, rtol=1e-6, atol=0.0)


SAMPLING_CASES = [SamplingSettings(temperature=1.0), SamplingSettings(temperature=0.7, top_k=5),
                  SamplingSettings(temperature=1.3, top_p=0.8), SamplingSettings(temperature=0.9, top_k=12, top_p=0.5),
                  SamplingSettings(temperature=0.0), SamplingSettings(temperature=1e-40, top_k=3)]


@pytest.mark.parametrize("s", SAMPLING_CASES, ids=lambda s: f"T{s.temperature}-k{s.top_k}-p{s.top_p}")
def test_logits_to_probs_equals_its_plain_reference(s):
    logits = torch.randn(3, 7, 50, generator=torch.Generator().manual_seed(6)) * 3
    logits[0, 0, :4] = logits[0, 0, 4]  # ties at the top
    expected = logits_to_probs_reference(logits, s)
    torch.testing.assert_close(logits_to_probs(logits, s), expected, rtol=1e-6, atol=1e-7)
    buffer = torch.empty(3, 7, 50)
    torch.testing.assert_close(logits_to_probs(logits, s, out=buffer), expected, rtol=1e-6, atol=1e-7)
    assert not expected.isnan().any() and torch.allclose(expected.sum(-1), torch.ones(3, 7))


def test_top_k_at_llamagen_scale_keeps_exactly_the_reference_tokens():
    """k = 2000 of 16384 (the 16384-code models' top-k), ties straddling the k-th value included: the selection
    threshold keeps the same tokens as the reference's full sort."""
    logits = torch.randn(4, 16384, generator=torch.Generator().manual_seed(9)).mul(4).round().div(4)  # many ties
    s = SamplingSettings(top_k=2000)
    got, expected = logits_to_probs(logits, s), logits_to_probs_reference(logits, s)
    assert torch.equal(got > 0, expected > 0) and (got > 0).sum(-1).min() >= 2000
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


def test_inverse_cdf_equals_its_plain_reference():
    g = torch.Generator().manual_seed(7)
    probs = random_dist(200, 30, seed=8, zeros=5)
    probs[:20] = torch.eye(30)[torch.randint(30, (20,), generator=g)]  # one-hot rows give their token
    u = torch.rand(200, 1, dtype=torch.float64, generator=g)
    u[-1] = 0.0
    assert torch.equal(inverse_cdf(probs, u), inverse_cdf_reference(probs, u))
    assert (inverse_cdf(probs[20:], u[20:]) >= 5).all()  # a token of probability 0 is never drawn


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_target_is_refused(bad):
    logits = torch.randn(2, 10)
    logits[1, 3] = bad
    for s in (SamplingSettings(), SamplingSettings(temperature=0.5, top_k=4), SamplingSettings(temperature=0.0)):
        if bad == float("-inf") or (bad == float("inf") and s.greedy):
            assert not logits_to_probs(logits, s).isnan().any()  # a masked token / an argmax: well defined
            continue
        with pytest.raises(ValueError, match="NaN"):
            logits_to_probs(logits, s)
