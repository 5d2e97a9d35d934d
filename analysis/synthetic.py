"""Hand-built traces, made without a model: a Jacobi-style speculative run whose acceptance is chosen.

For tests and documentation of the figures only: every number here is drawn from a seeded
generator, nothing is a measurement. The run verifies a window of `window` drafts per forward
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
