"""One contract for every registered decoder (a new decoder is tested with no new test code: the
lists come from the registry, and a decoder registered at test time goes through the same checks),
and the plug-in of a user's decoder by import path."""
from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from decoding.base import FAMILIES, Decoder
from decoding.params import check_value, param
from decoding.registry import (
    DECODERS,
    decoder_class,
    decoder_table_markdown,
    describe_decoder,
    greedy_family,
    lossless_decoders,
    make_decoder,
)
from decoding.sampling import SamplingSettings
from decoding.sjd import SJDDecoder
from decoding.trace import COMMIT_KINDS, Trace
from models.registry import load_model

SAMPLING = SamplingSettings(cfg_scale=4.0, temperature=1.0, top_k=30)
GREEDY = SamplingSettings(cfg_scale=4.0, temperature=0.0)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model("tiny-fixture")


def check_trace(trace: Trace, n: int, decoder: Decoder) -> None:
    trace.validate()  # every position committed exactly once, per-position record consistent
    assert trace.decoder == decoder.name and trace.settings["cfg_scale"] == SAMPLING.cfg_scale
    assert sum(trace.kind_counts().values()) == n and set(trace.commit_kind) <= set(COMMIT_KINDS)
    assert sum(len(s.committed_positions) for s in trace.steps) == n
    assert trace.nfe == len(trace.steps) and trace.steps[0].window_start == -1  # the prefill
    assert trace.step_compression == pytest.approx(n / trace.nfe)
    assert trace.mean_accepted_length == pytest.approx(n / trace.nfe)  # bonus/resampled token counted
    assert trace.mean_accepted_drafts * trace.nfe == pytest.approx(
        trace.kind_counts()["draft"] + trace.kind_counts()["relaxed"])
    expected_next = 0
    for s in trace.steps:
        assert s.committed_positions == list(range(expected_next, expected_next + len(s.committed_positions)))
        assert len(s.committed_positions) >= 1  # every pass commits at least one token
        if s.index > 0:
            assert s.window_start == expected_next - 1  # the window starts at the last committed token
        expected_next += len(s.committed_positions)
        assert s.n_accepted == sum(k in ("draft", "relaxed") for k in s.committed_kinds)
        # the accepted path (a chain's accepted drafts, a tree's followed nodes) is the committed prefix
        path = [pos for pos, on in zip(s.positions, s.on_path) if on] if s.on_path else s.positions[:s.n_accepted]
        assert path == s.committed_positions[:len(path)]
        if not s.parents or s.parents == list(range(-1, len(s.positions) - 1)):  # a chain: no sibling nodes
            assert s.positions == s.committed_positions[:len(s.positions)] or not s.positions
        assert all(0.0 <= a <= 1.0 for a in s.accept_prob)
        assert s.forward_s >= 0 and s.overhead_s >= 0
        # one group per verified draft (validate: the draft inside, group_size codes), or none at all
        assert len(s.group_members) in (0, len(s.positions))
        if decoder.lossless:  # the exact rule has no groups
            assert s.group_members == [] and not any(s.group_size)
    assert trace.forward_s > 0 and trace.overhead_s >= 0 and trace.vq_decode_s > 0


def check_description(name: str) -> None:
    """The class describes itself: metadata filled, every hyperparameter with help and a valid default."""
    cls = decoder_class(name)
    assert cls.name == name and cls.summary and "\n" not in cls.summary and cls.paper
    assert cls.family in FAMILIES and isinstance(cls.lossless, bool) and isinstance(cls.greedy_equals_ar, bool)
    assert cls.paper_url == "" or cls.paper_url.startswith("https://")
    specs = describe_decoder(name)
    assert [s.name for s in specs] == cls.parameter_names()
    for spec in specs:
        assert spec.meta.help, f"{name}.{spec.name} has no help text"
        check_value(spec.name, spec.default, spec)  # the default is in range


def untimed(trace: Trace) -> list[dict]:
    """The steps of a trace without their wall times (every field named *_s)."""
    return [{k: v for k, v in step.items() if not k.endswith("_s")} for step in trace.to_dict()["steps"]]


def check_contract(model, name: str) -> None:
    check_description(name)
    decoder = make_decoder(name)
    assert decoder.name == name and set(decoder.settings()) == set(type(decoder).parameter_names())
    n = model.info.num_tokens
    for seed, label in ((0, 1), (5, 8)):
        result = decoder.generate(model, label, SAMPLING, seed=seed)
        assert result.tokens.shape == (n,) and result.tokens.dtype == torch.long
        assert result.image.dtype == np.uint8 and result.image.shape[2] == 3
        assert result.trace.tokens == result.tokens.tolist() and result.trace.seed == seed
        check_trace(result.trace, n, decoder)
        again = Trace.from_json(result.trace.to_json())  # JSON round trip
        assert again.to_dict() == result.trace.to_dict()
        same = decoder.generate(model, label, SAMPLING, seed=seed, decode_image=False)
        assert torch.equal(same.tokens, result.tokens)  # a seed fixes the output
        assert untimed(same.trace) == untimed(result.trace)  # and the whole trace but its timings


def check_greedy_equals_ar(model, name: str) -> None:
    ar = make_decoder("ar")
    for label in (2, 6):
        ref = ar.generate(model, label, GREEDY, seed=0, decode_image=False).tokens
        assert torch.equal(make_decoder(name).generate(model, label, GREEDY, seed=3, decode_image=False).tokens, ref)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_contract(model, name):
    check_contract(model, name)


@pytest.mark.parametrize("name", greedy_family())
def test_greedy_family_is_greedy_ar(model, name):
    check_greedy_equals_ar(model, name)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_nan_logits_are_refused_not_sampled(model, name):
    with pytest.raises(ValueError, match="NaN"):
        make_decoder(name).generate(NaNAfterPrefill(model), 0, SAMPLING, seed=0, decode_image=False)
    with pytest.raises(ValueError, match="NaN"):
        make_decoder(name).generate(NaNAfterPrefill(model), 0, GREEDY, seed=0, decode_image=False)


class NaNAfterPrefill:
    """The model, but every forward after the prefill returns NaN logits (a broken checkpoint)."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, attr):
        return getattr(self._model, attr)

    def forward_window(self, tokens, start):
        return torch.full_like(self._model.forward_window(tokens, start), float("nan"))

    def forward_nodes(self, *args, **kwargs):
        out = self._model.forward_nodes(*args, **kwargs)
        if isinstance(out, tuple):  # (logits, hidden states)
            return torch.full_like(out[0], float("nan")), *out[1:]
        return torch.full_like(out, float("nan"))


@dataclass
class EchoSJD(SJDDecoder):
    """A decoder defined at test time: SJD with one extra (ignored) hyperparameter."""

    name = "test-echo-sjd"
    summary = "SJD registered by a test"
    paper = "none (a test)"
    paper_url = ""
    echo: int = param(3, "an ignored test parameter", low=1, high=9, integer=True)


def test_a_new_decoder_is_one_registry_line(model, monkeypatch):
    assert EchoSJD.name not in lossless_decoders() and EchoSJD.name not in decoder_table_markdown()
    monkeypatch.setitem(DECODERS, EchoSJD.name, EchoSJD)
    assert EchoSJD.name in lossless_decoders() and EchoSJD.name in greedy_family()
    assert "| `test-echo-sjd` | SJD registered by a test | yes |" in decoder_table_markdown()
    assert "`echo` = 3 in [1, 9]" in decoder_table_markdown()
    assert [s.name for s in describe_decoder(EchoSJD.name)][-1] == "echo"
    check_contract(model, EchoSJD.name)
    check_greedy_equals_ar(model, EchoSJD.name)
    with pytest.raises(ValueError, match=r"decoder 'test-echo-sjd': echo must be in \[1, 9\], got 10"):
        make_decoder(EchoSJD.name, echo=10)


def test_trace_from_json_rejects_a_broken_trace(model):
    d = make_decoder("sjd").generate(model, 0, SAMPLING, seed=0, decode_image=False).trace.to_dict()
    d["steps"][1]["committed_positions"] = d["steps"][1]["committed_positions"][:-1]
    d["steps"][1]["committed_tokens"] = d["steps"][1]["committed_tokens"][:-1]
    d["steps"][1]["committed_kinds"] = d["steps"][1]["committed_kinds"][:-1]
    with pytest.raises(ValueError, match="exactly once"):
        Trace.from_dict(d)


def test_traces_without_group_members_still_load_and_a_wrong_group_is_refused(model):
    d = make_decoder("gsd", window=6).generate(model, 2, SAMPLING, seed=1, decode_image=False).trace.to_dict()
    step = next(s for s in d["steps"] if s["positions"])
    draft, members = step["draft_tokens"][0], step["group_members"][0]
    old = {**d, "steps": [{k: v for k, v in s.items() if k != "group_members"} for s in d["steps"]]}
    assert all(s.group_members == [] for s in Trace.from_dict(old).steps)  # written before the field existed
    step["group_members"][0] = [m for m in members if m != draft] + [(draft + 1) % 64]
    with pytest.raises(ValueError, match=f"should hold the draft {draft}"):
        Trace.from_dict(d)
    step["group_members"] = [members, *step["group_members"]]  # one group too many
    with pytest.raises(ValueError, match="different lengths"):
        Trace.from_dict(d)


PLUGIN = '''
"""A user's decoder: SJD that also accepts any draft that is the target's top-1 token."""
from dataclasses import dataclass

import torch

from decoding.speculative_jacobi import SpeculativeJacobi


@dataclass
class TopOneSJD(SpeculativeJacobi):
    name = "top1-sjd"
    lossless = False

    def acceptance(self, p, q, drafts, ctx):
        exact, group = super().acceptance(p, q, drafts, ctx)
        return torch.where(p.argmax(-1) == drafts, torch.ones_like(exact), exact), group
'''


def test_user_decoder_by_import_path(model, tmp_path, monkeypatch):
    (tmp_path / "my_decoders.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    decoder = make_decoder("my_decoders:TopOneSJD", window=8)
    result = decoder.generate(model, 3, SAMPLING, seed=0)
    check_trace(result.trace, model.info.num_tokens, decoder)
    assert result.trace.decoder == "top1-sjd"
    with pytest.raises(ValueError, match="cannot import"):
        decoder_class("my_decoders:Nope")
    with pytest.raises(ValueError, match="not a subclass"):
        decoder_class("textwrap:dedent")
    with pytest.raises(ValueError, match="unknown decoder"):
        decoder_class("nope")
    with pytest.raises(ValueError, match="no parameter"):
        make_decoder("sjd", group_size=3)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_bad_label_and_model_bound_are_refused_before_anything_runs(model, name):
    class Untouchable:
        """Only `info`: a decoder that validates first never calls the model."""
        info = model.info

    for label in (-1, model.info.num_classes):
        with pytest.raises(ValueError, match=rf"label must be a class id in \[0, {model.info.num_classes - 1}\]"):
            make_decoder(name).generate(Untouchable(), label, SAMPLING, seed=0)
    with pytest.raises(ValueError, match=r"top_k must be in \[0, vocab_size\] \(here 64\), got 65"):
        make_decoder(name).generate(Untouchable(), 0, SamplingSettings(top_k=65), seed=0)


def test_prepare_runs_once_before_the_clock_starts(model):
    """Per-model tables (GSD's distance table, LANTERN's neighbour lists) are not decoder overhead:
    `prepare` runs once per call, before the clock of the trace's timings starts, and its result is the ctx."""
    events = []

    @dataclass
    class Spy(DECODERS["gsd"]):
        def prepare(self, m):
            ctx = super().prepare(m)
            events.append(("prepared", time.perf_counter(), ctx))
            return ctx

        def _decode(self, m, label, sampling, gen, recorder, clock, ctx):
            events.append(("clock", clock._t0, ctx))
            return super()._decode(m, label, sampling, gen, recorder, clock, ctx)

    Spy(window=6).generate(model, 1, SAMPLING, seed=0, decode_image=False)
    (first, t_prepared, ctx), (second, t_clock, ctx_seen) = events
    assert (first, second) == ("prepared", "clock") and t_prepared <= t_clock and ctx_seen is ctx
