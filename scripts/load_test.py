"""A bounded load test of the app on this machine (localhost only): latency under concurrent clients
and server memory after many sessions.

    python scripts/load_test.py --clients 20 --requests 3 --sessions 100

It starts the app in a subprocess on 127.0.0.1 (a free port), then
1. `--clients` API clients at once, each `--requests` generations (decoders cycled), each client with
   its own X-Forwarded-For address (so the per-address job limit sees distinct visitors);
   reports p50 / p95 latency and every error, split into limit refusals and anything else;
2. `--sessions` fresh sessions (a new client each, one generation), `--session-threads` at a time;
   reports the server's resident memory (VmRSS) fresh (after one warm-up request) and after them.
Everything stops after `--max-seconds` (requests still out are counted as unfinished); the server is
terminated at the end. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DECODERS = ("ar", "sjd", "lantern", "gsd")
LIMIT_WORDS = ("at a time per", "at most", "queue is full")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_server(model: str, port: int) -> subprocess.Popen:
    code = f"import app; app.build_demo({model!r}).launch(server_name='127.0.0.1', server_port={port}, quiet=True)"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "SPECLENS_UMAP": "0", "SPECLENS_PROJECTIONS_DIR": ""}
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_until_up(url: str, server: subprocess.Popen, timeout_s: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read()[-2000:]}")
        try:
            urllib.request.urlopen(url + "/config", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the server did not answer within {timeout_s:.0f} s")


def second_class(url: str) -> str:
    """The class dropdown's second choice, as the page offers it (e.g. '1: Trouser')."""
    import urllib.request

    config = json.loads(urllib.request.urlopen(url + "/config", timeout=10).read())
    dropdown = next(c for c in config["components"] if c.get("props", {}).get("label") == "class")
    return dropdown["props"]["choices"][1][1]


def one_generation(client, model: str, decoder: str, seed: int, class_label: str) -> float:
    t = time.perf_counter()
    settings = json.dumps({"window": 8} if decoder != "ar" else {})
    client.predict(model, decoder, settings, class_label, seed, 4.0, 1.0, 0, 1.0, "step", False,
                   api_name="/generate")
    return time.perf_counter() - t


class Tally:
    def __init__(self):
        self.latencies: list[float] = []
        self.limit_refusals: list[str] = []
        self.other_errors: list[str] = []
        self.lock = threading.Lock()

    def record(self, fn) -> None:
        try:
            dt = fn()
            with self.lock:
                self.latencies.append(dt)
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            message = str(e)[:300]
            with self.lock:
                (self.limit_refusals if any(w in message for w in LIMIT_WORDS) else self.other_errors).append(message)

    def summary(self) -> dict:
        lat = sorted(self.latencies)

        def q(p):
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else None
        return {"ok": len(lat), "p50_s": q(0.5), "p95_s": q(0.95), "max_s": round(lat[-1], 3) if lat else None,
                "limit_refusals": len(self.limit_refusals), "other_errors": len(self.other_errors),
                "examples": (self.other_errors or self.limit_refusals)[:3]}


def visitor(url: str, address: str):
    """An API client as a distinct visitor (its own address); long timeouts: a busy server answers late."""
    from gradio_client import Client

    return Client(url, verbose=False, httpx_kwargs={"timeout": 300}, headers={"X-Forwarded-For": address})


def concurrent_clients(url: str, model: str, class_label: str, n_clients: int, n_requests: int,
                       deadline: float) -> dict:

    tally = Tally()

    def client_run(i: int) -> None:
        client = visitor(url, f"10.0.{i // 250}.{i % 250 + 1}")
        for r in range(n_requests):
            if time.monotonic() > deadline:
                return
            tally.record(lambda: one_generation(client, model, DECODERS[(i + r) % len(DECODERS)], i * 100 + r,
                                                class_label))

    with ThreadPoolExecutor(n_clients) as pool:
        wait([pool.submit(client_run, i) for i in range(n_clients)], timeout=max(1.0, deadline - time.monotonic()))
    return tally.summary() | {"clients": n_clients, "requests_per_client": n_requests}


def many_sessions(url: str, model: str, class_label: str, n_sessions: int, threads: int, deadline: float) -> dict:

    tally = Tally()

    def session(i: int) -> None:
        if time.monotonic() > deadline:
            return
        client = visitor(url, f"10.1.{i // 250}.{i % 250 + 1}")
        tally.record(lambda: one_generation(client, model, DECODERS[i % len(DECODERS)], i, class_label))

    with ThreadPoolExecutor(threads) as pool:
        wait([pool.submit(session, i) for i in range(n_sessions)], timeout=max(1.0, deadline - time.monotonic()))
    return tally.summary() | {"sessions": n_sessions}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fashion-mnist", help="a served model (default: the bundled one)")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=3, help="generations per concurrent client")
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--session-threads", type=int, default=4)
    ap.add_argument("--max-seconds", type=float, default=600, help="the whole test stops after this")
    a = ap.parse_args(argv)
    for name, low, high in (("clients", 1, 64), ("requests", 1, 20), ("sessions", 0, 1000),
                            ("session_threads", 1, 16)):
        if not low <= getattr(a, name) <= high:
            ap.error(f"--{name.replace('_', '-')} must be in [{low}, {high}], got {getattr(a, name)}")
    if not 10 <= a.max_seconds <= 3600:
        ap.error(f"--max-seconds must be in [10, 3600], got {a.max_seconds}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(a.model, port)
    deadline = time.monotonic() + a.max_seconds
    try:
        wait_until_up(url, server, min(180.0, a.max_seconds))
        from gradio_client import Client

        class_label = second_class(url)
        first = Tally()
        first.record(lambda: one_generation(Client(url, verbose=False), a.model, "ar", 0, class_label))
        if first.other_errors:
            raise RuntimeError(f"the warm-up generation failed: {first.other_errors[0]}")
        fresh = rss_mb(server.pid)
        load = concurrent_clients(url, a.model, class_label, a.clients, a.requests, deadline)
        after_load = rss_mb(server.pid)
        sessions = many_sessions(url, a.model, class_label, a.sessions, a.session_threads, deadline)
        time.sleep(2.0)
        after_sessions = rss_mb(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    report = {"model": a.model, "concurrent": load, "sessions": sessions,
              "rss_mb": {"fresh": round(fresh, 1), "after_concurrent": round(after_load, 1),
                         "after_sessions": round(after_sessions, 1),
                         "growth_after_sessions": round(after_sessions - fresh, 1)},
              "timed_out": time.monotonic() > deadline}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
