"""How fast every command's ``--help`` answers: wall time of a fresh ``python -m siammae.cli.<cmd> --help``, and of a
bare ``python -c pass`` on the same machine, so that the commands' own cost is the difference.

    python benchmarks/bench_cli_help.py [--repeats 5]

Target (issue 11): every ``--help`` well under a second after Python starts. Writes
``benchmarks/results/bench_cli_help.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._meta import environment, environment_markdown, write_results  # noqa: E402

COMMANDS = ("track", "eval", "export", "attn", "train", "demo")


def wall(args: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(args, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    base = statistics.median(wall([sys.executable, "-c", "pass"], args.repeats))
    rows = []
    for cmd in COMMANDS:
        t = statistics.median(wall([sys.executable, "-m", f"siammae.cli.{cmd}", "--help"], args.repeats))
        rows.append({"command": f"siammae-{cmd} --help", "median_s": round(t, 3), "after_python_s": round(t - base, 3)})
    md = [
        "# `--help` start-up time",
        "",
        environment_markdown(environment()),
        "",
        f"Median of {args.repeats} fresh processes; `python -c pass` takes {base:.3f} s here.",
        "",
        "| command | wall s | after Python starts, s |",
        "|---|---|---|",
        *(f"| `{r['command']}` | {r['median_s']:.3f} | {r['after_python_s']:.3f} |" for r in rows),
    ]
    print("\n".join(md))
    write_results("bench_cli_help", environment(), rows, "\n".join(md), python_start_s=round(base, 3))


if __name__ == "__main__":
    main()
