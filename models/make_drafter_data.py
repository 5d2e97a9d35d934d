"""Self-distilled training data for drafters (EAGLE, Medusa): samples of the target model itself.

    python -m models.make_drafter_data --model fashion-mnist --samples 4096 --out runs/drafter-data

The script LANTERN's users asked for (jadohu/LANTERN#7): its `entrypoints/generate_train_data.py`
generates images with the target and stores the target's hidden states. Here only the sampled tokens
and their class labels are stored; the hidden states are recomputed teacher-forced at training time
(`models.train_drafter`), which is cheap at this model size and keeps the data small.

Sampling is plain batched AR with the GPT's KV cache: `--batch` images at once, classifier-free
guidance on a [cond; uncond] batch (`u + s (c - u)`, the model card's CFG 4, temperature 1, no
top-k/top-p). Labels cycle through the classes. Each shard of `--batch` samples is seeded with
`seed + shard index` and written atomically (`shard_00000.npz`, ...), so an interrupted run is resumed
by running the same command again and the result does not depend on where it was interrupted.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from models.gpt import GPT

MAX_SAMPLES = 1_000_000
MAX_BATCH = 4096


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fashion-mnist", help="registered target model")
    p.add_argument("--samples", type=int, default=4096, help=f"number of images, in [1, {MAX_SAMPLES}]")
    p.add_argument("--out", default="runs/drafter-data", help="folder for the shards (an existing one is resumed)")
    p.add_argument("--batch", type=int, default=128, help=f"images sampled at once, in [1, {MAX_BATCH}]")
    p.add_argument("--cfg-scale", type=float, default=4.0, help="classifier-free guidance scale, >= 1")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature, > 0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    if not 1 <= args.samples <= MAX_SAMPLES:
        raise ValueError(f"--samples must be in [1, {MAX_SAMPLES}], got {args.samples}")
    if not 1 <= args.batch <= MAX_BATCH:
        raise ValueError(f"--batch must be in [1, {MAX_BATCH}], got {args.batch}")
    if args.cfg_scale < 1.0:
        raise ValueError(f"--cfg-scale must be >= 1, got {args.cfg_scale}")
    if not args.temperature > 0:
        raise ValueError(f"--temperature must be > 0 (sampling), got {args.temperature}")


@torch.inference_mode()
def sample_batch(gpt: GPT, labels: torch.Tensor, cfg_scale: float, temperature: float,
                 gen: torch.Generator) -> torch.Tensor:
    """labels [B] -> sampled image tokens [B, N] (plain AR, CFG on a [cond; uncond] batch)."""
    b, n = len(labels), gpt.config.block_size
    guided = cfg_scale > 1.0
    gpt.setup_cache(2 * b if guided else b)
    null = torch.full_like(labels, gpt.config.num_classes)
    cond = torch.cat([labels, null]) if guided else labels
    logits = gpt.forward_at(0, labels=cond)[:, -1]  # [2B, V]
    tokens = torch.empty(b, n, dtype=torch.long, device=labels.device)
    for i in range(n):
        if guided:
            logits = logits[b:] + (logits[:b] - logits[b:]) * cfg_scale  # [B, V]
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        tokens[:, i] = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        if i + 1 < n:
            step = tokens[:, i:i + 1]
            logits = gpt.forward_at(gpt.cls_token_num + i, tokens=torch.cat([step, step]) if guided else step)[:, -1]
    gpt.clear_cache()
    return tokens


def shard_path(out: Path, index: int) -> Path:
    return out / f"shard_{index:05d}.npz"


def write_npz(path: Path, **arrays) -> None:
    """np.savez to a temporary name in the same folder, then rename (atomic)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_data(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All shards of a data folder: (labels [M] int64, tokens [M, N] int64)."""
    shards = sorted(Path(folder).glob("shard_*.npz"))
    if not shards:
        raise FileNotFoundError(f"no shard_*.npz in {folder}; run python -m models.make_drafter_data first")
    labels, tokens = [], []
    for s in shards:
        with np.load(s, allow_pickle=False) as d:
            labels.append(d["labels"].astype(np.int64))
            tokens.append(d["tokens"].astype(np.int64))
    return torch.from_numpy(np.concatenate(labels)), torch.from_numpy(np.concatenate(tokens))


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from models.registry import load_model

    model = load_model(args.model, device=args.device)
    gpt, classes = model.gpt, model.info.num_classes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_shards = -(-args.samples // args.batch)
    for index in range(n_shards):
        path = shard_path(out, index)
        if path.exists():
            continue  # resumed: this shard is done
        size = min(args.batch, args.samples - index * args.batch)
        labels = (torch.arange(size) + index * args.batch) % classes
        gen = torch.Generator(device=args.device).manual_seed(args.seed + index)
        tokens = sample_batch(gpt, labels.to(args.device), args.cfg_scale, args.temperature, gen)
        write_npz(path, labels=labels.numpy().astype(np.int16), tokens=tokens.cpu().numpy().astype(np.int16),
                  cfg_scale=np.float32(args.cfg_scale), seed=np.int64(args.seed + index))
    print(f"{args.samples} samples in {n_shards} shards under {out}")


if __name__ == "__main__":
    main()
