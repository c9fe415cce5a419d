"""TensorRT engines (marker ``trt``: skipped with a reason without TensorRT or a CUDA device)."""

import json

import pytest
import torch
import torch.nn.functional as F

from siammae.data.transforms import normalize
from siammae.errors import InputError
from siammae.export import TensorRTEncoder, build_engine, export_onnx, load_encoder
from siammae.model.registry import create_model
from siammae.propagation.features import FrameEncoder

pytestmark = pytest.mark.trt

H, W = 64, 96


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny").eval()


def _reference(model, frames):
    with torch.no_grad():
        return model.features(normalize(frames))  # (B, h, w, D), as the graph gives them


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_engine_matches_pytorch_and_splits_batches(model, tmp_path, fp16):
    onnx_path = export_onnx(model, tmp_path / "tiny.onnx", height=H, width=W, max_batch=4, fp16=fp16)
    engine_path = build_engine(onnx_path)
    assert engine_path == tmp_path / "tiny.engine"
    assert (tmp_path / "tiny.timing.cache").stat().st_size > 0
    report = json.loads((tmp_path / "tiny.engine.verify.json").read_text())
    assert report["passed"] and report["batch_sizes"] == [1, 4]
    build = json.loads((tmp_path / "tiny.engine.json").read_text())
    assert build["max_batch"] == 4 and build["metadata"]["siammae.dtype"] == ("fp16" if fp16 else "fp32")

    enc = load_encoder(engine_path)
    assert isinstance(enc, TensorRTEncoder) and isinstance(enc, FrameEncoder)
    assert (enc.fixed_size, enc.patch_size, enc.embed_dim, enc.max_batch) == ((H, W), 8, 64, 4)
    assert enc.dtype == ("fp16" if fp16 else "fp32")
    frames = torch.rand(6, 3, H, W, generator=torch.Generator().manual_seed(1))  # 6 > max batch 4: two runs
    out = enc(frames)
    assert out.shape == (6, 8, 12, 64) and out.dtype == torch.float32 and out.device.type == "cuda"
    ref = _reference(model, frames)
    if fp16:
        assert F.cosine_similarity(out.cpu(), ref, dim=-1).min() >= 0.999
    else:
        assert (out.cpu() - ref).abs().max() <= 1e-3
    with pytest.raises(InputError, match=r"tiny.engine was built for 64x96 frames but got 48x80"):
        enc(torch.rand(1, 3, 48, 80))


def test_rebuild_reuses_the_timing_cache(model, tmp_path, caplog):
    onnx_path = export_onnx(model, tmp_path / "tiny.onnx", height=H, width=W, max_batch=2, verify=False)
    build_engine(onnx_path, verify=False)
    with caplog.at_level("INFO", logger="siammae"):
        build_engine(onnx_path, tmp_path / "again.plan", verify=False)
    assert "using the timing cache" not in caplog.text  # again.plan has its own cache name
    with caplog.at_level("INFO", logger="siammae"):
        build_engine(onnx_path, verify=False)
    assert "using the timing cache" in caplog.text
    assert isinstance(load_encoder(tmp_path / "again.plan"), TensorRTEncoder)


def test_engine_file_that_is_not_an_engine(tmp_path):
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="bad.engine: not a TensorRT engine"):
        load_encoder(bad)
