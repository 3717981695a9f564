#!/usr/bin/env python3
"""Boot the appliance image in qemu and check that it came up clean: ``just boot ARCH``.

The VM runs under TCG (KVM guests hang on our machines) from a copy-on-write overlay of
``build/out/image/ARCH/disk.raw``, so the built image is never changed; its state
partition persists across reboots of the same VM. User networking is restricted (the
guest reaches nothing outside) and forwards only loopback ports: SSH and the Doorman.

    image/vm.py boot ARCH    start, wait for the boots-clean gate, leave it running
    image/vm.py ssh ARCH CMD run a command in the running VM
    image/vm.py stop ARCH    power it off
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUEST_HTTPS_PORT = 8443  # image/overlay/etc/slm/slm.toml (plain HTTP only on the guest's loopback)
DEVICE_CERT = "/var/lib/slm-appliance/tls/device.crt"  # made at first boot
ADMIN_KEY = "/var/lib/slm-appliance/admin-api-key"  # the first API key, root only
QEMU = {
    "amd64": ["qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-cpu", "max"],
    "arm64": ["qemu-system-aarch64", "-M", "virt", "-accel", "tcg",
              "-cpu", "max,pauth-impdef=on"],
}


class VMError(Exception):
    """The VM did not start, boot or answer; the message says which and why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ApplianceVM:
    """One qemu VM of the appliance image, described by files in ``run_dir``."""

    arch: str
    image_dir: Path
    run_dir: Path
    memory_mb: int = 1024
    cpus: int = 2
    boot_figures: dict | None = None  # what wait_clean_boot measured last

    @property
    def key(self) -> Path:
        return self.image_dir / "ssh/id_ed25519"

    def _state(self) -> dict:
        try:
            return json.loads((self.run_dir / "vm.json").read_text())
        except (OSError, ValueError):
            return {}

    @property
    def ssh_port(self) -> int:
        return int(self._state()["ssh_port"])

    @property
    def http_port(self) -> int:
        return int(self._state()["http_port"])

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    def tls(self) -> ssl.SSLContext:
        """A client context that trusts the device's certificate (read over SSH, once per
        VM: it lives on the state partition) and nothing else."""
        cert = self.run_dir / "device.crt"
        if not cert.is_file():
            cert.write_text(self.ssh(f"cat {DEVICE_CERT}").stdout)
        return ssl.create_default_context(cafile=str(cert))

    def admin_key(self) -> str:
        """The admin API key first boot made, as an operator reads it (root, over SSH)."""
        return self.ssh(f"cat {ADMIN_KEY}").stdout.strip()

    def running(self) -> bool:
        pid = self._state().get("pid")
        if not pid:
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        return True

    def start(self, fresh: bool = True) -> None:
        """Start qemu in the background (a new overlay unless ``fresh`` is false)."""
        if self.running():
            raise VMError(f"a VM is already running from {self.run_dir}; stop it first")
        disk = self.image_dir / "disk.raw"
        if not disk.is_file():
            raise VMError(f"{disk} not found: run just image {self.arch}")
        if shutil.which(QEMU[self.arch][0]) is None or shutil.which("qemu-img") is None:
            pkg = "qemu-system-x86" if self.arch == "amd64" else "qemu-system-arm"
            subprocess.run([str(ROOT / "build/apt-install.sh"), pkg, "qemu-utils"], check=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        overlay = self.run_dir / "overlay.qcow2"
        if fresh or not overlay.exists():
            overlay.unlink(missing_ok=True)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                            str(disk), str(overlay)], check=True)
        ssh_port, http_port = _free_port(), _free_port()
        console = self.run_dir / "console.log"
        pidfile = self.run_dir / "qemu.pid"
        pidfile.unlink(missing_ok=True)
        cmd = [*QEMU[self.arch], "-smp", str(self.cpus), "-m", str(self.memory_mb),
               "-kernel", str(self.image_dir / "vmlinuz"),
               "-initrd", str(self.image_dir / "initrd.img"),
               "-append", (self.image_dir / "cmdline").read_text().strip(),
               "-drive", f"file={overlay},format=qcow2,if=virtio",
               "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:22,"
                          f"hostfwd=tcp:127.0.0.1:{http_port}-:{GUEST_HTTPS_PORT}",
               "-device", "virtio-net-pci,netdev=n0",
               "-display", "none", "-serial", f"file:{console}",
               "-daemonize", "-pidfile", str(pidfile)]
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise VMError(f"qemu failed to start: {done.stderr.strip()[-300:]}")
        state = {"pid": int(pidfile.read_text()), "ssh_port": ssh_port,
                 "http_port": http_port, "started": time.time(), "arch": self.arch}
        (self.run_dir / "vm.json").write_text(json.dumps(state))
        self._write_ssh_config()

    @property
    def ssh_config(self) -> Path:
        """This VM's ssh_config (written by ``start``), used here and by testinfra."""
        return self.run_dir / "ssh_config"

    def _write_ssh_config(self) -> None:
        """Key only, no host-key pinning (a new host key per image), one shared master
        connection."""
        self.ssh_config.write_text(
            "Host *\n"
            f"  IdentityFile {self.key}\n"
            "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
            "  BatchMode yes\n  ConnectTimeout 10\n  ControlMaster auto\n"
            f"  ControlPath {self.run_dir}/ssh-%C\n  ControlPersist 120\n")

    def ssh_command(self, command: str) -> list[str]:
        """The ssh invocation that runs ``command`` as root in the VM."""
        return ["ssh", "-F", str(self.ssh_config), "-p", str(self.ssh_port),
                "root@127.0.0.1", command]

    def ssh(self, command: str, timeout: float = 120, check: bool = True
            ) -> subprocess.CompletedProcess:
        done = subprocess.run(self.ssh_command(command), capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise VMError(f"in the VM, {command!r} exited {done.returncode}: "
                          f"{(done.stderr or done.stdout).strip()[-400:]}")
        return done

    def wait_ssh(self, timeout: float) -> float:
        """Wait until sshd answers a command; returns the seconds waited."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if not self.running():
                raise VMError(f"qemu exited; see {self.run_dir / 'console.log'}")
            try:
                if self.ssh("true", timeout=20, check=False).returncode == 0:
                    return time.monotonic() - began
            except subprocess.TimeoutExpired:
                pass
            time.sleep(2)
        raise VMError(f"no SSH after {timeout:.0f} s; see {self.run_dir / 'console.log'}")

    def get(self, path: str, timeout: float = 10) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout,
                                        context=self.tls()) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_clean_boot(self, timeout: float = 900) -> dict:
        """The boots-clean gate: start-up finished with no failed unit and the Doorman
        answers ``/ready`` 200 over HTTPS (its device certificate trusted) through the
        forwarded port. Returns measured seconds."""
        t0 = self._state()["started"]
        ssh_s = self.wait_ssh(timeout)
        ssh_at = time.time() - t0
        remaining = max(30.0, timeout - ssh_at)
        state = self.ssh("systemctl is-system-running --wait", timeout=remaining,
                         check=False).stdout.strip()
        failed = self.ssh("systemctl --failed --no-legend --plain").stdout.strip()
        if state != "running" or failed:
            journal = self.ssh("journalctl -b -p warning --no-pager | tail -n 40",
                               check=False).stdout
            raise VMError(f"boot not clean: system {state!r}, failed units: "
                          f"{failed or 'none'}\n{journal}")
        status, body = self.get("/ready")
        if status != 200:
            raise VMError(f"/ready answered {status}: {body[:200]!r}")
        ready_at = time.time() - t0
        boot_check = self.ssh("cat /var/lib/slm-appliance/boot-check").stdout.strip()
        self.boot_figures = {"ssh_s": round(ssh_at, 1), "ready_s": round(ready_at, 1),
                             "waited_for_ssh_s": round(ssh_s, 1), "boot_check": boot_check}
        return self.boot_figures

    def reboot(self, timeout: float = 900) -> dict:
        """Reboot the guest (qemu restarts it on the same disk) and wait for a clean boot
        of the *new* system (its boot id differs: the old sshd may still answer)."""
        boot_id = "cat /proc/sys/kernel/random/boot_id"
        old = self.ssh(boot_id).stdout.strip()
        self.ssh("systemctl reboot", check=False, timeout=30)
        state = self._state()
        state["started"] = time.time()
        (self.run_dir / "vm.json").write_text(json.dumps(state))
        began = time.monotonic()
        while True:
            subprocess.run(["ssh", "-F", str(self.ssh_config), "-O", "exit",
                            "-p", str(self.ssh_port), "root@127.0.0.1"], capture_output=True)
            time.sleep(3)
            self.wait_ssh(max(30.0, timeout - (time.monotonic() - began)))
            if self.ssh(boot_id, check=False).stdout.strip() not in ("", old):
                break
        return self.wait_clean_boot(timeout)

    def stop(self) -> None:
        """Power the VM off (SIGTERM to qemu; SIGKILL after 20 s)."""
        pid = self._state().get("pid")
        if not pid or not self.running():
            return
        os.kill(int(pid), signal.SIGTERM)
        for _ in range(200):
            if not self.running():
                return
            time.sleep(0.1)
        os.kill(int(pid), signal.SIGKILL)


def vm_for(arch: str) -> ApplianceVM:
    image_dir = ROOT / "build/out/image" / arch
    return ApplianceVM(arch=arch, image_dir=image_dir, run_dir=image_dir / "run")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="image/vm.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    boot = sub.add_parser("boot", help="start the VM and wait for a clean boot")
    boot.add_argument("arch", choices=sorted(QEMU))
    boot.add_argument("--timeout", type=float, default=900)
    run = sub.add_parser("ssh", help="run a command in the running VM")
    run.add_argument("arch", choices=sorted(QEMU))
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    stop = sub.add_parser("stop", help="power the VM off")
    stop.add_argument("arch", choices=sorted(QEMU))
    args = parser.parse_args(argv)
    vm = vm_for(args.arch)
    try:
        if args.command == "stop":
            vm.stop()
            return 0
        if args.command == "ssh":
            return subprocess.run(vm.ssh_command(shlex.join(args.cmd))).returncode
        vm.start()
        try:
            figures = vm.wait_clean_boot(args.timeout)
        except BaseException:
            vm.stop()
            raise
    except (VMError, subprocess.TimeoutExpired) as exc:
        print(f"boot: {exc}", file=sys.stderr)
        return 1
    print(f"boot {args.arch}: clean; SSH after {figures['ssh_s']} s, /ready 200 after "
          f"{figures['ready_s']} s (TCG)\n  {figures['boot_check']}\n"
          f"  Doorman: {vm.url}   ssh: image/vm.py ssh {args.arch} CMD   "
          f"stop: image/vm.py stop {args.arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
