"""The views for trees, rows and equal forward passes (race, acceptance-length histograms), on hand-built traces."""
from __future__ import annotations

import numpy as np
import pytest

from analysis import acceptance, heatmaps, race, steps, structure
from analysis.synthetic import synthetic_rows_trace, synthetic_trace, synthetic_tree_trace
from decoding.trace import TREE_FIELDS, Trace


def old_format(trace: Trace) -> Trace:
    """The trace as written before the per-node fields existed (lists empty, no drafter cost)."""
    for s in trace.steps:
        for f in TREE_FIELDS:
            setattr(s, f, [])
    return trace


@pytest.fixture(scope="module")
def kinds() -> dict[str, Trace]:
    g = (6, 8)
    return {"chain": synthetic_trace(g, 32, window=4, accept=0.6, seed=1, decoder="sjd"),
            "tree": synthetic_tree_trace(g, 32, branches=3, depth=3, accept=0.5, seed=2),
            "rows": synthetic_rows_trace(g, 32, window=3, lag=2, max_rows=3, seed=3),
            "old": old_format(synthetic_trace(g, 32, window=4, accept=0.6, seed=1, decoder="sjd")),
            "ar": synthetic_trace(g, 32, window=0, seed=4, decoder="ar")}


def test_structure_tells_chains_trees_and_rows_apart(kinds):
    assert [structure.is_tree(kinds[k]) for k in kinds] == [False, True, False, False, False]
    assert [structure.is_multi_row(kinds[k]) for k in kinds] == [False, False, True, False, False]
    chain, old = structure.all_pass_nodes(kinds["chain"]), structure.all_pass_nodes(kinds["old"])
    for a, b in zip(chain, old):  # an old trace reads as the chain its fields would have described
        assert a.parents.tolist() == b.parents.tolist() and a.depths.tolist() == b.depths.tolist()
        assert a.rows.tolist() == b.rows.tolist() and a.on_path.tolist() == b.on_path.tolist()
    rows = structure.active_rows(kinds["rows"])
    assert max(len(r) for r in rows) == 3 and rows[0] == [0]


def test_tree_layout_puts_siblings_in_one_column_and_children_right_of_parents(kinds):
    nodes = next(n for n in structure.all_pass_nodes(kinds["tree"]) if n.branches)
    x, y = structure.tree_layout(nodes)
    assert x.tolist() == nodes.depths.tolist()
    roots = np.flatnonzero(nodes.parents < 0)
    assert sorted(y[roots].tolist()) == list(range(len(roots)))  # siblings stacked, one slot each
    for i, p in enumerate(nodes.parents.tolist()):
        assert p < 0 or x[i] == x[p] + 1


def test_depth_statistics_of_a_tree_count_levels_and_ancestors():
    t = synthetic_tree_trace((4, 4), 16, branches=2, depth=2, accept=0.5, seed=5)
    d = steps.acceptance_by_depth([t])
    nodes = structure.all_pass_nodes(t)
    assert d.verified.tolist() == [sum((n.depths == k).sum() for n in nodes) for k in (1, 2)]
    # a level-2 node counts as reached only when its own parent (not the previous node) was accepted
    reached2 = sum(int(n.accepted[p]) for n in nodes for i, p in enumerate(n.parents.tolist()) if n.depths[i] == 2)
    assert d.reached[1] == reached2


@pytest.mark.parametrize("kind", ["chain", "tree", "rows", "old", "ar"])
def test_every_view_builds_from_every_kind_of_trace(kind, kinds):
    t = kinds[kind]
    image = np.zeros((24, 32, 3), np.uint8)
    assert heatmaps.acceptance_maps(t, image, ("kind", "step")).data
    assert steps.depth_figure({kind: [t]}).data is not None
    replay = steps.replay_figure(t, image)
    assert len(replay.frames) == t.nfe
    assert acceptance.acceptance_histograms({kind: [t]}).data
    assert race.race_figure({kind: t}).frames


def test_race_at_pass_k_shows_exactly_what_the_first_k_passes_committed(kinds):
    t = kinds["tree"]
    for k in range(t.nfe + 1):
        states = race.race_states(t, k)
        committed = {p for s in t.steps[:k] for p in s.committed_positions}
        assert set(np.flatnonzero(states == race.COMMITTED).tolist()) == committed
        waiting = set(t.steps[k].positions) - committed if k < t.nfe else set()
        assert set(np.flatnonzero(states == race.DRAFTED).tolist()) == waiting
    assert (race.race_states(t, t.nfe) == race.COMMITTED).all()
    with pytest.raises(ValueError, match="passes must be >= 0"):
        race.race_states(t, -1)


def test_race_figure_frames_follow_the_slider(kinds):
    traces = {"sjd": kinds["chain"], "sjd-pac": kinds["tree"], "zipar": kinds["rows"]}
    fig = race.race_figure(traces, max_frames=10)
    ks = [int(f.name) for f in fig.frames]
    assert ks[0] == 1 and ks[-1] == max(t.nfe for t in traces.values()) and len(ks) == 10
    k = ks[3]
    frame = fig.frames[3]
    for i, t in enumerate(traces.values()):
        picture, outline = frame.data[2 * i:2 * i + 2]
        assert picture.type == "image" and picture.source.startswith("data:image/png;base64,")
        waiting = np.flatnonzero(race.race_states(t, k) == race.DRAFTED)
        assert sorted((np.asarray(outline.y) * 8 + np.asarray(outline.x)).tolist()) == waiting.tolist()
    titles = [a["text"] for a in frame.layout.annotations]
    assert titles[0].startswith("sjd · ") and len(titles) == 3
    done = f"done at pass {kinds['rows'].nfe}"
    assert done in [a["text"] for a in fig.frames[-1].layout.annotations][2]
    with pytest.raises(ValueError, match="different token grids"):
        race.race_figure({"a": kinds["chain"], "b": synthetic_trace((4, 4), 32)})
    with pytest.raises(ValueError, match="max_frames must be in"):
        race.race_figure(traces, max_frames=1)


def test_race_token_grid_colours_committed_tokens_and_leaves_the_rest_blank(kinds):
    t = kinds["tree"]
    k = t.nfe // 2
    colours = race.token_colours(t.vocab_size)
    image = race.race_image(t, race.race_states(t, k), race.TokenColourPatch(t.vocab_size, cell=4))
    assert image.shape == (24, 32, 3)
    for pos in range(t.num_tokens):
        r, c = divmod(pos, 8)
        corner = image[r * 4, c * 4]
        expected = colours[t.tokens[pos]] if t.commit_step[pos] < k else [race.BLANK_GREY] * 3
        assert corner.tolist() == list(expected)


def test_acceptance_histogram_counts_match_the_passes(kinds):
    t = kinds["rows"]
    h = acceptance.length_histogram([t, t])
    per_pass = [len(s.committed_positions) for s in t.steps] * 2
    assert h.passes == len(per_pass) and h.counts.sum() == len(per_pass)
    assert h.counts.tolist() == [per_pass.count(k) for k in h.lengths.tolist()]
    assert h.mean == pytest.approx(t.mean_accepted_length) and h.shares.sum() == pytest.approx(1.0)
    assert acceptance.length_histogram([kinds["ar"]]).share_of(1) == 1.0
    rows = acceptance.acceptance_table({"zipar": [t, t], "ar": [kinds["ar"]], "none": []})
    assert [r["decoder"] for r in rows] == ["zipar", "ar"] and tuple(rows[0]) == acceptance.TABLE_COLUMNS
    assert rows[0]["passes committing 1 token"] == round(per_pass.count(1) / len(per_pass), 3)
    fig = acceptance.acceptance_histograms({"zipar": [t], "ar": [kinds["ar"]]})
    assert [list(d.x) for d in fig.data] == [h.lengths.tolist(), [1]]
    assert "100% commit one token" in fig.layout.annotations[1].text
    assert "no traces" in acceptance.acceptance_histograms({"x": []}).layout.annotations[0].text
    with pytest.raises(ValueError, match="at most 8 decoders"):
        acceptance.acceptance_table({str(i): [t] for i in range(9)})


def test_replay_draws_the_tree_of_each_pass_with_its_accepted_path(kinds):
    t = kinds["tree"]
    fig = steps.replay_figure(t)
    assert [a.text for a in fig.layout.annotations] == ["pass by pass", "verified tree"]
    for frame in fig.frames:
        s = t.steps[int(frame.name)]
        edges, path, nodes = frame.data[3:6]
        on = [i for i, o in enumerate(s.on_path) if o]
        assert len(nodes.x) == len(s.positions) + 1  # + the committed prefix as the root
        assert len([v for v in path.x if v is not None]) == 2 * len(on)  # one segment per node on the path
        assert len([v for v in edges.x if v is not None]) == 2 * (len(s.positions) - len(on))
    chain = steps.replay_figure(kinds["chain"])
    assert "verified tree" not in [a.text for a in chain.layout.annotations] and len(chain.frames[0].data) == 3


def test_replay_marks_the_rows_each_pass_decoded(kinds):
    t = kinds["rows"]
    fig = steps.replay_figure(t)
    expected = structure.active_rows(t)
    for frame in fig.frames:
        assert sorted(frame.data[3].y) == expected[int(frame.name)]
    assert any(len(set(frame.data[3].y)) > 1 for frame in fig.frames)


def test_rows_per_pass_counts_commits_and_drafts_by_row(kinds):
    for kind in ("chain", "rows", "tree"):
        t = kinds[kind]
        committed, verified = steps.rows_per_pass(t)
        assert committed.sum() == t.num_tokens and verified.sum() == sum(len(s.positions) for s in t.steps)
        assert committed.sum(1).tolist() == [t.grid_shape[1]] * t.grid_shape[0]  # every row filled once
        for s in t.steps:
            assert sorted(np.flatnonzero(committed[:, s.index]).tolist()) == sorted(
                {p // t.grid_shape[1] for p in s.committed_positions})
    rows = steps.rows_figure(kinds["rows"])
    assert "up to 3 row(s) in one pass" in rows.layout.title.text


def test_drafter_agreement_counts_drafts_that_were_the_targets_top1(kinds):
    from analysis import drafter

    t = synthetic_trace((6, 8), 32, window=4, accept=0.6, seed=9)  # its own: edited below
    s = next(s for s in t.steps if len(s.positions) >= 2)
    s.top1_prob[0], s.p_draft[0] = 0.4, 0.4  # the first draft was the target's top-1, the second not
    s.top1_prob[1], s.p_draft[1] = 0.4, 0.1
    assert drafter.is_target_top1(s.p_draft[:2], s.top1_prob[:2]).tolist() == [True, False]
    share, verified = drafter.agreement_grid([t])
    assert verified.sum() == sum(len(x.positions) for x in t.steps)
    p = s.positions[0]
    hits = sum(drafter.is_target_top1([x.p_draft[i]], [x.top1_prob[i]])[0] for x in t.steps
               for i, q in enumerate(x.positions) if q == p)
    assert share.ravel()[p] == pytest.approx(hits / verified.ravel()[p])
    d = drafter.by_depth([t])
    assert d["verified"].sum() == verified.sum() and d["accepted"].sum() == sum(x.n_accepted for x in t.steps)
    summary = drafter.drafter_summary([t])
    assert summary["drafter forwards per pass"] == 0.0 and summary["drafts verified"] == verified.sum()
    assert drafter.drafter_figure([t]).data[0].type == "heatmap"
    assert "no drafts" in drafter.drafter_figure([kinds["ar"]]).layout.annotations[0].text
    with pytest.raises(ValueError, match="different grids"):
        drafter.agreement_grid([t, synthetic_trace((4, 4), 32)])


def test_rows_decoded_without_drafts_are_seen_from_the_commits():
    t = synthetic_rows_trace((4, 6), 32, window=0, lag=2, max_rows=2, seed=6)  # ZipAR: one sampled token per row
    assert all(not s.positions for s in t.steps)
    assert structure.is_multi_row(t) and not structure.is_tree(t)
    assert max(len(r) for r in structure.active_rows(t)) == 2
    wrapping = synthetic_trace((4, 4), 32, window=6, accept=1.0, seed=0)  # a window running onto the next row
    assert not structure.is_multi_row(wrapping)


def test_a_version_1_trace_file_reads_as_chains_in_every_view(kinds):
    d = kinds["chain"].to_dict()
    d["version"] = 1
    for s in d["steps"]:
        for f in (*TREE_FIELDS, "draft_forwards", "draft_s"):
            s.pop(f, None)
    old = Trace.from_dict(d)
    assert not structure.is_tree(old) and not structure.is_multi_row(old)
    assert steps.acceptance_by_depth([old]).verified.tolist() == steps.acceptance_by_depth(
        [kinds["chain"]]).verified.tolist()
    assert len(steps.replay_figure(old).frames) == old.nfe and race.race_figure({"v1": old}).frames


def test_tree_layout_of_a_long_chain_and_bad_frame_counts():
    n = 3000  # a chain longer than Python's recursion limit
    nodes = structure.PassNodes(positions=np.arange(n), parents=np.arange(n) - 1, depths=np.arange(1, n + 1),
                                rows=np.zeros(n, dtype=int), on_path=np.ones(n, dtype=bool),
                                accepted=np.ones(n, dtype=bool))
    x, y = structure.tree_layout(nodes)
    assert x.tolist() == list(range(1, n + 1)) and not y.any()
    with pytest.raises(ValueError, match="max_frames must be >= 1"):
        steps.replay_figure(synthetic_trace((2, 2), 8), max_frames=0)
