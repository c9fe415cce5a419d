"""ONNX export and the ONNX runtime encoder, on the CPU: parity with PyTorch, metadata, batching, bad inputs."""

import logging
import time

import onnx
import pytest
import torch
import torch.nn.functional as F
from helpers import TENSORRT_INSTALLED

from siammae.data.transforms import DINO_STD, IMAGENET_MEAN, IMAGENET_STD, normalize
from siammae.errors import CheckpointError, InputError, MissingExtraError, SiamMAEError
from siammae.export import (
    EncoderGraph,
    ExportVerificationError,
    OnnxEncoder,
    build_engine,
    export_onnx,
    load_encoder,
    read_info,
    verify_onnx,
)
from siammae.export import onnx as onnx_export
from siammae.model.checkpoint import file_sha256, save_checkpoint
from siammae.model.registry import create_model
from siammae.propagation.features import FrameEncoder

H, W = 64, 96  # tiny: patch 8 -> an 8x12 grid, not the 8x8 of img_size 64


def _frames(b, h=H, w=W, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _reference(model, frames, std=IMAGENET_STD, pos_interp="auto"):
    """Written out here, independently of the export code: normalise, features (the propagation L2-normalises)."""
    with torch.no_grad():
        return model.features(normalize(frames, IMAGENET_MEAN, std), pos_interp=pos_interp)  # (B, h, w, D)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    return model, save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model)


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
    _, ckpt = tiny
    return export_onnx(ckpt, tmp_path_factory.mktemp("onnx") / "tiny.onnx", height=H, width=W, max_batch=2)


def test_fp32_graph_matches_pytorch_and_writes_the_verify_report(tiny, tiny_onnx):
    model, _ = tiny
    enc = load_encoder(tiny_onnx)
    assert isinstance(enc, OnnxEncoder) and isinstance(enc, FrameEncoder)
    assert (enc.patch_size, enc.embed_dim, enc.fixed_size, enc.device.type, enc.dtype) == (8, 64, (H, W), "cpu", "fp32")
    frames = _frames(3)
    out = enc(frames)
    assert out.shape == (3, 8, 12, 64) and out.dtype == torch.float32
    assert (out - _reference(model, frames)).abs().max() <= 1e-4

    import json

    report = json.loads(tiny_onnx.with_name("tiny.onnx.verify.json").read_text())
    assert report["passed"] and report["dtype"] == "fp32" and report["max_abs_err"] <= 1e-4
    assert report["providers"] == ["CPUExecutionProvider"] and report["batch_sizes"] == [1, 2]
    assert report["input_shape"] == ["B", 3, H, W] and report["output_shape"] == ["B", 96, 64]


def test_metadata_and_graph_signature_read_back(tiny, tiny_onnx):
    model, ckpt = tiny
    info = read_info(tiny_onnx)
    assert info.config == model.config.to_dict()
    assert (info.height, info.width, info.grid, info.patch_size, info.embed_dim) == (H, W, (8, 12), 8, 64)
    assert (info.mean, info.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert (info.max_batch, info.dtype, info.exporter, info.opset) == (2, "fp32", "dynamo", 18)
    assert info.checkpoint == "tiny.pt" and info.checkpoint_sha256 == file_sha256(ckpt)
    graph = onnx.load(str(tiny_onnx))
    (inp,), (out,) = graph.graph.input, graph.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "frames" and dims[1:] == [3, H, W] and isinstance(dims[0], str)  # dynamic batch
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.name == "features" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.producer_name == "siammae"
    assert not tiny_onnx.with_name("tiny.onnx.data").exists()  # one self-contained file


def test_batches_above_max_batch_are_split(tiny_onnx):
    enc = load_encoder(tiny_onnx)
    assert enc.max_batch == 2
    frames = _frames(5, seed=1)
    whole = enc(frames)
    one_by_one = torch.cat([enc(frames[i : i + 1]) for i in range(5)])
    assert whole.shape == (5, 8, 12, 64)
    assert torch.allclose(whole, one_by_one, atol=1e-6)
    assert not torch.allclose(whole[0], whole[1])  # each frame got its own features


def test_fp16_graph(tiny, tmp_path):
    model, ckpt = tiny
    path = export_onnx(ckpt, tmp_path / "tiny_fp16.onnx", height=H, width=W, max_batch=2, fp16=True)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the caller's model was not cast
    info = read_info(path)
    assert info.dtype == "fp16"
    frames = _frames(2, seed=2)
    out = load_encoder(path)(frames)
    assert out.dtype == torch.float32  # float32 I/O around an fp16 body
    cos = F.cosine_similarity(out, _reference(model, frames), dim=-1)
    assert cos.min() >= 0.999
    graph = onnx.load(str(path)).graph
    weights = {i.name: i.data_type for i in graph.initializer}
    matmul_weights = [weights[n.input[1]] for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert matmul_weights and set(matmul_weights) == {onnx.TensorProto.FLOAT16}
    ln_scales = [weights[n.input[1]] for n in graph.node if n.op_type == "LayerNormalization"]
    assert len(ln_scales) == 2 * 2 + 1 and set(ln_scales) == {onnx.TensorProto.FLOAT}  # LayerNorm kept in fp32


def test_vits16_random_weights_parity(tmp_path):
    torch.manual_seed(1)
    model = create_model("vits16").eval()
    t0 = time.perf_counter()
    path = export_onnx(model.encoder, tmp_path / "vits16.onnx", height=H, width=W, max_batch=2)
    export_s = time.perf_counter() - t0
    frames = _frames(2, seed=3)
    out = load_encoder(path)(frames)
    assert out.shape == (2, 4, 6, 384)
    assert (out - _reference(model, frames)).abs().max() <= 1e-4
    assert read_info(path).checkpoint is None  # exported from a model in memory
    print(f"vits16 export + verify at {W}x{H}: {export_s:.1f} s")


def test_learned_position_table_resized_bicubically_and_dino_std(tmp_path):
    torch.manual_seed(2)
    model = create_model("tiny", pos_embed="learned").eval()
    with torch.no_grad():
        model.encoder.pos_embed.normal_(std=0.5)  # a trained-looking table, so that the resize matters
    path = export_onnx(model, tmp_path / "learned.onnx", height=48, width=80, max_batch=2, std=DINO_STD)
    info = read_info(path)
    assert info.std == DINO_STD and info.pos_interp == "auto"
    frames = _frames(2, 48, 80, seed=4)
    out = load_encoder(path)(frames)
    assert (out - _reference(model, frames, std=DINO_STD, pos_interp="bicubic")).abs().max() <= 1e-4
    # the graph really uses the resized table and DINO's std: either change is far outside the tolerance
    assert (out - _reference(model, frames, std=DINO_STD, pos_interp="sincos")).abs().max() > 1e-2
    assert (out - _reference(model, frames, std=IMAGENET_STD, pos_interp="bicubic")).abs().max() > 1e-3


def test_encoder_graph_equals_the_model_in_pytorch():
    torch.manual_seed(3)
    model = create_model("tiny").eval()
    graph = EncoderGraph(model.encoder, H, W).eval()
    frames = _frames(2, seed=5)
    with torch.no_grad():
        assert torch.allclose(graph(frames).view(2, 8, 12, 64), _reference(model, frames), atol=1e-6)


def test_falls_back_to_the_torchscript_exporter_with_a_log_line(tiny, tmp_path, monkeypatch, caplog):
    model, _ = tiny

    def broken(*args, **kwargs):
        raise torch.onnx.errors.OnnxExporterError("simulated failure of torch.export")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    with caplog.at_level(logging.WARNING, logger="siammae"):
        path = export_onnx(model, tmp_path / "ts.onnx", height=H, width=W, max_batch=2)
    assert "falling back to the TorchScript exporter" in caplog.text and "simulated failure" in caplog.text
    assert read_info(path).exporter == "torchscript"
    frames = _frames(3, seed=6)
    assert (load_encoder(path)(frames) - _reference(model, frames)).abs().max() <= 1e-4


def test_external_data_beside_the_graph(tiny, tmp_path):
    model, _ = tiny
    path = export_onnx(model, tmp_path / "ext.onnx", height=H, width=W, max_batch=2, external_data=True)
    data = tmp_path / "ext.onnx.data"
    assert data.is_file() and data.stat().st_size > path.stat().st_size  # the weights are outside the graph
    assert read_info(path).embed_dim == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data", "ext.onnx.verify.json"]
    frames = _frames(2, seed=7)
    assert (load_encoder(path)(frames) - _reference(model, frames)).abs().max() <= 1e-4


def test_verification_catches_a_graph_that_does_not_match(tiny_onnx, tmp_path):
    torch.manual_seed(4)
    other = create_model("tiny").eval()  # same architecture, other weights
    copy = tmp_path / "tiny.onnx"
    copy.write_bytes(tiny_onnx.read_bytes())
    with pytest.raises(ExportVerificationError, match="differs from PyTorch"):
        verify_onnx(copy, other)
    import json

    report = json.loads((tmp_path / "tiny.onnx.verify.json").read_text())
    assert report["passed"] is False and report["max_abs_err"] > 1e-2


# ---------------------------------------------------------------------------------------------- bad inputs
def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: no such file"):
        export_onnx(tmp_path / "nope.pt", height=H, width=W)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(height=65, width=W), r"height 65 is not a positive multiple of the patch size 8: use e.g. --height 64"),
        (dict(height=H, width=100), r"width 100 is not a positive multiple of the patch size 8"),
        (dict(height=60, width=100), r"height 60 and width 100 are not a positive multiple of the patch size 8"),
        (dict(size=4), r"size 4 is smaller than the patch size 8"),
        (dict(size=64, height=H, width=W), r"either --size"),
        (dict(height=H), r"both --height and --width"),
        (dict(height=H, width=W, max_batch=0), r"max batch must be at least 1"),
        (dict(height=H, width=W, opset=16), r"opset 16 is too old"),
    ],
)
def test_bad_sizes_and_options(tiny, kwargs, match):
    _, ckpt = tiny
    with pytest.raises(InputError, match=match):
        export_onnx(ckpt, **kwargs)


def test_size_is_the_short_side_of_a_480p_video(tiny, tmp_path):
    _, ckpt = tiny
    path = export_onnx(ckpt, tmp_path / "s.onnx", size=64, max_batch=1, verify=False)
    assert read_info(path).size == (64, 112)  # 854x480 at short side 64, long side floored to a multiple of 8
    assert onnx_export.default_output("dir/vits8.pt", (480, 848), "fp16").name == "vits8_480x848_fp16.onnx"


def test_runtime_rejects_frames_of_another_size(tiny_onnx):
    enc = load_encoder(tiny_onnx)
    with pytest.raises(
        InputError,
        match=r"tiny.onnx was built for 64x96 frames but got 48x80 \(height x width\).*--height 48 --width 80",
    ):
        enc(_frames(1, 48, 80))
    with pytest.raises(InputError, match=r"tiny.onnx: expected frames of shape \(B, 3, H, W\), got \(1, 1, 64, 96\)"):
        enc(torch.rand(1, 1, H, W))


def test_load_encoder_bad_files(tmp_path):
    with pytest.raises(InputError, match="unknown encoder file type .pt"):
        load_encoder(tmp_path / "model.pt")
    with pytest.raises(InputError, match="missing.onnx: no such file"):
        load_encoder(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 not a protobuf \xff\xfe")
    with pytest.raises(InputError, match="corrupt.onnx"):
        load_encoder(corrupt)
    with pytest.raises(InputError, match="corrupt.onnx: not a readable ONNX file"):
        read_info(corrupt)
    # a valid ONNX graph that siammae did not write: no metadata to run it by
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    relu = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    foreign = onnx.helper.make_model(relu, ir_version=9, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save_model(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(InputError, match="foreign.onnx: not an encoder exported by siammae-export"):
        load_encoder(tmp_path / "foreign.onnx")


def test_cuda_requested_without_a_gpu(tiny_onnx):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no CUDA device"):
        OnnxEncoder(tiny_onnx, device="cuda")


# ------------------------------------------------------------------------------------------- TensorRT gate
@pytest.mark.skipif(TENSORRT_INSTALLED, reason="TensorRT is installed")
def test_build_engine_without_tensorrt_names_the_extra(tiny_onnx, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU, so that the missing package is the error
    with pytest.raises(
        MissingExtraError, match=r"building a TensorRT engine needs tensorrt: pip install 'siammae\[trt\]'"
    ):
        build_engine(tiny_onnx)
    with pytest.raises(MissingExtraError, match="running the TensorRT engine x.engine needs tensorrt"):
        x = tiny_onnx.with_name("x.engine")
        x.write_bytes(b"not an engine")
        load_encoder(x)


def test_build_engine_without_a_gpu_says_so(tiny_onnx, monkeypatch):
    """No GPU: the error says so first, installed TensorRT or not (installing it would not help)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SiamMAEError, match="needs a CUDA GPU, and torch sees none") as e:
        build_engine(tiny_onnx)
    assert "pip install" not in str(e.value)


@pytest.mark.gpu
def test_onnxruntime_cuda_provider(tiny, tiny_onnx):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip(f"onnxruntime {onnxruntime.__version__} has no CUDA provider (install onnxruntime-gpu)")
    model, _ = tiny
    enc = OnnxEncoder(tiny_onnx, device="cuda")
    assert enc.providers[0] == "CUDAExecutionProvider"
    frames = _frames(3, seed=8)
    out = enc(frames.to("cuda"))
    assert out.device.type == "cuda"
    assert (out.cpu() - _reference(model, frames)).abs().max() <= 1e-4


def test_default_export_size_is_what_the_tracker_encodes():
    """With no --height / --width the graph is built for a DAVIS 480p video as siammae-track encodes it under the
    same preset and --size, so an exported encoder fits the tracker's defaults."""
    from siammae.propagation.config import get_preset

    assert onnx_export.resolve_size(16) == (480, 880)  # siammae-davis: CropMAE's fixed 480x880
    assert onnx_export.resolve_size(16, preset="dino") == (480, 832)  # DINO: long side floored to 64
    assert onnx_export.resolve_size(8, 480) == (480, 848)  # a short side keeps the aspect
    assert onnx_export.resolve_size(8, (240, 320)) == (240, 320)
    for preset in ("siammae-davis", "dino", "siammae-vip"):
        assert onnx_export.resolve_size(8, preset=preset) == get_preset(preset).inputs.frame_size(480, 854, 8)
