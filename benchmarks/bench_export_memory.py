"""Peak memory of the ONNX export and of tracking with the exported encoder, against tracking in PyTorch.

Cases, each its own process so that each peak is its own (peak resident set, ``ru_maxrss`` / ``VmHWM``):

    export  plain | fused   siammae-export's work: export_onnx(..., verify=True) of the encoder at the tracking size
    track   pytorch         siammae-track --ckpt on a 480p frame folder (PyTorch, fused SDPA)
    track   plain | fused   siammae-track --encoder model.onnx (onnxruntime, CPU provider unless CUDA is present)

``plain`` is attention as MatMul + Softmax + MatMul (what every export was before; onnxruntime materialises each
(tokens x tokens) matrix of the batch), ``fused`` is ``com.microsoft.MultiHeadAttention`` (flash attention, see
``siammae/export/attention.py``). The target: ONNX tracking within 1.5x of PyTorch's peak and no slower.

    python benchmarks/bench_export_memory.py                    # tiny model, 480p, 9 frames, chunk 8
    python benchmarks/bench_export_memory.py --arch vits16 --frames 8

Results go to benchmarks/results/bench_export_memory-<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._meta import RESULTS, environment, environment_markdown, write_results  # noqa: E402
from benchmarks.gpu.clips import frame_folder, run_track  # noqa: E402


def export_worker(ckpt: str, out: str, attention: str, height: int, width: int, max_batch: int) -> None:
    """Export with verification in this process; print its peak resident set and time as JSON."""
    from siammae.export import export_onnx

    t0 = time.perf_counter()
    export_onnx(ckpt, out, height=height, width=width, max_batch=max_batch, attention=attention, verify=True)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_host_mib": round(peak, 1), "seconds": round(seconds, 2)}))


def export_case(ckpt: Path, out: Path, attention: str, height: int, width: int, max_batch: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        str(ckpt),
        str(out),
        attention,
        str(height),
        str(width),
        str(max_batch),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), **_env()})
    if proc.returncode != 0:
        raise SystemExit(f"export ({attention}) failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def markdown(meta: dict, settings: dict, rows: list[dict]) -> str:
    lines = [
        "# Exported encoder: peak memory of export and tracking",
        "",
        environment_markdown(meta),
        "",
        f"Model `{settings['arch']}` (random weights), frames {settings['width']}x{settings['height']} "
        f"({settings['frames']} synthetic JPEGs), encoded at {settings['encoded_at']}, chunk {settings['chunk']}, "
        f"preset {settings['preset']}, device {settings['device']}.",
        "Made by `python benchmarks/bench_export_memory.py`.",
        "",
        "| case | attention | peak host MiB | vs PyTorch tracking | seconds | frames/s |",
        "|---|---|---|---|---|---|",
    ]
    torch_peak = next((r["peak_host_mib"] for r in rows if r["case"] == "track" and r["attention"] == "pytorch"), None)
    for r in rows:
        ratio = f"{r['peak_host_mib'] / torch_peak:.2f}x" if torch_peak and r["case"] == "track" else ""
        fps = f"{r['fps']:.2f}" if r.get("fps") else ""
        lines.append(
            f"| {r['case']} | {r['attention']} | {r['peak_host_mib']:.0f} | {ratio} | {r['seconds']:.1f} | {fps} |"
        )
    lines += [
        "",
        "- Peak host memory is the process's peak resident set, Python and PyTorch included (~0.6 GiB for the "
        "import of a CUDA build of PyTorch alone).",
        "- `plain`: attention as MatMul + Softmax + MatMul; onnxruntime holds every (tokens x tokens) matrix of the "
        "batch (6,241^2 floats = 156 MB per head and frame at 832x480 with patch 8). `fused`: onnxruntime's "
        "`com.microsoft.MultiHeadAttention` (flash attention on CPU and CUDA), the default of `siammae-export`.",
        "- Export time includes the verification against PyTorch (batches 1 and 2).",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="tiny")
    ap.add_argument("--size", type=int, default=480, help="encoder short side (the tracker's --size)")
    ap.add_argument("--frames", type=int, default=9, help="frame 0 and one chunk of 8")
    ap.add_argument("--preset", default="dino", help="propagation constants (dino: the cheapest to propagate)")
    ap.add_argument("--chunk", type=int, default=8, help="frames per encoder batch (= the export's max batch)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        ckpt, out, attention, height, width, max_batch = args.worker
        export_worker(ckpt, out, attention, int(height), int(width), int(max_batch))
        return

    import torch

    from siammae.model.checkpoint import save_checkpoint
    from siammae.model.registry import create_model

    settings = dict(arch=args.arch, size=args.size, frames=args.frames, chunk=args.chunk, device=args.device)
    settings["preset"] = args.preset
    settings.update(height=480, width=854)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_export_memory.") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        ckpt = tmp / f"{args.arch}.pt"
        save_checkpoint(ckpt, create_model(args.arch).encoder)
        clip = frame_folder(tmp / "clip", args.frames)
        common = [
            "--size",
            str(args.size),
            "--chunk",
            str(args.chunk),
            "--device",
            args.device,
            "--preset",
            args.preset,
        ]
        r = run_track(clip, tmp / "track-pytorch", "--ckpt", str(ckpt), *common)
        rows.append(_track_row("pytorch", r))
        H, W = r["processing"]["height"], r["processing"]["width"]  # the size the tracker encodes at
        settings["encoded_at"] = f"{W}x{H}"
        for attention in ("plain", "fused"):
            onnx = tmp / f"{args.arch}_{attention}.onnx"
            e = export_case(ckpt, onnx, attention, H, W, args.chunk)
            rows.append({"case": "export", "attention": attention, **e})
            print(json.dumps(rows[-1]), file=sys.stderr)
            r = run_track(clip, tmp / f"track-{attention}", "--encoder", str(onnx), *common)
            rows.append(_track_row(attention, r))
    meta = environment()
    table = markdown(meta, settings, rows)
    path = write_results(f"bench_export_memory-{args.device}", meta, rows, table, folder=args.out, settings=settings)
    print(table)
    print(f"wrote {path} and {path.with_suffix('.md')}", file=sys.stderr)


def _track_row(attention: str, r: dict) -> dict:
    row = {
        "case": "track",
        "attention": attention,
        "peak_host_mib": r["memory"]["peak_host_mib"],
        "seconds": r["time"]["total_seconds"],
        "fps": r["fps"],
        "stages_fps": {k: v["fps"] for k, v in r["time"]["stages"].items()},
        "process_wall_seconds": r["process_wall_seconds"],
    }
    print(json.dumps(row), file=sys.stderr)
    return row


if __name__ == "__main__":
    main()
