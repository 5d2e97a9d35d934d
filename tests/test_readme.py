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
