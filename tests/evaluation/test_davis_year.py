"""DAVIS without --year: the year is detected from the folder (and said), a DAVIS-2016 mask read as 2017 is an error
that names the file, the sequence and the fix, and every argument error comes before torch is imported."""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import davis_2016_layout
from PIL import Image

from siammae.cli.eval import main
from siammae.errors import InputError
from siammae.evaluation.davis import Davis, detect_year, list_sequences
from siammae.evaluation.png import write_index_png
from siammae.evaluation.protocol import Benchmark
from siammae.evaluation.vip import Vip

OSVOS = ("blackswan", "car-shadow", "soapbox")


def _layout(root, year_lists=("2016", "2017"), mode="P", names=("a", "b"), frames=3):
    """A synthetic DAVIS folder: ``names`` sequences, 16x24 frames, annotations in ``mode`` (P: ids 1 and 2; L:
    {0, 255}), and val lists under ``ImageSets/<year>`` for each of ``year_lists``."""
    for name in names:
        for t in range(frames):
            (root / "JPEGImages/480p" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((16, 24, 3), 40 * t, np.uint8)).save(root / f"JPEGImages/480p/{name}/{t:05d}.jpg")
            ids = np.zeros((16, 24), np.uint8)
            ids[2:8, 2:8], ids[9:14, 12:20] = 1, 2
            path = root / f"Annotations/480p/{name}/{t:05d}.png"
            if mode == "P":
                write_index_png(path, ids)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(((ids > 0) * 255).astype(np.uint8), mode="L").save(path)
    for year in year_lists:
        (root / "ImageSets" / year).mkdir(parents=True)
        (root / "ImageSets" / year / "val.txt").write_text("\n".join(names) + "\n")
    return root


def test_real_davis_2016_annotations_are_detected_as_2016(shared_data, tmp_path):
    year, why = detect_year(shared_data / "davis2016")  # mode L {0, 255}, no ImageSets at all
    assert year == "2016"
    assert "blackswan/00000.png is a mode L mask with values {0, 255} (the DAVIS-2016 release)" in why
    # the annotations decide even beside the lists of a DAVIS-2017 download (which has ImageSets/2016 and 2017)
    root = davis_2016_layout(shared_data, tmp_path / "D", OSVOS)
    (root / "ImageSets/2017").mkdir()
    assert detect_year(root)[0] == "2016"


@pytest.mark.parametrize(
    ("lists", "mode", "year", "why"),
    [
        (("2016", "2017"), "P", "2017", "ImageSets/2017 exists and"),  # a DAVIS-2017 download
        (("2017",), "L", "2016", "mode L mask with values {0, 255}"),
        (("2016",), "P", "2016", "holds DAVIS-2016 lists only"),
        ((), "P", "2017", None),  # nothing to tell: 2017, and no claim of a detection
    ],
)
def test_detect_year_on_synthetic_layouts(tmp_path, lists, mode, year, why):
    root = _layout(tmp_path / "D", lists, mode)
    got_year, got_why = detect_year(root)
    assert got_year == year
    assert got_why is None if why is None else why in got_why


def test_cli_without_year_scores_davis_2016_as_with_it(shared_data, tmp_path):
    root = davis_2016_layout(shared_data, tmp_path / "D", OSVOS)
    res = shared_data / "davis2016/osvos_predictions"
    auto = CliRunner().invoke(main, ["davis", "--root", str(root), "--results", str(res), "--out", str(tmp_path / "a")])
    assert auto.exit_code == 0, auto.output
    assert f"DAVIS-2016 detected in {root}: " in auto.stderr and "(pass --year to choose)" in auto.stderr
    given = ["davis", "--root", str(root), "--year", "2016", "--results", str(res), "--out", str(tmp_path / "g")]
    assert CliRunner().invoke(main, given).exit_code == 0
    a, g = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("a", "g"))
    assert a["global"] == g["global"] and a["settings"]["year"] == "2016"
    official = json.loads((shared_data / "davis2016/osvos_official_scores.json").read_text())
    assert a["global"]["J-Mean"] == pytest.approx(np.mean([s["J_mean"] for s in official["sequences"].values()]))


def test_davis_2016_mask_read_as_2017_names_file_sequence_and_fix(shared_data, tmp_path):
    root = davis_2016_layout(shared_data, tmp_path / "D", OSVOS)
    args = [
        "davis",
        "--root",
        str(root),
        "--year",
        "2017",
        "--results",
        str(shared_data / "davis2016/osvos_predictions"),
    ]
    (root / "ImageSets/2017").mkdir()
    (root / "ImageSets/2017/val.txt").write_text("blackswan\n")
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    first = root / "Annotations/480p/blackswan/00000.png"
    assert r.stderr.splitlines()[-1] == (
        f"error: {first}: the first annotation of DAVIS sequence blackswan marks no object (DAVIS-2017 ids); "
        "it holds values [0, 255] (mode L), a DAVIS-2016 mask: pass --year 2016"
    )


def test_davis_2016_release_list_format(tmp_path):
    """The DAVIS-2016 download lists frames (``ImageSets/480p/val.txt``), not sequences."""
    root = _layout(tmp_path / "D", (), "L")
    (root / "ImageSets/480p").mkdir(parents=True)
    lines = [
        f"/JPEGImages/480p/{s}/{t:05d}.jpg /Annotations/480p/{s}/{t:05d}.png" for s in ("b", "a") for t in range(3)
    ]
    (root / "ImageSets/480p/val.txt").write_text("\n".join(lines) + "\n")
    assert detect_year(root)[0] == "2016"
    assert list_sequences(root, "2016", "val") == ["b", "a"]
    (root / "ImageSets/480p/val.txt").write_text("../../etc/passwd x\n")
    with pytest.raises(InputError, match="val.txt: line 1"):
        list_sequences(root, "2016", "val")


def test_errors_of_a_sequence_name_it(tmp_path):
    class Failing(Vip):
        def score(self, root, name, results_dir):
            raise InputError("cannot read it")

    assert issubclass(Failing, Benchmark)
    (tmp_path / "V/lists").mkdir(parents=True)
    (tmp_path / "V/lists/val_videos.txt").write_text("videos7\n")
    (tmp_path / "res").mkdir()
    with pytest.raises(InputError, match=r"^VIP sequence videos7: cannot read it$"):
        Failing().score_results(tmp_path / "V", tmp_path / "res", progress=False)
    with pytest.raises(InputError, match="DAVIS year '2018'"):
        Davis(year="2018")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["davis", "--root", "{tmp}/missing"], "error: DAVIS root {tmp}/missing is not a folder"),
        (["davis", "--root", "{tmp}/D", "--ckpt", "{tmp}/no.pt"], "error: {tmp}/no.pt: no such file"),
        (["davis", "--root", "{tmp}/D", "--encoder", "{tmp}/no.onnx"], "error: {tmp}/no.onnx: no such file"),
        (["davis", "--root", "{tmp}/D", "--sequences", "zz"], "error: --sequences: zz not in the DAVIS-2017 val list"),
        (
            ["davis", "--root", "{tmp}/D", "--encoder", "{tmp}/D/m.onnx", "--attention", "sdpa"],
            "error: {tmp}/D/m.onnx: --attention applies to PyTorch weights (--ckpt)",
        ),  # fmt: skip
        (["vip", "--root", "{tmp}/missing"], "error: VIP root {tmp}/missing is not a folder"),
    ],
)
def test_argument_errors_come_before_torch_is_imported(tmp_path, args, message):
    """Without --ckpt the default weights would be fetched and torch imported (seconds) before the data was looked
    at; now the data set, the lists and the files are checked first."""
    _layout(tmp_path / "D")
    (tmp_path / "D/m.onnx").write_bytes(b"")  # a file: only --attention is wrong
    args = [a.format(tmp=tmp_path) for a in args]
    code = (
        "import sys\nfrom siammae.cli.eval import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    print('torch' in sys.modules, e.code)"
    )
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["False", "2"], (r.stdout, r.stderr)
    assert r.stderr.splitlines()[-1].startswith(message.format(tmp=tmp_path)), r.stderr
