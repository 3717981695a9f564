"""The image-size gate: the appliance image (raw and compressed, model included) against
``image_size_limit_mb`` in ``policy/budget.toml``, with a breakdown of what takes the room."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slm_policy.budget import Budget
from slm_policy.errors import ImageManifestError


def load_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
        manifest["sizes"]["raw_bytes"], manifest["sizes"]["compressed_bytes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageManifestError(f"{path}: not an image manifest ({exc})") from None
    return manifest


def check(manifest: dict[str, Any], budget: Budget) -> tuple[list[str], list[str]]:
    """Returns (report lines, failures): each size against the limit, then the largest
    contents of the root file system."""
    limit = budget.image_size_limit_mb * 1e6
    sizes = manifest["sizes"]
    lines = [f"image {manifest.get('arch', '?')}: limit {budget.image_size_limit_mb:g} MB "
             "(raw disk and compressed disk, model included)"]
    failures = []
    for label, key in (("raw disk", "raw_bytes"), ("compressed (zstd)", "compressed_bytes")):
        size = sizes[key]
        verdict = "ok" if size <= limit else "OVER"
        lines.append(f"  {label:<18} {size / 1e6:8.1f} MB  {size / limit:6.1%}  {verdict}")
        if size > limit:
            failures.append(f"image-gate: FAIL {label} {size / 1e6:.1f} MB over "
                            f"{budget.image_size_limit_mb:g} MB")
    for label, key in (("root squashfs", "root_squashfs_bytes"), ("state ext4", "state_bytes"),
                       ("kernel", "kernel_bytes"), ("initrd", "initrd_bytes")):
        if key in sizes:
            lines.append(f"  {label:<18} {sizes[key] / 1e6:8.1f} MB")
    model = manifest.get("model", {})
    if model:
        lines.append(f"  {'model':<18} {model['size'] / 1e6:8.1f} MB  {model['path']}")
    lines.append("largest contents of the root file system (uncompressed):")
    for item in manifest.get("largest", [])[:12]:
        lines.append(f"  {item['bytes'] / 1e6:8.1f} MB  {item['path']}")
    return lines, failures
