"""CPU modes on trained features: how far each faster mode moves the features and the masks, and how much faster it is.

For a checkpoint (the shipped ``siammae-cpu`` by default) and whole DAVIS sequences, each mode runs the same
preset and size through the tracking driver; the reference is the preset's default (fp32, its attention):

- ``--attention exact``: DINO's operation order instead of the fused attention;
- ``--dtype bf16``: autocast to bfloat16 (fast only with native bf16: AVX-512 BF16 / AMX);
- ``--dtype int8``: the linear layers quantised to int8 on the fly (dynamic quantisation: weights int8, activations
  quantised per batch), the rest fp32.

Per mode: the cosine between its patch features and the reference's (mean over every patch of every frame, and the
worst frame's mean), the share of mask pixels equal to the reference's (all frames, and the worst frame), and the
encoder's and the whole run's seconds per frame. Writes ``<out>.md`` and ``<out>.json``.

    python benchmarks/cpu_modes.py --ckpt siammae-cpu --davis ../shared/data/davis2016 \
        --sequences blackswan,car-shadow,soapbox --size 240x440 --out benchmarks/results/cpu_modes-siammae-cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

MODES = {
    "fp32 (default)": {},
    "attention exact": {"attention": "exact"},
    "bf16": {"dtype": "bf16"},
    "int8": {"dtype": "int8"},
}


class Recorder:
    """Wraps a FrameEncoder: keeps every feature map it returns and the time it took."""

    def __init__(self, encoder):
        self.encoder, self.features, self.seconds = encoder, [], 0.0

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def __call__(self, frames):
        t = time.perf_counter()
        out = self.encoder(frames)
        self.seconds += time.perf_counter() - t
        self.features.extend(out.detach().float().cpu())
        return out


def run_mode(model, preset_name: str, size: str, mode: dict, frames: list[Path], first: np.ndarray):
    from siammae.propagation.config import get_preset
    from siammae.propagation.driver import Tracker

    preset = get_preset(preset_name, size=size)
    if "attention" in mode:
        preset = preset.replace(attention=mode["attention"])
    tracker = Tracker(model, preset, device="cpu", dtype=mode.get("dtype", "fp32"), prefetch=False)
    rec = Recorder(tracker.encoder)
    tracker.encoder = rec
    t = time.perf_counter()
    masks = [m for _, m in tracker.masks(frames, first)]
    return masks, rec.features, rec.seconds, time.perf_counter() - t


def compare(ref, got) -> dict:
    masks_r, feats_r = ref
    masks_g, feats_g = got
    eq = [float((a == b).mean()) for a, b in zip(masks_r[1:], masks_g[1:], strict=True)]
    cos = [
        float(torch.nn.functional.cosine_similarity(a.flatten(0, 1), b.flatten(0, 1), dim=-1).mean())
        for a, b in zip(feats_r, feats_g, strict=True)
    ]
    return {"pixels_equal": float(np.mean(eq)), "worst_frame": min(eq), "cosine": float(np.mean(cos)),
            "worst_cosine": min(cos), "frames": len(eq)}  # fmt: skip


def main(argv=None):
    from PIL import Image

    from siammae.model.checkpoint import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="siammae-cpu")
    ap.add_argument("--davis", required=True, type=Path)
    ap.add_argument("--sequences", default="blackswan,car-shadow,soapbox")
    ap.add_argument("--preset", default="siammae-davis")
    ap.add_argument("--size", default="240x440")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.ckpt)
    modes = args.modes.split(",")
    table: dict = {m: {"runs": []} for m in modes}
    for seq in args.sequences.split(","):
        frames = sorted((args.davis / "JPEGImages/480p" / seq).glob("*.jpg"))
        first = (np.array(Image.open(args.davis / "Annotations/480p" / seq / f"{frames[0].stem}.png")) > 0).astype(
            np.uint8
        )
        ref = None
        for m in modes:
            masks, feats, enc_s, total_s = run_mode(model, args.preset, args.size, MODES[m], frames, first)
            row = {"sequence": seq, "encode_s_per_frame": enc_s / len(frames), "s_per_frame": total_s / len(frames)}
            if ref is None:
                ref = (masks, feats)
            row.update(compare(ref, (masks, feats)))
            table[m]["runs"].append(row)
            print(m, row, flush=True)
    doc = {
        "ckpt": args.ckpt,
        "preset": args.preset,
        "size": args.size,
        "modes": table,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
        "threads",
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__},
        "command": "python " + " ".join(sys.argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [
        f"# CPU modes of {args.ckpt} on trained features: {args.sequences} (whole), {args.preset}, {args.size}",
        "",
        f"Command: `{doc['command']}`. Machine: {doc['machine']}; torch {torch.__version__}.",
        "",
        "| mode | mask pixels equal | worst frame | feature cosine | worst frame cosine | encode s/frame | s/frame |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m, v in table.items():
        r = v["runs"]
        frames = sum(x["frames"] for x in r)
        eq = sum(x["pixels_equal"] * x["frames"] for x in r) / frames
        lines.append(
            f"| {m} | {100 * eq:.3f} % | {100 * min(x['worst_frame'] for x in r):.3f} % | "
            f"{np.mean([x['cosine'] for x in r]):.6f} | {min(x['worst_cosine'] for x in r):.6f} | "
            f"{np.mean([x['encode_s_per_frame'] for x in r]):.3f} | {np.mean([x['s_per_frame'] for x in r]):.3f} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
