#!/usr/bin/env bash
# The Doorman binary for a Debian architecture: the host's own via build/binary.sh
# (build/out/bin/slm), a foreign one via build/binary-emulated.sh (build/out/ARCH/bin/slm).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
arch="${1:?usage: build/binary-for.sh amd64|arm64}"
if [ "$arch" = "$(dpkg --print-architecture)" ]; then
  exec "$ROOT/build/binary.sh"
fi
exec "$ROOT/build/binary-emulated.sh" "$arch"
