#!/usr/bin/env bash
# Throughput of the gateway's Kafka sink into a real tansu broker, on this machine.
#
#   loadtest/kafka_bench.sh [COMPRESSION] [LINGER] [SECONDS] [CONNECTIONS]
#   loadtest/kafka_bench.sh lz4 5ms 15 4
#   DURABILITY=upstream loadtest/kafka_bench.sh    (default wal: the log in the temp dir)
#
# Builds release binaries, starts tansu (in-memory storage) and the gateway with only a Kafka
# sink, drives it with traceo-loadgen (2000 series x 10 labels x 1 sample per request, seed
# 42, closed loop), and prints the load generator's JSON report plus the sink's message count,
# mean message size and delivery latency from the gateway's /metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
COMPRESSION="${1:-lz4}"
LINGER="${2:-5ms}"
SECONDS_="${3:-15}"
CONNECTIONS="${4:-4}"
TANSU="${TANSU_BIN:-$HOME/.cache/traceo-tools/bin/tansu}"
DURABILITY="${DURABILITY:-wal}"

cargo build --release -q -p traceo-gateway -p traceo-loadtest
work="$(mktemp -d)"
cleanup() { kill "${gw_pid:-}" "${broker_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
bport="$(port)"; gport="$(port)"
"$TANSU" broker --listener-url "tcp://127.0.0.1:$bport" --advertised-listener-url "tcp://127.0.0.1:$bport" \
    --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
broker_pid=$!
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$bport") 2>/dev/null && break; sleep 0.2; done
"$TANSU" topic create --broker "tcp://127.0.0.1:$bport" --partitions 4 metrics.local >/dev/null

cat >"$work/gateway.yaml" <<YAML
listen: { http: "127.0.0.1:$gport" }
auth: { mode: off, default_region: local }
durability: { mode: $DURABILITY, dir: "$work/wal" }
regions:
  - id: local
    sinks:
      kafka: { brokers: "127.0.0.1:$bport", compression: $COMPRESSION, linger: $LINGER }
YAML
RUST_LOG=warn ./target/release/traceo-gateway run --config "$work/gateway.yaml" >"$work/gateway.log" 2>&1 &
gw_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$gport/-/ready" >/dev/null && break; sleep 0.1; done

./target/release/traceo-loadgen --url "http://127.0.0.1:$gport/api/v1/write" \
    --duration "$SECONDS_" --connections "$CONNECTIONS" --json
curl -s "http://127.0.0.1:$gport/metrics" | awk '
    /^traceo_kafka_messages_total/ {m=$NF}
    /^traceo_kafka_message_bytes_total/ {b=$NF}
    /^traceo_kafka_delivery_seconds_sum/ {ds=$NF}
    /^traceo_kafka_delivery_seconds_count/ {dc=$NF}
    END { printf "{\"compression\":\"'"$COMPRESSION"'\",\"linger\":\"'"$LINGER"'\",\"kafka_messages\":%d,\"mean_message_bytes\":%d,\"mean_delivery_ms\":%.2f}\n", m, (m ? b/m : 0), (dc ? 1000*ds/dc : 0) }'
