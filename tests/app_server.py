"""Launching the app once per test module, on a free local port (shared by the app and browser tests)."""
from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def launched_demo(default_model: str | None = None) -> Iterator:
    """The app's demo, launched on 127.0.0.1 without blocking; closed on exit."""
    import app

    demo = app.build_demo(default_model)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield demo
    finally:
        demo.close()
