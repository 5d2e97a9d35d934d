"""SpecLens (ours): SJD-PAC's tree and continuation, vertical initial drafts, an optional hardware chain; lossless.

Notation: p = target distribution (this pass), q = draft distribution (the one a draft was drawn from).

What it combines, and why (each piece is someone else's rule, called, not copied):
- SJD-PAC (Kang et al., CVPR 2026, `sjd_pac.py`, `rules/tree.py`): a K-ary draft tree at the next
  `tree_depth - 1` positions, siblings verified by recursive rejection sampling, and Adaptive
  Continuation: the drafts after the committed ones kept or redrawn by the maximal coupling (SCD,
  arXiv 2510.24211, `rules/coupling.py`), so they stop flickering between passes.
- uniform q for fresh random drafts (SJD-PAC's `get_multi_token_for_preparation`): accepted with
  probability min(1, V p(x)) instead of p(x).
- The hardware-aware window (`window_policy.py`, SpecLens's own), as an option (`window_policy="hardware"`,
  off by default, see below): before each pass the length of the main chain after the tree is the one,
  up to `window` fed nodes, with the most expected committed tokens per second of this machine's measured
  forward cost, from the running per-level acceptance. On a GPU (flat cost) that is the whole window.

The measurement that chose the defaults (fashion-mnist, classes 0, 3, 7, seed 0, one thread, a loaded
shared 2-core machine; step compression = tokens / NFE): sjd-coupled 2.75, sjd-coupled + uniform q 3.03,
the same at window 32: 3.65; sjd-pac (K 3, D 3) at window 16: 1.87, 32: 3.38, 64: 4.20; sjd-pac K 2, D 2 at
window 24: 3.11, 32: 3.52. A K = 3 tree eats 13 of a short window's nodes, and a chain node after it is
worth more than a sibling, so the default tree is small (K = 2, D = 2: 3 nodes) and the rest of the window
is chain. New slots copy their upper neighbour (SJD's Fig. 9 prior): over classes 0-9, seed 0, step
compression 3.84 against 3.69 with uniform random ids (sjd-coupled: 3.30 against 3.03 on classes 0, 3, 7).
The hardware chain measured worst: 1.34 (window 64) and 1.09 (window 32), slower than `ar` on the
CPU. Its one-pass geometric model counts only what a pass commits now; in a Jacobi loop with continuation,
feeding a far position also improves its draft for the later passes, which that model leaves out, so it
keeps choosing short chains whose far drafts stay fresh random ids. Hence `window_policy="fixed"` by default;
on a CPU, where a 64-node pass costs ~4x a 1-token one, a shorter fixed `window` is faster in wall clock.

Lossless: given the passes before it, every pass is SJD-PAC's lossless pass with a fixed tree and chain;
the chain length is a function of those earlier passes (their accepted levels) and of the cost curve,
never of this pass's drafts, samples or uniforms (the argument of `window_policy.py`).
tests/test_decoding_lossless.py checks it with the chi-square test.

Known differences and simplifications:
- With `init="random"` and `window_policy="fixed"` it is `sjd-pac` with other defaults, pass for pass (a test
  holds them equal); `sjd-pac` has no copied initial drafts.
- The loop is SJD-PAC's (`SJDPACDecoder._decode`) with the chain length chosen per pass; sjd_pac.py has
  no hook for a per-pass length, so the loop is restated here around its helpers (`_extend`,
  `_candidates`, `_continue`, `_node_drafts`, `_pass_log`).
- The cost curve is measured with chain forwards (`forward_window`) of 1..min(window, tokens) tokens and
  read at the fed node count (a tree forward of T nodes is taken to cost a chain of T); a tree wider
  than the grid (tiny test models only) is read at the curve's last entry.
- Acceptance is pooled over tree levels (a geometric model): accepted levels / verified levels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from decoding.base import Clock, ModelLike, TraceRecorder, prefill_first_token
from decoding.drafts import DRAFT_INITS, initial_drafts, one_hot_q
from decoding.params import param, validate_for_model
from decoding.rules.tree import Tree, TreeVerdict, build_tree, full_tree_size
from decoding.sampling import SamplingSettings, logits_to_probs, sample
from decoding.sjd_pac import Pending, SJDPACDecoder, _node_drafts, _pass_log
from decoding.window_policy import WINDOW_POLICIES, AcceptanceEstimate, cost_curve, expected_tokens
from decoding.window_trace import PassLog, record_passes


def chain_length(cost: tuple[float, ...], acceptance: float, tree_nodes: int, tree_levels: int,
                 max_chain: int) -> int:
    """The chain length c in [c_min, max_chain] maximising expected committed tokens per second: a pass
    over `tree_levels + c` levels commits expected_tokens(acceptance, levels + 1) tokens and feeds
    `tree_nodes + c` nodes (root included), costing cost[nodes - 1] (the last entry past the curve's end).
    c_min = 1 without a tree (a pass needs a draft). The shortest on ties."""
    low = 0 if tree_levels > 0 else 1
    if max_chain <= low:
        return max_chain
    rates = [expected_tokens(acceptance, tree_levels + c + 1) / cost[min(tree_nodes + c, len(cost)) - 1]
             for c in range(low, max_chain + 1)]
    return low + rates.index(max(rates))


@dataclass
class SpecLensDecoder(SJDPACDecoder):
    """SJD-PAC's `window`, `tree_width`, `tree_depth`, `uniform_q`, plus `window_policy`."""

    name = "speclens"
    lossless = True
    family = "tree"
    summary = ("SpecLens's own: SJD-PAC's coupled continuation with a small draft tree and a long chain, new slots "
               "copying their upper neighbour, optionally the chain cut per pass to this machine's forward cost")
    paper = ("SpecLens (ours): combines SJD-PAC (arXiv 2603.18599), SCD's maximal coupling (arXiv 2510.24211), "
             "SJD (arXiv 2410.01699) and SpecLens's hardware-aware window")
    paper_url = ""

    window: int = param(64, "most nodes fed per forward pass: the last committed token, the tree and the main "
                        "chain (the hardware policy may feed fewer)", low=2, high=512, integer=True)
    tree_width: int = param(2, "candidates K per tree level (SJD-PAC's official 3)", low=1, high=8, integer=True)
    tree_depth: int = param(2, "tree depth D, the root level included: D - 1 levels of K candidates "
                            "(SJD-PAC's official 3)", low=1, high=5, integer=True)
    init: str = param("vertical", "initial drafts of new slots: uniform ids, the left or the upper neighbour "
                      "(SJD Fig. 9); copies are scored with a one-hot q", choices=DRAFT_INITS)
    uniform_q: bool = param(True, "score fresh random drafts (and the tree's siblings of new slots) with the "
                            "uniform q they were drawn from (1/V) instead of a one-hot q", advanced=True)
    window_policy: str = param("fixed", "main-chain length per pass: the whole `window`, or the length that "
                               "maximises expected committed tokens per second from this machine's measured "
                               "forward cost and the running acceptance (lossless; decoding/window_policy.py)",
                               choices=WINDOW_POLICIES, advanced=True)

    def generate(self, model: ModelLike, label: int, sampling: SamplingSettings | None = None, seed: int = 0,
                 decode_image: bool = True):
        if self.window_policy == "hardware":  # the cost curve is measured (once) before the decode clock starts
            validate_for_model(self, model.info)
            self._cost(model, sampling or SamplingSettings())
        return super().generate(model, label, sampling, seed, decode_image)

    def _cost(self, model: ModelLike, sampling: SamplingSettings) -> tuple[float, ...]:
        return cost_curve(model, min(self.window, model.info.num_tokens), sampling.cfg_scale)

    def new_drafts(self, pending: Pending, committed: torch.Tensor, count: int, grid_width: int, vocab: int,
                   gen: torch.Generator) -> Pending:
        """At least `count` drafts from the first open position on: the pending ones, then new slots, as
        SJD-PAC (`_extend`: random ids) or copied neighbours (`drafts.initial_drafts`, one-hot q; the
        tree's siblings of a new slot are still drawn from the uniform without the earlier candidates)."""
        extra = count - len(pending.tokens)
        if self.init == "random" or extra <= 0:
            return self._extend(pending, len(committed), count, vocab, gen)
        new = initial_drafts(self.init, torch.cat([committed, pending.tokens]), extra, grid_width, vocab, gen)
        return Pending(torch.cat([pending.tokens, new]), torch.cat([pending.q, one_hot_q(new, vocab)]),
                       torch.cat([pending.fresh, torch.ones(extra, dtype=torch.bool)]))

    def verify_pass(self, tree: Tree, p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, u: torch.Tensor,
                    ctx: Any) -> TreeVerdict:
        """The tree's verification with the decoder's ctx (SJD-PAC's exact one here; the relaxed variant
        relaxes its targets)."""
        return self.verify(tree, p, q, tokens, u)

    def pass_log(self, step, start: int, tree: Tree, p: torch.Tensor, node_q: torch.Tensor, node_tokens: torch.Tensor,
                 u: torch.Tensor, verdict: TreeVerdict, committed: torch.Tensor) -> PassLog:
        """What the trace keeps of a pass (SJD-PAC's record; the relaxed variant adds its flags and groups)."""
        return _pass_log(step, start, tree, p, node_q, node_tokens, u, verdict, committed)

    def _decode(self, model: ModelLike, label: int, sampling: SamplingSettings, gen: torch.Generator,
                recorder: TraceRecorder, clock: Clock, ctx: Any) -> torch.Tensor:
        info = model.info
        n, vocab = info.num_tokens, info.vocab_size
        # prefill: the target of position 0 and one token from it
        tokens = prefill_first_token(model, label, sampling, gen, recorder, clock)  # [N]

        done = 1
        pending = Pending(torch.empty(0, dtype=torch.long), torch.empty(0, vocab), torch.empty(0, dtype=torch.bool))
        passes: list[PassLog] = []
        curve = self._cost(model, sampling) if self.window_policy == "hardware" else None
        acceptance = AcceptanceEstimate()
        while done < n:
            # 1. levels: the tree's, then the main chain's, cut at the grid's end and, with the hardware
            # policy, to the length this machine's cost curve and the earlier passes' acceptance favour
            start = done - 1
            tree_levels = min(self.tree_depth - 1, n - 1 - start)
            tree_nodes = full_tree_size(self.tree_width, tree_levels)
            chain = min(n - 1 - start - tree_levels, self.window - tree_nodes)
            if curve is not None:
                chain = chain_length(curve, acceptance.rate, tree_nodes, tree_levels, chain)
            levels = tree_levels + chain
            pending = self.new_drafts(pending, tokens[:done], levels, info.grid_shape[1], vocab, gen)

            # 2. candidates, the tree, its nodes' tokens and q (SJD-PAC's proactive drafting)
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
            accepted = len(verdict.path)
            acceptance.update(accepted, min(accepted + 1, levels))
            final = sample(verdict.final[None], gen) if start + accepted + 1 < n else None  # [1]
            committed = node_tokens[verdict.path] if final is None else torch.cat([node_tokens[verdict.path], final])
            tokens[done:done + len(committed)] = committed
            off_main = [i for i in verdict.path if not tree.main[i]]
            if off_main:  # the accepted siblings' K/V to their canonical slots
                model.copy_slots(slots[off_main], positions[off_main])
            passes.append(self.pass_log(step, start, tree, p, node_q, node_tokens, u, verdict, committed))
            recorder.close_step(step, clock)
            done += len(committed)

            # 5. adaptive continuation: the stale drafts after the committed ones, coupled to this pass's p
            pending = self._continue(tree, verdict, p, node_q, node_tokens, u, pending, levels, gen)
        record_passes(recorder.trace, passes)
        return tokens
