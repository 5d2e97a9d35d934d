"""Command-line options shared by the training scripts (seeded, time-budgeted, resumable runs)."""
from __future__ import annotations

import argparse


def training_parser(doc: str, out: str, minutes: float, max_steps: int, batch: int, lr: float,
                    max_steps_help: str = "stop after this many steps") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=out, help="run folder (checkpoints, log); an existing one is resumed")
    p.add_argument("--minutes", type=float, default=minutes, help="wall-clock budget of this invocation")
    p.add_argument("--max-steps", type=int, default=max_steps, help=max_steps_help)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--save-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU with AVX512-BF16)")
    p.add_argument("--source", default="auto", choices=["auto", "debian", "subset"],
                   help="Fashion-MNIST from Debian's package, the shipped subset, or whichever is there")
    return p
