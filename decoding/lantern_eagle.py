"""LANTERN as published: relaxed acceptance (latent proximity) on the drafts of a trained EAGLE drafter.

Jang et al., LANTERN (ICLR 2025, arXiv 2410.03355) and LANTERN++ (arXiv 2502.06352); official code
jadohu/LANTERN `models/ea_model_llamagen.py` (`evaluate_posterior` for the dynamic tree,
`evaluate_posterior_v1` for the static tree and chains). Drafts, target pass and trace are `eagle`'s.

Notation: p = target distribution, q = draft distribution, x = a draft token, B_k(x) its k nearest codes in
the VQ codebook (x included; `neighbourhood_k` = the official `lantern_k` + 1).

Rule (`rules/lantern.py`): p~(x) = p(x) + the mass of the largest proximity-ordered prefix A of B_k(x) \\ {x}
whose mass is at most delta (LANTERN) and, with `ratio_bound` lambda set, at most (lambda - 1) p(x)
(LANTERN++). Siblings are tried in order, as the official code does:
- a deterministic draft (q one-hot: EAGLE-2's dynamic tree, greedy drafts), official `qx = 1`: accept with
  probability min(1, p~(x)); on rejection p(x) = 0 and, when A was not empty, p = 0 on the official
  `lantern_k + 1` nearest codes of x (our k nearest, x excluded), whatever the size of A; renormalise.
- a sampled draft (static tree, chain): accept with probability min(1, p~(x) / q(x)), q the drafter's
  distribution with the earlier siblings removed; on rejection q' = that q with, when A was not empty,
  the same k nearest codes zeroed (not renormalised), and p <- norm(max(0, p - q')).
- after the last rejection the token is drawn from that p; below an accepted leaf, from the target.
- greedy (temperature 0): the relaxation applies to the temperature-1 target: x is accepted iff it is
  the argmax of that distribution with p(x) replaced by p~(x) (so greedy is relaxed too and is not
  plain greedy AR); the token after the path is the target's argmax.

Differences from the official code, on purpose or noted:
- The official implementations are inconsistent about where a rejected draft's neighbours are zeroed in
  the static-tree rule: in q in the LlamaGen file (followed here), in p in the Lumina-mGPT file.
- The official code takes the longest accepted path of the tree (greedy mode: over all root-to-leaf
  paths); here the first accepted sibling is followed, so a later sibling that would also pass its
  relaxed test is not looked at.
- A residual with no mass left falls back to the target (`rules.exact.residual`), the official code to
  the uniform distribution (a case of probability ~0).
- Neighbour lists from the codebook as the image decoder uses it by default (`codebook_space='vq'`);
  the official code measures distances on the raw embedding weights ('raw').
- The official `--lantern_delta` carries delta (<= 1) or lambda (> 1); here two parameters, both applied
  when both are set.
- Everything `eagle` lists (first pass one AR step, CFG on both drafter halves, residual not re-truncated).
With k = 1 it is `eagle`, token for token for the same seed and sampling. With delta = 0 (or ratio_bound = 1)
nothing is relaxed, but as in the official code a rejected draft whose nearest codes carry no target mass
(an admissible empty-mass prefix) still has its k nearest codes zeroed, so the residual differs from `eagle`'s.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from decoding.base import ModelLike
from decoding.drafting import Draft, ranking_settings
from decoding.eagle import EagleDecoder
from decoding.lantern import CODEBOOK_SPACES
from decoding.neighbours import neighbour_lists
from decoding.params import param
from decoding.rules.exact import residual
from decoding.rules.lantern import lantern_relaxed_probability
from decoding.rules.tree import Tree, TreeVerdict
from decoding.sampling import SamplingSettings, logits_to_probs


@dataclass
class LanternEagleDecoder(EagleDecoder):
    """`eagle`'s drafts (tree, depth, top_k, total_token, drafter) and LANTERN's relaxation."""

    name = "lantern-eagle"
    lossless = False
    greedy_equals_ar = False  # the official greedy rule is relaxed too
    summary = ("LANTERN as published: relaxed acceptance (a draft takes the mass of its nearest codes, within "
               "delta) on a trained EAGLE drafter's tree")
    paper = "Jang et al., LANTERN (ICLR 2025, arXiv 2410.03355); LANTERN++ (arXiv 2502.06352)"
    paper_url = "https://arxiv.org/abs/2410.03355"
    group_noun = "neighbourhood"

    neighbourhood_k: int = param(10, "size of B_k(x), the codes nearest the draft, the draft included (1: no "
                                 "relaxation; official --lantern_k counts one fewer)", low=1, integer=True,
                                 model_bound="vocab_size")
    delta: float = param(0.1, "total-variation budget per token: the most target mass moved onto the draft "
                         "(official default 0.1, 'aggressive' 0.4; 0: no mass moved)", low=0.0, high=1.0)
    ratio_bound: float | None = param(None, "LANTERN++'s lambda: p~(x) <= lambda p(x) (official runs 5-20, with "
                                      "the static tree; none: off, 1: no mass moved)", low=1.0, optional=True,
                                      advanced=True)
    codebook_space: str = param("vq", "where nearness is measured: 'vq' the codebook as the image decoder uses it, "
                                "'raw' the un-normalised weights (the official code)", choices=CODEBOOK_SPACES,
                                advanced=True, sweepable=False)

    def prepare(self, model: ModelLike) -> Any:
        ctx = super().prepare(model)
        k = min(self.neighbourhood_k, model.info.vocab_size - 1)  # k - 1 to relax with, k zeroed on a rejection
        ctx["neighbours"] = neighbour_lists(model, self.codebook_space, k, False).long() if k > 0 else None
        return ctx

    def verify(self, tree: Tree, p: torch.Tensor, draft: Draft, u: torch.Tensor, ctx: Any,
               sampling: SamplingSettings, logits: torch.Tensor | None = None) -> tuple[TreeVerdict, torch.Tensor]:
        soft = logits_to_probs(logits, ranking_settings(sampling)) if sampling.greedy else p  # [T, V]
        tested, probs, accepted, relaxed, path = [], [], [], [], []
        node = 0
        while True:
            kids = tree.children[node]
            if not kids:
                return TreeVerdict(tested, probs, accepted, path, p[node], "bonus"), torch.tensor(relaxed,
                                                                                                 dtype=torch.bool)
            target = soft[node].clone()  # [V]
            for child in kids:
                x = int(draft.tokens[child])
                p_relaxed, moved = self._relaxed(target, x, ctx)
                q_child = draft.q[child]
                one_hot = bool(q_child[x] >= 1.0)
                if sampling.greedy:
                    adjusted = target.clone()
                    adjusted[x] = p_relaxed
                    prob = float(int(adjusted.argmax()) == x)
                    exact = float(int(target.argmax()) == x)
                else:
                    q_x = 1.0 if one_hot else max(float(q_child[x]), 1e-30)
                    prob, exact = min(1.0, p_relaxed / q_x), min(1.0, float(target[x]) / q_x)
                ok = float(u[child]) < prob
                tested.append(child)
                probs.append(prob)
                accepted.append(ok)
                relaxed.append(ok and not float(u[child]) < exact)
                if ok:
                    path.append(child)
                    node = child
                    break
                if not sampling.greedy:
                    target = self._after_rejection(target, q_child, x, one_hot, moved, ctx)
            else:
                final = p[node] if sampling.greedy else target
                return TreeVerdict(tested, probs, accepted, path, final, "resampled"), torch.tensor(relaxed,
                                                                                                   dtype=torch.bool)

    def _relaxed(self, target: torch.Tensor, x: int, ctx: Any) -> tuple[float, int]:
        """(p~(x), |A|) against the current target [V]."""
        table = ctx["neighbours"]
        if table is None or self.neighbourhood_k <= 1:
            return float(target[x]), 0
        neighbours = table[x, :self.neighbourhood_k - 1][None]  # [1, k - 1]
        p_relaxed, n_moved, _ = lantern_relaxed_probability(target[None], torch.tensor([x]), neighbours, self.delta,
                                                            self.ratio_bound)
        return float(p_relaxed[0]), int(n_moved[0])

    @staticmethod
    def _after_rejection(target: torch.Tensor, q_child: torch.Tensor, x: int, one_hot: bool, moved: int,
                         ctx: Any) -> torch.Tensor:
        """The official update after x was rejected (module docstring)."""
        zeroed = ctx["neighbours"][x] if moved > 0 else None  # [k] x's k nearest codes, x excluded
        if one_hot:  # evaluate_posterior: zero x (and its neighbours) in p, renormalise
            target = target.clone()
            target[x] = 0.0
            if zeroed is not None:
                target[zeroed] = 0.0
            mass = target.sum()
            return target / mass if mass > 0 else torch.full_like(target, 1.0 / len(target))
        q_used = q_child.clone()  # evaluate_posterior_v1 (LlamaGen file): neighbours zeroed in q, p - q
        if zeroed is not None:
            q_used[zeroed] = 0.0
        return residual(target, q_used)
