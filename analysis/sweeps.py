"""Sweeps: acceptance, step compression and quality against a decoder's hyperparameters.

The input is an iterable of `SweepSample`s (a setting, the trace of one image, the class it was
generated for and the class a classifier predicts for it); running the decoders is the caller's
job (`decoding.sweep.run_sweep`). Quality is class consistency under the shipped Fashion-MNIST
classifier; the distribution metrics (FD in SpecLens-classifier space, KID, ...) come from
`decoding.quality`, whose frontier `frontier_png` draws. When the samples hold `ar` images (setting
{"decoder": "ar"}), the table puts that row first and gives every row its speedup over it.
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # noqa: E402 - headless; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from plotly.subplots import make_subplots  # noqa: E402

from analysis.steps import acceptance_rate  # noqa: E402
from analysis.style import decoder_colour, decoder_marker, finish  # noqa: E402
from decoding.trace import Trace  # noqa: E402

BASELINE = "ar"
METRIC_COLUMNS = {"images", "acceptance rate", "step compression", "mean NFE", "decode s / image", "speedup vs ar",
                  "class consistency"}


@dataclass
class SweepSample:
    setting: dict  # e.g. {"decoder": "lantern", "delta": 0.1}
    trace: Trace
    label: int
    predicted: int | None = None  # None when no classifier is available


def setting_key(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True, default=str)


def setting_label(setting: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items())


def _setting_of(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in METRIC_COLUMNS}


def is_baseline(setting: dict) -> bool:
    return setting.get("decoder") == BASELINE and all(v is None for k, v in setting.items() if k != "decoder")


def sweep_table(samples: Iterable[SweepSample]) -> list[dict]:
    """One row per setting (in first-seen order, the `ar` baseline first), means over its images;
    "speedup vs ar" = ar's mean decode s / the row's (None without ar images)."""
    groups: dict[str, list[SweepSample]] = {}
    for s in samples:
        groups.setdefault(setting_key(s.setting), []).append(s)
    rows = []
    for group in groups.values():
        traces = [s.trace for s in group]
        predicted = [s for s in group if s.predicted is not None]
        rate = acceptance_rate(traces)
        rows.append({**group[0].setting, "images": len(group),
                     "acceptance rate": None if np.isnan(rate) else round(rate, 3),
                     "step compression": round(float(np.mean([t.step_compression for t in traces])), 3),
                     "mean NFE": round(float(np.mean([t.nfe for t in traces])), 1),
                     "decode s / image": round(float(np.mean([t.decode_s for t in traces])), 4),
                     "speedup vs ar": None,
                     "class consistency": round(float(np.mean([s.predicted == s.label for s in predicted])), 3)
                     if predicted else None})
    base = [r for r in rows if is_baseline(_setting_of(r))]
    if base:
        rows = base + [r for r in rows if r is not base[0]]
        for r in rows:
            r["speedup vs ar"] = round(base[0]["decode s / image"] / max(r["decode s / image"], 1e-12), 3)
    return rows


def _series(rows: Sequence[dict], parameter: str) -> dict[str, list[dict]]:
    """Rows split by every setting column except the swept parameter (e.g. one curve per decoder)."""
    series: dict[str, list[dict]] = {}
    for r in rows:
        rest = {k: v for k, v in r.items() if k not in METRIC_COLUMNS and k != parameter}
        series.setdefault(setting_label(rest) or "all", []).append(r)
    return series


def sweep_curves(rows: Sequence[dict], parameter: str) -> go.Figure:
    """Acceptance rate, step compression and class consistency against the swept parameter."""
    metrics = ("acceptance rate", "step compression", "class consistency")
    fig = make_subplots(1, 3, subplot_titles=metrics, horizontal_spacing=0.09)
    for i, (name, rs) in enumerate(_series(rows, parameter).items()):
        rs = [r for r in rs if r.get(parameter) is not None]
        try:
            rs = sorted(rs, key=lambda r: float(r[parameter]))
        except (TypeError, ValueError):
            pass  # categorical parameter: keep the given order
        x = [r[parameter] for r in rs]
        for j, m in enumerate(metrics):
            y = [r[m] for r in rs]
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name, legendgroup=name, showlegend=j == 0,
                                     line_color=decoder_colour(i), customdata=[r["images"] for r in rs],
                                     hovertemplate=f"{parameter}=%{{x}}<br>{m} %{{y}}<br>%{{customdata}} images"
                                                   f"<extra>{name}</extra>"), 1, j + 1)
    for j in range(3):
        fig.update_xaxes(title_text=parameter, row=1, col=j + 1)
    base = next((r for r in rows if is_baseline(_setting_of(r))), None)
    for j, m in enumerate(metrics):
        if base is not None and base.get(m) is not None:  # ar is one value, not a curve: a dashed level
            fig.add_hline(y=base[m], line_dash="dash", line_color="#777777", annotation_text="ar",
                          annotation_position="top left", row=1, col=j + 1)
    fig.update_yaxes(range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(range=[0, 1.05], row=1, col=3)
    fig = finish(fig, f"sweep over {parameter}", height=440)
    # legend below the axis titles, with the bottom margin to hold both (they were cut off)
    fig.update_layout(legend=dict(orientation="h", y=-0.3, yanchor="top", x=0), margin=dict(b=120))
    return fig


def speed_quality_figure(rows: Sequence[dict], parameter: str | None = None) -> go.Figure:
    """One point per setting: step compression (speed) against class consistency (quality)."""
    fig = go.Figure()
    for i, (name, rs) in enumerate(_series(rows, parameter or "").items()):
        text = [BASELINE if is_baseline(_setting_of(r)) else f"{parameter}={r.get(parameter)}" if parameter else ""
                for r in rs]
        fig.add_trace(go.Scatter(x=[r["step compression"] for r in rs], y=[r["class consistency"] for r in rs],
                                 mode="markers+text", text=text, textposition="top center", name=name,
                                 marker=dict(size=12, color=decoder_colour(i)), cliponaxis=False,
                                 hovertemplate="%{text}<br>step compression %{x}<br>class consistency %{y}"
                                               f"<extra>{name}</extra>"))
    fig.update_xaxes(title_text="step compression (tokens / forward pass) →  faster")
    fig.update_yaxes(title_text="class consistency →  better", range=[0, 1.12])
    fig = finish(fig, "speed against quality, one point per setting", height=460)
    fig.update_layout(legend=dict(orientation="h", y=-0.2, yanchor="top", x=0), margin=dict(b=110, r=40))
    return fig


_TEXT_POSITIONS = ("top right", "bottom right", "top left", "bottom left", "middle right", "middle left",
                   "top center", "bottom center")


def text_positions(points: Sequence[dict], width: float = 900.0, height: float = 300.0,
                   char_px: float = 7.5, line_px: float = 16.0) -> list[str]:
    """Plotly text positions for the point labels, greedy as `place_labels` but on an estimated canvas
    (plotly lays text out in the browser): each label where its box overlaps no earlier label and no marker."""
    if not points:
        return []
    xs, ys = np.array([p["x"] for p in points], float), np.array([p["y"] for p in points], float)
    lo = min(min(p.get("y_lo", p["y"]) for p in points), ys.min())  # the axis spans the intervals too
    hi = max(max(p.get("y_hi", p["y"]) for p in points), ys.max())
    px = (xs - xs.min()) / ((xs.max() - xs.min()) or 1.0) * width * 0.8 + width * 0.1  # plotly pads the ranges
    py = (ys - lo) / ((hi - lo) or 1.0) * height * 0.9 + height * 0.05
    boxes: list[tuple[float, float, float, float]] = []
    out = []

    def box(i: int, pos: str) -> tuple[float, float, float, float]:
        w, vert, horiz = char_px * len(points[i]["name"]), *pos.split()
        x0 = px[i] + 6 if horiz == "right" else px[i] - 6 - w if horiz == "left" else px[i] - w / 2
        y0 = py[i] + 6 if vert == "top" else py[i] - 6 - line_px if vert == "bottom" else py[i] - line_px / 2
        return (x0, y0, x0 + w, y0 + line_px)

    def overlap(a, b) -> bool:
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    for i in range(len(points)):
        scored = []
        for pos in _TEXT_POSITIONS:
            b = box(i, pos)
            # a hidden name counts twice a hidden marker
            hits = 2 * sum(overlap(b, o) for o in boxes) + sum(
                b[0] - 4 <= px[j] <= b[2] + 4 and b[1] - 4 <= py[j] <= b[3] + 4 for j in range(len(points)) if j != i)
            hits += 0 if (0 <= b[0] and b[2] <= width) else 3
            scored.append((hits, pos, b))
            if hits == 0:
                break
        hits, pos, b = min(scored, key=lambda t: t[0])
        boxes.append(b)
        out.append(pos)
    return out


def frontier_figure(points: Sequence[dict], y_label: str, title: str, floor: tuple[float, float] | None = None,
                    lower_is_better: bool = True) -> go.Figure:
    """The interactive twin of `frontier_png`: step compression against a quality metric, one point per
    decoder/setting with its interval, the ar-vs-ar noise floor's interval as a band behind them.

    points: dicts with "name", "x", "y", optional "y_lo", "y_hi"; floor: (low, high) or None."""
    fig = go.Figure()
    if floor is not None and all(np.isfinite(floor)):
        fig.add_hrect(y0=floor[0], y1=floor[1], fillcolor="#BBBBBB", opacity=0.35, line_width=0, layer="below")
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="ar vs ar (other seeds), 95%",
                                 marker=dict(size=12, color="#BBBBBB", symbol="square")))
    many = len(points) > 8
    positions = text_positions(points, height=280 if many else 300)
    for i, p in enumerate(points):
        lo, hi = p.get("y_lo", p["y"]), p.get("y_hi", p["y"])
        fig.add_trace(go.Scatter(
            x=[p["x"]], y=[p["y"]], mode="markers+text", text=[p["name"]],
            textposition=positions[i],
            name=p["name"], marker=dict(size=11, color=decoder_colour(i), symbol=decoder_marker(i, plotly=True)),
            cliponaxis=False,
            error_y=dict(type="data", symmetric=False, array=[max(hi - p["y"], 0.0)],
                         arrayminus=[max(p["y"] - lo, 0.0)], color=decoder_colour(i), thickness=1.5, width=5),
            hovertemplate=f"{p['name']}<br>step compression %{{x:.2f}}<br>{y_label} %{{y:.2f}} "
                          f"[{lo:.2f}, {hi:.2f}]<extra></extra>"))
    fig.update_xaxes(title_text="step compression (tokens / forward pass) →  faster")
    # on two lines: one would outgrow the plot's height and run into the title
    fig.update_yaxes(title_text=y_label + ("<br>(lower is better)" if lower_is_better else "<br>(higher is better)"))
    fig = finish(fig, title, height=600 if many else 500)
    fig.update_layout(legend=dict(orientation="h", y=-0.2, yanchor="top", x=0), margin=dict(b=120, r=30))
    return fig


# -- static frontier (PNG) ------------------------------------------------------------------------------
def wilson_interval(hits: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion hits / n (Wilson 1927)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(centre - half), float(centre + half))


# label offsets in points, tried in this order: right, above, below, left, then the diagonals further out
_LABEL_OFFSETS = ((6, 5), (6, -13), (-6, 5), (-6, -13), (0, 10), (0, -18), (14, 14), (14, -22), (-14, 14),
                  (-14, -22), (6, 22), (6, -30), (-6, 22), (-6, -30), (20, 34), (20, -42), (-20, 34), (-20, -42),
                  (0, 46), (0, -54), (30, 52), (30, -60), (-30, 52), (-30, -60))  # the far rings: dense clusters


def _text_box(annotation, renderer):
    """The name's own box in pixels, without its leader line (an annotation's extent spans the line too, which
    made every far place look taken)."""
    from matplotlib.text import Text

    annotation.update_positions(renderer)
    return Text.get_window_extent(annotation, renderer)


def place_labels(fig, ax, points: Sequence[dict], fontsize: int = 9) -> None:
    """Names beside the points, each where it overlaps no earlier label and no marker and stays inside
    the axes (greedy over `_LABEL_OFFSETS`); a label with no free place takes the least-bad one."""
    fig.canvas.draw()  # fixes the axes' limits and the transform
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    markers = [to_px((p["x"], p["y"])) for p in points]
    boxes: list = []
    for i, p in enumerate(points):
        best = None
        for dx, dy in _LABEL_OFFSETS:
            ha = "right" if dx < 0 else "center" if dx == 0 else "left"
            far = abs(dx) > 6 or dy > 5 or dy < -13  # past the first ring: a thin line leads to the point
            text = ax.annotate(p["name"], (p["x"], p["y"]), xytext=(dx, dy), textcoords="offset points",
                               fontsize=fontsize, ha=ha,
                               arrowprops=dict(arrowstyle="-", lw=0.6, color="0.45", shrinkA=1, shrinkB=4)
                               if far else None)
            box = _text_box(text, renderer).expanded(1.05, 1.15)
            inside = ax.bbox.x0 <= box.x0 and box.x1 <= ax.bbox.x1 and ax.bbox.y0 <= box.y0 and box.y1 <= ax.bbox.y1
            hits = 2 * sum(box.overlaps(b) for b in boxes) + (0 if inside else 3)
            hits += sum(box.x0 - 4 <= mx <= box.x1 + 4 and box.y0 - 4 <= my <= box.y1 + 4
                        for j, (mx, my) in enumerate(markers) if j != i)
            if best is None or hits < best[0]:
                if best is not None:
                    best[1].remove()
                best = (hits, text, box)
            else:
                text.remove()
            if hits == 0:
                break
        boxes.append(best[2])


def frontier_png(points: Sequence[dict], y_label: str, title: str, floor: tuple[float, float] | None = None,
                 lower_is_better: bool = True, dpi: int = 110) -> bytes:
    """Speed against quality, one point per decoder/setting with its interval, as PNG bytes.

    points: dicts with "name", "x" (step compression), "y", and optional "y_lo", "y_hi";
    floor: the (low, high) band of the ar-vs-ar noise floor, drawn behind the points."""
    fig = frontier_matplotlib(points, y_label, title, floor, lower_is_better)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def frontier_matplotlib(points: Sequence[dict], y_label: str, title: str, floor: tuple[float, float] | None = None,
                    lower_is_better: bool = True):
    """The matplotlib figure `frontier_png` saves (`frontier_figure` is the app's plotly one)."""
    many = len(points) > 8  # then the legend goes beside the axes, where it hides no point
    fig, ax = plt.subplots(figsize=(10.5, 5.5) if many else (7.5, 5.0), constrained_layout=True)
    if floor is not None and all(np.isfinite(floor)):
        ax.axhspan(floor[0], floor[1], color="#BBBBBB", alpha=0.35, lw=0, label="ar vs ar (other seeds), 95%")
    for i, p in enumerate(points):
        y, lo, hi = p["y"], p.get("y_lo", p["y"]), p.get("y_hi", p["y"])
        err = [[max(y - lo, 0.0)], [max(hi - y, 0.0)]]
        ax.errorbar([p["x"]], [y], yerr=err, fmt=decoder_marker(i), ms=7, capsize=4, color=decoder_colour(i),
                    label=p["name"])
    ax.margins(x=0.15, y=0.15)  # room for the point labels inside the axes
    ax.set_xlabel("step compression (tokens / forward pass)  →  faster")
    ax.set_ylabel(y_label + ("  (lower is better)" if lower_is_better else "  (higher is better)"))
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
    else:
        ax.legend(fontsize=8, loc="best", framealpha=0.9)
    place_labels(fig, ax, points)  # last: the layout (legend, titles) fixes where the axes sit
    return fig


def sweep_frontier_png(rows: Sequence[dict], parameter: str) -> bytes:
    """The sweep's frontier: step compression against class consistency (Wilson 95% intervals);
    without a classifier, against the speedup over ar."""
    with_quality = [r for r in rows if r.get("class consistency") is not None]
    points = []
    for r in rows:
        name = BASELINE if is_baseline(_setting_of(r)) else f"{parameter}={r.get(parameter)}"
        if with_quality:
            lo, hi = wilson_interval(r["class consistency"] * r["images"], r["images"])
            points.append({"name": name, "x": r["step compression"], "y": r["class consistency"],
                           "y_lo": lo, "y_hi": hi})
        else:
            points.append({"name": name, "x": r["step compression"], "y": r["speedup vs ar"] or 1.0})
    label = "class consistency" if with_quality else "speedup vs ar (wall clock)"
    return frontier_png(points, label, f"sweep over {parameter}: speed against quality", lower_is_better=False)
