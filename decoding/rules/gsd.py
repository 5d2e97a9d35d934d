"""GSD's grouped acceptance (Grouped Speculative Decoding, So et al., ICCV 2025, arXiv 2508.07747).

Notation: p = target distribution [K, V], q = draft distribution [K, V], x = draft token [K].

Sec. 3 of the paper: accept x with probability min(1, p(G) / q(G)), G = the group of x, and keep x
itself (Theorem 1: TV over groups <= TV over tokens, so the mean acceptance 1 - TV only grows; a
single draft's grouped ratio can still be below its own p(x) / q(x)). The group is
dynamic (Sec. 3.3, and `SpeculativeSampler.__call__` in junhyukso/GSD): the tokens ranked around
x in the current target's ranking, then filtered:
- rank window: G tokens, G // 2 ranked below x and G - 1 - G // 2 above (official: G = 14,
  `order[r-7 : r+7]` of an ascending sort = 7 lower-ranked, x, 6 higher-ranked);
- probability filter: |p(x') - p(x)| < prob_filter (official 0.15);
- embedding filter: squared L2 distance between embeddings of x' and x < distance_threshold
  (official 0.5, on the LM's input embeddings).
On rejection the residual is SJD's exact norm(max(0, p - q)) (unchanged, as in the official code).

Where we differ from the official code: the ranking is by p, descending, ties to the lower id,
computed once per window (two top-k calls), not an argsort of the logits per position; near the ends of
the ranking the window is truncated, where the official slice `order[r-7:r+7]` becomes empty for
r < 7 (group mass 0/0, always rejected); the draft always belongs to its group, so filters that
admit nothing else give exactly SJD's rule.

`gsd_group` is the fast path (integer rank keys, a modular key distance, two top-k, an optional
cached [V, V] distance table); `gsd_group_reference` is the plain version (sort, slice, filter, one
draft at a time), and a test holds the two equal on random inputs.
"""
from __future__ import annotations

import torch

from decoding.rules.exact import acceptance_ratio

_REVERSED_IDS: dict[tuple[int, torch.device], torch.Tensor] = {}  # (V, device) -> [V] V-1 .. 0


def _reversed_ids(vocab: int, device: torch.device) -> torch.Tensor:
    """[V] int64 V-1 - id: the tie-break of `rank_keys`, built once per vocabulary and device."""
    key = (vocab, device)
    if key not in _REVERSED_IDS:
        _REVERSED_IDS[key] = torch.arange(vocab - 1, -1, -1, device=device)
    return _REVERSED_IDS[key]


def rank_keys(p: torch.Tensor) -> torch.Tensor:
    """[K, V] -> [K, V] int64 keys, distinct per row, whose descending order is the target ranking:
    higher p first, ties to the lower id. (The bits of a non-negative float32 order like the float.)"""
    vocab = p.shape[1]
    shift = max(1, (vocab - 1).bit_length())
    bits = p.float().contiguous().view(torch.int32)  # [K, V]
    return torch.add(_reversed_ids(vocab, p.device), bits, alpha=1 << shift)  # bits << shift | V-1-id, one op


def _key_bound(vocab: int) -> int:
    """A power of two above every `rank_keys` key: p <= 1 has float32 bits below 2**30."""
    return 1 << (30 + max(1, (vocab - 1).bit_length()))


def gsd_group(p: torch.Tensor, drafts: torch.Tensor, group_size: int, prob_filter: float | None,
              embeddings: torch.Tensor | None, distance_threshold: float | None,
              sq_distances: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates of each draft's group and which of them belong to it.

    embeddings: [V, D]; sq_distances: optionally their [V, V] squared distances, precomputed (the
    same numbers, one look-up instead of four operations per pass).

    Returns (members [K, G] token ids in descending target rank, in_group [K, G] bool). Column
    `group_size - 1 - group_size // 2` is the draft itself and is always in the group. The rank
    window is found with two top-k calls on integer rank keys, not a full sort of the vocabulary.
    """
    n_lower = group_size // 2
    n_higher = group_size - 1 - n_lower
    keys, half = rank_keys(p), _key_bound(p.shape[1])  # [K, V]; every key is below `half`
    # distance above the draft's key modulo 2 * half: the draft 0, higher-ranked tokens in (0, half),
    # lower-ranked ones in [half, 2 * half); so each side of the rank window is one top-k
    dist = keys.sub_(keys.gather(1, drafts[:, None])).bitwise_and_(2 * half - 1)  # [K, V], in place
    above = torch.topk(dist, n_higher + 1, dim=1, largest=False)  # the draft, then the nearest above
    below = torch.topk(dist, n_lower, dim=1, largest=True)  # nearest below first
    members = torch.cat([above.indices.flip(1), below.indices], dim=1)  # [K, G]
    in_group = torch.cat([above.values.flip(1) < half, below.values >= half], dim=1)  # false past the ends
    if prob_filter is not None:
        p_members = p.gather(1, members)  # [K, G]
        in_group &= (p_members - p_members[:, n_higher:n_higher + 1]).abs() < prob_filter
    if distance_threshold is not None:
        in_group &= _group_sq_distances(drafts, members, n_higher, embeddings, sq_distances) < distance_threshold
    if prob_filter is not None or distance_threshold is not None:
        in_group[:, n_higher] = True  # a zero threshold would drop the draft itself
    return members, in_group


def gsd_group_reference(p: torch.Tensor, drafts: torch.Tensor, group_size: int, prob_filter: float | None,
                        embeddings: torch.Tensor | None, distance_threshold: float | None) -> torch.Tensor:
    """The plain version of `gsd_group` + `group_member_ids`: [K, G] each draft's group as token ids in
    descending target rank (column `group_size - 1 - group_size // 2` the draft), -1 where a candidate is
    past the end of the ranking or filtered out."""
    n_higher = group_size - 1 - group_size // 2
    out = torch.full((len(drafts), group_size), -1, dtype=torch.long)
    for i, x in enumerate(drafts.tolist()):
        row = p[i]
        order = sorted(range(len(row)), key=lambda t: (-float(row[t]), t))  # higher p first, ties to the lower id
        r = order.index(x)
        for j in range(group_size):
            rank = r - n_higher + j  # n_higher ranks above the draft, then the draft, then the ones below
            if not 0 <= rank < len(order):
                continue  # the window is truncated at the ends of the ranking
            m = order[rank]
            keep = prob_filter is None or bool((row[m] - row[x]).abs() < prob_filter)
            if distance_threshold is not None:
                keep = keep and bool((embeddings[m] - embeddings[x]).square().sum() < distance_threshold)
            out[i, j] = m if keep or m == x else -1
    return out


def _group_sq_distances(drafts: torch.Tensor, members: torch.Tensor, center: int, embeddings: torch.Tensor | None,
                        sq_distances: torch.Tensor | None) -> torch.Tensor:
    """[K, G] squared L2 distance from each draft (column `center` of members) to its candidates."""
    if sq_distances is not None:
        return sq_distances.index_select(0, drafts).gather(1, members)
    if embeddings is None:
        raise ValueError("a distance threshold needs an embedding table")
    group_emb = embeddings.index_select(0, members.flatten()).view(*members.shape, -1)  # [K, G, D]
    return (group_emb - group_emb[:, center:center + 1]).square().sum(-1)


def group_member_ids(members: torch.Tensor, in_group: torch.Tensor) -> torch.Tensor:
    """[K, G] each draft's group as token ids, -1 where a candidate was filtered out (what a trace records)."""
    return torch.where(in_group, members, -1)


def grouped_acceptance(p: torch.Tensor, q: torch.Tensor, members: torch.Tensor,
                       in_group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """min(1, p(G) / q(G)) [K] and the group sizes |G| [K]."""
    mask = in_group.to(p.dtype)  # [K, G]
    p_group = torch.linalg.vecdot(p.gather(1, members), mask)  # [K]
    q_group = torch.linalg.vecdot(q.gather(1, members), mask)  # [K]
    return acceptance_ratio(p_group, q_group), in_group.sum(1)
