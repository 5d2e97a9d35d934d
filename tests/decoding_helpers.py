"""Shared helpers of the decoding tests: tiny models, exact sequence distributions, oracle drafts."""
from __future__ import annotations

import itertools

import torch

from decoding.sampling import SamplingSettings, logits_to_probs
from models.gpt import GPT, GPTConfig
from models.interface import ARImageModel
from models.vq import VQConfig, VQModel


def random_tiny_model(vocab: int = 4, grid: int = 2, num_classes: int = 2, seed: int = 0,
                      logit_scale: float = 1.5) -> ARImageModel:
    """A random 1-layer GPT whose distributions are far from uniform and depend on the context."""
    torch.manual_seed(seed)
    cfg = GPTConfig(dim=32, n_layer=1, n_head=2, multiple_of=32, vocab_size=vocab, num_classes=num_classes,
                    block_size=grid * grid, token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)
    gpt = GPT(cfg)
    with torch.no_grad():
        for name, param in gpt.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.5)
        gpt.output.weight.normal_(0.0, logit_scale)
    vq = VQModel(VQConfig(codebook_size=vocab, encoder_ch_mult=[1, 1], decoder_ch_mult=[1, 1], z_channels=32, ch=32))
    return ARImageModel(gpt, vq, f"random-v{vocab}-g{grid}-s{seed}")


@torch.inference_mode()
def exact_sequence_distribution(model: ARImageModel, label: int, sampling: SamplingSettings) -> torch.Tensor:
    """P(sequence) for all V^N sequences (row-major over itertools.product order), computed with the
    GPT's own teacher-forced forward (not the cached path the decoders use), CFG as the interface."""
    gpt, info = model.gpt, model.info
    seqs = torch.tensor(list(itertools.product(range(info.vocab_size), repeat=info.num_tokens)))  # [S, N]
    inputs = seqs[:, :-1]
    cond = gpt(torch.full((len(seqs),), label), inputs)  # [S, N, V]
    if sampling.cfg_scale > 1.0:
        uncond = gpt(torch.full((len(seqs),), info.num_classes), inputs)
        logits = uncond + (cond - uncond) * sampling.cfg_scale
    else:
        logits = cond
    p = logits_to_probs(logits, sampling)  # [S, N, V]
    probs = p.gather(2, seqs[:, :, None])[:, :, 0].double().prod(1)  # [S]
    return probs / probs.sum()


def sequence_index(tokens: torch.Tensor, vocab: int) -> int:
    """Index of a token sequence in itertools.product order."""
    index = 0
    for t in tokens.tolist():
        index = index * vocab + t
    return index


def oracle(cls: type, reference: torch.Tensor, right: bool) -> type:
    """A subclass of a Jacobi-window decoder whose every draft is the reference token (right) or a
    different one (wrong), with a one-hot q; pending Jacobi drafts are ignored."""

    class Oracle(cls):
        def propose(self, pending, q_pending, committed, count, grid_width, vocab_size, gen):
            start = len(committed)
            drafts = reference[start:start + count]
            drafts = drafts if right else (drafts + 1) % vocab_size
            return drafts, torch.nn.functional.one_hot(drafts, vocab_size).float()

    Oracle.__name__ = f"Oracle{cls.__name__}"
    return Oracle
