"""Propagation against encoding in the report of a real run: ``siammae-track`` on whole DAVIS-2016 sequences at the
presets' own 480p sizes with a ViT-S/16, the report's stage times (busy seconds in the main thread).

The encoder is a random ViT-S/16 (seed 0) saved to a file, so the run needs no download; its weights change no time.
Each case is one ``siammae-track VIDEO --mask FIRST.png --ckpt vits16.pth --preset P --report R`` in a fresh process
at the default settings (PyTorch's thread count, chunks of 8), and ``propagate / encode`` is the ratio of the two
stages of that report: both ran in the same process, one after the other per chunk.

    python benchmarks/bench_track_stages.py                       # blackswan, car-shadow, soapbox; siammae-davis, dino
    python benchmarks/bench_track_stages.py --sequences blackswan --presets siammae-davis
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._meta import environment, environment_markdown, random_vits16, write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "davis2016"


def run_case(sequence: str, preset: str, ckpt: Path, work: Path, data: Path) -> dict:
    out, report = work / f"{preset}-{sequence}", work / f"{preset}-{sequence}.json"
    cmd = [
        "siammae-track", str(data / "JPEGImages" / "480p" / sequence),
        "--mask", str(data / "Annotations" / "480p" / sequence / "00000.png"),
        "--ckpt", str(ckpt), "--preset", preset, "--out", str(out), "--report", str(report), "--quiet",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    r = json.loads(report.read_text())
    stages = r["time"]["stages"]
    encode, propagate = stages["encode"]["seconds"], stages["propagate"]["seconds"]
    return {
        "sequence": sequence,
        "preset": preset,
        "frames": r["frames"],
        "encode_s": encode,
        "propagate_s": propagate,
        "propagate_over_encode": round(propagate / encode, 3),
        "total_s": r["time"]["total_seconds"],
    }


def markdown(rows, meta, args) -> str:
    lines = [
        "# Propagation against encoding in `siammae-track`'s report (CPU)",
        "",
        environment_markdown(meta),
        "",
        "`siammae-track` on whole DAVIS-2016 sequences at each preset's 480p size, a random ViT-S/16 file, default "
        f"settings ({args.threads or torch.get_num_threads()} threads, chunks of 8); stage seconds from the run's "
        "report. Made by `python benchmarks/bench_track_stages.py`.",
        "",
        "| sequence | preset | frames | encode s | propagate s | propagate / encode | total s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sequence']} | `{r['preset']}` | {r['frames']} | {r['encode_s']:.1f} | {r['propagate_s']:.1f} | "
            f"{r['propagate_over_encode']:.3f} | {r['total_s']:.1f} |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sequences", default="blackswan,car-shadow,soapbox")
    ap.add_argument("--presets", default="siammae-davis,dino")
    ap.add_argument("--data", type=Path, default=DATA, help="a DAVIS-2016 root (JPEGImages/480p, Annotations/480p)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the runs (default: as set)")
    ap.add_argument("--name", default="bench_track_stages-cpu")
    args = ap.parse_args()
    if not (args.data / "JPEGImages" / "480p").is_dir():
        sys.exit(f"error: {args.data}: no JPEGImages/480p (a DAVIS-2016 root is needed)")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = random_vits16(work / "vits16.pth")
        for sequence in args.sequences.split(","):
            for preset in args.presets.split(","):
                row = run_case(sequence, preset, ckpt, work, args.data)
                print(row, flush=True)
                rows.append(row)
    meta = environment()
    write_results(args.name, meta, rows, markdown(rows, meta, args), settings=vars(args) | {"data": str(args.data)})


if __name__ == "__main__":
    main()
