"""Test videos for the benchmarks, made on the spot: a folder of JPEG frames and a first-frame mask.

No PyAV is needed (a GPU image may lack it) and nothing is downloaded: frames come from
``siammae.data.synthetic`` (textured objects on a textured background, deterministic), written with PIL.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from siammae.data.masks import write_mask
from siammae.data.synthetic import iter_synthetic_clip

ROOT = Path(__file__).resolve().parents[2]


def frame_folder(folder: Path, frames: int, height: int = 480, width: int = 854, objects: int = 2) -> Path:
    """``folder/frames/00000.jpg ...`` (``frames`` RGB JPEGs, quality 90) and ``folder/mask.png`` (frame 0's ids);
    returns ``folder``. A DAVIS 480p frame is 854x480."""
    (folder / "frames").mkdir(parents=True, exist_ok=True)
    for t, (frame, mask) in enumerate(iter_synthetic_clip(frames, (height, width), seed=0, num_objects=objects)):
        Image.fromarray(frame).save(folder / "frames" / f"{t:05d}.jpg", quality=90)
        if t == 0:
            write_mask(folder / "mask.png", mask)
    return folder


def run_track(clip: Path, out: Path, *args: str, timeout: float | None = None) -> dict:
    """``python -m siammae.cli.track <clip>/frames --mask <clip>/mask.png --report ... <args>`` in its own
    process (so its peak memory is its own); returns its JSON report plus ``process_wall_seconds``."""
    import json
    import os

    report = out / "report.json"
    cmd = [sys.executable, "-m", "siammae.cli.track", str(clip / "frames"), "--mask", str(clip / "mask.png"),
           "--out", str(out / "masks"), "--report", str(report), "--quiet", "--overwrite", *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"siammae-track {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    result = json.loads(report.read_text())
    result["process_wall_seconds"] = round(time.perf_counter() - t0, 2)
    return result
