"""Which pretrained weights should the commands use by default? Encoder speed at 480p against DAVIS accuracy.

Times ``model.features`` (what tracking runs per frame: ViT forward at short side 480, a 854x480 video encoded at
848x480) for the DINO backbones' architectures with random weights (speed does not depend on the values), the models
interleaved round by round so that a busy machine slows them alike; the ratio is the robust figure. Accuracy is
DAVIS-2017 val J&F from the DINO paper (siammae.model.weights). FLOPs: matrix products of the forward pass
(benchmarks/bench_encoder.py, ``forward_flops``), which is what a GPU's time follows at this size.

    OMP_NUM_THREADS=2 python benchmarks/bench_default_weights.py --rounds 2

Results: benchmarks/results/bench_default_weights-<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._meta import RESULTS, environment, environment_markdown, write_results  # noqa: E402
from benchmarks.bench_encoder import forward_flops  # noqa: E402
from siammae.model.config import ModelConfig  # noqa: E402
from siammae.model.encoder import ViTEncoder  # noqa: E402
from siammae.model.weights import DEFAULT_WEIGHTS, WEIGHTS  # noqa: E402


def encoder_for(name: str) -> ViTEncoder:
    w = WEIGHTS[name]
    heads = w.embed_dim // 64
    cfg = ModelConfig(patch_size=w.patch_size, embed_dim=w.embed_dim, num_heads=heads, pos_embed="learned")
    return ViTEncoder(cfg).eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", nargs="+", default=["dino-vits16", "dino-vits8"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=848)
    ap.add_argument("--rounds", type=int, default=2, help="timed calls per model, interleaved")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    meta = environment()
    models = {n: encoder_for(n).to(device) for n in args.names}
    x = torch.randn(1, 3, args.height, args.width, device=device)
    seconds = {n: [] for n in args.names}
    with torch.inference_mode():
        for m in models.values():  # warm-up (allocations, position-table resize)
            m.features(x)
        for r in range(args.rounds):
            for n, m in models.items():
                t0 = time.perf_counter()
                m.features(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[n].append(time.perf_counter() - t0)
                print(f"round {r}: {n} {seconds[n][-1]:.2f} s/frame", file=sys.stderr)
    base = min(seconds[args.names[0]])
    rows = []
    for n in args.names:
        w, best = WEIGHTS[n], min(seconds[n])
        flops = forward_flops(models[n].config, args.height, args.width)
        rows.append(dict(weights=n, arch=w.arch, davis_jf=w.davis_jf, gflops_per_frame=round(flops / 1e9, 1),
                         s_per_frame=round(best, 3), frames_per_s=round(1 / best, 3),
                         slowdown=round(best / base, 2), default=n == DEFAULT_WEIGHTS))  # fmt: skip
    lines = [
        f"# Default weights: encoder speed at {args.width}x{args.height} vs DAVIS-2017 J&F ({device.type})",
        "",
        environment_markdown(meta),
        "",
        f"Best of {args.rounds} interleaved calls of `features` (batch 1, fp32, random weights). J&F: DINO paper.",
        "",
        "| weights | arch | DAVIS J&F | GFLOP/frame | s/frame | frames/s | time vs first | default |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['weights']} | {r['arch']} | {r['davis_jf']} | {r['gflops_per_frame']} | {r['s_per_frame']} | "
        f"{r['frames_per_s']} | {r['slowdown']}x | {'yes' if r['default'] else ''} |"
        for r in rows
    ]
    stem = f"bench_default_weights-{device.type}"
    path = write_results(stem, meta, rows, "\n".join(lines) + "\n", folder=RESULTS, settings=vars(args))
    print(f"wrote {path} and {path.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
