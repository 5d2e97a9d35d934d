"""The shape of what one forward pass verified: a chain (SJD), a tree (SJD-PAC) or several rows (ZipAR, PJD).

Reads the per-node fields of `decoding.trace.StepRecord` (aligned with `positions`): `parents` (index into
the step's verified nodes, -1 = child of the committed prefix), `depths` (1 = first position after the
committed prefix), `rows` (grid row) and `on_path` (on the accepted path). A trace written before those
fields existed reads as a chain, the trace's own defaults: parent i-1, depth i+1, row = position // width,
on the path = accepted up to the first rejection.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from decoding.trace import StepRecord, Trace


@dataclass
class PassNodes:
    """The verified nodes of one pass, arrays [n] aligned with `StepRecord.positions`."""

    positions: np.ndarray
    parents: np.ndarray  # -1 = child of the committed prefix
    depths: np.ndarray  # 1 = first position after the committed prefix
    rows: np.ndarray  # grid row of each node
    on_path: np.ndarray  # bool: on the accepted path
    accepted: np.ndarray  # bool

    @property
    def reached(self) -> np.ndarray:
        """[n] bool: every ancestor of the node was accepted (the node's verification counted)."""
        ok = np.ones(len(self.parents), dtype=bool)
        for i, parent in enumerate(self.parents.tolist()):  # parents come before their children
            ok[i] = parent < 0 or (ok[parent] and self.accepted[parent])
        return ok

    @property
    def is_chain(self) -> bool:
        return bool(np.array_equal(self.parents, np.arange(len(self.parents)) - 1))

    @property
    def branches(self) -> bool:
        """Two nodes share a parent and a position: alternative drafts for one position (a tree)."""
        pairs = list(zip(self.parents.tolist(), self.positions.tolist()))
        return len(set(pairs)) < len(pairs)

    @property
    def root_rows(self) -> set[int]:
        """Rows of the nodes that hang from the committed prefix: one per row decoded in parallel."""
        return set(self.rows[self.parents < 0].tolist())


def _field(step: StepRecord, name: str) -> list | None:
    values = getattr(step, name, None)
    return values if values and len(values) == len(step.positions) else None


def pass_nodes(step: StepRecord, grid_w: int) -> PassNodes:
    """The nodes `step` verified, with chain defaults for fields the trace does not carry."""
    n = len(step.positions)
    positions = np.asarray(step.positions, dtype=np.int64)
    accepted = np.asarray(step.accepted, dtype=bool)
    parents, depths, rows, on_path = (_field(step, f) for f in ("parents", "depths", "rows", "on_path"))
    if on_path is None:
        on_path = np.cumprod(accepted).astype(bool) if n else np.zeros(0, dtype=bool)
    return PassNodes(positions=positions,
                     parents=np.asarray(parents if parents is not None else np.arange(n) - 1, dtype=np.int64),
                     depths=np.asarray(depths if depths is not None else np.arange(1, n + 1), dtype=np.int64),
                     rows=np.asarray(rows if rows is not None else positions // grid_w, dtype=np.int64),
                     on_path=np.asarray(on_path, dtype=bool), accepted=accepted)


def all_pass_nodes(trace: Trace) -> list[PassNodes]:
    return [pass_nodes(s, trace.grid_shape[1]) for s in trace.steps]


def is_tree(trace: Trace) -> bool:
    """Some pass verified alternative drafts for one position (SJD-PAC's siblings, a draft tree)."""
    return any(nodes.branches for nodes in all_pass_nodes(trace))


def active_rows(trace: Trace) -> list[list[int]]:
    """Per pass, the grid rows of its verified nodes and committed positions (ascending): the rows
    decoded in that pass (one for a raster chain, several for ZipAR/PJD)."""
    w = trace.grid_shape[1]
    out = []
    for s, nodes in zip(trace.steps, all_pass_nodes(trace)):
        committed = np.asarray(s.committed_positions, dtype=np.int64) // w
        out.append(sorted(set(nodes.rows.tolist()) | set(committed.tolist())))
    return out


def is_multi_row(trace: Trace) -> bool:
    """Some pass decoded several rows at once (ZipAR, PJD): its nodes hang from the committed prefix on two
    or more rows, or it committed tokens on several rows that are not one run of consecutive positions (a
    raster window that wraps onto the next row is one run with one root)."""
    w = trace.grid_shape[1]
    for s, nodes in zip(trace.steps, all_pass_nodes(trace)):
        committed = np.sort(np.asarray(s.committed_positions, dtype=np.int64))
        several = len(set((committed // w).tolist())) > 1 and bool(np.any(np.diff(committed) != 1))
        if len(nodes.root_rows) > 1 or several:
            return True
    return False


def tree_layout(nodes: PassNodes) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of each node for a small tree drawing: x = depth, y = order among the nodes of its depth,
    children ordered under their parents (a plain layered layout, no crossings for a tree)."""
    n = len(nodes.parents)
    y = np.zeros(n)
    children: dict[int, list[int]] = {}
    for i, p in enumerate(nodes.parents.tolist()):
        children.setdefault(p, []).append(i)
    next_slot: dict[int, int] = {}
    stack = list(reversed(children.get(-1, [])))  # depth first, iterative: a chain may be thousands long
    while stack:
        i = stack.pop()
        d = int(nodes.depths[i])
        y[i] = next_slot.get(d, 0)
        next_slot[d] = int(y[i]) + 1
        stack.extend(reversed(children.get(i, [])))
    return nodes.depths.astype(float), y
