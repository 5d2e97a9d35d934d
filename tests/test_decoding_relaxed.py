"""Relaxed decoders (LANTERN, GSD): switched off they are `sjd` exactly for the same seed; switched
on they respect their bounds in the trace and do accept drafts the exact rule rejected."""
from __future__ import annotations

import pytest
import torch

from decoding.registry import make_decoder
from decoding.sampling import SamplingSettings, logits_to_probs
from models.registry import load_model

SETTINGS = [SamplingSettings(cfg_scale=4.0), SamplingSettings(cfg_scale=2.0, temperature=0.8, top_k=20)]
OFF = [
    ("lantern", {"delta": 0.0, "neighbourhood_k": 10}),
    ("lantern", {"delta": 0.5, "neighbourhood_k": 1}),
    ("lantern", {"delta": 1.0, "neighbourhood_k": 10, "ratio_bound": 1.0}),
    ("gsd", {"group_size": 1}),
    ("gsd", {"group_size": 14, "prob_filter": 0.0}),
    ("gsd", {"group_size": 14, "prob_filter": None, "distance_threshold": 0.0}),
]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model("tiny-fixture")


def decisions(trace) -> list:
    return [(s.accepted, s.committed_kinds, s.committed_tokens) for s in trace.steps]


@pytest.mark.parametrize("name,params", OFF, ids=[f"{n}-{p}" for n, p in OFF])
@pytest.mark.parametrize("init", ["random", "vertical"])
def test_relaxation_switched_off_equals_sjd(model, name, params, init):
    sjd = make_decoder("sjd", window=6, init=init)
    relaxed = make_decoder(name, window=6, init=init, **params)
    for sampling in SETTINGS:
        for seed in range(4):
            a = sjd.generate(model, seed % 10, sampling, seed=seed, decode_image=False)
            b = relaxed.generate(model, seed % 10, sampling, seed=seed, decode_image=False)
            assert torch.equal(a.tokens, b.tokens)
            assert decisions(a.trace) == decisions(b.trace)
            assert b.trace.kind_counts()["relaxed"] == 0


@pytest.mark.parametrize("delta,ratio_bound", [(0.3, None), (1.0, 4.0), (0.1, 3.0)])
def test_lantern_trace_respects_its_bounds(model, delta, ratio_bound):
    decoder = make_decoder("lantern", window=8, neighbourhood_k=20, delta=delta, ratio_bound=ratio_bound)
    relaxed = 0
    for seed in range(10):
        trace = decoder.generate(model, seed, SETTINGS[0], seed=seed, decode_image=False).trace
        for s in trace.steps:
            p, q, a = torch.tensor(s.p_draft), torch.tensor(s.q_draft), torch.tensor(s.accept_prob)
            bound = p + delta if ratio_bound is None else torch.minimum(p + delta, ratio_bound * p)
            assert (a <= (bound / q).clamp(max=1) + 1e-6).all()
            assert (a >= (p / q).clamp(max=1) - 1e-6).all()
            assert all(1 <= g <= 20 for g in s.group_size)
        relaxed += trace.kind_counts()["relaxed"]
    assert relaxed > 0, "the relaxation never accepted a draft the exact rule rejected: the test is vacuous"


def test_gsd_trace_groups_and_relaxed_acceptances(model):
    decoder = make_decoder("gsd", window=8, group_size=25, prob_filter=None, distance_threshold=None)
    relaxed = 0
    for seed in range(6):
        trace = decoder.generate(model, seed, SETTINGS[0], seed=seed, decode_image=False).trace
        for s in trace.steps:
            assert all(1 <= g <= 25 for g in s.group_size)
            # no per-draft lower bound: p(G)/q(G) can be below p(x)/q(x); only the mean acceptance
            # 1 - TV grows (GSD Theorem 1)
            assert all(0.0 <= a <= 1.0 for a in s.accept_prob)
        relaxed += trace.kind_counts()["relaxed"]
    assert relaxed > 0


def recomputed_targets(model, trace, step, sampling: SamplingSettings) -> torch.Tensor:
    """p [K, V] at a step's verified positions, from one fresh forward over the committed prefix and the
    verified drafts (causal: row i depends only on the drafts before it), not the decoder's cached windows."""
    start, k = step.window_start, len(step.positions)
    model.prefill(trace.label, sampling.cfg_scale)
    logits = model.forward_window(torch.tensor(trace.tokens[:start + 1] + step.draft_tokens), 0)  # row j: position j+1
    return logits_to_probs(logits[start:start + k], sampling)  # [K, V]


def test_gsd_trace_group_members_are_the_filtered_rank_window(model):
    group_size, prob_filter, quantile, tol = 14, 0.05, 0.3, 1e-4
    decoder = make_decoder("gsd", window=8, group_size=group_size, prob_filter=prob_filter, distance_threshold=None,
                           distance_quantile=quantile)
    emb = model.token_embeddings()  # [V, D], GSD's 'gpt' space
    d2_pairs = torch.pdist(emb).square().sort().values
    threshold = float(d2_pairs[int(quantile * len(d2_pairs))])
    n_above, n_below = group_size - 1 - group_size // 2, group_size // 2
    larger, filtered_out = 0, 0
    for seed in range(3):
        trace = decoder.generate(model, seed, SETTINGS[0], seed=seed, decode_image=False).trace
        for s in trace.steps[1:]:
            p = recomputed_targets(model, trace, s, SETTINGS[0])
            assert len(s.group_members) == len(s.positions)
            for i, (x, members) in enumerate(zip(s.draft_tokens, s.group_members)):
                assert x in members and len(members) == s.group_size[i] == len(set(members))
                assert abs(float(p[i, x]) - s.p_draft[i]) < 1e-5  # the recomputed target is the decoder's
                order = torch.sort(p[i], descending=True, stable=True).indices.tolist()
                r = order.index(x)
                window = order[max(0, r - n_above):r + n_below + 1]
                dp = (p[i] - p[i, x]).abs()  # [V]
                d2 = (emb - emb[x]).square().sum(-1)  # [V]
                for m in members:  # every member is in the rank window and passes both filters
                    assert m in window and dp[m] < prob_filter + tol and d2[m] < threshold + tol
                for m in set(window) - set(members):  # every candidate left out fails a filter
                    assert dp[m] > prob_filter - tol or d2[m] > threshold - tol
                larger += len(members) > 1
                filtered_out += len(window) - len(members)
    assert larger > 0 and filtered_out > 0, "groups never grew or the filters never bit: the test is vacuous"


@pytest.mark.parametrize("space", ["vq", "raw"])
def test_lantern_trace_group_members_are_the_nearest_codes(model, space):
    k, delta, tol = 12, 0.3, 1e-5
    decoder = make_decoder("lantern", window=8, neighbourhood_k=k, delta=delta, codebook_space=space)
    emb = model.codebook_embeddings() if space == "vq" else model.raw_codebook_embeddings()  # [V, D]
    sizes = set()
    for seed in range(3):
        trace = decoder.generate(model, seed, SETTINGS[0], seed=seed, decode_image=False).trace
        for s in trace.steps[1:]:
            p = recomputed_targets(model, trace, s, SETTINGS[0])
            assert len(s.group_members) == len(s.positions)
            for i, (x, size, members) in enumerate(zip(s.draft_tokens, s.group_size, s.group_members)):
                d2 = (emb - emb[x]).square().sum(-1)  # [V]
                d2[x] = float("inf")
                nearest = torch.argsort(d2, stable=True)[:k - 1]  # B_k(x) without x, proximity order
                assert members == [x] + nearest[:size - 1].tolist()  # the draft, then the moved neighbours
                cum, moved = p[i, nearest].cumsum(0), size - 1
                assert moved == 0 or cum[moved - 1] <= delta + tol  # the moved mass is within delta
                assert moved == k - 1 or cum[moved] > delta - tol  # and one more neighbour would exceed it
                sizes.add(size)
    assert len(sizes) > 1, "every neighbourhood had the same size: the test is vacuous"


def test_gsd_quantile_threshold_and_vq_space_run(model):
    for params in ({"distance_threshold": None, "distance_quantile": 0.2, "embedding_space": "vq"},
                   {"distance_threshold": None, "distance_quantile": 0.5, "embedding_space": "gpt"}):
        trace = make_decoder("gsd", window=8, **params).generate(model, 1, SETTINGS[0], seed=0).trace
        trace.validate()


@pytest.mark.parametrize("name,params,message", [
    ("gsd", {"distance_threshold": 0.5, "distance_quantile": 0.1}, "not both"),
    ("gsd", {"group_size": 0}, "group_size"),
    ("gsd", {"embedding_space": "clip"}, "embedding_space"),
    ("lantern", {"delta": 1.5}, "delta"),
    ("lantern", {"ratio_bound": 0.5}, "ratio_bound"),
    ("lantern", {"neighbourhood_k": 0}, "neighbourhood_k"),
    ("sjd", {"window": 1}, "window"),
    ("sjd", {"init": "diagonal"}, "init"),
])
def test_bad_settings_fail_loudly(name, params, message):
    with pytest.raises(ValueError, match=message):
        make_decoder(name, **params)


def test_lantern_neighbourhood_larger_than_vocabulary_fails(model):
    with pytest.raises(ValueError, match=r"neighbourhood_k must be in \[1, vocab_size\] \(here 64\), got 65"):
        make_decoder("lantern", neighbourhood_k=65).generate(model, 0, SETTINGS[0], seed=0)
