"""EAGLE: speculative decoding with a trained one-layer drafter on the target's features, lossless.

Li, Wei, Zhang, Zhang, EAGLE (ICML 2024, arXiv 2401.15077) and EAGLE-2 (EMNLP 2024, arXiv 2406.16858);
official code SafeAILab/EAGLE, and its LlamaGen port in jadohu/LANTERN (`models/drafters/cnets_llamagen.py`,
`models/ea_model_llamagen.py`). The drafter is `models.drafter.EagleDrafter` (trained by
`python -m models.train_drafter`); the loop, the target pass and the trace are `decoding/drafting.py`.

Notation: p = target distribution, q = draft distribution (the drafter's guided logits through the same
temperature / top-k / top-p as the target).

Drafts (`tree`):
- "chain": `depth` tokens, each drawn from q at the previous draft (greedy: its argmax); one drafter
  forward per draft after the first.
- "static": EAGLE-1's tree `mc_sim_7b_63` (25 nodes, depth 5; cut at `depth`): a node's children are drawn
  from q at that node without replacement (SpecInfer; greedy: its top tokens); one drafter forward per level.
- "dynamic": EAGLE-2: from the root, the `top_k` most likely tokens; at each further level the `top_k`
  frontier nodes are expanded by their `top_k` best children, scored by cumulative log q, and the
  `top_k` best of those become the next frontier; after `depth` levels the `total_token - 1` best-scored
  nodes (ties: the shallower first, so every node's parent is kept) are verified with the root. The drafts
  are deterministic (q one-hot), which is exact verification too (sampling without replacement from p).
Verification: one `forward_nodes` call, `rules.tree.verify_tree` (siblings SpecInfer-style, first accepted
child followed); the accepted off-main path's K/V moved with `copy_slots`. Every committed token is
distributed as plain AR's; the chi-square test in tests/test_decoding_lossless.py checks chain and trees.

Known differences from the official code:
- The official dynamic tree verifies its deterministic candidates with `qx = 1` and zeroes rejected
  candidates in p: the same rule as ours. The official static tree samples children with
  `torch.multinomial(..., replacement=False)` and verifies with the adjusted q_i / (1 - sum_{j<i} q_j):
  the same distributions as `rules.tree.without_replacement_q`.
- The official code verifies and takes the longest accepted path of the tree (greedy); here the first
  accepted child is followed (in greedy the two coincide: at most one child can be the argmax).
- The first pass after the prefill is one AR step (the interface's prefill gives no hidden state of the
  condition, so the drafter starts at image position 1); the official drafter sees the condition's state.
- Residual not re-truncated with top-k; the drafter runs both CFG halves and is guided as the target.
- Defaults: the static tree at depth 5 (EAGLE-1; LANTERN's `--eagle_version 1` default, LANTERN++'s
  setting), because on this CPU it gave the best step compression and wall time of the three (the
  dynamic tree verifies 59 nodes and runs `depth - 1` wider drafter forwards per pass); the dynamic tree's
  `top_k` 10 / `total_token` 59 are LANTERN's LlamaGen `from_pretrained` values (EAGLE-2's LLM defaults:
  depth 5 / top_k 10 / total_token 60).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from decoding.base import ModelLike
from decoding.drafting import (
    EAGLE_TREE,
    Draft,
    DrafterDecoder,
    children_by_path,
    guide,
    one_hot,
    ranking_settings,
)
from decoding.params import param
from decoding.rules.tree import draw_siblings, without_replacement_q
from decoding.sampling import SamplingSettings, logits_to_probs, sample

TREES = ("dynamic", "static", "chain")
DRAFTER_SOURCES = ("auto", "trained", "random")
DRAFTER_SCRATCH = 1024  # drafter cache rows for tree nodes (at most top_k * depth or 25 are used)


@dataclass
class EagleSession:
    """One generate call's drafter state: the drafter (its own cache), CFG scale, the settings q is made
    with, the grid size and the drafter's predicted state at the root (after `observe`)."""

    drafter: Any
    cfg_scale: float
    ranking: SamplingSettings
    greedy: bool
    n: int
    state: torch.Tensor | None = None  # [B, dim]


def drafter_for_decoder(model: ModelLike, kind: str, source: str) -> Any:
    """The drafter of `kind` for the model: its trained one ("auto": if it has one, else a seeded random one)."""
    from models.drafter import drafter_for  # models/ knows nothing of decoders; this is the one way in

    return drafter_for(model, kind, source)


@dataclass
class EagleDecoder(DrafterDecoder):
    """tree: chain / static / dynamic drafts; depth: draft levels; top_k, total_token: the dynamic tree;
    drafter: trained (the model's registered drafter), random (untrained, seeded) or auto."""

    name = "eagle"
    lossless = True
    summary = ("EAGLE: a trained one-layer drafter on the target's last hidden states drafts a chain or a tree "
               "(EAGLE-2: dynamic, by cumulative log-probability), verified in one forward, lossless")
    paper = "Li et al., EAGLE (ICML 2024, arXiv 2401.15077) and EAGLE-2 (EMNLP 2024, arXiv 2406.16858)"
    paper_url = "https://arxiv.org/abs/2406.16858"

    tree: str = param("static", "draft shape: 'dynamic' (EAGLE-2 top-k expansion re-ranked by cumulative "
                      "log q), 'static' (EAGLE-1's 25-node tree mc_sim_7b_63) or 'chain'", choices=TREES)
    depth: int = param(5, "draft levels below the last committed token (EAGLE-1's tree: 5; LANTERN's LlamaGen "
                       "dynamic tree: 4)",
                       low=1, high=16, integer=True)
    top_k: int = param(10, "dynamic tree: children per expanded node and nodes expanded per level (official 10)",
                       low=1, high=32, integer=True, model_bound="vocab_size")
    total_token: int = param(59, "dynamic tree: nodes verified per pass, the last committed token included "
                             "(official 59)", low=2, high=256, integer=True)
    drafter: str = param("auto", "'trained': the model's registered drafter; 'random': an untrained seeded one "
                         "(drafts poor, output still exact); 'auto': trained if the model has one",
                         choices=DRAFTER_SOURCES, advanced=True, sweepable=False)

    drafter_kind = "eagle"

    def prepare(self, model: ModelLike) -> Any:
        if not hasattr(model, "forward_nodes") or not hasattr(model, "copy_slots"):
            raise ValueError(f"{self.name} needs a model with forward_nodes and copy_slots (tree attention)")
        scratch = int(getattr(model, "scratch_slots", 0))
        if self.max_nodes() > scratch:
            raise ValueError(f"{self.name}: a tree of up to {self.max_nodes()} nodes needs as many scratch cache "
                             f"slots, the model has scratch_slots={scratch}")
        return {"drafter": drafter_for_decoder(model, self.drafter_kind, self.drafter)}

    def max_nodes(self) -> int:
        return {"chain": self.depth, "static": len(EAGLE_TREE), "dynamic": self.total_token}[self.tree]

    # -- the drafter session -----------------------------------------------------------------------------
    def begin(self, model: ModelLike, ctx: Any, sampling: SamplingSettings) -> EagleSession:
        drafter = ctx["drafter"]
        drafter.setup_cache(2 if sampling.cfg_scale > 1.0 else 1, DRAFTER_SCRATCH)
        return EagleSession(drafter, sampling.cfg_scale, ranking_settings(sampling), sampling.greedy,
                            model.info.num_tokens)

    def observe(self, session: EagleSession, hidden: torch.Tensor, committed: torch.Tensor, start: int) -> int:
        """The committed tokens at start+1.. with the target's states before them (h_start, ...) extend the
        drafter's own cache on canonical rows; its last predicted state drafts the next pass."""
        positions = torch.arange(start + 1, start + 1 + len(committed))
        rows = torch.arange(session.n + DRAFTER_SCRATCH)
        sees = (rows[None, :] >= 1) & (rows[None, :] <= positions[:, None])  # [K, R] the prefix and itself
        states = session.drafter.forward_nodes(hidden.to(session.drafter.fc.weight.dtype), committed, positions,
                                               positions, sees)
        session.state = states[:, -1]
        return 1

    def q_of(self, session: EagleSession, states: torch.Tensor) -> torch.Tensor:
        """Predicted states [B, L, dim] -> draft distributions [L, V]."""
        logits = guide(session.drafter.head(states), session.cfg_scale).cpu()  # [L, V]
        return logits_to_probs(logits, session.ranking)

    def _forward(self, session: EagleSession, states: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor,
                 rows: torch.Tensor, ancestors: list[list[int]], start: int) -> torch.Tensor:
        """Drafter forward over draft nodes: states [B, L, dim] of their parents, tokens/positions/rows [L]
        (cache rows written), ancestors[i]: the cache rows of node i's draft ancestors. -> states [B, L, dim]."""
        sees = torch.zeros(len(tokens), session.n + DRAFTER_SCRATCH, dtype=torch.bool)
        sees[:, 1:start + 1] = True  # the committed prefix up to the root
        for i, anc in enumerate(ancestors):
            sees[i, anc + [int(rows[i])]] = True
        return session.drafter.forward_nodes(states, tokens, positions, rows, sees)

    # -- drafts ------------------------------------------------------------------------------------------------
    def draft(self, session: EagleSession, root: torch.Tensor, start: int, n: int, sampling: SamplingSettings,
              gen: torch.Generator) -> Draft:
        depth = min(self.depth, n - 1 - start)
        if self.tree == "chain":
            return self._chain(session, root, start, depth, gen)
        if self.tree == "static":
            return self._static(session, root, start, depth, gen)
        return self._dynamic(session, root, start, depth)

    def _chain(self, session: EagleSession, root: torch.Tensor, start: int, depth: int,
               gen: torch.Generator) -> Draft:
        vocab = session.drafter.config.vocab_size
        tokens, qs, forwards = [root.view(1)], [torch.zeros(1, vocab)], 0
        state = session.state[:, None]  # [B, 1, dim]
        q = self.q_of(session, state)  # [1, V]
        for j in range(1, depth + 1):
            x = q.argmax(1) if session.greedy else sample(q, gen)  # [1]
            tokens.append(x)
            qs.append(one_hot(x, vocab) if session.greedy else q)
            if j < depth:  # canonical rows past the root: the next observe overwrites them
                pos = torch.tensor([start + j])
                state = self._forward(session, state, x, pos, pos, [list(range(start + 1, start + j))], start)
                q = self.q_of(session, state)
                forwards += 1
        return Draft(list(range(-1, depth)), torch.cat(tokens), torch.cat(qs), forwards)

    def _children(self, q: torch.Tensor, count: int, greedy: bool, gen: torch.Generator):
        """[V] -> candidates [c] and the q each was drawn from [c, V] (without replacement; greedy: top c)."""
        if greedy:
            cands = q.topk(count).indices
            return cands, one_hot(cands, q.shape[0])
        cands = draw_siblings(q[None], sample(q[None], gen), count, gen)  # [1, c], -1: support ran out
        q_cands = without_replacement_q(q[None], cands)[0]
        kept = cands[0] >= 0
        return cands[0][kept], q_cands[kept]

    def _static(self, session: EagleSession, root: torch.Tensor, start: int, depth: int,
                gen: torch.Generator) -> Draft:
        vocab, n = session.drafter.config.vocab_size, session.n
        counts = children_by_path(EAGLE_TREE, depth)
        parents, tokens, qs, paths = [-1], [root.view(1)], [torch.zeros(1, vocab)], [()]
        rows: dict[int, list[int]] = {0: []}  # drafter cache rows of a node's draft ancestors and itself
        level, states = [0], session.state[:, None]  # nodes to expand and their states [B, L, dim]
        next_row, forwards = n, 0
        for d in range(1, depth + 1):
            new = []
            for node, q in zip(level, self.q_of(session, states)):
                cands, q_cands = self._children(q, counts.get(paths[node], 0), session.greedy, gen)
                for b in range(len(cands)):
                    new.append(len(parents))
                    parents.append(node)
                    tokens.append(cands[b:b + 1])
                    qs.append(q_cands[b:b + 1])
                    paths.append(paths[node] + (b,))
            expand = [i for i in new if counts.get(paths[i], 0) > 0]
            if not expand or d == depth:
                break
            for i in expand:
                rows[i] = rows[parents[i]] + [next_row]
                next_row += 1
            parent_states = states[:, [level.index(parents[i]) for i in expand]]
            states = self._forward(session, parent_states, torch.cat([tokens[i] for i in expand]),
                                   torch.full((len(expand),), start + d), torch.tensor([rows[i][-1] for i in expand]),
                                   [rows[i][:-1] for i in expand], start)
            level = expand
            forwards += 1
        return Draft(parents, torch.cat(tokens), torch.cat(qs), forwards)

    def _dynamic(self, session: EagleSession, root: torch.Tensor, start: int, depth: int) -> Draft:
        vocab, n = session.drafter.config.vocab_size, session.n
        k = min(self.top_k, vocab)
        log_q = self.q_of(session, session.state[:, None]).clamp_min(1e-30).log()  # [1, V]
        top = log_q[0].topk(k)
        # candidates: parent (index into cands, -1 the root), token, score, depth
        parents, toks, scores, depths = [-1] * k, top.indices.tolist(), top.values.tolist(), [1] * k
        frontier = list(range(k))
        rows: dict[int, list[int]] = {}
        states, prev_frontier = None, []
        forwards, next_row = 0, n
        for d in range(2, depth + 1):
            # the frontier's drafter states (their parents' states, their own tokens)
            for c in frontier:
                rows[c] = (rows[parents[c]] if parents[c] >= 0 else []) + [next_row]
                next_row += 1
            parent_states = (session.state[:, None].expand(-1, len(frontier), -1) if d == 2
                             else states[:, [prev_frontier.index(parents[c]) for c in frontier]])
            states = self._forward(session, parent_states, torch.tensor([toks[c] for c in frontier]),
                                   torch.full((len(frontier),), start + d - 1), torch.tensor([rows[c][-1]
                                                                                             for c in frontier]),
                                   [rows[c][:-1] for c in frontier], start)
            forwards += 1
            log_q = self.q_of(session, states).clamp_min(1e-30).log()  # [F, V]
            cum = torch.tensor([scores[c] for c in frontier])[:, None] + log_q  # [F, V]
            best = cum.topk(k, dim=1)  # [F, k] each node's k best children
            first = len(toks)
            for f, c in enumerate(frontier):
                for j in range(k):
                    parents.append(c)
                    toks.append(int(best.indices[f, j]))
                    scores.append(float(best.values[f, j]))
                    depths.append(d)
            prev_frontier = frontier
            flat = best.values.reshape(-1).topk(min(k, best.values.numel())).indices.tolist()
            frontier = [first + i for i in flat]
        return self._select(root, parents, toks, scores, depths, vocab, forwards)

    def _select(self, root, parents, toks, scores, depths, vocab, forwards) -> Draft:
        """The total_token - 1 best candidates (score, then shallower first), in breadth-first order."""
        order = sorted(range(len(toks)), key=lambda c: (-scores[c], depths[c], c))[: self.total_token - 1]
        chosen = sorted(order, key=lambda c: (depths[c], c))
        index = {c: i + 1 for i, c in enumerate(chosen)}
        node_parents = [-1] + [index[parents[c]] if parents[c] >= 0 else 0 for c in chosen]
        tokens = torch.tensor([int(root)] + [toks[c] for c in chosen])
        q = one_hot(tokens, vocab)
        q[0] = 0.0
        return Draft(node_parents, tokens, q, forwards)
