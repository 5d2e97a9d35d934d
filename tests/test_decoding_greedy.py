"""Greedy (temperature 0, or below 1e-4): the Jacobi-window decoders of the registry's greedy family
(`greedy_family()`: the lossless ones, and the relaxed ones at their defaults) reproduce plain greedy
AR token for token, whatever the window, the draft initialisation, and with drafts that are always
right or never right. On the tiny golden-fixture model (4 x 4 tokens, vocabulary 64)."""
from __future__ import annotations

import pytest
import torch
from decoding_helpers import oracle

from decoding.registry import DECODERS, greedy_family, make_decoder
from decoding.sampling import SamplingSettings
from models.registry import load_model

GREEDY = [SamplingSettings(cfg_scale=4.0, temperature=0.0), SamplingSettings(cfg_scale=1.0, temperature=0.0)]
LABELS = (0, 3, 7)
JACOBI_FAMILY = [DECODERS[name] for name in greedy_family() if DECODERS[name].family == "jacobi"]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model("tiny-fixture")


@pytest.fixture(scope="module")
def reference(model):
    """Greedy AR tokens per (sampling index, label)."""
    ar = make_decoder("ar")
    return {(i, c): ar.generate(model, c, s, seed=0, decode_image=False).tokens
            for i, s in enumerate(GREEDY) for c in LABELS}


@pytest.mark.parametrize("cls", JACOBI_FAMILY, ids=lambda c: c.name)
@pytest.mark.parametrize("window,init", [(2, "random"), (5, "horizontal"), (16, "random"), (7, "vertical")])
def test_greedy_equals_ar(model, reference, cls, window, init):
    decoder = cls(window=window, init=init)
    for (i, label), ref in reference.items():
        for seed in (0, 1):
            tokens = decoder.generate(model, label, GREEDY[i], seed=seed, decode_image=False).tokens
            assert torch.equal(tokens, ref), f"{cls.name} window={window} init={init} label={label}"


@pytest.mark.parametrize("cls", JACOBI_FAMILY, ids=lambda c: c.name)
def test_greedy_with_uniform_q_equals_ar(model, reference, cls):
    """uniform_q scores fresh random drafts with q = 1/V: greedy, min(1, V p(x)) still accepts only the argmax."""
    decoder = cls(window=6, uniform_q=True)
    for (i, label), ref in reference.items():
        tokens = decoder.generate(model, label, GREEDY[i], seed=2, decode_image=False).tokens
        assert torch.equal(tokens, ref), f"{cls.name} uniform_q label={label}"


@pytest.mark.parametrize("cls", JACOBI_FAMILY, ids=lambda c: c.name)
@pytest.mark.parametrize("window", [3, 16])
def test_greedy_with_always_right_drafts(model, reference, cls, window):
    n = model.info.num_tokens
    for (i, label), ref in reference.items():
        result = oracle(cls, ref, right=True)(window=window).generate(model, label, GREEDY[i], decode_image=False)
        assert torch.equal(result.tokens, ref)
        # every pass commits the whole window: window - 1 drafts + a bonus (fewer at the end)
        assert result.trace.nfe == 1 + -(-(n - 1) // window)
        assert set(result.trace.commit_kind) == {"draft", "bonus"}


@pytest.mark.parametrize("cls", JACOBI_FAMILY, ids=lambda c: c.name)
def test_greedy_with_never_right_drafts(model, reference, cls):
    n = model.info.num_tokens
    for (i, label), ref in reference.items():
        result = oracle(cls, ref, right=False)(window=6).generate(model, label, GREEDY[i], decode_image=False)
        assert torch.equal(result.tokens, ref)
        assert result.trace.nfe == n  # one token per pass, like AR
        assert result.trace.commit_kind == ["bonus"] + ["resampled"] * (n - 1)


@pytest.mark.parametrize("temperature", [1e-40, 1e-30, 0.99e-4])
def test_near_zero_temperature_is_greedy(model, reference, temperature):
    """Dividing logits by 1e-40 overflows to inf and softmax to NaN; below 1e-4 it is argmax instead."""
    for i, s in enumerate(GREEDY):
        tiny = SamplingSettings(cfg_scale=s.cfg_scale, temperature=temperature)
        assert tiny.greedy
        for name in ("ar", "sjd"):
            result = make_decoder(name).generate(model, LABELS[0], tiny, seed=2, decode_image=False)
            assert torch.equal(result.tokens, reference[(i, LABELS[0])])
            assert result.trace.commit_p == [1.0] * model.info.num_tokens  # one-hot targets, no NaN
    assert not SamplingSettings(temperature=1e-4).greedy


DRAFTER_FAMILY = [name for name in greedy_family() if DECODERS[name].family == "drafter"]
DRAFT_SHAPES = [{"tree": "chain", "depth": 3}, {"tree": "static"}, {"tree": "dynamic", "top_k": 3, "total_token": 9}]
DRAFTER_CASES = [(name, shape if name == "eagle" else {"tree": shape["tree"]}) for name in DRAFTER_FAMILY
                 for shape in DRAFT_SHAPES if name == "eagle" or shape["tree"] != "dynamic"]  # medusa: no dynamic


@pytest.mark.parametrize("name,shape", DRAFTER_CASES, ids=[f"{n}-{s['tree']}" for n, s in DRAFTER_CASES])
def test_drafter_decoders_greedy_equal_ar(model, reference, name, shape):
    """eagle / medusa with an untrained drafter: greedy drafts are verified by argmax, whatever they are."""
    decoder = make_decoder(name, drafter="random", **shape)
    for (i, label), ref in reference.items():
        tokens = decoder.generate(model, label, GREEDY[i], seed=1, decode_image=False).tokens
        assert torch.equal(tokens, ref), f"{name} {shape} label={label}"
