#!/usr/bin/env bash
# The artefacts of a release for ARCH, one path a line (relative to the project root):
#   build/release-files.sh ARCH           everything `just sign ARCH` signs
#   build/release-files.sh ARCH --inputs  the image's signed inputs: the binary and the model
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
arch="${1:?usage: build/release-files.sh amd64|arm64 [--inputs]}"
if [ "$arch" = "$(dpkg --print-architecture)" ]; then out=build/out; else out="build/out/$arch"; fi
model="$(ls "$out"/share/slm/*.gguf 2>/dev/null | head -1)"
[ -n "$model" ] || { echo "release-files: no model in $out/share/slm (run just image $arch)" >&2; exit 1; }
echo "$out/bin/slm"
echo "$model"
[ "${2:-}" = --inputs ] && exit 0
echo "$out/bin/slm.manifest.json"
echo "$out/bin/litestream"
echo build/out/sbom.cdx.json
for f in disk.raw.zst manifest.json vmlinuz initrd.img cmdline; do
  echo "build/out/image/$arch/$f"
done
