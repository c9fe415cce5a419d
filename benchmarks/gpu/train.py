"""Stage 5: the training step, and whether loading or compute limits training.

- The SiamMAE step of ``benchmarks/bench_train_step.py`` (``train_step``: masking, both frames, loss, backward,
  AdamW) of ViT-S/16 under bf16 autocast, with the fused masked-patch gather on (``fused-triton``) and off
  (``embed-all``, MAE's recipe), at batch 64 and at the largest batch whose step fits in a quarter of the GPU's
  memory: ms per step, pairs/s, and MFU = counted FLOPs x pairs/s / the card's bf16 peak. FLOPs are counted by
  ``torch.utils.flop_counter.FlopCounterMode`` over one step (forward and backward), not estimated.
- The data loader (``siammae.train.data.PairDataset``: decode the frames of ``repeat`` pairs, crop, flip) in one
  process, on a frame folder of JPEGs and on an mp4 (PyAV only): pairs/s per CPU core. Cores needed to feed the
  GPU = compute pairs/s / loader pairs/s per core, against the cores of this machine.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def step_flops(model, path: str, batch: int, device, amp_dtype) -> float:
    """FLOPs of one training step at ``batch`` pairs, counted."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.bench_train_step import train_step

    step, _ = train_step(model, path, batch, device, amp_dtype)
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def loader_rate(videos: list[str], size: int, samples: int) -> dict:
    """Pairs/s of PairDataset in this process (one core), wall and CPU time."""
    from siammae.train.data import PairDataset, SampleKey

    ds = PairDataset(videos, size=size, seed=0, repeat=2)
    ds[SampleKey(0, 0, 0)]  # counts frames, warms the decoder
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(samples):
        ds[SampleKey(0, 0, i + 1)]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    pairs = samples * ds.repeat
    return {"pairs": pairs, "pairs_per_s": round(pairs / wall, 2), "pairs_per_cpu_s": round(pairs / cpu, 2)}


def _step_row(model: str, path: str, batch: int, sec: float, memory_mib: float, per_pair: float, peaks) -> dict:
    """One training-step result: ``sec`` the median seconds per step of ``path`` at ``batch`` pairs; MFU against
    the card's bf16 peak when ``peaks`` are known."""
    row = {"check": "train step", "model": model, "path": path, "batch": batch,
           "ms_per_step": round(1e3 * sec, 2), "pairs_per_s": round(batch / sec, 1),
           "step_memory_mib": memory_mib, "tflops": round(per_pair * batch / sec / 1e12, 2)}  # fmt: skip
    if peaks:
        row["mfu"] = round(per_pair * batch / sec / 1e12 / peaks["bf16_tflops"], 4)
    return row


def _quarter_memory_batch(st, dev, batch: int, memory: dict) -> int:
    """The largest batch (a multiple of 8) whose step fits in a quarter of the GPU's memory beside what is
    resident, from the step memory measured at ``batch``; noted in the stage."""
    total = torch.cuda.get_device_properties(dev).total_memory / 2**20
    resident = torch.cuda.memory_allocated(dev) / 2**20
    per_batch = max(memory.values()) / batch
    largest = int((total / 4 - resident) / per_batch) // 8 * 8
    st.note(largest_batch_in_quarter_memory=largest)
    return largest


def _loader_rates(st, sh) -> dict:
    """Pairs/s of the loader per source (``frames``: a JPEG frame folder, ``mp4``: the same clip in h264) that ran,
    at the training model's input size."""
    from benchmarks.gpu.clips import frame_folder
    from siammae.model.registry import create_model

    with tempfile.TemporaryDirectory(prefix="gpu_check_loader.") as tmp:
        clip = frame_folder(Path(tmp) / "clip", 8 if sh.quick else 60, *sh.loader_frame_size)
        size = create_model(sh.train_model).config.img_size
        rates = {}
        if st.fits("loader frame folder", 10):
            rates["frames"] = loader_rate([str(clip / "frames")], size, sh.loader_samples)
            st.add({"check": "loader", "source": "frame folder (JPEG)", **rates["frames"]})
        try:
            import av  # noqa: F401
        except ImportError:
            st.skip("loader mp4", "PyAV is not installed (pip install av): no mp4 decoding")
        else:
            from PIL import Image

            from siammae.data.video import write_video

            mp4 = Path(tmp) / "clip.mp4"
            frames = sorted((clip / "frames").glob("*.jpg"))
            write_video(mp4, (__import__("numpy").asarray(Image.open(f)) for f in frames))
            if st.fits("loader mp4", 10):
                rates["mp4"] = loader_rate([str(mp4)], size, sh.loader_samples)
                st.add({"check": "loader", "source": "mp4 (h264, PyAV)", **rates["mp4"]})
    return rates


def _bottleneck(compute_pairs_s: float, rates: dict, cores: int) -> dict:
    """Per loader source: the cores needed to feed ``compute_pairs_s``, and whether loading or compute limits."""
    verdict = {}
    for source, r in rates.items():
        need = compute_pairs_s / r["pairs_per_cpu_s"]
        verdict[source] = {"cores_needed": round(need, 1), "cores": cores,
                           "limit": "loading" if need > cores else "compute"}  # fmt: skip
    return verdict


def run(st) -> None:
    from benchmarks.bench_train_step import step_memory_mib, timed_in_turn, train_step
    from benchmarks.gpu.speed import card_peaks
    from siammae.model.registry import create_model

    sh = st.shapes
    dev = torch.device(sh.device)
    amp = torch.bfloat16 if dev.type == "cuda" else None
    torch.manual_seed(0)
    model = create_model(sh.train_model).to(dev)
    paths = ("embed-all", "fused-triton")
    peaks = card_peaks(torch.cuda.get_device_name(dev)) if dev.type == "cuda" else None
    per_pair = step_flops(model, "embed-all", 2, dev, amp) / 2
    st.note(flops_per_pair=per_pair, precision="bf16 autocast" if amp else "fp32", card_peaks=peaks)
    batches = [sh.train_batch]
    compute_pairs_s = None
    while batches:
        batch = batches.pop(0)
        if not st.fits(f"train step batch {batch}", 20 if not sh.quick else 5):
            break
        memory = {}
        with st.case(f"train step batch {batch}"):
            steps = {p: train_step(model, p, batch, dev, amp)[0] for p in paths}
            memory = {p: step_memory_mib(fn, dev) for p, fn in steps.items()}
            times = timed_in_turn(steps, sh.train_steps, sh.train_warmup, dev)
            for p in paths:
                sec = statistics.median(times[p])
                st.add(_step_row(sh.train_model, p, batch, sec, memory[p], per_pair, peaks))
                if p == "fused-triton":
                    compute_pairs_s = max(compute_pairs_s or 0, batch / sec)
        steps = None
        if dev.type == "cuda" and batch == sh.train_batch and memory:
            largest = _quarter_memory_batch(st, dev, batch, memory)
            if largest > batch:
                batches.append(min(largest, 2048))
            torch.cuda.empty_cache()

    rates = _loader_rates(st, sh)
    if compute_pairs_s and rates:
        verdict = _bottleneck(compute_pairs_s, rates, os.cpu_count() or 1)
        st.note(compute_pairs_per_s=round(compute_pairs_s, 1), bottleneck=verdict)
