#!/usr/bin/env bash
# How cost grows with the work, one dimension at a time around a base
# workload (issue 14): message size; queues of one topic up to the per-topic
# maximum, then several topics up to 10,000 queues; connections (producers,
# each on connections of its own, one per shard) up to 1,000 producers; and
# requests in flight. Each point runs a fresh `ringmq serve` on a fresh data
# directory under the working directory (the disk the broker would use),
# drives it with `ringmq-load` (the real client), and reads the broker's
# resident memory at the end of the run; the queue and connection rows also
# give the memory each added queue or connection cost against the base.
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
# The 1,000-producer row opens 2 sockets per producer and shard pair (one
# in the generator, one in the broker): more than a default 1,024 files.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# The base workload; each row changes one of these.
base_size=1024 base_topics=1 base_queues=4 base_producers=4 base_window=64

work=$(mktemp -d "$PWD/bench-matrix.XXXXXX")
broker_pid=""
cleanup() {
    if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=tools/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

# One point: prints "msg/s | MB/s | p50 us | p99 us | RSS MiB" and leaves
# the broker's RSS in KiB in $work/rss_kib.
run_point() {
    local size=$1 topics=$2 queues=$3 producers=$4 window=$5
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
    if ! "$bin/ringmq-load" --broker "127.0.0.1:$port" --data-dir "$data" --size "$size" --topics "$topics" \
        --queues "$queues" --producers "$producers" --connection-per-producer --window "$window" --consumers 0 \
        --duration "${duration}s" --warmup "${warmup}s" --json "$json" >"$work/point.log" 2>&1; then
        echo "bench-matrix: ringmq-load failed (size $size, topics $topics, queues $queues, producers $producers, window $window):" >&2
        tail -5 "$work/point.log" >&2
    fi
    awk '/VmRSS/ {print $2}' "/proc/$broker_pid/status" >"$work/rss_kib" 2>/dev/null || : >"$work/rss_kib"
    rss=$(awk '{printf "%.0f", $1 / 1024}' "$work/rss_kib")
    [ -n "$rss" ] || rss="?"
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
base_rss_kib=""
# row LABEL SIZE TOPICS QUEUES PRODUCERS WINDOW [ADDED UNIT]: ADDED is how
# many queues or connections the point has beyond the base, for the
# memory each one cost.
row() {
    local label=$1 size=$2 topics=$3 queues=$4 producers=$5 window=$6 added=${7:-0} unit=${8:-}
    local point per=""
    echo "bench-matrix: $label (size $size, topics $topics, queues $queues, producers $producers, window $window)" >&2
    point=$(run_point "$size" "$topics" "$queues" "$producers" "$window")
    per=$(per_added_kib "$(cat "$work/rss_kib")" "$added" "$unit")
    rows+=("| $label | $point | $per |")
}

# Memory an added queue or connection cost: (RSS - base RSS) / added.
per_added_kib() {
    local rss=$1 added=$2 unit=$3
    if [ "$added" -le 0 ] || [ -z "$rss" ] || [ -z "$base_rss_kib" ]; then
        echo ""
        return
    fi
    python3 -c "import sys; print(f'{(int(sys.argv[1]) - int(sys.argv[2])) / int(sys.argv[3]):,.1f} per {sys.argv[4]}')" \
        "$rss" "$base_rss_kib" "$added" "$unit"
}

raw=""
row "base" $base_size $base_topics $base_queues $base_producers $base_window
raw=$(report_fields "$work/point.json" raw_fsync_p50_us 2>/dev/null || echo "?")
base_rss_kib=$(cat "$work/rss_kib")
for size in 128 16384 262144 1048576; do
    row "size $size B" "$size" $base_topics $base_queues $base_producers $base_window
done
# One topic up to the per-topic maximum (TOPIC_QUEUES_MAX), then several.
for queues in 1 16 64 256 1024; do
    row "$queues queues" $base_size 1 "$queues" $base_producers $base_window $((queues - base_queues)) queue
done
for topics in 4 10; do
    row "$topics topics x 1000 queues" $base_size "$topics" 1000 $base_producers $base_window \
        $((topics * 1000 - base_queues)) queue
done
for producers in 1 16 64 256 1000; do
    row "$producers producers, $((producers * shards)) connections" $base_size 1 $base_queues "$producers" \
        $base_window $(((producers - base_producers) * shards)) connection
done
for window in 1 4 16 256; do
    row "$window in flight" $base_size $base_topics $base_queues $base_producers "$window"
done

table=$(
    echo "Base: ${base_size} B, ${base_topics} topic of ${base_queues} queues, ${base_producers} producers (each with a connection of its own to each of the ${shards} shards: $((base_producers * shards)) connections), ${base_window} requests in flight each, one message per request, ${shards} shards, sync flush, ${duration} s after ${warmup} s warm-up; raw 4 KiB O_DIRECT write + fdatasync p50 in the base run: ${raw} us. RSS: the broker's resident memory at the end of the point; KiB per added queue or connection: (RSS - the base's RSS) / the queues or connections added to the base."
    echo
    echo "| point | publish msg/s | MB/s | p50 us | p99 us | broker RSS MiB | KiB per added queue / connection |"
    echo "|---|---|---|---|---|---|---|"
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
