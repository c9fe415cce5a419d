"""Training-pair loading rate per CPU core: h264 (PyAV, torchcodec), JPEG frame folders, the prepared format.

One sample is what a DataLoader worker makes for one video of a batch: ``repeat`` = 2 pairs with a gap in 4..48,
the same random-resized crop (scale 0.5-1) and flip on both frames of a pair, 224 x 224 (the paper's recipe and the
training defaults). Each path runs in this process on one thread, and the rate is counted in CPU seconds
(``time.process_time``: all threads of the process) as well as wall time, because the machine may be shared.

Paths, all on the same data (made once from the clips in ../shared/data, cached):

    h264/pyav             Kinetics-like clips: 10 s, 25 fps, 480p, libx264 with its default key-frame interval
    h264/torchcodec       the same files through torchcodec (when it loads)
    jpeg-folders          the same frames as 480p JPEG files (quality 90), one folder per clip
    jpeg-folders/float-resize
                          the same, with the crop resize of the loader before the prepared format (through float:
                          8x slower than PyTorch's uint8 path that every path now uses); the README's old baseline
    prepared/cpu-decode   siammae-prepare output (short side 256, quality 90), decoded in the worker
    prepared/device-decode-cpu-side
                          the worker part of decode="device": index look-up, two preads, random draws, collate;
                          the JPEG decode, crop and resize are on the GPU and not counted (no GPU needed)
    prepared/gpu-decode   the whole device path on CUDA (only with a GPU): wall time per pair

The demand side: a ViT-S/16 SiamMAE step is about 56 GFLOP per pair (forward + backward), so one H200 at 40 % of
its bf16 peak (790 TFLOP/s, the issue's figure) consumes about 0.4 * 790e12 / 56e9 = 5,600 pairs/s; the issue's
goal rounds this to 5,000, which is used here. ``cores needed`` = 5,000 / (pairs per CPU second).

    python benchmarks/bench_loader.py                  # data in /tmp/siammae_bench_loader (made on first run)
    python benchmarks/bench_loader.py --cpu-seconds 20 # CPU time spent per path

Results: benchmarks/results/bench_loader-<cpu|cuda>.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._meta import environment, environment_markdown, write_results  # noqa: E402
from siammae.data.shards import PreparedFrames  # noqa: E402
from siammae.data.video import open_video  # noqa: E402
from siammae.data.video_decoders import torchcodec_available  # noqa: E402
from siammae.train import data as train_data  # noqa: E402
from siammae.train.data import PairDataset, SampleKey, collate  # noqa: E402
from siammae.train.prepare import PrepareSettings, prepare  # noqa: E402
from siammae.train.prepared_data import PreparedPairDataset, collate_jpeg, decode_views  # noqa: E402

SOURCES = ("cutie/example.mp4", "sam2/01_dog.mp4", "sam2/bedroom.mp4")
TARGET_PAIRS_PER_S = 5000  # one H200 at 40 % of bf16 peak, ViT-S/16 SiamMAE (see the docstring)
FLOP_PER_PAIR, PEAK_FLOPS, MFU = 56e9, 790e12, 0.4
SIZE, GAP, REPEAT = 224, (4, 48), 2


# ------------------------------------------------------------------------------------------------------- data
def _source_frames(path: Path, limit: int = 150) -> list[np.ndarray]:
    """The first ``limit`` frames of a clip at a 480 short side (even sides, as yuv420p needs)."""
    out = []
    for f in open_video(path):
        im = Image.fromarray(f.rgb)
        s = 480 / min(im.size)
        out.append(np.asarray(im.resize((round(im.size[0] * s) // 2 * 2, round(im.size[1] * s) // 2 * 2))))
        if len(out) == limit:
            break
    return out


def make_data(shared: Path, root: Path, clips: int, seconds: float, fps: int = 25) -> dict:
    """``clips`` videos of ``seconds`` each (ping-pong loops of the shared clips from varied offsets) as h264 and as
    JPEG folders, and their prepared set; cached in ``root``."""
    import av

    done = root / "done"
    paths = {"videos": root / "videos", "folders": root / "folders", "prepared": root / "prepared"}
    if done.exists():
        return {k: v for k, v in paths.items()} | {"prepare_cpu_s": float(done.read_text())}
    n = int(seconds * fps)
    for s, name in enumerate(SOURCES):
        frames = _source_frames(shared / name)
        loop = frames + frames[-2:0:-1]  # ping-pong: no jump cut
        for j in range(s, clips, len(SOURCES)):
            start = (j * 37) % len(loop)
            clip = [loop[(start + t) % len(loop)] for t in range(n)]
            video = paths["videos"] / f"clip{j:03d}.mp4"
            video.parent.mkdir(parents=True, exist_ok=True)
            with av.open(str(video), "w") as c:
                st = c.add_stream("libx264", rate=fps)
                st.width, st.height, st.pix_fmt = clip[0].shape[1], clip[0].shape[0], "yuv420p"
                st.options = {"crf": "23", "preset": "veryfast"}  # x264's default key-frame interval (250)
                for rgb in clip:
                    c.mux(st.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
                c.mux(st.encode())
            folder = paths["folders"] / f"clip{j:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for t, rgb in enumerate(open_video(video)):
                Image.fromarray(rgb.rgb).save(folder / f"{t:05d}.jpg", quality=90)
        print(f"made clips from {name}", file=sys.stderr)
    t0 = time.process_time()
    prepare([paths["videos"]], paths["prepared"], PrepareSettings(short_side=256, quality=90), workers=1)
    cpu = time.process_time() - t0
    done.write_text(str(cpu))
    return paths | {"prepare_cpu_s": cpu}


@contextlib.contextmanager
def float_crop_resize():
    """The crop resize of the loader before this benchmark's change (through float), for the old baseline."""

    def crop_resize(frames, box, size):
        top, left, h, w = box
        x = torch.stack([torch.from_numpy(f[top : top + h, left : left + w].copy()) for f in frames])  # (T, h, w, 3)
        x = x.permute(0, 3, 1, 2).float()  # (T, 3, h, w)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return x.round_().clamp_(0, 255).to(torch.uint8)

    saved = train_data.crop_resize
    train_data.crop_resize = crop_resize
    try:
        yield
    finally:
        train_data.crop_resize = saved


# ---------------------------------------------------------------------------------------------- measurement
def measure(name: str, sample, num_videos: int, cpu_seconds: float, max_samples: int, batch: int = 1) -> dict:
    """Call ``sample(list of keys)`` on batches of random keys until ``cpu_seconds`` of CPU time are spent."""
    rng = np.random.default_rng(0)
    keys = lambda k: [SampleKey(int(rng.integers(num_videos)), 0, int(rng.integers(1 << 30))) for _ in range(k)]  # noqa: E731
    for _ in range(2):  # warm-up: imports, page cache, decoder set-up
        sample(keys(batch))
    samples, c0, w0 = 0, time.process_time(), time.perf_counter()
    while time.process_time() - c0 < cpu_seconds and samples < max_samples:
        sample(keys(batch))
        samples += batch
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    pairs = samples * REPEAT
    row = {
        "path": name,
        "samples": samples,
        "pairs": pairs,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "cpu_ms_per_pair": round(1e3 * cpu / pairs, 3),
        "pairs_per_cpu_s": round(pairs / cpu, 1),
        "pairs_per_wall_s": round(pairs / wall, 1),
        "cores_for_target": round(TARGET_PAIRS_PER_S * cpu / pairs, 1),
    }
    rate, ms = row["pairs_per_cpu_s"], row["cpu_ms_per_pair"]
    print(f"{name:32s} {rate:9.1f} pairs/CPU-s {ms:8.3f} ms/pair", file=sys.stderr)
    return row


def jpeg_decoders(frames: PreparedFrames, n: int = 200) -> list[dict]:
    """PIL against torchvision.io.decode_jpeg on the prepared frames: CPU ms per frame and the largest difference."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [frames.read(v % len(frames), [0])[0] for v in range(n)]
    out, decoded = [], {}
    for name, fn in (
        ("PIL", lambda d: np.asarray(Image.open(io.BytesIO(d)).convert("RGB"))),
        (
            "torchvision",
            lambda d: (
                decode_jpeg(torch.frombuffer(bytearray(d), dtype=torch.uint8), mode=ImageReadMode.RGB)
                .permute(1, 2, 0)
                .numpy()
            ),
        ),
    ):
        fn(data[0])
        t0 = time.process_time()
        decoded[name] = [fn(d) for d in data]
        out.append({"decoder": name, "cpu_ms_per_frame": round(1e3 * (time.process_time() - t0) / n, 3)})
    pairs = zip(decoded["PIL"], decoded["torchvision"], strict=True)
    diff = max(int(np.abs(a.astype(int) - b).max()) for a, b in pairs)
    for row in out:
        row["max_abs_difference"] = diff
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="the shared clips")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/siammae_bench_loader"))
    ap.add_argument("--clips", type=int, default=18, help="10 s clips to make (18: 3 minutes of video)")
    ap.add_argument("--cpu-seconds", type=float, default=15.0, help="CPU time per path")
    ap.add_argument("--max-samples", type=int, default=20000)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = make_data(args.data, args.cache, args.clips, 10.0)
    videos = sorted(str(p) for p in Path(data["videos"]).glob("*.mp4"))
    folders = sorted(str(p) for p in Path(data["folders"]).iterdir())
    frames = PreparedFrames(data["prepared"])
    n = len(videos)
    common = dict(size=SIZE, seed=0, gap=GAP, repeat=REPEAT)

    def run(dataset, collate_fn=collate):
        return lambda keys: collate_fn([dataset[k] for k in keys])

    rows = []
    os.environ["SIAMMAE_VIDEO_DECODER"] = "pyav"
    rows.append(measure("h264/pyav", run(PairDataset(videos, **common)), n, args.cpu_seconds, args.max_samples))
    if torchcodec_available():
        os.environ["SIAMMAE_VIDEO_DECODER"] = "torchcodec"
        ds = PairDataset(videos, **common)
        rows.append(measure("h264/torchcodec", run(ds), n, args.cpu_seconds, args.max_samples))
    os.environ.pop("SIAMMAE_VIDEO_DECODER")
    rows.append(measure("jpeg-folders", run(PairDataset(folders, **common)), n, args.cpu_seconds, args.max_samples))
    with float_crop_resize():
        ds = PairDataset(folders, **common)
        rows.append(measure("jpeg-folders/float-resize", run(ds), n, args.cpu_seconds, args.max_samples))
    ds = PreparedPairDataset(frames, **common, decode="cpu")
    rows.append(measure("prepared/cpu-decode", run(ds), n, args.cpu_seconds, args.max_samples))
    ds = PreparedPairDataset(frames, **common, decode="device")
    rows.append(
        measure(
            "prepared/device-decode-cpu-side", run(ds, collate_jpeg), n, args.cpu_seconds, args.max_samples, batch=64
        )
    )
    if torch.cuda.is_available():
        device = torch.device("cuda")
        ds = PreparedPairDataset(frames, **common, decode="device")

        def gpu(keys):
            f1, f2, _ = decode_views(collate_jpeg([ds[k] for k in keys]), SIZE, device)
            torch.cuda.synchronize()

        rows.append(measure("prepared/gpu-decode", gpu, n, args.cpu_seconds, args.max_samples, batch=256))

    by = {r["path"]: r for r in rows}
    folder_rate = by["jpeg-folders"]["pairs_per_cpu_s"]
    for r in rows:
        r["vs_jpeg_folders"] = round(r["pairs_per_cpu_s"] / folder_rate, 2)
    decoders = jpeg_decoders(frames)
    total_frames = frames.index["total_frames"]
    prep = {
        "frames": total_frames,
        "cpu_s": round(data["prepare_cpu_s"], 1),
        "frames_per_cpu_s": round(total_frames / data["prepare_cpu_s"], 1),
        "bytes": sum((Path(data["prepared"]) / s).stat().st_size for s in frames.shards),
    }
    goals = {
        "prepared_cpu_vs_folders": by["prepared/cpu-decode"]["vs_jpeg_folders"],
        "prepared_cpu_goal_5x_met": by["prepared/cpu-decode"]["vs_jpeg_folders"] >= 5,
        "prepared_cpu_vs_old_folders": round(
            by["prepared/cpu-decode"]["pairs_per_cpu_s"] / by["jpeg-folders/float-resize"]["pairs_per_cpu_s"], 2
        ),
        "device_path_pairs_per_s_on_16_cores": round(16 * by["prepared/device-decode-cpu-side"]["pairs_per_cpu_s"]),
        "device_path_goal_met": 16 * by["prepared/device-decode-cpu-side"]["pairs_per_cpu_s"] >= TARGET_PAIRS_PER_S,
    }
    meta = environment()
    meta["torchcodec"] = _torchcodec_version()
    settings = {
        "clips": n,
        "clip_seconds": 10,
        "fps": 25,
        "video_size": "480p (640x480, 854x480, 852x480)",
        "crop": SIZE,
        "gap": list(GAP),
        "repeat": REPEAT,
        "prepared_short_side": 256,
        "target_pairs_per_s": TARGET_PAIRS_PER_S,
        "flop_estimate_pairs_per_s": round(MFU * PEAK_FLOPS / FLOP_PER_PAIR),
    }
    md = _markdown(meta, rows, decoders, prep, goals, settings)
    name = "bench_loader-" + ("cuda" if torch.cuda.is_available() else "cpu")
    path = write_results(name, meta, rows, md, settings=settings, jpeg_decoders=decoders, prepare=prep, goals=goals)
    print(md)
    print(f"written {path}", file=sys.stderr)


def _torchcodec_version():
    if not torchcodec_available():
        return None
    import torchcodec

    return torchcodec.__version__


def _markdown(meta, rows, decoders, prep, goals, settings) -> str:
    lines = [
        "# Training-pair loading rate per CPU core",
        "",
        environment_markdown(meta) + (f"\n- torchcodec {meta['torchcodec']}" if meta["torchcodec"] else ""),
        "",
        f"{settings['clips']} clips x 10 s, 25 fps, 480p h264 (x264 default key-frame interval) made from "
        "../shared/data; pairs at 224 px, gap 4-48, 2 pairs per video, crop scale 0.5-1 (training defaults); one "
        "thread. Rates in pairs per CPU second (`time.process_time`, all threads of the process), so a shared "
        "machine does not distort them; wall-clock rates are in the JSON.",
        "",
        f"Demand: one H200 at 40 % of 790 TFLOP/s bf16, ~56 GFLOP per pair (ViT-S/16, fwd + bwd) -> "
        f"{settings['flop_estimate_pairs_per_s']:,} pairs/s; the goal uses {TARGET_PAIRS_PER_S:,}.",
        "",
        "| path | pairs / CPU s | CPU ms / pair | x frame folders | cores for 5,000 pairs/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['path']} | {r['pairs_per_cpu_s']:,.1f} | {r['cpu_ms_per_pair']:.3f} | {r['vs_jpeg_folders']:.2f} "
            f"| {r['cores_for_target']:,.1f} |"
        )
    lines += [
        "",
        '`prepared/device-decode-cpu-side` is the CPU work of `decode="device"` only (index, two preads, random '
        "draws, collate); nvJPEG decoding, crop and resize run on the GPU and are not in it.",
        "",
        f"Goals: prepared + CPU decode = {goals['prepared_cpu_vs_folders']}x the frame-folder rate per core "
        f"(goal >= 5x: {'met' if goals['prepared_cpu_goal_5x_met'] else 'NOT met'}); "
        f"{goals['prepared_cpu_vs_old_folders']}x the frame-folder rate of the loader before this change; "
        "device path on 16 cores: "
        f"{goals['device_path_pairs_per_s_on_16_cores']:,} pairs/s of CPU-side work (goal 5,000: "
        f"{'met' if goals['device_path_goal_met'] else 'NOT met'}).",
        "",
        "JPEG decoding of the prepared frames (CPU, one thread): "
        + ", ".join(f"{d['decoder']} {d['cpu_ms_per_frame']} ms/frame" for d in decoders)
        + f"; largest pixel difference {decoders[0]['max_abs_difference']}.",
        "",
        f"Preparing: {prep['frames']} frames in {prep['cpu_s']} CPU s ({prep['frames_per_cpu_s']} frames per CPU "
        f"second, one process), {prep['bytes'] / 2**20:.1f} MiB of shards.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
