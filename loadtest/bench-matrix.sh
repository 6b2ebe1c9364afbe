#!/usr/bin/env bash
# Runs loadtest/bench.sh for each configuration BENCHMARKS.md compares, back to back on one
# machine, and prints one Markdown table row per run, so the figures compared with each other
# come from the same run. The full bench.sh report of each run is kept in $OUT (default a new
# temporary directory; its path is printed).
#
# Usage: loadtest/bench-matrix.sh
# Environment: DURATION (s per phase, default 10), OUT, and what bench.sh reads
# (CONNECTIONS, SERIES_PER_REQUEST, LABELS...), applied to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
export DURATION=${DURATION:-10}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"

# protocol sink durability gateway-cpus loadgen-cpus
RUNS=(
    "rw1 remote_write wal 0 1"
    "rw1 remote_write upstream 0 1"
    "rw1 null wal 0 1"
    "rw1 null upstream 0 1"
    "rw2 remote_write wal 0 1"
    "otlp-http remote_write wal 0 1"
    "otlp-grpc remote_write wal 0 1"
    # Two cores for the gateway, the load generator and the endpoint sharing them.
    "rw1 remote_write wal 0-1 0-1"
    "rw1 remote_write upstream 0-1 0-1"
)

# field FILE PREFIX SED: the first line of FILE starting with PREFIX, through SED.
field() { grep "^$2" "$1" | head -1 | sed -E "$3"; }

echo "reports in $OUT"
echo
echo "| protocol | sink | durability | gateway CPUs | loadgen CPUs | samples/s (saturation) | CPU-s per million | p50 / p99 at half rate (ms) | peak RSS |"
echo "|---|---|---|---|---|---|---|---|---|"
for run in "${RUNS[@]}"; do
    read -r protocol sink durability gw_cpus lg_cpus <<<"$run"
    report="$OUT/$protocol-$sink-$durability-$gw_cpus.txt"
    SINK=$sink DURABILITY=$durability GATEWAY_CPU=$gw_cpus LOADGEN_CPUS=$lg_cpus \
        loadtest/bench.sh "$protocol" >"$report" 2>&1 || { cat "$report" >&2; exit 1; }
    sat=$(field "$report" "saturation:" 's/^saturation: *([0-9]+) samples.*/\1/')
    cpu=$(field "$report" "gateway CPU:" 's/^gateway CPU: *([0-9.]+) CPU-seconds.*/\1/')
    half=$(field "$report" "half rate" 's/.*p50 ([0-9.]+) ms, p99 ([0-9.]+) ms.*/\1 \/ \2/')
    rss=$(field "$report" "peak RSS:" 's/^peak RSS: *//')
    sat_m=$(awk -v s="$sat" 'BEGIN {printf "%.2f M", s / 1e6}')
    printf '| %s | %s | %s | %s | %s | %s | %.2f | %s | %s |\n' \
        "$protocol" "$sink" "$durability" "$gw_cpus" "$lg_cpus" "$sat_m" "$cpu" "$half" "$rss"
done
