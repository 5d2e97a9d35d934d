"""Sweeps: acceptance, step compression and quality against a decoder's hyperparameters.

The input is an iterable of `SweepSample`s (a setting, the trace of one image, the class it was
generated for and the class a classifier predicts for it); running the decoders is the caller's
job. Quality is, for now, class consistency under the shipped Fashion-MNIST classifier.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.steps import acceptance_rate
from analysis.style import decoder_colour, finish
from decoding.trace import Trace


@dataclass
class SweepSample:
    setting: dict  # e.g. {"decoder": "lantern", "delta": 0.1}
    trace: Trace
    label: int
    predicted: int | None = None  # None when no classifier is available


def setting_key(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True, default=str)


def setting_label(setting: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items())


def sweep_table(samples: Iterable[SweepSample]) -> list[dict]:
    """One row per setting (in first-seen order), means over its images."""
    groups: dict[str, list[SweepSample]] = {}
    for s in samples:
        groups.setdefault(setting_key(s.setting), []).append(s)
    rows = []
    for group in groups.values():
        traces = [s.trace for s in group]
        predicted = [s for s in group if s.predicted is not None]
        rate = acceptance_rate(traces)
        rows.append({**group[0].setting, "images": len(group),
                     "acceptance rate": None if np.isnan(rate) else round(rate, 3),
                     "step compression": round(float(np.mean([t.step_compression for t in traces])), 3),
                     "mean NFE": round(float(np.mean([t.nfe for t in traces])), 1),
                     "decode s / image": round(float(np.mean([t.decode_s for t in traces])), 4),
                     "class consistency": round(float(np.mean([s.predicted == s.label for s in predicted])), 3)
                     if predicted else None})
    return rows


def _series(rows: Sequence[dict], parameter: str) -> dict[str, list[dict]]:
    """Rows split by every setting column except the swept parameter (e.g. one curve per decoder)."""
    metric_cols = {"images", "acceptance rate", "step compression", "mean NFE", "decode s / image",
                   "class consistency"}
    series: dict[str, list[dict]] = {}
    for r in rows:
        rest = {k: v for k, v in r.items() if k not in metric_cols and k != parameter}
        series.setdefault(setting_label(rest) or "all", []).append(r)
    return series


def sweep_curves(rows: Sequence[dict], parameter: str) -> go.Figure:
    """Acceptance rate, step compression and class consistency against the swept parameter."""
    metrics = ("acceptance rate", "step compression", "class consistency")
    fig = make_subplots(1, 3, subplot_titles=metrics, horizontal_spacing=0.09)
    for i, (name, rs) in enumerate(_series(rows, parameter).items()):
        rs = [r for r in rs if r.get(parameter) is not None]
        try:
            rs = sorted(rs, key=lambda r: float(r[parameter]))
        except (TypeError, ValueError):
            pass  # categorical parameter: keep the given order
        x = [r[parameter] for r in rs]
        for j, m in enumerate(metrics):
            y = [r[m] for r in rs]
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name, legendgroup=name, showlegend=j == 0,
                                     line_color=decoder_colour(i), customdata=[r["images"] for r in rs],
                                     hovertemplate=f"{parameter}=%{{x}}<br>{m} %{{y}}<br>%{{customdata}} images"
                                                   f"<extra>{name}</extra>"), 1, j + 1)
    for j in range(3):
        fig.update_xaxes(title_text=parameter, row=1, col=j + 1)
    fig.update_yaxes(range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(range=[0, 1.05], row=1, col=3)
    fig.update_layout(legend=dict(orientation="h", y=-0.25))
    return finish(fig, f"sweep over {parameter}", height=380)


def speed_quality_figure(rows: Sequence[dict], parameter: str | None = None) -> go.Figure:
    """One point per setting: step compression (speed) against class consistency (quality)."""
    fig = go.Figure()
    for i, (name, rs) in enumerate(_series(rows, parameter or "").items()):
        text = [f"{parameter}={r.get(parameter)}" if parameter else "" for r in rs]
        fig.add_trace(go.Scatter(x=[r["step compression"] for r in rs], y=[r["class consistency"] for r in rs],
                                 mode="markers+text", text=text, textposition="top center", name=name,
                                 marker=dict(size=12, color=decoder_colour(i)),
                                 hovertemplate="%{text}<br>step compression %{x}<br>class consistency %{y}"
                                               f"<extra>{name}</extra>"))
    fig.update_xaxes(title_text="step compression (tokens / forward pass) →  faster")
    fig.update_yaxes(title_text="class consistency →  better", range=[0, 1.05])
    return finish(fig, "speed against quality, one point per setting", height=420)
