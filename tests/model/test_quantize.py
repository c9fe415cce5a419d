"""--dtype int8: the encoder's linear layers quantised on the fly, on the CPU only; the caller's model unchanged."""

import pytest
import torch

from siammae.device import resolve_dtype
from siammae.model.registry import create_model
from siammae.propagation.features import TorchEncoder


def test_int8_quantises_the_linear_layers_and_keeps_the_features():
    torch.manual_seed(0)
    model = create_model("tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fp32 = TorchEncoder(model, device="cpu", dtype="fp32")
    int8 = TorchEncoder(model, device="cpu", dtype="int8")
    dynamic = lambda m: type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")  # noqa: E731
    assert any(dynamic(m) for m in int8.model.modules())
    assert not any(type(m) is torch.nn.Linear for m in int8.model.modules())
    assert not any(dynamic(m) for m in fp32.model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # a copy was quantised
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    a, b = fp32(x), int8(x)
    assert a.shape == b.shape == (2, 8, 12, 64) and b.dtype == torch.float32
    assert not torch.equal(a, b)  # quantised for real
    cos = torch.nn.functional.cosine_similarity(a.flatten(0, 2), b.flatten(0, 2), dim=-1)
    assert cos.mean() > 0.99


def test_int8_is_a_cpu_mode():
    assert resolve_dtype("int8", torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError, match="int8 .* runs on the CPU"):
        resolve_dtype("int8", torch.device("cuda"))
    with pytest.raises(ValueError, match="fp32.*int8"):
        resolve_dtype("int4", torch.device("cpu"))
