"""The shared safety mechanisms one by one: atomic writes (umask, errors naming the file), append-only logs (no links,
torn last lines), the output-folder claim (lock, leftovers, links, overwrite), plain names, input checks that were
silent (16-bit frames, blended masks, duplicate frame names), bounded checkpoints and the memory estimate."""

from __future__ import annotations

import errno
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
from helpers import ROOT
from PIL import Image

import siammae
import siammae.io as sio
from siammae.data.masks import read_mask
from siammae.data.palette import davis_palette_flat
from siammae.data.video import open_video, read_image
from siammae.errors import CheckpointError, InputError, OutputError
from siammae.memory import check_fits, vit_bytes
from siammae.model.checkpoint import load_model, save_checkpoint
from siammae.output_folder import LOCK_NAME, OutputFolder, check_file_free, check_folder_free, check_name
from siammae.tracking.report import report_paths
from siammae.train.monitor import Monitor


# ------------------------------------------------------------------------------------------------ atomic writes
def test_atomic_write_honours_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        sio.write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640  # mkstemp alone gives 0o600


def test_atomic_write_failure_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sio.os, "replace", full)
    with pytest.raises(OutputError, match=r"cannot write .*r\.json: No space left on device"):
        sio.write_json(tmp_path / "r.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_a_link_not_its_target(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "out.txt").symlink_to(victim)
    sio.write_text(tmp_path / "out.txt", "new")
    assert victim.read_text() == "precious" and not (tmp_path / "out.txt").is_symlink()


# ---------------------------------------------------------------------------------------------- append-only logs
def test_open_append_refuses_a_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "log.jsonl").symlink_to(victim)
    with pytest.raises(OutputError, match="log.jsonl.*symbolic link"):
        sio.open_append(tmp_path / "log.jsonl")
    assert victim.read_text() == "precious\n"


def test_read_jsonl_drops_only_a_torn_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert [r["step"] for r in sio.read_jsonl(path)] == [1, 2]
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(InputError, match="line 2"):
        sio.read_jsonl(path)


def test_resume_tolerates_a_torn_log(tmp_path):
    """A run killed mid-append leaves a torn last line; the next run (--resume) drops it and logs on."""
    (tmp_path / "log.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    monitor = Monitor(tmp_path, total_steps=10, start_step=2, quiet=True)
    monitor.log({"step": 3, "loss": 0.5})
    monitor.close()
    assert [r["step"] for r in sio.read_jsonl(tmp_path / "log.jsonl")] == [1, 2, 3]
    assert all(json.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines())


# ------------------------------------------------------------------------------------------------ output folder
def test_one_writer_per_folder_and_the_lock_goes_away(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out):
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(OutputError, match=f"another siammae run \\(pid {os.getpid()}\\)"):
            OutputFolder(out).open()
        (out / "a.png").write_bytes(b"x")
    assert not (out / LOCK_NAME).exists() and (out / "a.png").exists()


def test_a_dead_runs_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(f"{dead.pid}\n")  # left by kill -9: no process holds its flock
    with OutputFolder(out):
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_a_failed_run_leaves_no_empty_folder(tmp_path):
    with pytest.raises(RuntimeError), OutputFolder(tmp_path / "new"):
        raise RuntimeError
    assert not (tmp_path / "new").exists()


def test_leftover_temp_files_are_removed(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / f"{sio.TMP_PREFIX}00003.abc.tmp.png").write_bytes(b"torn")
    (out / "sub" / f"{sio.TMP_PREFIX}x.tmp.json").write_bytes(b"{")
    (out / "keep.png").write_bytes(b"x")
    with OutputFolder(out):
        pass
    assert sorted(p.name for p in out.rglob("*")) == ["keep.png", "sub"]


def test_overwrite_replaces_own_outputs_only(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("00000.png", "00199.png", "keypoints.jsonl"):
        (out / name).write_bytes(b"old")
    with pytest.raises(OutputError, match="not empty"):
        OutputFolder(out, exclusive=True, owned=("*.png", "keypoints.jsonl")).open()
    with OutputFolder(out, overwrite=True, exclusive=True, owned=("*.png", "keypoints.jsonl")):
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # a shorter run leaves no frames of the old one
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt, which this command does not write"):
        OutputFolder(out, overwrite=True, exclusive=True, owned=("*.png",)).open()
    assert (out / "notes.txt").read_text() == "mine"


def test_planted_links_are_refused_or_removed_never_followed(tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim"
    victim.write_text("precious")
    out.mkdir()
    (out / "keypoints.jsonl").symlink_to(victim)
    with pytest.raises(OutputError, match="keypoints.jsonl: is a symbolic link"):
        OutputFolder(out).open()
    with OutputFolder(out, overwrite=True, exclusive=True, owned=("keypoints.jsonl",)):
        assert not (out / "keypoints.jsonl").exists()
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "/etc", "a/b", "a\0b"])
def test_names_are_data_not_paths(name):
    with pytest.raises(OutputError, match="list.txt"):
        check_name(name, "list.txt")


def test_plain_names_pass():
    assert check_name("bmx-trees", "x") == "bmx-trees" and check_name("a..b", "x") == "a..b"


# ----------------------------------------------------------------------------------------------- silent inputs
def test_16_bit_frames_are_scaled_by_range(tmp_path):
    grey = (np.arange(64)[None, :].repeat(8, 0) * 1000).astype(np.uint16)  # 0 .. 63000
    Image.fromarray(grey).save(tmp_path / "f.png")
    rgb = read_image(tmp_path / "f.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 64, 3)
    np.testing.assert_array_equal(rgb[0, :, 0], np.round(grey[0] / 257).astype(np.uint8))
    assert (rgb == 255).mean() < 0.05  # convert("RGB") made 98% of it white


def test_two_frames_of_one_name_are_an_error(tmp_path):
    for name in ("00000.jpg", "00001.jpg", "00001.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    with pytest.raises(InputError, match=r"00001\.jpg and 00001\.png"):
        open_video(tmp_path)


def test_many_small_solid_objects_are_not_taken_for_blending(tmp_path):
    ids = np.zeros((64, 64), np.uint8)
    for k in range(12):  # 12 flat objects of 5x5 pixels
        r, c = divmod(k, 4)
        ids[4 + 16 * r : 9 + 16 * r, 4 + 16 * c : 9 + 16 * c] = k + 1
    rgb = np.stack([ids * 20, 255 - ids * 20, ids * 7], -1) * (ids[..., None] > 0)
    Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / "m.png")
    assert len(np.unique(read_mask(tmp_path / "m.png"))) == 13


# ---------------------------------------------------------------------------------------------- checkpoints
def test_hostile_checkpoint_is_refused_before_building(tmp_path):
    cfg = siammae.create_model("tiny").config.to_dict() | {"depth": 400, "embed_dim": 8192, "num_heads": 64}
    torch.save({"format": "siammae", "version": 1, "kind": "siammae", "config": cfg, "model": {}}, tmp_path / "h.pt")
    assert (tmp_path / "h.pt").stat().st_size < 4096
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"h\.pt: config depth=400 is not an integer in 1\.\.128"):
        load_model(tmp_path / "h.pt")
    assert time.perf_counter() - t0 < 2.0


def test_config_that_does_not_describe_the_tensors(tmp_path):
    model = siammae.create_model("tiny")
    path = save_checkpoint(tmp_path / "m.pt", model)
    ck = torch.load(path, weights_only=True)
    ck["config"]["depth"] = 100  # within the limits, but the file holds 2 blocks: caught on the meta device
    torch.save(ck, path)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_model(path)


# ------------------------------------------------------------------------------------------------ reports, memory
def test_report_paths_never_put_markdown_over_json(tmp_path):
    assert report_paths(tmp_path / "r.md") == (tmp_path / "r.json", tmp_path / "r.md")
    assert report_paths(tmp_path / "r.json") == (tmp_path / "r.json", tmp_path / "r.md")


def test_memory_estimate_refuses_the_impossible_only():
    small = vit_bytes(480, 848, patch_size=8, embed_dim=384, num_heads=6, batch=8)
    huge = vit_bytes(100000, 177776, patch_size=8, embed_dim=384, num_heads=6, batch=8)
    assert small < 8 * 2**30 < huge
    check_fits(small, "a DAVIS frame")
    with pytest.raises(InputError, match=r"--size 100000 needs about [\d.,]+ TiB but .* is available"):
        check_fits(huge, "--size 100000")


# ------------------------------------------------------------------------------------------- Ctrl-C at start-up
def test_sigint_during_start_up_is_a_clean_interrupt(tmp_path):
    """SIGINT while the command loads torch and the model (before the first frame): status 130, no traceback."""
    ckpt = save_checkpoint(tmp_path / "m.pt", siammae.create_model("tiny"))
    video = tmp_path / "v"
    video.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (i * 40, 0, 0)).save(video / f"{i:05d}.png")
    mask = Image.fromarray(np.pad(np.ones((8, 8), np.uint8), 28))
    mask.putpalette(davis_palette_flat())
    mask.save(tmp_path / "m.png")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "siammae.cli.track", str(video), "--mask", str(tmp_path / "m.png"), "--ckpt",
           str(ckpt), "--out", str(tmp_path / "out"), "--size", "64", "-q"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    maps = Path(f"/proc/{proc.pid}/maps")
    while proc.poll() is None and time.time() < deadline:  # torch loads inside main(), after the CLI imports
        if "libtorch" in maps.read_text(errors="replace"):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    assert proc.returncode in (130, 0), err  # 0: the tiny run finished before the signal landed
    if proc.returncode == 130:
        assert err.strip().splitlines()[-1].startswith("interrupted")


# ------------------------------------------------------------------------------- free or not: one check, one error
def test_one_check_for_an_output_file(tmp_path):
    (tmp_path / "a.onnx").write_text("x")
    (tmp_path / "d").mkdir()
    assert check_file_free(tmp_path / "new.onnx", overwrite=False) == tmp_path / "new.onnx"
    with pytest.raises(OutputError, match="a.onnx: output file exists"):
        check_file_free(tmp_path / "a.onnx", overwrite=False)
    check_file_free(tmp_path / "a.onnx", overwrite=True)
    with pytest.raises(OutputError, match="d: is a folder"):
        check_file_free(tmp_path / "d", overwrite=True)


def test_one_check_for_an_output_folder(tmp_path):
    out = tmp_path / "out"
    assert check_folder_free(out) == []  # not there yet: free
    out.mkdir()
    (out / "00000.png").write_text("x")
    with pytest.raises(OutputError, match="output folder is not empty"):
        check_folder_free(out)
    assert check_folder_free(out, overwrite=True, owned=("*.png",)) == [out / "00000.png"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds notes.txt, which this command does not write"):
        check_folder_free(out, overwrite=True, owned=("*.png",))
    assert check_folder_free(out, exclusive=False) == []  # a batch's folder may hold other things
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_folder_free(tmp_path / "f", exclusive=False)


def test_an_out_that_is_a_link_is_refused_before_anything_is_written(tmp_path):
    """Decision (issue 29): refuse, naming the target, rather than write into (and lock) the folder it points to."""
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "out").symlink_to(target)
    for check in (lambda: check_folder_free(tmp_path / "out", exclusive=False), OutputFolder(tmp_path / "out").open):
        with pytest.raises(OutputError, match=f"--out {tmp_path / 'out'}: is a symbolic link \\(to {target}\\).*"
                                              f"give the real folder \\({target}\\)"):  # fmt: skip
            check()
    assert list(target.iterdir()) == []  # no lock file, nothing
    with OutputFolder(tmp_path / "out" / "sub") as claim:  # a link above the folder is followed as usual
        assert (target / "sub" / LOCK_NAME).is_file() and claim.path == tmp_path / "out" / "sub"
