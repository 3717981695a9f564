"""The license gate: resolve every shipped component's SPDX expression and judge it.

Deny by default. A component passes when its expression evaluates to allowed: a license id
is allowed if it is on the allow list or in its package's pinned exception; ``X WITH Y``
only as its own entry; AND needs all operands, OR any.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from license_expression import (
    AND,
    OR,
    ExpressionError,
    LicenseExpression,
    LicenseSymbol,
    LicenseWithExceptionSymbol,
)

from slm_policy.inventory import Model, NativeLibrary, PythonPackage
from slm_policy.policy_file import LICENSING, Exception_, Policy, normalise_name, spdx


@dataclass
class Verdict:
    """One component's license and the gate's decision about it."""

    kind: str  # python | native | model
    name: str
    version: str
    reported: str
    expression: str | None
    allowed: bool
    problem: str = ""
    note: str = ""

    def line(self) -> str:
        """The one-line message for a violation."""
        return f"license-gate: DENY {self.kind} {self.name}=={self.version}: {self.problem}"


@dataclass
class Report:
    verdicts: list[Verdict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def violations(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.allowed]

    def to_json(self) -> dict[str, Any]:
        return {"ok": not self.violations, "components": [asdict(v) for v in self.verdicts],
                "violations": [v.line() for v in self.violations], "warnings": self.warnings}


class _Denied(Exception):
    pass


def _parse(text: str) -> LicenseExpression:
    normalised, problem = spdx(text)
    if normalised is None:
        raise _Denied(f"license {text[:60]!r}: {problem}")
    return LICENSING.parse(normalised)


def _denied_ids(node: LicenseExpression, allowed: set[str], used: set[str]) -> list[str]:
    """The license ids that make ``node`` fail (empty: allowed); marks what it uses."""
    if isinstance(node, LicenseWithExceptionSymbol):
        key = f"{node.license_symbol.key} WITH {node.exception_symbol.key}"
        if key in allowed:
            used.add(key)
            return []
        return [key]
    if isinstance(node, LicenseSymbol):
        if node.key in allowed:
            used.add(node.key)
            return []
        return [node.key]
    if isinstance(node, AND):
        return [d for arg in node.args for d in _denied_ids(arg, allowed, used)]
    if isinstance(node, OR):
        results = [_denied_ids(arg, allowed, used) for arg in node.args]
        if any(not r for r in results):
            return []
        return [d for r in results for d in r]
    raise _Denied(f"unsupported expression element {node!r}")


class Gate:
    """Judges components against one policy and remembers which entries were used."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.used_allow: set[str] = set()
        self.used_exceptions: set[tuple[str, str]] = set()
        self.used_clarifications: set[tuple[str, str]] = set()

    def judge(self, kind: str, name: str, version: str, reported: str, expression: str | None,
              exception: Exception_ | None) -> Verdict:
        verdict = Verdict(kind, name, version, reported, expression, allowed=False)
        if expression is None:
            return verdict
        allowed = set(self.policy.allow) | (set(exception.licenses) if exception else set())
        try:
            used: set[str] = set()
            parsed = _parse(expression)
            verdict.expression = str(parsed)
            denied = _denied_ids(parsed, allowed, used)
        except (_Denied, ExpressionError) as exc:
            verdict.problem = str(exc)
            return verdict
        if denied:
            verdict.problem = (f"{', '.join(sorted(set(denied)))} not allowed "
                               f"(license {expression})")
            return verdict
        verdict.allowed = True
        self.used_allow |= used & set(self.policy.allow)
        if exception and used & exception.licenses:
            self.used_exceptions.add((exception.package, exception.version))
            verdict.note = f"exception: {exception.reason.splitlines()[0]}"
        return verdict

    def _expression_of(self, package: PythonPackage) -> tuple[str | None, str, str]:
        """(SPDX expression or None, problem, note) for a Python package."""
        clar = self.policy.clarification_for(package.name, package.version)
        if clar is not None:
            self.used_clarifications.add((clar.package, clar.version))
            if package.license_text_sha256 != clar.license_file_sha256:
                return None, (
                    f"clarification pinned to license file sha256 {clar.license_file_sha256}"
                    f", but the file is {package.license_text_sha256}: review it again"), ""
            return clar.license, "", f"clarified: {clar.reason}"
        reported = package.reported
        parts = [p.strip() for p in reported.split(";") if p.strip()]
        if parts and all(p in self.policy.classifiers for p in parts):
            mapped = [self.policy.classifiers[p] for p in parts]
            vague = [p for p, m in zip(parts, mapped, strict=True) if not m]
            if vague:
                return None, (f"license {vague[0]!r} is ambiguous: add a [[clarification]] "
                              "pinned to the package's license file"), ""
            # Several classifiers could mean "any of" or "all of": assume all of.
            return " AND ".join(f"({m})" if " " in m else m for m in mapped), "", ""
        if not reported or reported.upper() == "UNKNOWN":
            return None, "no license declared (unknown)", ""
        normalised, _ = spdx(reported)
        if normalised is None:
            return None, (f"license {reported[:60]!r} is neither an SPDX expression nor a "
                          "known classifier (free text or custom)"), ""
        return normalised, "", ""

    def python(self, package: PythonPackage) -> Verdict:
        expression, problem, note = self._expression_of(package)
        exception = self.policy.exception_for(package.name, package.version)
        verdict = self.judge("python", package.name, package.version, package.reported,
                             expression, exception)
        verdict.problem = verdict.problem or problem
        verdict.note = verdict.note or note
        return verdict

    def native(self, lib: NativeLibrary) -> Verdict:
        expression = " AND ".join(f"({x})" for x in lib.licenses) if lib.licenses else None
        verdict = self.judge("native", lib.path, lib.version, "; ".join(lib.licenses),
                             expression, self.policy.exception_for(lib.package, lib.version))
        if expression is None:
            verdict.problem = (f"bundled by {lib.package}, but its license file names no "
                               "license for it (unknown)")
        return verdict

    def model(self, model: Model) -> Verdict:
        name = model.name or model.path.name
        raw = model.license or ""
        accepted = next((m for m in self.policy.model_exceptions
                         if m.sha256 == model.sha256), None)
        if accepted is not None:
            return Verdict("model", name, model.sha256[:12], raw, accepted.license, True,
                           note=f"exception: {accepted.reason.splitlines()[0]}")
        expression = self.policy.models.get(raw.lower())
        problem = ""
        if expression is None and raw:
            expression, _ = spdx(raw)
            if expression is None:
                problem = f"model license {raw!r} is custom or unknown"
        if not raw:
            problem = "the model has no general.license metadata (unknown)"
        verdict = self.judge("model", name, model.sha256[:12], raw, expression, None)
        verdict.problem = verdict.problem or problem
        verdict.note = str(model.path)
        return verdict

    def stale_entries(self, packages: list[PythonPackage]) -> list[str]:
        """Allow entries nothing used, exceptions and clarifications that match nothing."""
        shipped = {(normalise_name(p.name), p.version) for p in packages}
        names = {normalise_name(p.name) for p in packages}
        out = [f"unused allow entry: {spdx}" for spdx in self.policy.allow
               if spdx not in self.used_allow]
        for exc in self.policy.exceptions:
            if (exc.package, exc.version) not in shipped:
                where = "another version ships" if exc.package in names else "not shipped"
                out.append(f"stale exception: {exc.package}=={exc.version} ({where})")
            elif (exc.package, exc.version) not in self.used_exceptions:
                out.append(f"unused exception: {exc.package}=={exc.version}")
        for clar in self.policy.clarifications:
            if (clar.package, clar.version) not in shipped:
                out.append(f"stale clarification: {clar.package}=={clar.version}")
        return out


def evaluate(policy: Policy, packages: list[PythonPackage], libs: list[NativeLibrary],
             models: list[Model], unlisted: list[str] | None = None) -> Report:
    """Judge everything that ships (``unlisted``: distributions nobody reported a license
    for, each a violation)."""
    gate = Gate(policy)
    report = Report()
    for dist in unlisted or []:
        name, _, version = dist.partition("==")
        report.verdicts.append(Verdict("python", name, version, "", None, False,
                                       problem="installed but not reported by pip-licenses"))
    report.verdicts += [gate.python(p) for p in packages]
    report.verdicts += [gate.native(lib) for lib in libs]
    report.verdicts += [gate.model(m) for m in models]
    report.warnings = gate.stale_entries(packages)
    return report
