"""The Go build information a Go binary carries (what ``go version -m`` prints): the Go
version, the main module and every dependency module with its version, read straight from
the executable (the ``\\xff Go buildinf:`` blob, Go 1.18+ inline format)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slm_policy.errors import InventoryError

_MAGIC = b"\xff Go buildinf:"


@dataclass(frozen=True)
class GoModule:
    path: str
    version: str

    @property
    def purl(self) -> str:
        return f"pkg:golang/{self.path}@{self.version}"


@dataclass(frozen=True)
class GoBuildInfo:
    go_version: str  # e.g. go1.25.14
    main: GoModule
    deps: tuple[GoModule, ...]


def _uvarint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7


def read_build_info(binary: Path) -> GoBuildInfo:
    """The build info of ``binary`` (InventoryError if it carries none we can read)."""
    try:
        data = binary.read_bytes()
    except OSError as exc:
        raise InventoryError(f"cannot read {binary}: {exc.strerror}") from None
    at = data.find(_MAGIC)
    if at < 0:
        raise InventoryError(f"{binary}: no Go build information (not a Go binary?)")
    if len(data) < at + 33:
        raise InventoryError(f"{binary}: truncated Go build information")
    flags = data[at + 15]
    if not flags & 0x2:
        raise InventoryError(f"{binary}: Go build information in the pre-1.18 format")
    try:
        size, offset = _uvarint(data, at + 32)
        go_version = data[offset:offset + size].decode()
        size, offset = _uvarint(data, offset + size)
        modinfo = data[offset:offset + size][16:-16].decode()
    except (IndexError, UnicodeDecodeError) as exc:
        raise InventoryError(f"{binary}: unreadable Go build information: {exc}") from None
    main, deps, last = None, [], None
    for line in modinfo.splitlines():
        fields = line.split("\t")
        if fields[0] == "mod" and len(fields) >= 3:
            main = GoModule(fields[1], fields[2] or "(devel)")
        elif fields[0] == "dep" and len(fields) >= 3:
            last = GoModule(fields[1], fields[2])
            deps.append(last)
        elif fields[0] == "=>" and len(fields) >= 3 and last is not None:
            deps[-1] = GoModule(fields[1], fields[2])  # a replace directive: what was built
    if main is None:
        raise InventoryError(f"{binary}: Go build information names no main module")
    return GoBuildInfo(go_version, main, tuple(deps))
