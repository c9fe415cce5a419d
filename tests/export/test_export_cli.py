"""``siammae-export`` through Click's CliRunner: a real export, and one-line errors with exit status 2."""

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from helpers import TENSORRT_INSTALLED

from siammae.cli.export import main
from siammae.export import load_encoder, read_info
from siammae.model.checkpoint import save_checkpoint
from siammae.model.registry import create_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("cli") / "tiny.pt", create_model("tiny"))


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_export_with_verification(ckpt, tmp_path):
    out = tmp_path / "enc.onnx"
    r = _run("--ckpt", ckpt, "--out", out, "--height", 64, "--width", 96, "--max-batch", 3, "--std", "dino")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(out)
    assert "verify (CPUExecutionProvider, batches [1, 2]): max abs error" in r.stderr and "-> ok" in r.stderr
    info = read_info(out)
    assert (info.size, info.max_batch, info.std, info.dtype) == ((64, 96), 3, (0.228, 0.224, 0.225), "fp32")
    assert json.loads((tmp_path / "enc.onnx.verify.json").read_text())["passed"] is True
    assert load_encoder(out)(torch.rand(4, 3, 64, 96)).shape == (4, 8, 12, 64)


def test_default_output_name_and_no_verify(ckpt):
    r = _run("--ckpt", ckpt, "--size", 64, "--fp16", "--no-verify", "--max-batch", 1)
    assert r.exit_code == 0, r.output
    out = ckpt.with_name("tiny_64x112_fp16.onnx")
    assert r.stdout.strip() == str(out) and out.is_file()
    # one size convention: the log line and the file name both say height x width (64x112, as --size 64x112)
    assert "for 64x112 frames (height x width)" in r.stderr and "wrote" in r.stderr  # progress lines
    assert not out.with_name(out.name + ".verify.json").exists() and "verify" not in r.stderr
    assert read_info(out).dtype == "fp16"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ckpt", "missing.pt"], "missing.pt: no such file"),
        (["--height", 65, "--width", 96], "height 65 is not a positive multiple of the patch size 8"),
        (["--size", 64, "--height", 64, "--width", 96], "give either --size (64) or --height/--width"),
        (["--width", 96], "give both --height and --width"),
    ],
)
def test_errors_are_one_line_with_status_2(ckpt, tmp_path, args, message):
    if "--ckpt" not in args:
        args = ["--ckpt", ckpt, *args]
    r = _run(*args, "--out", tmp_path / "x.onnx")
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and message in r.stderr
    assert "Traceback" not in r.output
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.skipif(TENSORRT_INSTALLED, reason="TensorRT is installed")
def test_trt_without_tensorrt_fails_before_exporting(ckpt, tmp_path, monkeypatch):
    import siammae.export.runtime as runtime

    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: True)  # a GPU, but no tensorrt
    monkeypatch.setattr("siammae.model.load.gpu_absent", lambda: None)
    r = _run("--ckpt", ckpt, "--height", 64, "--width", 96, "--trt", "--out", tmp_path / "x.onnx")
    assert r.exit_code == 2
    assert "error: building a TensorRT engine needs tensorrt: pip install 'siammae[trt]'" in r.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_trt_without_a_gpu_says_so_before_tensorrt(ckpt, tmp_path, monkeypatch):
    """No GPU: the error says so, at once (before torch when no driver is there), and not "install tensorrt"."""
    monkeypatch.setattr("siammae.model.load.gpu_absent", lambda: "this machine has no GPU driver (test)")
    r = _run("--ckpt", ckpt, "--height", 64, "--width", 96, "--trt", "--out", tmp_path / "x.onnx")
    assert r.exit_code == 2
    assert "--trt builds a TensorRT engine, which needs an NVIDIA GPU, and this machine has no GPU driver" in r.stderr
    assert "pip install" not in r.stderr
    # a driver, but torch sees no GPU: the library's check names the GPU before the missing package
    monkeypatch.setattr("siammae.model.load.gpu_absent", lambda: None)
    import siammae.export.runtime as runtime

    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: False)
    r = _run("--ckpt", ckpt, "--height", 64, "--width", 96, "--trt", "--out", tmp_path / "x.onnx")
    assert r.exit_code == 2 and "needs a CUDA GPU, and torch sees none" in r.stderr, r.stderr
    assert "pip install" not in r.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_bad_option_values_are_usage_errors(ckpt):
    r = _run("--ckpt", ckpt, "--max-batch", 0)
    assert r.exit_code == 2 and "--max-batch" in r.stderr
    r = _run("--ckpt", ckpt, "--arch", "vitx99")
    assert r.exit_code == 2 and "vitx99" in r.stderr


def test_existing_output_is_refused_unless_overwrite(ckpt, tmp_path):
    out = tmp_path / "enc.onnx"
    out.write_bytes(b"mine")
    r = _run("--ckpt", ckpt, "--out", out, "--height", 64, "--width", 96, "--no-verify")
    assert r.exit_code == 2
    assert r.stderr == f"error: {out}: output file exists (use --overwrite to replace it)\n"
    assert out.read_bytes() == b"mine"
    r = _run("--ckpt", ckpt, "--out", out, "--height", 64, "--width", 96, "--no-verify", "--overwrite")
    assert r.exit_code == 0, r.output
    assert read_info(out).size == (64, 96)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ckpt", "missing.pt"], "error: missing.pt: no such file"),
        (["--ckpt", "dino-vit16"], "did you mean dino-vits16"),
        (["--out", "{tmp}/exists.onnx"], "exists.onnx: output file exists"),
        (["--out", "{tmp}/model.pt"], "model.pt: the output must be an .onnx file"),
    ],
)
def test_argument_errors_come_before_torch_is_imported(ckpt, tmp_path, args, message):
    """A missing checkpoint or an existing output is refused before torch (seconds to import) loads."""
    (tmp_path / "exists.onnx").write_bytes(b"")
    args = [a.format(tmp=tmp_path) for a in args]
    if "--ckpt" not in args:
        args = ["--ckpt", str(ckpt), *args]
    code = (
        "import sys\nfrom siammae.cli.export import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    print('torch' in sys.modules, e.code)"
    )
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["False", "2"], (r.stdout, r.stderr)
    assert message in r.stderr
