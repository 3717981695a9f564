"""What ships: Python distributions of an environment, the native libraries their wheels
bundle (``*.libs/``), and GGUF models, each with the license data found for it."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slm_policy.errors import InventoryError

# Run inside the *target* interpreter: every distribution's bundled native libraries and
# the site-packages folders (to find shipped models).
_PROBE = r"""
import json, sys, importlib.metadata as md
out = {"libs": {}, "paths": [p for p in sys.path if p.endswith("-packages")], "dists": []}
for dist in md.distributions():
    out["dists"].append([dist.metadata["Name"], dist.version])
    libs = [str(f) for f in (dist.files or []) if f.parts and f.parts[0].endswith(".libs")
            and ".so" in f.name]
    if libs:
        out["libs"][dist.metadata["Name"]] = libs
print(json.dumps(out))
"""


@dataclass(frozen=True)
class PythonPackage:
    name: str
    version: str
    reported: str  # what pip-licenses reports (expression, classifiers or free text)
    license_text: str | None

    @property
    def license_text_sha256(self) -> str | None:
        if not self.license_text:
            return None
        return hashlib.sha256(self.license_text.encode()).hexdigest()


@dataclass(frozen=True)
class NativeLibrary:
    package: str  # the distribution whose wheel bundles it
    version: str
    path: str  # e.g. numpy.libs/libgfortran-...so.5.0.0
    licenses: tuple[str, ...]  # from the package's license file; empty = none found


@dataclass(frozen=True)
class Model:
    path: Path
    name: str | None
    license: str | None  # GGUF general.license
    sha256: str


def python_packages(python: str) -> list[PythonPackage]:
    """Every distribution in ``python``'s environment, via pip-licenses (``--with-system``:
    pip, setuptools, wcwidth... are judged too when they are there)."""
    cmd = [sys.executable, "-m", "piplicenses", "--python", python, "--from=mixed",
           "--format=json", "--with-license-file", "--no-license-path", "--with-system"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise InventoryError(f"pip-licenses failed for {python}: "
                             f"{(result.stderr or result.stdout).strip()[-300:]}")
    out = []
    for item in json.loads(result.stdout):
        text = item.get("LicenseText")
        out.append(PythonPackage(item["Name"], item["Version"], item["License"].strip(),
                                 None if text in (None, "UNKNOWN", "") else text))
    return sorted(out, key=lambda p: p.name.lower())


def _probe(python: str) -> dict[str, Any]:
    result = subprocess.run([python, "-I", "-c", _PROBE], capture_output=True, text=True)
    if result.returncode != 0:
        raise InventoryError(f"cannot inspect {python}: {result.stderr.strip()[-300:]}")
    probe: dict[str, Any] = json.loads(result.stdout)
    return probe


def unlisted_distributions(python: str, packages: list[PythonPackage]) -> list[str]:
    """Distributions importlib.metadata sees that pip-licenses did not report."""
    listed = {(p.name.lower(), p.version) for p in packages}
    return sorted(f"{name}=={version}" for name, version in _probe(python)["dists"]
                  if (name.lower(), version) not in listed)


def bundled_license_blocks(license_text: str) -> list[tuple[str, str]]:
    """``(files glob, SPDX)`` pairs of a license file listing bundled components as
    ``Name: / Files: / License:`` blocks (numpy's LICENSE.txt, auditwheel's format)."""
    blocks, files = [], None
    for line in license_text.splitlines():
        if line.startswith("Files:"):
            files = line.split(":", 1)[1].strip()
        elif line.startswith("License:") and files:
            blocks.append((files, line.split(":", 1)[1].strip()))
            files = None
    return blocks


def native_libraries(python: str, packages: list[PythonPackage]) -> list[NativeLibrary]:
    """Native libraries bundled by wheels, with the licenses their package's license file
    declares for them."""
    by_name = {p.name.lower(): p for p in packages}
    out = []
    for dist, files in _probe(python)["libs"].items():
        package = by_name.get(dist.lower())
        if package is None:
            continue
        blocks = bundled_license_blocks(package.license_text or "")
        for path in sorted(files):
            licenses = tuple(spdx for glob, spdx in blocks
                             for pattern in glob.split()
                             if fnmatch.fnmatch(path, pattern + "*"))
            out.append(NativeLibrary(package.name, package.version, path, licenses))
    return out


def read_model(path: Path) -> Model:
    """A GGUF model's name and ``general.license``."""
    from gguf import GGUFReader, GGUFValueType

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a model we know"
        raise InventoryError(f"{path}: not a readable GGUF file: {exc}") from None

    def text(key: str) -> str | None:
        """A string field; an array of strings joined with AND (all of them apply)."""
        field = reader.fields.get(key)
        if field is None:
            return None
        if field.types[:1] == [GGUFValueType.STRING]:
            return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
        if field.types[:2] == [GGUFValueType.ARRAY, GGUFValueType.STRING]:
            items = [bytes(field.parts[i]).decode("utf-8", errors="replace")
                     for i in field.data]
            return " AND ".join(f"({x})" for x in items) if items else ""
        return f"<{field.types[0].name} value>"  # not text: never a license

    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return Model(path, text("general.name"), text("general.license"), digest)


def shipped_models(python: str, extra: list[Path]) -> list[Model]:
    """Every GGUF inside the environment's site-packages, plus the given files."""
    found: list[Path] = []
    for site in _probe(python)["paths"]:
        found += sorted(Path(site).rglob("*.gguf"))
    return [read_model(p) for p in [*found, *extra]]
