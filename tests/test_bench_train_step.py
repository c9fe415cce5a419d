"""benchmarks/bench_train_step.py runs end to end on the tiny model and records comparable paths."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_train_step_tiny_cpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the script refuses the interpreter
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_train_step.py"), "--model", "tiny", "--device", "cpu"]
    cmd += ["--batch", "2", "--steps", "1", "--warmup", "1", "--op-steps", "1", "--out", str(tmp_path)]
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=300)

    record = json.loads((tmp_path / "bench_train_step-cpu.json").read_text())
    assert record["config"]["model"] == "tiny" and record["config"]["batch"] == 2
    assert record["K"] == 3  # int(64 * (1 - 0.95)) kept patches of the 8x8 grid
    assert record["environment"]["torch"] == __import__("torch").__version__
    results = record["results"]
    assert list(results) == ["embed-all", "gather-torch"]  # no fused-triton without CUDA
    # The same weights, frames and masks: both paths compute the same loss.
    assert abs(results["embed-all"]["train"]["first_loss"] - results["gather-torch"]["train"]["first_loss"]) < 1e-5
    for r in results.values():
        assert r["op"]["ms"] > 0 and r["train"]["samples_per_s"] > 0
    table = (tmp_path / "bench_train_step-cpu.md").read_text()
    assert "| embed-all |" in table and "| gather-torch |" in table
