"""Fit and ship the UMAP projections of a bundled model's two embedding spaces (VQ codebook, GPT token
embeddings) into `assets/projections`, so the app's Codebook tab never pays UMAP's first fit (~20 s of
numba compilation, then ~1-3 min for 16384 codes on one core) when it serves that model.

    python scripts/ship_projections.py fashion-mnist fashion-mnist-16k

A developer's command: the app itself only reads `assets/projections` and caches elsewhere. A projection
is keyed by the embeddings' fingerprint, so new weights need a new run of this script.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis import codebook  # noqa: E402
from models.registry import MODELS, load_model  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="bundled model names")
    ap.add_argument("--out", default=str(codebook.SHIPPED), help="folder of shipped projections")
    ap.add_argument("--method", default="umap", choices=sorted(codebook.METHODS))
    a = ap.parse_args(argv)
    bundled = [n for n, spec in MODELS.items() if spec.source == "bundled"]
    unknown = [name for name in a.models if name not in bundled]
    if unknown:
        ap.error(f"{unknown[0]!r} is not a bundled model (choose from {', '.join(bundled)})")
    for name in a.models:
        model = load_model(name)
        for space, emb in (("vq", model.codebook_embeddings()), ("gpt", model.token_embeddings())):
            emb = emb.float().numpy()
            t0 = time.time()
            xy = codebook.METHODS[a.method](emb)
            path = Path(a.out) / codebook.ProjectionStore.filename(name, space, a.method)
            codebook.save_projection(path, xy, emb, a.method, space)
            print(f"{name} {space}: {len(emb)} codes, {time.time() - t0:.0f} s -> {path}")


if __name__ == "__main__":
    main()
