"""A small Fashion-MNIST CNN, shipped with the bundled model to score generated samples
(class-consistency: the share of samples it assigns to the requested class) and to give
features for distribution metrics.

    python -m models.classifier --out assets/fashion_mnist_classifier.pt
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import load_into, read_state_dict, save_checkpoint
from models.data import load_fashion_mnist


class FashionClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)
        self.dropout = nn.Dropout(0.3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 1, 28, 28] in [0, 1] -> [B, 128] penultimate features."""
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)  # [B, 32, 14, 14]
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # [B, 64, 7, 7]
        h = F.relu(self.conv3(h))
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.features(x)))


def images_to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] or [N, 28, 28, C] -> float [N, 1, 28, 28] in [0, 1] (channels averaged)."""
    x = torch.tensor(np.asarray(images)).float() / 255.0  # a copy: decoded images may be read-only views
    if x.dim() == 4:
        x = x.mean(-1)
    if x.dim() != 3 or tuple(x.shape[1:]) != (28, 28):
        raise ValueError(f"the classifier takes 28x28 images, got shape {list(x.shape)}")
    return x.unsqueeze(1)


class Classifier:
    """Callable wrapper: uint8 images -> predicted labels (and features)."""

    def __init__(self, net: FashionClassifier):
        self.net = net.eval()

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.net(images_to_input(images)).argmax(-1).numpy()

    @torch.inference_mode()
    def features(self, images: np.ndarray) -> np.ndarray:
        return self.net.features(images_to_input(images)).numpy()

    __call__ = predict


def load_classifier(path: str | Path) -> Classifier:
    sd, _ = read_state_dict(path)
    net = FashionClassifier()
    load_into(net, sd, path)
    return Classifier(net)


def train(out: Path, epochs: int, seed: int, source: str, threads: int) -> dict:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    x_tr, y_tr = load_fashion_mnist("train", source)
    x_te, y_te = load_fashion_mnist("test", source)
    xt, yt = images_to_input(x_tr), torch.from_numpy(y_tr)
    net = FashionClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(xt), generator=gen).split(128):
            loss = F.cross_entropy(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    acc = float((Classifier(net).predict(x_te) == y_te).mean())
    meta = {"kind": "classifier", "test_accuracy": round(acc, 4), "epochs": epochs,
            "train_seconds": round(time.time() - t0, 1), "train_images": len(xt)}
    save_checkpoint(out, net, meta=meta, half=True)
    return meta


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Train the Fashion-MNIST classifier used for sample quality.")
    ap.add_argument("--out", default="assets/fashion_mnist_classifier.pt")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--source", default="auto", choices=["auto", "debian", "subset"])
    a = ap.parse_args()
    print(json.dumps(train(Path(a.out), a.epochs, a.seed, a.source, a.threads)))
