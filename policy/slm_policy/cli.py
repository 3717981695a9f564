"""``slm-gate licenses``: the license gate over an environment and its models.

Exit codes: 0 every component allowed, 1 any violation, 2 broken policy or an environment
that cannot be inspected. One line per violation on stderr; the table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slm_policy.inventory import (
    InventoryError,
    native_libraries,
    python_packages,
    shipped_models,
)
from slm_policy.licenses import Report, evaluate
from slm_policy.policy_file import PolicyError, load_policy
from slm_policy.sbom import cyclonedx

DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "licenses.toml"


def _table(report: Report) -> str:
    rows = [("kind", "component", "version", "license", "verdict")]
    for v in report.verdicts:
        rows.append((v.kind, v.name, v.version, v.expression or v.reported or "?",
                     "allow" + (" (exception)" if v.note.startswith("exception") else "")
                     if v.allowed else "DENY"))
    widths = [min(max(len(r[i]) for r in rows), 60) for i in range(5)]
    return "\n".join("  ".join(c[:60].ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _write(path: Path, data: dict) -> None:
    """Write JSON atomically: no half-written report is ever left in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slm-gate", description="service-slm release gates")
    sub = parser.add_subparsers(dest="gate", required=True)
    lic = sub.add_parser("licenses", help="judge the licenses of what ships")
    lic.add_argument("--python", default=sys.executable,
                     help="interpreter of the environment that ships (default: this one)")
    lic.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
    lic.add_argument("--model", type=Path, action="append", default=[],
                     help="a GGUF model that ships outside the environment (repeatable)")
    lic.add_argument("--json", type=Path, help="write the JSON report here")
    lic.add_argument("--sbom", type=Path, help="write a CycloneDX SBOM here")
    lic.add_argument("--product-version", default="0.0.0")
    args = parser.parse_args(argv)
    try:
        policy = load_policy(args.policy)
        packages = python_packages(args.python)
        libs = native_libraries(args.python, packages)
        models = shipped_models(args.python, args.model)
    except (PolicyError, InventoryError) as exc:
        print(f"slm-gate: error: {exc}", file=sys.stderr)
        return 2
    report = evaluate(policy, packages, libs, models)
    print(_table(report))
    for warning in report.warnings:
        print(f"license-gate: warning: {warning}", file=sys.stderr)
    for verdict in report.violations:
        print(verdict.line(), file=sys.stderr)
    if args.json:
        _write(args.json, report.to_json())
    if args.sbom:
        _write(args.sbom, cyclonedx(report, packages, libs, models, product="service-slm",
                                    version=args.product_version))
    n = len(report.violations)
    print(f"license-gate: {len(report.verdicts)} components, {n} violation(s)",
          file=sys.stderr)
    return 1 if n else 0


if __name__ == "__main__":
    raise SystemExit(main())
