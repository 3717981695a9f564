"""A CycloneDX 1.5 JSON SBOM of what ships, built from the gate's own inventory."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from slm_policy.inventory import Model, NativeLibrary, PythonPackage
from slm_policy.licenses import Report
from slm_policy.policy_file import normalise_name


def _licenses(expression: str | None) -> list[dict[str, Any]]:
    return [{"expression": expression}] if expression else []


def cyclonedx(report: Report, packages: list[PythonPackage], libs: list[NativeLibrary],
              models: list[Model], *, product: str, version: str) -> dict[str, Any]:
    """The SBOM document; licenses are the gate's resolved expressions."""
    expr = {(v.kind, v.name): v.expression for v in report.verdicts}
    components: list[dict[str, Any]] = []
    for p in packages:
        purl = f"pkg:pypi/{normalise_name(p.name)}@{p.version}"
        components.append({"type": "library", "bom-ref": purl, "name": p.name,
                           "version": p.version, "purl": purl,
                           "licenses": _licenses(expr.get(("python", p.name)))})
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
