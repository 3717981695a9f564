"""Real Python environments for the license gate's tests: wheels built here with the
given license metadata, installed by pip into a fresh venv, and the gate run over it."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

GATE = [sys.executable, "-m", "slm_policy.cli", "licenses"]

MIT_TEXT = "Permission is hereby granted, free of charge, to any person obtaining a copy..."


def build_wheel(out: Path, name: str, version: str, *, expression: str | None = None,
                classifiers: tuple[str, ...] = (), license_field: str | None = None,
                license_text: str | None = MIT_TEXT, libs: dict[str, bytes] | None = None
                ) -> Path:
    """A real wheel with the given license metadata (and optional bundled .so files)."""
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    meta = ["Metadata-Version: 2.4", f"Name: {name}", f"Version: {version}"]
    if expression:
        meta.append(f"License-Expression: {expression}")
    if license_field:
        meta.append(f"License: {license_field}")
    meta += [f"Classifier: License :: OSI Approved :: {c}" for c in classifiers]
    files = {f"{module}/__init__.py": b"", f"{dist_info}/WHEEL":
             b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    if license_text is not None:
        meta.append("License-File: LICENSE")
        files[f"{dist_info}/licenses/LICENSE"] = license_text.encode()
    for lib, data in (libs or {}).items():
        files[f"{module}.libs/{lib}"] = data
    files[f"{dist_info}/METADATA"] = ("\n".join(meta) + "\n").encode()
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = out / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


class Env:
    """A fresh venv and a policy file; install wheels, run the gate."""

    def __init__(self, root: Path, policy: str) -> None:
        self.root = root
        self.wheels = root / "wheels"
        self.wheels.mkdir()
        venv.create(root / "venv", with_pip=False)
        self.python = str(root / "venv" / "bin" / "python")
        self.policy = root / "licenses.toml"
        self.policy.write_text(policy)

    def install(self, name: str, version: str = "1.0", **kw) -> None:
        wheel = build_wheel(self.wheels, name, version, **kw)
        subprocess.run([sys.executable, "-m", "pip", "--python", self.python, "install", "-q",
                        "--no-index", "--no-deps", str(wheel)], check=True)

    def gate(self, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*GATE, "--python", self.python, "--policy", str(self.policy),
                               *extra], capture_output=True, text=True)
