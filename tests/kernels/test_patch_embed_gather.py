"""The fused masked-patch gather against the obvious oracle: embed every patch with the Conv2d, then gather.

Both backends run: "torch" (the reference, the CPU path) and "triton" (through TRITON_INTERPRET=1 on the CPU,
set by conftest.py). Shapes stay tiny because the interpreter is slow.
"""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from siammae.kernels.dispatch import triton_available
from siammae.kernels.patch_embed_gather import patch_embed_gather, patch_embed_gather_ref

BACKENDS = [
    "torch",
    pytest.param("triton", marks=pytest.mark.skipif(not triton_available(), reason="no triton")),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Tolerances: fp32 against the float64 oracle, tight. fp16 / bf16: at most 2x the error of PyTorch's own
# Conv2d-then-gather in the same dtype against float64 (flash-attention's rule), plus one ulp of the max.
FP32_TOL = dict(atol=1e-5, rtol=1e-5)

# (B, C, H, W, p, D, K): B = 1 and 3, K = 1, K = L and prime K, D not a power of two, p = 4 and 8, non-square
# grids. Under the interpreter the kernels use blocks of 16 tokens x 32 channels x 32 patch elements (forward)
# and 16 channels x 32 patch elements x 32 tokens (gradient): B * K = 39, D = 40, C*p*p = 48 and 192 make both
# kernels loop over several blocks and mask the ragged last one.
SHAPES = [
    (1, 3, 8, 12, 4, 24, 1),  # 2x3 grid, one kept patch
    (3, 3, 16, 8, 4, 40, 8),  # 4x2 grid, K = L (nothing masked)
    (3, 3, 12, 20, 4, 40, 13),  # 3x5 grid, prime K, M = 39
    (3, 3, 16, 24, 8, 24, 5),  # 2x3 grid at p = 8, C*p*p = 192
    (1, 3, 24, 16, 8, 40, 3),  # 3x2 grid at p = 8, B = 1
]


def embed_all_then_gather(imgs, ids_keep, weight, bias, pos_embed):
    """The obviously correct version: embed all L patches (timm PatchEmbed), add position, keep K of them."""
    D, p = weight.shape[0], weight.shape[-1]
    x = F.conv2d(imgs, weight, bias, stride=p).flatten(2).transpose(1, 2)  # (B, L, D)
    if pos_embed is not None:
        x = x + pos_embed  # (B, L, D)
    return torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, D))  # (B, K, D)


def random_ids(B, L, K, generator):
    """MAE random_masking's ids_keep: the first K of a random permutation per image."""
    return torch.stack([torch.randperm(L, generator=generator)[:K] for _ in range(B)])


def make_inputs(B, C, H, W, p, D, K, dtype, *, bias=True, pos=True, seed=0):
    """imgs, ids_keep, weight, bias, pos_embed with Conv2d-like scales so outputs are O(1)."""
    g = torch.Generator().manual_seed(seed)
    L = (H // p) * (W // p)
    imgs = torch.randn(B, C, H, W, generator=g)
    weight = torch.randn(D, C, p, p, generator=g) / (C * p * p) ** 0.5
    b = torch.randn(D, generator=g) if bias else None
    pos_embed = torch.randn(L, D, generator=g) if pos else None
    ids = random_ids(B, L, K, g)
    cast = lambda t: None if t is None else t.to(dtype)
    return cast(imgs), ids, cast(weight), cast(b), cast(pos_embed)


def run(fn, imgs, ids, weight, bias, pos_embed, grad_out, wrt=("imgs", "weight", "bias", "pos_embed")):
    """Forward and the gradients of <out, grad_out> w.r.t. the inputs named in ``wrt``, on fresh leaves."""
    leaves = dict(imgs=imgs, weight=weight, bias=bias, pos_embed=pos_embed)
    leaves = {k: (None if v is None else v.detach().clone().requires_grad_(k in wrt)) for k, v in leaves.items()}
    out = fn(leaves["imgs"], ids, leaves["weight"], leaves["bias"], leaves["pos_embed"])
    out.backward(grad_out)
    grads = {k: v.grad for k, v in leaves.items() if v is not None and k in wrt}
    return out.detach(), grads


def to64(*ts):
    return [None if t is None else t.double() for t in ts]


def assert_bounded(name, got, base, exact, dtype):
    """fp32: close to float64. fp16 / bf16: error <= 2 x PyTorch's error in the same dtype + 1 ulp."""
    assert got.dtype == base.dtype, f"{name}: dtype {got.dtype}, PyTorch gives {base.dtype}"
    assert got.shape == exact.shape, f"{name}: shape {tuple(got.shape)}, expected {tuple(exact.shape)}"
    if dtype == torch.float32:
        torch.testing.assert_close(got.double(), exact, **FP32_TOL, msg=lambda m: f"{name}: {m}")
        return
    err = (got.double() - exact).abs().max().item()
    base_err = (base.double() - exact).abs().max().item()
    ulp = torch.finfo(dtype).eps * exact.abs().max().item()
    assert err <= 2 * base_err + ulp, f"{name} {dtype}: error {err:.3g} > 2 x PyTorch's {base_err:.3g} + {ulp:.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}C{}H{}W{}p{}D{}K{}".format(*s))
def test_forward_and_gradients_match_oracle(shape, dtype, backend):
    imgs, ids, weight, bias, pos_embed = make_inputs(*shape, dtype)
    B, K, D = shape[0], shape[-1], shape[-2]
    grad_out = torch.randn(B, K, D, generator=torch.Generator().manual_seed(1)).to(dtype)

    out, grads = run(partial(patch_embed_gather, backend=backend), imgs, ids, weight, bias, pos_embed, grad_out)
    exact, exact_grads = run(embed_all_then_gather, *to64(imgs), ids, *to64(weight, bias, pos_embed), grad_out.double())
    base, base_grads = run(embed_all_then_gather, imgs, ids, weight, bias, pos_embed, grad_out)

    assert out.shape == (B, K, D)
    assert_bounded("out", out, base, exact, dtype)
    for name in ("imgs", "weight", "bias", "pos_embed"):
        assert_bounded(f"grad {name}", grads[name], base_grads[name], exact_grads[name], dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_siammae_case_fixed_pos_frozen_pixels(backend):
    """The training call: pixels need no grad, sin-cos position embedding is a fixed buffer."""
    imgs, ids, weight, bias, pos_embed = make_inputs(3, 3, 12, 20, 4, 40, 7, torch.float32)
    grad_out = torch.randn(3, 7, 40)
    fn = partial(patch_embed_gather, backend=backend)
    _, grads = run(fn, imgs, ids, weight, bias, pos_embed, grad_out, wrt=("weight", "bias"))
    _, exact = run(embed_all_then_gather, imgs, ids, weight, bias, pos_embed, grad_out, wrt=("weight", "bias"))
    assert set(grads) == {"weight", "bias"}
    for name in grads:
        torch.testing.assert_close(grads[name], exact[name], **FP32_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_bias, with_pos", [(False, True), (True, False), (False, False)])
def test_optional_bias_and_pos_embed(with_bias, with_pos, backend):
    imgs, ids, weight, bias, pos_embed = make_inputs(3, 3, 16, 8, 4, 24, 5, torch.float32, bias=with_bias, pos=with_pos)
    grad_out = torch.randn(3, 5, 24)
    out, grads = run(partial(patch_embed_gather, backend=backend), imgs, ids, weight, bias, pos_embed, grad_out)
    exact, exact_grads = run(embed_all_then_gather, imgs, ids, weight, bias, pos_embed, grad_out)
    torch.testing.assert_close(out, exact, **FP32_TOL)
    assert grads.keys() == exact_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], exact_grads[name], **FP32_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_indices_accumulate(backend):
    """Indices repeated within an image and across images: pos_embed and pixel gradients must add up."""
    imgs, _, weight, bias, pos_embed = make_inputs(2, 3, 8, 12, 4, 24, 4, torch.float32)
    ids = torch.tensor([[5, 0, 5, 5], [5, 1, 0, 0]])
    grad_out = torch.randn(2, 4, 24)
    out, grads = run(partial(patch_embed_gather, backend=backend), imgs, ids, weight, bias, pos_embed, grad_out)
    exact, exact_grads = run(embed_all_then_gather, imgs, ids, weight, bias, pos_embed, grad_out)
    torch.testing.assert_close(out, exact, **FP32_TOL)
    for name in grads:
        torch.testing.assert_close(grads[name], exact_grads[name], **FP32_TOL)
    # Patch slot 5 of pos_embed collects grad_out of four tokens.
    torch.testing.assert_close(grads["pos_embed"][5], grad_out[0, [0, 2, 3]].sum(0) + grad_out[1, 0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ids_keep_slice_of_random_masking_with_learned_pos(backend):
    """MAE's ids_keep is a column slice of an argsort (not contiguous); with a learned table the position gradient
    must still scatter (benchmarks/gpu_check.py found the Triton backward failing on this)."""
    from siammae.model.masking import random_masking

    g = torch.Generator().manual_seed(5)
    imgs, weight = torch.randn(3, 3, 12, 16, generator=g), torch.randn(24, 3, 4, 4, generator=g) / 48**0.5
    pos = torch.randn(12, 24, generator=g, requires_grad=True)
    ids, _, _ = random_masking(3, 12, 0.6, generator=g)
    assert not ids.is_contiguous()
    grad_out = torch.randn(3, ids.shape[1], 24, generator=g)
    out = patch_embed_gather(imgs, ids, weight, None, pos, backend=backend)
    (grad_pos,) = torch.autograd.grad(out, pos, grad_out)
    exact = embed_all_then_gather(imgs, ids, weight, None, pos)
    (exact_pos,) = torch.autograd.grad(exact, pos, grad_out)
    torch.testing.assert_close(out, exact, **FP32_TOL)
    torch.testing.assert_close(grad_pos, exact_pos, **FP32_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs_and_pos_embed_view(backend):
    """Channels-last, cropped pixels; pos_embed as the patch rows of a (1, 1 + L, D) table (timm layout)."""
    g = torch.Generator().manual_seed(3)
    big = torch.randn(2, 3, 20, 16, generator=g)
    imgs = big[:, :, 2:18, :].contiguous(memory_format=torch.channels_last)[..., 4:]  # (2, 3, 16, 12) strided
    weight = torch.randn(40, 3, 4, 4, generator=g) / 48**0.5
    bias = torch.randn(40, generator=g)
    table = torch.randn(1, 1 + 12, 40, generator=g, requires_grad=True)  # [CLS] row first
    ids = random_ids(2, 12, 5, g)
    grad_out = torch.randn(2, 5, 40, generator=g)

    out = patch_embed_gather(imgs, ids, weight, bias, table[0, 1:], backend=backend)
    (grad_table,) = torch.autograd.grad(out, table, grad_out)
    exact = embed_all_then_gather(imgs.contiguous(), ids, weight, bias, table[0, 1:])
    (exact_table,) = torch.autograd.grad(exact, table, grad_out)
    torch.testing.assert_close(out, exact, **FP32_TOL)
    torch.testing.assert_close(grad_table, exact_table, **FP32_TOL)
    assert grad_table[0, 0].abs().max() == 0  # the [CLS] row gets nothing


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_matches_conv_under_autocast(backend):
    """Inside torch.autocast the op casts like Conv2d (bf16 pixels and projection, fp32 weight gradients) and
    the fp32 sin-cos table promotes the tokens to fp32, as timm's ``patch_embed(x) + pos_embed`` does."""
    imgs, ids, weight, bias, pos_embed = make_inputs(3, 3, 12, 20, 4, 40, 7, torch.float32)
    grad_out = torch.randn(3, 7, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, grads = run(partial(patch_embed_gather, backend=backend), imgs, ids, weight, bias, pos_embed, grad_out)
        base, base_grads = run(embed_all_then_gather, imgs, ids, weight, bias, pos_embed, grad_out)
    exact, exact_grads = run(embed_all_then_gather, *to64(imgs), ids, *to64(weight, bias, pos_embed), grad_out.double())
    assert out.dtype == base.dtype == torch.float32
    assert_bounded("out", out, base, exact, torch.bfloat16)
    for name in grads:
        assert grads[name].dtype == torch.float32, name
        # Pixels and weights are rounded to bf16 in both paths; allow 2x PyTorch's error like the bf16 table.
        assert_bounded(f"grad {name}", grads[name], base_grads[name], exact_grads[name], torch.bfloat16)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fp32_pos_embed_promotes_output(dtype, backend):
    """Half-precision pixels and projection plus an fp32 table give fp32 tokens, as ``conv2d(x) + pos`` does."""
    imgs, ids, weight, bias, _ = make_inputs(3, 3, 12, 20, 4, 40, 13, dtype)
    pos_embed = torch.randn(15, 40)
    grad_out = torch.randn(3, 13, 40)
    out, grads = run(partial(patch_embed_gather, backend=backend), imgs, ids, weight, bias, pos_embed, grad_out)
    exact, exact_grads = run(embed_all_then_gather, *to64(imgs), ids, *to64(weight, bias, pos_embed), grad_out.double())
    base, base_grads = run(embed_all_then_gather, imgs, ids, weight, bias, pos_embed, grad_out)
    assert out.dtype == torch.float32
    assert grads["pos_embed"].dtype == torch.float32 and grads["weight"].dtype == dtype
    assert_bounded("out", out, base, exact, dtype)
    for name in grads:
        assert_bounded(f"grad {name}", grads[name], base_grads[name], exact_grads[name], dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_kept_patches(backend):
    imgs, _, weight, bias, pos_embed = make_inputs(2, 3, 8, 12, 4, 24, 1, torch.float32)
    ids = torch.zeros(2, 0, dtype=torch.int64)
    out, grads = run(
        partial(patch_embed_gather, backend=backend),
        imgs,
        ids,
        weight,
        bias,
        pos_embed,
        torch.zeros(2, 0, 24),
    )
    assert out.shape == (2, 0, 24)
    for name in ("imgs", "weight", "bias", "pos_embed"):
        assert grads[name].abs().max() == 0, name


def test_reference_embeds_only_kept_patches():
    """The reference is the CPU fast path: its matmul FLOPs scale with K, not with L."""
    imgs, ids, weight, bias, pos_embed = make_inputs(2, 3, 32, 32, 4, 24, 3, torch.float32)  # L = 64, K = 3
    with FlopCounterMode(display=False) as fused:
        patch_embed_gather_ref(imgs, ids, weight, bias, pos_embed)
    with FlopCounterMode(display=False) as full:
        embed_all_then_gather(imgs, ids, weight, bias, pos_embed)
    assert fused.get_total_flops() == 2 * 2 * 3 * 24 * 48  # 2 * B * K * D * C*p*p
    assert full.get_total_flops() == 2 * 2 * 64 * 24 * 48


def test_triton_backward_is_deterministic():
    if not triton_available():
        pytest.skip("no triton")
    imgs, ids, weight, bias, pos_embed = make_inputs(3, 3, 12, 20, 4, 40, 7, torch.float32)
    ids[1] = ids[0]  # shared slots across images: pos_embed gradient sums several rows
    grad_out = torch.randn(3, 7, 40)
    fn = partial(patch_embed_gather, backend="triton")
    _, first = run(fn, imgs, ids, weight, bias, pos_embed, grad_out)
    _, second = run(fn, imgs, ids, weight, bias, pos_embed, grad_out)
    for name in first:
        assert torch.equal(first[name], second[name]), name


# ------------------------------------------------------------------------------------------------ bad input
def _bad(**change):
    imgs, ids, weight, bias, pos_embed = make_inputs(2, 3, 8, 12, 4, 24, 3, torch.float32)
    args = dict(imgs=imgs, ids_keep=ids, weight=weight, bias=bias, pos_embed=pos_embed)
    args.update(change)
    return args


BAD_INPUTS = {
    "imgs 3-D": (dict(imgs=torch.randn(3, 8, 12)), r"imgs must be a \(B, C, H, W\)"),
    "imgs int": (dict(imgs=torch.zeros(2, 3, 8, 12, dtype=torch.uint8)), r"imgs must be float32"),
    "H not divisible": (dict(imgs=torch.randn(2, 3, 10, 12)), r"10x12 .* not divisible by the patch size 4"),
    "channels": (dict(imgs=torch.randn(2, 1, 8, 12)), r"weight has 3 input channels but imgs has 1"),
    "weight not square": (dict(weight=torch.randn(24, 3, 4, 2)), r"weight must be a \(D, C, p, p\)"),
    "weight dtype": (dict(weight=torch.randn(24, 3, 4, 4, dtype=torch.float64)), r"weight is torch.float64"),
    "bias shape": (dict(bias=torch.randn(25)), r"bias must be \(24,\)"),
    "ids batch": (dict(ids_keep=torch.zeros(3, 3, dtype=torch.int64)), r"ids_keep must be \(B=2, K\)"),
    "ids 1-D": (dict(ids_keep=torch.zeros(3, dtype=torch.int64)), r"ids_keep must be \(B=2, K\)"),
    "ids int32": (dict(ids_keep=torch.zeros(2, 3, dtype=torch.int32)), r"ids_keep must be int64"),
    "ids range": (
        dict(ids_keep=torch.tensor([[0, 1, 6], [0, 1, 2]])),
        r"ids_keep must lie in \[0, 6\) .* \[0, 6\]",
    ),
    "ids negative": (dict(ids_keep=torch.tensor([[0, -1, 2], [0, 1, 2]])), r"must lie in \[0, 6\)"),
    "pos with cls": (
        dict(pos_embed=torch.randn(7, 24)),
        r"pos_embed must be \(L=6, D=24\) for a 2x3 patch grid",
    ),
    "pos 3-D": (dict(pos_embed=torch.randn(1, 6, 24)), r"pos_embed must be \(L=6, D=24\)"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_value_error(case, backend):
    change, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        patch_embed_gather(**_bad(**change), backend=backend)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        patch_embed_gather(**_bad(), backend="cuda")


# ------------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_vits16_shape(dtype):
    """ViT-S/16 at 224 with 95 % masking (K = 9 of 196), the shape of a SiamMAE training step."""
    imgs, ids, weight, bias, pos_embed = make_inputs(8, 3, 224, 224, 16, 384, 9, dtype)
    cuda = lambda *ts: [None if t is None else t.to("cuda") for t in ts]
    imgs, ids, weight, bias, pos_embed = cuda(imgs, ids, weight, bias, pos_embed)
    grad_out = torch.randn(8, 9, 384, device="cuda").to(dtype)
    fn = partial(patch_embed_gather, backend="triton")
    out, grads = run(fn, imgs, ids, weight, bias, pos_embed, grad_out)
    _, again = run(fn, imgs, ids, weight, bias, pos_embed, grad_out)
    exact, exact_grads = run(embed_all_then_gather, *to64(imgs), ids, *to64(weight, bias, pos_embed), grad_out.double())
    base, base_grads = run(embed_all_then_gather, imgs, ids, weight, bias, pos_embed, grad_out)
    assert_bounded("out", out, base, exact, dtype)
    for name in grads:
        assert_bounded(f"grad {name}", grads[name], base_grads[name], exact_grads[name], dtype)
        if name in ("weight", "bias"):  # the Triton gradient kernel: no atomics, bitwise repeatable
            assert torch.equal(grads[name], again[name]), name


# ---------------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("backend", BACKENDS)
def test_siammae_training_loss_and_gradients_unchanged(backend):
    """Wired into the encoder for the masked frame, the op leaves SiamMAE's loss and every gradient unchanged."""
    from siammae.model.registry import create_model

    torch.manual_seed(0)
    model = create_model("tiny")
    f1, f2 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)

    def loss_and_grads(m):
        m.zero_grad(set_to_none=True)
        loss = m(f1, f2, generator=torch.Generator().manual_seed(0))["loss"]
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}

    exact_loss, exact = loss_and_grads(model)  # the encoder's own embed-all-then-gather

    enc = model.encoder
    embed_all = enc.embed_patches

    def fused(x, ids_keep=None, pos_interp="auto"):
        if ids_keep is None:
            return embed_all(x, ids_keep, pos_interp)
        pos = enc.pos_embed_for(*enc.grid(x), pos_interp)[0, 1:]  # (L, D)
        proj = enc.patch_embed.proj
        return patch_embed_gather(x, ids_keep, proj.weight, proj.bias, pos, backend=backend)

    enc.embed_patches = fused
    loss, grads = loss_and_grads(model)
    torch.testing.assert_close(loss, exact_loss, **FP32_TOL)
    assert grads.keys() == exact.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], exact[name], **FP32_TOL, msg=lambda m, n=name: f"{n}: {m}")
