"""Text from a trace made safe for the page: an uploaded trace is untrusted (`<img src=...>` in its
class name was fetched by the viewer's browser), so its names are reduced to plain text on entry and
every trace field shown in Markdown is escaped again."""
from __future__ import annotations

import dataclasses
import html
import re

import numpy as np

from analysis.definitions import define
from analysis.steps import acceptance_rate
from decoding.trace import Trace

_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")
_PLAIN_EXTRA = set(" -_.,:;/+=%'")


def escape_md(value) -> str:
    """Any value as inert Markdown/HTML text (no tags, links or formatting)."""
    return _MARKDOWN.sub(r"\\\1", html.escape(str(value), quote=True))


def plain_text(value: str, limit: int = 200) -> str:
    """Letters, digits, spaces and a little punctuation; anything else becomes '?'. No <, >, &, [, ( ..."""
    text = str(value)[:limit]
    return "".join(c if c.isalnum() or c in _PLAIN_EXTRA else "?" for c in text)


def _plain_setting(value):
    return plain_text(value) if isinstance(value, str) else value


def sanitized_trace(trace: Trace) -> Trace:
    """A copy of an untrusted trace whose names and settings are plain text (figures and cards show them)."""
    settings = {plain_text(k, 60): _plain_setting(v) for k, v in trace.settings.items()}
    return dataclasses.replace(trace, model=plain_text(trace.model), decoder=plain_text(trace.decoder),
                               class_name=plain_text(trace.class_name), settings=settings)


def stats_card(trace: Trace, note: str = "") -> str:
    """The Markdown numbers card of one trace."""
    rate = acceptance_rate([trace])
    counts = trace.kind_counts()
    rate_text = "no drafts" if np.isnan(rate) else f"{rate:.1%}"
    rows = [("NFE (forward passes)", f"**{trace.nfe}**"), ("step compression", f"**{trace.step_compression:.2f}**"),
            ("mean accepted length", f"{trace.mean_accepted_length:.2f}"),
            ("accepted drafts / pass", f"{trace.mean_accepted_drafts:.2f}"), ("acceptance rate", rate_text),
            ("committed", f"{counts['draft']} draft · {counts['relaxed']} relaxed · {counts['resampled']} resampled · "
                          f"{counts['bonus']} bonus"),
            ("wall time (this CPU)", f"{trace.total_s * 1000:.0f} ms = model {trace.forward_s * 1000:.0f} + overhead "
                                     f"{trace.overhead_s * 1000:.0f} + VQ decode {trace.vq_decode_s * 1000:.0f}")]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    defs = define("nfe", "step_compression", "mean_accepted_length", "acceptance_rate", "wall_time")
    title = f"### {escape_md(trace.decoder)} · {escape_md(trace.class_name)} · seed {int(trace.seed)}"
    note = f"\n\n{note}" if note else ""
    return f"{title}{note}\n\n| quantity | value |\n|---|---|\n{table}\n\n<small>\n\n{defs}\n\n</small>"
