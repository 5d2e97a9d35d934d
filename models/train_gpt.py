"""Train the bundled class-conditional GPT (LlamaGen architecture) on VQ tokens of Fashion-MNIST.

    python -m models.train_gpt --vq runs/vq/vq.pt --out runs/gpt --minutes 60

Seeded and resumable (rerun with the same --out): the whole training set is tokenised once
(`tokens.npz`), then AdamW with warmup and cosine decay over `--max-steps`, bf16 autocast
optional; `--device cuda` trains on a GPU (states are written with CPU tensors, so a run started on a GPU
resumes on a CPU and back). Every `--save-every` steps: `last.pt` (model + optimiser + RNG, to resume), `gpt.pt`
(official LlamaGen layout, fp16) and a JSON-lines log with train/val loss.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.checkpoint import load_into, read_state_dict, save_checkpoint
from models.data import load_fashion_mnist, to_model_range
from models.gpt import GPT, GPTConfig
from models.training import autocast, load_training_state, save_training_state, start_run, training_parser
from models.vq import VQConfig, VQModel

BUNDLED_GPT = dict(dim=256, n_layer=4, n_head=4, vocab_size=1024, num_classes=10, block_size=196,
                   cls_token_num=1, class_dropout_prob=0.1, token_dropout_p=0.0, resid_dropout_p=0.0,
                   ffn_dropout_p=0.0)


def parse_args(argv=None):
    p = training_parser(__doc__, "runs/gpt", 60.0, 4000, 64, 6e-4, "length of the LR schedule (warmup + cosine)")
    p.add_argument("--vq", default="runs/vq/vq.pt", help="trained VQ checkpoint")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--dim", type=int, default=BUNDLED_GPT["dim"])
    p.add_argument("--n-layer", type=int, default=BUNDLED_GPT["n_layer"])
    p.add_argument("--n-head", type=int, default=BUNDLED_GPT["n_head"])
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--codebook-init", action="store_true",
                   help="start the token embeddings and output rows as random projections of the VQ's code "
                        "vectors (near-duplicate codes start alike; see init_from_codebook)")
    p.add_argument("--neighbour-targets", type=int, default=1, metavar="K",
                   help="train on each code's K nearest codes instead of the code alone (1: the official hard "
                        "cross-entropy; see neighbour_targets)")
    p.add_argument("--neighbour-temperature", type=float, default=0.05, metavar="TAU",
                   help="the neighbours' weights exp(-|c_a - c_v|^2 / TAU), normalised over the K (with K > 1)")
    args = p.parse_args(argv)
    if not 1 <= args.neighbour_targets <= 256:
        p.error(f"--neighbour-targets must be 1..256, got {args.neighbour_targets}")
    if not (args.neighbour_temperature > 0 and math.isfinite(args.neighbour_temperature)):
        p.error(f"--neighbour-temperature must be a positive number, got {args.neighbour_temperature}")
    return args


def load_vq(path: str | Path) -> VQModel:
    sd, meta = read_state_dict(path)
    vq = VQModel(VQConfig.from_dict(meta["config"]))
    load_into(vq, sd, path)
    return vq.eval()


@torch.no_grad()
def tokenize(vq: VQModel, images: np.ndarray, batch: int = 500) -> np.ndarray:
    """uint8 [N, 28, 28] -> int16 codes [N, h*w] (raster order)."""
    out = []
    for i in range(0, len(images), batch):
        _, codes, _ = vq.encode(to_model_range(images[i:i + batch].copy()))
        out.append(codes.flatten(1).numpy().astype(np.int16))
    return np.concatenate(out)


@torch.no_grad()
def init_from_codebook(gpt: GPT, codebook: torch.Tensor, seed: int) -> None:
    """Start code v's input embedding and output row from a random linear image of its VQ vector.

    LlamaGen draws the embeddings i.i.d. (std 0.02) and zeroes the output layer, so each of 16384 codes learns
    alone from its ~700 occurrences per epoch. Here embedding_v = 0.02 (c_v P) + 0.01 noise and output_v = 0.02 c_v Q
    (c_v: the l2-normalised code vector, P, Q: seeded Gaussian [D, dim]): codes whose vectors nearly coincide
    (the near-duplicates that make real tokenizers ambiguous) start with nearly the same embedding and logit, and
    training separates them where the data does. Architecture, loss and optimiser are unchanged; only the
    starting point differs from the official recipe."""
    gen = torch.Generator().manual_seed(seed)
    c = codebook.float()
    dim = gpt.tok_embeddings.weight.shape[1]
    proj_in, proj_out = (torch.randn(c.shape[1], dim, generator=gen) for _ in range(2))
    noise = torch.randn(gpt.tok_embeddings.weight.shape, generator=gen)
    gpt.tok_embeddings.weight.copy_(0.02 * (c @ proj_in) + 0.01 * noise)
    gpt.output.weight.copy_(0.02 * (c @ proj_out))


@torch.no_grad()
def neighbour_targets(codebook: torch.Tensor, k: int, temperature: float,
                      chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Each code's k nearest codes (itself first) and their weights: idx [V, k] int64, weight [V, k] (rows sum to 1).

    weight(v | a) = exp(-|c_a - c_v|^2 / temperature), normalised over a's k nearest codes (squared euclidean, the
    quantiser's own distance). On the 16384 x 8 codebook, decoding a test image with every token swapped for one of
    its 16 nearest codes costs 2.5 dB PSNR and no class (classifier accuracy 91.4% -> 90.6%): they are
    near-duplicates, the source of ambiguity the relaxed rules pool. Chunked over rows: memory [chunk, V]."""
    c = codebook.detach().float()
    if not 1 <= k <= c.shape[0]:
        raise ValueError(f"k must be 1..{c.shape[0]} (the codebook size), got {k}")
    idx, dist = [], []
    for i in range(0, c.shape[0], chunk):
        d = torch.cdist(c[i:i + chunk], c).pow(2)
        d[torch.arange(d.shape[0]), torch.arange(i, i + d.shape[0])] = -1.0  # itself first, even among exact ties
        v, j = d.topk(k, largest=False)
        idx.append(j)
        dist.append(v.clamp_min(0.0))
    idx, dist = torch.cat(idx), torch.cat(dist)
    return idx, torch.softmax(-dist / temperature, dim=-1)


def soft_targets_loss(logits: torch.Tensor, codes: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor]):
    """Cross-entropy against the neighbour distribution of each target code: -sum_v w(v | a) log p(v).

    logits [B, T, V]; codes [B, T] (the VQ's codes a); targets from neighbour_targets. With k = 1 this is the
    plain cross-entropy. `targets` must be on the logits' device."""
    idx, weight = targets
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(weight[codes] * logp.gather(-1, idx[codes])).sum(-1).mean()


def sample_neighbours(codes: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor],
                      gen: torch.Generator) -> torch.Tensor:
    """Each code replaced by one of its neighbours drawn from the same weights (the inputs the model will see
    when it samples from what the soft targets teach)."""
    idx, weight = targets
    pick = torch.multinomial(weight[codes.flatten()], 1, generator=gen).view(codes.shape)
    return idx[codes, pick]


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = min(1.0, (step - args.warmup) / max(1, args.max_steps - args.warmup))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def make_optimizer(gpt: GPT, lr: float) -> torch.optim.Optimizer:
    decay = [p for p in gpt.parameters() if p.dim() >= 2]
    no_decay = [p for p in gpt.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def loss_on(gpt: GPT, labels: torch.Tensor, tokens: torch.Tensor, bf16: bool, targets=None,
            inputs: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy; labels and tokens are moved to the model's device. `targets` (neighbour_targets):
    soft targets over each code's neighbours; `inputs`: the tokens fed in (default `tokens`)."""
    device = gpt.tok_embeddings.weight.device
    labels, tokens = labels.to(device), tokens.to(device)
    inputs = tokens if inputs is None else inputs.to(device)
    with autocast(device, bf16):
        logits = gpt(labels, inputs[:, :-1])  # [B, T, V]
    if targets is not None:
        return soft_targets_loss(logits, tokens, targets)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens.reshape(-1))


def main(argv=None) -> None:
    args = parse_args(argv)
    out = start_run(args)
    vq = load_vq(args.vq)
    if not (out / "tokens.npz").exists():
        images, labels = load_fashion_mnist("train", args.source)
        np.savez_compressed(out / "tokens.npz", tokens=tokenize(vq, images), labels=labels)
    data = np.load(out / "tokens.npz")
    tokens = torch.from_numpy(data["tokens"].astype(np.int64))
    labels = torch.from_numpy(data["labels"].astype(np.int64))
    n_val = 1000 if len(tokens) > 5000 else len(tokens) // 5
    val_t, val_y, tr_t, tr_y = tokens[-n_val:], labels[-n_val:], tokens[:-n_val], labels[:-n_val]
    cfg = GPTConfig(**{**BUNDLED_GPT, "dim": args.dim, "n_layer": args.n_layer, "n_head": args.n_head,
                       "vocab_size": vq.config.codebook_size, "block_size": tokens.shape[1]})
    gpt = GPT(cfg)
    if args.codebook_init:
        init_from_codebook(gpt, vq.quantize.codebook(), args.seed)
    gpt = gpt.to(args.device)
    opt = make_optimizer(gpt, args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    step = load_training_state(out / "last.pt", gpt, opt, gen)
    targets = loss_targets = None  # sampled from on the CPU (the data's generator); the loss's copy on the device
    if args.neighbour_targets > 1:
        targets = neighbour_targets(vq.quantize.codebook(), args.neighbour_targets, args.neighbour_temperature)
        loss_targets = tuple(t.to(args.device) for t in targets)
    log = open(out / "log.jsonl", "a")
    t0 = time.time()
    gpt.train()
    while step < args.max_steps and time.time() - t0 < args.minutes * 60:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        idx = torch.randint(0, len(tr_t), (args.batch,), generator=gen)
        inputs = None if targets is None else sample_neighbours(tr_t[idx], targets, gen)
        loss = loss_on(gpt, tr_y[idx], tr_t[idx], args.bf16, loss_targets, inputs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gpt.parameters(), 1.0)
        opt.step()
        step += 1
        if step % args.eval_every == 0 or step == 1:
            record = {"step": step, "train_loss": round(loss.item(), 4),
                      "val_loss": evaluate(gpt, val_y, val_t, args.bf16), "lr": round(lr_at(step, args), 7),
                      "elapsed_s": round(time.time() - t0, 1)}
            if targets is not None:  # the loss trained on; val_loss stays the plain cross-entropy, comparable
                record["neighbour_targets"] = [args.neighbour_targets, args.neighbour_temperature]
            log.write(json.dumps(record) + "\n")
            log.flush()
        if step % args.save_every == 0:
            save_state(out, gpt, opt, step, gen, cfg, vq)
    save_state(out, gpt, opt, step, gen, cfg, vq)


@torch.no_grad()
def evaluate(gpt: GPT, labels: torch.Tensor, tokens: torch.Tensor, bf16: bool) -> float:
    gpt.eval()
    losses = [loss_on(gpt, labels[i:i + 250], tokens[i:i + 250], bf16).item() for i in range(0, len(tokens), 250)]
    gpt.train()
    return round(float(np.mean(losses)), 4)


def save_state(out: Path, gpt: GPT, opt, step: int, gen: torch.Generator, cfg: GPTConfig, vq: VQModel) -> None:
    save_training_state(out / "last.pt", gpt, opt, step, gen)
    save_checkpoint(out / "gpt.pt", gpt, meta={"kind": "gpt", "config": cfg.to_dict(), "steps": step}, half=True)


if __name__ == "__main__":
    main()
