"""The app through gradio_client against one launched instance (tiny-fixture model), plus its
input checking and the model gate without a server."""
from __future__ import annotations

import json
import os
import threading
import time

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
from decoding.trace import Trace  # noqa: E402

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
    image, card, trace_file, maps, lengths, depth, replay, amb, amb_map = generate(client)
    assert np.asarray(Image.open(image)).shape[2] == 3
    trace = Trace.load(trace_file)
    assert trace.decoder == "lantern" and trace.seed == 3 and trace.label == 1 and trace.settings["window"] == 6
    assert f"| NFE (forward passes) | **{trace.nfe}** |" in card and "Step compression = tokens / NFE" in card
    for fig in (maps, lengths, depth, replay, amb, amb_map):
        assert fig["type"] == "plotly" and json.loads(fig["plot"])["data"]
    assert len(json.loads(replay["plot"])["frames"]) == trace.nfe
    heat = [d for d in json.loads(maps["plot"])["data"] if d["type"] == "heatmap"]
    assert len(heat) == 2 and "token %{customdata[3]}" in heat[0]["hovertemplate"]


def test_same_seed_same_tokens_and_ar_is_one_token_per_pass(client):
    a = Trace.load(generate(client, "ar", {}, seed=5)[2])
    b = Trace.load(generate(client, "ar", {}, seed=5)[2])
    assert a.tokens == b.tokens and a.nfe == a.num_tokens and set(a.commit_kind) == {"bonus"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="no-such-model"), "Unknown model 'no-such-model'"),
    (dict(decoder="nope"), "Value: nope is not in the list of choices"),  # the dropdown's own check
    (dict(settings={"delta": 2.0}), "delta (a total-variation budget) must be in [0, 1]"),
    (dict(settings={"windw": 4}), "has no parameter(s) ['windw']"),
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


def test_compare_runs_each_decoder_on_one_seed(client):
    settings = json.dumps({"window": 6, "delta": 0.2, "group_size": 5})
    images, speed, depth, table = client.predict(MODEL, ["ar", "sjd", "lantern", "gsd"], settings, "2: 2", 11,
                                                 *SAMPLING, api_name="/compare")
    fig = json.loads(images["plot"])
    assert sum(d["type"] == "image" for d in fig["data"]) == 4
    assert [row[0] for row in table["data"]] == ["ar", "sjd", "lantern", "gsd"]
    headers = table["headers"]
    ar_row = table["data"][0]
    assert ar_row[headers.index("NFE")] == 16 and ar_row[headers.index("tokens equal to ar")] == 1.0
    assert {d.get("name") for d in json.loads(speed["plot"])["data"]} >= {"model forward", "VQ decode"}


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
    table, curves, sq = client.predict(MODEL, "lantern", "delta", "0, 0.3", 2, json.dumps({"window": 6}),
                                       *SAMPLING, api_name="/sweep")
    assert [r[table["headers"].index("delta")] for r in table["data"]] == [0.0, 0.3]
    assert all(r[table["headers"].index("images")] == 2 for r in table["data"])
    assert json.loads(curves["plot"])["data"] and json.loads(sq["plot"])["data"]
    with pytest.raises(Exception, match="command line: python app.py sweep"):
        client.predict(MODEL, "lantern", "delta", "0, 0.1, 0.2, 0.3", 20, "{}", *SAMPLING, api_name="/sweep")
    with pytest.raises(Exception, match="has no parameter 'k'"):
        client.predict(MODEL, "lantern", "k", "1", 1, "{}", *SAMPLING, api_name="/sweep")
    table, _, _ = client.predict(MODEL, "gsd", "group_size", "1, 3", 1, "{}", *SAMPLING, api_name="/sweep")
    assert len(table["data"]) == 2  # parameters of a decoder other than the dropdown's first


def test_a_long_sweep_does_not_hold_up_a_generation(demo):
    sweeper, user = Client(demo.local_url, verbose=False), Client(demo.local_url, verbose=False)
    job = sweeper.submit(MODEL, "sjd", "window", "2, 3, 4, 5, 6, 8", 10, "{}", *SAMPLING, api_name="/sweep")
    time.sleep(1.0)  # the sweep is under way
    generate(user, "ar", {})
    assert not job.done(), "the generation waited for the whole 60-image sweep"
    job.result(timeout=300)


def test_summary_png_of_the_session(client):
    generate(client, "sjd", {"window": 4})
    path = client.predict(api_name="/summary_png")
    assert Image.open(path).format == "PNG"


# -- without a server ------------------------------------------------------------------------------
def test_settings_json_follows_the_selected_decoder():
    names = list(app.parameter_fields())
    values = {n: f.default for n, f in app.parameter_fields().items()} | {"window": 7.0, "delta": 0.25}
    got = json.loads(app.collect_settings("lantern", *[values[n] for n in names]))
    assert got["window"] == 7 and isinstance(got["window"], int) and got["delta"] == 0.25 and "group_size" not in got
    assert json.loads(app.collect_settings("ar", *[values[n] for n in names])) == {}
    assert app.settings_for("sjd", json.dumps(got)) == {"window": 7, "init": "random"}
    values["ratio_bound"] = " "  # the browser sends blank optional numbers as text
    assert json.loads(app.collect_settings("lantern", *[values[n] for n in names]))["ratio_bound"] is None
    values["ratio_bound"] = "5"
    assert json.loads(app.collect_settings("lantern", *[values[n] for n in names]))["ratio_bound"] == 5.0


def test_sampling_messages_name_the_setting():
    with pytest.raises(app.gr.Error, match="Sampling settings: cfg_scale must be >= 1, got 0.5"):
        app.parse_sampling(0.5, 1.0, 0, 1.0)
    with pytest.raises(app.gr.Error, match=r"top_p must be in \(0, 1\]"):
        app.parse_sampling(4.0, 1.0, 0, 0.0)


def test_parse_values_and_class():
    assert app.parse_values("lantern", "delta", "0, 0.1,0.2") == [0.0, 0.1, 0.2]
    assert app.parse_values("lantern", "ratio_bound", "none, 5") == [None, 5.0]
    assert app.parse_values("gsd", "group_size", "3, 5.0") == [3, 5]
    with pytest.raises(app.gr.Error, match="not a number"):
        app.parse_values("lantern", "delta", "0.1, big")
    model = app.get_model(MODEL)
    assert app.parse_class(model, "3: 3") == 3 and app.parse_class(model, 4) == 4
    with pytest.raises(app.gr.Error, match="whole number"):
        app.parse_class(model, 2.5)
    with pytest.raises(app.gr.Error, match=r"class must be in \[0, 9\], got 12"):
        app.parse_class(model, "12")


def test_gate_serves_a_waiting_generation_before_the_sweep_continues():
    gate, order = app.ModelGate(), []

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
