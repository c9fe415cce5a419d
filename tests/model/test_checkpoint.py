import pickle

import pytest
import timm
import torch

from siammae import CheckpointError, ViTEncoder, create_model, load_model, save_checkpoint
from siammae.model.checkpoint import read_checkpoint


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 64, 64, generator=g), torch.randn(2, 3, 64, 64, generator=g)


def test_save_load_roundtrip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny", decoder="cross")
    path = save_checkpoint(tmp_path / "m.pt", model, step=7)
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind
    loaded = load_model(path)
    assert loaded.config == model.config
    f1, f2 = _pair()
    a = model(f1, f2, generator=torch.Generator().manual_seed(1))
    b = loaded(f1, f2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a["loss"], b["loss"]) and torch.equal(a["pred"], b["pred"])
    assert torch.equal(model.features(f1), loaded.features(f1))
    assert read_checkpoint(path)["step"] == 7


def test_encoder_only_checkpoint_roundtrip(tmp_path):
    enc = create_model("tiny").encoder
    loaded = load_model(save_checkpoint(tmp_path / "enc.pt", enc))
    assert isinstance(loaded, ViTEncoder)
    x = torch.randn(1, 3, 32, 48)
    assert torch.equal(enc.features(x), loaded.features(x))


@pytest.mark.parametrize("layout", ["dino_teacher", "dino_student", "mae", "timm_pth", "timm_safetensors"])
def test_timm_vit_weights_load_with_identical_features(tmp_path, layout):
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, depth=2).eval()
    state = vit.state_dict()
    path = tmp_path / "w.pth"
    if layout == "dino_teacher":
        torch.save(
            {
                "teacher": {f"backbone.{k}": v for k, v in state.items()} | {"head.mlp.0.weight": torch.zeros(2, 2)},
                "epoch": 3,
            },
            path,
        )
    elif layout == "dino_student":
        torch.save({"student": {f"module.backbone.{k}": v for k, v in state.items()}}, path)
    elif layout == "mae":
        torch.save(
            {"model": state | {"mask_token": torch.zeros(1, 1, 8), "decoder_embed.weight": torch.zeros(8, 384)}},
            path,
        )
    elif layout == "timm_pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    enc = load_model(path)
    assert isinstance(enc, ViTEncoder)
    assert (enc.patch_size, enc.embed_dim, len(enc.blocks), enc.num_heads) == (16, 384, 2, 6)
    assert enc.config.pos_embed == "learned"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        want = vit.forward_features(x)[:, 1:].reshape(1, 14, 14, 384)
    assert torch.equal(enc.features(x, attention="sdpa"), want)  # timm's own blocks: the same weights, the same bits
    torch.testing.assert_close(enc.features(x), want, atol=1e-4, rtol=0)  # DINO's attention order (CPU default)


def test_foreign_arch_given_and_mismatched(tmp_path):
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    torch.save(vit.state_dict(), tmp_path / "w.pth")
    assert load_model(tmp_path / "w.pth", arch="vits16").config.depth == 12
    with pytest.raises(CheckpointError, match=r"w\.pth: weights do not match --arch vits8: patch_size 8 vs 16"):
        load_model(tmp_path / "w.pth", arch="vits8")


def test_mae_sincos_table_is_recognised(tmp_path):
    enc = create_model("tiny").encoder
    torch.save({"model": enc.state_dict()}, tmp_path / "mae.pth")
    assert load_model(tmp_path / "mae.pth").config.pos_embed == "sincos"


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    def err(path, **kw):
        with pytest.raises(CheckpointError) as e:
            load_model(path, **kw)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg
        return msg

    assert "no such file" in err(tmp_path / "absent.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty" in err(tmp_path / "empty.pt")
    good = save_checkpoint(tmp_path / "good.pt", create_model("tiny"))
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in err(tmp_path / "trunc.pt")
    (tmp_path / "notes.pt").write_text("hello, these are notes\n")
    err(tmp_path / "notes.pt")
    with open(tmp_path / "obj.pt", "wb") as f:
        pickle.dump({"model": object()}, f)
    err(tmp_path / "obj.pt")
    # a siammae checkpoint whose weights do not fit its config
    ck = torch.load(good, weights_only=True)
    ck["model"]["encoder.norm.weight"] = torch.ones(7)
    torch.save(ck, tmp_path / "shape.pt")
    assert "shape mismatch" in err(tmp_path / "shape.pt") and "encoder.norm.weight" in err(tmp_path / "shape.pt")
    del ck["model"]["encoder.norm.weight"]
    torch.save(ck, tmp_path / "missing.pt")
    assert "missing keys encoder.norm.weight" in err(tmp_path / "missing.pt")
    ck = torch.load(good, weights_only=True)
    ck["model"]["extra.weight"] = torch.ones(1)
    torch.save(ck, tmp_path / "extra.pt")
    assert "unexpected keys extra.weight" in err(tmp_path / "extra.pt")
    torch.save({"optimizer": {"lr": 0.1}}, tmp_path / "noweights.pt")
    assert "no weights found" in err(tmp_path / "noweights.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00\x01garbage")
    assert "safetensors" in err(tmp_path / "bad.safetensors")
    ck = torch.load(good, weights_only=True)
    ck["version"] = 99
    torch.save(ck, tmp_path / "v99.pt")
    assert "version 99" in err(tmp_path / "v99.pt")


@pytest.mark.parametrize(
    "change, expect",
    [
        (lambda s: s.pop("blocks.0.mlp.fc1.weight"), "no 'blocks.0.mlp.fc1.weight'"),
        (lambda s: s.pop("pos_embed"), "no 'pos_embed'"),
        (lambda s: s.update({"patch_embed.proj.weight": torch.zeros(384)}), "patch_embed.proj.weight has shape (384,)"),
        (
            lambda s: s.update({"patch_embed.proj.weight": torch.zeros(0, 3, 16, 16)}),
            "patch_embed.proj.weight has shape (0, 3, 16, 16)",
        ),
        (lambda s: s.update({"pos_embed": torch.zeros(1, 197, 0)}), "pos_embed has shape (1, 197, 0)"),
        (lambda s: s.update({"blocks.0.mlp.fc1.weight": torch.zeros(1536)}), "blocks.0.mlp.fc1.weight has shape"),
        (lambda s: s.update({"patch_embed.proj.weight": torch.zeros(384, 3, 16, 8)}), "patches not square"),
    ],
    ids=["no-mlp", "no-pos", "proj-1d", "proj-empty", "pos-empty", "fc1-1d", "proj-not-square"],
)
def test_foreign_state_dict_faults_name_the_file_and_key(tmp_path, change, expect):
    """Before: KeyError, IndexError, ZeroDivisionError. Now one CheckpointError naming the file and the key."""
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, depth=1)
    state = vit.state_dict()
    change(state)
    torch.save(state, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "foreign.pth")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'foreign.pth'}: ") and expect in msg and "\n" not in msg


def test_one_weight_initialisation():
    """The decoder is initialised by the encoder's function (MAE's: xavier-uniform linear, zero bias, unit norms)."""
    import siammae.model.encoder as enc
    import siammae.model.siammae as sm

    assert sm.init_linear_and_norm is enc.init_linear_and_norm and not hasattr(sm, "_init_weights")
    torch.manual_seed(0)
    model = create_model("tiny")
    lin = model.decoder_pred
    bound = (6 / (lin.in_features + lin.out_features)) ** 0.5  # xavier-uniform's bound
    assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.9 * bound
    assert torch.equal(lin.bias, torch.zeros_like(lin.bias))
    assert torch.equal(model.decoder_norm.weight, torch.ones_like(model.decoder_norm.weight))
