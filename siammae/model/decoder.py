"""SiamMAE's three decoders (docs/PAPER.md): ``cross-self`` (the paper's), ``cross`` and ``joint``.

All three take the encoder outputs of f1 and f2 (already projected to the decoder width, with [MASK] tokens and
position embeddings in place for f2) and return the decoded f2 tokens:
- ``cross-self``: per block, cross-attention from f2 to f1, then self-attention among f2 tokens, then an MLP;
- ``cross``: per block, cross-attention from f2 to f1, then an MLP;
- ``joint``: standard self-attention blocks over the concatenated tokens of f1 and f2.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from siammae.model.blocks import Block, Mlp


class CrossAttention(nn.Module):
    """Multi-head attention with queries from ``x`` and keys / values from ``context``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        M = context.shape[1]
        nh = self.num_heads
        q = self.q(x).reshape(B, N, nh, C // nh).transpose(1, 2)  # (B, nh, N, hs)
        kv = self.kv(context).reshape(B, M, 2, nh, C // nh).permute(2, 0, 3, 1, 4)  # (2, B, nh, M, hs)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # (B, nh, N, hs)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class CrossBlock(nn.Module):
    """Cross-attention to f1, optionally self-attention among f2 (``self_attn``), then an MLP; pre-norm residuals."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, self_attn: bool = True):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.norm_q = norm_layer(dim)
        self.norm_kv = norm_layer(dim)
        self.cross_attn = CrossAttention(dim, num_heads)
        if self_attn:
            self.norm1 = norm_layer(dim)
            self.attn = CrossAttention(dim, num_heads)  # queries and keys from the same tokens
        else:
            self.norm1 = self.attn = None
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(self.norm_q(x), self.norm_kv(context))
        if self.attn is not None:
            y = self.norm1(x)
            x = x + self.attn(y, y)
        return x + self.mlp(self.norm2(x))


class Decoder(nn.Module):
    """Decoder blocks of one of the three types; ``forward(x1, x2) -> x2`` decoded, both (B, *, Dd)."""

    def __init__(self, kind: str, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.kind = kind
        if kind == "joint":
            norm_layer = partial(nn.LayerNorm, eps=1e-6)
            self.blocks = nn.ModuleList(
                Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)
            )
        elif kind in ("cross-self", "cross"):
            self.blocks = nn.ModuleList(
                CrossBlock(dim, num_heads, mlp_ratio, self_attn=kind == "cross-self") for _ in range(depth)
            )
        else:
            raise ValueError(f"decoder must be 'cross-self', 'cross' or 'joint', got {kind!r}")

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        if self.kind == "joint":
            n1 = x1.shape[1]
            x = torch.cat([x1, x2], dim=1)  # (B, N1 + N2, Dd)
            for blk in self.blocks:
                x = blk(x)
            return x[:, n1:]
        for blk in self.blocks:
            x2 = blk(x2, x1)
        return x2
