#!/usr/bin/env bash
# Issue 14's per-message target, both sides in one run on this machine:
# Redis 7 with `appendfsync always` (every write fsynced before its answer)
# under redis-benchmark, 32 clients, 1 KiB SETs; then ringmq with 4
# producers x 64 requests in flight, one 1 KiB message per request, sync
# flush. Both write to the directory given (default: the working directory),
# so both pay the same disk. Prints each side and the ratio.
#
#   tools/compare-redis.sh [DATA_DIR]     (RINGMQ_BIN: where ringmq-load is)
#
# Each side's load runs on one thread: redis-benchmark drives its 32
# clients from one event loop, and ringmq-load gets one executor
# (LOAD_CORES, default 1; ringmq-load's own default is one per CPU). On a
# machine the load shares with the broker, a second executor costs the
# broker more in cross-CPU wake-ups than it adds.
#
# Installs redis-server and redis-tools from Debian's packages when missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/bench-lib.sh"
bin=$(realpath "${RINGMQ_BIN:-$here/../target/release}")
data=$(realpath "${1:-.}")
# A bounded load: about 10 s for Redis at 20,000 writes a second.
redis_requests=${REDIS_REQUESTS:-200000}
load_cores=${LOAD_CORES:-1}

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi

work=$(mktemp -d "$data/compare-redis-XXXXXX")
port=$(free_port 1)
redis-server --port "$port" --bind 127.0.0.1 --dir "$work" --appendonly yes --appendfsync always \
    --save "" --daemonize no --logfile "$work/redis.log" &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null || true; wait $redis_pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
[ "$(redis-cli -p "$port" config get appendfsync | tail -1)" = always ] || { echo "redis: appendfsync is not always" >&2; exit 1; }

# --csv: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",
# "p95_latency_ms","p99_latency_ms","max_latency_ms"
redis_line=$(redis-benchmark -p "$port" -c 32 -n "$redis_requests" -d 1024 -t set -r 1000000 --csv | grep '^"SET"')
redis_rps=$(cut -d, -f2 <<<"$redis_line" | tr -d '"')
redis_p99_ms=$(cut -d, -f7 <<<"$redis_line" | tr -d '"')
kill $redis_pid; wait $redis_pid 2>/dev/null || true

ringmq_json=$(mktemp)
# A spawned broker keeps its data in a directory under the working one.
spawned_load "$work" "$ringmq_json" --broker-shards 2 --queues 4 --consumers 0 \
    --producers 4 --window 64 --size 1024 --duration 10s --warmup 2s --cores "$load_cores"
read -r ringmq_rps ringmq_p99_us < <(report_fields "$ringmq_json" publish_rate publish_latency_us.p99)
rm -f "$ringmq_json"

echo "redis appendfsync always, 32 clients, 1 KiB SET: $redis_rps msg/s, p99 $redis_p99_ms ms"
python3 -c '
import sys
ringmq, ringmq_p99_us, redis, redis_p99_ms, cores = map(float, sys.argv[1:])
print("ringmq 4 x 64, 1 KiB, the load on %d executor(s): %.0f msg/s, p99 %.1f ms" % (cores, ringmq, ringmq_p99_us / 1000))
print("ringmq / redis: %.2fx throughput, p99 %.2fx" % (ringmq / redis, ringmq_p99_us / 1000 / redis_p99_ms))
' "$ringmq_rps" "$ringmq_p99_us" "$redis_rps" "$redis_p99_ms" "$load_cores"
