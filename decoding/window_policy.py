"""Hardware-aware window length for the Jacobi-window decoders (SpecLens's own; `window_policy`).

A Jacobi pass that feeds L tokens (the last committed one and L - 1 drafts) commits the accepted
drafts plus one token; with a per-draft acceptance rate a (each draft accepted given the one before
was, pooled over depths: a geometric model) it commits in expectation

    E(L) = 1 + a + a^2 + ... + a^(L - 1) = (1 - a^L) / (1 - a)

tokens, and costs c(L), the forward time of L tokens on this machine. `window_policy="hardware"`
picks, before every pass, the L in [2, window] that maximises E(L) / c(L), committed tokens per
second: on a GPU, where c is nearly flat, that is the full window; on a CPU, where c grows with L,
a shorter one unless acceptance is high.

- c(L) is measured once per (model, device, CFG batch, threads, window) at first use, before the
  decode clock starts (`Decoder.generate` -> `cost_curve`), as the median of a few timed forwards
  after a warm-up, made non-decreasing (isotonic fit) and rounded to 1% of c(1) so that the choice does not flicker
  with timing noise; kept per process and, unless SPECLENS_WINDOW_COST_DIR is empty, in a JSON file
  under `$SPECLENS_WINDOW_COST_DIR` (default `$XDG_CACHE_HOME/speclens/window_cost`), written
  atomically, so that later runs on the same machine choose the same windows (same seed, same tokens).
  A curve measured on a loaded machine stays until its file is deleted (then it is measured again).
- a is the running mean over the passes so far: (accepted + 1) / (verified + 2) (Laplace prior 1/2).
- Known simplifications: c(L) is the forward time only (the decoder's own per-pass overhead, 10-20%
  of a pass on CPU, would favour slightly longer windows); acceptance is pooled over depths (a
  geometric model), although in SJD the acceptance of a draft depends on its depth. Measured on the
  bundled model (CPU): drafts carried over from an earlier pass are accepted far more often than
  fresh random ones, and short windows carry fewer of them, so a low running rate keeps windows short
  (step compression 2.18 -> 1.26 at window 16, while wall clock went from 0.93x to 1.08x of `ar`).

Lossless: the length of pass t is a function of the passes before it (their accept/reject counts)
and of the cost curve, never of pass t's own drafts, samples or uniforms. Given the history, pass t
is plain speculative sampling with a fixed window, which commits tokens distributed as the target;
so the chosen lengths change how many tokens a pass commits, not their distribution
(tests/test_decoding_lossless.py checks it with the chi-square test).
"""
from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from decoding.files import atomic_write_text

WINDOW_POLICIES = ("fixed", "hardware")
MIN_WINDOW = 2  # the last committed token and one draft: a pass with no draft would never learn a
ROUNDING = 0.01  # relative cost resolution (of c(1))
_CURVES: dict[tuple, tuple[float, ...]] = {}  # per process


# -- the choice (pure) --------------------------------------------------------------------------------
def expected_tokens(acceptance: float, length: int) -> float:
    """E(L): tokens a pass of `length` fed tokens commits, drafts accepted with rate `acceptance`."""
    if not 0.0 <= acceptance <= 1.0:
        raise ValueError(f"acceptance must be in [0, 1], got {acceptance}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    return float(sum(acceptance ** k for k in range(length)))


def choose_window(cost: Sequence[float], acceptance: float, max_length: int, min_length: int = MIN_WINDOW) -> int:
    """The L in [min_length, max_length] maximising expected_tokens(acceptance, L) / cost[L - 1]
    (cost[i]: forward time of i + 1 tokens); the shortest on ties. max_length < min_length: max_length."""
    if max_length < 1 or max_length > len(cost):
        raise ValueError(f"max_length must be in [1, {len(cost)}] (the cost curve's length), got {max_length}")
    if any(not c > 0 for c in cost):
        raise ValueError(f"cost must be positive seconds, got {list(cost)[:8]}")
    if max_length <= min_length:
        return max_length
    rates = [expected_tokens(acceptance, n) / cost[n - 1] for n in range(min_length, max_length + 1)]
    return min_length + rates.index(max(rates))


@dataclass
class AcceptanceEstimate:
    """Running per-draft acceptance: (accepted + 1) / (verified + 2)."""

    accepted: int = 0
    verified: int = 0

    @property
    def rate(self) -> float:
        return (self.accepted + 1) / (self.verified + 2)

    def update(self, accepted: int, verified: int) -> None:
        """A pass accepted `accepted` drafts and verified `verified` (the accepted ones and the first rejection)."""
        if not 0 <= accepted <= verified:
            raise ValueError(f"need 0 <= accepted <= verified, got {accepted}, {verified}")
        self.accepted += accepted
        self.verified += verified


def smooth(seconds: Sequence[float]) -> tuple[float, ...]:
    """The closest non-decreasing curve (least squares: pool adjacent violators, so one slow outlier
    does not lift every longer window), rounded to ROUNDING of its c(1)."""
    if not seconds or any(not s > 0 for s in seconds):
        raise ValueError(f"a cost curve is positive seconds per window length, got {list(seconds)[:8]}")
    blocks: list[list[float]] = []  # [sum, count] of pooled runs
    for s in seconds:
        blocks.append([s, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    fitted = [total / count for total, count in blocks for _ in range(int(count))]
    unit = fitted[0] * ROUNDING
    return tuple(max(unit, round(c / unit) * unit) for c in fitted)


# -- measuring (once per model and device) -------------------------------------------------------------
def measure_cost_curve(model: Any, max_length: int, cfg_scale: float, repeats: int = 5) -> tuple[float, ...]:
    """Median forward time [s] of windows of 1..max_length tokens, in the middle of the grid, after a
    warm-up; the model is prefilled here (the decode prefills again)."""
    n = model.info.num_tokens
    if not 1 <= max_length <= n:
        raise ValueError(f"max_length must be in [1, {n}] (the model's tokens), got {max_length}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    gen = torch.Generator().manual_seed(0)
    model.prefill(0, cfg_scale)
    times = []
    for length in range(1, max_length + 1):
        tokens = torch.randint(model.info.vocab_size, (length,), generator=gen)
        start = (n - length) // 2
        model.forward_window(tokens, start)  # warm-up (kernel choice, prepacking)
        runs = []
        for _ in range(repeats):
            _sync(model)
            t = time.perf_counter()
            model.forward_window(tokens, start)
            _sync(model)
            runs.append(time.perf_counter() - t)
        times.append(statistics.median(runs))
    return smooth(times)


def _sync(model: Any) -> None:
    device = getattr(model, "device", None)
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def cost_curve(model: Any, max_length: int, cfg_scale: float) -> tuple[float, ...]:
    """The smoothed cost curve for this model, device and CFG batch: from this process, the disk cache,
    or measured now (and stored)."""
    key = _key(model, max_length, cfg_scale)
    if key in _CURVES:
        return _CURVES[key]
    path = _cache_path(key)
    curve = _read(path, max_length) if path is not None else None
    if curve is None:
        curve = measure_cost_curve(model, max_length, cfg_scale)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({"key": list(key), "seconds": list(curve)}))
    _CURVES[key] = curve
    return curve


def _key(model: Any, max_length: int, cfg_scale: float) -> tuple:
    device = str(getattr(model, "device", "cpu"))
    return (model.info.name, device, 2 if cfg_scale > 1.0 else 1, torch.get_num_threads(), int(max_length))


def cache_dir() -> Path | None:
    """Where cost curves are kept on disk; None: memory only (SPECLENS_WINDOW_COST_DIR set empty)."""
    value = os.environ.get("SPECLENS_WINDOW_COST_DIR")
    if value is not None:
        return Path(value).expanduser() if value.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "speclens" / "window_cost"


def _cache_path(key: tuple) -> Path | None:
    folder = cache_dir()
    if folder is None:
        return None
    safe = "-".join(str(k) for k in key).replace("/", "_").replace(":", "_").replace(" ", "_")
    return folder / f"{safe}.json"


def _read(path: Path, max_length: int) -> tuple[float, ...] | None:
    """A stored curve, or None if absent, unreadable or malformed (then it is measured again)."""
    try:
        seconds = json.loads(path.read_text())["seconds"]
        if len(seconds) != max_length or path.stat().st_size > 1 << 16:
            return None
        curve = tuple(float(s) for s in seconds)
        return curve if all(s > 0 for s in curve) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
