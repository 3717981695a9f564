"""The compiled binary as it runs (its unpacked tree), file by file: where each file came
from, and which libraries of the operating system it links at run time.

Nuitka's tree holds ``slm.bin`` (our code, the statically linked CPython runtime and
Nuitka's own runtime), the extension modules and data of the Python distributions it
includes, CPython's own extension modules, and the native libraries those link, copied
from the build root (the build machine, or the emulated chroot of another architecture).
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slm_policy.debian import owners
from slm_policy.errors import InventoryError

# Run inside the ship interpreter: which distribution provides each top-level import name,
# CPython's own module names, and its version.
_PROBE = r"""
import json, sys, platform, importlib.metadata as md
print(json.dumps({"distributions": md.packages_distributions(),
                  "stdlib": sorted(sys.stdlib_module_names),
                  "python": platform.python_version()}))
"""
_NEEDED = re.compile(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]")
SERVICE = "slm.bin"


@dataclass(frozen=True)
class TreeFile:
    """One file of the tree and its origin: ``service`` (slm.bin), ``python`` (a
    distribution), ``cpython``, ``debian`` (a native library from a package of the build
    root) or ``unknown``."""

    path: str
    origin: str
    owner: str = ""           # distribution, Debian package, "CPython" or "service-slm"
    source: str = ""          # debian: the file's path in the build root


@dataclass(frozen=True)
class RunTimeLink:
    """A library the tree loads from the operating system (not shipped in the tree)."""

    soname: str
    package: str | None       # the image package that provides it (None: nobody does)
    needed_by: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ShippedTree:
    root: Path
    python_version: str
    files: tuple[TreeFile, ...]


def _probe(python: str) -> dict[str, Any]:
    try:
        done = subprocess.run([python, "-I", "-c", _PROBE], capture_output=True, text=True)
    except OSError as exc:
        raise InventoryError(f"cannot run {python}: {exc.strerror}") from None
    if done.returncode != 0:
        raise InventoryError(f"cannot inspect {python}: {done.stderr.strip()[-300:]}")
    probe: dict[str, Any] = json.loads(done.stdout)
    return probe


def read_tree(tree: Path, python: str, build_root: Path) -> ShippedTree:
    """Every regular file of ``tree`` with its origin (``python``: the ship interpreter the
    binary was built from, or one with the same closure; ``build_root``: where the native
    libraries were copied from)."""
    if not (tree / SERVICE).is_file():
        raise InventoryError(f"{tree}: no {SERVICE}: not an unpacked binary tree")
    probe = _probe(python)
    dists: dict[str, list[str]] = probe["distributions"]
    stdlib = set(probe["stdlib"])
    paths = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*")
                   if p.is_file() and not p.is_symlink())
    native = [p for p in paths if "/" not in p and p.startswith("lib") and ".so" in p]
    found = owners(build_root, native)
    files = []
    for rel in paths:
        top = rel.split("/")[0]
        module = top.split(".")[0]
        if rel == SERVICE:
            files.append(TreeFile(rel, "service", "service-slm"))
        elif ("/" in rel or rel.endswith(".so")) and module in dists:
            files.append(TreeFile(rel, "python", dists[module][0]))
        elif "/" not in rel and rel.endswith(".so") and module in stdlib:
            files.append(TreeFile(rel, "cpython", "CPython"))
        elif rel in found:
            package, source = found[rel]
            files.append(TreeFile(rel, "debian", package, source))
        else:
            files.append(TreeFile(rel, "unknown"))
    return ShippedTree(tree, probe["python"], tuple(files))


def _needed(path: Path) -> list[str]:
    try:
        done = subprocess.run(["readelf", "-dW", str(path)], capture_output=True, text=True)
    except OSError as exc:
        raise InventoryError(f"cannot run readelf (binutils): {exc.strerror}") from None
    return _NEEDED.findall(done.stdout) if done.returncode == 0 else []


def run_time_links(tree: ShippedTree, os_root: Path) -> list[RunTimeLink]:
    """The libraries the tree's executables and libraries need (ELF ``NEEDED``) that the
    tree does not hold, with the package of ``os_root`` (the image) providing each."""
    shipped = {Path(f.path).name for f in tree.files}
    needed: dict[str, list[str]] = {}
    for f in tree.files:
        if f.path == SERVICE or ".so" in Path(f.path).name:
            for soname in _needed(tree.root / f.path):
                if soname not in shipped:
                    needed.setdefault(soname, []).append(f.path)
    found = owners(os_root, sorted(needed))
    return [RunTimeLink(soname, found.get(soname, (None, ""))[0], tuple(sorted(by)))
            for soname, by in sorted(needed.items())]
