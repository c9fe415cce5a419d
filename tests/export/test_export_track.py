"""The tracker on an exported encoder: ``siammae-track --encoder model.onnx`` gives the masks of ``--ckpt``."""

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from siammae.cli.track import main as track_main
from siammae.errors import InputError
from siammae.export import export_onnx, load_encoder
from siammae.model.checkpoint import save_checkpoint
from siammae.model.registry import create_model
from siammae.propagation.driver import Tracker


def _masks(folder):
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def blackswan(fixture_data, tmp_path_factory):
    """The first 6 frames of DAVIS blackswan as a frame folder, and the mask of frame 0 (mode L, {0, 255})."""
    seq = fixture_data / "davis2016/JPEGImages/480p/blackswan"
    folder = tmp_path_factory.mktemp("blackswan") / "frames"
    folder.mkdir()
    for f in sorted(seq.glob("*.jpg"))[:6]:
        shutil.copy(f, folder / f.name)
    return folder, fixture_data / "davis2016/Annotations/480p/blackswan/00000.png"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", create_model("tiny"))
    return ckpt, export_onnx(ckpt, size=96, max_batch=4)  # 854x480 at short side 96 -> 168x96


def test_track_cli_onnx_encoder_gives_the_pytorch_masks(blackswan, tiny, tmp_path):
    frames, mask = blackswan
    ckpt, onnx_path = tiny
    assert onnx_path.name == "tiny_96x168.onnx"
    common = [str(frames), "--mask", str(mask), "--size", "96", "--chunk", "3", "--quiet"]
    for name, weights in (("torch", ["--ckpt", str(ckpt)]), ("onnx", ["--encoder", str(onnx_path)])):
        r = CliRunner().invoke(track_main, [*common, *weights, "--out", str(tmp_path / name)])
        assert r.exit_code == 0, (r.output, r.exception)
    ours, theirs = _masks(tmp_path / "onnx"), _masks(tmp_path / "torch")
    assert list(ours) == [f"{i:05d}" for i in range(6)]
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    truth = np.asarray(Image.open(mask)) > 0
    np.testing.assert_array_equal(ours["00000"] == 1, truth)
    assert all(0 < (m == 1).sum() < m.size for m in ours.values())  # the swan is tracked, not lost or everywhere


def test_tracker_on_an_onnx_encoder_of_another_size_says_what_to_export(blackswan, tiny):
    frames, mask = blackswan
    _, onnx_path = tiny
    tracker = Tracker(load_encoder(onnx_path), size=128)  # the graph is for size 96
    with pytest.raises(InputError) as e:
        list(tracker.masks(frames, mask))
    # every size height x width, as --size and the file name spell them; the file, the preset and --size named
    assert str(e.value) == (
        f"{onnx_path.name} was built for 96x168 frames (height x width) but preset siammae-davis at --size 128 "
        "encodes this 480x854 video at 128x224; export one for that size: siammae-export --height 128 --width 224"
    )
    assert onnx_path.name.endswith("_96x168.onnx")
    # with the preset's own size (no --size) the message says so, not "size None"
    with pytest.raises(InputError, match=r"but preset siammae-davis encodes this 480x854 video at 480x880;"):
        list(Tracker(load_encoder(onnx_path)).masks(frames, mask))
