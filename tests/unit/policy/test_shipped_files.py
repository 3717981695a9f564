"""The license gate over every shipped file: the binary's unpacked tree (native libraries
judged by their Debian package), the OS libraries it links at run time, Litestream's Go
modules and the image's Debian packages. Real parts: the host's own libraries and dpkg
database, the Litestream binary of the environment, a small dpkg root made here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from slm_policy.debian import read_copyright
from slm_policy.go_buildinfo import read_build_info
from slm_policy.policy_file import load_policy
from support.license_env import GATE, Env

POLICY = """
[allow]
"MIT" = "permissive"
"Apache-2.0" = "permissive"
"BSD-3-Clause" = "permissive"
"PSF-2.0" = "CPython"
"Zlib" = "permissive"

[classifiers]
"MIT License" = "MIT"

[models]

[debian_licenses]
"Zlib" = "Zlib"
"LGPL-2.1+" = "LGPL-2.1-or-later"
"""
DEP5 = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"


def _host_library(package: str, name: str) -> Path:
    """A library of the build machine, found through its own dpkg database."""
    listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True).stdout
    path = next(Path(p) for p in listed.split() if p.endswith("/" + name))
    return path.resolve()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    """The ship environment: one MIT distribution (module clean_mit)."""
    e = Env(tmp_path_factory.mktemp("env"), POLICY)
    e.install("clean-mit", expression="MIT")
    return e


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """An unpacked binary tree: slm.bin (a real ELF linking libc), zlib copied in the way
    Nuitka copies libraries, and a module of the environment's distribution."""
    root = tmp_path / "tree"
    root.mkdir()
    shutil.copy(sys.executable, root / "slm.bin")
    shutil.copy(_host_library("zlib1g", "libz.so.1"), root / "libz.so.1")
    (root / "clean_mit").mkdir()
    (root / "clean_mit" / "__init__.pyc").write_bytes(b"")
    return root


@pytest.fixture
def gate(env: Env):
    def run(tmp_path: Path, *extra: str, policy: str = POLICY) -> subprocess.CompletedProcess:
        env.policy.write_text(policy)
        return env.gate(*extra)
    return run


def denials(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if "DENY" in line]


def test_a_clean_tree_passes_and_every_file_is_in_the_sbom(gate, tree, tmp_path):
    sbom = tmp_path / "sbom.json"
    done = gate(tmp_path, "--binary-tree", str(tree), "--nuitka-version", "4.3",
                "--sbom", str(sbom))
    assert done.returncode == 0, done.stderr
    bom = json.loads(sbom.read_text())
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(sbom.read_text()) is None
    files = {p["value"]: c["name"] for c in bom["components"]
             for p in c.get("properties", []) if p["name"] == "service-slm:file"}
    assert files["libz.so.1"] == "zlib1g"
    assert files["clean_mit/__init__.pyc"] == "clean-mit"
    assert files["slm.bin"] in ("CPython", "Nuitka runtime")
    zlib = next(c for c in bom["components"] if c["name"] == "zlib1g")
    assert zlib["purl"].startswith("pkg:deb/debian/zlib1g@")
    assert zlib["licenses"] == [{"expression": "Zlib"}]


def test_an_injected_copyleft_library_fails_naming_file_and_package(gate, tree, tmp_path):
    shutil.copy(_host_library("libsystemd0", "libsystemd.so.0"), tree / "libsystemd.so.0")
    done = gate(tmp_path, "--binary-tree", str(tree))
    assert done.returncode == 1
    [line] = [d for d in denials(done) if "libsystemd" in d]
    assert "tree libsystemd.so.0 (Debian libsystemd0)" in line
    assert "LGPL-2.1-or-later not allowed" in line


def test_a_file_nobody_owns_is_unknown(gate, tree, tmp_path):
    (tree / "libmystery.so.1").write_bytes(b"\x7fELF not really")
    (tree / "blob.dat").write_bytes(b"?")
    done = gate(tmp_path, "--binary-tree", str(tree))
    assert done.returncode == 1
    lines = denials(done)
    for name in ("libmystery.so.1", "blob.dat"):
        assert any(f"tree {name}" in line and "(unknown)" in line for line in lines), lines


def test_a_license_the_table_does_not_map_is_unknown(gate, tree, tmp_path):
    done = gate(tmp_path, "--binary-tree", str(tree),
                policy=POLICY.replace('"Zlib" = "Zlib"\n', ""))
    assert done.returncode == 1
    assert any("libz.so.1 (Debian zlib1g)" in d and "is not one [debian_licenses] maps" in d
               for d in denials(done))


def test_a_clarification_is_pinned_to_the_copyright_file(gate, tree, tmp_path):
    pin = read_copyright(Path("/usr/share/doc/zlib1g/copyright"))
    assert pin is not None
    clarified = POLICY + (f'\n[[native_clarification]]\npackage = "zlib1g"\nlicense = "MIT"\n'
                          f'copyright_sha256 = "{pin.sha256}"\nreason = "read"\n')
    assert denials(gate(tmp_path, "--binary-tree", str(tree), policy=clarified)) == []
    stale = clarified.replace(pin.sha256, "0" * 64)
    lines = denials(gate(tmp_path, "--binary-tree", str(tree), policy=stale))
    assert any("libz.so.1" in d and "review it again" in d for d in lines), lines


# --- the image's Debian packages and the OS libraries the binary links ----------------


def _package(root: Path, name: str, section: str, copyright_text: str | None,
             files: tuple[str, ...] = ()) -> str:
    if copyright_text is not None:
        (root / "usr/share/doc" / name).mkdir(parents=True)
        (root / "usr/share/doc" / name / "copyright").write_text(copyright_text)
    (root / "var/lib/dpkg/info" / f"{name}.list").write_text("".join(f + "\n" for f in files))
    return (f"Package: {name}\nStatus: install ok installed\nPriority: optional\n"
            f"Section: {section}\nMaintainer: t <t@example.org>\nArchitecture: amd64\n"
            f"Version: 1.0-1\nDescription: test\n\n")


@pytest.fixture
def os_root(tmp_path: Path) -> Path:
    """A root file system with a dpkg database of four packages, one of them providing
    the C library the tree's slm.bin needs."""
    root = tmp_path / "os"
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    libc = subprocess.run(["readelf", "-dW", sys.executable], capture_output=True,
                          text=True).stdout
    needed = [line.split("[")[1].rstrip("]") for line in libc.splitlines() if "NEEDED" in line]
    status = _package(root, "libc6", "libs", DEP5 + "Files: *\nLicense: LGPL-2.1+\n",
                      tuple(f"/usr/lib/x86_64-linux-gnu/{n}" for n in needed))
    status += _package(root, "freeprog", "utils", DEP5 + "Files: *\nLicense: GPL-2+\n")
    status += _package(root, "blob", "non-free/misc", DEP5 + "Files: *\nLicense: custom\n")
    status += _package(root, "mystery", "misc", None)
    # removed, its configuration kept: not installed, not judged
    status += _package(root, "gone", "misc", None).replace(
        "install ok installed", "deinstall ok config-files")
    (root / "var/lib/dpkg/status").write_text(status)
    # a local diversion of the C library: dpkg-query prints it first; never an owner
    libc_path = next(iter((root / "var/lib/dpkg/info/libc6.list").read_text().split()))
    (root / "var/lib/dpkg/diversions").write_text(f"{libc_path}\n{libc_path}.real\n:\n")
    return root


def test_image_packages_by_the_os_component_policy(gate, tree, os_root, tmp_path):
    sbom = tmp_path / "sbom.json"
    done = gate(tmp_path, "--binary-tree", str(tree), "--os-root", str(os_root),
                "--sbom", str(sbom))
    assert done.returncode == 1
    lines = denials(done)
    assert any("os blob==1.0-1" in d and "non-free archive" in d for d in lines), lines
    assert any("os mystery==1.0-1" in d and "no /usr/share/doc/PKG/copyright" in d
               for d in lines), lines
    assert not any(" freeprog" in d for d in lines)  # a copyleft OS program, recorded
    assert not any(" gone" in d for d in lines)
    assert any("os-link libc.so.6 (libc6)" in d and "add an [[os_linked]] entry for libc6"
               in d for d in lines), lines
    bom = json.loads(sbom.read_text())
    freeprog = next(c for c in bom["components"] if c["name"] == "freeprog")
    assert freeprog["licenses"] == [{"license": {"name": "GPL-2+"}}]

    reviewed = POLICY + ('\n[[os_linked]]\npackage = "libc6"\nlicense = "LGPL-2.1-or-later"\n'
                         'reason = "the C library"\n')
    lines = denials(gate(tmp_path, "--binary-tree", str(tree), "--os-root", str(os_root),
                         policy=reviewed))
    assert not any("os-link" in d for d in lines), lines


# --- Litestream's Go modules ------------------------------------------------------------


LITESTREAM = Path(sys.executable).with_name("litestream")


def test_the_go_build_info_of_litestream():
    info = read_build_info(LITESTREAM)
    assert (info.main.path, info.main.version) == ("github.com/benbjohnson/litestream",
                                                    "v0.5.17")
    assert info.go_version.startswith("go1.")
    assert any(m.path == "modernc.org/sqlite" for m in info.deps)
    assert len(info.deps) > 50


def test_every_go_module_of_litestream_is_reviewed_by_the_project_policy(gate, tmp_path):
    """The project's own policy covers every module the shipped Litestream embeds; a
    module it does not know is denied, by name."""
    done = subprocess.run([*GATE, "--litestream", str(LITESTREAM)], capture_output=True,
                          text=True, timeout=300)
    assert not [d for d in denials(done) if " go " in d], done.stderr
    policy = load_policy(Path(__file__).resolve().parents[3] / "policy/licenses.toml")
    assert policy.go_license("golang.org/x/sys") == "BSD-3-Clause"
    unknown = gate(tmp_path, "--litestream", str(LITESTREAM),
                   policy=POLICY + '[go_modules]\n"std" = "BSD-3-Clause"\n')
    assert unknown.returncode == 1
    assert any("go modernc.org/sqlite==v1.49.1" in d and "no [go_modules] entry" in d
               for d in denials(unknown))


def test_go_entries_cover_their_path_and_below_only(tmp_path):
    from slm_policy.policy_file import Policy

    policy = Policy({}, {}, {}, go_modules={
        "std": "BSD-3-Clause", "github.com/aws/aws-sdk-go-v2": "Apache-2.0 AND BSD-3-Clause",
        "github.com/aws/aws-sdk-go-v2/": "Apache-2.0", "github.com/mattn/": "MIT"})
    assert policy.go_license("github.com/aws/aws-sdk-go-v2") == "Apache-2.0 AND BSD-3-Clause"
    assert policy.go_license("github.com/aws/aws-sdk-go-v2/config") == "Apache-2.0"
    assert policy.go_license("github.com/aws/aws-sdk-go-v22") is None
    assert policy.go_license("github.com/mattn/go-isatty") == "MIT"
    assert policy.go_license("github.com/mattn") is None
    assert policy.go_license("stdfoo.io/x") is None


def test_a_binary_without_go_build_info_is_a_clear_error(gate, tmp_path):
    done = gate(tmp_path, "--litestream", sys.executable)
    assert done.returncode == 2 and "no Go build information" in done.stderr
    assert done.stderr.strip().count("\n") == 0
