"""Row-parallel scheduling shared by the 2-D decoders (ZipAR, PJD): which rows decode in a pass,
what each row feeds, and the one node forward that verifies them all.

Grid H x W, raster positions p = row * W + col. Rows start in order: row r + 1 starts (joins the
next pass) once row r has `start_after[r]` tokens committed (ZipAR: the whole of row 0, then
`local_window`; PJD: `row_start`), and a row is decoding until it is complete. Every pass feeds,
for each decoding row, a *window*: its anchor (the row's last committed token, at its position)
then drafts (PJD; ZipAR has none). The anchor's output is the target of the row's next position.

A row with no token yet has no anchor of its own: its first position (r, 0) is targeted by the
output of (r - 1, W - 1), the last column of the row above, which is not decoded yet. The official
ZipAR LlamaGen code (`decode_n_tokens_zipar`, ThisisBillhe/ZipAR) feeds there a *stand-in*: the
latest committed token of row r - 2 (appended as an auxiliary token). Here the same, for both
decoders; row 1 (no row r - 2, a case only PJD reaches) takes row 0's latest token. Once the row
above is complete, its real last token is the anchor instead.

A completed row's last token came out of the pass that completed it and was never fed, so the next
pass feeds it once more with its output unused (the official `last_token_in_row_idx`), to write its
K/V for the rows below, unless the next row starts on it (then it is that row's anchor).

K/V bookkeeping (`cached`): a canonical slot holds a K/V that later positions see once its node was
fed (an anchor, a stand-in: as in the official ZipAR code, whose causal mask lets later positions
see it until the real token overwrites it), or once a draft fed there was accepted. Within a pass
node i sees: its own row's earlier nodes, the anchors of the rows above (committed tokens), and the
cached slots before its position (the model applies the raster-order cut). A row's drafts are never
seen by another row (PJD's row-causal mask).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Window:
    """What one decoding row feeds in a pass: the anchor, then `drafts` at the following positions."""

    row: int
    anchor: int  # position of the first node
    token: int  # the token fed there
    final: bool  # a complete row's last token: fed for its K/V, output unused
    stand_in: bool  # the anchor is a stand-in (the row has no token yet)
    drafts: torch.Tensor | None = None  # [D] long, positions anchor + 1 .. anchor + D

    @property
    def length(self) -> int:
        return 1 + (0 if self.drafts is None else len(self.drafts))


@dataclass
class NodeBatch:
    """The arguments of `forward_nodes` for a list of windows, and where each window's nodes are."""

    tokens: torch.Tensor  # [K]
    positions: torch.Tensor  # [K]
    visible: torch.Tensor  # bool [K, K]
    context: torch.Tensor  # bool [N]
    first: list[int]  # index of each window's anchor node
    rows: list[int]  # grid row of every node


class RowSchedule:
    """Row states of one decode: committed counts, which rows decode, the anchors, the cached slots."""

    def __init__(self, height: int, width: int, start_after: list[int], tokens: torch.Tensor):
        if len(start_after) != height or any(not 1 <= s <= width for s in start_after):
            raise ValueError(f"start_after needs one count in [1, {width}] per row ({height}), got {start_after}")
        self.height, self.width, self.start_after = height, width, list(start_after)
        self.tokens = tokens  # [N] the decoder's token buffer (committed entries valid)
        self.count = [0] * height  # tokens committed per row
        self.active: list[int] = []  # rows started and not retired, ascending
        self.cached = torch.zeros(height * width, dtype=torch.bool)  # canonical slots seen by later positions
        self._fed_final: set[int] = set()

    # -- state ------------------------------------------------------------------------------
    def begin(self, first_row_tokens: int) -> None:
        """Row 0 starts with the tokens committed by the prefill (1)."""
        self.count[0] = first_row_tokens
        self.active = [0]
        self._start_rows()

    @property
    def done(self) -> bool:
        return sum(self.count) == self.height * self.width

    def complete(self, row: int) -> bool:
        return self.count[row] == self.width

    def leading(self, row: int) -> bool:
        """Every row above is complete (a row below an incomplete one can never complete itself)."""
        return row == 0 or self.complete(row - 1)

    def room(self, row: int) -> int:
        """Columns the row may target: to the row end if it leads, else up to the row above's count."""
        limit = self.width if self.leading(row) else self.count[row - 1]
        return limit - self.count[row]

    def commit(self, row: int, n_new: int) -> None:
        if self.count[row] + n_new > self.width:
            raise RuntimeError(f"row {row} would hold {self.count[row] + n_new} > {self.width} tokens")
        self.count[row] += n_new

    # -- a pass ------------------------------------------------------------------------------
    def windows(self) -> list[Window]:
        """The anchors of this pass, one per decoding row (drafts are the decoder's business)."""
        out = []
        for row in self.active:
            if self.complete(row):
                if row + 1 < self.height and not (row + 1 in self.active and self.count[row + 1] == 0):
                    out.append(Window(row, (row + 1) * self.width - 1, self._token_at((row + 1) * self.width - 1),
                                      final=True, stand_in=False))
                continue
            if self.count[row] > 0:
                anchor = row * self.width + self.count[row] - 1
                out.append(Window(row, anchor, self._token_at(anchor), final=False, stand_in=False))
                continue
            anchor = row * self.width - 1  # the row above's last column
            if self.complete(row - 1):
                out.append(Window(row, anchor, self._token_at(anchor), final=False, stand_in=False))
            else:
                out.append(Window(row, anchor, self._stand_in(row), final=False, stand_in=True))
        return out

    def after_pass(self, windows: list[Window], accepted: list[range]) -> None:
        """Record the K/V written (anchors; the accepted drafts' positions `accepted[i]`, consecutive),
        retire the complete rows whose last token was fed, start the rows whose row above has enough."""
        for w, acc in zip(windows, accepted):
            self.cached[w.anchor] = True
            if len(acc):
                self.cached[acc.start:acc.stop] = True  # a slice: no index tensor
            if w.final or (w.row > 0 and w.anchor == w.row * self.width - 1 and not w.stand_in):
                self._fed_final.add(w.row if w.final else w.row - 1)
        self.active = [r for r in self.active if not self._retired(r)]
        self._start_rows()

    def _retired(self, row: int) -> bool:
        return self.complete(row) and (row == self.height - 1 or row in self._fed_final)

    def _start_rows(self) -> None:
        for row in list(self.active):
            nxt = row + 1
            if nxt < self.height and nxt not in self.active and self.count[nxt] == 0 \
                    and self.count[row] >= self.start_after[row]:
                self.active.append(nxt)
        self.active.sort()

    def _token_at(self, position: int) -> int:
        return int(self.tokens[position])

    def _stand_in(self, row: int) -> int:
        """The official auxiliary token: row - 2's latest committed token (row 1: row 0's latest)."""
        source = row - 2 if row >= 2 else row - 1
        return self._token_at(source * self.width + self.count[source] - 1)


def node_batch(windows: list[Window], cached: torch.Tensor) -> NodeBatch:
    """One forward's nodes for the windows (in row order): tokens, positions, row-causal visibility,
    and the context (cached slots, minus the ones this pass overwrites)."""
    tokens, positions, rows, first, is_anchor = [], [], [], [], []
    for w in windows:
        first.append(len(tokens))
        drafts = [] if w.drafts is None else w.drafts.tolist()
        tokens += [w.token, *drafts]
        positions += list(range(w.anchor, w.anchor + 1 + len(drafts)))
        rows += [w.row] * (1 + len(drafts))
        is_anchor += [True] + [False] * len(drafts)
    token_t, position_t, row_of, anchor_t = torch.tensor([tokens, positions, rows, is_anchor])  # [K] each, one call
    own_chain = (row_of[:, None] == row_of[None, :]).tril_()  # same row, node j at or before node i
    anchors_above = (row_of[None, :] < row_of[:, None]) & (anchor_t != 0)[None, :]
    context = cached.clone()
    context[position_t] = False  # slots written in this pass are seen through `visible`, not as context
    return NodeBatch(token_t, position_t, own_chain | anchors_above, context, first, rows)
