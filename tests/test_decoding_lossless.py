"""Lossless decoders preserve the target distribution: a chi-square goodness-of-fit test of whole
token sequences against the exact sequence distribution of a tiny random model.

The model: vocabulary 4, a 2 x 2 token grid (256 sequences), CFG scale 2, temperature 1 (and
top-k 3 in one case, so that the target has zeros); its
distributions are far from uniform and depend on the context. The exact distribution is computed
by enumeration with the GPT's own teacher-forced forward. Each decoder draws N_SAMPLES sequences
with seeds 0..N_SAMPLES-1; sequences whose expected count is below 5 are pooled into one cell.

False-alarm rate: each test rejects at p < ALPHA = 1e-3, so a correct decoder fails a given test
with probability 1e-3 over the choice of seeds, and the whole file (LOSSLESS cases) with at most
about 2.1% for its 21 cases. The seeds are fixed, so a run is reproducible: a failure is never flaky, it reproduces.
The test can fail: it rejects GSD and LANTERN set aggressively, and SJD with the classic bug of
resampling from p instead of the residual after a rejection (with deterministic
initial drafts; with uniform random ones that bug happens to cancel in the marginal).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from decoding_helpers import exact_sequence_distribution, random_tiny_model, sequence_index
from scipy.stats import chisquare

from decoding.params import validate_for_model
from decoding.registry import describe_decoder, lossless_decoders, make_decoder
from decoding.rules.tree import verify_tree
from decoding.sampling import SamplingSettings, sample
from decoding.sjd import SJDDecoder
from decoding.sjd_pac import SJDPACDecoder

N_SAMPLES = 1200
ALPHA = 1e-3
SAMPLING = SamplingSettings(cfg_scale=2.0, temperature=1.0)
TOP_K = SamplingSettings(cfg_scale=2.0, temperature=1.0, top_k=3)
LABEL = 1

LOSSLESS = [
    ("ar", {}, SAMPLING),
    ("jacobi", {"window": 3}, SAMPLING),
    ("sjd", {"window": 3}, SAMPLING),
    ("sjd", {"window": 4, "init": "vertical"}, SAMPLING),
    ("sjd", {"window": 4, "init": "horizontal"}, TOP_K),
    ("sjd-coupled", {"window": 4}, SAMPLING),
    ("sjd-coupled", {"window": 3, "init": "horizontal"}, TOP_K),
    ("sjd", {"window": 4, "uniform_q": True}, SAMPLING),
    ("sjd-coupled", {"window": 4, "uniform_q": True}, TOP_K),
    ("sjd-pac", {"window": 7, "tree_width": 2, "tree_depth": 3}, SAMPLING),
    ("sjd-pac", {"window": 13, "tree_width": 3, "tree_depth": 3}, TOP_K),
    ("sjd-pac", {"window": 4, "tree_width": 3, "tree_depth": 2, "uniform_q": False}, SAMPLING),
    ("zipar", {"local_window": 2}, SAMPLING),  # a row waits for the complete row above (2-wide grid): AR
    ("sjd", {"window": 4, "window_policy": "hardware"}, SAMPLING),  # this machine's measured cost curve
    ("speclens", {}, TOP_K),
    ("speclens", {"init": "random"}, SAMPLING),  # the default copies the upper neighbour (one-hot q)
    ("speclens", {"window": 4, "window_policy": "hardware"}, SAMPLING),  # the chain cut per pass to the cost curve
    # drafter decoders with an untrained (random) drafter: chain, static and dynamic trees
    ("eagle", {"tree": "chain", "depth": 3, "drafter": "random"}, SAMPLING),
    ("eagle", {"tree": "static", "depth": 3, "drafter": "random"}, TOP_K),
    ("eagle", {"tree": "dynamic", "depth": 3, "top_k": 2, "total_token": 5, "drafter": "random"}, SAMPLING),
    ("medusa", {"tree": "static", "drafter": "random"}, SAMPLING),
]
# every lossless decoder of the registry is tested: one without a case above runs at its defaults
LOSSLESS += [(name, {}, SAMPLING) for name in lossless_decoders() if name not in {c[0] for c in LOSSLESS}]


class ResampleFromTargetSJD(SJDDecoder):
    """The classic bug: after a rejection, draw from p instead of the residual norm(max(0, p - q))."""

    def replacement(self, p, q, drafts, y, r, gen, ctx):
        return sample(p[r:r + 1], gen)


class UnchainedSiblingsPAC(SJDPACDecoder):
    """A tree bug: every sibling verified against the parent's own target, the residual not chained."""

    def verify(self, tree, p, q, tokens, u):
        return verify_tree(tree, p, q, tokens, u, next_target=lambda target, q_sibling: target)


@pytest.fixture(scope="module")
def model():
    return random_tiny_model(vocab=4, grid=2, seed=1, logit_scale=0.15)


@pytest.fixture(scope="module")
def exact(model):
    return {s: exact_sequence_distribution(model, LABEL, s).numpy() for s in (SAMPLING, TOP_K)}


def fitted(name: str, params: dict, model) -> dict:
    """params, plus each unset model-bound parameter whose default exceeds this tiny model's bound
    (window 16 > 4 tokens) set to the bound."""
    info = model.info
    bounds = {"vocab_size": info.vocab_size, "num_tokens": info.num_tokens}
    extra = {s.name: bounds[s.meta.model_bound] for s in describe_decoder(name)
             if s.meta.model_bound in bounds and s.name not in params and s.default > bounds[s.meta.model_bound]}
    return {**params, **extra}


def chi_square_p_value(decoder, model, exact: np.ndarray, sampling: SamplingSettings = SAMPLING,
                       n_samples: int = N_SAMPLES) -> float:
    counts = np.zeros(len(exact))
    for seed in range(n_samples):
        tokens = decoder.generate(model, LABEL, sampling, seed=seed, decode_image=False).tokens
        counts[sequence_index(tokens, model.info.vocab_size)] += 1
    expected = exact * n_samples
    big = expected >= 5
    observed = np.append(counts[big], counts[~big].sum())
    expected = np.append(expected[big], expected[~big].sum())
    return float(chisquare(observed, expected * observed.sum() / expected.sum()).pvalue)


@pytest.mark.parametrize("name,params,sampling", LOSSLESS, ids=[f"{n}-{p}-k{s.top_k}" for n, p, s in LOSSLESS])
def test_lossless_decoder_matches_exact_distribution(model, exact, name, params, sampling):
    torch.set_num_threads(1)
    decoder = make_decoder(name, **fitted(name, params, model))
    validate_for_model(decoder, model.info)
    p_value = chi_square_p_value(decoder, model, exact[sampling], sampling)
    assert p_value > ALPHA, f"{name} {params}: sequence distribution differs from the target (p = {p_value:.2e})"


@pytest.mark.parametrize("decoder", [
    make_decoder("gsd", window=4, group_size=4, prob_filter=None, distance_threshold=None),
    make_decoder("lantern", window=4, neighbourhood_k=4, delta=1.0),
    ResampleFromTargetSJD(window=4, init="horizontal"),
    UnchainedSiblingsPAC(window=7, tree_width=3, tree_depth=2),
    make_decoder("lantern-eagle", tree="static", depth=3, top_k=2, neighbourhood_k=4, delta=1.0, drafter="random"),
    make_decoder("speclens-relaxed", window=4, neighbourhood_k=4, delta=1.0),
], ids=["gsd-aggressive", "lantern-aggressive", "sjd-resample-from-p-bug", "sjd-pac-unchained-siblings-bug",
        "lantern-eagle-aggressive", "speclens-relaxed-aggressive"])
def test_goodness_of_fit_rejects_lossy_decoders(model, exact, decoder):
    torch.set_num_threads(1)
    p_value = chi_square_p_value(decoder, model, exact[SAMPLING])
    assert p_value < ALPHA, f"the test failed to detect a lossy decoder (p = {p_value:.2e})"


@pytest.fixture(scope="module")
def rows_model():
    """3 x 3 tokens, vocabulary 2 (512 sequences): rows that start on an incomplete row above exist."""
    return random_tiny_model(vocab=2, grid=3, seed=1, logit_scale=1.5)


@pytest.mark.parametrize("decoder", [make_decoder("zipar", local_window=1), make_decoder("pjd", window=3, row_start=1)],
                         ids=["zipar-overlapping-rows", "pjd-overlapping-rows"])
def test_goodness_of_fit_rejects_row_parallel_decoders(rows_model, decoder):
    """Rows conditioned on an incomplete row above: far from the target (p ~ 1e-40 or less at 1200
    draws), so 400 draws suffice."""
    torch.set_num_threads(1)
    exact = exact_sequence_distribution(rows_model, LABEL, SAMPLING).numpy()
    p_value = chi_square_p_value(decoder, rows_model, exact, n_samples=400)
    assert p_value < ALPHA, f"the test failed to detect a lossy decoder (p = {p_value:.2e})"
