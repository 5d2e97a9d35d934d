"""The app through gradio_client against one launched instance (tiny-fixture model), plus its
input checking and the model gate without a server. Limits on requests: test_app_limits.py."""
from __future__ import annotations

import json
import os
import threading
import time

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ["SPECLENS_UMAP"] = "0"  # no 20-s numba compile in tests: PCA only
os.environ["SPECLENS_PROJECTIONS_DIR"] = ""  # and nothing written into assets/

from app_server import launched_demo  # noqa: E402

import app  # noqa: E402
from analysis.synthetic import synthetic_trace  # noqa: E402
from decoding.registry import describe_decoder  # noqa: E402
from decoding.trace import Trace  # noqa: E402
from ui import parse  # noqa: E402
from ui.jobs import ModelGate  # noqa: E402
from ui.views import COMPARE_VIEWS, TRACE_VIEWS  # noqa: E402

MODEL = "tiny-fixture"
SAMPLING = (4.0, 1.0, 0, 1.0)  # cfg, temperature, top-k, top-p


@pytest.fixture(scope="module")
def demo():
    with launched_demo(MODEL) as d:
        yield d


@pytest.fixture(scope="module")
def client(demo):
    return Client(demo.local_url, verbose=False)


def generate(client, decoder="lantern", settings=None, label="1: 1", seed=3, sampling=SAMPLING, model=MODEL):
    settings = json.dumps(settings if settings is not None else {"window": 6, "delta": 0.2})
    return client.predict(model, decoder, settings, label, seed, *sampling, "step", False, api_name="/generate")


def test_generate_returns_image_stats_trace_and_figures(client):
    image, card, trace_file, *figures = generate(client)
    views = dict(zip([v.name for v in TRACE_VIEWS], figures, strict=True))
    maps, replay = views["maps"], views["replay"]
    assert np.asarray(Image.open(image)).shape[2] == 3
    trace = Trace.load(trace_file)
    assert trace.decoder == "lantern" and trace.seed == 3 and trace.label == 1 and trace.settings["window"] == 6
    assert f"| NFE (forward passes) | **{trace.nfe}** |" in card and "Step compression = tokens / NFE" in card
    for name, fig in views.items():
        assert fig["type"] == "plotly" and (json.loads(fig["plot"])["data"] or name == "rows"), name
    assert len(json.loads(replay["plot"])["frames"]) == trace.nfe
    heat = [d for d in json.loads(maps["plot"])["data"] if d["type"] == "heatmap"]
    assert len(heat) == 2 and "token %{customdata[3]}" in heat[0]["hovertemplate"]


def test_same_seed_same_tokens_and_ar_is_one_token_per_pass(client):
    a = Trace.load(generate(client, "ar", {}, seed=5)[2])
    b = Trace.load(generate(client, "ar", {}, seed=5)[2])
    assert a.tokens == b.tokens and a.nfe == a.num_tokens and set(a.commit_kind) == {"bonus"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="no-such-model"), "Value: no-such-model is not in the list of choices"),  # only served models
    (dict(model="llamagen-c2i-B-256"), "Value: llamagen-c2i-B-256 is not in the list of choices"),  # no weights
    (dict(decoder="nope"), "Value: nope is not in the list of choices"),  # the dropdown's own check
    (dict(settings={"delta": 2.0}), "delta must be in [0, 1], got 2.0"),
    (dict(settings={"window": 17}), "window must be in [2, num_tokens] (here 16), got 17"),  # the model's bound
    (dict(settings={"windw": 4}), "has no parameter(s) ['windw']"),
    (dict(settings="[1, 2]"), "Decoder settings must be a JSON object"),
    (dict(sampling=(0.5, 1.0, 0, 1.0)), "Value 0.5 is less than minimum value 1.0"),  # the slider's own check
    (dict(sampling=(4.0, 1.0, -3, 1.0)), "Value -3 is less than minimum value 0"),
    (dict(label="12"), "Value: 12 is not in the list of choices"),
    (dict(seed=-1), "Value -1 is less than minimum value 0"),
])
def test_bad_input_gives_a_clear_message(client, kwargs, message):
    with pytest.raises(Exception) as err:
        generate(client, **kwargs)
    assert message in str(err.value)


def test_uploaded_trace_is_shown_and_a_malformed_one_is_refused(client, tmp_path):
    trace = synthetic_trace((4, 4), 64, window=4, seed=7, decoder="sjd", model=MODEL)
    good = tmp_path / "good.json"
    trace.save(good)
    out = client.predict(handle_file(str(good)), "accept_prob", True, api_name="/view_trace")
    image, card = out[0], out[1]
    assert image is not None  # the trace names a model that is here: its tokens are decoded
    assert f"| NFE (forward passes) | **{trace.nfe}** |" in card
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**trace.to_dict(), "tokens": [1, 2]}))
    with pytest.raises(Exception, match="Not a SpecLens trace: trace.tokens has 2 entries, expected 16"):
        client.predict(handle_file(str(bad)), "step", False, api_name="/view_trace")
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(Exception, match="not valid JSON"):
        client.predict(handle_file(str(junk)), "step", False, api_name="/view_trace")


def compare(client, decoders, settings, seeds=1, label="2: 2", seed=11):
    *figures, table, summary = client.predict(MODEL, decoders, json.dumps(settings), label, seed, seeds, *SAMPLING,
                                              api_name="/compare")
    return dict(zip([v.name for v in COMPARE_VIEWS], figures, strict=True)), table, summary


def test_compare_runs_each_decoder_with_its_own_settings(client):
    settings = {"sjd": {"window": 3}, "lantern": {"window": 6, "delta": 0.2}, "gsd": {"window": 5, "group_size": 5}}
    views, table, summary = compare(client, ["ar", "sjd", "lantern", "gsd"], settings)
    fig = json.loads(views["images"]["plot"])
    assert sum(d["type"] == "image" for d in fig["data"]) == 4
    assert [row[0] for row in table["data"]] == ["ar", "sjd", "lantern", "gsd"]
    headers = table["headers"]
    rows = {row[0]: dict(zip(headers, row)) for row in table["data"]}
    assert rows["ar"]["NFE"] == 16 and rows["ar"]["tokens equal to ar"] == 1.0
    assert "window=3" in rows["sjd"]["settings"] and "window=6" in rows["lantern"]["settings"]
    assert "delta=0.2" in rows["lantern"]["settings"] and "group_size=5" in rows["gsd"]["settings"]
    assert {d.get("name") for d in json.loads(views["speed"]["plot"])["data"]} >= {"model forward", "VQ decode"}
    assert all(json.loads(f["plot"])["data"] for f in views.values())
    assert [r[summary["headers"].index("seeds")] for r in summary["data"]] == [1, 1, 1, 1]


def test_compare_over_seeds_gives_means_and_intervals(client):
    _, table, summary = compare(client, ["ar", "sjd"], {"window": 4}, seeds=3)
    h = summary["headers"]
    by = {r[0]: dict(zip(h, r)) for r in summary["data"]}
    assert by["ar"]["seeds"] == 3 and by["ar"]["NFE mean"] == 16 and by["ar"]["NFE 95% interval"] == "[16.0, 16.0]"
    low, high = json.loads(by["sjd"]["step compression 95% interval"])
    assert low <= by["sjd"]["step compression mean"] <= high
    assert len(table["data"]) == 2  # the first seed's runs are the ones shown


def test_codebook_shows_projection_neighbours_and_patches(client):
    generate(client)  # this session now has a trace to colour by
    fig, gallery, summary, status = client.predict(MODEL, "vq", "acceptance", 5, 4, "", api_name="/codebook")
    names = [d.get("name") for d in json.loads(fig["plot"])["data"]]
    assert "4 nearest codes to 5 (LANTERN's neighbourhood)" in names and "code 5 (picked)" in names
    assert gallery[0]["caption"] == "5 ★" and "○ d=" in gallery[1]["caption"]
    assert summary["code"] == 5 and len(summary["nearest codes"]) == 4 and ("PCA" in status or "UMAP" in status)
    with pytest.raises(Exception, match=r"token id must be in \[0, 63\]"):
        client.predict(MODEL, "gpt", "usage", 64, 4, "", api_name="/codebook")
    with pytest.raises(Exception, match=r"grid position must be in \[0, 15\], got 16"):
        client.predict(MODEL, "gpt", "usage", 5, 4, "16", api_name="/codebook")


def test_codebook_returns_the_gsd_groups_of_a_code_and_of_a_position(client):
    settings = {"window": 6, "group_size": 14, "prob_filter": None, "distance_threshold": None}
    trace = Trace.load(generate(client, "gsd", settings, seed=4)[2])
    step, i = next((s, i) for s in trace.steps for i, pos in enumerate(s.positions)
                   if len(s.group_members[i]) > 1 and trace.commit_step[pos] == s.index)
    code, pos = step.draft_tokens[i], step.positions[i]
    formed = {m for s in trace.steps for d, g in zip(s.draft_tokens, s.group_members) if d == code for m in g}
    fig, gallery, summary, status = client.predict(MODEL, "gpt", "usage", code, 2, str(pos), api_name="/codebook")
    assert summary["codes in them"] == sorted(formed - {code})
    assert summary["position"] == {"position": pos, "committed as": trace.commit_kind[pos], "draft": code,
                                   "group": step.group_members[i]}
    layers = {d.get("name"): d for d in json.loads(fig["plot"])["data"]}
    drawn = next(d for n, d in layers.items() if n.endswith(f"{code} formed as the draft"))
    assert sorted(drawn["customdata"]) == sorted(formed - {code})
    shown = {int(g["caption"].split()[0]) for g in gallery}
    assert shown >= formed and "groups from the current trace (gsd" in status  # every member's patch is shown


def test_small_sweep_and_a_too_large_one(client):
    table, curves, sq, files = client.predict(MODEL, "lantern", "delta", "0, 0.3, 0.30", 2,
                                              json.dumps({"lantern": {"window": 6}}), *SAMPLING, api_name="/sweep")
    h = table["headers"]
    assert [r[h.index("decoder")] for r in table["data"]] == ["ar", "lantern", "lantern"]  # baseline, repeat merged
    assert [r[h.index("delta")] for r in table["data"]][1:] == [0.0, 0.3]
    assert all(r[h.index("images")] == 2 for r in table["data"]) and "speedup vs ar" in h
    assert json.loads(curves["plot"])["data"] and json.loads(sq["plot"])["data"]
    csv_file, traces_file = sorted(files, key=lambda f: f.endswith(".jsonl"))
    assert open(csv_file).readline().startswith("decoder,") and len(open(traces_file).readlines()) == 6
    with pytest.raises(Exception, match="command line: python -m decoding.sweep --decoder lantern"):
        client.predict(MODEL, "lantern", "delta", "0, 0.1, 0.2, 0.3", 20, "{}", *SAMPLING, api_name="/sweep")
    with pytest.raises(Exception, match="has no parameter 'k'"):
        client.predict(MODEL, "lantern", "k", "1", 1, "{}", *SAMPLING, api_name="/sweep")
    table, _, _, _ = client.predict(MODEL, "gsd", "group_size", "1, 3", 1, "{}", *SAMPLING, api_name="/sweep")
    assert len(table["data"]) == 3  # parameters of a decoder other than the dropdown's first, after ar


def test_the_sweep_tab_shows_the_shipped_quality_runs_and_a_users_own(tmp_path):
    runs = app.shipped_quality_runs()
    assert any("fashion-mnist-16k" in label for label, _ in runs) and any(
        label.startswith("fashion-mnist,") for label, _ in runs)
    assert any(label.startswith("fashion-mnist-4096,") for label, _ in runs)  # quality_fmnist4096_*: not "fmnist"
    assert [app.model_from_stem(s) for s in ("quality_fmnist16k_100", "quality_fmnist4096_100", "quality_fmnist_2000",
                                             "mine")] == ["fashion-mnist-16k", "fashion-mnist-4096", "fashion-mnist",
                                                          "model not recorded"]
    assert all("quality_ar.json" != f for _, f in runs)  # the AR card's file is another kind
    rows = [int(label.split(", ")[1].split(" rows")[0]) for label, _ in runs]
    assert rows == sorted(rows, reverse=True)  # the broadest run (the README's full table) is shown first
    for _, name in runs:
        status, fig, table = app.show_shipped_quality(name)
        assert table.splitlines()[0].startswith("| decoder | lossless | samples | step compression")
        shapes, traces = fig.layout.shapes, [t for t in fig.data if t.x != (None,)]
        assert len(shapes) == 1 and shapes[0].y0 < shapes[0].y1  # the noise floor's band
        assert "ar" in [t.name for t in traces] and all(t.error_y.array is not None for t in traces)
        assert "noise floor" in status
    with pytest.raises(gr.Error, match="unknown quality run '../README.md'"):
        app.show_shipped_quality("../README.md")
    mine = tmp_path / "quality.csv"
    mine.write_text("decoder,lossless,samples,step_compression,fd,fd_lo,fd_hi\nar,True,4,1.0,30,20,40\n"
                    "sjd,True,4,2.5,31,21,42\n")
    status, fig, table = app.show_uploaded_quality(str(mine))
    assert "quality\\.csv" in status and "no noise floor" in status and len(fig.data) == 2
    assert "| `sjd` | yes | 4 | 2.50 |" in table
    mine.write_text("decoder,step_compression,fd\nsjd,2.0,nan\n")
    with pytest.raises(gr.Error, match="'sjd''s fd is nan, not a finite number"):
        app.show_uploaded_quality(str(mine))
    with pytest.raises(gr.Error, match="Upload a quality.json or quality.csv"):
        app.show_uploaded_quality(None)


def test_a_long_sweep_does_not_hold_up_a_generation(demo):
    sweeper, user = Client(demo.local_url, verbose=False), Client(demo.local_url, verbose=False)
    job = sweeper.submit(MODEL, "sjd", "window", "2, 3, 4, 5, 6", 10, "{}", *SAMPLING, api_name="/sweep")
    time.sleep(1.0)  # the sweep is under way
    generate(user, "ar", {})
    assert not job.done(), "the generation waited for the whole 60-image sweep"
    job.result(timeout=300)


def test_summary_png_of_the_session(client):
    generate(client, "sjd", {"window": 4})
    path = client.predict(api_name="/summary_png")
    assert Image.open(path).format == "PNG"


# -- without a server ------------------------------------------------------------------------------
def test_settings_per_decoder_and_flat():
    own = parse.per_decoder_settings(["ar", "sjd", "lantern"], json.dumps({"sjd": {"window": 3}}))
    assert own == {"ar": {}, "sjd": {"window": 3}, "lantern": {}}
    flat = parse.per_decoder_settings(["ar", "sjd", "lantern"], {"window": 7, "delta": 0.25})
    assert flat == {"ar": {}, "sjd": {"window": 7}, "lantern": {"window": 7, "delta": 0.25}}
    with pytest.raises(ValueError, match=r"no decoder among \['sjd'\] has the parameter\(s\) \['delta'\]"):
        parse.per_decoder_settings(["sjd"], {"delta": 0.1})


def test_widget_values_become_typed_settings():
    specs = {s.name: s for s in describe_decoder("lantern")}
    assert parse.coerce(specs["window"], 7.0) == 7 and isinstance(parse.coerce(specs["window"], 7.0), int)
    assert parse.coerce(specs["ratio_bound"], " ") is None  # the browser sends blank optional numbers as text
    assert parse.coerce(specs["ratio_bound"], "5") == 5.0
    with pytest.raises(ValueError, match="window must be a whole number, got 7.5"):
        parse.coerce(specs["window"], 7.5)


def test_sampling_messages_name_the_setting():
    with pytest.raises(ValueError, match=r"Sampling settings: cfg_scale must be in \[1, 50\], got 0.5"):
        parse.parse_sampling(0.5, 1.0, 0, 1.0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        parse.parse_sampling(4.0, 1.0, 0, 0.0)


def test_choosing_a_model_sets_its_top_k_and_the_sliders_bounds(monkeypatch):
    """The sampling top-k slider reaches the chosen model's vocabulary and starts at the model's own top-k."""
    monkeypatch.setattr(app, "SERVED", ["fashion-mnist", "fashion-mnist-16k"])
    updates = app.on_model_change("fashion-mnist-16k", [])
    assert updates[-1]["maximum"] == 16384 and updates[-1]["value"] == 2000
    updates = app.on_model_change("fashion-mnist", [])
    assert updates[-1]["maximum"] == 1024 and updates[-1]["value"] == 0


def test_parse_values_and_class():
    assert parse.parse_values("lantern", "delta", "0, 0.1,0.2, 0.10") == [0.0, 0.1, 0.2]  # repeats merged
    assert parse.parse_values("lantern", "ratio_bound", "none, 5") == [None, 5.0]
    assert parse.parse_values("gsd", "group_size", "3, 5.0") == [3, 5]
    with pytest.raises(ValueError, match="not a number"):
        parse.parse_values("lantern", "delta", "0.1, big")
    info = app.load_model(MODEL).info
    assert parse.parse_class(info, "3: 3") == 3 and parse.parse_class(info, 4) == 4
    with pytest.raises(ValueError, match="whole number"):
        parse.parse_class(info, 2.5)
    with pytest.raises(ValueError, match=r"class must be in \[0, 9\], got 12"):
        parse.parse_class(info, "12")


def test_gate_serves_a_waiting_generation_before_the_sweep_continues():
    gate, order = ModelGate(), []

    def sweep():
        for i in range(3):
            with gate.use(interactive=False):
                order.append(f"sweep{i}")
                time.sleep(0.05)

    def user():
        with gate.use():
            order.append("user")

    with gate.use():  # a generation holds the gate while both arrive
        t1 = threading.Thread(target=sweep)
        t1.start()
        time.sleep(0.05)
        t2 = threading.Thread(target=user)
        t2.start()
        time.sleep(0.05)
    t1.join()
    t2.join()
    assert order[0] == "user"
