"""The benchmark command: option parsing and one small run on the tiny fixture model."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import pytest
import torch

from decoding.benchmark import build_parser, main, parse_decoder_specs, parse_int_list, parse_value
from decoding.official_llamagen import OfficialRunner, import_official, official_transformer
from decoding.registry import make_decoder
from decoding.sampling import SamplingSettings
from models.checkpoint import save_checkpoint
from models.registry import FIXTURES, load_model


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
                   "--top-p", "--warmup", "--out", "--threads", "--classifier", "--traces", "--official-llamagen"):
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


# -- side by side with the official LlamaGen code -------------------------------------------------
# a bare git mirror (or any git repository) of FoundationVision/LlamaGen, named by the environment only
LLAMAGEN_GIT = Path(os.environ["SPECLENS_LLAMAGEN_GIT"]) if os.environ.get("SPECLENS_LLAMAGEN_GIT") else None


def test_official_llamagen_option_is_parsed():
    assert build_parser().parse_args([]).official_llamagen is None
    assert build_parser().parse_args(["--official-llamagen", "~/LlamaGen"]).official_llamagen == "~/LlamaGen"


def test_official_llamagen_option_rejects_a_path_that_is_not_a_checkout(tmp_path, capsys):
    (tmp_path / "autoregressive" / "models").mkdir(parents=True)
    (tmp_path / "autoregressive" / "models" / "gpt.py").write_text("")
    with pytest.raises(SystemExit) as e:
        main(["--model", "tiny-fixture", "--official-llamagen", str(tmp_path), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--official-llamagen" in err and "not a checkout of FoundationVision/LlamaGen" in err
    assert "autoregressive/models/generate.py" in err and "utils/drop_path.py" in err
    assert "missing autoregressive/models/gpt.py" not in err  # only what is missing is named
    with pytest.raises(ValueError, match="not a checkout"):
        import_official(tmp_path / "nowhere")


def test_import_official_puts_the_checkout_first_and_restores_utils(tmp_path, monkeypatch):
    """A stand-in checkout: its gpt.py imports its own `utils`, even when another `utils` is loaded."""
    for rel, text in {
        "utils/drop_path.py": "MARK = 'theirs'\n",
        "autoregressive/models/gpt.py": "from dataclasses import dataclass\nfrom utils.drop_path import MARK\n"
                                        "@dataclass\nclass ModelArgs:\n    dim: int = 8\n"
                                        "class Transformer:\n    mark = MARK\n",
        "autoregressive/models/generate.py": "def generate(model, cond, max_new_tokens, **kw):\n    return 'ok'\n",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    ours = types.ModuleType("utils")
    monkeypatch.setitem(sys.modules, "utils", ours)
    official = import_official(tmp_path)
    assert official.Transformer.mark == "theirs" and official.ModelArgs().dim == 8
    assert official.generate(None, None, 1) == "ok"
    assert sys.modules["utils"] is ours and "utils.drop_path" not in sys.modules
    assert str(tmp_path) not in sys.path


@pytest.fixture(scope="module")
def llamagen_checkout(tmp_path_factory) -> Path:
    """`git archive HEAD autoregressive utils` of the LlamaGen mirror; skipped where there is none."""
    if LLAMAGEN_GIT is None or not (LLAMAGEN_GIT / "HEAD").is_file() or shutil.which("git") is None:
        pytest.skip(f"no FoundationVision/LlamaGen git mirror at SPECLENS_LLAMAGEN_GIT={LLAMAGEN_GIT}")
    archive = subprocess.run(["git", "-C", str(LLAMAGEN_GIT), "archive", "HEAD", "autoregressive", "utils"],
                             capture_output=True, check=True).stdout
    root = tmp_path_factory.mktemp("llamagen")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    return root


def test_official_code_loads_our_checkpoint_and_computes_our_logits(llamagen_checkout, tmp_path):
    model = load_model("tiny-fixture")
    path = tmp_path / "gpt.pt"
    save_checkpoint(path, model.gpt, {"config": model.gpt.config.to_dict()})
    official = import_official(llamagen_checkout)
    theirs = official_transformer(official, path)  # from the stored config, strict load
    labels, tokens = torch.tensor([3, 10]), torch.randint(0, model.info.vocab_size, (2, 15))
    with torch.no_grad():
        expected, _ = theirs(tokens, labels, input_pos=torch.arange(16))
        torch.testing.assert_close(model.gpt(labels, tokens), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_official_generate_top1_equals_our_greedy_ar(llamagen_checkout, cfg_scale):
    model = load_model("tiny-fixture")
    runner = OfficialRunner(llamagen_checkout, FIXTURES / "gpt_tiny.pt", model.gpt.config.to_dict())
    n = model.info.num_tokens
    for label in (0, 4, 9):
        theirs, seconds = runner.run(label, n, SamplingSettings(cfg_scale, 1.0, top_k=1), seed=label)
        ours = make_decoder("ar").generate(model, label, SamplingSettings(cfg_scale, 0.0), decode_image=False)
        assert torch.equal(theirs, ours.tokens) and seconds > 0


def test_benchmark_side_by_side_with_official_generate(llamagen_checkout, tmp_path):
    report = main(["--model", "tiny-fixture", "--decoders", "ar", "--seeds", "2", "--classes", "0,5", "--warmup", "1",
                   "--threads", "1", "--out", str(tmp_path), "--no-progress", "--official-llamagen",
                   str(llamagen_checkout)])
    side = report["official_llamagen"]
    assert side["runs"] == 4 and side["checkpoint"].endswith("gpt_tiny.pt")
    assert side["official_tokens_per_s"] > 0 and side["ar_tokens_per_s"] > 0
    assert side["ar_over_official"] == round(side["ar_tokens_per_s"] / side["official_tokens_per_s"], 3)
    official_runs = [r for r in report["runs"] if r["decoder"] == "llamagen-generate"]
    assert len(official_runs) == 4 and {r["order"] for r in official_runs} == {0, 1}  # rotated with ar
    assert [r["decoder"] for r in report["summary"]] == ["ar"]
