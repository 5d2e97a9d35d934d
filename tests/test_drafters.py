"""Trained drafters (models/drafter.py) and the drafter decoders (eagle, lantern-eagle, medusa): the drafter's
cached forward equals its training forward, checkpoints round-trip, the data and training scripts are seeded
and resumable, and on the bundled model the trained drafters beat random ones. Lossless / greedy checks
are in tests/test_decoding_lossless.py and tests/test_decoding_greedy.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from decoding.registry import make_decoder
from decoding.sampling import SamplingSettings
from models.checkpoint import CheckpointError
from models.drafter import (
    DrafterConfig,
    EagleDrafter,
    drafter_for,
    load_drafter,
    random_drafter,
    save_drafter,
    target_hidden,
)
from models.registry import ASSETS, DRAFTERS, load_model

SAMPLING = SamplingSettings(cfg_scale=4.0, temperature=1.0, top_k=30)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model("tiny-fixture")


def chain_sees(positions: torch.Tensor, rows: int) -> torch.Tensor:
    r = torch.arange(rows)
    return (r[None, :] >= 1) & (r[None, :] <= positions[:, None])


@torch.no_grad()
def test_cached_drafter_forward_equals_training_forward(model):
    drafter = random_drafter(model.gpt, "eagle", seed=3)
    n, length = model.info.num_tokens, 6
    hidden = torch.randn(2, length, drafter.config.dim)
    tokens = torch.randint(model.info.vocab_size, (length,))
    full = drafter(hidden, tokens.expand(2, -1), start=1)  # [2, L, dim] causal, positions 1..L
    drafter.setup_cache(2, 32)
    positions = torch.arange(1, length + 1)
    cached = drafter.forward_nodes(hidden, tokens, positions, positions, chain_sees(positions, n + 32))
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
    # the last node again, from a scratch row, seeing the same prefix rows: the same state
    last = torch.tensor([length])
    sees = torch.zeros(1, n + 32, dtype=torch.bool)
    sees[0, 1:length] = True
    sees[0, n + 5] = True
    again = drafter.forward_nodes(hidden[:, -1:], tokens[-1:], last, torch.tensor([n + 5]), sees)
    torch.testing.assert_close(again, full[:, -1:], atol=1e-5, rtol=1e-4)


def test_drafter_checkpoint_round_trip(model, tmp_path):
    for kind in ("eagle", "medusa"):
        drafter = random_drafter(model.gpt, kind, seed=1)
        path = tmp_path / f"{kind}.pt"
        save_drafter(path, drafter, meta={"steps": 7})
        loaded = load_drafter(path, model.gpt)
        assert type(loaded) is type(drafter) and loaded.config == drafter.config
        for (k, a), (_, b) in zip(drafter.state_dict().items(), loaded.state_dict().items()):
            torch.testing.assert_close(b, a.half().float(), msg=k)
    other = load_model("fashion-mnist").gpt
    with pytest.raises(CheckpointError, match="eagle.pt.*does not fit the target"):
        load_drafter(tmp_path / "eagle.pt", other)
    with pytest.raises(ValueError, match="drafter kind must be one of"):
        DrafterConfig("hydra", 64, 4, 64, 16)
    with pytest.raises(ValueError, match="Medusa n_heads must be in"):
        DrafterConfig("medusa", 64, 4, 64, 16, n_heads=0)


def test_drafter_checkpoints_use_the_official_layout(model, tmp_path):
    from models.drafter import official_state_dict
    eagle, medusa = random_drafter(model.gpt, "eagle", seed=2), random_drafter(model.gpt, "medusa", seed=2)
    save_drafter(tmp_path / "eagle.pt", eagle)
    keys = set(torch.load(tmp_path / "eagle.pt", weights_only=True)["model"])
    assert {"layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight", "layers.0.mlp.gate_proj.weight",
            "layers.0.post_attention_layernorm.weight", "fc.weight", "fc.bias"} <= keys
    assert not any("wqkv" in k or "feed_forward" in k for k in keys)
    # a foreign official file (a bare state dict, as LANTERN's pytorch_model.bin, with its embed_tokens copy)
    official = {k: v.clone() for k, v in official_state_dict(eagle).items()}
    official["embed_tokens.weight"] = model.gpt.tok_embeddings.weight.detach().clone()
    torch.save(official, tmp_path / "pytorch_model.bin")
    loaded = load_drafter(tmp_path / "pytorch_model.bin", model.gpt)
    for (k, a), (_, b) in zip(eagle.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(b, a, msg=k)
    n = model.info.num_tokens
    hidden = torch.randn(2, 5, model.gpt.config.dim, generator=torch.Generator().manual_seed(0))
    tokens = torch.randint(model.info.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded(hidden, tokens), eagle(hidden, tokens))
    torch.save({k: v.clone() for k, v in official_state_dict(medusa).items()}, tmp_path / "medusa_lm_head.pt")
    heads = load_drafter(tmp_path / "medusa_lm_head.pt", model.gpt)
    assert heads.config.n_heads == medusa.config.n_heads and n > 0
    torch.testing.assert_close(heads(hidden), medusa(hidden))
    # wrong official files say what is wrong
    broken = dict(official)
    del broken["layers.0.self_attn.v_proj.weight"]
    torch.save(broken, tmp_path / "missing.bin")
    with pytest.raises(CheckpointError, match=r"missing\.bin: official EAGLE drafter layout, but key "
                                              r"'layers\.0\.self_attn\.v_proj\.weight' is missing"):
        load_drafter(tmp_path / "missing.bin", model.gpt)
    torch.save({**official, "layers.1.self_attn.q_proj.weight": official["fc.bias"]}, tmp_path / "two.bin")
    with pytest.raises(CheckpointError, match="unexpected key 'layers.1.self_attn.q_proj.weight' for a one-layer"):
        load_drafter(tmp_path / "two.bin", model.gpt)


def test_drafter_source(model):
    assert isinstance(drafter_for(model, "eagle", "auto"), EagleDrafter)  # tiny-fixture: no trained one
    assert drafter_for(model, "eagle", "random") is drafter_for(model, "eagle", "auto")  # loaded once
    with pytest.raises(ValueError, match="'tiny-fixture' has no trained eagle drafter"):
        drafter_for(model, "eagle", "trained")
    with pytest.raises(ValueError, match="drafter source must be one of"):
        drafter_for(model, "eagle", "best")
    with pytest.raises(ValueError, match="tree must be one of"):
        make_decoder("eagle", tree="forest")
    with pytest.raises(ValueError, match="total_token must be in"):
        make_decoder("eagle", total_token=1)
    assert set(DRAFTERS["fashion-mnist"]) == {"eagle", "medusa"}


def test_target_hidden_matches_forward_nodes(model):
    """The teacher-forced states the drafter is trained on are the states decoding gives it."""
    tokens = torch.randint(model.info.vocab_size, (1, model.info.num_tokens))
    hidden = target_hidden(model.gpt, torch.tensor([2, model.info.num_classes]), tokens.expand(2, -1))
    model.prefill(2, 4.0)
    k = 5
    _, live = model.forward_nodes(tokens[0, :k], torch.arange(k), torch.ones(k, k, dtype=torch.bool).tril(), 0,
                                  return_hidden=True)
    torch.testing.assert_close(live, hidden[:, 1:k + 1], atol=1e-4, rtol=1e-4)  # row i + 1: after token i


def test_make_drafter_data_seeded_and_resumable(tmp_path):
    from models.make_drafter_data import load_data, main

    out = tmp_path / "data"
    args = ["--model", "tiny-fixture", "--samples", "5", "--batch", "2", "--out", str(out), "--seed", "4"]
    main(args)
    labels, tokens = load_data(out)
    assert labels.tolist() == [0, 1, 2, 3, 4] and tokens.shape == (5, 16)
    (out / "shard_00001.npz").unlink()
    main(args)  # resumed: the missing shard is made again, the same
    labels2, tokens2 = load_data(out)
    assert torch.equal(tokens, tokens2) and torch.equal(labels, labels2)
    with pytest.raises(ValueError, match="--samples must be in"):
        main(["--samples", "0", "--out", str(out)])
    with pytest.raises(ValueError, match="--cfg-scale must be >= 1"):
        main(["--cfg-scale", "0.5", "--out", str(out)])


@pytest.mark.parametrize("kind", ["eagle", "medusa"])
def test_train_drafter_runs_and_resumes(tmp_path, kind):
    from models.make_drafter_data import main as make_data
    from models.train_drafter import main as train

    make_data(["--model", "tiny-fixture", "--samples", "16", "--batch", "16", "--out", str(tmp_path / "d")])
    common = ["--model", "tiny-fixture", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--kind",
              kind, "--batch", "4", "--save-every", "1", "--threads", "1"]
    train(common + ["--max-steps", "2"])
    train(common + ["--max-steps", "3"])  # resumed at step 2
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in log)
    drafter = load_drafter(tmp_path / "run" / "drafter.pt", load_model("tiny-fixture").gpt)
    assert drafter.config.kind == kind
    # an interrupted run ends where an uninterrupted one does (warm-up only: the LR does not depend on --max-steps)
    def elsewhere(name):
        at = common.index("--out") + 1
        return common[:at] + [str(tmp_path / name)] + common[at + 1:] + ["--warmup", "100"]
    train(elsewhere("once") + ["--max-steps", "3"])
    train(elsewhere("twice") + ["--max-steps", "2"])
    train(elsewhere("twice") + ["--max-steps", "3"])
    a = torch.load(tmp_path / "once" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "twice" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lantern_eagle_without_neighbours_is_eagle(model):
    for tree in ("chain", "static", "dynamic"):
        eagle = make_decoder("eagle", tree=tree, drafter="random").generate(model, 1, SAMPLING, seed=5)
        lantern = make_decoder("lantern-eagle", tree=tree, drafter="random", neighbourhood_k=1, delta=0.5)
        assert torch.equal(lantern.generate(model, 1, SAMPLING, seed=5).tokens, eagle.tokens), tree


def test_drafter_cost_in_trace(model):
    trace = make_decoder("eagle", tree="static", drafter="random").generate(model, 0, SAMPLING, seed=1).trace
    passes = trace.steps[1:]
    assert passes[0].draft_forwards == 1  # the first pass: no drafts, then the drafter reads the target's states
    assert all(s.draft_forwards >= 2 and s.draft_s > 0 for s in passes[1:-1])
    summary = trace.summary()
    assert summary["draft_forwards"] == sum(s.draft_forwards for s in trace.steps)
    assert summary["draft_s"] + summary["logic_s"] == pytest.approx(summary["overhead_s"], abs=1e-4)
    assert summary["verify_s"] == summary["forward_s"]


@pytest.mark.parametrize("name,params", [("eagle", {"tree": "chain", "depth": 4}), ("medusa", {"tree": "chain"})])
def test_trained_drafter_beats_random(name, params):
    """On the bundled model the trained drafter's chain drafts are accepted far more often than a random one's."""
    fm = load_model("fashion-mnist")
    rates = {}
    for source in ("trained", "random"):
        trace = make_decoder(name, drafter=source, **params).generate(fm, 3, SamplingSettings(), seed=0,
                                                                       decode_image=False).trace
        drafts = [d for s in trace.steps for d in s.accepted]
        rates[source] = sum(drafts) / len(drafts)
    assert rates["trained"] > rates["random"] + 0.2, rates
    assert (ASSETS / DRAFTERS["fashion-mnist"][name]).stat().st_size <= 5 * 2**20
