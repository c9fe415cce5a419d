"""siammae's ViT blocks against timm's, bit for bit (the start-up they buy: tests/model/test_startup.py).

The blocks (siammae/model/blocks.py) replace timm's so that a run does not import timm (and through it torchvision,
seconds of start-up). They must be timm's to the last bit: the same parameter names (every state dict loads), the
same random initialisation for a seed, the same operations in the same order (the dino preset's agreement with
DINO's script rests on the exact order), forward and backward.
"""

from functools import partial

import pytest
import torch
import torch.nn as nn

timm_layers = pytest.importorskip("timm.layers")
from timm.models import vision_transformer as timm_vit  # noqa: E402

from siammae.model import blocks  # noqa: E402
from siammae.model import encoder as encoder_module  # noqa: E402
from siammae.model.encoder import ViTEncoder  # noqa: E402
from siammae.model.registry import create_model, model_config  # noqa: E402

LN = partial(nn.LayerNorm, eps=1e-6)


def _pair(build_ours, build_timm, seed=0):
    """(ours, timm's), each built after seeding the same generator state: the same initial weights if both draw
    the same random numbers in the same order."""
    torch.manual_seed(seed)
    ours = build_ours()
    torch.manual_seed(seed)
    theirs = build_timm()
    return ours, theirs


def _same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)  # same names, same order
    for k in sa:
        assert sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]), k


def _randomise(*modules: nn.Module, seed: int = 1) -> None:
    """The same non-trivial weights in every module (LayerNorm weights away from 1, biases away from 0)."""
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in modules[0].state_dict().items()}
    for m in modules:
        m.load_state_dict(state, strict=True)


def _outputs_and_grads(module: nn.Module, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y = module(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    return y.detach(), x.grad, grads


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("qkv_bias", [True, False])
@pytest.mark.parametrize("init_values", [None, 0.1])
def test_block_equals_timm_block_bit_for_bit(fused, qkv_bias, init_values):
    dim, heads = 96, 4  # head_dim 24: a scale that is no power of two, so the order of the scaling shows
    ours, theirs = _pair(
        lambda: blocks.Block(dim, heads, mlp_ratio=3.0, qkv_bias=qkv_bias, init_values=init_values, norm_layer=LN),
        lambda: timm_vit.Block(dim, heads, mlp_ratio=3.0, qkv_bias=qkv_bias, init_values=init_values, norm_layer=LN),
    )
    _same_state(ours, theirs)  # names and the seeded initialisation
    _randomise(ours, theirs)
    ours.attn.fused_attn = theirs.attn.fused_attn = fused
    x = torch.randn(3, 37, dim, generator=torch.Generator().manual_seed(2))
    for mode in ("eval", "train"):  # dropout p 0 and no drop path: train mode computes the same function
        getattr(ours, mode)(), getattr(theirs, mode)()
        ours.zero_grad(), theirs.zero_grad()
        y1, gx1, g1 = _outputs_and_grads(ours, x)
        y2, gx2, g2 = _outputs_and_grads(theirs, x)
        assert torch.equal(y1, y2), mode
        assert torch.equal(gx1, gx2), mode
        assert g1.keys() == g2.keys() and all(torch.equal(g1[k], g2[k]) for k in g1), mode


def test_mlp_and_patch_embed_equal_timm_bit_for_bit():
    mlp, timm_mlp = _pair(lambda: blocks.Mlp(48, 160), lambda: timm_layers.Mlp(48, 160))
    _same_state(mlp, timm_mlp)
    x = torch.randn(2, 9, 48, generator=torch.Generator().manual_seed(3))
    assert torch.equal(mlp(x), timm_mlp(x))

    make_pe = [
        lambda: blocks.PatchEmbed(img_size=32, patch_size=8, in_chans=3, embed_dim=24),
        lambda: timm_layers.PatchEmbed(img_size=32, patch_size=8, in_chans=3, embed_dim=24, strict_img_size=False),
    ]
    pe, timm_pe = _pair(*make_pe)
    _same_state(pe, timm_pe)
    imgs = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(4))  # not the built size: any grid
    assert torch.equal(pe(imgs), timm_pe(imgs))
    assert pe(imgs).shape == (2, 5 * 7, 24)
    with pytest.raises(ValueError, match="not divisible by the patch size 8"):
        pe(imgs[..., :30])


def test_encoder_equals_the_encoder_built_on_timm_blocks(monkeypatch):
    """The whole encoder, seeded, against the same encoder built on timm's blocks (as it was): the same initial
    weights (the same random draws in the same order), and the same features on every attention path."""
    cfg = model_config("tiny")
    torch.manual_seed(0)
    ours = ViTEncoder(cfg).eval()
    monkeypatch.setattr(encoder_module, "Block", timm_vit.Block)
    monkeypatch.setattr(encoder_module, "PatchEmbed", partial(timm_layers.PatchEmbed, strict_img_size=False))
    torch.manual_seed(0)
    theirs = ViTEncoder(cfg).eval()
    assert isinstance(theirs.blocks[0], timm_vit.Block) and isinstance(ours.blocks[0], blocks.Block)
    _same_state(ours, theirs)
    x = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(5))
    for attention in ("exact", "sdpa"):
        assert torch.equal(ours.features(x, attention=attention), theirs.features(x, attention=attention))
    keep = torch.tensor([[0, 3, 7, 11], [1, 2, 5, 40]])
    with torch.no_grad():
        assert torch.equal(ours(x, keep), theirs(x, keep))


def test_joint_decoder_blocks_are_siammae_blocks_with_timm_names():
    model = create_model("tiny", decoder="joint")
    assert isinstance(model.decoder.blocks[0], blocks.Block)
    names = {k for k in model.state_dict() if k.startswith("decoder.blocks.0.")}
    assert "decoder.blocks.0.attn.qkv.weight" in names and "decoder.blocks.0.mlp.fc2.bias" in names
