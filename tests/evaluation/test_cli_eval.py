"""``siammae-eval``: scoring existing predictions (the official OSVOS numbers), usage and data errors."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import davis_2016_layout

from siammae.cli.eval import main
from siammae.evaluation.png import write_index_png


def _osvos_layout(shared_data, tmp_path):
    official = json.loads((shared_data / "davis2016/osvos_official_scores.json").read_text())
    return davis_2016_layout(shared_data, tmp_path / "DAVIS", official["sequences"]), official


@pytest.mark.parametrize("data", ["fixture_data", "shared_data"])  # 6 frames that ship, all of DAVIS-2016 val
def test_davis_results_equal_official_osvos(data, request, tmp_path):
    shared_data = request.getfixturevalue(data)
    root, official = _osvos_layout(shared_data, tmp_path)
    out = tmp_path / "out"
    args = ["davis", "--root", str(root), "--year", "2016", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--results", str(shared_data / "davis2016/osvos_predictions")])
    assert result.exit_code == 0, result.output
    seqs = official["sequences"].values()
    jf = np.mean([s["JF_mean"] for s in seqs])
    assert "| J&F-Mean | J-Mean | J-Recall | J-Decay | F-Mean | F-Recall | F-Decay |" in result.stdout
    assert f"| {100 * jf:.1f} |" in result.stdout
    doc = json.loads((out / "results.json").read_text())
    assert doc["global"]["J&F-Mean"] == pytest.approx(jf, abs=1e-6)
    assert doc["global"]["J-Mean"] == pytest.approx(np.mean([s["J_mean"] for s in seqs]), abs=1e-6)
    assert doc["global"]["F-Mean"] == pytest.approx(np.mean([s["F_mean"] for s in seqs]), abs=1e-6)
    assert (out / "per-sequence_results-val.csv").read_text().startswith("Sequence,J-Mean,J-Recall,J-Decay,F-Mean")
    for row, (name, ref) in zip(doc["per_sequence"], official["sequences"].items(), strict=True):
        assert row["Sequence"] == f"{name}_1"  # DAVIS-2016: one object per sequence
        assert row["J-Mean"] == pytest.approx(ref["J_mean"], abs=1e-6)
        assert row["F-Mean"] == pytest.approx(ref["F_mean"], abs=1e-6)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ckpt", "m.pth", "--results", "r"], "give --ckpt to run a model or --results to score"),
        (["--results", "r", "--preset", "dino", "--topk", "3"], "--preset, --topk only apply with --ckpt"),
    ],
)
def test_usage_errors(tmp_path, extra, message):
    result = CliRunner().invoke(main, ["davis", "--root", str(tmp_path), *extra])
    assert result.exit_code == 2
    assert message in result.stderr


def test_data_errors_are_one_line(tmp_path):
    (tmp_path / "res").mkdir()
    result = CliRunner().invoke(main, ["davis", "--root", str(tmp_path), "--results", str(tmp_path / "res")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: DAVIS split list ")
    assert "ImageSets/2017/val.txt does not exist" in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    result = CliRunner().invoke(main, ["jhmdb", "--root", str(tmp_path), "--results", str(tmp_path / "res")])
    assert result.exit_code == 2 and "error: JHMDB split files" in result.stderr


def test_vip_results(tmp_path):
    root = tmp_path / "VIP"
    gt = np.zeros((8, 8), dtype=np.uint8)
    gt[2:6, 2:6] = 13  # face
    for t in range(2):
        (root / "Images/videos1").mkdir(parents=True, exist_ok=True)
        (root / "Images/videos1" / f"{t:05d}.jpg").write_bytes(b"")  # frames are not read when scoring
        write_index_png(root / "Annotations/Category_ids/videos1" / f"{t:05d}.png", gt)
        write_index_png(tmp_path / "res/videos1" / f"{t:05d}.png", gt if t == 0 else np.zeros_like(gt))
    (root / "lists").mkdir()
    (root / "lists/val_videos.txt").write_text("videos1\n")
    result = CliRunner().invoke(main, ["vip", "--root", str(root), "--results", str(tmp_path / "res")])
    assert result.exit_code == 0, result.output
    # Frame 1 predicts only background. Background: tp 48 + 48, union 96 + 16 = 112; face: tp 16, union 32.
    expected = (96 / 112 + 16 / 32) / 2
    assert f"| {100 * expected:.1f} |" in result.stdout
    assert json.loads((tmp_path / "res/results.json").read_text())["global"]["mIoU"] == pytest.approx(expected)
