"""Hosting safety on the models side: hostile checkpoints are refused cheaply and by name, nothing is
downloaded unless the host allows it, start-up settings are validated, and no pickle is ever loaded."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models import checkpoint, download, environment, registry
from models.checkpoint import CheckpointError, read_state_dict, save_checkpoint
from models.environment import EnvironmentSettingError, read_environment
from models.gpt import GPT, gpt_config
from models.training import load_training_state, save_training_state
from models.vq import VQModel, vq_config

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(vocab_size=64, num_classes=10, block_size=16)


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(gpt_config("GPT-tiny", **{**TINY, **overrides}))


def save_with_config(path: Path, module, **config_changes) -> Path:
    save_checkpoint(path, module, meta={"config": {**module.config.to_dict(), **config_changes}})
    return path


def save_weights(path: Path, sd: dict) -> Path:
    torch.save({"model": sd}, path)
    return path


def deflated_copy(src: Path, dst: Path) -> Path:
    """The same torch checkpoint with every zip entry deflate-compressed (torch.load reads it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for entry in zin.infolist():
            with zin.open(entry) as fin, zout.open(entry.filename, "w", force_zip64=True) as fout:
                while chunk := fin.read(1 << 24):
                    fout.write(chunk)
    return dst


def hostile_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, regex the refusal must match: the file name and, where one applies, the key)."""
    folder.mkdir(exist_ok=True)
    gpt = tiny_gpt()
    sd = {k: v.clone() for k, v in gpt.state_dict().items()}
    zeros = save_weights(folder / "zeros_plain.pt", {"w": torch.zeros(1 << 26)})  # 256 MB
    shared = torch.zeros(1 << 20, dtype=torch.half)  # 100 views of these 2 MB: 400 MB in float32
    files = {
        "n_layer": (save_with_config(folder / "layers.pt", gpt, n_layer=10**6), r"layers\.pt.*'n_layer' = 1000000"),
        "dim": (save_with_config(folder / "dim.pt", gpt, dim=10**7), r"dim\.pt.*'dim' = 10000000"),
        "layers_not_in_file": (save_with_config(folder / "fewer.pt", gpt, n_layer=64),
                               r"fewer\.pt: missing key 'layers\.2\."),
        "compressed": (deflated_copy(zeros, folder / "bomb.pt"), r"bomb\.pt: entry .*data/0.* expands"),
        "int": (save_weights(folder / "int.pt", {**sd, "output.weight": sd["output.weight"].long()}),
                r"int\.pt: tensor 'output\.weight' has dtype torch\.int64"),
        "bool": (save_weights(folder / "bool.pt", {**sd, "norm.weight": sd["norm.weight"] > 0}),
                 r"bool\.pt: tensor 'norm\.weight' has dtype torch\.bool"),
        "complex": (save_weights(folder / "complex.pt", {**sd, "norm.weight": sd["norm.weight"].to(torch.cfloat)}),
                    r"complex\.pt: tensor 'norm\.weight' has dtype torch\.complex64"),
        "nan": (save_weights(folder / "nan.pt", {**sd, "layers.0.attention.wo.weight": sd[
            "layers.0.attention.wo.weight"].index_fill(0, torch.tensor([3]), float("nan"))}),
            r"nan\.pt: tensor 'layers\.0\.attention\.wo\.weight' holds 64 non-finite"),
        "inf": (save_weights(folder / "inf.pt", {**sd, "tok_embeddings.weight": sd["tok_embeddings.weight"].index_fill(
            1, torch.tensor([0]), float("-inf"))}), r"inf\.pt: tensor 'tok_embeddings\.weight' holds 64 non-finite"),
        "expanded": (save_weights(folder / "expanded.pt", {**sd, "w": torch.zeros(1, dtype=torch.half).expand(
            8192, 8192)}), r"expanded\.pt: tensor 'w' of shape \[8192, 8192\] is larger than the 2 bytes stored"),
        "shared_views": (save_weights(folder / "views.pt", {**sd, **{f"v{i}": shared for i in range(100)}}),
                         r"views\.pt: its tensors need \d+ bytes in float32 but the file stores only"),
        "int_key": (save_weights(folder / "intkey.pt", {0: torch.zeros(2)}), r"intkey\.pt: state dict key 0 is a int"),
        "empty": (folder / "empty.pt", r"empty.*empty\.pt"),
        "directory": (folder / "adir.pt", r"adir\.pt: is a directory"),
        "truncated": (folder / "cut.pt", r"cut\.pt: not a zip-format PyTorch checkpoint \(truncated"),
    }
    (folder / "empty.pt").write_bytes(b"")
    (folder / "adir.pt").mkdir(exist_ok=True)
    (folder / "cut.pt").write_bytes(files["int"][0].read_bytes()[:1500])
    zeros.unlink()
    return files


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return hostile_files(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("case", ["n_layer", "dim", "layers_not_in_file", "compressed", "int", "bool", "complex",
                                  "nan", "inf", "expanded", "shared_views", "int_key", "empty", "directory",
                                  "truncated"])
def test_hostile_checkpoint_is_refused_by_name(hostile, case):
    path, message = hostile[case]
    with pytest.raises(CheckpointError, match=message):
        registry.build_gpt(path, "GPT-tiny", **TINY)


MEMORY_PROBE = """
import json, sys
from pathlib import Path
from models import registry
from models.checkpoint import CheckpointError

def peak_mb():  # this process's own high-water RSS (ru_maxrss would include the parent's, from before exec)
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024

base = peak_mb()
refused = []
for path in sys.argv[1:]:
    try:
        registry.build_gpt(Path(path), "GPT-tiny", vocab_size=64, num_classes=10, block_size=16)
    except CheckpointError:
        refused.append(path)
print(json.dumps({"extra_mb": peak_mb() - base, "refused": refused}))
"""


def test_hostile_checkpoints_cost_no_memory(hostile):
    """In a fresh process (its own peak RSS, Linux /proc): refusing every hostile file, the 256 MB
    compressed bomb and the 10**6-layer config included, raises the peak by less than 200 MB."""
    paths = [str(p) for p, _ in hostile.values()]
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *paths], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["refused"] == paths
    assert report["extra_mb"] < 200, report


def test_size_bounds_are_enforced_before_loading(tmp_path, monkeypatch):
    path = save_weights(tmp_path / "big.pt", {"w": torch.zeros(1000)})
    with pytest.raises(CheckpointError, match=r"big\.pt: holds \d+ bytes uncompressed, more than the limit of 2000"):
        read_state_dict(path, max_bytes=2000)
    assert read_state_dict(path)[0]["w"].shape == (1000,)
    save_file({"w": torch.zeros(1000)}, str(tmp_path / "big.safetensors"))
    with pytest.raises(CheckpointError, match=r"big\.safetensors: \d+ bytes, more than the limit of 2000"):
        read_state_dict(tmp_path / "big.safetensors", max_bytes=2000)
    monkeypatch.setattr(checkpoint, "MAX_ZIP_ENTRIES", 4)
    with pytest.raises(CheckpointError, match=r"big\.pt: declares \d+ zip entries, more than the limit of 4"):
        read_state_dict(path)


@pytest.mark.parametrize("change, message", [
    ({"n_layer": "4"}, r"'n_layer' = '4' is not of type int"),
    ({"n_layer": 2.0}, r"'n_layer' = 2.0 is not of type int"),
    ({"dim": True}, r"'dim' = True is not of type int"),
    ({"rope_base": float("inf")}, r"'rope_base' = inf is not of type float"),
    ({"block_size": 10**6}, r"'block_size' = 1000000 is out of range; allowed 1..4096"),
    ({"n_head": 0}, r"'n_head' = 0 is out of range; allowed 1..128"),
    ({"n_head": 3}, r"invalid stored config: dim \(64\) must be divisible by n_head \(3\)"),
    ({"colour": "red"}, r"unknown config field 'colour'"),
])
def test_stored_config_is_type_and_range_checked(tmp_path, change, message):
    path = save_with_config(tmp_path / "cfg.pt", tiny_gpt(), **change)
    with pytest.raises(CheckpointError, match=r"cfg\.pt: .*" + message):
        registry.build_gpt(path)


def test_vq_config_lists_are_bounded(tmp_path):
    torch.manual_seed(0)
    vq = VQModel(vq_config("VQ-tiny"))
    path = save_with_config(tmp_path / "vq.pt", vq, encoder_ch_mult=[1] * 40)
    with pytest.raises(CheckpointError, match=r"vq\.pt: config field 'encoder_ch_mult' has 40 items, allowed 1..8"):
        registry.build_vq(path)
    assert registry.build_vq(save_with_config(tmp_path / "ok.pt", vq)).config.codebook_size == 64


def test_metadata_must_be_a_json_object_with_string_keys(tmp_path):
    gpt = tiny_gpt()
    sd = {k: v.contiguous() for k, v in gpt.state_dict().items()}
    save_file(sd, str(tmp_path / "notjson.safetensors"), metadata={"speclens": "{config: nope"})
    with pytest.raises(CheckpointError, match=r"notjson\.safetensors: metadata 'speclens' is not valid JSON"):
        read_state_dict(tmp_path / "notjson.safetensors")
    save_file(sd, str(tmp_path / "list.safetensors"), metadata={"speclens": "[1, 2]"})
    with pytest.raises(CheckpointError, match=r"list\.safetensors: metadata 'speclens' must be a dict"):
        read_state_dict(tmp_path / "list.safetensors")
    torch.save({"model": sd, "speclens": {1: "one"}}, tmp_path / "intmeta.pt")
    with pytest.raises(CheckpointError, match=r"intmeta\.pt: metadata key 1 is a int"):
        read_state_dict(tmp_path / "intmeta.pt")
    torch.save({"model": sd, "speclens": {"config": {7: 7}}}, tmp_path / "intcfg.pt")
    with pytest.raises(CheckpointError, match=r"intcfg\.pt: metadata key 7 is a int"):
        read_state_dict(tmp_path / "intcfg.pt")
    save_file(sd, str(tmp_path / "ok.safetensors"), metadata={"speclens": json.dumps({"config": gpt.config.to_dict()})})
    assert registry.build_gpt(tmp_path / "ok.safetensors").config.dim == 64


# -- training state ------------------------------------------------------------------------------
def training_run():
    gpt = tiny_gpt()
    return gpt, torch.optim.AdamW(gpt.parameters(), lr=1e-3), torch.Generator().manual_seed(0)


def test_training_state_round_trips(tmp_path):
    gpt, opt, gen = training_run()
    save_training_state(tmp_path / "last.pt", gpt, opt, 7, gen)
    assert load_training_state(tmp_path / "last.pt", *training_run()) == 7
    assert load_training_state(tmp_path / "none.pt", *training_run()) == 0


def test_bad_training_states_name_the_file(tmp_path):
    gpt, opt, gen = training_run()
    save_training_state(tmp_path / "good.pt", gpt, opt, 3, gen)
    state = torch.load(tmp_path / "good.pt", weights_only=True)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:4000])
    (tmp_path / "dir.pt").mkdir()
    torch.save({k: v for k, v in state.items() if k != "opt"}, tmp_path / "noopt.pt")
    torch.save({**state, "step": "3"}, tmp_path / "step.pt")
    torch.save({**state, "gen": torch.zeros(3)}, tmp_path / "gen.pt")
    nan = {**state["model"], "norm.weight": torch.full_like(state["model"]["norm.weight"], float("nan"))}
    torch.save({**state, "model": nan}, tmp_path / "nan.pt")
    other = GPT(gpt_config("GPT-tiny", vocab_size=32, num_classes=10, block_size=16))
    save_training_state(tmp_path / "other.pt", other, torch.optim.AdamW(other.parameters()), 1, gen)
    cases = {"empty.pt": "empty", "cut.pt": "not a zip-format", "dir.pt": "is a directory",
             "noopt.pt": "missing key 'opt'", "step.pt": "key 'step' must be an integer",
             "gen.pt": "key 'gen' does not fit this run", "nan.pt": "tensor 'model.norm.weight' holds 64 non-finite",
             "other.pt": "shape mismatch at 'tok_embeddings.weight'"}
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=rf"{name}.*{message}|{message}.*{name}"):
            load_training_state(tmp_path / name, *training_run())


# -- start-up environment ------------------------------------------------------------------------
@pytest.fixture
def env(tmp_path):
    """A clean environment whose defaults point into tmp_path."""
    return {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}


def test_environment_defaults(env, tmp_path):
    e = read_environment(env)
    assert (e.model, e.threads, e.port, e.allow_download, e.umap) == ("fashion-mnist-16k", 2, 7860, False, True)
    assert e.weights_dir == tmp_path / ".cache" / "speclens" / "llamagen"
    assert e.projections_dir == tmp_path / "cache" / "speclens" / "projections"
    with pytest.raises(FrozenInstanceError):
        e.threads = 3


@pytest.mark.parametrize("variable, value, message", [
    ("SPECLENS_THREADS", "abc", r"SPECLENS_THREADS='abc'.*integer in 1\.\.\d+"),
    ("SPECLENS_THREADS", "0", r"SPECLENS_THREADS='0'.*integer in 1\.\."),
    ("SPECLENS_THREADS", "100000", r"SPECLENS_THREADS='100000'.*integer in 1\.\."),
    ("SPECLENS_THREADS", "2.5", r"SPECLENS_THREADS='2.5'"),
    ("PORT", "abc", r"PORT='abc': the server port must be an integer in 1\.\.65535"),
    ("PORT", "0", r"PORT='0'"),
    ("GRADIO_SERVER_PORT", "70000", r"GRADIO_SERVER_PORT='70000'.*1\.\.65535"),
    ("SPECLENS_MODEL", "fashon-mnist", r"SPECLENS_MODEL='fashon-mnist' is not a model; valid names: fashion-mnist, "),
    ("SPECLENS_MODEL", "llamagen-c2i-B-256", r"SPECLENS_MODEL='llamagen-c2i-B-256'.*c2i_B_256\.pt.*vq_ds16_c2i\.pt"),
    ("SPECLENS_ALLOW_DOWNLOAD", "maybe", r"SPECLENS_ALLOW_DOWNLOAD='maybe' is not a boolean; use one of 1, true"),
    ("SPECLENS_UMAP", "2", r"SPECLENS_UMAP='2' is not a boolean"),
    ("SPECLENS_WEIGHTS_DIR", "{tmp}/nowhere", r"SPECLENS_WEIGHTS_DIR='.*nowhere' does not exist"),
    ("SPECLENS_WEIGHTS_DIR", "{tmp}/file", r"SPECLENS_WEIGHTS_DIR='.*file' is not a directory"),
    ("SPECLENS_PROJECTIONS_DIR", "{tmp}/file", r"SPECLENS_PROJECTIONS_DIR='.*file' is not a directory"),
    ("SPECLENS_PROJECTIONS_DIR", "{tmp}/file/sub", r"SPECLENS_PROJECTIONS_DIR='.*sub' does not exist and cannot be"),
])
def test_bad_environment_names_the_variable(env, tmp_path, variable, value, message):
    (tmp_path / "file").write_text("x")
    env[variable] = value.format(tmp=tmp_path)
    with pytest.raises(EnvironmentSettingError, match=message):
        read_environment(env)


def test_good_environment_values(env, tmp_path):
    weights, projections = tmp_path / "weights", tmp_path / "new" / "projections"
    weights.mkdir()
    top = str(environment.max_threads())
    e = read_environment({**env, "SPECLENS_THREADS": top, "PORT": "8080", "GRADIO_SERVER_PORT": "9090",
                          "SPECLENS_WEIGHTS_DIR": str(weights), "SPECLENS_ALLOW_DOWNLOAD": "yes",
                          "SPECLENS_UMAP": "off", "SPECLENS_PROJECTIONS_DIR": str(projections),
                          "SPECLENS_MODEL": "llamagen-c2i-L-256"})
    assert (e.threads, e.port, e.weights_dir, e.allow_download, e.umap) == (int(top), 8080, weights, True, False)
    assert (e.projections_dir, e.model) == (projections, "llamagen-c2i-L-256")
    e = read_environment({**env, "GRADIO_SERVER_PORT": "9090", "SPECLENS_PROJECTIONS_DIR": "", "SPECLENS_MODEL": "",
                          "SPECLENS_THREADS": " 1 ", "SPECLENS_UMAP": "TRUE"})
    assert (e.port, e.projections_dir, e.model, e.threads, e.umap) == (9090, None, "fashion-mnist-16k", 1, True)
    assert read_environment({**env, "SPECLENS_MODEL": "tiny-fixture"}).model == "tiny-fixture"


def test_unreadable_or_unwritable_folders(env, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    with pytest.raises(EnvironmentSettingError, match=r"SPECLENS_WEIGHTS_DIR='.*locked' is not readable"):
        read_environment({**env, "SPECLENS_WEIGHTS_DIR": str(locked)})
    with pytest.raises(EnvironmentSettingError, match=r"SPECLENS_PROJECTIONS_DIR='.*locked' is not readable"):
        read_environment({**env, "SPECLENS_PROJECTIONS_DIR": str(locked)})
    with pytest.raises(EnvironmentSettingError, match=r"SPECLENS_WEIGHTS_DIR='.*locked' is not readable and writable"):
        read_environment({**env, "SPECLENS_WEIGHTS_DIR": str(locked), "SPECLENS_ALLOW_DOWNLOAD": "1"})


# -- models by name: what is listed, what is downloaded ------------------------------------------
@pytest.fixture
def weights(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("SPECLENS_WEIGHTS_DIR", str(folder))
    monkeypatch.delenv("SPECLENS_ALLOW_DOWNLOAD", raising=False)
    return folder


@pytest.fixture
def no_hub(monkeypatch):
    """hf_hub_download replaced by a recorder that fails: any call is visible."""
    import huggingface_hub

    calls = []

    def refuse(*args, **kwargs):
        calls.append((args, kwargs))
        raise OSError("network disabled in tests")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    return calls


def test_available_models_lists_only_what_is_here(weights, no_hub, monkeypatch):
    bundled = [n for n, s in registry.MODELS.items() if s.source == "bundled"]
    assert bundled[0] == "fashion-mnist" and "fashion-mnist-16k" in bundled
    assert registry.available_models(allow_download=False) == bundled
    hub = [n for n, s in registry.MODELS.items() if s.source == "hub"]
    assert registry.available_models(allow_download=True) == [*bundled, *hub]
    (weights / "c2i_B_256.pt").write_bytes(b"x")
    assert registry.available_models(allow_download=False) == bundled
    (weights / "vq_ds16_c2i.pt").write_bytes(b"x")
    assert registry.available_models(allow_download=False) == [*bundled, "llamagen-c2i-B-256"]
    monkeypatch.setattr(registry, "ASSETS", weights / "no-assets")
    assert registry.available_models(allow_download=False) == ["llamagen-c2i-B-256"]
    assert "tiny-fixture" not in registry.available_models(True) and "tiny-fixture" in registry.MODELS
    assert read_environment({"SPECLENS_WEIGHTS_DIR": str(weights), "SPECLENS_ALLOW_DOWNLOAD": "1",
                             "SPECLENS_MODEL": "llamagen-c2i-XL-384"}).model == "llamagen-c2i-XL-384"
    assert no_hub == []  # listing and start-up checks never download


def test_no_download_unless_allowed_and_failures_are_not_retried(weights, no_hub, monkeypatch):
    resolved = []
    real_resolve = registry.resolve_file
    monkeypatch.setattr(registry, "resolve_file", lambda *a: resolved.append(a) or real_resolve(*a))
    for _ in range(3):
        with pytest.raises(registry.ModelUnavailable, match=r"c2i_L_384\.pt and vq_ds16_c2i\.pt in .*weights.*"
                                                              r"python -m models\.download llamagen-c2i-L-384"):
            registry.load_model("llamagen-c2i-L-384")
    assert no_hub == [] and len(resolved) == 1  # refused once, then the remembered failure
    with pytest.raises(registry.ModelUnavailable, match="SPECLENS_ALLOW_DOWNLOAD=1"):  # the benchmark's path
        real_resolve(registry.MODELS["llamagen-c2i-B-256"], "c2i_B_256.pt")
    assert no_hub == []
    monkeypatch.setenv("SPECLENS_ALLOW_DOWNLOAD", "1")
    with pytest.raises(registry.ModelUnavailable, match=r"downloading c2i_L_384\.pt .* failed \(OSError"):
        registry.load_model("llamagen-c2i-L-384")
    assert [kwargs["local_dir"] for _, kwargs in no_hub] == [weights]


def test_download_command_fetches_into_the_weights_dir(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def fake_download(repo, filename, local_dir):
        save_weights(Path(local_dir) / filename, {"w": torch.ones(2)})
        return str(Path(local_dir) / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert download.main(["llamagen-c2i-B-256", "--weights-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c2i_B_256.pt", "vq_ds16_c2i.pt"]
    assert registry.missing_files("llamagen-c2i-B-256", tmp_path) == []
    download.main(["--list", "--weights-dir", str(tmp_path)])
    listing = capsys.readouterr().out
    assert "llamagen-c2i-B-256" in listing and "missing c2i_L_256.pt" in listing
    with pytest.raises(ValueError, match="ships with SpecLens"):
        download.download_model("fashion-mnist", tmp_path)


def test_llamagen_models_show_imagenet_class_names(weights, no_hub):
    """A (tiny) model under LlamaGen's official names: loaded from the weights dir, ImageNet names attached."""
    gpt = tiny_gpt(num_classes=1000)
    torch.manual_seed(0)
    vq = VQModel(vq_config("VQ-tiny"))
    save_with_config(weights / "c2i_B_256.pt", gpt)
    save_with_config(weights / "vq_ds16_c2i.pt", vq)
    model = registry.load_model.__wrapped__("llamagen-c2i-B-256")  # uncached: nothing left for other tests
    names = model.info.class_names
    assert len(names) == 1000 and no_hub == []
    assert (names[0], names[1], names[207], names[281], names[388], names[999]) == (
        "tench", "goldfish", "golden retriever", "tabby", "giant panda", "toilet tissue")
    assert (names[130], names[409], names[555], names[817], names[948]) == (
        "flamingo", "analog clock", "fire engine", "sports car", "Granny Smith")


# -- no pickle anywhere ----------------------------------------------------------------------------
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def pickle_uses(source: str, name: str = "<source>") -> list[str]:
    """Every pickle entry point in `source`: pickle-like imports, torch.load without a literal
    weights_only=True, any call with allow_pickle=True, read_pickle calls."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{name}:{node.lineno} imports {m}" for m in mods if m.split(".")[0] in PICKLE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        keywords = {k.arg: k.value for k in node.keywords}
        attr = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        base = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        weights_only = keywords.get("weights_only")
        if attr == "load" and base == "torch" and not (isinstance(weights_only, ast.Constant) and weights_only.value
                                                       is True):
            found.append(f"{name}:{node.lineno} torch.load without weights_only=True")
        allow = keywords.get("allow_pickle")
        if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
            found.append(f"{name}:{node.lineno} allow_pickle")
        if attr in ("read_pickle", "to_pickle"):
            found.append(f"{name}:{node.lineno} {attr}")
    return found


def test_the_pickle_scanner_finds_each_kind():
    bad = ("import pickle\nfrom joblib import load\nimport torch, numpy as np\ntorch.load('a')\n"
           "torch.load('a', weights_only=False)\nnp.load('a', allow_pickle=True)\npd.read_pickle('a')\n")
    assert len(pickle_uses(bad)) == 6
    assert pickle_uses("torch.load('a', map_location='cpu', weights_only=True)\nnp.load('a')\n") == []


def test_no_pickle_anywhere_in_the_source_tree():
    skip = {".venv", ".git", "runs", "node_modules", "__pycache__", "shared"}
    files = [p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)]
    assert len(files) > 20
    found = [use for p in files for use in pickle_uses(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert found == []


def test_readme_lists_every_environment_variable():
    import re

    documented = set(re.findall(r"`((?:SPECLENS_|GRADIO_SERVER_)?[A-Z_]+)`", environment.__doc__)) - {"HOME"}
    assert {"SPECLENS_MODEL", "SPECLENS_THREADS", "PORT", "SPECLENS_ALLOW_DOWNLOAD"} <= documented
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert [v for v in sorted(documented) if f"`{v}`" not in readme] == []


def test_concurrent_requests_load_a_model_once(weights, monkeypatch):
    """Two threads asking for the same model while it loads: one load; a failure is shared the same way."""
    import threading
    import time
    from functools import lru_cache

    calls = []

    def slow_load(name, device, allow):
        calls.append(name)
        time.sleep(0.3)
        if name == "llamagen-c2i-B-384":
            raise registry.ModelUnavailable("no weights")
        return object()

    monkeypatch.setattr(registry, "_cached_load", lru_cache(maxsize=2)(slow_load))
    results, errors = [], []

    def request(name):
        try:
            results.append(registry.load_model(name))
        except registry.ModelUnavailable as e:
            errors.append(str(e))

    threads = [threading.Thread(target=request, args=(n,)) for n in ["llamagen-c2i-L-256"] * 3 + [
        "llamagen-c2i-B-384"] * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == ["llamagen-c2i-B-384", "llamagen-c2i-L-256"]
    assert len(results) == 3 and len({id(r) for r in results}) == 1 and errors == ["no weights"] * 3
