#!/usr/bin/env bash
# The README's first command: installs the build's prerequisites (scripts/install-build-deps.sh,
# a no-op on a machine that has them), then builds and runs the gateway. With no arguments it
# runs on the embedded default (`run`: no auth, one region `local`, Parquet under ./data,
# :8080); arguments replace `run`, e.g. `scripts/run.sh run --config deploy/gateway.yaml`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/install-build-deps.sh
. scripts/install-build-deps.sh
[ $# -gt 0 ] || set -- run
exec cargo run --release --locked -p traceo-gateway --bin traceo-gateway -- "$@"
