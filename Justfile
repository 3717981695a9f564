# service-slm tasks. Every recipe first runs build/bootstrap.sh (fast when nothing changed).
set shell := ["bash", "-euo", "pipefail", "-c"]

bin := justfile_directory() / ".venv/bin"

# list the recipes
default:
    @just --list

# install everything (apt packages, .venv, portable llama-cpp-python, default model)
setup:
    build/bootstrap.sh

# start the Doorman on the default model at 127.0.0.1:8080 (extra flags go to `slm serve`);
# the audit ledger is .state/ledger.db (the appliance keeps it in /var/lib/slm)
serve *ARGS: setup
    {{bin}}/slm serve --ledger-path "{{justfile_directory()}}/.state/ledger.db" {{ARGS}}

# run the whole test suite (extra arguments go to pytest)
test *ARGS: setup
    {{bin}}/pytest {{ARGS}}

# static checks (ruff; mypy --strict on the service and the gates, pyproject's [tool.mypy])
lint: setup
    {{bin}}/ruff check services policy tests image build
    {{bin}}/mypy services/slm policy/slm_policy

# speed and memory figures: the default model against llama.cpp's llama-bench, the ledger,
# the sanitiser (precision/recall on the labelled corpus, MB/s), the binary, the prompt
# cache (time to first token with and without it), and each built image (sizes against the
# policy; boot to /ready, a chat and the service's memory.peak in qemu under TCG)
bench: setup
    {{bin}}/python tests/bench/bench.py
    {{bin}}/python tests/bench/bench_ledger.py
    {{bin}}/python tests/bench/bench_sanitise.py
    {{bin}}/python tests/bench/bench_binary.py
    {{bin}}/python tests/bench/bench_prompt_cache.py
    {{bin}}/python tests/bench/bench_image.py

# compile the one-file binary with Nuitka: build/out/bin/slm (+ .manifest.json), litestream
# and the default model beside it
binary: setup
    build/binary.sh

# the test suite against the compiled binary instead of `python -m slm`
test-binary *ARGS: binary
    SLM_BINARY="{{justfile_directory()}}/build/out/bin/slm" {{bin}}/pytest {{ARGS}}

# the license gate over exactly what ships (build/out/ship-venv): table, JSON report, SBOM
licenses: setup
    build/ship-env.sh
    {{bin}}/slm-gate licenses --python build/out/ship-venv/bin/python \
        --json build/out/licenses.json --sbom build/out/sbom.cdx.json

# the memory-budget gate on the compiled binary: its runtime baseline measured (and recorded in
# its manifest), then its peak under full-context load (an adapter, the prompt cache, a document
# read meanwhile) vs policy/budget.toml and the planner
budget *ARGS: binary
    {{bin}}/slm-gate budget --binary build/out/bin/slm --binary-manifest \
        build/out/bin/slm.manifest.json --json build/out/budget.json {{ARGS}}

# a bounded load test of `slm serve` on loopback (mixed endpoints, streams, cancellations,
# bad requests): memory and descriptors after warm-up vs at the end, ledger == requests
soak MINUTES="20": setup
    {{bin}}/python tests/bench/soak.py {{MINUTES}}

# build the appliance image for ARCH (amd64 | arm64) into build/out/image/ARCH/ and check its
# size against policy/budget.toml
image ARCH: setup
    build/binary-for.sh {{ARCH}}
    build/ship-env.sh
    files="$(build/release-files.sh {{ARCH}} --inputs)" && mapfile -t inputs <<<"$files" && \
        build/with-sigstore.sh bash -c '{{bin}}/slm-gate sign "$@" && \
        {{bin}}/python image/build.py {{ARCH}}' - "${inputs[@]}"
    {{bin}}/slm-gate image build/out/image/{{ARCH}}/manifest.json

# sign a release for ARCH with Sigstore: the binary, its manifest, Litestream, the model, the
# SBOM and the image, a bundle beside each, and build/out/release-ARCH.json naming the
# release (architecture, version, commit: from the binary's manifest) and listing them
# (signed too). Without SLM_SIGNER set, against the local test stack (build/with-sigstore.sh)
sign ARCH: setup
    files="$(build/release-files.sh {{ARCH}})" && mapfile -t artefacts <<<"$files" && \
        build/with-sigstore.sh {{bin}}/slm-gate sign --manifest \
        build/out/release-{{ARCH}}.json --release-of "${artefacts[2]}" "${artefacts[@]}"

# verify every artefact of build/out/release-ARCH.json, offline, against a signer of
# policy/signing.toml and a pinned trust root (default: the local test stack's); a release
# for another architecture is refused
verify ARCH: setup
    files="$(build/release-files.sh {{ARCH}})" && mapfile -t artefacts <<<"$files" && \
        {{bin}}/slm-gate verify build/out/release-{{ARCH}}.json --arch {{ARCH}} \
        --signer "${SLM_SIGNER:-local}" --expect "${artefacts[@]}" --trusted-root \
        "${SLM_TRUSTED_ROOT:-$([ "${SLM_SIGNER:-local}" = local ] && \
        echo build/out/sigstore-local/trusted_root.json || echo "SLM_TRUSTED_ROOT unset")}"

# boot the image in qemu (TCG) and wait until it boots clean (no failed unit, /ready 200);
# it keeps running: `image/vm.py ssh ARCH CMD`, `image/vm.py stop ARCH`
boot ARCH: setup
    {{bin}}/python image/vm.py boot {{ARCH}}

# the testinfra suite against a freshly booted image (builds the image when missing)
test-image ARCH *ARGS: setup
    test -f build/out/image/{{ARCH}}/manifest.json || just image {{ARCH}}
    {{bin}}/pytest tests/image --image-arch {{ARCH}} --timeout 1800 {{ARGS}}
