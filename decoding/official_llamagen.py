"""The official LlamaGen `generate()` on a SpecLens checkpoint, for a side-by-side with `ar`.

Nothing of LlamaGen ships with SpecLens. The user points at a checkout of
FoundationVision/LlamaGen, and two of its files are imported from there at run time:
`autoregressive/models/gpt.py` (`Transformer`, `ModelArgs`) and `autoregressive/models/generate.py`
(`generate`). Their `gpt.py` imports `utils.drop_path`, so the checkout's root is put on `sys.path`
while they are imported.

Our checkpoints use the official layout, `{"model": state_dict, "speclens": {"config": ...}}`.
`official_transformer` builds their `Transformer` from the stored config and loads our weights into
it with `strict=True`, which also shows that the official code reads SpecLens checkpoints as they are.

Timing: one call of their `generate(model, cond, max_new_tokens, cfg_scale, temperature, top_k,
top_p)` per image, batch 1 (2 with CFG, as theirs builds it), covering what `generate()` does:
cache set-up, prefill, one forward and one `multinomial` draw per token. There is no VQ decode in it.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from decoding.sampling import SamplingSettings

REQUIRED_FILES = ("autoregressive/models/gpt.py", "autoregressive/models/generate.py", "utils/drop_path.py")


@dataclass(frozen=True)
class OfficialLlamaGen:
    """The three objects used from a LlamaGen checkout."""

    checkout: Path
    Transformer: type
    ModelArgs: type
    generate: Callable


def import_official(checkout: str | Path) -> OfficialLlamaGen:
    """Import `Transformer`, `ModelArgs` and `generate` from a checkout of FoundationVision/LlamaGen."""
    root = Path(checkout).expanduser().resolve()
    missing = [f for f in REQUIRED_FILES if not (root / f).is_file()]
    if missing:
        raise ValueError(
            f"{root} is not a checkout of FoundationVision/LlamaGen: missing {', '.join(missing)}. "
            f"Pass the root of a clone of https://github.com/FoundationVision/LlamaGen.")
    gpt = _import_with_root(root, "speclens_llamagen_gpt", root / REQUIRED_FILES[0])
    generate = _import_with_root(root, "speclens_llamagen_generate", root / REQUIRED_FILES[1])
    return OfficialLlamaGen(root, gpt.Transformer, gpt.ModelArgs, generate.generate)


def _import_with_root(root: Path, name: str, file: Path) -> ModuleType:
    """Execute `file` as module `name` with `root` first on sys.path and its own `utils` package
    visible (another `utils` already imported is set aside meanwhile and restored afterwards)."""
    shadowed = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "utils" or k.startswith("utils.")}
    sys.path.insert(0, str(root))
    try:
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if k == "utils" or k.startswith("utils.")]:
            del sys.modules[k]
        sys.modules.update(shadowed)
    return module


def official_transformer(official: OfficialLlamaGen, checkpoint: str | Path, config: dict | None = None,
                         device: str | torch.device = "cpu") -> torch.nn.Module:
    """Their `Transformer`, built from the checkpoint's stored SpecLens config (else `config`), with
    our weights loaded strictly; in eval mode, float32."""
    obj = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"{checkpoint}: expected a dict checkpoint, found {type(obj).__name__}")
    state = obj.get("model", obj)
    stored = obj.get("speclens", {}).get("config") if isinstance(obj.get("speclens"), dict) else None
    cfg = stored or config
    if cfg is None:
        raise ValueError(f"{checkpoint}: no SpecLens config stored in the file and none given")
    known = {f.name for f in dataclasses.fields(official.ModelArgs)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"config fields {unknown} are not fields of the official ModelArgs")
    model = official.Transformer(official.ModelArgs(**cfg))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    return model.to(device).eval()


def official_generate(official: OfficialLlamaGen, model: torch.nn.Module, label: int, num_tokens: int,
                      sampling: SamplingSettings, seed: int) -> tuple[torch.Tensor, float]:
    """(tokens [N], seconds) of one call of their `generate()` for one image of class `label`.
    Their sampler draws from torch's global generator: it is seeded inside a forked RNG state."""
    device = next(model.parameters()).device
    cond = torch.tensor([int(label)], device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # their torch.backends.cuda.sdp_kernel() is deprecated
        torch.manual_seed(int(seed))
        _sync(device)
        t0 = time.perf_counter()
        tokens = official.generate(model, cond, num_tokens, cfg_scale=sampling.cfg_scale,
                                   temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
        _sync(device)
        seconds = time.perf_counter() - t0
    return tokens[0].long().cpu(), seconds


class OfficialRunner:
    """Their `generate()` on one of our checkpoints, ready to be timed image by image."""

    label = "llamagen-generate"

    def __init__(self, checkout: str | Path, checkpoint: str | Path, config: dict | None = None,
                 device: str | torch.device = "cpu"):
        self.official = import_official(checkout)
        self.checkpoint = Path(checkpoint)
        self.model = official_transformer(self.official, checkpoint, config, device)

    def run(self, label: int, num_tokens: int, sampling: SamplingSettings, seed: int) -> tuple[torch.Tensor, float]:
        return official_generate(self.official, self.model, label, num_tokens, sampling, seed)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
