"""`just bench` (image part): per architecture built, what ships and how the booted
appliance behaves, against the envelope in policy/budget.toml (the anchor).

For each build/out/image/ARCH with a manifest: the one-file binary's size, the unpacked tree
the image runs (/usr/lib/slm/bin), the raw and zstd disk sizes against
`image_size_limit_mb`; then the image is booted in qemu from a throw-away overlay: boot to
SSH and to `/ready` 200, one short chat completion, and the Doorman's cgroup
`memory.peak` against `budget_mb`. Every VM figure is measured under TCG (software
emulation: no KVM here), so it is labelled so; on hardware boots and answers are many
times faster. Nothing is asserted. Skipped (with a line) when no image is built.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "image"))
from vm import ApplianceVM, VMError  # noqa: E402

MODEL_ID = "SmolLM2-135M-Instruct.Q4_1"
CGROUP = "/sys/fs/cgroup/system.slice/slm.service"


def _chat_seconds(vm: ApplianceVM) -> float:
    """One 4-token greedy chat completion through the forwarded port."""
    tls, key = vm.tls(), vm.admin_key()
    began = time.monotonic()
    response = httpx.post(vm.url + "/v1/chat/completions", timeout=900, verify=tls,
                          headers={"Authorization": f"Bearer {key}"}, json={
        "model": MODEL_ID, "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "Hi."}]})
    response.raise_for_status()
    return time.monotonic() - began


def _unpacked_bytes(vm: ApplianceVM) -> int:
    """Bytes of the unpacked binary tree in the image, each hard-linked file once."""
    out = vm.ssh("du -sb /usr/lib/slm/bin").stdout.split()[0]
    return int(out)


def bench_arch(arch: str, image_dir: Path) -> dict:
    manifest = json.loads((image_dir / "manifest.json").read_text())
    sizes = manifest["sizes"]
    figures: dict = {"arch": arch, "binary_bytes": manifest["binary"]["size"],
                     "raw_bytes": sizes["raw_bytes"], "zstd_bytes": sizes["compressed_bytes"]}
    with tempfile.TemporaryDirectory(prefix=f"bench-vm-{arch}-") as run_dir:
        vm = ApplianceVM(arch=arch, image_dir=image_dir, run_dir=Path(run_dir))
        vm.start(fresh=True)
        try:
            boot = vm.wait_clean_boot(1800)
            figures["ssh_s"], figures["ready_s"] = boot["ssh_s"], boot["ready_s"]
            figures["unpacked_bytes"] = _unpacked_bytes(vm)
            figures["chat_s"] = _chat_seconds(vm)
            figures["peak_bytes"] = int(vm.ssh(f"cat {CGROUP}/memory.peak").stdout)
        except VMError as exc:
            figures["error"] = str(exc).splitlines()[0]
        finally:
            vm.stop()
    return figures


def main() -> int:
    built = sorted(p.parent for p in (ROOT / "build/out/image").glob("*/manifest.json"))
    if not built:
        print("bench_image: no image built (`just image ARCH`); skipped")
        return 0
    policy = tomllib.loads((ROOT / "policy/budget.toml").read_text())
    limit = policy["image_size_limit_mb"] * 10**6
    budget = policy["budget_mb"] * 10**6
    print("appliance image per architecture (VM figures under TCG: software emulation)")
    print(f"  {'arch':6} {'binary MB':>9} {'unpacked MB':>11} {'raw MB':>7} {'zstd MB':>8} "
          f"{'SSH s':>6} {'/ready s':>8} {'chat s':>7} {'peak MB':>8}")
    for image_dir in built:
        f = bench_arch(image_dir.name, image_dir)
        if "error" in f:
            print(f"  {f['arch']:6} did not boot clean: {f['error']}")
            continue
        print(f"  {f['arch']:6} {f['binary_bytes'] / 1e6:9.1f} {f['unpacked_bytes'] / 1e6:11.1f} "
              f"{f['raw_bytes'] / 1e6:7.1f} {f['zstd_bytes'] / 1e6:8.1f} {f['ssh_s']:6.0f} "
              f"{f['ready_s']:8.0f} {f['chat_s']:7.1f} {f['peak_bytes'] / 1e6:8.1f}")
        print(f"  {'':6} against the policy: raw {f['raw_bytes'] / limit:.2f} and zstd "
              f"{f['zstd_bytes'] / limit:.2f} of image_size_limit_mb, memory.peak "
              f"{f['peak_bytes'] / budget:.2f} of budget_mb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
