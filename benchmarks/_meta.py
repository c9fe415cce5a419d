"""What every benchmark result records about where it ran, and how results are written.

    meta = environment()                      # machine, versions, commit, device
    write_results("propagate_cpu", meta, rows, markdown)

``environment()`` names the CPU (model, cores, memory), the accelerator when CUDA is present (name,
capability, memory, driver runtime), Python / PyTorch / Triton versions, and the git commit of the checkout
(with a ``-dirty`` suffix when tracked files differ from it), so that a number can be traced to the code that
made it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def git_commit(root: Path = ROOT) -> str:
    """Commit hash of ``root``, with ``-dirty`` when tracked files are modified; "unknown" outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=root, capture_output=True).returncode
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
    try:
        return __import__(module).__version__
    except ImportError:
        return None


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
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder, renamed over ``path``: never a half-written result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_results(name: str, meta: dict, rows: list[dict], markdown: str, folder: Path = RESULTS) -> Path:
    """Write ``<folder>/<name>.json`` ({"meta", "rows"}) and ``<folder>/<name>.md``; returns the JSON path."""
    folder = Path(folder)
    _write_atomic(folder / f"{name}.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    _write_atomic(folder / f"{name}.md", markdown.rstrip() + "\n")
    return folder / f"{name}.json"
