"""The model core against the official LlamaGen code's golden outputs, and its interface."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.checkpoint import load_into, read_state_dict
from models.gpt import CPU_KERNELS, GPT, GPTConfig, gpt_config, linear
from models.interface import ARImageModel
from models.vq import VQConfig, VQModel, vq_config

FIX = Path(__file__).parent / "fixtures" / "llamagen"
ATOL = 2e-5


@pytest.fixture(scope="module")
def golden():
    return torch.load(FIX / "golden_tiny.pt", weights_only=True)


def load_fixture(model, filename: str):
    sd, _ = read_state_dict(FIX / filename)
    load_into(model, sd, FIX / filename)
    return model.eval()


@pytest.fixture(scope="module")
def gpt(golden):
    return load_fixture(GPT(GPTConfig.from_dict(golden["config_gpt"])), "gpt_tiny.pt")


@pytest.fixture(scope="module")
def vq(golden):
    return load_fixture(VQModel(VQConfig.from_dict(golden["config_vq"])), "vq_tiny.pt")


@torch.no_grad()
def test_teacher_forced_logits_match_official(gpt, golden):
    logits = gpt(golden["labels"], golden["tokens"][:, :-1])
    assert logits.shape == golden["logits_full_nocache"].shape
    torch.testing.assert_close(logits, golden["logits_full_nocache"], atol=ATOL, rtol=0)


def cfg_batch(golden):
    labels = torch.cat([golden["labels"], torch.full_like(golden["labels"], golden["config_gpt"]["num_classes"])])
    return labels, torch.cat([golden["tokens"], golden["tokens"]])


@torch.no_grad()
def test_cached_one_token_decoding_matches_official(gpt, golden):
    labels, tokens = cfg_batch(golden)
    gpt.setup_cache(4)
    rows = [gpt.forward_cached(torch.tensor([0]), labels=labels)[:, -1]]
    for i in range(tokens.shape[1] - 1):
        rows.append(gpt.forward_cached(torch.tensor([i + 1]), tokens=tokens[:, i:i + 1])[:, -1])
    torch.testing.assert_close(torch.stack(rows, 1), golden["logits_cached_cfgbatch"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_cached_multi_token_windows_match_official(gpt, golden):
    labels, tokens = cfg_batch(golden)
    gpt.setup_cache(4)
    rows = [gpt.forward_cached(torch.tensor([0]), labels=labels)]
    for start, length in ((0, 5), (5, 10)):
        pos = torch.arange(start, start + length) + 1
        rows.append(gpt.forward_cached(pos, tokens=tokens[:, start:start + length]))
    torch.testing.assert_close(torch.cat(rows, 1), golden["logits_cached_window"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_vq_decode_encode_match_official(vq, golden):
    torch.testing.assert_close(vq.decode_code(golden["vq_codes"]), golden["vq_decoded"], atol=ATOL, rtol=0)
    quant, codes, _ = vq.encode(golden["vq_input"])
    torch.testing.assert_close(quant, golden["vq_quant"], atol=ATOL, rtol=0)
    assert torch.equal(codes, golden["vq_encoded_codes"])
    torch.testing.assert_close(vq.quantize.codebook(), golden["vq_codebook_l2norm"], atol=1e-6, rtol=0)


def test_windowed_forward_equals_full_forward_for_random_windows(gpt, vq, golden):
    """Through the decoder interface, with CFG: random window partitions, and windows that
    first write garbage drafts which a later window overwrites."""
    model = ARImageModel(gpt, vq, "tiny")
    gen = torch.Generator().manual_seed(0)
    n, scale = model.info.num_tokens, 3.0
    for trial in range(6):
        label = int(torch.randint(0, 10, (1,), generator=gen))
        tokens = torch.randint(0, model.info.vocab_size, (n,), generator=gen)
        with torch.no_grad():
            both = gpt(torch.tensor([label, 10]), torch.stack([tokens[:-1], tokens[:-1]]))
        expected = both[1] + (both[0] - both[1]) * scale  # [N, V]
        got = [model.prefill(label, scale).view(1, -1)]
        start = 0
        while start < n - 1:
            length = int(torch.randint(1, n - start, (1,), generator=gen))
            if trial % 2:  # write rejected drafts beyond the window first: must be harmless
                junk = torch.randint(0, model.info.vocab_size, (n - start,), generator=gen)
                model.forward_window(torch.cat([tokens[start:start + 1], junk[1:]]), start)
            got.append(model.forward_window(tokens[start:start + length], start))
            start += length
        torch.testing.assert_close(torch.cat(got)[:n], expected, atol=5e-5, rtol=0)


def test_interface_errors_are_specific(gpt, vq):
    model = ARImageModel(gpt, vq, "tiny")
    with pytest.raises(RuntimeError, match="prefill"):
        ARImageModel(gpt, vq, "fresh").forward_window(torch.tensor([1]), 0)
    with pytest.raises(ValueError, match="cfg_scale must be >= 1"):
        model.prefill(0, 0.5)
    with pytest.raises(ValueError, match="class label"):
        model.prefill(10, 2.0)
    model.prefill(1, 2.0)
    with pytest.raises(ValueError, match="batch size 1"):
        model.forward_window(torch.zeros(2, 3, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="outside the token grid"):
        model.forward_window(torch.zeros(5, dtype=torch.long), 13)


def test_embeddings_and_pixels(gpt, vq, golden):
    model = ARImageModel(gpt, vq, "tiny")
    assert model.codebook_embeddings().shape == (64, 8)
    torch.testing.assert_close(model.codebook_embeddings(), golden["vq_codebook_l2norm"], atol=1e-6, rtol=0)
    assert model.token_embeddings().shape == (64, 64)
    img = model.decode_tokens(golden["vq_codes"][0].flatten())
    assert img.shape == (8, 8, 3) and img.dtype.name == "uint8"
    expected = ((golden["vq_decoded"][0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).byte().numpy()
    assert abs(img.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("preset,manifest", [("GPT-B", "manifest_gpt_b_c2i_256.json")])
def test_official_gpt_manifest_loads_strictly(preset, manifest):
    names = json.loads((FIX / manifest).read_text())
    with torch.device("meta"):
        model = GPT(gpt_config(preset))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == names


def test_official_vq16_manifest_loads_strictly():
    names = json.loads((FIX / "manifest_vq_16.json").read_text())
    with torch.device("meta"):
        model = VQModel(vq_config("VQ-16"))
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == names


@pytest.mark.parametrize("preset,params_m", [("GPT-B", 111), ("GPT-L", 343), ("GPT-XL", 775), ("GPT-XXL", 1400),
                                             ("GPT-XXXL", 3900)])
def test_presets_have_official_sizes(preset, params_m):
    with torch.device("meta"):
        model = GPT(gpt_config(preset))
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n - params_m) / params_m < 0.05, n


def test_config_validation():
    with pytest.raises(ValueError, match="square"):
        GPTConfig(block_size=15)
    with pytest.raises(ValueError, match="unknown GPT config fields"):
        GPTConfig.from_dict({"dim": 8, "n_heads": 2})
    with pytest.raises(ValueError, match="unknown GPT preset"):
        gpt_config("GPT-Q")


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 32, 64])
def test_cpu_linear_kernels_equal_f_linear_and_follow_weight_changes(rows):
    """The cached forward's matrix products (W x^T for few rows, prepacked oneDNN for more) are
    F.linear up to float32 rounding, and never use a stale packed weight."""
    torch.manual_seed(rows)
    layer = torch.nn.Linear(48, 80, bias=False)
    x = torch.randn(2, rows, 48)[:1] if rows % 2 else torch.randn(2, rows // 2, 48)
    with torch.no_grad():
        torch.testing.assert_close(linear(x, layer), F.linear(x, layer.weight), atol=1e-5, rtol=1e-5)
        layer.weight.mul_(-2.0)  # in place: the packed copy must be rebuilt
        torch.testing.assert_close(linear(x, layer), F.linear(x, layer.weight), atol=1e-5, rtol=1e-5)
        layer.load_state_dict({"weight": torch.randn(80, 48)})
        torch.testing.assert_close(linear(x, layer), F.linear(x, layer.weight), atol=1e-5, rtol=1e-5)
        layer.weight = torch.nn.Parameter(torch.randn(80, 48))  # replaced
        torch.testing.assert_close(linear(x, layer), F.linear(x, layer.weight), atol=1e-5, rtol=1e-5)
    assert linear(x, layer).requires_grad  # with autograd on, plain F.linear


@torch.no_grad()
def test_cached_forward_is_the_same_with_plain_kernels(gpt, golden, monkeypatch):
    labels, tokens = cfg_batch(golden)
    results = []
    for onednn in (True, False):
        monkeypatch.setitem(CPU_KERNELS, "onednn_windows", onednn)
        gpt.setup_cache(4)
        rows = [gpt.forward_at(0, labels=labels)]
        for start, length in ((0, 6), (6, 9)):
            rows.append(gpt.forward_at(1 + start, tokens=tokens[:, start:start + length]))
        results.append(torch.cat(rows, 1))
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(results[0], golden["logits_cached_window"], atol=ATOL, rtol=0)


def test_cached_forward_errors_are_specific(golden):
    fresh = GPT(GPTConfig.from_dict(golden["config_gpt"])).eval()
    with pytest.raises(RuntimeError, match="setup_cache"):
        fresh.forward_at(0, labels=torch.tensor([1]))
    fresh.setup_cache(1)
    with pytest.raises(ValueError, match="consecutive"):
        fresh.forward_cached(torch.tensor([1, 3]), tokens=torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="beyond the model's sequence length"):
        fresh.forward_at(16, tokens=torch.zeros(1, 2, dtype=torch.long))
