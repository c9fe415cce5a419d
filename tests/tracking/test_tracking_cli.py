"""siammae-track on real clips (../shared/data) and on every kind of bad input.

Real data runs at a reduced size (short side 128) with the colour encoder of test_tracking.py saved as a
checkpoint, so these tests check the command's plumbing (formats, ids, later objects, outputs, errors) quickly.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error, colour_encoder, iou, run_until_sigint, write_with_pyav
from PIL import Image

from siammae.cli.track import main
from siammae.data.masks import write_mask
from siammae.data.synthetic import iter_synthetic_clip, make_synthetic_clip
from siammae.data.video import open_video, write_video
from siammae.model.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "colour.pt"
    save_checkpoint(path, colour_encoder(patch=8))
    return path


def run(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def read_pngs(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for p in sorted(folder.glob("*.png")):
        with Image.open(p) as im:
            assert im.mode == "P"
            out[p.stem] = np.asarray(im)
    return out


# ------------------------------------------------------------------------------------------------ real data
def test_davis_folder_and_mp4_give_near_identical_masks(fixture_data, ckpt, tmp_path):
    seq = fixture_data / "davis2016/JPEGImages/480p/blackswan"
    frames = sorted(seq.glob("*.jpg"))[:6]
    folder = tmp_path / "blackswan"
    folder.mkdir()
    for f in frames:
        shutil.copy(f, folder / f.name)
    write_video(tmp_path / "blackswan.mp4", (np.asarray(Image.open(f).convert("RGB")) for f in frames), fps=24)
    mask = fixture_data / "davis2016/Annotations/480p/blackswan/00000.png"  # mode L, {0, 255}
    common = ["--mask", mask, "--ckpt", ckpt, "--size", 160, "--preset", "dino", "--quiet"]
    run(folder, *common, "--out", tmp_path / "a")
    run(tmp_path / "blackswan.mp4", *common, "--out", tmp_path / "b")
    a, b = read_pngs(tmp_path / "a"), read_pngs(tmp_path / "b")
    assert list(a) == [f.stem for f in frames] and list(b) == [f"{i:05d}" for i in range(6)]
    truth = [np.asarray(Image.open(mask.parent / f"{f.stem}.png")) > 0 for f in frames]
    np.testing.assert_array_equal(a["00000"] == 1, truth[0])
    for x, y, gt in zip(a.values(), b.values(), truth, strict=True):
        assert x.shape == y.shape == (480, 854)
        assert set(np.unique(x)) == set(np.unique(y)) == {0, 1}  # 255 became object 1
        assert iou(x == 1, y == 1) > 0.9  # h264 vs JPEG: the same masks but for a few boundary pixels
        assert abs(iou(x == 1, gt) - iou(y == 1, gt)) < 0.05


def test_bike_keeps_ids_1_and_2(shared_data, ckpt, tmp_path):
    run(
        shared_data / "cutie/images/bike",
        "--mask", shared_data / "cutie/masks/bike/00000.png",
        "--ckpt", ckpt, "--size", 128, "--chunk", 2, "--quiet", "--out", tmp_path / "out",
    )  # fmt: skip
    masks = read_pngs(tmp_path / "out")
    assert list(masks) == ["00000", "00001", "00002", "00003"]
    for m in masks.values():
        assert set(np.unique(m)) == {0, 1, 2}


def test_judo_objects_appear_at_their_frames(shared_data, ckpt, tmp_path):
    result = run(
        shared_data / "cutie/images/judo",
        "--mask-dir", shared_data / "cutie/masks/judo",  # holds frame 0's mask too
        "--ckpt", ckpt, "--size", 128, "--preset", "dino", "--out", tmp_path / "out",
        "--report", tmp_path / "report.json",
    )  # fmt: skip
    # 00005.png is 853x480 for 854x480 frames: resized, with a one-line warning
    assert "warning: " in result.output and "00005.png: mask is 853x480 but the video is 854x480" in result.output
    masks = read_pngs(tmp_path / "out")
    assert len(masks) == 16
    for obj, first in ((2, 5), (3, 8), (4, 13)):
        for i, m in enumerate(masks.values()):
            assert (obj in m) == (i >= first), (obj, i)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["objects"] == [1, 2, 3, 4] and report["frames"] == 16 and report["status"] == "complete"
    assert "tracked 16 frames (objects 1, 2, 3, 4)" in result.output


# ---------------------------------------------------------------------------------------- synthetic, outputs
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    frames, masks = make_synthetic_clip(8, (96, 128), seed=4)
    write_video(root / "clip.mp4", frames, fps=8)
    write_mask(root / "first.png", masks[0])
    return root, masks


def test_outputs_and_overwrite(ckpt, synthetic, tmp_path):
    root, masks = synthetic
    args = [root / "clip.mp4", "--mask", root / "first.png", "--ckpt", ckpt, "--size", 96, "--preset", "dino",
            "--topk", 3, "--temperature", 0.05, "--n-last", 4, "--radius", "none", "--attention", "sdpa"]  # fmt: skip
    outs = ["--out", tmp_path / "m", "--overlay", tmp_path / "o.mp4", "--report", tmp_path / "r.json"]
    result = run(*args, *outs, "--quiet")
    assert result.output == ""  # --quiet: no progress bar, no summary
    assert len(read_pngs(tmp_path / "m")) == 8 and open_video(tmp_path / "o.mp4").num_frames == 8
    report = json.loads((tmp_path / "r.json").read_text())
    prop = report["settings"]["propagation"]
    assert (prop["topk"], prop["temperature"], prop["n_last"], prop["radius"]) == (3, 0.05, 4, None)
    assert report["settings"]["attention"] == "sdpa"  # dino's own is "auto" (DINO's order on a CPU)
    assert (tmp_path / "r.md").exists()
    assert_one_line_error(run(*args, *outs, ok=False), "not empty", "--overwrite")
    run(*args, *outs, "--overwrite", "--quiet")


def test_sigint_keeps_pngs_valid_and_marks_the_report(ckpt, tmp_path):
    long_video = tmp_path / "long.mp4"
    write_video(long_video, (f for f, _ in iter_synthetic_clip(400, (96, 128), seed=0)), fps=25)
    write_mask(tmp_path / "first.png", next(iter_synthetic_clip(1, (96, 128), seed=0))[1])
    out, report = tmp_path / "out", tmp_path / "r.json"
    cmd = [sys.executable, "-m", "siammae.cli.track", long_video, "--mask", tmp_path / "first.png", "--ckpt", ckpt,
           "--size", 96, "--preset", "dino", "--out", out, "--report", report, "--quiet"]  # fmt: skip
    returncode, err = run_until_sigint(cmd, lambda: len(list(out.glob("0*.png"))) if out.exists() else 0)
    assert returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    files = sorted(out.iterdir())
    assert 10 <= len(files) < 400
    assert [p.name for p in files] == [f"{i:05d}.png" for i in range(len(files))]  # no temp file, no gap
    for p in files:
        with Image.open(p) as im:
            im.load()
    saved = json.loads(report.read_text())
    assert saved["status"] == "interrupted" and saved["interrupted"] and saved["frames"] == len(files)


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_input_is_one_line_and_exit_2(ckpt, synthetic, tmp_path):
    root, masks = synthetic
    video, first = root / "clip.mp4", root / "first.png"
    model = ["--ckpt", ckpt, "--size", 96, "--preset", "dino", "--quiet"]
    out = tmp_path / "out"

    assert_one_line_error(run(tmp_path / "missing.mp4", "--mask", first, *model, "--out", out, ok=False),
                          "missing.mp4", "no such file")  # fmt: skip
    (tmp_path / "text.mp4").write_text("not a video")
    assert_one_line_error(run(tmp_path / "text.mp4", "--mask", first, *model, "--out", out, ok=False),
                          "text.mp4", "cannot open video")  # fmt: skip
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[:200])  # the header only
    assert_one_line_error(run(cut, "--mask", first, *model, "--out", out, ok=False), "cut.mp4")
    # a mask of another aspect ratio
    write_mask(tmp_path / "wide.png", np.pad(masks[0], ((0, 0), (0, 64))))
    assert_one_line_error(run(video, "--mask", tmp_path / "wide.png", *model, "--out", out, ok=False),
                          "wide.png", "mask is 192x96 but the video is 128x96")  # fmt: skip
    write_mask(tmp_path / "empty.png", np.zeros_like(masks[0]))
    assert_one_line_error(run(video, "--mask", tmp_path / "empty.png", *model, "--out", out, ok=False),
                          "empty.png", "mask is empty")  # fmt: skip
    many = np.arange(96 * 128, dtype=np.uint16).reshape(96, 128) % 300
    Image.fromarray(many).save(tmp_path / "many.png")  # a 16-bit mask with ids up to 299
    assert_one_line_error(run(video, "--mask", tmp_path / "many.png", *model, "--out", out, ok=False),
                          "many.png", "0..255")  # fmt: skip
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert_one_line_error(run(video, "--mask", tmp_path / "bad.png", *model, "--out", out, ok=False),
                          "bad.png", "cannot read mask")  # fmt: skip
    (tmp_path / "afile").write_text("")
    assert_one_line_error(run(video, "--mask", first, *model, "--out", tmp_path / "afile" / "masks", ok=False),
                          "afile/masks", "cannot write")  # fmt: skip
    both = run(video, "--mask", first, *model, "--encoder", tmp_path / "m.onnx", "--out", out, ok=False)
    assert_one_line_error(both, "--ckpt", "--encoder", "not both")  # no --ckpt at all: model/test_weights_cli.py
    (tmp_path / "m.onnx").write_bytes(b"")
    assert_one_line_error(run(video, "--mask", first, "--encoder", tmp_path / "m.onnx", "--attention", "exact",
                              "--out", out, ok=False), "m.onnx", "--attention applies to PyTorch weights")  # fmt: skip
    # neither a mask nor keypoints: a usage error, also one line
    assert_one_line_error(run(video, *model, "--out", out, ok=False), "give what to track in frame 0: --mask")
    assert_one_line_error(run(video, "--mask", first, *model, "--out", out, "--device", "tpu9", ok=False), "tpu9")
    assert_one_line_error(run(video, "--mask", first, *model, "--out", out, "--device", "cpu", "--dtype", "fp16",
                              ok=False), "fp16 needs a CUDA device")  # fmt: skip
    assert not out.exists() or not list(out.iterdir())  # nothing half-written by any of these


def test_mask_dir_errors(ckpt, synthetic, tmp_path):
    root, masks = synthetic
    model = ["--ckpt", ckpt, "--size", 96, "--preset", "dino", "--quiet", "--out", tmp_path / "out"]
    d = tmp_path / "masks"
    d.mkdir()
    write_mask(d / "00042.png", masks[0])
    assert_one_line_error(run(root / "clip.mp4", "--mask", root / "first.png", "--mask-dir", d, *model, ok=False),
                          "00042", "match no frame")  # fmt: skip
    (d / "00042.png").unlink()
    write_mask(d / "00003.png", masks[0][:48])
    assert_one_line_error(run(root / "clip.mp4", "--mask", root / "first.png", "--mask-dir", d, *model, ok=False),
                          "00003.png", "another aspect ratio")  # fmt: skip
    write_mask(d / "00003.png", masks[3])  # a good later mask: every mask is checked before frame 0's is looked up
    assert_one_line_error(run(root / "clip.mp4", "--mask-dir", d, *model, ok=False), "no mask for frame 0")


def test_truncated_video_keeps_the_masks_before(ckpt, tmp_path):
    frames = [f for f, _ in iter_synthetic_clip(20, (96, 128), seed=6)]
    full = tmp_path / "full.mkv"
    write_with_pyav(full, frames)  # mkv: no frame count in the header, a duration
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 3 // 4])
    write_mask(tmp_path / "first.png", next(iter_synthetic_clip(1, (96, 128), seed=6))[1])
    out = tmp_path / "out"
    result = run(cut, "--mask", tmp_path / "first.png", "--ckpt", ckpt, "--size", 96, "--quiet", "--out", out,
                 ok=False)  # fmt: skip
    assert_one_line_error(result, "cut.mkv: decoding stopped at frame")
    n = int(result.output.split("stopped at frame ")[1].split()[0])
    assert 0 < n < 20 and sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(n)]


@pytest.mark.parametrize("case", ["empty", "aspect", "mask-dir"])
def test_mask_errors_come_before_the_model_loads(synthetic, tmp_path, case):
    """An empty mask, a mask of another aspect ratio, --mask-dir names that match no frame: one line and status 2
    from the check, before torch is imported or the default weights fetched (seconds, or a download, otherwise)."""
    import subprocess

    root, masks = synthetic
    args = [str(root / "clip.mp4"), "--out", str(tmp_path / "out")]  # no --ckpt: the default weights, by name
    if case == "empty":
        write_mask(tmp_path / "m.png", np.zeros_like(masks[0]))
        args += ["--mask", str(tmp_path / "m.png")]
        message = f"error: {tmp_path / 'm.png'}: mask is empty"
    elif case == "aspect":
        write_mask(tmp_path / "m.png", np.pad(masks[0], ((0, 0), (0, 64))))
        args += ["--mask", str(tmp_path / "m.png")]
        message = f"error: {tmp_path / 'm.png'}: mask is 192x96 but the video is 128x96"
    else:
        (tmp_path / "later").mkdir()
        write_mask(tmp_path / "later/00042.png", masks[0])
        args += ["--mask", str(root / "first.png"), "--mask-dir", str(tmp_path / "later")]
        message = f"error: {tmp_path / 'later'}: masks 00042 match no frame"
    code = (
        "import sys\nfrom siammae.cli.track import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    print('torch' in sys.modules, e.code)"
    )
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["False", "2"], (r.stdout, r.stderr)
    assert r.stderr.strip().startswith(message) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()
