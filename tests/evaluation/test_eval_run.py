"""``siammae-eval`` with a model: input sizes, the real DAVIS sequences end to end, resuming, and static
synthetic videos on which propagation must keep the first frame's labels."""

import json
import math

import numpy as np
import pytest
import scipy.io
import torch
from click.testing import CliRunner
from helpers import davis_2016_layout
from PIL import Image

from siammae.cli.eval import main
from siammae.data.transforms import DINO_STD, IMAGENET_STD
from siammae.errors import InputError
from siammae.evaluation.metrics.davis import db_eval_iou
from siammae.evaluation.png import read_index_png, write_index_png
from siammae.model.checkpoint import file_sha256, save_checkpoint
from siammae.model.registry import create_model
from siammae.propagation.config import get_preset
from siammae.propagation.inputs import InputConfig


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(path, create_model("tiny"))
    return path


def test_input_sizes():
    dino = get_preset("dino").inputs
    assert dino.frame_size(480, 854, 16) == (480, 832) and dino.std == DINO_STD  # DINO: long side // 64
    assert dino.frame_size(854, 480, 8) == (832, 480)
    crw = get_preset("siammae-davis").inputs
    assert crw.frame_size(480, 854, 16) == (480, 880) and crw.std == IMAGENET_STD
    assert crw.frame_size(854, 480, 8) == (880, 480)  # portrait: transposed
    assert get_preset("siammae-jhmdb").inputs.frame_size(240, 320, 16) == (320, 320)
    # CropMAE's VIP crop_size [880]: the long side 880, the short side floored to 64 (was short side 560 here)
    assert get_preset("siammae-vip").inputs.frame_size(720, 1280, 8) == (448, 880)
    assert crw.with_size("64") == InputConfig(short_side=64, size=None)
    assert dino.with_size("112x64").size == (64, 112)
    with pytest.raises(InputError, match="is not a short side"):
        crw.with_size("big")
    with pytest.raises(InputError, match="not a multiple of the patch size 16"):
        InputConfig(size=(60, 100)).frame_size(480, 854, 16)


def test_davis_real_sequences_end_to_end_and_resume(shared_data, tmp_path, tiny_ckpt):
    root = davis_2016_layout(shared_data, tmp_path / "DAVIS", ("blackswan", "car-shadow", "soapbox"))
    out = tmp_path / "out"
    args = ["davis", "--root", str(root), "--year", "2016", "--ckpt", str(tiny_ckpt), "--out", str(out)]
    args += ["--max-frames", "5", "--size", "64", "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    settings = doc["settings"]
    assert settings["checkpoint_sha256"] == file_sha256(tiny_ckpt)
    assert settings["preset"] == "siammae-davis" and settings["propagation"]["topk"] == 7
    assert settings["input"]["short_side"] == 64 and settings["max_frames"] == 5 and settings["size"] == 64
    record = json.loads(json.dumps(get_preset("siammae-davis", size=64).record()))  # the propagation layer's record
    assert {k: settings[k] for k in record} == record
    assert [row["Sequence"] for row in doc["per_sequence"]] == ["blackswan_1", "car-shadow_1", "soapbox_1"]
    for row in doc["per_sequence"]:  # each score is the J of the masks written, frames 1-3 (first and last left out)
        seq, names = row["Sequence"].removesuffix("_1"), [f"{t:05d}.png" for t in range(1, 4)]
        gt = np.stack([np.asarray(Image.open(root / "Annotations/480p" / seq / n)) > 0 for n in names])
        pred = np.stack([read_index_png(out / "predictions" / seq / n) == 1 for n in names])
        assert row["J-Mean"] == pytest.approx(db_eval_iou(gt, pred).mean(), abs=1e-9)
    assert doc["global"]["J-Mean"] == pytest.approx(np.mean([r["J-Mean"] for r in doc["per_sequence"]]), abs=1e-9)
    assert doc["global"]["J&F-Mean"] == pytest.approx((doc["global"]["J-Mean"] + doc["global"]["F-Mean"]) / 2)
    pred_dir = out / "predictions/soapbox"
    assert sorted(p.name for p in pred_dir.iterdir()) == [f"{t:05d}.png" for t in range(5)]
    first = read_index_png(pred_dir / "00000.png")
    assert first.shape == (480, 854) and set(np.unique(first)) == {0, 1}  # the given 0/255 mask as object 1
    # Resume: scored sequences are read back, not run again.
    stamp = (out / "scores/blackswan.json").stat().st_mtime_ns
    (pred_dir / "00003.png").unlink()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert (out / "scores/blackswan.json").stat().st_mtime_ns == stamp and not (pred_dir / "00003.png").exists()
    assert json.loads((out / "results.json").read_text())["global"] == doc["global"]
    changed = CliRunner().invoke(main, [*args, "--topk", "3"])
    assert changed.exit_code == 2 and "differing in: propagation" in changed.stderr
    rerun = CliRunner().invoke(main, [*args, "--overwrite"])
    assert rerun.exit_code == 0 and (pred_dir / "00003.png").exists()


def _texture(h, w, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.NEAREST))


def test_davis_static_video_keeps_the_mask(tmp_path, tiny_ckpt):
    """Identical frames: with top-1 every patch takes the label of itself, so the mask comes back intact. The
    objects are bands whose edges lie on patch edges, where the bilinear upsampling crosses 0.5 (a corner would
    be rounded off by the upsampling of both protocols)."""
    root = tmp_path / "DAVIS"
    frame = _texture(64, 96)
    mask = np.zeros((64, 96), dtype=np.uint8)
    mask[8:24] = 1
    mask[40:56] = 2
    for t in range(5):
        (root / "JPEGImages/480p/static").mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(root / f"JPEGImages/480p/static/{t:05d}.jpg", quality=100)
        write_index_png(root / f"Annotations/480p/static/{t:05d}.png", mask)
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/val.txt").write_text("static\n")
    args = ["davis", "--root", str(root), "--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, [*args, "--size", "64x96", "--preset", "dino", "--topk", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "out/results.json").read_text())["global"]
    assert table["J-Mean"] == table["F-Mean"] == 1.0, table
    np.testing.assert_array_equal(read_index_png(tmp_path / "out/predictions/static/00004.png"), mask)
    # The predictions form an official results folder: scoring it without the model gives the same table.
    results = ["--results", str(tmp_path / "out/predictions"), "--out", str(tmp_path / "rescored")]
    rescored = CliRunner().invoke(main, ["davis", "--root", str(root), *results])
    assert rescored.exit_code == 0, rescored.output
    assert json.loads((tmp_path / "rescored/results.json").read_text())["global"] == table


def test_jhmdb_static_video_keeps_the_joints(tmp_path, tiny_ckpt):
    root = tmp_path / "JHMDB"
    frame = _texture(96, 128, seed=1)
    rng = np.random.default_rng(2)
    joints = np.stack([rng.uniform(20, 108, 15), rng.uniform(16, 80, 15)], axis=1)  # (15, 2) 0-based
    video = root / "Rename_Images/run/clip"
    video.mkdir(parents=True)
    for t in range(4):
        Image.fromarray(frame).save(video / f"{t + 1:05d}.png")
    (root / "joint_positions/run/clip").mkdir(parents=True)
    pos_img = np.repeat((joints + 1.0).T[:, :, None], 4, axis=2)  # 2 x 15 x T, 1-based
    scipy.io.savemat(root / "joint_positions/run/clip/joint_positions.mat", {"pos_img": pos_img})
    (root / "splits").mkdir()
    (root / "splits/run_test_split1.txt").write_text("clip.avi 2\n")
    out = tmp_path / "out"
    args = ["jhmdb", "--root", str(root), "--ckpt", str(tiny_ckpt), "--out", str(out), "--size", "128x96"]
    result = CliRunner().invoke(main, [*args, "--topk", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["global"]["PCK@0.2"] == 1.0, doc["global"]
    track = json.loads((out / "predictions/run/clip.json").read_text())
    assert len(track["frames"]) == 4 and track["frames"][0]["keypoints"][0] == pytest.approx(joints[0], abs=0.01)
    assert (track["width"], track["height"]) == (128, 96)
    moved = [p for p in track["frames"][3]["keypoints"] if p is not None]
    assert len(moved) == 15 and all(math.isfinite(v) for p in moved for v in p)


def test_vip_static_video_keeps_the_parts(tmp_path, tiny_ckpt):
    root = tmp_path / "VIP"
    frame = _texture(64, 64, seed=3)
    parts = np.zeros((64, 64), dtype=np.uint8)
    parts[8:32] = 4  # upper-clothes (bands: see the DAVIS test)
    parts[32:56] = 8  # pants
    for t in range(4):
        (root / "Images/videos5").mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(root / f"Images/videos5/{t:05d}.jpg", quality=100)
        write_index_png(root / f"Annotations/Category_ids/videos5/{t:05d}.png", parts)
    (root / "lists").mkdir()
    (root / "lists/val_videos.txt").write_text("videos5\n")
    out = tmp_path / "out"
    args = ["vip", "--root", str(root), "--ckpt", str(tiny_ckpt), "--out", str(out), "--size", "64"]
    result = CliRunner().invoke(main, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["settings"]["propagation"]["topk"] == 10  # the VIP preset
    assert set(np.unique(read_index_png(out / "predictions/videos5/00003.png"))) <= {0, 4, 8}
    exact = CliRunner().invoke(main, [*args, "--topk", "1", "--overwrite", "--device", "cpu"])
    assert exact.exit_code == 0, exact.output
    assert json.loads((out / "results.json").read_text())["global"]["mIoU"] == 1.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ckpt", "missing.pth"], "error: missing.pth: no such file"),
        (["--preset", "fast"], "error: Invalid value for '--preset': 'fast' is not one of 'dino', 'siammae-davis'"),
        (["--size", "0"], "error: Invalid value for '--size': '0' is not a size"),
        ([], "error: DAVIS split list"),
    ],
)
def test_model_run_errors(tmp_path, tiny_ckpt, extra, message):
    args = ["davis", "--root", str(tmp_path), "--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "out"), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message), result.stderr


def test_frame_of_another_size_is_an_error(tmp_path, tiny_ckpt):
    root = tmp_path / "DAVIS"
    (root / "JPEGImages/480p/odd").mkdir(parents=True)
    for t, (h, w) in enumerate([(32, 48), (32, 48), (40, 48)]):
        Image.fromarray(_texture(h, w)).save(root / f"JPEGImages/480p/odd/{t:05d}.jpg")
        write_index_png(root / f"Annotations/480p/odd/{t:05d}.png", np.ones((h, w), dtype=np.uint8))
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/val.txt").write_text("odd\n")
    args = ["davis", "--root", str(root), "--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "out"), "--size", "32"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "odd/00002.jpg is 48x40 but 00000.jpg is 48x32" in result.stderr
