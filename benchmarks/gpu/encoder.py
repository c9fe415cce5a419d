"""Stage 3: encoder frames/s at 480x880 for ViT-S/16 and ViT-S/8 by runtime, precision and batch.

``benchmarks/bench_encoder.py``'s ``bench_model`` per (runtime, precisions): eager fp32 / bf16 / fp16, then
``torch.compile`` in bf16 only at batch 1 and the largest (inductor compiles once per model, precision and batch
size, ~20 s each), then onnxruntime (CUDA provider; the graph's attention is its fused MultiHeadAttention)
fp32 / fp16 and TensorRT fp16, each skipped with the reason when not installed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

# (backend, dtypes, seconds per model to budget for it on a GPU: compile and export included). Run in this order,
# every model per backend, so that a short budget drops the optional runtimes, not eager or compile.
PLAN = (("eager", ("fp32", "bf16", "fp16"), 15), ("compile", ("bf16",), 50), ("onnxruntime", ("fp32", "fp16"), 40),
        ("tensorrt", ("fp16",), 90))  # fmt: skip
QUICK_PLAN = (("eager", ("fp32", "bf16"), 5), ("onnxruntime", ("fp32",), 15), ("tensorrt", ("fp16",), 1))


def _runnable(st, name: str, backend: str, dtypes, device) -> list[str]:
    """The ``dtypes`` that ``backend`` can run on ``device``; each other one recorded as skipped with its reason."""
    from benchmarks.bench_encoder import skip_reason

    reasons = {dt: skip_reason(backend, dt, device) for dt in dtypes}
    for dt, reason in reasons.items():
        if reason:
            st.skip(f"encoder {name} {backend} {dt}", reason)
    return [dt for dt, reason in reasons.items() if not reason]


def _best_batches(results: list[dict]) -> list[dict]:
    """Per (model, backend, dtype), the batch with the most frames/s."""
    best = {}
    for r in results:
        key = (r["model"], r["backend"], r["dtype"])
        if "frames_per_s" in r and r["frames_per_s"] > best.get(key, {}).get("frames_per_s", 0):
            best[key] = {"batch": r["batch"], "frames_per_s": r["frames_per_s"]}
    return [{"model": m, "backend": b, "dtype": d, **v} for (m, b, d), v in best.items()]


def run(st) -> None:
    from benchmarks.bench_encoder import bench_model

    sh = st.shapes
    device = torch.device(sh.device)
    H, W = sh.encoder_size
    if sh.quick:
        st.skip("encoder compile", "--quick: torch.compile takes minutes on a CPU; the GPU run compiles bf16")
    with tempfile.TemporaryDirectory(prefix="gpu_check_encoder.") as tmp:
        for backend, dtypes, estimate in QUICK_PLAN if sh.quick else PLAN:
            for name in sh.encoder_models:
                what = f"encoder {name} {backend} {'/'.join(dtypes)}"
                dtypes = _runnable(st, name, backend, dtypes, device)
                if not dtypes or not st.fits(what, estimate):
                    continue
                # torch.compile(dynamic=False) compiles once per batch size: batch 1 and the largest only
                batches = list(sh.encoder_batches)
                if backend == "compile":
                    batches = sorted({batches[0], batches[-1]})
                args = argparse.Namespace(height=H, width=W, batches=batches, backends=[backend],
                                          dtypes=dtypes, threads=None, warmup=sh.encoder_warmup,
                                          iters=sh.encoder_iters)  # fmt: skip
                with st.case(what):
                    for row in bench_model(name, args, device, Path(tmp)):
                        st.add(row)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    st.note(best_batch=_best_batches(st.results))
