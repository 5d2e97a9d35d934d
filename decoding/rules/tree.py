"""Draft trees and their lossless verification (SJD-PAC's Proactive Drafting; SpecInfer-style siblings).

Notation: p = target distribution (rows of this pass, one per tree node: the target of the position
after the node), q = draft distribution (the one a candidate was drawn from, given its earlier siblings).

A tree (`build_tree`) hangs below a root, the last committed token. Each level j (the position
root + j) has `counts[j - 1]` candidates; in the first `tree_levels` levels every node gets all of the
level's candidates as children (the same tokens under every parent, as SJD-PAC's
`generate_tree_mask_and_retrieve` lays them out), deeper levels continue only the main path (every
node's candidate 0), as one chain. Nodes are in breadth-first order, so a node's ancestors come first.

Siblings are verified by recursive rejection sampling without replacement (SpecInfer, Miao et al. 2024;
Jeon et al. 2024; SJD-PAC's `SJDPACSpeculativeSampler`): candidates c_1..c_K at a node were drawn
without replacement, c_k from q_k = norm(q with c_1..c_{k-1} zeroed) (`without_replacement_q`). Try
them in order: accept c_k with probability min(1, t_k(c_k) / q_k(c_k)), t_1 = p, and after a rejection
t_{k+1} = norm(max(0, t_k - q_k)) (the residual chained across siblings); if all are rejected the token
is drawn from norm(max(0, t_K - q_K)). Each step is exact speculative sampling of t_k with a draft
drawn from q_k, so the committed token is distributed as p whatever the q_k are, as long as each
candidate was really drawn from its q_k given the earlier ones. The first accepted child is taken,
so exactly one path is accepted; its length is SJD-PAC's per-path `cummin`, and it is the longest
accepted path of the tree.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch

from decoding.rules.exact import acceptance_ratio, residual
from decoding.sampling import sample


@dataclass(frozen=True)
class Tree:
    """A draft tree: node 0 is the root (depth 0); lists are indexed by node, breadth-first."""

    parents: tuple[int, ...]  # parent node, -1 for the root
    depths: tuple[int, ...]  # 0 for the root; the node's position is root position + depth
    branch: tuple[int, ...]  # the node's candidate index at its level (0: the level's main draft)
    main: tuple[bool, ...]  # on the main path (candidate 0 at every level): written to canonical slots
    children: tuple[tuple[int, ...], ...]  # in sibling (candidate) order
    visible: torch.Tensor  # bool [T, T]: node i sees node j (j an ancestor of i, or i itself)

    def __len__(self) -> int:
        return len(self.parents)


def full_tree_size(width: int, levels: int) -> int:
    """Nodes of a full `width`-ary tree with `levels` levels below the root, the root included."""
    return sum(width ** j for j in range(levels + 1))


@lru_cache(maxsize=256)
def build_tree(counts: tuple[int, ...], tree_levels: int) -> Tree:
    """counts[j - 1]: candidates at level j (>= 1); levels > tree_levels use candidate 0 only."""
    if any(c < 1 for c in counts) or tree_levels < 0:
        raise ValueError(f"a tree needs >= 1 candidate per level and tree_levels >= 0, got {counts}, {tree_levels}")
    parents, depths, branch, main = [-1], [0], [0], [True]
    level = [0]  # the nodes of the last built level
    for j, count in enumerate(counts, start=1):
        width = count if j <= tree_levels else 1
        parents_j = level if j <= tree_levels else [level[0]]  # deeper: continue the main path only
        nxt = []
        for parent in parents_j:
            for b in range(width):
                nxt.append(len(parents))
                parents.append(parent)
                depths.append(j)
                branch.append(b)
                main.append(main[parent] and b == 0)
        level = sorted(nxt, key=lambda i: not main[i])  # the main node first: deeper levels hang below it
    children: list[list[int]] = [[] for _ in parents]
    for i, parent in enumerate(parents[1:], start=1):
        children[parent].append(i)
    visible = torch.eye(len(parents), dtype=torch.bool)
    for i, parent in enumerate(parents[1:], start=1):
        visible[i] |= visible[parent]
    return Tree(tuple(parents), tuple(depths), tuple(branch), tuple(main), tuple(map(tuple, children)), visible)


def draw_siblings(base: torch.Tensor, first: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """[L, V] distributions and [L] candidate 0 -> [L, count] candidates: after `first`, count - 1 draws
    without replacement from `base` with `first` excluded; -1 once a row's support has run out."""
    cands = [first]
    remaining = base.scatter(1, first[:, None], 0.0)  # [L, V]
    for _ in range(count - 1):
        alive = remaining.sum(1) > 0  # [L]; a dead row is all zeros, so zeroing its index 0 below is harmless
        drawn = torch.where(alive, sample(remaining, generator), -1)  # [L]; one uniform per row, dead or alive
        remaining.scatter_(1, drawn.clamp_min(0)[:, None], 0.0)
        cands.append(drawn)
    return torch.stack(cands, 1)


def without_replacement_q(base: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
    """[L, V], [L, K] -> [L, K, V]: q_k = norm(base with cands[:, :k] zeroed), the distribution candidate
    k was drawn from given the earlier ones (`draw_siblings`; rows of missing candidates, -1, are zero)."""
    rows, remaining = [], base.clone()
    for k in range(cands.shape[1]):
        rows.append(remaining / remaining.sum(1, keepdim=True).clamp_min(1e-30))
        remaining.scatter_(1, cands[:, k].clamp_min(0)[:, None], 0.0)  # a missing one: the row is zero already
    return torch.stack(rows, 1)


@dataclass
class TreeVerdict:
    """The outcome of one tree verification (node indices into the tree)."""

    tested: list[int]  # nodes whose test was decided, in order (siblings tried, then deeper)
    accept_prob: list[float]  # aligned with tested: the probability each was accepted with
    accepted: list[bool]  # aligned with tested
    path: list[int]  # the accepted nodes, root excluded, in depth order
    final: torch.Tensor  # [V] distribution of the token after the path (a residual or the target)
    final_kind: str  # "resampled" (the last node's children were all rejected) or "bonus" (it had none)


@lru_cache(maxsize=256)
def node_parents(parents: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """([T - 1] every non-root node's parent, [T - 1] the nodes 1 .. T - 1) of a tree's `parents`, as
    index tensors, built once per tree shape (the same shapes recur every pass)."""
    return torch.tensor(parents[1:], dtype=torch.long), torch.arange(1, len(parents))


def verify_tree(tree: Tree, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, u: torch.Tensor,
                next_target: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = residual) -> TreeVerdict:
    """p: [T, V] (row i: target of the position after node i); q: [T, V] (row i: what node i was drawn
    from given its earlier siblings; the root's row is unused); tokens, u: [T].

    `next_target(t_k, q_k)`: the target of the next sibling after a rejection (the chained residual; a
    test swaps it for a wrong one to check that the goodness-of-fit test notices)."""
    parents, nodes = node_parents(tree.parents)
    # every node against its parent's own target: exact for first children and chain nodes
    prob0 = [1.0] + acceptance_ratio(p[parents, tokens[1:]], q[nodes, tokens[1:]]).tolist()  # [T - 1] elements
    u_list, tok_list = u.tolist(), tokens.tolist()
    tested, probs, accepted, path = [], [], [], []
    node = 0
    while True:
        kids = tree.children[node]
        if not kids:
            return TreeVerdict(tested, probs, accepted, path, p[node], "bonus")
        target = p[node]
        for k, child in enumerate(kids):
            if k == 0:
                prob = prob0[child]
            else:
                target = next_target(target, q[kids[k - 1]])
                prob = min(1.0, float(target[tok_list[child]]) / max(float(q[child, tok_list[child]]), 1e-30))
            tested.append(child)
            probs.append(prob)
            accepted.append(u_list[child] < prob)
            if accepted[-1]:
                path.append(child)
                node = child
                break
        else:
            return TreeVerdict(tested, probs, accepted, path, residual(target, q[kids[-1]]), "resampled")


def continuation(tree: Tree, path: list[int]) -> dict[int, int]:
    """depth -> node: where the stale drafts after the path come from. From the last accepted node (or
    the root) down its candidate-0 children; past that, the main path (SJD-PAC: the accepted path's row
    inside the tree, the main chain beyond it)."""
    nodes = {tree.depths[i]: i for i in range(len(tree)) if tree.main[i]}
    node = path[-1] if path else 0
    while tree.children[node]:
        node = tree.children[node][0]
        nodes[tree.depths[node]] = node
    return nodes
