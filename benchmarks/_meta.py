"""What every benchmark result records about where it ran, and how results are written.

    meta = environment()                      # machine, versions, commit, device
    write_results("propagate_cpu", meta, rows, markdown)

``environment()`` names the CPU (model, cores, memory, load), the accelerator when CUDA is present (name,
capability, memory, driver runtime), Python / PyTorch / Triton / NumPy versions, the versions of the optional
runtimes a benchmark may use (PyAV, onnxruntime and its execution providers, TensorRT; None when not
installed), and the git commit of the checkout (with a ``-dirty`` suffix when tracked files differ from it),
so that a number can be traced to the code that made it.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

from siammae.io import write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OPTIONAL_LIBRARIES = (("PyAV", "av"), ("onnxruntime", "onnxruntime"), ("TensorRT", "tensorrt"))  # (label, key)


def random_vits16(path: Path) -> Path:
    """A random ViT-S/16 (seed 0) saved by ``torch.save`` at ``path``: a model file that needs no download, for the
    benchmarks that time a run (the weights change no time)."""
    from siammae.model.encoder import ViTEncoder
    from siammae.model.registry import model_config

    torch.manual_seed(0)
    torch.save(ViTEncoder(model_config("vits16")).state_dict(), path)
    return path


def git_commit(root: Path = ROOT) -> str:
    """Commit hash of ``root``, with ``-dirty`` when tracked files outside ``benchmarks/results`` are modified;
    "unknown" outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        # Results files being rewritten do not make the measured code dirty.
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", ".", ":(exclude)benchmarks/results"], cwd=root, capture_output=True
        ).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(module: str) -> str | None:
    """``module.__version__``, None when the module is not installed."""
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _onnxruntime_providers() -> list[str] | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.get_available_providers()


def environment() -> dict:
    """Machine, versions and commit, as a JSON-ready dict."""
    meta = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "av": _version("av"),
        "onnxruntime": _version("onnxruntime"),
        "onnxruntime_providers": _onnxruntime_providers(),
        "tensorrt": _version("tensorrt"),
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        meta["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "cuda_runtime": torch.version.cuda,
        }
    return meta


def environment_markdown(meta: dict) -> str:
    """The environment as a Markdown bullet list."""
    gpu = meta["gpu"]
    lines = [
        f"- commit `{meta['commit']}`, {meta['date_utc']}",
        f"- CPU: {meta['cpu']}, {meta['cpu_cores']} cores ({meta['torch_threads']} torch threads), "
        f"{meta['memory_gib']} GiB, load average {meta['load_average']}",
        f"- GPU: {gpu['name']} (sm {gpu['capability']}, {gpu['memory_gib']} GiB, CUDA {gpu['cuda_runtime']})"
        if gpu
        else "- GPU: none",
        f"- Python {meta['python']}, PyTorch {meta['torch']}, Triton {meta['triton']}, "
        f"NumPy {meta['numpy']}, {meta['os']}",
    ]
    optional = [(label, meta[key]) for label, key in OPTIONAL_LIBRARIES if meta.get(key)]
    if optional:
        lines.append("- " + ", ".join(f"{label} {version}" for label, version in optional))
    return "\n".join(lines)


def write_results(name: str, meta: dict, rows: list[dict], markdown: str, folder: Path = RESULTS, **fields) -> Path:
    """Write ``<folder>/<name>.json`` ({"meta", **fields, "rows"}: ``fields`` holds what a benchmark records
    besides its rows, e.g. its settings) and ``<folder>/<name>.md``; returns the JSON path."""
    folder = Path(folder)
    write_json(folder / f"{name}.json", {"meta": meta, **fields, "rows": rows})
    write_text(folder / f"{name}.md", markdown.rstrip() + "\n")
    return folder / f"{name}.json"
