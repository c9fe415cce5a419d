"""The ViT encoder shared by both frames (siamese), with timm / DINO parameter names.

Parameter names are those of timm's ``VisionTransformer`` and DINO's ``vision_transformer.py``
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
``norm``), so DINO, MAE and timm weights load unchanged. The blocks are timm's, rewritten in :mod:`siammae.model.blocks`
(same names, same operations, the same bits; importing timm costs seconds of start-up); their attention runs through
``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU).

Frozen features on a CPU in fp32 (``features(..., attention="auto")``) take another route through the same blocks:
DINO's own operation order (``vision_transformer.py``: ``(q @ k^T) * scale``, softmax, ``@ v``; timm scales q
first, SDPA fuses it all), run a block of queries at a time. It gives DINO's features bit for bit, which label
propagation needs (top-k near-ties turn a last-bit difference into a different mask pixel, and the error feeds
forward through the queue; benchmarks/results/dino_agreement-cpu.md), and it is faster than SDPA there.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from siammae.kernels.patch_embed_gather import patch_embed_gather
from siammae.model.blocks import Block, PatchEmbed
from siammae.model.config import FEATURE_ATTENTIONS, POS_INTERP, ModelConfig
from siammae.model.pos_embed import resize_pos_embed, sincos_2d

ATTN_QUERY_BLOCK = 256  # queries per block in forward_tokens_exact: (6, 256, 1561) fp32 scores = 9.6 MB

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
        """MAE's initialisation: sin-cos table, xavier-uniform linear layers and patch projection, N(0, .02) tokens.

        Nothing to do on the meta device (the shape skeleton that checkpoint loading checks a file against): meta
        tensors hold no values, and meta ``normal_`` / ``arange`` import ``torch._dynamo`` (0.7 s of start-up)."""
        if self.cls_token.is_meta:
            return
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

    def forward_tokens_exact(self, tokens: torch.Tensor, query_block: int = ATTN_QUERY_BLOCK) -> torch.Tensor:
        """``forward_tokens`` in DINO's operation order, bit for bit its ``get_intermediate_layers(x, n=1)``.

        DINO ``Attention.forward``: ``attn = (q @ k.transpose(-2, -1)) * scale``, ``attn.softmax(-1)``,
        ``attn @ v``. Each query row's scores, softmax and output depend on that row alone (and the matmul
        kernels' results on CPU do not depend on how many rows they are given, which tests/model checks), so
        queries go through in blocks of ``query_block``: the (heads, block, N) scores stay in cache instead of
        a (heads, N, N) matrix per frame (58 MB per layer at 480x832, ViT-S/16), for the same numbers.
        """
        for blk in self.blocks:
            tokens = tokens + _attention_exact(blk.attn, blk.norm1(tokens), query_block)  # ls1 / drop_path: Identity
            tokens = tokens + blk.mlp(blk.norm2(tokens))
        return self.norm(tokens)

    @torch.no_grad()
    def features(self, x: torch.Tensor, pos_interp: str = "auto", attention: str = "auto") -> torch.Tensor:
        """Frozen features for label propagation: (B, C, H, W) ImageNet-normalised -> (B, h, w, D).

        The last block's output after the final LayerNorm, [CLS] dropped, on the patch grid; not L2-normalised
        (the propagation engine normalises). ``attention``: "exact" runs DINO's operation order
        (:meth:`forward_tokens_exact`, DINO's features bit for bit in fp32 on CPU), "sdpa" timm's fused
        attention (faster on a CPU too; DINO's features to ~3e-6); "auto" is "exact" for fp32 on a CPU without
        autocast, "sdpa" otherwise (GPU, bf16). The presets choose (``Preset.attention``; ``--attention``)."""
        if attention not in FEATURE_ATTENTIONS:
            raise ValueError(f"attention must be one of {FEATURE_ATTENTIONS}, got {attention!r}")
        h, w = self.grid(x)
        # NCHW: the patch convolution rounds differently on a channels-last batch (what decoded frames give),
        # and DINO's read_frame tensor goes through as contiguous.
        tokens = self.prepare_tokens(x.contiguous(), pos_interp)  # (B, 1 + h*w, D)
        if attention == "auto":
            cpu_fp32 = tokens.device.type == "cpu" and tokens.dtype == torch.float32
            attention = "exact" if cpu_fp32 and not torch.is_autocast_enabled("cpu") else "sdpa"
        forward = self.forward_tokens_exact if attention == "exact" else self.forward_tokens
        if tokens.device.type == "cpu" and tokens.shape[0] > 1:
            # One frame at a time on a CPU: every tensor of a pass stays small (a 480x832 frame's MLP activation is
            # 9.6 MB, a chunk of 8 frames' 77 MB), which keeps it in cache and out of the allocator's mmap path
            # (340 000 page faults and 1.47 s a frame at 8 frames a pass against none and 0.83 s at one, ViT-S/16
            # at 480x832, benchmarks/results/profile_encoder-cpu.md). Rows are independent: the same bits.
            out = torch.cat([forward(t) for t in tokens.split(1)])
        else:
            out = forward(tokens)
        return out[:, 1:].reshape(x.shape[0], h, w, self.embed_dim)  # (B, h, w, D)


def _attention_exact(attn: nn.Module, x: torch.Tensor, query_block: int) -> torch.Tensor:
    """DINO ``Attention.forward`` (eval) on x (B, N, C), queries in blocks of ``query_block`` rows.

    Two rewrites that change no bit: k^T and v are made contiguous once per layer (matmul would copy the strided
    views for every block), and a power-of-two scale (head_dim 64: 1/8) multiplies q before the product instead of
    the (B, heads, n, N) scores after it; a power of two scales exactly (no rounding, fp32 has the exponent range), so
    ``(q * s) @ k^T == (q @ k^T) * s`` bit for bit. Any other scale is applied to the scores, as DINO does.
    """
    B, N, C = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, C / heads)
    q, k, v = qkv[0], qkv[1], qkv[2]
    kt = k.transpose(-2, -1).contiguous()  # (B, heads, C / heads, N)
    v = v.contiguous()
    out = x.new_empty(B, N, heads, C // heads)
    scale = (C // heads) ** -0.5  # DINO: qk_scale or head_dim ** -0.5 (timm's attn.scale is the same number)
    exact_power = math.frexp(scale)[0] == 0.5
    if exact_power:
        q = q * scale
    for i in range(0, N, query_block):
        a = q[:, :, i : i + query_block] @ kt  # (B, heads, n, N)
        if not exact_power:
            a = a * scale
        a = a.softmax(dim=-1)
        out[:, i : i + query_block] = (a @ v).transpose(1, 2)  # (B, heads, n, C / heads) -> (B, n, heads, ...)
    return attn.proj(out.reshape(B, N, C))


def init_linear_and_norm(m: nn.Module):
    """MAE's initialisation of every linear layer and LayerNorm (the encoder's and the decoder's)."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)  # MAE follows the official JAX ViT
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)
