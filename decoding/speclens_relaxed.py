"""SpecLens relaxed (ours): `speclens` with LANTERN's relaxed target at every tree node, lossy.

Notation: p = target distribution (this pass), q = draft distribution.

`speclens` (SJD-PAC's tree and coupled continuation, uniform q, the optional hardware-aware chain)
verifies each node's children against a relaxed target instead of p: LANTERN's p~ (Jang et al.,
ICLR 2025, `rules/lantern.py`), which moves onto the node's first child x the target mass of its
nearest VQ codes A(x), as long as that mass is at most `delta` (TV(p, p~) <= delta) and, with
`ratio_bound` (LANTERN++), p~(x) <= lambda p(x). So the first child is accepted with probability
min(1, p~(x) / q(x)); the later siblings are tried against the residual of p~ chained across siblings,
and a node whose children are all rejected draws from that residual (`rules.tree.verify_tree`, unchanged):
each committed token is an exact draw from a p~ within `delta` of p in total variation. The
continuation (maximal coupling) and the next drafts' q use the unrelaxed p.

Why LANTERN and not GSD: GSD's grouped ratio p(G) / q(G) keeps SJD's exact residual, which is not a
target row, so it does not fit the tree's chained residual; LANTERN's p~ is one, so the tree's lossless
machinery runs unchanged on it.

Known differences:
- LANTERN's relaxation is for a trained drafter's chain; here it is on SJD-PAC's tree of Jacobi drafts
  (training-free), and only a node's first child (candidate 0, the continued draft) gets the relaxed
  mass; siblings are tried against the chained residual of the first child's p~.
- `neighbourhood_k` counts the draft itself (official --lantern_k counts one fewer); neighbours in the
  codebook as the decoder uses it ('vq').
- In the trace, `relaxed` marks an accepted first child that the exact rule would have rejected on the
  same uniform, its group the draft and A(x); siblings carry no group and are never marked.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from decoding.base import ModelLike
from decoding.neighbours import neighbour_lists
from decoding.params import param
from decoding.rules.exact import acceptance_ratio
from decoding.rules.lantern import lantern_members, lantern_relaxed_probability, lantern_target
from decoding.rules.tree import Tree, TreeVerdict
from decoding.speclens import SpecLensDecoder
from decoding.window_trace import PassLog


@dataclass
class RelaxedTreeVerdict(TreeVerdict):
    """A tree verdict plus, per node, its LANTERN group {x} + A(x) [T, k] (-1 padding; rows of nodes that
    are not a first child all -1)."""

    members: torch.Tensor | None = None


@dataclass
class SpecLensRelaxedDecoder(SpecLensDecoder):
    """`speclens`'s parameters, plus LANTERN's `neighbourhood_k`, `delta`, `ratio_bound`."""

    name = "speclens-relaxed"
    lossless = False
    summary = ("SpecLens's own, lossy: `speclens` verifying its draft tree against LANTERN's relaxed target "
               "(a draft takes the mass of its nearest codes, within delta)")
    paper = ("SpecLens (ours): speclens (SJD-PAC arXiv 2603.18599, SCD arXiv 2510.24211, SJD arXiv 2410.01699) "
             "with LANTERN's relaxed acceptance (arXiv 2410.03355)")
    paper_url = ""
    group_noun = "neighbourhood"

    neighbourhood_k: int = param(20, "size of B_k(x), the codes nearest the draft, the draft included (1: no "
                                 "relaxation)", low=1, integer=True, model_bound="vocab_size")
    delta: float = param(0.2, "total-variation budget per token: the most target mass moved onto the draft "
                         "(0: exactly speclens)", low=0.0, high=1.0)
    ratio_bound: float | None = param(None, "LANTERN++'s lambda: p~(x) <= lambda p(x) (none: off, 1: exactly "
                                      "speclens)", low=1.0, optional=True, advanced=True)

    def prepare(self, model: ModelLike) -> torch.Tensor:
        """[V, k - 1] int64 nearest codes of every code (after speclens's model checks)."""
        super().prepare(model)
        return neighbour_lists(model, "vq", self.neighbourhood_k - 1, False).long()

    def verify_pass(self, tree: Tree, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, u: torch.Tensor,
                    ctx: Any) -> RelaxedTreeVerdict:
        """Each parent's row of p replaced by p~ of its first child, then the unchanged tree verification."""
        parents, firsts = _first_children(tree.children)  # [P], [P]
        drafts = tokens[firsts]
        neighbours = ctx[drafts]  # [P, k - 1]
        p_rows = p.index_select(0, parents)  # [P, V] (index_select: a third of p[parents]'s time on CPU)
        _, n_moved, _ = lantern_relaxed_probability(p_rows, drafts, neighbours, self.delta, self.ratio_bound)
        relaxed = p.index_copy(0, parents, lantern_target(p_rows, drafts, neighbours, n_moved))  # [T, V]
        verdict = self.verify(tree, relaxed, q, tokens, u)
        members = torch.full((len(tree), neighbours.shape[1] + 1), -1, dtype=torch.long)
        members[firsts] = lantern_members(drafts, neighbours, n_moved)
        return RelaxedTreeVerdict(**vars(verdict), members=members)

    def pass_log(self, step, start: int, tree: Tree, p: torch.Tensor, node_q: torch.Tensor, node_tokens: torch.Tensor,
                 u: torch.Tensor, verdict: RelaxedTreeVerdict, committed: torch.Tensor) -> PassLog:
        log = super().pass_log(step, start, tree, p, node_q, node_tokens, u, verdict, committed)
        tested = torch.tensor(verdict.tested, dtype=torch.long)
        first = torch.tensor([tree.branch[i] == 0 for i in verdict.tested], dtype=torch.bool)  # [K]
        parents = torch.tensor([tree.parents[i] for i in verdict.tested], dtype=torch.long)
        exact = acceptance_ratio(p[parents, log.drafts], log.verdict.q_draft)  # [K] the unrelaxed rule
        log.verdict.relaxed = log.verdict.accepted & first & (log.verdict.uniform >= exact)
        log.verdict.group_members = verdict.members[tested]
        log.verdict.group_size = (log.verdict.group_members >= 0).sum(1)
        return log


@lru_cache(maxsize=256)
def _first_children(children: tuple[tuple[int, ...], ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """([P] the nodes with children, [P] each one's first child) of a tree, built once per tree shape."""
    parents = [i for i, kids in enumerate(children) if kids]
    return torch.tensor(parents, dtype=torch.long), torch.tensor([children[i][0] for i in parents], dtype=torch.long)
