"""Step time of candidate CPU models for the pretraining recipe (recipes/cpu8.toml): one optimiser step (forward,
backward, AdamW) of SiamMAE on random frame pairs, one thread, for models of several widths, depths, patch and crop
sizes. The recipe's model is the largest whose run fits 2 hours of one core at enough steps.

    OMP_NUM_THREADS=1 python benchmarks/train_cpu_recipe.py --batch 32 --out benchmarks/results/train_cpu_recipe.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from siammae.model.config import ModelConfig
from siammae.model.siammae import SiamMAE

DECODER = dict(decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4)
CANDIDATES = {
    "192x6 p8 crop128": dict(img_size=128, patch_size=8, embed_dim=192, depth=6, num_heads=3),
    "192x6 p8 crop112 (cpu8)": dict(img_size=112, patch_size=8, embed_dim=192, depth=6, num_heads=3),
    "192x6 p8 crop96": dict(img_size=96, patch_size=8, embed_dim=192, depth=6, num_heads=3),
    "192x4 p8 crop128": dict(img_size=128, patch_size=8, embed_dim=192, depth=4, num_heads=3),
    "128x6 p8 crop128": dict(img_size=128, patch_size=8, embed_dim=128, depth=6, num_heads=2),
    "256x6 p8 crop128": dict(img_size=128, patch_size=8, embed_dim=256, depth=6, num_heads=4),
    "192x6 p16 crop224": dict(img_size=224, patch_size=16, embed_dim=192, depth=6, num_heads=3),
}


def step_time(kw: dict, batch: int, repeats: int = 4) -> float:
    model = SiamMAE(ModelConfig(**kw, **DECODER))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    s = kw["img_size"]
    f1, f2 = torch.randn(batch, 3, s, s), torch.randn(batch, 3, s, s)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(f1, f2)["loss"].backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return min(times[1:])  # the first step allocates


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = {}
    for name, kw in CANDIDATES.items():
        rows[name] = round(step_time(kw, args.batch), 2)
        print(f"{name}: {rows[name]} s / step of {args.batch} pairs", flush=True)
    if args.out:
        doc = {"batch": args.batch, "threads": torch.get_num_threads(), "seconds_per_step": rows,
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "torch": torch.__version__}  # fmt: skip
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
