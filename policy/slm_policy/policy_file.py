"""Read and validate ``policy/licenses.toml``: a broken policy stops the gate (exit 2)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from license_expression import ExpressionError, get_spdx_licensing

from slm_policy.errors import PolicyError

# Copyleft and source-available families: never on the allow list, only per-package exceptions.
DENIED_FAMILIES = re.compile(
    r"^(A?GPL|LGPL|SSPL|BUSL|BSL|CC-BY-NC|CC-BY-SA|CC-BY-ND|Elastic|EUPL|OSL|CDDL|EPL|MS-RL|"
    r"CPAL|RPL|Sleepycat|Commons-Clause)", re.IGNORECASE)
LICENSING = get_spdx_licensing()


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


@dataclass
class Policy:
    allow: dict[str, str]
    classifiers: dict[str, str]
    models: dict[str, str]
    exceptions: list[Exception_] = field(default_factory=list)
    clarifications: list[Clarification] = field(default_factory=list)
    model_exceptions: list[ModelException] = field(default_factory=list)

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
                          "model_exception"}
    if unknown:
        raise PolicyError(f"{path}: unknown section(s): {', '.join(sorted(unknown))}")
    allow = {}
    for entry, reason in _table(doc, "allow", path).items():
        canonical = _check_expression(entry, f"{path} [allow]")
        if not reason.strip():
            raise PolicyError(f"{path} [allow] {entry}: every allowed license needs a reason")
        if DENIED_FAMILIES.match(canonical):  # also with a WITH exception
            raise PolicyError(f"{path} [allow] {entry}: copyleft and source-available licenses "
                              "cannot be allowed globally; add a pinned [[exception]]")
        allow[canonical] = reason
    classifiers = _table(doc, "classifiers", path)
    for name, spdx in classifiers.items():
        if spdx:
            _check_expression(spdx, f"{path} [classifiers] {name!r}")
    models = {k.lower(): v for k, v in _table(doc, "models", path).items()}
    for name, spdx in models.items():
        _check_expression(spdx, f"{path} [models] {name!r}")
    exceptions = []
    for i, entry in enumerate(doc.get("exception", [])):
        where = f"{path} [[exception]] #{i + 1}"
        _require(entry, ("package", "version", "licenses", "reason"), where)
        if not isinstance(entry["licenses"], list):
            raise PolicyError(f"{where}: licenses must be a list of SPDX ids")
        licenses = frozenset(_check_expression(x, where) for x in entry["licenses"])
        exceptions.append(Exception_(normalise_name(entry["package"]), str(entry["version"]),
                                     licenses, entry["reason"].strip()))
    clarifications = []
    for i, entry in enumerate(doc.get("clarification", [])):
        where = f"{path} [[clarification]] #{i + 1}"
        _require(entry, ("package", "version", "license", "license_file_sha256", "reason"),
                 where)
        clarifications.append(Clarification(
            normalise_name(entry["package"]), str(entry["version"]),
            _check_expression(entry["license"], where),
            entry["license_file_sha256"].lower(), entry["reason"].strip()))
    model_exceptions = []
    for i, entry in enumerate(doc.get("model_exception", [])):
        where = f"{path} [[model_exception]] #{i + 1}"
        _require(entry, ("sha256", "license", "reason"), where)
        model_exceptions.append(ModelException(entry["sha256"].lower(), entry["license"],
                                               entry["reason"].strip()))
    return Policy(allow, classifiers, models, exceptions, clarifications, model_exceptions)
