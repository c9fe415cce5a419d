"""The card's command as typed: ``siammae-track video.mp4 --mask first.png`` on the default weights.

Offline with a cold cache it is one ``error:`` line naming the URL and the path to put the file at (exit 2); with
a file put there by hand it runs offline, and the report names the weights and their sha256.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image

from siammae.data.masks import write_mask
from siammae.data.synthetic import make_synthetic_clip
from siammae.data.video import write_video
from siammae.model.hub import OFFICIAL_BASE, file_sha256
from siammae.model.weights import DEFAULT_WEIGHTS, WEIGHTS

DEFAULT = WEIGHTS[DEFAULT_WEIGHTS]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Offline, an empty torch cache, run in tmp_path (the default output folder lands there)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SIAMMAE_OFFLINE", "1")
    monkeypatch.delenv("SIAMMAE_WEIGHTS_URL_BASE", raising=False)
    monkeypatch.chdir(tmp_path)
    frames, masks = make_synthetic_clip(4, (48, 64), seed=3)
    write_video(tmp_path / "video.mp4", iter(frames), fps=10)
    write_mask(tmp_path / "first.png", masks[0])
    without_shipped_weights(monkeypatch, tmp_path)  # a build without siammae-cpu: the default's own error
    return tmp_path / "torch" / "hub" / "checkpoints" / DEFAULT.filename


def without_shipped_weights(monkeypatch, tmp_path):
    from siammae.model import packaged

    monkeypatch.setattr(packaged, "shipped_file", lambda: tmp_path / "absent" / "siammae-cpu.safetensors")


def test_offline_the_card_command_runs_on_the_shipped_model(offline, monkeypatch):
    """The card's `siammae-track video.mp4 --mask first.png` on a machine that cannot get the default weights: the
    shipped siammae-cpu runs (at its measured scale), one warning line says so, the report names it."""
    import json

    from siammae.cli.track import main

    monkeypatch.undo()  # the real package, its shipped file included; offline again below
    monkeypatch.setenv("TORCH_HOME", str(offline.parents[2]))
    monkeypatch.setenv("SIAMMAE_OFFLINE", "1")
    monkeypatch.chdir(offline.parents[3])
    result = CliRunner().invoke(
        main, ["video.mp4", "--mask", "first.png", "--out", "m", "--report", "r.json", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "siammae-cpu" in warnings[0] and "siammae-weights download" in warnings[0]
    report = json.loads(Path("r.json").read_text())
    assert "siammae-cpu" in json.dumps(report["settings"]) and report["status"] == "complete"
    assert len(list(Path("m").glob("*.png"))) == 4


def test_track_offline_cold_cache_is_one_line_naming_url_and_path(offline):
    from siammae.cli.track import main

    result = CliRunner().invoke(main, ["video.mp4", "--mask", "first.png"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert f"{OFFICIAL_BASE}{DEFAULT.url_path}" in lines[0] and f"put it at {offline}" in lines[0]
    assert f"siammae-weights import FILE {DEFAULT_WEIGHTS}" in lines[0]


def test_track_as_typed_with_the_file_placed_by_hand(offline, tmp_path, monkeypatch):
    from weight_server import as_tiny

    from siammae.cli.track import main

    as_tiny(monkeypatch, DEFAULT_WEIGHTS, embed_dim=64, patch_size=16, depth=1)  # the file's check expects this ViT

    torch.manual_seed(0)  # a tiny ViT in DINO's layout stands in for the real file (same loading path)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=16, embed_dim=64, depth=1, num_heads=1, num_classes=0
    )
    offline.parent.mkdir(parents=True)
    torch.save(vit.state_dict(), offline)
    result = CliRunner().invoke(main, ["video.mp4", "--mask", "first.png", "--size", "64", "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "video_masks").glob("*.png"))) == 4  # the default output folder

    args = ["video.mp4", "--mask", "first.png", "--size", "64", "--report", "r.json", "--quiet"]
    assert CliRunner().invoke(main, args).exit_code == 0
    weights = json.loads((tmp_path / "r.json").read_text())["settings"]["weights"]
    assert weights["weights"] == DEFAULT_WEIGHTS and weights["sha256"] == file_sha256(offline)
    assert weights["status"] == "unverified" and weights["origin"] == "in the cache"  # recorded by the first run


@pytest.mark.parametrize("command", ["eval", "export", "attn"])
def test_other_commands_default_to_the_same_weights(offline, command):
    import importlib

    main = importlib.import_module(f"siammae.cli.{command}").main
    help_args = ["davis", "--help"] if command == "eval" else ["--help"]
    assert f"[default: {DEFAULT_WEIGHTS}]" in " ".join(CliRunner().invoke(main, help_args).output.split())
    if command == "eval":  # a DAVIS-2017 layout of one sequence: the arguments pass, the weights are next
        frames, masks = make_synthetic_clip(2, (48, 64), seed=3)
        for i, (rgb, ids) in enumerate(zip(frames, masks, strict=True)):
            Path("JPEGImages/480p/a").mkdir(parents=True, exist_ok=True)
            Path("Annotations/480p/a").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(f"JPEGImages/480p/a/{i:05d}.jpg")
            write_mask(Path(f"Annotations/480p/a/{i:05d}.png"), ids)
        Path("ImageSets/2017").mkdir(parents=True)
        Path("ImageSets/2017/val.txt").write_text("a\n")
    args = {"eval": ["davis", "--root", "."], "export": [], "attn": ["video.mp4"]}[command]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and f"put it at {offline}" in result.stderr


def test_weights_help_loads_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys\nfrom siammae.cli.weights import main\n"
        "try:\n    main(['list', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'timm', 'huggingface_hub') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Usage" in out and out.strip().splitlines()[-1] == "[]"
