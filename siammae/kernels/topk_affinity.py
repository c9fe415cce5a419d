"""Top-k affinity: for every query patch, the k most similar keys of its context frames, and their weights.

This is the expensive half of label propagation (docs/PROTOCOL.md, "One propagation step"). For
query frame t with features q (N, D) and a bank of context frames (F, N, D), the context of t is the reference
frames ``0 .. n_ref-1`` plus the short-term frames ``ctx_start[t] .. ctx_stop[t]-1``. For every query patch i
it returns the top-k keys j over all context frames jointly, among the keys inside the neighbourhood of i
(applied to the short-term frames always, to the reference frames when ``restrict_ref``), and the weights
w_ij = softmax over those k of (q_i . k_j) / temperature. Features are expected L2-normalised, so q_i . k_j is
the cosine similarity. A query with fewer than k keys in reach gets them all; the empty slots have weight 0
and index -1. Keys are returned in descending similarity, as flat bank indices ``f * N + j``.

With ``labels`` (F, N, C) the op also gathers and sums the labels, returning sum_k w_ik * labels[idx_ik]
(N, C) per query frame, which is one whole propagation step when the labels of every context frame are known.

Three implementations, named for what they are: the specification (:mod:`siammae.kernels.topk_spec`, the whole
matrix in float64, for tiny inputs), the CPU path (:func:`topk_affinity_cpu`) and the GPU kernel
(:func:`topk_affinity_triton`; its Triton program is in :mod:`siammae.kernels.topk_kernel`, imported on the first
launch, so that a CPU run never imports Triton). Neither fast path materialises the N x (F N) affinity matrix. The
GPU kernel streams key tiles through on-chip memory with a running top-k per query and skips key tiles wholly
outside the neighbourhood; the CPU path scores 8x8 tiles of queries of all the call's frames against runs of banded
keys in their reach, one GEMM per run and block of bank frames, with an exact two-stage top-k per tile, and breaks
ties as the specification does. Both hand DINO's tie rule (``keep_ties``) their top similarities, so the rule is one
piece of code (``_topk_keep_ties``). The tests check both paths against the specification.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass

import torch

from siammae.kernels.dispatch import resolve_backend, triton_interpreted

NEIGHBOURHOODS = ("square", "circle")


@dataclass(frozen=True)
class Rule:
    """The propagation constants both fast paths take as keywords (see :func:`topk_affinity`): ``n_ref`` reference
    frames at the start of the bank, ``topk`` keys per query, the softmax ``temperature``, the neighbourhood
    (``radius`` in patches or None, ``neighbourhood`` "square" / "circle") and whether it applies to the reference
    frames (``restrict_ref``)."""

    n_ref: int
    topk: int
    temperature: float
    radius: float | None = None
    neighbourhood: str = "square"
    restrict_ref: bool = True


def neighbourhood_reach(radius: float | None, neighbourhood: str) -> tuple[int, int, int]:
    """Integer form of a neighbourhood: ``(shape, reach, d2_max)``.

    shape: 0 unrestricted, 1 square (|dy| <= reach and |dx| <= reach), 2 circle (dy^2 + dx^2 <= d2_max, and
    then |dy| <= reach). Patch offsets are integers, so ``abs(d) <= radius`` is ``abs(d) <= floor(radius)``
    and ``d2 < radius^2`` is ``d2 <= ceil(radius^2) - 1``; both backends compare integers and agree exactly.
    """
    if neighbourhood not in NEIGHBOURHOODS:
        raise ValueError(f"neighbourhood must be one of {NEIGHBOURHOODS}, got {neighbourhood!r}")
    if radius is None:
        return 0, 0, 0
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0 or None, got {radius!r}")
    if neighbourhood == "square":
        return 1, math.floor(radius), 0
    d2_max = math.ceil(radius * radius) - 1
    return 2, (math.isqrt(d2_max) if d2_max >= 0 else -1), d2_max


def _tile(h: int, w: int, size: int) -> tuple[int, int]:
    """The (rows, columns) of a tile of ``size`` patches (powers of two) that pads the (h, w) grid least, and
    the squarest of those, which lets the neighbourhood skip more key tiles (30x55: 8x8, 60x110: 4x16)."""
    shapes = [(size >> i, 1 << i) for i in range(size.bit_length())]  # (size, 1), (size/2, 2), ..., (1, size)
    padded = lambda s: -(-h // s[0]) * s[0] * -(-w // s[1]) * s[1]
    return min(shapes, key=lambda s: (padded(s), abs(s[0].bit_length() - s[1].bit_length())))


def topk_affinity_triton(query, keys, grid, ctx_start, ctx_stop, *, labels=None, keep_ties=False, raw=False, **rule):
    """The GPU kernel of :func:`topk_affinity` (the same arguments, typed there, and results; CUDA tensors, or CPU
    tensors under ``TRITON_INTERPRET=1``); ``rule``: the constants of :class:`Rule`. ``keep_ties``: DINO's tie rule,
    applied by the same code as on the CPU path (``_topk_keep_ties``) to the kernel's top ``topk + extra``
    similarities (``raw``)."""
    if keep_ties and not raw:
        return _topk_keep_ties(topk_affinity_triton, query, keys, grid, ctx_start, ctx_stop, labels=labels, **rule)
    n_ref, topk, temperature, radius, neighbourhood, restrict_ref = astuple(Rule(**rule))
    shape, reach, d2_max = neighbourhood_reach(radius, neighbourhood)
    if labels is not None and not raw:
        labels = labels.float().contiguous()
    return _launch(
        query.contiguous(), keys.contiguous(), tuple(grid), [int(a) for a in ctx_start], [int(b) for b in ctx_stop],
        n_ref, topk, temperature, shape, reach, d2_max, restrict_ref, None if raw else labels, raw,
    )  # fmt: skip


def _launch(query, keys, grid, lo, hi, n_ref, topk, temperature, shape, reach, d2_max, restrict_ref, labels, raw):
    """Launch ``_topk_affinity_kernel``: one program per (query tile, query frame)."""
    import triton  # here, not at the top: a CPU run never imports Triton

    from siammae.kernels.topk_kernel import _topk_affinity_kernel

    T, N, D = query.shape
    h, w = grid
    interpreted = triton_interpreted()
    # tl.dot needs >= 16 per side; tiles of 64 queries x 64 keys suit sm80+ on 384-d features.
    size = 16 if interpreted else 64
    qh, qw = _tile(h, w, size)
    kh, kw = _tile(h, w, size)
    block_d = 16 if interpreted else min(64, max(16, triton.next_power_of_2(D)))
    gather = labels is not None
    C = labels.shape[-1] if gather else 1
    dev = query.device
    lo_t, hi_t = torch.tensor([lo, hi], dtype=torch.int32, device=dev)  # one host-to-device copy per call
    if gather:
        y = torch.empty(T, N, C, dtype=torch.float32, device=dev)
        w_out = i_out = y  # unused placeholders
        lab = labels
    else:
        w_out = torch.empty(T, N, topk, dtype=torch.float32, device=dev)
        i_out = torch.empty(T, N, topk, dtype=torch.int64, device=dev)
        y = lab = w_out  # unused placeholders
    grid_ = (triton.cdiv(h, qh) * triton.cdiv(w, qw), T)
    _topk_affinity_kernel[grid_](
        query, keys, lab, lo_t, hi_t, w_out, i_out, y,
        h, w, N, D, C, n_ref, reach, d2_max, 1.0 / temperature,
        K=topk,
        KPAD=triton.next_power_of_2(topk),
        SHAPE=shape,
        RESTRICT_REF=restrict_ref,
        QH=qh, QW=qw, KH=kh, KW=kw,
        BLOCK_D=block_d,
        BLOCK_C=min(64, triton.next_power_of_2(C)),
        GATHER=gather,
        RAW=raw,
        UPCAST=interpreted and query.dtype != torch.float32,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        num_warps=4,
        enable_fp_fusion=True,  # Triton's long-standing default; explicit, as Triton 3.9 warns when it is not
    )  # fmt: skip
    return y if gather else (w_out, i_out)


# ------------------------------------------------------------------------------------------------------------
# The CPU path: banded keys, one GEMM per run of key bands in reach, a top-k per run and one merge per query tile
# ------------------------------------------------------------------------------------------------------------
KEY_BAND = 4  # key columns per band of the banded layout (see band_order); 4 wastes less of a window than 8
QUERY_TILE = (8, 8)  # query patches per tile, rows x columns: 64 queries, the M side of each GEMM


@functools.lru_cache(maxsize=32)
def band_order(h: int, w: int, band: int = KEY_BAND) -> torch.Tensor:
    """(N,) raster index ``y * w + x`` of each position of the banded layout of an (h, w) grid.

    The banded layout lists the columns in bands of ``band`` (the last one narrower), and inside a band its patches
    row by row. So the keys of rows r0 .. r1-1 of one band are contiguous: ``(r1 - r0) * width`` keys from
    ``band_start + r0 * width``, one operand of a GEMM with no copy, hundreds of keys long (a raster row segment is
    only as long as the window is wide, which halves MKL's sgemm rate). Keys of a frame are stored in this order
    once, when they enter the bank (:class:`~siammae.propagation.engine.Propagator`).
    """
    idx = torch.arange(h * w).view(h, w)
    return torch.cat([idx[:, c : c + band].reshape(-1) for c in range(0, w, band)])


GROUP = 8  # consecutive scores per group of the two-stage top-k (_tile_topk)
SUPER = 8  # consecutive groups per super-group (_groups_to_read)
MIN_GEMM = 16  # MKL sums a dot product in another order when a GEMM side is below ~12; keep both sides >= 16
MAX_RUN = 128  # keys per GEMM: (Fg, 128, D) x (D, 64) runs at ~85 % of the sgemm peak and its scores stay in cache


@dataclass(frozen=True)
class _Run:
    """Contiguous keys of a banded frame that a query tile scores in one GEMM: positions off .. off+size-1.

    keys: (size,) their raster indices. mask: (size, 1, B) additive, 0 in reach of the tile's query and -inf out of
    it (the same for every query frame), or None when every key is in reach of every query of the tile."""

    off: int
    size: int
    keys: torch.Tensor
    mask: torch.Tensor | None


@dataclass(frozen=True)
class _Tile:
    """A tile of query patches: their raster indices (B,), and the runs of keys in reach of any of them."""

    queries: torch.Tensor
    runs: tuple[_Run, ...]


def _band_rows(y0, y1, x0, x1, c0, c1, shape, reach, d2_max) -> tuple[int, int] | None:
    """Rows (first, stop) of the key band of columns c0 .. c1-1 that can be in reach of a query of the tile
    rows y0 .. y1-1, columns x0 .. x1-1 (before clipping to the grid); None when no key of the band is."""
    gx = max(0, c0 - (x1 - 1), x0 - (c1 - 1))  # the smallest column distance between the band and the tile
    if shape == 1:
        return None if gx > reach else (y0 - reach, y1 + reach)
    if gx * gx > d2_max:
        return None
    ry = math.isqrt(d2_max - gx * gx)
    return y0 - ry, y1 + ry


def _spans(h, w, y0, y1, x0, x1, shape, reach, d2_max, band) -> list[tuple[int, int]]:
    """(offset, size) of the runs of banded keys in reach of the tile, consecutive runs that meet merged."""
    spans = []
    for c0 in range(0, w, band):
        c1 = min(w, c0 + band)
        rows = _band_rows(y0, y1, x0, x1, c0, c1, shape, reach, d2_max)
        r0, r1 = (0, 0) if rows is None else (max(0, rows[0]), min(h, rows[1]))
        if r1 <= r0:
            continue
        off, size = c0 * h + r0 * (c1 - c0), (r1 - r0) * (c1 - c0)
        if spans and spans[-1][0] + spans[-1][1] == off:
            spans[-1] = (spans[-1][0], spans[-1][1] + size)
        else:
            spans.append((off, size))
    return spans


def _splits(n: int, size: int) -> list[tuple[int, int]]:
    """(first, stop) ranges of ``size`` that cover 0 .. n-1; a remainder under half a tile joins the last tile, so
    that no tile is a sliver (a GEMM side under MIN_GEMM sums in another order)."""
    cuts = list(range(0, n, size))
    if len(cuts) > 1 and n - cuts[-1] < size / 2:
        cuts.pop()
    return [(a, cuts[i + 1] if i + 1 < len(cuts) else n) for i, a in enumerate(cuts)]


@functools.lru_cache(maxsize=8)
def _plan(h, w, shape, reach, d2_max, band, tile) -> tuple[_Tile, ...]:
    """The query tiles of an (h, w) grid with, for each, the runs of banded keys a restricted frame contributes.

    Runs of consecutive bands that meet in memory (whole-height bands) are merged, so an unrestricted window is one
    GEMM; a run shorter than MIN_GEMM keys is widened with keys masked out (never counted twice). The masks are
    built here once per grid and neighbourhood (the same for every frame of a video)."""
    qh, qw = tile
    N = h * w
    yy = torch.arange(h).repeat_interleave(w)  # (N,) row of each raster index
    xx = torch.arange(w).repeat(h)
    order = band_order(h, w, band)
    tiles = []
    for y0, y1 in _splits(h, qh):
        for x0, x1 in _splits(w, qw):
            queries = (torch.arange(y0, y1)[:, None] * w + torch.arange(x0, x1)[None]).reshape(-1)  # (B,)
            runs = []
            pieces = [(o + i, min(MAX_RUN, size - i)) for o, size in _spans(h, w, y0, y1, x0, x1, shape, reach,
                      d2_max, band) for i in range(0, size, MAX_RUN)]  # fmt: skip
            for off, size in pieces:
                wide = max(0, min(off, N - MIN_GEMM)) if size < MIN_GEMM <= N else off
                inside = torch.zeros(max(size, MIN_GEMM) if size < MIN_GEMM <= N else size, dtype=torch.bool)
                inside[off - wide : off - wide + size] = True  # the run's own keys; the rest widens the GEMM
                keys = order[wide : wide + inside.numel()]  # (L,) raster indices
                dy = yy[keys][:, None] - yy[queries][None]  # (L, B)
                dx = xx[keys][:, None] - xx[queries][None]
                if shape == 1:
                    out = (dy.abs() > reach) | (dx.abs() > reach)
                else:
                    out = dy * dy + dx * dx > d2_max
                out |= ~inside[:, None]
                mask = torch.zeros(out.shape).masked_fill_(out, float("-inf"))[:, None] if bool(out.any()) else None
                runs.append(_Run(wide, keys.numel(), keys, mask))
            tiles.append(_Tile(queries, tuple(runs)))
    return tuple(tiles)


def _frame_blocks(T, n_ref, ctx_start, ctx_stop, restrict_ref, shape, copies=None, topk=0) -> tuple[tuple, ...]:
    """The bank frames a chunk of T query frames reads, as (first, stop, restricted, t0, t1, src) blocks: frames
    first .. stop-1 are in the context of query frames t0 .. t1-1 (and of no other query frame of the block's
    frames), under one neighbourhood rule. Consecutive frames with the same query frames and rule share a block (one
    batched GEMM). Reference frames are in every query frame's context; a short-term frame is in frame t's when
    ctx_start[t] <= f < ctx_stop[t] (a frame whose query frames are not consecutive gets one block per run of them).

    ``copies`` = (src, c0, c1): bank frames c0 .. c1-1 hold frame src's features (:func:`topk_affinity_cpu`). Their
    blocks have ``src`` set (-1 otherwise): they are scored once, as frame src. A query frame reads only the first
    ``topk`` copies of its context: a key of a later copy ties with the same key of each of those (the same score, a
    lower bank index), so it is never among the top k."""
    src, c0, c1 = copies if copies is not None else (-1, 0, 0)
    per_frame = []  # (f, restricted, t0, t1, src)
    for f in range(n_ref):
        per_frame.append((f, shape != 0 and restrict_ref, 0, T, -1))
    short = range(min(ctx_start, default=n_ref), max(ctx_stop, default=n_ref))
    for f in short:
        copy = c0 <= f < c1
        ts = [t for t in range(T) if ctx_start[t] <= f < ctx_stop[t] and (not copy or f < max(ctx_start[t], c0) + topk)]
        runs = []
        for t in ts:
            if runs and runs[-1][1] == t:
                runs[-1][1] = t + 1
            else:
                runs.append([t, t + 1])
        per_frame += [(f, shape != 0, t0, t1, src if copy else -1) for t0, t1 in runs]
    blocks: list[tuple] = []
    for f, restricted, t0, t1, s in sorted(per_frame, key=lambda r: (r[2], r[3], r[1], r[4], r[0])):
        last = blocks[-1] if blocks else None
        if last and last[1] == f and last[2:] == (restricted, t0, t1, s):
            blocks[-1] = (last[0], f + 1, restricted, t0, t1, s)
        else:
            blocks.append((f, f + 1, restricted, t0, t1, s))
    return tuple(blocks)


class _Scores:
    """Scratch memory of one call of the CPU path, reused by every query tile: the tile's scores, piece by piece,
    and the bookkeeping of its rows. Grown when a tile needs more (the first tiles are the largest but for the
    edges), never shrunk during the call."""

    def __init__(self, dev):
        self.dev = dev
        self.values = torch.empty(0, device=dev)

    def take(self, n: int) -> torch.Tensor:
        if self.values.numel() < n:
            self.values = torch.empty(n, device=self.dev)
        return self.values


@dataclass(frozen=True)
class _Layout:
    """Where the scores of one tile go for one set of frame blocks (the same at every step of a steady stream, so
    cached): ``pieces`` (f0, f1, t0, t1, run, offset, rows padded to GROUP, first group, echoes), the scratch floats
    (``size``), the groups (a whole number of super-groups) and, per row of a group, its flat bank index (-1 for
    padding), where its scores start and the query column of the first. A piece of copies (:func:`_frame_blocks`)
    is one frame, its source, scored once for every query frame that reads a copy: it has no groups of its own
    (first group -1) but ``echoes`` (first group, copy's frame, t0, t1), one per copy and run, whose rows point at its
    scores."""

    pieces: tuple
    size: int
    groups: int
    row_ids: torch.Tensor
    row_addr: torch.Tensor
    row_col0: torch.Tensor


@functools.lru_cache(maxsize=64)
def _layout(blocks: tuple, tile: _Tile, whole: tuple, N: int, B: int, dev: torch.device) -> _Layout:
    pieces = []
    offset = groups = 0
    sources = {}  # (src, restricted) -> (t0, t1): the query frames that read a copy of src
    for f0, f1, restricted, t0, t1, src in blocks:
        if src >= 0:
            a, b = sources.get((src, restricted), (t0, t1))
            sources[(src, restricted)] = (min(a, t0), max(b, t1))
            continue
        for run in tile.runs if restricted else whole:
            rows = -(-(f1 - f0) * run.size // GROUP) * GROUP
            pieces.append((f0, f1, t0, t1, run, offset, rows, groups, ()))
            offset += rows * (t1 - t0) * B
            groups += rows // GROUP
    for (src, restricted), (tc0, tc1) in sources.items():
        for run in tile.runs if restricted else whole:
            rows = -(-run.size // GROUP) * GROUP
            echoes = []
            for f0, f1, r, t0, t1, s in blocks:
                for f in range(f0, f1) if (s, r) == (src, restricted) else ():
                    echoes.append((groups, f, t0, t1))
                    groups += rows // GROUP
            pieces.append((src, src + 1, tc0, tc1, run, offset, rows, -1, tuple(echoes)))
            offset += rows * (tc1 - tc0) * B
    groups = -(-groups // SUPER) * SUPER  # whole super-groups; the last groups may be -inf padding
    row_ids = torch.full((groups * GROUP,), -1, dtype=torch.int64, device=dev)
    row_addr = torch.zeros(groups * GROUP, dtype=torch.int64, device=dev)
    row_col0 = torch.zeros(groups * GROUP, dtype=torch.int64, device=dev)
    # the rows of each group: a piece's own, or a copy's, which are its source's scores under the copy's bank indices
    owners = [(f0, f1, t0, t1, run, off, rows, g) for f0, f1, t0, t1, run, off, rows, g, _ in pieces if g >= 0]
    owners += [(f, f + 1, t0, t1, run, off, rows, ge) for _, _, t0, t1, run, off, rows, _, echoes in pieces
               for ge, f, _, _ in echoes]  # fmt: skip
    for f0, f1, t0, t1, run, off, rows, g in owners:
        r0, n, width = g * GROUP, (f1 - f0) * run.size, (t1 - t0) * B
        frames = torch.arange(f0, f1, device=dev)[:, None] * N  # (Fg, 1)
        row_ids[r0 : r0 + n] = (frames + run.keys[None]).reshape(-1)
        row_addr[r0 : r0 + rows] = off + torch.arange(rows, device=dev) * width
        row_col0[r0 : r0 + rows] = t0 * B
    return _Layout(tuple(pieces), offset, groups, row_ids, row_addr, row_col0)


def _tile_topk(qt, keys, blocks, tile, whole, topk, N, B, scratch):
    """Top-k of one query tile over the contexts of a chunk of query frames: values (T * B, k') descending and flat
    bank indices (T * B, k'), rows ``t * B + b``.

    qt: (D, T * B) the tile's queries of every frame of the chunk, transposed. keys: (F, N, D) the banded bank.
    blocks: :func:`_frame_blocks`. Each block of frames and run of keys is one batched GEMM ((Fg, L, D) x
    (D, (t1 - t0) * B), the bank sliced, not copied, the queries of the block's query frames side by side: each key
    is read once per chunk, not once per query frame), its scores a piece of their own in ``scratch`` with -inf
    added out of reach. The top-k is exact in two stages: the maxima of GROUP consecutive rows of a piece (its rows
    padded to a multiple of GROUP with -inf), the top-k of those groups per query (the k best scores lie in the k
    groups of the largest maxima; a group holds no score of a query whose frame does not read its piece: -inf),
    then the top-k of their k x GROUP scores."""
    D, TB = qt.shape
    dev = qt.device
    lay = _layout(blocks, tile, whole, N, B, dev)
    if lay.groups == 0:
        return torch.empty(TB, 0, device=dev), torch.empty(TB, 0, dtype=torch.int64, device=dev)
    values = scratch.take(lay.size)
    groups_max = torch.full((lay.groups, TB), float("-inf"), device=dev)
    # the operands as strided views of the three buffers (one call each: this loop runs ~500 times a frame)
    ks, qs, vs, ND = keys.storage_offset(), qt.storage_offset(), values.storage_offset(), N * D
    for f0, f1, t0, t1, run, off, rows, g, echoes in lay.pieces:
        Fg, L, width = f1 - f0, run.size, (t1 - t0) * B
        out = values.as_strided((Fg, L, width), (L * width, width, 1), vs + off)
        a = keys.as_strided((Fg, L, D), (ND, D, 1), ks + f0 * ND + run.off * D)
        torch.bmm(a, qt.as_strided((Fg, D, width), (0, TB, 1), qs + t0 * B), out=out)
        if run.mask is not None:  # -inf out of reach; the mask is (L, 1, B), the same for every query frame
            values.as_strided((Fg, L, t1 - t0, B), (L * width, width, B, 1), vs + off).add_(run.mask)
        if rows > Fg * L:
            values.as_strided(((rows - Fg * L) * width,), (1,), vs + off + Fg * L * width).fill_(float("-inf"))
        grouped = values.as_strided((rows // GROUP, GROUP, width), (GROUP * width, width, 1), vs + off)
        if g >= 0:
            torch.amax(grouped, 1, out=groups_max.as_strided((rows // GROUP, width), (TB, 1), g * TB + t0 * B))
            continue
        maxima = torch.amax(grouped, 1)  # a source frame: each copy's groups, its maxima
        for ge, _, e0, e1 in echoes:
            groups_max[ge : ge + rows // GROUP, e0 * B : e1 * B] = maxima[:, (e0 - t0) * B : (e1 - t0) * B]
    row_ids, row_addr, row_col0 = lay.row_ids, lay.row_addr, lay.row_col0
    best, top_g = _groups_to_read(groups_max, topk)  # (T * B, kg) each query's groups that can hold its top-k
    cand = (top_g[:, :, None] * GROUP + torch.arange(GROUP, device=dev)).reshape(TB, -1)  # (T * B, kg * GROUP) rows
    col = torch.arange(TB, device=dev)[:, None] - row_col0[cand]  # the query's column in the row's piece
    live = (best > float("-inf")).repeat_interleave(GROUP, 1)  # a group of -inf maxima: no score of this query
    addr = torch.where(live, row_addr[cand] + col, 0)
    vals = values[addr].masked_fill_(~live, float("-inf"))  # (T * B, kg * GROUP)
    ids = row_ids[cand]
    return _in_spec_order(vals, ids, min(topk, vals.shape[1]))


def _in_spec_order(vals: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of each row's candidates (T * B, n) in the specification's order: similarity down, then bank index
    up, so that tied keys are chosen the same way whatever the tiling, chunk or threads. A row whose k + 1 best hold
    no tie (the rule on a real video's features) is ordered by one ``topk``; the others by a stable sort by
    similarity of the candidates in index order."""
    v, sel = vals.topk(min(k + 1, vals.shape[1]), dim=1)
    tied = ((v[:, 1:] == v[:, :-1]) & (v[:, 1:] > float("-inf"))).any(1).nonzero()[:, 0]
    v, i = v[:, :k], ids.gather(1, sel[:, :k])
    if tied.numel():
        by_id = ids[tied].argsort(dim=1)
        vt, st = vals[tied].gather(1, by_id).sort(dim=1, descending=True, stable=True)
        v[tied], i[tied] = vt[:, :k], ids[tied].gather(1, by_id.gather(1, st[:, :k]))
    return v, i


def _groups_to_read(groups_max: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(groups, T * B) maxima, groups a multiple of SUPER -> (maxima, group numbers) (T * B, kg) of each query's
    groups that hold its top-k (:func:`_best_groups`). Many groups: first the best super-groups (the maxima of SUPER
    consecutive groups), then the best groups of those, the same groups for a fraction of the top-k work."""
    G, TB = groups_max.shape
    if groups_max.shape[0] < 4 * SUPER * topk:  # few groups: one stage
        return _best_groups(groups_max.T, topk)
    sup = groups_max.view(G // SUPER, SUPER, TB).amax(1).T  # (T * B, G / SUPER)
    s_best, s_top = _best_groups(sup, topk)
    cand = (s_top[:, :, None] * SUPER + torch.arange(SUPER, device=groups_max.device)).reshape(TB, -1)
    vals = groups_max.view(-1)[cand * TB + torch.arange(TB, device=groups_max.device)[:, None]]  # (T * B, ks * SUPER)
    vals.masked_fill_((s_best == float("-inf")).repeat_interleave(SUPER, 1), float("-inf"))  # padding, not groups
    best, sel = _best_groups(vals, topk)
    return best, cand.gather(1, sel)


def _best_groups(groups_max: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(T * B, groups) maxima -> (maxima, group numbers) of each query's best groups: the top-k, and every group
    tied with the k-th (a key of such a group can tie with the k-th best score and have a lower bank index)."""
    kg = min(topk, groups_max.shape[1])
    best, top_g = groups_max.topk(min(kg + 1, groups_max.shape[1]), dim=1)  # one more, to see a tie at the k-th
    if best.shape[1] == kg:  # no more groups than k
        return best, top_g
    tied = ((best[:, kg] == best[:, kg - 1]) & (best[:, kg] > float("-inf"))).nonzero()[:, 0]
    best, top_g = best[:, :kg], top_g[:, :kg]
    if tied.numel() == 0:  # the rule on features of a real video: exact ties are rare (copies of a frame)
        return best, top_g
    kth = best[tied, -1:]
    wanted = int((groups_max[tied] >= kth).sum(1).max())  # groups at or above the k-th maximum
    more, more_g = groups_max[tied].topk(wanted, dim=1)  # only the queries with tied groups look further
    best = torch.nn.functional.pad(best, (0, wanted - kg), value=float("-inf"))  # the others' extra groups: none
    top_g = torch.nn.functional.pad(top_g, (0, wanted - kg))
    best[tied], top_g[tied] = more, more_g
    return best, top_g


def topk_affinity_cpu(
    query: torch.Tensor,
    keys: torch.Tensor,
    grid: tuple[int, int],
    ctx_start: Sequence[int],
    ctx_stop: Sequence[int],
    *,
    labels: torch.Tensor | None = None,
    keep_ties: bool = False,
    raw: bool = False,
    banded: bool = False,
    copies: tuple[int, int, int] | None = None,
    band: int = KEY_BAND,
    tile: tuple[int, int] = QUERY_TILE,
    **rule,
):
    """The CPU path of :func:`topk_affinity` (same arguments and results), in fp32; ``rule``: the constants of
    :class:`Rule`.

    ``keep_ties``: DINO's rule, to the bit (``eval_video_segmentation.py`` ``label_propagation``): a key's
    weight is ``exp(s / temperature)`` in fp32 (no max subtracted), every key whose weight is >= the k-th
    largest is kept (``aff[aff < tk_val_min] = 0``), and the kept weights are divided by their sum. Two
    similarities a last bit apart can round to the same ``s / 0.1`` and then tie at the k-th place; DINO keeps
    both. The outputs then have up to ``topk + TIE_SLOTS`` slots (more when a tie runs longer), the unused ones
    weigh 0 with index -1. ``raw`` returns the top-k similarities (T, N, topk) instead of weights (-inf for an
    empty slot), for the tie rule.

    ``banded``: ``keys`` are already in the banded layout (:func:`band_order`), as the propagation engine keeps its
    bank; otherwise they are put in it here (one copy). Queries go in ``tile`` = (rows, columns) tiles of the grid;
    for each tile the keys in reach of any of its queries are runs of bands (``_plan``). The T query frames of a call
    are scored together: each run of keys of a block of bank frames that the same query frames read
    (``_frame_blocks``) is one batched GEMM against those frames' queries side by side, so a key is read once per
    call, not once per query frame, and each GEMM is wide; the out-of-reach keys of a run are set to -inf by one
    cached additive mask, bands wholly out of reach are never computed. An exact two-stage top-k per tile (group and
    super-group maxima, then the scores of the best groups) gives the tile's top-k; the affinity rows are never built
    whole. Tied similarities are ordered as the specification orders them (bank index up), so the result does not
    depend on the tiling, the chunk of query frames or the threads. With PyTorch set to n > 1 threads, n threads
    take the tiles in turn (``_over_tiles``). Peak extra memory per thread: the scores of one tile for the call's
    query frames (about T x 64 x the keys in reach of a query x the context frames, in floats), plus the cached masks
    (about N x the window, in floats) and, unless ``banded``, a banded fp32 copy of the keys.

    ``copies`` = (src, first, stop): bank frames first .. stop-1 hold frame src's features, bit for bit (the queue
    that the propagation engine starts with n copies of frame 0, ``prefill_queue``). They are scored once, as frame
    src, and each copy takes the scores as its own (its bank indices, its labels); a query frame reads only the first
    ``topk`` copies in its context, as a key of a later copy ties with the same key of those and loses on the bank
    index. The result is the same as without ``copies``; the first n frames of a prefilled video cost a fraction.

    Similarities are sgemm dot products over D, the same numbers as a whole-matrix ``q @ k.T`` (MKL's kernels sum
    over D in the same order whatever the GEMM's shape; tests/kernels checks it on the bank's shapes).
    """
    if keep_ties and not raw:
        return _topk_keep_ties(
            topk_affinity_cpu, query, keys, grid, ctx_start, ctx_stop, labels=labels, banded=banded, copies=copies,
            band=band, tile=tile, **rule,
        )  # fmt: skip
    n_ref, topk, temperature, radius, neighbourhood, restrict_ref = astuple(Rule(**rule))
    T, N, D = query.shape
    h, w = grid
    shape, reach, d2_max = neighbourhood_reach(radius, neighbourhood)
    dev = query.device
    query = query.float()
    keys = (keys.float() if banded else keys.float()[:, band_order(h, w, band).to(dev)]).contiguous()  # (F, N, D)
    plan, whole = _plan_on(h, w, shape, reach, d2_max, band, tuple(tile), dev)
    out_k = topk
    if labels is not None and not raw:
        lab_flat = labels.float().reshape(-1, labels.shape[-1])  # (F*N, C)
        out = torch.empty(T, N, labels.shape[-1], dtype=torch.float32, device=dev)
    else:
        weights = torch.empty(T, N, out_k, dtype=torch.float32, device=dev)  # similarities when raw
        index = torch.empty(T, N, out_k, dtype=torch.int64, device=dev)
    starts, stops = [int(a) for a in ctx_start], [int(b) for b in ctx_stop]
    blocks = _frame_blocks(T, n_ref, starts, stops, restrict_ref, shape, _copies(copies), topk)

    def one_tile(tl_: _Tile, scratch: _Scores) -> None:
        B = tl_.queries.numel()
        qt = query[:, tl_.queries].reshape(T * B, D).T.contiguous()  # (D, T * B)
        v, i = _tile_topk(qt, keys, blocks, tl_, whole, topk, N, B, scratch)
        pad = topk - v.shape[1]
        v = torch.nn.functional.pad(v, (0, pad), value=float("-inf")).view(T, B, topk)
        i = torch.nn.functional.pad(i, (0, pad), value=-1).view(T, B, topk)
        kept = v > float("-inf")
        i = i.masked_fill(~kept, -1)
        if raw:
            weights[:, tl_.queries], index[:, tl_.queries] = v, i
            return
        v_max = v[..., :1].masked_fill(~kept[..., :1], 0.0)
        e = torch.exp((v - v_max) / temperature).masked_fill(~kept, 0.0)
        wts = e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        if labels is not None:
            out[:, tl_.queries] = (lab_flat[i.clamp_min(0)] * wts[..., None]).sum(2)  # (T, B, K, C) -> (T, B, C)
        else:
            weights[:, tl_.queries], index[:, tl_.queries] = wts, i

    _over_tiles(one_tile, plan, dev)
    if labels is not None and not raw:
        return out
    return weights, index


def _copies(copies) -> tuple[int, int, int] | None:
    """``copies`` as ints, None when there are none."""
    if copies is None or int(copies[2]) <= int(copies[1]):
        return None
    return tuple(int(c) for c in copies)


def _over_tiles(one_tile, plan: tuple[_Tile, ...], dev: torch.device) -> None:
    """Run ``one_tile(tile, scratch)`` for every tile of the plan. On a CPU with PyTorch set to n > 1 threads, n
    threads take the tiles in turn, each running its GEMMs on one core (a tile's GEMMs are too small to split
    well: the per-tile threads scale better); PyTorch's thread count is 1 meanwhile and restored after. The tiles
    write disjoint query rows of the outputs, and each GEMM is the same sgemm call, so the results do not depend on
    the threads."""
    workers = min(torch.get_num_threads(), len(plan)) if dev.type == "cpu" else 1
    if workers <= 1:
        scratch = _Scores(dev)
        for tl_ in plan:
            one_tile(tl_, scratch)
        return
    local = threading.local()

    def run(tl_: _Tile) -> None:
        scratch = getattr(local, "scratch", None)
        if scratch is None:
            scratch = local.scratch = _Scores(dev)
        one_tile(tl_, scratch)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="siammae-topk") as pool:
            for _ in pool.map(run, plan):  # re-raises a tile's error here
                pass
    finally:
        torch.set_num_threads(threads)


def _to(run: _Run, dev) -> _Run:
    return _Run(run.off, run.size, run.keys.to(dev), None if run.mask is None else run.mask.to(dev))


@functools.lru_cache(maxsize=8)
def _plan_on(h, w, shape, reach, d2_max, band, tile, dev: torch.device) -> tuple[tuple[_Tile, ...], tuple[_Run]]:
    """``_plan`` on ``dev``, and the one run of an unrestricted frame (every key, no mask): the same objects at every
    call, so that the tiles' layouts (``_layout``) are found in its cache on any device."""
    plan = _plan(h, w, shape, reach, d2_max, band, tile)
    if dev.type != "cpu":
        plan = tuple(_Tile(t.queries.to(dev), tuple(_to(r, dev) for r in t.runs)) for t in plan)
    return plan, (_Run(0, h * w, band_order(h, w, band).to(dev), None),)


TIE_SLOTS = 3  # candidates beyond k looked at for a tie at the k-th weight (doubled while a tie fills them all)


def _topk_keep_ties(raw_topk, query, keys, grid, ctx_start, ctx_stop, *, topk, temperature, labels, **kw):
    """DINO's weights and tie rule (``keep_ties=True``) on the top ``topk + extra`` candidates by similarity that
    ``raw_topk`` (the CPU path or the GPU kernel, ``raw=True``) returns: ranking by s and by exp(s / T) agree except
    on ties, and a key tied with the k-th weight ranks right after it. The one tie rule of every backend."""
    n_keys = keys.shape[0] * keys.shape[1]
    extra = TIE_SLOTS
    while True:
        v, i = raw_topk(
            query, keys, grid, ctx_start, ctx_stop, topk=topk + extra, temperature=1.0, raw=True, **kw
        )  # (T, N, k + extra) similarities, descending, -inf and index -1 where fewer keys are in reach
        e = torch.exp(v / temperature)  # DINO: torch.exp(torch.bmm(...) / 0.1); out of reach: exp(-inf) = 0
        kth = e[..., topk - 1 : topk]  # (T, N, 1) the k-th largest weight
        keep = (e >= kth) & (i >= 0)  # DINO: aff[aff < tk_val_min] = 0
        if not bool(keep[..., -1].any()) or topk + extra >= n_keys:
            break
        extra *= 2  # a tie fills every slot: look further
    if bool(torch.isinf(e).any()):
        raise ValueError(f"temperature {temperature} overflows exp(s / T) in fp32 (DINO's weights); keep_ties=False")
    e = e.masked_fill(~keep, 0.0)
    wts = e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)  # DINO: aff / sum(aff)
    i = i.masked_fill(~keep, -1)
    if labels is not None:
        lab_flat = labels.float().reshape(-1, labels.shape[-1])  # (F*N, C)
        return (lab_flat[i.clamp_min(0)] * wts[..., None]).sum(2)  # (T, N, K, C) -> (T, N, C)
    return wts, i


# ------------------------------------------------------------------------------------------------------------
# Public op
# ------------------------------------------------------------------------------------------------------------
def topk_affinity(
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
    backend: str = "auto",
    keep_ties: bool = False,
    banded: bool = False,
    copies: tuple[int, int, int] | None = None,
):
    """Top-k context keys of every query patch and their softmax weights (see the module docstring).

    query: (T, N, D) L2-normalised features of T frames on an (h, w) grid, N = h * w.
    keys: (F, N, D) bank of context frames, same dtype and device.
    ctx_start, ctx_stop: (T,) the short-term context of query frame t is bank frames ctx_start[t] up to
        ctx_stop[t] - 1; bank frames 0 .. n_ref-1 are reference frames, in every query frame's context.
    labels: optional (F, N, C) soft labels of the bank; then the gathered labels are returned.
    banded: the keys' patches are in :func:`band_order` (the CPU path's bank layout; the CPU path only).
    copies: (src, first, stop), bank frames first .. stop-1 (short-term frames) hold frame src's features bit for
        bit; the CPU path scores them once (:func:`topk_affinity_cpu`), checking that they do; the GPU kernel scores
        every frame. The result is the same with or without.
    keep_ties: DINO's weights and tie rule (see :func:`topk_affinity_cpu`), on every backend: the CPU path and
        the GPU kernel hand their top ``topk + extra`` similarities to the same rule (``_topk_keep_ties``).
    Returns (weights (T, N, K) fp32, index (T, N, K) int64) in descending similarity, K = topk (more with
    ``keep_ties`` when a tie at the k-th weight is kept), or (T, N, C) fp32.
    """
    if query.dim() != 3 or keys.dim() != 3:
        raise ValueError(
            f"query must be (T, N, D) and keys (F, N, D), got {tuple(query.shape)} and {tuple(keys.shape)}"
        )
    T, N, D = query.shape
    F = keys.shape[0]
    h, w = grid
    if h * w != N or keys.shape[1:] != (N, D):
        raise ValueError(f"grid {h}x{w} and query {tuple(query.shape)} do not match keys {tuple(keys.shape)}")
    if keys.dtype != query.dtype or keys.device != query.device:
        raise ValueError(f"query and keys differ: {query.dtype} on {query.device}, {keys.dtype} on {keys.device}")
    if len(ctx_start) != T or len(ctx_stop) != T:
        raise ValueError(f"ctx_start and ctx_stop need one entry per query frame ({T})")
    if not 0 <= n_ref <= F or any(not n_ref <= a <= b <= F for a, b in zip(ctx_start, ctx_stop, strict=True)):
        raise ValueError(f"context ranges must satisfy n_ref <= start <= stop <= {F} frames, n_ref {n_ref}")
    if topk < 1 or not temperature > 0:
        raise ValueError(f"topk must be >= 1 and temperature > 0, got {topk} and {temperature}")
    if labels is not None and (labels.dim() != 3 or labels.shape[:2] != (F, N) or labels.device != keys.device):
        raise ValueError(f"labels must be (F, N, C) = ({F}, {N}, C) on {keys.device}, got {tuple(labels.shape)}")
    neighbourhood_reach(radius, neighbourhood)  # a bad radius or shape fails here, on every backend
    run = topk_affinity_triton if resolve_backend(backend, query.device) == "triton" else topk_affinity_cpu
    if banded and run is topk_affinity_triton:
        raise ValueError("banded keys are the CPU path's layout; the Triton kernel takes keys in raster order")
    extra = {"banded": banded} if banded else {}
    if copies is not None and run is topk_affinity_cpu:
        extra["copies"] = _check_copies(copies, keys, n_ref)
    return run(
        query, keys, (h, w), ctx_start, ctx_stop, n_ref=n_ref, topk=topk, temperature=temperature,
        radius=radius, neighbourhood=neighbourhood, restrict_ref=restrict_ref, labels=labels, keep_ties=keep_ties,
        **extra,
    )  # fmt: skip


def _check_copies(copies, keys: torch.Tensor, n_ref: int) -> tuple[int, int, int]:
    """``copies`` (src, first, stop) as ints, after checking that frames first .. stop-1 of ``keys`` are short-term
    frames equal to frame src, bit for bit (a wrong claim would change the result, not only the time)."""
    F = keys.shape[0]
    try:
        src, first, stop = (int(c) for c in copies)
    except (TypeError, ValueError):
        raise ValueError(f"copies must be (src, first, stop) frame numbers, got {copies!r}") from None
    if not (0 <= src < F and n_ref <= first <= stop <= F) or first <= src < stop:
        raise ValueError(f"copies {copies!r}: need 0 <= src < {F}, {n_ref} <= first <= stop <= {F}, src outside")
    if not torch.equal(keys[first:stop], keys[src : src + 1].expand(stop - first, -1, -1)):
        raise ValueError(f"copies {copies!r}: bank frames {first} .. {stop - 1} are not copies of frame {src}")
    return src, first, stop
