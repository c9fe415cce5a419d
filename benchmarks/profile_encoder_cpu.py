"""Where the CPU time of the frame encoder goes, against its FLOP floor on this machine.

ViT-S/16 (dino-vits16's architecture, random weights with a learned position table) on 480x832 frames (the
``dino`` preset's input for 854x480 video): ``ViTEncoder.features`` timed in its CPU modes,

    exact  fp32, DINO's operation order in query blocks (the default on a CPU: DINO's features bit for bit)
    sdpa   fp32, the fused attention (``F.scaled_dot_product_attention``; ``--attention sdpa``)
    bf16   ``--dtype bf16``: autocast bf16 (SDPA)

one frame a pass with the allocator setting that tracking applies (``siammae.allocator.tune_cpu_allocator``), and for
the exact mode also on 1 thread (how it scales), 8 frames in one pass, and with glibc's default allocator (a child
process: the setting cannot be undone in a process), each with its page faults per frame. Then the exact mode under
``torch.profiler``, its time grouped by what the operators do: the linear layers split into qkv, projection and MLP
(by their shapes), the attention products, softmax, LayerNorm / GELU / adds, layout copies. The floor is the
matrix-product FLOPs (2 per multiply-add: 24*N*D^2 + 4*N^2*D per block) at the sgemm / bf16 gemm rate measured here
on the same threads.

    python benchmarks/profile_encoder_cpu.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _meta import environment, environment_markdown, write_results  # noqa: E402

from siammae.allocator import tune_cpu_allocator  # noqa: E402
from siammae.model.encoder import ViTEncoder  # noqa: E402
from siammae.model.registry import model_config  # noqa: E402

GROUPS = {  # profiler operator -> what it is (aten::addmm is split by shape below)
    "aten::mm": "linear layers, other",
    "aten::bmm": "attention products (q k^T, a v)",
    "aten::baddbmm": "attention products (q k^T, a v)",
    "aten::_softmax": "softmax",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "fused attention (SDPA)",
    "aten::native_layer_norm": "LayerNorm",
    "aten::gelu": "GELU",
    "aten::add": "residual adds / bias",
    "aten::mul": "scale",
    "aten::copy_": "layout copies (reshape / transpose / contiguous)",
    "aten::clone": "layout copies (reshape / transpose / contiguous)",
    "aten::cat": "layout copies (reshape / transpose / contiguous)",
    "aten::_convolution": "patch embedding",
    "aten::mkldnn_convolution": "patch embedding",
    "aten::upsample_bicubic2d": "position table resize",
}


def linear_group(shapes, dim: int) -> str:
    """The linear layer of an addmm from its (bias, input, weight^T) shapes."""
    try:
        k, n = shapes[2]
    except (IndexError, ValueError):
        return "linear layers, other"
    return {
        (dim, 3 * dim): "linear: qkv",
        (dim, dim): "linear: attention projection",
        (dim, 4 * dim): "linear: MLP fc1",
        (4 * dim, dim): "linear: MLP fc2",
    }.get((k, n), "linear layers, other")


def gemm_rate(dtype: torch.dtype, n: int = 1536, iters: int = 10, trials: int = 5) -> float:
    """GFLOP/s of an (n x 384) @ (384 x n) product, the encoder's typical shape: the best of ``trials`` timings of
    ``iters`` products (a shared machine slows some; the floor is what the machine can do)."""
    a, b = torch.randn(n * 1, 384, dtype=dtype), torch.randn(384, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(trials if dtype == torch.float32 else 1):  # an emulated bf16 gemm is slow: one timing
        t = time.perf_counter()
        for _ in range(iters if dtype == torch.float32 else 2):
            a @ b
        best = min(best, (time.perf_counter() - t) / (iters if dtype == torch.float32 else 2))
    return 2 * n * 384 * n / best / 1e9


def native_bf16() -> str:
    """The CPU's bf16 instructions (avx512_bf16, amx_bf16) from /proc/cpuinfo, or "none"."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()]
    return ", ".join(found) or "none"


def matmul_flops(cfg, h: int, w: int) -> float:
    N, D = h * w + 1, cfg.embed_dim
    return cfg.depth * (24 * N * D * D + 4 * N * N * D)


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(model, x: torch.Tensor, iters: int, attention: str = "exact", one_pass: bool = False) -> dict:
    """ms and page faults per frame of ``model.features`` (``one_pass``: the whole batch in one forward, the way
    it ran before frames were encoded one at a time on a CPU)."""

    def run():
        if one_pass:
            tokens = model.prepare_tokens(x.contiguous())
            return model.forward_tokens_exact(tokens) if attention == "exact" else model.forward_tokens(tokens)
        return model.features(x, attention=attention)

    with torch.inference_mode():
        run()
        f0, t0 = faults(), time.perf_counter()
        for _ in range(iters):
            run()
        seconds, n = time.perf_counter() - t0, iters * x.shape[0]
    return {"ms": 1e3 * seconds / n, "faults": (faults() - f0) / n}


def build(args):
    torch.manual_seed(0)
    cfg = model_config("vits16", pos_embed="learned")
    return cfg, ViTEncoder(cfg).eval(), torch.randn(1, 3, args.height, args.width)


def child(args) -> None:
    """The default-allocator measurement, in its own process: exact mode, one frame and eight frames a pass."""
    torch.set_num_threads(args.threads)
    _, model, x = build(args)
    out = {
        "1": measure(model, x, args.iters),
        "8": measure(model, x.expand(8, -1, -1, -1), 1, one_pass=True),
    }
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--child-default-allocator", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_default_allocator:
        return child(args)
    load0 = os.getloadavg()
    cmd = [sys.executable, __file__, "--child-default-allocator", "--threads", str(args.threads),
           "--height", str(args.height), "--width", str(args.width), "--iters", str(args.iters)]  # fmt: skip
    default = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    tuned = tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    cfg, model, x = build(args)
    h, w = args.height // 16, args.width // 16
    flops = matmul_flops(cfg, h, w)
    rates = {"fp32": gemm_rate(torch.float32), "bf16": gemm_rate(torch.bfloat16)}
    alloc = "tuned" if tuned else "default (not tuned)"
    one = dict(threads=args.threads, frames_per_pass=1, allocator=alloc)
    rows = [dict(mode="exact", **one, **measure(model, x, args.iters))]
    rows.append(dict(mode="sdpa", threads=args.threads, frames_per_pass=1, allocator=alloc,
                     **measure(model, x, args.iters, "sdpa")))  # fmt: skip
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rows.append(dict(mode="bf16", threads=args.threads, frames_per_pass=1, allocator=alloc,
                         **measure(model, x, max(1, args.iters // 2), "sdpa")))  # fmt: skip
    rows.append(dict(mode="exact", threads=args.threads, frames_per_pass=8, allocator=alloc,
                     **measure(model, x.expand(8, -1, -1, -1), 1, one_pass=True)))  # fmt: skip
    rows.append(dict(mode="exact", threads=args.threads, frames_per_pass=1, allocator="glibc default", **default["1"]))
    rows.append(dict(mode="exact", threads=args.threads, frames_per_pass=8, allocator="glibc default", **default["8"]))
    profiles = []  # three profiled passes, the one with the least profiled time kept (the profiler is noisy here)
    with torch.inference_mode():
        model.features(x, attention="exact")  # a warm pass, after the other modes
        for _ in range(3):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
                model.features(x, attention="exact")
            averages = prof.key_averages(group_by_input_shape=True)
            profiles.append((sum(ev.self_cpu_time_total for ev in averages), averages))
    averages = min(profiles, key=lambda p: p[0])[1]
    if args.threads > 1:  # last: a resized thread pool is slow for a while
        torch.set_num_threads(1)
        rows.append(dict(mode="exact", threads=1, frames_per_pass=1, allocator=alloc, **measure(model, x, 1)))
        torch.set_num_threads(args.threads)
    groups: dict[str, float] = defaultdict(float)
    total = 0.0
    for ev in averages:
        ms = ev.self_cpu_time_total / 1e3
        total += ms
        if ev.key == "aten::addmm":
            groups[linear_group(ev.input_shapes, cfg.embed_dim)] += ms
        elif ev.key in GROUPS:
            groups[GROUPS[ev.key]] += ms
    groups["everything else"] = total - sum(groups.values())
    load1 = os.getloadavg()
    meta = environment()
    meta.update(load_average_start=list(load0), load_average_end=list(load1), threads=args.threads,
                native_bf16=native_bf16(), allocator_tuned=tuned)  # fmt: skip
    for r in rows:
        rate = rates["bf16" if r["mode"] == "bf16" else "fp32"] * (r["threads"] / args.threads)
        r["gflops"] = flops / (r["ms"] / 1e3) / 1e9
        r["floor_ms"] = 1e3 * flops / (rate * 1e9) if rate >= 5 else None  # no floor from an emulated bf16 gemm

    def fmt_row(r):
        floor = f"{r['floor_ms']:.0f} | {r['ms'] / r['floor_ms']:.2f}" if r["floor_ms"] else "n/a | n/a"
        return (f"| {r['mode']} | {r['threads']} | {r['frames_per_pass']} | {r['allocator']} | {r['ms']:.0f} | "
                f"{r['faults']:.0f} | {r['gflops']:.0f} | {floor} |")  # fmt: skip

    md = [
        f"# Encoder on the CPU: ViT-S/16, {args.width}x{args.height} frames ({h}x{w} patches), {args.threads} threads",
        "",
        f"`python benchmarks/profile_encoder_cpu.py --threads {args.threads}`. Matrix products: "
        f"{flops / 1e9:.1f} GFLOP per frame. Measured gemm rate ((1536 x 384) @ (384 x 1536), {args.threads} "
        f"threads): fp32 {rates['fp32']:.0f} GFLOP/s, bf16 {rates['bf16']:.1f} GFLOP/s (native bf16 instructions: "
        f"{meta['native_bf16']}). The 1-thread floor assumes the rate halves. Load average {load0[0]:.1f} at the "
        f"start, {load1[0]:.1f} at the end.",
        "",
        "| mode | threads | frames a pass | allocator | ms / frame | page faults / frame | GFLOP/s | floor (ms) "
        "| time / floor |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
        *[fmt_row(r) for r in rows],
        "",
        "Exact mode, one frame, under torch.profiler (self CPU time):",
        "",
        "| what | ms | share |",
        "|---|---:|---:|",
        *[f"| {k} | {v:.0f} | {100 * v / total:.1f} % |" for k, v in sorted(groups.items(), key=lambda kv: -kv[1])],
        "",
        environment_markdown(meta),
    ]
    write_results("profile_encoder-cpu", meta, rows + [dict(profile=dict(groups))], "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
