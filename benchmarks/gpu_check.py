"""One command that proves or disproves the GPU half of siammae in under eight minutes (issue #16).

    python benchmarks/gpu_check.py               # on one CUDA GPU: every stage at the real sizes, < 8 min
    python benchmarks/gpu_check.py --quick       # every stage on tiny shapes on the CPU (Triton interpreted): CI
    python benchmarks/gpu_check.py --stages speed,encoder --time-limit 200

Stages (``benchmarks/gpu/``), each in its own process with its own time budget:

    correctness  pytest -m gpu; top-k affinity (30x55, 60x110, D 384; siammae-davis and dino constants; fp32 /
                 fp16 / bf16) and the fused gather (ViT-S/16, ViT-S/8 training shapes; forward and every
                 gradient) against their PyTorch references and an fp64 oracle; run-to-run determinism
    speed        propagation ms/frame: Triton top-k vs DINO's dense algorithm (ratio), TFLOP/s vs the card's peak
    encoder      frames/s at 480x880, ViT-S/16 and ViT-S/8: eager fp32 / bf16 / fp16, torch.compile, batch 1 and
                 the best batch; onnxruntime CUDA and TensorRT when installed
    track        siammae-track frames/s on a 480p frame folder (ViT-S/8, ViT-S/16, bf16) with per-stage rates,
                 and DINO's algorithm on the same video and device (ratio)
    train        ViT-S/16 step, bf16 autocast, fused gather on / off: ms, pairs/s, MFU; loader pairs/s per core

A stage that runs short of time records what it skipped and why; a stage that fails records its error; a stage
past its budget is stopped and keeps what it had. The run always ends with ``gpu_check-<cuda|quick>.json`` and
``.md`` in ``--out`` (default benchmarks/results/), with the GPU, driver, versions and commit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# stage -> (module in benchmarks/gpu, budget in seconds on a GPU, budget with --quick: a safety net on a slow CI
# machine; the dry run needs ~10-30 s of CPU per stage)
STAGES = {
    "correctness": ("correctness", 80, 300),
    "speed": ("speed", 50, 300),
    "encoder": ("encoder", 170, 300),
    "track": ("track", 75, 300),
    "train": ("train", 65, 300),
}
TIME_LIMIT = 450  # seconds for all stages: 8 minutes less start-up, process starts and writing
START_UP = 6  # seconds to start a stage's process (Python, torch, CUDA context) on a GPU machine


# ------------------------------------------------------------------------------------------------ one stage
def run_stage(name: str, budget: float, record: Path, quick: bool) -> None:
    """In the stage's own process: run it, recording as it goes; an exception is recorded, not raised."""
    import importlib

    import torch

    from benchmarks.gpu.stage import Shapes, Stage

    shapes = Shapes.quick_shapes() if quick else Shapes(quick=False, device="cuda")
    st = Stage(name, budget, record, shapes)
    st.save()
    if not quick and not torch.cuda.is_available():
        st.skip(name, "no CUDA device (torch.cuda.is_available() is False); --quick runs on the CPU")
        st.save("skipped")
        return
    module = importlib.import_module(f"benchmarks.gpu.{STAGES[name][0]}")
    try:
        module.run(st)
    except Exception:  # a check harness: a failing stage is a result to record, and the next stage still runs
        st.save("failed", error=traceback.format_exc(limit=8)[-4000:])
        return
    st.save("ok" if not st.failures else "failed")  # failed: some sub-cases raised (listed under "failures")


# ------------------------------------------------------------------------------------------------ the driver
def spawn(name: str, budget: float, record: Path, quick: bool) -> dict:
    """Run a stage in a child process; stop it at its budget (+ a grace period) and return its record."""
    cmd = [sys.executable, __file__, "--stage", name, "--record", str(record), "--budget", str(budget)]
    if quick:
        cmd.append("--quick")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, timeout=budget + 15, stdout=subprocess.PIPE, stderr=None, text=True)
        status = None if proc.returncode == 0 else f"process exited with {proc.returncode}"
    except subprocess.TimeoutExpired:
        status = f"stopped: past its budget of {budget:.0f} s"
    try:
        result = json.loads(record.read_text())
    except (OSError, ValueError):
        result = {"stage": name, "status": "failed", "budget_s": budget, "results": [], "skipped": [], "notes": {},
                  "failures": []}  # fmt: skip
    if status:
        result["status"] = "stopped" if status.startswith("stopped") else "failed"
        result.setdefault("error", status)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes on the CPU, Triton interpreted (CI)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {', '.join(STAGES)}")
    ap.add_argument("--time-limit", type=float, default=None, help=f"seconds for all stages (default {TIME_LIMIT})")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports Triton; children inherit it
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the CPU dry run stays on the CPU
    if args.stage:
        run_stage(args.stage, args.budget, args.record, args.quick)
        return 0

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        print(f"error: unknown stage(s) {', '.join(unknown)}; valid: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    if args.time_limit is not None and args.time_limit <= 0:
        print(f"error: --time-limit must be positive, got {args.time_limit}", file=sys.stderr)
        return 2
    from benchmarks._meta import RESULTS, environment, write_results
    from benchmarks.gpu.report import driver_version, markdown

    out = args.out or RESULTS
    column = 2 if args.quick else 1
    planned = sum(STAGES[s][column] for s in stages)
    limit = args.time_limit or (planned if args.quick else TIME_LIMIT)  # quick: budgets are only a safety net
    scale = min(1.0, limit / planned)  # a shorter --time-limit shrinks every budget alike
    meta = environment()
    meta["nvidia_driver"] = driver_version()
    name = "gpu_check-quick" if args.quick else "gpu_check-cuda"
    t0 = time.perf_counter()
    results = {}
    record_dir = out / f".{name}.stages"
    record_dir.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        left = limit - (time.perf_counter() - t0)
        budget = min(STAGES[stage][column] * scale, left)
        if budget < 5:
            reason = f"out of time: {left:.0f} s left of {limit:.0f}"
            results[stage] = {"stage": stage, "status": "skipped", "budget_s": 0, "results": [], "notes": {},
                              "failures": [], "skipped": [{"what": stage, "reason": reason}]}  # fmt: skip
            print(f"[{stage}] skipped: out of time", file=sys.stderr)
            continue
        print(f"[{stage}] budget {budget:.0f} s", file=sys.stderr, flush=True)
        results[stage] = spawn(stage, budget, record_dir / f"{stage}.json", args.quick)
        print(f"[{stage}] {results[stage]['status']} in {results[stage]['wall_s']} s", file=sys.stderr, flush=True)
        _write(name, meta, results, stages, limit, t0, out, write_results, markdown)
    path = _write(name, meta, results, stages, limit, t0, out, write_results, markdown)
    for f in record_dir.glob("*.json"):
        f.unlink()
    record_dir.rmdir()
    print(f"wrote {path} and {path.with_suffix('.md')}", file=sys.stderr)
    return 0


def _write(name, meta, results, stages, limit, t0, out, write_results, markdown) -> Path:
    total = round(time.perf_counter() - t0, 1)
    settings = {
        "stages": stages,
        "time_limit_s": limit,
        "total_s": total,
        "budgets_s": {s: STAGES[s][1] for s in STAGES},
    }
    rows = [results[s] for s in stages if s in results]
    return write_results(name, meta, rows, markdown(meta, settings, rows), folder=out, settings=settings)


if __name__ == "__main__":
    sys.exit(main())
