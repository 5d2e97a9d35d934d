"""SJD-PAC: Speculative Jacobi Decoding with Proactive Drafting and Adaptive Continuation, lossless.

Kang, Shu, Li, Zhai, Chen, CVPR 2026 (arXiv 2603.18599); official code KangJialiang/SJD-PAC
(`scheduler/sjd_pac_iteration_lumina_mgpt.py`, Lumina-mGPT only).

Notation: p = target distribution (this pass), q = draft distribution (the one a draft was drawn from).

One forward pass:
1. The tree (`rules/tree.py`): the root is the last committed token (the token SJD-PAC's sampler
   resampled at the last rejection). The next `tree_depth - 1` positions carry `tree_width` candidates
   each, every node of a level having all of them as children (SJD-PAC's layout); after the tree the
   main path (every level's candidate 0) continues as one chain. `window` counts every fed node, the
   root and the whole tree included (the official `max_num_new_tokens`), so the main path holds
   `window - (size of the tree) + tree_depth` nodes. The tree and chain shrink at the end of the grid.
2. Candidates: a level's candidate 0 is the pending draft of its position (below); its siblings are
   drawn without replacement from that draft's q (from the uniform distribution for a fresh random
   slot, whose q is uniform with `uniform_q`, as in `get_multi_token_for_preparation`).
3. One `forward_nodes` call with tree attention; main-path nodes write their K/V to their canonical
   cache slots, the others to scratch slots, and an accepted off-main path is copied back (`copy_slots`).
4. Verification from the root: siblings in order, SpecInfer-style (each one's q with the earlier
   siblings zeroed, the residual target chained across siblings); the first accepted child is
   followed, so one path is accepted; at its end one token is drawn from the last residual
   ('resampled') or, below a node without children, from its target ('bonus').
5. Adaptive Continuation: the positions after the committed ones keep their stale drafts, taken from
   the accepted node's candidate-0 descendants (then the main chain), each passed through the maximal
   coupling against this pass's (stale) p there with the node's own uniform (`rules/coupling.py`, as
   `sjd-coupled`: keep it with probability min(1, p / q), else draw from the residual); the next q is
   that p. New slots past the window get fresh random ids.
Hooks (defaults: SJD-PAC as above; `speclens` overrides them, so the loop exists once): `new_drafts`
(new slots), `chain_policy` / `chain_for_pass` (the main chain's length per pass, from earlier passes
only), `verify_pass` (the verification with the decoder's ctx), `observe_pass` (after each verification:
the verified levels and their drafts' ages, `Pending.age`), `pass_log` (the trace record).
Lossless: every committed token is exact speculative sampling of the target given the committed prefix;
the chi-square test in tests/test_decoding_lossless.py checks it, and rejects a variant without the
chained residual.

Known differences from the official code, on purpose:
- The best path: the official code accepts each node by its own test (`p > q * u` per node) and keeps
  the longest `cummin` path. A later sibling can then be taken although an earlier one was accepted,
  a case the proof of recursive rejection sampling does not cover. Here the first accepted sibling is
  followed, so one path is accepted (it is then also the longest). With tree depth 2 the two choices
  coincide. A re-implementation of the longest-path choice was not rejected by our chi-square test on
  the tiny model (1200 sequences: p = 0.86 for K = 2, D = 3; 0.09 for K = 3, D = 2), so any bias it
  has is small there.
- Siblings: the official code draws the siblings of a rejected position from the residual
  norm(max(0, p - q_old)) (and of a kept one from it too) but verifies them as draws from p with the
  earlier siblings zeroed; here they are drawn from exactly that distribution (q without the earlier
  candidates), which the verification needs to be lossless.
- Residual: not re-truncated with top-k (as `sjd`, `sjd-coupled`); exact w.r.t. guided AR.
- Model: class-conditional LlamaGen on a square grid with CFG inside the model (`u + s (c - u)`), not
  Lumina-mGPT with its text prompt, end-of-line tokens and image-vocabulary mask; "uniform" is over the
  model's whole vocabulary (all image codes here).
- Defaults: window 64, tree_width 3, tree_depth 3, uniform_q True, as the official sampler's
  `_init_new_params` (the README's "K = 4, D = 3" is the paper's sweet spot; `eval_model.py` defaults
  to a window of 16).
- At the end of the grid the tree and chain are cut; an off-main path whose stale continuation ends at
  the tree's last level continues on the main chain's stale drafts (as the official `target_rows`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from decoding.base import Clock, Decoder, ModelLike, TraceRecorder, prefill_first_token
from decoding.params import param
from decoding.rules.coupling import maximal_coupling
from decoding.rules.tree import (
    Tree,
    TreeVerdict,
    build_tree,
    continuation,
    draw_siblings,
    full_tree_size,
    verify_tree,
    without_replacement_q,
)
from decoding.sampling import SamplingSettings, logits_to_probs, sample
from decoding.speculative_jacobi import Verdict
from decoding.window_trace import NodeLog, PassLog, record_passes


@dataclass
class Pending:
    """Drafts of the positions after the committed ones: tokens [M], their q [M, V], fresh random [M], and
    age [M], the passes that coupled each draft to a target (0: a new slot; None: all 0)."""

    tokens: torch.Tensor
    q: torch.Tensor
    fresh: torch.Tensor
    age: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.age is None:
            self.age = torch.zeros(len(self.tokens), dtype=torch.long)


@dataclass
class SJDPACDecoder(Decoder):
    """window: nodes fed per pass (root and tree included); tree_width K, tree_depth D (root level
    included); uniform_q: fresh random drafts scored with the uniform q they were drawn from."""

    name = "sjd-pac"
    lossless = True
    family = "tree"
    summary = ("SJD that keeps verifying after a rejection (maximal coupling) and drafts a K-ary tree at the "
               "rejection point, verified in one forward with tree attention")
    paper = "Kang et al., SJD-PAC: Proactive Drafting and Adaptive Continuation, CVPR 2026 (arXiv 2603.18599)"
    paper_url = "https://arxiv.org/abs/2603.18599"

    window: int = param(64, "nodes fed per forward pass: the last committed token, the tree and the main chain "
                        "(official max_num_new_tokens: 64)", low=2, high=512, integer=True)
    tree_width: int = param(3, "candidates K per tree level (official code: 3; the paper's sweet spot: 4)",
                            low=1, high=8, integer=True)
    tree_depth: int = param(3, "tree depth D, the root level included: D - 1 levels of K candidates (official 3)",
                            low=1, high=5, integer=True)
    uniform_q: bool = param(True, "score fresh random drafts with the uniform q they were drawn from (1/V) "
                            "instead of a one-hot q (official: uniform)", advanced=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        size = full_tree_size(self.tree_width, self.tree_depth - 1)
        if self.window < size:
            raise ValueError(f"window must hold the whole tree: window >= {size} nodes for tree_width="
                             f"{self.tree_width}, tree_depth={self.tree_depth}, got window={self.window}")

    def prepare(self, model: ModelLike) -> Any:
        if not hasattr(model, "forward_nodes") or not hasattr(model, "copy_slots"):
            raise ValueError(f"{self.name} needs a model with forward_nodes and copy_slots (tree attention)")
        off_main = full_tree_size(self.tree_width, self.tree_depth - 1) - self.tree_depth
        scratch = int(getattr(model, "scratch_slots", 0))
        if off_main > scratch:
            raise ValueError(f"tree_width={self.tree_width}, tree_depth={self.tree_depth} need {off_main} scratch "
                             f"cache slots, the model has scratch_slots={scratch}")
        return None

    # -- the varying parts (defaults: SJD-PAC itself; `speclens` overrides them) ---------------------
    def verify(self, tree: Tree, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor,
               u: torch.Tensor) -> TreeVerdict:
        """The tree's verification (`rules.tree.verify_tree`); p, q: [T, V]; tokens, u: [T]."""
        return verify_tree(tree, p, q, tokens, u)

    def verify_pass(self, tree: Tree, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, u: torch.Tensor,
                    ctx: Any) -> TreeVerdict:
        """The pass's verification with the decoder's ctx (`verify`, exact, here)."""
        return self.verify(tree, p, q, tokens, u)

    def new_drafts(self, pending: Pending, committed: torch.Tensor, count: int, grid_width: int, vocab: int,
                   gen: torch.Generator) -> Pending:
        """At least `count` drafts from the first open position on: the pending ones, then random ids."""
        return self._extend(pending, len(committed), count, vocab, gen)

    def pass_log(self, step, start: int, tree: Tree, p: torch.Tensor, node_q: torch.Tensor, node_tokens: torch.Tensor,
                 u: torch.Tensor, verdict: TreeVerdict, committed: torch.Tensor) -> PassLog:
        """What the trace keeps of a pass."""
        return _pass_log(step, start, tree, p, node_q, node_tokens, u, verdict, committed)

    def chain_policy(self, model: ModelLike, sampling: SamplingSettings) -> Any:
        """Per-decode state of the chain-length choice (None: the longest chain every pass)."""
        return None

    def chain_for_pass(self, policy: Any, tree_nodes: int, tree_levels: int, max_chain: int) -> int:
        """The main chain's length this pass, from `policy` (what earlier passes left in it) only, never
        from this pass's drafts or draws (that keeps it lossless); here always `max_chain`."""
        return max_chain

    def observe_pass(self, policy: Any, pending: Pending, levels: int, accepted: int) -> None:
        """After each verification: `accepted` of the `levels` drafts in `pending` were accepted (nothing here)."""

    # -- drafting --------------------------------------------------------------------------------
    def _extend(self, pending: Pending, start: int, count: int, vocab: int, gen: torch.Generator) -> Pending:
        """At least `count` drafts for the positions from `start` on: the pending ones, then fresh random ids."""
        extra = count - len(pending.tokens)
        if extra <= 0:
            return pending
        new = torch.randint(vocab, (extra,), generator=gen)  # [E]
        q_new = (torch.full((extra, vocab), 1.0 / vocab) if self.uniform_q
                 else torch.zeros(extra, vocab).scatter_(1, new[:, None], 1.0))
        return Pending(torch.cat([pending.tokens, new]), torch.cat([pending.q, q_new]),
                       torch.cat([pending.fresh, torch.ones(extra, dtype=torch.bool)]),
                       torch.cat([pending.age, torch.zeros(extra, dtype=torch.long)]))

    def _candidates(self, drafts: Pending, levels: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidates [L, K] (-1: none) and their q [L, K, V] at the first L = levels positions."""
        x0, q0, fresh = drafts.tokens[:levels], drafts.q[:levels], drafts.fresh[:levels]
        if self.tree_width == 1 or levels == 0:
            return x0[:, None], q0[:, None]
        vocab = q0.shape[1]
        base = torch.where(fresh[:, None], torch.full_like(q0, 1.0 / vocab), q0)  # what siblings are drawn from
        cands = draw_siblings(base, x0, self.tree_width, gen)  # [L, K]
        q_cands = without_replacement_q(base, cands)  # [L, K, V]
        q_cands[:, 0] = q0
        if not self.uniform_q and bool(fresh.any()):  # deterministic random ids: one-hot q, as candidate 0's
            one_hot = torch.zeros_like(q_cands).scatter_(2, cands.clamp_min(0)[:, :, None], 1.0)
            q_cands = torch.where(fresh[:, None, None], one_hot, q_cands)
        return cands, q_cands

    # -- the loop --------------------------------------------------------------------------------
    def _decode(self, model: ModelLike, label: int, sampling: SamplingSettings, gen: torch.Generator,
                recorder: TraceRecorder, clock: Clock, ctx: Any) -> torch.Tensor:
        info = model.info
        n, vocab = info.num_tokens, info.vocab_size
        # prefill: the target of position 0 and one token from it
        tokens = prefill_first_token(model, label, sampling, gen, recorder, clock)  # [N]

        done = 1
        pending = Pending(torch.empty(0, dtype=torch.long), torch.empty(0, vocab), torch.empty(0, dtype=torch.bool))
        passes: list[PassLog] = []
        policy = self.chain_policy(model, sampling)
        while done < n:
            # 1. levels after the root: the tree's, then the main chain's, cut at the grid's end (and by the
            # chain policy, from the passes before this one)
            start = done - 1
            tree_levels = min(self.tree_depth - 1, n - 1 - start)
            tree_nodes = full_tree_size(self.tree_width, tree_levels)
            chain = self.chain_for_pass(policy, tree_nodes, tree_levels,
                                        min(n - 1 - start - tree_levels, self.window - tree_nodes))
            levels = tree_levels + chain
            pending = self.new_drafts(pending, tokens[:done], levels, info.grid_shape[1], vocab, gen)

            # 2. candidates, the tree, its nodes' tokens and q
            cands, q_cands = self._candidates(pending, tree_levels, gen)  # [Lt, K], [Lt, K, V]
            tree = build_tree(tuple((cands >= 0).sum(1).tolist()) + (1,) * chain, tree_levels)
            node_tokens, node_q = _node_drafts(tree, tokens[start], cands, q_cands, pending, tree_levels)
            positions = start + torch.tensor(tree.depths)  # [T]
            main = torch.tensor(tree.main)
            slots = torch.where(main, positions, n + (~main).long().cumsum(0) - 1)  # off-main: scratch slots

            # 3. one forward over the tree
            step = recorder.new_step(start, len(tree))
            logits = clock.forward(lambda: model.forward_nodes(node_tokens, positions, tree.visible, start,
                                                               slots=slots)).cpu()  # [T, V]
            p = logits_to_probs(logits, sampling)  # [T, V]; row i = target of position positions[i] + 1
            u = torch.rand(len(tree), generator=gen)  # [T] one uniform per node

            # 4. verify, then the token after the accepted path
            verdict = self.verify_pass(tree, p, node_q, node_tokens, u, ctx)
            path, accepted = verdict.path, len(verdict.path)
            self.observe_pass(policy, pending, levels, accepted)
            final = sample(verdict.final[None], gen) if start + accepted + 1 < n else None  # [1]
            committed = node_tokens[path] if final is None else torch.cat([node_tokens[path], final])
            tokens[done:done + len(committed)] = committed
            off_main = [i for i in path if not tree.main[i]]
            if off_main:  # the accepted siblings' K/V to their canonical slots
                model.copy_slots(slots[off_main], positions[off_main])
            passes.append(self.pass_log(step, start, tree, p, node_q, node_tokens, u, verdict, committed))
            recorder.close_step(step, clock)
            done += len(committed)

            # 5. adaptive continuation: the stale drafts after the committed ones, coupled to this pass's p
            pending = self._continue(tree, verdict, p, node_q, node_tokens, u, pending, levels, gen)
        record_passes(recorder.trace, passes)
        return tokens

    @staticmethod
    def _continue(tree: Tree, verdict: TreeVerdict, p: torch.Tensor, node_q: torch.Tensor, node_tokens: torch.Tensor,
                  u: torch.Tensor, pending: Pending, levels: int, gen: torch.Generator) -> Pending:
        """The next pass's drafts: maximal coupling at the fed positions after the committed token, then
        the pending drafts past the fed levels (they met no target yet)."""
        accepted = len(verdict.path)
        nodes_at = continuation(tree, verdict.path)
        nodes = torch.tensor([nodes_at[d] for d in range(accepted + 2, levels + 1)], dtype=torch.long)
        parents = torch.tensor(tree.parents, dtype=torch.long)[nodes]
        p_stale = p.index_select(0, parents)  # [M, V] (index_select: a few times faster than p[parents] here)
        coupled, _ = maximal_coupling(p_stale, node_q.index_select(0, nodes), node_tokens[nodes], u[nodes], gen)  # [M]
        rest = max(levels, accepted + 1)  # pending index of the first position past the fed ones still open
        age = pending.age[accepted + 1:accepted + 1 + len(nodes)] + 1  # node at depth d: pending index d - 1
        return Pending(torch.cat([coupled, pending.tokens[rest:]]), torch.cat([p_stale, pending.q[rest:]]),
                       torch.cat([torch.zeros(len(nodes), dtype=torch.bool), pending.fresh[rest:]]),
                       torch.cat([age, pending.age[rest:]]))


def _node_drafts(tree: Tree, root: torch.Tensor, cands: torch.Tensor, q_cands: torch.Tensor, pending: Pending,
                 tree_levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tree node its token [T] and q [T, V] (the root's q row is unused: zeros)."""
    width = cands.shape[1] if tree_levels else 1
    level_tokens = torch.cat([cands.reshape(-1), pending.tokens[tree_levels:]])  # [Lt * K + chain levels]
    level_q = torch.cat([q_cands.reshape(-1, q_cands.shape[-1]), pending.q[tree_levels:]])
    rows = [0] + [(d - 1) * width + b if d <= tree_levels else tree_levels * width + d - 1 - tree_levels
                  for d, b in zip(tree.depths[1:], tree.branch[1:])]
    index = torch.tensor(rows, dtype=torch.long)
    node_tokens = level_tokens[index]
    node_tokens[0] = root
    node_q = level_q.index_select(0, index)
    node_q[0] = 0.0
    return node_tokens, node_q


def _pass_log(step, start: int, tree: Tree, p: torch.Tensor, node_q: torch.Tensor, node_tokens: torch.Tensor,
              u: torch.Tensor, verdict: TreeVerdict, committed: torch.Tensor) -> PassLog:
    """What the trace needs from a tree pass: the tested nodes (`record_passes` writes the record)."""
    tested = verdict.tested
    order = {node: i for i, node in enumerate(tested)}
    parents = [tree.parents[i] for i in tested]
    index = torch.tensor(tested, dtype=torch.long)
    drafts = node_tokens[index]
    k = len(tested)
    accepted = torch.tensor(verdict.accepted, dtype=torch.bool)
    result = Verdict(torch.tensor(verdict.accept_prob), accepted, torch.zeros(k, dtype=torch.bool),
                     torch.zeros(k, dtype=torch.long), node_q[index, drafts], u[index])
    last = verdict.path[-1] if verdict.path else 0
    nodes = NodeLog(positions=[start + tree.depths[i] for i in tested], parents=[order.get(j, -1) for j in parents],
                    depths=[tree.depths[i] for i in tested], on_path=list(verdict.accepted), draft_rows=parents,
                    commit_rows=([tree.parents[i] for i in verdict.path] + [last])[:len(committed)])
    return PassLog(step, start, drafts, p, result, len(verdict.path), committed, verdict.final_kind, nodes)
