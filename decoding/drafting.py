"""What the drafter decoders share (`eagle`, `lantern-eagle`, `medusa`): draft trees, the target pass, the loop.

Notation: p = target distribution (rows of a pass, one per tree node: the target of the position after the
node), q = draft distribution (the one a node's token was drawn from, given its earlier siblings).

One pass (EAGLE, Li et al. 2024; Medusa, Cai et al. 2024):
1. The root is the last committed token (at position `start`; its K/V is not in the cache yet). The drafter
   proposes a tree below it (`Draft`: node 0 the root, parents before children).
2. One `forward_nodes` call over root + tree with tree attention, returning the target's last hidden states
   too; the first-child path writes its K/V to canonical slots, the other nodes to scratch slots.
3. Verification from the root (`rules.tree.verify_tree`, SpecInfer-style: siblings in order, the residual
   chained across them; or a decoder's own rule); the first accepted child is followed, so one path is
   accepted; then one token from the last residual ('resampled') or the target ('bonus'). An accepted
   off-main path's K/V is copied to its canonical slots (`copy_slots`).
4. The drafter observes the target's hidden states of the root and the accepted nodes (EAGLE extends its
   own cache with them; Medusa keeps the last one) and is ready for the next pass.
The first pass after the prefill has no drafts (no hidden state is known before it): it is one AR step.
Drafted tokens with a one-hot q (deterministic top-k candidates: EAGLE-2's dynamic tree, Medusa, every
greedy draft) are verified exactly too: accepting candidate c with probability t(c) and going on with
t with c removed is sampling without replacement from t.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from decoding.base import Clock, Decoder, ModelLike, TraceRecorder, prefill_first_token
from decoding.rules.tree import Tree, TreeVerdict, verify_tree
from decoding.sampling import SamplingSettings, logits_to_probs, sample
from decoding.speculative_jacobi import Verdict
from decoding.window_trace import NodeLog, PassLog, record_passes

# EAGLE-1's default static tree (`SafeAILab/EAGLE` model/choices.py `mc_sim_7b_63`, 25 nodes, depth 5; the
# default of LANTERN's Lumina-mGPT `generate`): node (i0, i1, ...) is candidate i_d at depth d + 1.
EAGLE_TREE = ((0,), (1,), (2,), (3,), (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (0, 0, 0),
              (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 2, 0), (0, 2, 1), (1, 0, 0), (0, 0, 0, 0),
              (0, 0, 0, 1), (0, 0, 0, 2), (0, 0, 0, 0, 0), (0, 0, 0, 0, 1))


def tree_from_parents(parents: list[int]) -> Tree:
    """A `rules.tree.Tree` from its parent list (node 0 the root, -1; every parent before its children);
    `main` is the first-child path from the root."""
    if not parents or parents[0] != -1 or any(not 0 <= par < i for i, par in enumerate(parents[1:], start=1)):
        raise ValueError(f"parents must start with -1 (the root) and name earlier nodes, got {parents[:20]}")
    depths, branch, main = [0], [0], [True]
    children: list[list[int]] = [[] for _ in parents]
    for i, par in enumerate(parents[1:], start=1):
        branch.append(len(children[par]))
        children[par].append(i)
        depths.append(depths[par] + 1)
        main.append(main[par] and branch[i] == 0)
    visible = torch.eye(len(parents), dtype=torch.bool)
    for i, par in enumerate(parents[1:], start=1):
        visible[i] |= visible[par]
    return Tree(tuple(parents), tuple(depths), tuple(branch), tuple(main), tuple(map(tuple, children)), visible)


def children_by_path(choices: tuple[tuple[int, ...], ...], max_depth: int) -> dict[tuple[int, ...], int]:
    """Static tree choices -> number of children of each path (the root is ()), cut at `max_depth`."""
    counts: dict[tuple[int, ...], int] = {}
    for path in choices:
        if len(path) <= max_depth:
            counts[path[:-1]] = max(counts.get(path[:-1], 0), path[-1] + 1)
    return counts


@dataclass
class Draft:
    """A draft tree below the root: node 0 is the root (the last committed token)."""

    parents: list[int]
    tokens: torch.Tensor  # [T]
    q: torch.Tensor  # [T, V]; the root's row is unused (zeros)
    forwards: int = 0  # drafter forward passes it took


def root_only(root: torch.Tensor, vocab: int) -> Draft:
    return Draft([-1], root.view(1), torch.zeros(1, vocab))


def guide(logits: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """[B, ..., V] drafter logits of both CFG halves -> guided [..., V]: u + s (c - u) (B = 1: as is)."""
    if logits.shape[0] == 1:
        return logits[0]
    return logits[1] + (logits[0] - logits[1]) * cfg_scale


def ranking_settings(sampling: SamplingSettings) -> SamplingSettings:
    """The settings a drafter's distribution is made with: the target's, at temperature 1 when greedy
    (greedy drafts are the top-ranked tokens of that distribution, as EAGLE's without a logits processor)."""
    return replace(sampling, temperature=1.0) if sampling.greedy else sampling


def one_hot(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.zeros(len(tokens), vocab).scatter_(1, tokens.view(-1, 1), 1.0)


class DrafterDecoder(Decoder):
    """The loop of module `decoding.drafting`. Subclasses: `begin` (a per-call drafter session),
    `draft(session, root, start, n, sampling, gen) -> Draft`, `observe(session, hidden, committed, start)
    -> drafter forwards`, and optionally `verify`."""

    family = "drafter"

    def begin(self, model: ModelLike, ctx: Any, sampling: SamplingSettings) -> Any:
        raise NotImplementedError

    def draft(self, session: Any, root: torch.Tensor, start: int, n: int, sampling: SamplingSettings,
              gen: torch.Generator) -> Draft:
        raise NotImplementedError

    def observe(self, session: Any, hidden: torch.Tensor, committed: torch.Tensor, start: int) -> int:
        raise NotImplementedError

    def verify(self, tree: Tree, p: torch.Tensor, draft: Draft, u: torch.Tensor, ctx: Any,
               sampling: SamplingSettings,
               logits: torch.Tensor | None = None) -> tuple[TreeVerdict, torch.Tensor | None]:
        """(verdict, relaxed flags aligned with verdict.tested or None): the exact rule. p [T, V] the target,
        logits [T, V] the guided logits it was made from (a relaxed rule may want them)."""
        return verify_tree(tree, p, draft.q, draft.tokens, u), None

    def _decode(self, model: ModelLike, label: int, sampling: SamplingSettings, gen: torch.Generator,
                recorder: TraceRecorder, clock: Clock, ctx: Any) -> torch.Tensor:
        n, vocab = model.info.num_tokens, model.info.vocab_size
        # prefill: the target of position 0 and one token from it
        tokens = prefill_first_token(model, label, sampling, gen, recorder, clock)  # [N]
        with torch.inference_mode():
            session = self.begin(model, ctx, sampling)
        done, first, passes = 1, True, []
        while done < n:
            start = done - 1
            # 1. the drafter's tree below the root (none in the first pass: no hidden state yet)
            t0 = time.perf_counter()
            with torch.inference_mode():
                draft = root_only(tokens[start], vocab) if first else self.draft(session, tokens[start], start, n,
                                                                                  sampling, gen)
            draft_s = time.perf_counter() - t0
            tree = tree_from_parents(draft.parents)
            positions = start + torch.tensor(tree.depths)  # [T]
            main = torch.tensor(tree.main)
            slots = torch.where(main, positions, n + (~main).long().cumsum(0) - 1)  # off-main: scratch slots

            # 2. one target forward over the tree, hidden states too
            step = recorder.new_step(start, len(tree))
            logits, hidden = clock.forward(lambda: model.forward_nodes(draft.tokens, positions, tree.visible, start,
                                                                       slots=slots, return_hidden=True))
            logits = logits.cpu()
            p = logits_to_probs(logits, sampling)  # [T, V]
            u = torch.rand(len(tree), generator=gen)  # [T]

            # 3. verify, the token after the path, the path's K/V to its canonical slots
            verdict, relaxed = (self.verify(tree, p, draft, u, ctx, sampling, logits) if len(tree) > 1
                                else (TreeVerdict([], [], [], [], p[0], "bonus"), None))
            path = verdict.path
            final = sample(verdict.final[None], gen) if start + len(path) + 1 < n else None  # [1]
            committed = draft.tokens[path] if final is None else torch.cat([draft.tokens[path], final])
            tokens[done:done + len(committed)] = committed
            off_main = [i for i in path if not tree.main[i]]
            if off_main:
                model.copy_slots(slots[off_main], positions[off_main])
            passes.append(pass_log(step, start, tree, p, draft, u, verdict, committed, relaxed))
            done += len(committed)

            # 4. the drafter sees the target's states of the root and the accepted path
            forwards = draft.forwards
            if done < n:
                t0 = time.perf_counter()
                with torch.inference_mode():
                    forwards += self.observe(session, hidden[:, [0] + path], committed, start)
                draft_s += time.perf_counter() - t0
            step.draft_forwards, step.draft_s = forwards, draft_s
            recorder.close_step(step, clock)
            first = False
        record_passes(recorder.trace, passes)
        return tokens


def pass_log(step, start: int, tree: Tree, p: torch.Tensor, draft: Draft, u: torch.Tensor, verdict: TreeVerdict,
             committed: torch.Tensor, relaxed: torch.Tensor | None) -> PassLog:
    """What the trace needs from one pass: the tested nodes (`window_trace.record_passes` writes the record)."""
    tested = verdict.tested
    order = {node: i for i, node in enumerate(tested)}
    parents = [tree.parents[i] for i in tested]
    index = torch.tensor(tested, dtype=torch.long)
    drafts = draft.tokens[index]
    k = len(tested)
    q_draft = draft.q[index, drafts] if k else torch.zeros(0)  # [k] q(draft), no [k, V] row copy
    result = Verdict(torch.tensor(verdict.accept_prob, dtype=torch.float32), torch.tensor(verdict.accepted,
                                                                                        dtype=torch.bool),
                     relaxed if relaxed is not None else torch.zeros(k, dtype=torch.bool),
                     torch.zeros(k, dtype=torch.long), q_draft, u[index])
    last = verdict.path[-1] if verdict.path else 0
    nodes = NodeLog(positions=[start + tree.depths[i] for i in tested], parents=[order.get(j, -1) for j in parents],
                    depths=[tree.depths[i] for i in tested], on_path=[i in verdict.path for i in tested],
                    draft_rows=parents, commit_rows=([tree.parents[i] for i in verdict.path] + [last])[:len(committed)])
    return PassLog(step, start, drafts, p, result, len(verdict.path), committed, verdict.final_kind, nodes)
