"""The 2-D parallel decoders (ZipAR, PJD) and their shared row schedule (`decoding/rows.py`).

- ZipAR feeds, pass for pass, what the official LlamaGen code feeds: `official_zipar_passes` replays
  `decode_n_tokens_zipar` (ThisisBillhe/ZipAR, generate_zipar.py) on symbolic tokens; the paper's
  forward counts (24 x 24: 400 / 312 / 224 for windows 16 / 12 / 8) come out of both.
- Schedules on a recording model whose target is context-free (token = position): which positions
  each pass feeds, every position committed exactly once, bounded passes, several rows per pass.
- On the tiny fixture model: greedy equals `ar` where it must (ZipAR local_window >= W, PJD one row at
  a time) and differs where rows see an incomplete row above; the trace's rows show several rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from decoding import pjd
from decoding.pjd import PJDDecoder
from decoding.registry import make_decoder
from decoding.rows import RowSchedule, Window, node_batch
from decoding.sampling import SamplingSettings
from decoding.trace import Trace
from decoding.zipar import ZipARDecoder
from models.registry import load_model

GREEDY = SamplingSettings(cfg_scale=4.0, temperature=0.0)
SAMPLED = SamplingSettings(cfg_scale=4.0, temperature=1.0, top_k=30)


# -- the official ZipAR loop, on symbolic tokens (r, c) ---------------------------------------------------
def official_zipar_passes(width: int, window: int) -> list[tuple[list, list]]:
    """Per forward pass: (fed [(token, image position)], sampled [(r, c)]), as generate() +
    decode_n_tokens_zipar do it (prefill, row 0 by plain decode_n_tokens, then the ZipAR loop)."""
    count = [0] * width  # model.row_token_num
    passes = [([], [(0, 0)])] + [([((0, c - 1), c - 1)], [(0, c)]) for c in range(1, width)]
    ids = [(0, c) for c in range(width)]  # input_ids, rows contiguous
    count[0], ongoing, last = width, [1], None
    while len(ids) < width * width:
        fed = []
        if last is not None:
            fed.append((ids[last], (ongoing[0] - 1) * width + count[ongoing[0] - 1] - 1))
        for i, row in enumerate(ongoing):
            idx = sum(count[:row + 1]) - 1
            if count[row] == 1 and count[ongoing[i - 1]] == window:
                count[row] = 0
            fed.append((ids[idx], row * width + count[row] - 1))
        skip, last, sampled, finished = int(last is not None), None, [], []
        for i in range(len(fed) - skip):
            row = ongoing[i]
            where = sum(count[:row + 1])
            ids.insert(where, (row, count[row]))
            sampled.append((row, count[row]))
            count[row] += 1
            if row > 1 and count[row] == 1:
                ids = ids[:-1]  # the auxiliary token
            if count[row] == window and row < width - 1 and row + 1 not in ongoing:
                ids.append(ids[sum(count[:row]) - 1])  # auxiliary: the latest token of the row above's row above
                ongoing.append(row + 1)
                count[row + 1] += 1
            if count[row] == width:
                last = where
                finished.append(row)
        for row in finished:
            ongoing.remove(row)
        passes.append((fed, sampled))
    assert ids == [(r, c) for r in range(width) for c in range(width)]
    return passes


# -- a recording model with a context-free target: the token at position p is p ------------------------
@dataclass(frozen=True)
class Info:
    name: str
    grid_shape: tuple[int, int]
    vocab_size: int
    num_classes: int = 1
    class_names: tuple[str, ...] = ("x",)

    @property
    def num_tokens(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]


class PositionModel:
    """Greedy target of position p + 1 is token p + 1 whatever the context; records every forward."""

    def __init__(self, height: int, width: int):
        n = height * width
        self.info = Info(f"positions-{height}x{width}", (height, width), n)
        self.calls: list[dict] = []

    def _logits(self, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(targets % self.info.vocab_size, self.info.vocab_size).float() * 20

    def prefill(self, label, cfg_scale):
        return self._logits(torch.tensor(0))

    def forward_nodes(self, tokens, positions, visible, context, *, slots=None, return_hidden=False):
        self.calls.append({"tokens": tokens.tolist(), "positions": positions.tolist(), "visible": visible,
                           "context": context.clone()})
        return self._logits(positions + 1)


def zipar_passes_on_position_model(width: int, window: int) -> list[tuple[list, list]]:
    model = PositionModel(width, width)
    trace = ZipARDecoder(local_window=window).generate(model, 0, GREEDY, decode_image=False).trace
    fed = [[]] + [list(zip(c["tokens"], c["positions"])) for c in model.calls]
    return [(f, s.committed_positions) for f, s in zip(fed, trace.steps)]


@pytest.mark.parametrize("width", [4, 6, 14])
def test_zipar_feeds_what_the_official_code_feeds(width):
    for window in range(2, width):
        official = official_zipar_passes(width, window)
        ours = zipar_passes_on_position_model(width, window)
        assert len(ours) == len(official) == (width - 2) * window + 2 * width
        for k, ((fed, sampled), (our_fed, our_committed)) in enumerate(zip(official, ours)):
            as_positions = [(r * width + c, pos) for (r, c), pos in fed]  # token (r, c) is token id r W + c
            assert our_fed == as_positions, f"W={width} window={window} pass {k}"
            assert our_committed == [r * width + c for r, c in sampled], f"W={width} window={window} pass {k}"


def test_zipar_forward_counts_of_the_paper():
    """ZipAR Table (LlamaGen-L, 24 x 24 tokens): 400 / 312 / 224 steps for ZipAR-16 / 12 / 8."""
    for window, steps in ((16, 400), (12, 312), (8, 224)):
        assert len(official_zipar_passes(24, window)) == steps
        assert len(zipar_passes_on_position_model(24, window)) == steps


@pytest.mark.parametrize("window", [1, 3, 7, 100])
def test_zipar_schedule_commits_every_position_once_and_runs_rows_together(window):
    h = w = 7
    model = PositionModel(h, w)
    trace = ZipARDecoder(local_window=window).generate(model, 0, GREEDY, decode_image=False).trace
    trace.validate()  # every position exactly once
    assert trace.tokens == list(range(h * w))  # each token sampled at its own position
    rows_per_pass = [len({p // w for p in s.committed_positions}) for s in trace.steps]
    if window >= w:  # plain AR: one token per pass
        assert trace.nfe == h * w and max(rows_per_pass) == 1
    else:
        assert trace.nfe < h * w and max(rows_per_pass) >= 2
    for call in model.calls:  # a node never sees a later position, nor another row's later nodes
        pos = torch.tensor(call["positions"])
        assert not (call["visible"] & (pos[None, :] > pos[:, None])).any()


@pytest.mark.parametrize("window,row_start", [(2, 1), (4, 2), (8, 8), (3, 100)])
def test_pjd_schedule_on_a_context_free_target(window, row_start, monkeypatch):
    h = w = 6
    model = PositionModel(h, w)
    batches = []
    monkeypatch.setattr(pjd, "node_batch", lambda *a: batches.append(node_batch(*a)) or batches[-1])
    trace = PJDDecoder(window=window, row_start=row_start).generate(model, 0, GREEDY, decode_image=False).trace
    trace.validate()
    assert trace.tokens == list(range(h * w))
    assert trace.nfe <= h * w + h  # at most one extra feed per row on top of AR
    assert len(batches) == len(model.calls)
    for call, batch in zip(model.calls, batches):
        pos, visible, rows = torch.tensor(call["positions"]), call["visible"], torch.tensor(batch.rows)
        assert max(torch.bincount(rows).tolist()) <= window  # at most `window` nodes per row
        assert (pos // w == rows).sum() >= len(pos) - 1  # in its row (a stand-in anchor: the row above's end)
        # another row's nodes are seen only at its anchor (a committed token), never its drafts
        other = visible & (rows[:, None] != rows[None, :])
        assert all(j in batch.first for _, j in other.nonzero().tolist())
        assert not (visible & (pos[None, :] > pos[:, None])).any()
    # Jacobi drafts from a context-free target are right the pass after they are sampled
    assert any(s.n_accepted >= 2 for s in trace.steps)
    if row_start < w:
        assert any(len(set(s.rows)) >= 2 for s in trace.steps)  # several rows verified in one pass


def test_node_batch_visibility_and_context():
    """Two rows of a 3 x 4 grid: row 0 anchor at 5 with drafts 6, 7; row 1 anchor at 8 with a draft at 9."""
    cached = torch.zeros(12, dtype=torch.bool)
    cached[:6] = True
    windows = [Window(1, 5, 50, False, False, torch.tensor([60, 70])), Window(2, 8, 80, False, False,
                                                                                 torch.tensor([90]))]
    batch = node_batch(windows, cached)
    assert batch.positions.tolist() == [5, 6, 7, 8, 9] and batch.tokens.tolist() == [50, 60, 70, 80, 90]
    assert batch.first == [0, 3] and batch.rows == [1, 1, 1, 2, 2]
    expected = torch.tensor([[1, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [1, 1, 1, 0, 0],
                             [1, 0, 0, 1, 0],  # row 2 sees row 1's anchor, not its drafts
                             [1, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(batch.visible, expected)
    assert batch.context.tolist() == [True] * 5 + [False] * 7  # slot 5 is rewritten: seen through `visible`


def test_row_schedule_refuses_bad_start_counts():
    with pytest.raises(ValueError, match="start_after"):
        RowSchedule(3, 4, [4, 0, 4], torch.zeros(12, dtype=torch.long))


# -- on a real (tiny) model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model("tiny-fixture")


@pytest.fixture(scope="module")
def greedy_ar(model):
    return {label: make_decoder("ar").generate(model, label, GREEDY, decode_image=False).tokens for label in range(4)}


def test_greedy_equals_ar_when_rows_wait_for_complete_rows(model, greedy_ar):
    width = model.info.grid_shape[1]
    for decoder in (ZipARDecoder(local_window=width), ZipARDecoder(local_window=50), PJDDecoder(row_start=width),
                    PJDDecoder(window=3, row_start=width)):
        for label, ref in greedy_ar.items():
            assert torch.equal(decoder.generate(model, label, GREEDY, seed=1, decode_image=False).tokens, ref)


def test_greedy_differs_from_ar_when_rows_overlap(model, greedy_ar):
    """Rows that start on an incomplete row above see less context: greedy output moves away from AR."""
    for decoder in (ZipARDecoder(local_window=1), PJDDecoder(window=4, row_start=1)):
        outs = [decoder.generate(model, label, GREEDY, decode_image=False).tokens for label in greedy_ar]
        assert any(not torch.equal(out, ref) for out, ref in zip(outs, greedy_ar.values()))


@pytest.mark.parametrize("decoder", [ZipARDecoder(local_window=2), PJDDecoder(window=3, row_start=2)],
                         ids=["zipar", "pjd"])
def test_rows_decode_together_in_the_trace(model, decoder):
    width = model.info.grid_shape[1]
    result = decoder.generate(model, 2, SAMPLED, seed=4, decode_image=False)
    trace = result.trace
    trace.validate()
    assert trace.nfe < model.info.num_tokens
    assert any(len({p // width for p in s.committed_positions}) >= 2 for s in trace.steps)
    if decoder.name == "pjd":
        assert any(len(set(s.rows)) >= 2 for s in trace.steps)
        for s in trace.steps:
            assert s.rows == [p // width for p in s.positions] and len(s.parents) == len(s.positions)
    again = decoder.generate(model, 2, SAMPLED, seed=4, decode_image=False)
    assert torch.equal(again.tokens, result.tokens) and again.trace.commit_step == trace.commit_step


@pytest.mark.parametrize("keep_ratio", [1.0, 0.4])
def test_pjd_row_verification(keep_ratio):
    """Three random drafts (one-hot q): the first accepted, the second rejected, the third kept as the next
    draft iff its ratio exceeds 0.5; the leading row resamples from the residual, another row truncates."""
    drafts = torch.tensor([0, 1, 2])
    q = torch.nn.functional.one_hot(drafts, 3).float()
    p = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.2, 0.6], [1 - keep_ratio, 0.0, keep_ratio], [0.3, 0.3, 0.4]])
    y = torch.tensor([0, 2, 0, 1])  # this pass's samples at the 4 nodes
    u = torch.tensor([0.5, 0.5, 0.5])
    lead = PJDDecoder._verify(p, q, drafts, y, u, True, torch.Generator().manual_seed(0))
    assert lead.r == 1 and lead.verified == 2 and lead.kinds == ["draft", "resampled"]
    assert lead.committed[0] == 0 and lead.committed[1] in (0, 2)  # residual [0.25, 0, 0.75]: never the draft 1
    assert lead.accept_prob.tolist() == pytest.approx([1.0, 0.2, keep_ratio])
    third = 2 if keep_ratio > 0.5 else 0  # kept draft, else this pass's sample y
    assert lead.next_drafts.tolist() == [third, 1]
    assert torch.equal(lead.next_q[0], q[2] if keep_ratio > 0.5 else p[2]) and torch.equal(lead.next_q[1], p[3])
    other = PJDDecoder._verify(p, q, drafts, y, u, False, torch.Generator().manual_seed(0))
    assert other.committed.tolist() == [0] and other.kinds == ["draft"]  # no residual, no bonus
    assert other.next_drafts.tolist() == [2, third, 1]  # y at the rejected position, with q = p
    assert torch.equal(other.next_q[0], p[1])
    every = PJDDecoder._verify(p, q, drafts, y, torch.zeros(3), True, torch.Generator())
    # all accepted (u = 0 < every ratio): a bonus token from the last node, no next drafts
    assert every.committed.tolist() == [0, 1, 2, 1] and every.kinds == ["draft"] * 3 + ["bonus"]
    assert len(every.next_drafts) == 0


def test_zipar_context_is_what_the_official_cache_holds():
    """A node sees, besides this pass's anchors, exactly the slots fed in earlier passes (the official
    KV cache; its not-yet-written slots, zero K/V there, are masked here), stand-ins included."""
    width, window = 7, 3
    model = PositionModel(width, width)
    ZipARDecoder(local_window=window).generate(model, 0, GREEDY, decode_image=False)
    fed_before = torch.zeros(width * width, dtype=torch.bool)
    stand_ins = 0
    for call in model.calls:
        pos = torch.tensor(call["positions"])
        expected = fed_before.clone()
        expected[pos] = False  # rewritten in this pass: seen through `visible`
        assert torch.equal(call["context"], expected)
        stand_ins += sum(t != p for t, p in zip(call["tokens"], call["positions"]))  # token id != its position
        fed_before[pos] = True
    assert stand_ins == width - 2  # rows 2 .. W-1 start on a stand-in


@pytest.mark.parametrize("decoder", [ZipARDecoder(local_window=2), PJDDecoder(window=3, row_start=2),
                                     PJDDecoder(window=2, row_start=1)], ids=["zipar", "pjd", "pjd-short"])
def test_row_traces_keep_the_trace_contract(model, decoder):
    """What the chain contract says, per row: each pass commits, in every row it touches, the positions
    right after that row's previous commits; the accepted drafts of a row are its committed prefix."""
    width, n = model.info.grid_shape[1], model.info.num_tokens
    trace = decoder.generate(model, 5, SAMPLED, seed=2).trace
    trace.validate()
    assert trace.mean_accepted_length == pytest.approx(n / trace.nfe)
    next_in_row = [r * width for r in range(model.info.grid_shape[0])]
    for s in trace.steps:
        assert len(s.committed_positions) >= 1  # every pass commits at least one token
        for pos in s.committed_positions:
            assert pos == next_in_row[pos // width]
            next_in_row[pos // width] += 1
        assert s.n_accepted == sum(k == "draft" for k in s.committed_kinds)
        accepted = [pos for pos, on in zip(s.positions, s.on_path) if on]
        assert accepted == [p for p, k in zip(s.committed_positions, s.committed_kinds) if k == "draft"]
        assert s.on_path == s.accepted and all(0.0 <= a <= 1.0 for a in s.accept_prob)
    assert Trace.from_json(trace.to_json()).to_dict() == trace.to_dict()  # JSON round trip
