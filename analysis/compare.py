"""Side by side: the same class and seed through several decoders, and the spread over seeds.

Inputs are traces and their images, in the order to show; the run named `reference` (plain AR by
default) is the baseline of the token agreement and the pixel difference. `seed_summary` averages
each decoder's runs over several seeds: mean and 95% t-interval of NFE, step compression and wall time.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.steps import acceptance_rate
from analysis.style import finish
from decoding.trace import Trace

# two-sided 95% Student t quantiles by degrees of freedom (1..30); above 30 the normal 1.96 is within 2%
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
SUMMARY_QUANTITIES = (("NFE", "nfe"), ("step compression", "step_compression"), ("wall s", "total_s"))
TIME_PARTS = (("forward_s", "model forward", "#0072B2"), ("overhead_s", "decoder overhead", "#E69F00"),
              ("vq_decode_s", "VQ decode", "#009E73"))


def run_name(trace: Trace) -> str:
    return trace.decoder


def _reference_index(traces: Sequence[Trace], reference: str) -> int | None:
    names = [run_name(t) for t in traces]
    return names.index(reference) if reference in names else None


def token_agreement(trace: Trace, reference: Trace) -> float:
    """Share of positions whose token equals the reference run's."""
    if trace.grid_shape != reference.grid_shape:
        raise ValueError(f"grids differ: {trace.grid_shape} vs {reference.grid_shape}")
    return float(np.mean(np.asarray(trace.tokens) == np.asarray(reference.tokens)))


def pixel_difference(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """|image - reference| per pixel, channels averaged: float [H, W] in 0..255."""
    if image.shape != reference.shape:
        raise ValueError(f"image shapes differ: {image.shape} vs {reference.shape}")
    return np.abs(image.astype(np.float32) - reference.astype(np.float32)).mean(-1)


def compare_table(traces: Sequence[Trace], reference: str = "ar") -> list[dict]:
    """One row per run: NFE, step compression, accepted length, acceptance rate, times, agreement."""
    ref = _reference_index(traces, reference)
    rows = []
    for t in traces:
        rate = acceptance_rate([t])
        rows.append({"decoder": run_name(t), "NFE": t.nfe, "step compression": round(t.step_compression, 2),
                     "mean accepted length": round(t.mean_accepted_length, 2),
                     "accepted drafts / pass": round(t.mean_accepted_drafts, 2),
                     "acceptance rate": None if np.isnan(rate) else round(rate, 3),
                     "model s": round(t.forward_s, 3), "overhead s": round(t.overhead_s, 3),
                     "VQ decode s": round(t.vq_decode_s, 3), "total s": round(t.total_s, 3),
                     f"tokens equal to {reference}":
                         None if ref is None else round(token_agreement(t, traces[ref]), 3)})
    return rows


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and the 95% Student t-interval of the mean (low = high = mean for one value)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    df = x.size - 1
    t = T_975[df - 1] if df <= len(T_975) else 1.96
    half = t * float(x.std(ddof=1)) / np.sqrt(x.size)
    return mean, float(mean - half), float(mean + half)


def seed_summary(traces_by_decoder: dict[str, Sequence[Trace]]) -> list[dict]:
    """One row per decoder: seeds run, then mean and 95% interval of NFE, step compression, wall time."""
    rows = []
    for name, traces in traces_by_decoder.items():
        if not traces:
            raise ValueError(f"decoder {name!r} has no runs to summarise")
        row: dict = {"decoder": name, "seeds": len(traces)}
        for label, attr in SUMMARY_QUANTITIES:
            mean, low, high = mean_interval([getattr(t, attr) for t in traces])
            digits = 1 if attr == "nfe" else 3
            row[f"{label} mean"] = round(mean, digits)
            row[f"{label} 95% interval"] = f"[{low:.{digits}f}, {high:.{digits}f}]" if len(traces) > 1 else "-"
        rows.append(row)
    return rows


def _image_titles(traces: Sequence[Trace], ref: int | None, reference: str, rows: int) -> list[str]:
    """Short enough for six columns side by side (wider text overlapped its neighbours' titles)."""
    many = len(traces) > 4
    titles = [f"<b>{_safe(run_name(t))}</b><br>NFE {t.nfe} · " + (f"×{t.step_compression:.2f}" if many else
              f"accepted length {t.mean_accepted_length:.2f}") for t in traces]
    if rows == 2:
        titles += [(f"tokens equal {token_agreement(t, traces[ref]):.0%}" if many else
                    f"|image − {reference}| · tokens equal {token_agreement(t, traces[ref]):.0%}") if i != ref
                   else f"({reference}: the reference)" for i, t in enumerate(traces)]
    return titles


def _safe(text: str) -> str:
    """A name as plotly text (its titles render <b>, <a href=...>): markup characters escaped."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def compare_images_figure(traces: Sequence[Trace], images: Sequence[np.ndarray], reference: str = "ar") -> go.Figure:
    """Row 1: the images, titled with NFE and mean accepted length. Row 2 (when the reference ran):
    the pixel difference to it, blank where every token agrees."""
    if len(traces) != len(images) or not traces:
        raise ValueError(f"need one image per trace, got {len(traces)} traces and {len(images)} images")
    ref = _reference_index(traces, reference)
    rows = 2 if ref is not None and len(traces) > 1 else 1
    titles = _image_titles(traces, ref, reference, rows)
    fig = make_subplots(rows, len(traces), subplot_titles=titles, vertical_spacing=0.12, horizontal_spacing=0.03)
    for i, (t, im) in enumerate(zip(traces, images)):
        fig.add_trace(go.Image(z=im, hoverinfo="skip"), 1, i + 1)
        if rows == 2 and i != ref:
            diff = pixel_difference(im, images[ref])
            fig.add_trace(go.Heatmap(z=diff, zmin=0, zmax=255, colorscale="Greys", showscale=i == len(traces) - 1
                                     or (i == len(traces) - 2 and ref == len(traces) - 1),
                                     colorbar=dict(title=dict(text="|Δ pixel|", side="right"), thickness=12, len=0.4,
                                                   y=0.2),
                                     hovertemplate="x %{x}, y %{y}: |Δ| = %{z:.0f}<extra></extra>"), 2, i + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    for r in range(1, rows + 1):
        for c in range(1, len(traces) + 1):
            fig.update_yaxes(scaleanchor=f"x{(r - 1) * len(traces) + c if (r, c) != (1, 1) else ''}", row=r, col=c)
    fig.update_annotations(font_size=13 if len(traces) <= 4 else 11)
    return finish(fig, "same class and seed through each decoder", height=300 * rows + 80)


def speed_figure(traces: Sequence[Trace]) -> go.Figure:
    """Left: forward passes per decoder. Right: wall time split into model / overhead / VQ decode."""
    names = [_safe(run_name(t)) for t in traces]
    fig = make_subplots(1, 2, subplot_titles=("forward passes (NFE)", "wall time per image"), horizontal_spacing=0.12)
    # neutral bars: the colours of this figure belong to the time split on the right
    fig.add_trace(go.Bar(x=names, y=[t.nfe for t in traces], marker_color="#555555",
                         text=[f"{t.nfe} (×{t.step_compression:.2f})" for t in traces], textposition="outside",
                         showlegend=False, hovertemplate="%{x}: NFE %{y}<extra></extra>"), 1, 1)
    for attr, label, colour in TIME_PARTS:
        fig.add_trace(go.Bar(x=names, y=[getattr(t, attr) for t in traces], name=label, marker_color=colour,
                             hovertemplate="%{x}: %{y:.3f} s " + label + "<extra></extra>"), 1, 2)
    fig.update_layout(barmode="stack", legend=dict(orientation="h", y=-0.2, x=0.55))
    fig.update_yaxes(title_text="forward passes", row=1, col=1)
    fig.update_yaxes(title_text="seconds", row=1, col=2)
    top = max((t.nfe for t in traces), default=1)
    fig.update_yaxes(range=[0, top * 1.2], row=1, col=1)
    return finish(fig, "speed", height=400)
