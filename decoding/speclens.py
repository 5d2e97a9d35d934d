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
  up to `window` fed nodes, with the most committed tokens per second of this machine's measured forward
  cost, from this image's acceptance by level and draft age (the steady-state model of `window_policy.py`;
  the age of each pending draft is tracked in SJD-PAC's `Pending`). On a GPU (flat cost) that is the
  whole window.

The measurement that chose the defaults (fashion-mnist, classes 0, 3, 7, seed 0, one thread, a loaded
shared 2-core machine; step compression = tokens / NFE): sjd-coupled 2.75, sjd-coupled + uniform q 3.03,
the same at window 32: 3.65; sjd-pac (K 3, D 3) at window 16: 1.87, 32: 3.38, 64: 4.20; sjd-pac K 2, D 2 at
window 24: 3.11, 32: 3.52. A K = 3 tree eats 13 of a short window's nodes, and a chain node after it is
worth more than a sibling, so the default tree is small (K = 2, D = 2: 3 nodes) and the rest of the window
is chain. New slots copy their upper neighbour (SJD's Fig. 9 prior): over classes 0-9, seed 0, step
compression 3.84 against 3.69 with uniform random ids (sjd-coupled: 3.30 against 3.03 on classes 0, 3, 7).
The hardware chain, measured with the earlier model (one pooled acceptance rate, geometric): 1.34 (window
64) and 1.09 (window 32), slower than `ar` on the CPU: it counted only what a pass commits now, so it kept
choosing short chains whose far drafts stayed fresh. With the depth-and-age model (fashion-mnist, 10
images, one thread, loaded machine): 3.50 step compression, 0.92x `ar`'s wall clock, against 3.77 and
0.78x at the fixed default (a 64-node pass costs ~2.9x a 1-token one on this CPU). Still
`window_policy="fixed"` by default: the default is chosen for step compression, and the hardware chain's
choices depend on a timed cost curve.

Lossless: given the passes before it, every pass is SJD-PAC's lossless pass with a fixed tree and chain;
the chain length is a function of those earlier passes (their accepted levels, their drafts' ages) and of
the cost curve, never of this pass's drafts, samples or uniforms (the argument of `window_policy.py`).
tests/test_decoding_lossless.py checks it with the chi-square test.

Known differences and simplifications:
- With `init="random"` and `window_policy="fixed"` it is `sjd-pac` with other defaults, pass for pass (a test
  holds them equal); `sjd-pac` has no copied initial drafts.
- The loop is SJD-PAC's (`SJDPACDecoder._decode`), not restated: speclens overrides its hooks
  (`new_drafts` for copied neighbours, `chain_policy` / `chain_for_pass` / `observe_pass` for the hardware
  chain); the relaxed variant overrides `verify_pass` and `pass_log`.
- The cost curve is measured with chain forwards (`forward_window`) of 1..min(window, tokens) tokens and
  read at the fed node count (a tree forward of T nodes is taken to cost a chain of T); a tree wider
  than the grid (tiny test models only) is read at the curve's last entry.
- Acceptance is counted per level (a level is accepted if any of its candidates is) at the age of its
  candidate 0; the tree's siblings are new draws every pass, their own age is not tracked.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from decoding.base import ModelLike
from decoding.drafts import DRAFT_INITS, initial_drafts, one_hot_q
from decoding.params import param, validate_for_model
from decoding.sampling import SamplingSettings
from decoding.sjd_pac import Pending, SJDPACDecoder
from decoding.window_policy import RECHOOSE_EVERY, WINDOW_POLICIES, AgeAcceptance, cached_steady_state, cost_curve


def chain_length(cost: Sequence[float], hazards: Sequence | float, tree_nodes: int, tree_levels: int,
                 max_chain: int) -> int:
    """The chain length c in [c_min, max_chain] maximising committed tokens per second: a pass over
    `tree_levels + c` levels (`tree_levels + c + 1` fed positions, the root included) commits
    cached_steady_state(hazards)[tree_levels + c] tokens (`window_policy.steady_state_tokens`: acceptance
    by level and draft age; a float: one rate for all) and feeds `tree_nodes + c` nodes, costing cost[nodes - 1]
    (the last entry past the curve's end). c_min = 1 without a tree (a pass needs a draft). The shortest
    on ties."""
    low = 0 if tree_levels > 0 else 1
    if max_chain <= low:
        return max_chain
    tokens = cached_steady_state(hazards, tree_levels + max_chain + 1)
    rates = [tokens[tree_levels + c] / cost[min(tree_nodes + c, len(cost)) - 1] for c in range(low, max_chain + 1)]
    return low + rates.index(max(rates))


@dataclass
class HardwareChain:
    """One decode's state of the hardware chain: the cost curve and the per-age acceptance so far."""

    cost: tuple[float, ...]
    acceptance: AgeAcceptance = field(default_factory=AgeAcceptance)
    passes: int = 0  # passes so far
    chain: int = 0  # the last choice (made every RECHOOSE_EVERY passes)


@dataclass
class SpecLensDecoder(SJDPACDecoder):
    """SJD-PAC's `window`, `tree_width`, `tree_depth`, `uniform_q`, plus `init` and `window_policy`."""

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
                               "forward cost and this image's acceptance per draft age (lossless; "
                               "decoding/window_policy.py)", choices=WINDOW_POLICIES, advanced=True)

    def generate(self, model: ModelLike, label: int, sampling: SamplingSettings | None = None, seed: int = 0,
                 decode_image: bool = True):
        if self.window_policy == "hardware":  # the cost curve is measured (once) before the decode clock starts
            validate_for_model(self, model.info)
            self._cost(model, sampling or SamplingSettings())
        return super().generate(model, label, sampling, seed, decode_image)

    def _cost(self, model: ModelLike, sampling: SamplingSettings) -> tuple[float, ...]:
        return cost_curve(model, min(self.window, model.info.num_tokens), sampling.cfg_scale)

    # -- SJD-PAC's hooks ---------------------------------------------------------------------------
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
                       torch.cat([pending.fresh, torch.ones(extra, dtype=torch.bool)]),
                       torch.cat([pending.age, torch.zeros(extra, dtype=torch.long)]))

    def chain_policy(self, model: ModelLike, sampling: SamplingSettings) -> HardwareChain | None:
        return HardwareChain(self._cost(model, sampling)) if self.window_policy == "hardware" else None

    def chain_for_pass(self, policy: HardwareChain | None, tree_nodes: int, tree_levels: int, max_chain: int) -> int:
        """The hardware policy: `chain_length` from the cost curve and the acceptance by level and age of the
        passes before (lossless: nothing of this pass), chosen every RECHOOSE_EVERY passes."""
        if policy is None:
            return max_chain
        if policy.passes % RECHOOSE_EVERY == 0:
            policy.chain = chain_length(policy.cost, policy.acceptance.hazards, tree_nodes, tree_levels, max_chain)
        policy.passes += 1
        return min(policy.chain, max_chain) if tree_levels > 0 else max(min(policy.chain, max_chain), min(1, max_chain))

    def observe_pass(self, policy: HardwareChain | None, pending: Pending, levels: int, accepted: int) -> None:
        """Counts the verified levels by the age of their pending draft (candidate 0; a level is accepted
        if any of its candidates is)."""
        if policy is not None:
            policy.acceptance.update(pending.age[:min(accepted + 1, levels)].tolist(), accepted)
