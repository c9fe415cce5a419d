"""What the encoder looks at: the [CLS] attention of the last block, per head, as maps over the patch grid.

- :mod:`~siammae.attention.maps`: the maps (:func:`attention_maps`), their rendering and streaming
  (:func:`render_attention`); torch.
- :mod:`~siammae.attention.job`: what ``siammae-attn`` runs (:class:`AttnJob`, checked before torch loads).
- :mod:`~siammae.attention.spec`: what both check without torch (:func:`resolve_heads`, :func:`default_output`).
"""

from siammae._lazy import lazy_exports

_MAPS = ("attention_maps", "colormap_lut", "grid_shape", "heatmaps", "iter_attention", "overlay", "render_attention")
_SPEC = ("HEADS_HELP", "OUT_IMAGE_EXTENSIONS", "check_output", "default_output", "resolve_heads")
_EXPORTS = {n: "siammae.attention.maps" for n in _MAPS} | {n: "siammae.attention.spec" for n in _SPEC}
_EXPORTS["AttnJob"] = "siammae.attention.job"
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
