"""``siammae-cpu``: a SiamMAE encoder trained by this project and shipped inside the package, and its file format.

The file is ``siammae/model/shipped/siammae-cpu.safetensors`` (package data), written by
:func:`siammae.model.named.export_shipped`:

- tensors: the :class:`~siammae.model.encoder.ViTEncoder` state dict (its own key names), floating tensors in fp16;
- metadata (safetensors stores strings): ``"format": "siammae-encoder"``, ``"version": "1"``, ``"config"``: the
  JSON of :meth:`ModelConfig.to_dict`, ``"card"``: the JSON of the model card, a dict with at least
  :data:`CARD_KEYS`: ``summary`` (one line: what it is), ``data`` (what it was trained on), ``licence`` (SPDX id;
  CC BY-NC 4.0 data makes the weights ``CC-BY-NC-4.0``, non-commercial), ``davis_jf`` (J&F-Mean in percent, as
  ``siammae-eval`` reports it) and ``baselines`` ({name: J&F in percent} on the same sequences at the same frame
  size); optional ``eval`` (where J&F was measured, e.g. "3 DAVIS-2016 val sequences, 480p"); anything else
  (recipe, steps, wall time) is kept.

:func:`siammae.model.statedict.read_checkpoint` reads such a file as a siammae encoder checkpoint (fp16 -> fp32), so
``load_model("siammae-cpu")`` or ``load_model(path)`` returns a ViTEncoder that tracks like any other weights.
Nothing here needs the network or a cache; before the lead adds the file, the name is "not in this build".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from siammae.errors import CheckpointError
from siammae.model.hub import file_sha256
from siammae.model.provenance import Provenance

SHIPPED = "siammae-cpu"
FORMAT = "siammae-encoder"  # the "format" metadata of a shipped file
CARD_KEYS = ("summary", "data", "licence", "davis_jf", "baselines")


def shipped_file() -> Path:
    """Where the shipped file lives in the installed package (it may be absent: "not in this build")."""
    return Path(__file__).with_name("shipped") / f"{SHIPPED}.safetensors"


def check_card(card, label) -> dict:
    """``card`` with the :data:`CARD_KEYS`, checked; a CheckpointError naming ``label`` otherwise."""
    missing = [k for k in CARD_KEYS if not isinstance(card, dict) or k not in card]
    if missing:
        raise CheckpointError(f"{label}: the model card lacks {', '.join(missing)} (needs {', '.join(CARD_KEYS)})")
    if not isinstance(card["baselines"], dict) or not isinstance(card["davis_jf"], (int, float)):
        raise CheckpointError(f"{label}: the card's davis_jf must be a number and its baselines a {{name: J&F}} dict")
    return card


def read_shipped(path: str | os.PathLike | None = None) -> tuple[dict, dict]:
    """(config dict, card dict) from a shipped file's metadata, without reading its tensors (nor importing torch)."""
    from safetensors import safe_open

    path = Path(path) if path is not None else shipped_file()
    if not path.is_file():
        raise CheckpointError(
            f"{SHIPPED} is not in this build of siammae ({path} is absent): use another --ckpt (siammae-weights list)"
        )
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        config, card = json.loads(meta["config"]), json.loads(meta["card"])
    except Exception as e:  # safetensors raises its own types for a bad header; json, KeyError for the rest
        raise CheckpointError(f"{path}: not a shipped siammae encoder ({type(e).__name__}: {e})") from None
    return config, check_card(card, path)


def provenance(name: str = SHIPPED) -> Provenance:
    """The record of the shipped weights: name, file, sha256; no download, no cache."""
    path = shipped_file()
    _, card = read_shipped(path)
    check = "shipped inside the siammae package (no download, nothing published to check against)"
    return Provenance(name, str(path), file_sha256(path), None, "in the package", False, check, card["licence"])


def summary(card: dict) -> str:
    """The card in one line: what it is, how good, against what (the same sequences and frame size)."""
    base = ", ".join(f"{k} {v:.1f}" for k, v in card["baselines"].items())
    where = f" on {card['eval']}" if card.get("eval") else ""
    return f"{card['summary']}; J&F {card['davis_jf']:.1f}{where} (baselines: {base}); {card['licence']}"


def fallback_notice(default: str, why: str) -> str:
    """The one warning line when the default weights cannot be had and the shipped ones are used."""
    _, card = read_shipped()
    return (
        f"warning: {default} {why}: using the shipped {SHIPPED} instead ({summary(card)}); for {default}, run "
        f"'siammae-weights download {default}' with network or 'siammae-weights import FILE {default}'"
    )
