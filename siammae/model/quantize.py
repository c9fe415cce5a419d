"""int8 inference on a CPU: the encoder's linear layers quantised on the fly (dynamic quantisation).

Weights are stored in int8 (per tensor), activations are quantised per batch as they arrive, products accumulate in
int32 and come back in fp32; LayerNorm, softmax, GELU and the patch embedding stay fp32. On the shipped
``siammae-cpu`` model this keeps the masks of ``benchmarks/results/cpu_modes-siammae-cpu.md`` (the share of equal
pixels is measured there, whole DAVIS sequences) at a lower encoder time. Inference only, CPU only (PyTorch's
quantised kernels, fbgemm / qnnpack).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


def quantize_linear(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) whose ``nn.Linear`` layers run in int8; ``model`` itself is unchanged."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao; the kernels are the same
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*", category=UserWarning)
        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)
