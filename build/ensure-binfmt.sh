#!/usr/bin/env bash
# Make sure this machine runs MACHINE (e.g. aarch64) executables through qemu-user:
# binfmt_misc mounted and qemu's handler registered (qemu-user-static + binfmt-support), and
# arch-test, which mmdebstrap needs to build a root file system of a foreign architecture.
set -euo pipefail
MACHINE="${1:?usage: build/ensure-binfmt.sh aarch64}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
missing=()
[ -x "/usr/bin/qemu-$MACHINE-static" ] || missing+=(qemu-user-static)
command -v update-binfmts >/dev/null || missing+=(binfmt-support)
command -v arch-test >/dev/null || missing+=(arch-test)
"$ROOT/build/apt-install.sh" "${missing[@]}"
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$MACHINE" ]; then
  update-binfmts --enable "qemu-$MACHINE" >/dev/null 2>&1 \
    || update-binfmts --import "qemu-$MACHINE"
fi
grep -q '^enabled' "/proc/sys/fs/binfmt_misc/qemu-$MACHINE" \
  || { echo "ensure-binfmt: qemu-$MACHINE is not enabled in binfmt_misc" >&2; exit 1; }
