"""What the widgets and API callers send, checked and turned into library objects (ValueError with
a message naming the input and its allowed range otherwise)."""
from __future__ import annotations

import json
import math

from decoding.params import ParamSpec, describe, validate_for_model
from decoding.registry import DECODERS, make_decoder
from decoding.sampling import SamplingSettings
from ui.limits import MAX_SWEEP_VALUES


def as_int(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if value is None or isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or int(value) != value:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    v = int(value)
    if v < low or (high is not None and v > high):
        raise ValueError(f"{name} must be in [{low}, {high if high is not None else '∞'}], got {v}")
    return v


def blank_or_int(value, name: str, low: int, high: int) -> int | None:
    """A text box for an optional whole number: blank -> None."""
    if value is None or not str(value).strip():
        return None
    return as_int(str(value), name, low, high)


def parse_sampling(cfg, temperature, top_k, top_p) -> SamplingSettings:
    try:
        return SamplingSettings(float(cfg), float(temperature), as_int(top_k or 0, "top_k", 0), float(top_p))
    except (TypeError, ValueError) as e:
        raise ValueError(f"Sampling settings: {e}") from e


def parse_class(info, label) -> int:
    """A class as the dropdown sends it ('3: name'), its name, or its index."""
    names = list(info.class_names)
    if isinstance(label, str) and label in names:
        return names.index(label)
    if isinstance(label, str) and label.split(":")[0].strip().isdigit():
        label = int(label.split(":")[0])
    return as_int(label, "class", 0, len(names) - 1)


def settings_object(settings, what: str = "Decoder settings") -> dict:
    """A JSON text or dict of settings -> dict."""
    if isinstance(settings, str):
        try:
            settings = json.loads(settings or "{}")
        except json.JSONDecodeError as e:
            raise ValueError(f"{what} are not valid JSON: {e}") from e
    if not isinstance(settings, dict):
        raise ValueError(f"{what} must be a JSON object, e.g. {{\"window\": 16}}, got {type(settings).__name__}")
    return settings


def build_decoder(name: str, settings, info=None):
    """A registered decoder with these settings, its ranges checked (the model's too when `info` is given)."""
    if name not in DECODERS:
        raise ValueError(f"Unknown decoder {name!r}. Choose one of: {', '.join(DECODERS)}.")
    try:
        decoder = make_decoder(name, **settings_object(settings))
        if info is not None:
            validate_for_model(decoder, info)
    except (TypeError, ValueError) as e:
        raise ValueError(f"Decoder {name!r}: {e}") from e
    return decoder


def coerce(spec: ParamSpec, value):
    """A widget's value -> the parameter's type (sliders give floats; blank optional numbers give None)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "off")):
        return None
    if spec.kind is int:
        number = float(value)
        if number != int(number):
            raise ValueError(f"{spec.name} must be a whole number, got {value!r}")
        return int(number)
    if spec.kind is float:
        return float(value)
    if spec.kind is bool and isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return value


def parse_values(decoder_name: str, parameter: str, values: str) -> list:
    """A comma-separated list of values of one hyperparameter, duplicates merged, first-seen order."""
    if decoder_name not in DECODERS:
        raise ValueError(f"Unknown decoder {decoder_name!r}. Choose one of: {', '.join(DECODERS)}.")
    specs = {s.name: s for s in describe(DECODERS[decoder_name])}
    if parameter not in specs:
        raise ValueError(f"Decoder {decoder_name!r} has no parameter {parameter!r}; it has {', '.join(specs)}.")
    out = []
    for v in [v.strip() for v in str(values).split(",") if v.strip()]:
        try:
            value = coerce(specs[parameter], v)
        except ValueError as e:
            raise ValueError(f"{parameter} value {v!r} is not a number.") from e
        if value not in out:
            out.append(value)
    if not out:
        raise ValueError("Give at least one value, comma-separated, e.g. 0, 0.05, 0.1.")
    if len(out) > MAX_SWEEP_VALUES:
        raise ValueError(f"{len(out)} values; a sweep here takes at most {MAX_SWEEP_VALUES}.")
    return out


def sweepable(decoder: str) -> list[str]:
    """Numeric hyperparameters of a decoder offered as a sweep axis, the relaxation's first."""
    if decoder not in DECODERS:
        return []
    names = [s.name for s in describe(DECODERS[decoder])
             if s.kind in (int, float) and s.meta.sweepable and s.meta.choices is None]
    preferred = ("delta", "group_size", "neighbourhood_k", "prob_filter")
    return sorted(names, key=lambda n: preferred.index(n) if n in preferred else len(preferred))


def per_decoder_settings(names: list[str], settings) -> dict[str, dict]:
    """Settings for each decoder from {decoder: settings} (each its own), or one flat object whose keys
    each decoder takes where it has them (a key no listed decoder has is an error)."""
    obj = settings_object(settings, "Compare settings")
    if obj and all(k in DECODERS for k in obj):
        for name, own in obj.items():
            settings_object(own, f"Settings of {name!r}")
        return {n: dict(obj.get(n, {})) for n in names}
    known = {n: {s.name for s in describe(DECODERS[n])} for n in names}
    stray = sorted(set(obj) - set().union(*known.values()))
    if stray:
        raise ValueError(f"no decoder among {names} has the parameter(s) {stray}")
    return {n: {k: v for k, v in obj.items() if k in known[n]} for n in names}
