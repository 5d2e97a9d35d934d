"""Decoders by name, and user decoders by import path (`mypackage.module:MyDecoder`).

Everything that lists decoders (the app's widgets and About tab, the README table, the benchmark,
the test lists) derives it from `DECODERS` and the classes' own description (`decoding.params`,
`Decoder`'s class attributes), so a new decoder is one file and one line here.
"""
from __future__ import annotations

import dataclasses
import importlib

from decoding.ar import ARDecoder
from decoding.base import Decoder
from decoding.eagle import EagleDecoder
from decoding.gsd import GSDDecoder
from decoding.jacobi import JacobiDecoder
from decoding.lantern import LanternDecoder
from decoding.lantern_eagle import LanternEagleDecoder
from decoding.medusa import MedusaDecoder
from decoding.params import ParamSpec, describe
from decoding.pjd import PJDDecoder
from decoding.sjd import SJDDecoder
from decoding.sjd_coupled import SJDCoupledDecoder
from decoding.sjd_pac import SJDPACDecoder
from decoding.speclens import SpecLensDecoder
from decoding.speclens_relaxed import SpecLensRelaxedDecoder
from decoding.zipar import ZipARDecoder

DECODERS: dict[str, type[Decoder]] = {
    cls.name: cls for cls in (ARDecoder, JacobiDecoder, SJDDecoder, LanternDecoder, GSDDecoder, SJDCoupledDecoder,
                              SJDPACDecoder, ZipARDecoder, PJDDecoder, SpecLensDecoder, SpecLensRelaxedDecoder,
                              EagleDecoder, LanternEagleDecoder, MedusaDecoder)
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
    """Instantiate a decoder with hyperparameters. An unknown parameter, or a value outside its range,
    is a ValueError naming the decoder, the parameter and what it takes."""
    cls = decoder_class(name)
    known = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"decoder {name!r} has no parameter(s) {unknown}; it takes {sorted(known) or 'none'}")
    try:
        return cls(**params)
    except ValueError as e:
        raise ValueError(f"decoder {name!r}: {e}") from e


def describe_decoder(name: str) -> list[ParamSpec]:
    """The hyperparameters of a decoder (name, default, kind, range, help), in declaration order."""
    return describe(decoder_class(name))


def lossless_decoders() -> list[str]:
    """Registered decoders whose output is distributed exactly as `ar`'s."""
    return [name for name, cls in DECODERS.items() if cls.lossless]


def greedy_family() -> list[str]:
    """Registered decoders whose greedy run (temperature 0, default parameters) must give greedy `ar`'s tokens."""
    return [name for name, cls in DECODERS.items() if cls.greedy_equals_ar]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _parameter_text(spec: ParamSpec) -> str:
    """E.g. "`window` = 16 in [2, num_tokens]", "`init` = random: random / horizontal / vertical"."""
    default = "none" if spec.default is None else str(spec.default).lower() if spec.kind is bool else spec.default
    if spec.meta.choices is not None:
        return f"`{spec.name}` = {default}: {' / '.join(map(str, spec.meta.choices))}"
    if spec.kind is bool:
        return f"`{spec.name}` = {default}: true / false"
    return f"`{spec.name}` = {default} in {spec.range_text}"


def decoder_table_markdown() -> str:
    """The README / About table of the registered decoders: name, summary, lossless, parameters with
    defaults and ranges (model bounds by name: `vocab_size`, `num_tokens`), paper."""
    rows = ["| name | what | lossless | parameters (default, range) | paper |", "|---|---|---|---|---|"]
    for name, cls in DECODERS.items():
        params = "; ".join(_parameter_text(s) for s in describe(cls)) or "none"
        paper = f"[{cls.paper}]({cls.paper_url})" if cls.paper_url else cls.paper
        rows.append(f"| `{name}` | {_cell(cls.summary)} | {'yes' if cls.lossless else 'no'} | {_cell(params)} "
                    f"| {_cell(paper)} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # `python -m decoding.registry`: the table to paste into README.md's Decoders section
    print(decoder_table_markdown(), end="")
