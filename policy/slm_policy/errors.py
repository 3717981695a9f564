"""The gates' error types, under service-slm's one base (``SlmError``: a message and a
hint, ``one_line()`` for stderr). Each means "this gate cannot judge": slm-gate exits 2."""

from __future__ import annotations

from slm.errors import SlmError


class GateError(SlmError):
    """A gate cannot judge: its policy, its input or its environment is unusable."""


class PolicyError(GateError):
    """The policy file is missing or invalid."""


class InventoryError(GateError):
    """The environment cannot be inspected."""


class ImageManifestError(GateError):
    """The image manifest (build/out/image/ARCH/manifest.json) is missing or malformed."""


class ReleaseError(GateError):
    """The release cannot be signed or checked (broken input, policy or trust config)."""
