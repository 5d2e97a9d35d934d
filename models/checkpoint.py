"""Reading and writing checkpoints in the official LlamaGen layout, safely.

Accepted files: `.pt`/`.pth`/`.bin` holding `{"model": sd}`, `{"module": sd}`,
`{"state_dict": sd}` or a bare state dict (read with `torch.load(weights_only=True)`, so no
pickled code ever runs), and `.safetensors`. Half-precision weights are upcast to float32.
Every failure names the file and, for a mismatch, the first offending key or shape.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

WRAPPER_KEYS = ("model", "module", "state_dict")
RUNTIME_KEY_PARTS = ("kv_cache.", "freqs_cis", "causal_mask")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the reason."""


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Return (state dict in float32, metadata dict) from a checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    if path.suffix == ".safetensors":
        obj, meta = _read_safetensors(path)
    else:
        obj, meta = _read_torch(path)
    sd = _unwrap(obj, path)
    return {k: _upcast(v) for k, v in sd.items() if not any(p in k for p in RUNTIME_KEY_PARTS)}, meta


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        sd = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    meta = json.loads(raw["speclens"]) if "speclens" in raw else {}
    return sd, meta


def _read_torch(path: Path) -> tuple[dict, dict]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/foreign files
        msg = str(e).splitlines()[0][:300]
        raise CheckpointError(
            f"{path}: cannot be read as a weights-only PyTorch checkpoint (truncated, corrupt, "
            f"or it contains pickled objects other than tensors): {msg}"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    meta = obj.get("speclens", {}) if isinstance(obj.get("speclens"), dict) else {}
    return obj, meta


def _unwrap(obj: dict, path: Path) -> dict[str, torch.Tensor]:
    for key in WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(
            f"{path}: no tensors found; expected {{'model': state_dict}}, {{'module': ...}}, "
            f"{{'state_dict': ...}} or a bare state dict (top-level keys: {sorted(obj)[:8]})"
        )
    # DistributedDataParallel / torch.compile prefixes
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _upcast(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() and t.dtype != torch.float32 else t


def load_into(module: nn.Module, sd: dict[str, torch.Tensor], path: str | Path) -> None:
    """Strictly load `sd` into `module`, raising CheckpointError at the first mismatch."""
    expected = module.state_dict()
    for key, tensor in expected.items():
        if key not in sd:
            raise CheckpointError(f"{path}: missing key {key!r} (expected shape {list(tensor.shape)})")
        if sd[key].shape != tensor.shape:
            raise CheckpointError(
                f"{path}: shape mismatch at {key!r}: file has {list(sd[key].shape)}, "
                f"model expects {list(tensor.shape)} (wrong model size or preset?)"
            )
    extra = [k for k in sd if k not in expected]
    if extra:
        raise CheckpointError(
            f"{path}: unexpected key {extra[0]!r} ({len(extra)} unexpected in all; wrong model type?)")
    module.load_state_dict(sd, strict=True)


def save_checkpoint(path: str | Path, module: nn.Module, meta: dict | None = None, half: bool = False) -> None:
    """Write `{"model": state_dict, "speclens": meta}`: the official layout plus our metadata."""
    sd = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
          for k, v in module.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"model": sd, "speclens": meta or {}}, tmp)
    tmp.replace(path)
