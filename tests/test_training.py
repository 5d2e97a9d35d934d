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


def tiny_gpt_run(tmp_path):
    """A 2-step VQ on the shipped subset, and the arguments of a tiny GPT run on it (evaluated every step)."""
    vq_dir, gpt_dir = tmp_path / "vq", tmp_path / "gpt"
    train_vq.main(["--out", str(vq_dir), "--max-steps", "2", "--batch", "4", "--source", "subset",
                   "--restart-every", "2", "--threads", "1"])
    return gpt_dir, ["--vq", str(vq_dir / "vq.pt"), "--out", str(gpt_dir), "--batch", "4", "--dim", "32",
                     "--n-layer", "1", "--n-head", "2", "--eval-every", "1", "--source", "subset", "--threads", "1"]


@pytest.mark.parametrize("keep_optimizer", [False, True])
def test_a_compact_training_state_resumes(tmp_path, keep_optimizer):
    from models.training import compact_training_state

    gpt_dir, args = tiny_gpt_run(tmp_path)
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


def test_neighbour_targets_put_each_codes_mass_on_its_near_duplicates():
    gen = torch.Generator().manual_seed(1)
    base = torch.nn.functional.normalize(torch.randn(16, 8, generator=gen), dim=-1)
    twins = torch.nn.functional.normalize(base + 1e-2 * torch.randn(16, 8, generator=gen), dim=-1)
    codebook = torch.cat([base, twins])  # code i and code 16 + i nearly coincide
    idx, weight = train_gpt.neighbour_targets(codebook, k=3, temperature=0.05, chunk=5)  # chunks of 5 rows
    assert idx.shape == weight.shape == (32, 3)
    assert torch.equal(idx[:, 0], torch.arange(32))  # itself first
    assert torch.equal(idx[:, 1], (torch.arange(32) + 16) % 32)  # then its twin
    assert torch.allclose(weight.sum(-1), torch.ones(32))
    assert (weight[:, 1] > 0.45).all() and (weight[:, 2] < 0.05).all()  # twins share the mass, others barely
    same, _ = train_gpt.neighbour_targets(codebook, k=3, temperature=0.05, chunk=1000)
    assert torch.equal(same, idx)
    plain = train_gpt.neighbour_targets(codebook, k=1, temperature=0.05)
    logits = torch.randn(2, 5, 32, generator=gen)
    codes = torch.randint(0, 32, (2, 5), generator=gen)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 32), codes.reshape(-1))
    assert torch.allclose(train_gpt.soft_targets_loss(logits, codes, plain), ce)  # k = 1: the plain loss
    soft = (idx, weight)
    dense = torch.zeros(32, 32).scatter_(1, idx, weight)  # the same targets written out over the vocabulary
    expected = -(dense[codes] * torch.log_softmax(logits, -1)).sum(-1).mean()
    assert torch.allclose(train_gpt.soft_targets_loss(logits, codes, soft), expected)
    drawn = train_gpt.sample_neighbours(codes.repeat(400, 1), soft, torch.Generator().manual_seed(0))
    assert ((drawn == codes.repeat(400, 1)) | (drawn == (codes.repeat(400, 1) + 16) % 32)).float().mean() > 0.9
    assert 0.3 < (drawn == codes.repeat(400, 1)).float().mean() < 0.7
    with pytest.raises(ValueError, match="k must be 1..32"):
        train_gpt.neighbour_targets(codebook, k=33, temperature=0.05)


def test_gpt_training_with_neighbour_targets_runs_and_refuses_bad_settings(tmp_path, capsys):
    gpt_dir, args = tiny_gpt_run(tmp_path)
    train_gpt.main(args + ["--max-steps", "2", "--neighbour-targets", "4", "--neighbour-temperature", "0.1"])
    log = [json.loads(line) for line in (gpt_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and log[-1]["neighbour_targets"] == [4, 0.1]
    assert np.isfinite(log[-1]["val_loss"]) and np.isfinite(log[-1]["train_loss"])
    for bad, message in [(["--neighbour-targets", "0"], "must be 1..256"),
                         (["--neighbour-temperature", "nan"], "positive number"),
                         (["--neighbour-temperature", "-1"], "positive number")]:
        with pytest.raises(SystemExit):
            train_gpt.parse_args(args + bad)
        assert message in capsys.readouterr().err
