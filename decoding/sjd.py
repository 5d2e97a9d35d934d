"""SJD: Speculative Jacobi Decoding (Teng et al., ICLR 2025, arXiv 2410.01699), lossless.

Notation: p = target distribution, q = draft distribution.

Draft tokens come from the model itself: the previous Jacobi iteration's samples, verified with
the probabilistic convergence criterion accept x w.p. min(1, p(x) / q(x)) (the paper's eq. 4),
q = the distribution x was drawn from one iteration earlier. The loop is in `speculative_jacobi.py`.

Where we knowingly differ from the official code (tyshiwo1/Accelerating-T2I-AR-with-SJD):
- the residual norm(max(0, p - q)) is not re-truncated with top-k (the official code re-applies
  the logits processors, which is slightly lossy); ours is exactly lossless w.r.t. guided AR;
- draft initialisation 'vertical' (repeat the upper neighbour, the paper's best in Fig. 9) and a
  working 'horizontal' are available; the official LlamaGen path silently falls back to random;
- random initial drafts are drawn from the model's own vocabulary (the official LlamaGen path
  draws Chameleon's image ids).
"""
from __future__ import annotations

from dataclasses import dataclass

from decoding.speculative_jacobi import SpeculativeJacobi


@dataclass
class SJDDecoder(SpeculativeJacobi):
    """The exact rule of `SpeculativeJacobi`, with its `window` and `init`."""

    name = "sjd"
    lossless = True
    summary = "Speculative Jacobi Decoding: the previous pass's samples verified by min(1, p/q)"
    paper = "Teng et al., ICLR 2025 (arXiv 2410.01699)"
    paper_url = "https://arxiv.org/abs/2410.01699"
