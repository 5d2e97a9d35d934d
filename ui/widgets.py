"""Decoder widgets generated from the decoders' parameter metadata (`decoding.params.describe`):
ranges on sliders and numbers, choices as dropdowns, help as info text, `advanced` ones folded away.
One panel per decoder, so each decoder keeps its own settings (Compare runs each with its own)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import gradio as gr

from decoding.params import ParamSpec, describe
from decoding.registry import DECODERS
from ui.parse import coerce


@dataclass
class DecoderPanel:
    decoder: str
    specs: list[ParamSpec]
    widgets: list  # one per spec, same order
    column: gr.Column


def _label(spec: ParamSpec) -> str:
    return spec.name.replace("_", " ")


def _info(spec: ParamSpec) -> str:
    text = spec.meta.help or ""
    return f"{text} · range {spec.range_text}".strip(" ·") if spec.kind in (int, float) else text


def widget(spec: ParamSpec, bounds: dict[str, int] | None = None):
    """The widget of one hyperparameter; `bounds` (model.info's sizes by name) caps model-bound sliders."""
    m, common = spec.meta, dict(label=_label(spec), info=_info(spec) or None)
    high = (bounds or {}).get(m.model_bound) if m.model_bound else m.high
    if m.choices is not None:
        return gr.Dropdown(list(m.choices), value=spec.default, **common)
    if spec.kind is bool:
        return gr.Checkbox(value=bool(spec.default), **common)
    if m.optional or spec.default is None:  # a Number would send 0 for blank; blank means off
        return gr.Textbox("" if spec.default is None else str(spec.default), placeholder="blank = off", **common)
    if spec.kind in (int, float):
        step = 1 if spec.kind is int or m.integer else None
        if m.low is not None and high is not None and high > m.low:
            span = high - m.low
            step = step or (0.01 if span <= 1 else span / 100)
            return gr.Slider(m.low, high, value=min(spec.default, high), step=step, **common)
        return gr.Number(spec.default, minimum=m.low, maximum=None if m.model_bound else m.high,
                         precision=0 if step else None, **common)
    return gr.Textbox(str(spec.default), **common)


def model_bounds(info) -> dict[str, int]:
    return {"vocab_size": info.vocab_size, "num_tokens": info.num_tokens, "grid_height": info.grid_shape[0],
            "grid_width": info.grid_shape[1]}


def decoder_panel(decoder: str, visible: bool, bounds: dict[str, int] | None = None) -> DecoderPanel:
    specs = describe(DECODERS[decoder])
    made: dict[str, object] = {}
    with gr.Column(visible=visible) as column:
        for spec in [s for s in specs if not s.meta.advanced]:
            made[spec.name] = widget(spec, bounds)
        advanced = [s for s in specs if s.meta.advanced]
        if advanced:
            with gr.Accordion(f"advanced {decoder} settings", open=False):
                for spec in advanced:
                    made[spec.name] = widget(spec, bounds)
    return DecoderPanel(decoder, specs, [made[s.name] for s in specs], column)


def settings_of(panel: DecoderPanel, values) -> dict:
    """The widget values of one panel as the decoder's keyword arguments."""
    try:
        return {s.name: coerce(s, v) for s, v in zip(panel.specs, values)}
    except ValueError as e:
        raise ValueError(f"Decoder {panel.decoder!r}: a setting is not a number ({e})") from e


def all_settings_json(panels: list[DecoderPanel], *values) -> str:
    """Every panel's settings, {decoder: settings}, from the values of all their widgets in order."""
    out, i = {}, 0
    for panel in panels:
        out[panel.decoder] = settings_of(panel, values[i:i + len(panel.widgets)])
        i += len(panel.widgets)
    return json.dumps(out)
