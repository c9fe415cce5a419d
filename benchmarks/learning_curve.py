"""Does pretraining learn tracking? DAVIS J&F of a run's checkpoints beside two baselines anyone can compute.

For a ``siammae-train`` run folder this scores, with ``siammae-eval davis``'s code path (the same preset, size and
metrics; whole sequences):

- step 0: the run's random initialisation, rebuilt exactly as the trainer builds it (``torch.manual_seed(seed)``
  then the model), its weights hashed;
- every checkpoint the run kept (``checkpoints/step_*.pt``, or ``--steps``) and ``model.pt``;
- raw patch pixels (:class:`siammae.propagation.baselines.PixelEncoder`, the model's patch size) with the same preset;
- the first mask copied to every frame.

and writes ``<out>.md`` (table + the commands), ``<out>.json`` (every number) and ``<out>.png`` (loss curve from
``log.jsonl`` and J&F against steps, baselines as lines). The evaluation sequences are never training data:
``recipes/cpu8-data.txt`` names the training clips.

    python benchmarks/learning_curve.py --run RUN --davis ../shared/data/davis2016 \
        --sequences blackswan,car-shadow,soapbox --size 240x440 --out benchmarks/results/learning_curve-cpu8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def davis_root(source: Path, names: list[str], folder: Path) -> Path:
    """A DAVIS-2016 root of links to ``source``'s sequences with an ImageSets list of ``names``."""
    root = folder / "davis"
    for kind in ("JPEGImages", "Annotations"):
        (root / kind / "480p").mkdir(parents=True, exist_ok=True)
        for n in names:
            link = root / kind / "480p" / n
            if not link.exists():
                link.symlink_to((source / kind / "480p" / n).resolve())
    (root / "ImageSets/2016").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets/2016/val.txt").write_text("\n".join(names) + "\n")
    return root


def step_zero(run: Path, folder: Path) -> Path:
    """The run's initial weights as a checkpoint (the trainer seeds torch with the run's seed, then builds)."""
    import torch

    from siammae.model.checkpoint import save_checkpoint
    from siammae.model.registry import model_config
    from siammae.model.siammae import SiamMAE

    info = json.loads((run / "run.json").read_text())
    cfg = info["train"]
    torch.manual_seed(cfg["seed"])
    model = SiamMAE(model_config(cfg["model"], **_overrides(info)))
    return save_checkpoint(folder / "step_0.pt", model, step=0, train_config=cfg)


def _overrides(info: dict) -> dict:
    from siammae.model.registry import model_config

    base = model_config(info["train"]["model"]).to_dict()
    return {k: v for k, v in info["model"].items() if base.get(k) != v}


def score(result) -> dict:
    g = result.metrics  # an EvalResult
    return {"J&F": g["J&F-Mean"], "J": g["J-Mean"], "F": g["F-Mean"]}


def eval_ckpt(ckpt: Path, root: Path, args, out: Path) -> dict:
    from siammae.evaluation.benchmark import evaluate

    t = time.perf_counter()
    doc = evaluate(
        "davis", root, ckpt=str(ckpt), out=out, year="2016", preset=args.preset, size=args.size, device="cpu",
        progress=False, overwrite=True,
    )  # fmt: skip
    return {**score(doc), "seconds": round(time.perf_counter() - t, 1)}


def eval_pixels(patch: int, root: Path, args, out: Path) -> dict:
    from siammae.evaluation.benchmark import get_benchmark
    from siammae.evaluation.runner import Runner
    from siammae.propagation.baselines import PixelEncoder
    from siammae.propagation.config import get_preset
    from siammae.propagation.driver import Tracker

    preset = get_preset(args.preset, size=args.size)
    encoder = PixelEncoder(patch, mean=preset.inputs.mean, std=preset.inputs.std)
    bench = get_benchmark("davis", root, year="2016")
    t = time.perf_counter()
    runner = Runner(Tracker(encoder, preset, prefetch=False))
    doc = bench.run_model(runner, root, out, None, None, {"encoder": f"pixels/{patch}"}, True, False)
    return {**score(doc), "seconds": round(time.perf_counter() - t, 1)}


def eval_copy(root: Path, names: list[str], out: Path) -> dict:
    """The first mask as the prediction of every frame."""
    from PIL import Image

    from siammae.evaluation.benchmark import evaluate

    results = out / "predictions"
    for n in names:
        frames = sorted((root / "JPEGImages/480p" / n).iterdir())
        first = np.array(Image.open(root / "Annotations/480p" / n / f"{frames[0].stem}.png"))
        (results / n).mkdir(parents=True, exist_ok=True)
        for f in frames:
            Image.fromarray((first > 0).astype(np.uint8)).save(results / n / f"{f.stem}.png")
    doc = evaluate("davis", root, results=results, out=out / "scores", year="2016", progress=False)
    return score(doc)


def losses(run: Path) -> list[tuple[int, float]]:
    out = []
    for line in (run / "log.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "loss" in r and "step" in r:
            out.append((r["step"], r["loss"]))
    return out


# ------------------------------------------------------------------------------------------------------ plot
def plot(path: Path, curve: list[tuple[int, float]], points: list[tuple[int, float]], baselines: dict, title: str):
    """Two panels drawn with PIL (no plotting library needed): training loss, and J&F by step with baselines."""
    from PIL import Image, ImageDraw

    w, h, pad = 900, 360, 50
    img = Image.new("RGB", (w, 2 * h), "white")
    d = ImageDraw.Draw(img)

    xmax = max([s for s, _ in curve] + [s for s, _ in points] + [1])

    def panel(top, xs, ys, lines, label, colour):
        x0, x1, y0, y1 = pad + 10, w - pad, top + h - pad, top + pad
        allv = list(ys) + [v for v, _ in lines.values()]
        lo, hi = min(allv), max(allv)
        lo, hi = lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9)
        fx = lambda x: x0 + (x1 - x0) * x / xmax  # noqa: E731
        fy = lambda y: y0 - (y0 - y1) * (y - lo) / (hi - lo)  # noqa: E731
        d.rectangle([x0, y1, x1, y0], outline="black")
        for k in range(5):
            v = lo + (hi - lo) * k / 4
            d.text((4, fy(v) - 6), f"{v:.3f}", fill="black")
            d.text((fx(xmax * k / 4) - 10, y0 + 6), f"{int(xmax * k / 4)}", fill="black")
        d.text((x0, top + 10), label, fill="black")
        for name, (v, c) in lines.items():
            d.line([x0, fy(v), x1, fy(v)], fill=c, width=2)
            d.text((x1 - 230, fy(v) - 14), f"{name} {v:.3f}", fill=c)
        pts = [(fx(x), fy(y)) for x, y in zip(xs, ys, strict=True)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for p in pts:
            d.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=colour)

    if curve:
        panel(0, [s for s, _ in curve], [v for _, v in curve], {}, f"{title}: training loss by step", "blue")
    colours = {"pixels": "orange", "copy first mask": "green"}
    lines = {k: (v, colours.get(k, "grey")) for k, v in baselines.items()}
    panel(h, [s for s, _ in points], [v for _, v in points], lines, "DAVIS J&F by step (whole sequences)", "red")
    img.save(path)


# ------------------------------------------------------------------------------------------------------ main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="siammae-train run folder")
    ap.add_argument("--davis", required=True, type=Path, help="DAVIS root with JPEGImages/480p and Annotations/480p")
    ap.add_argument("--sequences", default="blackswan,car-shadow,soapbox")
    ap.add_argument("--preset", default="siammae-davis")
    ap.add_argument("--size", default="240x440", help="the frame size of every row (siammae-eval --size)")
    ap.add_argument("--steps", default=None, help="checkpoint steps to score (default: every one kept)")
    ap.add_argument("--extra", nargs="*", default=[], type=Path, help="more checkpoints")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True, type=Path, help="stem of the .md / .json / .png written")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.sequences.split(",")
    previous = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").exists() else {}
    rows = {int(k): v for k, v in previous.get("checkpoints", {}).items()}
    baselines = previous.get("baselines", {})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = davis_root(args.davis, names, tmp)
        ckpts = {0: step_zero(args.run, tmp)}
        for p in sorted((args.run / "checkpoints").glob("step_*.pt")) + list(args.extra):
            ckpts[int(p.stem.split("_")[1])] = p
        wanted = None if args.steps is None else {int(s) for s in args.steps.split(",")}
        for step, path in sorted(ckpts.items()):
            if (wanted is not None and step not in wanted) or step in rows:
                continue
            rows[step] = eval_ckpt(path, root, args, tmp / f"eval-{step}")
            print(f"step {step}: {rows[step]}", flush=True)
            _write(args, rows, baselines, names)
        if not args.no_baselines and not baselines:
            from siammae.model.registry import model_config

            patch = model_config(json.loads((args.run / "run.json").read_text())["train"]["model"]).patch_size
            baselines["pixels"] = eval_pixels(patch, root, args, tmp / "pixels")
            print(f"pixels: {baselines['pixels']}", flush=True)
            baselines["copy first mask"] = eval_copy(root, names, tmp / "copy")
            print(f"copy: {baselines['copy first mask']}", flush=True)
        shutil.rmtree(tmp / "davis", ignore_errors=True)
    _write(args, rows, baselines, names)


def _write(args, rows: dict, baselines: dict, names: list[str]) -> None:
    import torch

    curve = losses(args.run)
    doc = {
        "run": str(args.run),
        "sequences": names,
        "preset": args.preset,
        "size": args.size,
        "checkpoints": {str(k): v for k, v in sorted(rows.items())},
        "baselines": baselines,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__},
        "command": "python " + " ".join(sys.argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    best = max((v["J&F"] for v in baselines.values()), default=None)
    lines = [
        f"# Learning curve: {args.run.name}, DAVIS-2016 {', '.join(names)} (whole), preset {args.preset}, "
        f"size {args.size}",
        "",
        f"Command: `{doc['command']}`",
        "",
        "| weights | J&F | J | F | vs best baseline |",
        "|---|---:|---:|---:|---:|",
    ]
    for step, v in sorted(rows.items()):
        gain = f"{v['J&F'] - best:+.3f}" if best is not None else ""
        lines.append(f"| step {step} | {v['J&F']:.3f} | {v['J']:.3f} | {v['F']:.3f} | {gain} |")
    for name, v in baselines.items():
        lines.append(f"| baseline: {name} | {v['J&F']:.3f} | {v['J']:.3f} | {v['F']:.3f} | |")
    lines += ["", f"Machine: {doc['machine']}; {doc['versions']}."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    points = [(s, v["J&F"]) for s, v in sorted(rows.items())]
    plot(args.out.with_suffix(".png"), curve, points, {k: v["J&F"] for k, v in baselines.items()}, args.run.name)


if __name__ == "__main__":
    main()
