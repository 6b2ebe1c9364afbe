#!/usr/bin/env bash
# The gateway's per-core benchmark (BENCHMARKS.md, "Gateway on one core"): builds release
# binaries, runs the gateway pinned to one core with the `null` sink (which frames every
# request for Kafka exactly as the Kafka sink does, then drops it), drives it from the other
# cores with traceo-loadgen, and prints:
#   - samples/s at saturation (closed loop),
#   - the gateway's CPU seconds per million samples (utime + stime of its process),
#   - p99 request latency at half of the saturating rate (open loop),
#   - peak RSS (VmHWM),
#   - the decompression-only and full-decode speed of the same bodies on the gateway's core,
#     and the gateway's share of the decompression-only speed.
#
# SINK=remote_write forwards instead: a remote_write sink (1.0, the gateway's defaults) to
# `traceo-loadgen --serve-204`, an endpoint on the loadgen CPUs that reads every body and
# answers 204, so the durable default users run (log + forwarding) is what gets measured.
#
# Usage: loadtest/bench.sh [rw1|rw2|otlp-http|otlp-grpc]      (default rw1)
# Environment: DURATION (s per phase, 20), GATEWAY_CPU (0), SHARDS (one per gateway CPU),
# LOADGEN_CPUS (1, or e.g. 1-15),
# CONNECTIONS (8), SERIES_PER_REQUEST (2000), LABELS (10), PORT_BASE (18000),
# DURABILITY (wal: ack after the write-ahead log's fsync, with the log in a temporary
# directory on the same filesystem as /tmp; upstream: ack after the sink; none),
# EXTRA_LOADGEN_ARGS (passed to every loadgen run, e.g. "--gzip"), SINK (null, or
# remote_write: forward to a local 204 endpoint), GATEWAY_BIN (a gateway binary to measure
# instead of the one built here, e.g. a copy built from another commit, for before/after).
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOCOL=${1:-rw1}
DURATION=${DURATION:-20}
DURABILITY=${DURABILITY:-wal}
GATEWAY_CPU=${GATEWAY_CPU:-0}
LOADGEN_CPUS=${LOADGEN_CPUS:-1}
CONNECTIONS=${CONNECTIONS:-8}
SERIES_PER_REQUEST=${SERIES_PER_REQUEST:-2000}
LABELS=${LABELS:-10}
PORT_BASE=${PORT_BASE:-18000}
EXTRA=${EXTRA_LOADGEN_ARGS:-}
SINK=${SINK:-null}

command -v taskset >/dev/null || { echo "bench.sh needs taskset (util-linux)" >&2; exit 1; }
cargo build --release --locked -q -p traceo-gateway -p traceo-loadtest
GW=${GATEWAY_BIN:-target/release/traceo-gateway}
LG=target/release/traceo-loadgen

HTTP_PORT=$PORT_BASE
GRPC_PORT=$((PORT_BASE + 1))
case "$PROTOCOL" in
    rw1 | rw2) URL="http://127.0.0.1:$HTTP_PORT/api/v1/write"; TRANSPORT=() ;;
    otlp-http) URL="http://127.0.0.1:$HTTP_PORT/v1/metrics"; TRANSPORT=() ;;
    # gRPC is HTTP/2: several requests in flight per connection, as the SDKs do.
    otlp-grpc) URL="http://127.0.0.1:$GRPC_PORT"; TRANSPORT=(--max-in-flight 2) ;;
    *) echo "unknown protocol $PROTOCOL: use rw1, rw2, otlp-http or otlp-grpc" >&2; exit 2 ;;
esac

work=$(mktemp -d)
gw_pid=""
up_pid=""
cleanup() {
    [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null && wait "$gw_pid" 2>/dev/null
    [ -n "$up_pid" ] && kill "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

UP_PORT=$((PORT_BASE + 2))
case "$SINK" in
    null) SINK_YAML='null: { format: remote_write_v1 }'; SINK_NAME="null sink (Kafka framing)" ;;
    remote_write)
        SINK_YAML="remote_write: [ { name: up, url: \"http://127.0.0.1:$UP_PORT/api/v1/write\" } ]"
        SINK_NAME="remote_write sink to a local 204 endpoint (traceo-loadgen --serve-204 on CPUs $LOADGEN_CPUS)"
        taskset -c "$LOADGEN_CPUS" "$LG" --serve-204 "127.0.0.1:$UP_PORT" >"$work/upstream.json" 2>"$work/upstream.log" &
        up_pid=$!
        for _ in $(seq 100); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$UP_PORT") 2>/dev/null; then break; fi
            sleep 0.1
        done
        ;;
    *) echo "unknown SINK $SINK: use null or remote_write" >&2; exit 2 ;;
esac

cat >"$work/gateway.yaml" <<EOF
listen: { http: "127.0.0.1:$HTTP_PORT" }
otlp: { grpc_listen: "127.0.0.1:$GRPC_PORT", http_listen: null }
auth: { mode: off, default_region: local }
durability: { mode: $DURABILITY, dir: "$work/wal" }
regions:
  - id: local
    sinks:
      $SINK_YAML
EOF
# SHARDS overrides pipeline.shards (default: one per core the gateway may run on).
[ -n "${SHARDS:-}" ] && echo "pipeline: { shards: $SHARDS }" >>"$work/gateway.yaml"

taskset -c "$GATEWAY_CPU" "$GW" run --config "$work/gateway.yaml" >"$work/gateway.log" 2>&1 &
gw_pid=$!
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT") 2>/dev/null; then break; fi
    kill -0 "$gw_pid" 2>/dev/null || { cat "$work/gateway.log" >&2; exit 1; }
    sleep 0.1
done

# json_num FILE KEY: the first number after "KEY": in a one-line JSON report.
json_num() { sed -n "s/.*\"$2\":\([-0-9.e+]*\).*/\1/p" "$1" | head -1; }
# CPU ticks (user + system) the gateway has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$gw_pid/stat"; }
# loadgen SECONDS [ARGS...]
loadgen() {
    local seconds=$1
    shift
    # shellcheck disable=SC2086 # EXTRA is a list of words on purpose.
    taskset -c "$LOADGEN_CPUS" "$LG" --protocol "$PROTOCOL" --url "$URL" \
        --connections "$CONNECTIONS" --series-per-request "$SERIES_PER_REQUEST" \
        --labels "$LABELS" --series $((SERIES_PER_REQUEST * CONNECTIONS * 5)) \
        "${TRANSPORT[@]}" $EXTRA --duration "$seconds" --json "$@"
}

# Warm up (allocator, connection pools), then saturate.
loadgen 3 >/dev/null
t0=$(ticks)
loadgen "$DURATION" >"$work/saturation.json"
t1=$(ticks)
rss_kib=$(awk '/^VmHWM/ {print $2}' "/proc/$gw_pid/status")
sat=$(json_num "$work/saturation.json" samples_per_s)
acked=$(json_num "$work/saturation.json" samples_acknowledged)
sat_p99=$(json_num "$work/saturation.json" p99)
sat_p50=$(json_num "$work/saturation.json" p50)
cpu_s=$(awk -v a="$t0" -v b="$t1" -v hz="$(getconf CLK_TCK)" 'BEGIN {print (b - a) / hz}')
cpu_per_m=$(awk -v c="$cpu_s" -v n="$acked" 'BEGIN {if (n > 0) print c / (n / 1e6); else print "n/a"}')

half=$(awk -v s="$sat" 'BEGIN {printf "%.0f", s / 2}')
loadgen "$DURATION" --rate "$half" >"$work/half.json"
half_p99=$(json_num "$work/half.json" p99)
half_p50=$(json_num "$work/half.json" p50)
# The log's own view (durability wal): fsync latency (histogram buckets: the bound under
# which half / 99 % of the syncs fell) and records per group.
curl -s "http://127.0.0.1:$HTTP_PORT/metrics" >"$work/metrics.txt" 2>/dev/null || true
metric() { awk -v k="$1" 'index($0, k) == 1 {print $NF; exit}' "$work/metrics.txt"; }
# bucket_quantile NAME Q: the smallest bucket bound holding a fraction Q of the observations.
bucket_quantile() {
    awk -v n="$1_bucket{" -v q="$2" 'index($0, n) == 1 {
            le = $0; sub(/.*le="/, "", le); sub(/".*/, "", le); bound[++k] = le; count[k] = $NF }
        END { if (k == 0 || count[k] == 0) { print "n/a"; exit }
              for (i = 1; i <= k; i++) if (count[i] >= q * count[k]) { print "<=" bound[i]; exit } }' \
        "$work/metrics.txt"
}
fsync_p50=$(bucket_quantile traceo_wal_fsync_seconds 0.5)
fsync_p99=$(bucket_quantile traceo_wal_fsync_seconds 0.99)
groups=$(metric 'traceo_wal_group_records_count{region="local"}')
grouped=$(metric 'traceo_wal_group_records_sum{region="local"}')
half_got=$(json_num "$work/half.json" samples_per_s)

kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true; gw_pid=""

# shellcheck disable=SC2086
taskset -c "$GATEWAY_CPU" "$LG" --protocol "$PROTOCOL" --series-per-request "$SERIES_PER_REQUEST" \
    --labels "$LABELS" $EXTRA --decode-only --duration 5 --json >"$work/decode.json"
decomp=$(json_num "$work/decode.json" decompress_only_samples_per_s)
full=$(json_num "$work/decode.json" full_decode_samples_per_s)
ratio=$(awk -v s="$sat" -v d="$decomp" 'BEGIN {if (d > 0) printf "%.2f", s / d; else print "n/a"}')

cat <<EOF
traceo-gateway bench: protocol $PROTOCOL, $SERIES_PER_REQUEST series x $LABELS labels x 1 sample per request, $SINK_NAME, durability $DURABILITY
machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1); gateway on CPU $GATEWAY_CPU, loadgen on $LOADGEN_CPUS, $CONNECTIONS connections
saturation:            $(printf '%.0f' "$sat") samples/s (p50 $sat_p50 ms, p99 $sat_p99 ms)
gateway CPU:           $cpu_per_m CPU-seconds per million samples ($cpu_s s for $acked samples)
half rate ($half/s):   achieved $(printf '%.0f' "$half_got") samples/s, p50 $half_p50 ms, p99 $half_p99 ms
peak RSS:              $((rss_kib / 1024)) MiB
wal fsync (both runs): p50 ${fsync_p50:-n/a} s, p99 ${fsync_p99:-n/a} s; $(awk -v g="${groups:-0}" -v r="${grouped:-0}" 'BEGIN {if (g > 0) printf "%d groups, %.1f records per group", g, r / g; else print "no groups"}')
decode only, 1 core:   decompression ($(sed -n 's/.*"decompression":"\([a-z]*\)".*/\1/p' "$work/decode.json")) $(printf '%.0f' "${decomp:-0}") samples/s, full decode $(printf '%.0f' "${full:-0}") samples/s
gateway / decompression-only: $ratio
EOF
