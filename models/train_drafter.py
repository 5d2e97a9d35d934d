"""Train an EAGLE drafter or Medusa heads for a registered target model on its self-distilled samples.

    python -m models.make_drafter_data --model fashion-mnist --samples 2048 --out runs/drafter-data
    python -m models.train_drafter --model fashion-mnist --data runs/drafter-data --out runs/eagle
    python -m models.train_drafter --kind medusa --model fashion-mnist --data runs/drafter-data --out runs/medusa

The target is frozen; its hidden states are computed teacher-forced once at the start (fp16 in memory, both
CFG halves: the sample's class and the null class, since the drafter drafts both halves).
- EAGLE loss (Li et al. 2024; LANTERN `entrypoints/train_drafter/main.py`): smooth-L1 between the predicted
  and the target's next hidden state, plus `--p-weight` (0.1) times the cross-entropy of the head's
  distribution on the predicted state against the head's distribution on the true state; uniform noise of
  width `--noise` (0.2) on the input features, as EAGLE.
- Medusa loss (Cai et al. 2024, Medusa-1): cross-entropy of head k against the sampled token k+1 ahead,
  weighted 0.8^k.
Seeded and resumable (rerun with the same --out): `last.pt` (drafter + optimiser + RNG), `drafter.pt` (fp16,
what decoders load) and `log.jsonl` (train loss, held-out loss and top-1 agreement with the target) every
`--save-every` steps. The last shard of the data is held out. `--device cuda` works.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from models.drafter import DrafterConfig, build_drafter, save_drafter, target_hidden
from models.make_drafter_data import load_data
from models.training import load_training_state, save_training_state, start_run, training_parser

MEDUSA_DECAY = 0.8


def parse_args(argv=None):
    p = training_parser(__doc__, "runs/eagle", 35.0, 3000, 16, 1e-3, "length of the LR schedule (warmup + cosine)")
    p.add_argument("--model", default="fashion-mnist", help="registered target model")
    p.add_argument("--data", default="runs/drafter-data", help="folder written by models.make_drafter_data")
    p.add_argument("--kind", default="eagle", choices=["eagle", "medusa"])
    p.add_argument("--medusa-heads", type=int, default=3, help="Medusa heads (tokens t+2..t+1+n)")
    p.add_argument("--p-weight", type=float, default=0.1, help="EAGLE: weight of the distribution loss")
    p.add_argument("--noise", type=float, default=0.2, help="EAGLE: width of the uniform feature noise")
    p.add_argument("--warmup", type=int, default=100)
    args = p.parse_args(argv)
    if args.batch < 1 or args.max_steps < 1 or args.lr <= 0:
        raise ValueError(f"--batch and --max-steps must be >= 1 and --lr > 0, got {args.batch}, {args.max_steps}, "
                         f"{args.lr}")
    return args


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = min(1.0, (step - args.warmup) / max(1, args.max_steps - args.warmup))
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def both_halves(gpt, labels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Target hidden states [2B, N, dim] for [cond; uncond] and the tokens [2B, N] repeated."""
    null = torch.full_like(labels, gpt.config.num_classes)
    both = torch.cat([tokens, tokens])
    return target_hidden(gpt, torch.cat([labels, null]), both), both


@torch.no_grad()
def features(gpt, labels: torch.Tensor, tokens: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """The target's hidden states of every sample, both CFG halves, computed once: fp16 [M, 2, N, dim]."""
    out = []
    for i in range(0, len(labels), batch):
        hidden, _ = both_halves(gpt, labels[i:i + batch], tokens[i:i + batch])  # [2b, N, dim]
        out.append(torch.stack(hidden.half().chunk(2), dim=1))
    return torch.cat(out)


def halves(feats: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 2, N, dim], [B, N] -> hidden [2B, N, dim] ([cond; uncond]) in float32, tokens [2B, N]."""
    return torch.cat([feats[:, 0], feats[:, 1]]).float(), torch.cat([tokens, tokens])


def eagle_loss(drafter, feats, tokens, args, gen=None) -> tuple[torch.Tensor, float]:
    """(loss, top-1 agreement of the drafted head output with the target's) over positions 1..N-2."""
    hidden, tokens = halves(feats, tokens)  # h[:, i] predicts token i
    n = tokens.shape[1]
    inputs = hidden[:, 1:n - 1]
    if gen is not None and args.noise > 0:
        inputs = inputs + (torch.rand(inputs.shape, generator=gen, device=inputs.device) - 0.5) * args.noise
    pred = drafter(inputs, tokens[:, 1:n - 1], start=1)  # [2B, N-2, dim] ~ hidden[:, 2:]
    true = hidden[:, 2:]
    v_loss = F.smooth_l1_loss(pred, true)
    with torch.no_grad():
        p_target = torch.softmax(drafter.head(true), -1)
    log_q = torch.log_softmax(drafter.head(pred), -1)
    p_loss = -(p_target * log_q).sum(-1).mean()
    agree = (log_q.argmax(-1) == p_target.argmax(-1)).float().mean().item()
    return v_loss + args.p_weight * p_loss, agree


def medusa_loss(heads, feats, tokens, args, gen=None) -> tuple[torch.Tensor, float]:
    """(loss, top-1 accuracy of head 1) of head k on hidden[:, i] against token i+k."""
    hidden, tokens = halves(feats, tokens)
    logits = heads(hidden)  # [n, 2B, N, V]
    total, acc = 0.0, 0.0
    for k in range(1, len(logits) + 1):
        lk = logits[k - 1][:, : tokens.shape[1] - k]
        total = total + MEDUSA_DECAY ** k * F.cross_entropy(lk.reshape(-1, lk.shape[-1]), tokens[:, k:].reshape(-1))
        if k == 1:
            acc = (lk.argmax(-1) == tokens[:, 1:]).float().mean().item()
    return total, acc


def main(argv=None) -> None:
    args = parse_args(argv)
    out = start_run(args)
    from models.registry import load_model

    gpt = load_model.__wrapped__(args.model, device=str(args.device)).gpt.eval()
    for p in gpt.parameters():
        p.requires_grad_(False)
    labels, tokens = load_data(args.data)
    n_val = max(1, min(64, len(labels) // 8))
    feats = features(gpt, labels.to(args.device), tokens.to(args.device))  # [M, 2, N, dim] fp16
    tokens = tokens.to(args.device)
    val_f, val_t, tr_f, tr_t = feats[-n_val:], tokens[-n_val:], feats[:-n_val], tokens[:-n_val]
    cfg = DrafterConfig.for_target(gpt, args.kind, args.medusa_heads)
    drafter = build_drafter(cfg).to(args.device)
    if args.kind == "medusa":
        drafter.init_from_target(gpt)
    drafter.attach(gpt)
    loss_fn = eagle_loss if args.kind == "eagle" else medusa_loss
    opt = torch.optim.AdamW(drafter.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    noise_gen = torch.Generator(device=args.device)  # EAGLE's feature noise, reseeded every step
    step = load_training_state(out / "last.pt", drafter, opt, gen)
    t0 = time.time()
    with open(out / "log.jsonl", "a") as log:
        while step < args.max_steps and time.time() - t0 < args.minutes * 60:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, args)
            idx = torch.randint(0, len(tr_t), (args.batch,), generator=gen).to(args.device)
            noise_gen.manual_seed(args.seed * 1_000_003 + step + 1)  # a function of (seed, step): resumes exactly
            drafter.train()
            loss, agree = loss_fn(drafter, tr_f[idx], tr_t[idx], args, noise_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(drafter.parameters(), 0.5)
            opt.step()
            step += 1
            if step % args.save_every == 0 or step == 1 or step == args.max_steps:
                record = {"step": step, "train_loss": round(loss.item(), 4), "train_top1": round(agree, 4),
                          **evaluate(drafter, val_f, val_t, args, loss_fn), "lr": round(lr_at(step, args), 7),
                          "elapsed_s": round(time.time() - t0, 1)}
                log.write(json.dumps(record) + "\n")
                log.flush()
                save_state(out, drafter, opt, step, gen, args)
    save_state(out, drafter, opt, step, gen, args)


@torch.no_grad()
def evaluate(drafter, feats, tokens, args, loss_fn) -> dict:
    drafter.eval()
    losses, agrees = [], []
    for i in range(0, len(tokens), 32):
        loss, agree = loss_fn(drafter, feats[i:i + 32], tokens[i:i + 32], args)
        losses.append(loss.item())
        agrees.append(agree)
    return {"val_loss": round(sum(losses) / len(losses), 4), "val_top1": round(sum(agrees) / len(agrees), 4)}


def save_state(out: Path, drafter, opt, step: int, gen: torch.Generator, args) -> None:
    save_training_state(out / "last.pt", drafter, opt, step, gen)
    save_drafter(out / "drafter.pt", drafter, meta={"steps": step, "target": args.model, "data": str(args.data)})


if __name__ == "__main__":
    main()
