"""Speed work must not change what a decoder does: the same seed gives the same tokens and the same trace
as a run recorded before the decoders' per-pass logic was made faster (tests/fixtures/fastpath_traces.json.gz).

The fixture holds, per case (decoder, parameters, sampling, seed), the tokens and the trace without its
timings. Ints, booleans and commit kinds must match exactly; floats to 2e-3 relative: another CPU sums in
another order (a second 2-core EPYC differed from the recording machine by up to 3e-5 in the target's
probabilities, 5e-4 after a dozen passes of a random EAGLE drafter's features). Such a rounding
difference can also move one sampled token or one acceptance across its threshold, after which the two runs
take different paths: a run may therefore diverge at a step where a discrete field (token, acceptance, kind)
differs, provided every earlier step matched, the divergence is not on the first pass, and it happens to at
most one seed of a case. Any other difference fails. Re-record only for an intended change of behaviour:
`.venv/bin/python -m tests.test_fastpath_decoders` (then say why in the commit).
"""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch

from decoding.registry import make_decoder
from decoding.sampling import SamplingSettings
from models.registry import load_model
from tests.decoding_helpers import random_tiny_model

FIXTURE = Path(__file__).parent / "fixtures" / "fastpath_traces.json.gz"
SEEDS = (0, 1, 2)
SAMPLINGS = {"cfg4": SamplingSettings(cfg_scale=4.0), "topk": SamplingSettings(cfg_scale=2.0, temperature=0.9,
                                                                                  top_k=20, top_p=0.95)}
CASES = [  # (decoder, parameters, sampling)
    ("lantern", {"delta": 0.4, "neighbourhood_k": 20}, "cfg4"),
    ("lantern", {"delta": 0.4, "neighbourhood_k": 20, "init": "vertical"}, "cfg4"),
    ("lantern", {"delta": 0.2, "neighbourhood_k": 8, "ratio_bound": 3.0}, "topk"),
    ("pjd", {}, "cfg4"),
    ("pjd", {"window": 5, "row_start": 3}, "topk"),
    ("gsd", {"group_size": 25}, "cfg4"),
    ("gsd", {"group_size": 14, "distance_threshold": None, "distance_quantile": 0.3}, "topk"),
    ("gsd", {"group_size": 6, "distance_threshold": None, "prob_filter": 0.5}, "cfg4"),
    ("speclens-relaxed", {"tree_width": 1, "tree_depth": 1, "window": 16}, "cfg4"),
    ("speclens-relaxed", {}, "topk"),
    ("sjd-coupled", {}, "cfg4"),
    ("sjd", {"init": "horizontal"}, "topk"),
]
# the benchmark's decoders on the bundled model (realistic acceptance: GSD and LANTERN relax), two seeds each
BUNDLED_CASES = [
    ("lantern", {"delta": 0.4, "neighbourhood_k": 20}, "cfg4"),
    ("lantern", {"delta": 0.4, "neighbourhood_k": 20, "init": "vertical"}, "cfg4"),
    ("pjd", {}, "cfg4"),
    ("gsd", {"group_size": 25}, "cfg4"),
    ("speclens-relaxed", {"tree_width": 1, "tree_depth": 1, "window": 16}, "cfg4"),
    ("sjd-coupled", {}, "cfg4"),
    # the drafter decoders with seeded untrained drafters, so that retraining the shipped ones changes nothing here
    ("eagle", {"drafter": "random"}, "cfg4"),
    ("lantern-eagle", {"delta": 0.4, "neighbourhood_k": 20, "drafter": "random"}, "cfg4"),
    ("medusa", {"drafter": "random"}, "cfg4"),
]
BUNDLED_SEEDS = (0, 1)
TIMING_FIELDS = ("forward_s", "overhead_s", "vq_decode_s", "draft_s", "summary")


def case_key(name: str, params: dict, sampling: str, seed: int, model: str = "tiny") -> str:
    return f"{model}|{name}|{json.dumps(params, sort_keys=True)}|{sampling}|{seed}"


def _strip(value):
    """The trace dict without wall times (they differ run to run)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in TIMING_FIELDS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def run_case(model, name: str, params: dict, sampling: str, seed: int) -> dict:
    result = make_decoder(name, **params).generate(model, seed % 2, SAMPLINGS[sampling], seed, decode_image=False)
    return {"tokens": result.tokens.tolist(), "trace": _strip(result.trace.to_dict())}


REL_TOL, ABS_TOL = 2e-3, 1e-6


def assert_same(got, want, where: str = "") -> None:
    """Exact for everything but floats; floats to REL_TOL relative."""
    if isinstance(want, float) or isinstance(got, float):
        assert math.isclose(got, want, rel_tol=REL_TOL, abs_tol=ABS_TOL), f"{where}: {got} != {want}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), f"{where}: keys {set(got) ^ set(want)}"
        for k in want:
            assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    else:
        assert got == want and type(got) is type(want), f"{where}: {got!r} != {want!r}"


def discrete_differs(got, want) -> bool:
    """Whether a non-float leaf (token, position, acceptance, kind, list length) differs."""
    if isinstance(want, float) or isinstance(got, float):
        return False
    if isinstance(want, dict):
        return not isinstance(got, dict) or got.keys() != want.keys() or any(
            discrete_differs(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return not isinstance(got, list) or len(got) != len(want) or any(
            discrete_differs(g, w) for g, w in zip(got, want))
    return got != want or type(got) is not type(want)


def compare_run(got: dict, want: dict, where: str) -> int | None:
    """None when the runs are the same; the index of the step where they took different paths when every
    earlier step matched and that step differs in a discrete field; an AssertionError otherwise."""
    got_steps, want_steps = got["trace"]["steps"], want["trace"]["steps"]
    for i, (g, w) in enumerate(zip(got_steps, want_steps)):
        try:
            assert_same(g, w, f"{where}.trace.steps[{i}]")
        except AssertionError:
            if discrete_differs(g, w):
                return i
            raise
    assert_same(got, want, where)  # same steps: everything else (tokens, summary fields, lengths) must match
    return None


def assert_same_runs(pairs: list[tuple[dict, dict, str]]) -> None:
    """The seeds of one case: each the same run, or at most one diverging after its first pass."""
    diverged = [(where, step) for got, want, where in pairs if (step := compare_run(got, want, where)) is not None]
    assert len(diverged) <= 1, f"runs took other paths: {diverged}"
    assert all(step >= 1 for _, step in diverged), f"a run took another path on its first pass: {diverged}"


def fixture_model():
    torch.set_num_threads(1)
    return random_tiny_model(vocab=64, grid=8, num_classes=2, seed=3, logit_scale=3.0)


@pytest.fixture(scope="module")
def model():
    return fixture_model()


@pytest.fixture(scope="module")
def bundled_model():
    torch.set_num_threads(1)
    return load_model("fashion-mnist")


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(gzip.decompress(FIXTURE.read_bytes()))


@pytest.mark.parametrize("name,params,sampling", CASES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CASES)])
def test_same_tokens_and_trace_as_recorded(model, recorded, name, params, sampling):
    keys = [case_key(name, params, sampling, seed) for seed in SEEDS]
    assert all(k in recorded for k in keys), "no recorded run for this case; re-record the fixture"
    assert_same_runs([(run_case(model, name, params, sampling, seed), recorded[k], k) for seed, k in zip(SEEDS, keys)])


@pytest.mark.parametrize("name,params,sampling", BUNDLED_CASES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BUNDLED_CASES)])
def test_same_tokens_and_trace_as_recorded_bundled_model(bundled_model, recorded, name, params, sampling):
    keys = [case_key(name, params, sampling, seed, "fashion-mnist") for seed in BUNDLED_SEEDS]
    assert all(k in recorded for k in keys), "no recorded run for this case; re-record the fixture"
    assert_same_runs([(run_case(bundled_model, name, params, sampling, seed), recorded[k], k)
                      for seed, k in zip(BUNDLED_SEEDS, keys)])


def test_comparison_can_fail(model, recorded):
    """The comparison notices a changed token, a changed float, a first-pass divergence and two diverged seeds."""
    name, params, sampling = CASES[0]
    want = recorded[case_key(name, params, sampling, 0)]
    got = run_case(model, name, params, sampling, 0)
    got["tokens"][5] = (got["tokens"][5] + 1) % 64  # the trace's steps unchanged: not a divergence
    with pytest.raises(AssertionError):
        compare_run(got, want, "tokens")
    got = run_case(model, name, params, sampling, 0)
    got["trace"]["steps"][1]["p_draft"][0] += 1e-2
    with pytest.raises(AssertionError):
        compare_run(got, want, "float")
    first = run_case(model, name, params, sampling, 0)
    first["trace"]["steps"][0]["accepted"].append(True)
    assert compare_run(first, want, "first") == 0
    with pytest.raises(AssertionError, match="first pass"):
        assert_same_runs([(first, want, "first")])
    later = run_case(model, name, params, sampling, 0)
    later["trace"]["steps"][3]["accepted"][0] = not later["trace"]["steps"][3]["accepted"][0]
    assert_same_runs([(later, want, "one later divergence")])
    with pytest.raises(AssertionError, match="other paths"):
        assert_same_runs([(later, want, "a"), (later, want, "b")])


if __name__ == "__main__":  # record the fixture (with the code whose behaviour is the reference)
    m = fixture_model()
    runs = {case_key(n, kw, s, seed): run_case(m, n, kw, s, seed) for n, kw, s in CASES for seed in SEEDS}
    m = load_model("fashion-mnist")
    runs.update({case_key(n, kw, s, seed, "fashion-mnist"): run_case(m, n, kw, s, seed)
                 for n, kw, s in BUNDLED_CASES for seed in BUNDLED_SEEDS})
    FIXTURE.write_bytes(gzip.compress(json.dumps(runs, separators=(",", ":")).encode(), mtime=0))
    print(f"{len(runs)} runs -> {FIXTURE} ({FIXTURE.stat().st_size // 1024} KiB)")
