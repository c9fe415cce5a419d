"""The ``dino`` preset against DINO's own ``eval_video_segmentation.py``: mask pixels that agree, per frame.

The same random ViT-S/16 (DINO's parameter names, seed 0) runs DINO's evaluation loop as written (tests/helpers.py:
``read_frame`` with cv2, one frame at a time through the model, the dense ``label_propagation``, its output rule)
and siammae's :class:`~siammae.propagation.driver.Driver` with the ``dino`` preset, on a real DAVIS sequence.

- ``after``: the driver as it is (cv2 resize of the uint8 frame, as DINO's ``read_frame``).
- ``before``: the driver with the earlier input rule (frames divided by 255, then resized bilinearly in float
  with ``torch.nn.functional.interpolate``), to show what the input convention is worth.

    python benchmarks/dino_agreement.py                       # blackswan, 50 frames, short side 480
    python benchmarks/dino_agreement.py --frames 20 --size 240
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the reference loop is written out once, in the test helpers

from _meta import environment, environment_markdown, write_results  # noqa: E402
from helpers import dino_script  # noqa: E402

from siammae.data.transforms import frames_to_batch  # noqa: E402
from siammae.model.encoder import ViTEncoder  # noqa: E402
from siammae.model.registry import model_config  # noqa: E402
from siammae.propagation.driver import Driver, _frames  # noqa: E402


class FloatResizeDriver(Driver):
    """The input rule before: / 255 first, then bilinear in float (torch), no rounding back to uint8."""

    def inputs_of(self, frames):
        size = None
        for frame in _frames(frames):
            size = size or self.frame_size(*frame.rgb.shape[:2])
            yield frame, frames_to_batch([frame.rgb], size)[0].permute(1, 2, 0).contiguous().numpy()  # (H, W, 3)


def agreement(theirs: list[np.ndarray], ours: list[np.ndarray]) -> np.ndarray:
    return np.array([np.mean(a == (b > 0)) for a, b in zip(theirs, ours, strict=True)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "davis2016")
    ap.add_argument("--sequence", default="blackswan")
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--size", type=int, default=480, help="short side (DINO's scale_size)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    frames = sorted((args.data / "JPEGImages/480p" / args.sequence).glob("*.jpg"))[: args.frames]
    mask = args.data / "Annotations/480p" / args.sequence / "00000.png"
    torch.manual_seed(0)
    model = ViTEncoder(model_config("vits16")).eval()
    t0 = time.perf_counter()
    theirs = dino_script(model, frames, mask, args.size, 16)
    results = {}
    for name, cls in (("after", Driver), ("before", FloatResizeDriver)):
        driver = cls(model, "dino", device="cpu", size=args.size)
        ours = [m for i, m in driver.masks(frames, mask) if i > 0]
        a = agreement(theirs, ours)
        same = int((a == 1).sum())
        results[name] = {"mean": float(a.mean()), "worst_frame": float(a.min()), "frames_identical": same}
        print(f"{name}: {a.mean():.5f} of the pixels agree (worst frame {a.min():.5f}, {same} of "
              f"{len(a)} frames identical)", flush=True)  # fmt: skip
    rows = [{"input": k, **v} for k, v in results.items()]
    meta = environment()
    H = args.size
    md = [
        f"# dino preset vs DINO's eval_video_segmentation.py: DAVIS {args.sequence}, {len(frames)} frames, "
        f"short side {H}, random ViT-S/16 (seed 0), CPU",
        "",
        "| input rule | pixels that agree (mean over frames) | worst frame | frames identical |",
        "|---|---|---|---|",
        *[
            f"| {r['input']} | {100 * r['mean']:.3f} % | {100 * r['worst_frame']:.3f} % | "
            f"{r['frames_identical']} / {len(frames) - 1} |"
            for r in rows
        ],
        "",
        f"after: cv2.resize of the uint8 frame (DINO read_frame); before: float resize (torch). "
        f"{time.perf_counter() - t0:.0f} s.",
        "",
        environment_markdown(meta),
    ]
    write_results(
        "dino_agreement-cpu", meta, rows, "\n".join(md) + "\n", sequence=args.sequence, frames=len(frames), size=H
    )


if __name__ == "__main__":
    main()
