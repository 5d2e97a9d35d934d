"""What every decoder shares: the result type, the trace recorder, timing.

A decoder is a small strategy object configured by its hyperparameters, stateless between
calls, with one public method `generate(model, label, sampling, seed) -> DecodeResult`.
It describes itself: its hyperparameters are `decoding.params.param` fields (range, help,
choices), checked when it is built; the bounds that depend on a model (`window <= tokens`) are
checked at the start of `generate`; class attributes name its paper and family.
It talks to the model only through `models.interface.ARImageModel`'s methods
(`prefill`, `forward_window`, `codebook_embeddings`, `token_embeddings`, `decode_tokens`,
`info`), which any object with those methods can provide.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch

from decoding.params import validate, validate_for_model
from decoding.sampling import SamplingSettings, logits_to_probs, sample, top1_and_entropy
from decoding.trace import StepRecord, Trace


class ModelLike(Protocol):
    info: Any

    def prefill(self, label: int, cfg_scale: float) -> torch.Tensor: ...
    def forward_window(self, tokens: torch.Tensor, start: int) -> torch.Tensor: ...
    def forward_nodes(self, tokens: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor,
                      context: int | torch.Tensor, *, slots: torch.Tensor | None = None,
                      return_hidden: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...
    def copy_slots(self, src: torch.Tensor, dst: torch.Tensor) -> None: ...
    def codebook_embeddings(self) -> torch.Tensor: ...
    def token_embeddings(self) -> torch.Tensor: ...
    def decode_tokens(self, tokens: torch.Tensor) -> np.ndarray: ...


@dataclass
class DecodeResult:
    tokens: torch.Tensor  # [N]
    trace: Trace
    image: np.ndarray | None  # uint8 [H, W, 3]


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Accumulates model-forward time separately from the rest of the decoding loop."""

    def __init__(self, device: torch.device | None = None):
        self.device = device
        self.forward_s = 0.0
        self.step_forward_s = 0.0
        self._t0 = time.perf_counter()

    def forward(self, fn, *args):
        _sync(self.device)
        t = time.perf_counter()
        out = fn(*args)
        _sync(self.device)
        dt = time.perf_counter() - t
        self.forward_s += dt
        self.step_forward_s = dt
        return out

    def elapsed(self) -> float:
        _sync(self.device)
        return time.perf_counter() - self._t0


class TraceRecorder:
    """Builds a Trace step by step. Per-position arrays are filled as positions are committed."""

    def __init__(self, model: ModelLike, decoder: str, settings: dict, seed: int, label: int):
        info = model.info
        n = info.num_tokens
        self.n = n
        self.trace = Trace(model=info.name, decoder=decoder, settings=settings, seed=seed, label=int(label),
                           class_name=info.class_names[int(label)], grid_shape=tuple(info.grid_shape),
                           vocab_size=info.vocab_size, tokens=[-1] * n, commit_step=[-1] * n,
                           commit_kind=[""] * n, commit_p=[0.0] * n, commit_top1=[0.0] * n,
                           commit_entropy=[0.0] * n)
        self._last_elapsed = 0.0

    def new_step(self, window_start: int, window_length: int) -> StepRecord:
        step = StepRecord(index=len(self.trace.steps), window_start=window_start, window_length=window_length)
        self.trace.steps.append(step)
        return step

    @staticmethod
    def record_drafts(step: StepRecord, positions: torch.Tensor, drafts: torch.Tensor, p: torch.Tensor,
                      q_of_draft: torch.Tensor, accept_prob: torch.Tensor, accepted: torch.Tensor,
                      relaxed: torch.Tensor | None = None, group_size: torch.Tensor | None = None,
                      stats: tuple[torch.Tensor, torch.Tensor] | None = None,
                      group_members: torch.Tensor | None = None) -> None:
        """All arguments aligned over the verified drafts; p: [K, V] target distributions there;
        stats: (top-1 probability, entropy) of p if already computed (at least K rows);
        group_members: [K, G] token ids of each draft's group, -1 padding (None or G = 0: no groups)."""
        k = len(positions)
        top1, ent = (stats[0][:k], stats[1][:k]) if stats is not None else top1_and_entropy(p)
        zeros = torch.zeros(k, dtype=torch.long)
        p_of_draft = p.gather(-1, drafts.view(-1, 1)).view(-1)
        # one .tolist() per dtype: each is a round trip through Python objects
        reals = torch.stack([p_of_draft, q_of_draft, top1, ent, accept_prob]).tolist()  # [5, K]
        ints = torch.stack([positions, drafts, accepted, zeros if relaxed is None else relaxed,
                            zeros if group_size is None else group_size]).tolist()  # [5, K]
        step.p_draft, step.q_draft, step.top1_prob, step.entropy, step.accept_prob = reals
        step.positions, step.draft_tokens = ints[0], ints[1]
        step.accepted, step.relaxed = [a != 0 for a in ints[2]], [r != 0 for r in ints[3]]
        step.group_size = ints[4]
        if group_members is not None and group_members.shape[1] > 0:
            step.group_members = [[m for m in row if m >= 0] for row in group_members.tolist()]  # one .tolist()

    def commit(self, step: StepRecord, positions: torch.Tensor, tokens: torch.Tensor, kinds: list[str],
               p: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Commit tokens at positions (aligned), p: [K, V] the target distributions there;
        stats: (top-1 probability, entropy) of p if already computed (at least K rows)."""
        k = len(positions)
        top1, ent = (stats[0][:k], stats[1][:k]) if stats is not None else top1_and_entropy(p)
        p_tok = p.gather(-1, tokens.view(-1, 1)).view(-1)
        ints = torch.stack([positions, tokens]).tolist()  # [2, K]
        reals = torch.stack([p_tok, top1, ent]).tolist()  # [3, K]
        t = self.trace
        for pos, tok, kind, pt, t1, e in zip(*ints, kinds, *reals):
            t.tokens[pos], t.commit_step[pos], t.commit_kind[pos] = tok, step.index, kind
            t.commit_p[pos], t.commit_top1[pos], t.commit_entropy[pos] = pt, t1, e
            step.committed_positions.append(pos)
            step.committed_tokens.append(tok)
            step.committed_kinds.append(kind)

    def close_step(self, step: StepRecord, clock: Clock) -> None:
        elapsed = clock.elapsed()
        step.forward_s = clock.step_forward_s
        step.overhead_s = max(0.0, elapsed - self._last_elapsed - clock.step_forward_s)
        self._last_elapsed = elapsed

    def finish(self, clock: Clock) -> Trace:
        total = clock.elapsed()
        self.trace.forward_s = clock.forward_s
        self.trace.overhead_s = max(0.0, total - clock.forward_s)
        return self.trace


FAMILIES = ("ar", "jacobi", "tree", "rows", "drafter")


def prefill_first_token(model: ModelLike, label: int, sampling: SamplingSettings, gen: torch.Generator,
                        recorder: TraceRecorder, clock: Clock) -> torch.Tensor:
    """Step 0 of every speculative loop: the condition prefill, the target of position 0 and one token
    drawn from it (a 'bonus' commit). Returns the token buffer [N] with position 0 filled."""
    tokens = torch.zeros(model.info.num_tokens, dtype=torch.long)
    logits = clock.forward(model.prefill, label, sampling.cfg_scale).cpu()  # [V]
    step = recorder.new_step(-1, 0)
    p0 = logits_to_probs(logits[None], sampling)  # [1, V]
    tokens[:1] = sample(p0, gen)
    recorder.commit(step, torch.tensor([0]), tokens[:1], ["bonus"], p0)
    recorder.close_step(step, clock)
    return tokens


class Decoder:
    """Base class: subclasses are dataclasses of hyperparameters (`param(...)` fields) and implement
    `_decode`; `prepare` builds what a decoder needs from a model (neighbour tables, thresholds)."""

    name: ClassVar[str] = ""
    lossless: ClassVar[bool] = False
    summary: ClassVar[str] = ""  # one line: what it does
    paper: ClassVar[str] = ""  # citation, e.g. "Teng et al., ICLR 2025 (arXiv 2410.01699)"
    paper_url: ClassVar[str] = ""
    group_noun: ClassVar[str] = ""  # what a draft's group is called ("neighbourhood", "group"); "" if none
    family: ClassVar[Literal["ar", "jacobi", "tree", "rows", "drafter"]] = "ar"  # one of FAMILIES
    greedy_equals_ar: ClassVar[bool] = True  # at temperature 0 its tokens must equal greedy `ar`'s

    def __post_init__(self) -> None:
        validate(self)  # every declared range; cross-field checks go in the subclass's __post_init__

    def settings(self) -> dict:
        return asdict(self) if hasattr(self, "__dataclass_fields__") else {}

    @classmethod
    def parameter_names(cls) -> list[str]:
        return [f.name for f in fields(cls)] if hasattr(cls, "__dataclass_fields__") else []

    def generate(self, model: ModelLike, label: int, sampling: SamplingSettings | None = None, seed: int = 0,
                 decode_image: bool = True) -> DecodeResult:
        validate_for_model(self, model.info)  # before anything else: bounds taken from the model
        sampling = sampling or SamplingSettings()
        sampling.validate_for_model(model.info)  # top_k <= vocabulary
        if not 0 <= int(label) < model.info.num_classes:
            raise ValueError(f"label must be a class id in [0, {model.info.num_classes - 1}], got {label}")
        ctx = self.prepare(model)  # per-model tables, built (or read from their cache) before the clock starts
        gen = torch.Generator().manual_seed(int(seed))
        device = getattr(model, "device", None)
        recorder = TraceRecorder(model, self.name, {**self.settings(), **sampling.to_dict()}, int(seed), label)
        clock = Clock(device)
        tokens = self._decode(model, int(label), sampling, gen, recorder, clock, ctx)
        trace = recorder.finish(clock)
        image = None
        if decode_image:
            _sync(device)
            t = time.perf_counter()
            image = model.decode_tokens(tokens)
            trace.vq_decode_s = time.perf_counter() - t
        return DecodeResult(tokens=tokens, trace=trace, image=image)

    def prepare(self, model: ModelLike) -> Any:
        """Per-model data the decoder needs (neighbour lists, thresholds), from a cache; once per call,
        outside the timed decoding. Passed to `_decode` as `ctx`."""
        return None

    def _decode(self, model: ModelLike, label: int, sampling: SamplingSettings, gen: torch.Generator,
                recorder: TraceRecorder, clock: Clock, ctx: Any) -> torch.Tensor:
        raise NotImplementedError
