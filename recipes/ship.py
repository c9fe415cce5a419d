"""Write the shipped ``siammae-cpu`` weights from a cpu8 run, its card filled from the committed learning curve.

    python recipes/ship.py --run RUN --curve benchmarks/results/learning_curve-cpu8.json \
        --out siammae/model/shipped/siammae-cpu.safetensors

The checkpoint is the run's last (``--step`` another; picking one by the curve's J&F would be the only use of the
evaluation sequences beyond reporting, and would make the card's number optimistic). The card holds what it is,
its data and their licence condition, the recipe, its step and wall time, its J&F and the baselines' (percent,
the same sequences, preset and frame size), and the input scale it was measured at. The file holds the encoder
only, in fp16 (:func:`siammae.model.named.export_shipped`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--curve", required=True, type=Path)
    ap.add_argument("--step", type=int, default=None, help="ship this step instead of the run's last")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    from siammae.model.named import export_shipped

    curve = json.loads(args.curve.read_text())
    rows = {int(k): v for k, v in curve["checkpoints"].items() if int(k) > 0}
    final = max(rows)
    step = args.step if args.step is not None else final
    best = max(rows, key=lambda s: rows[s]["J&F"])
    ckpt = args.run / "checkpoints" / f"step_{step:08d}.pt"
    run = json.loads((args.run / "run.json").read_text())
    log = [json.loads(line) for line in (args.run / "log.jsonl").read_text().splitlines() if line.strip()]
    at_step = [r for r in log if r["step"] <= step]
    pct = lambda v: round(100 * v, 1)  # noqa: E731
    card = {
        "summary": f"SiamMAE ViT-T/8-ish (cpu8: 192 wide, 6 blocks, patch 8) pretrained from scratch on a 2-core CPU, "
        f"step {step} of {run['total_steps']}",
        "data": "13 real clips (2,414 frames): Track-Anything test samples (MIT), SAM 2 notebook videos (Apache-2.0), "
        "Cutie's example.mp4 (MIT), co-tracker demo videos (CC BY-NC 4.0); no DAVIS",
        "licence": "CC-BY-NC-4.0",
        "conditions": "non-commercial use only: trained on co-tracker clips under CC BY-NC 4.0",
        "davis_jf": pct(rows[step]["J&F"]),
        "davis_j": pct(rows[step]["J"]),
        "davis_f": pct(rows[step]["F"]),
        "baselines": {
            **{name: pct(v["J&F"]) for name, v in curve["baselines"].items()},
            "random init (step 0)": pct(curve["checkpoints"]["0"]["J&F"]),
            f"best checkpoint on this curve (step {best})": pct(rows[best]["J&F"]),
        },
        "eval": f"DAVIS-2016 val {', '.join(curve['sequences'])} (whole), preset {curve['preset']}, frames "
        f"{curve['size']} (siammae-eval --size {curve['size']}); the run's last checkpoint, not chosen on these scores",
        "input_scale": 0.5,  # measured at half the siammae-* presets' sizes: 240x440, the 30 x 55 grid of ViT-S/16
        "recipe": "recipes/cpu8.toml",
        "step": step,
        "train_seconds": round(at_step[-1]["time_s"]) if at_step else None,
        "run_seconds": round(log[-1]["time_s"]),
    }
    print(json.dumps(card, indent=1))
    print(export_shipped(ckpt, card, args.out))


if __name__ == "__main__":
    main()
