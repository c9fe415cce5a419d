"""The ViT encoder shared by both frames (siamese), with timm / DINO parameter names.

Parameter names are those of timm's ``VisionTransformer`` and DINO's ``vision_transformer.py``
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
``norm``), so DINO, MAE and timm weights load unchanged. Blocks are timm's, whose attention runs through
``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from siammae.kernels.patch_embed_gather import patch_embed_gather
from siammae.model.config import POS_INTERP, ModelConfig
from siammae.model.pos_embed import resize_pos_embed, sincos_2d

if TYPE_CHECKING:
    from siammae.model.provenance import Provenance


class ViTEncoder(nn.Module):
    """ViT with a [CLS] token; encodes all patches of a frame, or only the kept ones (``ids_keep``)."""

    provenance: Provenance | None = None  # set by load_model: where the weights came from; None when built here

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.patch_size = cfg.patch_size
        self.embed_dim = cfg.embed_dim
        self.num_heads = cfg.num_heads
        norm_layer = partial(nn.LayerNorm, eps=1e-6)  # MAE, DINO and timm ViTs all use eps 1e-6

        self.patch_embed = PatchEmbed(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            in_chans=cfg.in_chans,
            embed_dim=cfg.embed_dim,
            strict_img_size=False,
        )
        num_patches = cfg.grid_size**2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        # fixed sin-cos (MAE) is a buffer-like parameter without gradient; a learned table (DINO) trains
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, cfg.embed_dim), requires_grad=cfg.pos_embed == "learned"
        )
        self.blocks = nn.ModuleList(
            Block(
                cfg.embed_dim,
                cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=cfg.qkv_bias,
                norm_layer=norm_layer,
            )
            for _ in range(cfg.depth)
        )
        self.norm = norm_layer(cfg.embed_dim)
        self._pos_cache: dict[tuple, torch.Tensor] = {}  # position tables of other grids (pos_embed_for)
        self.kernel_backend = "auto"  # fused masked-patch gather: "auto" | "triton" | "torch"
        self.initialize_weights()

    def initialize_weights(self):
        """MAE's initialisation: sin-cos table, xavier-uniform linear layers and patch projection, N(0, .02) tokens."""
        g = self.config.grid_size
        self.pos_embed.data.copy_(sincos_2d(self.embed_dim, g, g).unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_linear_and_norm)

    # ------------------------------------------------------------------------------------------------- tokens
    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        """Patch grid (h, w) of an image batch (B, C, H, W); H and W must be multiples of the patch size."""
        H, W = x.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"input size {W}x{H} is not divisible by the patch size {p}")
        return H // p, W // p

    def pos_embed_for(self, h: int, w: int, pos_interp: str = "auto") -> torch.Tensor:
        """(1, 1 + h*w, D) position table for the grid (h, w).

        ``pos_interp``: "sincos" computes MAE's table exactly for the new grid; "bicubic" resizes the stored table as
        DINO does (bicubic, no antialias); "auto" is "sincos" for a fixed sin-cos model, "bicubic" for a learned one.
        """
        if pos_interp not in POS_INTERP:
            raise ValueError(f"pos_interp must be one of {POS_INTERP}, got {pos_interp!r}")
        g = self.config.grid_size
        if (h, w) == (g, g):
            return self.pos_embed
        if pos_interp == "auto":
            pos_interp = "sincos" if self.config.pos_embed == "sincos" else "bicubic"
        table = self.pos_embed
        if pos_interp == "bicubic" and table.requires_grad and torch.is_grad_enabled():
            return resize_pos_embed(table, h, w)  # a table being trained: differentiable, so not cached
        # Tracking and evaluation ask for the same grid every chunk: build the table once per grid, device, dtype
        # and weights (``_version`` moves when the table is loaded or updated in place), not per call.
        key = (pos_interp, h, w, table.device, table.dtype, table._version)
        cached = self._pos_cache.get(key)
        if cached is None:
            if len(self._pos_cache) >= 8:
                self._pos_cache.clear()
            with torch.inference_mode(False), torch.no_grad():  # usable later outside inference mode too
                if pos_interp == "bicubic":
                    cached = resize_pos_embed(table.detach(), h, w)
                else:
                    cached = sincos_2d(self.embed_dim, h, w).unsqueeze(0).to(device=table.device, dtype=table.dtype)
            self._pos_cache[key] = cached
        return cached

    def embed_patches(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None, pos_interp: str = "auto"):
        """Patch tokens with position embeddings, no [CLS]: (B, L, D), or (B, K, D) for the patches ``ids_keep``.

        Kept patches go through the fused gather (``siammae.kernels.patch_embed_gather``): only the K visible
        patches are embedded, not all L (95 % of f2 is masked). ``self.kernel_backend`` picks Triton or PyTorch.
        """
        h, w = self.grid(x)
        pos = self.pos_embed_for(h, w, pos_interp)[:, 1:]  # (1, L, D)
        if ids_keep is None:
            return self.patch_embed(x) + pos  # (B, L, D)
        proj = self.patch_embed.proj  # patch_embed.norm is Identity, so the projection is the whole embedding
        return patch_embed_gather(x, ids_keep, proj.weight, proj.bias, pos[0], backend=self.kernel_backend)

    def cls_tokens(self, batch: int) -> torch.Tensor:
        """(B, 1, D): the [CLS] token plus its position embedding (zero for sin-cos)."""
        return (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1)

    def prepare_tokens(self, x: torch.Tensor, pos_interp: str = "auto") -> torch.Tensor:
        """(B, C, H, W) -> (B, 1 + h*w, D): [CLS] + patch tokens with position embeddings (DINO's name)."""
        return torch.cat([self.cls_tokens(x.shape[0]), self.embed_patches(x, pos_interp=pos_interp)], dim=1)

    # ------------------------------------------------------------------------------------------------ forward
    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Transformer blocks and the final LayerNorm over (B, N, D) tokens."""
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)

    def forward(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encode a frame batch (B, C, H, W); with ``ids_keep`` (B, K) only those patches. -> (B, 1 + K, D)."""
        tokens = torch.cat([self.cls_tokens(x.shape[0]), self.embed_patches(x, ids_keep)], dim=1)
        return self.forward_tokens(tokens)

    @torch.no_grad()
    def features(self, x: torch.Tensor, pos_interp: str = "auto") -> torch.Tensor:
        """Frozen features for label propagation: (B, C, H, W) ImageNet-normalised -> (B, h, w, D).

        The last block's output after the final LayerNorm, [CLS] dropped, on the patch grid; not L2-normalised
        (the propagation engine normalises).
        """
        h, w = self.grid(x)
        out = self.forward_tokens(self.prepare_tokens(x, pos_interp))  # (B, 1 + h*w, D)
        return out[:, 1:].reshape(x.shape[0], h, w, self.embed_dim)  # (B, h, w, D)


def init_linear_and_norm(m: nn.Module):
    """MAE's initialisation of every linear layer and LayerNorm (the encoder's and the decoder's)."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)  # MAE follows the official JAX ViT
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)
