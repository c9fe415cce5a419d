"""Fused masked-patch gather: embed only the patches that the encoder keeps.

SiamMAE masks 95 % of the future frame f2 (docs/PAPER.md), so the MAE recipe -- embed all L patches with the
``patch_embed.proj`` Conv2d, add the position embedding, then gather the visible ``K`` tokens -- throws away
95 % of the embedding work and writes a (B, L, D) tensor that is read once. This op does the three steps in
one pass over the kept patches only::

    l = ids_keep[b, k]
    out[b, k] = weight.view(D, C*p*p) @ imgs[b, :, patch l].flatten() + bias + pos_embed[l]

Patches are numbered row-major over the (h, w) = (H / p, W / p) grid, ``l = row * w + col`` (timm
``PatchEmbed`` and MAE order), and a pixel patch flattens in the Conv2d weight order (C, p, p).

Layout (Liger-Kernel): the Triton kernels (forward; weight and bias gradient), the launchers that validate
shapes and pick block sizes, the ``autograd.Function``, the PyTorch reference ``patch_embed_gather_ref`` (the
specification and the CPU path), and the public ``patch_embed_gather(..., backend="auto")``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from siammae.kernels.dispatch import resolve_backend, triton_available, triton_interpreted

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

if triton_available():
    import triton
    import triton.language as tl

    def _configs(names: tuple[str, str, str], *grids: tuple[int, ...]) -> list[triton.Config]:
        """Autotune candidates, each ``(three block sizes, num_warps, num_stages)``. Under the interpreter a
        single small one: ``triton.autotune`` fails there with more than one; big blocks only cost time."""
        if triton_interpreted():
            grids = ((16, 32, 32, 1, 1),)
        return [triton.Config(dict(zip(names, g[:3], strict=True)), num_warps=g[3], num_stages=g[4]) for g in grids]

    # ------------------------------------------------------------------------------------------------ forward
    @triton.autotune(
        configs=_configs(
            ("BLOCK_M", "BLOCK_N", "BLOCK_K"),
            (32, 64, 32, 4, 3),
            (64, 64, 32, 4, 3),
            (64, 128, 32, 4, 3),
            (128, 64, 32, 4, 3),
            (64, 128, 64, 8, 3),
            (128, 128, 32, 8, 3),
        ),
        key=["M", "D", "CPP"],
    )
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
    @triton.autotune(
        configs=_configs(
            ("BLOCK_D", "BLOCK_CPP", "BLOCK_M"),
            (64, 64, 32, 4, 3),
            (64, 128, 32, 4, 3),
            (128, 64, 32, 4, 3),
            (128, 128, 32, 8, 3),
            (64, 64, 64, 4, 3),
        ),
        key=["M", "D", "CPP"],
    )
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


# ---------------------------------------------------------------------------------------------- validation
def _check_inputs(imgs, ids_keep, weight, bias, pos_embed) -> tuple[int, int, int]:
    """Validate shapes, dtypes and devices; return (p, h, w). Raises ``ValueError`` naming the bad input."""
    if not isinstance(imgs, torch.Tensor) or imgs.dim() != 4:
        raise ValueError(f"imgs must be a (B, C, H, W) tensor, got shape {tuple(getattr(imgs, 'shape', ()))}")
    if imgs.dtype not in FLOAT_DTYPES:
        raise ValueError(f"imgs must be float32, float16 or bfloat16, got {imgs.dtype}")
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"weight must be a (D, C, p, p) Conv2d weight, got shape {tuple(weight.shape)}")
    B, C, H, W = imgs.shape
    D, Cw, p = weight.shape[0], weight.shape[1], weight.shape[2]
    if Cw != C:
        raise ValueError(f"weight has {Cw} input channels but imgs has {C} (imgs shape {tuple(imgs.shape)})")
    if H % p or W % p:
        raise ValueError(f"imgs is {H}x{W} (HxW), not divisible by the patch size {p}")
    if weight.dtype != imgs.dtype:
        raise ValueError(f"weight is {weight.dtype} but imgs is {imgs.dtype}; cast one or use torch.autocast")
    if bias is not None and (bias.shape != (D,) or bias.dtype != weight.dtype):
        raise ValueError(f"bias must be ({D},) {weight.dtype} like weight, got {tuple(bias.shape)} {bias.dtype}")
    if ids_keep.dim() != 2 or ids_keep.shape[0] != B:
        raise ValueError(f"ids_keep must be (B={B}, K), got shape {tuple(ids_keep.shape)}")
    if ids_keep.dtype != torch.int64:
        raise ValueError(f"ids_keep must be int64 (MAE random_masking output), got {ids_keep.dtype}")
    h, w = H // p, W // p
    if pos_embed is not None:
        if pos_embed.shape != (h * w, D):
            raise ValueError(
                f"pos_embed must be (L={h * w}, D={D}) for a {h}x{w} patch grid ([CLS] row excluded), "
                f"got shape {tuple(pos_embed.shape)}"
            )
        if not pos_embed.is_floating_point():
            raise ValueError(f"pos_embed must be a float tensor, got {pos_embed.dtype}")
    for name, t in (("ids_keep", ids_keep), ("weight", weight), ("bias", bias), ("pos_embed", pos_embed)):
        if t is not None and t.device != imgs.device:
            raise ValueError(f"{name} is on {t.device} but imgs is on {imgs.device}")
    # A range check costs a device sync on CUDA, so it runs on CPU tensors only; the kernel reads zeros for an
    # index outside [0, L) rather than reading out of bounds.
    if ids_keep.device.type == "cpu" and ids_keep.numel():
        lo, hi = int(ids_keep.min()), int(ids_keep.max())
        if lo < 0 or hi >= h * w:
            raise ValueError(f"ids_keep must lie in [0, {h * w}) for a {h}x{w} patch grid, got [{lo}, {hi}]")
    return p, h, w


def _autocast(imgs, weight, bias):
    """Cast like Conv2d does under ``torch.autocast``, so the op drops into an autocast training step."""
    if torch.is_autocast_enabled(imgs.device.type):
        dtype = torch.get_autocast_dtype(imgs.device.type)
        imgs, weight = imgs.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    return imgs, weight, bias


# ------------------------------------------------------------------------------------------ torch reference
def _gather_patches(imgs: torch.Tensor, ids_keep: torch.Tensor, p: int) -> torch.Tensor:
    """Pixel patches of the kept indices, (B, C, H, W) -> (B, K, C*p*p) in Conv2d weight order (C, p, p).

    ``unfold`` is a view, so only the kept patches are copied.
    """
    B, C, H, W = imgs.shape
    w = W // p
    u = imgs.unfold(2, p, p).unfold(3, p, p)  # (B, C, h, w, p, p) view
    b = torch.arange(B, device=imgs.device)[:, None]  # (B, 1)
    patches = u[b, :, ids_keep // w, ids_keep % w]  # (B, K, C, p, p)
    return patches.reshape(B, ids_keep.shape[1], C * p * p)


def _patch_embed_gather_torch(imgs, ids_keep, weight, bias, pos_embed, p):
    patches = _gather_patches(imgs, ids_keep, p)  # (B, K, C*p*p)
    out = F.linear(patches, weight.reshape(weight.shape[0], -1), bias)  # (B, K, D)
    if pos_embed is not None:
        out = out + pos_embed[ids_keep]  # (B, K, D), promoted like conv2d(imgs) + pos_embed
    return out


def patch_embed_gather_ref(
    imgs: torch.Tensor,
    ids_keep: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos_embed: torch.Tensor | None,
) -> torch.Tensor:
    """PyTorch specification of :func:`patch_embed_gather`, and its CPU path.

    Gathers the kept pixel patches, then does one matmul: equal to ``conv2d(imgs, weight, bias)`` flattened to
    (B, L, D) and gathered at ``ids_keep``, plus ``pos_embed[ids_keep]``, without embedding the patches that
    are thrown away. Autograd gives every gradient.
    """
    p, _, _ = _check_inputs(imgs, ids_keep, weight, bias, pos_embed)
    return _patch_embed_gather_torch(imgs, ids_keep, weight, bias, pos_embed, p)


# ----------------------------------------------------------------------------------------------- launchers
def _out_dtype(imgs: torch.Tensor, pos_embed: torch.Tensor | None) -> torch.dtype:
    """PyTorch's dtype for ``conv2d(imgs) + pos_embed``."""
    return imgs.dtype if pos_embed is None else torch.promote_types(imgs.dtype, pos_embed.dtype)


def _dot_options(dtype: torch.dtype, mixed: bool = False) -> tuple[bool, str]:
    """(UPCAST, INPUT_PRECISION) for ``tl.dot`` on operands of ``dtype`` (``mixed``: two different dtypes).

    Operands go to fp32 under the interpreter for bf16 (its bf16 dot is wrong) and when mixed (tl.dot takes one
    dtype). An fp32 dot follows ``torch.set_float32_matmul_precision``: "highest" (PyTorch's default) is IEEE,
    else TF32; fp16 / bf16 dots ignore the setting ("tf32" is Triton's default there).
    """
    upcast = mixed or (triton_interpreted() and dtype == torch.bfloat16)
    fp32 = upcast or dtype == torch.float32
    precision = "ieee" if fp32 and torch.get_float32_matmul_precision() == "highest" else "tf32"
    return upcast, precision


def _forward(imgs, ids, weight2d, bias, pos_embed, p, w, L):
    """Launch the forward kernel. ids (M,) int64 contiguous, weight2d (D, C*p*p) contiguous -> (M, D)."""
    M, (D, CPP) = ids.numel(), weight2d.shape
    out = torch.empty(M, D, device=imgs.device, dtype=_out_dtype(imgs, pos_embed))
    if M == 0:
        return out
    upcast, precision = _dot_options(imgs.dtype)
    pos = pos_embed if pos_embed is not None else out  # placeholder pointer, never read
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(D, meta["BLOCK_N"]))
    _patch_embed_gather_kernel[grid](
        imgs, ids, weight2d, bias if bias is not None else out, pos, out,
        M, M // imgs.shape[0], D, CPP, L, w,
        *imgs.stride(), pos.stride(0), pos.stride(1),
        P=p, HAS_BIAS=bias is not None, HAS_POS=pos_embed is not None,
        UPCAST=upcast, INPUT_PRECISION=precision,
    )  # fmt: skip
    return out


def _backward_weight(grad, imgs, ids, D, CPP, p, w, L, with_bias):
    """Launch the gradient kernel: (dW (D, C*p*p), db (D,) or None), both fp32."""
    M = ids.numel()
    gw = torch.empty(D, CPP, device=imgs.device, dtype=torch.float32)
    gb = torch.empty(D, device=imgs.device, dtype=torch.float32) if with_bias else None
    if M == 0:
        return gw.zero_(), gb.zero_() if with_bias else None
    # The gradient is fp32 and the pixels bf16 when an fp32 pos_embed promoted the op's output (autocast).
    upcast, precision = _dot_options(imgs.dtype, mixed=grad.dtype != imgs.dtype)
    grid = lambda meta: (triton.cdiv(D, meta["BLOCK_D"]), triton.cdiv(CPP, meta["BLOCK_CPP"]))
    _patch_embed_gather_bwd_kernel[grid](
        grad, imgs, ids, gw, gb if with_bias else gw,
        M, M // imgs.shape[0], D, CPP, L, w, *imgs.stride(),
        P=p, HAS_BIAS=with_bias, UPCAST=upcast, INPUT_PRECISION=precision,
    )  # fmt: skip
    return gw, gb


def _one_hot_scatter(values: torch.Tensor, ids_keep: torch.Tensor, L: int) -> torch.Tensor:
    """Sum rows of ``values`` (B, K, N) into their patch slots: -> (B, L, N) fp32, duplicates added.

    A one-hot matmul rather than ``index_add_``: deterministic on CUDA (no atomics) and cheap at K, L <= 1e3.
    """
    onehot = F.one_hot(ids_keep, L).to(torch.float32)  # (B, K, L)
    return torch.bmm(onehot.transpose(1, 2), values.float())  # (B, L, N)


class PatchEmbedGatherFunction(torch.autograd.Function):
    """Triton forward; weight and bias gradients from the Triton gradient kernel; position-embedding and pixel
    gradients in PyTorch (a one-hot matmul scatter, and ``dOut @ W`` folded back onto the image)."""

    @staticmethod
    def forward(ctx, imgs, ids_keep, weight, bias, pos_embed):
        B, C, H, W = imgs.shape
        D, p = weight.shape[0], weight.shape[-1]
        K = ids_keep.shape[1]
        ids = ids_keep.reshape(-1).contiguous()  # (B * K,)
        weight2d = weight.reshape(D, -1).contiguous()  # (D, C*p*p), a view for a contiguous Conv2d weight
        out = _forward(imgs, ids, weight2d, bias, pos_embed, p, W // p, (H // p) * (W // p))  # (B * K, D)
        ctx.save_for_backward(imgs, ids_keep, weight2d)
        ctx.meta = (p, H // p, W // p, None if pos_embed is None else pos_embed.dtype)
        ctx.weight_dtype = weight.dtype
        return out.view(B, K, D)

    @staticmethod
    def backward(ctx, grad_out):
        imgs, ids_keep, weight2d = ctx.saved_tensors
        p, h, w, pos_dtype = ctx.meta
        need_imgs, _, need_w, need_b, need_pos = ctx.needs_input_grad
        B, K, D = grad_out.shape
        L = h * w
        grad = grad_out.reshape(B * K, D).contiguous()  # (M, D)
        grad_imgs = grad_w = grad_b = grad_pos = None

        if need_w:
            gw, gb = _backward_weight(grad, imgs, ids_keep.reshape(-1).contiguous(), D, weight2d.shape[1],
                                      p, w, L, need_b)  # fmt: skip
            grad_w = gw.to(ctx.weight_dtype).view(D, imgs.shape[1], p, p)
            grad_b = gb.to(ctx.weight_dtype) if need_b else None
        elif need_b:
            grad_b = grad.float().sum(0).to(ctx.weight_dtype)

        with torch.autocast(imgs.device.type, enabled=False):
            if need_pos:
                grad_pos = _one_hot_scatter(grad.view(1, B * K, D), ids_keep.reshape(1, B * K), L)[0]
                grad_pos = grad_pos.to(pos_dtype)
            if need_imgs:
                # In PyTorch: dPatches = dOut @ W, scattered to their patch slots and folded onto the grid.
                C = imgs.shape[1]
                gp = grad.float() @ weight2d.float()  # (M, C*p*p)
                slots = _one_hot_scatter(gp.view(B, K, weight2d.shape[1]), ids_keep, L)  # (B, L, C*p*p)
                slots = slots.view(B, h, w, C, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, h, p, w, p)
                grad_imgs = slots.reshape(B, C, h * p, w * p).to(imgs.dtype)
        return grad_imgs, None, grad_w, grad_b, grad_pos


# ---------------------------------------------------------------------------------------------- entry point
def patch_embed_gather(
    imgs: torch.Tensor,
    ids_keep: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos_embed: torch.Tensor | None,
    backend: str = "auto",
) -> torch.Tensor:
    """Embed only the kept patches of ``imgs`` and add their position embedding.

    Args:
        imgs: (B, C, H, W) float32 / float16 / bfloat16, H and W divisible by the patch size p.
        ids_keep: (B, K) int64 indices in [0, L) of the kept patches, L = (H/p) * (W/p), row-major
            (MAE ``random_masking``'s ``ids_keep``).
        weight: (D, C, p, p) and bias (D,) or None: the patch-embedding Conv2d (``patch_embed.proj``).
        pos_embed: (L, D) position embedding of the patch grid ([CLS] row excluded) or None; learned (requires
            grad) or fixed.
        backend: "auto" | "triton" | "torch", see :func:`siammae.kernels.dispatch.resolve_backend`.

    Returns:
        (B, K, D) tokens equal to ``conv2d(imgs, weight, bias).flatten(2).transpose(1, 2)`` gathered at
        ``ids_keep`` plus ``pos_embed[ids_keep]``, in the dtype PyTorch gives that sum: the dtype of ``imgs``
        (the autocast dtype inside ``torch.autocast``) promoted with that of ``pos_embed``, so a bf16 embedding
        plus an fp32 table is fp32 as in timm. Differentiable in imgs, weight, bias and pos_embed.
    """
    imgs, weight, bias = _autocast(imgs, weight, bias)
    p, _, _ = _check_inputs(imgs, ids_keep, weight, bias, pos_embed)
    if resolve_backend(backend, imgs.device) == "torch":
        return _patch_embed_gather_torch(imgs, ids_keep, weight, bias, pos_embed, p)
    return PatchEmbedGatherFunction.apply(imgs, ids_keep, weight, bias, pos_embed)
