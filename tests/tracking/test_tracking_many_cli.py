"""siammae-track on many videos, under torchrun, and on a live pipe: the command end to end."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import ROOT, live_writer

from siammae.cli.track import main
from siammae.data.masks import write_mask
from siammae.data.synthetic import make_synthetic_clip
from siammae.data.video import write_video
from siammae.model.checkpoint import save_checkpoint
from siammae.model.registry import create_model

SIZE = (32, 48)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, create_model("tiny"))
    return path


def make_batch(root: Path, n: int, corrupt: int | None = None) -> Path:
    """``n`` tiny videos of 3-5 frames and a CSV manifest of them; video ``corrupt`` is garbage."""
    lines = ["video,mask"]
    for k in range(n):
        frames, masks = make_synthetic_clip(3 + k % 3, SIZE, seed=k)
        write_video(root / f"v{k}.mp4", frames, fps=10)
        write_mask(root / f"m{k}.png", masks[0])
        if k == corrupt:
            (root / f"v{k}.mp4").write_bytes(b"\x00not a video" * 64)
        lines.append(f"v{k}.mp4,m{k}.png")
    (root / "videos.csv").write_text("\n".join(lines) + "\n")
    return root / "videos.csv"


def args(ckpt, *extra):
    return [*map(str, extra), "--ckpt", str(ckpt), "--size", "32", "--preset", "dino", "--device", "cpu", "--quiet"]


def env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_batch_of_five_with_a_corrupt_one_then_rerun(tmp_path, ckpt):
    manifest = make_batch(tmp_path, 5, corrupt=3)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, args(ckpt, "--manifest", manifest, "--out", out))
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == f"error: 1 of 5 videos failed (see {out}/summary.md)"
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["rows"]] == ["complete"] * 3 + ["error", "complete"]
    assert sorted(p.name for p in (out / "v4" / "masks").iterdir()) == [f"{i:05d}.png" for i in range(4)]
    result = CliRunner().invoke(main, args(ckpt, "--manifest", manifest, "--out", out))  # resumes
    assert result.exit_code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["rows"]] == ["skipped"] * 3 + ["error", "skipped"]


def test_several_inputs_and_bad_combinations(tmp_path, ckpt):
    make_batch(tmp_path, 2)
    for k in range(2):  # --mask-dir ROOT: ROOT/<video name>/00000.png
        (tmp_path / "ann" / f"v{k}").mkdir(parents=True)
        (tmp_path / f"m{k}.png").rename(tmp_path / "ann" / f"v{k}" / "00000.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, args(ckpt, tmp_path / "v0.mp4", tmp_path / "v1.mp4", "--mask-dir",
                                           tmp_path / "ann", "--out", out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["complete"] == 2
    for bad, message in [
        (["--manifest", tmp_path / "videos.csv"], "need --out"),
        ([tmp_path / "v0.mp4", tmp_path / "v1.mp4", "--mask", tmp_path / "x.png", "--out", out], "--mask-dir ROOT"),
        ([tmp_path / "v0.mp4", "--realtime", "--mask", tmp_path / "x.png", "--out", out], "for live sources"),
        ([], "give a VIDEO"),
    ]:
        result = CliRunner().invoke(main, args(ckpt, *bad))
        assert result.exit_code == 2 and message in result.output, result.output


def test_torchrun_two_processes_give_the_masks_of_one(tmp_path, ckpt):
    manifest = make_batch(tmp_path, 4)
    one = CliRunner().invoke(main, args(ckpt, "--manifest", manifest, "--out", tmp_path / "one"))
    assert one.exit_code == 0, one.output
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "siammae.cli.track", *args(ckpt, "--manifest", manifest, "--out", tmp_path / "two")]  # fmt: skip
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["complete"] == 4
    pngs = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    assert len(pngs) == 3 + 4 + 5 + 3
    assert pngs == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*.png"))
    for p in pngs:
        assert (tmp_path / "one" / p).read_bytes() == (tmp_path / "two" / p).read_bytes(), p


def test_standard_input_pipe_at_real_time(tmp_path, ckpt):
    _, masks = make_synthetic_clip(1, SIZE, seed=0)
    write_mask(tmp_path / "first.png", masks[0])
    cmd = [sys.executable, "-m", "siammae.cli.track", "-", "--mask", tmp_path / "first.png", "--out",
           tmp_path / "masks", "--jsonl", tmp_path / "frames.jsonl", "--report", tmp_path / "r.json",
           *args(ckpt)[:-1]]  # fmt: skip
    with live_writer(16, SIZE, 20) as writer:
        proc = subprocess.run([str(c) for c in cmd], stdin=writer.stdout, env=env(), capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tracked 16 frames" in proc.stderr
    lines = [json.loads(x) for x in (tmp_path / "frames.jsonl").read_text().splitlines()]
    assert [x["index"] for x in lines] == list(range(16)) and len(list((tmp_path / "masks").glob("*.png"))) == 16
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["video"] == {**report["video"], "path": "-", "kind": "live", "width": 48, "height": 32}
    assert report["latency"]["frames"] == 16 and "dropped" not in report


def test_ctrl_c_stops_a_live_source_cleanly(tmp_path, ckpt):
    _, masks = make_synthetic_clip(1, SIZE, seed=0)
    write_mask(tmp_path / "first.png", masks[0])
    out, report = tmp_path / "masks", tmp_path / "r.json"
    cmd = [sys.executable, "-X", "faulthandler", "-m", "siammae.cli.track", "-", "--mask", tmp_path / "first.png",
           "--out", out, "--report", report, "--realtime", *args(ckpt)]  # fmt: skip
    with live_writer(400, SIZE, 20) as writer:  # 20 s of stream; stopped after a few frames
        proc = subprocess.Popen([str(c) for c in cmd], stdin=writer.stdout, env=env(), stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
        deadline = time.time() + 120
        while len(list(out.glob("*.png"))) < 5:
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # show where it hangs
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=60)
        writer.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    saved = json.loads(report.read_text())
    assert saved["status"] == "interrupted" and saved["frames"] == len(list(out.glob("*.png"))) >= 5
    assert not list(out.glob(".*"))  # no temporary file left
