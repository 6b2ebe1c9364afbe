#!/usr/bin/env bash
# The README's test command: installs what the tests need (scripts/install-test-deps.sh,
# a no-op on a machine that has it all), then runs the whole suite. Extra arguments go to
# cargo test, e.g. `scripts/test.sh --test e2e_deploy`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/install-test-deps.sh
. scripts/install-test-deps.sh
printf '\n== cargo test --workspace --locked %s\n' "$*"
exec cargo test --workspace --locked "$@"
