"""Models by name: the bundled model samples reproducibly; hub models fail clearly offline."""
from __future__ import annotations

import pytest
import torch

from decoding.registry import make_decoder
from decoding.sampling import SamplingSettings
from models import registry


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'gpt-5'.*fashion-mnist"):
        registry.load_model("gpt-5")


def test_hub_model_offline_says_which_files_to_place_where(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECLENS_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(registry.ModelUnavailable) as err:
        registry.load_model("llamagen-c2i-B-256")
    msg = str(err.value)
    assert "c2i_B_256.pt" in msg and "vq_ds16_c2i.pt" in msg and str(tmp_path) in msg


def test_local_hub_file_with_wrong_shapes_names_file_and_key(tmp_path, monkeypatch):
    """A mismatched checkpoint placed under an official name fails on the first bad key."""
    monkeypatch.setenv("SPECLENS_WEIGHTS_DIR", str(tmp_path))
    tiny = torch.load(registry.FIXTURES / "gpt_tiny.pt", weights_only=True)
    torch.save(tiny, tmp_path / "c2i_B_256.pt")
    torch.save(torch.load(registry.FIXTURES / "vq_tiny.pt", weights_only=True), tmp_path / "vq_ds16_c2i.pt")
    with pytest.raises(ValueError, match=r"c2i_B_256.pt: shape mismatch at 'cls_embedding.embedding_table.weight'"):
        registry.load_model.__wrapped__("llamagen-c2i-B-256")


def test_tiny_fixture_model_loads():
    model = registry.load_model("tiny-fixture")
    assert model.info.grid_shape == (4, 4) and model.info.vocab_size == 64


@pytest.fixture(scope="module")
def bundled():
    return registry.load_model(registry.DEFAULT_MODEL)


def test_bundled_model_shapes(bundled):
    info = bundled.info
    assert info.grid_shape == (14, 14) and info.num_tokens == 196
    assert info.vocab_size >= 1024 and info.num_classes == 10 and info.class_names[0] == "T-shirt/top"
    assert bundled.codebook_embeddings().shape[0] == info.vocab_size


def test_bundled_sampling_shape_and_reproducible_per_seed(bundled):
    ar = make_decoder("ar")
    settings = SamplingSettings(cfg_scale=4.0)
    a = ar.generate(bundled, 7, settings, seed=3)
    b = ar.generate(bundled, 7, settings, seed=3)
    c = ar.generate(bundled, 7, settings, seed=4)
    assert a.image.shape == (28, 28, 3) and a.tokens.shape == (196,)
    assert torch.equal(a.tokens, b.tokens) and (a.image == b.image).all()
    assert not torch.equal(a.tokens, c.tokens)
    assert a.trace.tokens == b.trace.tokens and a.trace.commit_p == b.trace.commit_p
