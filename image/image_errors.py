"""The image build's error types, under service-slm's one base (``SlmError``: a message and
a hint, ``one_line()`` for stderr). ``vm.py`` keeps its own ``VMError``: it also runs on
the system Python (``image/vm.py ssh ARCH CMD``), where the slm package is not installed."""

from __future__ import annotations

from slm.errors import SlmError


class ImageError(SlmError):
    """The image tools cannot do what they were asked; the message says why in one line."""


class ImageBuildError(ImageError):
    """The image cannot be built."""


class SigningSetupError(ImageError):
    """The build has no usable signing environment, or an input does not verify."""
