"""The benchmark command: option parsing and one small run on the tiny fixture model."""
from __future__ import annotations

import csv
import json

import pytest

from decoding.benchmark import build_parser, main, parse_decoder_specs, parse_int_list, parse_value


def test_parse_decoder_specs():
    specs = parse_decoder_specs(["ar,gsd:group_size=25,prob_filter=0.15,sjd", "pkg.mod:Cls:window=8,init=vertical"])
    assert specs == [
        ("ar", "ar", {}),
        ("gsd:group_size=25,prob_filter=0.15", "gsd", {"group_size": 25, "prob_filter": 0.15}),
        ("sjd", "sjd", {}),
        ("pkg.mod:Cls:window=8,init=vertical", "pkg.mod:Cls", {"window": 8, "init": "vertical"}),
    ]
    assert parse_decoder_specs(["pkg.mod:Cls"]) == [("pkg.mod:Cls", "pkg.mod:Cls", {})]
    with pytest.raises(ValueError, match="before any decoder"):
        parse_decoder_specs(["window=3"])


def test_parse_values_and_lists():
    assert [parse_value(v) for v in ("none", "True", "3", "0.5", "vq")] == [None, True, 3, 0.5, "vq"]
    assert parse_int_list("all", range(3)) == [0, 1, 2]
    assert parse_int_list("2-4", range(0)) == [2, 3, 4]
    assert parse_int_list("1,5", range(0)) == [1, 5]


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--decoders", "--seeds", "--classes", "--cfg-scale", "--temperature", "--top-k",
                   "--top-p", "--warmup", "--out", "--threads", "--classifier", "--traces"):
        assert option in text
    assert "window_cost_ratio" in text and "speedup" in text


def test_benchmark_runs_and_saves(tmp_path):
    report = main(["--model", "tiny-fixture", "--decoders", "sjd:window=6,lantern:delta=0.3",
                   "--decoders", "gsd:group_size=4,prob_filter=none", "--seeds", "2", "--classes", "0,3",
                   "--warmup", "1", "--threads", "1", "--out", str(tmp_path), "--traces", "--no-progress"])
    labels = [row["decoder"] for row in report["summary"]]
    assert labels == ["ar", "sjd:window=6", "lantern:delta=0.3", "gsd:group_size=4,prob_filter=None"]
    ar, sjd = report["summary"][0], report["summary"][1]
    assert ar["speedup"] == 1.0 and ar["nfe"] == 16 and ar["runs"] == 4
    assert sjd["nfe"] <= 16 and sjd["window_cost_ratio"] > 0 and 0 <= sjd["overhead_share"] < 1
    assert "class_consistency" not in ar  # no classifier for this model
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert saved["summary"] == report["summary"] and len(saved["runs"]) == 16
    with open(tmp_path / "benchmark.csv") as f:
        assert [row["decoder"] for row in csv.DictReader(f)] == labels
    assert len((tmp_path / "traces.jsonl").read_text().splitlines()) == 16
    # interleaving: within every (seed, class) slot each decoder runs once, the order rotates
    for seed, label in ((0, 0), (0, 3), (1, 0)):
        slot = sorted((r["order"], r["decoder"]) for r in saved["runs"] if r["seed"] == seed and r["class"] == label)
        assert sorted(d for _, d in slot) == sorted(labels)
    first = {r["decoder"]: r["order"] for r in saved["runs"] if r["seed"] == 0 and r["class"] == 0}
    second = {r["decoder"]: r["order"] for r in saved["runs"] if r["seed"] == 0 and r["class"] == 3}
    assert first != second  # the order rotates from one slot to the next
