"""The Jacobi verification loop shared by SJD, LANTERN, GSD, SJD-coupled and deterministic Jacobi.

Notation: p = target distribution (this forward pass), q = draft distribution (the one each draft
was drawn from).

One forward pass (SJD, Teng et al., ICLR 2025, Alg. 1; `SpeculativeSampler` and `_sample` in
tyshiwo1/Accelerating-T2I-AR-with-SJD):
1. The window: the last committed token, the pending drafts, then new drafts (`drafts.py`) up to
   `window` tokens in all (the window counts the fed tokens, the last committed one included, as
   the official `max_num_new_tokens`). Near the end of the grid it shrinks.
2. One call `forward_window(window, start)`: row i of p is the target at position start + i + 1.
3. One sampling call draws a fresh sample y at every row (the Jacobi update).
4. The rule (`verify`, the varying part) decides each draft; drafts are committed up to the first
   rejection. There, one token is drawn from the residual ('resampled'); if every draft was
   accepted and a position remains, y at the last row is committed ('bonus').
5. The samples y after the first rejection become the next pass's drafts, with q = this pass's p
   (as in the official code). New initial drafts have a one-hot q (as in the official code), or with
   `uniform_q` (random drafts only) the uniform q = 1/V they were drawn from, so a fresh slot is
   accepted with probability min(1, V p(x)), on average 1 - TV(p, uniform) instead of 1/V; lossless
   all the same (SJD-PAC, KangJialiang/SJD-PAC `get_multi_token_for_preparation`: uniform over the
   image vocabulary).
The KV cache needs no rollback: the model interface is position-addressed. The logits come back
to the CPU after each forward ([L, V], as `ar` does), and all the decoder's logic runs there, with
the CPU generator of `Decoder.generate`, so the random stream does not depend on the device.

Random stream, in order per pass: new initial drafts, y (one sampling call), the rule's uniforms,
the residual draw. Rules that reduce to the exact one (LANTERN delta = 0, GSD group of 1) make the
same decisions on the same numbers, so they reproduce `sjd` token for token for the same seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from decoding.base import Clock, Decoder, ModelLike, TraceRecorder, prefill_first_token
from decoding.drafts import DRAFT_INITS, initial_drafts, one_hot_q
from decoding.params import param, validate_for_model
from decoding.rules.exact import acceptance_ratio, first_rejection, residual
from decoding.sampling import SamplingSettings, logits_to_probs, sample
from decoding.window_policy import RECHOOSE_EVERY, WINDOW_POLICIES, AgeAcceptance, choose_window, cost_curve
from decoding.window_trace import PassLog, record_passes


@dataclass
class Verdict:
    """A rule's decisions over the D drafts of one window (each position on its own, before the cut)."""

    accept_prob: torch.Tensor  # [D] probability the rule accepts each draft with
    accepted: torch.Tensor  # [D] bool
    # [D] bool: accepted although the exact rule on the same draw would have rejected; None: worked out
    # from the uniforms when the trace is written (once for all passes, not per pass)
    relaxed: torch.Tensor | None
    # [D] long: LANTERN neighbourhood / GSD group used, 0 if none; None: counted from group_members
    group_size: torch.Tensor | None
    q_draft: torch.Tensor  # [D] q(draft)
    uniform: torch.Tensor | None = None  # [D] the uniforms drawn, if any
    group_members: torch.Tensor | None = None  # [D, G] token ids of each draft's group, -1 padding; None: no groups


@dataclass
class Resolution:
    token: torch.Tensor | None  # [1] committed after the accepted drafts, or None at the grid's end
    kind: str  # "resampled" or "bonus"
    next_drafts: torch.Tensor  # [M] drafts for the positions after the committed ones
    next_q: torch.Tensor  # [M, V] their draft distributions


@dataclass
class SpeculativeJacobi(Decoder):
    """Base of the Jacobi-window decoders; on its own it is SJD's exact rule (see `sjd.py`).

    `uniform_q` (every Jacobi decoder, off by default as in the official SJD code): a fresh random draft
    is scored with the uniform q = 1/V it was drawn from, as SJD-PAC does (KangJialiang/SJD-PAC,
    `scheduler/sjd_pac_iteration_lumina_mgpt.py`, `get_multi_token_for_preparation`), instead of a
    one-hot q: it is accepted with probability min(1, V p(x)), on average 1 - TV(p, uniform), rather
    than p(x); still lossless. Random drafts only: a copied neighbour ('horizontal', 'vertical') is a
    deterministic draft, so uniform_q with those inits is refused."""

    family = "jacobi"
    window: int = param(16, "tokens fed per forward pass, the last committed one included (official SJD: 16)",
                        low=2, integer=True, model_bound="num_tokens")
    init: str = param("random", "initial drafts of new window slots: uniform ids, the left or the upper "
                      "neighbour (SJD Fig. 9)", choices=DRAFT_INITS)
    uniform_q: bool = param(False, "score fresh random drafts with the uniform q they were drawn from (1/V, so "
                            "acceptance min(1, V p(x))) instead of a one-hot q; lossless; init='random' only "
                            "(SJD-PAC's get_multi_token_for_preparation)", advanced=True)
    window_policy: str = param("fixed", "window length per pass: always `window`, or the length up to `window` "
                               "that maximises expected committed tokens per second from this machine's measured "
                               "forward cost and this image's acceptance by depth and draft age (lossless; "
                               "decoding/window_policy.py)",
                               choices=WINDOW_POLICIES, advanced=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.uniform_q and self.init != "random":
            raise ValueError(f"uniform_q=True needs init='random' (a copied neighbour is a deterministic draft, its "
                             f"q is one-hot), got init={self.init!r}")

    # -- the varying parts (`prepare(model)`, inherited, builds the `ctx` they receive) -------------
    def acceptance(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor,
                   ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(acceptance probability [D], group members [D, G]); the exact rule min(1, p(x) / q(x)).

        Group members: per draft, the token ids whose target mass counted for it (LANTERN's {x} + A,
        GSD's G), the draft included, -1 padding; G = 0 for a rule without groups (group size 0)."""
        return exact_acceptance(p, q, drafts), torch.empty(len(drafts), 0, dtype=torch.long)

    def residual_target(self, p: torch.Tensor, drafts: torch.Tensor, ctx: Any) -> torch.Tensor:
        """The target [1, V] whose residual against q a rejected draft is replaced from."""
        return p

    def propose(self, pending: torch.Tensor, q_pending: torch.Tensor, committed: torch.Tensor, count: int,
                grid_width: int, vocab_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The window's `count` drafts and their q: the pending ones, then new initial drafts."""
        n_pending = len(pending)
        # random ids need no known tokens: skip copying the committed ones
        known = committed if self.init == "random" else torch.cat([committed, pending])
        new = initial_drafts(self.init, known, count - n_pending, grid_width, vocab_size, gen)  # [count - P]
        # uniform_q: the q random ids were drawn from (1/V each); otherwise one-hot, as the official SJD
        q_new = torch.full((len(new), vocab_size), 1.0 / vocab_size) if self.uniform_q else one_hot_q(new, vocab_size)
        return torch.cat([pending, new]), torch.cat([q_pending, q_new])  # [count], [count, V]

    def verify(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, y: torch.Tensor,
               gen: torch.Generator, ctx: Any) -> Verdict:
        """p, q: [D, V]; drafts, y: [D]. Accept each draft iff u < acceptance probability."""
        prob, members = self.acceptance(p, q, drafts, ctx)  # [D], [D, G]
        if members.dim() != 2 or len(members) != len(drafts):
            raise ValueError(f"acceptance() must return (probability [D], group members [D, G] with -1 padding) "
                             f"for D={len(drafts)} drafts; got members of shape {tuple(members.shape)}")
        u = torch.rand(len(drafts), generator=gen)  # [D]
        # relaxed flags and group sizes are left to the trace (None), which works them out for all passes at once
        return Verdict(prob, u < prob, None, None, q.gather(1, drafts[:, None])[:, 0], u, members)

    def replacement(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, y: torch.Tensor, r: int,
                    gen: torch.Generator, ctx: Any) -> torch.Tensor:
        """The token [1] that replaces the rejected draft at row r: a residual draw."""
        target = self.residual_target(p[r:r + 1], drafts[r:r + 1], ctx)  # [1, V]
        return sample(residual(target, q[r:r + 1]), gen)

    def resolve(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, y: torch.Tensor, verdict: Verdict,
                r: int, gen: torch.Generator, ctx: Any) -> Resolution:
        """The committed token after the r accepted drafts, and the next pass's drafts (Jacobi update)."""
        n_drafts = len(drafts)
        if r < n_drafts:
            token, kind = self.replacement(p, q, drafts, y, r, gen, ctx), "resampled"
        elif len(p) > n_drafts:
            token, kind = y[n_drafts:n_drafts + 1], "bonus"
        else:
            token, kind = None, ""
        return Resolution(token, kind, y[r + 1:], p[r + 1:])

    # -- the loop ---------------------------------------------------------------------------
    def generate(self, model: ModelLike, label: int, sampling: SamplingSettings | None = None, seed: int = 0,
                 decode_image: bool = True):
        if self.window_policy == "hardware":  # the cost curve is measured (once) before the decode clock starts
            validate_for_model(self, model.info)
            cost_curve(model, self.window, (sampling or SamplingSettings()).cfg_scale)
        return super().generate(model, label, sampling, seed, decode_image)

    def _decode(self, model: ModelLike, label: int, sampling: SamplingSettings, gen: torch.Generator,
                recorder: TraceRecorder, clock: Clock, ctx: Any) -> torch.Tensor:
        info = model.info
        n, vocab, width = info.num_tokens, info.vocab_size, info.grid_shape[1]
        # prefill: the target of position 0 and one token from it
        tokens = prefill_first_token(model, label, sampling, gen, recorder, clock)  # [N]

        done = 1
        drafts, q = torch.empty(0, dtype=torch.long), torch.empty(0, vocab)
        ages = torch.empty(0, dtype=torch.long)  # [M] per pending draft: the passes that redrew it (hardware policy)
        passes: list[PassLog] = []
        curve = cost_curve(model, self.window, sampling.cfg_scale) if self.window_policy == "hardware" else None
        acceptance, chosen = AgeAcceptance(), self.window
        while done < n:
            # 2. the window: last committed token + drafts; it shrinks at the end of the grid; the hardware
            # policy picks its length from the passes before (never from this pass's draws: lossless)
            start = done - 1
            length = min(self.window, n - start)
            if curve is not None:
                if len(passes) % RECHOOSE_EVERY == 0:  # the model's arithmetic is not free: every few passes
                    chosen = choose_window(curve, acceptance.hazards, length)
                length = min(chosen, length)
            n_drafts, n_rows = length - 1, min(length, n - 1 - start)
            drafts, q = self.propose(drafts[:n_drafts], q[:n_drafts], tokens[:done], n_drafts, width, vocab, gen)
            ages = _pad(ages[:n_drafts], n_drafts)  # new initial drafts: age 0
            step = recorder.new_step(start, length)
            logits = clock.forward(model.forward_window, torch.cat([tokens[start:done], drafts]), start).cpu()  # [L, V]

            # 3. targets at every position with a successor in the grid, and the Jacobi samples
            p = logits_to_probs(logits[:n_rows], sampling)  # [R, V]; row i = position start + i + 1
            y = sample(p, gen)  # [R]

            # 4. verify, cut at the first rejection, replace or add a bonus token
            verdict = self.verify(p[:n_drafts], q, drafts, y[:n_drafts], gen, ctx)
            r = first_rejection(verdict.accepted)
            acceptance.update(ages[:r + 1].tolist(), r)
            res = self.resolve(p, q, drafts, y, verdict, r, gen, ctx)

            # 5. commit; the trace is filled after the last pass
            committed = drafts[:r] if res.token is None else torch.cat([drafts[:r], res.token])
            tokens[done:done + len(committed)] = committed
            passes.append(PassLog(step, start, drafts, p, verdict, r, committed, res.kind))
            recorder.close_step(step, clock)
            done += len(committed)
            drafts, q = res.next_drafts, res.next_q
            ages = _pad(ages[r + 1:], len(drafts)) + 1  # each redrawn from this pass's target
        record_passes(recorder.trace, passes)
        return tokens


def exact_acceptance(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
    """min(1, p(x) / q(x)) [D] for p, q: [D, V] and drafts x: [D]."""
    index = drafts[:, None]
    return acceptance_ratio(p.gather(1, index)[:, 0], q.gather(1, index)[:, 0])


def _pad(ages: torch.Tensor, count: int) -> torch.Tensor:
    """`ages` [<= count] cut or padded with zeros (drafts that met no target yet) to `count`."""
    return torch.cat([ages[:count], torch.zeros(max(0, count - len(ages)), dtype=torch.long)])
