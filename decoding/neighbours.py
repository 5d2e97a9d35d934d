"""Latent proximity: embedding tables, top-k nearest-code lists and distance quantiles, cached per model.

Two embedding spaces, both read through the model interface:
- "vq": the VQ codebook as the image decoder uses it (`codebook_embeddings()`, l2-normalised in
  LlamaGen): LANTERN's space;
- "gpt": the GPT's input token embeddings (`token_embeddings()`): GSD's space in the official code.
"raw" is the un-normalised codebook (the official LANTERN code measures distances there); it needs
the model to provide `raw_codebook_embeddings()`.

Nothing here builds a V x V table: neighbour lists are computed a chunk of rows at a time and only
their top-k survive ([V, k] int32, e.g. 16384 x 10); the distance quantile is computed from at most
`MAX_PAIRS` pairwise distances (all pairs when V is small, a fixed random sample otherwise).
Results are cached per model object (weakly, so a model's cache goes when the model goes) and key.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F

SPACES = ("vq", "gpt", "raw")
CHUNK_ROWS = 1024
MAX_PAIRS = 1 << 20
PAIR_CHUNK = 8192
MAX_TABLE_CODES = 4096  # a [V, V] float32 distance table up to 64 MiB
TABLE_CHUNK_ELEMENTS = 1 << 24  # [rows, V, D] differences built at once for that table (64 MiB)

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CACHE_BY_ID: dict[int, dict] = {}  # for model objects that cannot be weakly referenced


def _model_cache(model: Any) -> dict:
    try:
        return _CACHE.setdefault(model, {})
    except TypeError:
        return _CACHE_BY_ID.setdefault(id(model), {})


def clear_cache() -> None:
    _CACHE.clear()
    _CACHE_BY_ID.clear()


def embedding_table(model: Any, space: str, l2_normalise: bool = False) -> torch.Tensor:
    """[V, D] float32 CPU embeddings of every token in `space`, optionally l2-normalised; cached."""
    if space not in SPACES:
        raise ValueError(f"embedding space must be one of {SPACES}, got {space!r}")
    cache = _model_cache(model)
    key = ("table", space, l2_normalise)
    if key not in cache:
        if space == "raw" and not hasattr(model, "raw_codebook_embeddings"):
            raise ValueError("embedding space 'raw' needs a model with raw_codebook_embeddings() "
                             "(the un-normalised VQ codebook); use 'vq' (the codebook as the decoder sees it)")
        getter = {"vq": "codebook_embeddings", "gpt": "token_embeddings", "raw": "raw_codebook_embeddings"}[space]
        table = getattr(model, getter)().detach().float().cpu()  # [V, D]
        cache[key] = F.normalize(table, dim=-1) if l2_normalise else table
    return cache[key]


def nearest_codes(table: torch.Tensor, k: int) -> torch.Tensor:
    """[V, D] -> [V, k] int32: each row's k nearest other rows by L2 distance, nearest first.

    Computed CHUNK_ROWS rows at a time ([chunk, V] distances), never the whole V x V table.
    """
    vocab = table.shape[0]
    if not 0 <= k < vocab:
        raise ValueError(f"need 0 <= k < vocabulary size {vocab}, got k={k}")
    if k == 0:
        return torch.empty(vocab, 0, dtype=torch.int32)
    out = torch.empty(vocab, k, dtype=torch.int32)
    for lo in range(0, vocab, CHUNK_ROWS):
        rows = torch.arange(lo, min(lo + CHUNK_ROWS, vocab))
        d2 = torch.cdist(table[rows], table).pow(2)  # [chunk, V]
        d2[torch.arange(len(rows)), rows] = float("inf")  # exclude the code itself
        out[lo:lo + len(rows)] = torch.topk(d2, k, dim=1, largest=False, sorted=True).indices.to(torch.int32)
    return out


def neighbour_lists(model: Any, space: str, k: int, l2_normalise: bool) -> torch.Tensor:
    """[V, k] int32 nearest codes of every code (self excluded), cached; a cached longer list is sliced."""
    cache = _model_cache(model)
    for key, value in cache.items():
        if key[:3] == ("neighbours", space, l2_normalise) and key[3] >= k:
            return value if key[3] == k else value[:, :k]
    lists = nearest_codes(embedding_table(model, space, l2_normalise), k)
    cache[("neighbours", space, l2_normalise, k)] = lists
    return lists


def pairwise_sq_distances(table: torch.Tensor, max_pairs: int = MAX_PAIRS, seed: int = 0) -> torch.Tensor:
    """Squared L2 distances of distinct pairs i < j: all of them if there are at most max_pairs,
    else max_pairs pairs drawn uniformly with a fixed seed (an estimate of the distribution)."""
    vocab = table.shape[0]
    if vocab * (vocab - 1) // 2 <= max_pairs:
        i, j = torch.triu_indices(vocab, vocab, offset=1)
    else:
        gen = torch.Generator().manual_seed(seed)
        i = torch.randint(vocab, (max_pairs,), generator=gen)
        j = (i + torch.randint(1, vocab, (max_pairs,), generator=gen)) % vocab  # j != i
    parts = [(table[i[s:s + PAIR_CHUNK]] - table[j[s:s + PAIR_CHUNK]]).pow(2).sum(-1)  # [chunk]
             for s in range(0, len(i), PAIR_CHUNK)]
    return torch.cat(parts)


def distance_quantile(model: Any, space: str, quantile: float) -> float:
    """The `quantile` of the squared L2 distances between distinct codes in `space`; cached."""
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"distance quantile must be in (0, 1], got {quantile}")
    cache = _model_cache(model)
    key = ("quantile", space, quantile)
    if key not in cache:
        d2 = torch.sort(pairwise_sq_distances(embedding_table(model, space))).values
        cache[key] = float(d2[min(len(d2) - 1, int(quantile * len(d2)))])
    return cache[key]


def sq_distance_table(model: Any, space: str) -> torch.Tensor | None:
    """[V, V] float32 squared L2 distances between all codes in `space` (row x, column m:
    sum((e_m - e_x)^2), the numbers GSD's filter computes per group), cached; None above
    MAX_TABLE_CODES codes, where the table would be too large and the filter computes them per pass."""
    table = embedding_table(model, space)
    if len(table) > MAX_TABLE_CODES:
        return None
    cache = _model_cache(model)
    key = ("sq_distances", space)
    if key not in cache:
        # a few rows at a time: [V, V, D] differences at once would be 1 GiB for V = 1024, D = 256 (and slow)
        rows = max(1, TABLE_CHUNK_ELEMENTS // table.numel())
        cache[key] = torch.cat([(table[None, :, :] - table[s:s + rows, None, :]).square().sum(-1)  # [rows, V]
                                for s in range(0, len(table), rows)])
    return cache[key]
