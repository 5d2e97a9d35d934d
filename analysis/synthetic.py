"""Hand-built traces, made without a model: Jacobi-style chains, SJD-PAC-style trees and ZipAR/PJD-style
rows, whose acceptance is chosen.

For tests and documentation of the figures only: every number here is drawn from a seeded
generator, nothing is a measurement. `synthetic_trace` verifies a window of `window` drafts per forward
pass, accepts a prefix (each draft with probability `accept`, higher on the image border where
Fashion-MNIST is background), marks a share `relax` of accepted drafts as relaxed, then commits
one resampled token at the first rejection, or a bonus token after a fully accepted window.
"""
from __future__ import annotations

import numpy as np

from decoding.trace import StepRecord, Trace


def _border_boost(pos: int, grid_w: int, grid_h: int) -> float:
    r, c = divmod(pos, grid_w)
    edge = min(r, c, grid_h - 1 - r, grid_w - 1 - c)
    return 0.3 if edge == 0 else 0.0


def _commit(trace: Trace, step: StepRecord, pos: int, token: int, kind: str, rng: np.random.Generator) -> None:
    top1 = float(rng.uniform(0.02, 0.9))
    p = top1 if kind != "resampled" else float(rng.uniform(0.001, top1))
    trace.tokens[pos], trace.commit_step[pos], trace.commit_kind[pos] = token, step.index, kind
    trace.commit_p[pos], trace.commit_top1[pos] = p, top1
    trace.commit_entropy[pos] = float(-np.log(top1) + rng.uniform(0.0, 2.0))
    step.committed_positions.append(pos)
    step.committed_tokens.append(token)
    step.committed_kinds.append(kind)


def _verify(step: StepRecord, drafts: list[tuple[int, int]], accepted: list[bool], relaxed: list[bool],
            rng: np.random.Generator) -> None:
    for (pos, tok), acc, rel in zip(drafts, accepted, relaxed):
        q = float(rng.uniform(0.05, 1.0))
        p = min(1.0, float(rng.uniform(0.0, 1.0)) * q * (1.5 if acc else 0.5))
        step.positions.append(pos)
        step.draft_tokens.append(tok)
        step.p_draft.append(p)
        step.q_draft.append(q)
        step.top1_prob.append(float(rng.uniform(max(p, 0.02), 1.0)))
        step.entropy.append(float(rng.uniform(0.1, 4.0)))
        step.accept_prob.append(min(1.0, p / q) if not rel else float(rng.uniform(0.5, 1.0)))
        step.accepted.append(acc)
        step.relaxed.append(rel)
        step.group_size.append(int(rng.integers(2, 8)) if rel else 0)


def synthetic_trace(grid_shape: tuple[int, int] = (4, 4), vocab_size: int = 64, window: int = 4,
                    accept: float = 0.6, relax: float = 0.2, seed: int = 0, label: int = 0,
                    decoder: str = "synthetic", model: str = "synthetic") -> Trace:
    """A valid speculative-decoding trace (passes `Trace.validate`); window=0 gives plain AR."""
    rng = np.random.default_rng(seed)
    h, w = grid_shape
    n = h * w
    trace = Trace(model=model, decoder=decoder, settings={"window": window, "accept": accept, "relax": relax},
                  seed=seed, label=label, class_name=f"class {label}", grid_shape=(h, w), vocab_size=vocab_size,
                  tokens=[-1] * n, commit_step=[-1] * n, commit_kind=[""] * n, commit_p=[0.0] * n,
                  commit_top1=[0.0] * n, commit_entropy=[0.0] * n)
    pos = 0
    while pos < n:
        step = StepRecord(index=len(trace.steps), window_start=pos - 1, window_length=0 if pos == 0 else 1)
        trace.steps.append(step)
        positions = list(range(pos, min(pos + window, n))) if pos > 0 else []
        drafts = [(p, int(rng.integers(vocab_size))) for p in positions]
        accepted, ok = [], True
        for p, _ in drafts:
            ok = ok and rng.random() < min(1.0, accept + _border_boost(p, w, h))
            accepted.append(ok)
        relaxed = [a and rng.random() < relax for a in accepted]
        step.window_length += len(drafts)
        _verify(step, drafts, accepted, relaxed, rng)
        k = len(drafts)
        _set_nodes(step, list(range(-1, k - 1)), list(range(1, k + 1)), [p // w for p, _ in drafts], list(accepted))
        for (p, tok), acc, rel in zip(drafts, accepted, relaxed):
            if acc:
                _commit(trace, step, p, tok, "relaxed" if rel else "draft", rng)
        pos += sum(accepted)
        if pos < n:
            _commit(trace, step, pos, int(rng.integers(vocab_size)), "resampled" if pos in positions else "bonus",
                    rng)
            pos += 1
        step.forward_s = float(rng.uniform(0.002, 0.004)) * (1 + 0.05 * len(drafts))
        step.overhead_s = float(rng.uniform(0.0005, 0.001)) * (1 + len(drafts))
    trace.forward_s = sum(s.forward_s for s in trace.steps)
    trace.overhead_s = sum(s.overhead_s for s in trace.steps)
    trace.vq_decode_s = 0.01
    trace.validate()
    return trace


def _empty_trace(grid_shape: tuple[int, int], vocab_size: int, seed: int, label: int, decoder: str, model: str,
                 settings: dict) -> Trace:
    n = grid_shape[0] * grid_shape[1]
    return Trace(model=model, decoder=decoder, settings=settings, seed=seed, label=label, class_name=f"class {label}",
                 grid_shape=tuple(grid_shape), vocab_size=vocab_size, tokens=[-1] * n, commit_step=[-1] * n,
                 commit_kind=[""] * n, commit_p=[0.0] * n, commit_top1=[0.0] * n, commit_entropy=[0.0] * n)


def _set_nodes(step: StepRecord, parents: list[int], depths: list[int], rows: list[int], on_path: list[bool]) -> None:
    """The per-node structure fields (set as attributes: traces written before they existed lack them)."""
    step.parents, step.depths, step.rows, step.on_path = parents, depths, rows, on_path
    step.draft_forwards, step.draft_s = 0, 0.0


def _finish(trace: Trace, rng: np.random.Generator) -> Trace:
    for step in trace.steps:
        step.forward_s = float(rng.uniform(0.002, 0.004)) * (1 + 0.05 * len(step.positions))
        step.overhead_s = float(rng.uniform(0.0005, 0.001)) * (1 + len(step.positions))
    trace.forward_s = sum(s.forward_s for s in trace.steps)
    trace.overhead_s = sum(s.overhead_s for s in trace.steps)
    trace.vq_decode_s = 0.01
    trace.validate()
    return trace


def synthetic_tree_trace(grid_shape: tuple[int, int] = (4, 4), vocab_size: int = 64, branches: int = 3,
                         depth: int = 3, accept: float = 0.5, seed: int = 0, label: int = 0, decoder: str = "sjd-pac",
                         model: str = "synthetic") -> Trace:
    """A tree-verification trace in the manner of SJD-PAC: each pass feeds `branches` candidate chains of
    `depth` drafts from the committed prefix (sibling k at depth 1, its continuation below it). Siblings
    are tried in order until one is accepted (probability `accept` each); then its chain is accepted
    while each next draft passes (same probability); one token is resampled at the first rejection, or a
    bonus token follows a fully accepted chain."""
    rng = np.random.default_rng(seed)
    h, w = grid_shape
    n = h * w
    trace = _empty_trace(grid_shape, vocab_size, seed, label, decoder, model,
                         {"branches": branches, "depth": depth, "accept": accept})
    pos = 0
    while pos < n:
        step = StepRecord(index=len(trace.steps), window_start=pos - 1, window_length=1)
        trace.steps.append(step)
        parents, depths, rows, on_path, drafts, accepted = [], [], [], [], [], []
        chosen = next((k for k in range(branches) if rng.random() < accept), None) if pos > 0 else None
        run = 0  # accepted drafts along the chosen chain
        if chosen is not None:
            run = 1
            while run < min(depth, n - pos) and rng.random() < accept:
                run += 1
        for k in range(branches if pos > 0 else 0):
            for d in range(min(depth, n - pos)):
                parents.append(-1 if d == 0 else len(drafts) - 1)
                depths.append(d + 1)
                rows.append((pos + d) // w)
                drafts.append((pos + d, int(rng.integers(vocab_size))))
                accepted.append(k == chosen and d < run)
                on_path.append(accepted[-1])
        step.window_length += len(drafts)
        _verify(step, drafts, accepted, [False] * len(drafts), rng)
        _set_nodes(step, parents, depths, rows, on_path)
        for (p, tok), acc in zip(drafts, accepted):
            if acc:
                _commit(trace, step, p, tok, "draft", rng)
        pos += run
        if pos < n:
            fed = any(p == pos for p, _ in drafts)
            _commit(trace, step, pos, int(rng.integers(vocab_size)), "resampled" if fed else "bonus", rng)
            pos += 1
    return _finish(trace, rng)


def synthetic_rows_trace(grid_shape: tuple[int, int] = (4, 6), vocab_size: int = 64, window: int = 3,
                         lag: int = 2, max_rows: int = 3, accept: float = 0.6, seed: int = 0, label: int = 0,
                         decoder: str = "zipar", model: str = "synthetic") -> Trace:
    """A several-rows-per-pass trace in the manner of ZipAR/PJD: row r joins once row r-1 has `lag` tokens
    (or is complete); each pass verifies a window of up to `window` drafts on each of at most `max_rows`
    active rows, accepts a prefix per row and commits one resampled/bonus token per row."""
    rng = np.random.default_rng(seed)
    h, w = grid_shape
    trace = _empty_trace(grid_shape, vocab_size, seed, label, decoder, model,
                         {"window": window, "lag": lag, "max_rows": max_rows, "accept": accept})
    done = [0] * h  # tokens committed per row (each row left to right)
    while sum(done) < h * w:
        step = StepRecord(index=len(trace.steps), window_start=-1 if not trace.steps else 0, window_length=0)
        trace.steps.append(step)
        if not trace.steps[:-1]:  # the prefill yields position 0 only
            _commit(trace, step, 0, int(rng.integers(vocab_size)), "bonus", rng)
            done[0] = 1
            continue
        active = [r for r in range(h) if done[r] < w and (r == 0 or done[r - 1] >= min(lag, w))][:max_rows]
        parents, depths, rows, on_path, drafts, accepted, plan = [], [], [], [], [], [], []
        for r in active:
            start = r * w + done[r]
            row_drafts = list(range(start, min(start + window, (r + 1) * w)))
            ok, row_acc = True, []
            for d, p in enumerate(row_drafts):
                ok = ok and rng.random() < accept
                row_acc.append(ok)
                parents.append(-1 if d == 0 else len(drafts) - 1)
                depths.append(d + 1)
                rows.append(r)
                drafts.append((p, int(rng.integers(vocab_size))))
                accepted.append(ok)
                on_path.append(ok)
            plan.append((r, row_drafts, sum(row_acc)))
        step.window_length = len(drafts)
        _verify(step, drafts, accepted, [False] * len(drafts), rng)
        _set_nodes(step, parents, depths, rows, on_path)
        for (p, tok), acc in zip(drafts, accepted):
            if acc:
                _commit(trace, step, p, tok, "draft", rng)
        for r, row_drafts, n_acc in plan:
            done[r] += n_acc
            if done[r] < w:
                p = r * w + done[r]
                _commit(trace, step, p, int(rng.integers(vocab_size)), "resampled" if p in row_drafts else "bonus",
                        rng)
                done[r] += 1
    return _finish(trace, rng)
