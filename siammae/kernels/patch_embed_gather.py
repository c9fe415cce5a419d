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

from siammae.kernels.dispatch import resolve_backend, triton_interpreted

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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
    import triton  # here, not at the top: importing the op (every model) never imports Triton

    from siammae.kernels.patch_embed_kernel import _patch_embed_gather_kernel

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
    import triton

    from siammae.kernels.patch_embed_kernel import _patch_embed_gather_bwd_kernel

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
