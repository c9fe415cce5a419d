"""Where a model's weights came from: one typed record that reports (tracking, evaluation, export, training) carry.

``verified`` is True only when the file matched a hash that its publisher states (a *pinned* hash,
:data:`siammae.model.weights.WEIGHTS`); everything else is reported ``"unverified"``: a file by path, a name whose
publisher states no hash (its sha256 is recorded at first use and checked from then on: trust on first use), a file
served by a mirror (``SIAMMAE_WEIGHTS_URL_BASE``) that is not pinned.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Provenance:
    """The identity of loaded weights."""

    weights: str  # what was asked for: a name (dino-vits16) or a path
    path: str | None  # the local file; None for weights that live in no single file (timm, rarely)
    sha256: str
    url: str | None = None  # where the name is fetched from (the official URL, or the mirror's); None for a path
    origin: str = "local file"  # how the file got here: "downloaded from <url>", "in the cache", "imported from ..."
    verified: bool = False  # the file matched a hash its publisher states
    check: str = "no published hash to check against"  # what it was checked against, in words
    licence: str | None = None
    notice: str | None = None  # printed whenever the weights are used (mae-vitb16: non-commercial licence)

    @property
    def status(self) -> str:
        """``"verified"`` or ``"unverified"``: the word reports and messages use."""
        return "verified" if self.verified else "unverified"

    def to_dict(self) -> dict:
        """The record reports carry: weights, path, sha256, status, check, origin, url, licence."""
        return {
            "weights": self.weights,
            "path": self.path,
            "sha256": self.sha256,
            "status": self.status,
            "check": self.check,
            "origin": self.origin,
            "url": self.url,
            "licence": self.licence,
        }

    def summary(self) -> str:
        """One line for a terminal: ``dino-vits16 (sha256 1a2b3c4d5e6f, unverified: ...)``."""
        return f"{self.weights} (sha256 {self.sha256[:12]}, {self.status}: {self.check})"
