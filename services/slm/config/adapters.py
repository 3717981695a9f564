"""The ``[[adapter]]`` tables of the config file: the registry of GGUF LoRA adapters.

Each names its file, the file's sha256 and the sha256 of the base model it was trained
for. Clients pick one per request as ``<model>:<adapter>``; an adapter made for another
base model is listed but refused (400), never applied.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

import msgspec

from slm.errors import ConfigError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class AdapterConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One LoRA adapter, as written in an ``[[adapter]]`` table."""

    name: str
    file: Annotated[str, msgspec.Meta(description="GGUF")]
    sha256: Annotated[str, msgspec.Meta(description="of the file")]
    base_sha256: Annotated[str, msgspec.Meta(description="the model it applies to")]
    scale: float = 1.0


def parse_adapters(tables: Any) -> tuple[AdapterConfig, ...]:
    """Validate the ``[[adapter]]`` tables (ConfigError naming the problem)."""
    if tables is None:
        return ()
    try:
        adapters = msgspec.convert(tables, tuple[AdapterConfig, ...])
    except msgspec.ValidationError as exc:
        raise ConfigError(f"adapter: {exc}") from None
    names: set[str] = set()
    for adapter in adapters:
        where = f"adapter {adapter.name!r}"
        if not _NAME.match(adapter.name):
            raise ConfigError(f"{where}: name must be lowercase letters, digits, '.', '-' "
                              "or '_'")
        if adapter.name in names:
            raise ConfigError(f"{where}: the name is used twice")
        names.add(adapter.name)
        for field in ("sha256", "base_sha256"):
            if not _SHA256.match(getattr(adapter, field)):
                raise ConfigError(f"{where}: {field} must be 64 lowercase hex digits")
        if not (math.isfinite(adapter.scale) and 0 < adapter.scale <= 4):
            raise ConfigError(f"{where}: scale must be > 0 and <= 4, got {adapter.scale}")
    return adapters
