#!/usr/bin/env bash
# Run a command with a Sigstore signing environment in these variables:
#   SLM_SIGNER               a [signers.NAME] of policy/signing.toml
#   SLM_TRUSTED_ROOT         the pinned trusted_root.json (to verify; the image pins it)
#   SLM_TRUST_CONFIG         a ClientTrustConfig to sign with (unset: public Sigstore)
#   SLM_IDENTITY_TOKEN_FILE  an OIDC token (unset: $SIGSTORE_ID_TOKEN or the CI's ambient one)
# A release CI with OIDC sets SLM_SIGNER=release and SLM_TRUSTED_ROOT (public Sigstore's
# root, pinned) and the command runs as is. Otherwise the local Sigstore test stack
# (slm_policy/sigstore_stack.py: Fulcio-, Rekor- and TSA-like services on 127.0.0.1 only) runs
# for the command's duration; its keys stay in build/out/sigstore-local, so what it signed
# keeps verifying in later runs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${SLM_SIGNER:-}" ] && [ "$SLM_SIGNER" != local ]; then
  : "${SLM_TRUSTED_ROOT:?SLM_SIGNER=$SLM_SIGNER needs SLM_TRUSTED_ROOT, the pinned trust root}"
  exec "$@"
fi
DIR="$ROOT/build/out/sigstore-local"
mkdir -p "$DIR"
"$ROOT/.venv/bin/python" -m slm_policy.sigstore_stack serve --dir "$DIR" \
  > "$DIR/stack.log" 2>&1 &
stack=$!
trap 'kill "$stack" 2>/dev/null || true; wait "$stack" 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
  grep -qx ready "$DIR/stack.log" && break
  if ! kill -0 "$stack" 2>/dev/null; then
    echo "with-sigstore: the local Sigstore stack did not start:" >&2
    cat "$DIR/stack.log" >&2
    exit 1
  fi
  sleep 0.1
done
grep -qx ready "$DIR/stack.log" || { echo "with-sigstore: the local stack is not ready" >&2; exit 1; }
export SLM_SIGNER=local SLM_TRUSTED_ROOT="$DIR/trusted_root.json" \
  SLM_TRUST_CONFIG="$DIR/trust_config.json" SLM_IDENTITY_TOKEN_FILE="$DIR/token"
"$@"
