"""Which models this server offers: `models.registry.available_models(allow_download)` (weights here,
or downloadable when the host allows it) plus the model it was started with (the tiny test model when
no weights are here), so an API caller cannot make the server download or load anything else."""
from __future__ import annotations

from models.registry import available_models

FALLBACK_MODEL = "tiny-fixture"


def served_models(start: str, allow_download: bool) -> list[str]:
    names = list(available_models(allow_download))
    return names if start in names else [start, *names]


def start_model(wanted: str, allow_download: bool) -> str:
    """The configured model when it is available, else the tiny test model."""
    return wanted if wanted in available_models(allow_download) else FALLBACK_MODEL
