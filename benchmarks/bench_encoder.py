"""Frames per second of the frame encoder by runtime, precision and batch size (480x880 frames by default).

Every runtime computes the same function, the exported graph's: frames (B, 3, H, W) RGB in [0, 1] -> (B, h*w, D)
L2-normalised patch features (normalisation, ViT, final LayerNorm, [CLS] dropped, L2 over channels):

    eager        siammae.export.EncoderGraph in PyTorch; fp16 / bf16 under torch.autocast (as TorchEncoder runs)
    compile      the same module through torch.compile (inductor)
    onnxruntime  the exported .onnx (fp32 or the fp16 graph) on the CUDA provider, or the CPU provider on a CPU
    tensorrt     an engine built from the same .onnx (CUDA and TensorRT only)

Weights are random: speed does not depend on them. Each row also gives the error of the first batch against eager
fp32 PyTorch (max abs error and the lowest per-token cosine), so the speed of a low precision comes with its cost.
Throughput in TFLOP/s counts the forward pass's matrix products, 2 FLOPs per multiply-add, as nanoGPT's
``estimate_mfu`` (after Kaplan et al. 2020): per block 24*N*D^2 (qkv, proj, MLP) + 4*N^2*D (attention), N = h*w + 1.

    python benchmarks/bench_encoder.py                                   # CUDA when present: everything
    OMP_NUM_THREADS=1 python benchmarks/bench_encoder.py --device cpu --batches 1 2 --threads 1

Results go to benchmarks/results/bench_encoder-<device>.{json,md} with the machine, versions and commit.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._meta import RESULTS, environment, environment_markdown, write_results  # noqa: E402
from siammae.export import EncoderGraph, OnnxEncoder, export_onnx  # noqa: E402
from siammae.export.verify import compare  # noqa: E402
from siammae.model.registry import create_model  # noqa: E402

BACKENDS = ("eager", "compile", "onnxruntime", "tensorrt")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def forward_flops(cfg, height: int, width: int) -> float:
    """Forward FLOPs of one frame (matrix products only; see the module docstring)."""
    n, d, p = (height // cfg.patch_size) * (width // cfg.patch_size) + 1, cfg.embed_dim, cfg.patch_size
    per_block = 24 * n * d * d + 4 * n * n * d
    return cfg.depth * per_block + 2 * (n - 1) * 3 * p * p * d  # + the patch projection


# ---------------------------------------------------------------------------------------------- the runtimes
def torch_runner(graph: EncoderGraph, dtype: str, device: torch.device, compiled: bool):
    """frames -> (B, h*w, D) by PyTorch, under autocast for fp16 / bf16."""
    module = torch.compile(graph, dynamic=False) if compiled else graph
    autocast = torch.autocast(device.type, dtype=TORCH_DTYPES[dtype]) if dtype != "fp32" else contextlib.nullcontext()

    @torch.inference_mode()
    def run(frames):
        with autocast:
            return module(frames).float()

    return run


def skip_reason(backend: str, dtype: str, device: torch.device) -> str | None:
    """Why a (backend, dtype) pair cannot run here, or None."""
    import onnxruntime

    if backend in ("onnxruntime", "tensorrt") and dtype == "bf16":
        return "no bf16 graph is exported (fp16 is the reduced precision of the graphs)"
    if backend in ("eager", "compile") and dtype == "fp16" and device.type != "cuda":
        return "fp16 autocast is for CUDA (bf16 on the CPU)"
    cuda_ep = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if backend == "onnxruntime" and device.type == "cuda" and not cuda_ep:
        return f"onnxruntime {onnxruntime.__version__} has no CUDA provider (install onnxruntime-gpu)"
    if backend == "tensorrt":
        if device.type != "cuda":
            return "TensorRT needs a CUDA device"
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "TensorRT is not installed (pip install 'siammae[trt]')"
    return None


def timed(run, frames: torch.Tensor, warmup: int, iters: int, device: torch.device) -> float:
    """Seconds per call, after ``warmup`` calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for _ in range(warmup):
        run(frames)
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        run(frames)
    sync()
    return (time.perf_counter() - t0) / iters


# ------------------------------------------------------------------------------------------------------ main
def bench_model(name: str, args, device: torch.device, workdir: Path) -> list[dict]:
    from siammae.export import build_engine, load_encoder

    torch.manual_seed(0)
    model = create_model(name).encoder.eval()
    H, W = args.height, args.width
    flops = forward_flops(model.config, H, W)
    max_batch = max(args.batches)
    graph = EncoderGraph(model, H, W).to(device).eval()
    frames = {b: torch.rand(b, 3, H, W, generator=torch.Generator().manual_seed(b)).to(device) for b in args.batches}
    reference = {b: torch_runner(graph, "fp32", device, False)(frames[b]).cpu() for b in args.batches}
    rows = []
    for backend in args.backends:
        for dtype in args.dtypes:
            reason = skip_reason(backend, dtype, device)
            if reason:
                print(f"{name} {backend} {dtype}: skipped: {reason}", file=sys.stderr)
                rows.append(dict(model=name, backend=backend, dtype=dtype, skipped=reason))
                continue
            t0 = time.perf_counter()
            if backend in ("eager", "compile"):
                run = torch_runner(graph, dtype, device, backend == "compile")
            else:
                # onnxruntime runs its fused attention op; TensorRT reads the plain graph and fuses it itself
                attention = "plain" if backend == "tensorrt" else "auto"
                onnx_path = workdir / f"{name}_{dtype}_{attention}.onnx"
                if not onnx_path.exists():
                    export_onnx(
                        model, onnx_path, height=H, width=W, max_batch=max_batch, fp16=dtype == "fp16", verify=False,
                        attention=attention,
                    )  # fmt: skip
                if backend == "onnxruntime":
                    enc = OnnxEncoder(onnx_path, device=device, threads=args.threads)
                else:
                    enc = load_encoder(build_engine(onnx_path, verify=False))
                run = lambda x, enc=enc: enc(x).flatten(1, 2)  # (B, h*w, D)
            setup_s = time.perf_counter() - t0
            for b in args.batches:
                t1 = time.perf_counter()
                err = compare(run(frames[b]).cpu(), reference[b])  # also the first (compiling) call
                first_s = time.perf_counter() - t1
                sec = timed(run, frames[b], args.warmup, args.iters, device)
                row = dict(
                    model=name,
                    backend=backend,
                    dtype=dtype,
                    batch=b,
                    frames_per_s=b / sec,
                    ms_per_batch=1e3 * sec,
                    tflops=flops * b / sec / 1e12,
                    max_abs_err=err["max_abs_err"],
                    min_cosine=err["min_cosine"],
                    setup_s=setup_s + first_s,
                )
                rows.append(row)
                print(
                    f"{name:7s} {backend:12s} {dtype:5s} batch {b:3d}: {row['frames_per_s']:8.2f} frames/s "
                    f"({row['ms_per_batch']:9.1f} ms/batch, {row['tflops']:6.2f} TFLOP/s), "
                    f"max abs err {err['max_abs_err']:.1e}, min cos {err['min_cosine']:.5f}",
                    file=sys.stderr,
                )
    return rows


def markdown(meta: dict, args, rows: list[dict]) -> str:
    on = meta["gpu"]["name"] if args.device == "cuda" else "CPU"
    lines = [
        f"# Encoder throughput, {args.width}x{args.height} frames ({on})",
        "",
        environment_markdown(meta),
        "",
        f"onnxruntime CPU threads: {args.threads}. "
        f"{args.iters} timed calls after the first (which compiles) and {args.warmup} more. "
        "Error: first batch against eager fp32 PyTorch.",
        "",
        "| model | runtime | dtype | batch | frames/s | ms/batch | TFLOP/s | max abs err | min cosine |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "skipped" in r:
            continue
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['dtype']} | {r['batch']} | {r['frames_per_s']:.2f} | "
            f"{r['ms_per_batch']:.1f} | {r['tflops']:.2f} | {r['max_abs_err']:.1e} | {r['min_cosine']:.5f} |"
        )
    skipped = sorted({(r["backend"], r["dtype"], r["skipped"]) for r in rows if "skipped" in r})
    if skipped:
        lines += ["", "Not run here:"] + [f"- {b} {d}: {why}" for b, d, why in skipped]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--models", nargs="+", default=["vits16", "vits8"])
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=880)
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="default: 1 4 16 on CUDA, 1 on the CPU")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        choices=list(TORCH_DTYPES),
        help="default: fp32 fp16 bf16 on CUDA, fp32 bf16 on the CPU",
    )
    ap.add_argument("--iters", type=int, default=None, help="timed calls (default: 20 on CUDA, 2 on the CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="calls after the first (default: 5 on CUDA, 0 on the CPU)")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="results stem (default: results/bench_encoder-<device>)")
    args = ap.parse_args(argv)

    from siammae.device import resolve_device

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    args.batches = args.batches or ([1, 4, 16] if gpu else [1])
    args.dtypes = args.dtypes or (["fp32", "fp16", "bf16"] if gpu else ["fp32", "bf16"])
    args.iters = args.iters or (20 if gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 0)
    args.threads = args.threads or torch.get_num_threads()
    args.device = device.type
    meta = environment()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_encoder.") as tmp:
        for name in args.models:
            rows += bench_model(name, args, device, Path(tmp))
    stem = (args.out or RESULTS / f"bench_encoder-{device.type}").with_suffix("")
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    path = write_results(stem.name, meta, rows, markdown(meta, args, rows), folder=stem.parent, settings=settings)
    print(f"wrote {path} and {path.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
