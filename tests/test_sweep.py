"""decoding/sweep.py: the plan, the unit files, resuming, and ranks: a 2-process torchrun sweep and a
sweep killed halfway and resumed both give the table and tokens of one uninterrupted process."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from decoding import sweep
from decoding.sampling import SamplingSettings
from models.registry import load_model

ROOT = Path(__file__).resolve().parent.parent
TIMED = {"decode s / image", "speedup vs ar"}  # measured wall clock: the only columns allowed to differ


def test_plan_balances_classes_and_fixes_seeds():
    arms = [sweep.Arm("ar", "ar"), sweep.Arm("ar@1000", "ar", seed_base=1000)]
    units = sweep.plan_units(arms, 5, [3, 7])
    assert [(u.arm.label, u.seed, u.label) for u in units[:4]] == [("ar", 0, 3), ("ar@1000", 1000, 3),
                                                                   ("ar", 1, 7), ("ar@1000", 1001, 7)]
    assert sorted(u.key for u in sweep.shard(units, 0, 3) + sweep.shard(units, 1, 3) + sweep.shard(units, 2, 3)) \
        == sorted(u.key for u in units)
    with pytest.raises(ValueError, match=r"images per setting must be in \[1, 100000\], got 0"):
        sweep.plan_units(arms, 0, [0])
    with pytest.raises(ValueError, match="arm labels must be unique"):
        sweep.plan_units([arms[0], arms[0]], 1, [0])


def test_every_rank_gets_every_arm_alike():
    """14 arms on 2 ranks (the 16k quality run): units[rank::2] gave rank 0 only the even arms."""
    for n_arms, world in [(14, 2), (6, 4), (3, 2), (4, 4), (5, 1)]:
        arms = [sweep.Arm(f"a{j}", "ar", seed_base=1000 * j) for j in range(n_arms)]
        units = sweep.plan_units(arms, 8 * world, [0])
        shards = [sweep.shard(units, r, world) for r in range(world)]
        assert sorted(u.key for s in shards for u in s) == sorted(u.key for u in units)
        for s in shards:
            assert len(s) == len(units) // world
            per_arm = {a.label: sum(u.arm.label == a.label for u in s) for a in arms}
            assert set(per_arm.values()) == {8}, (n_arms, world, per_arm)


def test_values_are_merged_and_settings_checked_before_running():
    assert sweep.dedupe_values(["1", 1.0, 2, "none", None, "2"]) == [1, 2, None]
    arms = sweep.sweep_arms("sjd", {"init": "vertical"}, "window", ["4", 4, 8], baseline=True)
    assert [a.label for a in arms] == ["ar", "sjd:init=vertical,window=4", "sjd:init=vertical,window=8"]
    with pytest.raises(ValueError, match="decoder 'sjd' has no parameter 'delta'"):
        sweep.sweep_arms("sjd", {}, "delta", [0.1], True)
    with pytest.raises(ValueError, match="window"):
        sweep.sweep_arms("sjd", {}, "window", [-3], True)


def test_a_cut_line_is_dropped_and_a_record_of_other_settings_is_not_reused(tmp_path):
    model = load_model("tiny-fixture")
    arms = [sweep.Arm("ar", "ar")]
    units = sweep.plan_units(arms, 3, [0, 1])
    first = sweep.run_units(model, units, SamplingSettings(), tmp_path, warmup=0)
    path = tmp_path / "units" / "rank-0.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:50])  # a kill in the middle of the third line
    assert set(sweep.UnitStore(tmp_path).records()) == {"ar#0", "ar#1"}
    again = sweep.run_units(model, units, SamplingSettings(), tmp_path, warmup=0)
    assert [r["trace"]["tokens"] for r in again] == [r["trace"]["tokens"] for r in first]
    assert len(path.read_text().splitlines()) == 3  # only the cut unit was redone
    other = sweep.run_units(model, units, SamplingSettings(cfg_scale=2.0), tmp_path, warmup=0)
    assert [r["spec"]["sampling"]["cfg_scale"] for r in other] == [2.0] * 3
    assert len(path.read_text().splitlines()) == 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sweep_args(out: Path, model: str, values: str, images: int) -> list[str]:
    return ["-m", "decoding.sweep", "--model", model, "--decoder", "sjd", "--parameter", "window", "--values",
            values, "--images", str(images), "--threads", "1", "--warmup", "0", "--no-progress", "--out", str(out)]


def run(cmd: list[str], timeout: float = 120) -> None:  # ~10 s each on 2 idle cores; generous for a shared one
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]


def merged(out: Path) -> tuple[list[dict], list[tuple]]:
    rows = [{k: v for k, v in r.items() if k not in TIMED} for r in json.loads((out / "table.json").read_text())]
    images = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    return rows, [(i["setting"]["window"], i["label"], i["trace"]["seed"], i["trace"]["tokens"]) for i in images]


def test_two_torchrun_ranks_give_the_table_of_one_process(tmp_path):
    run([sys.executable, *sweep_args(tmp_path / "one", "tiny-fixture", "2,3", 4)])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(free_port())]
    run(torchrun + sweep_args(tmp_path / "two", "tiny-fixture", "2,3", 4))
    assert sorted(p.name for p in (tmp_path / "two" / "units").iterdir()) == ["rank-0.jsonl", "rank-1.jsonl"]
    ranks = [len((tmp_path / "two" / "units" / f"rank-{r}.jsonl").read_text().splitlines()) for r in (0, 1)]
    assert ranks == [6, 6]  # 3 settings (ar, window 2, window 3) x 4 images, dealt round-robin
    one, two = merged(tmp_path / "one"), merged(tmp_path / "two")
    assert one == two and len(one[1]) == 12 and [r["images"] for r in one[0]] == [4, 4, 4]


def test_a_killed_sweep_resumes_where_it_stopped(tmp_path):
    """30 units of the tiny model (milliseconds each), killed once 6 are on disk."""
    args = ("tiny-fixture", "2,3", 10)  # ar, sjd window 2 and 3: 30 units
    run([sys.executable, *sweep_args(tmp_path / "whole", *args)])
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, *sweep_args(out, *args)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    units = out / "units" / "rank-0.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if units.exists() and units.read_text().count("\n") >= 6:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    written = units.read_text().count("\n")
    assert 6 <= written < 30, f"the kill should land mid-run, {written} of 30 units were written"
    assert not (out / "table.json").exists()
    run([sys.executable, *sweep_args(out, *args)])
    assert units.read_text().count("\n") == 30  # the finished units were not redone
    assert merged(out) == merged(tmp_path / "whole")


def test_run_sweep_table_has_the_ar_row_first_and_its_speedup(tmp_path):
    """The app's entry point: duplicates merged, ar first with speedup 1, every file written."""
    from analysis import sweeps

    calls = []
    result = sweep.run_sweep(load_model("tiny-fixture"), "sjd", {"init": "vertical"}, "window", ["3", 2, "2.0"], 2,
                             tmp_path, progress=lambda done, total: calls.append((done, total)), warmup=0)
    assert [(r["decoder"], r["window"], r["images"]) for r in result.rows] == [("ar", None, 2), ("sjd", 3, 2),
                                                                              ("sjd", 2, 2)]
    assert result.rows[0]["speedup vs ar"] == 1.0 and all(r["speedup vs ar"] > 0 for r in result.rows)
    assert result.rows[0]["step compression"] == 1.0 and result.rows[0]["class consistency"] is None
    assert calls[-1] == (6, 6) and len(result.samples) == 6
    assert sorted(result.files) == ["curves.html", "frontier.png", "speed_quality.html", "table.csv", "table.json",
                                    "traces.jsonl"]
    assert result.files["frontier.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = sweeps.sweep_curves(result.rows, "window")
    assert [s.x for s in curves.data if s.name == "decoder=sjd"][0] == (2, 3)  # sorted, no ar
    assert len(curves.layout.shapes) == 1  # ar's step compression as a dashed level (no acceptance, no classifier)
    assert sweeps.speed_quality_figure(result.rows, "window").data[0].text == ("ar",)


def test_wilson_interval():
    lo, hi = sweeps_module().wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)  # Wilson 1927, z = 1.96
    assert sweeps_module().wilson_interval(0, 5)[0] == pytest.approx(0.0, abs=1e-12)


def sweeps_module():
    from analysis import sweeps

    return sweeps
