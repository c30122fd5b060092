#!/usr/bin/env bash
# How cost grows with the work, one dimension at a time around a base
# workload (issue 14): message size, queues, connections (producers) and
# requests in flight. Each point runs a fresh `ringmq serve` on a fresh data
# directory under the working directory (the disk the broker would use),
# drives it with `ringmq-load` (the real client), and reads the broker's
# resident memory at the end of the run.
#
#   tools/bench-matrix.sh                 print the table (markdown)
#   tools/bench-matrix.sh --write-doc     also replace the table between the
#                                         bench-matrix markers of docs/PERFORMANCE.md
#
# Environment:
#   RINGMQ_BIN          directory holding release `ringmq` and `ringmq-load`
#                       (default target/release; build with
#                       `cargo build --release --bins`)
#   MATRIX_DURATION     measured seconds per point (default 10)
#   MATRIX_WARMUP       warm-up seconds per point (default 2)
#   MATRIX_SHARDS       broker shards (default: one per CPU)
#
# Needs python3 (reads the load generator's JSON). Loopback only.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${RINGMQ_BIN:-$repo/target/release}
duration=${MATRIX_DURATION:-10}
warmup=${MATRIX_WARMUP:-2}
shards=${MATRIX_SHARDS:-$(nproc)}
write_doc=false
case "${1:-}" in
    "") ;;
    --write-doc) write_doc=true ;;
    -h | --help)
        sed -n '2,22p' "$0"
        exit 0
        ;;
    *)
        echo "usage: $0 [--write-doc]" >&2
        exit 2
        ;;
esac
for tool in ringmq ringmq-load; do
    if [ ! -x "$bin/$tool" ]; then
        echo "bench-matrix: $bin/$tool not found: cargo build --release --bins" >&2
        exit 1
    fi
done
command -v python3 >/dev/null || { echo "bench-matrix: needs python3" >&2; exit 1; }

# The base workload; each row changes one of these.
base_size=1024 base_queues=4 base_producers=4 base_window=64

work=$(mktemp -d "$PWD/bench-matrix.XXXXXX")
broker_pid=""
cleanup() {
    if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=tools/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

# One point: prints "msg/s | MB/s | p50 us | p99 us | RSS MiB".
run_point() {
    local size=$1 queues=$2 producers=$3 window=$4
    local data="$work/data" port json rss
    rm -rf "$data"
    port=$(free_port "$shards")
    "$bin/ringmq" serve --data-dir "$data" --listen "127.0.0.1:$port" --shards "$shards" --log warn \
        --disk-max-used-percent 100 >"$work/broker.log" 2>&1 &
    broker_pid=$!
    # Ready once it answers (its first segment is zero-filled first).
    local waited=0
    until "$bin/ringmq" status --broker "127.0.0.1:$port" --log error >/dev/null 2>&1; do
        if ! kill -0 "$broker_pid" 2>/dev/null; then
            echo "bench-matrix: the broker on port $port exited at start:" >&2
            tail -5 "$work/broker.log" >&2
            exit 1
        fi
        sleep 0.2
        waited=$((waited + 1))
        if [ "$waited" -gt 300 ]; then
            echo "bench-matrix: the broker on port $port did not answer in 60 s" >&2
            exit 1
        fi
    done
    json="$work/point.json"
    rm -f "$json"
    if ! "$bin/ringmq-load" --broker "127.0.0.1:$port" --data-dir "$data" --size "$size" --queues "$queues" \
        --producers "$producers" --window "$window" --consumers 0 --duration "${duration}s" \
        --warmup "${warmup}s" --json "$json" >"$work/point.log" 2>&1; then
        echo "bench-matrix: ringmq-load failed (size $size, queues $queues, producers $producers, window $window):" >&2
        tail -5 "$work/point.log" >&2
    fi
    rss=$(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$broker_pid/status" 2>/dev/null || echo "?")
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=""
    if [ ! -s "$json" ]; then
        echo "- | - | - | - | $rss"
        return
    fi
    python3 - "$json" "$rss" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
lat = d["publish_latency_us"]
errors = d.get("errors", 0) + d.get("not_send_ok", 0)
note = f" ({errors} errors)" if errors else ""
print(f'{d["publish_rate"]:,.0f}{note} | {d["publish_mb_s"]} | {lat["p50"]:,} | {lat["p99"]:,} | {sys.argv[2]}')
EOF
}

rows=()
row() {
    local label=$1 size=$2 queues=$3 producers=$4 window=$5
    echo "bench-matrix: $label (size $size, queues $queues, producers $producers, window $window)" >&2
    rows+=("| $label | $(run_point "$size" "$queues" "$producers" "$window") |")
}

raw=""
row "base" $base_size $base_queues $base_producers $base_window
raw=$(report_fields "$work/point.json" raw_fsync_p50_us 2>/dev/null || echo "?")
for size in 128 16384 262144 1048576; do
    row "size $size B" "$size" $base_queues $base_producers $base_window
done
for queues in 1 16 64 256; do
    row "$queues queues" $base_size "$queues" $base_producers $base_window
done
for producers in 1 16 64 256; do
    row "$producers connections" $base_size $base_queues "$producers" $base_window
done
for window in 1 4 16 256; do
    row "$window in flight" $base_size $base_queues $base_producers "$window"
done

table=$(
    echo "Base: ${base_size} B, ${base_queues} queues, ${base_producers} producers (one connection each), ${base_window} requests in flight each, one message per request, ${shards} shards, sync flush, ${duration} s after ${warmup} s warm-up; raw 4 KiB O_DIRECT write + fdatasync p50 in the base run: ${raw} us. RSS: the broker's resident memory at the end of the point."
    echo
    echo "| point | publish msg/s | MB/s | p50 us | p99 us | broker RSS MiB |"
    echo "|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
)
echo "$table"

if $write_doc; then
    doc="$repo/docs/PERFORMANCE.md"
    python3 - "$doc" "$table" <<'EOF'
import sys
path, table = sys.argv[1], sys.argv[2]
text = open(path).read()
start, end = "<!-- bench-matrix -->", "<!-- /bench-matrix -->"
if start not in text or end not in text:
    sys.exit(f"{path}: no {start} ... {end} markers")
head, rest = text.split(start, 1)
_, tail = rest.split(end, 1)
open(path, "w").write(f"{head}{start}\n{table}\n{end}{tail}")
EOF
    echo "bench-matrix: table written to $doc" >&2
fi
