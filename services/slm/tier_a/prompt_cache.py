"""The prompt cache: KV-state snapshots of recent prompts, so a request that shares a long
prefix with one of them (a system prompt, an earlier conversation) restores that prefix
instead of decoding it again.

The engine already reuses the prefix it shares with the *last* request; this cache keeps
several, in memory (least recently used first out, within ``memory_bytes``) and, with a
directory, on disk across restarts: entries leaving memory and those still in memory at
shutdown are written there, one file each, atomically. Snapshots belong to one model:
they live under ``<dir>/<model sha256>/``, and directories of other models are removed at
start; a file written for another KV layout (``context``: the KV type) is removed too. A
snapshot also names the LoRA adapter it was computed with (name, sha256 and scale), and
one llama.cpp refuses to restore is dropped.

The worker thread alone changes the cache; ``memory_used`` and ``hits`` are plain
integers, so ``/metrics`` may read them from the event loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger("slm.prompt_cache")
MAGIC = b"SLMKV1\n"
# A new snapshot replaces those it shares this much of: without it, each turn of one
# conversation would keep a near-copy and push the other conversations out.
SUPERSEDE_SHARE = 0.9
_SHA256_DIR = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Snapshot:
    """The KV state of one prompt (``tokens``), in memory (``state``) or on disk (``path``)."""

    tokens: tuple[int, ...]
    adapter: str | None
    size: int
    state: bytearray | None = None  # llama.cpp reads and writes it in place: no copies
    path: Path | None = None

    @property
    def key(self) -> str:
        text = json.dumps([self.adapter, self.tokens], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def common_prefix(a: tuple[int, ...] | list[int], b: list[int]) -> int:
    n, limit = 0, min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


class PromptCache:
    """Snapshots of one model's prompts: in memory, and optionally in a directory."""

    def __init__(self, model_sha256: str, *, memory_bytes: int, min_tokens: int,
                 directory: Path | None = None, disk_bytes: int = 0,
                 context: str = "") -> None:
        self.model_sha256 = model_sha256
        self.context = context
        self.memory_used = 0
        self.memory_bytes = memory_bytes
        self.min_tokens = min_tokens
        self.disk_bytes = disk_bytes
        self.directory = directory / model_sha256 if directory else None
        self._memory: OrderedDict[str, Snapshot] = OrderedDict()
        self._disk: dict[str, Snapshot] = {}
        self.hits = self.misses = 0
        if directory is not None:
            self._open_directory(directory)

    # -- lookup -------------------------------------------------------------------------

    def best(self, prompt: list[int], adapter: str | None) -> tuple[Snapshot | None, int]:
        """The snapshot sharing the longest prefix with ``prompt`` (computed with the same
        adapter), and that prefix's length; at most ``len(prompt) - 1`` tokens, since the
        last one must be decoded for its logits."""
        best, best_n = None, 0
        limit = len(prompt) - 1
        for snap in (*self._memory.values(), *self._disk.values()):
            if snap.adapter != adapter:
                continue
            n = min(common_prefix(snap.tokens, prompt), limit)
            if n > best_n:
                best, best_n = snap, n
        return best, best_n

    def state_of(self, snap: Snapshot) -> bytearray | None:
        """The snapshot's state bytes (read from disk when needed; None if unreadable)."""
        if snap.state is not None:
            self._memory.move_to_end(snap.key)
            return snap.state
        assert snap.path is not None
        try:
            with snap.path.open("rb") as fh:
                _read_header(fh)
                state = bytearray(snap.size)
                got = fh.readinto(state)
            os.utime(snap.path)  # recently used: evicted last
        except (OSError, ValueError) as exc:
            log.warning("prompt cache: dropping unreadable %s: %s", snap.path, exc)
            self.drop(snap)
            return None
        if got != snap.size:
            log.warning("prompt cache: dropping truncated %s", snap.path)
            self.drop(snap)
            return None
        return state

    # -- filling ------------------------------------------------------------------------

    def wants(self, n_tokens: int, size: int) -> bool:
        """Whether a snapshot of this many tokens and bytes is worth keeping at all."""
        return n_tokens >= self.min_tokens and 0 < size <= self.memory_bytes

    def make_room(self, tokens: list[int], adapter: str | None, size: int) -> None:
        """Before a snapshot of ``size`` bytes is taken: drop the snapshots it supersedes
        (same adapter, sharing at least ``SUPERSEDE_SHARE`` of their tokens with it: an
        earlier turn of the same conversation), then move the least recently used to disk
        until it fits, so memory never holds more than ``memory_bytes``."""
        for other in list(self._memory.values()):
            if other.adapter == adapter and common_prefix(
                    other.tokens, tokens) >= SUPERSEDE_SHARE * len(other.tokens):
                del self._memory[other.key]
                self.memory_used -= other.size
        while self._memory and self.memory_used + size > self.memory_bytes:
            _, evicted = self._memory.popitem(last=False)
            self.memory_used -= evicted.size
            self._write(evicted)

    def add(self, tokens: list[int], adapter: str | None, state: bytearray) -> None:
        """Keep a new snapshot (call ``make_room`` first)."""
        self.make_room(tokens, adapter, len(state))
        snap = Snapshot(tuple(tokens), adapter, len(state), state=state)
        if snap.key in self._memory:
            self.memory_used -= self._memory[snap.key].size
        self._memory[snap.key] = snap
        self._memory.move_to_end(snap.key)
        self.memory_used += snap.size

    def drop(self, snap: Snapshot) -> None:
        """Forget ``snap`` everywhere (llama.cpp refused it, or its file is damaged)."""
        if self._memory.pop(snap.key, None) is not None:
            self.memory_used -= snap.size
        self._disk.pop(snap.key, None)
        if snap.path is not None:
            snap.path.unlink(missing_ok=True)

    def persist(self) -> int:
        """Write every snapshot still only in memory to the directory (at shutdown)."""
        written = 0
        for snap in list(self._memory.values()):
            if snap.key not in self._disk and self._write(snap):
                written += 1
        return written

    # -- disk ---------------------------------------------------------------------------

    def _open_directory(self, root: Path) -> None:
        assert self.directory is not None
        root.mkdir(parents=True, exist_ok=True)
        for child in root.iterdir():  # snapshots of other models are invalid
            if child.is_dir() and _SHA256_DIR.match(child.name) and child != self.directory:
                shutil.rmtree(child, ignore_errors=True)
                log.info("prompt cache: removed the snapshots of model %s", child.name)
        self.directory.mkdir(exist_ok=True)
        for path in sorted(self.directory.glob("*.kv"), key=lambda p: p.stat().st_mtime):
            try:
                with path.open("rb") as fh:
                    header = _read_header(fh)
                snap = Snapshot(tuple(header["tokens"]), header["adapter"],
                                int(header["state_bytes"]), path=path)
                if (header["model_sha256"] != self.model_sha256 or path.stem != snap.key
                        or header.get("context") != self.context):
                    raise ValueError("written for another model, KV layout or name")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("prompt cache: removing %s: %s", path, exc)
                path.unlink(missing_ok=True)
                continue
            self._disk[snap.key] = snap
        for stale in self.directory.glob("*.tmp"):  # a write cut short
            stale.unlink(missing_ok=True)

    def _write(self, snap: Snapshot) -> bool:
        """Write ``snap`` to the directory (temporary file, fsync, rename)."""
        if self.directory is None or snap.state is None or snap.size > self.disk_bytes:
            return False
        path = self.directory / f"{snap.key}.kv"
        tmp = path.with_suffix(".tmp")
        header = json.dumps({"model_sha256": self.model_sha256, "context": self.context,
                             "adapter": snap.adapter,
                             "state_bytes": snap.size, "tokens": list(snap.tokens)},
                            separators=(",", ":")).encode()
        try:
            with tmp.open("wb") as fh:
                fh.write(MAGIC + header + b"\n")
                fh.write(snap.state)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)
        except OSError as exc:
            log.warning("prompt cache: cannot write %s: %s", path, exc)
            tmp.unlink(missing_ok=True)
            return False
        self._disk[snap.key] = Snapshot(snap.tokens, snap.adapter, snap.size, path=path)
        self._trim_disk()
        return True

    def _trim_disk(self) -> None:
        entries = sorted(self._disk.values(), key=lambda s: _mtime(s.path))
        total = sum(s.size for s in entries)
        for snap in entries:
            if total <= self.disk_bytes:
                break
            total -= snap.size
            del self._disk[snap.key]
            if snap.path is not None:
                snap.path.unlink(missing_ok=True)


def _mtime(path: Path | None) -> float:
    try:
        return path.stat().st_mtime if path else time.time()
    except OSError:
        return 0.0


def _read_header(fh: BinaryIO) -> dict[str, Any]:
    if fh.read(len(MAGIC)) != MAGIC:
        raise ValueError("not a prompt cache file")
    header = json.loads(fh.readline())
    if not isinstance(header, dict):
        raise ValueError("malformed header")
    return header
