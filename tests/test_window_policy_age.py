"""The depth-and-age acceptance model of the hardware window (`decoding/window_policy.py`): the steady-state
tokens per pass (reference and vectorised, equal), the per-age estimate with its prior, the ages the
Jacobi loop tracks, and losslessness of `speclens` with a history-dependent hardware chain."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from decoding_helpers import exact_sequence_distribution, random_tiny_model
from test_decoding_lossless import ALPHA, LABEL, SAMPLING, chi_square_p_value

import decoding.speclens as speclens_module
from decoding import speculative_jacobi, window_policy
from decoding.registry import make_decoder
from decoding.speclens import chain_length
from decoding.window_policy import (
    AGE_BINS,
    DEPTH_BINS,
    HAZARD_STEP,
    PRIOR_HAZARD,
    AgeAcceptance,
    age_hazards,
    choose_window,
    expected_tokens,
    hazard_at,
    isotonic,
    steady_state_curve,
    steady_state_tokens,
    straight_line,
)
from models.registry import load_model

CPU_LIKE = [1.0 + 0.03 * i for i in range(32)]  # a fed token costs 3% of a 1-token forward


def test_one_rate_for_every_age_is_the_geometric_model():
    for a in (0.0, 0.3, 0.75, 1.0):
        for length in (1, 2, 5, 16):
            assert steady_state_tokens(a, length) == pytest.approx(expected_tokens(a, length), abs=1e-9)
            assert steady_state_tokens([a] * 4, length) == pytest.approx(expected_tokens(a, length), abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_curve_equals_the_reference(seed):
    rng = np.random.default_rng(seed)
    tables = (np.sort(rng.uniform(0, 1, 6)), np.sort(rng.uniform(0.5, 1, 16)), [0.0, 0.0, rng.uniform()],
              np.sort(rng.uniform(0, 1, (7, 5)), axis=1))  # one row; a row per depth (the last for deeper)
    for hazards in (t.tolist() if isinstance(t, np.ndarray) else t for t in tables):
        curve = steady_state_curve(list(hazards), 24)
        reference = [steady_state_tokens(list(hazards), n) for n in range(1, 25)]
        assert curve == pytest.approx(reference, abs=1e-6)


def test_steady_state_solves_its_fixed_point():
    """E = 1 + sum_j prod_{i <= j} h((L - i) / E): older drafts (near the front) accepted more often."""
    hazards = [0.1, 0.4, 0.7, 0.85, 0.9]
    for length in (3, 8, 16):
        e = steady_state_tokens(hazards, length)
        survive, total = 1.0, 1.0
        for j in range(1, length):
            survive *= hazard_at(hazards, (length - j) / e)
            total += survive
        assert 1.0 <= e <= length and total == pytest.approx(e, abs=1e-6)


def test_hazard_is_read_between_ages_and_held_past_the_last():
    assert hazard_at([0.2, 0.6], 0.5) == pytest.approx(0.4)
    assert hazard_at([0.2, 0.6], 7.0) == 0.6 and hazard_at([0.2, 0.6], -1.0) == 0.2
    with pytest.raises(ValueError, match="hazards"):
        steady_state_tokens([0.5, 1.5], 4)


def test_drafts_that_improve_with_age_make_a_longer_window_pay():
    """Fresh drafts rarely accepted, fed ones often: the pooled rate of a short window's passes (one
    geometric rate) picks a short window, the per-age model sees that a longer one feeds its front drafts
    more often and picks it."""
    hazards = [0.05, 0.5, 0.8, 0.9, 0.95]
    pooled = 0.5
    assert choose_window(CPU_LIKE, pooled, 24) < choose_window(CPU_LIKE, hazards, 24)
    assert choose_window([1.0] * 24, hazards, 24) == 24  # flat cost (GPU): the whole window
    assert choose_window([float(n) for n in range(1, 25)], hazards, 24) == 2  # cost proportional to L
    # speclens's chain: the same model behind a tree of 3 nodes over 1 level
    assert chain_length(CPU_LIKE, pooled, 3, 1, 20) < chain_length(CPU_LIKE, hazards, 3, 1, 20)


def test_no_data_is_the_prior_and_each_depth_is_monotone_in_age():
    empty = [[0] * AGE_BINS for _ in range(DEPTH_BINS)]
    table = age_hazards(empty, empty)
    assert len(table) == DEPTH_BINS
    assert all(h == pytest.approx(PRIOR_HAZARD, abs=HAZARD_STEP) for row in table for h in row)
    est = AgeAcceptance()
    est.update([0], 0)  # depth 1, a fresh draft, rejected: depth 1's rate (0 + prior) / 2, its cell's (2 / 3) of that
    h = est.hazards
    assert h[0][0] == pytest.approx(PRIOR_HAZARD / 3, abs=HAZARD_STEP)
    assert h[0][1] == pytest.approx(PRIOR_HAZARD / 2, abs=HAZARD_STEP)
    assert h[1][0] == pytest.approx(PRIOR_HAZARD, abs=HAZARD_STEP)  # depth 2: no data yet
    est.update([5, 4, 3, 3], 3)  # three old drafts accepted, the fourth rejected
    est.update([3], 0)
    assert [est.tested[d][a] for d, a in ((0, 0), (0, 3), (0, 5), (1, 4), (2, 3), (3, 3))] == [1, 1, 1, 1, 1, 1]
    assert est.accepted[0][5] == 1 and est.accepted[0][3] == 0 and est.accepted[3][3] == 0
    for row in est.hazards:
        assert all(b >= a for a, b in zip(row, row[1:]))  # pooled where an old draft was rejected
    est.update([AGE_BINS + 40] * (DEPTH_BINS + 5), DEPTH_BINS + 5)  # very deep and old: the last bins
    assert est.tested[-1][-1] == 6 and est.accepted[-1][-1] == 6


def test_survivors_are_accepted_more_often_so_longer_windows_pay():
    """Drafts deeper in an accepted run are in easier parts of the image: with depth 1 at 0.5 and deeper
    depths at 0.95, a longer window pays than with 0.5 everywhere."""
    bursty = [[0.5] * 4] + [[0.95] * 4] * 3
    assert choose_window(CPU_LIKE, 0.5, 24) < choose_window(CPU_LIKE, bursty, 24)
    assert steady_state_tokens(bursty, 3) == pytest.approx(1 + 0.5 + 0.5 * 0.95)


def test_estimate_refuses_bad_input():
    est = AgeAcceptance()
    with pytest.raises(ValueError, match="accepted"):
        est.update([1, 2, 3], 1)  # only the first rejection is verified
    with pytest.raises(ValueError, match="accepted"):
        est.update([1], 2)
    with pytest.raises(ValueError, match=">= 0"):
        est.update([-1], 0)
    with pytest.raises(ValueError, match="accepted"):
        age_hazards([[3]], [[2]])
    with pytest.raises(ValueError, match="shape"):
        age_hazards([[0, 0]], [[0]])


def test_weighted_isotonic():
    assert isotonic([1.0, 3.0, 2.0]) == pytest.approx([1.0, 2.5, 2.5])
    assert isotonic([1.0, 3.0, 2.0], [1.0, 1.0, 3.0]) == pytest.approx([1.0, 2.25, 2.25])
    assert isotonic([0.9, 0.2], [1.0, 9.0]) == pytest.approx([0.27, 0.27])


def test_cost_line_is_robust_to_jumps_of_single_lengths():
    assert straight_line([1.0, 2.0, 3.0, 4.0]) == pytest.approx((1.0, 2.0, 3.0, 4.0))
    jumpy = [1.0, 1.9, 1.2, 1.3, 1.4, 1.5, 2.6, 1.7]  # two wild points
    assert straight_line(jumpy) == pytest.approx([1.0 + 0.1 * k for k in range(8)])
    assert straight_line([2.0, 1.0, 1.0, 1.0]) == pytest.approx((1.0,) * 4)  # never a falling cost
    with pytest.raises(ValueError, match="positive"):
        straight_line([1.0, 0.0])


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load_model("tiny-fixture")


def test_jacobi_loop_ages_count_the_passes_that_redrew_each_draft(tiny, monkeypatch):
    """With a fixed window no draft is dropped, so a draft's age is the number of earlier passes whose
    target rows covered its position (rows start + 1 .. start + L of a pass fed from start)."""
    seen: list[list[int]] = []

    class Recording(AgeAcceptance):
        def update(self, ages, accepted):
            seen.append(list(ages))
            super().update(ages, accepted)

    monkeypatch.setattr(speculative_jacobi, "AgeAcceptance", Recording)
    n = tiny.info.num_tokens
    for name in ("sjd", "sjd-coupled"):
        seen.clear()
        trace = make_decoder(name, window=6).generate(tiny, 2, SAMPLING, seed=3, decode_image=False).trace
        passes = [(s.window_start, min(s.window_length, n - 1 - s.window_start)) for s in trace.steps[1:]]
        assert len(seen) == len(passes)
        for t, ((start, _), ages) in enumerate(zip(passes, seen)):
            expected = [sum(s0 + 1 <= start + k <= s0 + rows for s0, rows in passes[:t])
                        for k in range(1, len(ages) + 1)]
            assert ages == expected
        assert max(max(a) for a in seen if a) >= 2


def test_speclens_history_dependent_chain_is_lossless(monkeypatch):
    """speclens (tree of 3 nodes) with a cost curve on which the chain flips between 0, 1 and 2 nodes with
    the history (acceptance by level and age): the output is still the target's distribution (chi-square,
    false-alarm rate ALPHA)."""
    torch.set_num_threads(1)
    model = random_tiny_model(vocab=2, grid=3, seed=1, logit_scale=1.5)  # 512 sequences, 9 tokens
    exact = exact_sequence_distribution(model, LABEL, SAMPLING).numpy()
    curve = (1.0, 1.0, 1.0, 1.3, 1.55)
    monkeypatch.setattr(speclens_module, "cost_curve", lambda m, length, cfg: curve[:length])
    monkeypatch.setattr(window_policy, "_CURVES", {})
    monkeypatch.setattr(speclens_module, "RECHOOSE_EVERY", 1)  # a choice every pass: 9 tokens take 3-5 passes
    decoder = make_decoder("speclens", window=5, window_policy="hardware")
    n = model.info.num_tokens
    lengths = {s.window_length for seed in range(30)
               for s in decoder.generate(model, LABEL, SAMPLING, seed=seed, decode_image=False).trace.steps[1:]
               if s.window_start + 4 < n}  # away from the grid's end, where the chain is cut anyway
    assert len(lengths) >= 2  # the chain length varies with the history
    p_value = chi_square_p_value(decoder, model, exact)
    assert p_value > ALPHA and np.isfinite(p_value)
