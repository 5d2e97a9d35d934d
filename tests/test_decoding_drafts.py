"""Draft initialisation and the cached nearest-code lists / distance quantiles."""
from __future__ import annotations

import pytest
import torch
from decoding_helpers import random_tiny_model

from decoding import neighbours as nb
from decoding.drafts import initial_drafts


def test_random_drafts_are_in_the_vocabulary():
    d = initial_drafts("random", torch.tensor([1, 2]), 50, 4, 7, torch.Generator().manual_seed(0))
    assert d.shape == (50,) and d.min() >= 0 and d.max() < 7


def test_horizontal_repeats_the_left_neighbour():
    # 4 x 4 grid, positions 0..5 known; new slots 6..13 (row 1: 6, 7; row 2: 8..11; row 3: 12, 13)
    known = torch.tensor([10, 11, 12, 13, 14, 15])
    g = torch.Generator().manual_seed(0)
    d = initial_drafts("horizontal", known, 8, 4, 64, g)
    rand = torch.randint(64, (8,), generator=torch.Generator().manual_seed(0))
    assert d[:2].tolist() == [15, 15]  # 6, 7 repeat position 5
    assert d[2:6].tolist() == [int(rand[2])] * 4  # row 2 starts random (slot index 2 = position 8)
    assert d[6:].tolist() == [int(rand[6])] * 2  # row 3 starts random (slot 6 = position 12)


def test_vertical_repeats_the_upper_neighbour():
    known = torch.tensor([10, 11, 12, 13, 14, 15])  # positions 0..5 on a 4-wide grid
    g = torch.Generator().manual_seed(0)
    d = initial_drafts("vertical", known, 10, 4, 64, g)  # positions 6..15
    assert d.tolist() == [12, 13, 14, 15, 12, 13, 14, 15, 12, 13]  # chains of upper neighbours
    d = initial_drafts("vertical", torch.tensor([7]), 5, 4, 64, torch.Generator().manual_seed(1))
    rand = torch.randint(64, (5,), generator=torch.Generator().manual_seed(1))
    assert d.tolist() == [int(rand[0]), int(rand[1]), int(rand[2]), 7, int(rand[0])]  # row 0 is random


def test_unknown_init_is_an_error():
    with pytest.raises(ValueError, match="draft init"):
        initial_drafts("diagonal", torch.tensor([1]), 2, 2, 4, torch.Generator())


def test_nearest_codes_match_brute_force_in_chunks(monkeypatch):
    table = torch.randn(100, 5, generator=torch.Generator().manual_seed(0))
    full = torch.cdist(table, table)
    full.fill_diagonal_(float("inf"))
    monkeypatch.setattr(nb, "CHUNK_ROWS", 16)
    seen_rows = []
    cdist = torch.cdist
    monkeypatch.setattr(nb.torch, "cdist", lambda a, b: seen_rows.append(len(a)) or cdist(a, b))
    lists = nb.nearest_codes(table, 7)
    assert lists.dtype == torch.int32 and lists.shape == (100, 7)
    assert torch.equal(lists.long(), full.argsort(1)[:, :7])
    assert max(seen_rows) <= 16  # never more than a chunk of rows against the table


def test_neighbour_lists_are_cached_per_model_and_sliced():
    nb.clear_cache()
    model = random_tiny_model(vocab=16, grid=2)
    a = nb.neighbour_lists(model, "vq", 5, False)
    assert nb.neighbour_lists(model, "vq", 5, False) is a
    b = nb.neighbour_lists(model, "vq", 3, False)
    assert torch.equal(b, a[:, :3])
    other = random_tiny_model(vocab=16, grid=2, seed=3)
    assert not torch.equal(nb.neighbour_lists(other, "vq", 5, False), a)
    raw = nb.neighbour_lists(model, "raw", 3, False)  # the un-normalised codebook, LANTERN's official space
    raw_table = model.raw_codebook_embeddings()
    brute = torch.cdist(raw_table, raw_table).fill_diagonal_(float("inf")).topk(3, largest=False).indices
    assert torch.equal(raw.long(), brute)

    class NoRaw:
        info = model.info
        codebook_embeddings = model.codebook_embeddings

    with pytest.raises(ValueError, match="raw_codebook_embeddings"):
        nb.neighbour_lists(NoRaw(), "raw", 3, False)


def test_distance_quantile_matches_the_pairwise_distribution():
    model = random_tiny_model(vocab=16, grid=2)
    table = model.token_embeddings()
    d2 = torch.cdist(table, table).pow(2)
    pairs = d2[torch.triu_indices(16, 16, offset=1).unbind()]
    for quantile in (0.05, 0.5, 1.0):
        threshold = nb.distance_quantile(model, "gpt", quantile)
        share = (pairs < threshold).float().mean()
        assert abs(share - quantile) <= 1.0 / len(pairs) + 1e-6
    sampled = nb.pairwise_sq_distances(torch.randn(3000, 4), max_pairs=1000)
    assert sampled.shape == (1000,) and (sampled > 0).all()  # sampled pairs, never i == j
