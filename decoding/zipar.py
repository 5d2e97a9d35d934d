"""ZipAR: next-set prediction over rows (He et al., 2024, arXiv 2412.04062), lossy.

Notation: p = target distribution. No drafts and no verification: every pass feeds, for each
decoding row, the row's latest token (its anchor, `rows.py`) and samples the row's next token from
p there, so several rows advance by one token per pass. Row 0 is decoded first, alone; then row
r + 1 starts once row r has `local_window` tokens (the official `zipar_window_size`), so in the
steady state about W / local_window rows decode at once, each conditioned on an incomplete row
above (that is the loss: AR conditions every token on the whole raster prefix).

Faithful to the official LlamaGen code (ThisisBillhe/ZipAR, `LlamaGen-ZipAR/autoregressive/models/
generate_zipar.py`, `decode_n_tokens_zipar`), pass for pass: the same nodes at the same positions
(tests/test_decoding_rows.py replays the official loop), the NFE of the paper's table
(24 x 24 grid: 400 / 312 / 224 forwards for local_window 16 / 12 / 8; here 14 x 14: 124 for 8,
= (W - 2) * local_window + 2 W), the stand-in token for a row's first position (the latest token
of the row two above, fed at the row above's last column, seen by later positions until the real
token overwrites it), and the extra feed of a completed row's last token.

Known differences:
- The official causal mask also lets a row attend to the cache slots of the row above that are not
  decoded yet (zero K/V, which only dilutes attention: a zero key scores 0, a zero value adds
  nothing); here a node sees committed (fed) positions only.
- `local_window` takes 1 .. any: the official code needs 2 <= zipar_window_size <= W - 1 (1 trips
  its assertion, W misorders the tokens, more never starts a row); here a row also starts once the
  row above is complete, so local_window >= W is plain AR (sampled: exactly `ar`'s distribution).
- LlamaGen class-conditional (c2i) with CFG, as the official LlamaGen-ZipAR; its `cfg_interval`
  (CFG only for the first tokens) is not offered. The official numbers are for 16 x 16 / 24 x 24
  ImageNet grids (local_window 8); the bundled model's grid is 14 x 14, so a window of 8 leaves
  fewer rows in flight.
- ZipAR v3's adaptive local window with rejection sampling is not in the official code (ZipAR
  issue #3) and not here.
- Greedy (temperature 0) does not equal greedy AR in general (rows see an incomplete row above);
  it does for local_window >= W.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from decoding.base import Clock, Decoder, ModelLike, TraceRecorder, prefill_first_token
from decoding.params import param
from decoding.rows import RowSchedule, node_batch
from decoding.sampling import SamplingSettings, logits_to_probs, sample


@dataclass
class ZipARDecoder(Decoder):
    """Rows in parallel, one sampled token per decoding row per pass."""

    name = "zipar"
    lossless = False
    greedy_equals_ar = False
    family = "rows"
    summary = "ZipAR: a row starts once local_window tokens of the row above are decoded; one token per row per pass"
    paper = "He et al., 2024 (arXiv 2412.04062)"
    paper_url = "https://arxiv.org/abs/2412.04062"
    local_window: int = param(8, "tokens of the row above decoded before a row starts (official zipar_window_size "
                              "8 for LlamaGen; >= grid width: plain AR)", low=1, high=1024, integer=True)

    def start_after(self, height: int, width: int) -> list[int]:
        """Tokens of row r needed before row r + 1 starts: row 0 whole (official), then local_window."""
        return [width] + [min(self.local_window, width)] * (height - 1)

    def _decode(self, model: ModelLike, label: int, sampling: SamplingSettings, gen: torch.Generator,
                recorder: TraceRecorder, clock: Clock, ctx: Any) -> torch.Tensor:
        height, width = model.info.grid_shape

        # 1. prefill: the target of position 0 and one token from it
        tokens = prefill_first_token(model, label, sampling, gen, recorder, clock)  # [N]

        schedule = RowSchedule(height, width, self.start_after(height, width), tokens)
        schedule.begin(1)
        while not schedule.done:
            # 2. one node per decoding row: its latest token (a stand-in for a row with none yet)
            windows = schedule.windows()
            batch = node_batch(windows, schedule.cached)
            step = recorder.new_step(int(batch.positions.min()), len(batch.tokens))
            logits = clock.forward(model.forward_nodes, batch.tokens, batch.positions, batch.visible,
                                   batch.context).cpu()  # [K, V]

            # 3. each row's next token, sampled (a completed row's last feed has no output to use)
            emitting = [w for w in windows if not w.final]
            p = logits_to_probs(logits[[batch.first[i] for i, w in enumerate(windows) if not w.final]], sampling)
            y = sample(p, gen)  # [R]
            targets = torch.tensor([w.anchor + 1 for w in emitting], dtype=torch.long)
            tokens[targets] = y
            for w in emitting:
                schedule.commit(w.row, 1)
            recorder.commit(step, targets, y, ["bonus"] * len(emitting), p)
            recorder.close_step(step, clock)
            schedule.after_pass(windows, [range(0)] * len(windows))
        return tokens
