"""Plain autoregressive sampling: one forward pass per token, the baseline of every comparison.

With a small model on a CPU every tensor operation between two forward passes shows up as decoder
overhead, so the loop does the least it can per token: the uniforms of the whole image are drawn at
once (on the CPU generator the same stream as one draw per token, so the tokens are those of a
per-token `sample`), each target p is written into a block of rows whose trace statistics (p of the
token, top-1 probability, entropy) are computed together, and the trace is filled once at the end.

Where it differs from LlamaGen's `generate()` / `sample()` (FoundationVision/LlamaGen), on purpose:
- a temperature below 1e-4 is greedy argmax (LlamaGen divides by max(T, 1e-5) and still samples);
- tokens are drawn by inverting the CDF with one float64 uniform per token from the CPU generator,
  not `torch.multinomial`: the same distribution, another random stream, the same on every device;
- CFG, temperature, top-k, top-p in LlamaGen's order (`decoding/sampling.py`); no `cfg_interval`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from decoding.base import Clock, Decoder, ModelLike, TraceRecorder
from decoding.sampling import SamplingSettings, inverse_cdf, logits_to_probs, top1_and_entropy
from decoding.trace import StepRecord

STATS_BLOCK = 32  # rows of p kept between two statistics computations


@dataclass
class ARDecoder(Decoder):
    """Next-token sampling (temperature, top-k, top-p; CFG in the model). Every token is a
    'bonus' token in the trace: drawn from the target with no draft."""

    name = "ar"
    lossless = True
    summary = "next-token sampling, one forward pass per token: the baseline of every comparison"
    paper = "LlamaGen (Sun et al., arXiv 2406.06525, 2024): its generate() and sample()"
    paper_url = "https://arxiv.org/abs/2406.06525"
    family = "ar"

    def _decode(self, model: ModelLike, label: int, sampling: SamplingSettings, gen: torch.Generator,
                recorder: TraceRecorder, clock: Clock, ctx: Any) -> torch.Tensor:
        n, vocab = model.info.num_tokens, model.info.vocab_size
        tokens = torch.empty(n, dtype=torch.long)
        uniforms = torch.rand(n, 1, dtype=torch.float64, generator=gen)  # one per token, in order
        block = torch.empty(min(STATS_BLOCK, n), vocab)  # p of the block's tokens
        stats = torch.empty(3, n)  # per position: p(token), top-1 probability, entropy
        steps: list[StepRecord] = []
        logits = clock.forward(model.prefill, label, sampling.cfg_scale).cpu()  # [V]; decoder logic on CPU
        for pos in range(n):
            steps.append(recorder.new_step(pos - 1, 0 if pos == 0 else 1))
            row = pos % len(block)
            p = logits_to_probs(logits, sampling, out=block[row])  # [V]
            tokens[pos:pos + 1] = inverse_cdf(p, uniforms[pos])
            if row == len(block) - 1 or pos == n - 1:
                _block_stats(block[:row + 1], tokens[pos - row:pos + 1], stats[:, pos - row:pos + 1])
            recorder.close_step(steps[-1], clock)
            if pos + 1 < n:
                logits = clock.forward(model.forward_window, tokens[pos:pos + 1], pos)[0].cpu()
        _commit_all(recorder, steps, tokens, stats)
        return tokens


def _block_stats(p: torch.Tensor, tokens: torch.Tensor, out: torch.Tensor) -> None:
    """p: [K, V] targets of K consecutive positions, tokens: [K] drawn there -> out: [3, K]."""
    out[0] = p.gather(1, tokens[:, None])[:, 0]
    out[1], out[2] = top1_and_entropy(p)


def _commit_all(recorder: TraceRecorder, steps: list[StepRecord], tokens: torch.Tensor,
                stats: torch.Tensor) -> None:
    """What `recorder.commit(step, [pos], [token], ['bonus'], p)` does for every step, at once."""
    trace = recorder.trace
    token_list = tokens.tolist()
    trace.tokens, trace.commit_step, trace.commit_kind = token_list, [s.index for s in steps], ["bonus"] * len(steps)
    trace.commit_p, trace.commit_top1, trace.commit_entropy = stats.tolist()
    for pos, (step, token) in enumerate(zip(steps, token_list)):
        step.committed_positions.append(pos)
        step.committed_tokens.append(token)
        step.committed_kinds.append("bonus")
