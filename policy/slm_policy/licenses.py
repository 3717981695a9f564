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

from slm_policy.debian import DebianPackage
from slm_policy.go_buildinfo import GoBuildInfo, GoModule
from slm_policy.inventory import Model, NativeLibrary, PythonPackage
from slm_policy.policy_file import (
    LICENSING,
    Exception_,
    Policy,
    go_entry_covers,
    normalise_name,
    spdx,
)
from slm_policy.shipped_tree import RunTimeLink, ShippedTree, TreeFile


@dataclass
class Verdict:
    """One component's license and the gate's decision about it."""

    # python | native | model (the Python closure); tree (a file of the binary's tree),
    # runtime (CPython, Nuitka's), go (Litestream's modules), os (an image package),
    # os-link (an OS library the binary loads at run time)
    kind: str
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


@dataclass(frozen=True)
class Shipped:
    """What ships beside the Python closure, for the gate to judge file by file: the
    binary's unpacked tree (with the build root's packages its native libraries came from
    and the OS libraries it links at run time), Litestream's Go modules and the image's
    Debian packages. Each part is optional (not judged when absent)."""

    tree: ShippedTree | None = None
    nuitka_version: str = ""
    build_packages: dict[str, DebianPackage] = field(default_factory=dict)
    links: list[RunTimeLink] = field(default_factory=list)
    go: GoBuildInfo | None = None
    os_packages: list[DebianPackage] = field(default_factory=list)


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
        self.used_native: set[str] = set()
        self.used_os_linked: set[str] = set()
        self.used_os_clarifications: set[str] = set()

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

    def tree_file(self, f: TreeFile, package: DebianPackage | None) -> Verdict:
        """A file of the binary's tree that no Python distribution or CPython owns: a
        native library judged as strictly as a Python dependency, by the license of its
        Debian package's copyright file (``Files: *``, or a pinned clarification)."""
        if f.origin != "debian" or package is None:
            return Verdict("tree", f.path, "", "", None, False, problem=(
                "in the binary's tree, but no Python distribution, CPython or Debian package "
                "of the build root owns it (unknown)"))
        name = f"{f.path} (Debian {package.name})"
        copyright_ = package.copyright
        if copyright_ is None:
            return Verdict("tree", name, package.version, "", None, False,
                           problem=f"package {package.name} has no copyright file (unknown)")
        clar = next((c for c in self.policy.native_clarifications
                     if c.package == package.name), None)
        note, expression = "", None
        if clar is not None:
            self.used_native.add(clar.package)
            if clar.copyright_sha256 != copyright_.sha256:
                return Verdict("tree", name, package.version, copyright_.default_license or "",
                               None, False, problem=(
                                   f"clarification pinned to copyright sha256 "
                                   f"{clar.copyright_sha256}, but the file is "
                                   f"{copyright_.sha256}: review it again"))
            expression, note = clar.license, f"clarified: {clar.reason.splitlines()[0]}"
        elif copyright_.default_license:
            expression = self.policy.debian_licenses.get(copyright_.default_license)
        reported = copyright_.default_license or "; ".join(copyright_.licenses)
        verdict = self.judge("tree", name, package.version, reported, expression,
                             self.policy.exception_for(package.name, package.version))
        if expression is None:
            verdict.problem = (f"the license of {package.name} ({reported or 'none named'}) "
                               "is not one [debian_licenses] maps, and no "
                               "[[native_clarification]] reviews it (unknown)")
        verdict.note = verdict.note or note or f"from {f.source}"
        return verdict

    def runtime(self, name: str, version: str, expression: str, note: str) -> Verdict:
        verdict = self.judge("runtime", name, version, expression, expression, None)
        verdict.note = note
        return verdict

    def go_module(self, module: GoModule) -> Verdict:
        expression = self.policy.go_license(module.path)
        verdict = self.judge("go", module.path, module.version, expression or "", expression,
                             None)
        if expression is None:
            verdict.problem = "no [go_modules] entry reviews this module's license (unknown)"
        verdict.note = "compiled into Litestream"
        return verdict

    def os_package(self, package: DebianPackage) -> Verdict:
        """An image package: a separate program beside ours, allowed from Debian's free
        archive with its licenses recorded; unknown licenses are denied."""
        copyright_ = package.copyright
        licenses = copyright_.licenses if copyright_ else ()
        verdict = Verdict("os", package.name, package.version, "; ".join(licenses), None,
                          False, note="separate program: licenses recorded")
        component = package.section.split("/")[0] if "/" in package.section else "main"
        if component in self.policy.os.denied_sections:
            verdict.problem = f"from Debian's {component} archive ({package.section})"
            return verdict
        if copyright_ is None:
            verdict.problem = "no /usr/share/doc/PKG/copyright file (unknown license)"
            return verdict
        if not licenses:
            clar = next((c for c in self.policy.os_clarifications
                         if c.package == package.name), None)
            if clar is None or clar.copyright_sha256 != copyright_.sha256:
                verdict.problem = (f"its copyright file (sha256 {copyright_.sha256[:12]}…) "
                                   "names no license we can read: add an "
                                   "[[os_clarification]] pinned to it")
                return verdict
            self.used_os_clarifications.add(clar.package)
            verdict.reported = "; ".join(clar.licenses)
            verdict.note = f"clarified: {clar.reason.splitlines()[0]}"
        verdict.allowed = True
        return verdict

    def os_link(self, link: RunTimeLink, packages: dict[str, DebianPackage]) -> Verdict:
        """An OS library the binary loads at run time: linked into our process, so it must
        be reviewed in [[os_linked]] (its license and why that is acceptable)."""
        package = packages.get(link.package or "")
        name = f"{link.soname} ({link.package or 'no package'})"
        version = package.version if package else ""
        by = ", ".join(link.needed_by[:3]) + (" …" if len(link.needed_by) > 3 else "")
        if link.package is None:
            return Verdict("os-link", name, version, "", None, False,
                           problem=f"needed by {by}, but no image package provides it")
        entry = next((e for e in self.policy.os_linked if e.package == link.package), None)
        if entry is None:
            return Verdict("os-link", name, version, "", None, False, problem=(
                f"loaded from the OS at run time (needed by {by}) but not reviewed: add an "
                f"[[os_linked]] entry for {link.package}"))
        self.used_os_linked.add(entry.package)
        return Verdict("os-link", name, version, entry.license, entry.license, True,
                       note=f"reviewed: {entry.reason.splitlines()[0]}")

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
             models: list[Model], unlisted: list[str] | None = None,
             shipped: Shipped | None = None) -> Report:
    """Judge everything that ships (``unlisted``: distributions nobody reported a license
    for, each a violation; ``shipped``: the binary's tree, Litestream and the image)."""
    gate = Gate(policy)
    report = Report()
    for dist in unlisted or []:
        name, _, version = dist.partition("==")
        report.verdicts.append(Verdict("python", name, version, "", None, False,
                                       problem="installed but not reported by pip-licenses"))
    report.verdicts += [gate.python(p) for p in packages]
    report.verdicts += [gate.native(lib) for lib in libs]
    report.verdicts += [gate.model(m) for m in models]
    if shipped is not None:
        report.verdicts += _judge_shipped(gate, shipped, packages)
    report.warnings = gate.stale_entries(packages)
    if shipped is not None:
        report.warnings += _stale_shipped(gate, shipped)
    return report


def _judge_shipped(gate: Gate, shipped: Shipped,
                   packages: list[PythonPackage]) -> list[Verdict]:
    out: list[Verdict] = []
    if shipped.tree is not None:
        tree = shipped.tree
        listed = {normalise_name(p.name) for p in packages}
        for f in tree.files:
            if f.origin == "python" and normalise_name(f.owner) not in listed:
                out.append(Verdict("tree", f.path, "", "", None, False, problem=(
                    f"from the Python distribution {f.owner}, which the ship environment "
                    "does not hold (its license was never judged)")))
            elif f.origin in ("debian", "unknown"):
                out.append(gate.tree_file(f, shipped.build_packages.get(f.owner)))
        out.append(gate.runtime("CPython", tree.python_version, "PSF-2.0",
                                "statically linked into slm.bin, and its extension modules"))
        out.append(gate.runtime("Nuitka runtime", shipped.nuitka_version, "Apache-2.0",
                                "compiled into slm.bin"))
        by_name = {p.name: p for p in shipped.os_packages}
        out += [gate.os_link(link, by_name) for link in shipped.links]
    if shipped.go is not None:
        go = shipped.go
        out.append(gate.runtime("Go runtime and standard library", go.go_version,
                                gate.policy.go_license("std") or "BSD-3-Clause",
                                "compiled into Litestream"))
        out += [gate.go_module(m) for m in (go.main, *go.deps)]
    out += [gate.os_package(p) for p in shipped.os_packages]
    return out


def _stale_shipped(gate: Gate, shipped: Shipped) -> list[str]:
    out = []
    if shipped.tree is not None:
        out += [f"unused native clarification: {c.package}"
                for c in gate.policy.native_clarifications if c.package not in gate.used_native]
        if shipped.os_packages:
            out += [f"unused os_linked entry: {e.package}" for e in gate.policy.os_linked
                    if e.package not in gate.used_os_linked]
    if shipped.os_packages:
        out += [f"unused os_clarification: {c.package}"
                for c in gate.policy.os_clarifications
                if c.package not in gate.used_os_clarifications]
    if shipped.go is not None:
        modules = [m.path for m in (shipped.go.main, *shipped.go.deps)]
        out += [f"unused go_modules entry: {entry}" for entry in gate.policy.go_modules
                if entry != "std" and not any(go_entry_covers(entry, m) for m in modules)]
    return out
