"""Plain autoregressive sampling: one forward pass per token, the baseline of every comparison."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from decoding.base import Clock, Decoder, ModelLike, TraceRecorder
from decoding.sampling import SamplingSettings, logits_to_probs, sample


@dataclass
class ARDecoder(Decoder):
    """Next-token sampling (temperature, top-k, top-p; CFG in the model). Every token is a
    'bonus' token in the trace: drawn from the target with no draft."""

    name = "ar"
    lossless = True

    def _decode(self, model: ModelLike, label: int, sampling: SamplingSettings, gen: torch.Generator,
                recorder: TraceRecorder, clock: Clock) -> torch.Tensor:
        n = model.info.num_tokens
        tokens = torch.empty(n, dtype=torch.long)
        logits = clock.forward(model.prefill, label, sampling.cfg_scale).cpu()  # [V]; decoder logic on CPU
        for pos in range(n):
            step = recorder.new_step(pos - 1, 0 if pos == 0 else 1)
            p = logits_to_probs(logits, sampling)
            tokens[pos] = sample(p, gen)
            recorder.commit(step, torch.tensor([pos]), tokens[pos:pos + 1], ["bonus"], p.view(1, -1))
            recorder.close_step(step, clock)
            if pos + 1 < n:
                logits = clock.forward(model.forward_window, tokens[pos:pos + 1], pos)[0].cpu()
        return tokens
