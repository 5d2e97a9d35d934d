"""Command-line options shared by the training scripts (seeded, time-budgeted, resumable runs)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    check_tensor_sizes,
    checked_tensor,
    load_into,
    load_torch_file,
)


def training_parser(doc: str, out: str, minutes: float, max_steps: int, batch: int, lr: float,
                    max_steps_help: str = "stop after this many steps") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=out, help="run folder (checkpoints, log); an existing one is resumed")
    p.add_argument("--minutes", type=float, default=minutes, help="wall-clock budget of this invocation")
    p.add_argument("--max-steps", type=int, default=max_steps, help=max_steps_help)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--save-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (a CPU with AVX512-BF16, or a GPU)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (a GPU when one is there)")
    p.add_argument("--source", default="auto", choices=["auto", "debian", "subset"],
                   help="Fashion-MNIST from Debian's package, the shipped subset, or whichever is there")
    return p


def save_training_state(path: Path, module: nn.Module, opt: torch.optim.Optimizer, step: int,
                        gen: torch.Generator) -> None:
    """Everything a run needs to resume (model, optimiser, step, RNGs), written atomically."""
    state = {"model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
             "opt": _to_cpu(opt.state_dict()), "step": step, "gen": gen.get_state(),
             "torch_rng": torch.get_rng_state()}
    atomic_torch_save(state, path)


def _map_tensors(obj, fn):
    """The same nested dicts/lists/tuples with fn applied to every tensor."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _to_cpu(obj):
    """Every tensor on the CPU (a state written on a GPU loads anywhere)."""
    return _map_tensors(obj, lambda t: t.detach().cpu())


def _check_keys(state, path: Path) -> None:
    missing = [k for k in TRAINING_STATE_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a training state: missing key {missing[0]!r} "
                              f"(expected {', '.join(TRAINING_STATE_KEYS)})")


TRAINING_STATE_KEYS = ("model", "opt", "step", "gen")


def load_training_state(path: Path, module: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> int:
    """Resume from `path` if it exists; returns the step reached (0 for a new run).
    Every failure is a CheckpointError naming the file (and the key where one applies)."""
    path = Path(path)
    if not path.exists():
        return 0
    state = load_torch_file(path)
    _check_keys(state, path)
    if not isinstance(state["model"], dict):
        raise CheckpointError(f"{path}: key 'model' must be a state dict, found {type(state['model']).__name__}")
    bad = next((k for k, v in state["model"].items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: 'model' entry {bad!r} is not a tensor")
    check_tensor_sizes(dict(_tensors(state)), path)  # optimiser moments too, before anything is cast
    sd = {k: checked_tensor(v, path, f"model.{k}") for k, v in state["model"].items()}
    load_into(module, sd, path)
    step = state["step"]
    if type(step) is not int or step < 0:
        raise CheckpointError(f"{path}: key 'step' must be an integer >= 0, found {step!r}")
    if state["opt"] is not None:  # None: a compact state without optimiser moments (Adam starts afresh)
        _restore(path, "opt", lambda: opt.load_state_dict(state["opt"]))
    _restore(path, "gen", lambda: gen.set_state(state["gen"]))
    if "torch_rng" in state:
        _restore(path, "torch_rng", lambda: torch.set_rng_state(state["torch_rng"]))
    return step


def _tensors(obj, prefix: str = ""):
    """(dotted key, tensor) for every tensor in nested dicts/lists."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        if isinstance(value, torch.Tensor):
            yield f"{prefix}{key}", value
        else:
            yield from _tensors(value, f"{prefix}{key}.")


def _restore(path: Path, key: str, restore) -> None:
    try:
        restore()
    except (TypeError, ValueError, RuntimeError, KeyError, IndexError) as e:
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: key {key!r} does not fit this run (different model or optimiser?): "
                              f"{msg}") from e


def training_device(name: str) -> torch.device:
    """The --device option as a torch device: cpu, cuda or cuda:N, and only a GPU that is there."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r}") from e
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU is available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on the training device (off: a no-op context)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def start_run(args: argparse.Namespace) -> Path:
    """Threads, seed and device (args.device becomes a torch.device) from the options; the run folder, created."""
    args.device = training_device(str(args.device))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _compact(obj):
    """Every floating-point tensor of more than one element in bfloat16."""
    return _map_tensors(obj, lambda t: t.to(torch.bfloat16) if t.is_floating_point() and t.numel() > 1 else t)


def compact_training_state(src: Path, dst: Path, keep_optimizer: bool = False) -> None:
    """A copy of a training state small enough to commit: the weights in bfloat16 (half the size), step and RNG
    states as they are, and the optimiser's moments only with `keep_optimizer` (in bfloat16, whose float32 range
    keeps Adam's second moments from underflowing as in float16). Without them a resumed run restarts Adam's
    moments (and its bias correction) from zero at the saved step and learning rate: a warm restart. Either way
    it continues from weights rounded to bfloat16 (`load_into` casts back to float32): close to, not
    bit-identical with, the uninterrupted run. (At vocabulary 16384 the full state is 135 MB, the moments in
    bfloat16 add 47 MB, the weights alone are 24 MB.)"""
    state = load_torch_file(Path(src))
    _check_keys(state, Path(src))
    small = {**state, "opt": _compact(state["opt"]) if keep_optimizer else None}
    small["model"] = _compact(state["model"])
    atomic_torch_save(small, Path(dst))


if __name__ == "__main__":
    import sys

    ap = argparse.ArgumentParser(prog="python -m models.training",
                                 description="compact SRC DST: a bfloat16 copy of a training state (to commit)")
    ap.add_argument("command", choices=["compact"])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--keep-optimizer", action="store_true", help="keep Adam's moments too (about 3x the size)")
    a = ap.parse_args(sys.argv[1:])
    compact_training_state(Path(a.src), Path(a.dst), a.keep_optimizer)
    sizes = [Path(p).stat().st_size / 2**20 for p in (a.src, a.dst)]
    print(f"{a.src} ({sizes[0]:.1f} MiB) -> {a.dst} ({sizes[1]:.1f} MiB)")
