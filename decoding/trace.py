"""The one trace record every decoder emits; plots, tables, the app and the benchmark read it.

Definitions (used everywhere, stated once):
- Positions are image-token positions 0..N-1, raster order on the token grid.
- A *forward pass* (step) is one call of the target model. Step 0 is the condition prefill,
  which yields the distribution of position 0. NFE = number of forward passes, prefill included
  (so plain AR has NFE = N).
- Each step verifies zero or more drafts (positions in `positions`) and *commits* tokens:
  accepted drafts, then at most one token drawn from the target (resampled after a rejection,
  or a bonus token when there was no draft left to verify).
- Commit kinds: "draft" (draft accepted by the exact rule), "relaxed" (accepted only thanks to a
  relaxation: LANTERN, GSD), "resampled" (drawn from the residual after a rejection),
  "bonus" (drawn from the target with no draft; every token of plain AR is a bonus token).
- Verified nodes of a step form a tree below the last committed token: `parents[i]` indexes the step's
  own verified nodes (-1: a child of the committed prefix), `depths[i]` = 1 for the first position after
  the committed prefix, `rows[i]` = grid row of `positions[i]`, `on_path[i]` = on the accepted path.
  A chain (every Jacobi decoder) has parents i - 1, depths i + 1 and on_path = accepted; a tree
  (`sjd-pac`) may verify several siblings at one position.
- step compression = N / NFE.
- mean accepted length = tokens committed per forward pass, the bonus/resampled token included
  (= N / NFE); `mean_accepted_drafts` counts accepted drafts only (bonus excluded), per pass.
- Wall time is split into model forward (target calls), decoder overhead (everything else in
  the decoding loop: drafting, verification, sampling, bookkeeping) and VQ decode (tokens ->
  pixels). A decoder with a separate drafter model records its forwards and time per step
  (`draft_forwards`, `draft_s`, part of the overhead); the summary then splits the time into
  draft / verify (target forwards) / decoder logic (the rest of the overhead) / VQ decode.
  Warm-up runs are not traced; on GPU each span is synchronised.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

COMMIT_KINDS = ("draft", "relaxed", "resampled", "bonus")
TRACE_VERSION = 2  # 2: tree fields (parents, depths, rows, on_path) and drafter cost per step
READABLE_VERSIONS = (1, 2)  # version 1 traces load with chain defaults for the tree fields
TREE_FIELDS = ("parents", "depths", "rows", "on_path")


@dataclass
class StepRecord:
    """One forward pass. All per-draft lists are aligned with `positions` (drafts verified)."""

    index: int
    window_start: int  # first image position fed to the model (-1 for the prefill)
    window_length: int  # tokens fed (0 for the prefill)
    positions: list[int] = field(default_factory=list)
    draft_tokens: list[int] = field(default_factory=list)
    p_draft: list[float] = field(default_factory=list)  # target probability of the draft
    q_draft: list[float] = field(default_factory=list)  # draft probability of the draft
    top1_prob: list[float] = field(default_factory=list)  # target's top-1 probability there
    entropy: list[float] = field(default_factory=list)  # target entropy there (nats)
    accept_prob: list[float] = field(default_factory=list)  # probability the rule accepted with
    accepted: list[bool] = field(default_factory=list)
    relaxed: list[bool] = field(default_factory=list)  # accepted, but the exact rule alone might not have
    group_size: list[int] = field(default_factory=list)  # LANTERN neighbourhood / GSD group size; 0 if none
    # token ids whose target mass counted for the draft, the draft included: GSD's group after both
    # filters, LANTERN's moved neighbours. Empty (not one list per draft) for rules without groups
    # and in traces written before the field existed.
    group_members: list[list[int]] = field(default_factory=list)
    # the tree of the verified nodes (module docstring); all empty: a chain (see `fill_chain_defaults`)
    parents: list[int] = field(default_factory=list)  # index into this step's verified nodes, -1: prefix
    depths: list[int] = field(default_factory=list)  # 1 = first position after the committed prefix
    rows: list[int] = field(default_factory=list)  # grid row of the position
    on_path: list[bool] = field(default_factory=list)  # on the accepted path
    committed_positions: list[int] = field(default_factory=list)
    committed_tokens: list[int] = field(default_factory=list)
    committed_kinds: list[str] = field(default_factory=list)
    forward_s: float = 0.0
    overhead_s: float = 0.0
    draft_forwards: int = 0  # forward passes of a separate drafter model in this step (0: none)
    draft_s: float = 0.0  # their wall time, part of overhead_s

    @property
    def n_accepted(self) -> int:
        return sum(self.accepted)

    def fill_chain_defaults(self, grid_width: int) -> None:
        """Tree fields of a chain (parent i - 1, depth i + 1, on_path = accepted), where none are set."""
        k = len(self.positions)
        if k and not any(getattr(self, f) for f in TREE_FIELDS):
            self.parents, self.depths = list(range(-1, k - 1)), list(range(1, k + 1))
            self.rows = [pos // grid_width for pos in self.positions]
            self.on_path = list(self.accepted)


@dataclass
class Trace:
    model: str
    decoder: str
    settings: dict
    seed: int
    label: int
    class_name: str
    grid_shape: tuple[int, int]
    vocab_size: int
    tokens: list[int] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    commit_step: list[int] = field(default_factory=list)  # per position: step index that committed it
    commit_kind: list[str] = field(default_factory=list)  # per position: one of COMMIT_KINDS
    commit_p: list[float] = field(default_factory=list)  # per position: target prob of the committed token
    commit_top1: list[float] = field(default_factory=list)  # per position: target top-1 prob
    commit_entropy: list[float] = field(default_factory=list)  # per position: target entropy (nats)
    forward_s: float = 0.0
    overhead_s: float = 0.0
    vq_decode_s: float = 0.0
    version: int = TRACE_VERSION

    # -- totals -------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    @property
    def nfe(self) -> int:
        return len(self.steps)

    @property
    def step_compression(self) -> float:
        return self.num_tokens / max(1, self.nfe)

    @property
    def mean_accepted_length(self) -> float:
        """Tokens committed per forward pass, bonus/resampled token included."""
        return sum(len(s.committed_positions) for s in self.steps) / max(1, self.nfe)

    @property
    def mean_accepted_drafts(self) -> float:
        """Accepted drafts per forward pass, bonus/resampled token excluded."""
        return sum(s.n_accepted for s in self.steps) / max(1, self.nfe)

    @property
    def decode_s(self) -> float:
        """Decoding loop wall time (model forward + decoder overhead), VQ decode excluded."""
        return self.forward_s + self.overhead_s

    @property
    def total_s(self) -> float:
        return self.forward_s + self.overhead_s + self.vq_decode_s

    @property
    def draft_s(self) -> float:
        """Wall time of a separate drafter model (EAGLE, Medusa), part of overhead_s."""
        return sum(s.draft_s for s in self.steps)

    @property
    def draft_forwards(self) -> int:
        return sum(s.draft_forwards for s in self.steps)

    def kind_counts(self) -> dict[str, int]:
        return {k: self.commit_kind.count(k) for k in COMMIT_KINDS}

    def summary(self) -> dict:
        return {
            "model": self.model, "decoder": self.decoder, "seed": self.seed, "label": self.label,
            "tokens": self.num_tokens, "nfe": self.nfe, "step_compression": round(self.step_compression, 4),
            "mean_accepted_length": round(self.mean_accepted_length, 4),
            "mean_accepted_drafts": round(self.mean_accepted_drafts, 4),
            "forward_s": round(self.forward_s, 5), "overhead_s": round(self.overhead_s, 5),
            "vq_decode_s": round(self.vq_decode_s, 5), "total_s": round(self.total_s, 5),
            # the wall-time split draft / verify (target forwards) / decoder logic / VQ decode
            "draft_forwards": self.draft_forwards, "draft_s": round(self.draft_s, 5),
            "verify_s": round(self.forward_s, 5), "logic_s": round(max(0.0, self.overhead_s - self.draft_s), 5),
            **{f"n_{k}": v for k, v in self.kind_counts().items()},
        }

    # -- checks ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError if the trace is internally inconsistent."""
        n = self.num_tokens
        for name in ("tokens", "commit_step", "commit_kind", "commit_p", "commit_top1", "commit_entropy"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"trace.{name} has {len(getattr(self, name))} entries, expected {n}")
        seen = [0] * n
        for i, s in enumerate(self.steps):
            if s.index != i:
                raise ValueError(f"step {i} has index {s.index}")
            lengths = {len(getattr(s, f)) for f in ("positions", "draft_tokens", "p_draft", "q_draft", "top1_prob",
                                                     "entropy", "accept_prob", "accepted", "relaxed", "group_size")}
            if s.group_members:
                lengths.add(len(s.group_members))
            lengths |= {len(getattr(s, f)) for f in TREE_FIELDS if getattr(s, f)}  # none yet: a chain
            if len(lengths) > 1:
                raise ValueError(f"step {i}: per-draft lists have different lengths {sorted(lengths)}")
            self._validate_groups(s)
            self._validate_tree(s)
            if len({len(s.committed_positions), len(s.committed_tokens), len(s.committed_kinds)}) > 1:
                raise ValueError(f"step {i}: committed lists have different lengths")
            for pos, tok, kind in zip(s.committed_positions, s.committed_tokens, s.committed_kinds):
                if not 0 <= pos < n:
                    raise ValueError(f"step {i} commits position {pos} outside [0, {n})")
                seen[pos] += 1
                if self.tokens[pos] != tok or self.commit_step[pos] != i or self.commit_kind[pos] != kind:
                    raise ValueError(f"step {i}: commit of position {pos} disagrees with the per-position record")
                if kind not in COMMIT_KINDS:
                    raise ValueError(f"unknown commit kind {kind!r}")
        bad = [p for p, c in enumerate(seen) if c != 1]
        if bad:
            raise ValueError(f"positions committed other than exactly once: {bad[:10]} ({len(bad)} in all)")
        if any(not 0 <= t < self.vocab_size for t in self.tokens):
            raise ValueError("token ids outside the vocabulary")

    @staticmethod
    def _validate_groups(s: StepRecord) -> None:
        for j, (draft, size, members) in enumerate(zip(s.draft_tokens, s.group_size, s.group_members)):
            if len(members) != size or (members and draft not in members):
                raise ValueError(f"step {s.index}, draft {j}: group_members {members[:10]} should hold the draft "
                                 f"{draft} and group_size={size} codes")

    def _validate_tree(self, s: StepRecord) -> None:
        width = self.grid_shape[1]
        for j, (pos, parent, depth, row) in enumerate(zip(s.positions, s.parents, s.depths, s.rows)):
            if not -1 <= parent < j or row != pos // width or depth < 1:
                raise ValueError(f"step {s.index}, node {j}: parent {parent} must be a node before it (or -1), depth "
                                 f"{depth} >= 1, row {row} the grid row of position {pos}")
            if parent >= 0 and (depth != s.depths[parent] + 1 or pos != s.positions[parent] + 1):
                raise ValueError(f"step {s.index}, node {j}: a child sits one position and one level below its "
                                 f"parent {parent}")
        if any(on and not acc for on, acc in zip(s.on_path, s.accepted)):
            raise ValueError(f"step {s.index}: a node on the accepted path must be accepted")

    # -- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid_shape"] = list(self.grid_shape)
        d["summary"] = self.summary()
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_dict(cls, d: dict) -> Trace:
        if not isinstance(d, dict):
            raise ValueError(f"a trace is a JSON object, got {type(d).__name__}")
        if d.get("version") not in READABLE_VERSIONS:
            raise ValueError(f"unsupported trace version {d.get('version')!r} (this SpecLens reads "
                             f"{list(READABLE_VERSIONS)})")
        d = dict(d)
        d.pop("summary", None)
        try:
            steps = [StepRecord(**s) for s in d.pop("steps")]
            trace = cls(**{**d, "grid_shape": tuple(d["grid_shape"]), "steps": steps, "version": TRACE_VERSION})
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed trace: {e}") from e
        for step in trace.steps:  # written before the tree fields existed: a chain
            step.fill_chain_defaults(trace.grid_shape[1])
        trace.validate()
        return trace

    @classmethod
    def from_json(cls, text: str) -> Trace:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON: {e}") from e
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        return cls.from_json(Path(path).read_text())
