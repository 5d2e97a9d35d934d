"""Fetch the official LlamaGen weights of a registered model from the Hugging Face Hub
(`FoundationVision/LlamaGen`) into the weights folder, so that the server never has to:

    python -m models.download llamagen-c2i-B-256 [--weights-dir DIR]
    python -m models.download --list

DIR defaults to `$SPECLENS_WEIGHTS_DIR` (else `~/.cache/speclens/llamagen`), where
`models.registry` looks for them. A server downloads by itself only with `SPECLENS_ALLOW_DOWNLOAD=1`.
Files already there are kept; each downloaded file is checked (`inspect_torch_file`) before use.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models import registry
from models.checkpoint import inspect_torch_file


def fetch_file(filename: str, directory: Path) -> Path:
    """Download one file of the Hub repository into `directory` (created if needed); its local path."""
    from huggingface_hub import hf_hub_download

    directory.mkdir(parents=True, exist_ok=True)
    path = Path(hf_hub_download(registry.HUB_REPO, filename, local_dir=directory))
    inspect_torch_file(path)
    return path


def download_model(name: str, directory: Path | None = None) -> list[Path]:
    """The model's files in `directory`, downloading the missing ones."""
    if name not in registry.MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(registry.MODELS)}")
    spec = registry.MODELS[name]
    if spec.source != "hub":
        raise ValueError(f"model {name!r} ships with SpecLens ({spec.source}); there is nothing to download")
    directory = directory or registry.weights_dir()
    files = dict.fromkeys((spec.gpt_file, spec.vq_file))
    return [directory / f if (directory / f).is_file() else fetch_file(f, directory) for f in files]


def listing(directory: Path) -> str:
    rows = []
    for name, spec in registry.MODELS.items():
        if spec.source == "hub":
            missing = registry.missing_files(name, directory)
            state = f"missing {', '.join(missing)}" if missing else "present"
            rows.append(f"{name:22s} {spec.gpt_file} + {spec.vq_file}: {state}")
    return f"LlamaGen weights in {directory}:\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.download", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    hub = [n for n, s in registry.MODELS.items() if s.source == "hub"]
    ap.add_argument("name", nargs="?", choices=hub, help="the model to download")
    ap.add_argument("--weights-dir", type=Path, default=None, help="target folder (default: $SPECLENS_WEIGHTS_DIR)")
    ap.add_argument("--list", action="store_true", help="list the LlamaGen models and which files are present")
    a = ap.parse_args(argv)
    directory = (a.weights_dir or registry.weights_dir()).expanduser()
    if a.list or not a.name:
        print(listing(directory))
        return 0
    for path in download_model(a.name, directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
