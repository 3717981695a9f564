#!/usr/bin/env bash
# The artefacts of a release for ARCH, one path a line (relative to the project root):
#   build/release-files.sh ARCH           everything `just sign ARCH` signs
#   build/release-files.sh ARCH --inputs  the image's signed inputs: the binary and the model
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
arch="${1:?usage: build/release-files.sh amd64|arm64 [--inputs]}"
if [ "$arch" = "$(dpkg --print-architecture)" ]; then out=build/out; else out="build/out/$arch"; fi
manifest="$out/bin/slm.manifest.json"
[ -f "$manifest" ] || { echo "release-files: $manifest not found (build it: build/binary-for.sh $arch)" >&2; exit 1; }
model="$out/share/slm/$(.venv/bin/python -c 'import json, sys
print(json.load(open(sys.argv[1]))["model"]["file"])' "$manifest")"
echo "$out/bin/slm"
echo "$model"
[ "${2:-}" = --inputs ] && exit 0
echo "$manifest"
echo "$out/bin/litestream"
for f in sbom.cdx.json disk.raw.zst manifest.json vmlinuz initrd.img cmdline; do
  echo "build/out/image/$arch/$f"
done
