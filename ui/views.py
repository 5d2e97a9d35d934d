"""The one list of figures drawn from a trace (Generate tab) and from several (Compare tab).

Each entry names its output, the section it sits in and the definitions under it; `app.py` builds
one plot per entry and every handler returns `draw_trace_views(...)` in this order, so adding a view
is one line here.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from analysis import ambiguity, compare, heatmaps, steps
from decoding.trace import Trace


@dataclass(frozen=True)
class View:
    name: str
    label: str
    section: str  # accordion title ("" = directly on the page)
    draw: Callable  # Generate: (trace, image, map_view, overlay) -> figure; Compare: (traces, images) -> figure
    definitions: tuple[str, ...] = ()
    open: bool = True


TRACE_VIEWS: list[View] = [
    View("maps", "acceptance on the token grid", "",
         lambda t, im, view, overlay: heatmaps.acceptance_maps(t, im, ("kind", view), overlay=overlay)),
    View("lengths", "accepted length", "per forward pass", lambda t, im, view, overlay: steps.accepted_length_figure(t),
         ("mean_accepted_length", "mean_accepted_drafts")),
    View("depth", "acceptance by depth", "per forward pass",
         lambda t, im, view, overlay: steps.depth_figure({t.decoder: [t]}), ("acceptance_by_depth",)),
    View("replay", "replay", "replay", lambda t, im, view, overlay: steps.replay_figure(t, im), ("replay",), False),
    View("ambiguity", "ambiguity histograms", "ambiguity of the target",
         lambda t, im, view, overlay: ambiguity.ambiguity_histograms([t]), (), False),
    View("ambiguity_map", "ambiguity on the grid", "ambiguity of the target",
         lambda t, im, view, overlay: ambiguity.ambiguity_maps(t), ("top1", "entropy"), False),
]

COMPARE_VIEWS: list[View] = [
    View("images", "images", "", lambda ts, ims: compare.compare_images_figure(ts, ims),
         ("nfe", "mean_accepted_length", "pixel_diff", "token_agreement")),
    View("speed", "speed", "", lambda ts, ims: compare.speed_figure(ts), ("step_compression", "wall_time")),
    View("depth", "acceptance by depth", "", lambda ts, ims: steps.depth_figure(_by_decoder(ts)),
         ("acceptance_by_depth",)),
]


def _by_decoder(traces: Sequence[Trace]) -> dict[str, list[Trace]]:
    out: dict[str, list[Trace]] = {}
    for t in traces:
        out.setdefault(compare.run_name(t), []).append(t)
    return out


def draw_trace_views(trace: Trace, image: np.ndarray | None, map_view: str, overlay: bool) -> tuple:
    return tuple(v.draw(trace, image, map_view, overlay) for v in TRACE_VIEWS)


def draw_compare_views(traces: Sequence[Trace], images: Sequence[np.ndarray]) -> tuple:
    return tuple(v.draw(traces, images) for v in COMPARE_VIEWS)


def sections(views: Sequence[View]) -> dict[str, list[View]]:
    """Views grouped by section, in first-seen order."""
    out: dict[str, list[View]] = {}
    for v in views:
        out.setdefault(v.section, []).append(v)
    return out
