"""Per-forward-pass views: accepted length per pass and acceptance by depth. The replay of the generation
pass by pass lives in `analysis/replay.py` (re-exported here: `steps.replay_figure`, `steps.replay_states`)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.replay import replay_figure, replay_states  # noqa: F401 - re-exported
from analysis.structure import all_pass_nodes
from analysis.style import KIND_COLOURS, KIND_LABELS, decoder_colour, empty_figure, finish
from decoding.trace import COMMIT_KINDS, Trace


def committed_per_pass(trace: Trace) -> np.ndarray:
    """[NFE] tokens committed by each forward pass, the resampled/bonus token included."""
    return np.array([len(s.committed_positions) for s in trace.steps])


def drafts_accepted_per_pass(trace: Trace) -> np.ndarray:
    """[NFE] drafts accepted by each forward pass (bonus/resampled excluded)."""
    return np.array([s.n_accepted for s in trace.steps])


def kinds_per_pass(trace: Trace) -> dict[str, np.ndarray]:
    """Per commit kind, [NFE] tokens of that kind committed by each pass."""
    return {k: np.array([s.committed_kinds.count(k) for s in trace.steps]) for k in COMMIT_KINDS}


@dataclass
class DepthStats:
    """Index d of each array = depth d + 1 (depth 1 = the first draft after the committed prefix)."""

    verified: np.ndarray  # [D] drafts verified at depth d
    accepted: np.ndarray  # [D]
    reached: np.ndarray  # [D] verified at depth d with every earlier draft (every ancestor in a tree) accepted
    accepted_reached: np.ndarray  # [D]

    @property
    def depths(self) -> np.ndarray:
        return np.arange(1, len(self.verified) + 1)

    @property
    def rate(self) -> np.ndarray:
        return self.accepted / np.maximum(self.verified, 1)

    @property
    def conditional_rate(self) -> np.ndarray:
        return self.accepted_reached / np.maximum(self.reached, 1)


def acceptance_by_depth(traces: Sequence[Trace]) -> DepthStats:
    """Acceptance by the draft's depth (its distance from the committed prefix: its index in a chain
    window, its level in a tree), pooled over traces."""
    passes = [nodes for t in traces for nodes in all_pass_nodes(t) if len(nodes.depths)]
    depth = max((int(nodes.depths.max()) for nodes in passes), default=0)
    stats = DepthStats(*(np.zeros(depth, dtype=int) for _ in range(4)))
    for nodes in passes:
        d, reached = nodes.depths - 1, nodes.reached
        np.add.at(stats.verified, d, 1)
        np.add.at(stats.accepted, d, nodes.accepted.astype(int))
        np.add.at(stats.reached, d, reached.astype(int))
        np.add.at(stats.accepted_reached, d, (reached & nodes.accepted).astype(int))
    return stats


def acceptance_rate(traces: Sequence[Trace]) -> float:
    """Accepted drafts / drafts verified (NaN if no draft was verified)."""
    verified = sum(len(s.accepted) for t in traces for s in t.steps)
    return sum(s.n_accepted for t in traces for s in t.steps) / verified if verified else float("nan")


def accepted_length_figure(trace: Trace) -> go.Figure:
    """Left: tokens committed per pass along the generation, stacked by kind. Right: histogram."""
    fig = make_subplots(1, 2, column_widths=[0.65, 0.35], horizontal_spacing=0.1,
                        subplot_titles=("tokens committed per forward pass", "histogram over passes"))
    per_kind = kinds_per_pass(trace)
    steps = np.arange(trace.nfe)
    for k in COMMIT_KINDS:
        if per_kind[k].any():
            fig.add_trace(go.Bar(x=steps, y=per_kind[k], name=KIND_LABELS[k], marker_color=KIND_COLOURS[k],
                                 hovertemplate="pass %{x}: %{y} " + KIND_LABELS[k] + "<extra></extra>"), 1, 1)
    lengths = committed_per_pass(trace)
    values, counts = np.unique(lengths, return_counts=True)
    fig.add_trace(go.Bar(x=values, y=counts, marker_color="#555555", showlegend=False,
                         hovertemplate="%{y} passes committed %{x} tokens<extra></extra>"), 1, 2)
    fig.update_layout(barmode="stack", bargap=0.05, legend=dict(orientation="h", y=-0.25, traceorder="normal"))
    fig.update_xaxes(title_text="forward pass", row=1, col=1)
    fig.update_yaxes(title_text="tokens", row=1, col=1)
    fig.update_xaxes(title_text="tokens committed in one pass", dtick=1, row=1, col=2)
    fig.update_yaxes(title_text="passes", row=1, col=2)
    title = f"mean accepted length {trace.mean_accepted_length:.2f} · drafts per pass {trace.mean_accepted_drafts:.2f}"
    return finish(fig, title, height=380)


def depth_figure(traces_by_name: dict[str, Sequence[Trace]], min_drafts: int = 5) -> go.Figure:
    """Acceptance rate (solid) and conditional rate (dashed, drawn only where it differs from the rate)
    by depth, one colour per decoder; below, the drafts verified at each depth. Rates from fewer than
    `min_drafts` drafts are not drawn (a single draft would show as 0 or 1)."""
    if min_drafts < 1:
        raise ValueError(f"min_drafts must be >= 1, got {min_drafts}")
    fig = make_subplots(2, 1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.06)
    hidden = 0
    for i, (name, traces) in enumerate(traces_by_name.items()):
        stats = acceptance_by_depth(traces)
        if not len(stats.verified):
            continue
        colour, d = decoder_colour(i), stats.depths
        rate = np.where(stats.verified >= min_drafts, stats.rate, np.nan)
        conditional = np.where(stats.reached >= min_drafts, stats.conditional_rate, np.nan)
        hidden += int(((stats.verified > 0) & (stats.verified < min_drafts)).sum())
        fig.add_trace(_rate_line(d, rate, stats.accepted, stats.verified, f"{name}: rate", name, colour), 1, 1)
        both = ~np.isnan(rate) & ~np.isnan(conditional)  # the conditional adds a line only where it differs
        if not np.allclose(rate[both], conditional[both]) or (np.isnan(rate) & ~np.isnan(conditional)).any():
            fig.add_trace(_rate_line(d, conditional, stats.accepted_reached, stats.reached, f"{name}: conditional",
                                     f"{name} (conditional)", colour, dash="dash"), 1, 1)
        fig.add_trace(go.Bar(x=d, y=stats.verified, name=f"{name}: drafts", marker_color=colour, showlegend=False,
                             hovertemplate="depth %{x}: %{y} drafts verified<extra>" + name + "</extra>"), 2, 1)
    if not fig.data:
        return empty_figure("no drafts were verified (plain AR has none)")
    fig.update_xaxes(title_text="depth (1 = first draft after the committed prefix)", dtick=1, row=2, col=1)
    fig.update_yaxes(title_text="acceptance rate", range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(title_text="drafts", row=2, col=1)
    fig.update_layout(barmode="group", bargap=0.15)
    note = f" · {hidden} depth(s) with < {min_drafts} drafts not drawn" if hidden else ""
    return finish(fig, "acceptance by depth" + note, height=460)


def _rate_line(d: np.ndarray, rate: np.ndarray, k: np.ndarray, n: np.ndarray, name: str, hover_name: str,
               colour: str, dash: str = "solid") -> go.Scatter:
    return go.Scatter(x=d, y=rate, mode="lines+markers", name=name, line=dict(color=colour, dash=dash),
                      customdata=np.stack([k, n], -1), connectgaps=False,
                      hovertemplate="depth %{x}: %{customdata[0]}/%{customdata[1]} = %{y:.2f}"
                                    "<extra>" + hover_name + "</extra>")


def rows_per_pass(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """([H, NFE] tokens committed in each grid row by each pass, [H, NFE] drafts verified there): a raster
    decoder works on one row at a time (a staircase), ZipAR/PJD on several (a band)."""
    h, w = trace.grid_shape
    committed, verified = np.zeros((h, trace.nfe), dtype=int), np.zeros((h, trace.nfe), dtype=int)
    for s, nodes in zip(trace.steps, all_pass_nodes(trace)):
        np.add.at(committed[:, s.index], np.asarray(s.committed_positions, dtype=np.int64) // w, 1)
        np.add.at(verified[:, s.index], nodes.rows, 1)
    return committed, verified


def rows_figure(trace: Trace) -> go.Figure:
    """Tokens committed per grid row (y) and forward pass (x); blank = the pass did not touch the row."""
    committed, verified = rows_per_pass(trace)
    z = np.where((committed > 0) | (verified > 0), committed, np.nan)
    top = max(1, int(committed.max(initial=0)))
    fig = go.Figure(go.Heatmap(z=z, customdata=verified, colorscale="Viridis", zmin=0, zmax=top, xgap=0, ygap=1,
                               colorbar=dict(title=dict(text="tokens committed", side="right"), thickness=14),
                               hovertemplate="pass %{x}, row %{y}: %{z} committed, %{customdata} drafts "
                                             "verified<extra></extra>"))
    most = int(((committed > 0) | (verified > 0)).sum(0).max()) if trace.nfe else 0
    fig.update_xaxes(title_text="forward pass")
    fig.update_yaxes(title_text="grid row", autorange="reversed", dtick=max(1, trace.grid_shape[0] // 8))
    return finish(fig, f"rows worked on per forward pass · up to {most} row(s) in one pass", height=360)
