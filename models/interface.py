"""The one interface decoders use: condition prefill, position-addressed forwards over the KV cache,
the two embedding tables of latent proximity, and tokens -> pixels.

Positions are image-token positions 0..N-1 in raster order (N = grid_h * grid_w). The static cache has
one slot per position (its canonical slot) and, after the grid, `scratch_slots` scratch slots N, N+1, ...
Nothing is ever removed from the cache: every forward says which slots each node sees, so rejected
drafts cost nothing (a later forward overwrites or ignores them).

`forward_nodes(tokens, positions, visible, context, slots=None, return_hidden=False)` is the general
verification forward: K nodes, node i the image token `tokens[i]` at position `positions[i]` (RoPE row
positions[i] + cls_token_num; tree siblings share a position). Node i attends to the condition, to the
`context` slots before its position (an int n = the prefix 0..n-1; a bool [N] shared by all nodes, e.g.
ZipAR's committed tokens of unfinished rows; or a bool [K, N] per node), to the nodes j with
`visible[i, j]` (its ancestors in a tree, its row's earlier nodes in a row window) and to itself. Its
K/V is written to `slots[i]` (default: its position; tree siblings go to scratch), and
`copy_slots(src, dst)` moves an accepted path from scratch to its canonical slots. It returns the guided
logits for position positions[i] + 1, and with `return_hidden` also the final-norm'd hidden states of
both CFG halves (drafters: EAGLE, LANTERN). A chain on a committed prefix takes the fast causal path.

`forward_window(tokens, start)` is that chain: `tokens[i]` at position `start + i`, context `start`,
causal visibility, canonical slots; it returns the guided logits for positions start+1..start+L.

Classifier-free guidance happens here, once: the model runs a batch of 2 ([cond; uncond],
uncond = the null class `num_classes`), and returns `u + s * (c - u)` (LlamaGen's order).
With `cfg_scale == 1` it runs the conditional half only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from models.gpt import GPT
from models.vq import VQModel

MAX_SCRATCH_SLOTS = 1 << 16


@dataclass(frozen=True)
class ModelInfo:
    name: str
    grid_shape: tuple[int, int]
    vocab_size: int
    num_classes: int
    class_names: tuple[str, ...]
    top_k: int = 0  # the top-k its recipe samples with (the app's and the commands' default; 0: off)

    @property
    def num_tokens(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]


class ARImageModel:
    """A class-conditional LlamaGen GPT with its VQ tokenizer, batch size 1 (x2 for CFG)."""

    scratch_slots: int = 512  # cache slots N..N+scratch_slots-1 after the grid; read at prefill

    def __init__(self, gpt: GPT, vq: VQModel, name: str, class_names: tuple[str, ...] | None = None,
                 top_k: int = 0):
        cfg = gpt.config
        grid = int(round(cfg.block_size**0.5))
        if vq.config.codebook_size != cfg.vocab_size:
            raise ValueError(f"VQ codebook size {vq.config.codebook_size} != GPT vocab_size {cfg.vocab_size}")
        self.gpt, self.vq = gpt.eval(), vq.eval()
        names = tuple(class_names) if class_names else tuple(str(i) for i in range(cfg.num_classes))
        if len(names) != cfg.num_classes:
            raise ValueError(f"{len(names)} class names for a model with {cfg.num_classes} classes")
        if top_k < 0:
            raise ValueError(f"recommended top_k must be >= 0 (0: off), got {top_k}")
        # a top-k at or above the vocabulary keeps every token: the same as off, stated as the vocabulary size
        self.info = ModelInfo(name, (grid, grid), cfg.vocab_size, cfg.num_classes, names, min(top_k, cfg.vocab_size))
        self.cfg_scale = 1.0
        self._batch = 0

    @property
    def device(self) -> torch.device:
        return self.gpt.tok_embeddings.weight.device

    # -- conditioning -----------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, label: int, cfg_scale: float) -> torch.Tensor:
        """Reset the cache, run the condition; return guided logits [V] for position 0."""
        if not 0 <= int(label) < self.info.num_classes:
            raise ValueError(f"class label must be in [0, {self.info.num_classes - 1}], got {label}")
        if cfg_scale < 1.0:
            raise ValueError(f"cfg_scale must be >= 1, got {cfg_scale}")
        self.cfg_scale = float(cfg_scale)
        batch = 2 if self.cfg_scale > 1.0 else 1
        if not isinstance(self.scratch_slots, int) or not 0 <= self.scratch_slots <= MAX_SCRATCH_SLOTS:
            raise ValueError(f"scratch_slots must be an integer in [0, {MAX_SCRATCH_SLOTS}], "
                             f"got {self.scratch_slots!r}")
        if self.gpt.cache_layout() != (batch, self.scratch_slots):  # the GPT may be shared by several wrappers
            self.gpt.setup_cache(batch, scratch_slots=self.scratch_slots)
        self._batch = batch
        labels = torch.tensor([int(label), self.info.num_classes][:batch], device=self.device)
        logits = self.gpt.forward_at(0, labels=labels)[:, -1:]  # [B, 1, V]
        return self._guide(logits)[0]

    def _guide(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, L, V] -> [L, V]: u + s (c - u)."""
        if logits.shape[0] == 1:
            return logits[0]
        cond, uncond = logits[0], logits[1]
        return uncond + (cond - uncond) * self.cfg_scale

    # -- windowed forward ---------------------------------------------------------------
    @torch.inference_mode()
    def forward_window(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """tokens: [L] image tokens at positions start..start+L-1 -> guided logits [L, V]
        for positions start+1..start+L (the last row is unused when start+L == N).
        The chain case of `forward_nodes` (context = start, causal `visible`), on its faster path."""
        self._require_prefill("forward_window")
        if tokens.dim() != 1:
            raise ValueError(f"forward_window takes a 1-D window of tokens (batch size 1; CFG doubles it "
                             f"internally), got shape {list(tokens.shape)}")
        n = self.info.num_tokens
        if start < 0 or start + len(tokens) > n:
            raise ValueError(f"window [{start}, {start + len(tokens)}) is outside the token grid [0, {n})")
        return self._chain(tokens, int(start), False)

    def _require_prefill(self, method: str) -> int:
        """The scratch size of the cache the last prefill set up."""
        layout = self.gpt.cache_layout()
        if self._batch == 0 or layout is None or layout[0] < self._batch:
            raise RuntimeError(f"call prefill(label, cfg_scale) before {method}")
        return layout[1]

    def _chain(self, tokens: torch.Tensor, start: int, return_hidden: bool):
        batch_tokens = tokens.to(self.device).view(1, -1).expand(self._batch, -1)
        out = self.gpt.forward_at(start + self.gpt.cls_token_num, tokens=batch_tokens, return_hidden=return_hidden)
        return (self._guide(out[0]), out[1]) if return_hidden else self._guide(out)

    # -- forward over nodes -------------------------------------------------------------
    @torch.inference_mode()
    def forward_nodes(self, tokens: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor,
                      context: int | torch.Tensor, *, slots: torch.Tensor | None = None,
                      return_hidden: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """K nodes (a chain, a tree, several row windows) in one forward over the cache.

        tokens [K]: image tokens; positions [K]: their image positions in [0, N) (siblings may share one);
        visible bool [K, K]: node i attends to node j (diagonal True; j at an earlier position);
        context: committed image positions the nodes see besides the condition: an int n (0..n-1), a
        bool [N] (the same for every node) or a bool [K, N] (per node); node i sees only those before
        positions[i]. slots [K]: where each node's K/V is written (default `positions`); slots N..N+S-1
        are the scratch area (S = `scratch_slots`); a slot < N must be the node's own position.
        Returns guided logits [K, V] (row i targets position positions[i] + 1), or with `return_hidden`
        (logits, hidden [B, K, dim]): the final-norm'd states fed to the head, B = 2 with CFG (cond first);
        like the logits they are inference-mode tensors (use them under torch.no_grad or inference_mode).
        """
        n, scratch = self.info.num_tokens, self._require_prefill("forward_nodes")
        tokens, positions, visible, slots = check_nodes(tokens, positions, visible, slots, n, scratch,
                                                        self.info.vocab_size)
        if isinstance(context, torch.Tensor) and context.dtype != torch.bool and context.dim() == 0:
            context = int(context)
        if is_chain(positions, visible, context, slots):
            return self._chain(tokens, int(context), return_hidden)
        sees = node_mask(positions, visible, check_context(context, len(tokens), n), slots, n, scratch)
        cls = self.gpt.cls_token_num
        batch_tokens = tokens.view(1, -1).expand(self._batch, -1)
        out = self.gpt.forward_nodes(batch_tokens, positions + cls, slots + cls,
                                     torch.cat([torch.ones(len(tokens), cls, dtype=torch.bool), sees], 1),
                                     return_hidden)
        return (self._guide(out[0]), out[1]) if return_hidden else self._guide(out)

    @torch.inference_mode()
    def copy_slots(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy the cached K/V of slots `src` [M] to slots `dst` [M] (distinct) in every layer, e.g. an
        accepted tree path from scratch to its canonical slots (dst = the nodes' positions: K carries
        the rotary position of the node that wrote it, so a slot must only ever hold its own position)."""
        total = self.info.num_tokens + self._require_prefill("copy_slots")
        src = _index_vector(src, "src", None, total)
        dst = _index_vector(dst, "dst", len(src), total)
        if len(set(dst.tolist())) != len(dst):
            raise ValueError(f"copy_slots: dst slots must be distinct, got {dst.tolist()}")
        self.gpt.copy_slots(src + self.gpt.cls_token_num, dst + self.gpt.cls_token_num)

    # -- latent proximity -------------------------------------------------------------------
    def codebook_embeddings(self) -> torch.Tensor:
        """[V, D]: the VQ codebook as the image decoder uses it (l2-normalised in LlamaGen)."""
        return self.vq.quantize.codebook().detach().float().cpu()

    def raw_codebook_embeddings(self) -> torch.Tensor:
        """[V, D]: the VQ embedding weights before l2-normalisation (what LANTERN's code reads)."""
        return self.vq.quantize.embedding.weight.detach().float().cpu()

    def token_embeddings(self) -> torch.Tensor:
        """[V, dim]: the GPT's input token embeddings (GSD's space)."""
        return self.gpt.tok_embeddings.weight.detach().float().cpu()

    # -- pixels -------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        """[N] tokens -> uint8 image [H, W, 3]."""
        tokens = torch.as_tensor(tokens).long().flatten()
        if tokens.numel() != self.info.num_tokens:
            raise ValueError(f"expected {self.info.num_tokens} tokens, got {tokens.numel()}")
        if tokens.min() < 0 or tokens.max() >= self.info.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.info.vocab_size - 1}]")
        h, w = self.info.grid_shape
        pixels = self.vq.decode_code(tokens.view(1, h, w).to(self.device))[0]  # [C, H, W]
        pixels = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels

    def decode_image(self, tokens: torch.Tensor) -> Image.Image:
        return Image.fromarray(self.decode_tokens(tokens))


# -- checking and masking nodes (CPU tensors; a few microseconds for the sizes decoders use) ---------------
def _index_vector(x, name: str, length: int | None, bound: int) -> torch.Tensor:
    """A 1-D integer tensor of `length` entries in [0, bound), as int64 on the CPU."""
    if not isinstance(x, torch.Tensor) or x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {type(x).__name__} {getattr(x, 'dtype', '')}")
    if x.dim() != 1 or (length is not None and len(x) != length):
        want = "[K]" if length is None else f"[{length}]"
        raise ValueError(f"{name} must have shape {want}, got {list(x.shape)}")
    x = x.detach().cpu().long()
    if len(x) and (int(x.min()) < 0 or int(x.max()) >= bound):
        raise ValueError(f"{name} must be in [0, {bound - 1}], got values in [{int(x.min())}, {int(x.max())}]")
    return x


def check_nodes(tokens, positions, visible, slots, n: int, scratch: int, vocab: int):
    """Validated CPU copies of forward_nodes' node arguments (tokens, positions, visible, slots)."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1 or len(tokens) == 0:
        shape = list(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a non-empty 1-D tensor [K] (batch size 1; CFG doubles it internally), "
                         f"got {shape}")
    k = len(tokens)
    if k > n + scratch:
        raise ValueError(f"at most N + scratch_slots = {n + scratch} nodes per forward, got K = {k}")
    tokens = _index_vector(tokens, "tokens", k, vocab)
    positions = _index_vector(positions, "positions", k, n)
    slots = positions if slots is None else _index_vector(slots, "slots", k, n + scratch)
    if not isinstance(visible, torch.Tensor) or visible.dtype != torch.bool or visible.shape != (k, k):
        raise ValueError(f"visible must be a bool tensor [K, K] = [{k}, {k}], got "
                         f"{getattr(visible, 'dtype', type(visible).__name__)} {list(getattr(visible, 'shape', []))}")
    visible = visible.detach().cpu()
    if not bool(visible.diagonal().all()):
        raise ValueError(f"visible must include the diagonal (a node attends to itself); node(s) "
                         f"{(~visible.diagonal()).nonzero().flatten().tolist()} do not")
    later = visible & (positions[None, :] >= positions[:, None]) & ~torch.eye(k, dtype=torch.bool)
    if bool(later.any()):
        i, j = later.nonzero()[0].tolist()
        raise ValueError(f"visible[{i}, {j}]: node {i} (position {int(positions[i])}) may only see nodes at earlier "
                         f"positions, node {j} is at position {int(positions[j])}")
    if len(set(slots.tolist())) != k:
        raise ValueError(f"two nodes may not share a slot, got slots {slots.tolist()}")
    canonical = slots < n
    if bool((slots[canonical] != positions[canonical]).any()):
        i = int((canonical & (slots != positions)).nonzero()[0])
        raise ValueError(f"node {i}: a slot < N ({n}) is the canonical slot of that position, so it must be the "
                         f"node's position {int(positions[i])}, got slot {int(slots[i])} (use scratch slots "
                         f"[{n}, {n + scratch}) instead)")
    return tokens, positions, visible, slots


def check_context(context, k: int, n: int) -> torch.Tensor:
    """forward_nodes' context (int n | bool [N] | bool [K, N]) as a bool [K, N]."""
    if isinstance(context, (int, np.integer)) and not isinstance(context, bool):
        if not 0 <= context <= n:
            raise ValueError(f"context as an int is the committed prefix length, in [0, {n}], got {context}")
        return (torch.arange(n) < int(context)).expand(k, n)
    if not isinstance(context, torch.Tensor) or context.dtype != torch.bool:
        raise ValueError(f"context must be an int (prefix length) or a bool tensor [N] or [K, N], got "
                         f"{type(context).__name__} {getattr(context, 'dtype', '')}")
    if context.shape == (n,):
        return context.detach().cpu().expand(k, n)
    if context.shape == (k, n):
        return context.detach().cpu()
    raise ValueError(f"context as a bool tensor must have shape [N] = [{n}] or [K, N] = [{k}, {n}], "
                     f"got {list(context.shape)}")


def is_chain(positions: torch.Tensor, visible: torch.Tensor, context, slots: torch.Tensor) -> bool:
    """Whether the nodes are the window start..start+K-1 on the committed prefix start (the fast path)."""
    if not isinstance(context, (int, np.integer)) or isinstance(context, bool):
        return False
    k = len(positions)
    window = torch.arange(int(context), int(context) + k)
    return (torch.equal(positions, window) and torch.equal(slots, window)
            and torch.equal(visible, torch.ones(k, k, dtype=torch.bool).tril()))


def node_mask(positions, visible, context: torch.Tensor, slots, n: int, scratch: int) -> torch.Tensor:
    """bool [K, N + scratch] over image slots: node i sees the context slots before its position and
    the slots of the nodes it sees. A node's slot must not be in anyone's context (it is overwritten)."""
    k = len(positions)
    canonical = slots[slots < n]
    clash = canonical[context.any(0)[canonical]]
    if len(clash):
        raise ValueError(f"slot(s) {clash.tolist()} are in context (committed positions a node sees), so a node "
                         f"may not write there; give the node a scratch slot in [{n}, {n + scratch})")
    sees = torch.zeros(k, n + scratch, dtype=torch.bool)
    sees[:, :n] = context & (torch.arange(n)[None, :] < positions[:, None])  # causal in raster order
    sees[:, slots] = visible  # column slots[j] <- visible[:, j]
    return sees
