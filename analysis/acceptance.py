"""Acceptance length per forward pass: how many tokens each pass committed, one histogram per decoder.

For the app (Compare tab): `acceptance_histograms({name: traces})` is the figure, `acceptance_table({name:
traces})` its numbers (rows of dicts with the keys `TABLE_COLUMNS`, in that order; build the table with
`pd.DataFrame(rows, columns=TABLE_COLUMNS)` so an empty one still has its headers).

Tokens committed by a pass include the resampled/bonus token (the README's "accepted length"), and every
pass counts, the condition prefill included: the mean is the mean accepted length (= step compression). A
decoder whose passes mostly commit one token is barely faster than AR: SJD-PAC reports that about half of
SJD's forward passes accept a single token, read off the first bar here.
"""
from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.style import decoder_colour, empty_figure, finish
from decoding.trace import Trace

TABLE_COLUMNS = ("decoder", "images", "forward passes", "mean tokens per pass", "passes committing 1 token",
                 "longest")
MAX_DECODERS = 8


@dataclass
class LengthHistogram:
    """Forward passes by the number of tokens they committed, pooled over traces."""

    lengths: np.ndarray  # [K] 1..max committed by one pass (0 would be a pass that committed nothing)
    counts: np.ndarray  # [K] passes that committed lengths[k] tokens

    @property
    def passes(self) -> int:
        return int(self.counts.sum())

    @property
    def shares(self) -> np.ndarray:
        return self.counts / max(self.passes, 1)

    @property
    def mean(self) -> float:
        return float((self.lengths * self.counts).sum() / self.passes) if self.passes else float("nan")

    def share_of(self, length: int) -> float:
        hit = self.counts[self.lengths == length]
        return float(hit.sum() / self.passes) if self.passes else float("nan")


def length_histogram(traces: Sequence[Trace]) -> LengthHistogram:
    """Counts of tokens committed per pass over every pass of `traces` (lengths from 0 or 1 up to the max)."""
    lengths = np.array([len(s.committed_positions) for t in traces for s in t.steps], dtype=np.int64)
    if not lengths.size:
        return LengthHistogram(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    low = 0 if (lengths == 0).any() else 1
    counts = np.bincount(lengths, minlength=lengths.max() + 1)[low:]
    return LengthHistogram(np.arange(low, lengths.max() + 1), counts)


def _check(traces_by_name: Mapping[str, Sequence[Trace]]) -> None:
    if len(traces_by_name) > MAX_DECODERS:
        raise ValueError(f"at most {MAX_DECODERS} decoders side by side, got {len(traces_by_name)}")


def acceptance_table(traces_by_name: Mapping[str, Sequence[Trace]]) -> list[dict]:
    """One row per decoder (keys TABLE_COLUMNS); decoders without traces are left out."""
    _check(traces_by_name)
    rows = []
    for name, traces in traces_by_name.items():
        hist = length_histogram(traces)
        if not hist.passes:
            continue
        rows.append(dict(zip(TABLE_COLUMNS, (name, len(traces), hist.passes, round(hist.mean, 3),
                                             round(hist.share_of(1), 3), int(hist.lengths.max())))))
    return rows


def acceptance_histograms(traces_by_name: Mapping[str, Sequence[Trace]]) -> go.Figure:
    """One histogram per decoder, stacked with a shared x axis: share of forward passes that committed k
    tokens, the mean marked by a dashed line, the share of one-token passes written on its bar."""
    _check(traces_by_name)
    hists = {name: length_histogram(traces) for name, traces in traces_by_name.items()}
    hists = {name: h for name, h in hists.items() if h.passes}
    if not hists:
        return empty_figure("no traces yet")
    fig = make_subplots(len(hists), 1, shared_xaxes=True, vertical_spacing=min(0.3, 0.32 / len(hists)),
                        subplot_titles=[_title(name, h) for name, h in hists.items()])
    top = max(float(h.shares.max()) for h in hists.values())
    for i, (name, h) in enumerate(hists.items()):
        colour = decoder_colour(list(traces_by_name).index(name))
        text = [f"{s:.0%}" if k == 1 else "" for k, s in zip(h.lengths, h.shares)]
        fig.add_trace(go.Bar(x=h.lengths, y=h.shares, marker_color=colour, name=name, showlegend=False, text=text,
                             textposition="outside", cliponaxis=False, customdata=h.counts,
                             hovertemplate="%{customdata} passes (%{y:.1%}) committed %{x} token(s)<extra>"
                                           + html.escape(name) + "</extra>"), i + 1, 1)
        fig.add_vline(x=h.mean, line_dash="dash", line_color="#222222", row=i + 1, col=1)
        fig.update_yaxes(range=[0, top * 1.25], tickformat=".0%", row=i + 1, col=1)
    fig.update_yaxes(title_text="share of passes", row=(len(hists) + 1) // 2, col=1)
    fig.update_xaxes(title_text="tokens committed in one forward pass (dashed: mean)", dtick=1, row=len(hists),
                     col=1)
    fig.update_layout(bargap=0.15)
    return finish(fig, "accepted length per forward pass", height=140 + 150 * len(hists))


def _title(name: str, h: LengthHistogram) -> str:
    return (f"{html.escape(name)}: mean {h.mean:.2f} tokens per pass over {h.passes} passes · "
            f"{h.share_of(1):.0%} commit one token")
