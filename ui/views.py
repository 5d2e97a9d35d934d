"""The one list of figures drawn from a trace (Generate tab) and from several (Compare tab).

Each entry names its output, the section it sits in and the definitions under it; `app.py` builds
one plot per entry and every handler returns `draw_trace_views(...)` in this order, so adding a view
is one line here.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from analysis import acceptance, ambiguity, compare, drafter, heatmaps, race, replay, steps, structure
from analysis.style import empty_figure
from decoding.trace import Trace


@dataclass(frozen=True)
class View:
    name: str
    label: str
    section: str  # accordion title ("" = directly on the page)
    # Generate: (trace, image, map_view, overlay) -> figure; Compare: (traces, images, runs) -> figure, with
    # traces/images the first seed's run of each decoder and runs = {decoder: every seed's trace}
    draw: Callable
    definitions: tuple[str, ...] = ()
    open: bool = True


TRACE_VIEWS: list[View] = [
    View("maps", "acceptance on the token grid", "",
         lambda t, im, view, overlay: heatmaps.acceptance_maps(t, im, ("kind", view), overlay=overlay)),
    View("lengths", "accepted length", "per forward pass", lambda t, im, view, overlay: steps.accepted_length_figure(t),
         ("mean_accepted_length", "mean_accepted_drafts")),
    View("depth", "acceptance by depth", "per forward pass",
         lambda t, im, view, overlay: steps.depth_figure({t.decoder: [t]}), ("acceptance_by_depth",)),
    View("rows", "rows per forward pass", "rows per forward pass (ZipAR, PJD)",
         lambda t, im, view, overlay: steps.rows_figure(t) if structure.is_multi_row(t)
         else empty_figure("one row at a time: this decoder works along the raster order"), (), False),
    View("replay", "replay", "replay", lambda t, im, view, overlay: replay.replay_figure(t, im), ("replay",), False),
    View("drafter", "drafter quality", "drafter", lambda t, im, view, overlay: drafter.drafter_figure([t]), (), False),
    View("ambiguity", "ambiguity histograms", "ambiguity of the target",
         lambda t, im, view, overlay: ambiguity.ambiguity_histograms([t]), (), False),
    View("ambiguity_map", "ambiguity on the grid", "ambiguity of the target",
         lambda t, im, view, overlay: ambiguity.ambiguity_maps(t), ("top1", "entropy"), False),
]

COMPARE_VIEWS: list[View] = [
    View("images", "images", "", lambda ts, ims, runs: compare.compare_images_figure(ts, ims),
         ("nfe", "mean_accepted_length", "pixel_diff", "token_agreement")),
    View("speed", "speed", "", lambda ts, ims, runs: compare.speed_figure(ts), ("step_compression", "wall_time")),
    View("race", "equal forward passes", "",
         lambda ts, ims, runs: race.race_figure({compare.run_name(t): t for t in ts[:race.MAX_DECODERS]})),
    View("lengths", "accepted length per pass", "", lambda ts, ims, runs: acceptance.acceptance_histograms(runs),
         ("mean_accepted_length",)),
    View("depth", "acceptance by depth", "", lambda ts, ims, runs: steps.depth_figure(runs), ("acceptance_by_depth",)),
]


def draw_trace_views(trace: Trace, image: np.ndarray | None, map_view: str, overlay: bool) -> tuple:
    return tuple(v.draw(trace, image, map_view, overlay) for v in TRACE_VIEWS)


def draw_compare_views(traces: Sequence[Trace], images: Sequence[np.ndarray], runs: dict[str, list[Trace]]) -> tuple:
    return tuple(v.draw(traces, images, runs) for v in COMPARE_VIEWS)


def sections(views: Sequence[View]) -> dict[str, list[View]]:
    """Views grouped by section, in first-seen order."""
    out: dict[str, list[View]] = {}
    for v in views:
        out.setdefault(v.section, []).append(v)
    return out
