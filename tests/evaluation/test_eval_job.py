"""The command jobs (siammae/evaluation/job.py, attention/job.py, export/job.py): checked before torch is imported,
the way ``siammae-eval`` shows its progress (frames, with an estimate) and names a ``--sequences`` subset."""

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from helpers import ROOT, davis_2016_layout

from siammae.cli.eval import main
from siammae.errors import InputError
from siammae.evaluation.job import EvalJob
from siammae.model.checkpoint import save_checkpoint
from siammae.model.registry import create_model

CHECK = """
import sys
from {module} import {job}
try:
    {job}(**{kwargs}).check()
    print("ok")
except Exception as e:
    print(type(e).__name__, e)
print("torch loaded:", "torch" in sys.modules)
"""


@pytest.mark.parametrize(
    "module, job, kwargs, expect",
    [
        ("siammae.evaluation.job", "EvalJob", {"benchmark": "davis", "root": "D", "size": 100000}, "8192-pixel"),
        ("siammae.evaluation.job", "EvalJob", {"benchmark": "davis", "root": "D", "dtype": "fp16", "device": "cpu"},
         "fp16 needs a CUDA device"),
        ("siammae.evaluation.job", "EvalJob", {"benchmark": "davis", "root": "D", "results": "r", "preset": "dino"},
         "--preset only applies with --ckpt"),
        ("siammae.evaluation.job", "EvalJob", {"benchmark": "davis", "root": "D"}, "ok"),
        ("siammae.attention.job", "AttnJob", {"input": "nope.mp4"}, "nope.mp4: no such file"),
        ("siammae.attention.job", "AttnJob", {"input": ".", "heads": "0,9", "out": "maps"},
         "head 9 is out of range: the model has 6 heads"),
        ("siammae.export.job", "ExportJob", {"height": 64}, "give both --height and --width"),
        ("siammae.export.job", "ExportJob", {"ckpt": "nope.pt"}, "nope.pt: no such file"),
        ("siammae.export.job", "ExportJob", {}, "ok"),
    ],
)  # fmt: skip
def test_jobs_check_before_torch(module, job, kwargs, expect, tmp_path):
    code = CHECK.format(module=module, job=job, kwargs=kwargs)
    env = {"PYTHONPATH": str(ROOT), "SIAMMAE_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "torch"), "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "torch loaded: False", out.stdout + out.stderr
    assert expect in lines[0], lines[0]


def test_eval_job_refuses_option_mixes():
    with pytest.raises(InputError, match="give one of --ckpt, --encoder"):
        EvalJob("davis", "D", encoder="m.onnx", results="r").check()
    with pytest.raises(InputError, match="--preset, --size, --topk only apply with --ckpt"):
        EvalJob("davis", "D", results="r", preset="dino", size=240, overrides={"topk": 3}).check()


def test_a_subset_is_named_in_the_title_and_the_settings(fixture_data, tmp_path):
    root = davis_2016_layout(fixture_data, tmp_path / "DAVIS", ["blackswan"])
    out = tmp_path / "out"
    args = ["davis", "--root", str(root), "--year", "2016", "--out", str(out), "--sequences", "blackswan"]
    r = CliRunner().invoke(main, [*args, "--results", str(fixture_data / "davis2016/osvos_predictions")])
    assert r.exit_code == 0, r.output
    title = "DAVIS-2016 val, 1 sequence: blackswan"
    assert f"## {title}" in (out / "results.md").read_text()
    doc = json.loads((out / "results.json").read_text())
    assert doc["title"] == title and doc["settings"]["sequences"] == ["blackswan"]
    full = tmp_path / "full"
    osvos = str(fixture_data / "davis2016/osvos_predictions")
    r = CliRunner().invoke(main, [*args[:-4], "--out", str(full), "--results", osvos])
    assert r.exit_code == 0, r.output
    doc = json.loads((full / "results.json").read_text())
    assert doc["title"] == "DAVIS-2016 val" and "sequences" not in doc["settings"]  # the whole split, as before


def test_a_model_run_shows_frames_with_an_estimate(fixture_data, tmp_path):
    root = davis_2016_layout(fixture_data, tmp_path / "DAVIS", ["blackswan"])
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", create_model("tiny"))
    args = ["davis", "--root", str(root), "--year", "2016", "--out", str(tmp_path / "out"), "--ckpt", str(ckpt),
            "--size", "64", "--device", "cpu", "--batch-size", "2"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    frames = len(list((root / "JPEGImages/480p/blackswan").iterdir()))
    assert "  blackswan" in r.stderr and f"/{frames} [" in r.stderr, r.stderr  # frames done / all, time left
    assert "frame/s]" in r.stderr or "s/frame]" in r.stderr


COMMAND = """
import sys
from siammae.cli.{command} import main
try:
    main({args!r})
except SystemExit as e:
    print("status", e.code)
print("torch loaded:", "torch" in sys.modules)
"""


@pytest.mark.parametrize(
    "command, args, expect",
    [
        ("attn", [".", "--heads", "0,9", "--out", "maps"], "head 9 is out of range: the model has 6 heads"),
        ("attn", [".", "--device", "cuda", "--out", "maps"], "--device cuda needs a CUDA GPU"),
        ("eval", ["davis", "--root", "D", "--dtype", "fp16"], "--dtype fp16 needs a CUDA GPU"),
        ("export", ["--trt"], "--trt builds a TensorRT engine, which needs an NVIDIA GPU"),
        ("track", ["v", "--mask", "m.png", "--device", "cuda"], "--device cuda needs a CUDA GPU"),
    ],
)
def test_commands_refuse_before_torch(command, args, expect, tmp_path):
    """The command line, not only the job: nothing imports torch before the job's check has refused."""
    code = COMMAND.format(command=command, args=args)
    env = {"PYTHONPATH": str(ROOT), "SIAMMAE_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "torch"), "PATH": "",
           "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-2:] == ["status 2", "torch loaded: False"], out.stdout + out.stderr
    assert expect in out.stderr, out.stderr
