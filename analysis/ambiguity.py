"""Token-selection ambiguity of the target: how flat its distribution is at each position.

LANTERN and GSD motivate relaxing acceptance by this evidence (GSD: "for 50-95% of tokens the
top-1 probability falls below 5%"); here it is measured on our own model, from traces alone.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.heatmaps import kind_legend, map_trace, panel_domains, position_table, set_domains, square_axes
from analysis.style import finish
from decoding.trace import Trace


def ambiguity_summary(traces: Sequence[Trace], threshold: float = 0.05) -> dict:
    """Pooled over every committed position of every trace."""
    top1 = np.concatenate([np.asarray(t.commit_top1) for t in traces])
    entropy = np.concatenate([np.asarray(t.commit_entropy) for t in traces])
    return {"positions": int(top1.size), f"share with top-1 < {threshold}": round(float((top1 < threshold).mean()), 3),
            "median top-1": round(float(np.median(top1)), 3),
            "median entropy (nats)": round(float(np.median(entropy)), 3)}


def mean_grid(traces: Sequence[Trace], attr: str) -> np.ndarray:
    """[H, W] mean over traces of a per-position list (e.g. 'commit_top1')."""
    shapes = {t.grid_shape for t in traces}
    if len(shapes) != 1:
        raise ValueError(f"traces have different grids {sorted(shapes)}")
    return np.mean([np.asarray(getattr(t, attr), dtype=float) for t in traces], 0).reshape(shapes.pop())


def ambiguity_histograms(traces: Sequence[Trace], threshold: float = 0.05) -> go.Figure:
    """Histograms of the target's top-1 probability and entropy over committed positions."""
    top1 = np.concatenate([np.asarray(t.commit_top1) for t in traces])
    entropy = np.concatenate([np.asarray(t.commit_entropy) for t in traces])
    fig = make_subplots(1, 2, subplot_titles=("target top-1 probability", "target entropy (nats)"),
                        horizontal_spacing=0.12)
    fig.add_trace(go.Histogram(x=top1, xbins=dict(start=0, end=1.0001, size=0.025), marker_color="#0072B2",
                               showlegend=False, hovertemplate="top-1 %{x}: %{y} positions<extra></extra>"), 1, 1)
    fig.add_trace(go.Histogram(x=entropy, nbinsx=40, marker_color="#009E73", showlegend=False,
                               hovertemplate="entropy %{x}: %{y} positions<extra></extra>"), 1, 2)
    fig.add_vline(x=threshold, line_dash="dash", line_color="#D55E00", row=1, col=1,
                  annotation_text=f"{(top1 < threshold).mean():.0%} below {threshold}", annotation_position="top right")
    fig.update_xaxes(title_text="top-1 probability", range=[0, 1], row=1, col=1)
    fig.update_xaxes(title_text="entropy (nats)", row=1, col=2)
    fig.update_yaxes(title_text="positions", row=1, col=1)
    fig.update_layout(bargap=0.02)
    return finish(fig, f"ambiguity over {top1.size} positions of {len(traces)} image(s)", height=360)


def ambiguity_maps(trace: Trace) -> go.Figure:
    """Top-1 probability, entropy and the commit kind on the grid, side by side."""
    table = position_table(trace)
    views = ("top1", "entropy", "kind")
    fig = make_subplots(1, 3, subplot_titles=("target top-1 probability", "target entropy (nats)",
                                              "how each token was committed"))
    domains = panel_domains(3)
    for i, v in enumerate(views):
        fig.add_trace(map_trace(trace, v, table, domain=domains[i]), 1, i + 1)
    for entry in kind_legend(set(trace.commit_kind)):
        fig.add_trace(entry, 1, 3)
    square_axes(fig, trace.grid_shape, 3)
    set_domains(fig, domains)
    fig.update_layout(legend=dict(orientation="v", x=domains[2][0], y=-0.2, yanchor="top", font_size=13,
                                  title_text="committed as:"))
    fig = finish(fig, f"ambiguity on the grid · {trace.decoder} · {trace.class_name} · seed {trace.seed}", height=500)
    fig.update_layout(margin_b=140)
    return fig
