#!/usr/bin/env bash
# Issue 14's batched target, both sides in one run on this machine: Apache
# Iggy with fsync on every batch (each batch saved and fsynced before its
# answer) under its own iggy-bench, 4 producers each on a stream of its own,
# 1000 x 1 KiB messages per batch, one batch in flight per producer; then
# ringmq in the same shape (4 producers, window 1, --batch 1000, 4 queues,
# sync flush). Both write to the directory given (default: the working
# directory), so both pay the same disk. Prints each side and the ratios.
#
#   IGGY_BIN=DIR tools/compare-iggy.sh [DATA_DIR]   (RINGMQ_BIN: where ringmq-load is)
#
# IGGY_BIN holds `iggy-server` and `iggy-bench`, built from the Apache Iggy
# source (neither is published as a crate or a Debian package), e.g. at tag
# server-0.8.0: `cargo build --release -p server -p iggy-bench`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/bench-lib.sh"
bin=$(realpath "${RINGMQ_BIN:-$here/../target/release}")
iggy=$(realpath "${IGGY_BIN:?IGGY_BIN must name the directory with iggy-server and iggy-bench}")
data=$(realpath "${1:-.}")
# A bounded load: 4 producers x 2,500 batches of 1 MiB, 10 GB in all.
iggy_batches=${IGGY_BATCHES:-2500}

for tool in iggy-server iggy-bench; do
    [ -x "$iggy/$tool" ] || { echo "compare-iggy: no $iggy/$tool" >&2; exit 1; }
done

work=$(mktemp -d "$data/compare-iggy-XXXXXX")
port=$(free_port 1)
# Every batch saved as it arrives (a threshold of one message) and fsynced;
# only TCP, on loopback; the data under the directory given.
(cd "$work" && exec env IGGY_SYSTEM_PATH="$work/iggy-data" \
    IGGY_SYSTEM_PARTITION_ENFORCE_FSYNC=true \
    IGGY_SYSTEM_PARTITION_MESSAGES_REQUIRED_TO_SAVE=1 \
    IGGY_MESSAGE_SAVER_ENFORCE_FSYNC=true \
    IGGY_TCP_ADDRESS="127.0.0.1:$port" IGGY_ROOT_USERNAME=iggy IGGY_ROOT_PASSWORD=iggy \
    IGGY_HTTP_ENABLED=false IGGY_QUIC_ENABLED=false IGGY_WEBSOCKET_ENABLED=false \
    "$iggy/iggy-server" > "$work/iggy-server.log" 2>&1) &
iggy_pid=$!
trap 'kill $iggy_pid 2>/dev/null || true; wait $iggy_pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 $iggy_pid 2>/dev/null || { cat "$work/iggy-server.log" >&2; exit 1; }
    sleep 0.2
done

iggy_out=$(cd "$work" && "$iggy/iggy-bench" --message-size 1024 --messages-per-batch 1000 \
    --message-batches "$iggy_batches" pinned-producer --streams 4 --producers 4 \
    tcp --server-address "127.0.0.1:$port" 2>&1 | sed 's/\x1b\[[0-9;]*m//g')
kill $iggy_pid; wait $iggy_pid 2>/dev/null || true
results=$(grep -m1 'Producers Results' <<<"$iggy_out" || true)
[ -n "$results" ] || { echo "compare-iggy: no results from iggy-bench:" >&2; echo "$iggy_out" >&2; exit 1; }
iggy_mb_s=$(sed -n 's/.*Total throughput: \([0-9.]*\) MB\/s.*/\1/p' <<<"$results")
iggy_msg_s=$(sed -n 's/.*MB\/s, \([0-9.]*\) messages\/s.*/\1/p' <<<"$results")
iggy_p99_ms=$(sed -n 's/.*p99 latency: \([0-9.]*\) ms.*/\1/p' <<<"$results")

ringmq_json=$(mktemp)
spawned_load "$work" "$ringmq_json" --queues 4 --consumers 0 --producers 4 --window 1 \
    --batch 1000 --size 1024 --duration 10s --warmup 2s
read -r ringmq_msg_s ringmq_mb_s ringmq_p99_us raw_mb_s < <(report_fields "$ringmq_json" \
    publish_rate publish_mb_s publish_latency_us.p99 raw_write_mb_s)
rm -f "$ringmq_json"

echo "iggy fsync every batch, 4 x 1000 x 1 KiB: $iggy_msg_s msg/s, $iggy_mb_s MB/s, p99 $iggy_p99_ms ms per batch (mean of the producers' p99)"
python3 -c '
import sys
msg_s, mb_s, p99_us, raw, iggy_msg_s, iggy_p99_ms = map(float, sys.argv[1:])
print("ringmq 4 x 1000 x 1 KiB, window 1: %.0f msg/s, %.1f MB/s (%.3f of raw write %.0f MB/s), p99 %.1f ms per request"
      % (msg_s, mb_s, mb_s / raw, raw, p99_us / 1000))
print("ringmq / iggy: %.2fx throughput, p99 %.2fx" % (msg_s / iggy_msg_s, p99_us / 1000 / iggy_p99_ms))
' "$ringmq_msg_s" "$ringmq_mb_s" "$ringmq_p99_us" "$raw_mb_s" "$iggy_msg_s" "$iggy_p99_ms"
