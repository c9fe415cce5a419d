"""SiamMAE: a siamese ViT encoder and a cross-self decoder that predicts the masked patches of f2 from f1.

Read top to bottom as MAE's ``models_mae.py``: construction, weights, patchify, masking, encoder, decoder, loss,
forward. Masks follow MAE: ``mask: [B, L], 0 is keep, 1 is remove``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from siammae.model.config import ModelConfig
from siammae.model.decoder import Decoder
from siammae.model.encoder import ViTEncoder, init_linear_and_norm
from siammae.model.masking import make_mask
from siammae.model.pos_embed import sincos_2d

if TYPE_CHECKING:
    from siammae.model.provenance import Provenance


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, L, p*p*3) in MAE's order (row-major patches, pixels as (p, p, C))."""
    B, C, H, W = imgs.shape
    h, w = H // p, W // p
    x = imgs.reshape(B, C, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(B, h * w, p * p * C)


def unpatchify(x: torch.Tensor, p: int, h: int, w: int, chans: int = 3) -> torch.Tensor:
    """(B, L, p*p*C) -> (B, C, h*p, w*p), the inverse of :func:`patchify`."""
    B = x.shape[0]
    x = x.reshape(B, h, w, p, p, chans)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(B, chans, h * p, w * p)


class SiamMAE(nn.Module):
    """Siamese masked autoencoder over a frame pair (f1 past, f2 future)."""

    provenance: Provenance | None = None  # set by load_model: where the weights came from; None when built here

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        # --- encoder (shared by both frames) ---
        self.encoder = ViTEncoder(cfg)
        self.patch_size = cfg.patch_size
        self.embed_dim = cfg.embed_dim
        # --- decoder ---
        dd = cfg.decoder_embed_dim
        self.decoder_embed = nn.Linear(cfg.embed_dim, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, cfg.grid_size**2 + 1, dd), requires_grad=False)
        self.decoder = Decoder(cfg.decoder, dd, cfg.decoder_depth, cfg.decoder_num_heads, cfg.mlp_ratio)
        self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
        self.decoder_pred = nn.Linear(dd, cfg.patch_size**2 * cfg.in_chans)
        self.initialize_weights()

    def initialize_weights(self):
        if self.mask_token.is_meta:  # a shape skeleton: no values to set (see ViTEncoder.initialize_weights)
            return
        g = self.config.grid_size
        self.decoder_pos_embed.data.copy_(sincos_2d(self.config.decoder_embed_dim, g, g).unsqueeze(0))
        nn.init.normal_(self.mask_token, std=0.02)
        for m in (self.decoder_embed, self.decoder, self.decoder_norm, self.decoder_pred):
            m.apply(init_linear_and_norm)  # the encoder's initialisation, one definition

    # ---------------------------------------------------------------------------------------------- encoder
    def features(self, x: torch.Tensor, pos_interp: str = "auto", attention: str = "auto") -> torch.Tensor:
        """(B, 3, H, W) -> (B, h, w, D) frozen features for propagation (see :meth:`ViTEncoder.features`)."""
        return self.encoder.features(x, pos_interp, attention)

    def forward_encoder(self, f1, f2, ids_keep1, ids_keep2):
        """Encode both frames; ``ids_keep*`` is None for an unmasked frame. -> (latent1, latent2), (B, 1 + K, D).

        ``siam``: each frame is encoded alone by the same weights. ``joint``: one pass over [CLS], the kept
        tokens of f1 and the kept tokens of f2 together (the paper's ablation), split again after the encoder.
        """
        enc = self.encoder
        if self.config.encoder_mode == "siam":
            return enc(f1, ids_keep1), enc(f2, ids_keep2)
        t1 = enc.embed_patches(f1, ids_keep1)  # (B, K1, D)
        t2 = enc.embed_patches(f2, ids_keep2)  # (B, K2, D)
        cls = enc.cls_tokens(f1.shape[0])
        out = enc.forward_tokens(torch.cat([cls, t1, t2], dim=1))  # (B, 1 + K1 + K2, D)
        k1 = t1.shape[1]
        return out[:, : 1 + k1], torch.cat([out[:, :1], out[:, 1 + k1 :]], dim=1)

    # ---------------------------------------------------------------------------------------------- decoder
    def forward_decoder(self, latent1, latent2, ids_keep1, ids_restore2):
        """Decode f2 given f1. -> pred (B, L, p*p*3) for every patch of f2 ([CLS] dropped)."""
        pos = self.decoder_pos_embed  # (1, 1 + L, Dd)
        x1 = self.decoder_embed(latent1)  # (B, 1 + K1, Dd)
        if ids_keep1 is None:
            x1 = x1 + pos
        else:
            pos1 = torch.gather(
                pos[:, 1:].expand(x1.shape[0], -1, -1),
                1,
                ids_keep1.unsqueeze(-1).expand(-1, -1, x1.shape[-1]),
            )  # (B, K1, Dd)
            x1 = x1 + torch.cat([pos[:, :1].expand(x1.shape[0], -1, -1), pos1], dim=1)

        x2 = self.decoder_embed(latent2)  # (B, 1 + K2, Dd)
        B, L = ids_restore2.shape
        mask_tokens = self.mask_token.expand(B, L - (x2.shape[1] - 1), -1)  # (B, L - K2, Dd)
        x2_ = torch.cat([x2[:, 1:], mask_tokens], dim=1)  # (B, L, Dd) in shuffled order
        x2_ = torch.gather(x2_, 1, ids_restore2.unsqueeze(-1).expand(-1, -1, x2.shape[-1]))  # unshuffle
        x2 = torch.cat([x2[:, :1], x2_], dim=1) + pos  # (B, 1 + L, Dd)

        x2 = self.decoder(x1, x2)
        x2 = self.decoder_pred(self.decoder_norm(x2))  # (B, 1 + L, p*p*3)
        return x2[:, 1:]

    # ------------------------------------------------------------------------------------------------- loss
    def forward_loss(self, f2: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE on the masked patches of f2 only; per-patch normalised targets when ``norm_pix_loss`` (eps 1e-6).

        f2 (B, 3, H, W), pred (B, L, p*p*3), mask (B, L) with 1 = masked. Visible patches do not contribute.
        """
        target = patchify(f2, self.patch_size)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred.float() - target.float()) ** 2).mean(dim=-1)  # (B, L) per-patch loss
        return (loss * mask).sum() / mask.sum()

    def forward(
        self,
        f1,
        f2,
        mask_ratio_f1: float | None = None,
        mask_ratio_f2: float | None = None,
        generator: torch.Generator | None = None,
    ) -> dict:
        """f1, f2 (B, 3, H, W) at the training size -> dict(loss, pred (B, L, p*p*3), mask (B, L) of f2)."""
        cfg = self.config
        r1 = cfg.mask_ratio_f1 if mask_ratio_f1 is None else mask_ratio_f1
        r2 = cfg.mask_ratio_f2 if mask_ratio_f2 is None else mask_ratio_f2
        h, w = self.encoder.grid(f2)
        if (h, w) != (cfg.grid_size, cfg.grid_size):
            raise ValueError(
                f"training frames must be {cfg.img_size}x{cfg.img_size}, got {f2.shape[-1]}x{f2.shape[-2]}"
            )
        B = f2.shape[0]
        ids_keep1 = None
        if r1 > 0:
            ids_keep1, _, _ = make_mask(cfg.masking, B, h, w, r1, device=f1.device, generator=generator)
        ids_keep2, mask2, ids_restore2 = make_mask(cfg.masking, B, h, w, r2, device=f2.device, generator=generator)
        latent1, latent2 = self.forward_encoder(f1, f2, ids_keep1, ids_keep2)
        pred = self.forward_decoder(latent1, latent2, ids_keep1, ids_restore2)
        loss = self.forward_loss(f2, pred, mask2)
        return {"loss": loss, "pred": pred, "mask": mask2}
