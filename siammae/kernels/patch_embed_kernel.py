"""The Triton programs of :func:`siammae.kernels.patch_embed_gather.patch_embed_gather` (forward and weight
gradient), in a module of their own so that importing the op (every model, every CPU run) does not import Triton;
the launchers import this on their first launch. See the op's module for what they compute."""

import triton
import triton.language as tl

from siammae.kernels.dispatch import triton_interpreted

# What the autotuner tries, each (three block sizes, num_warps, num_stages): forward (BLOCK_M, BLOCK_N, BLOCK_K) and
# weight gradient (BLOCK_D, BLOCK_CPP, BLOCK_M).
FORWARD_TRIES = [(32, 64, 32, 4, 3), (64, 64, 32, 4, 3), (64, 128, 32, 4, 3), (128, 64, 32, 4, 3)]
FORWARD_TRIES += [(64, 128, 64, 8, 3), (128, 128, 32, 8, 3)]
BACKWARD_TRIES = [(64, 64, 32, 4, 3), (64, 128, 32, 4, 3), (128, 64, 32, 4, 3), (128, 128, 32, 8, 3)]
BACKWARD_TRIES += [(64, 64, 64, 4, 3)]


def _configs(names: tuple[str, str, str], *grids: tuple[int, ...]) -> list[triton.Config]:
    """Autotune candidates, each ``(three block sizes, num_warps, num_stages)``. Under the interpreter a
    single small one: ``triton.autotune`` fails there with more than one; big blocks only cost time."""
    if triton_interpreted():
        grids = ((16, 32, 32, 1, 1),)
    return [triton.Config(dict(zip(names, g[:3], strict=True)), num_warps=g[3], num_stages=g[4]) for g in grids]


# ------------------------------------------------------------------------------------------------ forward
@triton.autotune(configs=_configs(("BLOCK_M", "BLOCK_N", "BLOCK_K"), *FORWARD_TRIES), key=["M", "D", "CPP"])
@triton.jit
def _patch_embed_gather_kernel(
    imgs_ptr,  # (B, C, H, W) pixels, any strides (s_ib, s_ic, s_ih, s_iw)
    ids_ptr,  # (B * K,) int64 kept patch indices in [0, L), contiguous (ids_keep flattened)
    w_ptr,  # (D, CPP) projection weight = patch_embed.proj.weight.view(D, C*p*p), contiguous
    b_ptr,  # (D,) bias; never read when HAS_BIAS is False
    pos_ptr,  # (L, D) position embedding, strides (s_pl, s_pd); never read when HAS_POS is False
    out_ptr,  # (B * K, D) output tokens, contiguous
    M,  # B * K, number of output tokens
    K,  # kept patches per image
    D,  # embedding width
    CPP,  # C * p * p, length of a flattened pixel patch
    L,  # h * w, patches per image (ids outside [0, L) read zeros instead of faulting)
    GRID_W,  # w = W / p, patches per grid row
    s_ib,
    s_ic,
    s_ih,
    s_iw,
    s_pl,
    s_pd,
    P: tl.constexpr,  # patch size p
    HAS_BIAS: tl.constexpr,
    HAS_POS: tl.constexpr,
    UPCAST: tl.constexpr,  # cast tl.dot operands to fp32 (the interpreter's bf16 dot is wrong)
    INPUT_PRECISION: tl.constexpr,  # "ieee" or "tf32", for fp32 operands only
    BLOCK_M: tl.constexpr,  # tokens per program
    BLOCK_N: tl.constexpr,  # embedding channels per program
    BLOCK_K: tl.constexpr,  # reduction step over the C*p*p patch elements
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) token rows b * K + k
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) embedding channels
    mask_m = offs_m < M
    mask_n = offs_n < D

    # Address of each kept patch's top-left pixel, straight from ids_keep: no gathered copy in HBM.
    ids = tl.load(ids_ptr + offs_m, mask=mask_m, other=0).to(tl.int64)  # (BLOCK_M,)
    valid_m = mask_m & (ids >= 0) & (ids < L)
    img = (offs_m // K).to(tl.int64)
    row = ids // GRID_W
    col = ids % GRID_W
    base = img * s_ib + row * P * s_ih + col * P * s_iw  # (BLOCK_M,)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, CPP, BLOCK_K):
        offs_r = r0 + tl.arange(0, BLOCK_K)  # (BLOCK_K,) flat index into the (C, p, p) patch
        mask_r = offs_r < CPP
        c = offs_r // (P * P)
        i = (offs_r // P) % P
        j = offs_r % P
        pix = c * s_ic + i * s_ih + j * s_iw  # (BLOCK_K,) offset inside the patch
        x = tl.load(
            imgs_ptr + base[:, None] + pix[None, :], mask=valid_m[:, None] & mask_r[None, :], other=0.0
        )  # (BLOCK_M, BLOCK_K)
        wt = tl.load(
            w_ptr + offs_n[None, :] * CPP + offs_r[:, None],
            mask=mask_r[:, None] & mask_n[None, :],
            other=0.0,
        )  # (BLOCK_K, BLOCK_N) tile of weight^T
        if UPCAST:
            x = x.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(x, wt, acc, input_precision=INPUT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if HAS_POS:
        pos = tl.load(
            pos_ptr + ids[:, None] * s_pl + offs_n[None, :] * s_pd,
            mask=valid_m[:, None] & mask_n[None, :],
            other=0.0,
        )  # (BLOCK_M, BLOCK_N) rows pos_embed[ids]
        acc += pos.to(tl.float32)
    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * D + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# ----------------------------------------------------------------------------------- weight / bias grad
@triton.autotune(configs=_configs(("BLOCK_D", "BLOCK_CPP", "BLOCK_M"), *BACKWARD_TRIES), key=["M", "D", "CPP"])
@triton.jit
def _patch_embed_gather_bwd_kernel(
    grad_ptr,  # (B * K, D) upstream gradient dL/dout, contiguous
    imgs_ptr,  # (B, C, H, W) pixels, strides (s_ib, s_ic, s_ih, s_iw)
    ids_ptr,  # (B * K,) int64 kept patch indices, contiguous
    gw_ptr,  # (D, CPP) fp32 weight gradient, contiguous; every element written by exactly one program
    gb_ptr,  # (D,) fp32 bias gradient, written by the programs of column 0; never touched if not HAS_BIAS
    M,
    K,
    D,
    CPP,
    L,
    GRID_W,
    s_ib,
    s_ic,
    s_ih,
    s_iw,
    P: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,  # embedding channels per program
    BLOCK_CPP: tl.constexpr,  # patch elements per program
    BLOCK_M: tl.constexpr,  # tokens per reduction step
):
    # dW = dOut^T @ patches, (D, M) x (M, CPP): each program owns one (BLOCK_D, BLOCK_CPP) tile and walks
    # all M tokens in order, so the sum is deterministic (no atomics, no split-K).
    pid_d = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    offs_c = pid_c * BLOCK_CPP + tl.arange(0, BLOCK_CPP)  # (BLOCK_CPP,)
    mask_d = offs_d < D
    mask_c = offs_c < CPP
    pix = (offs_c // (P * P)) * s_ic + ((offs_c // P) % P) * s_ih + (offs_c % P) * s_iw  # (BLOCK_CPP,)

    acc = tl.zeros((BLOCK_D, BLOCK_CPP), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
        mask_m = offs_m < M
        ids = tl.load(ids_ptr + offs_m, mask=mask_m, other=0).to(tl.int64)
        valid_m = mask_m & (ids >= 0) & (ids < L)
        base = (offs_m // K).to(tl.int64) * s_ib + (ids // GRID_W) * P * s_ih + (ids % GRID_W) * P * s_iw
        g = tl.load(
            grad_ptr + offs_m[:, None].to(tl.int64) * D + offs_d[None, :],
            mask=mask_m[:, None] & mask_d[None, :],
            other=0.0,
        )  # (BLOCK_M, BLOCK_D)
        x = tl.load(
            imgs_ptr + base[:, None] + pix[None, :], mask=valid_m[:, None] & mask_c[None, :], other=0.0
        )  # (BLOCK_M, BLOCK_CPP) gathered pixel patches
        if HAS_BIAS:
            acc_b += tl.sum(g.to(tl.float32), axis=0)
        if UPCAST:
            g = g.to(tl.float32)
            x = x.to(tl.float32)
        acc = tl.dot(tl.trans(g), x, acc, input_precision=INPUT_PRECISION)

    gw_ptrs = gw_ptr + offs_d[:, None] * CPP + offs_c[None, :]
    tl.store(gw_ptrs, acc, mask=mask_d[:, None] & mask_c[None, :])
    if HAS_BIAS:  # noqa: SIM102 (a compile-time branch around a run-time one)
        if pid_c == 0:  # one column of programs writes db; the others computed it for free
            tl.store(gb_ptr + offs_d, acc_b, mask=mask_d)
