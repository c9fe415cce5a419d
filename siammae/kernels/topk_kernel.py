"""The GPU kernel of :func:`siammae.kernels.topk_affinity.topk_affinity` (``_topk_affinity_kernel``), in a module of
its own so that importing the op (every CPU run) does not import Triton; ``topk_affinity_triton`` imports this on
its first launch. See the op's module for what the kernel computes."""

import triton
import triton.language as tl


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
    RAW: tl.constexpr,  # write the kept similarities (descending, -inf for an empty slot), not the weights
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
            if RAW:
                wj = m  # the similarity itself, for the tie rule (_topk_keep_ties)
            ij = tl.where(kept, tl.sum(tl.where(pick, top_i, 0), axis=1), -1)
            rem = tl.where(pick, NEG_INF, rem)
            tl.store(w_ptr + q_row * K + j, wj, mask=q_in)
            tl.store(i_ptr + q_row * K + j, ij, mask=q_in)
