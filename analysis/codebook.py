"""The codebook explorer: 2-D projections of an embedding table (cached on disk), per-code
statistics from traces, nearest codes of a picked code, and the figure.

Embeddings come in as plain arrays (app.py reads them from the model); nothing here calls a model.
Two spaces: "vq" = the VQ codebook as the image decoder uses it (LANTERN's space), "gpt" = the
GPT's input token embeddings (GSD's space).
"""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from analysis.style import SEQUENTIAL, finish
from decoding.trace import Trace

SPACES = {"vq": "VQ codebook (LANTERN's space)", "gpt": "GPT input embeddings (GSD's space)"}
COLOUR_BY = {"usage": "times committed", "acceptance": "draft acceptance rate", "relaxed": "relaxed acceptances"}


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


class ProjectionStore:
    """Projections per (model, space, method), in memory and as `<dir>/<model>_<space>_<method>.npz`.

    `get` returns UMAP when it is cached, else PCA at once, and (with `background=True`) starts
    fitting UMAP in a daemon thread, so a later `get` swaps it in.
    """

    def __init__(self, directory: str | Path | None, background: bool = True):
        self.directory = Path(directory) if directory else None
        self.background = background  # False: never start UMAP (tests, machines without spare cores)
        self._memory: dict[tuple[str, str, str], tuple[str, np.ndarray]] = {}  # key -> (fingerprint, xy)
        self._running: set[tuple[str, str]] = set()
        self._errors: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def path(self, model: str, space: str, method: str) -> Path | None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
        return self.directory / f"{safe}_{space}_{method}.npz" if self.directory else None

    def cached(self, model: str, space: str, method: str, embeddings: np.ndarray) -> np.ndarray | None:
        key, fp = (model, space, method), fingerprint(embeddings)
        if key in self._memory and self._memory[key][0] == fp:
            return self._memory[key][1]
        path = self.path(model, space, method)
        if path is None or not path.is_file():
            return None
        with np.load(path) as f:
            if str(f["fingerprint"]) != fp or f["xy"].shape != (len(embeddings), 2):
                return None
            xy = f["xy"].astype(np.float32)
        self._memory[key] = (fp, xy)
        return xy

    def compute(self, model: str, space: str, method: str, embeddings: np.ndarray) -> np.ndarray:
        """Project now (blocking), remember, and write the cache file when a directory is set (not for
        PCA, which is instant)."""
        xy = METHODS[method](embeddings)
        self._memory[(model, space, method)] = (fingerprint(embeddings), xy)
        path = self.path(model, space, method)
        if path is not None and method != "pca":
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, xy=xy, fingerprint=fingerprint(embeddings), method=method, space=space)
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
                    picked: int | None = None, neighbours: Sequence[int] = (), method: str = "pca",
                    space: str = "vq") -> go.Figure:
    """Every code as a point; codes with no statistic in grey; the picked code and its nearest codes
    highlighted."""
    vocab = len(xy)
    values = _colour_values(stats, colour_by, vocab)
    has = ~np.isnan(values)
    ids = np.arange(vocab)
    scatter = go.Scattergl if vocab > 5000 else go.Scatter
    size = 5 if vocab > 5000 else 7
    fig = go.Figure()
    fig.add_trace(scatter(x=xy[~has, 0], y=xy[~has, 1], mode="markers", name="no data yet", customdata=ids[~has],
                          marker=dict(size=size, color="#D0D0D0"), hovertemplate="code %{customdata}<extra></extra>"))
    if has.any():
        label = COLOUR_BY[colour_by] + (" (log10)" if colour_by == "usage" else "")
        fig.add_trace(scatter(x=xy[has, 0], y=xy[has, 1], mode="markers", name=COLOUR_BY[colour_by],
                              customdata=np.stack([ids[has], values[has]], -1),
                              hovertemplate=f"code %{{customdata[0]}}<br>{label} %{{customdata[1]:.3g}}<extra></extra>",
                              marker=dict(size=size + 1, color=values[has], colorscale=SEQUENTIAL, showscale=True,
                                          colorbar=dict(title=dict(text=label, side="right"), thickness=14))))
    if len(neighbours):
        nb = np.asarray(neighbours)
        fig.add_trace(go.Scatter(x=xy[nb, 0], y=xy[nb, 1], mode="markers+text", name="nearest codes",
                                 text=[str(i) for i in nb], textposition="top center", customdata=nb,
                                 hovertemplate="neighbour %{customdata}<extra></extra>",
                                 marker=dict(size=13, color="rgba(0,0,0,0)", line=dict(color="#D55E00", width=2.5))))
    if picked is not None:
        fig.add_trace(go.Scatter(x=[xy[picked, 0]], y=[xy[picked, 1]], mode="markers", name=f"code {picked}",
                                 marker=dict(symbol="star", size=20, color="#D55E00", line_color="black", line_width=1),
                                 hovertemplate=f"picked code {picked}<extra></extra>"))
    fig.update_xaxes(title_text=f"{method.upper()} 1", showticklabels=False, zeroline=False)
    fig.update_yaxes(title_text=f"{method.upper()} 2", showticklabels=False, zeroline=False, scaleanchor="x")
    fig.update_layout(legend=dict(orientation="h", y=-0.12))
    return finish(fig, f"{SPACES.get(space, space)} · {vocab} codes · {method.upper()}", height=560)


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
