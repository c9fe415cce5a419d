"""Attention in the exported graph as one op that onnxruntime runs fused, instead of matmul + softmax + matmul.

Why: the plain ONNX spelling of ``scaled_dot_product_attention`` (MatMul, Softmax, MatMul) makes onnxruntime
materialise every (tokens x tokens) attention matrix of the batch. At 480p with patch 8 that is 6,361^2 floats =
162 MB per head and frame: the tiny model (2 heads) at batch 8 peaked at 11 GB on the CPU provider, where PyTorch
runs the same attention blocked (flash) in a few MB (``benchmarks/bench_export_memory.py``). The opset-23
``Attention`` op does not help there: onnxruntime's CPU kernel still holds all (B, heads, N, N) probabilities
(3.3 GB). onnxruntime's contrib op ``com.microsoft.MultiHeadAttention`` has flash attention on the CPU (and
flash / memory-efficient attention on CUDA): 40 MB for the same batch, and faster.

How: :func:`use_fused_attention` swaps the ``Attention`` modules (:mod:`siammae.model.blocks`) of an encoder copy
for :class:`FusedAttention`, whose core is the custom op ``siammae::multi_head_attention`` ((B, N, D) q, k, v ->
(B, N, D); in PyTorch it is ``F.scaled_dot_product_attention``), and :data:`TRANSLATIONS` tells the dynamo exporter
to write that op as ``com.microsoft.MultiHeadAttention``. TensorRT has no com.microsoft ops and fuses the plain
pattern itself, so an engine is built from the plain graph (``attention="plain"``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from siammae.model.blocks import Attention

ATTENTIONS = ("auto", "fused", "plain")  # auto: fused, else plain when the exporter cannot write the fused op
MS_DOMAIN = "com.microsoft"


@torch.library.custom_op("siammae::multi_head_attention", mutates_args=())
def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Softmax attention with ``num_heads`` heads over (B, N, D) q, k, v (scale 1/sqrt(D / heads)) -> (B, N, D)."""
    B, N, D = q.shape
    heads = [t.reshape(B, -1, num_heads, D // num_heads).transpose(1, 2) for t in (q, k, v)]  # (B, nh, N, hd)
    out = F.scaled_dot_product_attention(*heads)  # (B, nh, N, hd)
    return out.transpose(1, 2).reshape(B, N, D)  # (B, N, D)


@multi_head_attention.register_fake
def _(q, k, v, num_heads):
    return torch.empty_like(q)


def _onnx_multi_head_attention(q, k, v, num_heads: int):
    """ONNX translation of ``siammae::multi_head_attention``: one ``com.microsoft.MultiHeadAttention`` node
    (its default scale is 1/sqrt(head size), as ``scaled_dot_product_attention``'s)."""
    from onnxscript import values

    mha = values.Op(values.Opset(MS_DOMAIN, 1), "MultiHeadAttention", _mha_schema())
    return mha(q, k, v, num_heads=num_heads)


def _mha_schema():
    """The part of onnxruntime's MultiHeadAttention schema this graph uses (onnx itself has no contrib schemas):
    query, key, value (B, N, D) -> output (B, N, D); attribute num_heads."""
    from onnx.defs import OpSchema

    T = "T"
    return OpSchema(
        "MultiHeadAttention",
        MS_DOMAIN,
        1,
        inputs=[OpSchema.FormalParameter(name, T) for name in ("query", "key", "value")],
        outputs=[OpSchema.FormalParameter("output", T)],
        type_constraints=[(T, ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "float types")],
        attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "number of heads")],
    )


TRANSLATIONS = {torch.ops.siammae.multi_head_attention.default: _onnx_multi_head_attention}


class FusedAttention(nn.Module):
    """The blocks' ``Attention`` (qkv -> heads -> proj) with its core as ``siammae::multi_head_attention``; same
    parameters, same function in eval mode."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.num_heads = attn.num_heads
        self.qkv, self.proj = attn.qkv, attn.proj

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:  # timm's Block passes these; an encoder of frames has neither
            raise ValueError("fused attention export: attention masks are not supported")
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (B, N, D): timm's qkv layout is [q | k | v] over channels
        return self.proj(multi_head_attention(q, k, v, self.num_heads))  # (B, N, D)


def _plain_core(attn: nn.Module) -> bool:
    """Whether an ``Attention`` is exactly qkv -> softmax attention -> proj (no q/k norm, gate, inner norm)."""
    extras = [getattr(attn, name, None) for name in ("q_norm", "k_norm", "norm")]
    return getattr(attn, "gate", None) is None and all(m is None or isinstance(m, nn.Identity) for m in extras)


def use_fused_attention(module: nn.Module) -> int:
    """Replace, in place, every ``Attention`` (:mod:`siammae.model.blocks`) under ``module`` by
    :class:`FusedAttention`; returns how many.

    An attention with parts the fused op does not compute (q/k norm, gates) is an error, not a silent change.
    """
    count = 0
    for name, child in module.named_children():
        if isinstance(child, Attention):
            if not _plain_core(child):
                raise TypeError(f"fused attention export: {name} has q/k norms or gates the fused op lacks")
            setattr(module, name, FusedAttention(child))
            count += 1
        else:
            count += use_fused_attention(child)
    return count
