"""The one loader (siammae/model/load.py): which weights a command runs (``--ckpt``, the default, or the shipped model
when the default cannot be had, with one warning line), the device checks made before torch, and every command
running on the shipped model when offline with nothing cached."""

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import siammae.model.load as load
from siammae.data.masks import write_mask
from siammae.errors import CheckpointError, InputError
from siammae.model.registry import create_model
from siammae.model.weights import DEFAULT_WEIGHTS


def _write_shipped(folder):
    """A tiny shipped file in the format of branch `weights` (siammae/model/packaged.py): the encoder's tensors in
    fp16, its config and a model card in the safetensors metadata."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    encoder = create_model("tiny").encoder
    card = {"summary": "a tiny test SiamMAE", "data": "none", "licence": "CC-BY-NC-4.0", "davis_jf": 0.123,
            "baselines": {"copy first mask": 0.1}}  # fmt: skip
    meta = {"format": "siammae-encoder", "version": "1", "config": json.dumps(encoder.config.to_dict()),
            "card": json.dumps(card)}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{load.SHIPPED_WEIGHTS}.safetensors"
    save_file({k: v.half().contiguous() for k, v in encoder.state_dict().items()}, str(path), metadata=meta)
    return path


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Downloads off and an empty cache: the default weights cannot be had."""
    monkeypatch.setenv("SIAMMAE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.fixture
def shipped(tmp_path, monkeypatch, offline):
    """The package ships a (tiny) siammae-cpu: the file in a tmp folder, the package's location patched to it."""
    path = _write_shipped(tmp_path / "shipped")
    from siammae.model import packaged

    monkeypatch.setattr(packaged, "shipped_file", lambda: path)
    return path


def test_a_given_ckpt_is_checked_without_torch(tmp_path):
    assert load.choose_weights("dino-vits8") == load.WeightsChoice("dino-vits8")
    with pytest.raises(CheckpointError, match="nope.pt: no such file"):
        load.choose_weights(tmp_path / "nope.pt")


def test_offline_without_a_shipped_model_the_default_and_its_error(offline, monkeypatch, tmp_path):
    from siammae.model import packaged

    monkeypatch.setattr(packaged, "shipped_file", lambda: tmp_path / "absent" / "siammae-cpu.safetensors")
    choice = load.choose_weights(None)
    assert choice == load.WeightsChoice(DEFAULT_WEIGHTS) and not choice.shipped
    with pytest.raises(CheckpointError, match="downloads are off"):
        load.load_weights(None, progress=False)


def test_offline_the_shipped_model_with_one_warning(shipped, capsys):
    choice = load.choose_weights(None)
    assert choice.shipped
    notice = choice.notice
    assert DEFAULT_WEIGHTS in notice and load.SHIPPED_WEIGHTS in notice  # what it stands in for, and what it is
    assert f"siammae-weights download {DEFAULT_WEIGHTS}" in notice  # how to get the default
    model = load.load_weights(None, progress=False)
    assert model.provenance.weights == load.SHIPPED_WEIGHTS  # reports name the weights
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert warnings == [f"warning: {notice}"]
    assert load.load_weights(None, progress=False, choice=load.WeightsChoice(str(shipped))).config.embed_dim == 64


def test_a_failed_download_of_the_default_falls_back_to_the_shipped_model(shipped, monkeypatch, capsys):
    from siammae.model import checkpoint

    real = checkpoint.load_model

    def no_network(spec, **kwargs):  # the default's download fails; anything else loads
        if spec == DEFAULT_WEIGHTS:
            raise CheckpointError(f"download of https://x/{spec}.pth failed: connection refused")
        return real(spec, **kwargs)

    monkeypatch.setattr(checkpoint, "load_model", no_network)
    model = load.load_weights(None, progress=False, choice=load.WeightsChoice(DEFAULT_WEIGHTS))  # looked online
    assert model.provenance.weights == load.SHIPPED_WEIGHTS
    err = capsys.readouterr().err
    assert "connection refused" in err and err.count("warning:") == 1
    with pytest.raises(CheckpointError, match="connection refused"):  # a --ckpt given: its error stands
        load.load_weights(DEFAULT_WEIGHTS, progress=False)


def test_check_run_refuses_before_torch(monkeypatch):
    with pytest.raises(InputError, match="--dtype fp16 needs a CUDA device, not --device cpu"):
        load.check_run("cpu", "fp16")
    monkeypatch.setattr(load, "gpu_absent", lambda: "no driver (test)")
    for device, dtype, asked in (("cuda", "fp32", "--device cuda"), ("cuda:1", "bf16", "--device cuda:1"),
                                 ("auto", "fp16", "--dtype fp16")):  # fmt: skip
        with pytest.raises(InputError, match=f"{asked} needs a CUDA GPU, and no driver"):
            load.check_run(device, dtype)
    with pytest.raises(InputError, match="--dtype int8 runs on the CPU only, not --device cuda"):
        load.check_run("cuda", "int8")
    load.check_run("auto", "fp32")  # a CPU run asks nothing of the GPU
    load.check_run("cpu", "bf16")
    monkeypatch.setattr(load, "gpu_absent", lambda: None)
    load.check_run("cuda", "fp16")  # a GPU may be there: torch decides when the model loads


def test_gpu_absent_reads_the_machine_without_torch(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "CUDA_VISIBLE_DEVICES" in load.gpu_absent()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    if sys.platform.startswith("linux"):
        monkeypatch.setattr(load.os.path, "exists", lambda p: False)
        assert "no GPU driver" in load.gpu_absent()
        monkeypatch.setattr(load.os.path, "exists", lambda p: p == "/dev/nvidia0")
        assert load.gpu_absent() is None


def test_input_size_bound():
    load.check_input_size(None)
    load.check_input_size(480)
    load.check_input_size((480, 8192))
    with pytest.raises(InputError, match="--size 100000: a side of 100000 pixels is over the 8192-pixel limit"):
        load.check_input_size(100000)
    with pytest.raises(InputError, match="480x9000"):
        load.check_input_size((480, 9000))


# ------------------------------------------------------------------------------- every command, offline
@pytest.fixture
def clip(tmp_path):
    frames = tmp_path / "clip"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        rgb = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        rgb[8 + i : 20 + i, 8:20] = (220, 40, 40)
        Image.fromarray(rgb).save(frames / f"{i:05d}.png")
    ids = np.zeros((32, 32), np.uint8)
    ids[8:20, 8:20] = 1
    write_mask(tmp_path / "m.png", ids)
    return frames, tmp_path / "m.png"


def test_track_attn_export_run_on_the_shipped_model_offline(shipped, clip, tmp_path, monkeypatch):
    from siammae.cli.attn import main as attn
    from siammae.cli.export import main as export
    from siammae.cli.track import main as track

    monkeypatch.chdir(tmp_path)
    frames, mask = clip
    report = tmp_path / "run.json"
    args = [str(frames), "--mask", str(mask), "--size", "32", "--device", "cpu", "--report", str(report), "-q"]
    r = CliRunner().invoke(track, args)
    assert r.exit_code == 0, r.output
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and load.SHIPPED_WEIGHTS in warnings[0], r.stderr
    assert load.SHIPPED_WEIGHTS in report.read_text()  # the report names the weights
    r = CliRunner().invoke(attn, [str(frames), "--size", "32", "--device", "cpu", "--out", str(tmp_path / "a"), "-q"])
    assert r.exit_code == 0 and r.stderr.count("warning:") == 1, r.output
    r = CliRunner().invoke(export, ["--height", "32", "--width", "32", "--no-verify"])
    assert r.exit_code == 0 and r.stderr.count("warning:") == 1, r.output
    assert (tmp_path / f"{load.SHIPPED_WEIGHTS}_32x32.onnx").is_file()  # here, not inside the package
