"""A replay of the generation, one frame per forward pass: what the pass verified and what it committed.

On the token grid: committed in this pass (by kind), earlier, not yet; verified drafts outlined, rejected
ones crossed. When a pass decodes several rows at once (ZipAR, PJD) the rows it worked on are marked on the
grid's right edge. When passes verify trees (SJD-PAC's siblings), a third panel draws each pass's tree:
node = verified draft at (depth, slot), the accepted path in the accepted colour, rejected nodes crossed.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.heatmaps import image_trace, set_domains, square_axes
from analysis.structure import PassNodes, active_rows, all_pass_nodes, is_multi_row, is_tree, tree_layout
from analysis.style import EARLIER, KIND_COLOURS, KIND_LABELS, NOT_YET, finish
from decoding.trace import COMMIT_KINDS, StepRecord, Trace

_REPLAY_COLOURS = [NOT_YET, EARLIER] + [KIND_COLOURS[k] for k in COMMIT_KINDS]
REJECTED = "#9E9E9E"


def replay_states(trace: Trace) -> np.ndarray:
    """[NFE, N] state of each position after each pass: 0 not yet, 1 committed earlier,
    2 + kind index if committed in this pass."""
    n = trace.num_tokens
    states = np.zeros((trace.nfe, n), dtype=int)
    done = np.zeros(n, dtype=bool)
    for s in trace.steps:
        row = np.where(done, 1, 0)
        for pos, kind in zip(s.committed_positions, s.committed_kinds):
            row[pos] = 2 + COMMIT_KINDS.index(kind)
        states[s.index] = row
        done[s.committed_positions] = True
    return states


def _grid_data(trace: Trace, states: np.ndarray, nodes: PassNodes, i: int, rows: list[int] | None) -> list[dict]:
    """The grid panel's traces after pass i, as plain dicts (each frame validates them once)."""
    w = trace.grid_shape[1]
    z = states[i].reshape(trace.grid_shape)
    vr, vc = np.divmod(nodes.positions, w)
    rejected = sorted(set(nodes.positions[~nodes.accepted].tolist()) - set(nodes.positions[nodes.accepted].tolist()))
    rr, rc = np.divmod(np.asarray(rejected, dtype=int), w)  # a tree: crossed where no sibling was accepted
    data = [dict(type="heatmap", z=z), dict(type="scatter", x=vc, y=vr), dict(type="scatter", x=rc, y=rr)]
    if rows is not None:
        data.append(dict(type="scatter", x=[w - 0.5 + 0.25] * len(rows), y=rows))
    return data


def _tree_data(step: StepRecord, nodes: PassNodes) -> list:
    """Edges (grey; the accepted path's thick), then the nodes (accepted path coloured, others grey)."""
    x, y = tree_layout(nodes)
    ex, ey, px, py = [], [], [], []
    for i, p in enumerate(nodes.parents.tolist()):
        x0, y0 = (x[p], y[p]) if p >= 0 else (0.0, 0.0)
        xs, ys = (px, py) if nodes.on_path[i] else (ex, ey)
        xs += [x0, x[i], None]
        ys += [y0, y[i], None]
    tokens = step.draft_tokens
    colours = [KIND_COLOURS["draft"] if on else REJECTED for on in nodes.on_path.tolist()]
    symbols = ["circle" if on else "x" for on in nodes.on_path.tolist()]
    text = [f"position {p} · draft {t} · {'on the accepted path' if on else 'rejected'}"
            for p, t, on in zip(nodes.positions.tolist(), tokens, nodes.on_path.tolist())]
    return [dict(type="scatter", x=ex, y=ey), dict(type="scatter", x=px, y=py),
            dict(type="scatter", x=np.concatenate([[0.0], x]), y=np.concatenate([[0.0], y]),
                 text=["committed prefix"] + text, marker=dict(color=["#222222"] + colours,
                                                               symbol=["square"] + symbols))]


def replay_figure(trace: Trace, image: np.ndarray | None = None, max_frames: int = 400) -> go.Figure:
    """A slider over forward passes: what each pass verified and committed (module docstring)."""
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    states = replay_states(trace)
    passes = all_pass_nodes(trace)
    tree, rows = is_tree(trace), is_multi_row(trace)
    active = active_rows(trace) if rows else []
    panels = 1 + (image is not None) + tree
    names = (["final image"] if image is not None else []) + ["pass by pass"] + (["verified tree"] if tree else [])
    fig = make_subplots(1, panels, subplot_titles=names)
    domains = _domains(image is not None, tree)
    if image is not None:
        fig.add_trace(image_trace(image, trace.grid_shape), 1, 1)
    grid_col = 1 + (image is not None)
    frame_ids = np.unique(np.linspace(0, trace.nfe - 1, min(trace.nfe, max_frames)).round().astype(int))
    start = len(frame_ids) // 3  # open mid-generation, where there is something to see
    first_id = int(frame_ids[start])

    def frame_data(i: int) -> list:
        data = _grid_data(trace, states, passes[i], i, active[i] if rows else None)
        return data + (_tree_data(trace.steps[i], passes[i]) if tree else [])

    first = [(go.Heatmap if d["type"] == "heatmap" else go.Scatter)(d) for d in frame_data(first_id)]
    _style_grid(first, domains[grid_col - 1], rows)
    for t in first[:3 + rows]:
        fig.add_trace(t, 1, grid_col)
    if tree:
        _style_tree(first[3 + rows:])
        for t in first[3 + rows:]:
            fig.add_trace(t, 1, grid_col + 1)
    offset = 1 if image is not None else 0
    ids = list(range(offset, offset + len(first)))
    fig.frames = [go.Frame(data=frame_data(int(i)), name=str(i), traces=ids) for i in frame_ids]
    _slider(fig, frame_ids, start)
    square_axes(fig, trace.grid_shape, grid_col)
    if rows:  # room right of the grid for the row marks
        fig.update_xaxes(range=[-0.5, trace.grid_shape[1] - 0.04], row=1, col=grid_col)  # no tick at w
    if tree:
        depth = max((int(n.depths.max()) for n in passes if len(n.depths)), default=1)
        slots = max((int(tree_layout(n)[1].max()) for n in passes if len(n.depths)), default=0)
        fig.update_xaxes(range=[-0.4, depth + 0.4], dtick=1 if depth <= 8 else (2 if depth <= 16 else 5),
                         tickangle=0, title_text="depth (0 = committed prefix)", row=1, col=grid_col + 1)
        fig.update_yaxes(range=[slots + 0.5, -0.5], visible=False, row=1, col=grid_col + 1)
        axis = grid_col + 1  # a white card behind the tree (the grid panel's grey shows its cell gaps)
        fig.add_shape(type="rect", xref=f"x{axis} domain", yref=f"y{axis} domain", x0=0, x1=1, y0=0, y1=1,
                      fillcolor="#FFFFFF", line_width=0, layer="below")
    set_domains(fig, domains)
    title = f"replay · {trace.nfe} forward passes"
    return finish(fig, title, height=560)


def _domains(with_image: bool, tree: bool) -> list[tuple[float, float]]:
    if with_image and tree:
        return [(0.0, 0.3), (0.36, 0.66), (0.8, 1.0)]
    if with_image:
        return [(0.0, 0.35), (0.5, 0.85)]
    if tree:
        return [(0.0, 0.55), (0.72, 1.0)]
    return [(0.0, 0.7)]


def _style_grid(data: list, domain: tuple[float, float], rows: bool) -> None:
    n_colours = len(_REPLAY_COLOURS)
    scale = []
    for i, c in enumerate(_REPLAY_COLOURS):
        scale += [[i / n_colours, c], [(i + 1) / n_colours, c]]
    data[0].update(colorscale=scale, zmin=-0.5, zmax=n_colours - 0.5, xgap=1, ygap=1, hoverinfo="skip",
                   colorbar=dict(tickvals=list(range(n_colours)), thickness=14, x=domain[1] + 0.02 + 0.02 * rows,
                                 outlinewidth=1, outlinecolor="#999999", len=0.8,
                                 ticktext=["not yet", "earlier"] + [KIND_LABELS[k] for k in COMMIT_KINDS]))
    data[1].update(mode="markers", name="verified draft", hoverinfo="skip",
                   marker=dict(symbol="square-open", size=16, color="#000000", line_width=2))
    data[2].update(mode="markers", name="rejected / discarded", hoverinfo="skip",
                   marker=dict(symbol="x-thin", size=12, color="#000000", line_width=2))
    if rows:
        data[3].update(mode="markers", name="row decoded in this pass", hoverinfo="skip",
                       marker=dict(symbol="triangle-left", size=10, color="#D55E00"))


def _style_tree(data: list) -> None:
    data[0].update(mode="lines", line=dict(color=REJECTED, width=1.5), hoverinfo="skip", showlegend=False)
    data[1].update(mode="lines", line=dict(color=KIND_COLOURS["draft"], width=4), name="accepted path")
    data[2].update(mode="markers", marker_size=12, marker_line_width=1, marker_line_color="#FFFFFF",
                   hovertemplate="%{text}<extra></extra>", showlegend=False)


def _slider(fig: go.Figure, frame_ids: np.ndarray, start: int) -> None:
    steps = [dict(method="animate", label=str(i), args=[[str(i)], dict(mode="immediate", frame=dict(duration=0),
                                                                      transition=dict(duration=0))])
             for i in frame_ids]
    # tick labels hidden (one per pass would overlap); the current pass is printed above the slider
    current = dict(prefix="forward pass ", font=dict(size=15, color="#222222"))
    fig.update_layout(sliders=[dict(active=start, steps=steps, currentvalue=current,
                                    pad=dict(t=50), font=dict(color="rgba(0,0,0,0)"), x=0.08, len=0.92)],
                      legend=dict(orientation="h", x=0.32, y=1.2), plot_bgcolor="#BDBDBD",
                      updatemenus=[dict(type="buttons", showactive=False, x=0, y=-0.3, xanchor="left",
                                        buttons=[dict(label="▶ play", method="animate",
                                                      args=[None, dict(frame=dict(duration=120), fromcurrent=True)])])])
