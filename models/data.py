"""Fashion-MNIST (Zalando SE, MIT licence): the full set from Debian's `dataset-fashion-mnist`,
or the small subset shipped in `assets/` so tests and hosted demos need no apt.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
SUBSET_PATH = Path(__file__).resolve().parent.parent / "assets" / "fashion_mnist_subset.npz"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _read_gzip(path: Path) -> bytes:
    try:
        with gzip.open(path) as f:
            return f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable gzip file (truncated or corrupt?): {e}") from e


def read_idx_images(path: Path) -> np.ndarray:
    raw = _read_gzip(path)
    if len(raw) < 16 or int.from_bytes(raw[:4], "big") != 2051:
        raise ValueError(f"{path}: not an IDX image file (bad magic number)")
    n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    if len(raw) != 16 + n * rows * cols:
        raise ValueError(f"{path}: truncated: header says {n} images of {rows}x{cols}, file has {len(raw) - 16} bytes")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols)


def read_idx_labels(path: Path) -> np.ndarray:
    raw = _read_gzip(path)
    if len(raw) < 8 or int.from_bytes(raw[:4], "big") != 2049:
        raise ValueError(f"{path}: not an IDX label file (bad magic number)")
    n = int.from_bytes(raw[4:8], "big")
    if len(raw) != 8 + n:
        raise ValueError(f"{path}: truncated: header says {n} labels, file has {len(raw) - 8} bytes")
    return np.frombuffer(raw, np.uint8, offset=8)


def load_fashion_mnist(split: str = "train", source: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] and labels int64 [N].

    source: "debian" (full set; `apt-get install dataset-fashion-mnist`), "subset" (the shipped
    subset in assets/) or "auto" (Debian when installed, else the subset).
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if source not in ("auto", "debian", "subset"):
        raise ValueError(f"source must be 'auto', 'debian' or 'subset', got {source!r}")
    img_file, lbl_file = (DEBIAN_DIR / f for f in _FILES[split])
    if source == "debian" or (source == "auto" and img_file.exists()):
        if not img_file.exists():
            raise FileNotFoundError(f"{img_file} not found: run `apt-get install dataset-fashion-mnist`")
        images, labels = read_idx_images(img_file), read_idx_labels(lbl_file)
        if len(images) != len(labels):
            raise ValueError(f"{img_file}: {len(images)} images but {len(labels)} labels")
        return images, labels.astype(np.int64)
    return load_subset(split)


def load_subset(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    with np.load(SUBSET_PATH) as z:
        return z[f"{split}_images"], z[f"{split}_labels"].astype(np.int64)


def to_model_range(images: np.ndarray):
    """uint8 [N, 28, 28] -> float tensor [N, 1, 28, 28] in [-1, 1]."""
    import torch

    return torch.from_numpy(images).float().div(127.5).sub(1.0).unsqueeze(1)
