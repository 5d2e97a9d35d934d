"""The hardware-aware window (`decoding/window_policy.py`): the choice from a cost curve and an
acceptance rate, the curve's smoothing and caching, and the Jacobi loop that uses it (window
lengths follow the curve, greedy stays AR, the output distribution stays the target's)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from decoding_helpers import exact_sequence_distribution, random_tiny_model
from test_decoding_lossless import ALPHA, LABEL, SAMPLING, chi_square_p_value

from decoding import speculative_jacobi, window_policy
from decoding.registry import make_decoder
from decoding.sampling import SamplingSettings
from decoding.window_policy import choose_window, cost_curve, expected_tokens, smooth
from models.registry import load_model

GREEDY = SamplingSettings(cfg_scale=4.0, temperature=0.0)


def test_expected_tokens():
    assert expected_tokens(0.0, 5) == 1.0  # only the resampled / bonus token
    assert expected_tokens(1.0, 5) == 5.0  # every draft accepted
    assert expected_tokens(0.5, 3) == pytest.approx(1.75)
    with pytest.raises(ValueError, match="acceptance"):
        expected_tokens(1.5, 3)


def test_flat_curve_gives_the_full_window_and_a_steep_one_the_shortest():
    flat, steep = [1.0] * 16, [float(n) for n in range(1, 17)]  # c(L) = const (GPU) / proportional to L
    for a in (0.1, 0.5, 0.9):
        assert choose_window(flat, a, 16) == 16
        assert choose_window(steep, a, 16) == 2  # E(L) / L falls with L for any a < 1
    assert choose_window(flat, 0.5, 7) == 7  # capped (end of the grid)
    assert choose_window(steep, 0.5, 1) == 1


def test_a_step_in_the_curve():
    """c = 1 up to 4 tokens, 3 beyond: at a = 0.9, E(4) / 1 = 3.44 beats E(16) / 3 = 2.72; at a = 0.99
    E(16) / 3 = 4.95 beats E(4) / 1 = 3.94."""
    cost = [1.0] * 4 + [3.0] * 12
    assert choose_window(cost, 0.9, 16) == 4
    assert choose_window(cost, 0.99, 16) == 16


def test_choice_refuses_bad_input():
    with pytest.raises(ValueError, match="max_length"):
        choose_window([1.0, 2.0], 0.5, 3)
    with pytest.raises(ValueError, match="positive"):
        choose_window([1.0, 0.0, 2.0], 0.5, 3)


def test_smoothing_is_monotone_and_robust_to_one_outlier():
    assert smooth([1.0, 3.0, 2.0, 4.0]) == pytest.approx((1.0, 2.5, 2.5, 4.0))
    assert smooth([5.0, 1.0, 1.0, 1.0]) == pytest.approx((2.0, 2.0, 2.0, 2.0))  # pooled, not cummax'd to 5
    assert smooth([1.0, 1.0012, 1.0051]) == pytest.approx((1.0, 1.0, 1.01))  # 1% of c(1)
    with pytest.raises(ValueError, match="positive"):
        smooth([1.0, -1.0])


class CountingModel:
    """Wraps a model and counts its windowed forwards (the measurement's)."""

    def __init__(self, model):
        self.model, self.forwards = model, 0
        self.info = model.info

    def prefill(self, label, cfg_scale):
        return self.model.prefill(label, cfg_scale)

    def forward_window(self, tokens, start):
        self.forwards += 1
        return self.model.forward_window(tokens, start)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load_model("tiny-fixture")


def test_cost_curve_measured_once_then_cached_in_process_and_on_disk(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECLENS_WINDOW_COST_DIR", str(tmp_path))
    monkeypatch.setattr(window_policy, "_CURVES", {})
    model = CountingModel(tiny)
    curve = cost_curve(model, 5, 4.0)
    assert len(curve) == 5 and all(b >= a > 0 for a, b in zip(curve, curve[1:]))
    assert model.forwards == 5 + 5 * (1 + 4 * 2)  # warm-up, then 5 rounds: c(1), then (1 token, L tokens) pairs
    assert cost_curve(model, 5, 4.0) == curve and model.forwards == 50  # this process
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["seconds"] == pytest.approx(list(curve))
    monkeypatch.setattr(window_policy, "_CURVES", {})
    assert cost_curve(model, 5, 4.0) == pytest.approx(curve) and model.forwards == 50  # from disk
    files[0].write_text("{not json")
    monkeypatch.setattr(window_policy, "_CURVES", {})
    cost_curve(model, 5, 4.0)
    assert model.forwards == 100  # a broken file is measured again (and rewritten)
    json.loads(files[0].read_text())
    monkeypatch.setenv("SPECLENS_WINDOW_COST_DIR", "")
    assert window_policy.cache_dir() is None  # memory only


def sjd_with_curve(monkeypatch, curve, **params):
    monkeypatch.setattr(speculative_jacobi, "cost_curve", lambda model, length, cfg: tuple(curve[:length]))
    return make_decoder("sjd", window_policy="hardware", **params)


def test_window_lengths_follow_the_curve(tiny, monkeypatch):
    n = tiny.info.num_tokens
    steep = sjd_with_curve(monkeypatch, [float(k) for k in range(1, 17)], window=8)
    trace = steep.generate(tiny, 1, SAMPLING, seed=0, decode_image=False).trace
    assert {s.window_length for s in trace.steps[1:]} == {2}  # the shortest window, every pass
    flat = sjd_with_curve(monkeypatch, [1.0] * 16, window=8)
    trace = flat.generate(tiny, 1, SAMPLING, seed=0, decode_image=False).trace
    assert all(s.window_length == min(8, n - s.window_start) for s in trace.steps[1:])  # the full window
    fixed = make_decoder("sjd", window=8).generate(tiny, 1, SAMPLING, seed=0, decode_image=False)
    assert fixed.trace.commit_step == trace.commit_step and fixed.trace.tokens == trace.tokens


def test_greedy_hardware_window_is_greedy_ar(tiny, monkeypatch):
    ar = make_decoder("ar")
    decoder = sjd_with_curve(monkeypatch, [1.0] * 4 + [1.2] * 12, window=12)
    for label in (0, 5):
        ref = ar.generate(tiny, label, GREEDY, decode_image=False).tokens
        assert torch.equal(decoder.generate(tiny, label, GREEDY, seed=2, decode_image=False).tokens, ref)


def test_history_dependent_window_is_lossless(monkeypatch):
    """c = (1, 1, 1.25, 1.25): with one acceptance rate a the policy takes 4 tokens iff a > 0.5 (E(4) / 1.25
    > E(2) iff a^2 > 0.25), else 2; with the per-age rates of the passes so far the window flips with the
    history; the output is still the target's distribution (chi-square, false-alarm rate ALPHA)."""
    torch.set_num_threads(1)
    assert choose_window([1, 1, 1.25, 1.25], 0.45, 4) == 2 and choose_window([1, 1, 1.25, 1.25], 0.6, 4) == 4
    model = random_tiny_model(vocab=2, grid=3, seed=1, logit_scale=1.5)  # 512 sequences, 9 tokens
    exact = exact_sequence_distribution(model, LABEL, SAMPLING).numpy()
    decoder = sjd_with_curve(monkeypatch, [1.0, 1.0, 1.25, 1.25], window=4)
    lengths = {s.window_length for seed in range(20)
               for s in decoder.generate(model, LABEL, SAMPLING, seed=seed, decode_image=False).trace.steps[1:]}
    assert {2, 4} <= lengths  # both choices occur
    p_value = chi_square_p_value(decoder, model, exact)
    assert p_value > ALPHA and np.isfinite(p_value)
