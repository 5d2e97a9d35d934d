"""The public server's limits, through gradio_client against one launched instance (tiny-fixture):
each refusal says which limit, and the server still answers afterwards. Plus the serving pieces
(bounded trace loader, trace store, job limiter, temp folder, escaping) on their own."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ["SPECLENS_UMAP"] = "0"
os.environ["SPECLENS_PROJECTIONS_DIR"] = ""  # memory only

from app_server import launched_demo  # noqa: E402

import app  # noqa: E402
from analysis.synthetic import synthetic_trace  # noqa: E402
from decoding.trace import Trace  # noqa: E402
from decoding.trace_limits import TraceLimits, load_bounded_trace  # noqa: E402
from ui import limits, text  # noqa: E402
from ui.jobs import JobLimiter, JobLimitError, client_address  # noqa: E402
from ui.store import TraceStore  # noqa: E402
from ui.tempfiles import TempFolder  # noqa: E402

MODEL = "tiny-fixture"
SAMPLING = (4.0, 1.0, 0, 1.0)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo():
    with launched_demo(MODEL) as d:
        yield d


@pytest.fixture(scope="module")
def client(demo):
    return Client(demo.local_url, verbose=False)


def generate(client, decoder="ar", settings=None, seed=1, sampling=SAMPLING):
    return client.predict(MODEL, decoder, json.dumps(settings or {}), "1: 1", seed, *sampling, "step", False,
                          api_name="/generate")


def still_answers(client) -> None:
    trace = Trace.load(generate(client)[2])
    assert trace.nfe == 16


def trace_dict(**changes) -> dict:
    d = synthetic_trace((4, 4), 64, window=4, seed=7, decoder="sjd", model=MODEL).to_dict()
    d.update(changes)
    return d


def upload(client, tmp_path, d: dict | str, name="t.json"):
    path = tmp_path / name
    path.write_text(d if isinstance(d, str) else json.dumps(d))
    return client.predict(handle_file(str(path)), "step", False, api_name="/view_trace")


# -- uploads -------------------------------------------------------------------------------------------------
def test_upload_over_the_size_limit_is_refused_by_gradio(client, tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (limits.MAX_UPLOAD_BYTES + 1))
    with pytest.raises(Exception, match="(?i)maximum allowed|too large|exceeds"):
        client.predict(handle_file(str(big)), "step", False, api_name="/view_trace")
    still_answers(client)


@pytest.mark.parametrize("changes, message", [
    (dict(grid_shape=[600, 600]), "grid_shape 600x600 = 360000 tokens; at most 4096 allowed"),
    (dict(vocab_size=10**9), "vocab_size must be a whole number in [1, 65536]"),
    (dict(class_name="x" * 201), "class_name must be text of at most 200 characters"),
    (dict(tokens=[0] * 17), "tokens has 17 entries; at most 16 (the tokens) allowed"),
    (dict(settings={f"k{i}": 1 for i in range(65)}), "settings must be an object of at most 64 entries"),
])
def test_uploaded_trace_bounds_name_the_limit(client, tmp_path, changes, message):
    with pytest.raises(Exception) as err:
        upload(client, tmp_path, trace_dict(**changes))
    assert "Not a SpecLens trace: " + message in str(err.value)
    still_answers(client)


def test_uploaded_steps_and_lists_are_bounded_before_building(client, tmp_path):
    with pytest.raises(Exception, match="steps has 150000 entries; a trace of 16 tokens has at most 17"):
        upload(client, tmp_path, trace_dict(steps=[{}] * 150_000))
    d = trace_dict()
    d["steps"][1]["positions"] = list(range(17))
    with pytest.raises(Exception, match=r"steps\[1\].positions has 17 entries; at most 16"):
        upload(client, tmp_path, d)
    d = trace_dict()
    d["steps"][1]["group_members"] = [list(range(65))]
    with pytest.raises(Exception, match=r"steps\[1\].group_members\[0\] must be a flat list of at most 64 ids"):
        upload(client, tmp_path, d)
    still_answers(client)


def test_uploaded_names_are_escaped_everywhere(client, tmp_path):
    evil = '<img src="http://attacker.example/x.png">'
    d = trace_dict(class_name=evil, decoder="[x](http://attacker.example)", model=MODEL,
                   settings={"window": 4, "<b>": "<script>alert(1)</script>"})
    out = upload(client, tmp_path, d)
    card, figures = out[1], json.dumps(out[2:])
    for shown in (card, figures):
        assert "<img" not in shown and "<script" not in shown and "](http" not in shown and "<b>" not in shown
    assert "attacker" in card  # shown, as inert text


def test_trace_of_a_model_not_served_is_shown_without_it(client, tmp_path):
    out = upload(client, tmp_path, trace_dict(model="llamagen-c2i-XL-384"))
    assert out[0] is None and "not available on this server: shown without its image" in out[1]
    assert "| NFE (forward passes) |" in out[1]


# -- compare, jobs ------------------------------------------------------------------------------------------
def compare(client, decoders, seeds=1, settings=None):
    return client.predict(MODEL, decoders, json.dumps(settings or {}), "2: 2", 5, seeds, *SAMPLING,
                          api_name="/compare")


def test_compare_merges_repeated_decoders_and_caps_the_work(client):
    table = compare(client, ["ar"] * 100)[-2]
    assert [r[0] for r in table["data"]] == ["ar"]  # one generation, not a hundred
    with pytest.raises(Exception, match="Value 99 is greater than maximum value 5"):
        compare(client, ["ar"], seeds=99)
    every = list(app.DECODERS)
    with pytest.raises(Exception, match=f"{len(every)} decoders x 5 seeds = {5 * len(every)} images; one comparison "
                                        f"runs at most {limits.MAX_COMPARE_RUNS}"):
        compare(client, every, seeds=5)
    still_answers(client)


def test_one_session_cannot_fill_the_queue(demo):
    greedy = Client(demo.local_url, verbose=False)
    jobs = [greedy.submit(MODEL, ["ar", "sjd", "lantern", "gsd"], "{}", "2: 2", 5, 5, *SAMPLING,
                          api_name="/compare") for _ in range(5)]
    outcomes = []
    for job in jobs:
        try:
            job.result(timeout=300)
            outcomes.append("done")
        except Exception as e:  # noqa: BLE001 - the refusal's message is the point
            outcomes.append(str(e))
    refused = [o for o in outcomes if o != "done"]
    assert refused and all(f"at most {limits.MAX_JOBS_PER_SESSION} at a time per visitor" in o for o in refused)
    assert outcomes.count("done") >= 1
    still_answers(Client(demo.local_url, verbose=False))  # another visitor is served


def test_near_zero_temperature_is_greedy_not_garbage(client):
    greedy = Trace.load(generate(client, sampling=(4.0, 0.0, 0, 1.0))[2])
    tiny = Trace.load(generate(client, sampling=(4.0, 1e-40, 0, 1.0), seed=9)[2])
    assert tiny.tokens == greedy.tokens


def test_nothing_is_written_into_the_source_tree(client):
    before = sorted(p.name for p in (ROOT / "assets").rglob("*"))
    client.predict(MODEL, "vq", "usage", 3, 4, "", api_name="/codebook")
    client.predict(api_name="/summary_png")
    assert sorted(p.name for p in (ROOT / "assets").rglob("*")) == before


# -- the pieces on their own ---------------------------------------------------------------------------------
def test_bounded_loader_checks_size_and_json_first():
    data = json.dumps(trace_dict()).encode()
    assert load_bounded_trace(data).nfe == Trace.from_dict(trace_dict()).nfe
    with pytest.raises(ValueError, match="the trace file is 0.0 MB; at most 0 MB allowed"):
        load_bounded_trace(data, TraceLimits(max_bytes=100))
    with pytest.raises(ValueError, match="not valid JSON"):
        load_bounded_trace(b"{")
    with pytest.raises(ValueError, match="nested too deeply"):
        load_bounded_trace(b"[" * 100_000 + b"]" * 100_000, TraceLimits(max_bytes=10**6))
    with pytest.raises(ValueError, match="TraceLimits.max_tokens must be an integer >= 1"):
        TraceLimits(max_tokens=0)


def test_app_refuses_an_oversized_file_on_its_own(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b"0" * (limits.MAX_UPLOAD_BYTES + 1))
    with pytest.raises(ValueError, match=f"larger than {limits.MAX_UPLOAD_BYTES // 2**20} MB, the upload limit"):
        app.read_upload(str(path))


def test_trace_store_bounds_per_session_in_total_and_by_idle_time():
    t = Trace.from_dict(trace_dict())
    store = TraceStore(per_session=2, max_traces=3, max_weight=10**6, idle_s=0.2)
    for i in range(3):
        store.add("a", t, None)
    assert len(store.traces("a")) == 2
    store.add("b", t, None)
    store.add("c", t, None)
    assert store.stats()["traces"] == 3 and len(store.traces("a")) == 1  # the oldest went first
    store.drop("b")
    assert store.last("b") is None and store.stats()["traces"] == 2
    time.sleep(0.3)
    store.add("d", t, np.zeros((2, 2, 3), np.uint8))
    assert store.stats() == {"sessions": 1, "traces": 1, "weight": store.stats()["weight"]}
    with pytest.raises(ValueError, match="the server keeps at most 10"):
        TraceStore(2, 3, 10, 1.0).add("a", t, None)


def test_job_limiter_per_session_and_per_address():
    jobs = JobLimiter(per_session=1, per_address=2)
    with jobs.slot("s1", "1.2.3.4"):
        with pytest.raises(JobLimitError, match="at most 1 at a time per visitor"):
            with jobs.slot("s1", "1.2.3.4"):
                pass
        with jobs.slot("s2", "1.2.3.4"):
            with pytest.raises(JobLimitError, match="at most 2 at a time per client"):
                with jobs.slot("s3", "1.2.3.4"):
                    pass
            with jobs.slot("s3", "5.6.7.8"):
                assert jobs.in_flight() == 3
    assert jobs.in_flight() == 0
    assert client_address({"x-forwarded-for": "spoofed, 9.9.9.9"}, "10.0.0.1") == "9.9.9.9"
    assert client_address({}, "10.0.0.1") == "10.0.0.1"


def test_job_limiter_under_threads_never_exceeds_its_limit():
    jobs, peak, lock = JobLimiter(per_session=3, per_address=3), [0], threading.Lock()

    def worker():
        try:
            with jobs.slot("s", "a"):
                with lock:
                    peak[0] = max(peak[0], jobs.in_flight())
                time.sleep(0.02)
        except JobLimitError:
            pass

    threads = [threading.Thread(target=worker) for _ in range(20)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert 1 <= peak[0] <= 3 and jobs.in_flight() == 0


def test_temp_folder_prunes_old_and_surplus_files():
    folder = TempFolder("speclens-test-", max_age_s=3600, max_files=2)
    paths = [folder.path("a<b>", ".txt") for _ in range(3)]
    for p in paths:
        p.write_text("x")
    folder.prune()
    assert [p.exists() for p in paths] == [False, True, True] and "<" not in paths[0].name
    folder.remove()
    assert not folder.root.exists()


def test_text_escaping():
    assert text.escape_md("<img src=x>") == "&lt;img src=x&gt;"
    assert text.escape_md("[a](http://b)") == r"\[a\]\(http://b\)"
    assert text.plain_text("<b>café</b> [x](y)") == "?b?café?/b? ?x??y?"


def test_a_bad_environment_variable_stops_the_app_with_its_name():
    env = {**os.environ, "SPECLENS_THREADS": "lots"}
    run = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "SPECLENS_THREADS='lots'" in run.stderr
