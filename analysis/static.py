"""Static exports (matplotlib, Agg): one summary figure of a trace, for slides and papers."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # noqa: E402 - headless; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from analysis.definitions import DEFINITIONS  # noqa: E402
from analysis.heatmaps import position_table, to_grid  # noqa: E402
from analysis.steps import committed_per_pass  # noqa: E402
from analysis.style import KIND_COLOURS, KIND_LABELS  # noqa: E402
from decoding.trace import COMMIT_KINDS, Trace  # noqa: E402


def summary_figure(trace: Trace, image: np.ndarray | None = None) -> plt.Figure:
    """Image, commit kind, commit pass and the accepted-length histogram in one row, definitions below."""
    table = position_table(trace)
    panels = 3 + (image is not None)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.6), constrained_layout=True)
    axes = list(axes)
    if image is not None:
        ax = axes.pop(0)
        ax.imshow(image, interpolation="nearest")
        ax.set_title("generated image")
        ax.axis("off")
    cmap = ListedColormap([KIND_COLOURS[k] for k in COMMIT_KINDS])
    axes[0].imshow(to_grid(table.kind, trace.grid_shape), cmap=cmap,
                   norm=BoundaryNorm(np.arange(len(COMMIT_KINDS) + 1) - 0.5, cmap.N), interpolation="nearest")
    axes[0].set_title("how each token was committed")
    present = [k for k in COMMIT_KINDS if k in trace.commit_kind]
    axes[0].legend(handles=[Patch(color=KIND_COLOURS[k], label=KIND_LABELS[k]) for k in present],
                   loc="upper center", bbox_to_anchor=(0.5, -0.04), ncol=2, frameon=False, fontsize=9)
    im = axes[1].imshow(to_grid(table.step, trace.grid_shape), cmap="viridis", interpolation="nearest")
    axes[1].set_title("forward pass that committed it")
    fig.colorbar(im, ax=axes[1], shrink=0.8, label="forward pass")
    fig.get_layout_engine().set(wspace=0.12)  # the colour bar's label clear of the histogram's y label
    for ax in axes[:2]:
        ax.set_xticks([])
        ax.set_yticks([])
    lengths = committed_per_pass(trace)
    axes[2].hist(lengths, bins=np.arange(lengths.max() + 2) + 0.5, color="#555555", rwidth=0.9)
    axes[2].set_xlabel("tokens committed in one forward pass")
    axes[2].set_ylabel("forward passes")
    axes[2].set_title(f"mean accepted length {trace.mean_accepted_length:.2f}")
    fig.suptitle(f"{trace.decoder} · {trace.model} · {trace.class_name} · seed {trace.seed} · NFE {trace.nfe}",
                 fontsize=13)
    fig.text(0.01, -0.02, DEFINITIONS["mean_accepted_length"] + " " + DEFINITIONS["nfe"], fontsize=8, ha="left",
             va="top", wrap=True)
    return fig


def summary_png(trace: Trace, image: np.ndarray | None = None, dpi: int = 150) -> bytes:
    fig = summary_figure(trace, image)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
