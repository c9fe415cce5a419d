"""onnxruntime writes nothing into $HOME: ``siammae-export`` (which verifies with onnxruntime) and ``siammae-track
--encoder x.onnx`` leave the home folder as they found it. Unset, onnxruntime's telemetry writes
``$HOME/.cache/Microsoft/DeveloperTools/.onnxruntime/deviceid`` and ``onnxruntime.db`` (siammae/export/runtime.py,
``import_onnxruntime``)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import noise_frames
from PIL import Image

from siammae.model.checkpoint import save_checkpoint
from siammae.model.registry import create_model

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[2]


def _run(module: str, *args, home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}  # as a user's shell has it
    env |= {"HOME": str(home), "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(home / ".cache")}
    cmd = [sys.executable, "-m", module, *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_export_and_track_on_onnx_leave_home_untouched(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", create_model("tiny"))
    frames = noise_frames(tmp_path / "frames", 3, 64, 64)
    ids = np.zeros((64, 64), np.uint8)
    ids[16:40, 16:40] = 1
    Image.fromarray(ids).save(tmp_path / "mask.png")
    onnx = tmp_path / "tiny.onnx"
    _run(
        "siammae.cli.export", "--ckpt", ckpt, "--out", onnx, "--height", "64", "--width", "64", home=home
    )  # verifies on onnxruntime
    _run("siammae.cli.track", frames, "--mask", tmp_path / "mask.png", "--encoder", onnx, "--size", "64",
         "--device", "cpu", "-q", "--out", tmp_path / "masks", home=home)  # fmt: skip
    assert len(list((tmp_path / "masks").glob("*.png"))) == 3
    assert [str(p.relative_to(home)) for p in home.rglob("*")] == []
