"""SpecLens: generate with any decoder, see every acceptance, explore the codebook, compare side by side.

    python app.py                 # the Gradio app (PORT / GRADIO_SERVER_PORT respected, for Spaces)
    python app.py sweep --decoder lantern --parameter delta --values 0,0.05,0.1,0.2 --images 50

Handlers are small adapters: they validate the widgets' values, call one library function
(`decoding` to generate, `analysis` to draw) and return its outputs. Heavy things (models,
embeddings, projections, the classifier) are loaded once per process.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import torch

from analysis import ambiguity, codebook, compare, heatmaps, static, steps, sweeps
from analysis.definitions import define
from analysis.style import empty_figure
from decoding.registry import DECODERS, make_decoder
from decoding.sampling import SamplingSettings
from decoding.trace import Trace
from models.registry import ASSETS, DEFAULT_MODEL, MODELS, ModelUnavailable, load_model

FALLBACK_MODEL = "tiny-fixture"
# UMAP fits start in the background on first use (off with SPECLENS_UMAP=0); the bundled model's ship.
PROJECTIONS = codebook.ProjectionStore(os.environ.get("SPECLENS_PROJECTIONS_DIR", ASSETS / "projections"),
                                       background=os.environ.get("SPECLENS_UMAP", "1") != "0")
CLASSIFIER_PATH = ASSETS / "fashion_mnist_classifier.pt"
OUT_DIR = Path(tempfile.mkdtemp(prefix="speclens-"))
MAX_SESSION_TRACES = 64
MAX_BROWSER_SWEEP = 60  # images; larger sweeps from the command line
DEFAULT_COMPARE = ("ar", "sjd", "lantern", "gsd")

# Ranges and tooltips of decoder hyperparameters, by name (decoders share names, e.g. `window`).
# An unknown parameter still gets a widget from its type and default.
PARAM_UI: dict[str, dict] = {
    "window": dict(kind="slider", minimum=2, maximum=64, step=1,
                   info="tokens fed per forward pass, the last committed one included"),
    "init": dict(kind="dropdown", choices=["random", "horizontal", "vertical"],
                 info="initial drafts of new window slots (SJD Fig. 9)"),
    "neighbourhood_k": dict(kind="slider", minimum=1, maximum=100, step=1,
                            info="LANTERN: size of B_k(x), the draft included (1 = no relaxation)"),
    "delta": dict(kind="slider", minimum=0.0, maximum=1.0, step=0.01,
                  info="LANTERN: total-variation budget per token (0 = exact SJD)"),
    "ratio_bound": dict(kind="number", info="LANTERN++ lambda >= 1: p~(x) <= lambda p(x); blank = off"),
    "codebook_space": dict(kind="dropdown", choices=["vq", "raw"], info="LANTERN: codebook the neighbours come from"),
    "l2_normalise": dict(kind="checkbox", info="LANTERN: re-normalise the codebook before distances"),
    "group_size": dict(kind="slider", minimum=1, maximum=64, step=1,
                       info="GSD: G, tokens ranked around the draft (1 = exact SJD)"),
    "prob_filter": dict(kind="number", info="GSD: keep x' with |p(x') - p(x)| below this; blank = off"),
    "distance_threshold": dict(kind="number", info="GSD: squared-L2 embedding distance bound; blank = off"),
    "distance_quantile": dict(kind="number", info="GSD: distance bound as a quantile in (0, 1] of pairwise "
                                                  "distances (instead of the threshold); blank = off"),
    "embedding_space": dict(kind="dropdown", choices=["gpt", "vq"], info="GSD: embedding table of the filter"),
}


# -- process-wide resources ----------------------------------------------------------------------
class ModelGate:
    """One model call at a time (a model's KV cache is per object), interactive calls first: a sweep
    takes the gate image by image and yields it whenever a generation is waiting."""

    def __init__(self):
        self._cond = threading.Condition()
        self._busy = False
        self._interactive_waiting = 0

    @contextmanager
    def use(self, interactive: bool = True):
        with self._cond:
            self._interactive_waiting += interactive
            try:
                self._cond.wait_for(lambda: not self._busy and (interactive or self._interactive_waiting == 0))
            finally:
                self._interactive_waiting -= interactive
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


GATE = ModelGate()


def get_model(name: str):
    """A registered model, loaded once; every failure becomes a message in the UI."""
    if name not in MODELS:
        raise gr.Error(f"Unknown model {name!r}. Choose one of: {', '.join(MODELS)}.")
    try:
        return load_model(name)
    except (ModelUnavailable, FileNotFoundError, OSError, ValueError, RuntimeError) as e:
        raise gr.Error(f"Model {name!r} could not be loaded: {e}") from e


def available_default_model() -> str:
    """The bundled model when its weights are here, else the tiny test model."""
    wanted = os.environ.get("SPECLENS_MODEL", DEFAULT_MODEL)
    spec = MODELS.get(wanted)
    if spec and (spec.source != "bundled" or (ASSETS / spec.gpt_file).is_file()):
        return wanted
    return FALLBACK_MODEL


@lru_cache(maxsize=1)
def get_classifier():
    if not CLASSIFIER_PATH.is_file():
        return None
    from models.classifier import load_classifier

    return load_classifier(CLASSIFIER_PATH)


@lru_cache(maxsize=8)
def embeddings_of(model_name: str, space: str) -> np.ndarray:
    model = get_model(model_name)
    table = model.codebook_embeddings() if space == "vq" else model.token_embeddings()
    return table.numpy()


@lru_cache(maxsize=4096)
def code_patch(model_name: str, code: int) -> np.ndarray:
    """The code tiled over the whole token grid, decoded: what the code looks like."""
    model = get_model(model_name)
    with GATE.use():
        return model.decode_tokens(torch.full((model.info.num_tokens,), int(code)))


# -- input checking ---------------------------------------------------------------------------------
def _as_int(value, name: str, low: int, high: int | None = None) -> int:
    if value is None or (isinstance(value, float) and not value.is_integer()):
        raise gr.Error(f"{name} must be a whole number, got {value!r}.")
    v = int(value)
    if v < low or (high is not None and v > high):
        raise gr.Error(f"{name} must be in [{low}, {high if high is not None else '∞'}], got {v}.")
    return v


def _blank_or_int(value, name: str, low: int, high: int) -> int | None:
    """A text box for an optional whole number: blank -> None."""
    if value is None or not str(value).strip():
        return None
    try:
        number = float(value)
    except ValueError as e:
        raise gr.Error(f"{name} must be a whole number or blank, got {value!r}.") from e
    return _as_int(number, name, low, high)


def parse_sampling(cfg: float, temperature: float, top_k: float, top_p: float) -> SamplingSettings:
    try:
        return SamplingSettings(float(cfg), float(temperature), int(top_k or 0), float(top_p))
    except (TypeError, ValueError) as e:
        raise gr.Error(f"Sampling settings: {e}") from e


def parse_class(model, label) -> int:
    names = model.info.class_names
    if isinstance(label, str) and label in names:
        return names.index(label)
    if isinstance(label, str) and label.split(":")[0].strip().isdigit():
        label = int(label.split(":")[0])
    return _as_int(label, "class", 0, len(names) - 1)


def build_decoder(name: str, settings: dict | str):
    if name not in DECODERS:
        raise gr.Error(f"Unknown decoder {name!r}. Choose one of: {', '.join(DECODERS)}.")
    if isinstance(settings, str):
        try:
            settings = json.loads(settings or "{}")
        except json.JSONDecodeError as e:
            raise gr.Error(f"Decoder settings are not valid JSON: {e}") from e
    if not isinstance(settings, dict):
        raise gr.Error("Decoder settings must be a JSON object, e.g. {\"window\": 16}.")
    try:
        return make_decoder(name, **settings)
    except (TypeError, ValueError) as e:
        raise gr.Error(f"Decoder {name!r}: {e}") from e


# -- decoder parameter widgets ------------------------------------------------------------------------
def parameter_fields() -> dict[str, dataclasses.Field]:
    """Every decoder hyperparameter by name (first declaration wins), in registry order."""
    out: dict[str, dataclasses.Field] = {}
    for cls in DECODERS.values():
        for f in dataclasses.fields(cls):
            out.setdefault(f.name, f)
    return out


def _widget(field: dataclasses.Field, visible: bool):
    ui = PARAM_UI.get(field.name, {})
    kind = ui.get("kind") or ("checkbox" if field.default in (True, False) else
                              "textbox" if isinstance(field.default, str) else "number")
    if "None" in str(field.type):  # optional number: a text box where blank means off (a Number sends 0)
        return gr.Textbox("" if field.default is None else str(field.default), label=field.name.replace("_", " "),
                          info=ui.get("info"), visible=visible, placeholder="blank = off")
    common = dict(label=field.name.replace("_", " "), info=ui.get("info"), visible=visible, value=field.default)
    if kind == "slider":
        return gr.Slider(ui["minimum"], ui["maximum"], step=ui["step"], **common)
    if kind == "dropdown":
        return gr.Dropdown(ui["choices"], **common)
    if kind == "checkbox":
        return gr.Checkbox(**common)
    if kind == "textbox":
        return gr.Textbox(**common)
    return gr.Number(**common)


def _coerce(field: dataclasses.Field, value):
    """Widget value -> the dataclass field's type (sliders give floats; blank numbers give None)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "off")):
        return None
    hint = str(field.type)
    if hint.startswith("int"):
        return int(round(float(value)))
    if hint.startswith("float"):
        return float(value)
    return value


def collect_settings(decoder: str, *values) -> str:
    """The selected decoder's hyperparameters from the shared widgets, as the JSON the API takes."""
    fields = parameter_fields()
    by_name = dict(zip(fields, values))
    if decoder not in DECODERS:
        return "{}"
    own = [f.name for f in dataclasses.fields(DECODERS[decoder])]
    try:
        return json.dumps({n: _coerce(fields[n], by_name[n]) for n in own})
    except ValueError as e:
        raise gr.Error(f"Decoder {decoder!r}: a setting is not a number ({e}).") from e


def settings_for(decoder: str, settings_json: str) -> dict:
    """The parameters of `decoder` among a settings object written for another (Compare tab)."""
    settings = json.loads(settings_json or "{}")
    own = {f.name for f in dataclasses.fields(DECODERS[decoder])}
    return {k: v for k, v in settings.items() if k in own}


# -- outputs ----------------------------------------------------------------------------------------
def upscale(image: np.ndarray, target: int = 280) -> np.ndarray:
    k = max(1, target // max(image.shape[:2]))
    return np.repeat(np.repeat(image, k, 0), k, 1)


def stats_card(trace: Trace) -> str:
    rate = steps.acceptance_rate([trace])
    counts = trace.kind_counts()
    rate_text = "no drafts" if np.isnan(rate) else f"{rate:.1%}"
    rows = [("NFE (forward passes)", f"**{trace.nfe}**"), ("step compression", f"**{trace.step_compression:.2f}**"),
            ("mean accepted length", f"{trace.mean_accepted_length:.2f}"),
            ("accepted drafts / pass", f"{trace.mean_accepted_drafts:.2f}"), ("acceptance rate", rate_text),
            ("committed", f"{counts['draft']} draft · {counts['relaxed']} relaxed · {counts['resampled']} resampled · "
                          f"{counts['bonus']} bonus"),
            ("wall time (this CPU)", f"{trace.total_s * 1000:.0f} ms = model {trace.forward_s * 1000:.0f} + overhead "
                                     f"{trace.overhead_s * 1000:.0f} + VQ decode {trace.vq_decode_s * 1000:.0f}")]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    defs = define("nfe", "step_compression", "mean_accepted_length", "acceptance_rate", "wall_time")
    return (f"### {trace.decoder} · {trace.class_name} · seed {trace.seed}\n\n| quantity | value |\n|---|---|\n"
            f"{table}\n\n<small>\n\n{defs}\n\n</small>")


def write_trace(trace: Trace) -> str:
    path = OUT_DIR / f"trace_{trace.model}_{trace.decoder}_c{trace.label}_s{trace.seed}.json"
    trace.save(path)
    return str(path)


def remember(session: dict | None, trace: Trace, image: np.ndarray | None) -> dict:
    session = dict(session or {})
    session["traces"] = (list(session.get("traces", [])) + [trace])[-MAX_SESSION_TRACES:]
    session["last"] = (trace, image)
    return session


def trace_views(trace: Trace, image: np.ndarray | None, view: str, overlay: bool) -> tuple:
    """Every figure of one trace: main maps, per-pass, depth, replay, ambiguity."""
    return (heatmaps.acceptance_maps(trace, image, ("kind", view), overlay=overlay),
            steps.accepted_length_figure(trace),
            steps.depth_figure({trace.decoder: [trace]}),
            steps.replay_figure(trace, image),
            ambiguity.ambiguity_histograms([trace]),
            ambiguity.ambiguity_maps(trace))


# -- handlers -------------------------------------------------------------------------------------------
def generate(model_name: str, decoder_name: str, settings_json: str, label, seed, cfg: float, temperature: float,
             top_k: float, top_p: float, view: str, overlay: bool, session: dict | None,
             progress=gr.Progress()) -> Iterator[tuple]:
    """Decode one image; yield the image and stats first, then the figures."""
    model = get_model(model_name)
    decoder = build_decoder(decoder_name, settings_json)
    sampling = parse_sampling(cfg, temperature, top_k, top_p)
    label, seed = parse_class(model, label), _as_int(seed, "seed", 0, 2**31 - 1)
    progress(0.1, desc=f"{decoder_name}: decoding {model.info.num_tokens} tokens")
    with GATE.use():
        result = decoder.generate(model, label, sampling, seed)
    trace, image = result.trace, result.image
    session = remember(session, trace, image)
    first = (upscale(image), stats_card(trace), write_trace(trace), session)
    yield first + (gr.skip(),) * 6
    progress(0.9, desc="drawing")
    yield first + trace_views(trace, image, view, overlay)  # complete, for API clients that keep the last


def redraw(view: str, overlay: bool, session: dict | None):
    if not session or "last" not in session:
        return empty_figure("generate an image or upload a trace first")
    trace, image = session["last"]
    return heatmaps.acceptance_maps(trace, image, ("kind", view), overlay=overlay)


def view_caption(view: str) -> str:
    return f"<small>\n\n{define('commit_kind', heatmaps.VIEW_DEFINITION[view], 'p_q')}\n\n</small>"


def load_trace_file(file, view: str, overlay: bool, session: dict | None) -> tuple:
    """A trace JSON from the command line: validated, then shown (the image decoded if the model is here)."""
    if file is None:
        raise gr.Error("Choose a trace JSON file first.")
    path = file if isinstance(file, str) else getattr(file, "name", None)
    try:
        trace = Trace.load(path)
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise gr.Error(f"Not a SpecLens trace: {e}") from e
    image = None
    if trace.model in MODELS:
        try:
            model = load_model(trace.model)
            if model.info.grid_shape == tuple(trace.grid_shape) and model.info.vocab_size == trace.vocab_size:
                with GATE.use():
                    image = model.decode_tokens(torch.tensor(trace.tokens))
        except Exception:  # the trace is still worth showing without its image
            image = None
    session = remember(session, trace, image)
    shown = upscale(image) if image is not None else None
    return (shown, stats_card(trace), session) + trace_views(trace, image, view, overlay)


def pick_from_image(session: dict | None, evt: gr.SelectData):
    """Click on the image -> the token at that grid cell, for the Codebook tab."""
    if not session or "last" not in session:
        raise gr.Error("Generate an image first.")
    trace, image = session["last"]
    h, w = trace.grid_shape
    shown = upscale(image) if image is not None else np.zeros((h, w))
    x, y = evt.index
    row, col = min(h - 1, int(y * h / shown.shape[0])), min(w - 1, int(x * w / shown.shape[1]))
    pos = heatmaps.position_of(row, col, trace.grid_shape)
    table = heatmaps.position_table(trace)
    text = (f"Picked position {pos} (row {row}, col {col}): token **{trace.tokens[pos]}**, "
            f"{trace.commit_kind[pos]} at pass {trace.commit_step[pos]}, p = {trace.commit_p[pos]:.3f}"
            + ("" if np.isnan(table.q[pos]) else f", q(draft) = {table.q[pos]:.3f}")
            + ". Open the Codebook tab to see its neighbours and groups.")
    return trace.tokens[pos], str(pos), text


def run_compare(model_name: str, decoders: list[str], settings_json: str, label, seed, cfg: float,
                temperature: float, top_k: float, top_p: float, session: dict | None, progress=gr.Progress()):
    if not decoders:
        raise gr.Error("Tick at least one decoder.")
    model = get_model(model_name)
    sampling = parse_sampling(cfg, temperature, top_k, top_p)
    label, seed = parse_class(model, label), _as_int(seed, "seed", 0, 2**31 - 1)
    built = [build_decoder(d, settings_for(d, settings_json) if d in DECODERS else {}) for d in decoders]
    traces, images = [], []
    for name, dec in progress.tqdm(list(zip(decoders, built)), desc="decoders"):
        with GATE.use():
            r = dec.generate(model, label, sampling, seed)
        traces.append(r.trace)
        images.append(r.image)
        session = remember(session, r.trace, r.image)
    rows = compare.compare_table(traces)
    return (compare.compare_images_figure(traces, images), compare.speed_figure(traces),
            steps.depth_figure({t.decoder: [t] for t in traces}), pd.DataFrame(rows), session)


def explore_codebook(model_name: str, space: str, colour_by: str, code, k, position: str, session: dict | None):
    """The projection coloured by this session's traces, the code's nearest codes and, from the current
    trace, the groups it formed or joined (and the group at a grid position), with decoded patches."""
    model = get_model(model_name)
    vocab = model.info.vocab_size
    code = _as_int(code, "token id", 0, vocab - 1)
    k = _as_int(k, "number of nearest codes", 0, min(64, vocab - 1))
    emb = embeddings_of(model_name, space)
    xy, method = PROJECTIONS.get(model_name, space, emb)
    traces = [t for t in (session or {}).get("traces", []) if t.model == model_name]
    stats = codebook.code_stats(traces, vocab) if traces else None
    current = (session or {}).get("last", (None, None))[0]
    current = current if current is not None and current.model == model_name else None
    pos = _blank_or_int(position, "grid position", 0, model.info.num_tokens - 1)
    if pos is not None and current is None:
        raise gr.Error("A grid position needs a trace of this model: generate an image or upload a trace first.")
    try:
        highlight = codebook.code_highlight(emb, code, k, current, pos)
    except ValueError as e:
        raise gr.Error(f"Codebook: {e}") from e
    fig = codebook.codebook_figure(xy, stats, colour_by, highlight, method, space)
    gallery = [(upscale(code_patch(model_name, c), 112), caption) for c, caption in highlight.gallery()]
    summary = codebook.code_summary(stats, code) if stats else {"code": code, "note": "no traces yet in this session"}
    summary |= highlight.summary()
    groups = ("no trace yet, so no groups" if current is None else
              f"groups from the current trace ({current.decoder}, class {current.class_name}, seed {current.seed})"
              + ("" if highlight.groups_recorded else ": it records none"))
    status = (f"Projection: {PROJECTIONS.status(model_name, space)} · statistics from {len(traces)} trace(s) of "
              f"this session · {groups}.")
    return fig, gallery, summary, status


def run_sweep_ui(model_name: str, decoder_name: str, parameter: str, values: str, images: float, settings_json: str,
                 cfg: float, temperature: float, top_k: float, top_p: float, progress=gr.Progress()):
    model = get_model(model_name)
    sampling = parse_sampling(cfg, temperature, top_k, top_p)
    n_images = _as_int(images, "images per setting", 1, MAX_BROWSER_SWEEP)
    grid = parse_values(decoder_name, parameter, values)
    if len(grid) * n_images > MAX_BROWSER_SWEEP:
        raise gr.Error(f"{len(grid)} settings x {n_images} images = {len(grid) * n_images} images; the browser runs "
                       f"at most {MAX_BROWSER_SWEEP}. Run larger sweeps from the command line: python app.py sweep "
                       f"--decoder {decoder_name} --parameter {parameter} --values {values.replace(' ', '')} "
                       f"--images {n_images}")
    base = settings_for(decoder_name, settings_json)
    samples = list(run_sweep(model, decoder_name, base, parameter, grid, n_images, sampling, interactive=False,
                             progress=progress))
    rows = sweeps.sweep_table(samples)
    return pd.DataFrame(rows), sweeps.sweep_curves(rows, parameter), sweeps.speed_quality_figure(rows, parameter)


def parse_values(decoder_name: str, parameter: str, values: str) -> list:
    if decoder_name not in DECODERS:
        raise gr.Error(f"Unknown decoder {decoder_name!r}.")
    fields = {f.name: f for f in dataclasses.fields(DECODERS[decoder_name])}
    if parameter not in fields:
        raise gr.Error(f"Decoder {decoder_name!r} has no parameter {parameter!r}; it has {', '.join(fields)}.")
    out = []
    for v in [v.strip() for v in str(values).split(",") if v.strip()]:
        try:
            out.append(None if v.lower() == "none" else _coerce(fields[parameter], v))
        except ValueError as e:
            raise gr.Error(f"{parameter} value {v!r} is not a number.") from e
    if not out:
        raise gr.Error("Give at least one value, comma-separated, e.g. 0, 0.05, 0.1.")
    return out


def run_sweep(model, decoder_name: str, base: dict, parameter: str, grid: list, n_images: int,
              sampling: SamplingSettings, interactive: bool = False, progress=None) -> Iterator[sweeps.SweepSample]:
    """Each setting x n_images (classes cycled, seed = image index); classifier predictions when shipped."""
    classifier = get_classifier() if model.info.name == DEFAULT_MODEL else None
    jobs = [(v, i) for v in grid for i in range(n_images)]
    decoders = {}
    for v in grid:
        try:
            decoders[str(v)] = make_decoder(decoder_name, **{**base, parameter: v})
        except (TypeError, ValueError) as e:
            raise gr.Error(f"{parameter}={v}: {e}") from e
    iterator = progress.tqdm(jobs, desc=f"sweep over {parameter}") if progress is not None else jobs
    for v, i in iterator:
        label = i % model.info.num_classes
        with GATE.use(interactive):
            r = decoders[str(v)].generate(model, label, sampling, seed=i)
        predicted = int(classifier(r.image[None])[0]) if classifier is not None else None
        yield sweeps.SweepSample({"decoder": decoder_name, parameter: v}, r.trace, label, predicted)


def on_model_change(model_name: str):
    """The class list of the chosen model (LlamaGen: 1000 ImageNet classes)."""
    names = get_model(model_name).info.class_names
    return gr.update(choices=[f"{i}: {n}" for i, n in enumerate(names)], value=f"0: {names[0]}")


def update_parameter_widgets(decoder: str):
    own = {f.name for f in dataclasses.fields(DECODERS[decoder])} if decoder in DECODERS else set()
    return [gr.update(visible=n in own) for n in parameter_fields()]


def sweepable(decoder: str) -> list[str]:
    """Numeric hyperparameters of a decoder, the most interesting (the relaxation's) first."""
    if decoder not in DECODERS:
        return []
    names = [f.name for f in dataclasses.fields(DECODERS[decoder]) if any(t in str(f.type) for t in ("int", "float"))]
    preferred = ("delta", "group_size", "neighbourhood_k", "prob_filter")
    return sorted(names, key=lambda n: preferred.index(n) if n in preferred else len(preferred))


def sweep_parameters(decoder: str):
    names = sweepable(decoder)
    return gr.update(choices=names, value=names[0] if names else None)


# -- layout ------------------------------------------------------------------------------------------------
METHODS_ABOUT = [  # decoder, what it does, lossless, paper
    ("ar", "one token per forward pass: the baseline", "yes",
     "LlamaGen, [arXiv 2406.06525](https://arxiv.org/abs/2406.06525)"),
    ("jacobi", "Jacobi iteration: a draft is kept only if it equals this pass's own sample; under sampling it "
     "rarely accepts anything", "yes", "Song et al. 2021; Santilli et al. 2023"),
    ("sjd", "Speculative Jacobi Decoding: the previous iteration's samples are the drafts, accepted with "
     "probability min(1, p/q)", "yes", "Teng et al., ICLR 2025, [arXiv 2410.01699](https://arxiv.org/abs/2410.01699)"),
    ("lantern", "SJD with relaxed acceptance: the target mass of the draft's nearest codes in the VQ codebook "
     "(at most delta in all) counts for the draft", "no: TV <= delta per token",
     "LANTERN, ICLR 2025, [arXiv 2410.03355](https://arxiv.org/abs/2410.03355); "
     "LANTERN++, [arXiv 2502.06352](https://arxiv.org/abs/2502.06352)"),
    ("gsd", "SJD with grouped acceptance: min(1, p(G)/q(G)) over a dynamic group of tokens ranked near the "
     "draft, with similar probability and nearby embeddings", "no",
     "GSD, ICCV 2025, [arXiv 2508.07747](https://arxiv.org/abs/2508.07747)"),
    ("sjd-coupled", "SJD whose later drafts are maximally coupled to the previous ones, so they stop flickering "
     "between passes", "yes", "SCD, [arXiv 2510.24211](https://arxiv.org/abs/2510.24211)"),
]


def method_table() -> str:
    rows = [f"| `{d}` | {what} | {lossless} | {paper} |" for d, what, lossless, paper in METHODS_ABOUT]
    return "\n".join(["| decoder | what it does | lossless? | paper |", "|---|---|---|---|", *rows])


ABOUT = """
## What SpecLens shows
An autoregressive image model (here LlamaGen's architecture: a GPT over the tokens of a VQ image
tokenizer) writes an image one token per forward pass. **Speculative decoding** guesses several
tokens ahead and checks the guesses in one forward pass; every guess that passes saves a pass.
SpecLens records every check (the *trace*) and draws it on the token grid.

""" + method_table() + """

**Definitions** (the same everywhere in the app, the traces and the benchmark):
""" + define("forward_pass", "nfe", "step_compression", "mean_accepted_length", "mean_accepted_drafts",
             "acceptance_rate", "commit_kind", "wall_time", "class_consistency") + """

The bundled model is trained on Fashion-MNIST (28x28 images, 14x14 tokens, 1024 codes) so that
it runs on a CPU; timings in this app are of this machine's CPU and only indicative. Step
compression does not depend on the hardware.

**Command line**: traces from `python -m decoding.quality ...` or `Trace.save(...)` can be
uploaded on the Generate tab; larger sweeps: `python app.py sweep --help`.
"""


def build_demo(default_model: str | None = None) -> gr.Blocks:
    default_model = default_model or available_default_model()
    class_names = list(load_model(default_model).info.class_names)
    decoder_names = list(DECODERS)
    default_decoder = next((d for d in ("lantern", "sjd", "ar") if d in DECODERS), decoder_names[0])
    fields = parameter_fields()
    own = {f.name for f in dataclasses.fields(DECODERS[default_decoder])}

    with gr.Blocks(title="SpecLens: speculative decoding for image models") as demo:
        session = gr.State({})
        gr.Markdown("# SpecLens\nSpeculative decoding for autoregressive image models, token by token: "
                    "generate with any decoder and see which forward pass committed each token, and how.")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        model_dd = gr.Dropdown(list(MODELS), value=default_model, label="model",
                                               allow_custom_value=True,
                                               info="the bundled Fashion-MNIST model runs on CPU")
                        class_dd = gr.Dropdown([f"{i}: {n}" for i, n in enumerate(class_names)],
                                               value=f"0: {class_names[0]}", label="class")
                        with gr.Row():
                            seed_nb = gr.Number(0, label="seed", precision=0, minimum=0)
                            dice = gr.Button("🎲 random seed", size="sm")
                        decoder_dd = gr.Dropdown(decoder_names, value=default_decoder, label="decoder",
                                                 info="see the About tab for what each one does")
                        param_widgets = [_widget(f, n in own) for n, f in fields.items()]
                        with gr.Accordion("sampling", open=False):
                            cfg_sl = gr.Slider(1.0, 10.0, value=4.0, step=0.5, label="CFG scale",
                                               info="classifier-free guidance (1 = off)")
                            temp_sl = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="temperature",
                                                info="0 = greedy")
                            topk_nb = gr.Number(0, label="top-k", precision=0, minimum=0, info="0 = off")
                            topp_sl = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p", info="1 = off")
                        settings_tb = gr.Textbox(label="decoder settings sent (JSON)", interactive=False,
                                                 value=collect_settings(default_decoder,
                                                                        *[w.value for w in param_widgets]))
                        go_btn = gr.Button("Generate", variant="primary")
                        with gr.Accordion("view a trace from the command line", open=False):
                            upload = gr.File(label="trace JSON", file_types=[".json"], type="filepath")
                    with gr.Column(scale=3):
                        with gr.Row():
                            image_out = gr.Image(label="generated image (click a token to pick it)", format="png",
                                                 type="numpy", height=300, width=300, interactive=False,
                                                 buttons=["download"])
                            with gr.Column():
                                card = gr.Markdown("Press **Generate**.")
                                trace_file = gr.File(label="trace (JSON)", interactive=False)
                                picked_md = gr.Markdown()
                        with gr.Row():
                            view_radio = gr.Radio([(heatmaps.VIEWS[v], v) for v in heatmaps.VIEWS if v != "kind"],
                                                  value="step", label="second map")
                            overlay_cb = gr.Checkbox(False, label="draw the maps over the image")
                        maps_plot = gr.Plot(label="acceptance on the token grid")
                        maps_caption = gr.Markdown(view_caption("step"))
                        with gr.Accordion("per forward pass", open=True):
                            len_plot = gr.Plot(label="accepted length")
                            gr.Markdown(f"<small>\n\n{define('mean_accepted_length', 'mean_accepted_drafts')}"
                                        "\n\n</small>")
                            depth_plot = gr.Plot(label="acceptance by depth")
                            gr.Markdown(f"<small>\n\n{define('acceptance_by_depth')}\n\n</small>")
                        with gr.Accordion("replay", open=False):
                            replay_plot = gr.Plot(label="replay")
                            gr.Markdown(f"<small>\n\n{define('replay')}\n\n</small>")
                        with gr.Accordion("ambiguity of the target", open=False):
                            amb_plot = gr.Plot(label="ambiguity histograms")
                            amb_map = gr.Plot(label="ambiguity on the grid")
                            gr.Markdown(f"<small>\n\n{define('top1', 'entropy')}\n\n</small>")
                        with gr.Accordion("static export", open=False):
                            png_btn = gr.Button("summary PNG (matplotlib)", size="sm")
                            png_file = gr.File(label="summary PNG", interactive=False)

            with gr.Tab("Compare", id="compare"):
                gr.Markdown("The model, class, seed, sampling and decoder settings of the Generate tab, through "
                            "several decoders.")
                with gr.Row():
                    cmp_dec = gr.CheckboxGroup(decoder_names, value=[d for d in DEFAULT_COMPARE if d in DECODERS],
                                               label="decoders")
                    cmp_btn = gr.Button("Compare", variant="primary", scale=0)
                cmp_images = gr.Plot(label="images")
                gr.Markdown(f"<small>\n\n{define('nfe', 'mean_accepted_length', 'pixel_diff', 'token_agreement')}"
                            "\n\n</small>")
                cmp_speed = gr.Plot(label="speed")
                gr.Markdown(f"<small>\n\n{define('step_compression', 'wall_time')}\n\n</small>")
                cmp_depth = gr.Plot(label="acceptance by depth")
                cmp_table = gr.Dataframe(label="numbers", interactive=False, wrap=True)

            with gr.Tab("Codebook", id="codebook"):
                with gr.Row():
                    space_radio = gr.Radio([(v, k) for k, v in codebook.SPACES.items()], value="vq",
                                           label="embedding space")
                    colour_radio = gr.Radio([(v, k) for k, v in codebook.COLOUR_BY.items()], value="usage",
                                            label="colour by (this session's traces)")
                with gr.Row():
                    code_nb = gr.Number(0, label="token id (or click a token on the Generate tab's image)",
                                        precision=0, minimum=0)
                    cb_pos = gr.Textbox("", label="grid position (blank = none)", placeholder="e.g. 37",
                                        info="the group verified there, in the current trace")
                    k_sl = gr.Slider(0, 32, value=8, step=1, label="nearest codes shown")
                    cb_btn = gr.Button("Show", variant="primary", scale=0)
                cb_status = gr.Markdown()
                cb_plot = gr.Plot(label="codebook")
                cb_defs = define("projection", "usage", "code_acceptance", "code_relaxed", "neighbourhood",
                                 "trace_groups")
                gr.Markdown(f"<small>\n\n{cb_defs}\n\n</small>")
                marks = codebook.HIGHLIGHT_MARKS
                gr.Markdown(f"<small>Decoded codes below, marked as in the plot: {marks['picked']} picked · "
                            f"{marks['neighbours']} nearest (d = L2 distance) · {marks['as_draft']} in its groups · "
                            f"{marks['as_member']} in groups it joined · {marks['position']} in the position's "
                            "group</small>")
                cb_gallery = gr.Gallery(label="decoded codes, each tiled over the grid", columns=9, height=260,
                                        object_fit="contain")
                cb_summary = gr.JSON(label="what this session's traces say about the code")

            with gr.Tab("Sweep", id="sweep"):
                gr.Markdown(f"A small sweep runs here (at most {MAX_BROWSER_SWEEP} images, classes cycled, seed = "
                            "image index), with the Generate tab's model, sampling and other decoder settings. "
                            "Generations of other users go first. Larger sweeps: `python app.py sweep --help`.")
                with gr.Row():
                    sw_dec = gr.Dropdown(decoder_names, value=default_decoder, label="decoder")
                    sw_names = sweepable(default_decoder)
                    sw_param = gr.Dropdown(sw_names, value=sw_names[0] if sw_names else None, label="parameter",
                                           allow_custom_value=True)  # choices follow the decoder; checked in run
                    sw_values = gr.Textbox("0, 0.05, 0.1, 0.2, 0.4", label="values (comma-separated)")
                    sw_images = gr.Slider(1, 20, value=5, step=1, label="images per setting")
                    sw_btn = gr.Button("Run sweep", variant="primary", scale=0)
                sw_table = gr.Dataframe(label="per setting", interactive=False, wrap=True)
                sw_curves = gr.Plot(label="curves")
                sw_sq = gr.Plot(label="speed and quality")
                gr.Markdown(f"<small>\n\n{define('acceptance_rate', 'step_compression', 'class_consistency')}"
                            "\n\n</small>")

            with gr.Tab("About", id="about"):
                gr.Markdown(ABOUT)

        # -- events ----------------------------------------------------------------------------------
        sampling_in = [cfg_sl, temp_sl, topk_nb, topp_sl]
        decoder_dd.change(update_parameter_widgets, decoder_dd, param_widgets, queue=False, api_visibility="private")
        model_dd.change(on_model_change, model_dd, class_dd, api_visibility="private")
        for w in [decoder_dd, *param_widgets]:
            w.change(collect_settings, [decoder_dd, *param_widgets], settings_tb, queue=False,
                     api_visibility="private")
        dice.click(lambda: random.randrange(2**31 - 1), None, seed_nb, queue=False, api_visibility="private")
        gen_outputs = [image_out, card, trace_file, session, maps_plot, len_plot, depth_plot, replay_plot, amb_plot,
                       amb_map]
        go_btn.click(collect_settings, [decoder_dd, *param_widgets], settings_tb, queue=False,
                     api_visibility="private").then(
            generate, [model_dd, decoder_dd, settings_tb, class_dd, seed_nb, *sampling_in, view_radio, overlay_cb,
                       session], gen_outputs, api_name="generate", concurrency_id="model", concurrency_limit=2)
        view_radio.change(view_caption, view_radio, maps_caption, queue=False, api_visibility="private")
        for w in (view_radio, overlay_cb):
            w.change(redraw, [view_radio, overlay_cb, session], maps_plot, api_visibility="private")
        upload.upload(load_trace_file, [upload, view_radio, overlay_cb, session],
                      [image_out, card, session, maps_plot, len_plot, depth_plot, replay_plot, amb_plot, amb_map],
                      api_name="view_trace")
        image_out.select(pick_from_image, session, [code_nb, cb_pos, picked_md], api_visibility="private")
        png_btn.click(lambda s: _summary_png(s), session, png_file, api_name="summary_png")
        cmp_btn.click(collect_settings, [decoder_dd, *param_widgets], settings_tb, queue=False,
                      api_visibility="private").then(
            run_compare, [model_dd, cmp_dec, settings_tb, class_dd, seed_nb, *sampling_in, session],
            [cmp_images, cmp_speed, cmp_depth, cmp_table, session], api_name="compare", concurrency_id="model")
        cb_btn.click(explore_codebook, [model_dd, space_radio, colour_radio, code_nb, k_sl, cb_pos, session],
                     [cb_plot, cb_gallery, cb_summary, cb_status], api_name="codebook", concurrency_id="model")
        sw_dec.change(sweep_parameters, sw_dec, sw_param, queue=False, api_visibility="private")
        sw_btn.click(collect_settings, [sw_dec, *param_widgets], settings_tb, queue=False,
                     api_visibility="private").then(
            run_sweep_ui, [model_dd, sw_dec, sw_param, sw_values, sw_images, settings_tb, *sampling_in],
            [sw_table, sw_curves, sw_sq], api_name="sweep", concurrency_id="sweep", concurrency_limit=1)
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo


def _summary_png(session: dict | None) -> str:
    if not session or "last" not in session:
        raise gr.Error("Generate an image first.")
    trace, image = session["last"]
    path = OUT_DIR / f"summary_{trace.decoder}_c{trace.label}_s{trace.seed}.png"
    path.write_bytes(static.summary_png(trace, image))
    return str(path)


def warm_up(model_name: str) -> None:
    """One untimed generation per decoder family, so the first user's image is not the slow one."""
    model = load_model(model_name)
    for name in ("ar", "lantern"):
        if name in DECODERS:
            make_decoder(name).generate(model, 0, SamplingSettings(), seed=0)


def sweep_cli(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python app.py sweep", description="A sweep of one decoder hyperparameter: "
                                 "writes a table (CSV, JSON), the figures (HTML) and the traces (JSONL).")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--decoder", default="lantern")
    ap.add_argument("--parameter", default="delta")
    ap.add_argument("--values", default="0,0.05,0.1,0.2,0.4")
    ap.add_argument("--images", type=int, default=20, help="images per setting (classes cycled, seed = index)")
    ap.add_argument("--settings", default="{}", help="other decoder settings as JSON")
    ap.add_argument("--cfg-scale", type=float, default=4.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--out", default="runs/sweep")
    a = ap.parse_args(argv)
    model = load_model(a.model)
    grid = parse_values(a.decoder, a.parameter, a.values)
    samples = list(run_sweep(model, a.decoder, json.loads(a.settings), a.parameter, grid, a.images,
                             SamplingSettings(a.cfg_scale, a.temperature)))
    rows = sweeps.sweep_table(samples)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(rows, indent=2))
    import csv

    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(out / "traces.jsonl", "w") as f:
        for s in samples:
            f.write(json.dumps({"setting": s.setting, "label": s.label, "predicted": s.predicted,
                                "trace": s.trace.to_dict()}) + "\n")
    sweeps.sweep_curves(rows, a.parameter).write_html(out / "curves.html")
    sweeps.speed_quality_figure(rows, a.parameter).write_html(out / "speed_quality.html")
    print(json.dumps(rows, indent=2))


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(int(os.environ.get("SPECLENS_THREADS", "2")))
    if argv[:1] == ["sweep"]:
        sweep_cli(argv[1:])
        return
    model = available_default_model()
    warm_up(model)
    port = int(os.environ.get("PORT", os.environ.get("GRADIO_SERVER_PORT", "7860")))
    build_demo(model).launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"), server_port=port,
                             theme=gr.themes.Soft())


def __getattr__(name: str):
    """`app.demo` (what `gradio app.py` reload mode looks for), built on first access, not at import."""
    if name == "demo":
        global demo
        demo = build_demo()
        return demo
    raise AttributeError(name)


if __name__ == "__main__":
    main()
