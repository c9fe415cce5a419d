"""Attention in the exported graph: onnxruntime's fused MultiHeadAttention by default, the plain MatMul + Softmax +
MatMul graph on request (TensorRT) or when the fused op cannot be exported; both reproduce PyTorch."""

import collections
import copy
import logging

import onnx
import pytest
import torch
from helpers import TENSORRT_INSTALLED

from siammae.errors import InputError
from siammae.export import build_engine, export_onnx, load_encoder, read_info
from siammae.export import onnx as onnx_export
from siammae.export.attention import FusedAttention, multi_head_attention, use_fused_attention
from siammae.model.registry import create_model

H, W = 48, 72  # tiny: patch 8 -> a 6x9 grid


def _ops(path):
    return collections.Counter((n.domain, n.op_type) for n in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("tiny").eval()


def test_fused_attention_module_equals_timm_attention(tiny):
    """The swapped module computes timm's attention with the same weights (the exporter sees only the swap)."""
    blocks = torch.nn.Sequential(*[b for b in tiny.encoder.blocks])
    x = torch.randn(3, 17, tiny.encoder.embed_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = blocks(x)
        fused = torch.nn.Sequential(*[b for b in copy.deepcopy(tiny.encoder.blocks)])
        assert use_fused_attention(fused) == len(tiny.encoder.blocks)
        assert all(isinstance(b.attn, FusedAttention) for b in fused)
        torch.testing.assert_close(fused(x), expected, atol=1e-6, rtol=1e-5)
    q, k, v = torch.randn(3, 2, 5, 16).unbind(0)
    sdpa = torch.nn.functional.scaled_dot_product_attention(*(t.view(2, 5, 4, 4).transpose(1, 2) for t in (q, k, v)))
    torch.testing.assert_close(multi_head_attention(q, k, v, 4), sdpa.transpose(1, 2).reshape(2, 5, 16))


@pytest.fixture(scope="module")
def fused_fp32(tiny, tmp_path_factory):
    return export_onnx(tiny, tmp_path_factory.mktemp("fused") / "fused.onnx", height=H, width=W, max_batch=4)


@pytest.mark.parametrize("fp16", [False, True])
def test_default_export_is_fused_and_verified(tiny, fused_fp32, tmp_path, fp16):
    path = export_onnx(tiny, tmp_path / "fused.onnx", height=H, width=W, max_batch=3, fp16=True) if fp16 else fused_fp32
    ops = _ops(path)
    assert ops[("com.microsoft", "MultiHeadAttention")] == len(tiny.encoder.blocks)
    assert ops[("", "Softmax")] == 0  # no (tokens x tokens) matrix is spelled out
    assert read_info(path).attention == "fused"
    report = path.with_name(path.name + ".verify.json").read_text()
    assert '"passed": true' in report  # fp32: max abs err 1e-4 against PyTorch; fp16: cosine 0.999


def test_fused_and_plain_graphs_agree(tiny, fused_fp32, tmp_path):
    plain = export_onnx(tiny, tmp_path / "p.onnx", height=H, width=W, max_batch=4, attention="plain", verify=False)
    ops = _ops(plain)
    assert ops[("", "Softmax")] == len(tiny.encoder.blocks) and not any(d for d, _ in ops)
    assert read_info(plain).attention == "plain"
    frames = torch.rand(4, 3, H, W, generator=torch.Generator().manual_seed(2))
    assert (load_encoder(fused_fp32)(frames) - load_encoder(plain)(frames)).abs().max() <= 1e-5


def test_auto_falls_back_to_plain_attention_with_a_log_line(tiny, tmp_path, monkeypatch, caplog):
    real = onnx_export._export_dynamo

    def no_fused(graph, *args, **kwargs):
        if graph.attention == "fused":
            raise torch.onnx.errors.OnnxExporterError("simulated: no translation for the fused op")
        return real(graph, *args, **kwargs)

    monkeypatch.setattr(onnx_export, "_export_dynamo", no_fused)
    with caplog.at_level(logging.WARNING, logger="siammae"):
        path = export_onnx(tiny, tmp_path / "auto.onnx", height=H, width=W, max_batch=2)
    assert "fused attention export failed" in caplog.text and "simulated" in caplog.text
    assert read_info(path).attention == "plain" and read_info(path).exporter == "dynamo"
    with pytest.raises(Exception, match="cannot export fused attention"):
        export_onnx(tiny, tmp_path / "forced.onnx", height=H, width=W, max_batch=2, attention="fused")


def test_bad_attention_name(tiny, tmp_path):
    with pytest.raises(InputError, match="attention must be one of"):
        export_onnx(tiny, tmp_path / "x.onnx", height=H, width=W, attention="flash")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.skipif(not TENSORRT_INSTALLED, reason="TensorRT is not installed")
def test_tensorrt_refuses_a_fused_graph(tiny, tmp_path):
    path = export_onnx(tiny, tmp_path / "f.onnx", height=H, width=W, max_batch=2, verify=False)
    with pytest.raises(InputError, match="attention='plain'"):
        build_engine(path, verify=False)
