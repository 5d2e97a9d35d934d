"""analysis/ on hand-built traces (no model): the numbers the figures show, and that figures build."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from analysis import ambiguity, codebook, compare, heatmaps, static, steps, sweeps
from analysis.definitions import DEFINITIONS, define
from analysis.synthetic import synthetic_trace
from decoding.trace import COMMIT_KINDS, StepRecord, Trace


def tiny_trace() -> Trace:
    """2x2 grid, written out by hand: prefill commits 0; pass 1 verifies drafts at 1, 2, 3,
    accepts 1 (exact) and 2 (relaxed, group of 3), rejects 3 and resamples it."""
    steps_ = [
        StepRecord(0, -1, 0, committed_positions=[0], committed_tokens=[5], committed_kinds=["bonus"]),
        StepRecord(1, 0, 4, positions=[1, 2, 3], draft_tokens=[6, 7, 8], p_draft=[0.5, 0.1, 0.01],
                   q_draft=[0.4, 0.3, 0.2], top1_prob=[0.6, 0.3, 0.5], entropy=[1.0, 2.0, 1.5],
                   accept_prob=[1.0, 0.9, 0.05], accepted=[True, True, False], relaxed=[False, True, False],
                   group_size=[0, 3, 0], committed_positions=[1, 2, 3], committed_tokens=[6, 7, 9],
                   committed_kinds=["draft", "relaxed", "resampled"], forward_s=0.2, overhead_s=0.1),
    ]
    t = Trace(model="hand", decoder="lantern", settings={}, seed=3, label=1, class_name="Trouser", grid_shape=(2, 2),
              vocab_size=10, tokens=[5, 6, 7, 9], steps=steps_, commit_step=[0, 1, 1, 1],
              commit_kind=["bonus", "draft", "relaxed", "resampled"], commit_p=[0.9, 0.5, 0.1, 0.3],
              commit_top1=[0.9, 0.6, 0.3, 0.5], commit_entropy=[0.2, 1.0, 2.0, 1.5], forward_s=0.3, overhead_s=0.1,
              vq_decode_s=0.05)
    t.validate()
    return t


@pytest.fixture(scope="module")
def traces() -> list[Trace]:
    return [synthetic_trace((6, 6), 32, window=0, seed=0, decoder="ar"),
            synthetic_trace((6, 6), 32, window=4, accept=0.6, relax=0.0, seed=1, decoder="sjd"),
            synthetic_trace((6, 6), 32, window=6, accept=0.7, relax=0.4, seed=2, decoder="lantern")]


def test_synthetic_traces_are_valid_and_survive_json(traces):
    for t in traces:
        again = Trace.from_json(t.to_json())
        assert again.tokens == t.tokens and again.nfe == t.nfe
    assert traces[0].nfe == 36 and set(traces[0].commit_kind) == {"bonus"}
    assert traces[2].nfe < 36 and "relaxed" in traces[2].commit_kind


def test_position_table_takes_the_committing_verification():
    table = heatmaps.position_table(tiny_trace())
    assert table.step.tolist() == [0, 1, 1, 1]
    assert [COMMIT_KINDS[k] for k in table.kind] == ["bonus", "draft", "relaxed", "resampled"]
    assert np.isnan(table.q[0]) and table.q[1:].tolist() == [0.4, 0.3, 0.2]
    assert table.draft_token.tolist() == [-1, 6, 7, 8]  # the rejected draft at 3, not the resampled 9
    assert table.group_size[2] == 3 and np.isnan(table.accept_prob[0])
    assert heatmaps.to_grid(table.step, (2, 2)).tolist() == [[0, 1], [1, 1]]


def test_position_of_checks_the_grid():
    assert heatmaps.position_of(1, 0, (2, 3)) == 3
    with pytest.raises(ValueError, match="outside the 2x3 token grid"):
        heatmaps.position_of(2, 0, (2, 3))


@pytest.mark.parametrize("view", list(heatmaps.VIEWS))
def test_every_map_view_builds_with_hover(view, traces):
    image = np.zeros((12, 12, 3), np.uint8)
    fig = heatmaps.acceptance_map(traces[2], view, image)
    heat = [d for d in fig.data if d.type == "heatmap"][0]
    assert np.asarray(heat.z).shape == (6, 6)
    assert "token %{customdata[3]}" in heat.hovertemplate and "q(draft)" in heat.hovertemplate
    assert heatmaps.caption(view) in DEFINITIONS.values()


def test_unknown_view_is_a_clear_error(traces):
    with pytest.raises(ValueError, match="unknown map view 'nope'"):
        heatmaps.acceptance_maps(traces[0], views=("nope",))


def test_kind_map_uses_a_legend_not_a_colour_bar(traces):
    fig = heatmaps.acceptance_maps(traces[2], np.zeros((12, 12, 3), np.uint8), views=("kind", "step"))
    legend = [d.name for d in fig.data if d.type == "scatter"]
    assert "relaxed only" in legend and "draft accepted" in legend
    assert sum(d.type == "image" for d in fig.data) == 1


def test_per_pass_counts_and_depth_statistics():
    t = tiny_trace()
    assert steps.committed_per_pass(t).tolist() == [1, 3]
    assert steps.drafts_accepted_per_pass(t).tolist() == [0, 2]
    assert steps.kinds_per_pass(t)["relaxed"].tolist() == [0, 1]
    d = steps.acceptance_by_depth([t, t])
    assert d.verified.tolist() == [2, 2, 2] and d.accepted.tolist() == [2, 2, 0]
    assert d.rate.tolist() == [1.0, 1.0, 0.0] and d.conditional_rate.tolist() == [1.0, 1.0, 0.0]
    assert steps.acceptance_rate([t]) == pytest.approx(2 / 3)
    assert np.isnan(steps.acceptance_rate([synthetic_trace((2, 2), 8, window=0)]))


def test_conditional_depth_rate_only_counts_windows_that_reached_the_depth():
    t = tiny_trace()
    s = t.steps[1]
    s.accepted, s.relaxed = [False, True, False], [False, False, False]  # accepted after a rejection
    d = steps.acceptance_by_depth([t])
    assert d.rate.tolist() == [0.0, 1.0, 0.0]
    assert d.reached.tolist() == [1, 0, 0] and d.conditional_rate.tolist() == [0.0, 0.0, 0.0]


def test_replay_states_and_frames(traces):
    t = tiny_trace()
    states = steps.replay_states(t)
    assert states.tolist() == [[2 + 3, 0, 0, 0], [1, 2 + 0, 2 + 1, 2 + 2]]
    fig = steps.replay_figure(traces[1], np.zeros((12, 12, 3), np.uint8))
    assert len(fig.frames) == traces[1].nfe and len(fig.layout.sliders[0].steps) == traces[1].nfe
    assert len(steps.replay_figure(traces[0], max_frames=10).frames) == 10


def test_step_figures_build(traces):
    assert isinstance(steps.accepted_length_figure(traces[2]), go.Figure)
    fig = steps.depth_figure({"sjd": [traces[1]], "ar": [traces[0]]})
    assert {d.name for d in fig.data} == {"sjd: rate", "sjd: conditional", "sjd: drafts"}
    assert "no drafts" in steps.depth_figure({"ar": [traces[0]]}).layout.annotations[0].text


def test_pca_is_exact_and_umap_cache_round_trips(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 2)) @ np.diag([3.0, 1.0])
    xy = codebook.pca_2d(emb)
    # 2-D input: PCA is a rotation (+ reflection), so pairwise distances are kept and axis 1 has the most variance
    d = lambda a: np.linalg.norm(a[:, None] - a[None], axis=-1)  # noqa: E731
    assert np.allclose(d(xy), d(emb), atol=1e-4) and xy[:, 0].var() > xy[:, 1].var()
    store = codebook.ProjectionStore(tmp_path, background=False)
    got, method = store.get("m/x", "vq", emb)
    assert method == "pca" and np.allclose(got, xy) and store.status("m/x", "vq") == "PCA (UMAP off)"
    assert not list(tmp_path.iterdir())  # PCA is instant: not written
    monkeypatch.setitem(codebook.METHODS, "umap", lambda e: np.asarray(e[:, :2], np.float32) * 2)
    store.compute("m/x", "vq", "umap", emb)
    assert (tmp_path / "m_x_vq_umap.npz").is_file()
    fresh = codebook.ProjectionStore(tmp_path, background=False)
    assert fresh.get("m/x", "vq", emb)[1] == "umap"
    assert fresh.cached("m/x", "vq", "umap", emb + 1.0) is None  # other weights: the cache is not reused


def test_projection_store_swaps_in_a_finished_background_projection(tmp_path, monkeypatch):
    monkeypatch.setitem(codebook.METHODS, "umap", lambda e: np.ones((len(e), 2), np.float32))
    store = codebook.ProjectionStore(tmp_path)
    emb = np.random.default_rng(1).normal(size=(20, 4))
    _, first = store.get("m", "gpt", emb)
    store.wait(10)
    xy, second = store.get("m", "gpt", emb)
    assert first == "pca" and second == "umap" and np.all(xy == 1) and store.status("m", "gpt") == "UMAP ready"


def test_projection_store_reports_a_failed_umap(tmp_path, monkeypatch):
    def boom(e):
        raise RuntimeError("no numba")

    monkeypatch.setitem(codebook.METHODS, "umap", boom)
    store = codebook.ProjectionStore(None)
    store.get("m", "vq", np.eye(5))
    store.wait(10)
    assert store.get("m", "vq", np.eye(5))[1] == "pca" and "no numba" in store.status("m", "vq")


def test_code_stats_and_summary():
    stats = codebook.code_stats([tiny_trace()], 10)
    assert stats.usage[[5, 6, 7, 9]].tolist() == [1, 1, 1, 1] and stats.usage.sum() == 4
    assert stats.verified[8] == 1 and stats.accepted[8] == 0 and stats.relaxed[7] == 1
    assert np.isnan(stats.acceptance[0]) and stats.acceptance[6] == 1.0
    summary = codebook.code_summary(stats, 7)
    assert summary["accepted through relaxation"] == 1 and summary["mean neighbourhood/group size"] == 3.0
    with pytest.raises(ValueError, match="vocabulary 10, expected 12"):
        codebook.code_stats([tiny_trace()], 12)


def test_nearest_codes_match_brute_force():
    emb = np.random.default_rng(2).normal(size=(200, 8)).astype(np.float32)
    ids, dist = codebook.nearest_codes(emb, 17, 5)
    brute = np.linalg.norm(emb - emb[17], axis=1)
    brute[17] = np.inf
    assert ids.tolist() == np.argsort(brute)[:5].tolist()
    assert np.all(np.diff(dist) >= 0) and 17 not in ids
    with pytest.raises(ValueError, match="code must be in"):
        codebook.nearest_codes(emb, 200, 5)


def grouped_trace() -> Trace:
    """tiny_trace as GSD would record it: drafts 6, 7, 8 at positions 1, 2, 3 with groups {6, 3},
    {7, 6, 2} and {8}; 8 is rejected and 9 resampled at position 3."""
    t = tiny_trace()
    t.decoder = "gsd"
    t.steps[1].group_size, t.steps[1].group_members = [2, 3, 1], [[6, 3], [7, 6, 2], [8]]
    t.validate()
    return t


def test_code_highlight_collects_the_groups_a_code_formed_and_joined():
    emb = np.stack([np.arange(10) ** 1.5, np.zeros(10)], 1)  # on a line, unequal gaps: no distance ties
    h = codebook.code_highlight(emb, 6, 2, grouped_trace(), position=2)
    assert h.neighbours.tolist() == [5, 7] and h.noun == "GSD group"
    assert h.as_draft.tolist() == [3] and h.n_as_draft == 1  # its own group, itself excluded
    assert h.as_member.tolist() == [2, 7] and h.n_as_member == 1  # the group of draft 7 held 6
    assert h.position_draft == 7 and h.position_group.tolist() == [7, 6, 2]
    assert h.gallery() == [(6, "6 ★●"), (5, "5 ○ d=3.52"), (7, "7 ○ d=3.82□●"), (3, "3 ◇"), (2, "2 □●")]
    assert h.summary()["GSD groups formed as the draft"] == 1 and h.summary()["position"]["group"] == [7, 6, 2]
    rejected = codebook.code_highlight(emb, 9, 1, grouped_trace(), position=3)  # 9 was resampled over draft 8
    assert rejected.position_draft == 8 and rejected.position_group.tolist() == [8] and rejected.n_as_draft == 0
    assert rejected.summary()["position"]["committed as"] == "resampled"
    prefill = codebook.code_highlight(emb, 5, 1, grouped_trace(), position=0)
    assert prefill.position_draft is None and len(prefill.position_group) == 0
    plain = codebook.code_highlight(emb, 6, 3, tiny_trace())  # a trace written without groups
    assert plain.n_as_draft == plain.n_as_member == 0 and list(plain.summary()) == ["nearest codes"]
    with pytest.raises(ValueError, match="needs a trace"):
        codebook.code_highlight(emb, 6, 2, None, position=1)
    with pytest.raises(ValueError, match=r"position must be in \[0, 3\]"):
        codebook.code_highlight(emb, 6, 2, grouped_trace(), position=4)
    with pytest.raises(ValueError, match="vocabulary 10 for an embedding table of 12"):
        codebook.code_highlight(np.zeros((12, 2)), 6, 2, grouped_trace())


def test_codebook_figure_draws_each_highlight_with_a_legend_entry():
    emb = np.stack([np.arange(10) ** 1.5, np.zeros(10)], 1)
    h = codebook.code_highlight(emb, 6, 2, grouped_trace(), position=2)
    fig = codebook.codebook_figure(codebook.pca_2d(emb + np.eye(10)[:, :2]), None, highlight=h)
    layers = {d.name: d for d in fig.data}
    assert list(layers)[-1] == "code 6 (picked)"  # on top
    assert list(layers["codes of the 1 GSD group 6 formed as the draft"].customdata) == [3]
    assert list(layers["codes of the 1 GSD group of other drafts that held 6"].customdata) == [2, 7]
    assert list(layers["GSD group of draft 7 at position 2 (accepted by the relaxation; 3 codes)"].customdata) == [
        7, 6, 2]
    assert list(layers["2 nearest codes to 6 (LANTERN's neighbourhood)"].customdata) == [5, 7]
    symbols = {layers[n].marker.symbol for n in layers if n != "no data yet"}
    assert len(symbols) == 5  # told apart by shape, not colour alone
    alone = codebook.codebook_figure(codebook.pca_2d(emb + np.eye(10)[:, :2]), None,
                                     highlight=codebook.code_highlight(emb, 6, 0))
    assert [d.name for d in alone.data] == ["no data yet", "code 6 (picked)"]  # empty layers left out


@pytest.mark.parametrize("colour_by", list(codebook.COLOUR_BY))
def test_codebook_figure_colours_only_codes_with_data(colour_by, traces):
    emb = np.random.default_rng(3).normal(size=(32, 4))
    stats = codebook.code_stats(traces, 32)
    fig = codebook.codebook_figure(codebook.pca_2d(emb), stats, colour_by, codebook.code_highlight(emb, 3, 2))
    names = [d.name for d in fig.data]
    assert "2 nearest codes to 3 (LANTERN's neighbourhood)" in names and "code 3 (picked)" in names
    grey = fig.data[0]
    assert grey.name == "no data yet" and len(grey.x) + (len(fig.data[1].x) if len(names) == 4 else 0) == 32


def test_patch_strip_layout():
    strip = codebook.patch_strip([np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 200, np.uint8)], scale=2, gap=1)
    assert strip.shape == (8, 17, 3) and strip[0, 8].tolist() == [255, 255, 255] and strip[0, 9, 0] == 200


def test_compare_table_agreement_and_pixel_difference(traces):
    rows = compare.compare_table(traces)
    assert [r["decoder"] for r in rows] == ["ar", "sjd", "lantern"]
    assert rows[0]["tokens equal to ar"] == 1.0 and rows[0]["acceptance rate"] is None
    assert rows[1]["NFE"] == traces[1].nfe
    a, b = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 10, np.uint8)
    assert compare.pixel_difference(b, a).max() == 10
    assert compare.compare_table(traces[1:])[0]["tokens equal to ar"] is None


def test_compare_figures(traces):
    images = [np.full((12, 12, 3), 40 * i, np.uint8) for i in range(3)]
    fig = compare.compare_images_figure(traces, images)
    titles = [a.text for a in fig.layout.annotations]
    assert any("NFE 36" in s for s in titles) and any("tokens equal" in s for s in titles)
    assert sum(d.type == "heatmap" for d in fig.data) == 2
    speed = compare.speed_figure(traces)
    assert {d.name for d in speed.data if d.name} == {"model forward", "decoder overhead", "VQ decode"}
    with pytest.raises(ValueError, match="one image per trace"):
        compare.compare_images_figure(traces, images[:2])


def test_ambiguity_summary_and_figures(traces):
    s = ambiguity.ambiguity_summary([tiny_trace()], threshold=0.5)
    assert s["positions"] == 4 and s["share with top-1 < 0.5"] == 0.25
    assert ambiguity.mean_grid([tiny_trace()], "commit_top1").tolist() == [[0.9, 0.6], [0.3, 0.5]]
    assert isinstance(ambiguity.ambiguity_histograms(traces), go.Figure)
    assert sum(d.type == "heatmap" for d in ambiguity.ambiguity_maps(traces[2]).data) == 3


def test_sweep_table_groups_by_setting():
    t = tiny_trace()
    samples = [sweeps.SweepSample({"decoder": "lantern", "delta": 0.1}, t, 1, 1),
               sweeps.SweepSample({"decoder": "lantern", "delta": 0.1}, t, 1, 2),
               sweeps.SweepSample({"decoder": "lantern", "delta": 0.2}, t, 1, None)]
    rows = sweeps.sweep_table(samples)
    assert [r["delta"] for r in rows] == [0.1, 0.2]
    assert rows[0]["images"] == 2 and rows[0]["class consistency"] == 0.5 and rows[1]["class consistency"] is None
    assert rows[0]["acceptance rate"] == round(2 / 3, 3) and rows[0]["step compression"] == 2.0
    curves = sweeps.sweep_curves(rows, "delta")
    assert len(curves.data) == 3 and list(curves.data[0].x) == [0.1, 0.2]
    assert len(sweeps.speed_quality_figure(rows, "delta").data) == 1


def test_static_summary_png(traces):
    png = static.summary_png(traces[2], np.zeros((12, 12, 3), np.uint8), dpi=40)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_definitions_are_sentences():
    assert all(v.endswith(".") for v in DEFINITIONS.values())
    assert define("nfe", "step_compression").count("\n") == 1
    with pytest.raises(KeyError, match="no definition"):
        define("speedup")


def test_a_truncated_or_corrupt_projection_cache_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setitem(codebook.METHODS, "umap", lambda e: np.asarray(e[:, :2], np.float32) * 2)
    emb = np.random.default_rng(4).normal(size=(30, 4))
    codebook.ProjectionStore(tmp_path, background=False).compute("m", "vq", "umap", emb)
    path = tmp_path / "m_vq_umap.npz"
    whole = path.read_bytes()
    for broken in (whole[: len(whole) // 2], b"", b"not a zip file"):
        path.write_bytes(broken)
        store = codebook.ProjectionStore(tmp_path)
        assert store.get("m", "vq", emb)[1] == "pca"  # not fatal: PCA now, UMAP refitted in the background
        store.wait(10)
        xy, method = store.get("m", "vq", emb)
        assert method == "umap" and np.allclose(xy, emb[:, :2] * 2)
        assert codebook.load_projection(path, emb) is not None  # the broken file was replaced
    assert [p.name for p in tmp_path.iterdir()] == ["m_vq_umap.npz"]  # no temporary file left behind


def test_projection_cache_is_written_atomically(tmp_path, monkeypatch):
    monkeypatch.setitem(codebook.METHODS, "umap", lambda e: np.zeros((len(e), 2), np.float32))
    emb = np.random.default_rng(5).normal(size=(12, 3))
    store = codebook.ProjectionStore(tmp_path, background=False)
    store.compute("m", "gpt", "umap", emb)
    before = (tmp_path / "m_gpt_umap.npz").read_bytes()

    def interrupted(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", interrupted)
    with pytest.raises(OSError, match="disk full"):
        store.compute("m", "gpt", "umap", emb + 1)
    assert (tmp_path / "m_gpt_umap.npz").read_bytes() == before  # the old file untouched, no half-written one
    assert [p.name for p in tmp_path.iterdir()] == ["m_gpt_umap.npz"]


def test_projections_are_never_written_into_the_source_tree(tmp_path, monkeypatch):
    monkeypatch.setitem(codebook.METHODS, "umap", lambda e: np.ones((len(e), 2), np.float32))
    emb = np.random.default_rng(6).normal(size=(10, 3))
    repo = codebook.source_tree()
    shipped = repo / "assets" / "projections"
    before = sorted(p.name for p in shipped.iterdir()) if shipped.is_dir() else []
    store = codebook.ProjectionStore(shipped, background=False)  # as the app passed it: only read
    assert store.directory is None and store.path("tiny-fixture", "vq", "umap") is None
    store.compute("tiny-fixture", "vq", "umap", emb)
    assert (sorted(p.name for p in shipped.iterdir()) if shipped.is_dir() else []) == before
    cache = codebook.ProjectionStore(tmp_path / "cache", background=False, shipped=shipped)
    cache.compute("tiny-fixture", "vq", "umap", emb)
    written = cache.path("tiny-fixture", "vq", "umap")
    assert written.is_file() and not written.resolve().is_relative_to(repo)
    assert codebook.default_cache_dir().name == "projections"
    assert codebook.ProjectionStore(tmp_path).shipped == shipped == codebook.SHIPPED  # the bundled ones by default
    assert codebook.ProjectionStore(tmp_path, shipped=None).shipped is None


def test_shipped_projections_are_read_before_the_cache(tmp_path):
    emb = np.random.default_rng(7).normal(size=(8, 3))
    codebook.save_projection(tmp_path / "shipped" / "m_vq_umap.npz", np.full((8, 2), 3.0), emb, "umap", "vq")
    store = codebook.ProjectionStore(tmp_path / "cache", background=False, shipped=tmp_path / "shipped")
    xy, method = store.get("m", "vq", emb)
    assert method == "umap" and np.all(xy == 3.0) and not (tmp_path / "cache").exists()


def test_depth_figure_hides_thin_depths_and_drops_a_conditional_equal_to_the_rate():
    t = tiny_trace()
    t.steps[1].accepted, t.steps[1].relaxed = [True, False, False], [False, False, False]  # stop at 1st rejection
    fig = steps.depth_figure({"x": [t] * 5})  # 5 windows: depths 1..3 have 5 drafts each
    assert [d.name for d in fig.data] == ["x: rate", "x: drafts"]  # conditional == rate: not drawn twice
    assert list(fig.data[0].y) == [1.0, 0.0, 0.0] and list(fig.data[1].y) == [5, 5, 5]
    thin = steps.depth_figure({"x": [t] * 4})
    assert np.isnan(np.asarray(thin.data[0].y, dtype=float)).all()  # 4 drafts per depth: no 0/1 points
    assert "3 depth(s) with < 5 drafts not drawn" in thin.layout.title.text
    with pytest.raises(ValueError, match="min_drafts must be >= 1"):
        steps.depth_figure({"x": [t]}, min_drafts=0)


def test_a_16384_code_codebook_is_a_density_with_the_highlight_always_drawn(tmp_path):
    rng = np.random.default_rng(8)
    emb = rng.normal(size=(16384, 8)).astype(np.float32)
    store = codebook.ProjectionStore(tmp_path, background=False)
    xy, method = store.get("big", "vq", emb)
    assert method == "pca" and xy.shape == (16384, 2) and not list(tmp_path.iterdir())
    used = rng.integers(0, 16384, size=6000)
    stats = codebook.CodeStats(*(np.zeros(16384, dtype=np.int64) for _ in range(6)))
    np.add.at(stats.usage, used, 1)
    h = codebook.code_highlight(emb, 12345, 16)
    fig = codebook.codebook_figure(xy, stats, "usage", h, max_points=1000)
    density = fig.data[0]
    assert density.type == "heatmap" and np.nansum(np.asarray(density.z, dtype=float)) == 16384  # every code
    points = {d.name: d for d in fig.data[1:]}
    assert len(points["times committed"].x) == 1000  # bounded: the 1000 most used codes with data
    top = np.sort(stats.usage)[::-1][:1000]
    shown = np.asarray(points["times committed"].customdata)[:, 0].astype(int)
    assert np.sort(stats.usage[shown])[::-1].tolist() == top.tolist()
    assert list(points["16 nearest codes to 12345 (LANTERN's neighbourhood)"].customdata) == h.neighbours.tolist()
    assert "code 12345 (picked)" in points and "no data yet" not in points
    assert "16384 codes" in fig.layout.title.text and "1000 with data as points" in fig.layout.title.text
    with pytest.raises(ValueError, match=r"max_points must be in \[1, 5000\]"):
        codebook.codebook_figure(xy, stats, max_points=0)


def test_frontier_png_labels_do_not_overlap():
    """17 settings, clustered as in the quality table: every name is drawn once, inside the axes,
    and no two names overlap (the greedy placement has room here)."""
    import matplotlib.pyplot as plt

    from analysis.style import decoder_colour, decoder_marker
    rng = np.random.default_rng(0)
    xs = [1.0, 1.32, 2.26, 2.3, 2.76, 2.9, 3.04, 3.09, 3.28, 3.3, 3.87, 3.88, 4.28, 4.5, 1.58, 1.6, 5.48]
    points = [{"name": f"decoder-{i}:setting", "x": x, "y": 30 + rng.normal(), "y_lo": 28.0, "y_hi": 33.0}
              for i, x in enumerate(xs)]
    fig, ax = plt.subplots(figsize=(10.5, 5.5))
    for i, p in enumerate(points):
        ax.plot([p["x"]], [p["y"]], decoder_marker(i), color=decoder_colour(i))
    ax.margins(x=0.15, y=0.15)
    sweeps.place_labels(fig, ax, points)
    texts = [t for t in ax.texts]
    assert sorted(t.get_text() for t in texts) == sorted(p["name"] for p in points)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert all(ax.bbox.x0 <= b.x0 and b.x1 <= ax.bbox.x1 for b in boxes)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)
    # past 8 colours the marker changes, so no two series look alike
    assert len({(decoder_colour(i), decoder_marker(i)) for i in range(17)}) == 17
    png = sweeps.frontier_png(points, "FD", "title", floor=(27.0, 32.0))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_frontier_png_separates_the_names_of_the_16k_tables_cluster():
    """The 380-sample fashion-mnist-16k table's points (seven settings within 0.7x and 10 FD of each other, with
    long names): in the saved figure no two names overlap (the first rings alone overlapped two GSD names)."""
    import matplotlib.pyplot as plt

    table = [("ar", 1.0, 28.7), ("jacobi", 1.08, 30.1), ("sjd", 1.82, 28.6), ("sjd-coupled", 2.35, 30.4),
             ("sjd-pac", 2.96, 28.3), ("speclens", 2.89, 28.4), ("gsd:group_size=25", 2.45, 28.9),
             ("gsd:group_size=100", 2.56, 28.8), ("lantern", 2.71, 37.3), ("lantern:delta=0.4", 2.79, 37.7),
             ("zipar", 1.58, 28.6), ("pjd", 2.12, 54.9), ("speclens-relaxed", 4.29, 40.4)]
    points = [{"name": n, "x": x, "y": y, "y_lo": y - 6, "y_hi": y + 7} for n, x, y in table]
    fig = sweeps.frontier_matplotlib(points, "FD", "fashion-mnist-16k: speed against quality", floor=(24.0, 39.7))
    fig.canvas.draw()  # the saved layout
    ax, renderer = fig.axes[0], fig.canvas.get_renderer()
    texts = [t for t in ax.texts]
    assert sorted(t.get_text() for t in texts) == sorted(n for n, _, _ in table)
    boxes = [sweeps._text_box(t, renderer) for t in texts]  # the names; a leader line may cross one
    overlapping = [(texts[i].get_text(), texts[j].get_text()) for i, a in enumerate(boxes)
                   for j, b in enumerate(boxes) if i < j and a.overlaps(b)]
    assert not overlapping
    plt.close(fig)


def test_plotly_frontier_spreads_the_labels_of_a_cluster():
    """Four settings on top of each other: the interactive frontier gives their names four different
    places (one fixed position would stack them), and every point keeps its name and symbol."""
    points = [{"name": f"setting-{i}", "x": 3.0 + 0.01 * i, "y": 30.0 + 0.01 * i, "y_lo": 28.0, "y_hi": 32.0}
              for i in range(4)] + [{"name": "ar", "x": 1.0, "y": 30.0}]
    positions = sweeps.text_positions(points)
    assert len(set(positions[:4])) == 4
    fig = sweeps.frontier_figure(points, "FD", "title", floor=(27.0, 32.0))
    named = [t for t in fig.data if t.x != (None,)]
    assert [t.text[0] for t in named] == [p["name"] for p in points]
    assert [t.textposition for t in named] == positions
