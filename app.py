"""SpecLens: generate with any decoder, see every acceptance, explore the codebook, compare side by side.

    python app.py                 # the Gradio app (PORT / GRADIO_SERVER_PORT respected, for Spaces)
    python app.py sweep --decoder lantern ...   # the same as python -m decoding.sweep --decoder lantern ...

Wiring only: one builder per tab, decoder widgets generated from the decoders' parameter metadata,
one list of trace views (`ui.views`) driving every figure output, and small handlers that each call
one library function. Serving concerns (limits, the bounded trace store, per-client job limits,
escaping) live in `ui/`; library code raises ValueError and `shown` turns it into the page's message.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import os
import random
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import torch
from PIL import Image

from analysis import codebook, compare, heatmaps, static, sweeps
from analysis.definitions import define
from analysis.style import empty_figure
from decoding import quality
from decoding.files import atomic_write_bytes, atomic_write_text
from decoding.metrics import FD_NAME
from decoding.params import describe
from decoding.registry import DECODERS, decoder_table_markdown
from decoding.sampling import SamplingSettings
from decoding.sweep import run_sweep
from decoding.trace import Trace
from decoding.trace_limits import load_bounded_trace
from models.environment import read_environment
from models.registry import MODELS, ModelUnavailable, load_model
from ui import limits, parse, text
from ui.jobs import JobLimiter, ModelGate, client_address
from ui.models import served_models, start_model
from ui.runs import run_decoders
from ui.store import TraceStore
from ui.tempfiles import TempFolder
from ui.views import COMPARE_VIEWS, TRACE_VIEWS, draw_compare_views, draw_trace_views, sections
from ui.widgets import DecoderPanel, all_settings_json, decoder_panel, model_bounds, widget

log = logging.getLogger("speclens.app")
DEFAULT_COMPARE = ("ar", "sjd", "lantern", "gsd")
GATE = ModelGate()
JOBS = JobLimiter(limits.MAX_JOBS_PER_SESSION, limits.MAX_JOBS_PER_ADDRESS)
STORE = TraceStore(limits.MAX_SESSION_TRACES, limits.MAX_STORED_TRACES, limits.MAX_STORED_WEIGHT,
                   limits.SESSION_IDLE_S)
FILES = TempFolder("speclens-", limits.FILE_MAX_AGE_S, limits.FILE_MAX_COUNT)


# -- process-wide resources (loaded once, on first use) ---------------------------------------------------
SERVED: list[str] = []  # the models this server offers; set by build_demo


@lru_cache(maxsize=1)
def settings():
    """The validated environment (models.environment); EnvironmentSettingError names a bad variable."""
    return read_environment()


def available() -> list[str]:
    return SERVED


@lru_cache(maxsize=1)
def projections() -> codebook.ProjectionStore:
    """Projections computed here go to the configured user folder (none: memory only), never into assets/."""
    return codebook.ProjectionStore(settings().projections_dir, background=settings().umap)


def get_model(name: str):
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Choose one of: {', '.join(available())}.")
    if name not in available():
        raise ValueError(f"Model {name!r} is not available on this server (no weights here, downloads off). "
                         f"Choose one of: {', '.join(available())}.")
    try:
        return load_model(name)
    except (ModelUnavailable, FileNotFoundError, OSError, RuntimeError) as e:
        raise ValueError(f"Model {name!r} could not be loaded: {e}") from e


@lru_cache(maxsize=4)
def embeddings_of(model_name: str, space: str) -> np.ndarray:
    model = get_model(model_name)
    return (model.codebook_embeddings() if space == "vq" else model.token_embeddings()).numpy()


@lru_cache(maxsize=512)
def code_patch(model_name: str, code: int, size: int = 112) -> np.ndarray:
    """The code tiled over the whole token grid, decoded: what the code looks like (a size-px thumbnail, so
    the cache stays small for 256-px LlamaGen images: at most 512 x 37 KB)."""
    model = get_model(model_name)
    with GATE.use():
        image = model.decode_tokens(torch.full((model.info.num_tokens,), int(code)))
    if max(image.shape[:2]) <= size:
        return upscale(image, size)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BOX))


# -- request plumbing ------------------------------------------------------------------------------------------
def shown(fn):
    """The library's ValueError (a specific message) becomes the page's error, with the same text; any
    other failure is named too, never a bare 'Error'."""
    def as_error(e: Exception) -> gr.Error:
        if isinstance(e, ValueError):
            return gr.Error(str(e))
        log.exception("handler %s failed", fn.__name__)
        return gr.Error(f"Internal error in {fn.__name__} ({type(e).__name__}): {e}")

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:
                raise as_error(e) from e
        return generator

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:
            raise as_error(e) from e
    return call


def session_of(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


def job(request: gr.Request | None):
    """A slot among this client's jobs in flight (refused with the limit's message when full)."""
    headers = dict(getattr(request, "headers", None) or {})
    host = getattr(getattr(request, "client", None), "host", None)
    return JOBS.slot(session_of(request), client_address(headers, host))


def upscale(image: np.ndarray, target: int = 280) -> np.ndarray:
    k = max(1, target // max(image.shape[:2]))
    return np.repeat(np.repeat(image, k, 0), k, 1)


def settings_note(trace: Trace) -> str:
    shown_settings = " · ".join(f"{text.escape_md(k)} {text.escape_md(v)}" for k, v in trace.settings.items())
    return f"<small>settings: {shown_settings or 'none'}</small>"


def write_file(stem: str, suffix: str, data: str | bytes) -> str:
    path = FILES.path(stem, suffix)
    (atomic_write_bytes if isinstance(data, bytes) else atomic_write_text)(path, data)
    return str(path)


def last_trace(request: gr.Request | None, what: str = "Generate an image or upload a trace first."):
    last = STORE.last(session_of(request))
    if last is None:
        raise ValueError(what)
    return last


# -- handlers ------------------------------------------------------------------------------------------------------
@shown
def generate(model_name: str, decoder_name: str, settings_json: str, label, seed, cfg: float, temperature: float,
             top_k: float, top_p: float, view: str, overlay: bool, request: gr.Request, progress=gr.Progress()):
    """Decode one image; yield the image and stats first, then the figures."""
    with job(request):
        progress(0.05, desc=f"loading {model_name}")
        model = get_model(model_name)
        decoder = parse.build_decoder(decoder_name, settings_json, model.info)
        sampling = parse.parse_sampling(cfg, temperature, top_k, top_p)
        label, seed = parse.parse_class(model.info, label), parse.as_int(seed, "seed", 0, limits.MAX_SEED)
        progress(0.1, desc=f"{decoder_name}: decoding {model.info.num_tokens} tokens")
        with GATE.use():
            result = decoder.generate(model, label, sampling, seed)
    trace, image = result.trace, result.image
    STORE.add(session_of(request), trace, image)
    path = write_file(f"trace_{trace.model}_{trace.decoder}_c{trace.label}_s{trace.seed}", ".json", trace.to_json())
    first = (upscale(image), text.stats_card(trace, settings_note(trace)), path)
    yield first + (gr.skip(),) * len(TRACE_VIEWS)
    progress(0.9, desc="drawing")
    yield first + draw_trace_views(trace, image, view, overlay)  # complete, for API clients that keep the last


@shown
def redraw(view: str, overlay: bool, request: gr.Request):
    last = STORE.last(session_of(request))
    if last is None:
        return empty_figure("generate an image or upload a trace first")
    return TRACE_VIEWS[0].draw(*last, view, overlay)


def view_caption(view: str) -> str:
    return f"<small>\n\n{define('commit_kind', heatmaps.VIEW_DEFINITION[view], 'p_q')}\n\n</small>"


def read_upload(file) -> bytes:
    if file is None:
        raise ValueError("Choose a trace JSON file first.")
    path = Path(file if isinstance(file, str) else getattr(file, "name", ""))
    with open(path, "rb") as f:
        data = f.read(limits.MAX_UPLOAD_BYTES + 1)  # never more than the limit into memory
    if len(data) > limits.MAX_UPLOAD_BYTES:
        raise ValueError(f"Not a SpecLens trace: the file is larger than {limits.MAX_UPLOAD_BYTES // 2**20} MB, "
                         "the upload limit")
    return data


def trace_image(trace: Trace) -> tuple[np.ndarray | None, str]:
    """The trace's tokens decoded when its model is available here (never downloaded), else a note."""
    if trace.model not in available():
        return None, f"*Model {text.escape_md(trace.model)} is not available on this server: shown without its image.*"
    model = get_model(trace.model)
    if model.info.grid_shape != tuple(trace.grid_shape) or model.info.vocab_size != trace.vocab_size:
        return None, "*The trace's grid or vocabulary differs from its model's: shown without its image.*"
    with GATE.use():
        return model.decode_tokens(torch.tensor(trace.tokens)), ""


@shown
def load_trace_file(file, view: str, overlay: bool, request: gr.Request) -> tuple:
    """A trace JSON from the command line: bounded, validated, its names made plain text, then shown."""
    data = read_upload(file)
    with job(request):
        try:
            trace = text.sanitized_trace(load_bounded_trace(data, limits.TRACE_LIMITS))
        except ValueError as e:
            raise ValueError(f"Not a SpecLens trace: {e}") from e
        image, note = trace_image(trace)
    STORE.add(session_of(request), trace, image)
    shown_image = upscale(image) if image is not None else None
    return (shown_image, text.stats_card(trace, note)) + draw_trace_views(trace, image, view, overlay)


@shown
def pick_from_image(evt: gr.SelectData, request: gr.Request):
    """Click on the image -> the token at that grid cell, for the Codebook tab."""
    trace, image = last_trace(request, "Generate an image first.")
    h, w = trace.grid_shape
    shown_image = upscale(image) if image is not None else np.zeros((h, w))
    x, y = evt.index
    row, col = min(h - 1, int(y * h / shown_image.shape[0])), min(w - 1, int(x * w / shown_image.shape[1]))
    pos = heatmaps.position_of(row, col, trace.grid_shape)
    q = heatmaps.position_table(trace).q[pos]
    message = (f"Picked position {pos} (row {row}, col {col}): token **{trace.tokens[pos]}**, "
               f"{trace.commit_kind[pos]} at pass {trace.commit_step[pos]}, p = {trace.commit_p[pos]:.3f}"
               + ("" if np.isnan(q) else f", q(draft) = {q:.3f}") + ". Open the Codebook tab to see its neighbours.")
    return trace.tokens[pos], str(pos), message


def compare_plan(decoders, n_seeds) -> tuple[list[str], int]:
    names = list(dict.fromkeys(decoders or []))  # duplicates run once
    if not names:
        raise ValueError("Tick at least one decoder.")
    unknown = [n for n in names if n not in DECODERS]
    if unknown:
        raise ValueError(f"Unknown decoder(s) {unknown}. Choose among: {', '.join(DECODERS)}.")
    n_seeds = parse.as_int(n_seeds, "seeds", 1, limits.MAX_COMPARE_SEEDS)
    if len(names) * n_seeds > limits.MAX_COMPARE_RUNS:
        raise ValueError(f"{len(names)} decoders x {n_seeds} seeds = {len(names) * n_seeds} images; one comparison "
                         f"runs at most {limits.MAX_COMPARE_RUNS}.")
    return names, n_seeds


@shown
def run_compare(model_name: str, decoders: list[str], settings_json: str, label, seed, n_seeds, cfg: float,
                temperature: float, top_k: float, top_p: float, request: gr.Request, progress=gr.Progress()):
    """Each decoder with its own settings on the same class; seeds seed .. seed + n - 1, the first one shown."""
    names, n_seeds = compare_plan(decoders, n_seeds)
    with job(request):
        model = get_model(model_name)
        own = parse.per_decoder_settings(names, settings_json)
        built = {n: parse.build_decoder(n, own[n], model.info) for n in names}
        sampling = parse.parse_sampling(cfg, temperature, top_k, top_p)
        label = parse.parse_class(model.info, label)
        seed = parse.as_int(seed, "seed", 0, limits.MAX_SEED - n_seeds + 1)
        done = run_decoders(model, built, label, sampling, range(seed, seed + n_seeds), GATE,
                            lambda jobs: progress.tqdm(jobs, desc="decoding"))
    for trace, image in done.shown:
        STORE.add(session_of(request), trace, image)
    table = [{**row, "settings": ", ".join(f"{k}={v}" for k, v in built[row["decoder"]].settings().items()) or "-"}
             for row in compare.compare_table(done.traces)]
    summary = compare.seed_summary(done.runs)
    return draw_compare_views(done.traces, done.images, done.runs) + (pd.DataFrame(table), pd.DataFrame(summary))


@shown
def explore_codebook(model_name: str, space: str, colour_by: str, code, k, position: str, request: gr.Request):
    """The projection coloured by this session's traces, the code's nearest codes and, from the current
    trace, the groups it formed or joined (and the group at a grid position), with decoded patches."""
    with job(request):
        model = get_model(model_name)
        vocab = model.info.vocab_size
        code = parse.as_int(code, "token id", 0, vocab - 1)
        k = parse.as_int(k, "number of nearest codes", 0, min(limits.MAX_CODEBOOK_NEIGHBOURS, vocab - 1))
        pos = parse.blank_or_int(position, "grid position", 0, model.info.num_tokens - 1)
        emb = embeddings_of(model_name, space)
        xy, method = projections().get(model_name, space, emb)
        traces = [t for t in STORE.traces(session_of(request)) if t.model == model_name]
        stats = codebook.code_stats(traces, vocab) if traces else None
        current = next((t for t in reversed(traces)), None)
        if pos is not None and current is None:
            raise ValueError("A grid position needs a trace of this model: generate an image or upload a trace first.")
        try:
            highlight = codebook.code_highlight(emb, code, k, current, pos)
        except ValueError as e:
            raise ValueError(f"Codebook: {e}") from e
        gallery = [(code_patch(model_name, c), caption) for c, caption in highlight.gallery()]
    fig = codebook.codebook_figure(xy, stats, colour_by, highlight, method, space)
    summary = codebook.code_summary(stats, code) if stats else {"code": code, "note": "no traces yet in this session"}
    summary |= highlight.summary()
    groups = ("no trace yet, so no groups" if current is None else
              f"groups from the current trace ({text.escape_md(current.decoder)}, class "
              f"{text.escape_md(current.class_name)}, seed {current.seed})"
              + ("" if highlight.groups_recorded else ": it records none"))
    status = (f"Projection: {projections().status(model_name, space)} · statistics from {len(traces)} trace(s) of "
              f"this session · {groups}.")
    return fig, gallery, summary, status


@shown
def run_sweep_ui(model_name: str, decoder_name: str, parameter: str, values: str, images: float, settings_json: str,
                 cfg: float, temperature: float, top_k: float, top_p: float, request: gr.Request,
                 progress=gr.Progress()):
    """A small sweep with an `ar` baseline on the same images; table, curves, CSV and traces."""
    n_images = parse.as_int(images, "images per setting", 1, limits.MAX_BROWSER_SWEEP)
    grid = parse.parse_values(decoder_name, parameter, values)
    total = (len(grid) + (decoder_name != "ar")) * n_images
    if total > limits.MAX_BROWSER_SWEEP:
        raise ValueError(f"({len(grid)} settings + the ar baseline) x {n_images} images = {total} images; the browser "
                         f"runs at most {limits.MAX_BROWSER_SWEEP}. Run larger sweeps from the command line: "
                         f"python -m decoding.sweep --decoder {decoder_name} --parameter {parameter} --values "
                         f"{','.join(map(str, grid))} --images {n_images}")
    with job(request):
        model = get_model(model_name)
        sampling = parse.parse_sampling(cfg, temperature, top_k, top_p)
        base = parse.per_decoder_settings([decoder_name], settings_json)[decoder_name]
        base.pop(parameter, None)
        result = run_sweep(model, decoder_name, base, parameter, grid, n_images, FILES.folder("sweep"),
                           sampling=sampling, progress=lambda done, all: progress(done / all, desc="sweep"),
                           unit_context=lambda: GATE.use(interactive=False))
    files = [str(result.files["table.csv"]), str(result.files["traces.jsonl"])]
    return (pd.DataFrame(result.rows), sweeps.sweep_curves(result.rows, parameter),
            sweeps.speed_quality_figure(result.rows, parameter), files)


@shown
def summary_png(request: gr.Request) -> str:
    trace, image = last_trace(request, "Generate an image first.")
    return write_file(f"summary_{trace.decoder}_c{trace.label}_s{trace.seed}", ".png", static.summary_png(trace, image))


@shown
def on_model_change(model_name: str, panels: list[DecoderPanel]):
    """The class list of the chosen model (LlamaGen: 1000 ImageNet classes), its bounds on the sliders of
    model-bound settings (window <= tokens, group size <= vocabulary) and its own top-k (up to its vocabulary)."""
    info = get_model(model_name).info
    choices, bounds = class_choices(info.class_names), model_bounds(info)
    sliders = [gr.update(maximum=bounds[spec.meta.model_bound]) for _, spec in bound_widgets(panels)]
    top_k = gr.update(maximum=info.vocab_size, value=info.top_k)
    return [gr.update(choices=choices, value=choices[0])] * 2 + sliders + [top_k]


def bound_widgets(panels: list[DecoderPanel]) -> list[tuple]:
    return [(w, spec) for p in panels for w, spec in zip(p.widgets, p.specs)
            if spec.meta.model_bound and isinstance(w, gr.Slider)]


def end_session(request: gr.Request) -> None:
    """A closed tab frees its traces at once (idle sessions expire anyway)."""
    STORE.drop(session_of(request))


def class_choices(names) -> list[str]:
    return [f"{i}: {n}" for i, n in enumerate(names)]


# -- layout -------------------------------------------------------------------------------------------------------
@dataclass
class Shared:
    """Widgets more than one tab reads."""

    model: gr.Dropdown
    class_dd: gr.Dropdown
    image: gr.Image
    picked: gr.Markdown
    panels: list[DecoderPanel]
    sampling: list
    settings_all: gr.Textbox  # every decoder's settings, {decoder: settings}, filled before a run

    @property
    def panel_widgets(self) -> list:
        return [w for p in self.panels for w in p.widgets]

    def fill_settings(self, event):
        """Chain: copy every panel's values into `settings_all`, then the run."""
        return event(lambda *v: all_settings_json(self.panels, *v), self.panel_widgets, self.settings_all,
                     queue=False, api_visibility="private")


def decoder_choice(name: str) -> tuple[str, str]:
    return f"{name}{'' if DECODERS[name].lossless else ' (lossy)'}", name


SAMPLING_NAMES = [spec.name for spec in describe(SamplingSettings)]


def sampling_controls(bounds: dict, top_k: int) -> list:
    """CFG, temperature, top-k, top-p from SamplingSettings' own metadata (its help states greedy below 1e-4);
    top-k starts at the model's own."""
    with gr.Accordion("sampling", open=False):
        return [widget(dataclasses.replace(spec, default=top_k) if spec.name == "top_k" else spec, bounds)
                for spec in describe(SamplingSettings)]


def plots(views) -> dict[str, gr.Plot]:
    """One plot per view, grouped in their sections, with their definitions underneath."""
    out = {}
    for section, members in sections(views).items():
        with (gr.Accordion(section, open=members[0].open) if section else gr.Column()):
            for v in members:
                out[v.name] = gr.Plot(label=v.label)
                if v.definitions:
                    gr.Markdown(f"<small>\n\n{define(*v.definitions)}\n\n</small>")
    return out


def decoder_blurb(name: str) -> str:
    cls = DECODERS[name]
    paper = f"[{cls.paper}]({cls.paper_url})" if cls.paper_url else cls.paper
    kind = "lossless" if cls.lossless else "lossy"
    return f"<small>{cls.summary} ({kind}{'; ' + paper if paper else ''})</small>"


def generate_tab(default_model: str, class_names: list[str], bounds: dict, top_k: int) -> Shared:
    default_decoder = "lantern" if "lantern" in DECODERS else next(iter(DECODERS))
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            model_dd = gr.Dropdown(list(available()), value=default_model, label="model")
            with gr.Row():
                class_dd = gr.Dropdown(class_choices(class_names), value=class_choices(class_names)[0], label="class",
                                       scale=3)
                seed_nb = gr.Number(0, label="seed", precision=0, minimum=0, maximum=limits.MAX_SEED, scale=1)
            decoder_dd = gr.Dropdown([decoder_choice(n) for n in DECODERS], value=default_decoder, label="decoder")
            blurb = gr.Markdown(decoder_blurb(default_decoder))
            with gr.Row():
                go_btn = gr.Button("Generate", variant="primary", scale=3)
                dice = gr.Button("random seed", size="sm", scale=1)
            panels = [decoder_panel(n, n == default_decoder, bounds) for n in DECODERS]
            sampling = sampling_controls(bounds, top_k)
            settings_tb, settings_all = gr.Textbox(visible=False), gr.Textbox(visible=False)
            with gr.Accordion("view a trace file from the command line", open=False):
                upload = gr.File(label="trace JSON", file_types=[".json"], type="filepath")
        with gr.Column(scale=3):
            with gr.Row():
                image_out = gr.Image(label="generated image (click a token to pick it)", format="png", type="numpy",
                                     height=280, width=280, interactive=False, buttons=["download"], scale=1)
                with gr.Column(scale=2):
                    view_dd = gr.Dropdown([(heatmaps.VIEWS[v], v) for v in heatmaps.VIEWS if v != "kind"],
                                          value="step", label="second map")
                    overlay_cb = gr.Checkbox(False, label="draw the maps over the image")
                    picked_md = gr.Markdown("Press **Generate**, then click a token on the image to pick it for the "
                                            "Codebook tab.")
                    trace_file = gr.File(label="trace (JSON)", interactive=False, height=90)
            figures = plots(TRACE_VIEWS[:1])
            caption = gr.Markdown(view_caption("step"))
            card = gr.Markdown()
            figures |= plots(TRACE_VIEWS[1:])
            with gr.Accordion("static export", open=False):
                png_btn = gr.Button("summary PNG (matplotlib)", size="sm")
                png_file = gr.File(label="summary PNG", interactive=False, height=90)
    shared = Shared(model_dd, class_dd, image_out, picked_md, panels, sampling, settings_all)
    views_out = [figures[v.name] for v in TRACE_VIEWS]
    decoder_dd.change(lambda d: [decoder_blurb(d), *[gr.update(visible=p.decoder == d) for p in panels]], decoder_dd,
                      [blurb, *[p.column for p in panels]], queue=False, api_visibility="private")
    dice.click(lambda: random.randrange(limits.MAX_SEED), None, seed_nb, queue=False, api_visibility="private")
    go_btn.click(settings_of_selected(panels), [decoder_dd, *shared.panel_widgets], settings_tb, queue=False,
                 api_visibility="private").then(
        generate, [model_dd, decoder_dd, settings_tb, class_dd, seed_nb, *sampling, view_dd, overlay_cb],
        [image_out, card, trace_file, *views_out], api_name="generate", concurrency_id="model",
        concurrency_limit=limits.MODEL_WORKERS)
    view_dd.change(view_caption, view_dd, caption, queue=False, api_visibility="private")
    for w in (view_dd, overlay_cb):
        w.change(redraw, [view_dd, overlay_cb], figures[TRACE_VIEWS[0].name], api_visibility="private")
    upload.upload(load_trace_file, [upload, view_dd, overlay_cb], [image_out, card, *views_out],
                  api_name="view_trace", concurrency_id="model", concurrency_limit=limits.MODEL_WORKERS)
    png_btn.click(summary_png, None, png_file, api_name="summary_png")
    return shared


def settings_of_selected(panels: list[DecoderPanel]):
    def collect(decoder: str, *values) -> str:
        return json.dumps(json.loads(all_settings_json(panels, *values)).get(decoder, {}))
    return collect


def compare_tab(shared: Shared, class_names: list[str]):
    gr.Markdown("Each ticked decoder runs with **its own settings from the Generate tab** and the Generate tab's "
                "model and sampling, on this class; with several seeds, the table below averages them.")
    with gr.Row():
        decoders = gr.CheckboxGroup(list(DECODERS), value=[d for d in DEFAULT_COMPARE if d in DECODERS],
                                    label="decoders", scale=3)
        class_dd = gr.Dropdown(class_choices(class_names), value=class_choices(class_names)[0], label="class", scale=2)
        seed_nb = gr.Number(0, label="first seed", precision=0, minimum=0, maximum=limits.MAX_SEED, scale=1)
        seeds = gr.Slider(1, limits.MAX_COMPARE_SEEDS, value=1, step=1, label="seeds", scale=1)
        button = gr.Button("Compare", variant="primary", scale=1)
    figures = plots(COMPARE_VIEWS)
    table = gr.Dataframe(placeholder("press Compare"), label="first seed: numbers and the settings each decoder used",
                         interactive=False, wrap=True)
    summary = gr.Dataframe(placeholder("press Compare"), label="over the seeds: mean and 95% interval",
                           interactive=False, wrap=True)
    shared.fill_settings(button.click).then(
        run_compare, [shared.model, decoders, shared.settings_all, class_dd, seed_nb, seeds, *shared.sampling],
        [*[figures[v.name] for v in COMPARE_VIEWS], table, summary], api_name="compare", concurrency_id="model",
        concurrency_limit=limits.MODEL_WORKERS)
    return class_dd


def codebook_tab(shared: Shared):
    with gr.Row():
        space = gr.Radio([(v, k) for k, v in codebook.SPACES.items()], value="vq", label="embedding space")
        colour = gr.Radio([(v, k) for k, v in codebook.COLOUR_BY.items()], value="usage",
                          label="colour by (this session's traces)")
    with gr.Row():
        code_nb = gr.Number(0, label="token id (or click a token on the Generate tab's image)", precision=0, minimum=0)
        position = gr.Textbox("", label="grid position (blank = none)", placeholder="e.g. 37",
                              info="the group verified there, in the current trace")
        k = gr.Slider(0, 32, value=8, step=1, label="nearest codes shown")
        button = gr.Button("Show", variant="primary", scale=0)
    status = gr.Markdown()
    plot = gr.Plot(label="codebook")
    gr.Markdown("<small>\n\n" + define("projection", "usage", "code_acceptance", "code_relaxed", "neighbourhood",
                                       "trace_groups") + "\n\n</small>")
    marks = codebook.HIGHLIGHT_MARKS
    gr.Markdown(f"<small>Decoded codes below, marked as in the plot: {marks['picked']} picked · "
                f"{marks['neighbours']} nearest (d = L2 distance) · {marks['as_draft']} in its groups · "
                f"{marks['as_member']} in groups it joined · {marks['position']} in the position's group</small>")
    gallery = gr.Gallery(label="decoded codes, each tiled over the grid", columns=9, height=260, object_fit="contain")
    summary = gr.JSON(label="what this session's traces say about the code")
    button.click(explore_codebook, [shared.model, space, colour, code_nb, k, position],
                 [plot, gallery, summary, status], api_name="codebook", concurrency_id="model",
                 concurrency_limit=limits.MODEL_WORKERS)
    return code_nb, position


QUALITY_RUNS = Path(__file__).resolve().parent / "assets" / "card"


def model_from_stem(stem: str) -> str:
    """The bundled model a shipped CSV (which records none) is of, from the card's naming: quality_fmnist16k_*."""
    tags = (("fmnist16k", "fashion-mnist-16k"), ("fmnist4096", "fashion-mnist-4096"), ("fmnist", "fashion-mnist"))
    for tag, name in tags:
        if tag in stem:
            return name
    return "model not recorded"


@lru_cache(maxsize=1)
def shipped_quality_runs() -> tuple[tuple[str, str], ...]:
    """(label, file name) of the `decoding.quality` results shipped in assets/card (the README's tables),
    the JSON where a run has both; the broadest runs (most decoder settings) first, then the largest."""
    files: dict[str, Path] = {}
    for f in sorted(QUALITY_RUNS.glob("quality_*.json")) + sorted(QUALITY_RUNS.glob("quality_*.csv")):
        files.setdefault(f.stem, f)
    out = []
    for f in files.values():
        try:
            report = quality.read_report(f)
        except ValueError:
            continue  # another kind of file (the AR card's quality_ar.json)
        model, n = report["model"] or model_from_stem(f.stem), report["samples_per_decoder"]
        rows = len(report["rows"])
        out.append(((-rows, -n, model, f.name), (f"{model}, {rows} rows x {n} samples ({f.name})", f.name)))
    return tuple(entry for _, entry in sorted(out))


def quality_view(path: str | Path, shown_name: str | None = None, model: str | None = None):
    """A quality result as the Sweep tab shows it: a line, the FD frontier, the README's table."""
    report = quality.read_report(path)
    rows, name = report["rows"], shown_name or Path(path).name
    report["model"] = report["model"] or model
    points, floor = quality.frontier_points(rows)
    title = f"{report['model'] or name}: speed against quality, {report['samples_per_decoder']} samples per decoder"
    fig = (sweeps.frontier_figure(points, FD_NAME, title, floor) if points
           else empty_figure("no FD in this run (no classifier for its model): speed and token TV in the table"))
    band = ("grey band: the noise floor, `ar` against `ar` with other seeds (compare decoders with it, never "
            "with 0)." if floor else "no `ar (other seeds)` row, so no noise floor to read FD against.")
    status = (f"**{text.escape_md(name)}**: {len(rows)} rows, {report['samples_per_decoder']} samples per decoder. "
              f"Bars: 95% bootstrap intervals; {band} FD is in the shipped classifier's feature space, not "
              "Inception FID.")
    return status, fig, quality.markdown_table(rows)


@shown
def show_shipped_quality(file_name: str | None):
    names = {f for _, f in shipped_quality_runs()}
    if file_name not in names:
        raise ValueError(f"unknown quality run {file_name!r}; shipped: {', '.join(sorted(names)) or 'none'}")
    return quality_view(QUALITY_RUNS / file_name, model=model_from_stem(Path(file_name).stem))


@shown
def show_uploaded_quality(file):
    if not file:
        raise ValueError("Upload a quality.json or quality.csv written by python -m decoding.quality.")
    path = Path(file if isinstance(file, str) else file.name)
    return quality_view(path, path.name)


def quality_runs_section():
    """The shipped `decoding.quality` results (or an uploaded one): the FD frontier and the table."""
    gr.Markdown("### Quality runs\nThe results of `python -m decoding.quality` (the README's tables), read from "
                "the files the command writes: pick a shipped run, or upload your run's `quality.json` or "
                "`quality.csv`.")
    runs = list(shipped_quality_runs())
    with gr.Row():
        run_dd = gr.Dropdown(runs, value=runs[0][1] if runs else None, label="shipped quality run")
        run_file = gr.File(label="or your quality.json / quality.csv", file_types=[".json", ".csv"],
                           type="filepath", height=130)
    first_view = show_shipped_quality(runs[0][1]) if runs else ("No shipped quality run.", None, "")
    q_status = gr.Markdown(first_view[0])
    q_plot = gr.Plot(first_view[1], label="speed against quality: step compression and FD",
                     elem_classes=["frontier-plot"])
    q_table = gr.Markdown(first_view[2], elem_classes=["wide-table", "number-table"])
    run_dd.change(show_shipped_quality, run_dd, [q_status, q_plot, q_table], api_visibility="private")
    run_file.upload(show_uploaded_quality, run_file, [q_status, q_plot, q_table], api_visibility="private")


def sweep_tab(shared: Shared):
    quality_runs_section()
    first = next((n for n in ("lantern", "sjd") if n in DECODERS), next(iter(DECODERS)))
    gr.Markdown(f"### A sweep of your own\nA small sweep (at most {limits.MAX_BROWSER_SWEEP} images, `ar` baseline "
                "included; classes cycled, seed = image index) with the Generate tab's model, sampling and this "
                "decoder's other settings. Generations of other users go first. Larger sweeps: "
                "`python -m decoding.sweep --help`.")
    with gr.Row():
        decoder = gr.Dropdown(list(DECODERS), value=first, label="decoder")
        axes = parse.sweepable(first)
        parameter = gr.Dropdown(axes, value=axes[0] if axes else None, label="parameter", allow_custom_value=True)
        values = gr.Textbox("0, 0.05, 0.1, 0.2", label="values (comma-separated; repeats merged)")
        images = gr.Slider(1, 20, value=5, step=1, label="images per setting")
        button = gr.Button("Run sweep", variant="primary", scale=0)
    table = gr.Dataframe(placeholder("press Run sweep"), interactive=False, wrap=True,
                         label="per setting (images = samples per row; speedup = ar's decode time / this row's)")
    downloads = gr.File(label="table (CSV) and traces (JSONL)", file_count="multiple", interactive=False, height=90)
    curves, speed_plot = gr.Plot(label="curves"), gr.Plot(label="speed and quality")
    gr.Markdown(f"<small>\n\n{define('acceptance_rate', 'step_compression', 'class_consistency')}\n\n</small>")
    decoder.change(lambda d: gr.update(choices=parse.sweepable(d), value=(parse.sweepable(d) or [None])[0]), decoder,
                   parameter, queue=False, api_visibility="private")
    shared.fill_settings(button.click).then(
        run_sweep_ui, [shared.model, decoder, parameter, values, images, shared.settings_all, *shared.sampling],
        [table, curves, speed_plot, downloads], api_name="sweep", concurrency_id="sweep", concurrency_limit=1)


def placeholder(action: str) -> pd.DataFrame:
    """An empty table that says what fills it (Gradio shows '1 2 3' headers otherwise)."""
    return pd.DataFrame({f"{action} to fill this table": []})


def about_text() -> str:
    return ("## What SpecLens shows\n"
            "An autoregressive image model (here LlamaGen's architecture: a GPT over the tokens of a VQ image "
            "tokenizer) writes an image one token per forward pass. **Speculative decoding** guesses several tokens "
            "ahead and checks the guesses in one forward pass; every guess that passes saves a pass. SpecLens "
            "records every check (the *trace*) and draws it on the token grid.\n\n"
            + decoder_table_markdown() +
            "\n**Lossless** means the decoder samples from exactly the distribution plain AR sampling would, with the "
            "same model and sampling settings. It does *not* mean the same image for the same seed: the decoders use "
            "their random numbers differently, so one seed gives different (equally likely) images; at temperature 0 "
            "(greedy) a lossless decoder gives exactly AR's tokens. Lossy decoders (*no* in the table) trade a "
            "change of the distribution (bounded, for LANTERN) for fewer forward passes.\n\n"
            "**Definitions** (the same everywhere in the app, the traces and the benchmark):\n"
            + define("forward_pass", "nfe", "step_compression", "mean_accepted_length", "mean_accepted_drafts",
                     "acceptance_rate", "commit_kind", "wall_time", "class_consistency") +
            "\n\nThe bundled models are trained on Fashion-MNIST (28x28 images, 14x14 tokens) so that they run on "
            "a CPU: `fashion-mnist-16k` (the default) with the codebook shape of LlamaGen's VQ-16 (16384 x 8), "
            "whose many near-duplicate codes make its next-token distributions ambiguous, as on the large models "
            "(65% of positions with top-1 below 0.05 at its top-k 2000, against 2.7% on 1024 codes and 50-95% on "
            "the large models; its GPT was trained last on each code's near-duplicates, see the model card), and "
            "`fashion-mnist` with 1024 codes (the one with trained drafters); `fashion-mnist-4096` (4096 x 8) is the "
            "curve's middle point, a shorter-trained GPT (28% below 0.05, 86.5% class-consistency); timings "
            "here are of this server's CPU and only indicative. Step compression does not "
            "depend on the hardware.\n\n**Limits of this public server** (per request): uploads up to "
            f"{limits.MAX_UPLOAD_BYTES // 2**20} MB and {limits.TRACE_LIMITS.max_tokens} tokens; Compare up to "
            f"{limits.MAX_COMPARE_SEEDS} seeds and {limits.MAX_COMPARE_RUNS} images; sweeps up to "
            f"{limits.MAX_BROWSER_SWEEP} images; {limits.MAX_JOBS_PER_SESSION} jobs at a time per visitor.\n\n"
            "**Command line**: traces from `python -m decoding.quality ...` or `Trace.save(...)` can be uploaded on "
            "the Generate tab; larger sweeps: `python -m decoding.sweep --help`.\n")


# wide tables (the About tab's decoder table) scroll sideways on a phone instead of wrapping letter by letter
CSS = (".wide-table { overflow-x: auto; } .wide-table table { min-width: 860px; } "
       ".wide-table th, .wide-table td { overflow-wrap: normal; word-break: normal; } "
       # an interval "30.1 [27.5, 32.9]" on one line; the decoder's name may wrap
       ".number-table table { font-size: 0.9em; } .number-table td { white-space: nowrap; padding: 6px 8px; } "
       ".number-table td:first-child { white-space: normal; } "
       # on a phone 17 point names cannot sit beside their points: the legend and the hover name them
       "@media (max-width: 640px) { .frontier-plot .textpoint { display: none; } }")


class SpecLensBlocks(gr.Blocks):
    def launch(self, *args, **kwargs):
        """Gradio's own upload limit and the page's CSS, whoever launches the app (main, tests, `gradio app.py`)."""
        kwargs.setdefault("max_file_size", limits.MAX_UPLOAD_BYTES)
        kwargs.setdefault("css", CSS)
        return super().launch(*args, **kwargs)


def build_demo(default_model: str | None = None) -> gr.Blocks:
    default_model = default_model or start_model(settings().model, settings().allow_download)
    SERVED[:] = served_models(default_model, settings().allow_download)
    info = load_model(default_model).info
    class_names = list(info.class_names)
    with SpecLensBlocks(title="SpecLens: speculative decoding for image models",
                        delete_cache=(600, limits.FILE_MAX_AGE_S)) as demo:
        gr.Markdown("# SpecLens\nSpeculative decoding for autoregressive image models, token by token: pick a "
                    "decoder, press **Generate**, and see which forward pass committed each token, and how.")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                shared = generate_tab(default_model, class_names, model_bounds(info), info.top_k)
            with gr.Tab("Compare", id="compare"):
                compare_class = compare_tab(shared, class_names)
            with gr.Tab("Codebook", id="codebook"):
                code_nb, position = codebook_tab(shared)
            with gr.Tab("Sweep", id="sweep"):
                sweep_tab(shared)
            with gr.Tab("About", id="about"):
                gr.Markdown(about_text(), elem_classes=["wide-table"])
        bound = [w for w, _ in bound_widgets(shared.panels)]
        top_k = shared.sampling[SAMPLING_NAMES.index("top_k")]
        shared.model.change(lambda m: on_model_change(m, shared.panels), shared.model,
                            [shared.class_dd, compare_class, *bound, top_k], api_visibility="private")
        shared.image.select(pick_from_image, None, [code_nb, position, shared.picked], api_visibility="private")
        demo.unload(end_session)
    demo.queue(default_concurrency_limit=2, max_size=limits.QUEUE_SIZE)
    return demo


# -- command line ------------------------------------------------------------------------------------------------
def warm_up(model_name: str) -> None:
    """One untimed generation per decoder family on small models, so the first user's image is not the slow one."""
    from decoding.registry import make_decoder
    from decoding.sampling import SamplingSettings

    model = load_model(model_name)
    if model.info.num_tokens > 256:
        return  # a LlamaGen model: its first image shows progress instead
    for name in ("ar", "lantern"):
        if name in DECODERS:
            make_decoder(name).generate(model, 0, SamplingSettings(), seed=0)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        config = settings()
    except ValueError as e:  # EnvironmentSettingError: before any model is loaded
        sys.exit(f"SpecLens: {e}")
    torch.set_num_threads(config.threads)
    if argv[:1] == ["sweep"]:
        from decoding.sweep import main as sweep_main

        sweep_main(argv[1:])
        return
    model = start_model(config.model, config.allow_download)
    warm_up(model)
    build_demo(model).launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"), server_port=config.port,
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
