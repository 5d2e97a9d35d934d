"""Numbers and figures for the bundled model's card: VQ reconstruction error on held-out images,
codebook usage, and the training curves from the JSON-lines logs.

    python -m models.card --vq assets/fashion_mnist_vq.pt --logs assets/training --out assets/card
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import atomic_file
from models.data import load_fashion_mnist, to_model_range
from models.registry import build_vq


@torch.no_grad()
def reconstruction_report(vq, images: np.ndarray, batch: int = 500) -> dict:
    """MSE / PSNR on [0, 1] pixels, codebook usage and perplexity over `images`."""
    mse, counts = [], torch.zeros(vq.config.codebook_size)
    for i in range(0, len(images), batch):
        x = to_model_range(images[i:i + batch].copy())
        rec, codes, _ = vq(x)
        mse.append(((rec.clamp(-1, 1) - x) / 2).pow(2).mean((1, 2, 3)))
        counts += torch.bincount(codes.flatten(), minlength=vq.config.codebook_size)
    mse = torch.cat(mse)
    prob = counts / counts.sum()
    perplexity = float(torch.exp(-(prob[prob > 0] * prob[prob > 0].log()).sum()))
    return {"images": len(images), "mse": round(float(mse.mean()), 6),
            "psnr_db": round(float((10 * torch.log10(1 / mse)).mean()), 2),
            "codes_used": int((counts > 0).sum()), "codebook_size": vq.config.codebook_size,
            "perplexity": round(perplexity, 1)}


def plot_curves(logs: Path, out: Path, vq_log: Path | None = None, gpt_log: Path | None = None,
                title: str = "") -> None:
    """training_curves.png from `vq_log` and `gpt_log` (default: logs/vq_log.jsonl, logs/gpt_log.jsonl)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    paths = {"vq": vq_log or logs / "vq_log.jsonl", "gpt": gpt_log or logs / "gpt_log.jsonl"}
    for ax, name, keys in ((axes[0], "vq", ("val_mse01",)), (axes[1], "gpt", ("train_loss", "val_loss"))):
        path = Path(paths[name])
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for key in keys:
            ax.plot([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r], label=key)
        ax.set_xlabel("step")
        titles = {"vq": "VQ tokenizer: held-out MSE ([0,1] pixels)", "gpt": "GPT: cross-entropy (nats/token)"}
        ax.set_title(titles[name])
        ax.legend()
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_file(out / "training_curves.png") as f:
        fig.savefig(f, format="png", dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vq", default="assets/fashion_mnist_vq.pt")
    ap.add_argument("--logs", default="assets/training", help="folder with vq_log.jsonl and gpt_log.jsonl")
    ap.add_argument("--vq-log", default=None, help="the VQ's JSON-lines log (default: LOGS/vq_log.jsonl)")
    ap.add_argument("--gpt-log", default=None, help="the GPT's JSON-lines log (default: LOGS/gpt_log.jsonl)")
    ap.add_argument("--title", default="", help="figure title (e.g. the model's name)")
    ap.add_argument("--out", default="assets/card")
    ap.add_argument("--source", default="auto", choices=["auto", "debian", "subset"])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    images, _ = load_fashion_mnist("test", a.source)
    report = reconstruction_report(build_vq(Path(a.vq)).eval(), images)
    with atomic_file(out / "vq_reconstruction.json") as f:
        f.write(json.dumps(report, indent=2).encode())
    plot_curves(Path(a.logs), out, a.vq_log and Path(a.vq_log), a.gpt_log and Path(a.gpt_log), a.title)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
