"""The model configuration: one typed, frozen dataclass that checkpoints store as a plain dict.

Defaults are the paper's (docs/PAPER.md): ViT-S/16 encoder, asymmetric masking (f1 0.0, f2 0.95, random),
siamese encoder, cross-self decoder at MAE's decoder defaults (512 wide, 8 blocks, 16 heads), loss on per-patch
normalised pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from siammae.config_rules import apply, bad, check_names, setting

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


def _size(default: int, name: str, help: str):
    lo, hi = LIMITS[name]
    return setting(default, help, lo=lo, hi=hi)


@dataclass(frozen=True)
class ModelConfig:
    """The network's shape and its pretraining task; every field checked by the one validator
    (:mod:`siammae.config_rules`): its type, its range (:data:`LIMITS`) or choices, then the divisibility rules."""

    # encoder (ViT)
    img_size: int = _size(224, "img_size", "input side in pixels")
    patch_size: int = _size(16, "patch_size", "patch side in pixels")
    in_chans: int = _size(3, "in_chans", "input channels")
    embed_dim: int = _size(384, "embed_dim", "encoder width")
    depth: int = _size(12, "depth", "encoder blocks")
    num_heads: int = _size(6, "num_heads", "encoder attention heads")
    mlp_ratio: float = setting(4.0, "MLP hidden width / embed_dim", lo=0, lo_open=True, hi=MAX_MLP_RATIO)
    qkv_bias: bool = setting(True, "bias in the q, k, v projection")
    pos_embed: str = setting("sincos", "sincos: fixed 2-D sin-cos (MAE); learned: a trained table (DINO, timm)",
                             choices=POS_EMBEDS)  # fmt: skip
    encoder_mode: str = setting("siam", "siam: each frame alone, shared weights; joint: one pass over both frames",
                                choices=ENCODER_MODES)  # fmt: skip
    # decoder
    decoder: str = setting("cross-self", "cross-self (paper), cross, joint", choices=DECODERS)
    decoder_embed_dim: int = _size(512, "decoder_embed_dim", "decoder width")
    decoder_depth: int = _size(8, "decoder_depth", "decoder blocks")
    decoder_num_heads: int = _size(16, "decoder_num_heads", "decoder attention heads")
    # masking and loss
    mask_ratio_f1: float = setting(0.0, "mask ratio of f1", lo=0, hi=1, hi_open=True)
    # the loss is over the masked patches of f2: there must be some
    mask_ratio_f2: float = setting(0.95, "mask ratio of f2", lo=0, lo_open=True, hi=1, hi_open=True)
    masking: str = setting("random", "random (MAE) or grid (regular lattice; ratios 0.5 and 0.75)", choices=MASKINGS)
    norm_pix_loss: bool = setting(True, "loss on per-patch normalised pixels")

    def __post_init__(self):
        apply(self, _check_relations)

    @property
    def grid_size(self) -> int:
        """Patches per side at ``img_size``."""
        return self.img_size // self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Rebuild from a stored dict; unknown keys are an error (a checkpoint from a different tool)."""
        check_names(cls, d, "model config", what="key")
        return cls(**d)


def _check_relations(v: dict) -> None:
    """The divisibility rules: whole patches, whole heads, a 2-D sin-cos table (embed_dim a multiple of 4)."""
    if v["img_size"] % v["patch_size"]:
        raise bad("img_size", v["img_size"], f"is not divisible by patch_size {v['patch_size']}")
    if v["embed_dim"] % v["num_heads"]:
        raise bad("embed_dim", v["embed_dim"], f"is not divisible by num_heads {v['num_heads']}")
    if v["embed_dim"] % 4:
        raise bad("embed_dim", v["embed_dim"], "must be a multiple of 4 (2-D sin-cos embedding)")
    if v["decoder_embed_dim"] % v["decoder_num_heads"]:
        raise bad(
            "decoder_embed_dim",
            v["decoder_embed_dim"],
            f"is not divisible by decoder_num_heads {v['decoder_num_heads']}",
        )
