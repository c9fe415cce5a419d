"""Training never loses work: a checkpoint on SIGINT / SIGTERM and by wall time; --resume takes the run's settings."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from siammae.cli.train import cli
from siammae.data.video import write_video
from siammae.errors import InputError
from siammae.model.checkpoint import read_checkpoint
from siammae.train import TrainConfig, train
from siammae.train.loop import Trainer, TrainingInterrupted
from siammae.train.resume import resume_config
from siammae.train.state import list_checkpoints

REPO = Path(__file__).resolve().parents[2]
FLAGS = [
    "--model", "tiny", "--input-size", "32", "--batch-size", "4", "--gap", "2", "6", "--total-steps", "40",
    "--lr", "1e-2", "--log-every", "1", "--save-every", "1000", "--save-minutes", "0", "--vis-every", "0",
    "--device", "cpu", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    for i in range(4):
        big = rng.integers(0, 256, (12, 20, 3)).astype(np.uint8)
        big = np.asarray(Image.fromarray(big).resize((80, 48), Image.BILINEAR))
        write_video(root / f"clip{i}.mp4", (np.ascontiguousarray(big[:, t : t + 48]) for t in range(16)), fps=10)
    return root


def cfg(data, out, **kw) -> TrainConfig:
    base = dict(
        data=(str(data),), out=str(out), model="tiny", input_size=32, batch_size=4, gap=(2, 6), total_steps=40,
        lr=1e-2, workers=0, log_every=1, save_every=1000, save_minutes=0.0, vis_every=0, device="cpu", quiet=True,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """8 steps of the 40-step schedule in one go: what an interrupted and resumed run must equal."""
    return train(cfg(data, tmp_path_factory.mktemp("straight"), max_steps=8))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = read_checkpoint(a)["model"], read_checkpoint(b)["model"]
    return all(torch.equal(v, wb[k]) for k, v in wa.items())


def test_sigterm_saves_the_last_step_and_resume_equals_a_straight_run(data, tmp_path, monkeypatch, straight):
    real = Trainer.train_step

    def step(self, i, batches):
        if i == 3:  # a SIGTERM arrives during step 4: the step finishes, is saved, and the run stops
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, i, batches)

    monkeypatch.setattr(Trainer, "train_step", step)
    with pytest.raises(TrainingInterrupted, match=r"SIGTERM: training stopped after step 4 of 8.*--resume") as e:
        train(cfg(data, tmp_path, max_steps=8))
    assert e.value.step == 4 and e.value.checkpoint.name == "step_00000004.pt"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    monkeypatch.setattr(Trainer, "train_step", real)
    again, changes = resume_config(tmp_path, {"max_steps": 8})
    assert changes == {}  # max_steps 8 was the run's own
    resumed = train(again, changes)
    assert resumed.step == 8 and len(resumed.losses) == 4
    assert same_weights(resumed.checkpoint, straight.checkpoint)
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_ctrl_c_with_workers_keeps_the_work_and_says_how_to_resume(data, tmp_path, straight):
    """Ctrl-C reaches the whole process group (the DataLoader workers too): a checkpoint of the last finished step,
    `interrupted: ...` and status 130; `--out OUT --resume` alone then finishes the same schedule."""
    out = tmp_path / "run"
    args = ["--data", str(data), "--out", str(out), *FLAGS, "--max-steps", "8", "--workers", "2"]
    # the same thread count as this process: the straight run it is compared with ran here, and a sum over 2 threads
    # rounds otherwise than over 1
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    p = subprocess.Popen(
        [sys.executable, "-m", "siammae.cli.train", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    log = out / "log.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and p.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=240)
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted: SIGINT: training stopped after step "), err
    assert f"siammae-train --out {out} --resume" in err and "Traceback" not in err
    saved = list_checkpoints(out)
    assert len(saved) == 1
    stopped = int(saved[0].stem.split("_")[1])
    assert 2 <= stopped < 8
    res = CliRunner().invoke(cli, ["--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    final = list_checkpoints(out)[-1]
    assert final.name == "step_00000008.pt" and same_weights(final, straight.checkpoint)


def test_resume_takes_the_runs_settings_and_refuses_changes(data, tmp_path):
    out = tmp_path / "run"
    train(cfg(data, out, max_steps=2, seed=3))
    resumed, changes = resume_config(out, {"max_steps": 3, "workers": 1})
    assert (resumed.seed, resumed.lr, resumed.total_steps, resumed.max_steps, resumed.workers) == (3, 1e-2, 40, 3, 1)
    assert changes == {"max_steps": (2, 3), "workers": (0, 1)} and resumed.resume
    for given, what in (
        ({"lr": 5e-6}, r"trained with lr = 0\.01; --lr 5e-06 would change the schedule \(allowed with --resume: "),
        ({"model": "vits16"}, "model = 'tiny'; --model vits16 would change the model"),
        ({"gap": (4, 8)}, r"gap = \(2, 6\); --gap 4 8 would change the data"),
        ({"data": (str(tmp_path),)}, "would change the data"),
        ({"total_steps": 80}, "total_steps = 40; --total-steps 80 would change the schedule"),
    ):
        with pytest.raises(InputError, match=what):
            resume_config(out, given)
    # the same data named another way is the same data
    rel = os.path.relpath(data)
    assert resume_config(out, {"data": (rel,)})[1] == {}
    # through the command: the allowed change is applied and recorded in run.json
    res = CliRunner().invoke(cli, ["--out", str(out), "--resume", "--max-steps", "3"])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert run["train"]["max_steps"] == 3 and run["train"]["seed"] == 3
    assert run["resumes"] == [{"step": 2, "changed": {"max_steps": {"was": 2, "now": 3}}}]
    bad = CliRunner().invoke(cli, ["--out", str(out), "--resume", "--batch-size", "8"])
    assert bad.exit_code == 2 and bad.output.startswith("error: --resume: ") and "batch_size = 4" in bad.output


def test_checkpoints_by_wall_time(data, tmp_path):
    """save_minutes: a checkpoint whenever that much time passed since the last one, whatever save_every says."""
    train(cfg(data, tmp_path / "t", max_steps=3, save_minutes=1e-9, keep_last=10))
    assert [p.name for p in list_checkpoints(tmp_path / "t")] == [f"step_{s:08d}.pt" for s in (1, 2, 3)]
    train(cfg(data, tmp_path / "s", max_steps=3, save_minutes=0.0, keep_last=10))
    assert [p.name for p in list_checkpoints(tmp_path / "s")] == ["step_00000003.pt"]  # the end only
