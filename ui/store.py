"""The server's traces, bounded: a few per session, a total count and size, idle sessions dropped.

Browser state holds nothing big: handlers look traces up by the session id Gradio gives each
browser tab / API client (`request.session_hash`). The oldest traces go first when a bound is hit.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from decoding.trace import Trace


def trace_weight(trace: Trace) -> int:
    """List entries a trace holds (per-position lists, per-step lists, group members): its memory, roughly."""
    steps = sum(len(s.positions) * 11 + len(s.committed_positions) * 3 + sum(map(len, s.group_members)) + 8
                for s in trace.steps)
    return 6 * trace.num_tokens + steps


@dataclass
class Entry:
    trace: Trace
    image: np.ndarray | None
    weight: int


class TraceStore:
    """Thread-safe LRU of (session, trace, image)."""

    def __init__(self, per_session: int, max_traces: int, max_weight: int, idle_s: float):
        for name, v in (("per_session", per_session), ("max_traces", max_traces), ("max_weight", max_weight)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"TraceStore {name} must be an integer >= 1, got {v!r}")
        if not idle_s > 0:
            raise ValueError(f"TraceStore idle_s must be > 0, got {idle_s!r}")
        self.per_session, self.max_traces, self.max_weight, self.idle_s = per_session, max_traces, max_weight, idle_s
        self._entries: OrderedDict[int, tuple[str, Entry]] = OrderedDict()  # oldest first
        self._sessions: dict[str, list[int]] = {}
        self._seen: dict[str, float] = {}
        self._weight = 0
        self._next = 0
        self._lock = threading.Lock()

    def add(self, session: str, trace: Trace, image: np.ndarray | None) -> None:
        entry = Entry(trace, image, trace_weight(trace))
        if entry.weight > self.max_weight:
            raise ValueError(f"this trace holds {entry.weight} entries; the server keeps at most {self.max_weight}")
        with self._lock:
            self._expire(time.monotonic())
            key, self._next = self._next, self._next + 1
            self._entries[key] = (session, entry)
            self._sessions.setdefault(session, []).append(key)
            self._weight += entry.weight
            self._touch(session)
            while len(self._sessions[session]) > self.per_session:
                self._remove(self._sessions[session][0])
            while len(self._entries) > self.max_traces or self._weight > self.max_weight:
                self._remove(next(iter(self._entries)))

    def last(self, session: str) -> tuple[Trace, np.ndarray | None] | None:
        with self._lock:
            keys = self._sessions.get(session)
            if not keys:
                return None
            self._touch(session)
            entry = self._entries[keys[-1]][1]
            return entry.trace, entry.image

    def traces(self, session: str) -> list[Trace]:
        with self._lock:
            if session in self._sessions:
                self._touch(session)
            return [self._entries[k][1].trace for k in self._sessions.get(session, [])]

    def drop(self, session: str) -> None:
        with self._lock:
            for key in list(self._sessions.get(session, [])):
                self._remove(key)
            self._seen.pop(session, None)

    def stats(self) -> dict:
        with self._lock:
            return {"sessions": len(self._sessions), "traces": len(self._entries), "weight": self._weight}

    # -- under the lock -----------------------------------------------------------------------
    def _touch(self, session: str) -> None:
        self._seen[session] = time.monotonic()

    def _remove(self, key: int) -> None:
        session, entry = self._entries.pop(key)
        self._weight -= entry.weight
        keys = self._sessions[session]
        keys.remove(key)
        if not keys:
            del self._sessions[session]

    def _expire(self, now: float) -> None:
        for session, seen in list(self._seen.items()):
            if now - seen > self.idle_s:
                for key in list(self._sessions.get(session, [])):
                    self._remove(key)
                del self._seen[session]
