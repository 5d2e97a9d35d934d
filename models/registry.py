"""Models a user picks by name: the bundled Fashion-MNIST model (default), official LlamaGen
class-conditional ImageNet checkpoints, and the tiny golden-fixture model used by tests.

LlamaGen weights are read from `$SPECLENS_WEIGHTS_DIR` (default `~/.cache/speclens/llamagen`)
under their official file names. They are downloaded from the Hugging Face Hub only when the host
opts in: `SPECLENS_ALLOW_DOWNLOAD=1` (or `allow_download=True`), or beforehand with
`python -m models.download NAME`. `available_models` lists what can be served; `tiny-fixture` stays
loadable by name but is never listed. A model that failed to load is not retried in this process.

A checkpoint's stored config is bounded (`GPT_LIMITS`, `VQ_LIMITS`) and its module is built on the
meta device and checked against the file's keys and shapes before any real memory is allocated.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from models.checkpoint import CheckpointError, check_state_dict, config_from_metadata, load_into, read_state_dict
from models.data import CLASS_NAMES
from models.environment import allow_download_setting, weights_dir_setting
from models.gpt import GPT, GPTConfig, gpt_config
from models.interface import ARImageModel
from models.vq import VQConfig, VQModel, vq_config

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
FIXTURES = ROOT / "tests" / "fixtures" / "llamagen"
IMAGENET_CLASSES = ASSETS / "imagenet_classes.txt"
HUB_REPO = "FoundationVision/LlamaGen"
DEFAULT_MODEL = "fashion-mnist-16k"
FASHION_MNIST_CLASSIFIER = "fashion_mnist_classifier.pt"
# LlamaGen's class-conditional demo (autoregressive/sample/sample_c2i.py) samples its 16384-code VQ-16 vocabulary at
# CFG 4 with top-k 2000 (its FID script uses no top-k at CFG 1.5-2); LANTERN's and SJD's scripts use 2000 as well.
LLAMAGEN_DEMO_TOP_K = 2000

# Bounds on a stored config, generous for official LlamaGen (GPT-3B: dim 3200, 48 layers; 1024 tokens at 512px)
# and small enough that the modules built from them, and their causal-mask tables, fit in memory.
GPT_LIMITS = {"dim": (1, 8192), "n_layer": (1, 128), "n_head": (1, 128), "n_kv_head": (1, 128),
              "multiple_of": (1, 4096), "num_classes": (1, 100_000), "caption_dim": (1, 8192),
              "vocab_size": (2, 1 << 18), "cls_token_num": (1, 512), "block_size": (1, 4096),
              "max_batch_size": (1, 1024), "max_seq_len": (1, 16384)}
VQ_LIMITS = {"codebook_size": (2, 1 << 18), "codebook_embed_dim": (1, 1024), "encoder_ch_mult": (1, 16),
             "decoder_ch_mult": (1, 16), "z_channels": (1, 4096), "ch": (1, 1024), "num_res_blocks": (1, 8),
             "in_channels": (1, 16)}


class ModelUnavailable(RuntimeError):
    """The model's weights are not here and may not be downloaded; the message says what to do."""


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
    classifier: str | None = None  # a bundled classifier file that scores this model's images (quality metrics)
    top_k: int = 0  # the top-k its recipe samples with; the app's and the commands' default (0: off)


def _llamagen(size: str, res: int) -> ModelSpec:
    return ModelSpec(f"llamagen-c2i-{size}-{res}", f"LlamaGen GPT-{size} class-conditional ImageNet {res}px, VQ-16",
                     f"c2i_{size}_{res}.pt", "vq_ds16_c2i.pt", "hub", f"GPT-{size}", res,
                     top_k=LLAMAGEN_DEMO_TOP_K)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec for spec in [
        ModelSpec("fashion-mnist", "Bundled: LlamaGen-architecture GPT + VQ trained on Fashion-MNIST (14x14 tokens, "
                  "1024 codes)", "fashion_mnist_gpt.pt", "fashion_mnist_vq.pt", "bundled",
                  classifier=FASHION_MNIST_CLASSIFIER),
        ModelSpec("fashion-mnist-4096", "Bundled: the vocabulary curve's middle point, the same recipe with 4096 x 8 "
                  "codes (14x14 tokens; GPT trained 1300 steps, as the 16384-code model's first cut)",
                  "fashion_mnist_4096_gpt.pt", "fashion_mnist_4096_vq.pt", "bundled",
                  classifier=FASHION_MNIST_CLASSIFIER),
        ModelSpec("fashion-mnist-16k", "Bundled: the same recipe with LlamaGen VQ-16's codebook shape (16384 x 8 "
                  "codes, 14x14 tokens; top-k 2000), trained last on near-duplicate codes: 65% of positions "
                  "ambiguous, class-consistency 97.5%",
                  "fashion_mnist_16k_gpt.pt", "fashion_mnist_16k_vq.pt", "bundled",
                  classifier=FASHION_MNIST_CLASSIFIER, top_k=LLAMAGEN_DEMO_TOP_K),
        _llamagen("B", 256), _llamagen("B", 384), _llamagen("L", 256), _llamagen("L", 384), _llamagen("XL", 384),
        ModelSpec("tiny-fixture", "Tiny random LlamaGen (golden test fixture, 4x4 tokens)", "gpt_tiny.pt",
                  "vq_tiny.pt", "fixture"),
    ]
}

# Trained drafters shipped in assets/ per target model (models/drafter.py, python -m models.train_drafter).
DRAFTERS: dict[str, dict[str, str]] = {
    "fashion-mnist": {"eagle": "fashion_mnist_eagle.pt", "medusa": "fashion_mnist_medusa.pt"},
}


def classifier_path(name: str) -> Path | None:
    """The bundled classifier that scores model `name`'s images (class-consistency, FD features), None when the
    model has none (LlamaGen: ImageNet needs pretrained networks) or its file is missing."""
    spec = MODELS.get(name)
    path = ASSETS / spec.classifier if spec is not None and spec.classifier else None
    return path if path is not None and path.is_file() else None


def weights_dir() -> Path:
    return weights_dir_setting()


def local_path(spec: ModelSpec, filename: str, weights: Path | None = None) -> Path:
    """Where the model's file is (or would be) on this machine."""
    if spec.source == "bundled":
        return ASSETS / filename
    if spec.source == "fixture":
        return FIXTURES / filename
    return (weights or weights_dir()) / filename


def missing_files(name: str, weights: Path | None = None) -> list[str]:
    """The model's files that are not on this machine (no network)."""
    spec = MODELS[name]
    return [f for f in dict.fromkeys((spec.gpt_file, spec.vq_file)) if not local_path(spec, f, weights).is_file()]


def available_models(allow_download: bool) -> list[str]:
    """Models that can be served: weights present here, or (allow_download) downloadable; never tiny-fixture."""
    return [name for name, spec in MODELS.items() if spec.source != "fixture"
            and (not missing_files(name) or (allow_download and spec.source == "hub"))]


def unavailable_message(name: str, weights: Path | None = None) -> str:
    spec, weights = MODELS[name], weights or weights_dir()
    if spec.source != "hub":
        return f"model {name!r} needs {spec.gpt_file} and {spec.vq_file} in {local_path(spec, '', weights)}"
    return (f"model {name!r} needs {spec.gpt_file} and {spec.vq_file} in {weights}; missing: "
            f"{', '.join(missing_files(name, weights))}. Download them from https://huggingface.co/{HUB_REPO} "
            f"and place them in {weights} (or set SPECLENS_WEIGHTS_DIR), run `python -m models.download {name}`, "
            f"or let this server download them: SPECLENS_ALLOW_DOWNLOAD=1")


def resolve_file(spec: ModelSpec, filename: str, allow_download: bool | None = None) -> Path:
    """Local path of one of the model's files, downloading from the Hub only when allowed."""
    local = local_path(spec, filename)
    if local.is_file():
        return local
    allow = allow_download_setting() if allow_download is None else allow_download
    if spec.source != "hub" or not allow:
        raise ModelUnavailable(unavailable_message(spec.name))
    from models.download import fetch_file

    try:
        return fetch_file(filename, weights_dir())
    except Exception as e:  # offline, no huggingface_hub, gated, disk full, ...
        raise ModelUnavailable(f"downloading {filename} from https://huggingface.co/{HUB_REPO} failed "
                               f"({type(e).__name__}: {str(e)[:200]}); {unavailable_message(spec.name)}") from e


def _build(path: Path, module_cls, config_cls, preset_fn, preset: str | None, example: str, limits: dict,
           overrides: dict):
    """A module from a checkpoint: its config from SpecLens metadata, else from a preset + overrides;
    built on the meta device and checked against the file before it is built for real."""
    sd, meta = read_state_dict(path)
    if meta.get("config"):
        cfg = config_from_metadata(config_cls, meta["config"], path, limits)
    elif preset:
        cfg = preset_fn(preset, **overrides)
    else:
        raise CheckpointError(f"{path}: no SpecLens config stored in the file; give a preset (e.g. {example!r})")
    try:
        with torch.device("meta"):
            skeleton = module_cls(cfg)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its config does not describe a valid {module_cls.__name__}: {e}") from e
    check_state_dict(skeleton.state_dict(), sd, path)
    module = module_cls(cfg)
    load_into(module, sd, path)
    return module


def build_gpt(path: Path, preset: str | None = None, **overrides) -> GPT:
    return _build(Path(path), GPT, GPTConfig, gpt_config, preset, "GPT-B", GPT_LIMITS, overrides)


def build_vq(path: Path, preset: str | None = None, **overrides) -> VQModel:
    return _build(Path(path), VQModel, VQConfig, vq_config, preset, "VQ-16", VQ_LIMITS, overrides)


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (0 tench ... 999 toilet tissue)."""
    names = tuple(IMAGENET_CLASSES.read_text(encoding="utf-8").splitlines())
    if len(names) != 1000:
        raise ValueError(f"{IMAGENET_CLASSES}: expected 1000 class names, found {len(names)}")
    return names


def _load(name: str, device: str = "cpu", allow_download: bool | None = None) -> ARImageModel:
    """Load a registered model by name (uncached)."""
    spec = MODELS[name]
    if spec.source == "fixture":
        golden = torch.load(FIXTURES / "golden_tiny.pt", weights_only=True)
        gpt = build_gpt(FIXTURES / spec.gpt_file, "GPT-tiny", **_known(golden["config_gpt"], GPTConfig))
        vq = build_vq(FIXTURES / spec.vq_file, "VQ-tiny", **_known(golden["config_vq"], VQConfig))
        return ARImageModel(gpt.to(device), vq.to(device), name, top_k=spec.top_k)
    gpt_path = resolve_file(spec, spec.gpt_file, allow_download)
    vq_path = resolve_file(spec, spec.vq_file, allow_download)
    if spec.source == "bundled":
        gpt, vq, names = build_gpt(gpt_path), build_vq(vq_path), CLASS_NAMES
    else:
        grid = spec.image_size // 16
        gpt = build_gpt(gpt_path, spec.gpt_preset, block_size=grid * grid)
        vq = build_vq(vq_path, spec.vq_preset)
        names = imagenet_class_names()
    return ARImageModel(gpt.to(device), vq.to(device), name, names, top_k=spec.top_k)


_cached_load = lru_cache(maxsize=2)(_load)
_FAILURES: dict[tuple, Exception] = {}
_LOCKS: dict[str, threading.Lock] = {}  # one per model: two requests for a multi-GB model load it once,
_GUARD = threading.Lock()  # while a download of one model does not hold up requests for another


def _lock(name: str) -> threading.Lock:
    with _GUARD:
        return _LOCKS.setdefault(name, threading.Lock())


def load_model(name: str = DEFAULT_MODEL, device: str = "cpu", allow_download: bool | None = None) -> ARImageModel:
    """Load a registered model by name, cached per process; a failure is remembered (per name, device,
    weights folder and download permission) and raised again without retrying.
    allow_download=None: as SPECLENS_ALLOW_DOWNLOAD says (off unless set)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    allow = allow_download_setting() if allow_download is None else allow_download
    key = (name, device, allow, str(weights_dir()))
    with _lock(name):
        if key in _FAILURES:
            raise _FAILURES[key].with_traceback(None)
        try:
            return _cached_load(name, device, allow)
        except Exception as e:
            _FAILURES[key] = e
            raise


load_model.__wrapped__ = _load  # the uncached loader, for tests
load_model.cache_clear = _cached_load.cache_clear


def forget_failures() -> None:
    """Let models that failed to load be tried again (after the host placed their files)."""
    with _GUARD:
        _FAILURES.clear()


def _known(d: dict, cls) -> dict:
    return {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
