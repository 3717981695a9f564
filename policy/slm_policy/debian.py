"""Debian packages of a root file system (the image's, or the build root the binary's native
libraries were copied from), read with Debian's own tools: ``dpkg-query`` against that
root's package database, and each package's ``/usr/share/doc/PKG/copyright``.

A copyright file in Debian's machine-readable format (DEP-5) names a license per
``Files:`` stanza; ``Files: *`` is the default for the whole source, the other stanzas
narrow it for particular files. A file in the older free form is read for the
``/usr/share/common-licenses/NAME`` texts it points to.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from slm_policy.errors import InventoryError

_DEP5 = re.compile(r"(?i)^format:\s*https?://(www\.)?debian\.org/doc/"
                   r"packaging-manuals/copyright-format/1\.0")
_COMMON = re.compile(r"/usr/share/common-licenses/([A-Za-z0-9][A-Za-z0-9.+_-]*[A-Za-z0-9+])")
_OWNER = re.compile(r"^(?P<packages>[^:]+(?::[a-z0-9]+)?(?:, [^:]+(?::[a-z0-9]+)?)*): "
                    r"(?P<path>/.+)$")


@dataclass(frozen=True)
class Copyright:
    """What a package's copyright file says: its sha256, every license it names (Debian
    short names, in order of appearance) and the license of its ``Files: *`` stanza."""

    sha256: str
    licenses: tuple[str, ...]
    default_license: str | None
    machine_readable: bool


@dataclass(frozen=True)
class DebianPackage:
    name: str
    version: str
    architecture: str
    section: str
    copyright: Copyright | None  # None: the package has no copyright file

    @property
    def purl(self) -> str:
        return f"pkg:deb/debian/{self.name}@{self.version}?arch={self.architecture}"


def read_copyright(path: Path) -> Copyright | None:
    """The copyright file's licenses (None when there is no such file)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InventoryError(f"cannot read {path}: {exc.strerror}") from None
    text = data.decode("utf-8", errors="replace")
    sha256 = hashlib.sha256(data).hexdigest()
    if not _DEP5.match(text.lstrip()):
        names = tuple(dict.fromkeys(m.rstrip(".") for m in _COMMON.findall(text)))
        return Copyright(sha256, names, None, False)
    licenses: list[str] = []
    default = None
    for stanza in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"(?m)^([A-Za-z-]+):[ \t]*(.*)$", stanza))
        name = fields.get("License", "").strip()
        if not name:
            continue
        licenses.append(name)
        if fields.get("Files", "").strip() == "*" and default is None:
            default = name
    return Copyright(sha256, tuple(dict.fromkeys(licenses)), default, True)


def _admindir(root: Path) -> str:
    return f"--admindir={root / 'var/lib/dpkg'}"


def installed_packages(root: Path) -> list[DebianPackage]:
    """Every package installed in ``root``, sorted by name."""
    try:
        done = subprocess.run(["dpkg-query", _admindir(root), "-W", "-f",
                               "${db:Status-Abbrev}\t${Package}\t${Version}\t"
                               "${Architecture}\t${Section}\n"],
                              capture_output=True, text=True)
    except OSError as exc:
        raise InventoryError(f"cannot run dpkg-query: {exc.strerror}") from None
    if done.returncode != 0:
        raise InventoryError(f"dpkg-query cannot read the packages of {root}: "
                             f"{done.stderr.strip()[-200:]}")
    out = []
    for line in sorted(done.stdout.splitlines()):
        status, name, version, arch, section = line.split("\t")
        if not status.startswith("ii"):  # removed, config files only, half-installed
            continue
        out.append(DebianPackage(name, version, arch, section, read_copyright(
            root / "usr/share/doc" / name / "copyright")))
    return out


def owners(root: Path, file_names: list[str]) -> dict[str, tuple[str, str]]:
    """``{file name: (package, installed path)}`` for the files of ``root``'s packages
    named so (any directory); names no package owns are left out."""
    if not file_names:
        return {}
    try:
        done = subprocess.run(["dpkg-query", _admindir(root), "-S",
                               *(f"*/{name}" for name in file_names)],
                              capture_output=True, text=True)
    except OSError as exc:
        raise InventoryError(f"cannot run dpkg-query: {exc.strerror}") from None
    found: dict[str, tuple[str, str]] = {}
    for line in done.stdout.splitlines():
        match = _OWNER.match(line)
        if not match or "diversion" in line.split(":")[0]:  # diversion by/local diversion
            continue
        package = match["packages"].split(", ")[0].split(":")[0]
        path = match["path"]
        found.setdefault(Path(path).name, (package, path))
    return found
