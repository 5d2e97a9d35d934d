"""The trace of the Jacobi-window decoders, filled once after the last pass.

With a small model on a CPU every tensor operation between two forward passes shows up as decoder
overhead (see `ar.py`), so the loop only keeps each pass's tensors (`PassLog`); the statistics of all
passes (p of the drafts and of the committed tokens, top-1 probability, entropy, relaxed flags,
group sizes) are then computed with one operation per quantity and turned into Python lists with
one `.tolist()` per dtype. The record is the one `TraceRecorder.record_drafts` / `commit` write.

A tree pass (`sjd-pac`) is written by the same code: its `PassLog` carries a `NodeLog` saying which
row of its p each verified node and each committed token reads, and the tree fields of the nodes; a
chain pass without one reads rows 0, 1, ... and gets the chain's tree fields.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import torch

from decoding.rules.exact import acceptance_ratio
from decoding.sampling import top1_and_entropy
from decoding.trace import StepRecord, Trace


@dataclass
class NodeLog:
    """The verified nodes of a tree pass, aligned with `PassLog.drafts` (module `decoding.trace`)."""

    positions: list[int]
    parents: list[int]  # index into the verified nodes, -1: a child of the committed prefix
    depths: list[int]
    on_path: list[bool]
    draft_rows: list[int]  # row of PassLog.p with each node's target (its parent's row)
    commit_rows: list[int]  # row of PassLog.p with each committed token's target


@dataclass
class PassLog:
    """What one pass leaves for the trace (references, no copies)."""

    step: StepRecord
    start: int  # first fed position: row i of p is position start + i + 1
    drafts: torch.Tensor  # [D]
    p: torch.Tensor  # [R, V]
    verdict: Any  # speculative_jacobi.Verdict over the D drafts
    r: int  # accepted drafts (the index of the first rejection)
    committed: torch.Tensor  # [C] the accepted drafts, then the resampled / bonus token if any
    last_kind: str  # "resampled" or "bonus"
    nodes: NodeLog | None = None  # a tree pass; None: a chain from position start + 1

    @property
    def verified(self) -> int:
        """Drafts verified: up to and including the first rejection (a tree: every node in `nodes`)."""
        return len(self.drafts) if self.nodes is not None else min(self.r + 1, len(self.drafts))

    def p_rows(self) -> tuple[torch.Tensor, list[int], list[int]]:
        """(the rows of p the trace reads [m, V], the verified drafts' rows in it, the committed tokens')."""
        k, c = self.verified, len(self.committed)
        if self.nodes is None:
            return self.p[:max(k, c)], list(range(k)), list(range(c))
        rows = self.nodes.draft_rows + self.nodes.commit_rows
        return self.p.index_select(0, torch.tensor(rows, dtype=torch.long)), list(range(k)), list(range(k, k + c))


def record_passes(trace: Trace, passes: list[PassLog]) -> None:
    """Fill every pass's step record and the per-position commit record."""
    if not passes:
        return
    counts = [ps.verified for ps in passes]
    commits = [len(ps.committed) for ps in passes]
    blocks = [ps.p_rows() for ps in passes]
    first_row = list(accumulate((len(b[0]) for b in blocks), initial=0))
    p_all = torch.cat([b[0] for b in blocks])  # [T, V]
    stats = torch.stack(top1_and_entropy(p_all))  # [2, T]
    draft_rows = _rows(first_row, [b[1] for b in blocks])  # [K]
    reals, ints, members = _draft_columns(passes, counts, p_all, draft_rows, stats)
    tokens = torch.cat([ps.committed for ps in passes])  # [C]
    commit_rows = _rows(first_row, [b[2] for b in blocks])  # [C]
    commit_reals = torch.cat([p_all[commit_rows, tokens][None], stats[:, commit_rows]]).tolist()  # [3, C]
    token_list = tokens.tolist()
    a = c = 0
    for ps, k, n_commit in zip(passes, counts, commits):
        _fill_step(ps, [col[a:a + k] for col in reals], [col[a:a + k] for col in ints],
                   members[a:a + k] if members is not None and _width(ps.verdict) else None)
        _commit(trace, ps, token_list[c:c + n_commit], [col[c:c + n_commit] for col in commit_reals])
        _fill_nodes(ps, trace.grid_shape[1])
        a, c = a + k, c + n_commit


def _rows(first_row: list[int], rows: list[list[int]]) -> torch.Tensor:
    """[sum(len(rows[j]))] rows[j] of block j of p_all, as rows of p_all."""
    return torch.tensor([o + i for o, block in zip(first_row, rows) for i in block], dtype=torch.long)


def _width(verdict: Any) -> int:
    return 0 if verdict.group_members is None else verdict.group_members.shape[1]


def _draft_columns(passes: list[PassLog], counts: list[int], p_all: torch.Tensor, draft_rows: torch.Tensor,
                   stats: torch.Tensor) -> tuple[list[list[float]], list[list[int]], list[list[int]] | None]:
    """Per verified draft, all passes at once: reals [5, K] (p, q of the draft, top-1, entropy, acceptance
    probability), ints [3, K] (token, relaxed, group size), group members [K][G] (None: no groups)."""
    verdicts = [ps.verdict for ps in passes]
    drafts = torch.cat([ps.drafts[:k] for ps, k in zip(passes, counts)])  # [K]
    q_draft = torch.cat([v.q_draft[:k] for v, k in zip(verdicts, counts)])  # [K]
    p_draft = p_all[draft_rows, drafts]  # [K]
    reals = torch.cat([torch.stack([p_draft, q_draft]), stats[:, draft_rows],
                       torch.cat([v.accept_prob[:k] for v, k in zip(verdicts, counts)])[None]]).tolist()
    in_prefix = torch.tensor([on for ps, k in zip(passes, counts) for on in _on_path(ps, k)])  # [K] bool
    width = max(_width(v) for v in verdicts)
    members = torch.cat([_padded_members(v, k, width) for v, k in zip(verdicts, counts)])  # [K, G]
    relaxed = in_prefix & _given_or(verdicts, "relaxed", counts,
                                    lambda: _exact_rejects(verdicts, counts, p_draft, q_draft))
    group_size = _given_or(verdicts, "group_size", counts, lambda: (members >= 0).sum(1))
    ints = torch.stack([drafts, relaxed.long(), group_size.long()]).tolist()
    return reals, ints, members.tolist() if width else None


def _padded_members(verdict: Any, k: int, width: int) -> torch.Tensor:
    """[k, width] the verdict's group members, -1 padding (none: all -1)."""
    members = verdict.group_members
    if members is None:
        return torch.full((k, width), -1, dtype=torch.long)
    members = members[:k]
    return members if members.shape[1] == width else torch.nn.functional.pad(members, (0, width - members.shape[1]),
                                                                              value=-1)


def _given_or(verdicts: list[Any], field: str, counts: list[int], derive) -> torch.Tensor:
    """[K] the verdicts' own `field` where set; the derived values (computed once, if needed) elsewhere."""
    given = [getattr(v, field) for v in verdicts]
    if all(g is not None for g in given):
        return torch.cat([g[:k] for g, k in zip(given, counts)])
    derived = derive()  # [K]
    if all(g is None for g in given):
        return derived
    starts = accumulate(counts, initial=0)
    return torch.cat([g[:k] if g is not None else derived[s:s + k] for g, k, s in zip(given, counts, starts)])


def _exact_rejects(verdicts: list[Any], counts: list[int], p_draft: torch.Tensor,
                   q_draft: torch.Tensor) -> torch.Tensor:
    """[K] u >= min(1, p(x) / q(x)): the exact rule would have rejected the draft on the same uniform."""
    if any(v.uniform is None and v.relaxed is None for v in verdicts):
        raise ValueError("a Verdict without relaxed flags must carry the uniforms it was decided with")
    u = torch.cat([v.uniform[:k] if v.uniform is not None else torch.zeros(k) for v, k in zip(verdicts, counts)])
    return u >= acceptance_ratio(p_draft, q_draft)


def _on_path(ps: PassLog, k: int) -> list[bool]:
    """Per verified draft: accepted (on the accepted path; a chain: before the first rejection)."""
    return ps.nodes.on_path if ps.nodes is not None else [i < ps.r for i in range(k)]


def _fill_nodes(ps: PassLog, grid_width: int) -> None:
    """The tree fields of the step: the pass's own, or a chain's."""
    step, nodes = ps.step, ps.nodes
    if nodes is None:
        step.fill_chain_defaults(grid_width)
        return
    step.parents, step.depths, step.on_path = list(nodes.parents), list(nodes.depths), list(nodes.on_path)
    step.rows = [pos // grid_width for pos in step.positions]


def _fill_step(ps: PassLog, reals: list[list[float]], ints: list[list[int]],
               members: list[list[int]] | None) -> None:
    step, k = ps.step, len(ints[0])
    step.positions = list(ps.nodes.positions) if ps.nodes is not None else list(range(ps.start + 1, ps.start + 1 + k))
    step.p_draft, step.q_draft, step.top1_prob, step.entropy, step.accept_prob = reals
    step.draft_tokens, step.group_size = ints[0], ints[2]
    step.accepted = _on_path(ps, k)
    step.relaxed = [x != 0 for x in ints[1]]
    if members is not None:
        step.group_members = [[m for m in row if m >= 0] for row in members]


def _commit(trace: Trace, ps: PassLog, tokens: list[int], reals: list[list[float]]) -> None:
    """What `TraceRecorder.commit` writes, for one pass's committed tokens."""
    step = ps.step
    kinds = ["relaxed" if rel else "draft" for rel, on in zip(step.relaxed, step.accepted) if on][:ps.r]
    kinds += [ps.last_kind] if len(tokens) > ps.r else []
    for i, (tok, kind, p_tok, top1, ent) in enumerate(zip(tokens, kinds, *reals)):
        pos = ps.start + 1 + i
        trace.tokens[pos], trace.commit_step[pos], trace.commit_kind[pos] = tok, step.index, kind
        trace.commit_p[pos], trace.commit_top1[pos], trace.commit_entropy[pos] = p_tok, top1, ent
        step.committed_positions.append(pos)
        step.committed_tokens.append(tok)
        step.committed_kinds.append(kind)
