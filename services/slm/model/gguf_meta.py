"""Read a GGUF file's metadata and tensor table without loading the model.

A small reader of the GGUF v2/v3 header (the `gguf` package does this too, but pulls
requests, tqdm and pyyaml into the binary). Large arrays (the vocabulary) are skipped
unless asked for; only their length is kept.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from slm.errors import ModelError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
ARRAY_KEEP_LIMIT = 4096  # arrays longer than this are summarised as their length


@dataclass(frozen=True)
class GGUFInfo:
    """Metadata (key → value) and the tensor table of a GGUF file."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, tuple[tuple[int, ...], int]]  # name → (shape, ggml type)
    data_offset: int
    file_size: int

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch(self, key: str, default: Any = None) -> Any:
        """``{architecture}.{key}`` from the metadata."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def weights_bytes(self) -> int:
        """Bytes of tensor data (what llama.cpp maps or loads)."""
        return self.file_size - self.data_offset


class _Reader:
    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        data = self.fh.read(size)
        if len(data) != size:
            raise ModelError("truncated GGUF header")
        return struct.unpack(fmt, data)[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 30:
            raise ModelError("corrupt GGUF header (string length)")
        data = self.fh.read(n)
        if len(data) != n:
            raise ModelError("truncated GGUF header")
        return data.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self.fh.seek(self.unpack("<Q"), 1)

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, n = self.unpack("<I"), self.unpack("<Q")
            if n <= ARRAY_KEEP_LIMIT:
                return [self.value(item_kind) for _ in range(n)]
            if item_kind == _STRING:
                for _ in range(n):
                    self.skip_string()
            elif item_kind in _SCALARS:
                self.fh.seek(struct.calcsize(_SCALARS[item_kind]) * n, 1)
            else:
                raise ModelError("unsupported nested GGUF array")
            return ("array", n)
        raise ModelError(f"unknown GGUF value type {kind}")


def read_gguf(path: Path) -> GGUFInfo:
    """Parse the header of ``path``; ModelError if it is not a readable GGUF file."""
    try:
        with path.open("rb") as fh:
            r = _Reader(fh)
            if fh.read(4) != b"GGUF":
                raise ModelError(f"not a GGUF model file: {path}")
            version = r.unpack("<I")
            if version not in (2, 3):
                raise ModelError(f"unsupported GGUF version {version} in {path}")
            n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
            metadata = {}
            for _ in range(n_kv):
                key = r.string()
                metadata[key] = r.value(r.unpack("<I"))
            tensors = {}
            for _ in range(n_tensors):
                name = r.string()
                dims = tuple(r.unpack("<Q") for _ in range(r.unpack("<I")))
                kind = r.unpack("<I")
                r.unpack("<Q")  # offset within the data section
                tensors[name] = (dims, kind)
            alignment = metadata.get("general.alignment", 32)
            if not isinstance(alignment, int) or alignment <= 0:
                raise ModelError(f"corrupt GGUF header: general.alignment = {alignment!r}")
            data_offset = -(-fh.tell() // alignment) * alignment
            size = path.stat().st_size
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror}") from None
    return GGUFInfo(path, version, metadata, tensors, data_offset, size)
