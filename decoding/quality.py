"""Sample quality of a model under a decoder: class-consistency under the shipped classifier,
token-selection ambiguity of the target, throughput, and a grid of samples per class.

    python -m decoding.quality --model fashion-mnist --decoder ar --per-class 20 --out runs/quality

Class-consistency = share of samples the classifier assigns to the class they were generated
for. Ambiguity = share of committed positions whose target top-1 probability is < 0.05.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from decoding.registry import make_decoder
from decoding.sampling import SamplingSettings
from decoding.trace import Trace


def ambiguity_stats(traces: list[Trace], threshold: float = 0.05) -> dict:
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
        draw.text((col * w * scale + 2, 1), class_names[c][:10], fill="black")
        picks = [im for im, lab in zip(images, labels) if lab == c][:per_row]
        for row, im in enumerate(picks):
            tile = Image.fromarray(im).resize((w * scale, h * scale), Image.NEAREST)
            grid.paste(tile, (col * w * scale, header + row * h * scale))
    return grid


def evaluate(model, decoder_name: str, per_class: int, sampling: SamplingSettings, classifier=None,
             first_seed: int = 0, **decoder_params) -> tuple[dict, list[np.ndarray], list[int], list[Trace]]:
    decoder = make_decoder(decoder_name, **decoder_params)
    images, labels, traces = [], [], []
    t0 = time.perf_counter()
    for i in range(per_class):
        for c in range(model.info.num_classes):
            result = decoder.generate(model, c, sampling, seed=first_seed + i * model.info.num_classes + c)
            images.append(result.image)
            labels.append(c)
            traces.append(result.trace)
    elapsed = time.perf_counter() - t0
    decode_s = sum(t.decode_s for t in traces)
    metrics = {"model": model.info.name, "decoder": decoder_name, "settings": {**decoder_params, **sampling.to_dict()},
               "samples": len(images), "seconds": round(elapsed, 2),
               "tokens_per_second": round(sum(t.num_tokens for t in traces) / decode_s, 1),
               "mean_nfe": round(float(np.mean([t.nfe for t in traces])), 2),
               "ambiguity": ambiguity_stats(traces)}
    if classifier is not None:
        predicted = classifier(np.stack(images))
        hits = predicted == np.asarray(labels)
        metrics["class_consistency"] = round(float(hits.mean()), 4)
        metrics["class_consistency_per_class"] = {
            model.info.class_names[c]: round(float(hits[np.asarray(labels) == c].mean()), 3)
            for c in range(model.info.num_classes)}
    return metrics, images, labels, traces


def main(argv=None) -> None:
    from models.classifier import load_classifier
    from models.registry import ASSETS, load_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fashion-mnist", help="registered model name")
    ap.add_argument("--decoder", default="ar", help="registered decoder name")
    ap.add_argument("--per-class", type=int, default=10, help="samples per class")
    ap.add_argument("--cfg-scale", type=float, default=4.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--classifier", default=str(ASSETS / "fashion_mnist_classifier.pt"))
    ap.add_argument("--grid-rows", type=int, default=8, help="samples per class in the PNG grid")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/quality", help="folder for metrics.json and samples.png")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    model = load_model(a.model)
    sampling = SamplingSettings(a.cfg_scale, a.temperature, a.top_k, a.top_p)
    clf = load_classifier(a.classifier) if a.classifier and Path(a.classifier).exists() else None
    make_decoder(a.decoder).generate(model, 0, sampling, seed=10**6)  # warm-up, not measured
    metrics, images, labels, _ = evaluate(model, a.decoder, a.per_class, sampling, clf)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    sample_grid(images, labels, model.info.class_names, min(a.grid_rows, a.per_class)).save(out / "samples.png")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
