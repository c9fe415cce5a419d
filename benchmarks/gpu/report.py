"""The Markdown of ``gpu_check.py``'s results: the machine, then per stage its status, a table of its results and
what it skipped and why."""

from __future__ import annotations

import subprocess

from benchmarks._meta import environment_markdown

# per stage: the columns of its table (the JSON has everything)
COLUMNS = {
    "correctness": ("check", "grid", "case", "model", "precision", "dtype", "max_err_vs_ref", "max_err_vs_fp64",
                    "ref_max_err_vs_fp64", "d_weight_max_err_vs_fp64", "d_imgs_max_err_vs_fp64", "deterministic",
                    "ok", "summary"),
    "speed": ("grid", "method", "dtype", "chunk", "ms_per_frame", "speedup_vs_dense", "executed_tflops",
              "fraction_of_peak", "peak_mib"),
    "encoder": ("model", "backend", "dtype", "batch", "frames_per_s", "ms_per_batch", "tflops", "max_abs_err",
                "min_cosine", "setup_s"),
    "track": ("model", "dtype", "frames", "fps", "stages_fps", "peak_gpu_mib", "dino", "speedup_vs_dino"),
    "train": ("check", "path", "batch", "ms_per_step", "pairs_per_s", "tflops", "mfu", "step_memory_mib", "source",
              "pairs_per_s", "pairs_per_cpu_s"),
}  # fmt: skip


def driver_version() -> str | None:
    """The NVIDIA driver version from nvidia-smi, None without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.2f}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_cell(x)}" for k, x in v.items() if not isinstance(x, (dict, list)))
    return str(v).replace("|", "/")


def markdown(meta: dict, settings: dict, stages: list[dict]) -> str:
    lines = [
        "# GPU check" + (" (CPU dry run, tiny shapes)" if meta.get("gpu") is None else ""),
        "",
        environment_markdown(meta),
        f"- NVIDIA driver: {meta.get('nvidia_driver') or 'none'}",
        "",
        f"Made by `python benchmarks/gpu_check.py`: {len(stages)} stage(s) in {settings['total_s']} s "
        f"(limit {settings['time_limit_s']:.0f} s).",
        "",
        "| stage | status | seconds | budget s | results | failed | skipped |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        lines.append(f"| {s['stage']} | {s['status']} | {s.get('wall_s', s.get('seconds', ''))} | "
                     f"{_cell(s.get('budget_s'))} | {len(s['results'])} | {len(s.get('failures', []))} | "
                     f"{len(s['skipped'])} |")  # fmt: skip
    for s in stages:
        lines += ["", f"## {s['stage']}", ""]
        if s.get("error"):
            lines += ["Error:", "", "```", s["error"].strip()[-1500:], "```", ""]
        cols = [c for c in dict.fromkeys(COLUMNS.get(s["stage"], ())) if any(c in r for r in s["results"])]
        if s["results"] and cols:
            lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in s["results"]]
        for k, v in s.get("notes", {}).items():
            lines.append(f"- {k}: {_cell(v) if not isinstance(v, list) else '; '.join(_cell(x) for x in v)}")
        for f in s.get("failures", []):
            lines.append(f"- **FAILED** {f['what']}: {f['error']}")
        for sk in s["skipped"]:
            lines.append(f"- skipped {sk['what']}: {sk['reason']}")
    return "\n".join(lines)
