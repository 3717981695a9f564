"""`slm-gate image`: the appliance image's raw and compressed size against the limit in
the budget policy, with a breakdown; bad manifests and policies exit 2 with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

GATE = [sys.executable, "-m", "slm_policy.cli", "image"]
MB = 10**6


def _policy(tmp_path: Path, limit_mb: float = 550) -> Path:
    path = tmp_path / "budget.toml"
    path.write_text(f"budget_mb = 550\n"
                    f"image_size_limit_mb = {limit_mb}\nprediction_tolerance = 0.1\n")
    return path


def _manifest(tmp_path: Path, raw_mb: float, compressed_mb: float) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({
        "arch": "amd64",
        "sizes": {"raw_bytes": int(raw_mb * MB), "compressed_bytes": int(compressed_mb * MB),
                  "root_squashfs_bytes": int(compressed_mb * MB)},
        "model": {"path": "/usr/lib/slm/share/slm/m.gguf", "size": 98 * MB},
        "largest": [{"path": "/usr/lib/slm/bin", "bytes": 160 * MB},
                    {"path": "/usr/lib/modules", "bytes": 84 * MB}],
    }))
    return path


def _gate(*args: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*GATE, str(args[0]), "--policy", str(args[1])],
                          capture_output=True, text=True, timeout=60)


def test_an_image_within_the_limit_passes_with_its_breakdown(tmp_path):
    done = _gate(_manifest(tmp_path, 435.2, 230.8), _policy(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "raw disk" in done.stdout and "435.2 MB" in done.stdout
    assert "/usr/lib/slm/bin" in done.stdout and "160.0 MB" in done.stdout
    assert "FAIL" not in done.stderr


@pytest.mark.parametrize(("raw", "compressed", "failing"), [
    (551.0, 230.0, "raw disk 551.0 MB"),
    (900.0, 550.5, "compressed (zstd) 550.5 MB"),
])
def test_an_image_over_the_limit_fails_naming_the_size(tmp_path, raw, compressed, failing):
    done = _gate(_manifest(tmp_path, raw, compressed), _policy(tmp_path))
    assert done.returncode == 1
    assert f"image-gate: FAIL {failing} over 550 MB" in done.stderr


def test_the_limit_comes_from_the_policy(tmp_path):
    assert _gate(_manifest(tmp_path, 435.2, 230.8), _policy(tmp_path, 400)).returncode == 1


@pytest.mark.parametrize("content", ["not json", json.dumps({"sizes": {"raw_bytes": 1}}), "[]"])
def test_a_broken_manifest_is_one_line_and_exit_2(tmp_path, content):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(content)
    done = _gate(manifest, _policy(tmp_path))
    assert done.returncode == 2
    assert done.stderr.startswith("slm-gate: error:") and done.stderr.count("\n") == 1


def test_a_missing_manifest_is_exit_2(tmp_path):
    done = _gate(tmp_path / "none.json", _policy(tmp_path))
    assert done.returncode == 2 and "not an image manifest" in done.stderr
