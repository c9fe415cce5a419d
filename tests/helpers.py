"""Helpers shared by several test files: ``from helpers import ...`` (pyproject's ``pythonpath = ["tests"]`` puts
tests/ on sys.path for the test files in its subfolders). No test module imports another test module.
"""

import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path

import av
import numpy as np
import torch

import siammae.data.video as video_module
from siammae.model.config import ModelConfig
from siammae.model.encoder import ViTEncoder

ROOT = Path(__file__).resolve().parents[1]  # the repository (tests/helpers.py)
TENSORRT_INSTALLED = importlib.util.find_spec("tensorrt") is not None


def write_with_pyav(path, frames, fps=25, **options) -> None:
    """Encode (H, W, 3) uint8 ``frames`` to h264 with PyAV directly: container options such as mp4 faststart, or
    an mkv, whose header holds no frame count (``write_video`` writes mp4 with one)."""
    with av.open(str(path), "w", options=options) as c:
        s = c.add_stream("libx264", rate=fps)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def interrupt_reading_at(monkeypatch, stem: str) -> None:
    """Make frame-folder decoding raise KeyboardInterrupt, as Ctrl-C would, when it reaches the image ``stem``."""
    read_image = video_module.read_image

    def interrupted(path):
        if path.stem == stem:
            raise KeyboardInterrupt
        return read_image(path)

    monkeypatch.setattr(video_module, "read_image", interrupted)


def run_until_sigint(cmd, progress, at: int = 10, timeout: float = 120) -> tuple[int, str]:
    """Run ``cmd`` (str / Path items) with this checkout on PYTHONPATH, send SIGINT once ``progress()`` (e.g. the
    frames written so far) reaches ``at``, in the middle of the run; return its exit status and stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(c) for c in cmd], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while progress() < at:
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def assert_one_line_error(result, *fragments) -> None:
    """A click ``result`` that failed as siammae CLIs do on bad input: status 2, no traceback, and a last line
    ``error: ...`` holding every fragment."""
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)  # not a traceback
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def davis_2016_layout(shared_data: Path, root: Path, names) -> Path:
    """A DAVIS-2016 root whose val split is ``names``, frames and annotations linked from ../shared/data."""
    for part in ("JPEGImages", "Annotations"):
        (root / part).mkdir(parents=True)
        (root / part / "480p").symlink_to(shared_data / "davis2016" / part / "480p")
    (root / "ImageSets/2016").mkdir(parents=True)
    (root / "ImageSets/2016/val.txt").write_text("\n".join(names) + "\n")
    return root


def colour_encoder(patch: int = 4, dim: int = 16) -> ViTEncoder:
    """A ViT whose features are the mean colour of each patch: the patch embedding averages each channel (and its
    negative, so that the final LayerNorm only rescales), position embeddings and every residual branch are zero.
    Cosine similarity is then colour similarity, which tells the synthetic clips' warm objects from their cool
    background: a known-good encoder for checking the plumbing."""
    enc = ViTEncoder(
        ModelConfig(img_size=32, patch_size=patch, embed_dim=dim, depth=1, num_heads=2, pos_embed="learned")
    )
    with torch.no_grad():
        w = torch.zeros(dim, 3, patch, patch)
        for c in range(3):
            w[c, c] = 1.0 / patch**2
            w[3 + c, c] = -1.0 / patch**2
        enc.patch_embed.proj.weight.copy_(w)
        enc.patch_embed.proj.bias.zero_()
        enc.pos_embed.zero_()
        for blk in enc.blocks:
            for lin in (blk.attn.proj, blk.mlp.fc2):
                lin.weight.zero_()
                lin.bias.zero_()
    return enc.eval()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0
