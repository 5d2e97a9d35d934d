"""Models a user picks by name: the bundled Fashion-MNIST model (default), official LlamaGen
class-conditional checkpoints (from local files, or the Hugging Face Hub when online), and the
tiny golden-fixture model used by tests.

Local LlamaGen weights are looked for in `$SPECLENS_WEIGHTS_DIR` (default
`~/.cache/speclens/llamagen`), under their official file names.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from models.checkpoint import CheckpointError, load_into, read_state_dict
from models.data import CLASS_NAMES
from models.gpt import GPT, GPTConfig, gpt_config
from models.interface import ARImageModel
from models.vq import VQConfig, VQModel, vq_config

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
FIXTURES = ROOT / "tests" / "fixtures" / "llamagen"
HUB_REPO = "FoundationVision/LlamaGen"
DEFAULT_MODEL = "fashion-mnist"


class ModelUnavailable(RuntimeError):
    """The model's weights are not here and cannot be downloaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    gpt_file: str
    vq_file: str
    source: str  # "bundled" | "hub" | "fixture"
    gpt_preset: str | None = None
    image_size: int = 256
    vq_preset: str = "VQ-16"


def _llamagen(size: str, res: int) -> ModelSpec:
    return ModelSpec(f"llamagen-c2i-{size}-{res}", f"LlamaGen GPT-{size} class-conditional ImageNet {res}px, VQ-16",
                     f"c2i_{size}_{res}.pt", "vq_ds16_c2i.pt", "hub", f"GPT-{size}", res)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec for spec in [
        ModelSpec(DEFAULT_MODEL, "Bundled: LlamaGen-architecture GPT + VQ trained on Fashion-MNIST (14x14 tokens)",
                  "fashion_mnist_gpt.pt", "fashion_mnist_vq.pt", "bundled"),
        _llamagen("B", 256), _llamagen("B", 384), _llamagen("L", 256), _llamagen("L", 384), _llamagen("XL", 384),
        ModelSpec("tiny-fixture", "Tiny random LlamaGen (golden test fixture, 4x4 tokens)", "gpt_tiny.pt",
                  "vq_tiny.pt", "fixture"),
    ]
}


def weights_dir() -> Path:
    return Path(os.environ.get("SPECLENS_WEIGHTS_DIR", Path.home() / ".cache" / "speclens" / "llamagen"))


def resolve_file(spec: ModelSpec, filename: str) -> Path:
    """Local path of one of the model's files, downloading from the Hub when that is possible."""
    if spec.source == "bundled":
        return ASSETS / filename
    if spec.source == "fixture":
        return FIXTURES / filename
    local = weights_dir() / filename
    if local.is_file():
        return local
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(HUB_REPO, filename))
    except Exception as e:  # offline, no huggingface_hub, gated, ...
        raise ModelUnavailable(
            f"model {spec.name!r} needs {spec.gpt_file} and {spec.vq_file}: {filename} is not in {weights_dir()} "
            f"and could not be downloaded from https://huggingface.co/{HUB_REPO} ({type(e).__name__}). "
            f"Download both files there and place them in {weights_dir()} (or set SPECLENS_WEIGHTS_DIR)."
        ) from e


def _build(path: Path, module_cls, config_cls, preset_fn, preset: str | None, example: str, overrides: dict):
    """A module from a checkpoint: its config from SpecLens metadata, else from a preset + overrides."""
    sd, meta = read_state_dict(path)
    if meta.get("config"):
        cfg = config_cls.from_dict(meta["config"])
    elif preset:
        cfg = preset_fn(preset, **overrides)
    else:
        raise CheckpointError(f"{path}: no SpecLens config stored in the file; give a preset (e.g. {example!r})")
    module = module_cls(cfg)
    load_into(module, sd, path)
    return module


def build_gpt(path: Path, preset: str | None = None, **overrides) -> GPT:
    return _build(Path(path), GPT, GPTConfig, gpt_config, preset, "GPT-B", overrides)


def build_vq(path: Path, preset: str | None = None, **overrides) -> VQModel:
    return _build(Path(path), VQModel, VQConfig, vq_config, preset, "VQ-16", overrides)


@lru_cache(maxsize=2)
def load_model(name: str = DEFAULT_MODEL, device: str = "cpu") -> ARImageModel:
    """Load a registered model by name (cached per process)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    spec = MODELS[name]
    if spec.source == "fixture":
        import torch

        golden = torch.load(FIXTURES / "golden_tiny.pt", weights_only=True)
        gpt = build_gpt(FIXTURES / spec.gpt_file, "GPT-tiny", **_known(golden["config_gpt"], GPTConfig))
        vq = build_vq(FIXTURES / spec.vq_file, "VQ-tiny", **_known(golden["config_vq"], VQConfig))
        return ARImageModel(gpt.to(device), vq.to(device), name)
    gpt_path, vq_path = resolve_file(spec, spec.gpt_file), resolve_file(spec, spec.vq_file)
    if spec.source == "bundled":
        gpt, vq, names = build_gpt(gpt_path), build_vq(vq_path), CLASS_NAMES
    else:
        grid = spec.image_size // 16
        gpt = build_gpt(gpt_path, spec.gpt_preset, block_size=grid * grid)
        vq = build_vq(vq_path, spec.vq_preset)
        names = None
    return ARImageModel(gpt.to(device), vq.to(device), name, names)


def _known(d: dict, cls) -> dict:
    return {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
