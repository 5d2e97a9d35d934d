"""Sharing one model among everyone: the model gate (one call at a time, interactive first) and
per-client limits on jobs in flight, so one client cannot fill the queue."""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class ModelGate:
    """One model call at a time (a model's KV cache is per object), interactive calls first: a sweep
    takes the gate image by image and yields it whenever a generation is waiting."""

    def __init__(self):
        self._cond = threading.Condition()
        self._busy = False
        self._interactive_waiting = 0

    @contextmanager
    def use(self, interactive: bool = True) -> Iterator[None]:
        with self._cond:
            self._interactive_waiting += interactive
            try:
                self._cond.wait_for(lambda: not self._busy and (interactive or self._interactive_waiting == 0))
            finally:
                self._interactive_waiting -= interactive
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class JobLimitError(ValueError):
    """A client asked for more jobs at once than it may have."""


class JobLimiter:
    """Counts jobs in flight per session and per client address; refuses the one over the limit."""

    def __init__(self, per_session: int, per_address: int):
        if not (isinstance(per_session, int) and isinstance(per_address, int) and 1 <= per_session <= per_address):
            raise ValueError(f"JobLimiter needs 1 <= per_session <= per_address, got {per_session}, {per_address}")
        self.per_session, self.per_address = per_session, per_address
        self._sessions: Counter[str] = Counter()
        self._addresses: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def slot(self, session: str, address: str) -> Iterator[None]:
        with self._lock:
            if self._sessions[session] >= self.per_session:
                raise JobLimitError(f"this session already has {self._sessions[session]} jobs running or waiting; "
                                    f"at most {self.per_session} at a time per visitor. Wait for them to finish.")
            if self._addresses[address] >= self.per_address:
                raise JobLimitError(f"your address already has {self._addresses[address]} jobs running or waiting; "
                                    f"at most {self.per_address} at a time per client. Wait for them to finish.")
            self._sessions[session] += 1
            self._addresses[address] += 1
        try:
            yield
        finally:
            with self._lock:
                for counter, key in ((self._sessions, session), (self._addresses, address)):
                    counter[key] -= 1
                    if counter[key] <= 0:
                        del counter[key]

    def in_flight(self) -> int:
        with self._lock:
            return sum(self._sessions.values())


def client_address(headers: dict | None, host: str | None) -> str:
    """The client's address: the last X-Forwarded-For hop (the one the hosting proxy appended), else the
    socket's peer."""
    forwarded = (headers or {}).get("x-forwarded-for", "")
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    return hops[-1] if hops else (host or "unknown")
