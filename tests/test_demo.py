"""siammae-demo: the built-in example writes what it says, and pretraining beats the untrained network."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from siammae.cli.demo import cli
from siammae.data.synthetic import make_synthetic_clip
from siammae.data.video import count_frames
from siammae.demo import DemoSettings, run_demo
from siammae.errors import InputError
from siammae.evaluation.metrics.davis import db_eval_iou
from siammae.tracking import read_mask

SMALL = DemoSettings(frames=8, steps=3, batch_size=4, workers=0)


def test_demo_writes_video_truth_masks_overlays_and_report(tmp_path):
    res = run_demo(tmp_path, SMALL, progress=False, log=lambda m: None)
    assert count_frames(tmp_path / "video.mp4") == 8
    _, masks = make_synthetic_clip(8 * SMALL.stride, SMALL.size, seed=SMALL.video_seed, num_objects=SMALL.objects)
    for i, m in enumerate(masks[:: SMALL.stride]):
        assert np.array_equal(read_mask(tmp_path / "ground_truth" / f"{i:05d}.png"), m)
    for name in ("untrained", "trained"):
        assert len(list((tmp_path / name / "masks").glob("*.png"))) == 8
        assert count_frames(tmp_path / name / "overlay.mp4") == 8
        assert (tmp_path / name / "report.json").exists()
    assert (tmp_path / "train" / "model.pt").exists()
    report = json.loads(res.report.read_text())
    assert report["scores"]["trained"]["J-Mean"] == pytest.approx(res.j_trained)
    assert report["scores"]["untrained"]["J-Mean"] == pytest.approx(res.j_untrained)
    truth = np.stack([read_mask(p) for p in sorted((tmp_path / "ground_truth").glob("*.png"))])[1:-1]
    for name, j in (("untrained", res.j_untrained), ("trained", res.j_trained)):  # the J of the masks written
        pred = np.stack([read_mask(p) for p in sorted((tmp_path / name / "masks").glob("*.png"))])[1:-1]
        per_object = [db_eval_iou(truth == o, pred == o).mean() for o in range(1, SMALL.objects + 1)]
        assert j == pytest.approx(np.mean(per_object), abs=1e-9)  # DAVIS: first and last frame left out
    assert report["training"]["steps"] == 3
    assert f"{res.j_trained:.3f}" in (tmp_path / "report.md").read_text()

    with pytest.raises(InputError, match="already holds a demo .*--overwrite"):
        run_demo(tmp_path, SMALL, progress=False, log=lambda m: None)


def test_demo_cli_prints_both_scores(tmp_path, monkeypatch):
    import siammae.demo

    monkeypatch.setattr(siammae.demo, "DemoSettings", lambda steps=None: SMALL)
    res = CliRunner().invoke(cli, ["--out", str(tmp_path), "--steps", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "J untrained: " in res.output and "J trained: " in res.output
    again = CliRunner().invoke(cli, ["--out", str(tmp_path), "--quiet"])
    assert again.exit_code == 2 and "error: --out" in again.output


@pytest.mark.slow
def test_pretraining_beats_the_untrained_network(tmp_path):
    """The README's example: about a minute of pretraining lifts J well above the untrained network's."""
    res = run_demo(tmp_path, progress=False, log=lambda m: None)
    assert res.loss_last < 0.7 * res.loss_first
    assert res.j_trained > res.j_untrained + 0.1, (res.j_untrained, res.j_trained)
