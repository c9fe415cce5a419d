"""Named model configurations, registered by a decorator (timm's ``@register_model`` pattern)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

from siammae.model.config import ModelConfig

_REGISTRY: dict[str, Callable[[], dict]] = {}


def register_model(fn: Callable[[], dict]) -> Callable[[], dict]:
    """Register ``fn`` (returning config overrides) under its name."""
    _REGISTRY[fn.__name__] = fn
    return fn


@register_model
def tiny() -> dict:
    """For tests and CPU demos: ViT patch 8, width 64, 2 blocks; decoder 32 wide, 1 block."""
    return dict(
        img_size=64,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=2,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
    )


@register_model
def cpu8() -> dict:
    """The CPU recipe's model (recipes/cpu8.toml, the shipped ``siammae-cpu`` weights): ViT patch 8, 192 wide
    (DeiT-Tiny's width), 6 blocks, 3 heads, crops of 112; decoder 128 wide, 2 blocks, 4 heads. Chosen by step time
    on a 2-core CPU (benchmarks/results/train_cpu_recipe.md): patch 8 because correspondence needs the fine grid
    (paper, Table 1: ViT-S/8 >> ViT-S/16), half of ViT-S's depth and width to fit 2 hours of one core."""
    encoder = dict(img_size=112, patch_size=8, embed_dim=192, depth=6, num_heads=3)
    return dict(encoder, decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4)


@register_model
def vits16() -> dict:
    """ViT-S/16 (paper, Table 1): 384 wide, 12 blocks, 6 heads."""
    return dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)


@register_model
def vits8() -> dict:
    """ViT-S/8 (paper, Table 1): the paper's best model."""
    return dict(patch_size=8, embed_dim=384, depth=12, num_heads=6)


@register_model
def vitb16() -> dict:
    """ViT-B/16: 768 wide, 12 blocks, 12 heads."""
    return dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)


def list_models() -> list[str]:
    """Registered configuration names."""
    return sorted(_REGISTRY)


def model_config(name: str, **overrides) -> ModelConfig:
    """The :class:`ModelConfig` of a registered name with ``overrides`` applied."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    valid = {f.name for f in fields(ModelConfig)}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise ValueError(f"unknown config fields {bad}; valid: {sorted(valid)}")
    return ModelConfig(**{**_REGISTRY[name](), **overrides})


def create_model(name: str, **overrides):
    """Build a :class:`~siammae.model.siammae.SiamMAE` from a registered name (``list_models()``) with overrides."""
    from siammae.model.siammae import SiamMAE

    return SiamMAE(model_config(name, **overrides))
