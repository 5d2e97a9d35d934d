"""Checkpoint formats that must load, and bad files that must fail with a specific message."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models.checkpoint import CheckpointError, load_into, read_state_dict, save_checkpoint
from models.gpt import GPT, gpt_config
from models.registry import build_gpt

FIX = Path(__file__).parent / "fixtures" / "llamagen"
TINY = dict(vocab_size=64, num_classes=10, block_size=16)


@pytest.fixture(scope="module")
def official_sd():
    return torch.load(FIX / "gpt_tiny.pt", weights_only=True)["model"]  # fp16, official layout


def reference(official_sd) -> dict:
    return {k: v.float() for k, v in official_sd.items()}


@pytest.mark.parametrize("wrap", ["model", "module", "state_dict", None, "ddp-prefix"])
def test_wrappers_load(tmp_path, official_sd, wrap):
    if wrap == "ddp-prefix":
        obj = {"model": {f"module.{k}": v for k, v in official_sd.items()}}
    else:
        obj = {wrap: official_sd, "epoch": 3} if wrap else dict(official_sd)
    torch.save(obj, tmp_path / "ck.pt")
    sd, _ = read_state_dict(tmp_path / "ck.pt")
    assert all(v.dtype == torch.float32 for v in sd.values())
    gpt = GPT(gpt_config("GPT-tiny", **TINY))
    load_into(gpt, sd, "ck.pt")
    for k, v in gpt.state_dict().items():
        assert torch.equal(v, reference(official_sd)[k])


def test_bf16_and_safetensors(tmp_path, official_sd):
    torch.save({"model": {k: v.to(torch.bfloat16) for k, v in official_sd.items()}}, tmp_path / "bf16.pt")
    sd, _ = read_state_dict(tmp_path / "bf16.pt")
    assert sd["tok_embeddings.weight"].dtype == torch.float32
    save_file(dict(official_sd), str(tmp_path / "w.safetensors"))
    sd, _ = read_state_dict(tmp_path / "w.safetensors")
    assert torch.equal(sd["output.weight"], official_sd["output.weight"].float())


def test_kv_cache_buffers_saved_by_official_code_are_ignored(tmp_path, official_sd):
    sd = dict(official_sd)
    sd["layers.0.attention.kv_cache.k_cache"] = torch.zeros(2, 4, 24, 16)
    torch.save({"model": sd}, tmp_path / "ck.pt")
    loaded, _ = read_state_dict(tmp_path / "ck.pt")
    load_into(GPT(gpt_config("GPT-tiny", **TINY)), loaded, "ck.pt")


def test_our_checkpoint_round_trips_with_config(tmp_path):
    gpt = GPT(gpt_config("GPT-tiny", **TINY))
    save_checkpoint(tmp_path / "ours.pt", gpt, meta={"config": gpt.config.to_dict()}, half=False)
    raw = torch.load(tmp_path / "ours.pt", weights_only=True)
    assert set(raw) == {"model", "speclens"}  # official loaders read checkpoint["model"]
    again = build_gpt(tmp_path / "ours.pt")
    for k, v in gpt.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_truncated_file_names_the_file(tmp_path):
    data = (FIX / "gpt_tiny.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt.*truncated"):
        read_state_dict(tmp_path / "cut.pt")
    save_file({"a": torch.zeros(100)}, str(tmp_path / "w.safetensors"))
    blob = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(blob[:-50])
    with pytest.raises(CheckpointError, match="w.safetensors"):
        read_state_dict(tmp_path / "w.safetensors")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_state_dict(tmp_path / "empty.pt")


class Payload:
    """Stands for arbitrary pickled code in a checkpoint from the web."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"model": {"w": torch.zeros(1)}, "payload": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt.*weights-only"):
        read_state_dict(tmp_path / "evil.pt")


def test_mismatch_names_first_key_and_shape(official_sd):
    sd = reference(official_sd)
    with pytest.raises(CheckpointError, match=r"shape mismatch at 'cls_embedding.embedding_table.weight'.*\[11, 64\]"):
        load_into(GPT(gpt_config("GPT-tiny", vocab_size=64, num_classes=20, block_size=16)), sd, "tiny.pt")
    sd.pop("layers.1.ffn_norm.weight")
    with pytest.raises(CheckpointError, match="missing key 'layers.1.ffn_norm.weight'"):
        load_into(GPT(gpt_config("GPT-tiny", **TINY)), sd, "tiny.pt")
    sd = {**reference(official_sd), "extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="unexpected key 'extra.weight'"):
        load_into(GPT(gpt_config("GPT-tiny", **TINY)), sd, "tiny.pt")


def test_not_a_state_dict(tmp_path):
    torch.save({"model": {"epoch": 3}}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="no tensors"):
        read_state_dict(tmp_path / "odd.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        read_state_dict(tmp_path / "list.pt")


def test_vq_checkpoint_wrong_model_type():
    """A VQ file given where a GPT is expected: the first mismatched key is named."""
    from models.vq import VQConfig, VQModel

    sd, _ = read_state_dict(FIX / "vq_tiny.pt")
    with pytest.raises(CheckpointError, match="missing key"):
        load_into(GPT(gpt_config("GPT-tiny", **TINY)), sd, "vq_tiny.pt")
    assert VQModel(VQConfig(codebook_size=64, encoder_ch_mult=[1, 1], decoder_ch_mult=[1, 1], z_channels=32, ch=32))


def test_atomic_file_keeps_the_old_file_on_failure(tmp_path):
    from models.checkpoint import atomic_file

    target = tmp_path / "out.bin"
    with atomic_file(target) as f:
        f.write(b"first")
    with pytest.raises(RuntimeError, match="interrupted"), atomic_file(target) as f:
        f.write(b"half of the sec")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_card_curves_written_from_logs(tmp_path):
    import json

    from models.card import plot_curves

    (tmp_path / "gpt_log.jsonl").write_text("\n".join(
        json.dumps({"step": s, "train_loss": 3.0 - s / 10, "val_loss": 3.1 - s / 10}) for s in range(1, 5)))
    (tmp_path / "vq_log.jsonl").write_text(json.dumps({"step": 1, "val_mse01": 0.01}))
    plot_curves(tmp_path, tmp_path)
    assert (tmp_path / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_card_curves_from_logs_named_one_by_one(tmp_path):
    import json

    from models.card import plot_curves

    (tmp_path / "a.jsonl").write_text(json.dumps({"step": 1, "val_mse01": 0.01}))
    (tmp_path / "b.jsonl").write_text(json.dumps({"step": 1, "train_loss": 9.0, "val_loss": 9.1}))
    plot_curves(tmp_path / "none", tmp_path, tmp_path / "a.jsonl", tmp_path / "b.jsonl", title="fashion-mnist-16k")
    assert (tmp_path / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
