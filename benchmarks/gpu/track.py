"""Stage 4: end to end. ``siammae-track`` on a 480p frame folder with ViT-S/8 and ViT-S/16 in bf16, with the report's
per-stage rates, and the same video through DINO's algorithm on the same device, as a ratio.

DINO's algorithm (``eval_video_segmentation.py``): frames one at a time, the encoder at batch 1 (same weights, same
precision, same input size as the tracker), then ``label_propagation`` as written (``bench_propagate.DenseDINO``:
the full context x N x N affinity, its cached neighbourhood mask, top-k over the keys) with the ``dino`` preset's
constants (k 5, temperature 0.1, 7 last frames, squares of radius 12 on every frame), bilinear upsampling by the
patch size and an argmax, one PNG per frame. Its frames/s covers decoding, encoding, propagation and writing, as
siammae-track's end-to-end figure does.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def dino_fps(model, clip: Path, out: Path, device: str, dtype: str, size: int) -> dict:
    """Frames/s of DINO's algorithm over ``clip/frames`` (see the module docstring)."""
    from benchmarks.bench_propagate import DenseDINO
    from siammae.data.masks import read_mask
    from siammae.propagation import get_preset
    from siammae.propagation.features import TorchEncoder
    from siammae.propagation.inputs import InputConfig

    cfg = get_preset("dino").propagation
    enc = TorchEncoder(model, device=device, dtype=dtype)
    p = enc.patch_size
    paths = sorted((clip / "frames").glob("*.jpg"))
    out.mkdir(parents=True, exist_ok=True)

    def load(path):  # (1, 3, H', W') in [0, 1] at the encoder size
        x = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        hw = InputConfig(short_side=size).frame_size(x.shape[-2], x.shape[-1], p)  # short side, long floored to p
        return F.interpolate(x, size=hw, mode="bilinear")

    def sync():
        if enc.device.type == "cuda":
            torch.cuda.synchronize(enc.device)

    ids = torch.from_numpy(np.asarray(read_mask(clip / "mask.png"))).long()
    x0 = load(paths[0])
    feat0 = enc(x0)[0]  # (h, w, D)
    h, w = feat0.shape[:2]
    onehot = F.one_hot(ids, int(ids.max()) + 1).permute(2, 0, 1)[None].float()  # (1, C, H, W)
    seg0 = F.interpolate(onehot, size=(h, w), mode="nearest")[0].to(enc.device)  # (C, h, w)
    dense = DenseDINO(feat0, seg0, [], cfg.topk, cfg.temperature, cfg.radius, dino_mask=True, n_last=cfg.n_last)
    dense.step(enc(load(paths[1]))[0])  # warm-up: kernels and the first mask
    sync()
    t0 = time.perf_counter()
    for i, path in enumerate(paths[1:]):
        seg = dense.step(enc(load(path))[0])  # (1, C, h, w)
        seg = F.interpolate(seg, scale_factor=p, mode="bilinear", align_corners=False)
        Image.fromarray(seg[0].argmax(0).to(torch.uint8).cpu().numpy()).save(out / f"{i:05d}.png")
    sync()
    seconds = time.perf_counter() - t0
    return {"frames": len(paths) - 1, "seconds": round(seconds, 3), "fps": round((len(paths) - 1) / seconds, 2),
            "grid": f"{h}x{w}"}  # fmt: skip


def run(st) -> None:
    from benchmarks.gpu.clips import frame_folder, run_track
    from siammae.model.checkpoint import save_checkpoint
    from siammae.model.registry import create_model

    sh = st.shapes
    with tempfile.TemporaryDirectory(prefix="gpu_check_track.") as tmp:
        tmp = Path(tmp)
        clip = frame_folder(tmp / "clip", sh.track_frames, *sh.track_frame_size)
        for name in sh.track_models:
            if not st.fits(f"track {name}", 20 if not sh.quick else 10):
                continue
            with st.case(f"track {name}"):
                torch.manual_seed(0)
                model = create_model(name).encoder.eval()
                ckpt = tmp / f"{name}.pt"
                save_checkpoint(ckpt, model)
                args = ("--ckpt", str(ckpt), "--size", str(sh.track_size), "--device", sh.device,
                        "--dtype", sh.track_dtype, "--chunk", "8")  # fmt: skip
                r = run_track(clip, tmp / f"track-{name}", *args, timeout=max(st.left() - 2, 5))
                row = {"check": "siammae-track", "model": name, "dtype": sh.track_dtype, "frames": r["frames"],
                       "fps": r["fps"], "seconds": r["time"]["total_seconds"],
                       "stages_fps": {k: v["fps"] for k, v in r["time"]["stages"].items()},
                       "stages_seconds": {k: v["seconds"] for k, v in r["time"]["stages"].items()},
                       "peak_host_mib": r["memory"]["peak_host_mib"], "peak_gpu_mib": r["memory"]["peak_gpu_mib"],
                       "encoded_at": f"{r['processing']['width']}x{r['processing']['height']}",
                       "process_wall_seconds": r["process_wall_seconds"]}  # fmt: skip
                if st.fits(f"DINO algorithm {name}", 15 if not sh.quick else 5):
                    d = dino_fps(model, clip, tmp / f"dino-{name}", sh.device, sh.track_dtype, sh.track_size)
                    row["dino"] = d
                    row["speedup_vs_dino"] = round(r["fps"] / d["fps"], 2) if d["fps"] else None
                st.add(row)
            if sh.device == "cuda":
                torch.cuda.empty_cache()
