"""Label propagation on a CPU against its own FLOP floor, per preset and grid, and where its time goes.

For each preset (its propagation constants: top-k, temperature, context, neighbourhood) and grid, one process:

- the machine's sgemm rate, measured here (a 2048 x 384 x 2048 ``torch.mm``, the better of two, at the same thread
  count) right before each timed step, as the speed of a shared machine drifts; the ratio to the floor is the
  median over the steps of (step time x that rate) / floor FLOPs, and the rate shown the median rate;
- the floor: the arithmetic propagation cannot avoid for one frame at steady state, ``2 D`` flops for every
  (query patch, key in reach) pair of its context (the reference frame and the last n, each with its own
  neighbourhood rule) plus ``2 k C`` for the label sum, at that sgemm rate;
- achieved: ``Propagator.step`` on chunks of 8 frames (the tracker's chunk), per frame, after the context is full;
- where the time goes: the same step under ``torch.profiler`` on one thread (the same work: the profiler sees only
  the calling thread, and with n threads the tiles run in threads of their own), self CPU time per operator,
  grouped (similarity GEMM: ``bmm`` / ``mm``; top-k: ``topk`` / ``amax`` / ``sort``; radius masking: ``add_`` of
  the cached masks; softmax: ``exp`` / ``div`` / ``sum`` / ``masked_fill`` / ``clamp_min``; gathers: ``index``
  (labels, candidate scores, the tile's queries); layout copies: ``copy_`` / ``cat`` / ``index_put_`` / ``fill_`` /
  ``clone``; the rest: normalising the frame, indexing arithmetic, Python);
- the GEMM work actually done over the floor's (keys outside the neighbourhood computed because they share a
  tile's GEMM), from the CPU path's plan;
- with ``--encoder``: a random ViT-S/16 forward of one frame at the preset's input size, the same process and
  threads, so that ``propagate / encode`` is a ratio of two numbers taken back to back.

All times are process CPU time (``time.process_time``): on a machine shared with other jobs it counts the work
done, not the wait for a core. Ratios (achieved / floor, propagate / encode) are the numbers to compare.

    python benchmarks/bench_propagation_floor.py                       # 30x53, the three presets, 1 thread
    python benchmarks/bench_propagation_floor.py --grids 30x53,60x106 --threads 2 --encoder
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._meta import environment, environment_markdown, write_results  # noqa: E402
from siammae.kernels.topk_affinity import KEY_BAND, QUERY_TILE, _plan, neighbourhood_reach  # noqa: E402
from siammae.propagation import Propagator, get_preset  # noqa: E402

D, CLASSES, CHUNK = 384, 3, 8
PRESETS = ("siammae-davis", "dino", "crw")
CATEGORIES = {
    "similarity GEMM": ("aten::bmm", "aten::mm", "aten::matmul", "aten::addmm", "aten::baddbmm"),
    "top-k": ("aten::topk", "aten::amax", "aten::sort", "aten::max"),
    "radius masking": ("aten::add_",),
    "softmax": ("aten::exp", "aten::div", "aten::sum", "aten::masked_fill", "aten::clamp_min", "aten::sub"),
    "gathers": ("aten::index", "aten::gather"),
    "layout copies": ("aten::copy_", "aten::cat", "aten::index_put_", "aten::fill_", "aten::clone", "aten::pad"),
}


def sgemm_rate(repeats: int = 5) -> float:
    """GFLOP/s of a large fp32 GEMM of the propagation's depth D, best of ``repeats`` (process time)."""
    a, b = torch.randn(2048, D), torch.randn(2048, D)
    a @ b.T
    best = math.inf
    for _ in range(repeats):
        t = time.process_time()
        a @ b.T
        best = min(best, time.process_time() - t)
    return 2 * 2048 * 2048 * D / best / 1e9


def pairs_in_reach(grid, config) -> int:
    """(query patch, key) pairs of one steady-state frame's context: the reference frame and the last n."""
    h, w = grid
    shape, reach, d2_max = neighbourhood_reach(config.radius, config.neighbourhood)
    if shape == 0:
        near = h * w * h * w
    else:
        y, x = torch.arange(h), torch.arange(w)
        dy = (y[:, None] - y[None]).abs()  # (h, h)
        dx = (x[:, None] - x[None]).abs()  # (w, w)
        if shape == 1:
            near = int((dy <= reach).sum()) * int((dx <= reach).sum())
        else:
            d2 = (dy * dy)[:, None, :, None] + (dx * dx)[None, :, None, :]  # (h, w, h, w)
            near = int((d2 <= d2_max).sum())
    whole = h * w * h * w
    return config.n_last * near + (near if config.restrict_reference else whole)


def gemm_pairs(grid, config) -> int:
    """(query, key) pairs the CPU path's GEMMs compute for one steady-state frame (its plan's runs)."""
    h, w = grid
    shape, reach, d2_max = neighbourhood_reach(config.radius, config.neighbourhood)
    plan = _plan(h, w, shape, reach, d2_max, KEY_BAND, QUERY_TILE)
    restricted = sum(t.queries.numel() * sum(r.size for r in t.runs) for t in plan)
    whole = h * w * h * w
    if shape == 0:
        return (config.n_last + 1) * whole
    return config.n_last * restricted + (restricted if config.restrict_reference else whole)


def _steady(preset: str, grid):
    """A propagator with a full context of frames of their own, and a chunk of features to step."""
    h, w = grid
    g = torch.Generator().manual_seed(0)
    base = torch.randn(h, w, D, generator=g)
    frames = lambda n: base + 0.8 * torch.randn(n, h, w, D, generator=g)  # noqa: E731 (coherent features)
    prop = Propagator(get_preset(preset).propagation, backend="torch")
    prop.reset(frames(1)[0], torch.randint(0, CLASSES, (h, w), generator=g))
    stepped = 0
    while stepped < prop.config.n_last + 1:  # until the queue holds no copy of frame 0 (prefill_queue): a video's
        prop.step(frames(CHUNK))  # steady state, where keys tie only by chance
        stepped += CHUNK
    return prop, frames


def propagate_case(preset: str, grid, repeats: int) -> dict:
    prop, frames = _steady(preset, grid)
    chunk = frames(CHUNK)
    times, rates = [], []
    for _ in range(repeats):  # the machine's speed drifts (a shared host): each step beside an sgemm rate of its own
        rates.append(sgemm_rate(repeats=2))
        t = time.process_time()
        prop.step(chunk)
        times.append((time.process_time() - t) / CHUNK)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the profiler sees the calling thread only; with n threads the tiles run in others
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            prop.step(chunk)
    finally:
        torch.set_num_threads(threads)
    by_op = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    total = sum(by_op.values())
    stages = defaultdict(float)
    for op, secs in by_op.items():
        name = next((c for c, ops in CATEGORIES.items() if op in ops), "rest")
        stages[name] += secs
    return {
        "seconds_per_frame": statistics.median(times),
        "sgemm_gflops": statistics.median(rates),
        "seconds_at_rate": statistics.median(t * r for t, r in zip(times, rates, strict=True)),  # s x GFLOP/s
        "stages": {k: round(v / total, 4) for k, v in sorted(stages.items(), key=lambda kv: -kv[1])},
    }


def encoder_seconds(preset: str) -> float:
    """Process seconds of one random ViT-S/16 forward at the preset's input size (a 480x854 frame)."""
    from siammae.model.encoder import ViTEncoder
    from siammae.model.registry import model_config

    p = get_preset(preset)
    H, W = p.inputs.frame_size(480, 854, 16)
    model = ViTEncoder(model_config("vits16")).eval()
    x = torch.rand(1, 3, H, W)
    with torch.inference_mode():
        model.features(x, attention=p.attention)
        t = time.process_time()
        model.features(x, attention=p.attention)
        return time.process_time() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--grids", default="30x53", help="comma-separated HxW patch grids (30x53: 480x854 at patch 16)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--encoder", action="store_true", help="also time a ViT-S/16 forward per preset (480x854 frame)")
    ap.add_argument("--name", default=None, help="results name (default bench_propagation_floor-<threads>t)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for grid_text in args.grids.split(","):
        grid = tuple(int(v) for v in grid_text.split("x"))
        for preset in args.presets.split(","):
            config = get_preset(preset).propagation
            got = propagate_case(preset, grid, args.repeats)
            rate = got["sgemm_gflops"]
            N = grid[0] * grid[1]
            pairs = pairs_in_reach(grid, config)
            floor_flops = 2 * D * pairs + 2 * config.topk * CLASSES * N
            floor = floor_flops / (rate * 1e9)
            row = {
                "preset": preset,
                "grid": grid_text,
                "threads": args.threads,
                "sgemm_gflops": round(rate, 1),
                "floor_gflop": round(floor_flops / 1e9, 2),
                "floor_s": round(floor, 4),
                "achieved_s": round(got["seconds_per_frame"], 4),
                "ratio": round(got["seconds_at_rate"] * 1e9 / floor_flops, 2),
                "gemm_work_over_floor": round(gemm_pairs(grid, config) / pairs, 2),
                "stages": got["stages"],
            }
            if args.encoder:
                row["encode_s"] = round(encoder_seconds(preset), 3)
                row["propagate_over_encode"] = round(got["seconds_per_frame"] / row["encode_s"], 3)
            print(row, flush=True)
            rows.append(row)
    meta = environment()
    name = args.name or f"bench_propagation_floor-{args.threads}t"
    write_results(name, meta, rows, markdown(rows, meta, args), settings=vars(args))


def markdown(rows, meta, args) -> str:
    enc = any("encode_s" in r for r in rows)
    head = (
        "| preset | grid | sgemm GFLOP/s | floor GFLOP | floor s | achieved s | achieved / floor | GEMM work / floor |"
    )
    head += " encode s | propagate / encode |" if enc else ""
    lines = [
        "# Label propagation vs its FLOP floor (CPU)",
        "",
        environment_markdown(meta),
        "",
        f"One frame at steady state (chunks of {CHUNK}), D {D}, {CLASSES} label channels, {args.threads} thread(s); "
        "process CPU time. Made by `python benchmarks/bench_propagation_floor.py "
        f"--grids {args.grids} --threads {args.threads}{' --encoder' if enc else ''}`.",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for r in rows:
        line = (
            f"| {r['preset']} | {r['grid']} | {r['sgemm_gflops']} | {r['floor_gflop']} | {r['floor_s']} | "
            f"{r['achieved_s']} | {r['ratio']}x | {r['gemm_work_over_floor']}x |"
        )
        if enc:
            line += f" {r.get('encode_s', '')} | {r.get('propagate_over_encode', '')} |"
        lines.append(line)
    lines += ["", "Where the time goes (share of self CPU time, torch.profiler):", ""]
    for r in rows:
        parts = ", ".join(f"{k} {100 * v:.0f} %" for k, v in r["stages"].items())
        lines.append(f"- {r['preset']} {r['grid']}: {parts}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
