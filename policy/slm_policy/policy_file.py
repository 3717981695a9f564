"""Read and validate ``policy/licenses.toml``: a broken policy stops the gate (exit 2)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from license_expression import ExpressionError, LicenseSymbol, Licensing, get_spdx_licensing

from slm_policy.errors import PolicyError

# Copyleft and source-available families: never on the allow list, only per-package exceptions.
DENIED_FAMILIES = re.compile(
    r"^(A?GPL|LGPL|SSPL|BUSL|BSL|CC-BY-NC|CC-BY-SA|CC-BY-ND|Elastic|EUPL|OSL|CDDL|EPL|MS-RL|"
    r"CPAL|RPL|Sleepycat|Commons-Clause)", re.IGNORECASE)
# SPDX's list, plus the one reference the project defines: public-domain dedications
# (SQLite, liblzma), which have no SPDX id.
PUBLIC_DOMAIN = "LicenseRef-public-domain"
LICENSING = Licensing([*{id(s): s for s in get_spdx_licensing().known_symbols.values()}
                       .values(), LicenseSymbol(PUBLIC_DOMAIN)])


def normalise_name(name: str) -> str:
    """PEP 503 package name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Exception_:
    """Licenses a pinned package version may carry although they are not allowed in general."""

    package: str
    version: str
    licenses: frozenset[str]
    reason: str


@dataclass(frozen=True)
class Clarification:
    """A license read from a package's license file, pinned to that file's sha256."""

    package: str
    version: str
    license: str
    license_file_sha256: str
    reason: str


@dataclass(frozen=True)
class ModelException:
    """A model whose license is not allowed, accepted by its sha256 after review."""

    sha256: str
    license: str
    reason: str


@dataclass(frozen=True)
class NativeClarification:
    """The license of a Debian package's library inside the binary's tree, read from its
    copyright file (pinned to that file's sha256) where ``Files: *`` does not cover it."""

    package: str
    license: str
    copyright_sha256: str
    reason: str


@dataclass(frozen=True)
class OsLinked:
    """A library of the OS that the binary loads at run time, reviewed: its package, the
    license it comes under and why that is acceptable."""

    package: str
    license: str
    reason: str


@dataclass(frozen=True)
class OsClarification:
    """Licenses of an image package whose copyright file names none we can read."""

    package: str
    licenses: tuple[str, ...]
    copyright_sha256: str
    reason: str


@dataclass(frozen=True)
class OsPolicy:
    """How the image's Debian packages (separate programs beside ours) are judged."""

    denied_sections: tuple[str, ...] = ("non-free", "non-free-firmware", "contrib")
    reason: str = ""


@dataclass
class Policy:
    allow: dict[str, str]
    classifiers: dict[str, str]
    models: dict[str, str]
    exceptions: list[Exception_] = field(default_factory=list)
    clarifications: list[Clarification] = field(default_factory=list)
    model_exceptions: list[ModelException] = field(default_factory=list)
    debian_licenses: dict[str, str] = field(default_factory=dict)
    go_modules: dict[str, str] = field(default_factory=dict)
    native_clarifications: list[NativeClarification] = field(default_factory=list)
    os_linked: list[OsLinked] = field(default_factory=list)
    os_clarifications: list[OsClarification] = field(default_factory=list)
    os: OsPolicy = field(default_factory=OsPolicy)

    def go_license(self, module: str) -> str | None:
        """The SPDX expression of a Go module: the longest entry covering it wins."""
        best = max((p for p in self.go_modules if go_entry_covers(p, module)), key=len,
                   default=None)
        return self.go_modules[best] if best is not None else None


    def exception_for(self, name: str, version: str) -> Exception_ | None:
        for exc in self.exceptions:
            if exc.package == normalise_name(name) and exc.version == version:
                return exc
        return None

    def clarification_for(self, name: str, version: str) -> Clarification | None:
        for clar in self.clarifications:
            if clar.package == normalise_name(name) and clar.version == version:
                return clar
        return None


def go_entry_covers(entry: str, module: str) -> bool:
    """Whether a ``[go_modules]`` entry covers a module path: its own path and the paths
    below it; an entry ending in ``/`` only those below."""
    if entry.endswith("/"):
        return module.startswith(entry)
    return module == entry or module.startswith(entry + "/")

def _table(doc: dict[str, Any], key: str, path: Path) -> dict[str, str]:
    table = doc.get(key, {})
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in table.items()
    ):
        raise PolicyError(f"{path}: [{key}] must map strings to strings")
    return table


def spdx(text: str) -> tuple[str | None, str]:
    """``(normalised SPDX expression, "")`` or ``(None, why not)`` for any text."""
    if not isinstance(text, str) or not text.strip():
        return None, "empty license"
    try:
        info = LICENSING.validate(text)
    except (ExpressionError, AttributeError, TypeError, ValueError) as exc:
        # license-expression raises assorted errors on free text; all mean "not SPDX"
        return None, f"not an SPDX expression ({exc})"
    if info.errors:
        return None, "; ".join(info.errors)
    return info.normalized_expression, ""


def _check_expression(text: str, where: str) -> str:
    """The canonical form of a policy's SPDX entry (entries are compared canonically)."""
    normalised, problem = spdx(text)
    if normalised is None:
        raise PolicyError(f"{where}: {text!r}: {problem}")
    return normalised


def _require(entry: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if not entry.get(k)]
    if missing:
        raise PolicyError(f"{where}: missing {', '.join(missing)}")


def _entries(doc: dict[str, Any], key: str, path: Path,
             required: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
    """The ``[[key]]`` tables of the policy, each with where it is (for messages) and
    checked to have every ``required`` field."""
    out = []
    for i, entry in enumerate(doc.get(key, [])):
        where = f"{path} [[{key}]] #{i + 1}"
        _require(entry, required, where)
        out.append((where, entry))
    return out


def load_policy(path: Path) -> Policy:
    """Parse and validate the policy; PolicyError names what is wrong."""
    try:
        return _load_policy(path)
    except (TypeError, AttributeError, ValueError) as exc:  # wrong types in the TOML
        raise PolicyError(f"{path}: malformed entry: {exc}") from None


def _load_policy(path: Path) -> Policy:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"policy file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read the policy: {exc}") from None
    unknown = set(doc) - {"allow", "classifiers", "models", "exception", "clarification",
                          "model_exception", "debian_licenses", "go_modules",
                          "native_clarification", "os_linked", "os_clarification",
                          "os_components"}
    if unknown:
        raise PolicyError(f"{path}: unknown section(s): {', '.join(sorted(unknown))}")
    allow = {}
    for license_id, reason in _table(doc, "allow", path).items():
        canonical = _check_expression(license_id, f"{path} [allow]")
        if not reason.strip():
            raise PolicyError(f"{path} [allow] {license_id}: every allowed license needs a "
                              "reason")
        if DENIED_FAMILIES.match(canonical):  # also with a WITH exception
            raise PolicyError(f"{path} [allow] {license_id}: copyleft and source-available "
                              "licenses cannot be allowed globally; add a pinned "
                              "[[exception]]")
        allow[canonical] = reason
    classifiers = _table(doc, "classifiers", path)
    for name, spdx in classifiers.items():
        if spdx:
            _check_expression(spdx, f"{path} [classifiers] {name!r}")
    models = {k.lower(): v for k, v in _table(doc, "models", path).items()}
    for name, spdx in models.items():
        _check_expression(spdx, f"{path} [models] {name!r}")
    exceptions = []
    for where, entry in _entries(doc, "exception", path,
                                 ("package", "version", "licenses", "reason")):
        if not isinstance(entry["licenses"], list):
            raise PolicyError(f"{where}: licenses must be a list of SPDX ids")
        licenses = frozenset(_check_expression(x, where) for x in entry["licenses"])
        exceptions.append(Exception_(normalise_name(entry["package"]), str(entry["version"]),
                                     licenses, entry["reason"].strip()))
    clarifications = []
    for where, entry in _entries(doc, "clarification", path,
                                 ("package", "version", "license", "license_file_sha256",
                                  "reason")):
        clarifications.append(Clarification(
            normalise_name(entry["package"]), str(entry["version"]),
            _check_expression(entry["license"], where),
            entry["license_file_sha256"].lower(), entry["reason"].strip()))
    model_exceptions = []
    for _where, entry in _entries(doc, "model_exception", path,
                                  ("sha256", "license", "reason")):
        model_exceptions.append(ModelException(entry["sha256"].lower(), entry["license"],
                                               entry["reason"].strip()))
    debian_licenses = _table(doc, "debian_licenses", path)
    for name, spdx_id in debian_licenses.items():
        _check_expression(spdx_id, f"{path} [debian_licenses] {name!r}")
    go_modules = _table(doc, "go_modules", path)
    for name, spdx_id in go_modules.items():
        _check_expression(spdx_id, f"{path} [go_modules] {name!r}")
    native = []
    for where, entry in _entries(doc, "native_clarification", path,
                                 ("package", "license", "copyright_sha256", "reason")):
        native.append(NativeClarification(entry["package"], _check_expression(
            entry["license"], where), entry["copyright_sha256"].lower(),
            entry["reason"].strip()))
    linked = []
    for where, entry in _entries(doc, "os_linked", path, ("package", "license", "reason")):
        linked.append(OsLinked(entry["package"], _check_expression(entry["license"], where),
                               entry["reason"].strip()))
    os_clarifications = []
    for _where, entry in _entries(doc, "os_clarification", path,
                                  ("package", "licenses", "copyright_sha256", "reason")):
        os_clarifications.append(OsClarification(
            entry["package"], tuple(str(x) for x in entry["licenses"]),
            entry["copyright_sha256"].lower(), entry["reason"].strip()))
    components = doc.get("os_components", {})
    if not isinstance(components, dict):
        raise PolicyError(f"{path}: [os_components] must be a table")
    os_policy = OsPolicy(tuple(components.get("denied_sections", OsPolicy.denied_sections)),
                         str(components.get("reason", "")).strip())
    return Policy(allow, classifiers, models, exceptions, clarifications, model_exceptions,
                  debian_licenses, go_modules, native, linked, os_clarifications, os_policy)
