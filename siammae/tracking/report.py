"""Run reports: what was tracked, with which settings and software, how fast each stage ran, peak memory.

``report.json`` is for machines (benchmarks, CI); ``report.md`` beside it is the same content for people.
Host memory is the process's high-water mark (``VmHWM`` in /proc/self/status, else ``getrusage``), GPU memory the
peak ``torch.cuda.max_memory_allocated``.

Stage times are busy time, each measured in the thread that runs the stage: decoding (and resizing) in the reader
thread; encoding, propagation and, on a GPU, the read-out in the main thread; the read-out on a CPU and writing in the
writer thread. The threads overlap, so stages of different threads may add up to more than the end-to-end time; the
stages of one thread never do (each thread's busy time is at most the run's wall time). The report states the
thread of each stage and each thread's total, rounded so that this holds exactly (stages down, the total up).
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from siammae.io import write_json, write_text

STAGES = ("decode", "encode", "propagate", "read_out", "write")
STAGE_THREADS = {"decode": "reader", "encode": "main", "propagate": "main", "read_out": "main", "write": "writer"}


def _down(x: float) -> float:
    return math.floor(x * 1e4) / 1e4


def _up(x: float) -> float:
    return math.ceil(x * 1e4) / 1e4


@dataclass
class StageTimes:
    """Busy seconds per pipeline stage, the number of frames that went through, and the thread of each stage
    (``read_out`` runs in the writer thread on a CPU; see the module docstring)."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    frames: int = 0
    threads: dict[str, str] = field(default_factory=lambda: dict(STAGE_THREADS))

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    def as_dict(self) -> dict:
        return {
            s: {"seconds": _down(t), "fps": round(self.frames / t, 2) if t > 0 else None, "thread": self.threads[s]}
            for s, t in self.seconds.items()
        }

    def report(self, total_seconds: float) -> dict:
        """The report's ``time``: the wall time (rounded up), the busy time per stage (rounded down) and per thread."""
        stages = self.as_dict()
        per_thread: dict[str, float] = {}
        for st in stages.values():
            per_thread[st["thread"]] = round(per_thread.get(st["thread"], 0.0) + st["seconds"], 4)
        return {
            "total_seconds": _up(total_seconds),
            "stages": stages,
            "busy_seconds_per_thread": per_thread,
            "note": "stage seconds are busy time in the stage's thread; threads overlap, so stages of different "
            "threads may add up to more than total_seconds, the stages of one thread never do",
        }


class LatencyStats:
    """Per-frame latencies (seconds) summarised in constant memory: a histogram of 1,200 logarithmic bins from
    10 us to 1,000 s (each bin 1.5 % wide), so an endless live stream does not grow it; quantiles are read from the
    histogram (the bin's geometric centre, within 0.8 %)."""

    _LO, _HI, _BINS = 1e-5, 1e3, 1200

    def __init__(self):
        self.counts = [0] * self._BINS
        self.count = 0
        self.max_s = 0.0
        self._log_ratio = math.log(self._HI / self._LO) / self._BINS

    def add(self, seconds: float) -> None:
        b = int(math.log(max(seconds, self._LO) / self._LO) / self._log_ratio)
        self.counts[min(b, self._BINS - 1)] += 1
        self.count += 1
        self.max_s = max(self.max_s, seconds)

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (0..1) in seconds; None before the first frame."""
        if self.count == 0:
            return None
        rank, seen = q * (self.count - 1), 0
        for b, n in enumerate(self.counts):
            seen += n
            if seen > rank:
                return min(self._LO * math.exp((b + 0.5) * self._log_ratio), self.max_s)
        return self.max_s

    def as_dict(self) -> dict:
        ms = lambda s: None if s is None else round(1000 * s, 2)  # noqa: E731
        return {"frames": self.count, "median_ms": ms(self.quantile(0.5)), "p95_ms": ms(self.quantile(0.95)),
                "max_ms": ms(self.max_s if self.count else None)}  # fmt: skip


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_host_memory_mib() -> float:
    """Peak resident memory of this process so far, MiB."""
    kib = _proc_status_kib("VmHWM")
    if kib is None:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kib = rss / 1024 if sys.platform == "darwin" else rss  # macOS reports bytes, Linux KiB
    return kib / 1024


def host_memory_mib() -> float | None:
    """Current resident memory of this process, MiB (None where /proc is not available)."""
    kib = _proc_status_kib("VmRSS")
    return None if kib is None else kib / 1024


def peak_gpu_memory_mib(device) -> float | None:
    """Peak memory allocated by PyTorch on a CUDA ``device`` since the last reset, MiB (None on the CPU)."""
    if device.type != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20


def versions() -> dict:
    import numpy
    import PIL
    import torch

    import siammae

    out = {
        "siammae": getattr(siammae, "__version__", "unknown"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
    }
    try:
        import av

        out["av"] = av.__version__
    except ImportError:
        out["av"] = None
    return out


def device_info(device) -> dict:
    import torch

    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "index": device.index or 0}
    return {
        "type": device.type,
        "name": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def report_paths(path: str | os.PathLike | None) -> tuple[Path, Path] | tuple[()]:
    """(JSON, Markdown) files of ``--report path``: ``run.json`` -> run.json + run.md; ``run.md`` -> run.json +
    run.md (never Markdown written over the JSON); any other name gets ``.md`` beside it. ``()`` for None."""
    if path is None:
        return ()
    path = Path(path)
    if path.suffix.lower() == ".md":
        return path.with_suffix(".json"), path
    return path, path.with_suffix(".md")


def write_report(path: str | os.PathLike, report: dict) -> tuple[Path, Path]:
    """Write ``report`` as JSON and as Markdown (the pair :func:`report_paths` names), atomically."""
    json_path, md = report_paths(path)
    write_json(json_path, report)
    write_text(md, to_markdown(report))
    return json_path, md


def _fmt(x, unit: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:,.2f}{unit}"
    return f"{x}{unit}"


def to_markdown(r: dict) -> str:
    """A report dict (see :meth:`siammae.tracking.run.TrackingRun.report`) as a Markdown page."""
    v, p = r["video"], r["processing"]
    lines = [
        f"# siammae-track report: {Path(v['path']).name}",
        "",
        f"- status: **{r['status']}**" + (f" ({r['error']})" if r.get("error") else ""),
        f"- started: {r['started']}",
        f"- video: `{v['path']}` ({v['kind']}, {v['width']}x{v['height']}, {_fmt(v['fps'])} fps, "
        f"{_fmt(v['frames_in_source'])} frames in the source)",
        f"- frames tracked: {r['frames']}",
        f"- encoded at {p['width']}x{p['height']} (patch {p['patch_size']}, grid {p['grid'][1]}x{p['grid'][0]})",
        *([f"- objects: {', '.join(str(i) for i in r['objects'])}"] if "objects" in r else []),
        *([f"- keypoints: {', '.join(r['keypoints'])}"] if "keypoints" in r else []),
        f"- device: {r['device']['type']} ({r['device']['name']})",
        "",
        "## Speed",
        "",
        "| stage | thread | busy seconds | frames / busy second |",
        "|---|---|---:|---:|",
    ]
    for stage, t in r["time"]["stages"].items():
        lines.append(f"| {stage} | {t.get('thread', 'n/a')} | {_fmt(t['seconds'])} | {_fmt(t['fps'])} |")
    lines += [
        f"| **end to end** | | {_fmt(r['time']['total_seconds'])} (wall) | **{_fmt(r['fps'])}** |",
        "",
        "Busy time per stage, in its own thread. The reader, main and writer threads overlap, so stages of different "
        "threads may add up to more than the wall time; the stages of one thread never do.",
        "",
    ]
    lat = r.get("latency")
    if lat and lat["frames"]:
        lines += [f"Latency per frame (decoded -> written): median {_fmt(lat['median_ms'], ' ms')}, "
                  f"p95 {_fmt(lat['p95_ms'], ' ms')}, max {_fmt(lat['max_ms'], ' ms')}.", ""]  # fmt: skip
    if r.get("gaps"):
        g = r["gaps"]
        lines += [f"Damaged input: {g['frames_missing']} frames missing in {g['count']} gaps, {g['corrupt_packets']} "
                  "corrupt packets; frames keep their numbers in the source.", ""]  # fmt: skip
    if "dropped" in r:
        d = r["dropped"]
        shown = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in d["indices"][:20])
        more = " ..." if len(d["indices"]) > 20 else ""
        lines += [f"Real time: {d['frames']} frames dropped at the input" + (f" ({shown}{more})" if shown else "")
                  + ".", ""]  # fmt: skip
    lines += [
        "## Memory",
        "",
        f"- peak host memory: {_fmt(r['memory']['peak_host_mib'], ' MiB')}",
        f"- peak GPU memory: {_fmt(r['memory']['peak_gpu_mib'], ' MiB')}",
        "",
        "## Settings",
        "",
    ]
    lines += [f"- {k}: `{val}`" for k, val in r["settings"].items() if k != "propagation"]
    lines += ["- propagation: " + ", ".join(f"{k}={val}" for k, val in r["settings"]["propagation"].items())]
    lines += ["", "## Outputs", ""] + [f"- {k}: `{val}`" for k, val in r["outputs"].items() if val]
    lines += ["", "## Versions", "", ", ".join(f"{k} {val}" for k, val in r["versions"].items()), ""]
    return "\n".join(lines)
