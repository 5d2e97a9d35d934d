"""The codebook explorer: 2-D projections of an embedding table (cached on disk), per-code
statistics from traces, what to highlight for a picked code (its nearest codes, the groups it
formed or joined in a trace, the group at a picked grid position), and the figure.

Embeddings come in as plain arrays (app.py reads them from the model); nothing here calls a model.
Two spaces: "vq" = the VQ codebook as the image decoder uses it (LANTERN's space), "gpt" = the
GPT's input token embeddings (GSD's space).
"""
from __future__ import annotations

import hashlib
import io
import os
import threading
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from analysis.style import SEQUENTIAL, finish
from decoding.files import atomic_write_bytes
from decoding.trace import Trace

SPACES = {"vq": "VQ codebook (LANTERN's space)", "gpt": "GPT input embeddings (GSD's space)"}
COLOUR_BY = {"usage": "times committed", "acceptance": "draft acceptance rate", "relaxed": "relaxed acceptances"}
# What a trace's `group_members` are, by decoder: GSD's group G, LANTERN's moved set A plus the draft.
GROUP_NOUNS = {"gsd": "GSD group", "lantern": "LANTERN moved set"}
# Highlight layers, Okabe-Ito colours told apart by symbol too (greyscale, colour-vision deficiencies);
# the position's group is a shaded disk under the outlines, as it usually repeats one of the other sets.
HIGHLIGHT_STYLE = {"neighbours": ("circle-open", 13, "#D55E00"), "as_draft": ("diamond-open", 17, "#0072B2"),
                   "as_member": ("square-open", 17, "#009E73"), "position": ("circle", 26, "rgba(204,121,167,0.45)")}
MAX_POINTS = 2048  # above: a density of every code plus the codes with data as points
MAX_POINTS_LIMIT = 5000  # SVG points (WebGL ones would be drawn over the highlight)
DENSITY_BINS = 80
# The same shapes as text, for gallery captions: the gallery reads like the plot's legend.
HIGHLIGHT_MARKS = {"picked": "★", "neighbours": "○", "as_draft": "◇", "as_member": "□", "position": "●"}


# -- projections -------------------------------------------------------------------------------
def pca_2d(embeddings: np.ndarray) -> np.ndarray:
    """[V, D] -> [V, 2]: the two leading principal components (exact, deterministic signs)."""
    x = np.asarray(embeddings, dtype=np.float64)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T  # [V, 2]
    signs = np.sign(xy[np.abs(xy).argmax(0), range(2)])  # largest |value| of each axis made positive
    return (xy * signs).astype(np.float32)


def umap_2d(embeddings: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """[V, D] -> [V, 2] UMAP with the cosine metric (LlamaGen's codes are l2-normalised). Slow: the
    first fit in a process spends ~20 s compiling numba code."""
    import umap  # deferred: importing umap-learn alone costs seconds

    reducer = umap.UMAP(n_components=2, metric="cosine", n_neighbors=n_neighbors, min_dist=0.1, random_state=seed,
                        n_jobs=1)
    return reducer.fit_transform(np.asarray(embeddings, dtype=np.float32)).astype(np.float32)


METHODS = {"pca": pca_2d, "umap": umap_2d}


def fingerprint(embeddings: np.ndarray) -> str:
    """A short hash of the table, so a cached projection of other weights is never reused."""
    return hashlib.sha1(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes()).hexdigest()[:16]


def source_tree() -> Path:
    """The folder holding the `analysis` package (the repository in a checkout): never written to."""
    return Path(__file__).resolve().parents[1]


SHIPPED = source_tree() / "assets" / "projections"  # the bundled models' projections (read only)


def default_cache_dir() -> Path:
    """A per-user cache folder for projections of models that ship none:
    `$XDG_CACHE_HOME/speclens/projections` (default `~/.cache/speclens/projections`)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "speclens" / "projections"


def save_projection(path: str | Path, xy: np.ndarray, embeddings: np.ndarray, method: str, space: str) -> None:
    """Write one projection file (atomically: a reader sees the old file or the new one, never half of
    one). Used by the store's cache and to ship a bundled model's projection into `assets/projections`."""
    buf = io.BytesIO()
    np.savez_compressed(buf, xy=np.asarray(xy, np.float32), fingerprint=fingerprint(embeddings), method=method,
                        space=space)
    atomic_write_bytes(path, buf.getvalue())


def load_projection(path: Path, embeddings: np.ndarray) -> np.ndarray | None:
    """The [V, 2] projection stored at `path` if it is a readable projection of exactly these embeddings;
    None if the file is missing, of other weights, of another size, truncated or corrupt (recomputed then)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["fingerprint"]) != fingerprint(embeddings):
                return None
            xy = np.asarray(f["xy"], dtype=np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    return xy if xy.shape == (len(embeddings), 2) and np.isfinite(xy).all() else None


class ProjectionStore:
    """Projections per (model, space, method), in memory and as `<model>_<space>_<method>.npz` files.

    `shipped`: a read-only folder of projections that come with the code (default: the bundled models',
    `assets/projections` of the source tree; None: none). `cache_dir`:
    where projections computed here are written (a user cache dir: `default_cache_dir()`, a temp dir); None =
    memory only. Nothing is ever written inside the source tree: a `cache_dir` there is only read, as if
    shipped. A cache file that is truncated or corrupt is ignored and recomputed (then replaced atomically).

    `get` returns UMAP when it is cached, else PCA at once, and (with `background=True`) starts fitting UMAP
    in a daemon thread, so a later `get` swaps it in.
    """

    def __init__(self, cache_dir: str | Path | None = None, background: bool = True,
                 shipped: str | Path | None = SHIPPED):
        cache = Path(cache_dir).resolve() if cache_dir else None
        read_only = cache is not None and cache.is_relative_to(source_tree())
        self.shipped = cache if read_only else (Path(shipped) if shipped else None)
        self.directory = None if read_only else cache
        self.background = background  # False: never start UMAP (tests, machines without spare cores)
        self._memory: dict[tuple[str, str, str], tuple[str, np.ndarray]] = {}  # key -> (fingerprint, xy)
        self._running: set[tuple[str, str]] = set()
        self._errors: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def filename(model: str, space: str, method: str) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
        return f"{safe}_{space}_{method}.npz"

    def path(self, model: str, space: str, method: str) -> Path | None:
        """Where a projection computed here is written (None: memory only)."""
        return self.directory / self.filename(model, space, method) if self.directory else None

    def cached(self, model: str, space: str, method: str, embeddings: np.ndarray) -> np.ndarray | None:
        key, fp = (model, space, method), fingerprint(embeddings)
        if key in self._memory and self._memory[key][0] == fp:
            return self._memory[key][1]
        for folder in (self.shipped, self.directory):
            xy = load_projection(folder / self.filename(model, space, method), embeddings) if folder else None
            if xy is not None:
                self._memory[key] = (fp, xy)
                return xy
        return None

    def compute(self, model: str, space: str, method: str, embeddings: np.ndarray) -> np.ndarray:
        """Project now (blocking), remember, and write the cache file when a cache dir is set (not for
        PCA, which is instant)."""
        xy = METHODS[method](embeddings)
        self._memory[(model, space, method)] = (fingerprint(embeddings), xy)
        path = self.path(model, space, method)
        if path is not None and method != "pca":
            save_projection(path, xy, embeddings, method, space)
        return xy

    def get(self, model: str, space: str, embeddings: np.ndarray, background: bool = True) -> tuple[np.ndarray, str]:
        """(xy [V, 2], method): UMAP if available, else PCA (UMAP started in the background)."""
        xy = self.cached(model, space, "umap", embeddings)
        if xy is not None:
            return xy, "umap"
        if background and self.background:
            self._start_umap(model, space, embeddings)
        pca = self.cached(model, space, "pca", embeddings)
        return (pca if pca is not None else self.compute(model, space, "pca", embeddings)), "pca"

    def status(self, model: str, space: str) -> str:
        if (model, space, "umap") in self._memory:
            return "UMAP ready"
        if (model, space) in self._errors:
            return f"UMAP failed: {self._errors[(model, space)]}; showing PCA"
        if (model, space) in self._running:
            return "PCA shown while UMAP is being computed (refresh in a minute)"
        return "PCA" if self.background else "PCA (UMAP off)"

    def _start_umap(self, model: str, space: str, embeddings: np.ndarray) -> None:
        with self._lock:
            if (model, space) in self._running or (model, space) in self._errors:
                return
            self._running.add((model, space))
        threading.Thread(target=self._umap_job, args=(model, space, np.array(embeddings)), daemon=True,
                         name=f"umap-{model}-{space}").start()

    def _umap_job(self, model: str, space: str, embeddings: np.ndarray) -> None:
        try:
            self.compute(model, space, "umap", embeddings)
        except Exception as e:  # shown in the UI; PCA stays in use
            self._errors[(model, space)] = f"{type(e).__name__}: {e}"
        finally:
            with self._lock:
                self._running.discard((model, space))

    def wait(self, timeout: float | None = None) -> None:
        """Join running UMAP fits (tests, the command line)."""
        for t in [t for t in threading.enumerate() if t.name.startswith("umap-")]:
            t.join(timeout)


# -- statistics ----------------------------------------------------------------------------------
@dataclass
class CodeStats:
    usage: np.ndarray  # [V] times committed
    verified: np.ndarray  # [V] drafts of this code verified
    accepted: np.ndarray  # [V]
    relaxed: np.ndarray  # [V] accepted only thanks to the relaxation
    groups: np.ndarray  # [V] verifications with a LANTERN neighbourhood / GSD group (size > 0)
    group_size_sum: np.ndarray  # [V]

    @property
    def acceptance(self) -> np.ndarray:
        """[V] accepted / verified (NaN where never verified)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.verified > 0, self.accepted / np.maximum(self.verified, 1), np.nan)


def code_stats(traces: Sequence[Trace], vocab_size: int) -> CodeStats:
    z = [np.zeros(vocab_size, dtype=np.int64) for _ in range(6)]
    stats = CodeStats(*z)
    for t in traces:
        if t.vocab_size != vocab_size:
            raise ValueError(f"trace of {t.model!r} has vocabulary {t.vocab_size}, expected {vocab_size}")
        np.add.at(stats.usage, np.asarray(t.tokens, dtype=np.int64), 1)
        for s in t.steps:
            if not s.positions:
                continue
            tok = np.asarray(s.draft_tokens, dtype=np.int64)
            np.add.at(stats.verified, tok, 1)
            np.add.at(stats.accepted, tok, np.asarray(s.accepted, dtype=np.int64))
            np.add.at(stats.relaxed, tok, np.asarray(s.relaxed, dtype=np.int64) * np.asarray(s.accepted))
            size = np.asarray(s.group_size, dtype=np.int64)
            np.add.at(stats.groups, tok, (size > 0).astype(np.int64))
            np.add.at(stats.group_size_sum, tok, size)
    return stats


def code_summary(stats: CodeStats, code: int) -> dict:
    """What the traces say about one code."""
    groups = int(stats.groups[code])
    return {"code": int(code), "times committed": int(stats.usage[code]),
            "drafts verified": int(stats.verified[code]), "drafts accepted": int(stats.accepted[code]),
            "accepted through relaxation": int(stats.relaxed[code]),
            "verifications with a neighbourhood/group": groups,
            "mean neighbourhood/group size": round(float(stats.group_size_sum[code]) / groups, 2) if groups else None}


def nearest_codes(embeddings: np.ndarray, code: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k codes nearest to `code` by L2 distance (itself excluded), nearest first, and their
    distances. One row of distances ([V]), never a V x V table."""
    emb = np.asarray(embeddings, dtype=np.float32)
    vocab = len(emb)
    if not 0 <= code < vocab:
        raise ValueError(f"code must be in [0, {vocab - 1}], got {code}")
    if not 0 <= k < vocab:
        raise ValueError(f"k must be in [0, {vocab - 1}], got {k}")
    d = np.sqrt(((emb - emb[code]) ** 2).sum(1))  # [V]
    d[code] = np.inf
    idx = np.argpartition(d, k)[:k] if k else np.empty(0, dtype=np.int64)
    idx = idx[np.argsort(d[idx], kind="stable")]
    return idx, d[idx]


# -- highlight of one code ------------------------------------------------------------------------
@dataclass
class CodeHighlight:
    """A picked code: its nearest codes in one space and, from one trace, the groups it took part in.

    A group is a trace's `group_members` of one verified draft (the draft included). Sets are unions
    over the trace's verifications, the picked code itself excluded, ascending ids."""

    code: int
    neighbours: np.ndarray  # [k] nearest codes in the chosen space, nearest first (LANTERN's B_k, code excluded)
    distances: np.ndarray  # [k] their L2 distances
    groups_recorded: bool = False  # the trace records groups (decoders with a relaxation, newer traces)
    noun: str = "group"  # what a group is in the trace's decoder ("GSD group", "LANTERN moved set")
    as_draft: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # codes of the groups it formed
    as_member: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # codes of groups it joined
    n_as_draft: int = 0  # verifications of the code as the draft, with a group recorded
    n_as_member: int = 0  # verifications of another draft whose group held the code
    position: int | None = None  # a picked grid position of the trace
    position_draft: int | None = None  # the draft verified there by the pass that committed it (None: no draft)
    position_kind: str | None = None  # how the position was committed (COMMIT_KINDS): "resampled" = draft rejected
    position_group: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # its group

    def gallery(self, limit: int = 48) -> list[tuple[int, str]]:
        """(code, caption) for a patch gallery: the code, its nearest codes, then codes of its groups, of
        the groups it joined and of the position's group not shown yet; at most `limit`. Captions carry
        the plot's marks (HIGHLIGHT_MARKS), short enough for a thumbnail (about 12 characters), e.g.
        '40 ○ d=0.65◇': nearest, at L2 distance 0.65, in its groups."""
        marks = HIGHLIGHT_MARKS
        roles: dict[int, list[str]] = {self.code: [marks["picked"]]}
        for c, d in zip(self.neighbours.tolist(), self.distances.tolist()):
            roles.setdefault(c, []).append(f"{marks['neighbours']} d={d:.3g}")
        for mark, codes in ((marks["as_draft"], self.as_draft), (marks["as_member"], self.as_member),
                            (marks["position"], self.position_group)):
            for c in codes.tolist():
                if mark not in roles.setdefault(c, []):
                    roles[c].append(mark)
        return [(c, f"{c} {''.join(r)}") for c, r in list(roles.items())[:limit]]  # marks unspaced: thumbnails

    def summary(self) -> dict:
        """The highlight as plain numbers (the app's JSON panel)."""
        out = {"nearest codes": self.neighbours.tolist()}
        if self.groups_recorded:
            out |= {f"{self.noun}s formed as the draft": self.n_as_draft, "codes in them": self.as_draft.tolist(),
                    f"{self.noun}s of other drafts it was in": self.n_as_member,
                    "codes in those": self.as_member.tolist()}
        if self.position is not None:
            out["position"] = {"position": self.position, "committed as": self.position_kind,
                               "draft": self.position_draft, "group": self.position_group.tolist()}
        return out


def code_highlight(embeddings: np.ndarray, code: int, k: int, trace: Trace | None = None,
                   position: int | None = None) -> CodeHighlight:
    """The k codes nearest to `code` in `embeddings` and, when a trace is given, the groups its
    verifications recorded with `code` as the draft or as a member, and the group verified at
    `position` (in the pass that committed it)."""
    ids, dist = nearest_codes(embeddings, code, k)
    h = CodeHighlight(int(code), ids, dist)
    if trace is None:
        if position is not None:
            raise ValueError("a grid position needs a trace")
        return h
    if trace.vocab_size != len(embeddings):
        raise ValueError(f"trace of vocabulary {trace.vocab_size} for an embedding table of {len(embeddings)} codes")
    if position is not None and not 0 <= position < trace.num_tokens:
        raise ValueError(f"position must be in [0, {trace.num_tokens - 1}], got {position}")
    h.noun, h.position = GROUP_NOUNS.get(trace.decoder, "group"), position
    h.groups_recorded = any(s.group_members for s in trace.steps)
    as_draft, as_member = set(), set()
    for s in trace.steps:
        for pos, draft, members in zip(s.positions, s.draft_tokens, s.group_members or [[]] * len(s.positions)):
            if draft == code and members:
                as_draft.update(members)
                h.n_as_draft += 1
            elif code in members:
                as_member.update(members)
                h.n_as_member += 1
            if pos == position and trace.commit_step[pos] == s.index:
                h.position_draft, h.position_group = draft, np.asarray(members, dtype=np.int64)
    if position is not None:
        h.position_kind = trace.commit_kind[position]
    h.as_draft = np.asarray(sorted(as_draft - {code}), dtype=np.int64)
    h.as_member = np.asarray(sorted(as_member - {code}), dtype=np.int64)
    return h


# -- figure --------------------------------------------------------------------------------------
def _colour_values(stats: CodeStats | None, colour_by: str, vocab: int) -> np.ndarray:
    if stats is None:
        return np.full(vocab, np.nan)
    if colour_by == "usage":
        return np.where(stats.usage > 0, np.log10(np.maximum(stats.usage, 1)), np.nan)
    if colour_by == "acceptance":
        return stats.acceptance
    if colour_by == "relaxed":
        return np.where(stats.relaxed > 0, stats.relaxed.astype(float), np.nan)
    raise ValueError(f"colour_by must be one of {list(COLOUR_BY)}, got {colour_by!r}")


def codebook_figure(xy: np.ndarray, stats: CodeStats | None = None, colour_by: str = "usage",
                    highlight: CodeHighlight | None = None, method: str = "pca", space: str = "vq",
                    max_points: int = MAX_POINTS) -> go.Figure:
    """Every code as a point; codes with no statistic in grey; a picked code's highlight on top.

    A codebook larger than `max_points` (LlamaGen's 16384 codes) is drawn as a density of all codes (a 2-D
    histogram) with at most `max_points` codes as points: those with a statistic, largest first; the picked
    code, its nearest codes and its groups are always drawn. Work and figure size stay bounded."""
    if not 1 <= max_points <= MAX_POINTS_LIMIT:
        raise ValueError(f"max_points must be in [1, {MAX_POINTS_LIMIT}], got {max_points}")
    vocab = len(xy)
    values = _colour_values(stats, colour_by, vocab)
    has = ~np.isnan(values)
    ids = np.arange(vocab)
    dense = vocab > max_points
    fig = go.Figure()
    if dense:
        fig.add_trace(_density(xy))
        keep = ids[has][np.argsort(-values[has], kind="stable")[:max_points]]
        has = np.zeros(vocab, dtype=bool)
        has[keep] = True
    grey = ~has
    scatter, size = go.Scatter, 5 if dense else 7
    if not dense:
        fig.add_trace(scatter(x=xy[grey, 0], y=xy[grey, 1], mode="markers", name="no data yet",
                              customdata=ids[grey], marker=dict(size=size, color="#D0D0D0"),
                              hovertemplate="code %{customdata}<extra></extra>"))
    if has.any():
        label = COLOUR_BY[colour_by] + (" (log10)" if colour_by == "usage" else "")
        fig.add_trace(scatter(x=xy[has, 0], y=xy[has, 1], mode="markers", name=COLOUR_BY[colour_by],
                              customdata=np.stack([ids[has], values[has]], -1),
                              hovertemplate=f"code %{{customdata[0]}}<br>{label} %{{customdata[1]:.3g}}<extra></extra>",
                              marker=dict(size=size + 1, color=values[has], colorscale=SEQUENTIAL, showscale=True,
                                          colorbar=dict(title=dict(text=label, side="right"), thickness=14))))
    if highlight is not None:
        _add_highlight(fig, xy, highlight)
    fig.update_xaxes(title_text=f"{method.upper()} 1", showticklabels=False, zeroline=False, showgrid=not dense)
    # no equal aspect: it left two thirds of a wide plot empty; the 2-D distances are only a guide anyway
    fig.update_yaxes(title_text=f"{method.upper()} 2", showticklabels=False, zeroline=False, showgrid=not dense)
    fig.update_layout(legend=dict(orientation="h", y=-0.12))
    shown = f" · density of all, {int(has.sum())} with data as points" if dense else ""
    return finish(fig, f"{SPACES.get(space, space)} · {vocab} codes · {method.upper()}{shown}", height=560)


def _density(xy: np.ndarray, bins: int = DENSITY_BINS) -> go.Heatmap:
    """Codes per cell of a bins x bins grid over the projection (empty cells blank)."""
    counts, xe, ye = np.histogram2d(xy[:, 0], xy[:, 1], bins=bins)
    z = np.where(counts > 0, counts, np.nan).T  # [y, x]
    return go.Heatmap(x=(xe[:-1] + xe[1:]) / 2, y=(ye[:-1] + ye[1:]) / 2, z=z, name="codes per cell",
                      colorscale=[[0, "#EBEBEB"], [1, "#5A5A5A"]], zmin=0, showscale=False,
                      hovertemplate="%{z} codes here<extra></extra>")


def _highlight_layers(h: CodeHighlight) -> list[tuple[str, np.ndarray, str]]:
    """(style key, codes, legend name), drawn bottom to top; empty layers left out."""
    c, noun = h.code, h.noun
    verdict = {"draft": "accepted", "relaxed": "accepted by the relaxation"}.get(h.position_kind, "rejected")
    layers = [("position", h.position_group, f"{noun} of draft {h.position_draft} at position {h.position} "
                                             f"({verdict}; {_count(len(h.position_group), 'code')})"),
              ("as_member", h.as_member, f"codes of the {_count(h.n_as_member, noun)} of other drafts that held {c}"),
              ("as_draft", h.as_draft, f"codes of the {_count(h.n_as_draft, noun)} {c} formed as the draft"),
              ("neighbours", h.neighbours, f"{len(h.neighbours)} nearest codes to {c} (LANTERN's neighbourhood)")]
    return [(key, np.asarray(codes), name) for key, codes, name in layers if len(codes)]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _add_highlight(fig: go.Figure, xy: np.ndarray, h: CodeHighlight) -> None:
    for key, codes, name in _highlight_layers(h):
        symbol, size, colour = HIGHLIGHT_STYLE[key]
        labelled = key == "neighbours"  # ids as text on the nearest codes only: the groups would clutter
        ids = codes.tolist()  # plain lists: readable JSON for API clients
        fig.add_trace(go.Scatter(x=xy[codes, 0], y=xy[codes, 1], mode="markers+text" if labelled else "markers",
                                 name=name, customdata=ids, text=[str(i) for i in ids] if labelled else None,
                                 textposition="top center", textfont=dict(color=colour),
                                 hovertemplate=f"code %{{customdata}}<br>{name}<extra></extra>",
                                 marker=dict(symbol=symbol, size=size, color=colour,
                                             line_width=0 if key == "position" else 2.5)))
    fig.add_trace(go.Scatter(x=[xy[h.code, 0]], y=[xy[h.code, 1]], mode="markers", name=f"code {h.code} (picked)",
                             marker=dict(symbol="star", size=20, color="#D55E00", line_color="black", line_width=1),
                             hovertemplate=f"picked code {h.code}<extra></extra>"))


def patch_strip(images: Sequence[np.ndarray], scale: int = 4, gap: int = 2) -> np.ndarray:
    """Decoded patches [h, w, 3] side by side, enlarged by `scale` (nearest), white gaps: one image."""
    if not images:
        raise ValueError("no patches to show")
    h, w = images[0].shape[:2]
    out = np.full((h * scale, len(images) * (w * scale + gap) - gap, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        big = np.repeat(np.repeat(np.asarray(im, dtype=np.uint8), scale, 0), scale, 1)
        x = i * (w * scale + gap)
        out[:, x:x + w * scale] = big[..., :3] if big.ndim == 3 else big[..., None]
    return out
