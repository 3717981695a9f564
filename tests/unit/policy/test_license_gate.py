"""The license gate on real environments: wheels built here, installed by pip into fresh
venvs, judged through pip-licenses by `slm-gate licenses`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.license_env import Env as _Env
from support.tiny_model import write_tiny_model

GATE = [sys.executable, "-m", "slm_policy.cli", "licenses"]

POLICY = """
[allow]
"MIT" = "permissive"
"Apache-2.0" = "permissive"
"BSD-3-Clause" = "permissive"

[classifiers]
"MIT License" = "MIT"
"Apache Software License" = "Apache-2.0"
"BSD License" = ""
"GNU General Public License v3 (GPLv3)" = "GPL-3.0-only"
"GNU Affero General Public License v3" = "AGPL-3.0-only"

[models]
"apache-2.0" = "Apache-2.0"
"""

class Env(_Env):
    def __init__(self, root: Path) -> None:
        super().__init__(root, POLICY)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    e = Env(tmp_path)
    e.install("clean-mit", expression="MIT")
    e.install("clean-apache", classifiers=("Apache Software License",))
    e.install("dual", expression="MIT OR GPL-3.0-only")
    return e


def denials(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if "DENY" in line]


def test_clean_set_passes_with_report_and_sbom(env, tmp_path):
    report, sbom = tmp_path / "out" / "report.json", tmp_path / "out" / "sbom.json"
    r = env.gate("--json", str(report), "--sbom", str(sbom))
    assert r.returncode == 0, r.stderr
    assert "clean-mit" in r.stdout and "0 violation(s)" in r.stderr
    data = json.loads(report.read_text())
    assert data["ok"] and {c["name"] for c in data["components"]} >= {"clean-mit", "dual"}
    bom = json.loads(sbom.read_text())
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.5"
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(sbom.read_text()) is None
    purls = {c.get("purl") for c in bom["components"]}
    assert "pkg:pypi/clean-mit@1.0" in purls
    apache = next(c for c in bom["components"] if c["name"] == "clean-apache")
    assert apache["licenses"] == [{"expression": "Apache-2.0"}]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"expression": "GPL-3.0-only"}, "GPL-3.0-only not allowed"),
        ({"classifiers": ("GNU Affero General Public License v3",)}, "AGPL-3.0-only not allowed"),
        ({"expression": "MIT AND GPL-3.0-only"}, "GPL-3.0-only not allowed"),
        ({"classifiers": ("MIT License", "GNU General Public License v3 (GPLv3)")},
         "GPL-3.0-only not allowed"),
        ({"license_field": "Proprietary. All rights reserved by ACME."}, "free text or custom"),
        ({"license_field": "UNKNOWN"}, "unknown"),
        ({}, "unknown"),
        ({"classifiers": ("BSD License",)}, "ambiguous"),
        ({"expression": "GPL-2.0-only WITH Classpath-exception-2.0"},
         "GPL-2.0-only WITH Classpath-exception-2.0 not allowed"),
    ],
    ids=["gpl", "agpl-classifier", "mit-and-gpl", "mit+gpl-classifiers", "free-text",
         "unknown-field", "no-license", "ambiguous-bsd", "with-not-listed"],
)
def test_each_bad_license_fails_with_its_reason(env, kw, message):
    env.install("bad-thing", "2.0", **kw)
    r = env.gate()
    assert r.returncode == 1
    lines = denials(r)
    assert len(lines) == 1 and "bad-thing==2.0" in lines[0], r.stderr
    assert message in lines[0]


def test_exception_applies_only_to_its_pinned_version(env):
    env.install("gpl-thing", "1.0", expression="GPL-3.0-only")
    base = env.policy.read_text()
    env.policy.write_text(base + '\n[[exception]]\npackage = "gpl_thing"\nversion = "2.0"\n'
                          'licenses = ["GPL-3.0-only"]\nreason = "reviewed for 2.0 only"\n')
    r = env.gate()
    assert r.returncode == 1 and "gpl-thing==1.0" in denials(r)[0]
    assert "stale exception: gpl-thing==2.0 (another version ships)" in r.stderr
    env.policy.write_text(base + '\n[[exception]]\npackage = "gpl-thing"\nversion = "1.0"\n'
                          'licenses = ["GPL-3.0-only"]\nreason = "reviewed"\n')
    r = env.gate()
    assert r.returncode == 0, r.stderr
    assert "allow (exception)" in r.stdout


def test_clarification_is_pinned_to_the_license_file(env):
    text = "Redistribution and use in source and binary forms ... Neither the name ..."
    env.install("vague", classifiers=("BSD License",), license_text=text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    clar = ('\n[[clarification]]\npackage = "vague"\nversion = "1.0"\nlicense = "BSD-3-Clause"\n'
            'license_file_sha256 = "{}"\nreason = "LICENSE is BSD 3-clause"\n')
    env.policy.write_text(POLICY + clar.format(digest))
    assert env.gate().returncode == 0
    env.policy.write_text(POLICY + clar.format("0" * 64))
    r = env.gate()
    assert r.returncode == 1 and "review it again" in denials(r)[0]


def test_bundled_native_libraries_are_judged_from_the_license_file(env):
    text = ("MIT License\n\n----\n\nName: GCC runtime library\nFiles: natty.libs/libgfortran*.so\n"
            "License: GPL-3.0-or-later WITH GCC-exception-3.1\n\n"
            "Name: libquadmath\nFiles: natty.libs/libquadmath*.so\nLicense: LGPL-2.1-or-later\n")
    env.policy.write_text(POLICY + '\n[[exception]]\npackage = "natty"\nversion = "1.0"\n'
                          'licenses = ["GPL-3.0-or-later WITH GCC-exception-3.1"]\n'
                          'reason = "GCC runtime library exception"\n')
    env.install("natty", expression="MIT", license_text=text, libs={
        "libgfortran-abc.so.5.0.0": b"\x7fELF", "libquadmath-def.so.0.0.0": b"\x7fELF",
        "libmystery-123.so": b"\x7fELF"})
    r = env.gate()
    lines = denials(r)
    assert r.returncode == 1 and len(lines) == 2
    assert any("libquadmath" in x and "LGPL-2.1-or-later not allowed" in x for x in lines)
    assert any("libmystery" in x and "names no license" in x for x in lines)
    assert "libgfortran-abc.so.5.0.0" in r.stdout


def test_models_are_judged_by_their_gguf_license(env, tmp_path):
    good = write_tiny_model(tmp_path / "good.gguf", license="apache-2.0")
    assert env.gate("--model", str(good)).returncode == 0
    gemma = write_tiny_model(tmp_path / "gemma.gguf", license="gemma")
    r = env.gate("--model", str(gemma))
    assert r.returncode == 1 and "model license 'gemma' is custom or unknown" in denials(r)[0]
    unlabelled = write_tiny_model(tmp_path / "none.gguf", license="")
    r = env.gate("--model", str(unlabelled))
    assert r.returncode == 1 and "no general.license" in denials(r)[0]


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ('[allow]\n"GPL-3.0-only" = "please"\n', "cannot be allowed globally"),
        ('[allow]\n"AGPL-3.0-only WITH Classpath-exception-2.0" = "x"\n', "cannot be allowed"),
        ("exception = 5\n", "malformed entry"),
        ('[allow]\n"NotALicense-9" = "x"\n', "Unknown license key"),
        ('[allow]\n"MIT" = ""\n', "needs a reason"),
        ("[allow\n", "cannot read the policy"),
        ('[bogus]\nx = "y"\n', "unknown section"),
        ('[[exception]]\npackage = "x"\n', "missing version"),
    ],
)
def test_broken_policy_exits_2(env, policy, message):
    env.policy.write_text(policy)
    r = env.gate()
    assert r.returncode == 2
    assert message in r.stderr and r.stderr.count("\n") == 1
