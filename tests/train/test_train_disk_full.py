"""A disk that fills while training saves a checkpoint: one ``error:`` line naming the file and the cause, exit 2,
the previous checkpoint still loadable and no temporary file left (torch.save given a path said only
``[enforce fail at inline_container.cc:672] unexpected pos``, with a traceback)."""

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siammae.model.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[2]
# tiny model, 32-px crops: a training checkpoint is about 1.75 MB, model.pt about 0.6 MB
TRAIN = ["--model", "tiny", "--input-size", "32", "--batch-size", "2", "--workers", "0", "--device", "cpu",
         "--quiet", "--gap", "1", "1", "--save-every", "1", "--keep-last", "1"]  # fmt: skip


@pytest.fixture
def video(tmp_path) -> Path:
    folder = tmp_path / "video"
    folder.mkdir()
    for i in range(3):
        rgb = np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / f"{i:05d}.jpg")
    return folder


def _train(video: Path, out: Path, *extra, preexec=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "siammae.cli.train", "--data", str(video), "--out", str(out), *TRAIN, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, preexec_fn=preexec)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("warning:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture
def small_disk(tmp_path):
    """A real 2.6 MB file system (tmpfs): room for one training checkpoint, not two. Needs root and mount."""
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run([mount, "-t", "tmpfs", "-o", "size=2600k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize("resume", [False, True])
def test_a_full_disk_while_saving_is_one_line_and_the_last_checkpoint_stays(video, small_disk, resume):
    out = small_disk / "run"
    if resume:  # a first run leaves step 1 (and model.pt, removed here to make room for the checkpoint only)
        assert _train(video, out, "--max-steps", "1").returncode == 0
        (out / "model.pt").unlink()
    proc = _train(video, out, "--max-steps", "3", *(["--resume"] if resume else []))
    line = _one_line(proc)
    assert line.startswith("error: cannot write ") and "No space left on device" in line, line
    assert "step_00000002.pt" in line, line
    kept = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in kept] == ["step_00000001.pt"], kept  # no temporary file left either
    assert read_checkpoint(kept[0])["train"]["step"] == 1


def _file_size_limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))


def test_a_write_that_fails_midway_names_the_checkpoint(video, tmp_path):
    """The same failure without root: a file-size limit makes the checkpoint's writes fail partway (EFBIG)."""
    out = tmp_path / "run"
    line = _one_line(_train(video, out, "--max-steps", "1", preexec=_file_size_limit))
    assert line.startswith("error: cannot write ") and "step_00000001.pt: File too large" in line, line
    assert not list((out / "checkpoints").iterdir())
