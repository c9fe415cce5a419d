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

import dataclasses
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


@dataclass(frozen=True)
class StageTime:
    """One stage of a run: busy seconds in its thread, frames per busy second (None for no time), the thread."""

    seconds: float
    fps: float | None
    thread: str


@dataclass(frozen=True)
class Timing:
    """The report's ``time``: the wall time (rounded up), the busy time per stage (rounded down) and per thread."""

    total_seconds: float
    stages: dict[str, StageTime]
    busy_seconds_per_thread: dict[str, float]

    NOTE = ("stage seconds are busy time in the stage's thread; threads overlap, so stages of different threads may "
            "add up to more than total_seconds, the stages of one thread never do")  # fmt: skip

    def to_json(self) -> dict:
        return {
            "total_seconds": self.total_seconds,
            "stages": {s: dataclasses.asdict(t) for s, t in self.stages.items()},
            "busy_seconds_per_thread": dict(self.busy_seconds_per_thread),
            "note": self.NOTE,
        }

    @classmethod
    def from_json(cls, d: dict) -> Timing:
        stages = {s: StageTime(t["seconds"], t["fps"], t.get("thread", "n/a")) for s, t in d["stages"].items()}
        return cls(d["total_seconds"], stages, dict(d.get("busy_seconds_per_thread") or {}))


@dataclass
class StageTimes:
    """Busy seconds per pipeline stage, the number of frames that went through, and the thread of each stage
    (``read_out`` runs in the writer thread on a CPU; see the module docstring). The timer a stream adds to
    (:meth:`siammae.propagation.driver.Tracker.stream`); :meth:`timing` is what the report keeps."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    frames: int = 0
    threads: dict[str, str] = field(default_factory=lambda: dict(STAGE_THREADS))

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    def stages(self) -> dict[str, StageTime]:
        return {
            s: StageTime(_down(t), round(self.frames / t, 2) if t > 0 else None, self.threads[s])
            for s, t in self.seconds.items()
        }

    def timing(self, total_seconds: float) -> Timing:
        """The wall time (rounded up) with the stages (rounded down) and each thread's busy total."""
        stages = self.stages()
        per_thread: dict[str, float] = {}
        for st in stages.values():
            per_thread[st.thread] = round(per_thread.get(st.thread, 0.0) + st.seconds, 4)
        return Timing(_up(total_seconds), stages, per_thread)


@dataclass(frozen=True)
class Latency:
    """Per-frame latency, decoded -> written, in milliseconds (None before the first frame)."""

    frames: int
    median_ms: float | None
    p95_ms: float | None
    max_ms: float | None


@dataclass(frozen=True)
class Memory:
    """Peak host memory of the process and peak GPU memory of the run (None on a CPU), MiB."""

    peak_host_mib: float
    peak_gpu_mib: float | None


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

    def summary(self) -> Latency:
        ms = lambda s: None if s is None else round(1000 * s, 2)  # noqa: E731
        last = self.max_s if self.count else None
        return Latency(self.count, ms(self.quantile(0.5)), ms(self.quantile(0.95)), ms(last))


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


# ------------------------------------------------------------------------------------------------ the report
@dataclass(frozen=True)
class SourceInfo:
    """What was read: the source as given, its kind ("video" | "folder" | "live"), size, frame rate and frames."""

    path: str
    kind: str
    width: int
    height: int
    fps: float | None
    frames_in_source: int | None


@dataclass(frozen=True)
class Processing:
    """The size frames were encoded at (height x width), the patch grid (rows, columns) and the patch size."""

    width: int
    height: int
    grid: tuple[int, int]
    patch_size: int


@dataclass(frozen=True)
class RunSettings:
    """What decides a run's outputs: the preset's record (:meth:`~siammae.propagation.config.Preset.record`: name,
    propagation constants, size override, input rule, attention), the run options, and the weights' provenance
    (name or path and sha256; None for an encoder without a record)."""

    preset: dict
    chunk: int
    dtype: str
    backend: str
    encoder: str
    weights: dict | None

    _OPTIONS = ("chunk", "dtype", "backend", "encoder", "weights")

    def to_json(self) -> dict:
        return {**self.preset, **{k: getattr(self, k) for k in self._OPTIONS}}

    @classmethod
    def from_json(cls, d: dict) -> RunSettings:
        return cls({k: v for k, v in d.items() if k not in cls._OPTIONS}, *(d.get(k) for k in cls._OPTIONS))

    def changes(self, other: RunSettings) -> list[str]:
        """What differs from ``other`` among the settings that decide the outputs (every field of the preset record,
        the dtype, the encoder type, the weights' sha256), as names; the chunk, the kernel backend and where the
        weights were read from do not change the outputs."""
        changed = [k for k in sorted(set(self.preset) | set(other.preset)) if self.preset.get(k) != other.preset.get(k)]
        sha = lambda w: (w or {}).get("sha256")  # noqa: E731
        if sha(self.weights) != sha(other.weights) or (self.weights is None) != (other.weights is None):
            changed.append("weights")
        changed += [k for k in ("dtype", "encoder") if getattr(self, k) != getattr(other, k)]
        return changed


@dataclass(frozen=True)
class RunReport:
    """What one tracking run did (``report.json`` / ``report.md``; :meth:`to_json` is the JSON, field for field).

    status: "complete" | "input-gaps" (a live source with holes, every frame decoded tracked) | "interrupted" |
    "error" (``error`` says why). ``objects`` (masks) or ``keypoints`` (names) say what was tracked; ``gaps`` (a
    live source's damage) and ``dropped`` (frames a real-time source skipped: count and index ranges) only for
    live sources.
    """

    status: str
    error: str | None
    started: str
    frames: int
    video: SourceInfo
    processing: Processing
    settings: RunSettings
    outputs: dict[str, str | None]
    versions: dict
    device: dict
    time: Timing
    fps: float | None
    latency: Latency
    memory: Memory
    objects: tuple[int, ...] | None = None
    keypoints: tuple[str, ...] | None = None
    gaps: dict | None = None
    dropped: dict | None = None

    @property
    def interrupted(self) -> bool:
        return self.status == "interrupted"

    @property
    def weights(self) -> dict | None:
        return self.settings.weights

    def to_json(self) -> dict:
        d = {
            "status": self.status,
            "interrupted": self.interrupted,
            "error": self.error,
            "started": self.started,
            "frames": self.frames,
            "video": dataclasses.asdict(self.video),
            "processing": {**dataclasses.asdict(self.processing), "grid": list(self.processing.grid)},
        }
        if self.objects is not None:
            d["objects"] = list(self.objects)
        if self.keypoints is not None:
            d["keypoints"] = list(self.keypoints)
        d |= {
            "settings": self.settings.to_json(),
            "outputs": dict(self.outputs),
            "versions": dict(self.versions),
            "device": dict(self.device),
            "time": self.time.to_json(),
            "fps": self.fps,
            "latency": dataclasses.asdict(self.latency),
            "memory": dataclasses.asdict(self.memory),
        }
        if self.gaps is not None:
            d["gaps"] = self.gaps
        if self.dropped is not None:
            d["dropped"] = self.dropped
        return d

    @classmethod
    def from_json(cls, d: dict) -> RunReport:
        """A report as :meth:`to_json` wrote it (a finished video of a batch, read back); KeyError / TypeError /
        ValueError when it is not one."""
        p = d["processing"]
        return cls(
            status=d["status"],
            error=d["error"],
            started=d["started"],
            frames=int(d["frames"]),
            video=SourceInfo(**d["video"]),
            processing=Processing(p["width"], p["height"], tuple(p["grid"]), p["patch_size"]),
            settings=RunSettings.from_json(d["settings"]),
            outputs=dict(d["outputs"]),
            versions=dict(d["versions"]),
            device=dict(d["device"]),
            time=Timing.from_json(d["time"]),
            fps=d["fps"],
            latency=Latency(**d["latency"]),
            memory=Memory(**d["memory"]),
            objects=None if d.get("objects") is None else tuple(d["objects"]),
            keypoints=None if d.get("keypoints") is None else tuple(d["keypoints"]),
            gaps=d.get("gaps"),
            dropped=d.get("dropped"),
        )

    def write(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """As JSON and as Markdown (the pair :func:`report_paths` names), atomically."""
        json_path, md = report_paths(path)
        write_json(json_path, self.to_json())
        write_text(md, self.to_markdown())
        return json_path, md

    def to_markdown(self) -> str:
        return to_markdown(self.to_json())


def _fmt(x, unit: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:,.2f}{unit}"
    return f"{x}{unit}"


def to_markdown(r: dict) -> str:
    """A report (:meth:`RunReport.to_json`) as a Markdown page."""
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
