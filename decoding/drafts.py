"""Draft initialisation for the Jacobi window: the tokens that fill new window slots.

SJD (Teng et al., ICLR 2025, Sec. 3.3 and Fig. 9) studies spatial priors; the official code runs
'random' (uniform ids) and, for LlamaGen, a 'repeat_horizon' that silently falls back to random.
The paper's best, vertical repeat, is not runnable in the official code; here all three are:
- random: uniform over the model's own vocabulary;
- horizontal: repeat the left neighbour (row, col - 1); a slot at column 0 gets a random id;
- vertical: repeat the upper neighbour (row - 1, col); a slot in row 0 gets a random id.
A neighbour that is itself a new slot passes its own initial value on, so a run of new slots
repeats the nearest known token (committed or pending draft).

Every initial draft is a deterministic function of the known tokens (random ids: of the generator),
so its draft distribution q is one-hot on it, as in the official code: acceptance = p(draft).
"""
from __future__ import annotations

import torch

DRAFT_INITS = ("random", "horizontal", "vertical")


def initial_drafts(scheme: str, known: torch.Tensor, count: int, grid_width: int, vocab_size: int,
                   generator: torch.Generator) -> torch.Tensor:
    """Drafts [count] for positions len(known) .. len(known) + count - 1.

    known: [F] tokens at positions 0..F-1 (committed, then pending drafts). Always draws `count`
    random ids from the generator, whatever the scheme, so the random stream does not depend on it.
    """
    if scheme not in DRAFT_INITS:
        raise ValueError(f"draft init must be one of {DRAFT_INITS}, got {scheme!r}")
    rand = torch.randint(vocab_size, (count,), generator=generator)  # [count]
    f0 = len(known)
    if scheme == "random" or count == 0 or f0 == 0:
        return rand
    pos = torch.arange(f0, f0 + count)  # [count]
    if scheme == "horizontal":
        row_start = pos - pos % grid_width
        reaches_known = row_start <= f0 - 1
        return torch.where(reaches_known, known[f0 - 1].expand(count), rand[(row_start - f0).clamp_min(0)])
    steps_up = (pos - f0) // grid_width + 1  # rows to climb until a known position
    anchor = pos - steps_up * grid_width
    top_new = pos - (steps_up - 1) * grid_width  # highest new slot of the column chain
    return torch.where(anchor >= 0, known[anchor.clamp_min(0)], rand[top_new - f0])


def one_hot_q(drafts: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[K] -> [K, V] the draft distribution of deterministic drafts (float32 zeros + scatter: one
    allocation, not one_hot's int64 table and its conversion)."""
    return torch.zeros(len(drafts), vocab_size).scatter_(1, drafts[:, None], 1.0)
