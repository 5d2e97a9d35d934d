"""Running several decoders on one class over several seeds (the Compare tab), one image at a time through
the model gate, so other visitors' generations interleave with a long comparison."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from decoding.sampling import SamplingSettings
from decoding.trace import Trace


@dataclass
class CompareRuns:
    runs: dict[str, list[Trace]]  # every seed's trace, per decoder
    shown: list[tuple[Trace, np.ndarray]] = field(default_factory=list)  # the first seed's, in decoder order

    @property
    def traces(self) -> list[Trace]:
        return [t for t, _ in self.shown]

    @property
    def images(self) -> list[np.ndarray]:
        return [im for _, im in self.shown]


def run_decoders(model, decoders: dict, label: int, sampling: SamplingSettings, seeds: range, gate,
                 track=lambda jobs: jobs) -> CompareRuns:
    """Seed by seed, each decoder in order; `track` wraps the job list (e.g. gr.Progress().tqdm)."""
    out = CompareRuns({name: [] for name in decoders})
    jobs: Iterable = track([(s, name) for s in seeds for name in decoders])
    for seed, name in jobs:
        with gate.use():
            result = decoders[name].generate(model, label, sampling, seed)
        out.runs[name].append(result.trace)
        if seed == seeds[0]:
            out.shown.append((result.trace, result.image))
    return out
