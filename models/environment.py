"""The environment variables SpecLens reads at start-up, validated before any heavy work.

- `SPECLENS_MODEL`: the start-up model, a registered name (`models.registry.MODELS`) whose weights
  are here (or downloadable, with `SPECLENS_ALLOW_DOWNLOAD=1`). Default `fashion-mnist`.
- `SPECLENS_THREADS`: torch CPU threads, an integer 1..`max_threads()` (4 x the CPU count, at most
  256). Default 2.
- `PORT`, else `GRADIO_SERVER_PORT`: the server port, an integer 1..65535 (`PORT` wins when both
  are set). Default 7860.
- `SPECLENS_WEIGHTS_DIR`: an existing, readable folder holding official LlamaGen weights under their
  official names (also writable when downloads are allowed). Default `~/.cache/speclens/llamagen`.
- `SPECLENS_ALLOW_DOWNLOAD`: `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off`: may the server
  download LlamaGen weights from the Hugging Face Hub. Default off.
- `SPECLENS_UMAP`: the same boolean values: fit UMAP projections of the codebooks in the
  background. Default on.
- `SPECLENS_PROJECTIONS_DIR`: a readable folder (or one that can be created) where codebook
  projections are cached; empty = memory only. Default `$XDG_CACHE_HOME/speclens/projections`.

An empty value counts as unset, except for `SPECLENS_PROJECTIONS_DIR` (empty = memory only).
`read_environment` raises `EnvironmentSettingError` naming the variable, its value and the allowed values.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
DEFAULT_THREADS = 2
DEFAULT_PORT = 7860
MAX_THREADS = 256


class EnvironmentSettingError(ValueError):
    """An environment variable with a value SpecLens cannot use; the message names it."""


@dataclass(frozen=True)
class Environment:
    """Validated start-up settings (see the module docstring for each variable)."""

    model: str
    threads: int
    port: int
    weights_dir: Path
    allow_download: bool
    umap: bool
    projections_dir: Path | None  # None = keep projections in memory only


def read_environment(env: Mapping[str, str] = os.environ) -> Environment:
    """Every SpecLens variable of `env`, validated; cheap (no model is loaded)."""
    allow = allow_download_setting(env)
    weights = checked_weights_dir(env, allow)
    return Environment(model=_model(env, weights, allow), threads=_threads(env), port=_port(env),
                       weights_dir=weights, allow_download=allow, umap=_flag(env, "SPECLENS_UMAP", True),
                       projections_dir=_projections_dir(env))


def max_threads() -> int:
    return min(MAX_THREADS, 4 * (os.cpu_count() or 1))


def allow_download_setting(env: Mapping[str, str] = os.environ) -> bool:
    """SPECLENS_ALLOW_DOWNLOAD as a bool (off unless the host sets it)."""
    return _flag(env, "SPECLENS_ALLOW_DOWNLOAD", False)


def weights_dir_setting(env: Mapping[str, str] = os.environ) -> Path:
    """SPECLENS_WEIGHTS_DIR (not checked; `checked_weights_dir` checks it)."""
    value = _value(env, "SPECLENS_WEIGHTS_DIR")
    return Path(value).expanduser() if value else _home(env) / ".cache" / "speclens" / "llamagen"


def _home(env: Mapping[str, str]) -> Path:
    return Path(_value(env, "HOME")) if _value(env, "HOME") else Path.home()


def checked_weights_dir(env: Mapping[str, str], allow_download: bool) -> Path:
    path = weights_dir_setting(env)
    if _value(env, "SPECLENS_WEIGHTS_DIR"):
        _require_dir(path, "SPECLENS_WEIGHTS_DIR", write=allow_download)
    elif allow_download:
        _require_creatable(path, "SPECLENS_WEIGHTS_DIR")
    return path


def _value(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip()


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = _value(env, name).lower()
    if not value:
        return default
    if value in TRUE_WORDS or value in FALSE_WORDS:
        return value in TRUE_WORDS
    raise EnvironmentSettingError(
        f"{name}={env[name]!r} is not a boolean; use one of {', '.join(TRUE_WORDS)} (on) or "
        f"{', '.join(FALSE_WORDS)} (off)")


def _integer(env: Mapping[str, str], name: str, default: int, low: int, high: int, what: str) -> int:
    value = _value(env, name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise EnvironmentSettingError(f"{name}={env[name]!r}: {what} must be an integer in {low}..{high}")
    return number


def _threads(env: Mapping[str, str]) -> int:
    return _integer(env, "SPECLENS_THREADS", DEFAULT_THREADS, 1, max_threads(), "the number of torch CPU threads")


def _port(env: Mapping[str, str]) -> int:
    ports = [_integer(env, name, 0, 1, 65535, "the server port") for name in ("PORT", "GRADIO_SERVER_PORT")]
    return next((p for p in ports if p), DEFAULT_PORT)


def _model(env: Mapping[str, str], weights: Path, allow_download: bool) -> str:
    from models import registry

    name = _value(env, "SPECLENS_MODEL")
    if not name:
        return registry.DEFAULT_MODEL
    if name not in registry.MODELS:
        raise EnvironmentSettingError(f"SPECLENS_MODEL={env['SPECLENS_MODEL']!r} is not a model; "
                                      f"valid names: {', '.join(registry.MODELS)}")
    missing = registry.missing_files(name, weights)
    if missing and not (allow_download and registry.MODELS[name].source == "hub"):
        raise EnvironmentSettingError(f"SPECLENS_MODEL={name!r}: {registry.unavailable_message(name, weights)}")
    return name


def _projections_dir(env: Mapping[str, str]) -> Path | None:
    if "SPECLENS_PROJECTIONS_DIR" not in env:
        base = _value(env, "XDG_CACHE_HOME") or _home(env) / ".cache"
        return Path(base) / "speclens" / "projections"
    value = env["SPECLENS_PROJECTIONS_DIR"].strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if path.exists():
        _require_dir(path, "SPECLENS_PROJECTIONS_DIR", write=False)
    else:
        _require_creatable(path, "SPECLENS_PROJECTIONS_DIR")
    return path


def _require_dir(path: Path, name: str, write: bool) -> None:
    if not path.is_dir():
        state = "is not a directory" if path.exists() else "does not exist"
        raise EnvironmentSettingError(f"{name}={str(path)!r} {state}; give an existing, readable folder")
    mode = os.R_OK | os.X_OK | (os.W_OK if write else 0)
    if not os.access(path, mode):
        need = "readable and writable (downloads are allowed)" if write else "readable"
        raise EnvironmentSettingError(f"{name}={str(path)!r} is not {need} by this process")


def _require_creatable(path: Path, name: str) -> None:
    """A writable folder, or one that does not exist yet under a writable folder (created when needed)."""
    if path.exists():
        _require_dir(path, name, write=True)
        return
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
        raise EnvironmentSettingError(
            f"{name}={str(path)!r} does not exist and cannot be created ({parent} is not a writable folder)")
