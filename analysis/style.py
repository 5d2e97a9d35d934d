"""Shared look: colourblind-safe colours (Okabe-Ito) for the commit kinds, one sequential scale,
and figure defaults sized for slides (readable at a glance, axis titles always present)."""
from __future__ import annotations

import plotly.graph_objects as go

from decoding.trace import COMMIT_KINDS

# Okabe & Ito (2008): distinguishable under the common colour-vision deficiencies and in greyscale
# by lightness. Accepted drafts blue, relaxation orange (the point of LANTERN/GSD), resampled
# reddish purple, bonus (plain AR's every token) neutral grey.
KIND_COLOURS: dict[str, str] = {"draft": "#0072B2", "relaxed": "#E69F00", "resampled": "#CC79A7", "bonus": "#9E9E9E"}
KIND_LABELS: dict[str, str] = {"draft": "draft accepted", "relaxed": "relaxed only", "resampled": "resampled",
                               "bonus": "bonus"}
SEQUENTIAL = "Viridis"
DIVERGING = "RdBu"
EARLIER = "#E0E0E0"  # committed in an earlier pass (replay)
NOT_YET = "#FFFFFF"
FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=14)
DECODER_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")

assert tuple(KIND_COLOURS) == COMMIT_KINDS


# past 8 series the colours repeat; the marker changes with each round, so (colour, marker) stays unique
MARKERS_MPL = ("o", "s", "^", "D", "v", "P", "X", "*")
MARKERS_PLOTLY = ("circle", "square", "triangle-up", "diamond", "triangle-down", "cross", "x", "star")


def decoder_colour(i: int) -> str:
    return DECODER_COLOURS[i % len(DECODER_COLOURS)]


def decoder_marker(i: int, plotly: bool = False) -> str:
    """The marker of series i: circles for the first 8 colours, squares for the next 8, and so on."""
    markers = MARKERS_PLOTLY if plotly else MARKERS_MPL
    return markers[(i // len(DECODER_COLOURS)) % len(markers)]


def kind_colorscale() -> list[list]:
    """A stepped colour scale for z = kind index 0..3 (one flat band per kind)."""
    n = len(COMMIT_KINDS)
    scale = []
    for i, kind in enumerate(COMMIT_KINDS):
        scale += [[i / n, KIND_COLOURS[kind]], [(i + 1) / n, KIND_COLOURS[kind]]]
    return scale


def finish(fig: go.Figure, title: str | None = None, height: int | None = None) -> go.Figure:
    """Apply the house layout: white background, large font, compact margins."""
    fig.update_layout(template="plotly_white", font=FONT, margin=dict(l=60, r=30, t=70 if title else 40, b=50),
                      title=dict(text=title, x=0.01, font=dict(size=18)) if title else None,
                      hoverlabel=dict(font_size=13))
    if height:
        fig.update_layout(height=height)
    return fig


def empty_figure(message: str) -> go.Figure:
    """A blank figure that says why it is blank (no trace yet, no drafts, ...)."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=16, color="#555555"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return finish(fig, height=260)
