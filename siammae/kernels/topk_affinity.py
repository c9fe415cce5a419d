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

Neither path materialises the N x (F N) affinity matrix. The Triton kernel streams key tiles through on-chip
memory with a running top-k per query and skips key tiles wholly outside the neighbourhood; the tiled PyTorch
reference ``topk_affinity_ref`` (the CPU path) scores tiles of queries against the windows of keys in their
reach, so that its scores never exceed ``max(block_elems, n_context * N)`` floats (16 MiB by default). Both are
optimised algorithms; the plain statement of what they compute is :mod:`siammae.kernels.topk_spec`, which builds
the whole matrix on tiny inputs, and the tests check both paths against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from siammae.kernels.dispatch import resolve_backend, triton_interpreted

try:
    import triton
    import triton.language as tl
except ImportError:  # macOS / Windows: only the reference runs
    triton = None

NEIGHBOURHOODS = ("square", "circle")

# Scores of one query tile in the reference: 2^22 floats = 16 MiB, unless a single query's context is larger.
BLOCK_ELEMS = 1 << 22


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


# ------------------------------------------------------------------------------------------------------------
# Triton kernel
# ------------------------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _topk_affinity_kernel(
        q_ptr,  # (T, N, D) query features, L2-normalised, fp32 / fp16 / bf16, contiguous
        k_ptr,  # (F, N, D) context bank, same dtype, contiguous
        lab_ptr,  # (F, N, C) fp32 soft labels of the bank, contiguous (read only when GATHER)
        lo_ptr,  # (T,) int32: the short-term context of query frame t is bank frames lo[t] .. hi[t]-1
        hi_ptr,  # (T,) int32
        w_ptr,  # (T, N, K) fp32 out: weights in descending similarity (written unless GATHER)
        i_ptr,  # (T, N, K) int64 out: flat bank index f * N + j, -1 for an empty slot (written unless GATHER)
        y_ptr,  # (T, N, C) fp32 out: sum over the top-k of weight * label (written when GATHER)
        H,  # grid height h
        W,  # grid width w
        N,  # h * w
        D,  # feature channels
        C,  # label channels
        n_ref,  # bank frames 0 .. n_ref-1 are reference frames, in every query frame's context
        reach,  # neighbourhood reach in patches along y and x (-1: nothing in reach)
        d2_max,  # circle: largest dy^2 + dx^2 inside
        inv_temp,  # 1 / temperature
        K: tl.constexpr,  # top-k
        KPAD: tl.constexpr,  # next power of two >= K
        SHAPE: tl.constexpr,  # 0 unrestricted, 1 square, 2 circle
        RESTRICT_REF: tl.constexpr,  # apply the neighbourhood to the reference frames too
        QH: tl.constexpr,  # query tile: QH x QW patches of one frame
        QW: tl.constexpr,
        KH: tl.constexpr,  # key tile: KH x KW patches of one context frame
        KW: tl.constexpr,
        BLOCK_D: tl.constexpr,  # channels per dot product step
        BLOCK_C: tl.constexpr,  # label channels per gather step
        GATHER: tl.constexpr,  # also gather and sum the labels (fused propagation step)
        UPCAST: tl.constexpr,  # load fp16 / bf16 as fp32 (the interpreter's dot is wrong on bf16)
        DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs: TF32 would reorder near-equal similarities
    ):
        BQ: tl.constexpr = QH * QW
        BK: tl.constexpr = KH * KW
        NEG_INF: tl.constexpr = float("-inf")
        pid = tl.program_id(0)
        t = tl.program_id(1)

        # The query tile: patches (qy, qx) of frame t, rows of the tile may hang over the grid.
        n_qx = tl.cdiv(W, QW)
        qy0 = (pid // n_qx) * QH
        qx0 = (pid % n_qx) * QW
        qy1 = tl.minimum(qy0 + QH, H) - 1  # last row / column of the tile inside the grid
        qx1 = tl.minimum(qx0 + QW, W) - 1
        rq = tl.arange(0, BQ)
        qy = qy0 + rq // QW
        qx = qx0 + rq % QW
        q_in = (qy < H) & (qx < W)
        q_row = t.to(tl.int64) * N + qy * W + qx  # (BQ,) row of the query in (T*N, ...)

        # Running top-k per query: KPAD slots, the K real ones start empty (-inf), the padding ones are +inf
        # so that they are never the minimum and never replaced.
        slot = tl.arange(0, KPAD)
        top_v = tl.zeros((BQ, KPAD), tl.float32) + tl.where(slot < K, NEG_INF, float("inf"))[None, :]
        top_i = tl.full((BQ, KPAD), -1, tl.int64)

        rk = tl.arange(0, BK)
        rd = tl.arange(0, BLOCK_D)
        n_ky = tl.cdiv(H, KH)
        n_kx = tl.cdiv(W, KW)
        lo = tl.load(lo_ptr + t)
        hi = tl.load(hi_ptr + t)
        for c in range(0, n_ref + hi - lo):
            f = tl.where(c < n_ref, c, lo + c - n_ref)  # bank frame of context slot c
            if RESTRICT_REF:
                free = c < 0  # every context frame is restricted
            else:
                free = c < n_ref  # reference frames are unrestricted
            # Key tiles that can hold a key in reach: the bounding box of the query tile's neighbourhoods.
            ky_lo = 0
            ky_hi = n_ky
            kx_lo = 0
            kx_hi = n_kx
            if SHAPE != 0:
                rch = tl.where(free, H + W, reach)
                ky_lo = tl.maximum(qy0 - rch, 0) // KH
                ky_hi = tl.minimum(tl.maximum(qy1 + rch, 0), H - 1) // KH + 1
                kx_lo = tl.maximum(qx0 - rch, 0) // KW
                kx_hi = tl.minimum(tl.maximum(qx1 + rch, 0), W - 1) // KW + 1
            for kty in range(ky_lo, ky_hi):
                for ktx in range(kx_lo, kx_hi):
                    ky0 = kty * KH
                    kx0 = ktx * KW
                    visit = True
                    if SHAPE == 2:
                        # A circle can miss the corner tiles of its bounding box: skip them when even the two
                        # closest patches of the query tile and the key tile are out of reach.
                        gy = tl.maximum(tl.maximum(ky0 - qy1, qy0 - (tl.minimum(ky0 + KH, H) - 1)), 0)
                        gx = tl.maximum(tl.maximum(kx0 - qx1, qx0 - (tl.minimum(kx0 + KW, W) - 1)), 0)
                        visit = (gy * gy + gx * gx <= d2_max) | free
                    if visit:
                        ky = ky0 + rk // KW
                        kx = kx0 + rk % KW
                        k_in = (ky < H) & (kx < W)
                        k_row = f.to(tl.int64) * N + ky * W + kx  # (BK,) row of the key in (F*N, ...)

                        # Similarities of the tile, fp32 accumulation: (BQ, D) x (D, BK).
                        acc = tl.zeros((BQ, BK), tl.float32)
                        for d0 in range(0, D, BLOCK_D):
                            d_in = (d0 + rd) < D
                            qt = tl.load(
                                q_ptr + q_row[:, None] * D + d0 + rd[None, :],
                                mask=q_in[:, None] & d_in[None, :],
                                other=0.0,
                            )
                            kt = tl.load(
                                k_ptr + k_row[:, None] * D + d0 + rd[None, :],
                                mask=k_in[:, None] & d_in[None, :],
                                other=0.0,
                            )
                            if UPCAST:
                                qt = qt.to(tl.float32)
                                kt = kt.to(tl.float32)
                            acc = tl.dot(qt, tl.trans(kt), acc, input_precision=DOT_PRECISION)

                        # The neighbourhood and the grid edge: keys out of reach score -inf.
                        valid = k_in[None, :] & (qy[:, None] >= 0)  # (BQ, BK)
                        if SHAPE != 0:
                            dy = ky[None, :] - qy[:, None]
                            dx = kx[None, :] - qx[:, None]
                            if SHAPE == 1:
                                inside = (tl.abs(dy) <= reach) & (tl.abs(dx) <= reach)
                            else:
                                inside = dy * dy + dx * dx <= d2_max
                            valid = valid & (inside | free)
                        s = tl.where(valid, acc, NEG_INF)

                        # Merge the tile into the running top-k: only as many rounds as the query with the
                        # most keys above its current k-th best needs, at most K.
                        k_min = tl.min(top_v, axis=1)
                        n_new = tl.sum((s > k_min[:, None]).to(tl.int32), axis=1)
                        for _ in range(0, tl.minimum(tl.max(n_new, axis=0), K)):
                            # (BQ,) the best remaining key of the tile and the worst kept key
                            m, am = tl.max(s, axis=1, return_indices=True)
                            k_min, a_min = tl.min(top_v, axis=1, return_indices=True)
                            key = f.to(tl.int64) * N + (ky0 + am // KW) * W + kx0 + am % KW
                            put = (slot[None, :] == a_min[:, None]) & (m > k_min)[:, None]
                            top_v = tl.where(put, m[:, None], top_v)
                            top_i = tl.where(put, key[:, None], top_i)
                            s = tl.where(rk[None, :] == am[:, None], NEG_INF, s)

        # Softmax over the kept keys of (similarity / T); empty slots weigh 0.
        v = tl.where((slot < K)[None, :], top_v, NEG_INF)
        v_max = tl.max(v, axis=1)
        v_max = tl.where(v_max > NEG_INF, v_max, 0.0)
        e = tl.where(v > NEG_INF, tl.exp((v - v_max[:, None]) * inv_temp), 0.0)
        den = tl.sum(e, axis=1)
        wts = e / tl.where(den > 0, den, 1.0)[:, None]

        if GATHER:
            for c0 in range(0, C, BLOCK_C):
                rc = c0 + tl.arange(0, BLOCK_C)
                c_in = rc < C
                y = tl.zeros((BQ, BLOCK_C), tl.float32)
                for j in tl.static_range(K):
                    pick = slot[None, :] == j
                    wj = tl.sum(tl.where(pick, wts, 0.0), axis=1)
                    ij = tl.sum(tl.where(pick, top_i, 0), axis=1)
                    lab = tl.load(
                        lab_ptr + tl.maximum(ij, 0)[:, None] * C + rc[None, :],
                        mask=(q_in & (ij >= 0))[:, None] & c_in[None, :],
                        other=0.0,
                    )
                    y += wj[:, None] * lab
                tl.store(y_ptr + q_row[:, None] * C + rc[None, :], y, mask=q_in[:, None] & c_in[None, :])
        else:
            # Write the K slots in descending similarity, like torch.topk.
            rem = v
            for j in tl.static_range(K):
                m, am = tl.max(rem, axis=1, return_indices=True)
                pick = slot[None, :] == am[:, None]
                kept = m > NEG_INF
                wj = tl.where(kept, tl.sum(tl.where(pick, wts, 0.0), axis=1), 0.0)
                ij = tl.where(kept, tl.sum(tl.where(pick, top_i, 0), axis=1), -1)
                rem = tl.where(pick, NEG_INF, rem)
                tl.store(w_ptr + q_row * K + j, wj, mask=q_in)
                tl.store(i_ptr + q_row * K + j, ij, mask=q_in)


def _tile(h: int, w: int, size: int) -> tuple[int, int]:
    """The (rows, columns) of a tile of ``size`` patches (powers of two) that pads the (h, w) grid least, and
    the squarest of those, which lets the neighbourhood skip more key tiles (30x55: 8x8, 60x110: 4x16)."""
    shapes = [(size >> i, 1 << i) for i in range(size.bit_length())]  # (size, 1), (size/2, 2), ..., (1, size)
    padded = lambda s: triton.cdiv(h, s[0]) * s[0] * triton.cdiv(w, s[1]) * s[1]
    return min(shapes, key=lambda s: (padded(s), abs(s[0].bit_length() - s[1].bit_length())))


def _topk_affinity_triton(
    query, keys, grid, lo, hi, n_ref, topk, temperature, shape, reach, d2_max, restrict_ref, labels
):
    """Launch ``_topk_affinity_kernel``: one program per (query tile, query frame)."""
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
        UPCAST=interpreted and query.dtype != torch.float32,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        num_warps=4,
        enable_fp_fusion=True,  # Triton's long-standing default; explicit, as Triton 3.9 warns when it is not
    )  # fmt: skip
    return y if gather else (w_out, i_out)


# ------------------------------------------------------------------------------------------------------------
# PyTorch reference
# ------------------------------------------------------------------------------------------------------------
def _tile_side(h: int, w: int, n_free: int, n_restricted: int, reach: int, block_elems: int) -> int:
    """Side s of the s x s query tiles: the largest whose scores fit in ``block_elems`` (at least 1).

    A tile is scored against whole frames (``n_free`` of them) and against the (s + 2 reach)^2 windows of the
    ``n_restricted`` frames, clipped to the grid.
    """
    side = 1
    for s in range(2, max(h, w) + 1):
        window = min(h, s + 2 * max(reach, 0)) * min(w, s + 2 * max(reach, 0))
        if min(s, h) * min(s, w) * (n_free * h * w + n_restricted * window) > block_elems:
            break
        side = s
    return side


def _out_of_reach(dy: torch.Tensor, dx: torch.Tensor, shape: int, reach: int, d2_max: int) -> torch.Tensor:
    """Additive mask, 0 in reach and -inf out of it: dy (R, B) row and dx (B, Wc) column offsets -> (R, B, Wc).

    Adding it is an order of magnitude faster on CPU than ``masked_fill_`` with a broadcast boolean mask.
    """
    if shape == 1:
        out = (dy.abs() > reach)[:, :, None] | (dx.abs() > reach)[None]
    else:
        out = (dy * dy)[:, :, None] + (dx * dx)[None] > d2_max
    return torch.zeros(out.shape, device=out.device).masked_fill_(out, float("-inf"))


def _topk_grouped(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per query of scores s (Fg, R, B, Wc): values (B, k') descending, positions (f, r, c) flattened.

    Exact shortcut: group the scores of a query by (frame, column), R rows each; its k largest scores lie in
    its k groups with the largest maxima (each of those maxima is a distinct score at least as large as any
    score of another group). So one max-pass over the rows (vectorised over queries and columns) and a top-k
    over k * R candidates replace a top-k over all of them. Positions are ``(f * R + r) * Wc + c``.
    """
    Fg, R, B, Wc = s.shape
    col_max = s.amax(1).permute(1, 0, 2).reshape(B, Fg * Wc)  # (B, Fg*Wc)
    _, groups = col_max.topk(min(k, Fg * Wc), dim=1)  # (B, kg) groups f * Wc + c
    f, c = groups // Wc, groups % Wc
    b = torch.arange(B, device=s.device)[:, None]
    cand = s.permute(0, 2, 3, 1)[f, b, c]  # (B, kg, R)
    v, j = cand.reshape(B, -1).topk(min(k, cand.shape[1] * R), dim=1)  # (B, k')
    g, r = j // R, j % R
    return v, (f.gather(1, g) * R + r) * Wc + c.gather(1, g)


def topk_affinity_ref(
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
    block_elems: int = BLOCK_ELEMS,
    keep_ties: bool = False,
    raw: bool = False,
):
    """The specification of :func:`topk_affinity` in PyTorch (fp32), also its CPU path.

    ``keep_ties``: DINO's rule, to the bit (``eval_video_segmentation.py`` ``label_propagation``): a key's
    weight is ``exp(s / temperature)`` in fp32 (no max subtracted), every key whose weight is >= the k-th
    largest is kept (``aff[aff < tk_val_min] = 0``), and the kept weights are divided by their sum. Two
    similarities a last bit apart can round to the same ``s / 0.1`` and then tie at the k-th place; DINO keeps
    both. The outputs then have up to ``topk + TIE_SLOTS`` slots (more when a tie runs longer), the unused ones
    weigh 0 with index -1. ``raw`` returns the top-k similarities (T, N, topk) instead of weights (-inf for an
    empty slot), for the tie rule.

    Queries are processed in square tiles of the grid. A tile is scored against the reference frames and the
    short-term frames, each group in one batched matmul per frame over the window of key rows and columns
    that can be in reach of the tile (the whole frame when the group is unrestricted; every window row is a
    strided view of the bank, nothing is copied), keys out of reach are set to -inf, the top-k is taken
    (``_topk_grouped``) and the two top-k lists are merged. Tiles are as large as keeps their scores within
    ``block_elems`` floats (16 MiB), at least one query: peak extra memory is about
    ``4 * max(block_elems, n_context * N)`` bytes, plus an fp32 copy of the inputs when they are fp16 / bf16.
    """
    if keep_ties and not raw:
        return _topk_keep_ties(
            query, keys, grid, ctx_start, ctx_stop, n_ref=n_ref, topk=topk, temperature=temperature, radius=radius,
            neighbourhood=neighbourhood, restrict_ref=restrict_ref, labels=labels, block_elems=block_elems,
        )  # fmt: skip
    T, N, D = query.shape
    F = keys.shape[0]
    h, w = grid
    shape, reach, d2_max = neighbourhood_reach(radius, neighbourhood)
    query = query.float().reshape(T, h, w, D)
    keys = keys.float().reshape(F, h, w, D)
    dev = query.device
    if labels is not None and not raw:
        lab_flat = labels.float().reshape(-1, labels.shape[-1])  # (F*N, C)
        out = torch.empty(T, h, w, labels.shape[-1], dtype=torch.float32, device=dev)
    else:
        weights = torch.empty(T, h, w, topk, dtype=torch.float32, device=dev)  # similarities when raw
        index = torch.empty(T, h, w, topk, dtype=torch.int64, device=dev)

    for t in range(T):
        lo, hi = int(ctx_start[t]), int(ctx_stop[t])
        groups = [(0, n_ref, shape != 0 and restrict_ref), (lo, hi, shape != 0)]  # (first, stop, restricted)
        n_restricted = sum(f1 - f0 for f0, f1, r in groups if r)
        side = _tile_side(h, w, n_ref + hi - lo - n_restricted, n_restricted, reach, block_elems)
        for y0 in range(0, h, side):
            for x0 in range(0, w, side):
                y1, x1 = min(h, y0 + side), min(w, x0 + side)
                qb = query[t, y0:y1, x0:x1].reshape(-1, D)  # (B, D), the tile's patches
                B = qb.shape[0]
                # The window of keys that can be in reach of the tile, and its mask: the same for both groups.
                window = max(0, y0 - reach), min(h, y1 + reach), max(0, x0 - reach), min(w, x1 + reach)
                reach_mask = None
                vals, idxs = [], []
                for f0, f1, restricted in groups:
                    if f1 <= f0:
                        continue
                    r0, r1, c0, c1 = window if restricted else (0, h, 0, w)
                    if r1 <= r0 or c1 <= c0:
                        continue
                    R, Wc = r1 - r0, c1 - c0
                    s = torch.empty(f1 - f0, R, B, Wc, device=dev)  # (Fg, R, B, Wc)
                    for f in range(f0, f1):  # one batched matmul over the window rows of each frame
                        torch.bmm(qb.expand(R, B, D), keys[f, r0:r1, c0:c1].transpose(1, 2), out=s[f - f0])
                    if restricted:
                        if reach_mask is None:
                            qy = torch.arange(y0, y1, device=dev, dtype=torch.int32).repeat_interleave(x1 - x0)
                            qx = torch.arange(x0, x1, device=dev, dtype=torch.int32).repeat(y1 - y0)  # (B,)
                            dy = torch.arange(r0, r1, device=dev, dtype=torch.int32)[:, None] - qy[None]  # (R, B)
                            dx = torch.arange(c0, c1, device=dev, dtype=torch.int32)[None] - qx[:, None]  # (B, Wc)
                            reach_mask = _out_of_reach(dy, dx, shape, reach, d2_max)
                        s.add_(reach_mask)
                    v, p = _topk_grouped(s, topk)  # (B, k'), p = (f * R + r) * Wc + c
                    c, fr = p % Wc, p // Wc
                    vals.append(v)
                    idxs.append((f0 + fr // R) * N + (r0 + fr % R) * w + c0 + c)
                if vals:
                    v, i = torch.cat(vals, 1), torch.cat(idxs, 1)
                    v, sel = v.topk(min(topk, v.shape[1]), dim=1)  # (B, k'), descending
                    i = i.gather(1, sel)
                else:
                    v = torch.empty(B, 0, device=dev)
                    i = torch.empty(B, 0, dtype=torch.int64, device=dev)
                pad = topk - v.shape[1]
                v = torch.nn.functional.pad(v, (0, pad), value=float("-inf"))  # (B, K)
                i = torch.nn.functional.pad(i, (0, pad), value=-1)
                kept = v > float("-inf")
                i = i.masked_fill(~kept, -1)
                if raw:
                    weights[t, y0:y1, x0:x1] = v.view(y1 - y0, x1 - x0, topk)
                    index[t, y0:y1, x0:x1] = i.view(y1 - y0, x1 - x0, topk)
                    continue
                v_max = v[:, :1].masked_fill(~kept[:, :1], 0.0)
                e = torch.exp((v - v_max) / temperature).masked_fill(~kept, 0.0)
                wts = e / e.sum(1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
                if labels is not None and not raw:
                    y = (lab_flat[i.clamp_min(0)] * wts[..., None]).sum(1)  # (B, K, C) -> (B, C)
                    out[t, y0:y1, x0:x1] = y.view(y1 - y0, x1 - x0, -1)
                else:
                    weights[t, y0:y1, x0:x1] = wts.view(y1 - y0, x1 - x0, topk)
                    index[t, y0:y1, x0:x1] = i.view(y1 - y0, x1 - x0, topk)
    if labels is not None and not raw:
        return out.view(T, N, -1)
    return weights.view(T, N, topk), index.view(T, N, topk)


TIE_SLOTS = 3  # candidates beyond k looked at for a tie at the k-th weight (doubled while a tie fills them all)


def _topk_keep_ties(query, keys, grid, ctx_start, ctx_stop, *, topk, temperature, labels, **kw):
    """``topk_affinity_ref(..., keep_ties=True)``: DINO's weights and tie rule on the top ``topk + extra``
    candidates by similarity (ranking by s and by exp(s / T) agree except on ties, and a key tied with the k-th
    weight ranks right after it), from the same tiles and matmuls as the reference."""
    n_keys = keys.shape[0] * keys.shape[1]
    extra = TIE_SLOTS
    while True:
        v, i = topk_affinity_ref(
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
):
    """Top-k context keys of every query patch and their softmax weights (see the module docstring).

    query: (T, N, D) L2-normalised features of T frames on an (h, w) grid, N = h * w.
    keys: (F, N, D) bank of context frames, same dtype and device.
    ctx_start, ctx_stop: (T,) the short-term context of query frame t is bank frames ctx_start[t] up to
        ctx_stop[t] - 1; bank frames 0 .. n_ref-1 are reference frames, in every query frame's context.
    labels: optional (F, N, C) soft labels of the bank; then the gathered labels are returned.
    keep_ties: DINO's weights and tie rule (see :func:`topk_affinity_ref`); the PyTorch path follows it to the
        bit, the Triton kernel keeps exactly k (a tie at the k-th similarity is a last-bit event).
    Returns (weights (T, N, K) fp32, index (T, N, K) int64) in descending similarity, K = topk (more with
    ``keep_ties`` on the PyTorch path), or (T, N, C) fp32.
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
    shape, reach, d2_max = neighbourhood_reach(radius, neighbourhood)
    if resolve_backend(backend, query.device) == "triton":
        if labels is not None:
            labels = labels.float().contiguous()
        return _topk_affinity_triton(
            query.contiguous(), keys.contiguous(), (h, w), list(ctx_start), list(ctx_stop), n_ref, topk,
            temperature, shape, reach, d2_max, restrict_ref, labels,
        )  # fmt: skip
    return topk_affinity_ref(
        query, keys, (h, w), ctx_start, ctx_stop, n_ref=n_ref, topk=topk, temperature=temperature,
        radius=radius, neighbourhood=neighbourhood, restrict_ref=restrict_ref, labels=labels, keep_ties=keep_ties,
    )  # fmt: skip
