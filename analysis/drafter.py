"""Drafter quality, from traces alone: how often a draft was the target's own top-1 token, where on the grid
and at which depth, next to how often drafts were accepted, and what the drafter cost.

For the app: `drafter_figure(traces)` (traces of one decoder and model) and `drafter_summary(traces)` (a dict
for a JSON panel). Works for every speculative decoder (Jacobi drafts too); a separate drafter model shows
its cost through the trace's `draft_forwards` / `draft_s` per step.

Agreement is read from the trace's numbers: a draft is the target's top-1 when its target probability
`p_draft` equals the target's top-1 probability `top1_prob` at that node (ties count as agreement: the draft
is then one of the target's most likely tokens). Every verification counts, not only the committing one.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.heatmaps import colorbar_below, panel_domains, set_domains, square_axes
from analysis.structure import all_pass_nodes
from analysis.style import KIND_COLOURS, SEQUENTIAL, empty_figure, finish
from decoding.trace import Trace

REL_TOL = 1e-6  # p(draft) within this relative distance of the top-1 probability: the draft is a top-1 token


def is_target_top1(p_draft: Sequence[float], top1_prob: Sequence[float]) -> np.ndarray:
    """[n] bool: the draft was (one of) the target's most probable token(s) at its node."""
    p, top1 = np.asarray(p_draft, dtype=float), np.asarray(top1_prob, dtype=float)
    return p >= top1 * (1 - REL_TOL)


def _grid(traces: Sequence[Trace]) -> tuple[int, int]:
    grids = {t.grid_shape for t in traces}
    if len(grids) != 1:
        raise ValueError(f"traces have different grids {sorted(grids)}: pass traces of one model")
    return grids.pop()


def agreement_grid(traces: Sequence[Trace]) -> tuple[np.ndarray, np.ndarray]:
    """([H, W] share of drafts verified at each position that were the target's top-1 (NaN: none verified),
    [H, W] drafts verified there), pooled over every pass of every trace."""
    h, w = _grid(traces)
    hits, verified = np.zeros(h * w), np.zeros(h * w, dtype=np.int64)
    for t in traces:
        for s in t.steps:
            pos = np.asarray(s.positions, dtype=np.int64)
            np.add.at(verified, pos, 1)
            np.add.at(hits, pos, is_target_top1(s.p_draft, s.top1_prob).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(verified > 0, hits / np.maximum(verified, 1), np.nan)
    return share.reshape(h, w), verified.reshape(h, w)


def by_depth(traces: Sequence[Trace]) -> dict[str, np.ndarray]:
    """Per depth (index 0 = depth 1): drafts verified, of them the target's top-1, and accepted."""
    rows = [(d, top, acc) for t in traces for s, nodes in zip(t.steps, all_pass_nodes(t))
            for d, top, acc in zip(nodes.depths.tolist(), is_target_top1(s.p_draft, s.top1_prob).tolist(),
                                   nodes.accepted.tolist())]
    depth = max((r[0] for r in rows), default=0)
    out = {k: np.zeros(depth, dtype=np.int64) for k in ("verified", "top1", "accepted")}
    for d, top, acc in rows:
        out["verified"][d - 1] += 1
        out["top1"][d - 1] += top
        out["accepted"][d - 1] += acc
    return out


def drafter_summary(traces: Sequence[Trace]) -> dict:
    """Pooled numbers: drafts verified, share that were the target's top-1, acceptance rate, and the
    separate drafter's forwards per pass and share of wall time (0 for self-drafting decoders)."""
    d = by_depth(traces)
    verified = int(d["verified"].sum())
    passes = sum(t.nfe for t in traces)
    total_s = sum(t.total_s for t in traces)
    draft_s = sum(s.draft_s for t in traces for s in t.steps)
    return {"drafts verified": verified,
            "target top-1 agreement": round(float(d["top1"].sum()) / verified, 3) if verified else None,
            "acceptance rate": round(float(d["accepted"].sum()) / verified, 3) if verified else None,
            "drafter forwards per pass": round(sum(s.draft_forwards for t in traces for s in t.steps) / passes, 3)
            if passes else None,
            "drafter share of wall time": round(draft_s / total_s, 3) if total_s > 0 else None}


def drafter_figure(traces: Sequence[Trace], min_drafts: int = 5) -> go.Figure:
    """Left: target top-1 agreement per grid position. Right: agreement and acceptance rate by depth
    (depths with fewer than `min_drafts` drafts not drawn)."""
    if min_drafts < 1:
        raise ValueError(f"min_drafts must be >= 1, got {min_drafts}")
    if not traces:
        return empty_figure("no traces yet")
    share, verified = agreement_grid(traces)
    if not verified.any():
        return empty_figure("no drafts were verified (plain AR has none)")
    fig = make_subplots(1, 2, subplot_titles=("draft = target's top-1 token, by position", "by depth"))
    domains = [panel_domains(2)[0], (0.58, 1.0)]
    fig.add_trace(go.Heatmap(z=share, customdata=verified, colorscale=SEQUENTIAL, zmin=0, zmax=1, xgap=1, ygap=1,
                             colorbar=colorbar_below(domains[0], "share of drafts that were the top-1"),
                             hovertemplate="row %{y}, col %{x}: %{z:.2f} of %{customdata} drafts<extra></extra>"),
                  1, 1)
    d = by_depth(traces)
    depths = np.arange(1, len(d["verified"]) + 1)
    enough = d["verified"] >= min_drafts
    for key, name, colour in (("top1", "draft = target top-1", "#009E73"),
                              ("accepted", "accepted", KIND_COLOURS["draft"])):
        rate = np.where(enough, d[key] / np.maximum(d["verified"], 1), np.nan)
        fig.add_trace(go.Scatter(x=depths, y=rate, mode="lines+markers", name=name, line_color=colour,
                                 customdata=np.stack([d[key], d["verified"]], -1),
                                 hovertemplate="depth %{x}: %{customdata[0]}/%{customdata[1]}<extra>" + name
                                               + "</extra>"), 1, 2)
    square_axes(fig, share.shape, 1)
    fig.update_xaxes(title_text="depth (1 = first draft)", dtick=1, row=1, col=2)
    fig.update_yaxes(title_text="share of drafts", range=[0, 1.05], row=1, col=2)
    set_domains(fig, domains)
    fig.update_layout(legend=dict(orientation="h", x=domains[1][0], y=-0.2, yanchor="top"))
    summary = drafter_summary(traces)
    fig = finish(fig, f"drafter quality · {summary['drafts verified']} drafts · top-1 agreement "
                      f"{summary['target top-1 agreement']:.0%} · accepted {summary['acceptance rate']:.0%}",
                 height=480)
    fig.update_layout(margin_b=120)
    return fig
