"""Label propagation, time and peak memory per frame: dense approach vs PyTorch path vs Triton kernel.

One frame of propagation at steady state: the query frame against frame 0 and the last n = 20 frames, top-k 7,
temperature 0.7, a circle of radius 20 on the short-term frames (``siammae-davis``), D = 384, 4 label
channels, at the grids of a 480x880 frame with patch 16 (30x55) and patch 8 (60x110).

- ``dense``: facebookresearch/dino ``label_propagation`` as written (the full ncontext x N x N affinity,
  exp, the cached neighbourhood mask multiplied in, top-k over the keys, threshold, normalise, a matmul with
  the labels).
- ``torch``: ``Propagator.step`` with the PyTorch reference (blocked queries, never the full affinity).
- ``triton``: ``Propagator.step`` with the Triton kernel (CUDA only), one frame per step and chunks of 8.

Every case runs in a fresh subprocess. Peak memory is the working memory of one step over its inputs: on CUDA
``torch.cuda.max_memory_allocated`` minus the allocation before the step; on CPU the growth of the process's
peak resident set (``getrusage(RUSAGE_SELF).ru_maxrss``) over the resident set before the step, with inputs
created frame by frame so that setting up leaves no higher peak behind (tracemalloc does not see PyTorch's
allocations). Time is the median over repeated steps after a warm-up step.

    python benchmarks/bench_propagate.py  # writes benchmarks/results/propagate_<device>.{json,md}
    python benchmarks/bench_propagate.py --grids 30x55 --repeats 3 --devices cpu
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._meta import environment, environment_markdown, write_results  # noqa: E402

D, TOPK, N_LAST, RADIUS, TEMPERATURE, CLASSES = 384, 7, 20, 20, 0.7, 4
GRIDS = {"30x55": (30, 55), "60x110": (60, 110)}


# ------------------------------------------------------------------------------------------------------------
# The dense approach: DINO's label_propagation, as written, with this benchmark's constants
# ------------------------------------------------------------------------------------------------------------
def circle_mask(h: int, w: int, ncontext: int, device, radius=RADIUS, square=False, first_free=True) -> torch.Tensor:
    """(ncontext, N, N) multiplicative mask (DINO caches it): circles of ``radius`` (or DINO's squares,
    |dy|, |dx| <= radius), frame 0 unrestricted when ``first_free``."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy, dx = ys[:, None] - ys[None], xs[:, None] - xs[None]
    near = (dy.abs() <= radius) & (dx.abs() <= radius) if square else (dy**2 + dx**2).float() < radius**2
    mask = near.float().unsqueeze(0).repeat(ncontext, 1, 1)
    if first_free:
        mask[0] = 1
    return mask


class DenseDINO:
    """DINO eval_video_segmentation.py: the queue of (features D x N, soft labels 1 x C x h x w), a step."""

    def __init__(
        self, feat0, seg0, queue, topk=TOPK, temperature=TEMPERATURE, radius=RADIUS, dino_mask=False, n_last=None
    ):
        """``dino_mask``: DINO's own neighbourhood (squares on every frame) instead of this benchmark's circles
        with frame 0 free; ``n_last``: queue length (default: that of ``queue``, which DINO starts empty)."""
        self.topk, self.temperature, self.radius, self.dino_mask = topk, temperature, radius, dino_mask
        self.n_last = len(queue) if n_last is None else n_last
        self.h, self.w = seg0.shape[-2:]
        self.first = (feat0.reshape(-1, feat0.shape[-1]).T, seg0[None])
        self.que = [(f.reshape(-1, f.shape[-1]).T, s[None]) for f, s in queue]
        self.mask = None

    def step(self, feat_tar):
        h, w = self.h, self.w
        list_frame_feats = [self.first[0]] + [f for f, _ in self.que]
        list_segs = [self.first[1]] + [s for _, s in self.que]
        feat_tar = feat_tar.reshape(h * w, -1)
        return_feat_tar = feat_tar.T
        ncontext = len(list_frame_feats)
        feat_sources = torch.stack(list_frame_feats)  # ncontext x dim x h*w
        feat_tar = F.normalize(feat_tar, dim=1, p=2)
        feat_sources = F.normalize(feat_sources, dim=1, p=2)
        feat_tar = feat_tar.unsqueeze(0).repeat(ncontext, 1, 1)
        aff = torch.exp(torch.bmm(feat_tar, feat_sources) / self.temperature)  # ncontext x h*w (query) x h*w (keys)
        if self.mask is None or self.mask.shape[0] != ncontext:
            self.mask = circle_mask(h, w, ncontext, aff.device, self.radius, self.dino_mask, not self.dino_mask)
        aff *= self.mask
        aff = aff.transpose(2, 1).reshape(-1, h * w)  # ncontext*h*w (keys) x h*w (queries)
        tk_val, _ = torch.topk(aff, dim=0, k=self.topk)
        tk_val_min, _ = torch.min(tk_val, dim=0)
        aff[aff < tk_val_min] = 0
        aff = aff / torch.sum(aff, keepdim=True, axis=0)
        segs = torch.cat(list_segs)
        nmb_context, C, h, w = segs.shape
        segs = segs.reshape(nmb_context, C, -1).transpose(2, 1).reshape(-1, C).T  # C x nmb_context*h*w
        seg_tar = torch.mm(segs, aff).reshape(1, C, h, w)
        if len(self.que) >= self.n_last:
            self.que.pop(0)
        self.que.append((return_feat_tar, seg_tar))
        return seg_tar


# ------------------------------------------------------------------------------------------------------------
# One case, in a fresh process
# ------------------------------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(method: str, device: str, grid: tuple[int, int], repeats: int, dtype: str, chunk: int) -> dict:
    """Set up a steady-state context, measure the peak memory of one step, then time ``repeats`` steps."""
    from siammae.propagation import Propagator, get_preset
    from siammae.propagation.engine import _normalise

    dev = torch.device(device)
    dt = getattr(torch, dtype)
    h, w = grid
    N = h * w
    g = torch.Generator(device=dev).manual_seed(0)

    def frame():  # raw (h, w, D) features, one at a time
        return torch.randn(h, w, D, generator=g, device=dev, dtype=torch.float32).to(dt)

    def soft():  # (C, h, w) soft labels
        return torch.softmax(torch.randn(CLASSES, h, w, generator=g, device=dev), 0)

    feat0, seg0 = frame(), soft()
    queries = [torch.stack([frame() for _ in range(chunk)]) for _ in range(repeats + 2)]

    if method == "dense":
        dense = DenseDINO(feat0.float(), seg0, [(frame().float(), soft()) for _ in range(N_LAST)])
        step = lambda q: dense.step(q[0].float())
    else:
        cfg = get_preset(
            "siammae-davis",
            topk=TOPK,
            temperature=TEMPERATURE,
            n_last=N_LAST,
            radius=RADIUS,
            prefill_queue=False,
        ).propagation
        prop = Propagator(cfg, backend=method)
        prop.reset(feat0, seg0)
        st = prop.state  # the steady state: n distinct propagated frames in the queue
        st.reserve(1 + N_LAST + 1 + chunk)
        for i in range(N_LAST):  # written frame by frame: no input copy outlives the setup
            st.feats[1 + i] = _normalise(frame()).reshape(N, D)
            st.labels[1 + i] = soft().reshape(CLASSES, N).T
        st.n_queue, st.stepped = N_LAST, True
        step = prop.step
    step_frames = chunk if method != "dense" else 1

    # Warm-up on a small problem loads the kernels without raising the memory high-water mark.
    torch.ones(64, 64, device=dev) @ torch.ones(64, 64, device=dev)
    _sync(dev)

    # Peak memory of the first step (which also builds the dense approach's cached mask, as DINO's first
    # frame).
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        out = step(queries[0])
        _sync(dev)
        peak = torch.cuda.max_memory_allocated(dev) - base
        high_water_ok = True
    else:
        high_water = _peak_rss_bytes()
        base = _rss_bytes()
        out = step(queries[0])
        peak = _peak_rss_bytes() - base
        high_water_ok = _peak_rss_bytes() > high_water  # else the step stayed under the setup's high-water mark
    del out

    times, cpu_times = [], []
    for q in queries[1 : repeats + 2]:
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        step(q)
        _sync(dev)
        times.append((time.perf_counter() - t0) / step_frames)
        cpu_times.append((time.process_time() - c0) / step_frames)
    times, cpu_times = times[1:], cpu_times[1:]  # one more warm-up
    return {
        "method": method,
        "device": device,
        "grid": f"{h}x{w}",
        "dtype": dtype,
        "chunk": step_frames,
        "ms_per_frame": statistics.median(times) * 1e3,
        "ms_per_frame_min": min(times) * 1e3,
        "cpu_ms_per_frame": statistics.median(cpu_times) * 1e3,  # CPU time of all threads
        "repeats": len(times),
        "peak_mib": peak / 2**20,
        "peak_above_setup": high_water_ok,
    }


# ------------------------------------------------------------------------------------------------------------
# FLOP accounting for the GPU
# ------------------------------------------------------------------------------------------------------------
def dense_flops(grid) -> float:
    """2 N M D: the affinity of every query with every context key (what the dense approach computes)."""
    N = grid[0] * grid[1]
    return 2.0 * N * (N_LAST + 1) * N * D


def triton_flops(grid) -> float:
    """FLOPs the kernel executes: its dot products over the key tiles it visits (padded tiles included)."""
    import triton

    from siammae.kernels.topk_affinity import _tile, neighbourhood_reach

    h, w = grid
    qh, qw = _tile(h, w, 64)
    kh, kw = _tile(h, w, 64)
    _, reach, d2_max = neighbourhood_reach(RADIUS, "circle")
    block_d = min(64, max(16, triton.next_power_of_2(D)))
    n_ky, n_kx = math.ceil(h / kh), math.ceil(w / kw)
    visits = 0
    for qy0 in range(0, h, qh):
        for qx0 in range(0, w, qw):
            qy1, qx1 = min(qy0 + qh, h) - 1, min(qx0 + qw, w) - 1
            visits += n_ky * n_kx  # frame 0, unrestricted
            tiles = 0
            for kty in range(max(qy0 - reach, 0) // kh, min(qy1 + reach, h - 1) // kh + 1):
                for ktx in range(max(qx0 - reach, 0) // kw, min(qx1 + reach, w - 1) // kw + 1):
                    gy = max(kty * kh - qy1, qy0 - (min(kty * kh + kh, h) - 1), 0)
                    gx = max(ktx * kw - qx1, qx0 - (min(ktx * kw + kw, w) - 1), 0)
                    tiles += gy * gy + gx * gx <= d2_max
            visits += N_LAST * tiles
    return 2.0 * qh * qw * kh * kw * math.ceil(D / block_d) * block_d * visits


def measured_peak_tflops(dtype: str) -> float:
    """The card's dense matmul rate in this dtype (fp32 without TF32), the best of a few 8192^3 products."""
    dt = getattr(torch, dtype)
    a = torch.randn(8192, 8192, device="cuda", dtype=dt)
    b = torch.randn(8192, 8192, device="cuda", dtype=dt)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a @ b
        best = float("inf")
        for _ in range(5):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            a @ b
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return 2 * 8192**3 / best / 1e12


# ------------------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------------------
def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def dense_estimate_bytes(grid) -> int:
    """The dense step holds its mask and up to three affinity-sized tensors (ncontext x N x N floats)."""
    N = grid[0] * grid[1]
    return 4 * (N_LAST + 1) * N * N * 4


def spawn(method, device, grid, repeats, dtype="float32", chunk=1, threads=None) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, device, f"{grid[0]}x{grid[1]}", str(repeats), dtype]
    cmd.append(str(chunk))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{method} on {device} at {grid} failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def _dense_row(device: str, grid_name: str, repeats: int, threads: int | None) -> dict:
    """The dense row; on the CPU a skipped row with the reason when its estimate exceeds 60 % of the free memory."""
    grid = GRIDS[grid_name]
    need = dense_estimate_bytes(grid)
    if device == "cpu" and need > 0.6 * _available_bytes():
        free = _available_bytes()
        return dict(method="dense", device=device, grid=grid_name, dtype="float32", chunk=1, skipped=True,
                    reason=f"needs ~{need / 2**30:.0f} GiB of the {free / 2**30:.0f} GiB free",
                    estimated_peak_mib=need / 2**20)  # fmt: skip
    return spawn("dense", device, grid, repeats, threads=threads)


def _grid_rows(device: str, grid_name: str, repeats: int, threads: int | None) -> list[dict]:
    """One grid's rows: dense (maybe skipped on the CPU) and torch; on a GPU also triton fp32 / fp16 and fp16 x 8."""
    grid = GRIDS[grid_name]
    rows = [_dense_row(device, grid_name, repeats, threads), spawn("torch", device, grid, repeats, threads=threads)]
    if device == "cpu":
        return rows
    for dtype in ("float32", "float16"):
        rows.append(spawn("triton", device, grid, repeats, dtype=dtype, chunk=1))
    rows.append(spawn("triton", device, grid, repeats, dtype="float16", chunk=8))
    return rows


def _add_vs_dense(rows: list[dict]) -> None:
    """Speed-ups and memory ratio of every measured row against the dense row of its grid."""
    dense = {r["grid"]: r for r in rows if r["method"] == "dense" and not r.get("skipped")}
    for r in rows:
        if r.get("skipped") or r["grid"] not in dense:
            continue
        r["speedup_vs_dense"] = dense[r["grid"]]["ms_per_frame"] / r["ms_per_frame"]
        r["cpu_time_speedup_vs_dense"] = dense[r["grid"]]["cpu_ms_per_frame"] / r["cpu_ms_per_frame"]
        r["memory_ratio_vs_dense"] = dense[r["grid"]]["peak_mib"] / max(r["peak_mib"], 1e-9)


def _add_tflops(rows: list[dict]) -> None:
    """Dense-equivalent TFLOP/s against the card's measured peak; for the triton rows the executed ones too."""
    peaks = {dt: measured_peak_tflops(dt) for dt in ("float32", "float16")}
    for r in rows:
        if r.get("skipped"):
            continue
        grid = GRIDS[r["grid"]]
        r["dense_equivalent_tflops"] = dense_flops(grid) / (r["ms_per_frame"] * 1e-3) / 1e12
        r["card_peak_tflops"] = peaks[r["dtype"]]
        if r["method"] == "triton":
            r["executed_tflops"] = triton_flops(grid) / (r["ms_per_frame"] * 1e-3) / 1e12
            r["fraction_of_peak"] = r["executed_tflops"] / r["card_peak_tflops"]


def bench_device(device: str, grids: list[str], repeats: int, threads: int | None = None) -> list[dict]:
    rows = []
    for name in grids:
        rows += _grid_rows(device, name, repeats, threads)
    _add_vs_dense(rows)
    if device == "cuda":
        _add_tflops(rows)
    return rows


def markdown(device: str, meta: dict, rows: list[dict]) -> str:
    gpu = device == "cuda"
    head = "| grid | method | dtype | frames/step | ms / frame | peak MiB | speedup vs dense | memory / dense |"
    sep = "|---|---|---|---|---|---|---|---|"
    if not gpu:
        head += " CPU ms / frame | speedup in CPU time |"
        sep += "---|---|"
    if gpu:
        head += " executed TFLOP/s | of card peak |"
        sep += "---|---|"
    lines = [
        f"# Label propagation per frame ({'GPU' if gpu else 'CPU'})",
        "",
        environment_markdown(meta),
        "",
        f"One steady-state step: frame 0 + the last {N_LAST} frames, top-k {TOPK}, T {TEMPERATURE}, circle "
        f"radius {RADIUS} on the short-term frames, D {D}, {CLASSES} label channels. Grids of a 480x880 "
        "frame with patch 16 (30x55) and patch 8 (60x110). Made by `python benchmarks/bench_propagate.py`.",
        "",
        head,
        sep,
    ]
    for r in rows:
        if r.get("skipped"):
            lines.append(
                f"| {r['grid']} | {r['method']} | {r['dtype']} | 1 | skipped: {r['reason']} | "
                f"~{r['estimated_peak_mib']:.0f} (estimate) | | | | |"
            )
            continue
        cells = [
            r["grid"], r["method"], r["dtype"], str(r["chunk"]), f"{r['ms_per_frame']:.1f}",
            f"{r['peak_mib']:.1f}" + ("" if r["peak_above_setup"] else " (upper bound)"),
            f"{r['speedup_vs_dense']:.1f}x" if "speedup_vs_dense" in r else "",
            f"1/{r['memory_ratio_vs_dense']:.0f}" if "memory_ratio_vs_dense" in r else "",
        ]  # fmt: skip
        if not gpu:
            cells += [
                f"{r['cpu_ms_per_frame']:.1f}",
                f"{r['cpu_time_speedup_vs_dense']:.1f}x" if "cpu_time_speedup_vs_dense" in r else "",
            ]
        if gpu:
            cells += [
                f"{r['executed_tflops']:.1f}" if "executed_tflops" in r else "",
                f"{100 * r['fraction_of_peak']:.0f}% of {r['card_peak_tflops']:.0f}"
                if "fraction_of_peak" in r
                else "",
            ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Method",
        "",
        "- Each case is a fresh process. Time: median over repeated steps after two warm-up steps "
        "(`ms / frame` is the step time divided by the frames of the step)."
        + (
            ""
            if gpu
            else " `CPU ms / frame` is the process time of all threads: on a machine shared with other jobs "
            "it is steadier than the wall time, which waits for the cores."
        ),
        "- Peak memory is the working memory of one step over its inputs (the context features and labels): "
        + (
            "`torch.cuda.max_memory_allocated()` minus the allocation before the step."
            if gpu
            else "the growth of the process's peak resident set (`getrusage(RUSAGE_SELF).ru_maxrss`) over "
            "its resident set just before the step. Inputs are created frame by frame, so setting up leaves "
            "no higher peak behind (the `peak_above_setup` flag in the JSON confirms the step set a new "
            "high-water mark). `tracemalloc` cannot be used: it does not see PyTorch's allocator."
        ),
        "- `dense` is DINO's `label_propagation` as written: the first step also builds its cached "
        "(ncontext, N, N) neighbourhood mask, which DINO keeps for the whole video, so it is counted.",
        "- `torch` and `triton` time `Propagator.step`: L2-normalising the frame, the top-k op, the gather "
        "of labels and sliding the queue in the context bank.",
    ]
    if gpu:
        lines.append(
            "- Executed TFLOP/s counts the kernel's dot products over the key tiles it visits (tiles skipped "
            "by the neighbourhood are not counted); the card's peak is the best 8192^3 `torch.matmul` in the "
            "same dtype (fp32 without TF32), measured in the same run."
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", default="30x55,60x110", help="comma-separated, from " + ", ".join(GRIDS))
    parser.add_argument("--devices", default=None, help="cpu,cuda (default: cpu, plus cuda when present)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per case (OMP_NUM_THREADS)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--worker", nargs=6, metavar=("METHOD", "DEVICE", "GRID", "REPEATS", "DTYPE", "CHUNK"))
    args = parser.parse_args(argv)
    if args.worker:
        method, device, grid, repeats, dtype, chunk = args.worker
        h, w = map(int, grid.split("x"))
        print(json.dumps(run_case(method, device, (h, w), int(repeats), dtype, int(chunk))))
        return
    grids = [g.strip() for g in args.grids.split(",")]
    unknown = [g for g in grids if g not in GRIDS]
    if unknown:
        parser.error(f"unknown grid(s) {unknown}; valid: {', '.join(GRIDS)}")
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    meta = environment()
    meta["torch_threads"] = args.threads or meta["torch_threads"]  # the workers' threads
    for device in devices:
        rows = bench_device(device, grids, args.repeats, args.threads)
        path = write_results(f"propagate_{device}", meta, rows, markdown(device, meta, rows), folder=args.out)
        print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
