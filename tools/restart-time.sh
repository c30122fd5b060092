#!/usr/bin/env bash
# Restart time against retained data (issue 14): for each size, a fresh
# broker is filled to about that many bytes with batched sends (the real
# client, through ringmq-load), left to checkpoint, then killed with SIGKILL
# and started again; the figure is the time from the new process's start
# until it answers `ringmq status` (every shard recovered and listening).
# The claim it checks: restart grows with what was written since the last
# checkpoint, not with what is retained.
#
#   tools/restart-time.sh [GB ...]      default: 1 10
#
# Environment:
#   RINGMQ_BIN   directory holding release `ringmq` and `ringmq-load`
#                (default target/release; cargo build --release --bins)
#   SHARDS       broker shards (default 2)
# Needs python3 (free ports) and the sizes' worth of free disk under the
# working directory.
set -euo pipefail

bin=${RINGMQ_BIN:-target/release}
shards=${SHARDS:-2}
sizes=("$@")
[ ${#sizes[@]} -eq 0 ] && sizes=(1 10)
for tool in ringmq ringmq-load; do
    [ -x "$bin/$tool" ] || { echo "restart-time: $bin/$tool not found: cargo build --release --bins" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "restart-time: needs python3" >&2; exit 1; }

work=$(mktemp -d "$PWD/restart-time.XXXXXX")
broker_pid=""
cleanup() {
    if [ -n "$broker_pid" ]; then kill -9 "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=tools/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

now_ms() { date +%s%3N; }

# 5 s of batched sends (4 producers x 1000 x 1 KiB per request, 4 queues).
load_5s() {
    "$bin/ringmq-load" --broker "127.0.0.1:$port" --data-dir "$work" --queues 4 --producers 4 --window 1 \
        --batch 1000 --consumers 0 --size 1024 --duration 5s --warmup 0s >"$work/load.log" 2>&1 ||
        { echo "restart-time: ringmq-load failed" >&2; tail "$work/load.log" >&2; exit 1; }
}

# SIGKILL, start again, print a table row: what was written since the last
# checkpoint ($1), the time to serve; $2 is added to the retained column.
kill_and_restart() {
    local retained started ms
    retained="$(python3 -c "print(f'{$(logged_bytes) / 2**30:.2f}')") GiB logged$2"
    kill -9 "$broker_pid"
    wait "$broker_pid" 2>/dev/null || true
    started=$(now_ms)
    start_broker
    ms=$(wait_serving "$started")
    echo "| $retained | $1 | $ms ms |"
}

# Bytes in the broker's logs: the sum of every shard's flushed position.
logged_bytes() {
    "$bin/ringmq" status --broker "127.0.0.1:$port" --json |
        python3 -c 'import json, sys; print(sum(json.loads(line)["flushed"] for line in sys.stdin if line.strip()))'
}

start_broker() {
    "$bin/ringmq" serve --data-dir "$data" --listen "127.0.0.1:$port" --shards "$shards" --log warn \
        --disk-max-used-percent 100 >>"$work/broker.log" 2>&1 &
    broker_pid=$!
}

# Waits until the broker answers; prints the milliseconds since $1.
wait_serving() {
    local started=$1
    for _ in $(seq 1 6000); do
        if "$bin/ringmq" status --broker "127.0.0.1:$port" --json >/dev/null 2>&1; then
            echo $(($(now_ms) - started))
            return 0
        fi
        kill -0 "$broker_pid" 2>/dev/null || { echo "restart-time: the broker exited" >&2; tail "$work/broker.log" >&2; exit 1; }
        sleep 0.01
    done
    echo "restart-time: no answer within 60 s" >&2
    exit 1
}

echo "| retained | written since the last checkpoint | time to serve after kill -9 |"
echo "|---|---|---|"
for gb in "${sizes[@]}"; do
    data="$work/data-$gb"
    port=$(free_port "$shards")
    start_broker
    wait_serving "$(now_ms)" >/dev/null
    target=$((gb * 1024 * 1024 * 1024))
    # Batched sends until the log holds the target: 4 producers x 1000 x 1 KiB.
    while [ "$(logged_bytes)" -lt "$target" ]; do
        load_5s
    done
    # Two checkpoint intervals (2 s each by default) with nothing written.
    sleep 5
    kill_and_restart "nothing (idle 5 s before the kill)" ", $(du -sh "$data" | cut -f1) on disk"
    # Again, killed the moment a 5 s load ends: up to one checkpoint
    # interval of writes (a few hundred MB) for recovery to scan.
    load_5s
    kill_and_restart "up to one checkpoint interval (2 s) of a 5 s load, killed as it ended" ""
    kill -9 "$broker_pid"
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=""
    rm -rf "$data"
done
