"""Decoder hyperparameters that describe themselves: range, help, choices, where they show.

A decoder declares each hyperparameter with `param(...)` (a dataclass field whose metadata is a
`Param`), so its range is enforced in one place (`validate`, called from `Decoder.__post_init__`),
bounds that depend on the model (`neighbourhood_k <= vocabulary`, `window <= tokens`) are enforced
by `validate_for_model` when the decoder meets a model, and the app's widgets, the About tab, the
README table and the test lists read `describe(cls)` instead of repeating any of it.

    @dataclass
    class MyDecoder(SpeculativeJacobi):
        name = "mine"
        group_size: int = param(14, "tokens pooled per draft", low=1, model_bound="vocab_size")
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

MODEL_BOUNDS = ("vocab_size", "num_tokens", "grid_width", "grid_height")


@dataclass(frozen=True)
class Param:
    """What a hyperparameter is allowed to be, and how to present it."""

    help: str
    low: float | None = None  # inclusive bounds; None: unbounded on that side
    high: float | None = None
    low_open: bool = False  # True: the bound itself is excluded (e.g. delta in (0, 1])
    high_open: bool = False
    choices: tuple | None = None  # the only values allowed (strings or numbers)
    optional: bool = False  # None allowed (means "off"; say what it means in `help`)
    integer: bool = False
    model_bound: str | None = None  # upper bound taken from model.info (one of MODEL_BOUNDS)
    advanced: bool = False  # folded away in the app
    sweepable: bool = True  # offered as a Sweep axis


@dataclass(frozen=True)
class ParamSpec:
    """One hyperparameter of a decoder class, as `describe` returns it."""

    name: str
    default: Any
    kind: type  # int, float, bool or str
    meta: Param

    @property
    def range_text(self) -> str:
        m = self.meta
        if m.choices is not None:
            return " | ".join(map(str, m.choices))
        if self.kind is bool:
            return "true | false"
        lo = "-inf" if m.low is None else f"{m.low:g}"
        hi = m.model_bound if m.model_bound else ("inf" if m.high is None else f"{m.high:g}")
        text = f"{'(' if m.low_open else '['}{lo}, {hi}{')' if m.high_open or hi == 'inf' else ']'}"
        return text + (" or none" if m.optional else "")


def param(default: Any, help: str, **meta) -> Any:
    """A dataclass field carrying its `Param` (see `Param` for the keywords)."""
    return dataclasses.field(default=default, metadata={"param": Param(help=help, **meta)})


def _kind(field: dataclasses.Field) -> type:
    text = str(field.type)
    for kind in (bool, int, float, str):
        if kind.__name__ in text:
            return kind
    return type(field.default)


def describe(cls: type) -> list[ParamSpec]:
    """The hyperparameters of a decoder class, in declaration order (undecorated fields get an
    empty Param: nothing is enforced for them beyond what the decoder checks itself)."""
    if not dataclasses.is_dataclass(cls):
        return []
    return [ParamSpec(f.name, f.default, _kind(f), f.metadata.get("param", Param(help="")))
            for f in dataclasses.fields(cls)]


def check_value(name: str, value: Any, spec: ParamSpec, high: float | None = None) -> None:
    """Raise ValueError naming the parameter and its range if `value` is not allowed."""
    m = spec.meta
    if value is None:
        if m.optional:
            return
        raise ValueError(f"{name} must be set (range {spec.range_text}), got None")
    if m.choices is not None:
        if value not in m.choices:
            raise ValueError(f"{name} must be one of {list(m.choices)}, got {value!r}")
        return
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return
    if spec.kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number in {spec.range_text}, got {value!r}")
        if (m.integer or spec.kind is int) and int(value) != value:
            raise ValueError(f"{name} must be an integer in {spec.range_text}, got {value!r}")
        high = m.high if high is None else (high if m.high is None else min(high, m.high))
        too_low = m.low is not None and (value <= m.low if m.low_open else value < m.low)
        too_high = high is not None and (value >= high if m.high_open else value > high)
        if too_low or too_high:
            bound = f" (here {high:g})" if m.model_bound and high is not None else ""
            raise ValueError(f"{name} must be in {spec.range_text}{bound}, got {value!r}")


def validate(decoder: Any) -> None:
    """Enforce every declared range of a decoder instance (model-free bounds). An integer parameter
    given as a whole float (7.0, as a UI widget sends it) is stored as the int 7, so that the decoder
    can index and slice with it."""
    for spec in describe(type(decoder)):
        value = getattr(decoder, spec.name)
        check_value(spec.name, value, spec)
        if value is not None and (spec.meta.integer or spec.kind is int) and not isinstance(value, int):
            object.__setattr__(decoder, spec.name, int(value))  # also on frozen dataclasses


def validate_for_model(decoder: Any, info: Any) -> None:
    """Enforce the bounds that depend on the model (`model_bound`), e.g. group_size <= vocabulary."""
    bounds = {"vocab_size": info.vocab_size, "num_tokens": info.num_tokens,
              "grid_height": info.grid_shape[0], "grid_width": info.grid_shape[1]}
    for spec in describe(type(decoder)):
        if spec.meta.model_bound:
            check_value(spec.name, getattr(decoder, spec.name), spec, high=bounds[spec.meta.model_bound])
