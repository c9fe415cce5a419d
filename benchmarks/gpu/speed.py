"""Stage 2: label propagation per frame, the Triton top-k kernel against DINO's dense algorithm on the same device,
and the kernel's executed TFLOP/s against the card's peak.

The cases are ``benchmarks/bench_propagate.py``'s (``run_case``: one steady-state step, frame 0 + 20 frames,
k 7, circle radius 20, D 384), run in this process. Peaks are the datasheet's dense (no sparsity) tensor-core
rates, looked up by the GPU's name, so that a fraction of peak means the same on every run; the measured 8192^3
matmul rate is recorded beside it.
"""

from __future__ import annotations

import torch

# name fragment -> (bf16/fp16 dense tensor TFLOP/s, fp32 (no TF32) TFLOP/s, HBM TB/s); NVIDIA datasheets, dense
# (without the 2:4 sparsity that doubles the headline figures). H200: the figures issue #16 sets as the limit.
PEAKS = {
    "H200": (790.0, 67.0, 4.3),
    "H100 PCIe": (756.0, 51.0, 2.0),
    "H100": (989.0, 67.0, 3.35),
    "A100": (312.0, 19.5, 2.0),
    "L40S": (362.0, 91.6, 0.86),
    "A10": (125.0, 31.2, 0.6),
    "L4": (121.0, 30.3, 0.3),
    "T4": (65.0, 8.1, 0.32),
    "RTX 4090": (165.0, 82.6, 1.0),
    "RTX 3090": (71.0, 35.6, 0.94),
}


def card_peaks(name: str | None) -> dict | None:
    """Datasheet peaks of the GPU called ``name`` (longest matching fragment), or None."""
    if not name:
        return None
    for key in sorted(PEAKS, key=len, reverse=True):
        if key.lower() in name.lower():
            half, fp32, tbs = PEAKS[key]
            return {"card": key, "bf16_tflops": half, "fp16_tflops": half, "fp32_tflops": fp32, "hbm_tb_s": tbs}
    return None


def run(st) -> None:
    import benchmarks.bench_propagate as bench
    from benchmarks.bench_propagate import measured_peak_tflops, run_case

    sh = st.shapes
    if sh.quick:  # the dry run shrinks the benchmark's constants: the Triton interpreter runs every program in Python
        bench.D, bench.N_LAST, bench.RADIUS = 16, 3, 2
    dev = sh.device
    peaks = card_peaks(torch.cuda.get_device_name(0)) if dev == "cuda" else None
    st.note(card_peaks=peaks)
    if dev == "cuda" and st.fits("measured matmul peak", 10):
        st.note(measured_matmul_tflops={dt: round(measured_peak_tflops(dt), 1) for dt in ("float32", "bfloat16")})
    cases = [("dense", "float32", 1), ("triton", "float32", 1), ("triton", "float16", 1), ("triton", "bfloat16", 1),
             ("triton", "float16", 8)]  # fmt: skip
    if sh.quick:
        cases = [("dense", "float32", 1), ("torch", "float32", 1), ("triton", "float32", 1)]
    for grid in sh.prop_grids:
        dense_ms = None
        for method, dtype, chunk in cases:
            what = f"propagate {grid[0]}x{grid[1]} {method} {dtype} chunk {chunk}"
            if not st.fits(what, 5):
                continue
            with st.case(what):
                st.add(_row(run_case(method, dev, grid, sh.prop_repeats, dtype, chunk), grid, peaks, dense_ms))
                if method == "dense":
                    dense_ms = st.results[-1]["ms_per_frame"]


def _row(r: dict, grid, peaks, dense_ms) -> dict:
    """A run_case row with its speed-up over the dense step, TFLOP/s and fraction of the card's peak."""
    from benchmarks.bench_propagate import dense_flops, triton_flops

    method, dtype = r["method"], r["dtype"]
    if method == "dense":
        dense_ms = r["ms_per_frame"]
    r["speedup_vs_dense"] = dense_ms / r["ms_per_frame"] if dense_ms else None
    r["dense_equivalent_tflops"] = dense_flops(grid) / (r["ms_per_frame"] * 1e-3) / 1e12
    if method == "dense":
        r["executed_tflops"] = r["dense_equivalent_tflops"]
    elif method == "triton":
        r["executed_tflops"] = triton_flops(grid) / (r["ms_per_frame"] * 1e-3) / 1e12
    if peaks and "executed_tflops" in r:
        peak = peaks["fp32_tflops"] if dtype == "float32" else peaks["bf16_tflops"]
        r["fraction_of_peak"] = r["executed_tflops"] / peak
    return r
