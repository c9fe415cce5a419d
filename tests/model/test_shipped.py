"""The shipped weights ``siammae-cpu``: a tiny file written by ``export_shipped`` stands in for the trained one (the
package location is patched), then listed, resolved, loaded and tracked with, offline and with an empty cache."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import siammae
from siammae.errors import CheckpointError
from siammae.model import packaged
from siammae.model.checkpoint import load_model, save_checkpoint
from siammae.model.encoder import ViTEncoder
from siammae.model.hub import file_sha256
from siammae.model.named import default_or_shipped, export_shipped, shipped_fallback_notice
from siammae.model.weights import resolve_weights, weights_table

CARD = {
    "summary": "SiamMAE ViT trained on CPU on 12 real clips (test stand-in)",
    "data": "train-videos, sam2, cutie/example.mp4",
    "licence": "CC-BY-NC-4.0",
    "davis_jf": 42.0,
    "baselines": {"raw pixels": 31.0, "first mask copied": 28.0},
    "eval": "3 DAVIS-2016 val sequences",
    "steps": 10,
}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return siammae.create_model("tiny").eval()


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Offline, an empty torch cache; run in tmp_path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SIAMMAE_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def shipped(model, offline, monkeypatch):
    """The tiny model's encoder as the package's siammae-cpu."""
    path = export_shipped(model, CARD, offline / "pkg" / "siammae-cpu.safetensors")
    monkeypatch.setattr(packaged, "shipped_file", lambda: path)
    return path


def test_the_file_format(shipped, model):
    from safetensors import safe_open

    with safe_open(str(shipped), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert meta["format"] == "siammae-encoder" and meta["version"] == "1"
    assert json.loads(meta["config"]) == model.config.to_dict() and json.loads(meta["card"]) == CARD
    assert set(tensors) == set(model.encoder.state_dict())  # the encoder only: no decoder
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float16}


def test_resolve_and_load_need_no_network_and_no_cache(shipped, model, offline):
    w = resolve_weights("siammae-cpu")
    assert w.path == shipped and w.provenance.sha256 == file_sha256(shipped)
    assert w.provenance.weights == "siammae-cpu" and w.provenance.origin == "in the package"
    assert w.provenance.licence == "CC-BY-NC-4.0"
    encoder = load_model("siammae-cpu")
    assert isinstance(encoder, ViTEncoder) and encoder.provenance.to_dict()["weights"] == "siammae-cpu"
    for key, value in encoder.state_dict().items():  # fp16 in the file, fp32 once loaded, equal to the rounding
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, model.encoder.state_dict()[key].half().float(), rtol=0, atol=0)
    assert not (offline / "torch").exists()


def test_export_from_a_checkpoint_equals_export_from_the_model(shipped, model, tmp_path):
    ckpt = save_checkpoint(tmp_path / "run" / "model.pt", model)
    other = export_shipped(ckpt, CARD, tmp_path / "other.safetensors")
    a, b = load_model(shipped), load_model(other)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_export_refuses_non_finite_weights_and_a_short_card(model, tmp_path):
    with torch.no_grad():
        model.encoder.blocks[1].mlp.fc2.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc2\.weight holds NaN"):
        export_shipped(model, CARD, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="the model card lacks davis_jf, baselines"):
        export_shipped(model, {"summary": "x", "data": "y", "licence": "z"}, tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())


def test_listed_in_the_package_with_its_card(shipped):
    from siammae.cli.weights import main

    row = next(r for r in weights_table() if r["name"] == "siammae-cpu")
    assert row["cached"] and row["kind"] == "shipped" and row["davis_jf"] == 42.0 and CARD["summary"] in row["summary"]
    out = CliRunner().invoke(main, ["list"]).output
    line = next(ln for ln in out.splitlines() if ln.startswith("siammae-cpu "))
    assert "in the package" in line and "CC-BY-NC-4.0" in line
    assert f"siammae-cpu: {CARD['summary']}; J&F 42.0 on 3 DAVIS-2016 val sequences (baselines: raw pixels 31.0" in out


def test_absent_from_the_build(offline, monkeypatch):
    from siammae.cli.weights import main

    monkeypatch.setattr(packaged, "shipped_file", lambda: offline / "nowhere" / "siammae-cpu.safetensors")
    line = next(ln for ln in CliRunner().invoke(main, ["list"]).output.splitlines() if ln.startswith("siammae-cpu"))
    assert "not in this build" in line
    with pytest.raises(CheckpointError, match="siammae-cpu is not in this build of siammae") as info:
        load_model("siammae-cpu")
    assert "\n" not in str(info.value)
    got = CliRunner().invoke(main, ["download", "siammae-cpu"])
    assert got.exit_code == 2 and "not in this build" in got.output


def test_tracking_with_the_shipped_weights(shipped, offline):
    from siammae.cli.track import main
    from siammae.data.masks import write_mask
    from siammae.data.synthetic import make_synthetic_clip
    from siammae.data.video import write_video

    frames, masks = make_synthetic_clip(3, (48, 64), seed=3)
    write_video(offline / "video.mp4", iter(frames), fps=10)
    write_mask(offline / "first.png", masks[0])
    args = ["video.mp4", "--mask", "first.png", "--ckpt", "siammae-cpu", "--size", "64", "--report", "r.json", "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((offline / "r.json").read_text())
    assert report["status"] == "complete" and report["frames"] == 3
    weights = report["settings"]["weights"]
    assert weights["weights"] == "siammae-cpu" and weights["sha256"] == file_sha256(shipped)


def test_default_or_shipped(shipped, offline, monkeypatch):
    """Offline with the default not cached: the shipped weights and one warning line; the default once cached."""
    from weight_server import as_tiny, tiny_vit

    prov, notice = default_or_shipped()
    assert prov.weights == "siammae-cpu" and prov.sha256 == file_sha256(shipped)
    assert notice == shipped_fallback_notice("not in the cache and downloads are off (SIAMMAE_OFFLINE=1)")
    assert "\n" not in notice and notice.startswith("warning: dino-vits16 not in the cache")
    assert "J&F 42.0 on 3 DAVIS-2016 val sequences" in notice and "raw pixels 31.0" in notice
    assert "CC-BY-NC-4.0" in notice
    assert "'siammae-weights download dino-vits16'" in notice and "'siammae-weights import FILE dino-vits16'" in notice
    assert load_model(prov.weights).provenance.weights == "siammae-cpu"

    w = as_tiny(monkeypatch, "dino-vits16")
    w.path.parent.mkdir(parents=True)
    torch.save(tiny_vit().state_dict(), w.path)
    prov, notice = default_or_shipped()
    assert prov.weights == "dino-vits16" and notice is None


def test_default_without_the_shipped_file_is_the_default_error(offline, monkeypatch):
    monkeypatch.setattr(packaged, "shipped_file", lambda: offline / "nowhere.safetensors")
    with pytest.raises(CheckpointError, match="dino-vits16 is not in the cache and downloads are off"):
        default_or_shipped()


def test_the_real_shipped_model_runs_at_its_measured_scale():
    """siammae-cpu's card says it was measured at half the preset's size: a Tracker without --size follows it (the
    numbers of its card), an explicit size wins, other weights keep the preset's own size."""
    from siammae.model import packaged
    from siammae.model.checkpoint import load_model
    from siammae.model.registry import create_model
    from siammae.propagation.driver import Tracker

    if not packaged.shipped_file().is_file():
        pytest.skip("this build has no shipped siammae-cpu")
    model = load_model("siammae-cpu")
    assert packaged.input_scale(model) == 0.5
    assert Tracker(model, "siammae-davis", device="cpu").frame_size(480, 854) == (240, 440)
    assert Tracker(model, "siammae-jhmdb", device="cpu").frame_size(240, 320) == (160, 160)
    assert Tracker(model, "siammae-davis", device="cpu", size="480x880").frame_size(480, 854) == (480, 880)
    assert Tracker(create_model("tiny"), "siammae-davis", device="cpu").frame_size(480, 854) == (480, 880)
