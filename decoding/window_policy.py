"""Hardware-aware window length for the Jacobi-window decoders (SpecLens's own; `window_policy`).

A Jacobi pass that feeds L tokens (the last committed one and L - 1 drafts) commits the accepted
drafts plus one token, and costs c(L), the forward time of L tokens on this machine.
`window_policy="hardware"` picks, before every pass, the L in [2, window] that maximises E(L) / c(L),
committed tokens per second, where E(L) is the model's prediction below: on a GPU, where c is nearly
flat, that is the full window; on a CPU, where c grows with L, a shorter one unless long windows
commit enough more.

The acceptance model, per depth and age. In a Jacobi loop (and SJD-PAC's continuation) a draft that
stays pending is redrawn from (or coupled to) a new target every pass its position is fed, so it
converges; a new slot's draft is a random id or a copied neighbour. And acceptance comes in runs: a
draft that is reached (every draft before it accepted) is likely in an easy part of the image, so the
chance to accept it grows with its depth. A one-pass model with one pooled rate (the geometric
E(L) = (1 - a^L) / (1 - a), `expected_tokens`) sees neither: it counts only what a pass commits now,
misses that feeding a far position makes its draft better for the later passes, and prices the deep
drafts of a long window at the rate of the shallow ones; measured, it kept windows short (below). So:
- A draft's age is the number of passes that redrew it (the loops track it per pending draft: 0 for a
  new slot, +1 each pass that gives its position a target; a draft dropped when a window shrinks starts
  again at 0); its depth is its offset j in the window (1 .. L - 1; speclens: its tree or chain level).
  h(j, a), the probability that a draft at depth j of age a is accepted given that the drafts before it
  were (a hazard), is estimated from this image's earlier passes (`AgeAcceptance`, `age_hazards`):
  per depth (ages pooled) (accepted + PRIOR_STRENGTH * PRIOR_HAZARD) / (verified + PRIOR_STRENGTH),
  made non-decreasing in depth; then per (depth, age) cell with CELL_STRENGTH pseudo-drafts at its
  depth's rate, made non-decreasing in age along each depth (weighted isotonic fits: a draft fed more
  often is not worse, and a cell with few data borrows from its neighbours and its depth); read between
  whole ages by linear interpolation (`hazard_at`).
- The steady state of a window of L: if every pass commits E tokens, the window's front advances E
  positions per pass, so the draft at offset j entered the window about (L - j) / E passes ago and has
  that age; hence E(L) solves E = 1 + sum_j prod_{i <= j} h(i, (L - i) / E), a fixed point found on
  [1, L] (`steady_state_tokens`, the reference, by bisection; `steady_state_curve`, every L at once, the
  fast path, tested equal; cached per table, `cached_steady_state`). With one rate for every depth and
  age it is the geometric E(L); with one row, an age-only model.
- The prior, 0.95 per depth with the weight of one draft, stands in before there is data: an optimistic
  start, so an image's first passes are long and deep depths that a short window never reaches still
  look worth trying (choosing every 4 passes, 0.9 gave 2.24 steps on the 4 images below, 0.95 2.60).
  Not literally "the full window until there is data": with 0.95 everywhere E(L) is at most 20, so on a
  CPU curve the first pass is the length that pays for 0.95, and a curve on which longer windows cannot
  pay (the steep one of tests/test_decoding_speclens.py, each node 10x a 1-token forward) gets a short
  one from the start (0.95 is about the most that test allows).
- Tried and measured on 4 images (sjd-coupled, vertical, window 16, step compression; fixed: 2.90; prior
  0.9): one row of ages only 1.78, one column of depths only 2.35, depth and age 2.40 (2.50 at window 24).

- c(L) is measured once per (model, device, CFG batch, threads, window) at first use, before the
  decode clock starts (`Decoder.generate` -> `cost_curve`), from a few timed forwards per length after
  a warm-up, each timed right after a 1-token forward and read as a ratio to it (`measure_cost_curve`),
  fitted with a straight line (`straight_line`), made non-decreasing (isotonic fit) and
  rounded to 1% of c(1) so that the choice does not flicker with timing noise; kept per process and,
  unless SPECLENS_WINDOW_COST_DIR is empty, in a JSON file under `$SPECLENS_WINDOW_COST_DIR` (default
  `$XDG_CACHE_HOME/speclens/window_cost`), written atomically, so that later runs on the same machine
  choose the same windows (same seed, same tokens). A curve measured on a loaded machine stays until
  its file is deleted (then it is measured again).
- Known simplifications: c(L) is the forward time only (the decoder's own per-pass overhead, 10-20%
  of a pass on CPU, would favour longer windows); the age (L - j) / E is the steady state's, not the
  pending drafts' actual ages (a window that just grew has younger far drafts than that); the depth
  effect is read from the windows this image used, so a long window's deep drafts are priced from the
  prior and the few runs that reached them; the Jacobi loop drops the drafts past a window that shrinks
  (SJD's loop: next drafts are the samples of the fed rows) instead of keeping them pending as SJD-PAC's
  continuation does; the model's arithmetic (~1-2 ms on this CPU when its table is not in the cache,
  against 10-25 ms a pass) is redone every RECHOOSE_EVERY passes, the windows between are the last
  choice (cut at the grid's end): measured with a choice every pass, the policy took a third of the
  decoding loop's time.
- Measured (`python -m decoding.benchmark --model fashion-mnist --threads 1 --seeds 1 --classes all
  --warmup 1`, 10 images, a shared loaded 2-core machine, the cost curves of this calibration; step
  compression = tokens / NFE, exact; speedup = wall clock of `ar` / the decoder's, indicative):
  sjd-coupled init=vertical, fixed window 16: 2.99 steps, 1.48x; fixed 12: 2.89, 1.61x;
  hardware (window 16): 2.46, 1.10x; hardware window 24: 2.93, 1.20x. speclens fixed (64): 3.77, 0.78x;
  speclens hardware: 3.50, 0.92x. Before (one pooled rate, forward times length after length; the same
  command then): hardware window 16 1.33 steps, 0.87x. So the hardware window no longer locks onto tiny
  windows (at window 24 it is within 2% of the fixed default's step compression) and beats the fixed
  default where that is too long for the CPU (speclens at 64), but it does not match the best fixed
  window of sjd-coupled in wall clock (1.20x against 1.61x): it still picks windows a little short, and
  the loop's overhead share is 0.19 against 0.12 (more, shorter passes and the model's arithmetic).

Lossless: the length of pass t is a function of the passes before it (their accept/reject counts by
depth and age, and the ages, which only earlier passes set) and of the cost curve, never of pass t's own drafts,
samples or uniforms. Given the history, pass t is plain speculative sampling with a fixed window,
which commits tokens distributed as the target; so the chosen lengths change how many tokens a pass
commits, not their distribution (tests/test_decoding_lossless.py and tests/test_window_policy*.py check
it with the chi-square test, with history-dependent lengths for `sjd` and `speclens`).
"""
from __future__ import annotations

import functools
import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from decoding.files import atomic_write_text

WINDOW_POLICIES = ("fixed", "hardware")
RECHOOSE_EVERY = 4  # passes between two choices (a choice costs ~1-2 ms of CPU, a pass 10-25 ms here)
MIN_WINDOW = 2  # the last committed token and one draft: a pass with no draft would never learn a
ROUNDING = 0.01  # relative cost resolution (of c(1))
AGE_BINS = 16  # ages 0..15, the last one standing for 15 and older
DEPTH_BINS = 32  # depths 1..32 in the window, the last one standing for 32 and deeper
CELL_STRENGTH = 2.0  # pseudo-drafts of a (depth, age) cell at its depth's rate
HAZARD_STEP = 0.02  # resolution of an estimated hazard
PRIOR_HAZARD, PRIOR_STRENGTH = 0.95, 1.0  # one pseudo-draft per depth, accepted with 0.95 (see the docstring)
# E in [1, L] to ~1e-13: the lower end of the bracket is returned, so that a flat model (no draft ever
# accepted: E = 1 for every L) ties exactly and the shortest window wins
BISECTION_STEPS = 48  # the reference
ILLINOIS_STEPS = 40  # the fast path's most steps (it stops when every length has converged)
TOLERANCE = 1e-7  # tokens: the fast path stops when the bracket is this narrow or the excess this small
_CURVES: dict[tuple, tuple[float, ...]] = {}  # per process


# -- the model (pure) ---------------------------------------------------------------------------------
Table = tuple[tuple[float, ...], ...]  # h[depth - 1][age]: the last row for deeper drafts, the last column for older


def hazard_at(row: Sequence[float], age: float) -> float:
    """h(age) of one depth's row, read at a real age: linear between whole ages, the last entry past the
    end (it stands for every older age)."""
    if not row:
        raise ValueError("a hazard row must hold at least one age")
    if age >= len(row) - 1:
        return float(row[-1])
    low = int(math.floor(max(age, 0.0)))
    frac = max(age, 0.0) - low
    return float(row[low] * (1.0 - frac) + row[low + 1] * frac)


def steady_state_tokens(hazards: Sequence | float, length: int) -> float:
    """E(L), the reference: tokens per pass in the steady state of a loop that feeds `length` tokens every
    pass, the solution of E = 1 + sum_j prod_{i <= j} h(i, (L - i) / E) over the drafts j = 1..L-1 (draft
    i at depth i, of age (L - i) / E), by bisection on [1, L] (the right side minus E is >= 0 at 1 and
    <= 0 at L; the bracket's lower end). `hazards`: a table h[depth - 1][age] (`Table`), one row for every
    depth, or a float, one rate for every depth and age: the geometric E(L) = (1 - a^L) / (1 - a)."""
    table = hazard_table(hazards)
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    low, high = 1.0, float(length)
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (low + high)
        survive, total = 1.0, 1.0
        for j in range(1, length):
            survive *= hazard_at(table[min(j, len(table)) - 1], (length - j) / mid)
            total += survive
        low, high = (mid, high) if total >= mid else (low, mid)
    return low


def steady_state_curve(hazards: Sequence | float, max_length: int) -> np.ndarray:
    """[E(1), ..., E(max_length)]: `steady_state_tokens` for every length at once, the fast path the
    policy calls before every pass: the same bracket [1, L], narrowed by the Illinois rule (false position
    that halves a stale end's value) instead of halving it, vectorised over the lengths, until TOLERANCE.
    For hazards non-decreasing in age (what `age_hazards` gives) the root is unique and the two agree (a
    test holds them equal); for others either may find another root."""
    table = np.asarray(hazard_table(hazards), dtype=np.float64)  # [D, A]
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    lengths = np.arange(1, max_length + 1, dtype=np.float64)[:, None]  # [L, 1]
    offsets = np.arange(1, max_length, dtype=np.float64)[None, :]  # [1, L - 1]: draft j, at depth j
    inside = offsets < lengths  # [L, L - 1]: draft j exists in a window of L
    rows = np.minimum(np.arange(max_length - 1), len(table) - 1)[None, :]  # [1, L - 1]
    last_age = table.shape[1] - 1

    def excess(e: np.ndarray) -> np.ndarray:  # [L]: right side of the fixed point minus E
        ages = np.clip((lengths - offsets) / e[:, None], 0.0, last_age)  # [L, L - 1]
        whole = np.floor(ages).astype(np.int64)
        frac = ages - whole
        h = table[rows, whole] * (1.0 - frac) + table[rows, np.minimum(whole + 1, last_age)] * frac
        h = np.where(inside, h, 1.0)
        return 1.0 + (np.cumprod(h, axis=1) * inside).sum(axis=1) - e

    low, high = np.ones(max_length), lengths[:, 0].copy()
    g_low, g_high = excess(low), excess(high)  # >= 0, <= 0
    for _ in range(ILLINOIS_STEPS):
        open_ = (g_low > 0) & (g_high < 0) & (high - low > TOLERANCE) & (np.minimum(g_low, -g_high) > TOLERANCE)
        if not open_.any():
            break
        mid = np.where(open_, (low * g_high - high * g_low) / np.where(open_, g_high - g_low, 1.0), low)
        g_mid = excess(mid)
        up = open_ & (g_mid >= 0)
        down = open_ & ~up
        g_high = np.where(up & (g_mid > 0), g_high * 0.5, g_high)  # Illinois: the end that stays is halved
        g_low = np.where(down, g_low * 0.5, g_low)
        low, g_low = np.where(up, mid, low), np.where(up, g_mid, g_low)
        high, g_high = np.where(down, mid, high), np.where(down, g_mid, g_high)
    return np.where(g_high >= 0, high, np.where(-g_high < g_low, high, low))  # the end nearer the root


def expected_tokens(acceptance: float, length: int) -> float:
    """E(L) of the geometric model: tokens a pass of `length` fed tokens commits, every draft accepted with
    rate `acceptance` given the one before (the table model with one rate for every depth and age)."""
    if not 0.0 <= acceptance <= 1.0:
        raise ValueError(f"acceptance must be in [0, 1], got {acceptance}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    return float(sum(acceptance ** k for k in range(length)))


def choose_window(cost: Sequence[float], hazards: Sequence | float, max_length: int,
                  min_length: int = MIN_WINDOW) -> int:
    """The L in [min_length, max_length] maximising steady_state_tokens(hazards, L) / cost[L - 1]
    (cost[i]: forward time of i + 1 tokens); the shortest on ties. max_length < min_length: max_length."""
    if max_length < 1 or max_length > len(cost):
        raise ValueError(f"max_length must be in [1, {len(cost)}] (the cost curve's length), got {max_length}")
    _check_cost(cost)
    if max_length <= min_length:
        return max_length
    tokens = cached_steady_state(hazards, max_length)
    rates = [tokens[n - 1] / cost[n - 1] for n in range(min_length, max_length + 1)]
    return min_length + rates.index(max(rates))


def cached_steady_state(hazards: Sequence | float, max_length: int) -> tuple[float, ...]:
    """`steady_state_curve`, remembered per (hazards, max_length) in this process (it is pure)."""
    return _cached_curve(hazard_table(hazards), int(max_length))


@functools.lru_cache(maxsize=1024)
def _cached_curve(table: Table, max_length: int) -> tuple[float, ...]:
    return tuple(float(e) for e in steady_state_curve(table, max_length))


def age_hazards(accepted: Sequence[Sequence[int]], tested: Sequence[Sequence[int]]) -> Table:
    """h[depth - 1][age] from counts [D][A] of verified drafts: first per depth (all ages pooled),
    (accepted + PRIOR_STRENGTH * PRIOR_HAZARD) / (tested + PRIOR_STRENGTH), made non-decreasing in depth
    (the drafts that survive to a deeper level are in easier parts of the image); then per cell,
    (accepted + CELL_STRENGTH * its depth's rate) / (tested + CELL_STRENGTH), made non-decreasing in age
    along each depth (a draft fed more often is not accepted less often). Least squares weighted by the
    counts plus the prior's; a cell with few data borrows from its neighbours and its depth. Rounded to
    HAZARD_STEP (far below the estimate's noise), so that consecutive passes often ask for the same table
    and `choose_window` finds its steady state in the cache."""
    if len(accepted) != len(tested) or not tested or any(len(a) != len(t) or not t for a, t in zip(accepted, tested)):
        raise ValueError("need accepted and tested counts of the same shape [depths][ages], both non-empty")
    if any(not 0 <= a <= t for ra, rt in zip(accepted, tested) for a, t in zip(ra, rt)):
        raise ValueError("need 0 <= accepted <= tested in every cell")
    depth_weights = [sum(t) + PRIOR_STRENGTH for t in tested]
    depth_rates = isotonic([(sum(a) + PRIOR_STRENGTH * PRIOR_HAZARD) / w for a, w in zip(accepted, depth_weights)],
                           depth_weights)
    table = []
    for ra, rt, prior in zip(accepted, tested, depth_rates):
        weights = [t + CELL_STRENGTH for t in rt]
        rates = isotonic([(a + CELL_STRENGTH * prior) / w for a, w in zip(ra, weights)], weights)
        table.append(tuple(round(h / HAZARD_STEP) * HAZARD_STEP for h in rates))
    return tuple(table)


@dataclass
class AgeAcceptance:
    """This image's verified drafts so far, counted per depth in the window (1.., DEPTH_BINS for that and
    deeper) and age (passes that redrew the draft; AGE_BINS - 1 for that and older)."""

    accepted: list[list[int]] = field(default_factory=lambda: [[0] * AGE_BINS for _ in range(DEPTH_BINS)])
    tested: list[list[int]] = field(default_factory=lambda: [[0] * AGE_BINS for _ in range(DEPTH_BINS)])

    @property
    def hazards(self) -> Table:
        return age_hazards(self.accepted, self.tested)

    def update(self, ages: Sequence[int], accepted: int) -> None:
        """One pass: `ages` of the verified drafts in depth order (the `accepted` accepted ones, then the
        rejected one if there was one)."""
        if not 0 <= accepted <= len(ages) or len(ages) > accepted + 1:
            raise ValueError(f"need accepted <= len(ages) <= accepted + 1, got {accepted} and {len(ages)} ages")
        if any(age < 0 for age in ages):
            raise ValueError(f"ages must be >= 0, got {list(ages)}")
        for k, age in enumerate(ages):
            d, b = min(k, DEPTH_BINS - 1), min(int(age), AGE_BINS - 1)
            self.tested[d][b] += 1
            self.accepted[d][b] += k < accepted


def isotonic(values: Sequence[float], weights: Sequence[float] | None = None) -> list[float]:
    """The closest non-decreasing sequence in weighted least squares (pool adjacent violators)."""
    weights = [1.0] * len(values) if weights is None else weights
    blocks: list[list[float]] = []  # [weighted sum, weight, count] of pooled runs
    for v, w in zip(values, weights):
        blocks.append([v * w, w, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, weight, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += weight
            blocks[-1][2] += count
    return [total / weight for total, weight, count in blocks for _ in range(int(count))]


def hazard_table(hazards: Sequence | float) -> Table:
    """`hazards` as a Table: a float is one row of one age, a sequence of floats one row of ages (the same
    for every depth); rows must be non-empty rates in [0, 1]."""
    if isinstance(hazards, (int, float)):
        rows: Table = ((float(hazards),),)
    elif len(hazards) and isinstance(hazards[0], (int, float)):
        rows = (tuple(float(h) for h in hazards),)
    else:
        rows = tuple(tuple(float(h) for h in row) for row in hazards)
    if not rows or any(len(row) != len(rows[0]) or not row for row in rows):
        raise ValueError("hazards must be a non-empty table of rows of equal length")
    if any(not 0.0 <= h <= 1.0 for row in rows for h in row):
        raise ValueError(f"hazards must be acceptance rates in [0, 1], got {[list(r)[:4] for r in rows[:2]]}")
    return rows


def _check_cost(cost: Sequence[float]) -> None:
    if any(not c > 0 for c in cost):
        raise ValueError(f"cost must be positive seconds, got {list(cost)[:8]}")


def smooth(seconds: Sequence[float]) -> tuple[float, ...]:
    """The closest non-decreasing curve (least squares: pool adjacent violators, so one slow outlier
    does not lift every longer window), rounded to ROUNDING of its c(1)."""
    if not seconds or any(not s > 0 for s in seconds):
        raise ValueError(f"a cost curve is positive seconds per window length, got {list(seconds)[:8]}")
    fitted = isotonic(seconds)
    unit = fitted[0] * ROUNDING
    return tuple(max(unit, round(c / unit) * unit) for c in fitted)


# -- measuring (once per model and device) -------------------------------------------------------------
def measure_cost_curve(model: Any, max_length: int, cfg_scale: float, repeats: int = 5) -> tuple[float, ...]:
    """Forward time [s] of windows of 1..max_length tokens, in the middle of the grid, after a warm-up:
    c(1) the median of its timed forwards, c(L) = c(1) times the median ratio of a forward of L tokens to
    the 1-token forward timed just before it. The pairs cancel slow changes of the load another process
    puts on a shared machine (timed length after length, such drift made steps of 40-50% in the curve);
    the model is prefilled here (the decode prefills again)."""
    n = model.info.num_tokens
    if not 1 <= max_length <= n:
        raise ValueError(f"max_length must be in [1, {n}] (the model's tokens), got {max_length}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    gen = torch.Generator().manual_seed(0)
    model.prefill(0, cfg_scale)
    windows = [(torch.randint(model.info.vocab_size, (length,), generator=gen), (n - length) // 2)
               for length in range(1, max_length + 1)]
    for tokens, start in windows:
        model.forward_window(tokens, start)  # warm-up (kernel choice, prepacking)
    ones: list[float] = []
    ratios: list[list[float]] = [[] for _ in windows]
    for _ in range(repeats):
        for (tokens, start), pair in zip(windows, ratios):
            one = _timed(model, *windows[0])
            pair.append(_timed(model, tokens, start) / one if len(tokens) > 1 else 1.0)
            ones.append(one)
    base = statistics.median(ones)
    return smooth(straight_line([base * statistics.median(pair) for pair in ratios]))


def straight_line(seconds: Sequence[float]) -> tuple[float, ...]:
    """c(L) = a + b L through the timings (Theil-Sen: b the median of the pairwise slopes, at least 0, a the
    median of c(L) - b L; robust to a few wild points), floored at the fastest timing. On the shared CPU
    the timings of single lengths jumped by 40-90% from one measurement to the next (c(2) = 1.0 and 1.9
    c(1) in two curves of the same model), which the choice followed; a line keeps what is stable, the
    cost per extra token, and drops real kernel steps too (a known simplification)."""
    if not seconds or any(not s > 0 for s in seconds):
        raise ValueError(f"a cost curve is positive seconds per window length, got {list(seconds)[:8]}")
    n = len(seconds)
    slopes = [(seconds[j] - seconds[i]) / (j - i) for i in range(n) for j in range(i + 1, n)]
    slope = max(0.0, statistics.median(slopes)) if slopes else 0.0
    intercept = statistics.median(s - slope * k for k, s in enumerate(seconds, start=1))
    return tuple(max(min(seconds), intercept + slope * k) for k in range(1, n + 1))


def _timed(model: Any, tokens: torch.Tensor, start: int) -> float:
    _sync(model)
    t = time.perf_counter()
    model.forward_window(tokens, start)
    _sync(model)
    return time.perf_counter() - t


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


CURVE_VERSION = "v2"  # the measuring method: curves stored by an older method are measured again


def _key(model: Any, max_length: int, cfg_scale: float) -> tuple:
    device = str(getattr(model, "device", "cpu"))
    return (CURVE_VERSION, model.info.name, device, 2 if cfg_scale > 1.0 else 1, torch.get_num_threads(),
            int(max_length))


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
