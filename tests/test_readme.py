"""The README's examples run as written (custom decoder by import path, Python usage)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

from decoding.registry import make_decoder
from decoding.sampling import SamplingSettings
from models.registry import load_model

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_custom_decoder_example_plugs_in_by_import_path(tmp_path, monkeypatch):
    module = next(b for b in python_blocks() if "class TopOneSJD" in b)
    (tmp_path / "my_decoders.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_decoders", None)
    model = load_model("tiny-fixture")
    decoder = make_decoder("my_decoders:TopOneSJD", window=8)
    result = decoder.generate(model, 3, SamplingSettings(cfg_scale=2.0), seed=0)
    result.trace.validate()
    assert result.trace.decoder == "top1-sjd" and result.image is not None
    # the example's rule: a top-1 draft is accepted outright, others by the exact rule
    import torch

    p = torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    q = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    prob, _ = decoder.acceptance(p, q, torch.tensor([1, 0]), None)
    assert torch.allclose(prob, torch.tensor([0.3, 1.0]))


def test_usage_example_runs_on_the_tiny_model(tmp_path, monkeypatch):
    usage = next(b for b in python_blocks() if "make_decoder(\"gsd\"" in b)
    monkeypatch.chdir(tmp_path)
    exec(usage.replace('load_model("fashion-mnist")', 'load_model("tiny-fixture")'), {})
    assert (tmp_path / "gsd_trace.json").exists()


def test_teacher_forcing_example_runs_with_official_field_names():
    """The README's GPT example, on the golden fixture checkpoint instead of GPT-B's file."""
    block = next(b for b in python_blocks() if "teacher" in b or "read_state_dict(\"c2i_B_256.pt\")" in b)
    fixture = Path(__file__).parent / "fixtures" / "llamagen" / "gpt_tiny.pt"
    code = (block.replace("dim=768, n_layer=12, n_head=12, vocab_size=16384, num_classes=1000",
                          "dim=64, n_layer=2, n_head=4, vocab_size=64, num_classes=10")
            .replace("block_size=256", "block_size=16").replace('"c2i_B_256.pt"', repr(str(fixture)))
            .replace("torch.tensor([207, 360])", "torch.tensor([2, 7])")
            .replace("torch.randint(0, 16384, (2, 256))", "torch.randint(0, 64, (2, 16))"))
    assert code != block
    scope: dict = {}
    exec(code, scope)
    assert scope["logits"].shape == (2, 16, 64)


def test_the_apps_limits_in_the_readme_are_the_servers():
    from ui import limits

    section = README.split("## The app", 1)[1].split("\n## ", 1)[0]
    for phrase in (f"uploads at most {limits.MAX_UPLOAD_BYTES // 2**20} MB",
                   f"at most {limits.TRACE_LIMITS.max_tokens} tokens of grid",
                   f"at most {limits.MAX_COMPARE_SEEDS} seeds and {limits.MAX_COMPARE_RUNS} images",
                   f"at most {limits.MAX_BROWSER_SWEEP} images and {limits.MAX_SWEEP_VALUES} values",
                   f"at most {limits.MAX_JOBS_PER_SESSION} model jobs in flight per browser session and "
                   f"{limits.MAX_JOBS_PER_ADDRESS} per client address", f"queue of {limits.QUEUE_SIZE}",
                   f"{limits.MAX_SESSION_TRACES} per session and {limits.MAX_STORED_TRACES} in all"):
        assert phrase in section, phrase
