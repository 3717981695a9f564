"""No downgrade: the release a device runs must be at least as new as the newest it has
served.

The image's signed file list (``signing.file_list``) names the release it belongs to
(``release.version``, the product version and build number, ``0.1.0.128``). Once the
Doorman is ready it records that version in ``signing.installed_release`` (on the state
partition, which survives updates); a later start of an older release is refused (exit 3),
so a captured older image cannot be put back on a device. A release that never reached
ready does not raise the floor: falling back to the previous one stays possible.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from slm.errors import SignatureError


def version_key(version: str) -> tuple[int, ...]:
    """The order of release versions (dotted numbers, ``0.1.0.128``; trailing zeros do
    not count: ``0.1`` == ``0.1.0``), shared by the device and ``slm-gate verify``."""
    parts = version.split(".")
    if not all(p.isdigit() and p.isascii() for p in parts):
        raise SignatureError(f"release version {version!r} is not dotted numbers")
    key = [int(p) for p in parts]
    while key and key[-1] == 0:
        key.pop()
    return tuple(key)


def release_in_file_list(path: Path, verified_sha256: str) -> str | None:
    """The release version the signed file list names (None: it names none). The bytes
    parsed must be the ones verified (``verified_sha256``)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != verified_sha256:
        raise SignatureError(f"{path} changed after its signature was verified")
    release = json.loads(data).get("release")
    return str(release["version"]) if isinstance(release, dict) else None


def installed(floor: Path) -> str | None:
    """The newest release this device has served (None: none recorded yet)."""
    try:
        return floor.read_text(encoding="ascii").strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SignatureError(f"{floor}: cannot read the installed release: "
                             f"{exc.strerror}") from None
    except UnicodeDecodeError:
        raise SignatureError(f"{floor}: the installed release record is not a version",
                             hint="restore it, or remove it to accept any release") from None


def refuse_downgrade(version: str | None, floor: Path) -> None:
    """SignatureError (exit 3) when ``version`` is older than what ``floor`` records, or
    names no release while the device has served one."""
    newest = installed(floor)
    if newest is None:
        return
    if version is None:
        raise SignatureError(f"the signed file list names no release, but this device has "
                             f"served release {newest} ({floor})")
    try:
        newest_key = version_key(newest)
    except SignatureError:
        raise SignatureError(f"{floor}: the installed release record {newest!r} is not a "
                             "version", hint="restore it, or remove it to accept any "
                             "release") from None
    if version_key(version) < newest_key:
        raise SignatureError(
            f"release {version} is older than {newest}, the newest this device has served: "
            "a downgrade is refused", hint=f"install release {newest} or newer")


def record_served(version: str, floor: Path) -> bool:
    """Raise the floor to ``version`` (never lower it), atomically; whether it changed."""
    version_key(version)  # never record what could not be compared later
    newest = installed(floor)
    if newest is not None and version_key(version) <= version_key(newest):
        return False
    tmp = floor.with_name(f".{floor.name}.tmp")
    with tmp.open("w", encoding="ascii") as fh:
        fh.write(version + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, floor)
    directory = os.open(floor.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return True
