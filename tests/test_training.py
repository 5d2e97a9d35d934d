"""Dataset loader and a training smoke run of the VQ, the GPT and the classifier on a handful of images."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from models import classifier, data, train_gpt, train_vq
from models.registry import build_gpt, build_vq


def test_shipped_subset_is_balanced_and_well_formed():
    images, labels = data.load_fashion_mnist("test", source="subset")
    assert images.shape == (1000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == [100] * 10
    train_images, train_labels = data.load_fashion_mnist("train", source="subset")
    assert train_images.shape == (500, 28, 28) and set(train_labels.tolist()) == set(range(10))
    assert 20 < images.mean() < 120  # real clothes, not zeros or noise


@pytest.mark.skipif(not (data.DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian dataset-fashion-mnist not installed (.ci/run installs it)")
def test_debian_full_dataset():
    images, labels = data.load_fashion_mnist("train", source="debian")
    assert images.shape == (60000, 28, 28) and np.bincount(labels).tolist() == [6000] * 10


def test_idx_reader_rejects_truncated_and_foreign_files(tmp_path):
    header = (2051).to_bytes(4, "big") + (3).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    with gzip.open(tmp_path / "cut.gz", "wb") as f:
        f.write(header + bytes(28 * 28 * 2))
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx_images(tmp_path / "cut.gz")
    with gzip.open(tmp_path / "other.gz", "wb") as f:
        f.write(bytes(100))
    with pytest.raises(ValueError, match="magic"):
        data.read_idx_images(tmp_path / "other.gz")
    (tmp_path / "plain.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=r"plain\.gz: not a readable gzip file"):
        data.read_idx_labels(tmp_path / "plain.gz")
    with pytest.raises(ValueError, match="split"):
        data.load_fashion_mnist("val")


def test_training_smoke_run_and_resume(tmp_path):
    vq_dir, gpt_dir = tmp_path / "vq", tmp_path / "gpt"
    train_vq.main(["--out", str(vq_dir), "--max-steps", "4", "--batch", "8", "--source", "subset",
                   "--restart-every", "2", "--save-every", "2", "--threads", "1"])
    log = [json.loads(line) for line in (vq_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4] and all(np.isfinite(r["loss"]) for r in log)
    vq = build_vq(vq_dir / "vq.pt")
    assert vq.config.codebook_size == 1024 and vq.config.downsample == 2
    args = ["--vq", str(vq_dir / "vq.pt"), "--out", str(gpt_dir), "--batch", "4", "--dim", "32", "--n-layer", "1",
            "--n-head", "2", "--eval-every", "2", "--save-every", "2", "--source", "subset", "--threads", "1"]
    train_gpt.main(args + ["--max-steps", "2"])
    train_gpt.main(args + ["--max-steps", "4"])  # resumes from last.pt
    log = [json.loads(line) for line in (gpt_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 4]
    assert all(np.isfinite(r["val_loss"]) for r in log)
    assert torch.load(gpt_dir / "last.pt", weights_only=True)["step"] == 4
    gpt = build_gpt(gpt_dir / "gpt.pt")
    assert gpt.config.block_size == 196 and gpt.config.vocab_size == 1024
    tokens = np.load(gpt_dir / "tokens.npz")["tokens"]
    assert tokens.shape == (500, 196) and tokens.max() < 1024


@pytest.mark.parametrize("trainer", ["vq", "gpt", "drafter"])
def test_trainers_refuse_an_unusable_device(tmp_path, trainer):
    from models import train_drafter
    main = {"vq": train_vq.main, "gpt": train_gpt.main, "drafter": train_drafter.main}[trainer]
    with pytest.raises(ValueError, match="--device must be cpu, cuda or cuda:N, got 'tpu0'"):
        main(["--out", str(tmp_path / "run"), "--device", "tpu0", "--threads", "1"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available on this machine"):
            main(["--out", str(tmp_path / "run"), "--device", "cuda", "--threads", "1"])
    assert not (tmp_path / "run").exists()  # refused before any work or file


def test_training_is_seeded(tmp_path):
    for run in ("a", "b"):
        train_vq.main(["--out", str(tmp_path / run), "--max-steps", "2", "--batch", "4", "--source", "subset",
                       "--restart-every", "2", "--threads", "1"])
    a, b = build_vq(tmp_path / "a" / "vq.pt"), build_vq(tmp_path / "b" / "vq.pt")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_classifier_wrapper_validates_input():
    clf = classifier.Classifier(classifier.FashionClassifier())
    assert clf.predict(np.zeros((3, 28, 28, 3), np.uint8)).shape == (3,)
    with pytest.raises(ValueError, match="28x28"):
        clf.predict(np.zeros((2, 32, 32), np.uint8))


def test_codebook_init_gives_near_duplicate_codes_near_embeddings_and_logits():
    from models.gpt import GPT, GPTConfig

    gen = torch.Generator().manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(16, 8, generator=gen), dim=-1)
    twins = torch.nn.functional.normalize(base + 1e-3 * torch.randn(16, 8, generator=gen), dim=-1)
    codebook = torch.cat([base, twins])  # code i and code 16 + i nearly coincide
    cfg = GPTConfig(**{**train_gpt.BUNDLED_GPT, "dim": 64, "n_layer": 1, "n_head": 2, "vocab_size": 32,
                       "block_size": 16})
    gpt = GPT(cfg)
    assert not gpt.output.weight.any()  # the official start: a zero output layer
    train_gpt.init_from_codebook(gpt, codebook, seed=3)
    emb, out = gpt.tok_embeddings.weight, gpt.output.weight
    dist = lambda w: torch.cdist(w, w)  # noqa: E731
    twin_gap = dist(emb)[torch.arange(16), torch.arange(16) + 16].mean()
    assert twin_gap < 0.5 * dist(emb)[:16, :16].sum() / (16 * 15)  # twins much closer than other codes
    assert torch.allclose(out[:16], out[16:], atol=1e-3) and out.abs().max() > 0.01
    again = GPT(cfg)
    train_gpt.init_from_codebook(again, codebook, seed=3)
    assert torch.equal(again.tok_embeddings.weight, emb) and torch.equal(again.output.weight, out)


@pytest.mark.parametrize("keep_optimizer", [False, True])
def test_a_compact_training_state_resumes(tmp_path, keep_optimizer):
    from models.training import compact_training_state

    vq_dir, gpt_dir = tmp_path / "vq", tmp_path / "gpt"
    train_vq.main(["--out", str(vq_dir), "--max-steps", "2", "--batch", "4", "--source", "subset",
                   "--restart-every", "2", "--threads", "1"])
    args = ["--vq", str(vq_dir / "vq.pt"), "--out", str(gpt_dir), "--batch", "4", "--dim", "32", "--n-layer", "1",
            "--n-head", "2", "--eval-every", "1", "--source", "subset", "--threads", "1"]
    train_gpt.main(args + ["--max-steps", "2"])
    full = gpt_dir / "last.pt"
    compact_training_state(full, tmp_path / "small.pt", keep_optimizer)
    small = torch.load(tmp_path / "small.pt", weights_only=True)
    assert small["step"] == 2 and small["model"]["output.weight"].dtype == torch.bfloat16
    if keep_optimizer:
        assert all(s["exp_avg_sq"].dtype == torch.bfloat16 for s in small["opt"]["state"].values())
    else:
        assert small["opt"] is None
    assert (tmp_path / "small.pt").stat().st_size < (0.6 if keep_optimizer else 0.3) * full.stat().st_size
    (tmp_path / "small.pt").replace(full)  # resume from the compact copy, as a fresh clone would
    train_gpt.main(args + ["--max-steps", "3"])
    log = [json.loads(line) for line in (gpt_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and np.isfinite(log[-1]["val_loss"])
    resumed = torch.load(full, weights_only=True)
    assert resumed["model"]["output.weight"].dtype == torch.float32 and resumed["opt"]["state"]
    with pytest.raises(Exception, match="not a training state"):
        torch.save({"model": {}}, tmp_path / "bad.pt")
        compact_training_state(tmp_path / "bad.pt", tmp_path / "out.pt")
