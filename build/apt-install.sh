#!/usr/bin/env bash
# Install the named apt packages (callers pass only the missing ones), through sudo when not
# root. Used by build/bootstrap.sh, the binary and image builds. Calls are serialised (a
# lock file), so builds may run side by side: apt takes one at a time.
set -euo pipefail
(($#)) || exit 0
echo "installing system packages: $*" >&2
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "error: need root or sudo to install: $*" >&2; exit 1; }
  SUDO="sudo"
fi
LOCK=/var/lock/service-slm-apt-install.lock
$SUDO flock "$LOCK" apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO flock "$LOCK" \
  apt-get install -y -qq --no-install-recommends "$@"
