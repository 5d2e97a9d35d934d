"""Draft trees (`decoding/rules/tree.py`), SJD-PAC's decoder on them and the tree fields of the trace.

The whole-sequence losslessness of `sjd-pac` is in test_decoding_lossless.py; here the sibling rule is
checked exactly (every ordered candidate tuple enumerated), the tree layout, the continuation, the
greedy equivalence with drafts that force an accepted off-main path (so K/V copied from scratch slots),
and the trace round trips (with the new fields, and an old version-1 trace without them)."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
from decoding_helpers import random_tiny_model

from decoding.registry import make_decoder
from decoding.rules.exact import residual
from decoding.rules.tree import (
    build_tree,
    continuation,
    draw_siblings,
    full_tree_size,
    verify_tree,
    without_replacement_q,
)
from decoding.sampling import SamplingSettings
from decoding.sjd_pac import Pending, SJDPACDecoder
from decoding.trace import Trace
from models.registry import load_model

GREEDY = [SamplingSettings(cfg_scale=4.0, temperature=0.0), SamplingSettings(cfg_scale=1.0, temperature=0.0)]


# -- layout --------------------------------------------------------------------------------------------
def test_tree_layout_matches_the_official_sizes():
    tree = build_tree((3, 3, 1, 1), tree_levels=2)
    assert len(tree) == full_tree_size(3, 2) + 2 == 15  # 1 + 3 + 9, then a chain of 2 below the main node
    assert tree.depths == (0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 4)
    assert tree.children[0] == (1, 2, 3) and tree.children[2] == (7, 8, 9)  # every node: all 3 candidates
    assert [i for i in range(15) if tree.main[i]] == [0, 1, 4, 13, 14]  # candidate 0 at every level
    assert tree.children[4] == (13,) and all(not tree.children[i] for i in range(5, 13))
    for i, parent in enumerate(tree.parents):  # visible = ancestors and itself
        ancestors = {i}
        while parent >= 0:
            ancestors.add(parent)
            parent = tree.parents[parent]
        assert set(tree.visible[i].nonzero().flatten().tolist()) == ancestors
    assert full_tree_size(4, 2) == 21 and full_tree_size(1, 2) == 3


def test_continuation_follows_candidate_zero_then_the_main_chain():
    tree = build_tree((2, 2, 1), tree_levels=2)  # root, 1 2 | 3 4 5 6 | 7 (below 3)
    assert continuation(tree, [2]) == {0: 0, 1: 1, 2: 5, 3: 7}  # below node 2: its candidate 0 (5), then main
    assert continuation(tree, [1, 3]) == {0: 0, 1: 1, 2: 3, 3: 7}
    assert continuation(tree, []) == {0: 0, 1: 1, 2: 3, 3: 7}


# -- sibling drafting and verification -----------------------------------------------------------------
def test_draw_siblings_without_replacement_and_their_q():
    base = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.0, 0.0, 1.0, 0.0]])
    cands = draw_siblings(base, torch.tensor([1, 2]), 3, torch.Generator().manual_seed(0))
    assert cands[0].tolist()[0] == 1 and sorted(cands[0].tolist()) == [0, 1, 2]  # distinct, all of the support
    assert cands[1].tolist() == [2, -1, -1]  # the support ran out
    q = without_replacement_q(base, cands)
    assert torch.allclose(q[0, 0], base[0]) and q[0, 1, 1] == 0 and q[0, 2, cands[0, 1]] == 0
    assert torch.allclose(q[0].sum(-1), torch.ones(3)) and torch.equal(q[1, 1], torch.zeros(4))
    # candidate k is drawn from q_k: the second candidate's frequencies given the first
    gen = torch.Generator().manual_seed(1)
    firsts = torch.zeros(4000, dtype=torch.long)
    second = draw_siblings(base[:1].expand(4000, -1), firsts, 2, gen)[:, 1]
    freq = torch.bincount(second, minlength=4).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.0, 0.6, 0.4, 0.0]), atol=0.03)


def exact_output(tree, p, q_base, next_target=residual) -> torch.Tensor:
    """The exact distribution of the token committed at depth 1 below a root with K children drawn
    without replacement from q_base: every ordered candidate tuple, weighted by its probability, with
    the acceptance probabilities and the final residual that `verify_tree` itself reports."""
    k, vocab = len(tree.children[0]), len(q_base)
    out = torch.zeros(vocab, dtype=torch.float64)
    for cands in itertools.permutations(range(vocab), k):
        q = without_replacement_q(q_base[None], torch.tensor([cands]))[0]  # [K, V]
        weight = float(torch.prod(torch.stack([q[i, c] for i, c in enumerate(cands)])))
        if weight == 0:
            continue
        tokens = torch.tensor((0,) + cands)
        node_q = torch.cat([torch.zeros(1, vocab), q])
        verdict = verify_tree(tree, p, node_q, tokens, torch.ones(len(tree)), next_target)  # u = 1: all rejected
        reach = 1.0
        for c, a in zip(cands, verdict.accept_prob):
            out[c] += weight * reach * a
            reach *= 1 - a
        out += weight * reach * verdict.final.double()
    return out


@pytest.mark.parametrize("width", [2, 3])
def test_sibling_verification_is_exactly_lossless(width):
    tree = build_tree((width,), tree_levels=1)
    gen = torch.Generator().manual_seed(width)
    for _ in range(3):
        target = torch.softmax(torch.randn(5, generator=gen) * 1.5, 0)
        q_base = torch.softmax(torch.randn(5, generator=gen) * 1.5, 0)
        p = torch.cat([target[None], torch.zeros(width, 5)])  # only the root's row is a target here
        assert torch.allclose(exact_output(tree, p, q_base), target.double(), atol=1e-6)
        # without the chained residual the same enumeration is off: the check can fail
        wrong = exact_output(tree, p, q_base, next_target=lambda t, q_sibling: t)
        assert (wrong - target.double()).abs().max() > 1e-3


def test_first_accepted_sibling_is_followed():
    tree = build_tree((2, 1), tree_levels=1)  # root, 1 2, 3 below 1
    p = torch.tensor([[0.1, 0.2, 0.7], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1 / 3] * 3])
    q = torch.tensor([[0.0] * 3, [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    tokens = torch.tensor([0, 1, 2, 0])
    verdict = verify_tree(tree, p, q, tokens, torch.tensor([0.0, 0.5, 0.5, 0.5]))  # node 1: 0.2 < 0.5 rejected
    assert verdict.tested == [1, 2] and verdict.accepted == [False, True] and verdict.path == [2]
    assert verdict.final_kind == "bonus" and torch.equal(verdict.final, p[2])  # node 2 has no children
    verdict = verify_tree(tree, p, q, tokens, torch.tensor([0.0, 0.1, 0.0, 0.5]))  # node 1 accepted, 3 too
    assert verdict.tested == [1, 3] and verdict.path == [1, 3] and verdict.final_kind == "bonus"


# -- the decoder ---------------------------------------------------------------------------------------
def test_parameters_are_checked():
    with pytest.raises(ValueError, match="window must hold the whole tree: window >= 13"):
        SJDPACDecoder(window=12, tree_width=3, tree_depth=3)
    with pytest.raises(ValueError, match="tree_width"):
        SJDPACDecoder(tree_width=0)
    with pytest.raises(ValueError, match="needs a model with forward_nodes"):
        SJDPACDecoder().prepare(object())


class WrongThenRightPAC(SJDPACDecoder):
    """Greedy oracle: at every tree level candidate 0 is wrong and candidate 1 is the reference token, so
    the accepted path runs through siblings (scratch slots copied back); chain drafts are right."""

    reference: torch.Tensor = torch.empty(0)

    def _extend(self, pending, start, count, vocab, gen):
        right = self.reference[start:start + count]
        return Pending(right, torch.nn.functional.one_hot(right, vocab).float(), torch.zeros(len(right), dtype=bool))

    def _candidates(self, drafts, levels, gen):
        right = drafts.tokens[:levels]
        vocab = drafts.q.shape[1]
        cands = torch.stack([(right + 1) % vocab, right], 1)  # [L, 2]
        return cands, torch.nn.functional.one_hot(cands, vocab).float()


class ChainOraclePAC(SJDPACDecoder):
    """Greedy oracle: every draft the reference token (right) or another one (wrong), one-hot q, so no
    siblings can be drawn (a one-hot q has no other support) and the tree is the main chain."""

    reference: torch.Tensor = torch.empty(0)
    right: bool = True

    def _extend(self, pending, start, count, vocab, gen):
        drafts = self.reference[start:start + count]
        drafts = drafts if self.right else (drafts + 1) % vocab
        return Pending(drafts, torch.nn.functional.one_hot(drafts, vocab).float(), torch.zeros(len(drafts), dtype=bool))


@pytest.fixture(scope="module")
def fixture_model():
    torch.set_num_threads(1)
    return load_model("tiny-fixture")


@pytest.mark.parametrize("window,width,depth", [(64, 3, 3), (8, 2, 2), (5, 1, 1), (30, 4, 3)])
def test_greedy_equals_ar(fixture_model, window, width, depth):
    ar = make_decoder("ar")
    decoder = SJDPACDecoder(window=window, tree_width=width, tree_depth=depth)
    for sampling in GREEDY:
        for label in (0, 7):
            ref = ar.generate(fixture_model, label, sampling, decode_image=False).tokens
            for seed in (0, 1):
                tokens = decoder.generate(fixture_model, label, sampling, seed=seed, decode_image=False).tokens
                assert torch.equal(tokens, ref), f"window={window} K={width} D={depth} label={label}"


@pytest.mark.parametrize("depth", [2, 3])
def test_greedy_through_siblings_copies_their_cache(fixture_model, depth):
    ar, n = make_decoder("ar"), fixture_model.info.num_tokens
    for sampling in GREEDY:
        ref = ar.generate(fixture_model, 3, sampling, decode_image=False).tokens
        decoder = WrongThenRightPAC(window=16, tree_width=2, tree_depth=depth)
        decoder.reference = ref
        result = decoder.generate(fixture_model, 3, sampling, decode_image=False)
        assert torch.equal(result.tokens, ref)
        levels = depth - 1  # each pass: the sibling at every tree level, then a bonus token
        assert result.trace.nfe == 1 + -(-(n - 1) // (levels + 1))
        for step in result.trace.steps[1:-1]:
            on = [i for i, flag in enumerate(step.on_path) if flag]
            assert [step.positions[i] for i in on] == step.committed_positions[:levels]
            assert step.accepted == [i in on for i in range(len(step.positions))]  # candidate 0 tried, rejected


@pytest.mark.parametrize("right", [True, False])
def test_greedy_with_always_and_never_right_drafts(fixture_model, right):
    ar, n = make_decoder("ar"), fixture_model.info.num_tokens
    for sampling in GREEDY:
        ref = ar.generate(fixture_model, 7, sampling, decode_image=False).tokens
        decoder = ChainOraclePAC(window=16, tree_width=3, tree_depth=3)
        decoder.reference, decoder.right = ref, right
        trace = decoder.generate(fixture_model, 7, sampling, decode_image=False).trace
        assert trace.tokens == ref.tolist()
        if right:  # the main path: 16 - 13 chain nodes below the tree's 2 levels, all accepted, then a bonus
            assert trace.nfe == 1 + -(-(n - 1) // (16 - 13 + 3)) and set(trace.commit_kind) == {"draft", "bonus"}
        else:
            assert trace.nfe == n and trace.commit_kind == ["bonus"] + ["resampled"] * (n - 1)


# -- the trace -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tree_trace():
    torch.set_num_threads(1)
    model = random_tiny_model(vocab=8, grid=3, seed=2)
    return SJDPACDecoder(window=13, tree_width=3, tree_depth=3).generate(
        model, 1, SamplingSettings(cfg_scale=2.0), seed=4, decode_image=False).trace


def test_tree_trace_round_trip_and_fields(tree_trace):
    again = Trace.from_json(tree_trace.to_json())
    assert again.to_dict() == tree_trace.to_dict() and again.version == 2
    width = tree_trace.grid_shape[1]
    siblings = 0
    for s in tree_trace.steps[1:]:
        k = len(s.positions)
        assert len(s.parents) == len(s.depths) == len(s.rows) == len(s.on_path) == k
        assert s.rows == [pos // width for pos in s.positions] and s.draft_forwards == 0 and s.draft_s == 0.0
        assert all(pos == s.window_start + d for pos, d in zip(s.positions, s.depths))
        on = [pos for pos, flag in zip(s.positions, s.on_path) if flag]
        assert on == s.committed_positions[:len(on)] and sum(s.on_path) == s.n_accepted
        siblings += k - len(set(s.positions))
    assert siblings > 0  # the trace did record siblings at a shared position


def test_version_1_trace_loads_as_chains():
    torch.set_num_threads(1)
    model = random_tiny_model(vocab=4, grid=2, seed=1)
    trace = make_decoder("sjd", window=3).generate(model, 0, SamplingSettings(), seed=3, decode_image=False).trace
    old = json.loads(trace.to_json())
    old["version"] = 1
    for s in old["steps"]:
        for key in ("parents", "depths", "rows", "on_path", "draft_forwards", "draft_s"):
            del s[key]
    loaded = Trace.from_dict(old)
    assert loaded.to_dict() == trace.to_dict()  # chain defaults == what a chain decoder records
    for s in loaded.steps:
        k = len(s.positions)
        assert s.parents == list(range(-1, k - 1)) and s.depths == list(range(1, k + 1)) and s.on_path == s.accepted
    with pytest.raises(ValueError, match="unsupported trace version 7"):
        Trace.from_dict({**old, "version": 7})


def test_inconsistent_tree_fields_are_refused(tree_trace):
    d = json.loads(tree_trace.to_json())
    step = next(s for s in d["steps"] if len(s["positions"]) > 1)
    step["parents"][0] = 0  # a node cannot be its own parent
    with pytest.raises(ValueError, match="parent 0 must be a node before it"):
        Trace.from_dict(d)
