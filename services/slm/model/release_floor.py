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


def _key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise SignatureError(f"release version {version!r} is not dotted numbers") from None


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
        return floor.read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SignatureError(f"{floor}: cannot read the installed release: "
                             f"{exc.strerror}") from None


def refuse_downgrade(version: str | None, floor: Path) -> None:
    """SignatureError (exit 3) when ``version`` is older than what ``floor`` records, or
    names no release while the device has served one."""
    newest = installed(floor)
    if newest is None:
        return
    if version is None:
        raise SignatureError(f"the signed file list names no release, but this device has "
                             f"served release {newest} ({floor})")
    if _key(version) < _key(newest):
        raise SignatureError(
            f"release {version} is older than {newest}, the newest this device has served: "
            "a downgrade is refused", hint=f"install release {newest} or newer")


def record_served(version: str, floor: Path) -> bool:
    """Raise the floor to ``version`` (never lower it), atomically; whether it changed."""
    newest = installed(floor)
    if newest is not None and _key(version) <= _key(newest):
        return False
    tmp = floor.with_name(f".{floor.name}.tmp")
    tmp.write_text(version + "\n")
    os.replace(tmp, floor)
    return True
