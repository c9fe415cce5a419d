"""Where the CPU time of the frame encoder goes, against its FLOP floor on this machine.

ViT-S/16 (dino-vits16's architecture, random weights with a learned position table) on one 480x832 frame (the
``dino`` preset's input for 854x480 video): ``ViTEncoder.features`` in its three CPU modes, timed,

    exact  fp32, DINO's operation order in query blocks (the default on a CPU: DINO's features bit for bit)
    sdpa   fp32, timm's fused attention (``F.scaled_dot_product_attention``)
    bf16   ``--dtype bf16``: autocast bf16 (SDPA)

then the exact mode under ``torch.profiler``, its time grouped by what the operators do (the linear layers, the
attention products, softmax, LayerNorm / GELU / adds, layout copies). The floor is the matrix-product FLOPs
(2 per multiply-add: 24*N*D^2 + 4*N^2*D per block) at the sgemm / bf16 gemm rate measured here on the same threads.

    python benchmarks/profile_encoder_cpu.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _meta import environment, environment_markdown, write_results  # noqa: E402

from siammae.model.encoder import ViTEncoder  # noqa: E402
from siammae.model.registry import model_config  # noqa: E402

GROUPS = {  # profiler operator -> what it is
    "aten::addmm": "linear layers (qkv, proj, MLP)",
    "aten::mm": "linear layers (qkv, proj, MLP)",
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
    "aten::_convolution": "patch embedding",
    "aten::mkldnn_convolution": "patch embedding",
    "aten::upsample_bicubic2d": "position table resize",
}


def gemm_rate(dtype: torch.dtype, n: int = 1536, iters: int = 5) -> float:
    """GFLOP/s of an (n x 384) @ (384 x n) product, the encoder's typical shape."""
    a, b = torch.randn(n * 1, 384, dtype=dtype), torch.randn(384, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    return 2 * n * 384 * n * iters / (time.perf_counter() - t) / 1e9


def matmul_flops(cfg, h: int, w: int) -> float:
    N, D = h * w + 1, cfg.embed_dim
    return cfg.depth * (24 * N * D * D + 4 * N * N * D)


def timed(fn, iters: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--iters", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    torch.manual_seed(0)
    cfg = model_config("vits16", pos_embed="learned")
    model = ViTEncoder(cfg).eval()
    x = torch.randn(1, 3, args.height, args.width)
    h, w = args.height // 16, args.width // 16
    flops = matmul_flops(cfg, h, w)
    rates = {"fp32": gemm_rate(torch.float32), "bf16": gemm_rate(torch.bfloat16)}
    modes = {}
    with torch.inference_mode():
        modes["exact"] = timed(lambda: model.features(x, attention="exact"), args.iters)
        modes["sdpa"] = timed(lambda: model.features(x, attention="sdpa"), args.iters)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            modes["bf16"] = timed(lambda: model.features(x), args.iters)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model.features(x, attention="exact")
    groups: dict[str, float] = defaultdict(float)
    total = 0.0
    for ev in prof.key_averages():
        if ev.key in GROUPS:
            groups[GROUPS[ev.key]] += ev.self_cpu_time_total / 1e3
        total_self = ev.self_cpu_time_total / 1e3
        total += total_self
    groups["everything else"] = total - sum(groups.values())
    load1 = os.getloadavg()
    meta = environment()
    meta.update(load_average_start=list(load0), load_average_end=list(load1), threads=args.threads)
    rate = {m: rates["bf16" if m == "bf16" else "fp32"] for m in modes}
    rows = [
        dict(mode=m, ms=1e3 * s, gflops=flops / s / 1e9, floor_ms=1e3 * flops / (rate[m] * 1e9))
        for m, s in modes.items()
    ]
    md = [
        f"# Encoder on the CPU: ViT-S/16, one {args.width}x{args.height} frame ({h}x{w} patches), "
        f"{args.threads} threads",
        "",
        f"`python benchmarks/profile_encoder_cpu.py --threads {args.threads}`. Matrix products: "
        f"{flops / 1e9:.1f} GFLOP per frame. Measured gemm rate ((1536 x 384) @ (384 x 1536)): "
        f"fp32 {rates['fp32']:.0f} GFLOP/s, bf16 "
        f"{rates['bf16']:.0f} GFLOP/s. Load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end "
        "(a shared machine: ratios mean more than absolute times).",
        "",
        "| mode | ms / frame | GFLOP/s | floor at the gemm rate (ms) | time / floor |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {r['mode']} | {r['ms']:.0f} | {r['gflops']:.0f} | {r['floor_ms']:.0f} | {r['ms'] / r['floor_ms']:.2f} |"
            for r in rows
        ],  # fmt: skip
        "",
        "Exact mode under torch.profiler (self CPU time):",
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
