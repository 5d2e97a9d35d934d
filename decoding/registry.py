"""Decoders by name, and user decoders by import path (`mypackage.module:MyDecoder`)."""
from __future__ import annotations

import dataclasses
import importlib

from decoding.ar import ARDecoder
from decoding.base import Decoder
from decoding.gsd import GSDDecoder
from decoding.jacobi import JacobiDecoder
from decoding.lantern import LanternDecoder
from decoding.sjd import SJDDecoder
from decoding.sjd_coupled import SJDCoupledDecoder

DECODERS: dict[str, type[Decoder]] = {
    cls.name: cls for cls in (ARDecoder, JacobiDecoder, SJDDecoder, LanternDecoder, GSDDecoder, SJDCoupledDecoder)
}


def decoder_class(name: str) -> type[Decoder]:
    """A registered name, or 'module.path:ClassName' for a decoder defined outside SpecLens."""
    if name in DECODERS:
        return DECODERS[name]
    if ":" not in name:
        raise ValueError(f"unknown decoder {name!r}; registered: {sorted(DECODERS)}, "
                         f"or give an import path 'package.module:ClassName'")
    module_name, _, attr = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import decoder {name!r}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Decoder)):
        raise ValueError(f"{name!r} is not a subclass of decoding.base.Decoder")
    return cls


def make_decoder(name: str, **params) -> Decoder:
    """Instantiate a decoder with hyperparameters; unknown parameters are an error."""
    cls = decoder_class(name)
    known = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"decoder {name!r} has no parameter(s) {unknown}; it takes {sorted(known)}")
    return cls(**params)
