"""Train the bundled VQ tokenizer on Fashion-MNIST (28x28 -> 14x14 codes).

    python -m models.train_vq --out runs/vq --minutes 15

Seeded and resumable: writes `last.pt` (model + optimiser + step) and a JSON-lines log every
`--save-every` steps; rerunning with the same --out resumes. Loss: pixel MSE + L1 plus the
official codebook and commitment losses; dead codes (unused over the last `--restart-every`
steps) are re-seeded from encoder outputs of the current batch, which the calibration run
found necessary. `--device cuda` trains on a GPU (the training set is moved there once).
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from models.checkpoint import save_checkpoint
from models.data import load_fashion_mnist, to_model_range
from models.training import autocast, load_training_state, save_training_state, start_run, training_parser
from models.vq import VQConfig, VQModel

BUNDLED_VQ = dict(codebook_size=1024, codebook_embed_dim=8, encoder_ch_mult=[1, 2], decoder_ch_mult=[1, 2],
                  z_channels=64, ch=32, num_res_blocks=1, in_channels=1)


def parse_args(argv=None):
    p = training_parser(__doc__, "runs/vq", 15.0, 100000, 128, 1e-3)
    p.add_argument("--codebook-size", type=int, default=BUNDLED_VQ["codebook_size"])
    p.add_argument("--restart-every", type=int, default=100, help="steps between dead-code restarts and evals")
    return p.parse_args(argv)


def restart_dead_codes(vq: VQModel, usage: torch.Tensor, z: torch.Tensor, gen: torch.Generator) -> int:
    """Re-seed codes with zero usage from (normalised) encoder outputs z [N, D]."""
    dead = (usage == 0).nonzero().flatten()
    if len(dead) == 0:
        return 0
    pick = torch.randint(0, z.shape[0], (len(dead),), generator=gen)
    new = z[pick.to(z.device)] + 0.01 * torch.randn(len(dead), z.shape[1], generator=gen).to(z.device)
    with torch.no_grad():
        vq.quantize.embedding.weight[dead] = F.normalize(new, dim=-1) if vq.config.codebook_l2_norm else new
    return len(dead)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = start_run(args)
    images, _ = load_fashion_mnist("train", args.source)
    x_all = to_model_range(images).to(args.device)
    val = x_all[-1000:]
    train = x_all[:-1000] if len(x_all) > 2000 else x_all
    cfg = VQConfig(**{**BUNDLED_VQ, "codebook_size": args.codebook_size})
    vq = VQModel(cfg).to(args.device)
    opt = torch.optim.Adam(vq.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    step = load_training_state(out / "last.pt", vq, opt, gen)
    usage = torch.zeros(cfg.codebook_size, device=args.device)
    log = open(out / "log.jsonl", "a")
    t0 = time.time()
    while step < args.max_steps and time.time() - t0 < args.minutes * 60:
        idx = torch.randint(0, len(train), (args.batch,), generator=gen)
        x = train[idx.to(args.device)]
        with autocast(args.device, args.bf16):
            z = vq.quant_conv(vq.encoder(x))
        z_q, codes, (vq_loss, commit_loss) = vq.quantize(z.float())  # nearest code in fp32
        with autocast(args.device, args.bf16):
            rec = vq.decode(z_q).float()
        rec_loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        loss = rec_loss + vq_loss + commit_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        usage += torch.bincount(codes.flatten(), minlength=cfg.codebook_size)
        step += 1
        if step % args.restart_every == 0:
            zf = F.normalize(z.detach().permute(0, 2, 3, 1).reshape(-1, cfg.codebook_embed_dim), dim=-1)
            n_dead = restart_dead_codes(vq, usage, zf, gen)
            rec_mse = evaluate(vq, val)
            rec = {"step": step, "loss": round(loss.item(), 5), "rec_loss": round(rec_loss.item(), 5),
                   "val_mse01": rec_mse, "dead_restarted": n_dead, "codes_used": int((usage > 0).sum()),
                   "elapsed_s": round(time.time() - t0, 1)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            usage.zero_()
        if step % args.save_every == 0:
            save_training_state(out / "last.pt", vq, opt, step, gen)
    save_training_state(out / "last.pt", vq, opt, step, gen)
    save_checkpoint(out / "vq.pt", vq, meta={"kind": "vq", "config": cfg.to_dict(), "steps": step}, half=True)


@torch.no_grad()
def evaluate(vq: VQModel, x: torch.Tensor) -> float:
    """Reconstruction MSE on [0, 1] pixels."""
    vq.eval()
    rec = torch.cat([vq(x[i:i + 250])[0] for i in range(0, len(x), 250)])
    vq.train()
    return round(float(((rec.clamp(-1, 1) - x) / 2).pow(2).mean()), 6)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
