"""PJD: Parallel Jacobi Decoding (Liao et al., CVPR 2026, arXiv 2606.05703), lossy.

Notation: p = target distribution (this pass), q = draft distribution (the one a draft was drawn
from: one-hot for a fresh random draft, the p it was sampled from for a Jacobi draft).

SJD windows on several rows at once, verified in one forward under a row-causal mask (`rows.py`:
a row's nodes see their own row's earlier nodes, the anchors of the rows above and the committed
tokens, never another row's drafts). Row r + 1 starts once row r has `row_start` tokens; each
row's window is its anchor (latest token) then drafts, at most `window` nodes, never past the row
end (leading row) nor past the row above's committed count (the others: a draft at column c sees
the row above up to column c + 1). Per row, as `SpeculativeSampler.__call__` in the official code:
- drafts are accepted while u < min(1, p(x) / q(x));
- the leading row (every row above complete) is SJD: at the first rejection a token is drawn from
  the residual norm(max(0, p - q)), or with none a bonus token from p;
- the other rows only commit their accepted drafts: no residual, no bonus, they truncate;
- after the first rejection a draft with min(1, p / q) > 0.5 is kept (token and q) as the next
  pass's draft; elsewhere the next draft is this pass's sample with q = p (the Jacobi update);
  fresh slots get random ids with a one-hot q.
Lossy for three reasons: rows below the leading one are conditioned on an incomplete row above,
the kept drafts are selected by their own ratio (so their q no longer describes them), and, on
LlamaGen, a row's first position is targeted from a stand-in token (`rows.py`).

Taken from the official code (boyaliao/PJD `scheduler/jacobi_iteration_lumina_mgpt.py`, Lumina-mGPT):
`window_size = 8` (nodes per row window, the anchor included), `long_size = 9` (row elements before
the next row starts; Lumina-mGPT rows begin with the line-break token, so 8 image tokens: our
`row_start`); `jacobi_size = 1` is set but never read there.

Known differences:
- The official code is for Lumina-mGPT (text-to-image, line-break token per row, 48 x 48 grid at
  768 px). Its LlamaGen path (`scripts/test_llamagen.sh`: t2i XL stage-2 512 px, CFG 3.5) calls a
  `test_llamagen.py` that is not in the repository. Here: LlamaGen class-conditional with CFG, the
  bundled 14 x 14 grid. With no line-break token, a row's first position is targeted from ZipAR's
  stand-in (the latest token of the row two above, or of row 0 for row 1) at the row above's last
  column, seen by later positions until the real token is fed.
- The residual is not re-truncated with top-k (the official code re-applies its logits processor).
- Random drafts are uniform over the model's own vocabulary (the official code: Chameleon's ids).
- `window` and `row_start` take any value >= 2 / >= 1; the windows never cross a row end and a row
  starts at the latest once the row above is complete, so row_start >= W decodes one row at a time
  (SJD with row-long windows plus the keep rule; greedy it equals greedy AR).
- Greedy (temperature 0) does not equal greedy AR in general (rows see an incomplete row above).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from decoding.base import Clock, Decoder, ModelLike, TraceRecorder, prefill_first_token
from decoding.drafts import one_hot_q
from decoding.params import param
from decoding.rows import RowSchedule, Window, node_batch
from decoding.rules.exact import acceptance_ratio, first_rejection, residual
from decoding.sampling import SamplingSettings, logits_to_probs, sample, top1_and_entropy
from decoding.trace import StepRecord, Trace

KEEP_RATIO = 0.5  # official: after the first rejection, a draft with min(1, p/q) > 0.5 stays the next draft


@dataclass
class RowOutcome:
    """One row window's result: committed tokens (and kinds), verified drafts, the next drafts."""

    committed: torch.Tensor  # [C]
    kinds: list[str]
    accept_prob: torch.Tensor  # [D] min(1, p/q) of every draft
    q_draft: torch.Tensor  # [D] q(draft)
    verified: int  # drafts verified: up to and including the first rejection
    r: int  # accepted drafts
    next_drafts: torch.Tensor  # [M]
    next_q: torch.Tensor  # [M, V]


@dataclass
class PJDDecoder(Decoder):
    """SJD windows on several rows per pass, row-causal mask, truncation below the leading row."""

    name = "pjd"
    lossless = False
    greedy_equals_ar = False
    family = "rows"
    summary = "Parallel Jacobi Decoding: SJD windows on several rows per pass under a row-causal mask"
    paper = "Liao et al., CVPR 2026 (arXiv 2606.05703)"
    paper_url = "https://arxiv.org/abs/2606.05703"
    window: int = param(8, "nodes fed per row and pass, the row's latest token included (official window_size 8)",
                        low=2, high=1024, integer=True)
    row_start: int = param(8, "tokens of the row above committed before a row starts (official long_size 9 counts "
                           "Lumina-mGPT's line-break token; >= grid width: one row at a time)", low=1, high=1024,
                           integer=True)

    def _decode(self, model: ModelLike, label: int, sampling: SamplingSettings, gen: torch.Generator,
                recorder: TraceRecorder, clock: Clock, ctx: Any) -> torch.Tensor:
        height, width = model.info.grid_shape
        vocab = model.info.vocab_size

        # 1. prefill: the target of position 0 and one token from it
        tokens = prefill_first_token(model, label, sampling, gen, recorder, clock)  # [N]

        schedule = RowSchedule(height, width, [min(self.row_start, width)] * height, tokens)
        schedule.begin(1)
        pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # row -> (drafts [M], q [M, V])
        records: list[_PassRecord] = []  # the trace is written after the last pass
        while not schedule.done:
            # 2. every decoding row's window: anchor + pending drafts + fresh random drafts
            windows, qs = self._windows(schedule, pending, vocab, gen)
            batch = node_batch(windows, schedule.cached)
            step = recorder.new_step(int(batch.positions.min()), len(batch.tokens))
            logits = clock.forward(model.forward_nodes, batch.tokens, batch.positions, batch.visible,
                                   batch.context).cpu()  # [K, V]

            # 3. targets at every node and the Jacobi samples, one sampling call for the pass
            p = logits_to_probs(logits, sampling)  # [K, V]; node k targets positions[k] + 1
            y = sample(p, gen)  # [K]
            u = torch.rand(sum(w.length - 1 for w in windows), generator=gen)  # one uniform per draft

            # 4. verify each row (the leading one as SJD, the others truncate), commit, next drafts; the
            # ratios min(1, p/q) of every row's drafts at once
            drafted = _Drafts.of(windows, qs, batch.first, p)
            outcomes = []
            for w, q, first, lo, hi in zip(windows, qs, batch.first, drafted.starts, drafted.starts[1:]):
                if w.final:
                    outcomes.append(None)
                    continue
                nodes = slice(first, first + w.length)
                outcome = self._verify(p[nodes], q, w.drafts, y[nodes], u[lo:hi],
                                       schedule.leading(w.row), gen, drafted.ratio[lo:hi], drafted.q_draft[lo:hi])
                outcomes.append(outcome)
                c = len(outcome.committed)
                tokens[w.anchor + 1:w.anchor + 1 + c] = outcome.committed
                schedule.commit(w.row, c)
                pending[w.row] = (outcome.next_drafts, outcome.next_q)
            records.append(self._record(step, windows, outcomes, batch.first, p, width, drafted))
            recorder.close_step(step, clock)
            schedule.after_pass(windows, [range(w.anchor + 1, w.anchor + 1 + (o.r if o else 0))
                                          for w, o in zip(windows, outcomes)])
        _write_trace(recorder.trace, records)
        return tokens

    def _windows(self, schedule: RowSchedule, pending: dict, vocab: int,
                 gen: torch.Generator) -> tuple[list[Window], list[torch.Tensor | None]]:
        """This pass's windows with their drafts, and the drafts' q [D, V] (None for a final feed)."""
        windows, qs = [], []
        for w in schedule.windows():
            if w.final:
                windows.append(w)
                qs.append(None)
                continue
            length = min(schedule.room(w.row), self.window)
            if length <= 0:  # the row has caught up with the row above: not fed (official verify_num == 0)
                continue
            old, old_q = pending[w.row] if w.row in pending else (None, None)
            n_old = 0 if old is None else min(len(old), length - 1)
            fresh = torch.randint(vocab, (length - 1 - n_old,), generator=gen)  # drawn even if empty: same stream
            if n_old == 0:
                w.drafts, q = fresh, one_hot_q(fresh, vocab)  # [D], [D, V]
            elif len(fresh) == 0:
                w.drafts, q = old[:n_old], old_q[:n_old]
            else:
                w.drafts, q = torch.cat([old[:n_old], fresh]), torch.cat([old_q[:n_old], one_hot_q(fresh, vocab)])
            windows.append(w)
            qs.append(q)
        return windows, qs

    @staticmethod
    def _verify(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, y: torch.Tensor, u: torch.Tensor,
                leading: bool, gen: torch.Generator, ratio: torch.Tensor | None = None,
                q_draft: torch.Tensor | None = None) -> RowOutcome:
        """One row window: p, y over its L nodes ([L, V], [L]); drafts [D = L - 1] with q [D, V].
        ratio, q_draft: min(1, p/q) and q(draft) [D] if already computed (for every row at once)."""
        d = len(drafts)
        if ratio is None or q_draft is None:
            q_draft = q.gather(1, drafts[:, None])[:, 0]  # [D]
            ratio = acceptance_ratio(p[:d].gather(1, drafts[:, None])[:, 0], q_draft)  # [D]
        r = first_rejection(u < ratio)
        if not leading:  # truncate: the accepted drafts only
            committed, kinds = drafts[:r], ["draft"] * r
        elif r < d:  # SJD: the residual replaces the first rejected draft
            committed = torch.cat([drafts[:r], sample(residual(p[r:r + 1], q[r:r + 1]), gen)])
            kinds = ["draft"] * r + ["resampled"]
        else:  # every draft accepted: a bonus token from the last node
            committed, kinds = torch.cat([drafts, y[d:d + 1]]), ["draft"] * d + ["bonus"]
        # next drafts for the positions after the committed ones (c <= r + 1): the Jacobi samples with
        # q = p, except the drafts after the first rejection whose ratio exceeds KEEP_RATIO (kept with their q)
        c = len(committed)
        kept = [i for i, big in enumerate((ratio[r + 1:] > KEEP_RATIO).tolist(), start=r + 1) if big]
        next_tokens, next_q = y[c:], p[c:]  # [L - c], [L - c, V]
        if kept:
            rows = torch.tensor(kept)
            next_tokens, next_q = next_tokens.clone(), next_q.clone()
            next_tokens[rows - c], next_q[rows - c] = drafts[rows], q.index_select(0, rows)
        return RowOutcome(committed, kinds, ratio, q_draft, min(r + 1, d), r, next_tokens, next_q)

    @staticmethod
    def _record(step: StepRecord, windows: list[Window], outcomes: list, first: list[int], p: torch.Tensor,
                width: int, drafted: _Drafts) -> _PassRecord:
        """What the step record needs: verified drafts of every row (with their rows, parents and depths:
        one chain per row, written now), then the committed tokens of every row (`_write_trace`)."""
        pos, verified, acc, parents, depths, commit_pos, commit_rows, kinds, commit_tok = ([] for _ in range(9))
        for w, o, f, lo in zip(windows, outcomes, first, drafted.starts):
            if o is None:
                continue
            k, c, base = o.verified, len(o.committed), len(pos)
            pos += range(w.anchor + 1, w.anchor + 1 + k)
            verified += range(lo, lo + k)  # the row's first k drafts among all rows'
            acc += [i < o.r for i in range(k)]
            parents += [-1] + list(range(base, base + k - 1)) if k else []
            depths += range(1, k + 1)
            commit_pos += range(w.anchor + 1, w.anchor + 1 + c)
            commit_rows += range(f, f + c)
            kinds += o.kinds
            commit_tok.append(o.committed)
        step.parents, step.depths, step.on_path = parents, depths, acc
        step.rows = [x // width for x in pos]
        index = torch.tensor(verified, dtype=torch.long)
        rows = torch.cat([drafted.nodes[index], torch.tensor(commit_rows, dtype=torch.long)])
        committed = torch.cat(commit_tok) if commit_tok else torch.empty(0, dtype=torch.long)
        return _PassRecord(step, p.index_select(0, rows), drafted.tokens[index], drafted.q_draft[index],
                           drafted.ratio[index], committed, pos, acc, commit_pos, kinds)


@dataclass
class _PassRecord:
    """One pass's part of the trace, kept (references) until `_write_trace`."""

    step: StepRecord
    p: torch.Tensor  # [k + c, V] the targets of the verified drafts, then of the committed tokens
    drafts: torch.Tensor  # [k] verified drafts, every row's in window order
    q_draft: torch.Tensor  # [k]
    accept_prob: torch.Tensor  # [k]
    committed: torch.Tensor  # [c]
    positions: list[int]  # [k]
    accepted: list[bool]  # [k]
    commit_positions: list[int]  # [c]
    kinds: list[str]  # [c]


def _write_trace(trace: Trace, records: list[_PassRecord]) -> None:
    """What `TraceRecorder.record_drafts` and `commit` write, for every pass at once: the statistics of
    all the rows with one operation each and one `.tolist()` per quantity (as `window_trace.py` does for
    the Jacobi decoders), instead of a dozen small operations per pass."""
    if not records:
        return
    p_all = torch.cat([r.p for r in records])  # [M, V]
    top1, entropy = top1_and_entropy(p_all)  # [M]
    draft_rows, commit_rows, offset = [], [], 0
    for r in records:
        k, c = len(r.positions), len(r.commit_positions)
        draft_rows += range(offset, offset + k)
        commit_rows += range(offset + k, offset + k + c)
        offset += k + c
    d_rows, c_rows = torch.tensor(draft_rows, dtype=torch.long), torch.tensor(commit_rows, dtype=torch.long)
    drafts, committed = torch.cat([r.drafts for r in records]), torch.cat([r.committed for r in records])
    d_reals = torch.stack([p_all[d_rows, drafts], torch.cat([r.q_draft for r in records]), top1[d_rows],
                           entropy[d_rows], torch.cat([r.accept_prob for r in records])]).tolist()  # [5, K]
    c_reals = torch.stack([p_all[c_rows, committed], top1[c_rows], entropy[c_rows]]).tolist()  # [3, C]
    d_tokens, c_tokens = drafts.tolist(), committed.tolist()
    a = c = 0
    for r in records:
        step, k, n = r.step, len(r.positions), len(r.commit_positions)
        step.p_draft, step.q_draft, step.top1_prob, step.entropy, step.accept_prob = (col[a:a + k] for col in d_reals)
        step.positions, step.draft_tokens, step.accepted = list(r.positions), d_tokens[a:a + k], list(r.accepted)
        step.relaxed, step.group_size = [False] * k, [0] * k
        for pos, tok, kind, p_tok, t1, ent in zip(r.commit_positions, c_tokens[c:c + n], r.kinds,
                                                  *(col[c:c + n] for col in c_reals)):
            trace.tokens[pos], trace.commit_step[pos], trace.commit_kind[pos] = tok, step.index, kind
            trace.commit_p[pos], trace.commit_top1[pos], trace.commit_entropy[pos] = p_tok, t1, ent
            step.committed_positions.append(pos)
            step.committed_tokens.append(tok)
            step.committed_kinds.append(kind)
        a, c = a + k, c + n


@dataclass
class _Drafts:
    """Every row's drafts of one pass, concatenated in window order (final feeds have none)."""

    starts: list[int]  # [len(windows) + 1] window i's drafts are [starts[i], starts[i + 1])
    nodes: torch.Tensor  # [D] the node whose target decides each draft
    tokens: torch.Tensor  # [D]
    q_draft: torch.Tensor  # [D] q(draft)
    ratio: torch.Tensor  # [D] min(1, p(draft) / q(draft))

    @classmethod
    def of(cls, windows: list[Window], qs: list[torch.Tensor | None], first: list[int], p: torch.Tensor) -> _Drafts:
        starts, nodes = [0], []
        for w, f in zip(windows, first):
            d = w.length - 1
            nodes += range(f, f + d)
            starts.append(starts[-1] + d)
        rows = [(w.drafts, q) for w, q in zip(windows, qs) if q is not None]
        if not nodes:
            empty = torch.empty(0)
            return cls(starts, torch.empty(0, dtype=torch.long), empty.long(), empty, empty)
        node_t, tokens = torch.tensor(nodes), torch.cat([d for d, _ in rows])
        q_draft = torch.cat([q for _, q in rows]).gather(1, tokens[:, None])[:, 0]  # [D]
        return cls(starts, node_t, tokens, q_draft, acceptance_ratio(p[node_t, tokens], q_draft))
