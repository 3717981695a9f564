#!/usr/bin/env python3
"""Build the service-slm appliance image for one architecture: ``just image ARCH``.

Reads ``image/recipe.toml`` and writes ``build/out/image/ARCH/``:

- ``disk.raw``           GPT disk: read-only squashfs root (``slm-root``) + ext4 ``/var``
                         (``slm-state``); ``disk.raw.zst`` is the compressed form
- ``vmlinuz``, ``initrd.img``, ``cmdline``   for direct kernel boot (``image/vm.py``)
- ``manifest.json``      sizes, sha256s, the Debian package list with versions and
                         copyright files, the largest contents
- ``sbom.cdx.json``      the CycloneDX SBOM of every shipped file's component (the license
                         gate's, ``licenses.json`` its report): the build fails on a denied
                         component
- ``ssh/id_ed25519``     a development key, when no authorized_keys file was given

Only signed inputs go in (``image/payload_signing.py``): the binary and the model must
verify against the pinned trust root, and the image carries what the appliance needs to
check them again at every start. Run it through ``build/with-sigstore.sh`` (``just image``).

Runs as root (mmdebstrap, file ownership); needs mmdebstrap, squashfs-tools, fdisk,
e2fsprogs, zstd, and qemu-user-static for a foreign architecture (installed when missing).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from pathlib import Path

from image_errors import ImageBuildError, SigningSetupError
from payload_signing import ImageSigning
from slm.model.file import sha256_of
from slm.model.signature import bundle_path_for
from slm_policy.release import ReleaseError, identity_of_binary

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SRC = ROOT / "image"
ARCHES = ("amd64", "arm64")
# GPT partition types from the Discoverable Partitions Specification
ROOT_TYPE = {"amd64": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
             "arm64": "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"}
VAR_TYPE = "4D21B016-B534-45C2-A9FB-5C16E091FD2D"
# fixed identifiers derived from a namespace: the same recipe gives the same disk
NAMESPACE = uuid.UUID("6f1c3a52-8d0e-4f7a-9a51-5c0d5e1a7b11")
TOOLS = {"mmdebstrap": "mmdebstrap", "mksquashfs": "squashfs-tools", "sfdisk": "fdisk",
         "mkfs.ext4": "e2fsprogs", "zstd": "zstd", "ssh-keygen": "openssh-client"}
PAYLOAD = "/usr/lib/slm"  # the unpacked binary (bin/) and the default model (share/slm/)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd)[:300], file=sys.stderr, flush=True)
    try:
        return subprocess.run(cmd, check=True, **kw)
    except subprocess.CalledProcessError as exc:
        raise ImageBuildError(f"{cmd[0]} failed with exit code {exc.returncode}") from None


def _ensure_tools(arch: str) -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        _run([str(ROOT / "build/apt-install.sh"), *missing])
    if arch != _host_arch():  # mmdebstrap and the binary's unpacking run ARCH code
        _run([str(ROOT / "build/ensure-binfmt.sh"), _qemu_arch(arch)])


def _host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _qemu_arch(arch: str) -> str:
    return {"amd64": "x86_64", "arm64": "aarch64"}[arch]


def load_recipe(path: Path = IMAGE_SRC / "recipe.toml") -> dict:
    """The image recipe, with the keys the build needs checked."""
    try:
        recipe = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ImageBuildError(f"{path}: {exc}") from None
    for key in ("suite", "packages", "kernel", "console", "units", "enable",
                "state_partition_mb", "root_compression"):
        if key not in recipe:
            raise ImageBuildError(f"{path}: missing key {key!r}")
    return recipe


def unpack_binary(onefile: Path, dest: Path, rootfs: Path) -> None:
    """Unpack the one-file binary's payload (its cached-extraction mode) into ``dest``:
    the appliance runs ``slm.bin`` from a read-only tree, with nothing unpacked at start.
    It runs against the image's own libraries (``rootfs``; under qemu-user when foreign)."""
    with tempfile.TemporaryDirectory(prefix="slm-unpack-") as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache, "QEMU_LD_PREFIX": str(rootfs)}
        _run([str(onefile), "--version"], env=env, stdout=subprocess.DEVNULL)
        unpacked = [p for p in Path(cache, "slm").iterdir() if (p / "slm.bin").is_file()]
        if len(unpacked) != 1:
            raise ImageBuildError(f"{onefile}: no unpacked slm.bin found")
        shutil.copytree(unpacked[0], dest, symlinks=True)
    # the extraction is private (0700); the installed tree is root-owned and world-readable
    for path in [dest, *dest.rglob("*")]:
        if not path.is_symlink():
            executable = path.is_dir() or path.stat().st_mode & 0o100
            path.chmod(0o755 if executable else 0o644)
    saved = _hardlink_duplicates(dest)
    print(f"image: unpacked {onefile.name}; identical files hard-linked, "
          f"{saved / 1e6:.1f} MB saved", file=sys.stderr)


def _hardlink_duplicates(tree: Path) -> int:
    """Replace identical files (the one-file payload copies each .so symlink) by hard
    links; returns the bytes saved."""
    seen: dict[tuple[int, str], Path] = {}
    saved = 0
    for path in sorted(tree.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        key = (path.stat().st_size, sha256_of(path))
        if key in seen:
            path.unlink()
            os.link(seen[key], path)
            saved += key[0]
        else:
            seen[key] = path
    return saved


def _mmdebstrap_command(recipe: dict, arch: str, rootfs: Path) -> list[str]:
    packages = [*recipe["packages"], recipe["kernel"][arch]]
    cmd = ["mmdebstrap", f"--arch={arch}", "--variant=apt", "--format=directory",
           f"--include={','.join(packages)}"]
    for pattern in recipe.get("path_exclude", []):
        cmd.append(f"--dpkgopt=path-exclude={pattern}")
    for pattern in recipe.get("path_include", []):
        cmd.append(f"--dpkgopt=path-include={pattern}")
    # a small initramfs: must be in place before the kernel package triggers update-initramfs
    initramfs = IMAGE_SRC / "initramfs"
    cmd += ['--setup-hook=mkdir -p "$1/etc/initramfs-tools/conf.d" '
            '"$1/etc/initramfs-tools/hooks"',
            f"--setup-hook=copy-in {initramfs}/slm-modules.conf /etc/initramfs-tools/conf.d/",
            f"--setup-hook=copy-in {initramfs}/slm-modules /etc/initramfs-tools/hooks/"]
    cmd += [recipe["suite"], str(rootfs)]
    if recipe.get("mirror"):
        cmd.append(recipe["mirror"])
    return cmd


def base_rootfs(recipe: dict, arch: str, out_dir: Path, epoch: int) -> Path:
    """The Debian root file system of the recipe (mmdebstrap), before the payload and the
    customisation: ``out_dir/rootfs-base``, built once per mmdebstrap command, initramfs
    files and ``SOURCE_DATE_EPOCH`` and reused while those stay the same. Under arm64
    emulation it is most of an image build, so it can be made while other steps run
    (``image/build.py ARCH --prepare``). Needs the build tools (``_ensure_tools``). Callers
    copy it; it is never changed in place."""
    base = out_dir / "rootfs-base"
    key_file = out_dir / "rootfs-base.key"
    hasher = hashlib.sha256()
    hasher.update(json.dumps([_mmdebstrap_command(recipe, arch, Path("ROOTFS")), epoch])
                  .encode())
    for path in sorted((IMAGE_SRC / "initramfs").iterdir()):
        hasher.update(path.name.encode() + b"\0" + path.read_bytes())
    key = hasher.hexdigest()
    if base.is_dir() and key_file.is_file() and key_file.read_text().strip() == key:
        print(f"image: {base} is up to date", file=sys.stderr)
        return base
    key_file.unlink(missing_ok=True)
    shutil.rmtree(base, ignore_errors=True)
    partial = out_dir / "rootfs-base.partial"
    shutil.rmtree(partial, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    _run(_mmdebstrap_command(recipe, arch, partial),
         env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})
    partial.rename(base)
    key_file.write_text(key + "\n")
    print(f"image: {arch} root file system made in {time.monotonic() - began:.0f} s",
          file=sys.stderr)
    return base


def _install_payload(rootfs: Path, payload: Path, model: Path, binary_manifest: dict) -> dict:
    dest = rootfs / PAYLOAD.lstrip("/")
    shutil.copytree(payload, dest / "bin", symlinks=True)
    litestream = payload.parent / "litestream"
    if litestream.is_file():
        shutil.copy2(litestream, dest / "bin" / "litestream")
    (dest / "share/slm").mkdir(parents=True)
    shutil.copy2(model, dest / "share/slm" / model.name)
    model_sha = sha256_of(dest / "share/slm" / model.name)
    if model_sha != binary_manifest["model"]["sha256"]:
        raise ImageBuildError(f"{model}: sha256 {model_sha} differs from the binary "
                              f"manifest's {binary_manifest['model']['sha256']}")
    (rootfs / "usr/bin/slm").symlink_to(f"{PAYLOAD}/bin/slm.bin")
    return {"model": {"path": f"{PAYLOAD}/share/slm/{model.name}", "sha256": model_sha,
                      "size": model.stat().st_size},
            "binary": {"sha256": binary_manifest["sha256"], "size": binary_manifest["size"],
                       "python": binary_manifest["python"],
                       "nuitka": binary_manifest["nuitka"],
                       "machine": binary_manifest["machine"]}}


def _customize(recipe: dict, rootfs: Path, authorized_keys: Path) -> None:
    for pattern in recipe.get("remove", []):
        for path in glob.glob(str(rootfs) + pattern):
            p = Path(path)
            if p.is_symlink() or p.is_file():
                p.unlink()
            elif p.is_dir():
                shutil.rmtree(p)
    shutil.copytree(IMAGE_SRC / "overlay", rootfs, symlinks=True, dirs_exist_ok=True)
    units = rootfs / "usr/lib/systemd/system"
    for unit in recipe["units"]:
        shutil.copy2(IMAGE_SRC / "systemd" / unit, units / unit)
    (rootfs / "etc/hostname").write_text(recipe.get("hostname", "slm-appliance") + "\n")
    # empty: systemd makes a transient machine id at boot on the read-only root
    (rootfs / "etc/machine-id").write_text("")
    (rootfs / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    ssh = rootfs / "root/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    shutil.copyfile(authorized_keys, ssh / "authorized_keys")
    (ssh / "authorized_keys").chmod(0o600)
    _run(["systemctl", f"--root={rootfs}", "set-default", "multi-user.target"],
         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _run(["systemctl", f"--root={rootfs}", "enable", *recipe["enable"]],
         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclasses.dataclass(frozen=True)
class Provisioning:
    """Per-fleet state baked into the state partition, taken as SSH keys are: an API key
    store (made with ``slm keys --key-store FILE create ...``: it holds only hashes) and the
    Doorman's TLS certificate and key. First boot makes whatever is not provisioned."""

    key_store: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def check(self) -> None:
        """Refuse (ImageBuildError) a store `slm keys` cannot read, a certificate without
        its key, or a pair that does not load."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ImageBuildError("--tls-cert and --tls-key go together")
        if self.tls_cert and self.tls_key:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.tls_cert,
                                                                        self.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise ImageBuildError(f"--tls-cert {self.tls_cert} / --tls-key "
                                      f"{self.tls_key} do not load: {exc}") from None
        if self.key_store:
            listed = subprocess.run(
                [sys.executable, "-m", "slm", "keys", "--key-store", str(self.key_store),
                 "list", "--json"], capture_output=True, text=True)
            if listed.returncode != 0 or not self.key_store.is_file():
                raise ImageBuildError(f"--key-store {self.key_store} is not a key store: "
                                      f"{listed.stderr.strip() or 'no such file'}")
            if not any(k["revoked"] is None for k in json.loads(listed.stdout)):
                raise ImageBuildError(f"--key-store {self.key_store} has no active key")

    def install(self, var: Path) -> dict:
        """Copy what was given into the state partition's tree ``var``; returns what the
        manifest says of it."""
        if self.key_store:
            store = var / "lib/slm/keys.json"
            store.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.copyfile(self.key_store, store)
            store.chmod(0o600)
        if self.tls_cert and self.tls_key:
            tls = var / "lib/slm-appliance/tls"
            tls.mkdir(mode=0o700, parents=True, exist_ok=True)
            tls.parent.chmod(0o755)
            shutil.copyfile(self.tls_cert, tls / "device.crt")
            shutil.copyfile(self.tls_key, tls / "device.key")
            (tls / "device.crt").chmod(0o644)
            (tls / "device.key").chmod(0o600)
        return {"key_store": bool(self.key_store), "tls_certificate": bool(self.tls_cert)}


def _packages(rootfs: Path) -> list[dict]:
    out = subprocess.run(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W",
                          "-f", "${Package}\t${Version}\t${Architecture}\t${Installed-Size}\n"],
                         capture_output=True, text=True, check=True).stdout
    packages = []
    for line in sorted(out.splitlines()):
        name, version, arch, size = line.split("\t")
        copyright_file = rootfs / "usr/share/doc" / name / "copyright"
        packages.append({"name": name, "version": version, "arch": arch,
                         "installed_kb": int(size or 0),
                         "copyright": str(copyright_file.relative_to(rootfs))
                         if copyright_file.exists() else None})
    return packages


def _set_memory_baseline(rootfs: Path, binary_manifest: dict) -> float | None:
    """The planner's runtime baseline in the image's config: the one `just budget` measured
    for this binary (``runtime_baseline_mb`` of its manifest), when it was measured."""
    baseline = binary_manifest.get("runtime_baseline_mb")
    if baseline is None:
        print("image: the binary's runtime baseline was not measured (just budget); the "
              "service keeps its default memory.baseline_mb", file=sys.stderr)
        return None
    config = rootfs / "etc/slm/slm.toml"
    if "[memory]" in config.read_text():
        raise ImageBuildError(f"{config} already has a [memory] section; the build writes "
                              "its baseline_mb")
    config.write_text(config.read_text() + (
        "\n[memory]\n# the binary's runtime baseline, measured by `just budget` on this build\n"
        f"baseline_mb = {float(baseline)}\n"))
    return float(baseline)


def judge_licenses(arch: str, payload: Path, rootfs: Path, model: Path,
                   binary_manifest: dict, out_dir: Path) -> dict:
    """The license gate over what this image ships, file by file: the binary's unpacked
    tree (its native libraries judged by the Debian packages of the root it was built in),
    the OS libraries it links, Litestream's Go modules, the model and every Debian package
    of the image. Writes ``sbom.cdx.json`` and ``licenses.json``; a denied component stops
    the build, named with its file and package."""
    build_root = Path("/") if arch == _host_arch() else ROOT / f"build/out/{arch}/chroot"
    ship_python = ROOT / "build/out/ship-venv/bin/python"
    if not ship_python.exists():
        raise ImageBuildError(f"{ship_python} not found", hint="run build/ship-env.sh")
    report = out_dir / "licenses.json"
    done = subprocess.run(
        [sys.executable, "-m", "slm_policy.cli", "licenses", "--python", str(ship_python),
         "--binary-tree", str(payload), "--build-root", str(build_root),
         "--nuitka-version", binary_manifest["nuitka"],
         "--cpython-version", binary_manifest["python"], "--os-root", str(rootfs),
         "--litestream", str(payload.parent / "litestream"), "--model", str(model),
         "--product-version", binary_manifest.get("version", "0.0.0"),
         "--json", str(report), "--sbom", str(out_dir / "sbom.cdx.json")],
        capture_output=True, text=True)
    denied = [line for line in done.stderr.splitlines() if "DENY" in line]
    if done.returncode != 0:
        raise ImageBuildError(denied[0] if denied else (done.stderr.strip().splitlines()
                                                        or ["license gate failed"])[-1],
                              hint=f"{len(denied)} denied; see {report}" if denied else "")
    summary = done.stderr.strip().splitlines()[-1]
    print(f"image: {summary}", file=sys.stderr)
    return {"report": report.name, "sbom": "sbom.cdx.json", "summary": summary}


def _largest(rootfs: Path, top: int = 15) -> list[dict]:
    """The largest directories of the root file system (three levels deep, four under
    the payload), each file counted once however many hard links it has."""
    sizes: dict[str, int] = {}
    seen: set[int] = set()
    for dirpath, _dirs, files in os.walk(rootfs):
        for name in files:
            st = Path(dirpath, name).lstat()
            if not stat.S_ISREG(st.st_mode) or st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            rel = Path(dirpath, name).relative_to(rootfs).parts
            depth = 4 if "/" + "/".join(rel[:3]) == PAYLOAD else 3
            key = "/" + "/".join(rel[:depth])
            sizes[key] = sizes.get(key, 0) + st.st_size
    ranked = sorted(sizes.items(), key=lambda kv: -kv[1])[:top]
    return [{"path": p, "bytes": b} for p, b in ranked]


def _squashfs(recipe: dict, rootfs: Path, out: Path, epoch: int) -> None:
    out.unlink(missing_ok=True)
    _run(["mksquashfs", str(rootfs), str(out), "-comp", recipe["root_compression"],
          "-noappend", "-no-progress", "-quiet", "-mkfs-time", str(epoch),
          "-all-time", str(epoch), "-processors", str(os.cpu_count() or 1)],
         stdout=subprocess.DEVNULL)


def _state_fs(var: Path, out: Path, size_mb: int, arch: str, epoch: int) -> None:
    out.unlink(missing_ok=True)
    fs_uuid = str(uuid.uuid5(NAMESPACE, f"{arch}:state-fs"))
    _run(["mkfs.ext4", "-q", "-F", "-L", "slm-state", "-U", fs_uuid,
          "-E", f"hash_seed={fs_uuid},root_owner=0:0", "-m", "0",
          "-d", str(var), str(out), f"{size_mb}M"],
         env={**os.environ, "E2FSPROGS_FAKE_TIME": str(epoch)})


def _disk(arch: str, root_img: Path, state_img: Path, out: Path) -> dict:
    """A GPT disk with the two file systems; partition ids are derived from the arch."""
    mib = 1 << 20
    root_mib = -(-root_img.stat().st_size // mib)
    state_mib = -(-state_img.stat().st_size // mib)
    total = (1 + root_mib + state_mib + 1) * mib
    ids = {name: str(uuid.uuid5(NAMESPACE, f"{arch}:{name}")).upper()
           for name in ("disk", "root", "state")}
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.truncate(total)
    script = (f"label: gpt\nlabel-id: {ids['disk']}\nfirst-lba: 2048\n"
              f"start=2048, size={root_mib * 2048}, type={ROOT_TYPE[arch]}, "
              f"uuid={ids['root']}, name=slm-root\n"
              f"size={state_mib * 2048}, type={VAR_TYPE}, uuid={ids['state']}, "
              f"name=slm-state\n")
    _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(tmp)],
         input=script.encode(), stdout=subprocess.DEVNULL)
    for img, start_mib in ((root_img, 1), (state_img, 1 + root_mib)):
        _run(["dd", f"if={img}", f"of={tmp}", "bs=1M", f"seek={start_mib}",
              "conv=notrunc,sparse", "status=none"])
    tmp.replace(out)
    return {"root_partuuid": ids["root"].lower(), "state_partuuid": ids["state"].lower(),
            "root_mib": root_mib, "state_mib": state_mib}


def source_date_epoch() -> int:
    """``SOURCE_DATE_EPOCH``, else the last commit's time: every timestamp of the image."""
    return int(os.environ.get("SOURCE_DATE_EPOCH") or subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%ct"], capture_output=True,
        text=True).stdout.strip() or 0)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise ImageBuildError("the image build needs root (mmdebstrap, file ownership): "
                              "run it with sudo")


def build(arch: str, binary: Path, authorized_keys: Path | None, out_dir: Path,
          provisioning: Provisioning | None = None) -> dict:
    """Build the image for ``arch`` into ``out_dir``; returns the manifest."""
    _require_root()
    recipe = load_recipe()
    provisioning = provisioning or Provisioning()
    provisioning.check()
    manifest_path = Path(str(binary) + ".manifest.json")
    if not binary.is_file() or not manifest_path.is_file():
        raise ImageBuildError(f"{binary} (and its .manifest.json) not found: run just binary")
    binary_manifest = json.loads(manifest_path.read_text())
    try:  # architecture, version, commit: what the signed file list and the manifest name
        release = identity_of_binary(manifest_path).as_dict()
    except ReleaseError as exc:
        raise ImageBuildError(exc.message, hint="rebuild it: just binary") from None
    if binary_manifest["machine"] != _qemu_arch(arch):
        raise ImageBuildError(f"{binary} is for {binary_manifest['machine']}, not {arch}")
    model = binary.parent.parent / "share/slm" / binary_manifest["model"]["file"]
    if not model.is_file():
        raise ImageBuildError(f"{model} not found beside the binary")
    try:  # only signed inputs: refused here, before anything is built
        signing = ImageSigning.from_env()
        verify_seconds = signing.verify_inputs(binary, model)
    except SigningSetupError as exc:
        raise ImageBuildError(exc.message, hint=exc.hint) from None
    _ensure_tools(arch)
    began = time.monotonic()
    epoch = source_date_epoch()
    out_dir.mkdir(parents=True, exist_ok=True)
    # the manifest is written last: without it, the directory is not a finished image
    (out_dir / "manifest.json").unlink(missing_ok=True)
    if authorized_keys is None:  # a development key, kept beside the image
        key = out_dir / "ssh/id_ed25519"
        if not key.exists():
            key.parent.mkdir(mode=0o700, exist_ok=True)
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "slm-image-dev",
                  "-f", str(key)])
        authorized_keys = key.with_suffix(".pub")
    work = out_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    rootfs = work / "rootfs"
    payload = work / "payload/slm"
    _run(["cp", "-a", str(base_rootfs(recipe, arch, out_dir, epoch)), str(rootfs)])
    unpack_binary(binary, payload, rootfs)
    if (binary.parent / "litestream").is_file():
        shutil.copy2(binary.parent / "litestream", payload.parent / "litestream")
    installed = _install_payload(rootfs, payload, model, binary_manifest)
    _customize(recipe, rootfs, authorized_keys)
    try:
        sealed = signing.seal(rootfs, PAYLOAD, rootfs / installed["model"]["path"].lstrip("/"),
                              bundle_path_for(model), work, release)
    except SigningSetupError as exc:
        raise ImageBuildError(exc.message, hint=exc.hint) from None
    installed["signing"] = {**sealed, "build_verify_seconds": verify_seconds}
    installed["licenses"] = judge_licenses(arch, payload, rootfs, model, binary_manifest,
                                           out_dir)
    installed["memory_baseline_mb"] = _set_memory_baseline(rootfs, binary_manifest)
    packages = _packages(rootfs)
    kernel = sorted((rootfs / "boot").glob("vmlinuz-*"))[-1]
    initrd = rootfs / "boot" / kernel.name.replace("vmlinuz-", "initrd.img-")
    shutil.copy2(kernel, out_dir / "vmlinuz")
    shutil.copy2(initrd, out_dir / "initrd.img")
    largest = _largest(rootfs)
    image_info = {"arch": arch, "release": release,
                  "suite": recipe["suite"], "mirror": recipe.get("mirror") or
                  "build machine's apt sources", "source_date_epoch": epoch,
                  "kernel": kernel.name.removeprefix("vmlinuz-"), **installed}
    (rootfs / PAYLOAD.lstrip("/") / "image.json").write_text(json.dumps(image_info, indent=2))
    # /var goes to the writable state partition; the root keeps an empty mount point
    var = work / "var"
    (rootfs / "var").rename(var)
    (rootfs / "var").mkdir(mode=0o755)
    image_info["provisioned"] = provisioning.install(var)
    root_img, state_img = work / "root.squashfs", work / "state.ext4"
    _squashfs(recipe, rootfs, root_img, epoch)
    _state_fs(var, state_img, recipe["state_partition_mb"], arch, epoch)
    layout = _disk(arch, root_img, state_img, out_dir / "disk.raw")
    cmdline = (f"root=PARTUUID={layout['root_partuuid']} rootfstype=squashfs ro "
               f"console={recipe['console'][arch]} panic=10")
    (out_dir / "cmdline").write_text(cmdline + "\n")
    compressed = out_dir / "disk.raw.zst"
    _run(["zstd", "-q", "-f", "-T0", "-10", str(out_dir / "disk.raw"), "-o", str(compressed)])
    manifest = {
        **image_info, "cmdline": cmdline, "layout": layout,
        "sizes": {"raw_bytes": (out_dir / "disk.raw").stat().st_size,
                  "compressed_bytes": compressed.stat().st_size,
                  "root_squashfs_bytes": root_img.stat().st_size,
                  "state_bytes": state_img.stat().st_size,
                  "kernel_bytes": kernel.stat().st_size, "initrd_bytes": initrd.stat().st_size},
        "sha256": {"disk.raw": sha256_of(out_dir / "disk.raw"),
                   "vmlinuz": sha256_of(out_dir / "vmlinuz"),
                   "initrd.img": sha256_of(out_dir / "initrd.img")},
        "largest": largest, "packages": packages,
        "build_seconds": round(time.monotonic() - began, 1),
    }
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(out_dir / "manifest.json")
    shutil.rmtree(work)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="image/build.py", description=__doc__.split("\n")[0])
    parser.add_argument("arch", choices=ARCHES)
    parser.add_argument("--binary", type=Path, default=None,
                        help="the one-file slm binary for ARCH (default: build/out/bin/slm "
                        "for the host architecture, build/out/ARCH/bin/slm otherwise)")
    parser.add_argument("--authorized-keys", type=Path, default=None,
                        help="root's SSH keys (default: a development key made beside "
                        "the image)")
    parser.add_argument("--key-store", type=Path, default=None,
                        help="the Doorman's API key store (`slm keys --key-store FILE "
                        "create ...`; hashes only); default: first boot makes an admin key")
    parser.add_argument("--tls-cert", type=Path, default=None,
                        help="the Doorman's HTTPS certificate (PEM); default: first boot "
                        "makes a self-signed one")
    parser.add_argument("--tls-key", type=Path, default=None, help="its private key (PEM)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--prepare", action="store_true",
                        help="only make (or reuse) the Debian root file system, which needs "
                        "no binary and no signing; a later build takes it as it is")
    args = parser.parse_args(argv)
    out = args.out or ROOT / "build/out/image" / args.arch
    try:
        if args.prepare:
            _require_root()
            _ensure_tools(args.arch)
            base_rootfs(load_recipe(), args.arch, out, source_date_epoch())
            return 0
        binary = args.binary or (ROOT / "build/out/bin/slm" if args.arch == _host_arch()
                                 else ROOT / f"build/out/{args.arch}/bin/slm")
        manifest = build(args.arch, binary, args.authorized_keys, out,
                         Provisioning(args.key_store, args.tls_cert, args.tls_key))
    except ImageBuildError as exc:
        print(f"image: {exc.one_line()}", file=sys.stderr)
        return 1
    sizes = manifest["sizes"]
    print(f"image {args.arch}: {out}/disk.raw {sizes['raw_bytes'] / 1e6:.1f} MB raw, "
          f"{sizes['compressed_bytes'] / 1e6:.1f} MB zstd, root squashfs "
          f"{sizes['root_squashfs_bytes'] / 1e6:.1f} MB, built in {manifest['build_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
