"""`ARImageModel.forward_nodes` (trees, several row windows, per-node context, scratch slots, hidden
states) and `copy_slots`, against a teacher-forced forward with no cache.

The reference runs the training path of every layer (`TransformerBlock.forward`, no cache) over one
sequence [condition; the N committed tokens; the K nodes] with each row's own RoPE position and an
explicit attention mask: committed rows are causal over the committed tokens (that is how their K/V
were cached), node i sees the condition, its context positions before its own, the nodes it sees and
itself. With a causal mask it is `GPT.forward`, which matches the official code's golden logits.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import load_into, read_state_dict
from models.gpt import GPT, GPTConfig
from models.interface import ARImageModel
from models.registry import load_model
from models.vq import VQConfig, VQModel

FIX = Path(__file__).parent / "fixtures" / "llamagen"
ATOL = 2e-5


def _load(module, filename: str):
    sd, _ = read_state_dict(FIX / filename)
    load_into(module, sd, FIX / filename)
    return module.eval()


@pytest.fixture(scope="module")
def golden():
    return torch.load(FIX / "golden_tiny.pt", weights_only=True)


@pytest.fixture(scope="module")
def tiny(golden) -> ARImageModel:
    gpt = _load(GPT(GPTConfig.from_dict(golden["config_gpt"])), "gpt_tiny.pt")
    vq = _load(VQModel(VQConfig.from_dict(golden["config_vq"])), "vq_tiny.pt")
    model = ARImageModel(gpt, vq, "tiny")
    model.scratch_slots = 24
    return model


@pytest.fixture(scope="module")
def bundled() -> ARImageModel:
    shared = load_model("fashion-mnist")
    model = ARImageModel(shared.gpt, shared.vq, "fashion-mnist", shared.info.class_names)
    model.scratch_slots = 64  # a wrapper of its own: the process-wide one keeps the default
    return model


# -- the reference --------------------------------------------------------------------------------
@torch.no_grad()
def reference(model: ARImageModel, label: int, scale: float, committed: torch.Tensor, tokens: torch.Tensor,
              positions: torch.Tensor, sees_nodes: torch.Tensor, sees_context: torch.Tensor):
    """Logits [B, K, V] (each CFG half) and hidden [B, K, dim] of the nodes, teacher-forced with no cache.
    committed: [N] tokens whose K/V are cached (causally); sees_nodes: bool [K, K]; sees_context: bool [K, N]."""
    gpt, n, k = model.gpt, len(committed), len(tokens)
    cls = gpt.cls_token_num
    labels = torch.tensor([label, model.info.num_classes] if scale > 1.0 else [label])
    h = torch.cat([gpt.cls_embedding(labels, train=False)[:, :cls],
                   gpt.tok_embeddings(torch.cat([committed, tokens])).expand(len(labels), -1, -1)], 1)
    rope = torch.cat([torch.arange(cls + n), positions + cls])
    s = cls + n + k
    mask = torch.zeros(s, s, dtype=torch.bool)
    mask[: cls + n, : cls + n] = torch.ones(cls + n, cls + n, dtype=torch.bool).tril()
    mask[cls + n:, :cls] = True
    mask[cls + n:, cls: cls + n] = sees_context
    mask[cls + n:, cls + n:] = sees_nodes
    freqs = gpt.freqs_cis[rope]
    for layer in gpt.layers:
        h = layer(h, freqs, mask=mask)
    hidden = gpt.norm(h)[:, cls + n:]  # [B, K, dim]
    return gpt.output(hidden), hidden


def guide(logits: torch.Tensor, scale: float) -> torch.Tensor:
    return logits[0] if len(logits) == 1 else logits[1] + (logits[0] - logits[1]) * scale


def commit(model: ARImageModel, label: int, scale: float, committed: torch.Tensor, gen: torch.Generator) -> None:
    """Prefill, cache every position's K/V causally, then junk into every scratch slot."""
    model.prefill(label, scale)
    model.forward_window(committed, 0)
    n, vocab = model.info.num_tokens, model.info.vocab_size
    scratch = model.scratch_slots
    junk = torch.randint(0, vocab, (scratch,), generator=gen)
    model.forward_nodes(junk, torch.randint(0, n, (scratch,), generator=gen), torch.eye(scratch, dtype=torch.bool),
                        0, slots=torch.arange(n, n + scratch))


def junk_outside(model: ARImageModel, keep: torch.Tensor, gen: torch.Generator) -> None:
    """Overwrite every canonical slot not in `keep` (bool [N]) with junk."""
    where = (~keep).nonzero().flatten()
    if len(where):
        junk = torch.randint(0, model.info.vocab_size, (len(where),), generator=gen)
        model.forward_nodes(junk, where, torch.eye(len(where), dtype=torch.bool), keep)


def random_tree(k: int, depth_limit: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Parents [K] (-1 for the root) and depths [K] of a random tree no deeper than depth_limit."""
    parent, depth = [-1], [0]
    for _ in range(1, k):
        candidates = [j for j in range(len(parent)) if depth[j] < depth_limit]
        p = candidates[int(torch.randint(0, len(candidates), (1,), generator=gen))]
        parent.append(p)
        depth.append(depth[p] + 1)
    return torch.tensor(parent), torch.tensor(depth)


def ancestors_or_self(parent: torch.Tensor) -> torch.Tensor:
    k = len(parent)
    sees = torch.eye(k, dtype=torch.bool)
    for i in range(k):
        j = int(parent[i])
        while j >= 0:
            sees[i, j] = True
            j = int(parent[j])
    return sees


def tree_slots(parent: torch.Tensor, positions: torch.Tensor, n: int, scratch: int, gen) -> torch.Tensor:
    """The path root -> the last node on canonical slots, every other node on a random scratch slot."""
    on_path = ancestors_or_self(parent)[-1]
    slots = n + torch.randperm(scratch, generator=gen)[: len(parent)]
    return torch.where(on_path, positions, slots)


@torch.no_grad()
def assert_nodes_match(model, label, scale, committed, tokens, positions, visible, context_kn, **kwargs):
    """Each CFG half (hidden states, and the head's logits on them) to ATOL; the guided logits to
    ATOL * (2 scale - 1), the most `u + s (c - u)` can amplify the halves' float32 rounding."""
    logits, hidden = model.forward_nodes(tokens, positions, visible, kwargs.pop("context"), return_hidden=True,
                                         **kwargs)
    want_halves, want_hidden = reference(model, label, scale, committed, tokens, positions, visible, context_kn)
    assert hidden.shape == (2 if scale > 1.0 else 1, len(tokens), model.gpt.config.dim)
    torch.testing.assert_close(hidden, want_hidden, atol=ATOL, rtol=0)
    torch.testing.assert_close(model.gpt.output(hidden), want_halves, atol=ATOL, rtol=0)
    guided_atol = ATOL * (2 * scale - 1)
    torch.testing.assert_close(logits, guide(want_halves, scale), atol=guided_atol, rtol=0)
    torch.testing.assert_close(logits, guide(model.gpt.output(hidden), scale), atol=guided_atol, rtol=0)


# -- the reference itself -------------------------------------------------------------------------------
@torch.no_grad()
def test_reference_with_causal_mask_is_the_teacher_forced_forward(tiny, golden):
    """Ties the reference to GPT.forward (and so to the official golden logits)."""
    tokens = golden["tokens"][0]
    n = tiny.info.num_tokens
    causal = torch.ones(n - 1, n - 1, dtype=torch.bool).tril()
    got, _ = reference(tiny, int(golden["labels"][0]), 1.0, tokens[:0], tokens[:-1], torch.arange(n - 1), causal,
                       torch.zeros(n - 1, 0, dtype=torch.bool))
    want = tiny.gpt(golden["labels"][:1], tokens[None, :-1])[0, 1:]
    torch.testing.assert_close(got[0], want, atol=ATOL, rtol=0)
    torch.testing.assert_close(want, golden["logits_full_nocache"][0, 1:], atol=ATOL, rtol=0)


# -- trees ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 3.0])
@pytest.mark.parametrize("which", ["tiny", "bundled"])
def test_random_trees_match_teacher_forced(which, scale, request):
    model = request.getfixturevalue(which)
    n, vocab = model.info.num_tokens, model.info.vocab_size
    gen = torch.Generator().manual_seed(int(scale) + len(which))
    for trial in range(4 if which == "tiny" else 2):
        label = int(torch.randint(0, model.info.num_classes, (1,), generator=gen))
        committed = torch.randint(0, vocab, (n,), generator=gen)
        commit(model, label, scale, committed, gen)
        prefix = int(torch.randint(1, n - 3, (1,), generator=gen))
        depth_limit = min(n - 1 - prefix, 6)
        parent, depth = random_tree(int(torch.randint(2, 12, (1,), generator=gen)), depth_limit, gen)
        positions = prefix + depth
        tokens = torch.randint(0, vocab, (len(parent),), generator=gen)
        visible = ancestors_or_self(parent)
        slots = tree_slots(parent, positions, n, model.scratch_slots, gen)
        context = (torch.arange(n) < prefix).expand(len(parent), n)
        assert_nodes_match(model, label, scale, committed, tokens, positions, visible, context,
                           context=prefix, slots=slots)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_chain_through_forward_nodes_is_forward_window(tiny, scale):
    gen = torch.Generator().manual_seed(5)
    n = tiny.info.num_tokens
    committed = torch.randint(0, tiny.info.vocab_size, (n,), generator=gen)
    commit(tiny, 2, scale, committed, gen)
    chain = torch.randint(0, tiny.info.vocab_size, (6,), generator=gen)
    fast = tiny.forward_window(chain, 4)
    tiny.forward_window(committed[4:], 4)  # restore what the first window overwrote
    general = tiny.forward_nodes(chain, torch.arange(4, 10), torch.ones(6, 6, dtype=torch.bool).tril(),
                                 torch.arange(n) < 4, slots=torch.arange(n, n + 6))
    torch.testing.assert_close(general, fast, atol=ATOL, rtol=0)
    context = (torch.arange(n) < 4).expand(6, n)
    assert_nodes_match(tiny, 2, scale, committed, chain, torch.arange(4, 10), torch.ones(6, 6, dtype=torch.bool).tril(),
                       context, context=4)


# -- several rows --------------------------------------------------------------------------------------
def row_windows(grid: int, committed_cols: list[int], window: int):
    """ZipAR-style layout: row r has its first committed_cols[r] tokens committed; each unfinished row
    contributes a window of its next `window` positions. Returns (context [N], positions, visible)."""
    context = torch.zeros(grid, grid, dtype=torch.bool)
    positions, rows = [], []
    for r, cols in enumerate(committed_cols):
        context[r, :cols] = True
        for c in range(cols, min(cols + window, grid)):
            positions.append(r * grid + c)
            rows.append(r)
    rows_t = torch.tensor(rows)
    k = len(positions)
    visible = (rows_t[:, None] == rows_t[None, :]) & torch.ones(k, k, dtype=torch.bool).tril()
    return context.flatten(), torch.tensor(positions), visible


@pytest.mark.parametrize("scale", [1.0, 3.0])
@pytest.mark.parametrize("which", ["tiny", "bundled"])
def test_row_windows_see_committed_tokens_and_their_own_row(which, scale, request):
    model = request.getfixturevalue(which)
    grid, n, vocab = model.info.grid_shape[0], model.info.num_tokens, model.info.vocab_size
    gen = torch.Generator().manual_seed(11)
    layouts = [[grid, 3, 1, 0], [grid] * (grid - 3) + [grid - 1, 2, 0]]
    for cols in layouts:
        cols = cols[:grid] + [0] * (grid - len(cols))
        context, positions, visible = row_windows(grid, cols, window=3)
        committed = torch.randint(0, vocab, (n,), generator=gen)
        commit(model, 1, scale, committed, gen)
        junk_outside(model, context, gen)
        tokens = torch.randint(0, vocab, (len(positions),), generator=gen)
        sees_context = context.expand(len(positions), n) & (torch.arange(n)[None] < positions[:, None])
        assert_nodes_match(model, 1, scale, committed, tokens, positions, visible, sees_context, context=context)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_per_node_context_and_visibility(tiny, scale):
    """Random distinct node positions, each with its own random context among the other positions and
    random visible earlier nodes; some nodes on scratch slots."""
    n, vocab = tiny.info.num_tokens, tiny.info.vocab_size
    gen = torch.Generator().manual_seed(int(scale))
    for trial in range(6):
        committed = torch.randint(0, vocab, (n,), generator=gen)
        commit(tiny, 3, scale, committed, gen)
        k = int(torch.randint(2, 9, (1,), generator=gen))
        positions = torch.randperm(n, generator=gen)[:k]
        earlier = positions[None, :] < positions[:, None]
        visible = (torch.rand(k, k, generator=gen) < 0.5) & earlier | torch.eye(k, dtype=torch.bool)
        is_node = torch.zeros(n, dtype=torch.bool)
        is_node[positions] = True
        context = (torch.rand(k, n, generator=gen) < 0.6) & ~is_node
        junk_outside(tiny, context.any(0), gen)
        slots = torch.where(torch.rand(k, generator=gen) < 0.5, positions, n + torch.randperm(24, generator=gen)[:k])
        tokens = torch.randint(0, vocab, (k,), generator=gen)
        sees_context = context & (torch.arange(n)[None] < positions[:, None])
        assert_nodes_match(tiny, 3, scale, committed, tokens, positions, visible, sees_context,
                           context=context, slots=slots)


# -- copy_slots ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 3.0])
@pytest.mark.parametrize("which", ["tiny", "bundled"])
@torch.no_grad()
def test_accepted_tree_path_copied_to_canonical_slots_then_chain(which, scale, request):
    """A tree whose nodes all sit in scratch; its deepest path is accepted and copied to the canonical
    slots; a chain forward after it equals the teacher-forced forward of prefix + path + chain."""
    model = request.getfixturevalue(which)
    n, vocab = model.info.num_tokens, model.info.vocab_size
    gen = torch.Generator().manual_seed(7 + len(which))
    label, prefix = 4, 3
    sequence = torch.randint(0, vocab, (n,), generator=gen)
    commit(model, label, scale, torch.randint(0, vocab, (n,), generator=gen), gen)  # junk everywhere
    model.forward_window(sequence[:prefix], 0)
    parent, depth = random_tree(10, 4, gen)
    leaf = int(depth.argmax())
    path = ancestors_or_self(parent)[leaf].nonzero().flatten()  # root .. leaf, in node order = depth order
    positions = prefix + depth
    tokens = torch.randint(0, vocab, (len(parent),), generator=gen)
    tokens[path] = sequence[positions[path]]
    slots = n + torch.randperm(model.scratch_slots, generator=gen)[: len(parent)]
    model.forward_nodes(tokens, positions, ancestors_or_self(parent), prefix, slots=slots)
    model.copy_slots(slots[path], positions[path])
    start = prefix + len(path)
    got = model.forward_window(sequence[start:start + 4], start)
    labels = torch.tensor([label, model.info.num_classes] if scale > 1.0 else [label])
    full = model.gpt(labels, sequence[None, :start + 4].expand(len(labels), -1))  # row i targets position i
    torch.testing.assert_close(got, guide(full, scale)[start + 1:start + 5], atol=ATOL * (2 * scale - 1), rtol=0)


# -- errors --------------------------------------------------------------------------------------------
def test_node_errors_are_specific(tiny):
    n = tiny.info.num_tokens
    fresh = ARImageModel(tiny.gpt, tiny.vq, "fresh")
    eye2 = torch.eye(2, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="prefill"):
        fresh.forward_nodes(torch.tensor([1]), torch.tensor([0]), torch.ones(1, 1, dtype=torch.bool), 0)
    tiny.prefill(0, 2.0)
    t2, p2 = torch.tensor([1, 2]), torch.tensor([3, 4])
    cases = [
        (dict(tokens=torch.zeros(1, 2, dtype=torch.long)), "1-D tensor"),
        (dict(tokens=torch.tensor([1.0, 2.0])), "tokens must be an integer tensor"),
        (dict(tokens=torch.tensor([1, 64])), r"tokens must be in \[0, 63\]"),
        (dict(positions=torch.tensor([3, 16])), r"positions must be in \[0, 15\]"),
        (dict(positions=torch.tensor([3])), r"positions must have shape \[2\]"),
        (dict(visible=torch.ones(2, 2)), "visible must be a bool tensor"),
        (dict(visible=torch.tensor([[True, False], [True, False]])), "diagonal"),
        (dict(visible=torch.ones(2, 2, dtype=torch.bool)), "earlier positions"),
        (dict(positions=torch.tensor([3, 3]), visible=torch.ones(2, 2, dtype=torch.bool).tril(),
              slots=torch.tensor([16, 17])), "earlier positions"),
        (dict(slots=torch.tensor([16, 16])), "share a slot"),
        (dict(slots=torch.tensor([16, 40])), r"slots must be in \[0, 39\]"),
        (dict(slots=torch.tensor([5, 16])), "canonical slot"),
        (dict(context=n + 1), r"context as an int .* \[0, 16\]"),
        (dict(context=torch.ones(n)), "context must be an int"),
        (dict(context=torch.ones(3, n, dtype=torch.bool)), r"\[N\] = \[16\] or \[K, N\] = \[2, 16\]"),
        (dict(context=5), r"slot\(s\) \[3, 4\] are in context"),
        (dict(context=torch.arange(n) == 4), r"slot\(s\) \[4\] are in context"),
    ]
    for change, message in cases:
        args = dict(tokens=t2, positions=p2, visible=eye2, context=3, slots=None) | change
        with pytest.raises(ValueError, match=message):
            tiny.forward_nodes(args.pop("tokens"), args.pop("positions"), args.pop("visible"), args.pop("context"),
                               **args)
    with pytest.raises(ValueError, match=r"at most N \+ scratch_slots = 40 nodes"):
        tiny.forward_nodes(torch.zeros(41, dtype=torch.long), torch.zeros(41, dtype=torch.long),
                           torch.eye(41, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match="dst slots must be distinct"):
        tiny.copy_slots(torch.tensor([16, 17]), torch.tensor([3, 3]))
    with pytest.raises(ValueError, match=r"dst must have shape \[2\]"):
        tiny.copy_slots(torch.tensor([16, 17]), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"src must be in \[0, 39\]"):
        tiny.copy_slots(torch.tensor([40]), torch.tensor([3]))
    tiny.scratch_slots = -1
    try:
        with pytest.raises(ValueError, match="scratch_slots must be an integer in"):
            tiny.prefill(0, 2.0)
    finally:
        tiny.scratch_slots = 24


def test_wrappers_sharing_one_gpt_each_get_their_cache_layout(tiny):
    """The cache lives on the GPT: a second wrapper's prefill reallocates it, the first one's next
    prefill restores its own scratch size (and its forwards stay right)."""
    other = ARImageModel(tiny.gpt, tiny.vq, "other")
    other.scratch_slots = 3
    gen = torch.Generator().manual_seed(9)
    n = tiny.info.num_tokens
    committed = torch.randint(0, tiny.info.vocab_size, (n,), generator=gen)
    other.prefill(0, 2.0)
    assert tiny.gpt.cache_layout() == (2, 3)
    with pytest.raises(ValueError, match=r"slots must be in \[0, 18\]"):
        other.forward_nodes(committed[:1], torch.tensor([2]), torch.ones(1, 1, dtype=torch.bool), 2,
                            slots=torch.tensor([20]))
    commit(tiny, 0, 2.0, committed, gen)
    assert tiny.gpt.cache_layout() == (2, 24)
    context = (torch.arange(n) < 2).expand(1, n)
    assert_nodes_match(tiny, 0, 2.0, committed, committed[:1], torch.tensor([2]), torch.ones(1, 1, dtype=torch.bool),
                       context, context=2, slots=torch.tensor([20]))
