"""Acceptance on the token grid: per-position tables from a trace, and the interactive maps.

Each position's draft statistics (q, acceptance probability, group size) are those of the draft
verified there in the forward pass that committed the position (in a tree: the node on the accepted path,
else the last sibling rejected there); a position committed with no draft verified there (prefill, bonus
token) has none (NaN).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.definitions import DEFINITIONS
from analysis.structure import pass_nodes
from analysis.style import KIND_COLOURS, KIND_LABELS, SEQUENTIAL, finish, kind_colorscale
from decoding.trace import COMMIT_KINDS, Trace

VIEWS: dict[str, str] = {
    "kind": "How each token was committed",
    "step": "Forward pass that committed each token",
    "accept_prob": "Acceptance probability of the committing verification",
    "group_size": "LANTERN neighbourhood / GSD group size",
    "top1": "Target top-1 probability",
    "entropy": "Target entropy (nats)",
}
COLORBAR_TITLES = {"kind": "", "step": "forward pass", "accept_prob": "accept prob", "group_size": "group size",
                   "top1": "top-1 prob", "entropy": "entropy (nats)"}
VIEW_DEFINITION = {"kind": "commit_kind", "step": "commit_step", "accept_prob": "accept_prob",
                   "group_size": "group_size", "top1": "top1", "entropy": "entropy"}


@dataclass
class PositionTable:
    """Per-position arrays [N] in raster order."""

    step: np.ndarray
    kind: np.ndarray  # index into COMMIT_KINDS
    token: np.ndarray
    p: np.ndarray  # target probability of the committed token
    q: np.ndarray  # draft probability of the draft verified at the committing pass (NaN if none)
    draft_token: np.ndarray  # -1 if none
    accept_prob: np.ndarray
    group_size: np.ndarray
    top1: np.ndarray
    entropy: np.ndarray


def position_table(trace: Trace) -> PositionTable:
    n = trace.num_tokens
    q, accept_prob, group = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    draft_token = np.full(n, -1)
    commit_step = np.asarray(trace.commit_step)
    for s in trace.steps:
        taken: set[int] = set()  # positions whose node on the accepted path was found (a tree has siblings)
        for i, (pos, on_path) in enumerate(zip(s.positions, pass_nodes(s, trace.grid_shape[1]).on_path.tolist())):
            if commit_step[pos] == s.index and pos not in taken:
                q[pos], accept_prob[pos] = s.q_draft[i], s.accept_prob[i]
                group[pos], draft_token[pos] = s.group_size[i], s.draft_tokens[i]
                if on_path:
                    taken.add(pos)
    return PositionTable(step=commit_step, kind=np.array([COMMIT_KINDS.index(k) for k in trace.commit_kind]),
                         token=np.asarray(trace.tokens), p=np.asarray(trace.commit_p), q=q, draft_token=draft_token,
                         accept_prob=accept_prob, group_size=group, top1=np.asarray(trace.commit_top1),
                         entropy=np.asarray(trace.commit_entropy))


def to_grid(values: np.ndarray, grid_shape: tuple[int, int]) -> np.ndarray:
    """[N] raster-order values -> [H, W]."""
    return np.asarray(values, dtype=float).reshape(grid_shape)


def position_of(row: int, col: int, grid_shape: tuple[int, int]) -> int:
    h, w = grid_shape
    if not (0 <= row < h and 0 <= col < w):
        raise ValueError(f"grid cell ({row}, {col}) is outside the {h}x{w} token grid")
    return row * w + col


def _hover(trace: Trace, table: PositionTable) -> tuple[np.ndarray, str]:
    h, w = trace.grid_shape
    kinds = np.array([KIND_LABELS[k] for k in trace.commit_kind], dtype=object)
    rows, cols = np.divmod(np.arange(trace.num_tokens), w)
    fields = [np.arange(trace.num_tokens), rows, cols, table.token, kinds, table.step, table.p, table.q,
              table.accept_prob, table.group_size, table.top1, table.entropy]
    custom = np.stack([np.asarray(f, dtype=object) for f in fields], axis=-1).reshape(h, w, len(fields))
    template = ("position %{customdata[0]} (row %{customdata[1]}, col %{customdata[2]})<br>"
                "token %{customdata[3]} · %{customdata[4]} at pass %{customdata[5]}<br>"
                "p(token) = %{customdata[6]:.3f} · q(draft) = %{customdata[7]:.3f}<br>"
                "accept prob = %{customdata[8]:.3f} · group size = %{customdata[9]}<br>"
                "top-1 = %{customdata[10]:.3f} · entropy = %{customdata[11]:.2f} nats<extra></extra>")
    return custom, template


def colorbar_below(domain: tuple[float, float], title: str) -> dict:
    """A horizontal colour bar under a panel whose x domain is `domain`: it can never run into the
    panel on its right (vertical bars beside square panels did)."""
    return dict(orientation="h", x=(domain[0] + domain[1]) / 2, xanchor="center", y=-0.22, yanchor="top",
                len=0.8 * (domain[1] - domain[0]), thickness=12, title=dict(text=title, side="top"))


def map_trace(trace: Trace, view: str = "kind", table: PositionTable | None = None,
              colorbar_x: float | None = None, domain: tuple[float, float] | None = None) -> go.Heatmap:
    """The heatmap trace of one view, in grid coordinates (x = column, y = row); with the panel's x
    `domain`, its colour bar lies under the panel. The kind view has no colour bar: `kind_legend()` gives
    its legend entries."""
    if view not in VIEWS:
        raise ValueError(f"unknown map view {view!r}; choose from {list(VIEWS)}")
    table = table or position_table(trace)
    custom, template = _hover(trace, table)
    z = to_grid(getattr(table, view), trace.grid_shape)
    colorbar = dict(title=dict(text=COLORBAR_TITLES[view], side="right"), thickness=14, len=0.85)
    if colorbar_x is not None:
        colorbar["x"] = colorbar_x
    if domain is not None:
        colorbar = colorbar_below(domain, COLORBAR_TITLES[view])
    kw: dict = dict(colorscale=SEQUENTIAL, colorbar=colorbar)
    if view == "kind":
        n = len(COMMIT_KINDS)
        kw = dict(colorscale=kind_colorscale(), zmin=-0.5, zmax=n - 0.5, showscale=False)
    elif view in ("accept_prob", "top1"):
        kw.update(zmin=0.0, zmax=1.0)
    return go.Heatmap(z=z, customdata=custom, hovertemplate=template, xgap=1, ygap=1, **kw)


def kind_legend(present: set[str] | None = None) -> list[go.Scatter]:
    """Legend entries (invisible points) for the commit-kind colours."""
    return [go.Scatter(x=[None], y=[None], mode="markers", name=KIND_LABELS[k], showlegend=True,
                       marker=dict(symbol="square", size=14, color=KIND_COLOURS[k]))
            for k in COMMIT_KINDS if present is None or k in present]


def image_trace(image: np.ndarray, grid_shape: tuple[int, int]) -> go.Image:
    """The image scaled into grid coordinates, so one token cell = one unit."""
    h, w = grid_shape
    return go.Image(z=image, dx=w / image.shape[1], dy=h / image.shape[0], x0=-0.5 + w / image.shape[1] / 2,
                    y0=-0.5 + h / image.shape[0] / 2, hoverinfo="skip")


def square_axes(fig: go.Figure, grid_shape: tuple[int, int], n_panels: int, first: int = 1) -> None:
    """Token-grid axes (row 0 on top, one unit per cell, square cells) on panels first..first+n-1."""
    h, w = grid_shape
    ticks = dict(tickmode="linear", tick0=0, dtick=max(1, (max(h, w) + 6) // 7))
    for i in range(first, first + n_panels):
        fig.update_xaxes(range=[-0.5, w - 0.5], showgrid=False, zeroline=False, constrain="domain",
                         title_text="column", row=1, col=i, **ticks)
        fig.update_yaxes(range=[h - 0.5, -0.5], showgrid=False, zeroline=False, constrain="domain",
                         scaleanchor=f"x{i if i > 1 else ''}", title_text="row" if i == first else None,
                         row=1, col=i, **ticks)


def panel_domains(n_panels: int, share: float = 0.86) -> list[tuple[float, float]]:
    """Equal slots; each panel takes the left `share` of its slot (the rest is the gap to the next one;
    colour bars go under the panels: `colorbar_below`)."""
    slot = 1.0 / n_panels
    return [(i * slot, i * slot + share * slot) for i in range(n_panels)]


def set_domains(fig: go.Figure, domains: list[tuple[float, float]]) -> None:
    fig.update_layout({f"xaxis{i + 1 if i else ''}": dict(domain=list(d)) for i, d in enumerate(domains)})
    for ann, d in zip(fig.layout.annotations, domains):  # subplot titles follow their panel
        ann.x = (d[0] + d[1]) / 2


def acceptance_maps(trace: Trace, image: np.ndarray | None = None, views: tuple[str, ...] = ("kind", "step"),
                    title: str | None = None, overlay: bool = False) -> go.Figure:
    """The image and one panel per view in a row (the Generate tab's main figure). With `overlay`,
    each map is drawn semi-transparent over the image instead of beside it."""
    for v in views:
        if v not in VIEWS:
            raise ValueError(f"unknown map view {v!r}; choose from {list(VIEWS)}")
    table = position_table(trace)
    beside = image is not None and not overlay
    panels = len(views) + beside
    names = (["generated image"] if beside else []) + [VIEWS[v] for v in views]
    fig = make_subplots(1, panels, subplot_titles=names)
    domains = panel_domains(panels)
    if beside:
        fig.add_trace(image_trace(image, trace.grid_shape), 1, 1)
    for i, v in enumerate(views):
        col = i + 1 + beside
        if overlay and image is not None:
            fig.add_trace(image_trace(image, trace.grid_shape), 1, col)
        heat = map_trace(trace, v, table, domain=domains[col - 1])
        if overlay and image is not None:
            heat.opacity = 0.6
        fig.add_trace(heat, 1, col)
    if "kind" in views:
        for entry in kind_legend(set(trace.commit_kind)):
            fig.add_trace(entry, 1, 1 + beside + views.index("kind"))
    square_axes(fig, trace.grid_shape, panels)
    set_domains(fig, domains)
    fig.update_annotations(font_size=14)
    kind_x = domains[beside + views.index("kind")][0] if "kind" in views else 0.0
    fig.update_layout(legend=dict(orientation="v", x=kind_x, y=-0.2, yanchor="top", title_text="committed as:",
                                  font_size=13), plot_bgcolor="#FFFFFF")
    title = title or (f"{trace.decoder} · {trace.class_name} · seed {trace.seed} · NFE {trace.nfe} · "
                      f"step compression {trace.step_compression:.2f}")
    fig = finish(fig, title, height=520)
    fig.update_layout(margin_b=140)
    return fig


def acceptance_map(trace: Trace, view: str = "kind", image: np.ndarray | None = None, overlay: bool = False,
                   title: str | None = None) -> go.Figure:
    """One view, beside the image (or over it with `overlay`)."""
    return acceptance_maps(trace, image, (view,), title, overlay)


def caption(view: str) -> str:
    return DEFINITIONS[VIEW_DEFINITION[view]]
