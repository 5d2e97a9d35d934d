"""Sample quality of decoders as distributions, next to their speed, with an ar-vs-ar noise floor.

    python -m decoding.quality --model fashion-mnist --decoders ar,sjd,gsd:group_size=25,lantern \\
        --samples 2000 --out runs/quality
    torchrun --nproc_per_node 2 -m decoding.quality ...        # the same run on 2 processes / GPUs
    python -m decoding.quality --merge runs/q-a/quality.json runs/q-b/quality.json --out runs/q  # one table

A table too long for one sitting is made in groups of decoders, each group its own run (each recomputes ar and
the floor, with the same seeds, so the same images); `--merge` checks that the runs' ar and floor rows agree in
every column that follows from the images and writes the one table.

Every decoder (specs parsed as `decoding.benchmark` does) makes `--samples` images, classes
balanced, seeds 0..N-1; `ar` always runs, and once more with seeds 10^6.. ("ar (other seeds)"): the
noise floor, the same metrics between two independent ar sets of the same size. Generation is the
resumable, rank-sharded runner of `decoding.sweep` (a killed run continues where it stopped).

Reported per decoder, with bootstrap 95% intervals over the generated set (seeded):
  step_compression   tokens / NFE (mean over images); speedup: ar's mean wall clock per image / the
                     decoder's, measured in this run (the benchmark is the reference for speed)
  fd                 FD in SpecLens-classifier space: Fréchet distance between Gaussians fitted to the
                     shipped classifier's 128-d penultimate features of the samples and of the
                     Fashion-MNIST test images (not Inception FID, not comparable to published FIDs);
                     fd_vs_ar: the same between the decoder's samples and ar's
  kid                unbiased MMD^2, cubic polynomial kernel, mean over subsets (Bińkowski et al. 2018)
  precision, recall  Kynkäänniemi et al. 2019, k = 3; density, coverage: Naeem et al. 2020, k = 5
                     (against as many test images as samples, one seeded subset for every decoder)
  class_consistency  share of samples the classifier assigns to the requested class
  position_tv, bigram_tv  token-level check against ar: mean over positions of the total variation
                     between the token distributions (raster bigrams for bigram_tv); a lossless decoder
                     should sit at the noise floor's value
Features need the shipped classifier (the bundled fashion-mnist models). For other models (LlamaGen) speed
and token TV are reported, and Inception FID with --inception-fid REF.npz when `pytorch-fid` is installed.
Files in --out: quality.json, quality.csv, quality.md (the table in Markdown), frontier.png (step
compression against FD), grids/*.png (samples per class) and units/ (one record per image, with its trace).
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from decoding import metrics, sweep
from decoding.files import atomic_write_bytes, atomic_write_text, atomic_writer
from decoding.registry import decoder_class
from decoding.sampling import add_sampling_args, settings_from_args
from decoding.sweep import BASELINE, Arm
from decoding.trace import Trace

Images = dict[str, list["ImageSummary | Trace"]]  # arm label -> its images, in plan order

NOISE_FLOOR = "ar (other seeds)"
FLOOR_SEED = 10**6
MAX_SAMPLES = 100_000


def ambiguity_stats(traces: list, threshold: float = 0.05) -> dict:
    top1 = np.concatenate([np.asarray(t.commit_top1) for t in traces])
    entropy = np.concatenate([np.asarray(t.commit_entropy) for t in traces])
    return {"positions": int(top1.size), "share_top1_below": round(float((top1 < threshold).mean()), 4),
            "threshold": threshold, "median_top1": round(float(np.median(top1)), 4),
            "share_top1_above_0.5": round(float((top1 > 0.5).mean()), 4),
            "median_entropy_nats": round(float(np.median(entropy)), 4)}


def sample_grid(images: list[np.ndarray], labels: list[int], class_names: tuple[str, ...], per_row: int,
                scale: int = 3) -> Image.Image:
    """One column per class (labels sorted), `per_row` samples each, with class names on top."""
    h, w = images[0].shape[:2]
    classes = sorted(set(labels))
    header = 14
    grid = Image.new("RGB", (len(classes) * w * scale, header + per_row * h * scale), "white")
    draw = ImageDraw.Draw(grid)
    for col, c in enumerate(classes):
        name = class_names[c]
        while len(name) > 1 and draw.textlength(name) > w * scale - 4:  # as much of the name as the column holds
            name = name[:-1]
        draw.text((col * w * scale + 2, 1), name, fill="black")
        picks = [im for im, lab in zip(images, labels) if lab == c][:per_row]
        for row, im in enumerate(picks):
            tile = Image.fromarray(im).resize((w * scale, h * scale), Image.NEAREST)
            grid.paste(tile, (col * w * scale, header + row * h * scale))
    return grid


@dataclass
class ImageSummary:
    """What the metrics read of one generated image (from a full trace or a compact record)."""

    tokens: list[int]
    label: int
    nfe: int
    num_tokens: int
    total_s: float
    commit_top1: list[float]
    commit_entropy: list[float]

    @property
    def step_compression(self) -> float:
        return self.num_tokens / max(1, self.nfe)

    @classmethod
    def from_record(cls, record: dict) -> ImageSummary:
        if "trace" in record:
            t = sweep.record_trace(record)
            return cls(t.tokens, t.label, t.nfe, t.num_tokens, t.total_s, t.commit_top1, t.commit_entropy)
        r = record["image"]
        return cls(r["tokens"], r["label"], r["nfe"], r["num_tokens"], r["forward_s"] + r["overhead_s"] +
                   r["vq_decode_s"], r["commit_top1"], r["commit_entropy"])


# -- the arms -------------------------------------------------------------------------------------------------
def quality_arms(specs: list[tuple[str, str, dict]]) -> list[Arm]:
    """ar first (the baseline), the decoders in the given order (duplicates merged), the noise floor last."""
    arms = [Arm(BASELINE, BASELINE)]
    for label, name, params in specs:
        decoder_class(name)  # unknown names fail here, before anything runs
        if label != BASELINE and label not in [a.label for a in arms]:
            arms.append(Arm(label, name, dict(params)))
    return arms + [Arm(NOISE_FLOOR, BASELINE, {}, FLOOR_SEED)]


# -- evaluation -------------------------------------------------------------------------------------------------
def reference_set(source: str = "auto") -> tuple[np.ndarray, str]:
    """The Fashion-MNIST test images (10,000 from Debian's package, else the shipped 1,000)."""
    from models.data import DEBIAN_DIR, load_fashion_mnist

    images, _ = load_fashion_mnist("test", source)
    debian = source == "debian" or (source == "auto" and (DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").exists())
    where = "debian" if debian else "subset"
    return images, where


def _interval_columns(row: dict) -> dict:
    """('fd_ci': (lo, hi)) -> 'fd_lo', 'fd_hi' for the CSV and the printed table."""
    out = {}
    for k, v in row.items():
        if k.endswith("_ci") and isinstance(v, (tuple, list)):
            out[k[:-3] + "_lo"], out[k[:-3] + "_hi"] = round(v[0], 5), round(v[1], 5)
        elif isinstance(v, float):
            out[k] = round(v, 5)
        else:
            out[k] = v
    return out


# -- reading a result back (the app's Sweep tab, scripts) ---------------------------------------------------------
MAX_REPORT_BYTES = 4 * 2**20
MAX_REPORT_ROWS = 500
REPORT_NUMBERS = ("samples", "step_compression", "nfe", "ms_per_image", "speedup", "ambiguity", "fd", "fd_vs_ar",
                  "kid", "kid_std", "precision", "recall", "density", "coverage", "class_consistency",
                  "position_tv", "position_tv_max", "bigram_tv")
REPORT_INTERVALS = ("fd", "kid", "precision", "recall", "density", "coverage", "class_consistency")
RUN_KEYS = ("sampling", "noise_floor_seeds", "reference", "fd_name", "bootstrap_resamples", "seed")  # what makes two
# runs' numbers comparable (besides the model and the sample count); in quality.json, not in quality.csv


def read_report(path: str | Path) -> dict:
    """A quality run read back from its `quality.json` or `quality.csv`: {"model", "samples_per_decoder",
    "rows"}, the rows as `evaluate_arms` makes them (intervals as "<metric>_ci" pairs), only the known
    columns. The same files the command writes; bounded (MAX_REPORT_BYTES, MAX_REPORT_ROWS) and checked,
    with a ValueError that says what is wrong."""
    path = Path(path)
    name = path.name
    if path.suffix.lower() not in (".json", ".csv"):
        raise ValueError(f"{name}: a quality result is the run's quality.json or quality.csv")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ValueError(f"{name}: cannot be read ({e.strerror or e})") from None
    if size > MAX_REPORT_BYTES:
        raise ValueError(f"{name} is {size / 2**20:.1f} MB; a quality result is at most "
                         f"{MAX_REPORT_BYTES // 2**20} MB (quality.json or quality.csv, not the units/ folder)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{name} is not UTF-8 text: not a quality.json / quality.csv") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name} is not valid JSON (truncated?): {e.msg} at line {e.lineno}") from None
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise ValueError(f"{name} has no list of rows: not a quality.json written by decoding.quality")
        raw_rows, meta = data["rows"], data
    else:
        import csv
        import io

        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "decoder" not in reader.fieldnames or "step_compression" not in reader.fieldnames:
            raise ValueError(f"{name} has no decoder and step_compression columns: not a quality.csv")
        raw_rows, meta = [], {}
        for row in reader:
            if len(raw_rows) > MAX_REPORT_ROWS:
                break
            raw_rows.append(_row_from_csv(row))
    if not raw_rows:
        raise ValueError(f"{name} has no rows")
    if len(raw_rows) > MAX_REPORT_ROWS:
        raise ValueError(f"{name} has more than {MAX_REPORT_ROWS} rows")
    rows = [_checked_row(r, i, name) for i, r in enumerate(raw_rows)]
    samples = meta.get("samples_per_decoder")
    return {"model": meta.get("model") if isinstance(meta.get("model"), str) else None,
            "samples_per_decoder": samples if isinstance(samples, int) and not isinstance(samples, bool)
            else max((r.get("samples") or 0 for r in rows), default=0), "rows": rows,
            "run": {k: meta[k] for k in RUN_KEYS if k in meta}}


def _row_from_csv(row: dict) -> dict:
    out: dict = {}
    for k, v in row.items():
        if k is None or v is None or v == "":
            continue
        if k in ("decoder",):
            out[k] = v
        elif k == "lossless":
            out[k] = v.strip().lower() == "true"
        else:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v  # refused below when it is a known number
    for m in REPORT_INTERVALS:
        if m + "_lo" in out and m + "_hi" in out:
            out[m + "_ci"] = [out.pop(m + "_lo"), out.pop(m + "_hi")]
    return out


def _number(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise ValueError(f"{what} is {v!r}, not a finite number")
    return float(v)


def _checked_row(r, i: int, name: str) -> dict:
    if not isinstance(r, dict):
        raise ValueError(f"{name}: row {i} is not a table row")
    decoder = r.get("decoder")
    if not isinstance(decoder, str) or not 0 < len(decoder) <= 200:
        raise ValueError(f"{name}: row {i} has no decoder name (a string of 1-200 characters)")
    where = f"{name}: {decoder!r}'s"
    out: dict = {"decoder": decoder, "lossless": bool(r.get("lossless", False))}
    if r.get("step_compression") is None:
        raise ValueError(f"{where} step_compression is missing")
    for k in REPORT_NUMBERS:
        if r.get(k) is not None:
            out[k] = _number(r[k], f"{where} {k}")
    if out["step_compression"] <= 0:
        raise ValueError(f"{where} step_compression is {out['step_compression']}, not > 0")
    if "samples" in out:
        out["samples"] = int(out["samples"])
    for m in REPORT_INTERVALS:
        ci = r.get(m + "_ci")
        if ci is not None:
            if not isinstance(ci, (list, tuple)) or len(ci) != 2:
                raise ValueError(f"{where} {m}_ci is not a (low, high) pair")
            lo, hi = _number(ci[0], f"{where} {m} interval"), _number(ci[1], f"{where} {m} interval")
            if lo > hi:
                raise ValueError(f"{where} {m} interval [{lo}, {hi}] has its low end above its high end")
            out[m + "_ci"] = [lo, hi]
    return out


def speed_columns(traces: list[ImageSummary | Trace], ar_traces: list[ImageSummary | Trace]) -> dict:
    total = float(np.mean([t.total_s for t in traces]))
    return {"step_compression": float(np.mean([t.step_compression for t in traces])),
            "nfe": float(np.mean([t.nfe for t in traces])),
            "ms_per_image": 1000 * total,
            "speedup": float(np.mean([t.total_s for t in ar_traces])) / max(total, 1e-12),
            "ambiguity": ambiguity_stats(traces)["share_top1_below"]}


def evaluate_arms(arms: list[Arm], traces: Images, vocab_size: int, decode=None, classifier=None,
                  reference: np.ndarray | None = None, resamples: int = 200, seed: int = 0) -> list[dict]:
    """One row per arm. decode: tokens [N] -> uint8 image (needed with a classifier); classifier: with
    `.features(images)` and `.predict(images)`; reference: uint8 reference images. Without a classifier
    the feature metrics are left out."""
    ar = traces[BASELINE]
    ar_tokens = np.array([t.tokens for t in ar])
    ref = ref_kernel = None
    if classifier is not None and reference is not None:
        ref = classifier.features(reference)
        ref_kernel = metrics.offdiagonal_mean(ref.astype(np.float64))
    features: dict[str, np.ndarray] = {}
    rows = []
    for arm in arms:
        ts = traces[arm.label]
        row = {"decoder": arm.label, "lossless": bool(decoder_class(arm.decoder).lossless), "samples": len(ts),
               **speed_columns(ts, ar)}
        if arm.label != BASELINE:
            row.update(metrics.token_tv(ar_tokens, np.array([t.tokens for t in ts]), vocab_size))
        if ref is not None:
            images = np.stack([decode(t.tokens) for t in ts])
            features[arm.label] = classifier.features(images)
            hits = classifier.predict(images) == np.array([t.label for t in ts])
            subset = np.random.default_rng(seed).choice(len(ref), min(len(ts), len(ref)), replace=False)
            row.update(metrics.distribution_metrics(ref, features[arm.label], hits, resamples, seed,
                                                    prdc_real=ref[np.sort(subset)], real_kernel_mean=ref_kernel))
            if arm.label != BASELINE:
                row["fd_vs_ar"] = metrics.frechet_distance(features[BASELINE], features[arm.label])
        rows.append(row)
    return rows


def frontier_points(rows: list[dict]) -> tuple[list[dict], tuple[float, float] | None]:
    """Step compression against FD (with its interval) per decoder, and the noise floor's FD interval."""
    points = [{"name": r["decoder"], "x": r["step_compression"], "y": r["fd"],
               "y_lo": r.get("fd_ci", (r["fd"], r["fd"]))[0], "y_hi": r.get("fd_ci", (r["fd"], r["fd"]))[1]}
              for r in rows if r["decoder"] != NOISE_FLOOR and r.get("fd") is not None]
    floor = next((tuple(r["fd_ci"]) for r in rows if r["decoder"] == NOISE_FLOOR and "fd_ci" in r), None)
    return points, floor


# -- Inception FID (optional) ------------------------------------------------------------------------------------
def inception_fid_status() -> str | None:
    """None when pytorch-fid can be imported, else what is missing."""
    try:
        import pytorch_fid  # noqa: F401
    except ImportError:
        return ("Inception FID needs the pytorch-fid package (pip install pytorch-fid==0.3.0; its InceptionV3 "
                "weights, ~100 MB, are downloaded by pytorch-fid on first use) and reference statistics "
                "(an .npz with mu and sigma, e.g. from `python -m pytorch_fid --save-stats`)")
    return None


def inception_fid(images: np.ndarray, reference_npz: str | Path, device: str = "cpu", batch: int = 50) -> float:
    """FID (Heusel et al. 2017) of uint8 images [N, H, W, 3] against mu/sigma in `reference_npz`, with
    pytorch-fid's InceptionV3 pool features (2048-d)."""
    from pytorch_fid.inception import InceptionV3

    with np.load(reference_npz) as z:
        if "mu" not in z or "sigma" not in z:
            raise ValueError(f"{reference_npz}: expected arrays 'mu' and 'sigma', found {sorted(z.files)}")
        mu, sigma = z["mu"], z["sigma"]
    net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()
    feats = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float().div(255).to(device)
            feats.append(net(x)[0].squeeze(-1).squeeze(-1).cpu().numpy())
    f = np.concatenate(feats).astype(np.float64)
    return metrics.frechet_from_stats(f.mean(0), np.cov(f, rowvar=False), mu, sigma)


# -- one table from several runs -------------------------------------------------------------------------------------
TIMED = ("ms_per_image", "speedup")  # measured, so different in every run; every other column follows from the images


def _drawn(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMED}


def _same_numbers(a: dict, b: dict) -> str | None:
    """None when the two rows' image-derived columns agree (to float round-off), else the first that does not."""
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) and len(x) == len(y):
            pairs = list(zip(x, y))
        else:
            pairs = [(x, y)]
        for u, v in pairs:
            numeric = all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in (u, v))
            if not (abs(u - v) <= 1e-9 * max(1.0, abs(u), abs(v)) if numeric else u == v):
                return f"{k}: {x} against {y}"
    return None


def merge_reports(reports: list[tuple[str, dict]]) -> dict:
    """One quality table from runs that share their baseline: the same model, sampling settings, sample count,
    seeds, reference and bootstrap, so the same `ar` images and the same noise floor (checked: every column of
    those two rows that follows from the images must agree). reports: (name, `read_report` of a quality.json).
    Rows: ar and the floor from the first run, the decoders in order of first appearance (a decoder in two runs
    must agree too). A row's wall-clock speedup stays the one measured against the ar of its own run.
    Used to finish a table too long for one sitting: run the decoders in groups into separate folders."""
    if len(reports) < 2:
        raise ValueError("give two or more quality.json files to merge")
    (first_name, first), rest = reports[0], reports[1:]
    for name, rep in reports:
        if not rep.get("run"):
            raise ValueError(f"{name}: a merge needs each run's quality.json (the CSV does not record the settings)")
    keys = [r["decoder"] for r in first["rows"]]
    if not keys or keys[0] != BASELINE or keys[-1] != NOISE_FLOOR:
        raise ValueError(f"{first_name}: its rows do not start with {BASELINE!r} and end with {NOISE_FLOOR!r}")
    rows = {r["decoder"]: r for r in first["rows"]}
    origin = {k: first_name for k in rows}
    for name, rep in rest:
        for what, mine, theirs in (("model", first["model"], rep["model"]),
                                   ("samples per decoder", first["samples_per_decoder"], rep["samples_per_decoder"]),
                                   *((k, first["run"].get(k), rep["run"].get(k)) for k in RUN_KEYS)):
            if mine != theirs:
                raise ValueError(f"{name} and {first_name} differ in {what} ({theirs!r} against {mine!r}); "
                                 "only runs of the same model, settings and sample count make one table")
        for r in rep["rows"]:
            key = r["decoder"]
            if key in rows:
                diff = _same_numbers(_drawn(rows[key]), _drawn(r))
                if diff:
                    raise ValueError(f"{key!r} differs between {origin[key]} and {name} ({diff}): the runs did not "
                                     "draw the same images (another code version, device or thread count?)")
            else:
                rows[key], origin[key] = r, name
    order = [k for k in rows if k not in (BASELINE, NOISE_FLOOR)]
    merged = [rows[BASELINE], *(rows[k] for k in order), rows[NOISE_FLOOR]]
    return {"model": first["model"], **first["run"], "samples_per_decoder": first["samples_per_decoder"],
            "noise_floor": NOISE_FLOOR, "rows": merged,
            "merged_from": {name: [r["decoder"] for r in rep["rows"]] for name, rep in reports},
            "notes": ["merged from runs with the same ar images and noise floor (checked); each decoder's wall-clock "
                      "speedup is against the ar of its own run"]}


def merge_main(paths: list[str], out: str) -> dict:
    report = merge_reports([(Path(p).parent.name + "/" + Path(p).name, read_report(p)) for p in paths])
    write_tables(Path(out), report)
    print(format_rows(report["rows"]))
    print(f"\nmerged {len(paths)} runs into {Path(out)}: quality.json, quality.csv, quality.md" +
          (", frontier.png" if "fd" in report["rows"][0] else ""))
    return report


# -- the command ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from decoding.benchmark import DEFAULT_DECODERS

    ap = argparse.ArgumentParser(prog="python -m decoding.quality", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fashion-mnist", help="registered model name (default fashion-mnist)")
    ap.add_argument("--decoders", action="append", default=None, metavar="SPEC",
                    help=f"decoder specs as for decoding.benchmark, repeatable (default {DEFAULT_DECODERS})")
    ap.add_argument("--decoder", default=None, help="one decoder (the same as --decoders NAME)")
    ap.add_argument("--samples", type=int, default=None, help=f"images per decoder, 2..{MAX_SAMPLES} (default 200)")
    ap.add_argument("--per-class", type=int, default=None, help="images per class (instead of --samples)")
    add_sampling_args(ap)
    ap.add_argument("--classifier", default="auto",
                    help="'auto' (the shipped one for the bundled Fashion-MNIST models), 'none' or a path")
    ap.add_argument("--reference", default="auto", choices=["auto", "debian", "subset"],
                    help="Fashion-MNIST test images: Debian's 10,000 (auto when installed) or the shipped 1,000")
    ap.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per interval (default 200)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the reference subsets")
    ap.add_argument("--inception-fid", metavar="REF.npz", default=None,
                    help="also Inception FID against these reference statistics (needs pytorch-fid)")
    ap.add_argument("--grid-rows", type=int, default=8, help="samples per class in each grids/*.png")
    ap.add_argument("--warmup", type=int, default=1, help="untimed generations per decoder first (default 1)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (this rank's GPU when there is one)")
    ap.add_argument("--threads", type=int, default=None, help="torch (and metrics' BLAS) CPU threads per rank")
    ap.add_argument("--traces", action="store_true",
                    help="record every image's whole trace in units/ (~100 KB each on the bundled model; "
                         "default: a ~4 KB summary)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--merge", nargs="+", metavar="QUALITY.json", default=None,
                    help="instead of running: make one table from these runs' quality.json (the same model, "
                         "settings and sample count; their ar rows must agree) and write it to --out")
    ap.add_argument("--out", default="runs/quality", help="output folder; a run there is resumed")
    return ap


def sample_count(a, num_classes: int, ap: argparse.ArgumentParser) -> int:
    if a.samples is not None and a.per_class is not None:
        ap.error("give --samples or --per-class, not both")
    n = a.per_class * num_classes if a.per_class is not None else (a.samples if a.samples is not None else 200)
    if not 2 <= n <= MAX_SAMPLES:
        ap.error(f"samples per decoder must be in [2, {MAX_SAMPLES}], got {n}")
    return n


def main(argv: list[str] | None = None) -> dict | None:
    from decoding.benchmark import DEFAULT_DECODERS, parse_decoder_specs
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.merge:
        try:
            return merge_main(a.merge, a.out)
        except ValueError as e:
            ap.error(str(e))
    if a.bootstrap < 2:
        ap.error(f"--bootstrap must be >= 2, got {a.bootstrap}")
    specs = parse_decoder_specs(([a.decoder] if a.decoder else []) + (a.decoders or ([] if a.decoder else
                                                                                     [DEFAULT_DECODERS])))
    model = sweep.load_run_model(a.model, a.device, a.threads, ap)
    n = sample_count(a, model.info.num_classes, ap)
    sampling = settings_from_args(a, model.info)
    arms = quality_arms(specs)
    rank, world = sweep.rank_and_world()
    bar = None if a.no_progress else sweep.ProgressBar(f"rank {rank}/{world} " if world > 1 else "")
    units = sweep.plan_units(arms, n, list(range(model.info.num_classes)))
    records = sweep.run_units(model, units, sampling, a.out, bar, warmup=a.warmup, full_traces=a.traces)
    if not records:
        return None
    traces: dict[str, list[ImageSummary]] = {arm.label: [] for arm in arms}
    for record in records:
        traces[record["arm"]].append(ImageSummary.from_record(record))
    classifier = sweep.classifier_option(a.classifier, model)
    notes = []
    if classifier is None:
        notes.append(f"no classifier for model {a.model!r}: FD, KID, precision/recall, density/coverage and "
                     "class-consistency are left out (the shipped classifier scores 28x28 Fashion-MNIST images)")
    reference, where = reference_set(a.reference) if classifier is not None else (None, None)
    decode = (lambda tokens: model.decode_tokens(torch.tensor(tokens)))  # noqa: E731
    with metrics.blas_threads(a.threads):
        rows = evaluate_arms(arms, traces, model.info.vocab_size, decode, classifier, reference, a.bootstrap, a.seed)
    report = {"model": a.model, "sampling": sampling.to_dict(), "samples_per_decoder": n,
              "decoders": {arm.label: arm.setting() for arm in arms}, "noise_floor": NOISE_FLOOR,
              "noise_floor_seeds": f"{FLOOR_SEED}..{FLOOR_SEED + n - 1}",
              "reference": None if reference is None else {"source": where, "images": len(reference)},
              "fd_name": metrics.FD_NAME, "bootstrap_resamples": a.bootstrap, "seed": a.seed, "rows": rows,
              "notes": notes}
    add_inception_fid(a, model, arms, traces, report)
    write_quality_outputs(Path(a.out), report, model, traces, a.grid_rows)
    print(format_rows(rows))
    for note in report["notes"]:
        print(f"\nnote: {note}")
    print(f"\nsaved to {Path(a.out)}: quality.json, quality.csv, quality.md" +
          (", frontier.png" if "fd" in rows[0] else ""))
    return report


def add_inception_fid(a, model, arms: list[Arm], traces: Images, report: dict) -> None:
    if not a.inception_fid:
        if a.model.startswith("llamagen"):
            report["notes"].append("Inception FID: not requested (--inception-fid REF.npz; " +
                                   (inception_fid_status() or "pytorch-fid is installed") + ")")
        return
    missing = inception_fid_status()
    if missing:
        report["notes"].append(f"Inception FID skipped: {missing}")
        return
    for row, arm in zip(report["rows"], arms):
        images = np.stack([model.decode_tokens(torch.tensor(t.tokens)) for t in traces[arm.label]])
        row["inception_fid"] = inception_fid(images, a.inception_fid, str(model.device))


def write_tables(out: Path, report: dict) -> None:
    """quality.json, quality.csv, quality.md and (with FD) frontier.png."""
    from analysis import sweeps

    rows = report["rows"]
    atomic_write_text(out / "quality.json", json.dumps(report, indent=1))
    sweep.write_csv(out / "quality.csv", [_interval_columns(r) for r in rows])
    atomic_write_text(out / "quality.md", markdown_table(rows) + "\n")
    points, floor = frontier_points(rows)
    if points:
        png = sweeps.frontier_png(points, metrics.FD_NAME, f"{report['model']}: speed against quality, "
                                  f"{report['samples_per_decoder']} samples per decoder", floor=floor)
        atomic_write_bytes(out / "frontier.png", png)


def write_quality_outputs(out: Path, report: dict, model, traces: Images, grid_rows: int) -> None:
    write_tables(out, report)
    for label, ts in traces.items():
        images = [model.decode_tokens(torch.tensor(t.tokens)) for t in ts[:1]]
        if images and images[0].shape[0] <= 64:  # small images only (the bundled model), not LlamaGen's
            images = [model.decode_tokens(torch.tensor(t.tokens)) for t in ts]
            grid = sample_grid(images, [t.label for t in ts], model.info.class_names, grid_rows)
            name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)
            with atomic_writer(out / "grids" / f"{name}.png", "wb") as f:
                grid.save(f, format="PNG")


def markdown_table(rows: list[dict]) -> str:
    """The README's table: one line per decoder, speed next to quality, intervals in brackets; the
    columns a run has (no FD without the classifier, no token TV for `ar`)."""
    def num(v, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    def ci(r: dict, k: str, fmt: str, scale: float = 1.0) -> str:
        if r.get(k) is None:
            return "-"
        lo_hi = r.get(k + "_ci")
        inner = "" if not lo_hi else f" [{lo_hi[0] * scale:{fmt}}, {lo_hi[1] * scale:{fmt}}]"
        return f"{r[k] * scale:{fmt}}{inner}"

    columns = [("decoder", lambda r: f"`{r['decoder']}`"), ("lossless", lambda r: "yes" if r.get("lossless") else "no"),
               ("samples", lambda r: str(r.get("samples", "-"))),
               ("step compression", lambda r: num(r.get("step_compression"), ".2f")),
               ("wall vs ar", lambda r: num(r.get("speedup"), ".2f")),
               ("FD [95%]", lambda r: ci(r, "fd", ".1f")), ("`fd_vs_ar`", lambda r: num(r.get("fd_vs_ar"), ".1f")),
               ("KID", lambda r: num(r.get("kid"), ".2f")),
               ("precision", lambda r: num(r.get("precision"), ".2f")),
               ("recall", lambda r: num(r.get("recall"), ".2f")),
               ("class-consistency [95%]", lambda r: ci(r, "class_consistency", ".1f", 100.0)),
               ("position TV", lambda r: num(r.get("position_tv"), ".3f")),
               ("bigram TV", lambda r: num(r.get("bigram_tv"), ".3f"))]
    present = {"FD [95%]": "fd", "`fd_vs_ar`": "fd", "KID": "kid", "precision": "precision",
               "recall": "recall", "class-consistency [95%]": "class_consistency",
               "position TV": "position_tv", "bigram TV": "bigram_tv"}
    columns = [(h, f) for h, f in columns if h not in present or any(r.get(present[h]) is not None for r in rows)]
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f(r) for _, f in columns) + " |" for r in rows]
    return "\n".join(lines)


def format_rows(rows: list[dict]) -> str:
    cols = ["decoder", "samples", "step_compression", "speedup", "fd", "fd_lo", "fd_hi", "fd_vs_ar", "kid",
            "precision", "recall", "density", "coverage", "class_consistency", "position_tv", "bigram_tv"]
    flat = [_interval_columns(r) for r in rows]
    cols = [c for c in cols if any(c in r for r in flat)]

    def cell(v) -> str:
        return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    cells = [[cell(r.get(c)) for c in cols] for r in flat]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    return "\n".join(["  ".join(c.ljust(w) for c, w in zip(cols, widths))] +
                     ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells])


if __name__ == "__main__":
    main()
