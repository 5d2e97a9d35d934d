"""decoding/quality.py: the arms, the evaluation (on images with known properties), the files, the command."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from decoding import metrics, quality
from decoding.metrics import FD_NAME
from decoding.trace import Trace
from models.classifier import load_classifier
from models.data import CLASS_NAMES, load_subset
from models.registry import ASSETS


def test_arms_put_ar_first_and_the_noise_floor_last():
    specs = [("sjd", "sjd", {}), ("ar", "ar", {}), ("gsd:group_size=25", "gsd", {"group_size": 25}), ("sjd", "sjd", {})]
    arms = quality.quality_arms(specs)
    assert [a.label for a in arms] == ["ar", "sjd", "gsd:group_size=25", quality.NOISE_FLOOR]
    assert arms[-1].decoder == "ar" and arms[-1].seed_base == quality.FLOOR_SEED and arms[0].seed_base == 0
    with pytest.raises(ValueError, match="unknown decoder 'nope'"):
        quality.quality_arms([("nope", "nope", {})])


class PoolModel:
    """Stands in for a model at evaluation time: token 0 of a sequence picks a test image; ids from
    1000 on give that image inverted (a decoder that went badly wrong)."""

    def __init__(self, pool: np.ndarray):
        self.pool = pool
        self.info = type("Info", (), {"class_names": CLASS_NAMES, "vocab_size": 2000})()

    def decode_tokens(self, tokens) -> np.ndarray:
        i = int(np.asarray(tokens).ravel()[0])
        image = self.pool[i % 1000] if i < 1000 else 255 - self.pool[i % 1000]
        return np.repeat(image[..., None], 3, axis=2)


def pool_traces(ids: range, labels: np.ndarray, decoder: str, offset: int = 0, nfe: int = 2) -> list[Trace]:
    out = []
    for i in ids:
        t = Trace("pool", decoder, {}, i, int(labels[i]), CLASS_NAMES[labels[i]], (1, 2), 2000,
                  tokens=[i + offset, i % 7], commit_top1=[0.5, 0.01], commit_entropy=[1.0, 2.0],
                  forward_s=0.01 * nfe, vq_decode_s=0.001)
        t.steps = [None] * nfe  # only their number (NFE) is read here
        out.append(t)
    return out


def test_evaluation_separates_a_broken_decoder_from_the_noise_floor(tmp_path):
    pool, labels = load_subset("test")
    model = PoolModel(pool)
    arms = quality.quality_arms([("broken", "gsd", {})])
    traces = {"ar": pool_traces(range(0, 120), labels, "ar"),
              quality.NOISE_FLOOR: pool_traces(range(120, 240), labels, "ar"),
              "broken": pool_traces(range(240, 360), labels, "gsd", offset=1000, nfe=1)}
    clf = load_classifier(ASSETS / "fashion_mnist_classifier.pt")
    with metrics.blas_threads(1):
        rows = quality.evaluate_arms(arms, traces, 2000, lambda t: model.decode_tokens(t), clf, pool[400:], 40, 0)
    ar, broken, floor = rows
    assert [r["decoder"] for r in rows] == ["ar", "broken", quality.NOISE_FLOOR]
    assert broken["fd_ci"][0] > 3 * floor["fd_ci"][1] and broken["fd_vs_ar"] > 3 * floor["fd_vs_ar"]
    assert broken["kid"] > 10 * abs(floor["kid"]) and broken["precision"] < floor["precision"]
    assert floor["class_consistency"] > 0.8 > 0.3 > broken["class_consistency"]
    # token 0: ids 0-119 (ar) against 120-239 (floor) and 1240-1359 (broken)
    assert broken["position_tv_max"] == pytest.approx(1.0) == floor["position_tv_max"]
    assert broken["step_compression"] == 2.0 and broken["speedup"] > 1.5 and ar["speedup"] == 1.0
    assert "position_tv" not in ar and broken["lossless"] is False and ar["lossless"] is True
    report = {"model": "pool", "samples_per_decoder": 120, "rows": rows}
    quality.write_quality_outputs(tmp_path, report, model, traces, grid_rows=2)
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "grids" / "ar_other_seeds_.png").exists()
    csv_head = (tmp_path / "quality.csv").read_text().splitlines()[0].split(",")
    assert {"fd", "fd_lo", "fd_hi", "kid_lo", "coverage_hi", "class_consistency_lo"} <= set(csv_head)
    table = (tmp_path / "quality.md").read_text().splitlines()
    assert table[0].startswith("| decoder | lossless | samples | step compression | wall vs ar | FD [95%]")
    assert len(table) == 2 + len(rows) and table[3].startswith("| `broken` | no | 120 | 2.00 |")
    assert f"{floor['fd']:.1f} [{floor['fd_ci'][0]:.1f}, {floor['fd_ci'][1]:.1f}]" in table[4]
    assert f"{100 * floor['class_consistency']:.1f} [" in table[4] and table[2].endswith("| - | - |")  # no TV for ar
    points, band = quality.frontier_points(rows)
    assert [p["name"] for p in points] == ["ar", "broken"] and band == tuple(floor["fd_ci"])
    # read back, as the app's Sweep tab does: the JSON exactly, the CSV to its 5 decimals
    from_json, from_csv = quality.read_report(tmp_path / "quality.json"), quality.read_report(tmp_path / "quality.csv")
    assert from_json["model"] == "pool" and from_json["samples_per_decoder"] == 120 and from_csv["model"] is None
    assert quality.markdown_table(from_json["rows"]) + "\n" == (tmp_path / "quality.md").read_text()
    for back in (from_json["rows"], from_csv["rows"]):
        assert [r["decoder"] for r in back] == ["ar", "broken", quality.NOISE_FLOOR]
        for mine, read in zip(rows, back):
            assert read["fd"] == pytest.approx(mine["fd"], abs=1e-5) and read["lossless"] == mine["lossless"]
            assert read["fd_ci"] == pytest.approx(list(mine["fd_ci"]), abs=1e-5)
            assert read["class_consistency_ci"] == pytest.approx(list(mine["class_consistency_ci"]), abs=1e-5)
    assert quality.frontier_points(from_csv["rows"])[1] == pytest.approx(band, abs=1e-5)


GOOD_ROW = {"decoder": "sjd", "lossless": True, "samples": 10, "step_compression": 2.0, "fd": 30.0,
            "fd_ci": [25.0, 40.0]}


@pytest.mark.parametrize("name, content, message", [
    ("quality.txt", "{}", "quality.json or quality.csv"),
    ("quality.json", '{"rows": [{"decoder": "sjd", "step_comp', "not valid JSON \\(truncated\\?\\)"),
    ("quality.json", '{"rows": {"decoder": "sjd"}}', "no list of rows"),
    ("quality.json", '{"rows": []}', "has no rows"),
    ("quality.json", '\xff\xfe', "not UTF-8"),
    ("quality.json", json.dumps({"rows": [dict(GOOD_ROW, fd=float("nan"))]}), "'sjd''s fd is nan, not a finite"),
    ("quality.json", json.dumps({"rows": [dict(GOOD_ROW, step_compression="fast")]}), "step_compression is 'fast'"),
    ("quality.json", json.dumps({"rows": [dict(GOOD_ROW, step_compression=0)]}), "not > 0"),
    ("quality.json", json.dumps({"rows": [{k: v for k, v in GOOD_ROW.items() if k != "step_compression"}]}),
     "step_compression is missing"),
    ("quality.json", json.dumps({"rows": [dict(GOOD_ROW, decoder="")]}), "row 0 has no decoder name"),
    ("quality.json", json.dumps({"rows": [dict(GOOD_ROW, fd_ci=[40, 25])]}), "low end above its high end"),
    ("quality.json", json.dumps({"rows": [dict(GOOD_ROW, fd_ci=[1, 2, 3])]}), "not a \\(low, high\\) pair"),
    ("quality.json", json.dumps({"rows": [GOOD_ROW] * (quality.MAX_REPORT_ROWS + 1)}), "more than 500 rows"),
    ("quality.csv", "a,b\n1,2\n", "no decoder and step_compression columns"),
    ("quality.csv", "decoder,step_compression,fd\nsjd,2.0,inf\n", "fd is inf"),
])
def test_a_bad_result_file_is_refused_with_the_reason(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content.encode("latin-1") if content.startswith("\xff") else content.encode())
    with pytest.raises(ValueError, match=message):
        quality.read_report(path)


def test_a_result_file_too_large_or_missing_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "quality.json"
    path.write_text(json.dumps({"rows": [GOOD_ROW]}))
    assert quality.read_report(path)["rows"][0]["fd_ci"] == [25.0, 40.0]
    monkeypatch.setattr(quality, "MAX_REPORT_BYTES", 20)
    with pytest.raises(ValueError, match="a quality result is at most"):
        quality.read_report(path)
    with pytest.raises(ValueError, match="cannot be read"):
        quality.read_report(tmp_path / "missing.json")


def test_the_command_writes_and_resumes_on_the_tiny_model(tmp_path, capsys):
    args = ["--model", "tiny-fixture", "--decoders", "sjd:window=3", "--samples", "4", "--threads", "1",
            "--warmup", "0", "--no-progress", "--out", str(tmp_path)]
    report = quality.main(args)
    assert [r["decoder"] for r in report["rows"]] == ["ar", "sjd:window=3", quality.NOISE_FLOOR]
    assert all(r["samples"] == 4 for r in report["rows"]) and "fd" not in report["rows"][1]
    assert any("no classifier" in n for n in report["notes"])
    assert "FD" not in (tmp_path / "quality.md").read_text().splitlines()[0]  # no classifier, no FD column
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert saved["rows"][1]["position_tv"] == report["rows"][1]["position_tv"] and saved["fd_name"] == FD_NAME
    records = [json.loads(line) for line in (tmp_path / "units" / "rank-0.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all("image" in r and "trace" not in r for r in records)  # compact by default
    again = quality.main(args)
    assert (tmp_path / "units" / "rank-0.jsonl").read_text().count("\n") == 12  # nothing redone
    assert [r["position_tv"] for r in again["rows"][1:]] == [r["position_tv"] for r in report["rows"][1:]]
    assert "sjd:window=3" in capsys.readouterr().out


def test_a_compact_record_reads_as_its_full_trace():
    from decoding.registry import make_decoder
    from decoding.sampling import SamplingSettings
    from decoding.sweep import compact_record
    from models.registry import load_model

    trace = make_decoder("sjd", window=3).generate(load_model("tiny-fixture"), 1, SamplingSettings(), seed=4).trace
    full = quality.ImageSummary.from_record({"trace": trace.to_dict()})
    compact = quality.ImageSummary.from_record({"image": json.loads(json.dumps(compact_record(trace)))})
    assert compact.tokens == full.tokens == trace.tokens and compact.nfe == full.nfe == trace.nfe
    assert compact.step_compression == trace.step_compression and compact.label == 1
    assert compact.total_s == pytest.approx(trace.total_s)
    assert compact.commit_top1 == pytest.approx(full.commit_top1, abs=1e-5)  # rounded to 5 decimals


def test_inception_fid_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_fid", None)  # import fails as if not installed
    assert "pip install pytorch-fid" in quality.inception_fid_status()
    report = quality.main(["--model", "tiny-fixture", "--decoders", "ar", "--samples", "2", "--warmup", "0",
                           "--no-progress", "--inception-fid", str(tmp_path / "ref.npz"), "--out", str(tmp_path)])
    assert any(n.startswith("Inception FID skipped: Inception FID needs the pytorch-fid") for n in report["notes"])


def test_bad_counts_and_models_are_refused_with_the_reason(tmp_path, capsys):
    with pytest.raises(SystemExit):
        quality.main(["--model", "tiny-fixture", "--samples", "1", "--out", str(tmp_path)])
    assert "samples per decoder must be in [2, 100000], got 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality.main(["--model", "nope", "--out", str(tmp_path)])
    assert "--model nope: unknown model 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality.main(["--model", "tiny-fixture", "--samples", "4", "--per-class", "2", "--out", str(tmp_path)])


def test_sample_grid_names_each_column_as_far_as_it_fits():
    from PIL import ImageDraw

    from decoding.quality import sample_grid

    images = [np.zeros((28, 28), np.uint8)] * 2
    grid = sample_grid(images, [0, 1], ("T-shirt/top", "x" * 200), per_row=1)
    header = np.asarray(grid)[:14]
    assert grid.size == (2 * 84, 14 + 84)
    assert ImageDraw.Draw(grid).textlength("T-shirt/top") < 80  # the whole name fits in its 84-px column
    assert (header[:, 84:86] == 255).all() and (header[:, -2:] == 255).all()  # a long name stops at its column
    assert (header[:, 84:] < 255).any()


def test_runs_of_decoder_groups_merge_into_the_table_of_one_run(tmp_path, capsys):
    common = ["--model", "tiny-fixture", "--samples", "4", "--threads", "1", "--warmup", "0", "--no-progress"]
    whole = quality.main(common + ["--decoders", "sjd:window=3,jacobi", "--out", str(tmp_path / "whole")])
    quality.main(common + ["--decoders", "sjd:window=3", "--out", str(tmp_path / "a")])
    quality.main(common + ["--decoders", "jacobi", "--out", str(tmp_path / "b")])
    merged = quality.main(["--merge", str(tmp_path / "a" / "quality.json"), str(tmp_path / "b" / "quality.json"),
                           "--out", str(tmp_path / "merged")])
    assert [r["decoder"] for r in merged["rows"]] == [r["decoder"] for r in whole["rows"]]
    for got, want in zip(merged["rows"], whole["rows"]):
        assert quality._same_numbers(quality._drawn(got), quality._drawn(quality._checked_row(want, 0, "w"))) is None
    again = quality.read_report(tmp_path / "merged" / "quality.json")
    assert again["rows"] == merged["rows"] and (tmp_path / "merged" / "quality.md").exists()
    assert "merged 2 runs" in capsys.readouterr().out


def test_runs_that_drew_other_images_are_not_merged(tmp_path, capsys):
    common = ["--model", "tiny-fixture", "--threads", "1", "--warmup", "0", "--no-progress", "--decoders", "jacobi"]
    quality.main(common + ["--samples", "4", "--out", str(tmp_path / "a")])
    quality.main(common + ["--samples", "6", "--out", str(tmp_path / "b")])
    quality.main(common + ["--samples", "4", "--temperature", "0.5", "--out", str(tmp_path / "c")])
    a, b, c = (str(tmp_path / x / "quality.json") for x in "abc")
    for other, message in ((b, "differ in samples per decoder"), (c, "differ in sampling")):
        with pytest.raises(SystemExit):
            quality.main(["--merge", a, other, "--out", str(tmp_path / "m")])
        assert message in capsys.readouterr().err
    report = quality.read_report(a)
    forged = dict(report, rows=[dict(r, position_tv=0.5) if r["decoder"] == quality.NOISE_FLOOR else r
                                for r in report["rows"]])
    with pytest.raises(ValueError, match="did not draw the same images"):
        quality.merge_reports([("a", report), ("forged", forged)])
    with pytest.raises(ValueError, match="needs each run's quality.json"):
        quality.merge_reports([("a", report), ("csv", quality.read_report(tmp_path / "a" / "quality.csv"))])
    assert not (tmp_path / "m").exists()
