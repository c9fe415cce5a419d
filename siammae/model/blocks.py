"""ViT building blocks: ``PatchEmbed``, ``Attention``, ``Mlp``, ``LayerScale`` and the pre-norm ``Block``.

They are timm's (``timm.layers.PatchEmbed`` / ``Mlp`` / ``LayerScale``, ``timm.models.vision_transformer.Block`` /
``Attention``, timm 1.0) cut down to what siammae builds: the same parameter names (``patch_embed.proj``,
``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``), so DINO, MAE, timm and
siammae weights load unchanged, and the same operations in the same order, so the outputs are timm's bit for bit
(tests/model/test_blocks.py compares them with timm's on random weights, forward and backward). Why siammae's own:
start-up. Importing timm imports torchvision (``timm.layers._fx`` -> ``torchvision.models.feature_extraction`` ->
every torchvision model and ``torch._dynamo``), about 2.5 s of every tracking, eval or export run on a 2-core CPU
for four small modules (``benchmarks/bench_startup.py``). timm is imported only by what needs timm itself
(``timm:<name>`` weights, tests).

Left out, as siammae never builds them: q/k norm, gated and normalised attention outputs, attention masks, dropout
with p > 0 and stochastic depth. The dropout modules stay (p 0), where the code and hooks expect them
(``attn.attn_drop``: the softmax in the unfused path).
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

# timm's switch: TIMM_FUSED_ATTN=0 runs the unfused path (q * scale, q @ k^T, softmax, @ v), default fused (SDPA)
FUSED_ATTN = int(os.environ.get("TIMM_FUSED_ATTN", "1")) > 0


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, H/p * W/p, D): a stride-p convolution, flattened row-major (timm ``PatchEmbed`` with
    ``strict_img_size=False``: any H and W that are multiples of p)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.img_size = (img_size, img_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()  # timm's norm_layer=None; the masked-patch gather relies on it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        p = self.patch_size[0]
        if H % p or W % p:
            raise ValueError(f"input size {W}x{H} is not divisible by the patch size {p}")
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))  # (B, D, h, w) -> (B, h*w, D)


class Attention(nn.Module):
    """Multi-head self-attention, qkv -> heads -> proj: (B, N, D) -> (B, N, D). ``fused_attn``: SDPA, or timm's
    unfused order (``q * scale``, ``q @ k^T``, softmax, ``@ v``)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, proj_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_dim = dim
        self.scale = self.head_dim**-0.5
        self.fused_attn = FUSED_ATTN
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.Identity()  # timm's qk_norm=False: siammae.attention.maps calls them
        self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, nh, N, hd)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            q = q * self.scale
            attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, nh, N, N)
            x = self.attn_drop(attn) @ v
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)  # (B, nh, N, hd) -> (B, N, D)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (timm ``Mlp``): (..., D) -> (..., out_features or D)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(0.0)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop2 = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class LayerScale(nn.Module):
    """Per-channel scale ``x * gamma`` (CaiT / DINOv2 layer scale; timm ``LayerScale``), gamma initialised to
    ``init_values``."""

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block (timm ``vision_transformer.Block``): ``x + ls1(attn(norm1(x)))``, then
    ``x + ls2(mlp(norm2(x)))``; layer scale only with ``init_values``. (B, N, D) -> (B, N, D)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        init_values: float | None = None,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
