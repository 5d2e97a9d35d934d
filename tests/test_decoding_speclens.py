"""speclens and speclens-relaxed: what they compose is what they do.

The whole-sequence losslessness of `speclens` (fixed and hardware chain) and the rejection of an aggressive
`speclens-relaxed` are in test_decoding_lossless.py; the registry-wide contract in test_decoding_contract.py.
Here: with a fixed window `speclens` is SJD-PAC pass for pass; the hardware chain follows the cost curve;
`speclens-relaxed` at delta 0 is `speclens`, and above it relaxes only what LANTERN's bound allows."""
from __future__ import annotations

import pytest
import torch

import decoding.speclens as speclens_module
from decoding.registry import make_decoder
from decoding.sampling import SamplingSettings
from decoding.sjd_pac import Pending
from decoding.speclens import chain_length
from models.registry import load_model

SAMPLING = SamplingSettings(cfg_scale=4.0, temperature=1.0)
LABELS = (0, 3)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model("tiny-fixture")


def _runs(decoder, model, seeds=(0, 1)):
    return [decoder.generate(model, label, SAMPLING, seed=seed, decode_image=False)
            for label in LABELS for seed in seeds]


@pytest.mark.parametrize("params", [{"window": 8, "tree_width": 2, "tree_depth": 2},
                                    {"window": 13, "tree_width": 3, "tree_depth": 3},
                                    {"window": 6, "tree_width": 1, "tree_depth": 1, "uniform_q": False}])
def test_fixed_window_is_sjd_pac_pass_for_pass(model, params):
    ours = _runs(make_decoder("speclens", init="random", window_policy="fixed", **params), model)
    pac = _runs(make_decoder("sjd-pac", **params), model)
    for a, b in zip(ours, pac):
        assert torch.equal(a.tokens, b.tokens)
        assert [s.window_length for s in a.trace.steps] == [s.window_length for s in b.trace.steps]
        assert a.trace.commit_kind == b.trace.commit_kind


def test_chain_length_follows_cost_and_acceptance():
    flat = (1.0,) * 32
    steep = tuple(1.0 + i for i in range(32))  # a node costs as much as the whole 1-token forward
    assert chain_length(flat, 0.5, 3, 1, 20) == 20  # free nodes: the whole chain
    assert chain_length(steep, 0.05, 3, 1, 20) == 0  # nothing gets accepted: the tree alone
    assert chain_length(steep, 0.05, 1, 0, 20) == 1  # no tree: at least one draft
    assert chain_length(steep, 0.05, 1, 0, 0) == 0  # the grid's end
    cpu_like = tuple(1.0 + 0.1 * i for i in range(32))  # a node costs a tenth of the 1-token forward
    short, long = chain_length(cpu_like, 0.6, 3, 1, 20), chain_length(cpu_like, 0.95, 3, 1, 20)
    assert 0 < short < long <= 20  # higher acceptance, longer chain
    assert chain_length(steep[:4], 0.99, 3, 1, 20) == 20  # past the curve's end: its last entry


def test_hardware_chain_follows_the_cost_curve(model, monkeypatch):
    fixed = _runs(make_decoder("speclens", window=10), model, seeds=(0,))
    monkeypatch.setattr(speclens_module, "cost_curve", lambda m, length, cfg: (1.0,) * length)
    flat = _runs(make_decoder("speclens", window=10, window_policy="hardware"), model, seeds=(0,))
    for a, b in zip(fixed, flat):  # a flat curve: the whole window every pass, as fixed
        assert torch.equal(a.tokens, b.tokens)
    steep_curve = lambda m, length, cfg: tuple(1.0 + 10 * i for i in range(length))  # noqa: E731
    monkeypatch.setattr(speclens_module, "cost_curve", steep_curve)
    steep = _runs(make_decoder("speclens", window=10, window_policy="hardware"), model, seeds=(0,))
    for a, b in zip(fixed, steep):  # a steep curve: the tree (3 nodes) and at most one chain node per pass
        assert max(s.window_length for s in b.trace.steps) <= 4 < max(s.window_length for s in a.trace.steps)


def test_relaxed_at_delta_zero_is_speclens(model):
    exact = _runs(make_decoder("speclens", window=8), model)
    relaxed = _runs(make_decoder("speclens-relaxed", window=8, delta=0.0), model)
    for a, b in zip(exact, relaxed):
        assert torch.equal(a.tokens, b.tokens)
        assert not any(r for s in b.trace.steps for r in s.relaxed)


def test_relaxed_accepts_more_and_marks_what_it_relaxed(model):
    exact = _runs(make_decoder("speclens", window=8), model)
    relaxed = _runs(make_decoder("speclens-relaxed", window=8, delta=0.5, neighbourhood_k=20), model)
    assert sum(r.trace.nfe for r in relaxed) < sum(r.trace.nfe for r in exact)
    marked = 0
    for result in relaxed:
        for step in result.trace.steps[1:]:
            for i, flag in enumerate(step.relaxed):
                members = step.group_members[i]
                assert not flag or (step.accepted[i] and len(members) > 1)  # relaxed: accepted, mass moved
                assert not members or members[0] == step.draft_tokens[i]  # the group: the draft, then A(x)
                assert step.group_size[i] == len(members)
                marked += flag
    assert marked > 0
    assert "relaxed" in {k for r in relaxed for k in r.trace.commit_kind}


def test_vertical_new_slots_copy_the_upper_neighbour_with_one_hot_q():
    decoder = make_decoder("speclens", init="vertical")
    vocab, width = 8, 3
    committed = torch.tensor([1, 2, 3, 4])  # rows 0 and the first of row 1 of a 3-wide grid
    pending = Pending(torch.tensor([5]), torch.full((1, vocab), 1.0 / vocab), torch.tensor([False]))
    drafts = decoder.new_drafts(pending, committed, 4, width, vocab, torch.Generator().manual_seed(0))
    assert drafts.tokens.tolist() == [5, 3, 4, 5]  # pending 5; then positions 6, 7, 8 copy 3, 4, 5
    assert torch.equal(drafts.q[1:], torch.nn.functional.one_hot(drafts.tokens[1:], vocab).float())
    assert drafts.fresh.tolist() == [False, True, True, True]
