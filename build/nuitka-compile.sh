#!/usr/bin/env bash
# The Nuitka step of the binary build, shared by build/binary.sh (the host's architecture)
# and build/binary-emulated.sh (run inside an emulated chroot of another architecture):
#   SOURCE_COMMIT=SHA nuitka-compile.sh SHIP_PYTHON NUITKA_TOOLS_DIR OUT_DIR BUILD_NUMBER [EXTRA NUITKA FLAGS]
# writes OUT_DIR/bin/slm, OUT_DIR/bin/litestream, OUT_DIR/bin/slm.manifest.json (with the
# release identity: Debian architecture, version VERSION.BUILD_NUMBER, source commit) and
# the default model in OUT_DIR/share/slm/.
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHIP_PY="$1"; TOOLS="$2"; OUT="$3"; BUILD_NUMBER="$4"; shift 4
WORK="$OUT/nuitka"

VERSION="$("$SHIP_PY" -c 'import slm; print(slm.__version__)')"
FLAGS=(
  --mode=onefile
  --include-module=_json --include-module=_bisect   # else JSON falls back to pure Python
  --include-package=slm
  --include-package=uvicorn                          # protocol modules imported by name
  --include-package=phonenumbers                     # region metadata imported by name
  --include-package=jinja2                           # jinja2.ext imported by name (bytecode)
  --nofollow-import-to=slm_policy
  # llama_cpp's high-level layer (numpy) is cut out by our package configuration; openpyxl
  # and pypdf only try numpy for optional features
  --user-package-configuration-file="$SRC/build/nuitka-package-config.yml"
  --nofollow-import-to=numpy
  # command-line front ends we never run (sigstore's, httpx's) and the syntax highlighter
  # they and rich's tracebacks import: Nuitka's configuration takes every pygments lexer
  # (~325 modules) once it is followed
  --nofollow-import-to=sigstore._cli --nofollow-import-to=httpx._main
  --nofollow-import-to=pygments
  # GNU readline (GPL-3.0) would come in through the chat CLI's optional line editing
  # (input() works without it): not in an Apache-2.0 binary (the license gate judges every
  # library in the tree)
  --nofollow-import-to=readline --noinclude-dlls='libreadline.so*' --noinclude-dlls='libtinfo.so*'
  # libraries of the appliance's OS (systemd's and its dependencies, the GCC and OpenMP
  # runtimes): loaded from the image like on amd64, not copied into the tree; the license
  # gate judges them as run-time links ([[os_linked]] in policy/licenses.toml)
  --noinclude-dlls='libsystemd.so*' --noinclude-dlls='libgcrypt.so*'
  --noinclude-dlls='libgpg-error.so*' --noinclude-dlls='libcap.so*'
  --noinclude-dlls='liblz4.so*' --noinclude-dlls='libzstd.so*'
  --noinclude-dlls='libgcc_s.so*' --noinclude-dlls='libgomp.so*'
  --noinclude-dlls='libstdc++.so*'
  # every third-party package as bytecode, slm as C (compile time and size)
  --user-plugin="$SRC/build/nuitka_bytecode_plugin.py"
  # build tools on PYTHONPATH: httpx would pull zstandard in (optional, not shipped)
  --nofollow-import-to=zstandard --nofollow-import-to=nuitka
  --product-name=service-slm
  --product-version="$VERSION"
  --file-version="$VERSION.$BUILD_NUMBER"
  # cached extraction: unpacked once under $XDG_CACHE_HOME/slm/<version> (the unit sets
  # XDG_CACHE_HOME=/var/cache, a disk directory), never into a RAM tmpfs, never on /
  "--onefile-tempdir-spec={CACHE_DIR}/slm/{FILE_VERSION}"
  --onefile-child-grace-time=infinity                # systemd's TimeoutStopSec bounds the stop
  --python-flag=no_site
  --assume-yes-for-downloads
  --output-dir="$WORK" --output-filename=slm
  --remove-output
  "$@"
)
began=$(date +%s)
PYTHONPATH="$TOOLS" "$SHIP_PY" -m nuitka "${FLAGS[@]}" "$SRC/build/slm_main.py"
took=$(( $(date +%s) - began ))

mkdir -p "$OUT/bin" "$OUT/share/slm"
install -m 0755 "$WORK/slm" "$OUT/bin/slm.tmp" && mv "$OUT/bin/slm.tmp" "$OUT/bin/slm"
install -m 0755 "$(dirname "$SHIP_PY")/litestream" "$OUT/bin/litestream"
MODEL="$("$SHIP_PY" -c 'from slm.model.file import default_model_path; print(default_model_path())')"
cp "$MODEL" "$OUT/share/slm/.model.tmp" && mv "$OUT/share/slm/.model.tmp" "$OUT/share/slm/$(basename "$MODEL")"

RELEASE="$(dpkg --print-architecture) $VERSION.$BUILD_NUMBER ${SOURCE_COMMIT:?SOURCE_COMMIT unset}"
TOOLS="$TOOLS" "$SHIP_PY" - "$OUT/bin/slm" "$took" "$MODEL" "$RELEASE" "${FLAGS[@]}" <<'PY'
import json, os, platform, sys
from pathlib import Path
from slm.model.file import sha256_of
binary, took, model, flags = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[5:]
architecture, version, commit = sys.argv[4].split()
def sha(path):
    return sha256_of(Path(path))
sys.path.insert(0, os.environ.get("TOOLS", ""))
manifest = {
    "artefact": "slm", "architecture": architecture, "version": version, "commit": commit,
    "sha256": sha(binary), "size": os.path.getsize(binary),
    "nuitka": __import__("importlib.metadata").metadata.version("nuitka"),
    "python": platform.python_version(), "machine": platform.machine(),
    "flags": flags, "compile_seconds": took,
    "litestream_sha256": sha(os.path.join(os.path.dirname(binary), "litestream")),
    "model": {"file": os.path.basename(model), "sha256": sha(model)},
}
tmp = binary + ".manifest.json.tmp"
with open(tmp, "w") as fh:
    json.dump(manifest, fh, indent=2)
os.replace(tmp, binary + ".manifest.json")
print(json.dumps({k: manifest[k] for k in ("sha256", "size", "compile_seconds")}))
PY
