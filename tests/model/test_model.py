import numpy as np
import pytest
import torch

from siammae.model.config import ModelConfig
from siammae.model.masking import grid_masking, num_kept, random_masking
from siammae.model.pos_embed import resize_pos_embed, sincos_2d
from siammae.model.registry import create_model, list_models, model_config
from siammae.model.siammae import SiamMAE, patchify, unpatchify


def _mae_sincos(dim, h, w):
    """MAE util/pos_embed.py, numpy, generalised to a (h, w) grid exactly as its meshgrid does."""

    def one_d(d, pos):
        omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), axis=0)
    emb = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_config_runs_with_its_shapes(name):
    torch.manual_seed(0)
    model = create_model(name)
    cfg = model.config
    s, p = cfg.img_size, cfg.patch_size
    f1, f2 = torch.randn(1, 3, s, s), torch.randn(1, 3, s, s)
    out = model(f1, f2)
    L = (s // p) ** 2
    assert out["pred"].shape == (1, L, p * p * 3)
    assert out["mask"].shape == (1, L)
    assert int(out["mask"].sum()) == L - num_kept(L, cfg.mask_ratio_f2)
    assert torch.isfinite(out["loss"])
    feats = model.features(torch.randn(1, 3, 2 * p, 5 * p))
    assert feats.shape == (1, 2, 5, cfg.embed_dim)


def test_paper_configs():
    assert (
        model_config("vits16").embed_dim,
        model_config("vits16").depth,
        model_config("vits16").num_heads,
    ) == (384, 12, 6)
    assert model_config("vits8").patch_size == 8
    assert (model_config("vitb16").embed_dim, model_config("vitb16").num_heads) == (768, 12)
    cfg = ModelConfig()
    assert (cfg.decoder, cfg.decoder_embed_dim, cfg.decoder_depth, cfg.decoder_num_heads) == (
        "cross-self",
        512,
        8,
        16,
    )
    assert (cfg.mask_ratio_f1, cfg.mask_ratio_f2, cfg.encoder_mode) == (0.0, 0.95, "siam")
    with pytest.raises(ValueError, match="unknown model 'vits99'"):
        create_model("vits99")
    with pytest.raises(ValueError, match="decoder = 'mlp': valid: cross-self, cross, joint"):
        create_model("tiny", decoder="mlp")
    with pytest.raises(ValueError, match="unknown config fields"):
        create_model("tiny", decoder_width=3)


def test_kept_patch_counts_are_maes():
    assert num_kept(196, 0.95) == 9
    assert num_kept(784, 0.95) == 39
    assert num_kept(196, 0.75) == 49
    g = torch.Generator().manual_seed(0)
    ids_keep, mask, ids_restore = random_masking(4, 784, 0.95, generator=g)
    assert ids_keep.shape == (4, 39)
    assert (mask.sum(1) == 784 - 39).all()
    # kept indices are exactly the zeros of the mask, and ids_restore inverts the shuffle
    for b in range(4):
        assert set(ids_keep[b].tolist()) == set((mask[b] == 0).nonzero().flatten().tolist())
    shuffled = torch.cat([torch.zeros(4, 39), torch.ones(4, 784 - 39)], dim=1)
    assert torch.equal(torch.gather(shuffled, 1, ids_restore), mask)


def test_grid_masking_is_a_lattice():
    ids_keep, mask, _ = grid_masking(2, 4, 6, 0.5)
    assert ids_keep.shape == (2, 12)
    m = mask[0].reshape(4, 6)
    assert m[0, 0] == 0 and m[0, 1] == 1 and m[1, 0] == 1 and m[1, 1] == 0
    ids_keep, mask, _ = grid_masking(1, 4, 6, 0.75)
    assert sorted(ids_keep[0].tolist()) == [0, 2, 4, 12, 14, 16]
    with pytest.raises(ValueError, match="0.5 and 0.75"):
        grid_masking(1, 4, 4, 0.9)
    model = create_model("tiny", masking="grid", mask_ratio_f2=0.75)
    out = model(torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64))
    assert int(out["mask"].sum()) == 48


def test_symmetric_masking_and_joint_modes_run():
    torch.manual_seed(0)
    f1, f2 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    for overrides in (
        dict(mask_ratio_f1=0.5, mask_ratio_f2=0.5),
        dict(encoder_mode="joint"),
        dict(encoder_mode="joint", decoder="joint", mask_ratio_f1=0.75),
    ):
        model = create_model("tiny", **overrides)
        out = model(f1, f2)
        out["loss"].backward()
        assert torch.isfinite(out["loss"])
        assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0


def test_loss_ignores_visible_patches_of_f2():
    torch.manual_seed(0)
    model = create_model("tiny")
    f2 = torch.randn(2, 3, 64, 64)
    pred = torch.randn(2, 64, 192)
    mask = torch.zeros(2, 64)
    mask[:, ::3] = 1
    base = model.forward_loss(f2, pred, mask)
    visible = pred.clone()
    visible[:, 1] += 10.0  # patch 1 is visible (mask 0)
    assert torch.equal(model.forward_loss(f2, visible, mask), base)
    masked = pred.clone()
    masked[:, 0] += 10.0  # patch 0 is masked
    assert model.forward_loss(f2, masked, mask) > base + 1


def test_loss_targets_are_normalised_per_patch():
    model = create_model("tiny")
    f2 = torch.rand(1, 3, 64, 64) * 5 + 3
    target = patchify(f2, 8)
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    mask = torch.ones(1, 64)
    assert model.forward_loss(f2, normed, mask) < 1e-10
    raw = create_model("tiny", norm_pix_loss=False)
    assert raw.forward_loss(f2, target, mask) == 0


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 16, 24)
    assert torch.equal(unpatchify(patchify(x, 8), 8, 2, 3), x)
    # MAE order: pixels of one patch as (p, p, C)
    assert torch.equal(patchify(x, 8)[0, 1].reshape(8, 8, 3), x[0, :, :8, 8:16].permute(1, 2, 0))


def test_siam_mode_encodes_both_frames_with_the_same_parameters():
    torch.manual_seed(0)
    model = create_model("tiny")
    seen = []
    handle = model.encoder.register_forward_hook(lambda m, inp, out: seen.append((inp, out)))
    f1, f2 = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    model(f1, f2, generator=torch.Generator().manual_seed(0))
    handle.remove()
    assert len(seen) == 2 and torch.equal(seen[0][0][0], f1) and torch.equal(seen[1][0][0], f2)
    # each latent is exactly what the one shared encoder gives for that frame alone
    ids_keep2 = seen[1][0][1]
    assert torch.equal(seen[0][1], model.encoder(f1))
    assert torch.equal(seen[1][1], model.encoder(f2, ids_keep2))
    enc_params = {id(p) for p in model.encoder.parameters()}
    assert not any(id(p) in enc_params for n, p in model.named_parameters() if n.startswith("decoder"))


def test_sincos_table_is_maes_for_any_grid():
    for dim, h, w in ((64, 8, 8), (384, 14, 14), (32, 3, 7)):
        np.testing.assert_allclose(sincos_2d(dim, h, w).numpy(), _mae_sincos(dim, h, w), atol=1e-6)
    model = create_model("tiny")
    np.testing.assert_allclose(model.encoder.pos_embed[0].detach().numpy(), _mae_sincos(64, 8, 8), atol=1e-6)
    exact = model.encoder.pos_embed_for(3, 7)
    assert torch.allclose(exact[0], sincos_2d(64, 3, 7))


def test_learned_table_resized_like_dino():
    torch.manual_seed(0)
    table = torch.randn(1, 1 + 16, 8)
    out = resize_pos_embed(table, 3, 6)
    patch = table[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(patch, scale_factor=(3.1 / 4, 6.1 / 4), mode="bicubic")
    assert torch.allclose(out[:, 1:], want.permute(0, 2, 3, 1).reshape(1, 18, 8))
    assert torch.equal(out[:, :1], table[:, :1])
    model = create_model("tiny", pos_embed="learned")
    assert model.encoder.pos_embed.requires_grad
    assert not create_model("tiny").encoder.pos_embed.requires_grad
    feats = model.features(torch.randn(1, 3, 24, 48))
    assert feats.shape == (1, 3, 6, 64)


def test_features_reject_sizes_not_divisible_by_the_patch():
    model = create_model("tiny")
    with pytest.raises(ValueError, match="not divisible by the patch size 8"):
        model.features(torch.randn(1, 3, 20, 32))


def test_model_is_a_plain_siammae():
    assert isinstance(create_model("tiny"), SiamMAE)


def test_position_tables_are_built_once_per_grid_and_follow_the_weights():
    model = create_model("tiny", pos_embed="learned").eval()
    enc = model.encoder
    with torch.no_grad():
        a, b = enc.pos_embed_for(3, 7), enc.pos_embed_for(3, 7)
        assert a is b  # cached: not rebuilt per chunk
        assert torch.equal(a, resize_pos_embed(enc.pos_embed, 3, 7))
        enc.pos_embed.copy_(torch.randn_like(enc.pos_embed))  # new weights (load_state_dict copies in place)
        c = enc.pos_embed_for(3, 7)
        assert c is not a and torch.equal(c, resize_pos_embed(enc.pos_embed, 3, 7))
    # a table being trained stays differentiable through the resize
    enc.pos_embed_for(3, 7).sum().backward()
    assert enc.pos_embed.grad is not None and enc.pos_embed.grad.abs().sum() > 0
    sincos = create_model("tiny").encoder
    assert sincos.pos_embed_for(3, 7) is sincos.pos_embed_for(3, 7)


def test_f2_must_be_masked():
    with pytest.raises(ValueError, match=r"mask_ratio_f2 = 0\.0: must be in \(0, 1\)"):
        create_model("tiny", mask_ratio_f2=0.0)
