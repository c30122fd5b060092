# Helpers shared by the benchmark scripts in tools/ (sourced, not run).

# A base port with one free port per shard after it (shard i listens on
# base + i): free_port SHARDS.
free_port() {
    python3 - "$1" <<'EOF'
import random, socket, sys
count = int(sys.argv[1])
for _ in range(200):
    base = random.randrange(20000, 32000)
    sockets = []
    try:
        for port in range(base, base + count):
            s = socket.socket()
            s.bind(("127.0.0.1", port))
            sockets.append(s)
    except OSError:
        continue
    finally:
        for s in sockets:
            s.close()
    print(base)
    sys.exit(0)
sys.exit("no free ports")
EOF
}

# Prints the fields of a ringmq-load JSON report named by their paths
# (`publish_latency_us.p99`), on one line: report_fields FILE PATH...
report_fields() {
    python3 - "$@" <<'EOF_PY'
import json, sys
report = json.load(open(sys.argv[1]))
values = []
for path in sys.argv[2:]:
    value = report
    for key in path.split("."):
        value = value[key]
    values.append(str(value))
print(" ".join(values))
EOF_PY
}

# Runs `ringmq-load --spawn-broker` (from $bin) in directory DIR, its report
# in JSON file FILE, and shows its raw-disk and publish lines:
# spawned_load DIR FILE ARGS...
spawned_load() {
    local dir=$1 json=$2
    shift 2
    (cd "$dir" && "$bin/ringmq-load" --spawn-broker "$@" --json "$json") | grep -E '^(raw disk|publish:)'
}
