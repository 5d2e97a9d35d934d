"""Medusa: extra decoding heads on the frozen target's last hidden state draft a tree, verified losslessly.

Cai, Li, Geng, Peng, Lee, Chen, Dao, Medusa (ICML 2024, arXiv 2401.10774); official code
FasterDecoding/Medusa (`medusa/model/medusa_model.py`, `utils.py`, `medusa_choices.py`). The heads are
`models.drafter.MedusaHeads` (trained by `python -m models.train_drafter --kind medusa`); the loop, the
target pass and the trace are `decoding/drafting.py`.

Notation: p = target distribution, q = draft distribution.

After a pass the target's state h_i at the last accepted node gives the next token (position i + 1, the
next root) through the target's head, and head k (k = 1..n) the token at depth k below that root. Drafts:
- "static": a tree in the Medusa / EAGLE-1 choice format (EAGLE's 25-node `mc_sim_7b_63`, cut at the
  number of heads): node (i_1, ..., i_d) is the i_d-th most likely token of head d under its parent
  (every parent at a depth gets the same candidates: Medusa's Cartesian tree);
- "chain": the top token of each head.
The drafts are deterministic (q one-hot), so verification by `rules.tree.verify_tree` (siblings in order,
the residual chained: sampling without replacement from p) is exact: the output is distributed as plain
AR's, the chi-square test in tests/test_decoding_lossless.py checks it.

Known differences from the official code:
- Medusa verifies with greedy matching or its lossy "typical acceptance" (posterior threshold / alpha);
  here the lossless rule above (Medusa's own paper mentions rejection sampling as the exact option).
- The heads run on both CFG halves and are guided (u + s (c - u)) as the target is.
- The first pass after the prefill is one AR step (no hidden state before it).
- Default 3 heads (Medusa-1 ships 4-5 for LLMs): this model's 14 x 14 grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from decoding.base import ModelLike
from decoding.drafting import EAGLE_TREE, Draft, DrafterDecoder, children_by_path, guide, one_hot, ranking_settings
from decoding.eagle import DRAFTER_SOURCES, drafter_for_decoder
from decoding.params import param
from decoding.sampling import SamplingSettings, logits_to_probs

MEDUSA_TREES = ("static", "chain")


@dataclass
class MedusaSession:
    heads: Any
    cfg_scale: float
    ranking: SamplingSettings
    q: torch.Tensor | None = None  # [n, V] the heads' guided distributions for depths 1..n


@dataclass
class MedusaDecoder(DrafterDecoder):
    """tree: static (Cartesian top-k tree) or chain (top-1 per head); drafter: trained / random / auto."""

    name = "medusa"
    lossless = True
    summary = ("Medusa: trained heads on the target's last hidden state propose the next tokens at once, as a "
               "tree verified in one forward, lossless")
    paper = "Cai et al., Medusa (ICML 2024, arXiv 2401.10774)"
    paper_url = "https://arxiv.org/abs/2401.10774"

    tree: str = param("static", "draft shape: 'static' (EAGLE's 25-node tree cut at the number of heads, top "
                      "tokens of each head) or 'chain' (each head's top token)", choices=MEDUSA_TREES)
    drafter: str = param("auto", "'trained': the model's registered heads; 'random': untrained seeded heads "
                         "(drafts poor, output still exact); 'auto': trained if the model has them",
                         choices=DRAFTER_SOURCES, advanced=True, sweepable=False)

    def prepare(self, model: ModelLike) -> Any:
        if not hasattr(model, "forward_nodes") or not hasattr(model, "copy_slots"):
            raise ValueError(f"{self.name} needs a model with forward_nodes and copy_slots (tree attention)")
        if len(EAGLE_TREE) > int(getattr(model, "scratch_slots", 0)):
            raise ValueError(f"{self.name}: its tree needs {len(EAGLE_TREE)} scratch cache slots, the model has "
                             f"scratch_slots={getattr(model, 'scratch_slots', 0)}")
        return {"heads": drafter_for_decoder(model, "medusa", self.drafter)}

    def begin(self, model: ModelLike, ctx: Any, sampling: SamplingSettings) -> MedusaSession:
        return MedusaSession(ctx["heads"], sampling.cfg_scale, ranking_settings(sampling))

    def observe(self, session: MedusaSession, hidden: torch.Tensor, committed: torch.Tensor, start: int) -> int:
        """The heads on the last accepted node's state: distributions of depths 1..n below the next root."""
        state = hidden[:, -1].to(session.heads.heads[0][1].weight.dtype)  # [B, dim]
        logits = guide(session.heads(state).transpose(0, 1), session.cfg_scale).cpu()  # [n, V]
        session.q = logits_to_probs(logits, session.ranking)
        return 1

    def draft(self, session: MedusaSession, root: torch.Tensor, start: int, n: int, sampling: SamplingSettings,
              gen: torch.Generator) -> Draft:
        depth = min(len(session.q), n - 1 - start)
        vocab = session.q.shape[1]
        choices = EAGLE_TREE if self.tree == "static" else tuple((0,) * d for d in range(1, depth + 1))
        counts = children_by_path(choices, depth)
        widest = max(counts.values(), default=0)
        top = session.q[:depth].topk(min(widest, vocab), dim=1).indices if depth else None  # [depth, widest]
        parents, tokens, paths = [-1], [int(root)], [()]
        frontier = [0]
        for d in range(1, depth + 1):
            new = []
            for node in frontier:
                for b in range(counts.get(paths[node], 0)):
                    new.append(len(parents))
                    parents.append(node)
                    tokens.append(int(top[d - 1, b]))
                    paths.append(paths[node] + (b,))
            frontier = new
        token_tensor = torch.tensor(tokens)
        q = one_hot(token_tensor, vocab)
        q[0] = 0.0
        return Draft(parents, token_tensor, q, 0)
