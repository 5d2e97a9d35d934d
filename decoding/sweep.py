"""One runner for sweeps and quality runs: (setting, seed, class) work units, sharded over ranks,
one JSON line per finished unit, resumable, merged in unit order.

    python -m decoding.sweep --model fashion-mnist --decoder lantern --parameter delta \\
        --values 0,0.05,0.1,0.2 --images 50 --out runs/sweep
    torchrun --nproc_per_node 4 -m decoding.sweep ...      # the same sweep on 4 processes / GPUs

A run is a list of *arms* (a decoder with its settings, and the first seed of its images) times
`n_images`: image i of every arm has class `classes[i % len(classes)]` (classes balanced) and seed
`seed_base + i`. Units are dealt to the ranks round-robin (rank and world size from torchrun's
RANK / WORLD_SIZE / LOCAL_RANK; a plain `python -m` is one rank; gloo on CPU, nccl on GPU). Each
rank appends one complete JSON line per finished unit to `units/rank-<r>.jsonl` (written, flushed
and fsynced before the next unit starts); at start every rank reads all such files, so a killed run,
restarted with any number of ranks, redoes only the units no line records. A record counts only if
its model, sampling settings, decoder settings, seed and class equal the unit's. When all ranks are
done, rank 0 merges the records in plan order, so the merged tokens and every count are the same
whatever the number of ranks; wall-clock columns are measured and vary from run to run. Identical
tokens need the same device and thread count (floating point).

Sweep outputs in --out: table.csv / table.json (one row per setting, `ar` baseline first, speedup
vs ar), traces.jsonl (every image's trace, in plan order), curves.html, speed_quality.html and
frontier.png. The app's Sweep tab calls `run_sweep` and reads these files.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from decoding.files import atomic_write_bytes, atomic_write_text, atomic_writer
from decoding.registry import decoder_class, make_decoder
from decoding.sampling import SamplingSettings, add_sampling_args, settings_from_args
from decoding.trace import Trace

MAX_IMAGES = 100_000  # per arm
MAX_UNITS = 1_000_000  # per run
BASELINE = "ar"
Progress = Callable[[int, int], None]  # (units done, units in all), called after every unit


# -- the plan -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arm:
    """One setting of a run: a decoder (registered name or import path), its parameters, a label
    unique within the run and the seed of its image 0."""

    label: str
    decoder: str
    params: dict = field(default_factory=dict)
    seed_base: int = 0

    def setting(self) -> dict:
        return {"decoder": self.decoder, **self.params}


@dataclass(frozen=True)
class Unit:
    arm: Arm
    index: int  # image index within the arm
    seed: int
    label: int  # class

    @property
    def key(self) -> str:
        return f"{self.arm.label}#{self.index}"

    def spec(self, model_name: str, sampling: SamplingSettings) -> dict:
        """Everything that determines the unit's tokens: a record is reused only if it equals this."""
        return json.loads(json.dumps({"model": model_name, "sampling": sampling.to_dict(), "decoder": self.arm.decoder,
                                      "params": self.arm.params, "seed": self.seed, "label": self.label},
                                     sort_keys=True, default=str))


def arm_label(decoder: str, params: dict) -> str:
    return decoder + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")


def plan_units(arms: list[Arm], n_images: int, classes: list[int]) -> list[Unit]:
    """Image-major (image 0 of every arm, then image 1, ...) so that every rank and every stretch of
    the run works on all arms alike."""
    if not 1 <= n_images <= MAX_IMAGES:
        raise ValueError(f"images per setting must be in [1, {MAX_IMAGES}], got {n_images}")
    if not classes:
        raise ValueError("give at least one class")
    labels = [a.label for a in arms]
    if len(set(labels)) != len(labels):
        raise ValueError(f"arm labels must be unique, got {labels}")
    if len(arms) * n_images > MAX_UNITS:
        raise ValueError(f"{len(arms)} settings x {n_images} images = {len(arms) * n_images} units; "
                         f"a run holds at most {MAX_UNITS}")
    return [Unit(a, i, a.seed_base + i, classes[i % len(classes)]) for i in range(n_images) for a in arms]


def shard(units: list[Unit], rank: int, world: int) -> list[Unit]:
    """This rank's units. Within an image the arms go to consecutive ranks, and from one image to the next
    the first arm's rank moves on, so that every arm's images are spread over every rank. (`units[rank::world]`
    does that only when the arm count and `world` share no factor: with 14 arms on 2 ranks it gave one rank
    the even arms and the other the odd ones, and the slower rank's half of the decoders set the run's end.)"""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world - 1}], got {rank}")
    place = {label: j for j, label in enumerate(dict.fromkeys(u.arm.label for u in units))}
    step = len(place) if math.gcd(len(place), world) == 1 else 1  # coprime: the same as units[rank::world]
    return [u for u in units if (place[u.arm.label] + u.index * step) % world == rank]


# -- finished units on disk -------------------------------------------------------------------------------
class UnitStore:
    """`folder/units/rank-<r>.jsonl`: one complete JSON line per finished unit."""

    def __init__(self, folder: str | Path):
        self.dir = Path(folder) / "units"

    def records(self, specs: dict[str, dict] | None = None) -> dict[str, dict]:
        """Every complete record of every rank file (the first one wins for a key); a line cut short by
        a kill is skipped; with `specs`, only records whose spec equals specs[key]."""
        out: dict[str, dict] = {}
        for path in sorted(self.dir.glob("rank-*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(record, dict) or "key" not in record:
                    continue
                if specs is None or specs.get(record["key"]) == record.get("spec"):
                    out.setdefault(record["key"], record)
        return out

    def writer(self, rank: int) -> RankWriter:
        return RankWriter(self.dir / f"rank-{rank}.jsonl")


class RankWriter:
    """Appends records to one rank's file; first cuts a partial last line (left by a kill)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
        self.file = open(path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


# -- ranks ----------------------------------------------------------------------------------------------------
def rank_and_world() -> tuple[int, int]:
    """From torchrun's environment (RANK, WORLD_SIZE); (0, 1) without it."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as e:
        raise ValueError(f"RANK and WORLD_SIZE must be integers: {e}") from e
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE - 1] and WORLD_SIZE >= 1, got {rank} and {world}")
    return rank, world


def rank_device(device: str) -> str:
    """'auto' -> this rank's GPU (LOCAL_RANK) when there is one, else cpu."""
    if device != "auto":
        return device
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def process_group(world: int, device: str):
    """A gloo (CPU) / nccl (GPU) group when torchrun started several ranks; nothing for one rank."""
    if world == 1:
        yield None
        return
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=24))
    try:
        yield dist
    finally:
        dist.destroy_process_group()


# -- progress --------------------------------------------------------------------------------------------------
class ProgressBar:
    """Plain-text progress with rate and ETA on stderr: redrawn in place on a terminal, a line at
    most every `every_s` seconds otherwise (logs)."""

    def __init__(self, prefix: str = "", stream=None, every_s: float = 10.0):
        self.prefix, self.stream, self.every_s = prefix, stream or sys.stderr, every_s
        self.t0, self.first, self.last_print = time.perf_counter(), None, 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = (done - 1, now)  # units already on disk do not count for the rate
        tty = getattr(self.stream, "isatty", lambda: False)()
        if not tty and done < total and now - self.last_print < self.every_s:
            return
        self.last_print = now
        self.stream.write(("\r" if tty else "") + self.line(done, total, now) + ("" if tty and done < total else "\n"))
        self.stream.flush()

    def line(self, done: int, total: int, now: float) -> str:
        ran, t_start = done - self.first[0], self.t0
        rate = (now - t_start) / max(ran, 1)
        width = 24
        filled = int(width * done / max(total, 1))
        eta = format_seconds(rate * (total - done))
        return (f"{self.prefix}[{'#' * filled}{'.' * (width - filled)}] {done}/{total} units, "
                f"{rate:.2f} s/unit, ETA {eta}")


def format_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# -- running -------------------------------------------------------------------------------------------------
def run_units(model, units: list[Unit], sampling: SamplingSettings, out_dir: str | Path,
              progress: Progress | None = None, unit_context: Callable[[], Any] | None = None,
              warmup: int = 1, full_traces: bool = True) -> list[dict]:
    """Run this process's share of `units` (skipping those already recorded in out_dir), wait for
    the other ranks, and return every record in plan order on rank 0 ([] on the other ranks).

    unit_context: a context manager factory entered around each generation (the app's queue gate);
    full_traces: record each image's whole trace (~100 KB on the bundled model), else its compact
    summary (`compact_record`, ~4 KB: what quality runs need)."""
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    rank, world = rank_and_world()
    store = UnitStore(out_dir)
    specs = {u.key: u.spec(model.info.name, sampling) for u in units}
    with process_group(world, str(model.device)) as dist:
        done = store.records(specs)  # read once: the files hold every finished unit (tens of MB with traces)
        share = shard(units, rank, world)
        mine = [u for u in share if u.key not in done]
        done_before = len(share) - len(mine)
        decoders = {u.arm.label: make_decoder(u.arm.decoder, **u.arm.params) for u in units}
        for label in dict.fromkeys(u.arm.label for u in mine):  # untimed: builds caches first
            for i in range(warmup):
                decoders[label].generate(model, units[0].label, sampling, seed=10**9 + i)
        writer = store.writer(rank)
        try:
            for n, unit in enumerate(mine):
                with unit_context() if unit_context is not None else contextlib.nullcontext():
                    trace = decoders[unit.arm.label].generate(model, unit.label, sampling, seed=unit.seed).trace
                writer.append({"key": unit.key, "arm": unit.arm.label, "index": unit.index, "rank": rank,
                               "spec": specs[unit.key],
                               **({"trace": trace.to_dict()} if full_traces else {"image": compact_record(trace)})})
                if progress is not None:
                    progress(done_before + n + 1, done_before + len(mine))
        finally:
            writer.close()
        if dist is not None:
            dist.barrier()
    return merged_records(store, units, specs) if rank == 0 else []


def merged_records(store: UnitStore, units: list[Unit], specs: dict[str, dict]) -> list[dict]:
    done = store.records(specs)
    missing = [u.key for u in units if u.key not in done]
    if missing:
        raise RuntimeError(f"{len(missing)} units have no record after the run (first: {missing[0]}); "
                           f"run again to finish them")
    return [done[u.key] for u in units]


def compact_record(trace: Trace) -> dict:
    """What the quality metrics read of an image: tokens, class, counts, times, and the target's
    top-1 probability and entropy per position (rounded)."""
    return {"tokens": trace.tokens, "label": trace.label, "seed": trace.seed, "decoder": trace.decoder,
            "nfe": trace.nfe, "num_tokens": trace.num_tokens, "forward_s": trace.forward_s,
            "overhead_s": trace.overhead_s, "vq_decode_s": trace.vq_decode_s,
            "commit_top1": [round(v, 5) for v in trace.commit_top1],
            "commit_entropy": [round(v, 5) for v in trace.commit_entropy],
            "kinds": trace.kind_counts()}


def record_trace(record: dict) -> Trace:
    return Trace.from_dict(record["trace"])


# -- sweeps -----------------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """rows: the sweep table (analysis.sweeps.sweep_table: one row per setting, `ar` first, speedup
    vs ar); samples: one SweepSample per image in plan order; files: name -> path written."""

    rows: list[dict]
    samples: list
    files: dict[str, Path]


def dedupe_values(values: Iterable) -> list:
    """Values in first-seen order, duplicates merged (1, 1.0 and '1' are one value)."""
    from decoding.benchmark import parse_value

    out, seen = [], set()
    for v in values:
        v = parse_value(v) if isinstance(v, str) else v
        key = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else repr(v)
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def sweep_arms(decoder: str, base_settings: dict, parameter: str, values: list, baseline: bool) -> list[Arm]:
    names = decoder_class(decoder).parameter_names()
    if parameter not in names:
        raise ValueError(f"decoder {decoder!r} has no parameter {parameter!r}; it has {names}")
    if parameter in base_settings:
        raise ValueError(f"{parameter!r} is the swept parameter; leave it out of the base settings")
    grid = dedupe_values(values)
    if not grid:
        raise ValueError("give at least one value to sweep")
    arms = [Arm(arm_label(decoder, {**base_settings, parameter: v}), decoder, {**base_settings, parameter: v})
            for v in grid]
    for arm in arms:
        make_decoder(arm.decoder, **arm.params)  # every setting's range errors before anything runs
    if baseline and decoder != BASELINE:
        arms.insert(0, Arm(BASELINE, BASELINE))
    return arms


def run_sweep(model, decoder: str, base_settings: dict, parameter: str, values: list, n_images: int,
              out_dir: str | Path, *, sampling: SamplingSettings | None = None, classes: list[int] | None = None,
              baseline: bool = True, classifier: Any = "auto", progress: Progress | None = None,
              unit_context: Callable[[], Any] | None = None, warmup: int = 1) -> SweepResult | None:
    """Sweep one hyperparameter of `decoder` over `values` (duplicates merged), `n_images` per value
    (classes cycled, seed = image index), with the same images under `ar` as the speed baseline.

    model: an ARImageModel; base_settings: the decoder's other parameters; classes: default all;
    classifier: 'auto' (the shipped one for fashion-mnist), None, or a callable uint8 images ->
    labels; progress(done, total) after every unit; unit_context: entered around each generation;
    warmup: untimed generations per setting first.
    Resumes from out_dir. Returns the table, samples and files on rank 0, None on other ranks."""
    from analysis import sweeps

    sampling = sampling or SamplingSettings()
    arms = sweep_arms(decoder, dict(base_settings), parameter, list(values), baseline)
    classes = list(range(model.info.num_classes)) if classes is None else list(classes)
    records = run_units(model, plan_units(arms, n_images, classes), sampling, out_dir, progress, unit_context, warmup)
    if not records:
        return None
    clf = default_classifier(model) if classifier == "auto" else classifier
    by_label = {a.label: a for a in arms}
    samples = []
    for record in records:
        trace = record_trace(record)
        v = by_label[record["arm"]].params.get(parameter)
        predicted = int(clf(model.decode_tokens(torch.tensor(trace.tokens))[None])[0]) if clf is not None else None
        samples.append(sweeps.SweepSample({"decoder": trace.decoder, parameter: v}, trace, trace.label, predicted))
    rows = sweeps.sweep_table(samples)
    return SweepResult(rows, samples, write_sweep_outputs(Path(out_dir), rows, samples, parameter))


def default_classifier(model):
    """The shipped Fashion-MNIST classifier for the bundled models, None for other models."""
    from models.registry import classifier_path

    path = classifier_path(model.info.name)
    if path is None:
        return None
    from models.classifier import load_classifier

    return load_classifier(path)


def write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    keys = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_writer(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def write_sweep_outputs(out: Path, rows: list[dict], samples: list, parameter: str) -> dict[str, Path]:
    from analysis import sweeps

    files = {name: out / name for name in ("table.json", "table.csv", "traces.jsonl", "curves.html",
                                           "speed_quality.html", "frontier.png")}
    atomic_write_text(files["table.json"], json.dumps(rows, indent=2))
    write_csv(files["table.csv"], rows)
    with atomic_writer(files["traces.jsonl"], "w") as f:
        for s in samples:
            f.write(json.dumps({"setting": s.setting, "label": s.label, "predicted": s.predicted,
                                "trace": s.trace.to_dict()}) + "\n")
    atomic_write_text(files["curves.html"], sweeps.sweep_curves(rows, parameter).to_html(include_plotlyjs=True))
    atomic_write_text(files["speed_quality.html"],
                      sweeps.speed_quality_figure(rows, parameter).to_html(include_plotlyjs=True))
    atomic_write_bytes(files["frontier.png"], sweeps.sweep_frontier_png(rows, parameter))
    return files


# -- the command ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m decoding.sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fashion-mnist", help="registered model name (default fashion-mnist)")
    ap.add_argument("--decoder", default="lantern", help="decoder name or import path 'pkg.module:Class'")
    ap.add_argument("--parameter", default="delta", help="the hyperparameter to sweep")
    ap.add_argument("--values", default="0,0.05,0.1,0.2,0.4", help="comma list of values (duplicates merged)")
    ap.add_argument("--images", type=int, default=20, help=f"images per value, 1..{MAX_IMAGES} (classes cycled)")
    ap.add_argument("--settings", default="{}", help="the decoder's other settings as JSON")
    ap.add_argument("--classes", default="all", help="'all', 'a-b' or 'a,b,c' (default all)")
    add_sampling_args(ap)
    ap.add_argument("--no-baseline", action="store_true", help="no `ar` row (and no speedup column)")
    ap.add_argument("--classifier", default="auto", help="'auto' (shipped one for fashion-mnist), 'none' or a path")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (this rank's GPU when there is one)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads per rank")
    ap.add_argument("--warmup", type=int, default=1, help="untimed generations per setting first (default 1)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", default="runs/sweep", help="output folder; a run there is resumed")
    return ap


def load_run_model(name: str, device: str, threads: int | None, ap: argparse.ArgumentParser | None = None):
    """The model on this rank's device; a model whose weights are missing ends the command with the
    registry's message (which files to place where), not a traceback."""
    from models.registry import ModelUnavailable, load_model

    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        return load_model(name, rank_device(device))
    except (ModelUnavailable, ValueError) as e:
        if ap is None:
            raise
        ap.error(f"--model {name}: {e}")


def classifier_option(value: str, model):
    if value == "auto":
        return default_classifier(model)
    if value == "none":
        return None
    from models.classifier import load_classifier

    return load_classifier(value)


def main(argv: list[str] | None = None) -> SweepResult | None:
    from decoding.benchmark import parse_int_list

    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        settings = json.loads(a.settings)
    except json.JSONDecodeError as e:
        ap.error(f"--settings must be a JSON object: {e}")
    if not isinstance(settings, dict):
        ap.error(f"--settings must be a JSON object, got {a.settings!r}")
    model = load_run_model(a.model, a.device, a.threads, ap)
    classes = parse_int_list(a.classes, range(model.info.num_classes))
    rank, world = rank_and_world()
    bar = None if a.no_progress else ProgressBar(f"rank {rank}/{world} " if world > 1 else "")
    result = run_sweep(model, a.decoder, settings, a.parameter, a.values.split(","), a.images, a.out,
                       sampling=settings_from_args(a, model.info), classes=classes,
                       baseline=not a.no_baseline, classifier=classifier_option(a.classifier, model), progress=bar,
                       warmup=a.warmup)
    if result is not None:
        print(format_table_rows(result.rows))
        print(f"\nsaved to {Path(a.out)}: " + ", ".join(p.name for p in result.files.values()))
    return result


def format_table_rows(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
