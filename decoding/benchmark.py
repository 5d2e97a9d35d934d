"""Benchmark decoders on a model: NFE, step compression, accepted length, wall clock, speedup over
AR in the same run, decoder overhead, memory, window-cost ratio and (optionally) class-consistency.

    python -m decoding.benchmark --model fashion-mnist --decoders ar,sjd,sjd-coupled \\
        --decoders gsd:group_size=25,prob_filter=0.15 --seeds 3 --classes all --out runs/benchmark

Runs decoders x seeds x classes. For every (seed, class) all decoders run one after the other,
in an order rotated from one pair to the next, so that machine drift and ordering effects hit every
decoder alike. Each decoder first runs --warmup untimed generations (this also builds its cached
neighbour lists / embedding tables). `ar` always runs: it is the baseline of the speedup.

Reported per decoder (medians over its runs unless stated):
  nfe                   forward passes of the target, prefill included
  step_compression      tokens / NFE
  mean_accepted_length  tokens committed per forward pass, the bonus/resampled token included
                        (= step_compression; see decoding/trace.py), and mean_accepted_drafts without it
  ms_per_image          wall clock of one image: decoding loop + VQ decode
  decode_ms             the decoding loop alone (model forward + decoder overhead)
  speedup               median ms_per_image of ar / that of the decoder (same run);
                        speedup_decode: the same on decode_ms
  overhead_share        decoder overhead / decoding loop time (drafting, verification, sampling, trace)
  window_cost_ratio     median time of a full-window forward (window_length = the decoder's window) /
                        median time of ar's 1-token forward, both measured in this run
  memory_mb             GPU: peak allocated during the decoder's runs; CPU: the largest process
                        resident set size after one of its runs (caches included)
  class_consistency     share of images the classifier assigns to the requested class (--classifier)

Side by side with the official LlamaGen code (--official-llamagen PATH, PATH = your checkout of
FoundationVision/LlamaGen; nothing of it ships with SpecLens): its `Transformer` is built from the
model's checkpoint and loads our weights strictly, and its `generate()` runs once per (seed, class)
in the same rotation as the decoders, same sampling settings, batch 1 (x2 with CFG). Reported:
tokens/s of their generate() call and of ar's decoding loop, and ar / official (medians).
Files in --out: benchmark.json (settings, summary, every run), benchmark.csv (the summary),
runs.csv (one row per run) and, with --traces, traces.jsonl (every trace).
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from decoding.files import atomic_write_text, atomic_writer
from decoding.registry import DECODERS, make_decoder
from decoding.sampling import SamplingSettings, add_sampling_args, settings_from_args
from decoding.trace import Trace

DEFAULT_DECODERS = "ar,jacobi,sjd,sjd-coupled,lantern,gsd"


# -- parsing ------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """'none' -> None, 'true'/'false' -> bool, then int, float, else the string."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_decoder_specs(values: list[str]) -> list[tuple[str, str, dict]]:
    """['ar,gsd:group_size=25,prob_filter=0.15', 'pkg.mod:Cls:window=8'] ->
    [(label, decoder name or import path, params)]. A comma item with '=' and no ':' continues the
    previous decoder's parameters; the parameters follow the last ':' of an item."""
    specs: list[tuple[str, dict]] = []
    for value in values:
        for item in filter(None, (s.strip() for s in value.split(","))):
            if "=" in item and ":" not in item:
                if not specs:
                    raise ValueError(f"parameter {item!r} comes before any decoder name")
                key, _, val = item.partition("=")
                specs[-1][1][key.strip()] = parse_value(val)
                continue
            head, sep, tail = item.rpartition(":")
            name, params = (head, tail) if sep and "=" in tail else (item, "")
            specs.append((name, {}))
            if params:
                key, _, val = params.partition("=")
                specs[-1][1][key.strip()] = parse_value(val)
    out = []
    for name, params in specs:
        label = name + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")
        out.append((label, name, params))
    return out


def parse_int_list(text: str, all_values: range) -> list[int]:
    """'all', a count 'N' (for seeds: 0..N-1), 'a-b' or 'a,b,c'."""
    text = text.strip()
    if text == "all":
        return list(all_values)
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(x) for x in text.split(",")]


# -- measuring ------------------------------------------------------------------------------
def current_rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:  # not Linux: the process peak instead
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(decoder, model, label: int, sampling: SamplingSettings, seed: int, cuda: bool) -> tuple[Trace, Any, float]:
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = decoder.generate(model, label, sampling, seed=seed)
    memory = torch.cuda.max_memory_allocated() / 2**20 if cuda else current_rss_mb()
    return result.trace, result.image, memory


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarise(label: str, runs: list[dict], traces: list[Trace], ar_row: dict | None, ar_one_token_s: float,
              window: int | None) -> dict:
    ms = [r["ms_per_image"] for r in runs]
    decode_ms = [r["decode_ms"] for r in runs]
    full = [s.forward_s for t in traces for s in t.steps if window and s.window_length == window]
    row = {
        "decoder": label, "runs": len(runs),
        "nfe": median([r["nfe"] for r in runs]),
        "step_compression": round(median([r["step_compression"] for r in runs]), 3),
        "mean_accepted_length": round(median([r["mean_accepted_length"] for r in runs]), 3),
        "mean_accepted_drafts": round(median([r["mean_accepted_drafts"] for r in runs]), 3),
        "ms_per_image": round(median(ms), 3), "decode_ms": round(median(decode_ms), 3),
        "speedup": round(ar_row["ms_per_image"] / median(ms), 3) if ar_row else 1.0,
        "speedup_decode": round(ar_row["decode_ms"] / median(decode_ms), 3) if ar_row else 1.0,
        "overhead_share": round(median([r["overhead_share"] for r in runs]), 4),
        "window_cost_ratio": round(median(full) / ar_one_token_s, 3) if full and ar_one_token_s else None,
        "memory_mb": round(max(r["memory_mb"] for r in runs), 1),
    }
    if "class_hit" in runs[0]:
        row["class_consistency"] = round(sum(r["class_hit"] for r in runs) / len(runs), 4)
    return row


def load_classifier_or_none(path: str, model_name: str):
    """The classifier callable, or None when off/unavailable (the column is then left out)."""
    if path == "none":
        return None
    try:
        from models.classifier import load_classifier
    except ImportError:
        return None
    if path == "auto":
        from models.registry import classifier_path

        path = classifier_path(model_name)
        if path is None:
            return None
    return load_classifier(path)


def load_model_by_name(name: str, device: str):
    from models.registry import load_model

    return load_model(name, device)


# -- the command --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m decoding.benchmark", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fashion-mnist",
                    help="registered model name (models.registry), e.g. fashion-mnist, tiny-fixture")
    ap.add_argument("--decoders", action="append", default=None, metavar="SPEC",
                    help="comma list of decoders, each optionally with parameters after ':' "
                         "(e.g. 'sjd:window=32,init=vertical' or 'gsd:group_size=25,prob_filter=none'); "
                         "a user decoder by import path 'pkg.module:Class' (then 'pkg.module:Class:window=8'). "
                         f"Repeatable. Registered: {', '.join(sorted(DECODERS))}. Default: {DEFAULT_DECODERS}")
    ap.add_argument("--seeds", default="3", help="a count N (seeds 0..N-1), 'a-b' or 'a,b,c' (default 3)")
    ap.add_argument("--classes", default="all", help="'all', 'a-b' or 'a,b,c' class labels (default all)")
    add_sampling_args(ap)
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed generations per decoder before measuring (default 2)")
    ap.add_argument("--classifier", default="auto",
                    help="classifier checkpoint for class-consistency; 'auto' = the shipped Fashion-MNIST "
                         "classifier when --model is fashion-mnist; 'none' = off")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    ap.add_argument("--out", default="runs/benchmark", help="output folder (default runs/benchmark)")
    ap.add_argument("--traces", action="store_true", help="also save every trace to traces.jsonl")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--official-llamagen", metavar="PATH", default=None,
                    help="a checkout of FoundationVision/LlamaGen: also time its generate() on the model's "
                         "checkpoint, interleaved with the decoders, and report tokens/s against ar")
    return ap


def gpt_checkpoint(model_name: str) -> Path:
    """The GPT checkpoint file of a registered model (what the official code loads)."""
    from models.registry import MODELS, resolve_file

    spec = MODELS[model_name]
    return resolve_file(spec, spec.gpt_file)


def load_official(path: str, model_name: str, model, device: str):
    from decoding.official_llamagen import OfficialRunner

    return OfficialRunner(path, gpt_checkpoint(model_name), model.gpt.config.to_dict(), device)


def official_row(runner, label_id: int, num_tokens: int, sampling: SamplingSettings, seed: int) -> dict:
    _, seconds = runner.run(label_id, num_tokens, sampling, seed)
    return {"decoder": runner.label, "seed": seed, "class": label_id, "decode_ms": 1000 * seconds,
            "tokens_per_s": num_tokens / seconds}


def official_summary(runner, official_runs: list[dict], ar_runs: list[dict]) -> dict:
    theirs = median([r["tokens_per_s"] for r in official_runs])
    ours = median([r["tokens_per_s"] for r in ar_runs])
    return {"checkout": str(runner.official.checkout), "checkpoint": str(runner.checkpoint),
            "runs": len(official_runs), "official_tokens_per_s": round(theirs, 2), "ar_tokens_per_s": round(ours, 2),
            "official_decode_ms": round(median([r["decode_ms"] for r in official_runs]), 3),
            "ar_decode_ms": round(median([r["decode_ms"] for r in ar_runs]), 3),
            "ar_over_official": round(ours / theirs, 3)}


def progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm

        return tqdm(total=total, file=sys.stderr, unit="image", dynamic_ncols=True)
    except ImportError:
        return None


def main(argv: list[str] | None = None) -> dict:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.official_llamagen:
        from decoding.official_llamagen import import_official

        try:
            import_official(a.official_llamagen)
        except ValueError as e:
            ap.error(f"--official-llamagen: {e}")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    cuda = device.startswith("cuda")
    sampling = settings_from_args(a)  # ranges checked before the model loads; its own top-k below
    specs = parse_decoder_specs(a.decoders or [DEFAULT_DECODERS])
    if not any(name == "ar" and not params for _, name, params in specs):
        specs.insert(0, ("ar", "ar", {}))
    decoders = {label: make_decoder(name, **params) for label, name, params in specs}
    model = load_model_by_name(a.model, device)
    sampling = settings_from_args(a, model.info)
    seeds = list(range(int(a.seeds))) if a.seeds.strip().isdigit() else parse_int_list(a.seeds, range(0))
    classes = parse_int_list(a.classes, range(model.info.num_classes))
    classifier = load_classifier_or_none(a.classifier, a.model)
    official = load_official(a.official_llamagen, a.model, model, device) if a.official_llamagen else None
    n_tokens = model.info.num_tokens

    # 1. warm-up: untimed, builds caches
    for decoder in decoders.values():
        for i in range(a.warmup):
            decoder.generate(model, classes[i % len(classes)], sampling, seed=10**6 + i)
    for i in range(a.warmup if official else 0):
        official.run(classes[i % len(classes)], n_tokens, sampling, 10**6 + i)

    # 2. interleaved measurement
    labels = list(decoders) + ([official.label] if official else [])
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    traces: dict[str, list[Trace]] = {label: [] for label in labels}
    bar = progress(len(seeds) * len(classes) * len(labels), not a.no_progress)
    slot = 0
    for seed in seeds:
        for label_id in classes:
            order = labels[slot % len(labels):] + labels[:slot % len(labels)]
            slot += 1
            for position, label in enumerate(order):
                if official and label == official.label:
                    row = official_row(official, label_id, n_tokens, sampling, seed)
                    runs[label].append({**row, "order": position})
                    continue
                trace, image, memory = run_one(decoders[label], model, label_id, sampling, seed, cuda)
                row = {**trace.summary(), "decoder": label, "seed": seed, "class": label_id, "order": position,
                       "ms_per_image": 1000 * trace.total_s, "decode_ms": 1000 * trace.decode_s,
                       "tokens_per_s": n_tokens / max(trace.decode_s, 1e-12),
                       "overhead_share": trace.overhead_s / max(trace.decode_s, 1e-12), "memory_mb": memory}
                if classifier is not None:
                    row["class_hit"] = int(classifier(image[None])[0] == label_id)
                runs[label].append(row)
                traces[label].append(trace)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()

    # 3. summary
    one_token = [s.forward_s for t in traces["ar"] for s in t.steps if s.window_length == 1]
    ar_one_token_s = median(one_token)
    ar_row = summarise("ar", runs["ar"], traces["ar"], None, ar_one_token_s, None)
    summary = [ar_row] + [summarise(label, runs[label], traces[label], ar_row, ar_one_token_s,
                                    getattr(decoders[label], "window", None)) for label in decoders if label != "ar"]
    report = {
        "model": a.model, "device": device, "threads": torch.get_num_threads(), "sampling": sampling.to_dict(),
        "seeds": seeds, "classes": classes, "warmup": a.warmup,
        "decoders": {label: d.settings() for label, d in decoders.items()},
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "ar_one_token_forward_ms": round(1000 * ar_one_token_s, 4),
        "summary": summary, "runs": [r for label in labels for r in runs[label]],
    }
    if official:
        report["official_llamagen"] = official_summary(official, runs[official.label], runs["ar"])
    write_outputs(Path(a.out), report, traces if a.traces else None)
    print(format_table(summary))
    if official:
        o = report["official_llamagen"]
        print(f"\nofficial LlamaGen generate() vs ar on {o['checkpoint']} ({o['runs']} images each, interleaved, "
              f"medians): {o['official_tokens_per_s']} vs {o['ar_tokens_per_s']} tokens/s, "
              f"ar / official = {o['ar_over_official']}x")
    print(f"\nsaved to {Path(a.out) / 'benchmark.json'} and benchmark.csv, runs.csv")
    return report


def write_outputs(out: Path, report: dict, traces: dict[str, list[Trace]] | None) -> None:
    """Every file written to a temporary name and renamed (decoding/files.py): an interrupted run
    leaves the previous outputs whole."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "benchmark.json", json.dumps(report, indent=1))
    for name, rows in (("benchmark.csv", report["summary"]), ("runs.csv", report["runs"])):
        keys = list(dict.fromkeys(k for row in rows for k in row))
        with atomic_writer(out / name, "w") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
    if traces is not None:
        with atomic_writer(out / "traces.jsonl", "w") as f:
            for label, items in traces.items():
                for trace in items:
                    f.write(json.dumps({"label": label, "trace": trace.to_dict()}) + "\n")


def format_table(summary: list[dict]) -> str:
    cols = ["decoder", "nfe", "step_compression", "mean_accepted_length", "ms_per_image", "speedup",
            "overhead_share", "window_cost_ratio", "memory_mb"]
    cols += ["class_consistency"] if "class_consistency" in summary[0] else []
    rows = [[str(r.get(c)) if r.get(c) is not None else "-" for c in cols] for r in summary]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"benchmark took {time.perf_counter() - t0:.1f} s", file=sys.stderr)
