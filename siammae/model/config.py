"""The model configuration: one typed, frozen dataclass that checkpoints store as a plain dict.

Defaults are the paper's (docs/PAPER.md): ViT-S/16 encoder, asymmetric masking (f1 0.0, f2 0.95, random),
siamese encoder, cross-self decoder at MAE's decoder defaults (512 wide, 8 blocks, 16 heads), loss on per-patch
normalised pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

ENCODER_MODES = ("siam", "joint")
DECODERS = ("cross-self", "cross", "joint")
MASKINGS = ("random", "grid")
POS_EMBEDS = ("sincos", "learned")
# how ViTEncoder.features computes attention: "exact" is DINO's operation order (its features bit for bit on a CPU in
# fp32), "sdpa" timm's fused kernel (faster); "auto" is "exact" on a CPU in fp32 without autocast, "sdpa" otherwise
FEATURE_ATTENTIONS = ("auto", "exact", "sdpa")
# Sane bounds of a config, checked before anything is built from a stored one (siammae.model.checkpoint) and on
# training's --input-size: far above every published ViT (ViT-22B: 48 blocks, width 6144, 48 heads) and far below
# what would exhaust a machine's memory before a weight is read.
LIMITS = {
    "img_size": (1, 4096),
    "patch_size": (1, 64),
    "in_chans": (1, 16),
    "embed_dim": (4, 8192),
    "depth": (1, 128),
    "num_heads": (1, 128),
    "decoder_embed_dim": (1, 8192),
    "decoder_depth": (0, 128),
    "decoder_num_heads": (1, 128),
}
MAX_MLP_RATIO = 16.0
# position embeddings at another grid: exact sin-cos, DINO's bicubic resize, or by the table's kind
POS_INTERP = ("auto", "sincos", "bicubic")


@dataclass(frozen=True)
class ModelConfig:
    # encoder (ViT)
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    pos_embed: str = "sincos"  # "sincos": fixed 2-D sin-cos (MAE); "learned": a trained table (DINO, timm)
    encoder_mode: str = "siam"  # "siam": each frame alone, shared weights; "joint": one pass over both frames
    # decoder
    decoder: str = "cross-self"  # "cross-self" (paper), "cross", "joint"
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    # masking and loss
    mask_ratio_f1: float = 0.0
    mask_ratio_f2: float = 0.95
    masking: str = "random"  # "random" (MAE) or "grid" (regular lattice; ratios 0.5 and 0.75)
    norm_pix_loss: bool = True

    def __post_init__(self):
        _choice("pos_embed", self.pos_embed, POS_EMBEDS)
        _choice("encoder_mode", self.encoder_mode, ENCODER_MODES)
        _choice("decoder", self.decoder, DECODERS)
        _choice("masking", self.masking, MASKINGS)
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.embed_dim % 4:
            raise ValueError(f"embed_dim {self.embed_dim} must be a multiple of 4 (2-D sin-cos embedding)")
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(
                f"decoder_embed_dim {self.decoder_embed_dim} is not divisible by decoder_num_heads "
                f"{self.decoder_num_heads}"
            )
        if not 0.0 <= self.mask_ratio_f1 < 1.0:
            raise ValueError(f"mask_ratio_f1 must be in [0, 1), got {self.mask_ratio_f1}")
        if not 0.0 < self.mask_ratio_f2 < 1.0:  # the loss is over the masked patches of f2: there must be some
            raise ValueError(f"mask_ratio_f2 must be in (0, 1), got {self.mask_ratio_f2}")

    @property
    def grid_size(self) -> int:
        """Patches per side at ``img_size``."""
        return self.img_size // self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Rebuild from a stored dict; unknown keys are an error (a checkpoint from a different tool)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**d)


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {valid}, got {value!r}")
