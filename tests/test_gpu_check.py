"""benchmarks/gpu_check.py --quick: every stage of the GPU check runs on tiny shapes on the CPU (Triton through the
interpreter) and records results or the reason it skipped, so that CI catches the script breaking before a GPU
is at hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
STAGES = ("correctness", "speed", "encoder", "track", "train")


def _run(*args, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = _run("--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "gpu_check-quick.json").read_text())
    return out, data, {s["stage"]: s for s in data["rows"]}


@pytest.mark.slow  # a dry run of a benchmark script, ~4 min of interpreted Triton
def test_every_stage_has_results_or_a_reason(quick):
    out, data, stages = quick
    assert tuple(stages) == STAGES
    for name, s in stages.items():
        assert s["status"] == "ok", (name, s.get("error"))
        assert not s["failures"], (name, s["failures"])
        assert s["results"], name  # tiny shapes: every stage measures something on the CPU
        for skip in s["skipped"]:
            assert skip["what"] and skip["reason"], skip
    assert data["meta"]["commit"] and data["meta"]["torch"] and "nvidia_driver" in data["meta"]
    md = (out / "gpu_check-quick.md").read_text()
    assert all(f"## {name}" in md for name in STAGES)
    assert not list(out.glob(".*")), "per-stage records are removed once the results are written"


@pytest.mark.slow  # a dry run of a benchmark script, ~4 min of interpreted Triton
def test_kernels_checked_against_reference_and_oracle(quick):
    _, _, stages = quick
    rows = stages["correctness"]["results"]
    tests = [r for r in rows if r["check"] == "pytest -m gpu"]
    assert tests and tests[0]["returncode"] in (0, 5)  # on the CPU every gpu test skips or is deselected
    topk = [r for r in rows if r["check"] == "topk_affinity"]
    assert {r["case"] for r in topk} == {"siammae-davis", "dino"}
    gather = [r for r in rows if r["check"] == "patch_embed_gather"]
    assert {r["precision"] for r in gather} == {"fp32", "bf16 autocast"}
    for r in topk + gather:
        assert r["ok"] and r["deterministic"], r
    assert all(r["max_err_vs_fp64"] < 1e-4 for r in topk)
    assert all(r["d_weight_max_err_vs_fp64"] < 1e-3 for r in gather if r["precision"] == "fp32")


@pytest.mark.slow  # a dry run of a benchmark script, ~4 min of interpreted Triton
def test_speed_encoder_track_train_rows(quick):
    _, _, stages = quick
    speed = stages["speed"]["results"]
    assert {r["method"] for r in speed} == {"dense", "torch", "triton"}
    assert all(r["ms_per_frame"] > 0 and r["speedup_vs_dense"] > 0 for r in speed)
    enc = stages["encoder"]
    assert {(r["backend"], r["dtype"]) for r in enc["results"]} >= {("eager", "fp32"), ("onnxruntime", "fp32")}
    assert any("tensorrt" in s["what"] for s in enc["skipped"])  # no GPU: skipped with its reason
    assert enc["notes"]["best_batch"]
    (track,) = stages["track"]["results"]
    assert track["fps"] > 0 and track["dino"]["fps"] > 0 and track["speedup_vs_dino"] > 0
    assert {"encode", "propagate"} <= set(track["stages_fps"])
    train = stages["train"]
    assert {r["path"] for r in train["results"] if r["check"] == "train step"} == {"embed-all", "fused-triton"}
    assert any(r["check"] == "loader" for r in train["results"]) and train["notes"]["flops_per_pair"] > 0


def test_bad_stage_is_one_error_line(tmp_path):
    proc = _run("--stages", "speed,warp", "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown stage(s) warp; valid: correctness, speed, encoder, track, train"
    ]
    assert not list(tmp_path.iterdir())
