#!/usr/bin/env bash
# Compile the Doorman into one executable with Nuitka, from exactly what ships
# (build/out/ship-venv), and write a build manifest beside it:
#   build/out/bin/slm                    the one-file binary (the signed artefact)
#   build/out/bin/litestream             the ledger's replicator, found beside the binary
#   build/out/share/slm/<model>.gguf     the default model (it ships beside, not inside)
#   build/out/bin/slm.manifest.json      Nuitka / Python versions, flags, sha256s
# Needs build/bootstrap.sh first. ccache (installed here when missing) makes rebuilds fast.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NUITKA_VERSION="4.3"
ZSTANDARD_VERSION="0.25.0"
OUT="$ROOT/build/out"
TOOLS="$OUT/nuitka-tools"

missing=()
command -v patchelf >/dev/null || missing+=(patchelf)
command -v ccache >/dev/null || missing+=(ccache)
if ((${#missing[@]})); then
  build/apt-install.sh "${missing[@]}"
fi

build/ship-env.sh
SHIP_PY="$OUT/ship-venv/bin/python"
# up to date: same shipped set, same build script, binary still there
want="$(cat "$OUT/ship-venv/.stamp" build/binary.sh build/nuitka-compile.sh build/slm_main.py \
  build/nuitka_bytecode_plugin.py build/nuitka-package-config.yml | sha256sum | cut -d' ' -f1)"
if [ -x "$OUT/bin/slm" ] && [ -x "$OUT/bin/litestream" ] && [ -f "$OUT/bin/slm.manifest.json" ] \
   && ls "$OUT"/share/slm/*.gguf >/dev/null 2>&1 \
   && [ "$(cat "$OUT/bin/.stamp" 2>/dev/null)" = "$want" ]; then
  echo "binary: $OUT/bin/slm is up to date" >&2
  exit 0
fi
rm -f "$OUT/bin/.stamp"  # written again only when everything below succeeded
# Nuitka and zstandard (onefile compression) are build tools: beside the shipped set, not in it
if [ "$(cat "$TOOLS/.version" 2>/dev/null)" != "$NUITKA_VERSION $ZSTANDARD_VERSION" ]; then
  rm -rf "$TOOLS"
  "$ROOT/.venv/bin/python" -m pip --disable-pip-version-check -q install --target "$TOOLS" \
    "nuitka==$NUITKA_VERSION" "zstandard==$ZSTANDARD_VERSION"
  echo "$NUITKA_VERSION $ZSTANDARD_VERSION" > "$TOOLS/.version"
fi

BUILD_NUMBER="$(git rev-list --count HEAD 2>/dev/null || echo 0)"
SOURCE_COMMIT="$(git rev-parse HEAD)" build/nuitka-compile.sh "$SHIP_PY" "$TOOLS" "$OUT" "$BUILD_NUMBER"
echo "$want" > "$OUT/bin/.stamp"
