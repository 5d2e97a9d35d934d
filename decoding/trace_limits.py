"""Loading a trace from untrusted bytes (an upload) with every size bounded before objects are built.

`Trace.from_dict` checks a trace's consistency, but only after building every step: a 600x600 grid
or 150k empty steps cost minutes and gigabytes before it could say no. `load_bounded_trace` checks
the file size, then the raw JSON's structure (grid, number of steps, list lengths, string lengths)
against `TraceLimits`, and only then calls `Trace.from_dict`. Every refusal is a ValueError naming
the field, its size and the limit.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from decoding.trace import Trace

PER_POSITION = ("tokens", "commit_step", "commit_kind", "commit_p", "commit_top1", "commit_entropy")
TEXT_FIELDS = ("model", "decoder", "class_name")


@dataclass(frozen=True)
class TraceLimits:
    """Upper bounds on an uploaded trace (LlamaGen 384px is 24x24 = 576 tokens, vocabulary 16384)."""

    max_bytes: int = 8 * 1024 * 1024
    max_tokens: int = 4096  # grid height x width
    max_vocab: int = 65536
    max_text: int = 200  # characters of model / decoder / class name and of each settings key or value
    max_settings: int = 64  # entries of the settings object
    max_group_entries: int = 1_000_000  # group member ids in the whole trace

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_tokens", "max_vocab", "max_text", "max_settings", "max_group_entries"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"TraceLimits.{name} must be an integer >= 1, got {getattr(self, name)!r}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_header(d: dict, lim: TraceLimits) -> int:
    """Grid, vocabulary, names and settings; returns the number of tokens."""
    grid = d.get("grid_shape")
    _require(isinstance(grid, list) and len(grid) == 2 and all(_is_int(g) and g >= 1 for g in grid),
             f"grid_shape must be two whole numbers >= 1, got {str(grid)[:60]}")
    n = grid[0] * grid[1]
    _require(n <= lim.max_tokens, f"grid_shape {grid[0]}x{grid[1]} = {n} tokens; at most {lim.max_tokens} allowed")
    vocab = d.get("vocab_size")
    _require(_is_int(vocab) and 1 <= vocab <= lim.max_vocab,
             f"vocab_size must be a whole number in [1, {lim.max_vocab}], got {str(vocab)[:40]}")
    for name in TEXT_FIELDS:
        value = d.get(name)
        _require(isinstance(value, str) and len(value) <= lim.max_text,
                 f"{name} must be text of at most {lim.max_text} characters, got {type(value).__name__} "
                 f"of length {len(value) if isinstance(value, str) else '-'}")
    settings = d.get("settings")
    _require(isinstance(settings, dict) and len(settings) <= lim.max_settings,
             f"settings must be an object of at most {lim.max_settings} entries")
    for k, v in settings.items():
        _require(len(k) <= lim.max_text and (v is None or isinstance(v, bool | int | float)
                                             or (isinstance(v, str) and len(v) <= lim.max_text)),
                 f"settings[{k[:40]!r}] must be a number, true/false, null or text of at most {lim.max_text} "
                 "characters")
    return n


def _check_list(where: str, value, n: int, vocab: int, lim: TraceLimits) -> int:
    """A list of at most n scalars or of lists of at most `vocab` scalars; returns the nested entries."""
    _require(len(value) <= n, f"{where} has {len(value)} entries; at most {n} (the tokens) allowed")
    nested = 0
    for j, item in enumerate(value):
        if isinstance(item, list):
            _require(len(item) <= vocab and not any(isinstance(x, list | dict) for x in item),
                     f"{where}[{j}] must be a flat list of at most {vocab} ids (the vocabulary)")
            nested += len(item)
        else:
            _require(not isinstance(item, dict) and not (isinstance(item, str) and len(item) > lim.max_text),
                     f"{where}[{j}] must be a number, true/false or short text")
    return nested


def _check_step(i: int, s, n: int, vocab: int, lim: TraceLimits) -> int:
    _require(isinstance(s, dict) and len(s) <= lim.max_settings, f"steps[{i}] must be an object of at most "
             f"{lim.max_settings} fields")
    nested = 0
    for name, value in s.items():
        if isinstance(value, list):
            nested += _check_list(f"steps[{i}].{name[:40]}", value, n, vocab, lim)
        else:
            _require(not isinstance(value, dict | str) or (isinstance(value, str) and len(value) <= lim.max_text),
                     f"steps[{i}].{name[:40]} must be a number, a list or short text")
    return nested


def _check_lists(d: dict, n: int, vocab: int, lim: TraceLimits) -> None:
    """Every list of the trace and of each step (fields added later included) bounded by the tokens."""
    for name in PER_POSITION:
        _require(isinstance(d.get(name), list), f"{name} must be a list (one entry per token)")
    steps = d.get("steps")
    _require(isinstance(steps, list), f"steps must be a list, got {type(steps).__name__}")
    _require(len(steps) <= n + 1, f"steps has {len(steps)} entries; a trace of {n} tokens has at most {n + 1}")
    nested = 0
    for name, value in d.items():
        if isinstance(value, list) and name not in ("steps", "grid_shape"):
            nested += _check_list(name[:40], value, n, vocab, lim)
    for i, s in enumerate(steps):
        nested += _check_step(i, s, n, vocab, lim)
        _require(nested <= lim.max_group_entries, f"the trace's nested lists (group_members) hold more than "
                 f"{lim.max_group_entries} ids in all")


def check_trace_dict(d, limits: TraceLimits = TraceLimits()) -> None:
    """Structural bounds on a trace's raw JSON object (before any object is built)."""
    _require(isinstance(d, dict), f"a trace is a JSON object, got {type(d).__name__}")
    n = _check_header(d, limits)
    _check_lists(d, n, d["vocab_size"], limits)


def load_bounded_trace(data: bytes, limits: TraceLimits = TraceLimits()) -> Trace:
    """A Trace from untrusted bytes: size, JSON, structural bounds, then `Trace.from_dict`'s checks."""
    _require(len(data) <= limits.max_bytes,
             f"the trace file is {len(data) / 2**20:.1f} MB; at most {limits.max_bytes / 2**20:.0f} MB allowed")
    try:
        d = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"not valid JSON: {e}") from e
    except RecursionError as e:
        raise ValueError("not a trace: JSON nested too deeply") from e
    check_trace_dict(d, limits)
    return Trace.from_dict(d)
