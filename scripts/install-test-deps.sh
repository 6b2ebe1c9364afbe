#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine, and nothing twice: a
# cached machine skips what it already has (a second run takes a few seconds). The one copy
# of the install logic: `scripts/test.sh` (the README's test command) and `.ci/run` both
# source it, so the variables it exports (TANSU_BIN, TRACEO_PYTHON, TRACEO_S3_PYTHON,
# KUBERNETES_VALIDATE) reach the tests. Run on its own, it only installs:
#
#     scripts/install-test-deps.sh
#
# Tools built or downloaded from package registries go under $TRACEO_TOOLS (default
# ~/.cache/traceo-tools), which CI keeps between runs; the harness looks there too, so a
# plain `cargo test` finds them after one install.
set -euo pipefail

_traceo_log() { printf '\n== %s\n' "$*"; }

# The build's own prerequisites (the OpenSSL headers) and `apt_install`.
# shellcheck source=scripts/install-build-deps.sh
. "$(dirname "${BASH_SOURCE[0]}")/install-build-deps.sh"

# prometheus: the real remote-write client and backend of the end-to-end tests; it ships
# promtool, which checks and unit-tests deploy/prometheus/alerts.yaml (tests/e2e/deploy.rs).
apt_install prometheus
# stunnel4: the TLS terminator in front of tansu in the Kafka-over-TLS test (tansu 0.6 accepts
# --cert/--key but serves plaintext).
apt_install stunnel4
command -v prometheus >/dev/null || { echo "prometheus not on PATH after install" >&2; exit 1; }
command -v promtool >/dev/null || { echo "promtool not on PATH after installing prometheus" >&2; exit 1; }
# The Debian package may start a system service on :9090; the tests use their own ports
# and do not need it.

# kubectl renders deploy/kubernetes's overlays (`kubectl kustomize`). Debian's package is
# `kubernetes-client` (kubectl 1.20, kustomize 2.0.3: the manifests keep to what that
# version reads). A kubectl already on PATH (another package, e.g. `kubectl` from a
# vendor's repository, which owns the same /usr/bin/kubectl) is used as it is: installing
# the Debian one beside it would fail on the shared file.
if ! command -v kubectl >/dev/null; then
    apt_install kubernetes-client
fi
kubectl kustomize --help >/dev/null 2>&1 || { echo "kubectl on PATH has no 'kustomize' command" >&2; exit 1; }

# --- test broker ------------------------------------------------------------------------
# tansu: a real Kafka-protocol broker (in-memory storage via its `dynostore` feature). The
# build takes about ten minutes, so it is installed once into the cache directory and reused
# when present; the harness finds it there (or through $TANSU_BIN).
TANSU_VERSION=0.6.0
TOOLS="${TRACEO_TOOLS:-$HOME/.cache/traceo-tools}"
if ! "$TOOLS/bin/tansu" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    _traceo_log "cargo install tansu $TANSU_VERSION (cached in $TOOLS)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore --root "$TOOLS"
fi
export TANSU_BIN="$TOOLS/bin/tansu"

# --- Python virtualenvs -----------------------------------------------------------------
command -v python3 >/dev/null || apt_install python3
# Debian's python3 ships venv's ensurepip separately.
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv

# python_venv DIR IMPORT PKG...: a virtualenv at DIR with exactly the pinned PKGs, rebuilt
# only when the pins (or the Python that made it) change: the stamp file holds both and is
# written last, so an interrupted install is redone next time; IMPORT is a module that
# must import from it.
python_venv() {
    local dir="$1" module="$2"
    shift 2
    local stamp
    stamp="$(python3 --version 2>&1) $*"
    if [ "$(cat "$dir/.requirements" 2>/dev/null)" != "$stamp" ] \
        || ! "$dir/bin/python" -c "import $module" 2>/dev/null; then
        _traceo_log "python venv $dir: $*"
        rm -rf "$dir"
        python3 -m venv "$dir"
        "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@"
        printf '%s' "$stamp" >"$dir/.requirements"
    fi
}

# The OpenTelemetry Python SDK: the OTLP end-to-end tests (tests/e2e/otlp.rs) export with
# it. One release train; bump every pin together.
OTEL_VERSION=1.45.2
python_venv "$TOOLS/otel-venv" opentelemetry.sdk \
    "opentelemetry-api==$OTEL_VERSION" \
    "opentelemetry-sdk==$OTEL_VERSION" \
    "opentelemetry-proto==$OTEL_VERSION" \
    "opentelemetry-exporter-otlp-proto-common==$OTEL_VERSION" \
    "opentelemetry-exporter-otlp-proto-grpc==$OTEL_VERSION" \
    "opentelemetry-exporter-otlp-proto-http==$OTEL_VERSION"
export TRACEO_PYTHON="$TOOLS/otel-venv/bin/python"

# The S3 end-to-end tests (tests/e2e/s3.rs): moto's server mode is the S3-protocol server
# (multipart uploads, path-style addressing, in memory: nothing to clean up); pyarrow's S3
# filesystem and duckdb's httpfs read the files back as users would; boto3 makes buckets and
# lists objects, multipart uploads included. duckdb's httpfs extension comes from PyPI
# (duckdb-extension-httpfs) because the tests have no internet to fetch it at run time; its
# version must equal duckdb's.
DUCKDB_VERSION=1.5.5
python_venv "$TOOLS/s3-venv" "moto.server, pyarrow.fs, duckdb, duckdb_extensions, boto3" \
    "moto[server]==5.2.5" \
    "boto3==1.44.8" \
    "pyarrow==26.0.1" \
    "duckdb==$DUCKDB_VERSION" \
    "duckdb-extensions==$DUCKDB_VERSION" \
    "duckdb-extension-httpfs==$DUCKDB_VERSION"
export TRACEO_S3_PYTHON="$TOOLS/s3-venv/bin/python"

# kubernetes-validate: checks every rendered Kubernetes object against the API's JSON
# schemas, which it ships (no network at test time).
KUBERNETES_VALIDATE_VERSION=1.37.0
python_venv "$TOOLS/k8s-venv" kubernetes_validate \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
export KUBERNETES_VALIDATE="$TOOLS/k8s-venv/bin/kubernetes-validate"
