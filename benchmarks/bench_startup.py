"""Start-up of a small tracking run: how long ``siammae-track`` takes before it tracks, stage by stage.

The run: ``siammae-track FRAMES --mask MASK --size 128 --quiet`` on the first 3 frames of the fixture sequence
(tests/fixtures/davis2016) with its one-object mask, two ways: ``--ckpt vits16.pth`` (a random ViT-S/16 saved by
``torch.save``, a local file: no download) and no ``--ckpt`` on a machine without the default weights (an empty torch
cache and ``SIAMMAE_OFFLINE=1``: the shipped ``siammae-cpu`` stands in, README "Tracking"). Each run is a fresh
process; two kinds, interleaved round by round so that a busy machine slows them alike:

- plain: wall time of ``python -m siammae.cli.track ...``, start to exit;
- timed: the same command in a process that records when it starts (against the parent's clock), the time spent in
  imports (outermost ``import`` statements and ``importlib.import_module`` calls, wherever they happen) and the
  interval of ``siammae.model.checkpoint.load_model`` (building the model and loading its weights). Stages:
  interpreter (process start to the first line), imports, model (``load_model`` less its imports), checks and set-up
  (the rest before the model), tracking (the 3 frames after the model, less imports), and "ready" = process start to
  the model loaded.

``--tree LABEL=PATH`` adds the same runs on another checkout (e.g. the commit before this change, for before /
after: ``git archive 45163d5 | tar -x -C /tmp/before``).

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/bench_startup.py --repeats 5 [--tree "45163d5 (before)=/tmp/before"]

Results: benchmarks/results/bench_startup-cpu.{json,md}. Target (issue 30): interpreter + imports + model ready
under 2 s on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "davis2016"
STAGES = ("interpreter", "imports", "checks", "model", "ready", "tracking", "exit", "wall")


# ------------------------------------------------------------------------------------------------ the child
def _child(spawned: float, argv: list[str]) -> None:
    """Run ``siammae-track argv`` here, timing imports and the model load; print the stages as JSON last."""
    first = time.time()
    import builtins
    import importlib

    spent = {"imports": 0.0}
    depth = [0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            if depth[0]:
                return fn(*args, **kwargs)
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent["imports"] += time.perf_counter() - t0
                depth[0] -= 1

        return wrapper

    builtins.__import__ = timed(builtins.__import__)
    importlib.import_module = timed(importlib.import_module)
    marks = {}
    t_main = time.perf_counter()
    imports_at = {}

    import siammae.model.checkpoint as checkpoint  # imports are timed wherever they happen, so this moves none

    load_model = checkpoint.load_model

    def load_timed(*args, **kwargs):
        imports_at["load_start"] = spent["imports"]
        marks["load_start"] = time.perf_counter()
        model = load_model(*args, **kwargs)
        marks["load_end"] = time.perf_counter()
        imports_at["load_end"] = spent["imports"]
        return model

    checkpoint.load_model = load_timed
    from siammae.cli.track import main

    try:
        main(argv, standalone_mode=False)
    finally:
        end = time.perf_counter()
    first_line = first - spawned
    before_model = marks["load_start"] - t_main
    model_imports = imports_at["load_end"] - imports_at["load_start"]
    result = {
        "interpreter": first_line,
        "imports": spent["imports"],
        "checks": before_model - imports_at["load_start"],
        "model": marks["load_end"] - marks["load_start"] - model_imports,
        "ready": first_line + marks["load_end"] - t_main,
        "tracking": end - marks["load_end"] - (spent["imports"] - imports_at["load_end"]),
    }
    print("STAGES " + json.dumps(result))


# ----------------------------------------------------------------------------------------------- the parent
def make_inputs(folder: Path, frames: int) -> dict[str, Path]:
    """``frames`` frames and the first mask of the fixture sequence, and a random ViT-S/16 saved by torch.save."""
    from benchmarks._meta import random_vits16

    seq = sorted((FIXTURE / "JPEGImages" / "480p").iterdir())[0]
    out = folder / "frames"
    out.mkdir()
    for f in sorted(seq.glob("*.jpg"))[:frames]:
        shutil.copy(f, out / f.name)
    mask = folder / "mask.png"
    shutil.copy(FIXTURE / "Annotations" / "480p" / seq.name / "00000.png", mask)
    ckpt = random_vits16(folder / "vits16.pth")
    (folder / "torch-home").mkdir()
    return {"frames": out, "mask": mask, "ckpt": ckpt, "torch_home": folder / "torch-home"}


def cases(inputs: dict[str, Path], size: int, folder: Path) -> dict[str, tuple[list[str], dict]]:
    """name -> (track arguments, extra environment)."""
    common = [str(inputs["frames"]), "--mask", str(inputs["mask"]), "--size", str(size), "--quiet", "--overwrite"]
    common += ["--out", str(folder / "out")]
    offline = {"TORCH_HOME": str(inputs["torch_home"]), "SIAMMAE_OFFLINE": "1"}
    return {
        "--ckpt vits16.pth (ViT-S/16, local file)": (common + ["--ckpt", str(inputs["ckpt"])], {}),
        "no --ckpt, default weights absent (shipped siammae-cpu)": (common, offline),
    }


def run_plain(tree: Path, args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "siammae.cli.track", *args], env=env, cwd=tree, check=True,
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - t0


def run_timed(tree: Path, args: list[str], env: dict) -> dict:
    spawned = time.time()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", repr(spawned), *args]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=tree, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t0
    line = next(s for s in out.splitlines() if s.startswith("STAGES "))
    stages = json.loads(line.removeprefix("STAGES "))
    parts = ("interpreter", "imports", "checks", "model", "tracking")
    return {**stages, "exit": wall - sum(stages[k] for k in parts), "wall": wall}  # exit: the report, teardown


def measure(trees: dict[str, Path], runs: dict, repeats: int) -> list[dict]:
    samples = {(t, c): {"plain": [], "timed": []} for t in trees for c in runs}
    for _ in range(repeats):
        for tree_name, tree in trees.items():
            for case, (args, extra) in runs.items():
                env = {**os.environ, "PYTHONPATH": str(tree), **extra}
                samples[tree_name, case]["plain"].append(run_plain(tree, args, env))
                samples[tree_name, case]["timed"].append(run_timed(tree, args, env))
    rows = []
    for (tree_name, case), s in samples.items():
        row = {"tree": tree_name, "case": case, "wall_plain_s": round(statistics.median(s["plain"]), 3)}
        for stage in STAGES:
            row[f"{stage}_s"] = round(statistics.median(t[stage] for t in s["timed"]), 3)
        row["ready_min_s"] = round(min(t["ready"] for t in s["timed"]), 3)  # noise only adds: the least-disturbed run
        row["wall_plain_min_s"] = round(min(s["plain"]), 3)
        row["wall_plain_all_s"] = [round(x, 3) for x in s["plain"]]
        row["ready_all_s"] = [round(t["ready"], 3) for t in s["timed"]]
        rows.append(row)
    return rows


def markdown(rows: list[dict], meta: dict, repeats: int, frames: int, size: int, python_s: float, load) -> str:
    from benchmarks._meta import environment_markdown

    lines = [
        "# Start-up of a small `siammae-track` run (CPU)",
        "",
        environment_markdown(meta),
        f"- load average before / after the runs: {load[0]} / {load[1]} (the machine is shared: other processes ran)",
        "",
        f"`siammae-track FRAMES --mask MASK --size {size} --quiet`, {frames} frames of the fixture sequence, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, niceness {os.nice(0)}; median of {repeats} "
        "fresh processes per row "
        f"(plain and timed runs interleaved); `python -c pass` takes {python_s:.3f} s. Seconds. ready = process start "
        "to the model loaded (interpreter + imports so far + checks + model); imports = all imports of the run, "
        "wherever they happen; tracking = the frames after the model, less imports; exit = the rest of the wall time "
        "(the run's end: report, threads joined, interpreter teardown). min: the least-disturbed of the runs (load "
        "only adds time), beside the median.",
        "",
        "| tree | case | interpreter | imports | checks | model | **ready** | ready min | tracking | exit "
        "| wall (timed) | wall (plain) | wall (plain) min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tree']} | {r['case']} | {r['interpreter_s']:.3f} | {r['imports_s']:.3f} | {r['checks_s']:.3f} | "
            f"{r['model_s']:.3f} | **{r['ready_s']:.3f}** | {r['ready_min_s']:.3f} | {r['tracking_s']:.3f} | "
            f"{r['exit_s']:.3f} | {r['wall_s']:.3f} | {r['wall_plain_s']:.3f} | {r['wall_plain_min_s']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return _child(float(sys.argv[2]), sys.argv[3:])
    sys.path.insert(0, str(ROOT))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="fresh processes per row and kind (median)")
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--size", type=int, default=128, help="short side of the processed frames")
    ap.add_argument("--tree", action="append", default=[], help="LABEL=PATH: another checkout to measure alike")
    ap.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    args = ap.parse_args()
    from benchmarks._meta import environment, write_results

    trees = {"this checkout": ROOT}
    for spec in args.tree:
        label, _, path = spec.rpartition("=")
        trees[label or path] = Path(path).resolve()
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        inputs = make_inputs(folder, args.frames)
        python_s = statistics.median(run_python() for _ in range(args.repeats))
        rows = measure(trees, cases(inputs, args.size, folder), args.repeats)
    load = (load_before, [round(x, 2) for x in os.getloadavg()])
    meta = environment()
    md = markdown(rows, meta, args.repeats, args.frames, args.size, python_s, load)
    print(md)
    if not args.no_write:
        settings = {"frames": args.frames, "size": args.size, "repeats": args.repeats, "python_start_s": python_s,
                    "load_average_before_after": load, "niceness": os.nice(0), "target_ready_s": 2.0}  # fmt: skip
        write_results("bench_startup-cpu", meta, rows, md, settings=settings)


def run_python() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
