"""A CycloneDX 1.5 JSON SBOM of what ships, built from the gate's own inventory: the Python
closure and its models, and (per architecture, with ``Shipped``) every file of the binary's
tree under the component it came from, the runtimes, Litestream with its Go modules, and
every Debian package of the image."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from slm_policy.inventory import Model, NativeLibrary, PythonPackage
from slm_policy.licenses import Report, Shipped
from slm_policy.policy_file import normalise_name


def _licenses(expression: str | None) -> list[dict[str, Any]]:
    return [{"expression": expression}] if expression else []


def _named(licenses: str) -> list[dict[str, Any]]:
    """Debian's short license names, recorded as they are written (not SPDX)."""
    return [{"license": {"name": name}} for name in licenses.split("; ") if name]


def _files(paths: list[str]) -> list[dict[str, str]]:
    return [{"name": "service-slm:file", "value": path} for path in paths]


def cyclonedx(report: Report, packages: list[PythonPackage], libs: list[NativeLibrary],
              models: list[Model], *, product: str, version: str,
              shipped: Shipped | None = None) -> dict[str, Any]:
    """The SBOM document; licenses are the gate's resolved expressions."""
    expr = {(v.kind, v.name): v.expression for v in report.verdicts}
    files_of: dict[str, list[str]] = {}
    if shipped is not None and shipped.tree is not None:
        for f in shipped.tree.files:
            files_of.setdefault(f"{f.origin}:{normalise_name(f.owner)}", []).append(f.path)
    components: list[dict[str, Any]] = []
    for p in packages:
        purl = f"pkg:pypi/{normalise_name(p.name)}@{p.version}"
        entry = {"type": "library", "bom-ref": purl, "name": p.name, "version": p.version,
                 "purl": purl, "licenses": _licenses(expr.get(("python", p.name)))}
        if files := files_of.get(f"python:{normalise_name(p.name)}"):
            entry["properties"] = _files(files)
        components.append(entry)
    for lib in libs:
        ref = f"native:{lib.path}"
        components.append({"type": "library", "bom-ref": ref, "name": lib.path.split("/")[-1],
                           "version": lib.version,
                           "description": f"native library bundled by {lib.package}",
                           "licenses": _licenses(expr.get(("native", lib.path)))})
    for m in models:
        name = m.name or m.path.name
        components.append({"type": "machine-learning-model", "bom-ref": f"model:{m.sha256}",
                           "name": name, "version": m.sha256[:12],
                           "hashes": [{"alg": "SHA-256", "content": m.sha256}],
                           "licenses": _licenses(expr.get(("model", name)))})
    if shipped is not None:
        components += _shipped_components(report, shipped, files_of)
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "slm-gate"}]},
            "component": {"type": "application", "bom-ref": product, "name": product,
                          "version": version},
        },
        "components": components,
    }


def _shipped_components(report: Report, shipped: Shipped,
                        files_of: dict[str, list[str]]) -> list[dict[str, Any]]:
    verdicts = {(v.kind, v.name): v for v in report.verdicts}
    out: list[dict[str, Any]] = []
    if shipped.tree is not None:
        tree = shipped.tree
        out.append({"type": "framework", "bom-ref": "runtime:cpython", "name": "CPython",
                    "version": tree.python_version,
                    "purl": f"pkg:generic/cpython@{tree.python_version}",
                    "licenses": _licenses("PSF-2.0"),
                    "properties": _files(["slm.bin", *files_of.get("cpython:cpython", [])])})
        out.append({"type": "framework", "bom-ref": "runtime:nuitka", "name": "Nuitka runtime",
                    "version": shipped.nuitka_version,
                    "purl": f"pkg:pypi/nuitka@{shipped.nuitka_version}",
                    "licenses": _licenses("Apache-2.0"), "properties": _files(["slm.bin"])})
        for name in sorted({f.owner for f in tree.files if f.origin == "debian"}):
            package = shipped.build_packages.get(name)
            if package is None:
                continue
            paths = files_of.get(f"debian:{normalise_name(name)}", [])
            verdict = next((v for (kind, vname), v in verdicts.items()
                            if kind == "tree" and vname.endswith(f"(Debian {name})")), None)
            out.append({"type": "library", "bom-ref": f"tree:{package.purl}", "name": name,
                        "version": package.version, "purl": package.purl,
                        "description": "native library copied into the binary's tree",
                        "licenses": _licenses(verdict.expression if verdict else None),
                        "properties": _files(paths)})
    if shipped.go is not None:
        go = shipped.go
        deps = [{"type": "library", "bom-ref": m.purl, "name": m.path, "version": m.version,
                 "purl": m.purl, "licenses": _licenses(
                     getattr(verdicts.get(("go", m.path)), "expression", None))}
                for m in go.deps]
        deps.append({"type": "library", "bom-ref": f"pkg:golang/std@{go.go_version}",
                     "name": "Go standard library", "version": go.go_version,
                     "purl": f"pkg:golang/std@{go.go_version}",
                     "licenses": _licenses(getattr(verdicts.get(
                         ("runtime", "Go runtime and standard library")), "expression", None))})
        out.append({"type": "application", "bom-ref": go.main.purl, "name": "litestream",
                    "version": go.main.version, "purl": go.main.purl,
                    "licenses": _licenses(getattr(verdicts.get(("go", go.main.path)),
                                                  "expression", None)),
                    "properties": _files(["litestream"]), "components": deps})
    for package in shipped.os_packages:
        verdict = verdicts.get(("os", package.name))
        out.append({"type": "library", "bom-ref": f"os:{package.purl}", "name": package.name,
                    "version": package.version, "purl": package.purl,
                    "description": "Debian package of the appliance image (separate program)",
                    "licenses": _named(verdict.reported if verdict else "")})
    return out
