"""The top-k affinity op as the protocol states it, with the whole affinity matrix: a specification for tiny inputs.

docs/PROTOCOL.md, "One propagation step" and "Constants per preset", written out step by step. The two fast paths
of :func:`siammae.kernels.topk_affinity.topk_affinity` (the tiled PyTorch reference and the Triton kernel) are
optimised algorithms: they never build the N x (F N) matrix, skip key tiles out of reach, merge running top-k lists
and compare neighbourhoods in integer form. This module does none of that. For query frame t it scores every query
patch against every key of every bank frame in float64, rules out the keys that are not in t's context or not in
reach (the protocol's float rules: ``abs(dy) <= r and abs(dx) <= r``, or ``sqrt(dy^2 + dx^2) < r``), sorts each
query's keys, keeps k, and takes the softmax of similarity / T over them. The tests check both fast paths against it
(tests/kernels/test_topk_affinity.py).

Ties: when keys share the k-th largest similarity, the protocol does not say which of them is kept. This
specification keeps the lowest flat bank index ``f * N + j`` and lists tied keys in that order, and so does the CPU
path; the GPU kernel may keep another of the tied keys. :func:`context_scores` gives every key's similarity, so a
test can check that the kernel kept keys of exactly the specified similarities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# float64 scores of the whole matrix: (T, N, F N) elements at most, a few MB; this is for tests, not for videos.
MAX_SCORES = 1 << 21


def neighbourhood_mask(grid: tuple[int, int], radius: float | None, neighbourhood: str) -> torch.Tensor:
    """(N, N) bool, [query patch, key patch]: True where the key is in reach of the query.

    square (DINO ``restrict_neighborhood``): abs(dy) <= radius and abs(dx) <= radius.
    circle (CRW ``MaskedAttention``): Euclidean distance < radius. ``None``: every key is in reach.
    """
    if neighbourhood not in ("square", "circle"):
        raise ValueError(f"neighbourhood must be 'square' or 'circle', got {neighbourhood!r}")
    h, w = grid
    y = torch.arange(h * w, dtype=torch.float64) // w  # (N,) row of each patch
    x = torch.arange(h * w, dtype=torch.float64) % w  # (N,) column
    dy = y[None, :] - y[:, None]  # (N query, N key)
    dx = x[None, :] - x[:, None]
    if radius is None:
        return torch.ones(h * w, h * w, dtype=torch.bool)
    if neighbourhood == "square":
        return (dy.abs() <= radius) & (dx.abs() <= radius)
    return torch.sqrt(dy * dy + dx * dx) < radius


def context_scores(
    query: torch.Tensor,
    keys: torch.Tensor,
    grid: tuple[int, int],
    ctx_start: Sequence[int],
    ctx_stop: Sequence[int],
    *,
    n_ref: int,
    radius: float | None = None,
    neighbourhood: str = "square",
    restrict_ref: bool = True,
) -> torch.Tensor:
    """(T, N, F N) float64: the similarity of every query patch with every bank key, -inf where the key is not a
    candidate (its frame is not in the query frame's context, or the neighbourhood rules it out).

    query (T, N, D), keys (F, N, D): L2-normalised features, so a dot product is a cosine similarity. The context of
    query frame t is the reference frames 0 .. n_ref-1 and the short-term frames ctx_start[t] .. ctx_stop[t]-1;
    the neighbourhood applies to the short-term frames always and to the reference frames when ``restrict_ref``.
    """
    T, N, D = query.shape
    F = keys.shape[0]
    if T * N * F * N > MAX_SCORES:
        raise ValueError(f"the specification builds {T}x{N}x{F * N} scores; it is meant for tiny test inputs")
    near = neighbourhood_mask(grid, radius, neighbourhood)  # (N, N)
    out = torch.full((T, N, F * N), float("-inf"), dtype=torch.float64)
    for t in range(T):
        frames = [*range(n_ref), *range(ctx_start[t], ctx_stop[t])]
        for f in frames:
            s = query[t].double() @ keys[f].double().T  # (N query, N key) of bank frame f
            if f >= n_ref or restrict_ref:
                s = s.masked_fill(~near, float("-inf"))
            out[t, :, f * N : (f + 1) * N] = s
    return out


def topk_affinity_spec(
    query: torch.Tensor,
    keys: torch.Tensor,
    grid: tuple[int, int],
    ctx_start: Sequence[int],
    ctx_stop: Sequence[int],
    *,
    n_ref: int,
    topk: int,
    temperature: float,
    radius: float | None = None,
    neighbourhood: str = "square",
    restrict_ref: bool = True,
    labels: torch.Tensor | None = None,
):
    """What :func:`siammae.kernels.topk_affinity.topk_affinity` returns, computed literally (same arguments).

    Returns (weights (T, N, topk) fp32, index (T, N, topk) int64): per query its kept keys in descending similarity
    (ties by ascending bank index), as flat bank indices; slots beyond the keys in reach hold weight 0 and index -1.
    With ``labels`` (F, N, C): (T, N, C) fp32, sum over the kept keys of weight * label.
    """
    T, N, _ = query.shape
    scores = context_scores(
        query, keys, grid, ctx_start, ctx_stop, n_ref=n_ref, radius=radius, neighbourhood=neighbourhood,
        restrict_ref=restrict_ref,
    )  # fmt: skip
    weights = torch.zeros(T, N, topk, dtype=torch.float64)
    index = torch.full((T, N, topk), -1, dtype=torch.int64)
    for t in range(T):
        for i in range(N):
            candidates = [(s, j) for j, s in enumerate(scores[t, i].tolist()) if s != float("-inf")]
            kept = sorted(candidates, key=lambda c: (-c[0], c[1]))[:topk]  # similarity down, then index up
            if not kept:
                continue  # no key in reach: the label is all zeros
            # softmax over the kept keys of similarity / T (shifted by the largest, which cancels out)
            e = [math.exp((s - kept[0][0]) / temperature) for s, _ in kept]
            for slot, ((_, j), ej) in enumerate(zip(kept, e, strict=True)):
                weights[t, i, slot] = ej / sum(e)
                index[t, i, slot] = j
    if labels is None:
        return weights.float(), index
    flat = labels.double().reshape(-1, labels.shape[-1])  # (F N, C)
    gathered = flat[index.clamp_min(0)] * weights[..., None]  # (T, N, topk, C); empty slots weigh 0
    return gathered.sum(2).float()
