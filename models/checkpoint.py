"""Reading and writing checkpoints in the official LlamaGen layout, safely.

Accepted files: `.pt`/`.pth`/`.bin` holding `{"model": sd}`, `{"module": sd}`,
`{"state_dict": sd}` or a bare state dict (read with `torch.load(weights_only=True)`, so no
pickled code ever runs), and `.safetensors`. Half-precision weights are upcast to float32.

A checkpoint can come from anywhere, so it is checked before it can cost anything:
- a `.pt` file is a zip archive; its entries' declared sizes are read first (`inspect_torch_file`):
  more than `MAX_CHECKPOINT_BYTES` in all, a pickle over `MAX_PICKLE_BYTES`, or a compressed entry
  that expands more than `MAX_COMPRESSION_RATIO` times is refused before `torch.load` allocates it;
- weights must be floating point (no int/bool/complex silently cast) and finite (no NaN/inf);
- state-dict keys and metadata keys must be strings, metadata a dict (JSON object for safetensors).
Every failure is a `CheckpointError` that names the file and, where one applies, the key.
Building a model from a checkpoint's stored config (bounds, shapes checked on the meta device
first) is `models.registry.build_gpt` / `build_vq`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import torch
from torch import nn

WRAPPER_KEYS = ("model", "module", "state_dict")
RUNTIME_KEY_PARTS = ("kv_cache.", "freqs_cis", "causal_mask")
MAX_CHECKPOINT_BYTES = 16 * 2**30  # uncompressed, all entries: GPT-XXL in float32 is 5.6 GB
MAX_PICKLE_BYTES = 16 * 2**20  # the pickled structure (not the tensors): ~100 KB for an official GPT
MAX_COMPRESSION_RATIO = 10  # torch.save stores tensors uncompressed; weights deflate by ~1.1x
MAX_ZIP_ENTRIES = 100_000  # one per tensor storage (~600 for GPT-XXL), counted before the directory is read


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the reason."""


def read_state_dict(path: str | Path, max_bytes: int = MAX_CHECKPOINT_BYTES) -> tuple[dict[str, torch.Tensor], dict]:
    """Return (state dict in float32, metadata dict) from a checkpoint file, every tensor checked."""
    path = Path(path)
    check_file(path)
    if path.suffix == ".safetensors":
        if path.stat().st_size > max_bytes:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes, more than the limit of {max_bytes} bytes")
        obj, meta = _read_safetensors(path)
    else:
        obj = load_torch_file(path, max_bytes)
        meta = _torch_metadata(obj, path)
    sd = _unwrap(obj, path)
    sd = {k: v for k, v in sd.items() if not any(p in k for p in RUNTIME_KEY_PARTS)}
    check_tensor_sizes(sd, path)
    return {k: checked_tensor(v, path, k) for k, v in sd.items()}, meta


def check_file(path: Path) -> None:
    """A readable, non-empty regular file, or a CheckpointError saying what it is instead."""
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path}: not readable (file permissions)")


def inspect_torch_file(path: Path, max_bytes: int = MAX_CHECKPOINT_BYTES) -> None:
    """Refuse a `.pt` zip archive whose declared sizes are out of bounds, before anything is loaded."""
    entries = _zip_entries(path)
    total = 0
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED and entry.file_size > MAX_COMPRESSION_RATIO * max(
                entry.compress_size, 1):
            raise CheckpointError(
                f"{path}: entry {entry.filename!r} expands from {entry.compress_size} to {entry.file_size} bytes "
                f"(more than {MAX_COMPRESSION_RATIO}x); compressed checkpoints are refused, save with torch.save"
            )
        if entry.filename.endswith(".pkl") and entry.file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(
                f"{path}: entry {entry.filename!r} is {entry.file_size} bytes; the pickled structure of a "
                f"checkpoint may be at most {MAX_PICKLE_BYTES} bytes"
            )
        total += entry.file_size
    if total > max_bytes:
        raise CheckpointError(f"{path}: holds {total} bytes uncompressed, more than the limit of {max_bytes} bytes")


def _zip_entries(path: Path) -> list[zipfile.ZipInfo]:
    try:
        with open(path, "rb") as f:
            end = zipfile._EndRecData(f)  # the end record only: how many entries the directory declares
        count = end[zipfile._ECD_ENTRIES_TOTAL] if end else 0
        if count <= MAX_ZIP_ENTRIES:
            with zipfile.ZipFile(path) as archive:
                return archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(
            f"{path}: not a zip-format PyTorch checkpoint (truncated, corrupt, or the legacy pre-1.6 "
            f"format: re-save it with torch.save): {e}"
        ) from e
    raise CheckpointError(f"{path}: declares {count} zip entries, more than the limit of {MAX_ZIP_ENTRIES}")


def load_torch_file(path: Path, max_bytes: int = MAX_CHECKPOINT_BYTES) -> dict:
    """`torch.load(weights_only=True)` of a file that passed `check_file` and `inspect_torch_file`."""
    check_file(path)
    inspect_torch_file(path, max_bytes)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/foreign files
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path}: cannot be read as a weights-only PyTorch checkpoint (truncated, corrupt, "
            f"or it contains pickled objects other than tensors): {msg}"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        sd = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    if "speclens" not in raw:
        return sd, {}
    try:
        meta = json.loads(raw["speclens"])
    except ValueError as e:
        raise CheckpointError(f"{path}: metadata 'speclens' is not valid JSON: {e}") from e
    return sd, checked_metadata(meta, path)


def _torch_metadata(obj: dict, path: Path) -> dict:
    return checked_metadata(obj["speclens"], path) if "speclens" in obj else {}


def checked_metadata(meta, path: Path) -> dict:
    """SpecLens metadata: a dict with string keys (nested dicts too)."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata 'speclens' must be a dict (JSON object), found {type(meta).__name__}")
    for key, value in meta.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: metadata key {key!r} is a {type(key).__name__}, expected a string")
        if isinstance(value, dict):
            checked_metadata(value, path)
    return meta


def _unwrap(obj: dict, path: Path) -> dict[str, torch.Tensor]:
    for key in WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        shown = sorted(map(str, obj))[:8]
        raise CheckpointError(
            f"{path}: no tensors found; expected {{'model': state_dict}}, {{'module': ...}}, "
            f"{{'state_dict': ...}} or a bare state dict (top-level keys: {shown})"
        )
    bad = next((k for k in sd if not isinstance(k, str)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: state dict key {bad!r} is a {type(bad).__name__}, expected a string")
    # DistributedDataParallel / torch.compile prefixes
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def check_tensor_sizes(sd: dict[str, torch.Tensor], path: Path) -> None:
    """Before any tensor is touched: none is larger than the data stored for it (a stride-0 view of one
    number can claim 10**12 elements), and in float32 they need at most twice the bytes stored (half
    precision upcast), so that views sharing one storage cannot multiply the memory either."""
    stored = {}
    for key, t in sd.items():
        storage = t.untyped_storage()
        if t.numel() * t.element_size() > storage.nbytes():
            raise CheckpointError(f"{path}: tensor {key!r} of shape {list(t.shape)} is larger than the "
                                  f"{storage.nbytes()} bytes stored for it (overlapping or expanded strides)")
        stored[storage.data_ptr()] = storage.nbytes()
    needed = 4 * sum(t.numel() for t in sd.values())
    if needed > 2 * sum(stored.values()) + 2**20:
        raise CheckpointError(f"{path}: its tensors need {needed} bytes in float32 but the file stores only "
                              f"{sum(stored.values())} (many tensors viewing the same data)")


def checked_tensor(t: torch.Tensor, path: Path, key: str) -> torch.Tensor:
    """A dense, finite, floating-point weight, upcast to float32; anything else is refused by name."""
    if t.layout != torch.strided:
        raise CheckpointError(f"{path}: tensor {key!r} has layout {t.layout}; weights must be dense tensors")
    if not t.is_floating_point():
        raise CheckpointError(
            f"{path}: tensor {key!r} has dtype {t.dtype}; weights must be floating point "
            f"(float16, bfloat16, float32 or float64), never cast from {t.dtype}"
        )
    t = t.float() if t.dtype != torch.float32 else t
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        raise CheckpointError(
            f"{path}: tensor {key!r} holds {int((~finite).sum())} non-finite values (NaN or inf) out of "
            f"{t.numel()}; the checkpoint is corrupt or its training diverged"
        )
    return t


def config_from_metadata(config_cls, raw, path: Path, limits: dict[str, tuple[int, int]]):
    """A config dataclass from a checkpoint's stored `config`: known fields of the declared types,
    integers (and integer list items, lists of at most MAX_CONFIG_LIST) within `limits`."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: metadata 'config' must be a dict, found {type(raw).__name__}")
    fields = config_cls.__dataclass_fields__
    for key, value in raw.items():
        if not isinstance(key, str) or key not in fields:
            raise CheckpointError(f"{path}: unknown config field {key!r} for {config_cls.__name__} "
                                  f"(known: {', '.join(fields)})")
        if not _has_type(value, str(fields[key].type)):
            raise CheckpointError(f"{path}: config field {key!r} = {value!r} is not of type {fields[key].type}")
        _check_limit(key, value, limits, path)
    try:
        return config_cls.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid stored config: {e}") from e


MAX_CONFIG_LIST = 8


def _has_type(value, annotation: str) -> bool:
    checks = {"None": lambda v: v is None, "int": lambda v: type(v) is int, "bool": lambda v: type(v) is bool,
              "float": lambda v: type(v) in (int, float) and math.isfinite(v), "str": lambda v: type(v) is str,
              "list[int]": lambda v: type(v) is list and all(type(x) is int for x in v),
              "dict": lambda v: type(v) is dict and all(isinstance(k, str) for k in v)}
    return any(checks.get(kind.strip(), lambda v: False)(value) for kind in annotation.split("|"))


def _check_limit(key: str, value, limits: dict[str, tuple[int, int]], path: Path) -> None:
    if key not in limits or value is None:
        return
    low, high = limits[key]
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not 1 <= len(value) <= MAX_CONFIG_LIST:
        raise CheckpointError(f"{path}: config field {key!r} has {len(value)} items, allowed 1..{MAX_CONFIG_LIST}")
    bad = next((x for x in items if not low <= x <= high), None)
    if bad is not None:
        raise CheckpointError(f"{path}: config field {key!r} = {bad} is out of range; allowed {low}..{high}")


def check_state_dict(expected: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], path: str | Path) -> None:
    """Raise CheckpointError at the first key, shape or dtype kind of `sd` that `expected` does not have."""
    for key, tensor in expected.items():
        if key not in sd:
            raise CheckpointError(f"{path}: missing key {key!r} (expected shape {list(tensor.shape)})")
        if sd[key].shape != tensor.shape:
            raise CheckpointError(
                f"{path}: shape mismatch at {key!r}: file has {list(sd[key].shape)}, "
                f"model expects {list(tensor.shape)} (wrong model size or preset?)"
            )
        if tensor.is_floating_point() and not sd[key].is_floating_point():
            raise CheckpointError(f"{path}: tensor {key!r} has dtype {sd[key].dtype}, the model expects floating point")
    extra = [k for k in sd if k not in expected]
    if extra:
        raise CheckpointError(
            f"{path}: unexpected key {extra[0]!r} ({len(extra)} unexpected in all; wrong model type?)")


def load_into(module: nn.Module, sd: dict[str, torch.Tensor], path: str | Path) -> None:
    """Strictly load `sd` into `module`, raising CheckpointError at the first mismatch."""
    check_state_dict(module.state_dict(), sd, path)
    module.load_state_dict(sd, strict=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file object on a temporary file beside `path`; on a clean exit it is synced and renamed
    over `path` (a reader sees the old file or the new one, never half of one), else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: dict, path: str | Path) -> None:
    with atomic_file(path) as f:
        torch.save(obj, f)


def save_checkpoint(path: str | Path, module: nn.Module, meta: dict | None = None, half: bool = False) -> None:
    """Write `{"model": state_dict, "speclens": meta}`: the official layout plus our metadata."""
    sd = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
          for k, v in module.state_dict().items()}
    atomic_torch_save({"model": sd, "speclens": meta or {}}, path)
