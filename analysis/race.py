"""Equal forward passes: decoders side by side, each advanced by the same number of target forward passes.

For the app (Compare tab): `race_figure({name: trace}, patch)` with one trace per decoder (same token grid),
and `patch(code) -> uint8 image [h, w, 3]` of one code (e.g. the VQ decoder's look of that code, as the
Codebook gallery shows it), or `patch=None` for a token-grid heatmap (colour = token id). A slider picks k =
the number of forward passes done; every panel shows its trace after k passes: committed positions drawn,
uncommitted ones blank (light grey), drafts waiting for the next pass's verification outlined. A decoder
that finished before k shows its final state. `patch` is called once per distinct code per figure: give
a cheap one (decoded looks computed once and cached; decoding a whole grid per code costs ~1 s on CPU).

Traces only: the picture is assembled from per-position tokens, patch by patch, so it shows where and how
fast each decoder fills the grid, not the VQ decoder's exact output for a partial grid.
"""
from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Mapping

import numpy as np
import plotly.graph_objects as go
from matplotlib import colormaps
from PIL import Image
from plotly.subplots import make_subplots

from analysis.heatmaps import square_axes
from analysis.style import finish
from decoding.trace import Trace

BLANK, COMMITTED, DRAFTED = 0, 1, 2
BLANK_GREY = 232  # not committed yet
MAX_DECODERS = 8
MAX_FRAMES = 400
Patch = Callable[[int], np.ndarray]


def race_states(trace: Trace, passes: int) -> np.ndarray:
    """[N] state of each position after `passes` forward passes (0 <= passes): COMMITTED if a pass among
    the first `passes` committed it, DRAFTED if not yet and the next pass verifies a draft there, else BLANK."""
    if passes < 0:
        raise ValueError(f"passes must be >= 0, got {passes}")
    states = np.where(np.asarray(trace.commit_step) < passes, COMMITTED, BLANK)
    if passes < trace.nfe:
        waiting = np.asarray(trace.steps[passes].positions, dtype=np.int64)
        waiting = waiting[states[waiting] == BLANK]
        states[waiting] = DRAFTED
    return states


def frame_passes(traces: Mapping[str, Trace], max_frames: int = 120) -> np.ndarray:
    """The slider's values: 1 .. the largest NFE, at most `max_frames` of them, evenly spread, ends kept."""
    if not 2 <= max_frames <= MAX_FRAMES:
        raise ValueError(f"max_frames must be in [2, {MAX_FRAMES}], got {max_frames}")
    last = max(t.nfe for t in traces.values())
    return np.unique(np.linspace(1, last, min(last, max_frames)).round().astype(int))


def _check(traces: Mapping[str, Trace]) -> tuple[int, int]:
    if not 1 <= len(traces) <= MAX_DECODERS:
        raise ValueError(f"the race shows 1 to {MAX_DECODERS} decoders, got {len(traces)}")
    grids = {t.grid_shape for t in traces.values()}
    if len(grids) != 1:
        raise ValueError(f"the traces have different token grids {sorted(grids)}: race decoders of one model")
    return grids.pop()


class PatchCache:
    """patch(code), called once per code and checked: every patch the same [h, w, 3] uint8 shape."""

    def __init__(self, patch: Patch):
        self.patch, self.cache, self.shape = patch, {}, None

    def __call__(self, code: int) -> np.ndarray:
        if code not in self.cache:
            im = np.asarray(self.patch(code))
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8 or (self.shape and im.shape != self.shape):
                raise ValueError(f"patch({code}) must be a uint8 image [h, w, 3] like the others, got {im.dtype} "
                                 f"{im.shape}")
            self.shape = im.shape
            self.cache[code] = im
        return self.cache[code]


def token_colours(vocab_size: int) -> np.ndarray:
    """[V, 3] uint8: token id -> a colour of the Turbo scale (neighbouring ids get neighbouring colours)."""
    return (colormaps["turbo"](np.linspace(0.0, 1.0, vocab_size))[:, :3] * 255).astype(np.uint8)


class TokenColourPatch:
    """The heatmap view's 'patch': a flat block of the token's colour with a one-pixel white gap."""

    def __init__(self, vocab_size: int, cell: int = 8):
        self.colours, self.cell = token_colours(vocab_size), cell

    def __call__(self, code: int) -> np.ndarray:
        block = np.full((self.cell, self.cell, 3), 255, dtype=np.uint8)
        block[:-1, :-1] = self.colours[code]
        return block


def race_image(trace: Trace, states: np.ndarray, patch: Callable[[int], np.ndarray]) -> np.ndarray:
    """[H*h, W*w, 3]: committed positions as their code's patch, the rest blank (light grey)."""
    gh, gw = trace.grid_shape
    ph, pw, _ = patch(trace.tokens[0]).shape
    out = np.full((gh * ph, gw * pw, 3), BLANK_GREY, dtype=np.uint8)
    for pos in np.flatnonzero(states == COMMITTED).tolist():
        r, c = divmod(pos, gw)
        out[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = patch(trace.tokens[pos])
    return out


def _png_uri(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)  # fast; flat cells compress well anyway
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _panel(trace: Trace, states: np.ndarray, patch: Callable[[int], np.ndarray]) -> list:
    """The two traces of one panel after some passes: the picture (a PNG: a few hundred frames of plotly
    arrays took seconds to build) and the outlines of the drafts waiting for verification."""
    gh, gw = trace.grid_shape
    image = race_image(trace, states, patch)
    picture = dict(type="image", source=_png_uri(image), dx=gw / image.shape[1], dy=gh / image.shape[0],
                   x0=-0.5 + gw / image.shape[1] / 2, y0=-0.5 + gh / image.shape[0] / 2)
    rows, cols = np.divmod(np.flatnonzero(states == DRAFTED), gw)
    return [picture, dict(type="scatter", x=cols.tolist(), y=rows.tolist())]  # plain dicts: validated once


def _titles(traces: Mapping[str, Trace], passes: int) -> list[str]:
    out = []
    for name, t in traces.items():
        done = int((np.asarray(t.commit_step) < passes).sum())
        end = f"done at pass {t.nfe}" if passes >= t.nfe else f"{done}/{t.num_tokens} tokens"
        out.append(f"{html.escape(name)} · {end}")
    return out


def race_figure(traces: Mapping[str, Trace], patch: Patch | None = None, max_frames: int = 60) -> go.Figure:
    """Panels side by side, one per decoder, and a slider over k = forward passes done (module docstring)."""
    grid = _check(traces)
    vocab = max(t.vocab_size for t in traces.values())
    cache = PatchCache(patch if patch is not None else TokenColourPatch(vocab))
    names = list(traces)
    ks = frame_passes(traces, max_frames)
    start = int(ks[len(ks) // 3])
    fig = make_subplots(1, len(names), subplot_titles=_titles(traces, start), horizontal_spacing=0.03)
    for i, name in enumerate(names):
        picture, outline = _panel(traces[name], race_states(traces[name], start), cache)
        picture, outline = go.Image(picture, hoverinfo="skip"), go.Scatter(outline)
        outline.update(mode="markers", name="draft awaiting verification", showlegend=i == 0, hoverinfo="skip",
                       marker=dict(symbol="square-open", size=max(6, 180 // grid[1]), color="#D55E00",
                                   line_width=2))
        fig.add_trace(picture, 1, i + 1)
        fig.add_trace(outline, 1, i + 1)
    fig.frames = [_frame(traces, int(k), cache) for k in ks]
    steps = [dict(method="animate", label=str(k), args=[[str(k)], dict(mode="immediate", frame=dict(duration=0),
                                                                      transition=dict(duration=0))]) for k in ks]
    current = dict(prefix="forward passes done: ", font=dict(size=15, color="#222222"))
    fig.update_layout(sliders=[dict(active=len(ks) // 3, steps=steps, currentvalue=current, pad=dict(t=40),
                                    font=dict(color="rgba(0,0,0,0)"), x=0.08, len=0.92)],
                      legend=dict(orientation="h", x=0, y=1.14), plot_bgcolor="#FFFFFF",
                      updatemenus=[dict(type="buttons", showactive=False, x=0, y=-0.22, xanchor="left",
                                        buttons=[dict(label="▶ play", method="animate",
                                                      args=[None, dict(frame=dict(duration=120), fromcurrent=True)])])])
    square_axes(fig, grid, len(names))
    fig.update_xaxes(title_text=None, showticklabels=False)
    fig.update_yaxes(title_text=None, showticklabels=False)
    title = "equal forward passes: " + ("each code drawn as its patch" if patch else "token grid (colour = token id)")
    return finish(fig, title, height=300 + 40 * max(1, 4 - len(names)) * 2)


def _frame(traces: Mapping[str, Trace], k: int, cache: PatchCache) -> go.Frame:
    data = [d for t in traces.values() for d in _panel(t, race_states(t, k), cache)]
    annotations = [dict(text=text) for text in _titles(traces, k)]
    return go.Frame(data=data, name=str(k), traces=list(range(len(data))), layout=dict(annotations=annotations))
